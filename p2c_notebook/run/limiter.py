"""How many model calls go to one server at once, shared by every run that uses it.

The server is what scales; p2c must be a good client of it. Every call passes through one `SharedLimiter`:
- an explicit `--concurrency K` is a fixed limit of K calls in flight;
- a llama.cpp server takes as many calls as it has slots (its `/props` says how many; the embedded one has one);
- a hosted API or a vLLM server is ramped up: the limit doubles while calls come back as fast as the fastest did
  (slow start), then grows by one per round, and halves when the server says 429 / Retry-After or its first-token
  latency grows (additive increase, multiplicative decrease), never above a ceiling.
A 429 also pauses every new call for the time the server asked, not only the refused one.
With `tokens_per_minute`, a `TokenWindow` is a token-rate budget too: a call goes only when the tokens sent in the
last 60 s plus its own (prompt + max_tokens, corrected to the usage the server reports) fit the budget.

`PrefixGate` is the cache-aware fan-out: a call that shares a long prefix with one the server is still reading
waits until that one's first token is back, so the server has the prefix cached when it arrives. Only a call with
slack waits: one made inside `urgent()` (a step on the run's longest chain, where any wait is wall time) goes at
once and leads the others.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from p2c_notebook.backends import Backend, ChatRequest, Completion, OnRetry, choose_backend
from p2c_notebook.backends.base import WrappedBackend
from p2c_notebook.backends.retry import RetryNotice
from p2c_notebook.content import content_tokens
from p2c_notebook.errors import Cancelled, ConfigError
from p2c_notebook.settings import Settings
from p2c_notebook.tokens import common_prefix_len, estimate_tokens

#: the most calls at once a ramped-up limit reaches (hosted APIs and vLLM take far more; one paper rarely needs more)
CEILING = 64
#: where a ramp starts: the old fixed default
START = 4
#: a first token this many times slower than the fastest seen, and by at least LATENCY_SLACK_S, means a queue
LATENCY_GROWTH = 2.0
LATENCY_SLACK_S = 0.5
#: the cache-aware fan-out: on by default when the pipeline benchmark shows it pays (see README "Performance")
CACHE_AWARE_FAN_OUT = True
#: a prefix shorter than this (characters, ~1k tokens: providers cache from 1,024 tokens) is not worth a wait
PREFIX_MIN_CHARS = 4096
PREFIX_MAX_WAIT_S = 30.0
#: a call with slack looks for the calls to wait for this long after it is ready: the urgent calls that became ready
#: with it (submitted first, on other threads) have entered the gate by then, so none of them follows it instead
PATIENT_GRACE_S = 0.1
_PROBE_TIMEOUT_S = 2.0
#: the token budget's sliding window (seconds): "per minute", as providers state their limits
TOKEN_WINDOW_S = 60.0
#: a wait for the token budget longer than this is worth one notice
TOKEN_NOTICE_S = 1.0
#: how often a call waiting for the token budget looks whether its run was cancelled
CANCEL_POLL_S = 0.1


class Sent:
    """Tokens one call put into the window, and when (an estimate until the call says what it really used)."""

    def __init__(self, at: float, tokens: int) -> None:
        self.at = at
        self.tokens = tokens


class TokenWindow:
    """A sliding window of the tokens sent in the last `seconds`: pure arithmetic over times the caller gives,
    so the limiter decides with its clock and tests with theirs."""

    def __init__(self, budget: int, seconds: float | None = None) -> None:
        if budget < 1:
            raise ConfigError(f"The token budget must be at least 1 token per minute (got {budget}).")
        self.budget = budget
        self.seconds = TOKEN_WINDOW_S if seconds is None else seconds
        self._sent: deque[Sent] = deque()

    def _expire(self, now: float) -> None:
        while self._sent and self._sent[0].at + self.seconds <= now:
            self._sent.popleft()

    def used(self, now: float) -> int:
        """Tokens sent within the window that ends `now`."""
        self._expire(now)
        return sum(sent.tokens for sent in self._sent)

    def delay(self, tokens: int, now: float) -> float:
        """Seconds until a call of `tokens` fits: 0 when it fits now. A call larger than the whole budget fits
        once the window is empty (it goes alone rather than never)."""
        left = self.used(now)
        if left + tokens <= self.budget or not self._sent:
            return 0.0
        for sent in self._sent:  # oldest first: the time the window has given back enough
            left -= sent.tokens
            if left + tokens <= self.budget or left <= 0:
                return max(0.0, sent.at + self.seconds - now)
        return max(0.0, self._sent[-1].at + self.seconds - now)

    def take(self, tokens: int, now: float) -> Sent:
        """Count a call of `tokens` sent `now`."""
        self._expire(now)
        sent = Sent(now, tokens)
        self._sent.append(sent)
        return sent

    @staticmethod
    def settle(sent: Sent, tokens: int) -> None:
        """The call used `tokens` (what the server reported): the window counts those, not the estimate."""
        sent.tokens = max(0, tokens)


@dataclass(frozen=True)
class Decision:
    """One change of the limit, and why (for tests, the log and the benchmark)."""

    limit: int
    why: str


class Ticket:
    """One call holding a slot: the limiter's generation when it started (a burst of 429s halves the limit
    once, not once per refused call) and when its current attempt began."""

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.started = time.monotonic()
        self.first_token: float | None = None
        self.sent: Sent | None = None  # its tokens in the limiter's window, when there is a token budget


class SharedLimiter:
    """At most `limit` calls at once across every run that shares it; with a `ceiling` above `limit`, the limit
    adapts between 1 and the ceiling (see the module docstring). `pause` holds back new calls until a time (a
    server's Retry-After), because a rate limit is the server's, not one call's."""

    def __init__(
        self,
        limit: int,
        ceiling: int | None = None,
        why: str = "",
        tokens_per_minute: int | None = None,
        window_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1:
            raise ConfigError(f"The concurrency must be at least 1 (got {limit}).")
        self.ceiling = max(limit, ceiling or limit)
        self.adaptive = self.ceiling > limit
        self._window = float(limit)
        self.in_use = 0
        self.waiting = 0
        self.peak = 0  # the most calls that were ever in flight at once
        self.pauses = 0
        self.decisions: list[Decision] = [Decision(limit, why or ("fixed" if not self.adaptive else "start"))]
        self._slow_start = True
        self._fastest: float | None = None
        self._generation = 0
        self._until = 0.0
        self._queued: dict[int, int] = {}  # per scheduler: steps ready but held back by the limit
        self._cond = threading.Condition()
        # the token-rate budget: None, or a window over `clock` (tests pass a fake clock and call `wake`)
        self.tokens = None if tokens_per_minute is None else TokenWindow(tokens_per_minute, window_s or TOKEN_WINDOW_S)
        self._clock = clock
        self.token_waiting = 0  # calls waiting for the token budget now
        self.token_waits = 0  # calls that ever waited for it
        self.notices: list[str] = []  # what a user should hear (a long wait for the budget, an oversize call)
        self._listeners: list[Callable[[str], None]] = []
        self._noticed: set[str] = set()

    @property
    def limit(self) -> int:
        """Calls allowed in flight now."""
        return int(self._window)

    @contextmanager
    def slot(self, tokens: int = 0, cancel: threading.Event | None = None) -> Iterator[Ticket]:
        """Hold one of the `limit` slots for one call of about `tokens` (waiting out a pause first, then for
        the token budget, if any); a set `cancel` ends a wait with `Cancelled`."""
        with self._cond:
            self.waiting += 1
            token_since: float | None = None  # when this call began to wait for the token budget
            try:
                while True:
                    if cancel is not None and cancel.is_set():
                        raise Cancelled("Cancelled while waiting to send a call; everything saved before is kept.")
                    now = time.monotonic()
                    if self._until > now:
                        self._cond.wait(self._wait_for(self._until - now, cancel))
                    elif self.in_use >= self.limit:
                        self._cond.wait(self._wait_for(None, cancel))
                    elif (delay := self._token_delay(tokens)) > 0:
                        if token_since is None:
                            token_since = now
                            self.token_waits += 1
                        elif now - token_since >= TOKEN_NOTICE_S:
                            self._notice("waiting", self._waiting_notice())
                        if "waiting" not in self._noticed:  # wake when the wait has lasted long enough to say so
                            delay = min(delay, max(0.01, token_since + TOKEN_NOTICE_S - now))
                        self.waiting -= 1  # held back by the token budget: no demand for more calls at once
                        self.token_waiting += 1
                        try:
                            self._cond.wait(self._wait_for(delay, cancel))
                        finally:
                            self.token_waiting -= 1
                            self.waiting += 1
                    else:
                        break
            finally:
                self.waiting -= 1
            self.in_use += 1
            self.peak = max(self.peak, self.in_use)
            ticket = Ticket(self._generation)
            if self.tokens is not None:
                ticket.sent = self.tokens.take(tokens, self._clock())
        try:
            yield ticket
        finally:
            with self._cond:
                self.in_use -= 1
                self._cond.notify_all()

    @staticmethod
    def _wait_for(seconds: float | None, cancel: threading.Event | None) -> float | None:
        """How long one condition wait may last: a waiter with a `cancel` to watch wakes to look at it."""
        if cancel is None:
            return seconds
        return CANCEL_POLL_S if seconds is None else min(seconds, CANCEL_POLL_S)

    def _token_delay(self, tokens: int) -> float:
        """(Holding the lock.) Seconds until a call of `tokens` fits the token budget (0: now, or no budget)."""
        if self.tokens is None:
            return 0.0
        if tokens > self.tokens.budget:
            self._notice(
                "oversize",
                f"A call of about {tokens:,} tokens is larger than the whole budget of {self.tokens.budget:,} "
                "tokens per minute: it is sent alone, once nothing else was sent within the last minute.",
            )
        return self.tokens.delay(tokens, self._clock())

    def _waiting_notice(self) -> str:
        budget = self.tokens.budget if self.tokens is not None else 0
        return (
            f"Calls are waiting for the token budget ({budget:,} tokens per minute); raise --tokens-per-minute "
            "(P2C_TOKENS_PER_MINUTE) if the server allows more."
        )

    def _notice(self, kind: str, message: str) -> None:
        """Tell the listeners once per kind (library code never prints)."""
        if kind in self._noticed:
            return
        self._noticed.add(kind)
        self.notices.append(message)
        for listener in list(self._listeners):
            listener(message)

    def listen(self, listener: Callable[[str], None]) -> None:
        """Hear the limiter's notices (a run's event bus warns with them)."""
        with self._cond:
            self._listeners.append(listener)
            earlier = list(self.notices)
        for message in earlier:
            listener(message)

    def used(self, ticket: Ticket, tokens: int) -> None:
        """The call behind `ticket` used `tokens` (the server's count): the window counts those from now on."""
        if ticket.sent is None:
            return
        with self._cond:
            TokenWindow.settle(ticket.sent, tokens)
            self._cond.notify_all()

    def wake(self) -> None:
        """Let waiting calls look again (after a fake clock moved, in tests)."""
        with self._cond:
            self._cond.notify_all()

    def queued(self, scheduler: int, steps: int) -> None:
        """A scheduler (keyed by any id) holds back `steps` ready steps because of the limit: demand the limiter
        cannot see in its own queue, since schedulers submit no more than the limit."""
        with self._cond:
            if steps:
                self._queued[scheduler] = steps
            else:
                self._queued.pop(scheduler, None)

    def pause(self, seconds: float) -> None:
        """No new call starts for `seconds` (a longer pause already set stays)."""
        with self._cond:
            self._until = max(self._until, time.monotonic() + seconds)
            self.pauses += 1
            self._cond.notify_all()

    def rate_limited(self, seconds: float, ticket: Ticket | None = None) -> None:
        """The server refused a call to slow us down: pause everyone, and halve an adaptive limit."""
        self.pause(seconds)
        self._decrease("rate limited (429 / Retry-After)", ticket)

    def answering(self, ticket: Ticket) -> None:
        """A call's first token is back (the server took it): judge the limit now, not at the end of the reply,
        so a ramp doubles once per time to first token."""
        self._judge(ticket)

    def succeeded(self, ticket: Ticket) -> None:
        """A call came back; one that streamed nothing (no first token) is judged now."""
        if ticket.first_token is None:
            self._judge(ticket)

    def _judge(self, ticket: Ticket) -> None:
        """Grow the limit while the first token comes as fast as ever and calls queue for it; shrink it when the
        first token has become much slower (the server queues them)."""
        if not self.adaptive:
            return
        latency = None if ticket.first_token is None else ticket.first_token - ticket.started
        with self._cond:
            if latency is not None:
                fastest = self._fastest = latency if self._fastest is None else min(self._fastest, latency)
                if latency > fastest * LATENCY_GROWTH and latency - fastest > LATENCY_SLACK_S:
                    why = f"first token took {latency:.2f} s (fastest {fastest:.2f} s)"
                    self._decrease_locked(why, ticket)
                    return
            if self.in_use + self.waiting + sum(self._queued.values()) < self.limit or self._window >= self.ceiling:
                return  # the limit is not what holds calls back: no evidence the server takes more
            before = self.limit
            self._window = min(float(self.ceiling), self._window + (1.0 if self._slow_start else 1.0 / self._window))
            if self.limit != before:
                self.decisions.append(Decision(self.limit, "calls queued and latency holds"))
                self._cond.notify_all()

    def _decrease(self, why: str, ticket: Ticket | None) -> None:
        with self._cond:
            self._decrease_locked(why, ticket)

    def _decrease_locked(self, why: str, ticket: Ticket | None) -> None:
        if not self.adaptive or (ticket is not None and ticket.generation != self._generation):
            return  # a call sent before the last decrease: that one already answered for it
        self._generation += 1
        self._slow_start = False
        self._window = float(max(1, int(self._window / 2)))
        self.decisions.append(Decision(self.limit, why))


def fixed(limit: int, why: str = "fixed") -> SharedLimiter:
    return SharedLimiter(limit, why=why)


def ramped(start: int = START, ceiling: int = CEILING, why: str = "start") -> SharedLimiter:
    return SharedLimiter(min(start, ceiling), ceiling, why)


_SLOTS: dict[str, int | None] = {}
_SLOTS_LOCK = threading.Lock()


def server_slots(base_url: str, api_key: str | None = None) -> int | None:
    """A llama.cpp server's parallel slots (`GET /props` -> `total_slots`), None for any other server. Asked once
    per server and process."""
    root = base_url.rstrip("/").removesuffix("/v1")
    with _SLOTS_LOCK:
        if root in _SLOTS:
            return _SLOTS[root]
    request = urllib.request.Request(root + "/props")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    slots: int | None = None
    try:
        with urllib.request.urlopen(request, timeout=_PROBE_TIMEOUT_S) as reply:  # noqa: S310 - the user's server
            data: Any = json.loads(reply.read(65536))
        value = data.get("total_slots") if isinstance(data, dict) else None
        slots = value if isinstance(value, int) and value >= 1 else None
    except (OSError, ValueError, urllib.error.URLError):
        slots = None
    with _SLOTS_LOCK:
        _SLOTS[root] = slots
    return slots


def limiter_for(settings: Settings, explicit: int | None = None) -> SharedLimiter:
    """The limiter that fits the server `settings` name: `explicit` (or a concurrency the user set) is fixed;
    the embedded model and a llama.cpp server get their slots; a hosted or vLLM server is ramped up; recorded
    or scripted backends keep the configured concurrency. `tokens_per_minute` adds the token-rate budget."""
    limiter = _concurrency_for(settings, explicit)
    if settings.tokens_per_minute is not None:
        limiter.tokens = TokenWindow(settings.tokens_per_minute)
    return limiter


def _concurrency_for(settings: Settings, explicit: int | None) -> SharedLimiter:
    if explicit is not None:
        return fixed(explicit, "set by --concurrency")
    if "concurrency" in settings.model_fields_set:
        return fixed(settings.concurrency, "set in the settings")
    kind, _ = choose_backend(settings)
    if kind == "local":
        return fixed(1, "the embedded llama.cpp server answers one call at a time")
    if kind != "openai":
        return fixed(settings.concurrency, f"a {kind} backend")
    if settings.base_url:
        key = settings.api_key.get_secret_value() if settings.api_key else None
        slots = server_slots(settings.base_url, key)
        if slots is not None:
            return fixed(slots, f"the llama.cpp server has {slots} slot(s)")
    return ramped(START, CEILING, "ramping up from the first calls")


# ------------------------------------------------------------------------------------------------ fan-out
def shared_prefix(a: Sequence[tuple[str, str]], b: Sequence[tuple[str, str]]) -> int:
    """Characters of message content two requests share from their start (whole equal messages, then the
    common start of the first that differs)."""
    total = 0
    for (role_a, text_a), (role_b, text_b) in zip(a, b, strict=False):
        if role_a != role_b:
            break
        if text_a == text_b:
            total += len(text_a)
            continue
        return total + common_prefix_len(text_a, text_b)
    return total


#: how this thread's calls meet a `PrefixGate`: None (not said: first come, first led), False (a step on the critical
#: path: never wait), True (a step with slack: wait, after a grace that lets the urgent calls enter first)
_PATIENT: ContextVar[bool | None] = ContextVar("p2c_fan_out_patient", default=None)


@contextmanager
def urgent(yes: bool = True) -> Iterator[None]:
    """Calls made inside (on this thread) never wait at a `PrefixGate` (`yes`): a step on the run's longest chain,
    where a wait for another call's first token would be wall time; they lead, and calls with slack wait for them.
    With `yes=False` the calls have slack: they may wait, and look for what to wait for a moment late."""
    token = _PATIENT.set(not yes)
    try:
        yield
    finally:
        _PATIENT.reset(token)


class PrefixGate:
    """Cache-aware fan-out: a call whose prompt shares at least `min_chars` more with a call still waiting for its
    first token than with any prompt already answered waits (at most `max_wait` seconds) for that first token,
    unless it is `urgent` (then it goes at once: the others may wait for it)."""

    def __init__(
        self, min_chars: int = PREFIX_MIN_CHARS, max_wait: float = PREFIX_MAX_WAIT_S, grace: float = PATIENT_GRACE_S
    ) -> None:
        self.min_chars = min_chars
        self.max_wait = max_wait
        self.grace = grace
        self.held = 0  # calls that waited
        self.hurried = 0  # urgent calls that would have waited and went at once
        self._pending: dict[int, list[tuple[str, str]]] = {}
        self._processed: deque[list[tuple[str, str]]] = deque(maxlen=64)
        self._next = 0
        self._cond = threading.Condition()

    def enter(self, messages: Sequence[dict[str, str]]) -> int:
        """Wait until the calls this one shares a long unprocessed prefix with have their first token (or ended);
        returns its handle. It waits for those calls only, never for ones sent meanwhile: waves of waits would
        each cost a time to first token. An `urgent` call never waits; one said to have slack looks `grace`
        seconds late (it has the slack), so the urgent calls ready with it lead."""
        prompt = [(str(m.get("role", "")), str(m.get("content", ""))) for m in messages]
        deadline = time.monotonic() + self.max_wait
        patience = _PATIENT.get()
        if patience and self.grace > 0:
            time.sleep(self.grace)
        with self._cond:
            done = max((shared_prefix(prompt, p) for p in self._processed), default=0)
            blockers = {h for h, p in self._pending.items() if shared_prefix(prompt, p) - done >= self.min_chars}
            if blockers and patience is False:
                self.hurried += 1
                blockers = set()
            self.held += bool(blockers)
            while blockers & self._pending.keys():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            self._next += 1
            self._pending[self._next] = prompt
            return self._next

    def first_token(self, handle: int) -> None:
        """The server has read this call's prompt: calls sharing it may go."""
        with self._cond:
            prompt = self._pending.pop(handle, None)
            if prompt is not None:
                self._processed.append(prompt)
                self._cond.notify_all()

    def leave(self, handle: int) -> None:
        """The call ended (a failed one never processed its prompt)."""
        with self._cond:
            if self._pending.pop(handle, None) is not None:
                self._cond.notify_all()


def fan_out_gate() -> PrefixGate | None:
    """A new gate for the calls that share a limiter, or None when the cache-aware fan-out is off."""
    return PrefixGate() if CACHE_AWARE_FAN_OUT else None


def call_tokens(request: ChatRequest, max_tokens: int) -> int:
    """What a call may cost before it is sent: its prompt (text and images, counted as the backends count
    them) plus the most it may answer."""
    prompt = sum(content_tokens(m.get("content"), estimate_tokens) + 4 for m in request.messages)
    return prompt + max_tokens


class LimitedBackend(WrappedBackend):
    """A backend whose calls each hold a slot of a `SharedLimiter` (and pass the `PrefixGate`, if any); a retry
    the server asked for with 429 / Retry-After pauses and shrinks the limiter for every call that shares it.
    With a token budget, a call counts as its estimate until its usage comes back; a set `cancel` ends a wait."""

    def __init__(
        self,
        inner: Backend,
        limiter: SharedLimiter,
        gate: PrefixGate | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        super().__init__(inner)
        self.limiter = limiter
        self.gate = gate
        self.cancel = cancel

    def complete(
        self, request: ChatRequest, on_delta: Callable[[str], None], on_retry: OnRetry | None = None
    ) -> Completion:
        handle = self.gate.enter(request.messages) if self.gate is not None else None
        tokens = 0 if self.limiter.tokens is None else call_tokens(request, self.settings.max_tokens)
        try:
            with self.limiter.slot(tokens, self.cancel) as ticket:

                def delta(text: str) -> None:
                    if ticket.first_token is None:
                        ticket.first_token = time.monotonic()
                        if handle is not None and self.gate is not None:
                            self.gate.first_token(handle)
                        self.limiter.answering(ticket)
                    on_delta(text)

                def retrying(notice: RetryNotice) -> None:
                    if notice.rate_limited:
                        self.limiter.rate_limited(notice.delay, ticket)
                    ticket.started, ticket.first_token = time.monotonic() + notice.delay, None
                    if on_retry is not None:
                        on_retry(notice)

                completion = self.inner.complete(request, delta, retrying)
                if completion.usage.calls and not completion.usage.estimated:  # the server's count, not a guess
                    self.limiter.used(ticket, completion.usage.prompt_tokens + completion.usage.completion_tokens)
                self.limiter.succeeded(ticket)
                return completion
        finally:
            if handle is not None and self.gate is not None:
                self.gate.leave(handle)
