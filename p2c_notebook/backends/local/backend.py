"""The local backend: a small GGUF model served by a llama.cpp child process, reached with the openai client.

Small models need help to write valid artifacts, so the settings are tuned here rather than in the stages:
grammar-constrained JSON for schema'd artifacts (llama-cpp-python's `{"type": "json_object", "schema": ...}`),
a low temperature with a repeat penalty (greedy decoding makes small models loop), and a token limit per call
that leaves room for the prompt in the context window. Calls are served one at a time, as the server does, so
queued calls do not run into the client's time-out.

The backend owns the server process: when it dies (the OOM killer's SIGKILL, a crash), the call is not retried
against a dead port but the server is started again and the call re-sent; a second death in the same call, or
more than MAX_RESTARTS in one run, ends the run with one line naming the exit status and the server's log.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from p2c_notebook.backends.base import ChatRequest, Completion, OnRetry
from p2c_notebook.backends.local.server import LlamaServer, ServerStartError, describe_exit
from p2c_notebook.backends.local.weights import DEFAULT_LOCAL_MODEL, MODELS, Weights, resolve
from p2c_notebook.backends.openai import OpenAIBackend
from p2c_notebook.backends.retry import RetryNotice
from p2c_notebook.content import content_tokens
from p2c_notebook.errors import BackendError
from p2c_notebook.run.usage import Usage
from p2c_notebook.settings import Settings
from p2c_notebook.tokens import estimate_tokens

TEMPERATURE = 0.2
REPEAT_PENALTY = 1.1
MAX_TOKENS = 3072  # per reply unless --max-tokens says otherwise: stops a looping small model in ~2 min
DEFAULT_N_CTX = 16384
# A whole reply of MAX_TOKENS on a busy 2-core CPU can take half an hour (3 tokens/s measured with other work
# running), and a long prompt is read for minutes before the first token: the network defaults (600 s a call,
# 120 s of silence) would cut off, and retry, a generation that is merely slow.
LOCAL_TIMEOUT = 3600.0
LOCAL_READ_TIMEOUT = 900.0
# llama.cpp refuses a grammar whose repetitions exceed its limits ("exceeds sane defaults"), and
# llama-cpp-python's server then exits: string bounds above about 1,000 characters must be tightened.
GRAMMAR_MAX_LENGTH = 1000
# Restarts of a server that died, per backend (one run); a call that kills the server twice fails at once.
MAX_RESTARTS = 2
DEATH_WAIT_S = 1.0  # a killed server's connections break an instant before it can be reaped


def grammar_safe(schema: Any, max_length: int = GRAMMAR_MAX_LENGTH) -> Any:
    """A copy of a JSON schema whose string bounds llama.cpp's grammar parser accepts."""
    if isinstance(schema, dict):
        safe = {key: grammar_safe(value, max_length) for key, value in schema.items()}
        if isinstance(safe.get("maxLength"), int) and safe["maxLength"] > max_length:
            safe["maxLength"] = max_length
        return safe
    if isinstance(schema, list):
        return [grammar_safe(item, max_length) for item in schema]
    return schema


def tuned_settings(settings: Settings, model: str, base_url: str) -> Settings:
    """The user's settings with what a small local model needs; values the user set explicitly are kept."""
    given = settings.model_fields_set
    extra: dict[str, Any] = {"repeat_penalty": REPEAT_PENALTY, **settings.extra_body}
    return settings.model_copy(
        update={
            "base_url": base_url,
            "api_key": None,
            "model": model,
            "structured_output": "json_object_schema",
            "temperature": settings.temperature if "temperature" in given else TEMPERATURE,
            "max_tokens": settings.max_tokens if "max_tokens" in given else MAX_TOKENS,
            "token_parameter": "max_tokens",
            "reasoning_effort": None,
            "extra_body": extra,
            "max_retries": min(settings.max_retries, 1),  # a retry re-runs a whole CPU generation
            "timeout": settings.timeout if "timeout" in given else LOCAL_TIMEOUT,
            "read_timeout": settings.read_timeout if "read_timeout" in given else LOCAL_READ_TIMEOUT,
            # A small model's Python sometimes does not parse; a second repair is cheaper than a failed run.
            "max_repairs": settings.max_repairs if "max_repairs" in given else 2,
            "prices": {**settings.prices, model: (0.0, 0.0, 0.0)},  # this machine's time, not dollars
        }
    )


def planned_files(messages: list[dict[str, str]]) -> list[str] | None:
    """The design's file list, from the latest assistant turn holding the design JSON (None when absent)."""
    for message in reversed(messages):
        if message.get("role") != "assistant":
            continue
        try:
            data = json.loads(message.get("content", ""))
        except ValueError:
            continue
        files = data.get("file_list") if isinstance(data, dict) else None
        if isinstance(files, list) and files and all(isinstance(f, str) for f in files):
            return list(dict.fromkeys(files))
    return None


def constrain_logic(schema: dict[str, Any], files: list[str]) -> dict[str, Any]:
    """The logic design's schema narrowed to the designed files: the grammar then cannot name a file the
    design does not plan, nor leave one out (small models do both, and repeat it when re-asked)."""
    narrowed = copy.deepcopy(schema)
    item = narrowed.get("$defs", {}).get("FileLogic", {}).get("properties")
    listing = narrowed.get("properties", {}).get("files")
    if not isinstance(item, dict) or not isinstance(listing, dict) or "path" not in item or "depends_on" not in item:
        return schema
    item["path"] = {"type": "string", "enum": files}
    item["depends_on"] = {"type": "array", "items": {"type": "string", "enum": files}, "maxItems": len(files)}
    listing["minItems"] = listing["maxItems"] = len(files)
    return narrowed


