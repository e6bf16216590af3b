"""The OpenAI-compatible backend: every server that speaks chat completions (OpenAI, vLLM, Ollama, llama.cpp...)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import openai
from openai.types.chat import ChatCompletion

from p2c_notebook.backends.base import ChatRequest, Completion, Messages, OnRetry
from p2c_notebook.backends.retry import (
    CallDeadline,
    IncompleteReply,
    RetryNotice,
    RetryPolicy,
    classify,
    is_html,
    retry_after,
)
from p2c_notebook.content import content_tokens, has_images, text_of
from p2c_notebook.errors import BackendError, ConfigError, ReplyError
from p2c_notebook.run.usage import Usage, cost_of
from p2c_notebook.secrets import Scrubber
from p2c_notebook.settings import Settings
from p2c_notebook.tokens import estimate_tokens

CONTINUE = (
    "Your reply was cut off at the output token limit. Continue exactly where you stopped, from the next "
    "character on: do not repeat anything, do not add a preamble, do not reopen a code block."
)


_OFFICIAL = "https://api.openai.com/v1"


def _tls_environment() -> tuple[str | None, str | None]:
    return os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")


@functools.lru_cache(maxsize=4)
def _tls_context(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext | bool:
    """The TLS context the SDK's HTTP library would build for a new client (default verification, the
    environment's certificate settings), built once: loading the CA bundle takes ~50 ms, more than a call.
    True (the client builds its own) where the library has no such function."""
    library = sys.modules.get(openai.DefaultHttpxClient.__mro__[1].__module__.split(".")[0])
    create = getattr(library, "create_ssl_context", None)
    return create() if callable(create) else True


def _verified_tls() -> ssl.SSLContext | bool:
    cert_file, cert_dir = _tls_environment()
    try:
        return _tls_context(cert_file, cert_dir)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"Cannot load the TLS certificates (SSL_CERT_FILE={cert_file or 'unset'}, "
            f"SSL_CERT_DIR={cert_dir or 'unset'}): {exc.strerror or exc}. Point them at a readable CA bundle or "
            "unset them."
        ) from None


#: What each server (base URL, model) was found to refuse, for the rest of the process: a later backend for the
#: same server (a second run, a notebook's next cell) starts from it instead of probing again.
_LEARNED: dict[tuple[str, str], dict[str, str]] = {}
_LEARNED_LOCK = threading.Lock()

#: structured_output "auto" steps down this ladder when a server refuses a response_format type; the schema
#: then goes in the prompt and the tolerant parser reads the reply.
_FORMATS = ("auto", "json_object", "off")


def learned_capabilities(base_url: str, model: str) -> dict[str, str]:
    """What this process learned about a server: `structured_output` and `token_parameter` when they differ
    from what was first tried (empty when nothing was refused)."""
    with _LEARNED_LOCK:
        return dict(_LEARNED.get((base_url.rstrip("/"), model), {}))


class _ServerGate:
    """Calls in flight to one server (base URL, model), and whether it must get them one at a time.

    Some servers end the reply in progress when another request arrives (llama.cpp's Python server does by
    default: `interrupt_requests`). A reply cut off while another of our calls to the same server was open is
    the sign: from then on, calls to that server are sent one at a time, for the rest of the process.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.in_flight = 0
        self.serial = False
        self._one = threading.Lock()

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        with self._lock:
            serial = self.serial
        if serial:
            self._one.acquire()
        with self._lock:
            self.in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                self.in_flight -= 1
            if serial:
                self._one.release()

    def cut_off_by_another(self) -> bool:
        """Called when a reply was cut off: learn one-at-a-time when another call was open at that moment."""
        with self._lock:
            if self.in_flight > 1 and not self.serial:
                self.serial = True
                return True
            return False


_GATES: dict[tuple[str, str], _ServerGate] = {}


def _gate(base_url: str, model: str) -> _ServerGate:
    with _LEARNED_LOCK:
        return _GATES.setdefault((base_url.rstrip("/"), model), _ServerGate())


