"""The model backend: one small interface, and the OpenAI-compatible client behind it."""

from __future__ import annotations

import functools
import json
import os
import random
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import openai
from openai.types.chat import ChatCompletion

from p2c_notebook.errors import BackendError, ConfigError, ReplyError
from p2c_notebook.retry import IncompleteReply, RetryNotice, RetryPolicy, classify, is_html, retry_after
from p2c_notebook.settings import Settings
from p2c_notebook.tokens import estimate_tokens
from p2c_notebook.usage import Usage, cost_of

Messages = list[dict[str, str]]
OnRetry = Callable[[RetryNotice], None]

CONTINUE = (
    "Your reply was cut off at the output token limit. Continue exactly where you stopped, from the next "
    "character on: do not repeat anything, do not add a preamble, do not reopen a code block."
)


@dataclass
class ChatRequest:
    """One call: the messages plus which artifact it is for (sent as X-P2C-* headers for tracing)."""

    messages: Messages
    stage: str
    file: str = ""
    attempt: int = 1
    schema: dict[str, Any] | None = None
    schema_name: str = "artifact"


@dataclass
class Completion:
    """A reply; `max_tokens` is the output limit that was in effect (None when the backend cannot tell) and
    `continuations` how many times a reply cut off at that limit was continued."""

    text: str
    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None
    max_tokens: int | None = None
    continuations: int = 0


