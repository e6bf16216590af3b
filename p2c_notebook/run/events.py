"""Events: how library code reports progress without printing.

Stages emit events to a sink the caller installs; the CLI, the widgets and the magics render them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from p2c_notebook.run.usage import Usage


@dataclass(frozen=True)
class Event:
    """Base class; `artifact` is the artifact id the event concerns ("" for run-level events)."""

    artifact: str = ""


@dataclass(frozen=True)
class RunStarted(Event):
    run_dir: str = ""
    model: str = ""
    backend: str = ""
    steps: int = 0  # artifacts this invocation expects to produce
    estimate: str = ""  # calls, tokens and cost expected, said before the first call


@dataclass(frozen=True)
class StageStarted(Event):
    stage: str = ""
    file: str = ""


@dataclass(frozen=True)
class TokenDelta(Event):
    """Streamed reply text. `restart`: the text shown so far for this artifact is void (a retried call or a
    repair re-ask streams its reply from the start); drop it, then show `text`."""

    text: str = ""
    restart: bool = False


@dataclass(frozen=True)
class ArtifactSaved(Event):
    path: str = ""
    status: str = "generated"


@dataclass(frozen=True)
class UsageReported(Event):
    """Usage of one model call, plus the running totals of the run."""

    usage: Usage = field(default_factory=Usage)
    total: Usage = field(default_factory=Usage)


@dataclass(frozen=True)
class Progress(Event):
    done: int = 0
    total: int = 0


@dataclass(frozen=True)
class Notice(Event):
    level: Literal["info", "warning", "error"] = "info"
    message: str = ""


@dataclass(frozen=True)
class AwaitingApproval(Event):
    """The run paused: these artifacts must be approved (or edited) before `next_stage` runs."""

    pending: tuple[str, ...] = ()
    next_stage: str = ""


@dataclass(frozen=True)
class RunFinished(Event):
    ok: bool = True
    message: str = ""
    total: Usage = field(default_factory=Usage)


Sink = Callable[[Event], None]


class EventBus:
    """Fans events out to sinks; thread-safe because files are generated concurrently."""

    def __init__(self, *sinks: Sink) -> None:
        self._sinks: list[Sink] = list(sinks)
        self._lock = threading.Lock()

    def subscribe(self, sink: Sink) -> None:
        self._sinks.append(sink)

    def emit(self, event: Event) -> None:
        with self._lock:
            for sink in self._sinks:
                sink(event)

    def warn(self, message: str, artifact: str = "") -> None:
        self.emit(Notice(artifact=artifact, level="warning", message=message))

    def info(self, message: str, artifact: str = "") -> None:
        self.emit(Notice(artifact=artifact, level="info", message=message))