class _Deadline:
    """A call's wall-clock deadline. When it passes, the call's connection is shut down: that wakes a read
    blocked on a server that trickles tokens or sends only keep-alives, which no per-read time-out ends."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._lock = threading.Lock()
        self._response: Any = None
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def attach(self, response: Any) -> None:
        """The call's HTTP response, once its headers arrived: the connection to shut at the deadline."""
        with self._lock:
            self._response = response
            expired = self.expired
        if expired:
            _shut(response)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            response = self._response
        if response is not None:
            _shut(response)

    def cancel(self) -> None:
        self._timer.cancel()
        with self._lock:
            self._response = None


def _shut(response: Any) -> None:
    """Shut down an unfinished response's socket (a finished one's connection may serve another call now)."""
    if getattr(response, "is_closed", True):
        return
    stream = (getattr(response, "extensions", None) or {}).get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class _ReplyTooLong(Exception):
    """A reply grew past `max_reply_chars`: stopped mid-stream, never saved nor sent back in a prompt."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the reply passed {limit} characters")
        self.limit = limit


class OpenAIBackend:
    """Any OpenAI-compatible chat-completions server (OpenAI, vLLM, Ollama, llama.cpp, LM Studio...)."""

    def __init__(self, settings: Settings, on_close: Callable[[], None] | None = None) -> None:
        self.settings = settings
        base_url = settings.base_url or _OFFICIAL
        key = settings.api_key.get_secret_value() if settings.api_key else None
        if not key:
            if base_url.rstrip("/") == _OFFICIAL:
                raise ConfigError(
                    "No API key found - set OPENAI_API_KEY (or P2C_API_KEY, or pass --api-key), "
                    "or point --base-url / OPENAI_BASE_URL at an OpenAI-compatible server."
                )
            key = "not-needed"  # local servers ignore it, but the client requires one
        self._base_url = base_url
        # The HTTP time-outs bound each wait for the server (connect, a read); `timeout` bounds the whole call
        # (a _Deadline, attached to the response by the hook once its headers arrive).
        self._local = threading.local()
        idle = min(settings.read_timeout, settings.timeout)
        # Retries are ours (RetryPolicy): announced, jittered, honouring Retry-After, resetting streamed text.
        self._client = openai.OpenAI(
            api_key=key,
            base_url=base_url,
            timeout=openai.Timeout(idle),
            max_retries=0,
            http_client=openai.DefaultHttpxClient(
                verify=_verified_tls(), event_hooks={"response": [self._on_response]}
            ),
        )
        self._server = (base_url.rstrip("/"), settings.model)
        learned = learned_capabilities(*self._server)
        self._structured: str = settings.structured_output
        if settings.structured_output == "auto":
            self._structured = learned.get("structured_output", "auto")
        token_param: str = settings.token_parameter
        if token_param == "auto":
            token_param = "max_completion_tokens" if settings.is_reasoning_model() else "max_tokens"
            token_param = learned.get("token_parameter", token_param)
        self._token_parameter = token_param
        self._stream_usage = learned.get("stream_options") != "off"
        self._lock = threading.Lock()
        self._on_close = on_close
        self.policy = RetryPolicy(settings.max_retries, settings.retry_base_delay, settings.retry_max_delay)
        self._random = random.Random()
        self._sleep: Callable[[float], None] = time.sleep

    @property
    def context_window(self) -> int | None:
        """Unknown to a generic server: the run falls back to the setting or the model's published window."""
        return None

    @property
    def model(self) -> str:
        return self.settings.model

    @property
    def description(self) -> str:
        return Scrubber.for_settings(self.settings).text(f"{self.settings.model} at {self._base_url}")

    def close(self) -> None:
        self._client.close()
        if self._on_close:
            self._on_close()

    @property
    def max_tokens(self) -> int:
        """The output token limit every request carries."""
        return self.settings.max_tokens

    @property
    def capabilities(self) -> dict[str, str]:
        """What this backend asks the server for now: `structured_output` and `token_parameter` (after any
        fallback from a refusal)."""
        with self._lock:
            return {"structured_output": self._structured, "token_parameter": self._token_parameter}

    def _on_response(self, response: Any) -> None:
        """The HTTP client's hook, in the calling thread, once a response's headers arrived."""
        deadline = getattr(self._local, "deadline", None)
        if deadline is not None:
            deadline.attach(response)

    def _params(self, request: ChatRequest) -> dict[str, Any]:
        s = self.settings
        params: dict[str, Any] = {"model": s.model, "messages": request.messages}
        reasoning = s.is_reasoning_model()
        params[self._token_parameter] = self.max_tokens
        if s.reasoning_effort:
            params["reasoning_effort"] = s.reasoning_effort
        if s.temperature is not None and not reasoning:
            params["temperature"] = s.temperature
        mode = self._structured
        if request.schema is not None and mode in ("auto", "json_schema"):
            params["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": request.schema_name, "schema": request.schema, "strict": False},
            }
        elif request.schema is not None and mode == "json_object":
            params["response_format"] = {"type": "json_object"}
        elif request.schema is not None and mode == "json_object_schema":
            params["response_format"] = {"type": "json_object", "schema": request.schema}
        if request.schema is not None and mode in ("json_object", "off"):
            params["messages"] = _with_schema(request.messages, request.schema)
        if s.extra_body:
            params["extra_body"] = dict(s.extra_body)
        if s.stream:
            params["stream"] = True
            if self._stream_usage:
                params["stream_options"] = {"include_usage": True}
        params["extra_headers"] = {
            "X-P2C-Stage": request.stage,
            "X-P2C-File": quote(request.file, safe="/"),  # percent-encoded UTF-8: header values are ASCII
            "X-P2C-Attempt": str(request.attempt),
        }
        return params

    def complete(
        self, request: ChatRequest, on_delta: Callable[[str], None], on_retry: OnRetry | None = None
    ) -> Completion:
        """One reply: each call retried per the policy; a reply cut off at the token limit is continued
        (up to `max_continuations` times) and the pieces concatenated."""
        params = self._params(request)
        completion = self._attempts(params, request, on_delta, on_retry, "")
        parts, usage, continued = [completion.text], completion.usage, 0
        while completion.finish_reason == "length" and continued < self.settings.max_continuations:
            continued += 1
            so_far = "".join(parts)
            more = {k: v for k, v in params.items() if k != "response_format"}  # plain text continues a JSON reply
            more["messages"] = [
                *request.messages,
                {"role": "assistant", "content": so_far},
                {"role": "user", "content": CONTINUE},
            ]
            more["extra_headers"] = {**params["extra_headers"], "X-P2C-Continuation": str(continued)}
            completion = self._attempts(more, request, on_delta, on_retry, so_far)
            parts.append(completion.text)
            usage += completion.usage
        return Completion("".join(parts), usage, completion.finish_reason, self.max_tokens, continued)

    def _attempts(
        self,
        params: dict[str, Any],
        request: ChatRequest,
        on_delta: Callable[[str], None],
        on_retry: OnRetry | None,
        shown: str,
    ) -> Completion:
        """One call, repeated after transient failures; `shown` is text streamed by earlier calls of this
        reply, streamed again after a restart so the user still sees the whole reply. A request the server
        refused for what it asks is never repeated unchanged (see `_call_checked`)."""
        attempt = 1
        room = self.settings.max_reply_chars - len(shown)
        while True:
            streamed = False

            def delta(text: str) -> None:
                nonlocal streamed
                streamed = True
                on_delta(text)

            gate = _gate(self._base_url, self.settings.model)
            try:
                with gate.slot():
                    try:
                        return self._call_checked(params, delta, request, room)
                    except IncompleteReply:
                        gate.cut_off_by_another()
                        raise
            except (openai.OpenAIError, IncompleteReply, CallDeadline, _NotACompletion, _ReplyTooLong) as exc:
                reason = classify(exc)
                if streamed and reason == "the connection failed":
                    reason = "the reply stream was cut off"
                if reason == "the reply stream was cut off" and gate.serial:
                    reason += " (this server stops a reply when another request arrives: calls go one at a time)"
                if reason is not None and _refused_parameter(exc, params) is not None:
                    reason = None  # the same request cannot succeed: fail now, not after max_retries waits
                if reason is None or attempt >= self.policy.attempts:
                    raise self._scrubbed(self._translate(exc, request, attempt, params)) from None
                response = exc.response if isinstance(exc, openai.APIStatusError) else None
                wait = self.policy.delay(attempt, retry_after(response.headers if response else None), self._random)
                attempt += 1
                if on_retry is not None:
                    on_retry(RetryNotice.after(exc, reason, wait, attempt, self.policy.attempts, streamed))
                self._sleep(wait)
                if streamed and shown:
                    on_delta(shown)

    def _call_checked(
        self, params: dict[str, Any], on_delta: Callable[[str], None], request: ChatRequest, room: int
    ) -> Completion:
        """One call; when the server refuses something the request asks (a response_format type, the token
        limit's parameter name), the request is changed (`params` in place, so continuations inherit it), the
        change remembered for this server, and sent again. Each change steps down a finite ladder."""
        changed: set[str] = set()
        while True:
            try:
                return self._call(params, on_delta, request, room)
            except openai.APIError as exc:
                if not self._adapt(exc, params, request, changed):
                    raise

    def _adapt(self, exc: openai.APIError, params: dict[str, Any], request: ChatRequest, changed: set[str]) -> bool:
        """Change `params` after a refusal that names one of its parameters; False when nothing can change.
        `changed` holds what this request changed already (a token parameter is swapped once, never back)."""
        refused = _refused_parameter(exc, params)
        if refused == "response_format" and self.settings.structured_output == "auto":
            sent = params.pop("response_format").get("type")
            mode = "json_object" if sent == "json_schema" else "off"
            with self._lock:  # concurrent calls may learn it at once: never step back up
                if _FORMATS.index(mode) > _FORMATS.index(self._structured):
                    self._structured = mode
                learned = self._structured
            self._learn("structured_output", learned)
            if mode == "json_object":
                params["response_format"] = {"type": "json_object"}
            if request.schema is not None:
                params["messages"] = _with_schema(params["messages"], request.schema)
            return True
        if refused == "stream_options":  # the usage chunk is optional: without it, usage is estimated
            params.pop("stream_options")
            with self._lock:
                self._stream_usage = False
            self._learn("stream_options", "off")
            return True
        other = {"max_completion_tokens": "max_tokens", "max_tokens": "max_completion_tokens"}.get(refused or "")
        if other and refused and self.settings.token_parameter == "auto" and "token_parameter" not in changed:
            changed.add("token_parameter")
            with self._lock:
                self._token_parameter = other
            self._learn("token_parameter", other)
            params[other] = params.pop(refused)
            return True
        return False

    def _learn(self, name: str, value: str) -> None:
        with _LEARNED_LOCK:
            _LEARNED.setdefault(self._server, {})[name] = value

    def _call(
        self, params: dict[str, Any], on_delta: Callable[[str], None], request: ChatRequest, room: int
    ) -> Completion:
        """One HTTP call within the `timeout` deadline; a reply longer than `room` characters is stopped."""
        deadline = _Deadline(self.settings.timeout)
        self._local.deadline = deadline
        try:
            return self._send(params, on_delta, room, deadline)
        except (IncompleteReply, openai.APIConnectionError) as exc:
            if deadline.expired and not isinstance(exc, openai.APITimeoutError):
                raise CallDeadline(self.settings.timeout) from None  # we cut it: not the server's doing
            raise
        finally:
            self._local.deadline = None
            deadline.cancel()

    def _send(
        self, params: dict[str, Any], on_delta: Callable[[str], None], room: int, deadline: _Deadline
    ) -> Completion:
        if not params.get("stream"):
            response = self._client.chat.completions.create(**params)
            if not isinstance(response, ChatCompletion):  # the SDK hands back the raw body when it is not JSON
                raise _NotACompletion(str(response))
            choice = response.choices[0] if response.choices else None
            text = (choice.message.content or "") if choice else ""
            if len(text) > room:
                raise _ReplyTooLong(self.settings.max_reply_chars)
            return Completion(text, self._usage(response.usage, params, text), choice.finish_reason if choice else None)
        stream = self._client.chat.completions.create(**params)
        parts: list[str] = []
        finish: str | None = None
        usage = None
        with stream:
            if is_html(stream.response):
                raise _NotACompletion(stream.response.read().decode("utf-8", "replace")[:300])
            # The chunks are read as plain JSON: building the SDK's typed chunk objects costs ~0.3 ms each, which
            # with several replies streaming at once is most of a CPU.
            for chunk in sse_chunks(stream.response, deadline):
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or ():
                    delta = (choice.get("delta") or {}).get("content")
                    if delta:
                        room -= len(delta)
                        if room < 0:
                            raise _ReplyTooLong(self.settings.max_reply_chars)
                        parts.append(delta)
                        on_delta(delta)
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
        if finish is None:
            raise IncompleteReply("the stream ended before the model finished its reply")
        text = "".join(parts)
        return Completion(text, self._usage(usage, params, text), finish)

    def _usage(self, usage: Any, params: dict[str, Any], text: str) -> Usage:
        if usage is None:  # the server reported nothing: count offline, and say so
            prompt = sum(content_tokens(m.get("content"), estimate_tokens) + 4 for m in params["messages"])
            completion = estimate_tokens(text)
            cost = cost_of(self.settings.model, prompt, completion, 0, self.settings.prices)
            return Usage(prompt, completion, 0, 1, cost, estimated=True)
        prompt = int(_field(usage, "prompt_tokens") or 0)
        completion = int(_field(usage, "completion_tokens") or 0)
        details = _field(usage, "prompt_tokens_details")
        cached = int(_field(details, "cached_tokens") or 0) if details is not None else 0
        cost = cost_of(self.settings.model, prompt, completion, cached, self.settings.prices)
        return Usage(prompt, completion, cached, 1, cost)

    def _translate(
        self, exc: BaseException, request: ChatRequest, attempts: int, params: dict[str, Any] | None = None
    ) -> Exception:
        where = f"stage {request.stage}" + (f", file {request.file}" if request.file else "")
        tried = f" after {attempts} attempts" if attempts > 1 else ""
        resume = "finished artifacts are kept: rerun the same command to resume"
        if isinstance(exc, _NotACompletion):
            return BackendError(
                f"The server at {self._base_url} sent a web page instead of a chat completion ({where}): "
                f"{_short(exc.body, 120)!r}. Check --base-url / OPENAI_BASE_URL (an OpenAI-compatible API usually "
                f"ends in /v1); {resume}."
            )
        if isinstance(exc, _ReplyTooLong):
            return ReplyError(
                f"The model's reply for {where} passed {exc.limit:,} characters and was stopped; nothing of it "
                "was saved. Raise --max-reply-chars (P2C_MAX_REPLY_CHARS) if a reply that long is meant, or try "
                f"another model; {resume}."
            )
        if isinstance(exc, CallDeadline):
            return BackendError(
                f"The model server at {self._base_url} did not finish its reply within the {exc.seconds:g} s "
                f"time-out{tried} ({where}): it kept sending slowly, or only keep-alives. Raise --timeout "
                f"(P2C_TIMEOUT) if replies really take that long, or check the server; {resume}."
            )
        if isinstance(exc, IncompleteReply):
            return BackendError(
                f"The reply stream from {self._base_url} was cut off before the model finished{tried} ({where}). "
                f"Check the server or a proxy in between, or turn streaming off (P2C_STREAM=false); {resume}."
            )
        if isinstance(exc, openai.APITimeoutError):
            idle = min(self.settings.read_timeout, self.settings.timeout)
            return BackendError(
                f"The model server at {self._base_url} did not answer in time{tried} ({where}; nothing came for "
                f"{idle:g} s). Raise --read-timeout (P2C_READ_TIMEOUT) or --timeout (P2C_TIMEOUT), or try again; "
                f"{resume}."
            )
        if isinstance(exc, openai.APIConnectionError):
            return BackendError(
                f"Cannot reach the model server at {self._base_url}, or it dropped the connection{tried} ({where}). "
                f"Is it running? Check --base-url / OPENAI_BASE_URL; {resume}."
            )
        if isinstance(exc, openai.AuthenticationError):
            return BackendError(
                f"The server at {self._base_url} rejected the API key ({where}). "
                "Set a valid OPENAI_API_KEY or P2C_API_KEY."
            )
        if isinstance(exc, openai.NotFoundError):
            return BackendError(
                f"The server at {self._base_url} does not know the model {self.settings.model!r} ({where}): "
                f"{_message(exc, 160)}. Pass an available model with --model or P2C_MODEL; {resume}."
            )
        if isinstance(exc, openai.RateLimitError):
            return BackendError(
                f"Rate limited by {self._base_url}{tried} ({where}). Wait and rerun ({resume.split(':')[0]}), "
                "lower --concurrency, or allow more retries with P2C_MAX_RETRIES."
            )
        if isinstance(exc, openai.APIStatusError) and is_html(exc.response):
            return BackendError(
                f"The server at {self._base_url} answered HTTP {exc.status_code} with a web page instead of JSON"
                f"{tried} ({where}): a proxy or gateway error, or --base-url is not the API (it usually ends in "
                f"/v1); {resume}."
            )
        refused = _refused_parameter(exc, params) if params is not None else None
        if refused == "images" and isinstance(exc, openai.APIError):
            status = f"HTTP {exc.status_code}" if isinstance(exc, openai.APIStatusError) else "an error"
            words = _message(exc, 160) if isinstance(exc, openai.APIStatusError) else _short(str(exc), 160)
            return BackendError(
                f"The model server at {self._base_url} refused the paper's figure images with {status} ({where}): "
                f"{words}. {self.settings.model} reads text only there: drop --figures (P2C_FIGURES), or pick a "
                f"vision model with --model; {resume}."
            )
        if refused is not None and isinstance(exc, openai.APIError):
            status = f"HTTP {exc.status_code}" if isinstance(exc, openai.APIStatusError) else "an error"
            fix = (
                "set structured_output to auto (P2C_STRUCTURED_OUTPUT=auto) to let p2c fall back, or off"
                if refused == "response_format"
                else "set token_parameter to auto in the settings file"
                if refused in ("max_tokens", "max_completion_tokens")
                else f"unset {refused} (its flag, P2C_ variable or settings-file entry)"
            )
            return BackendError(
                f"The model server at {self._base_url} refused the request's {refused} with {status} ({where}): "
                f"{_message(exc) if isinstance(exc, openai.APIStatusError) else _short(str(exc), 200)}. Sending "
                f"it again cannot help: {fix}; {resume}."
            )
        if isinstance(exc, openai.APIStatusError):
            hint = (
                "Check --model, --max-tokens and the server's limits"
                if exc.status_code in (400, 422)
                else "Rerun to resume; finished artifacts are kept"
            )
            return BackendError(
                f"The model server answered HTTP {exc.status_code}{tried} ({where}): {_message(exc)}. {hint}."
            )
        if isinstance(exc, openai.APIResponseValidationError):
            return ReplyError(f"The model server sent a reply that is not a chat completion ({where}).")
        return BackendError(f"The model call failed ({where}): {_short(str(exc))}")

    def _scrubbed(self, error: Exception) -> Exception:
        """Servers may echo the key, the Authorization header or URL credentials in errors: never pass them on."""
        return Scrubber.for_settings(self.settings).error(error)


