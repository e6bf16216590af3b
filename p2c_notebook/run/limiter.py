"""How many model calls go to one server at once, shared by every run that uses it.

The server is what scales; p2c must be a good client of it. Every call passes through one `SharedLimiter`:
- an explicit `--concurrency K` is a fixed limit of K calls in flight;
- a llama.cpp server takes as many calls as it has slots (its `/props` says how many; the embedded one has one);
- a hosted API or a vLLM server is ramped up: the limit doubles while calls come back as fast as the fastest did
  (slow start), then grows by one per round, and halves when the server says 429 / Retry-After or its first-token
  latency grows (additive increase, multiplicative decrease), never above a ceiling.
A 429 also pauses every new call for the time the server asked, not only the refused one.

`PrefixGate` is the cache-aware fan-out: a call that shares a long prefix with one the server is still reading
waits until that one's first token is back, so the server has the prefix cached when it arrives.
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
from dataclasses import dataclass
from typing import Any

from p2c_notebook.backends import Backend, ChatRequest, Completion, OnRetry, choose_backend
from p2c_notebook.backends.base import WrappedBackend
from p2c_notebook.backends.retry import RetryNotice
from p2c_notebook.errors import ConfigError
from p2c_notebook.settings import Settings
from p2c_notebook.tokens import common_prefix_len

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
_PROBE_TIMEOUT_S = 2.0


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


class SharedLimiter:
    """At most `limit` calls at once across every run that shares it; with a `ceiling` above `limit`, the limit
    adapts between 1 and the ceiling (see the module docstring). `pause` holds back new calls until a time (a
    server's Retry-After), because a rate limit is the server's, not one call's."""

    def __init__(self, limit: int, ceiling: int | None = None, why: str = "") -> None:
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

    @property
    def limit(self) -> int:
        """Calls allowed in flight now."""
        return int(self._window)

    @contextmanager
    def slot(self) -> Iterator[Ticket]:
        """Hold one of the `limit` slots for one call (waiting out a pause first)."""
        with self._cond:
            self.waiting += 1
            try:
                while True:
                    now = time.monotonic()
                    if self._until > now:
                        self._cond.wait(self._until - now)
                    elif self.in_use < self.limit:
                        break
                    else:
                        self._cond.wait()
            finally:
                self.waiting -= 1
            self.in_use += 1
            self.peak = max(self.peak, self.in_use)
            ticket = Ticket(self._generation)
        try:
            yield ticket
        finally:
            with self._cond:
                self.in_use -= 1
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
    or scripted backends keep the configured concurrency."""
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


class PrefixGate:
    """Cache-aware fan-out: a call whose prompt shares at least `min_chars` more with a call still waiting for its
    first token than with any prompt already answered waits (at most `max_wait` seconds) for that first token."""

    def __init__(self, min_chars: int = PREFIX_MIN_CHARS, max_wait: float = PREFIX_MAX_WAIT_S) -> None:
        self.min_chars = min_chars
        self.max_wait = max_wait
        self.held = 0  # calls that waited
        self._pending: dict[int, list[tuple[str, str]]] = {}
        self._processed: deque[list[tuple[str, str]]] = deque(maxlen=64)
        self._next = 0
        self._cond = threading.Condition()

    def enter(self, messages: Sequence[dict[str, str]]) -> int:
        """Wait until the calls this one shares a long unprocessed prefix with have their first token (or ended);
        returns its handle. It waits for those calls only, never for ones sent meanwhile: waves of waits would
        each cost a time to first token."""
        prompt = [(str(m.get("role", "")), str(m.get("content", ""))) for m in messages]
        deadline = time.monotonic() + self.max_wait
        with self._cond:
            done = max((shared_prefix(prompt, p) for p in self._processed), default=0)
            blockers = {h for h, p in self._pending.items() if shared_prefix(prompt, p) - done >= self.min_chars}
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


class LimitedBackend(WrappedBackend):
    """A backend whose calls each hold a slot of a `SharedLimiter` (and pass the `PrefixGate`, if any); a retry
    the server asked for with 429 / Retry-After pauses and shrinks the limiter for every call that shares it."""

    def __init__(self, inner: Backend, limiter: SharedLimiter, gate: PrefixGate | None = None) -> None:
        super().__init__(inner)
        self.limiter = limiter
        self.gate = gate

    def complete(
        self, request: ChatRequest, on_delta: Callable[[str], None], on_retry: OnRetry | None = None
    ) -> Completion:
        handle = self.gate.enter(request.messages) if self.gate is not None else None
        try:
            with self.limiter.slot() as ticket:

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
                self.limiter.succeeded(ticket)
                return completion
        finally:
            if handle is not None and self.gate is not None:
                self.gate.leave(handle)
