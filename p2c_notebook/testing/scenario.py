"""The scenario model: which scripted reply or fault answers which pipeline request.

A scenario keys replies on the `X-P2C-Stage` / `X-P2C-File` / `X-P2C-Attempt` headers the pipeline sends,
so offline runs of notebooks and tests are deterministic. Files named by `content_file` are read at load
time, so a bad scenario fails before the server starts rather than in the middle of a run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from p2c_notebook.errors import ConfigError

FaultKind = Literal[
    "status",
    "truncate",
    "malformed",
    "empty",
    "html",
    "reset",
    "length",
    "no_usage",
    "timeout",
    "reject_model",
    "trickle",
    "keepalive",
    "huge",
]

#: Faults that deliver (part of) the scripted reply, so they need a matching response entry.
CONTENT_FAULTS: frozenset[str] = frozenset({"truncate", "length", "no_usage", "timeout", "trickle", "keepalive"})

#: Known servers' habits the scripted server can imitate (see docs/scenario-format.md, "Habits").
Habit = Literal["openai", "vllm", "ollama", "lmstudio", "llamacpp"]


class _Rule(BaseModel):
    """What a response or a fault applies to: a stage, a file glob and optionally one attempt."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    stage: str
    file: str = "*"
    attempt: int | None = None

    def matches(self, stage: str, file: str, attempt: int | None) -> bool:
        """Globs are case-sensitive everywhere, so a scenario behaves the same on every OS."""
        if self.attempt is not None and self.attempt != attempt:
            return False
        return fnmatchcase(stage, self.stage) and fnmatchcase(file, self.file)