class _NotACompletion(Exception):
    """The server answered 200 with something that is not a chat completion (an HTML page, usually)."""

    def __init__(self, body: str) -> None:
        super().__init__(body)
        self.body = body


#: Parameters a server may refuse by name, and the words that name each in an error body.
_NAMED_BY = {
    "response_format": ("response_format", "json_schema", "json_object", "structured output", "guided_json"),
    "max_completion_tokens": ("max_completion_tokens",),
    "max_tokens": ("max_tokens",),
    "stream_options": ("stream_options", "include_usage"),
    "reasoning_effort": ("reasoning_effort",),
    "temperature": ("temperature",),
}
#: How a refusal reads ("unsupported", pydantic's "extra inputs are not permitted", "input should be ...").
_REFUSAL_WORDS = (
    "unsupported", "not supported", "unknown", "unrecogni", "not permitted", "not allowed", "unexpected",
    "invalid", "input should be", "must be", "does not support", "not a valid", "extra",
)  # fmt: skip
#: How a server names images it cannot take (OpenAI, vLLM, llama.cpp, LM Studio, Ollama word it differently).
_IMAGE_WORDS = ("image", "multimodal", "multi-modal", "vision", "mmproj")
_IMAGE_REFUSALS = ("only supported by", "at most 0", "not a multimodal", "cannot read", "missing data")
#: Words of a too-long request, which names max_tokens without refusing the parameter itself.
_SIZE_WORDS = ("context", "too large", "too long", "exceed", "maximum")