def describe_choice(model: str | None) -> str:
    """What runs, in words, for the one-line notice."""
    name = model or DEFAULT_LOCAL_MODEL
    spec = MODELS.get(name)
    return f"{name} ({spec.title})" if spec else name


def strict_json(text: str) -> str:
    """llama-cpp-python's JSON grammar lets raw newlines and tabs into strings, which JSON forbids:
    re-encode such a reply (unchanged when it is strict JSON already or not JSON at all)."""
    try:
        json.loads(text)
        return text
    except ValueError:
        pass
    try:
        return json.dumps(json.loads(text, strict=False), ensure_ascii=False)
    except ValueError:
        return text


def _estimated_usage(request: ChatRequest, text: str, pieces: int) -> Usage:
    """The server reports no usage when streaming: estimate the prompt, count the streamed tokens."""
    prompt = sum(content_tokens(m.get("content"), estimate_tokens) + 4 for m in request.messages)
    return Usage(prompt, pieces or estimate_tokens(text), 0, 1, 0.0, estimated=True)


class _ServerDied(Exception):
    """The server died during a call: raised out of the client's retry loop, which would only retry a dead port."""


class LocalBackend:
    """Starts the llama.cpp server for `model` (a registered name or a .gguf path) and talks to it."""

    def __init__(self, settings: Settings, model: str | None = None, n_ctx: int | None = None) -> None:
        self.weights: Weights = resolve(model or settings.local_model or DEFAULT_LOCAL_MODEL)
        spec_ctx = self.weights.spec.n_ctx if self.weights.spec else DEFAULT_N_CTX
        self.n_ctx = n_ctx or settings.local_n_ctx or spec_ctx
        log = Path(settings.local_server_log) if settings.local_server_log else None
        self.server = LlamaServer(self.weights.path, self.weights.name, self.n_ctx, log_path=log)
        self.restarts = 0
        self._given = settings
        base_url = self.server.start()
        try:
            self.settings = tuned_settings(settings, self.weights.name, base_url)
            self._inner = OpenAIBackend(self.settings)
        except BaseException:
            self.server.close()
            raise
        self._lock = threading.Lock()

    @property
    def model(self) -> str:
        return self.weights.name

    @property
    def context_window(self) -> int:
        return self.n_ctx

    @property
    def description(self) -> str:
        return (
            f"{self.weights.name} on this machine (llama.cpp, {self.server.n_threads} threads, "
            f"context {self.n_ctx}) at {self.server.base_url}"
        )

    def complete(
        self, request: ChatRequest, on_delta: Callable[[str], None], on_retry: OnRetry | None = None
    ) -> Completion:
        with self._lock:
            request = self._constrained(request)
            pieces = 0

            def counting(delta: str) -> None:
                nonlocal pieces
                pieces += 1
                on_delta(delta)

            def guarded(notice: RetryNotice) -> None:
                if self.server.exit_code(DEATH_WAIT_S) is not None:
                    raise _ServerDied
                if on_retry is not None:
                    on_retry(notice)

            restarted = False
            while True:
                if not self.server.running():
                    self._restart(request, on_retry, again=restarted)
                    restarted = True
                    pieces = 0
                try:
                    completion = self._inner.complete(request, counting, guarded)
                    break
                except _ServerDied:
                    continue
                except BackendError as exc:
                    if self.server.exit_code(DEATH_WAIT_S) is not None:
                        continue
                    if "context window" in str(exc) or "exceed context" in str(exc):
                        raise BackendError(
                            f"{exc} The prompt does not fit the local model's context of {self.n_ctx} tokens: "
                            "raise it with P2C_LOCAL_N_CTX (more memory), or use a shorter paper."
                        ) from None
                    raise
        if request.schema is not None:
            completion.text = strict_json(completion.text)
        if completion.usage.estimated or not completion.usage.prompt_tokens:
            completion.usage = _estimated_usage(request, completion.text, pieces)
        return completion

    def _constrained(self, request: ChatRequest) -> ChatRequest:
        """The request with a schema the grammar parser accepts, narrowed to the designed files."""
        if request.schema is None:
            return request
        schema = grammar_safe(request.schema)
        files = planned_files(request.messages) if request.schema_name == "LogicDesign" else None
        if files:
            schema = constrain_logic(schema, files)
        return dataclasses.replace(request, schema=schema)

    def _restart(self, request: ChatRequest, on_retry: OnRetry | None, again: bool) -> None:
        """Start a dead server again and point the client at it; one line when that is not allowed or fails."""
        how = describe_exit(self.server.exit_code())
        where = f"stage {request.stage}" + (f", file {request.file}" if request.file else "")
        keep = "rerun to resume; finished artifacts are kept"
        if again or self.restarts >= MAX_RESTARTS:
            self.server.keep_log()
            after = "after a restart" if again else f"after {self.restarts} restarts in this run"
            raise BackendError(
                f"The local llama.cpp server died again ({how}) while answering {where}, {after}; "
                f"{self.server.where_logged()}. It may be running out of memory: close other programs, lower "
                f"P2C_LOCAL_N_CTX or use a smaller model, then {keep}."
            )
        if on_retry is not None:  # what was streamed is void: the call is sent again from the start
            on_retry(RetryNotice(f"the local llama.cpp server died ({how}); starting it again", 0.0, 2, 2, True))
        self.restarts += 1
        try:
            base_url = self.server.restart()
        except ServerStartError as exc:
            raise BackendError(
                f"The local llama.cpp server died ({how}) while answering {where} and did not start again: {exc}"
            ) from None
        previous, self.settings = self._inner, tuned_settings(self._given, self.weights.name, base_url)
        self._inner = OpenAIBackend(self.settings)
        previous.close()

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self.server.close()
