"""Settings: config file < environment (OPENAI_*, then P2C_*) < explicit arguments (CLI flags, magics)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, SecretStr, ValidationError

from p2c_notebook.errors import ConfigError

DEFAULT_MODEL = "gpt-4o-mini"

_ENV = {
    "OPENAI_API_KEY": "api_key",
    "OPENAI_BASE_URL": "base_url",
    "P2C_API_KEY": "api_key",
    "P2C_BASE_URL": "base_url",
    "P2C_MODEL": "model",
    "P2C_BACKEND": "backend",
    "P2C_REASONING_EFFORT": "reasoning_effort",
    "P2C_MAX_TOKENS": "max_tokens",
    "P2C_TEMPERATURE": "temperature",
    "P2C_CONCURRENCY": "concurrency",
    "P2C_TOKENS_PER_MINUTE": "tokens_per_minute",
    "P2C_STRUCTURED_OUTPUT": "structured_output",
    "P2C_STREAM": "stream",
    "P2C_TIMEOUT": "timeout",
    "P2C_READ_TIMEOUT": "read_timeout",
    "P2C_MAX_REPLY_CHARS": "max_reply_chars",
    "P2C_MAX_RETRIES": "max_retries",
    "P2C_RETRY_BASE_DELAY": "retry_base_delay",
    "P2C_RETRY_MAX_DELAY": "retry_max_delay",
    "P2C_MAX_CONTINUATIONS": "max_continuations",
    "P2C_MAX_REPAIRS": "max_repairs",
    "P2C_LOCAL_MODEL": "local_model",
    "P2C_LOCAL_N_CTX": "local_n_ctx",
    "P2C_RECORD": "record",
    "P2C_REPLAY_FALLBACK": "replay_fallback",
    "P2C_CONTEXT_WINDOW": "context_window",
    "P2C_FIGURES": "figures",
    "P2C_MAX_FILES": "max_files",
}


class Settings(BaseModel):
    """How to reach the model. Provider quirks live here, not in branches through the code."""

    backend: str = Field(
        default="auto",
        description="auto | openai | local[:MODEL_OR_GGUF] | replay:CASSETTE.jsonl | scripted:SCENARIO.yaml",
    )
    model: str = DEFAULT_MODEL
    base_url: str | None = None
    api_key: SecretStr | None = None
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None
    max_tokens: int = Field(default=8192, gt=0)
    token_parameter: Literal["auto", "max_tokens", "max_completion_tokens"] = "auto"
    temperature: float | None = None
    # json_object_schema: llama-cpp-python's {"type": "json_object", "schema": ...} (grammar-constrained)
    structured_output: Literal["auto", "json_schema", "json_object", "json_object_schema", "off"] = "auto"
    extra_body: dict[str, Any] = Field(default_factory=dict, description="extra request fields, e.g. repeat_penalty")
    stream: bool = True
    timeout: float = Field(
        default=600.0, gt=0, description="seconds: the most one call may take, start to end (a wall-clock deadline)"
    )
    read_timeout: float = Field(
        default=120.0,
        gt=0,
        description="seconds: the longest silence while waiting for the server (no byte at all); the "
        "smaller of this and timeout applies",
    )
    max_reply_chars: int = Field(
        default=400_000,
        gt=0,
        description="characters: a reply growing past this is stopped mid-stream and is an error (never saved)",
    )
    max_retries: int = Field(
        default=3,
        ge=0,
        description="retries of one call after HTTP 408/409/429/5xx, a dropped connection, a time-out or a cut-off "
        "stream (so max_retries + 1 attempts); other errors are not retried",
    )
    retry_base_delay: float = Field(
        default=1.0,
        ge=0,
        description="seconds: the n-th retry waits a random time below retry_base_delay * 2^(n-1) (full jitter)",
    )
    retry_max_delay: float = Field(
        default=30.0,
        ge=0,
        description="seconds: the longest single wait before a retry, also the cap on a server's Retry-After",
    )
    max_repairs: int = Field(
        default=1,
        ge=0,
        le=5,
        description="times an unusable reply (broken JSON, invalid YAML, Python that does not parse) is re-asked",
    )
    max_continuations: int = Field(
        default=2,
        ge=0,
        description="times a reply cut off at the token limit (finish_reason=length) is continued before failing",
    )
    concurrency: int = Field(default=4, ge=1)
    tokens_per_minute: int | None = Field(
        default=None,
        gt=0,
        description="tokens (prompt + max_tokens, then what the server reports) sent in any 60 s, shared by every "
        "run of a batch; none: no budget",
    )
    prices: dict[str, tuple[float, float, float]] = Field(default_factory=dict)
    local_model: str | None = Field(default=None, description="registered local model name or a .gguf path")
    local_n_ctx: int | None = Field(default=None, gt=0, description="context size of the local llama.cpp server")
    local_server_log: str | None = Field(
        default=None,
        description="file the embedded llama.cpp server's output is appended to (a run: RUN/logs/local-server.log)",
    )
    record: str | None = Field(default=None, description="append every model call to this cassette (.jsonl)")
    context_window: int | None = Field(
        default=None, gt=0, description="the model's context window in tokens (known models and local ones: found)"
    )
    figures: bool = Field(
        default=False,
        description="send the paper's saved figure images (paper/figures/) with the planning calls: needs a vision "
        "model; off by default (images cost ~1k input tokens each)",
    )
    max_files: int = Field(
        default=40,
        ge=1,
        le=200,
        description="files a design may plan (its file_list and the logic design's files), at most 200: a larger "
        "reproduction needs more; the JSON schema the model is shown keeps saying 40",
    )
    replay_fallback: str | None = Field(
        default=None,
        description="with a replay backend: the backend (e.g. local) that answers what the cassette lacks; "
        "with `record`, only those new calls are appended: how a cassette is extended",
    )

    def is_reasoning_model(self) -> bool:
        name = self.model.split("/")[-1]
        return name.startswith(("o1", "o3", "o4", "gpt-5"))

    def public(self) -> dict[str, Any]:
        """What may be written to a manifest or shown: everything but the key."""
        data = self.model_dump(exclude={"api_key", "prices"})
        data["api_key"] = "set" if self.api_key else None
        return data


def config_path() -> Path:
    override = os.environ.get("P2C_CONFIG")
    if override:
        return Path(override).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    return base / "p2c-notebook" / "config.yaml"


def _from_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"Cannot read the settings file {path}: {exc}. Fix or remove it.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"The settings file {path} must be a mapping of key: value.")
    return data


def _from_env(environ: dict[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, key in _ENV.items():  # P2C_* come after OPENAI_* in the table, so they win
        if environ.get(name):
            values[key] = environ[name]
    return values


def load_settings(
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
    file: Path | None = None,
) -> Settings:
    """Merge the three sources; None values in `overrides` mean "not given"."""
    environ = dict(os.environ) if environ is None else environ
    merged: dict[str, Any] = {}
    merged.update(_from_file(file or config_path()))
    merged.update(_from_env(environ))
    merged.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(
            f"Invalid settings ({problems}). Check your flags, P2C_* variables and {config_path()}."
        ) from None