class Backend(Protocol):
    """What a stage needs from a model: a completion for a request, streaming deltas as they come.

    `on_retry` hears about each retry before its wait; when its `restart` is true the text streamed so far
    is void (the retry streams the reply again from the start).
    """

    @property
    def description(self) -> str: ...

    @property
    def model(self) -> str: ...

    def complete(
        self, request: ChatRequest, on_delta: Callable[[str], None], on_retry: OnRetry | None = None
    ) -> Completion: ...

    def close(self) -> None: ...


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
        # Retries are ours (RetryPolicy): announced, jittered, honouring Retry-After, resetting streamed text.
        self._client = openai.OpenAI(
            api_key=key,
            base_url=base_url,
            timeout=settings.timeout,
            max_retries=0,
            http_client=openai.DefaultHttpxClient(verify=_verified_tls()),
        )
        self._structured = settings.structured_output
        self._lock = threading.Lock()
        self._on_close = on_close
        self.policy = RetryPolicy(settings.max_retries, settings.retry_base_delay, settings.retry_max_delay)
        self._random = random.Random()
        self._sleep: Callable[[float], None] = time.sleep

    @property
    def model(self) -> str:
        return self.settings.model

    @property
    def description(self) -> str:
        from p2c_notebook.replay import Scrubber  # replay imports this module

        return Scrubber().text(f"{self.settings.model} at {self._base_url}")  # no user:password@ in URLs

    def close(self) -> None:
        self._client.close()
        if self._on_close:
            self._on_close()

    @property
    def max_tokens(self) -> int:
        """The output token limit every request carries."""
        return self.settings.max_tokens

    def _params(self, request: ChatRequest) -> dict[str, Any]:
        s = self.settings
        params: dict[str, Any] = {"model": s.model, "messages": request.messages}
        reasoning = s.is_reasoning_model()
        token_param = s.token_parameter
        if token_param == "auto":
            token_param = "max_completion_tokens" if reasoning else "max_tokens"
        params[token_param] = self.max_tokens
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
        if s.extra_body:
            params["extra_body"] = dict(s.extra_body)
        params["extra_headers"] = {
            "X-P2C-Stage": request.stage,
            "X-P2C-File": request.file,
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
        reply, streamed again after a restart so the user still sees the whole reply."""
        attempt = 1
        while True:
            streamed = False

            def delta(text: str) -> None:
                nonlocal streamed
                streamed = True
                on_delta(text)

            try:
                return self._call_checked(params, delta, request)
            except (openai.OpenAIError, IncompleteReply, _NotACompletion) as exc:
                reason = classify(exc)
                if streamed and reason == "the connection failed":
                    reason = "the reply stream was cut off"
                if reason is None or attempt >= self.policy.attempts:
                    raise self._scrubbed(self._translate(exc, request, attempt)) from None
                response = exc.response if isinstance(exc, openai.APIStatusError) else None
                wait = self.policy.delay(attempt, retry_after(response.headers if response else None), self._random)
                attempt += 1
                if on_retry is not None:
                    on_retry(RetryNotice(reason, wait, attempt, self.policy.attempts, streamed))
                self._sleep(wait)
                if streamed and shown:
                    on_delta(shown)

    def _call_checked(
        self, params: dict[str, Any], on_delta: Callable[[str], None], request: ChatRequest
    ) -> Completion:
        try:
            completion = self._call(params, on_delta, request)
        except openai.BadRequestError as exc:
            if "response_format" in params and self._structured == "auto" and _mentions_format(exc):
                with self._lock:
                    self._structured = "off"  # this server has no structured output: parse tolerantly
                params.pop("response_format")
                completion = self._call(params, on_delta, request)
            else:
                raise
        return completion

    def _call(self, params: dict[str, Any], on_delta: Callable[[str], None], request: ChatRequest) -> Completion:
        if not self.settings.stream:
            response = self._client.chat.completions.create(**params)
            if not isinstance(response, ChatCompletion):  # the SDK hands back the raw body when it is not JSON
                raise _NotACompletion(str(response))
            choice = response.choices[0] if response.choices else None
            text = (choice.message.content or "") if choice else ""
            return Completion(text, self._usage(response.usage, params, text), choice.finish_reason if choice else None)
        stream = self._client.chat.completions.create(**params, stream=True, stream_options={"include_usage": True})
        parts: list[str] = []
        finish: str | None = None
        usage = None
        with stream:
            if is_html(stream.response):
                raise _NotACompletion(stream.response.read().decode("utf-8", "replace")[:300])
            # The chunks are read as plain JSON: building the SDK's typed chunk objects costs ~0.3 ms each, which
            # with several replies streaming at once is most of a CPU.
            for chunk in sse_chunks(stream.response):
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or ():
                    delta = (choice.get("delta") or {}).get("content")
                    if delta:
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
            prompt = sum(estimate_tokens(str(m.get("content") or "")) + 4 for m in params["messages"])
            completion = estimate_tokens(text)
            cost = cost_of(self.settings.model, prompt, completion, 0, self.settings.prices)
            return Usage(prompt, completion, 0, 1, cost, estimated=True)
        prompt = int(_field(usage, "prompt_tokens") or 0)
        completion = int(_field(usage, "completion_tokens") or 0)
        details = _field(usage, "prompt_tokens_details")
        cached = int(_field(details, "cached_tokens") or 0) if details is not None else 0
        cost = cost_of(self.settings.model, prompt, completion, cached, self.settings.prices)
        return Usage(prompt, completion, cached, 1, cost)

    def _translate(self, exc: BaseException, request: ChatRequest, attempts: int) -> Exception:
        where = f"stage {request.stage}" + (f", file {request.file}" if request.file else "")
        tried = f" after {attempts} attempts" if attempts > 1 else ""
        resume = "finished artifacts are kept: rerun the same command to resume"
        if isinstance(exc, _NotACompletion):
            return BackendError(
                f"The server at {self._base_url} sent a web page instead of a chat completion ({where}): "
                f"{_short(exc.body, 120)!r}. Check --base-url / OPENAI_BASE_URL (an OpenAI-compatible API usually "
                f"ends in /v1); {resume}."
            )
        if isinstance(exc, IncompleteReply):
            return BackendError(
                f"The reply stream from {self._base_url} was cut off before the model finished{tried} ({where}). "
                f"Check the server or a proxy in between, or turn streaming off (P2C_STREAM=false); {resume}."
            )
        if isinstance(exc, openai.APITimeoutError):
            return BackendError(
                f"The model server at {self._base_url} did not answer in time{tried} ({where}; the time-out is "
                f"{self.settings.timeout:g} s). Raise --timeout or P2C_TIMEOUT, or try again; {resume}."
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
        from p2c_notebook.replay import Scrubber  # replay imports this module

        secrets = [self.settings.api_key.get_secret_value()] if self.settings.api_key else []
        text = Scrubber(secrets).text(str(error))
        return error if text == str(error) else type(error)(text)


class _NotACompletion(Exception):
    """The server answered 200 with something that is not a chat completion (an HTML page, usually)."""

    def __init__(self, body: str) -> None:
        super().__init__(body)
        self.body = body


def _mentions_format(exc: openai.BadRequestError) -> bool:
    text = str(exc).lower()
    return "response_format" in text or "json_schema" in text or "structured" in text


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


def choose_backend(settings: Settings) -> tuple[str, str]:
    """(kind, argument) of the backend to build. `auto`: a configured key or base URL means an
    OpenAI-compatible server; nothing configured means the local model."""
    kind, _, arg = settings.backend.partition(":")
    if kind == "auto":
        return ("openai", "") if settings.base_url or settings.api_key else ("local", arg)
    return kind, arg


def _field(value: Any, name: str) -> Any:
    """A field of the SDK's usage object or of the plain JSON a stream carries."""
    return value.get(name) if isinstance(value, dict) else getattr(value, name, None)


def _transport_errors(response: Any) -> tuple[type[BaseException], ...]:
    """The HTTP library's transport errors (the `openai` SDK ships its own httpx, so ask the response's)."""
    library = sys.modules.get(type(response).__module__.split(".")[0])
    error = getattr(library, "TransportError", None)
    return (error,) if isinstance(error, type) and issubclass(error, BaseException) else ()


def sse_chunks(response: Any) -> Iterator[dict[str, Any]]:
    """The JSON objects of a chat-completions event stream, up to `data: [DONE]`.

    An error object in the stream raises `openai.APIError`; a connection that breaks mid-stream raises
    `IncompleteReply` (retried: nothing of the reply is kept).
    """
    data: list[str] = []
    try:
        for line in response.iter_lines():
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


def make_backend(settings: Settings, notify: Callable[[str], None] | None = None) -> Backend:
    """Build the backend a settings object names (wrapped in a recorder with `settings.record`).

    `notify` receives one line when the choice is not obvious from the settings (auto -> local model).
    """
    if settings.replay_fallback and choose_backend(settings)[0] == "replay":
        return _extended_replay(settings, notify)
    backend = _make(settings, notify)
    if settings.record:
        from p2c_notebook.replay import RecordingBackend

        secrets = [settings.api_key.get_secret_value()] if settings.api_key else []
        return RecordingBackend(backend, settings.record, secrets)
    return backend


def _extended_replay(settings: Settings, notify: Callable[[str], None] | None) -> Backend:
    """Replay the cassette; what it lacks goes to the fallback backend (recorded with `settings.record`)."""
    from p2c_notebook.replay import ReplayBackend

    fallback = make_backend(settings.model_copy(update={"backend": settings.replay_fallback}), notify)
    return ReplayBackend(choose_backend(settings)[1], fallback=fallback)


def _make(settings: Settings, notify: Callable[[str], None] | None) -> Backend:
    kind, arg = choose_backend(settings)
    if kind == "openai":
        return OpenAIBackend(settings)
    if kind == "local":
        from p2c_notebook.local import LocalBackend, describe_choice

        model = arg or settings.local_model
        if notify and settings.backend.partition(":")[0] == "auto":
            notify(
                f"No OPENAI_API_KEY or OPENAI_BASE_URL set: running the local model {describe_choice(model)} "
                "on this machine; set OPENAI_API_KEY or OPENAI_BASE_URL, or pass --backend openai, to use a server."
            )
        return LocalBackend(settings, model)
    if kind == "replay":
        if not arg:
            raise ConfigError("--backend replay needs a cassette file: --backend replay:CASSETTE.jsonl")
        from p2c_notebook.replay import ReplayBackend

        return ReplayBackend(arg)
    if kind == "scripted":
        if not arg:
            raise ConfigError("--backend scripted needs a scenario file: --backend scripted:SCENARIO.yaml")
        from p2c_notebook.testing import ScriptedServer

        server = ScriptedServer(arg)
        base_url = server.start()
        model = settings.model if "model" in settings.model_fields_set else "scripted"
        scripted = settings.model_copy(update={"base_url": base_url, "api_key": None, "model": model})
        return OpenAIBackend(scripted, on_close=server.stop)
    raise ConfigError(
        f"Unknown backend {settings.backend!r}: use auto, openai, local[:MODEL], replay:CASSETTE.jsonl "
        "or scripted:SCENARIO.yaml."
    )