def _error_text(exc: BaseException) -> str:
    body = exc.body if isinstance(exc, openai.APIError) else None
    return f"{exc} {json.dumps(body, default=str) if body is not None else ''}".lower()


def _refused_parameter(exc: BaseException, params: dict[str, Any]) -> str | None:
    """The request parameter a server refused, read from the error body whatever the status (servers say
    400, 422 or 500); None when the error is not such a refusal (and so may be worth a retry). "images" when a
    request carrying images (`--figures`) was refused for them: a text-only model or server."""
    if not isinstance(exc, openai.APIError) or isinstance(exc, openai.APIConnectionError):
        return None
    if isinstance(exc, openai.APIStatusError) and (
        exc.status_code in (401, 403, 404, 408, 429) or is_html(exc.response)
    ):
        return None
    text = _error_text(exc)
    images = has_images(params.get("messages") or ()) and any(word in text for word in _IMAGE_WORDS)
    if images and any(word in text for word in (*_REFUSAL_WORDS, *_SIZE_WORDS, *_IMAGE_REFUSALS)):
        return "images"
    for name, words in _NAMED_BY.items():
        if name not in params or not any(word in text for word in words):
            continue
        if name == "response_format":
            return name  # a server that names the format it cannot follow refuses it, whatever the wording
        if any(word in text for word in _REFUSAL_WORDS) and not any(word in text for word in _SIZE_WORDS):
            return name
    return None