class Reply(BaseModel):
    """One scripted reply: literal text, a file's text, or a JSON value sent as `json.dumps` text."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    content: str | None = None
    content_file: str | None = None
    json_value: Any = Field(default=None, alias="json")
    _text: str = PrivateAttr(default="")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"content": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _resolve(self, info: ValidationInfo) -> Reply:
        sources = [name for name in ("content", "content_file", "json_value") if name in self.model_fields_set]
        if len(sources) + self._sequence_given() != 1:
            raise ValueError("give exactly one of content, content_file, json, replies")
        if self.content_file is not None:
            base = (info.context or {}).get("base_dir") or Path.cwd()
            path = Path(base) / self.content_file
            try:
                self._text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise ValueError(f"content_file {str(path)!r} cannot be read: {exc.strerror or exc}") from exc
        elif "json_value" in self.model_fields_set:
            self._text = json.dumps(self.json_value, ensure_ascii=False)
        else:
            self._text = self.content or ""
        return self

    def _sequence_given(self) -> int:
        return 0

    @property
    def text(self) -> str:
        """The reply text exactly as the server sends it."""
        return self._text


class ResponseRule(Reply, _Rule):
    """A response entry; `replies` gives successive requests successive replies, the last one repeating."""

    replies: list[Reply] | None = Field(default=None, min_length=1)

    def _sequence_given(self) -> int:
        return int(self.replies is not None)

    @model_validator(mode="after")
    def _first_reply(self) -> ResponseRule:
        if self.replies is not None:
            self._text = self.replies[0].text
        return self

    def reply_at(self, index: int) -> Reply:
        """The reply for the `index`-th (0-based) matching request."""
        if self.replies is None:
            return self
        return self.replies[min(index, len(self.replies) - 1)]


class Fault(_Rule):
    """A fault for matching requests number `after + 1` to `after + times` (`times: null` = all of them)."""

    kind: FaultKind
    status: int = Field(default=500, ge=200, le=599)
    retry_after: float | None = Field(default=None, ge=0)
    times: int | None = Field(default=1, ge=1)
    after: int = Field(default=0, ge=0)
    message: str | None = None
    content: str | None = None
    sleep: float | None = Field(
        default=None, ge=0, description="for kind: timeout, trickle and keepalive, instead of fault_sleep"
    )
    interval: float = Field(default=0.1, gt=0, description="for kind: trickle and keepalive, seconds between sends")
    chars: int | None = Field(default=None, ge=1, description="for kind: huge, the reply's length in characters")

    @model_validator(mode="after")
    def _needs_chars(self) -> Fault:
        if self.kind == "huge" and self.chars is None:
            raise ValueError("kind: huge needs chars (the reply's length in characters)")
        return self

    def active_for(self, hit: int) -> bool:
        """Whether the `hit`-th (0-based) matching request gets this fault."""
        return hit >= self.after and (self.times is None or hit < self.after + self.times)


class Scenario(BaseModel):
    """A whole script: accepted models, latencies, response entries (first match wins) and faults."""

    model_config = ConfigDict(extra="forbid")

    model: str | list[str] = "*"
    reject_models: list[str] = Field(default_factory=list)
    habit: Habit | None = None
    interrupt_requests: bool = False  # a new request ends the reply being streamed, as llama.cpp's server does
    vision: bool = True  # false: a request with image parts is refused as a text-only model's server does
    latency: float = Field(default=0.0, ge=0)
    token_latency: float = Field(default=0.0, ge=0)
    fault_sleep: float = Field(default=30.0, ge=0)
    # A loaded server: each request already in flight when one arrives adds `load_latency` to its first byte.
    load_latency: float = Field(default=0.0, ge=0)
    # A hosted API's concurrency limit: a request arriving while `capacity` are in flight gets HTTP 429 at once.
    capacity: int | None = Field(default=None, ge=1)
    capacity_retry_after: float = Field(default=1.0, ge=0)
    # llama.cpp server slots, served as /props total_slots; a request beyond them waits for a free one.
    slots: int | None = Field(default=None, ge=1, description="llama.cpp server slots, served as /props total_slots")
    responses: list[ResponseRule] = Field(default_factory=list)
    faults: list[Fault] = Field(default_factory=list)
    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)

    @property
    def base_dir(self) -> Path:
        """The folder `content_file` paths are relative to (the scenario file's folder)."""
        return self._base_dir

    @property
    def models(self) -> list[str]:
        """Accepted model names or globs."""
        return [self.model] if isinstance(self.model, str) else list(self.model)

    def accepts_model(self, name: str) -> bool:
        """Rejected names lose even when they also match an accepted glob."""
        if name in self.reject_models:
            return False
        return any(fnmatchcase(name, pattern) for pattern in self.models)

    def parse_response(self, data: Mapping[str, Any]) -> ResponseRule:
        """Validate one response entry (for adding at runtime), resolving files against `base_dir`."""
        return _validate(ResponseRule, data, self._base_dir, "response")

    def parse_fault(self, data: Mapping[str, Any]) -> Fault:
        """Validate one fault entry (for adding at runtime)."""
        return _validate(Fault, data, self._base_dir, "fault")


_M = TypeVar("_M", bound=BaseModel)


def _validate(cls: type[_M], data: Any, base_dir: Path, what: str) -> _M:
    try:
        return cls.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        )
        raise ConfigError(f"Invalid scripted-server {what}: {problems}") from None


def load_scenario(source: Scenario | Mapping[str, Any] | str | Path, base_dir: Path | None = None) -> Scenario:
    """Load a scenario from a `Scenario`, a mapping, or a YAML/JSON file (a `str` is a file path).

    `base_dir` (default: the file's folder, or the current folder for a mapping) anchors `content_file`.
    """
    if isinstance(source, Scenario):
        return source
    if isinstance(source, Mapping):
        data: Any = dict(source)
        folder = base_dir or Path.cwd()
    else:
        path = Path(source)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"Cannot read scenario file {str(path)!r}: {exc.strerror or exc}") from None
        try:
            data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise ConfigError(f"Scenario file {str(path)!r} is not valid YAML/JSON: {exc}") from None
        if data is None:
            data = {}
        folder = base_dir or path.resolve().parent
    if not isinstance(data, Mapping):
        raise ConfigError("A scenario must be a mapping with keys such as `responses` and `faults`.")
    scenario = _validate(Scenario, data, folder, "scenario")
    scenario._base_dir = Path(folder)
    return scenario
