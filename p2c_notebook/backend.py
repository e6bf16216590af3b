"""The model backend: one small interface, and the OpenAI-compatible client behind it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import openai

from p2c_notebook.errors import BackendError, ConfigError, ReplyError
from p2c_notebook.settings import Settings
from p2c_notebook.usage import Usage, cost_of

Messages = list[dict[str, str]]


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
    text: str
    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None


class Backend(Protocol):
    """What a stage needs from a model: a completion for a request, streaming deltas as they come."""

    @property
    def description(self) -> str: ...

    @property
    def model(self) -> str: ...

    def complete(self, request: ChatRequest, on_delta: Callable[[str], None]) -> Completion: ...

    def close(self) -> None: ...


_OFFICIAL = "https://api.openai.com/v1"


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
        self._client = openai.OpenAI(
            api_key=key, base_url=base_url, timeout=settings.timeout, max_retries=settings.max_retries
        )
        self._structured = settings.structured_output
        self._lock = threading.Lock()
        self._on_close = on_close

    @property
    def model(self) -> str:
        return self.settings.model

    @property
    def description(self) -> str:
        return f"{self.settings.model} at {self._base_url}"

    def close(self) -> None:
        self._client.close()
        if self._on_close:
            self._on_close()

    def _params(self, request: ChatRequest) -> dict[str, Any]:
        s = self.settings
        params: dict[str, Any] = {"model": s.model, "messages": request.messages}
        reasoning = s.is_reasoning_model()
        token_param = s.token_parameter
        if token_param == "auto":
            token_param = "max_completion_tokens" if reasoning else "max_tokens"
        params[token_param] = s.max_tokens
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

    def complete(self, request: ChatRequest, on_delta: Callable[[str], None]) -> Completion:
        params = self._params(request)
        try:
            return self._call(params, on_delta)
        except openai.BadRequestError as exc:
            if "response_format" in params and self._structured == "auto" and _mentions_format(exc):
                with self._lock:
                    self._structured = "off"  # this server has no structured output: parse tolerantly
                params.pop("response_format")
                return self._call(params, on_delta)
            raise self._translate(exc, request) from None
        except openai.OpenAIError as exc:
            raise self._translate(exc, request) from None

    def _call(self, params: dict[str, Any], on_delta: Callable[[str], None]) -> Completion:
        if not self.settings.stream:
            response = self._client.chat.completions.create(**params)
            choice = response.choices[0] if response.choices else None
            text = (choice.message.content or "") if choice else ""
            return Completion(text, self._usage(response.usage), choice.finish_reason if choice else None)
        stream = self._client.chat.completions.create(**params, stream=True, stream_options={"include_usage": True})
        parts: list[str] = []
        finish: str | None = None
        usage = None
        with stream:
            for chunk in stream:
                if chunk.usage is not None:
                    usage = chunk.usage
                for choice in chunk.choices:
                    delta = choice.delta.content if choice.delta else None
                    if delta:
                        parts.append(delta)
                        on_delta(delta)
                    if choice.finish_reason:
                        finish = choice.finish_reason
        return Completion("".join(parts), self._usage(usage), finish)

    def _usage(self, usage: Any) -> Usage:
        if usage is None:
            return Usage(calls=1, cost=None)
        prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion = int(getattr(usage, "completion_tokens", 0) or 0)
        details = getattr(usage, "prompt_tokens_details", None)
        cached = int(getattr(details, "cached_tokens", 0) or 0) if details is not None else 0
        cost = cost_of(self.settings.model, prompt, completion, cached, self.settings.prices)
        return Usage(prompt, completion, cached, 1, cost)

    def _translate(self, exc: openai.OpenAIError, request: ChatRequest) -> Exception:
        where = f"{request.stage}" + (f" for {request.file}" if request.file else "")
        if isinstance(exc, openai.APITimeoutError):
            return BackendError(
                f"The model server at {self._base_url} did not answer in time ({where}). "
                "Raise --timeout or P2C_TIMEOUT, or try again; finished artifacts are kept."
            )
        if isinstance(exc, openai.APIConnectionError):
            return BackendError(
                f"Cannot reach the model server at {self._base_url} ({where}). Is it running? "
                "Check --base-url / OPENAI_BASE_URL; finished artifacts are kept, rerun to resume."
            )
        if isinstance(exc, openai.AuthenticationError):
            return BackendError(
                f"The server at {self._base_url} rejected the API key. Set a valid OPENAI_API_KEY or P2C_API_KEY."
            )
        if isinstance(exc, openai.NotFoundError):
            return BackendError(
                f"The server at {self._base_url} does not know the model {self.settings.model!r} ({where}). "
                "Pass an available model with --model or P2C_MODEL."
            )
        if isinstance(exc, openai.RateLimitError):
            return BackendError(
                f"Rate limited by {self._base_url} after {self.settings.max_retries} retries ({where}). "
                "Wait and rerun (finished artifacts are kept), or lower --concurrency."
            )
        if isinstance(exc, openai.APIStatusError):
            return BackendError(
                f"The model server answered HTTP {exc.status_code} ({where}): {_short(exc.message)}. "
                "Rerun to resume; finished artifacts are kept."
            )
        if isinstance(exc, openai.APIResponseValidationError):
            return ReplyError(f"The model server sent a reply that is not a chat completion ({where}).")
        return BackendError(f"The model call failed ({where}): {_short(str(exc))}")


def _mentions_format(exc: openai.BadRequestError) -> bool:
    text = str(exc).lower()
    return "response_format" in text or "json_schema" in text or "structured" in text


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


def make_backend(settings: Settings, notify: Callable[[str], None] | None = None) -> Backend:
    """Build the backend a settings object names (wrapped in a recorder with `settings.record`).

    `notify` receives one line when the choice is not obvious from the settings (auto -> local model).
    """
    backend = _make(settings, notify)
    if settings.record:
        from p2c_notebook.replay import RecordingBackend

        secrets = [settings.api_key.get_secret_value()] if settings.api_key else []
        return RecordingBackend(backend, settings.record, secrets)
    return backend


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