def _with_schema(messages: Messages, schema: dict[str, Any]) -> Messages:
    """The messages with the JSON schema stated in the last one, unless a message already states it."""
    text = json.dumps(schema, separators=(",", ":"), sort_keys=True)
    if any(text in text_of(message.get("content")) for message in messages) or not messages:
        return messages
    last = messages[-1]
    ask = f"\n\nReply with one JSON object only, following this JSON schema:\n{text}"
    content = last.get("content")
    if isinstance(content, list):  # text and images: the ask is one more text part
        return [*messages[:-1], {**last, "content": [*content, {"type": "text", "text": ask.lstrip()}]}]
    return [*messages[:-1], {**last, "content": f"{content or ''}{ask}"}]


def _message(exc: openai.APIStatusError, limit: int = 300) -> str:
    """The server's own words (the error body's message), without the SDK's "Error code: N - " prefix."""
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]
    text = body.get("message") if isinstance(body, dict) else None
    return _short(text if isinstance(text, str) and text else exc.message, limit).rstrip(".")


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _field(value: Any, name: str) -> Any:
    """A field of the SDK's usage object or of the plain JSON a stream carries."""
    return value.get(name) if isinstance(value, dict) else getattr(value, name, None)


def _transport_errors(response: Any) -> tuple[type[BaseException], ...]:
    """The HTTP library's transport errors (the `openai` SDK ships its own httpx, so ask the response's)."""
    library = sys.modules.get(type(response).__module__.split(".")[0])
    error = getattr(library, "TransportError", None)
    return (error,) if isinstance(error, type) and issubclass(error, BaseException) else ()


def sse_chunks(response: Any, deadline: _Deadline | None = None) -> Iterator[dict[str, Any]]:
    """The JSON objects of a chat-completions event stream, up to `data: [DONE]`.

    An error object in the stream raises `openai.APIError`; a connection that breaks mid-stream raises
    `IncompleteReply` (retried: nothing of the reply is kept); a passed `deadline` raises `CallDeadline`.
    """
    data: list[str] = []
    try:
        for line in response.iter_lines():
            if deadline is not None and deadline.expired:
                raise CallDeadline(deadline.seconds)
            if line.startswith("data:"):
                data.append(line[5:].lstrip())
                continue
            if line or not data:
                continue  # comments, `event:` / `id:` fields, keep-alives
            payload = "\n".join(data)
            data = []
            if payload.startswith("[DONE]"):
                return
            try:
                chunk = json.loads(payload)
            except ValueError:
                raise IncompleteReply(f"the stream carried something that is not JSON: {payload[:80]!r}") from None
            if not isinstance(chunk, dict):
                continue
            if chunk.get("error"):
                error = chunk["error"]
                message = error.get("message") if isinstance(error, dict) else None
                text = str(message or "an error occurred during streaming")
                raise openai.APIError(text, response.request, body=error)
            yield chunk
    except _transport_errors(response) as exc:
        raise IncompleteReply(f"the connection broke during the reply ({type(exc).__name__})") from None
