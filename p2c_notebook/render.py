"""Terminal rendering of pipeline events: a progress bar with live token and cost totals.

Text bound for a terminal is model text (or a paper's, or a file name a model planned), so every write goes
through `TerminalStream`: control characters are shown as `\\xNN`, never obeyed (no retitling, no clearing).
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from p2c_notebook.run.events import (
    ArtifactSaved,
    AwaitingApproval,
    Event,
    Notice,
    Progress,
    RunFinished,
    RunStarted,
    StageStarted,
    TokenDelta,
    UsageReported,
)
from p2c_notebook.run.usage import Usage

# C0 controls but tab and newline, DEL, and C1 controls (U+0080-U+009F: `\x9b` is a CSI on many terminals)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def escape_controls(text: str) -> str:
    """Text a terminal shows but does not obey: CRLF becomes a newline, any other control character `\\xNN`
    (so `ESC]0;title BEL` prints as `\\x1b]0;title\\x07`, and a lone CR cannot overwrite the line)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group(0)):02x}", text.replace("\r\n", "\n"))


class TerminalStream:
    """A text stream that escapes control characters (see `escape_controls`) and hides every credential the
    scrubber knows; `raw` is the stream underneath, for the renderer's own redraw codes."""

    def __init__(self, raw: TextIO, scrub: Callable[[str], str] | None = None) -> None:
        self.raw = raw
        self._scrub = scrub

    def write(self, text: str) -> int:
        if self._scrub is not None:
            text = self._scrub(text)
        return self.raw.write(escape_controls(text))

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, encoding...: those of the real stream
        return getattr(self.raw, name)


def terminal(stream: TextIO | TerminalStream) -> TerminalStream:
    return stream if isinstance(stream, TerminalStream) else TerminalStream(stream)


class TerminalRenderer:
    """Renders events on a terminal (one redrawn status line) or a log (one line per saved artifact)."""

    def __init__(self, stream: TextIO | None = None, verbose: bool = False, width: int = 24) -> None:
        self.stream = terminal(stream or sys.stderr)
        self.verbose = verbose
        self.width = width
        self.live = self.stream.isatty() and not verbose
        self.total = Usage()
        self.done = 0
        self.steps = 0
        self.in_flight: dict[str, float] = {}
        self.started = time.monotonic()
        self._streamed = 0
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            self._handle(event)

    def _handle(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.steps = event.steps
            self._line(f"Run {event.run_dir}: {event.steps} artifact(s) to generate with {event.model}")
            if event.estimate:
                self._line(event.estimate)
        elif isinstance(event, StageStarted):
            self.in_flight[event.artifact] = time.monotonic()
            if self.verbose:
                self._line(f"--- {event.artifact} ---")
            self._status()
        elif isinstance(event, TokenDelta):
            self._streamed += len(event.text)
            if self.verbose and event.restart:
                self._line(f"--- {event.artifact} (again: the text above is discarded) ---")
            if self.verbose:
                self.stream.write(event.text)
                self.stream.flush()
            elif self.live:
                self._status()
        elif isinstance(event, UsageReported):
            self.total = event.total
            self._status()
        elif isinstance(event, ArtifactSaved):
            self.in_flight.pop(event.artifact, None)
            self._line(f"saved {event.artifact} -> {event.path}")
        elif isinstance(event, Progress):
            self.done, self.steps = event.done, event.total
            self._status()
        elif isinstance(event, Notice):
            if event.level == "error":
                return  # it ends the run: the command (CLI, magic) reports it once, as it exits
            self._line(("warning: " if event.level == "warning" else "") + event.message)
        elif isinstance(event, AwaitingApproval):
            self._line(f"waiting for approval of {', '.join(event.pending)} before {event.next_stage}")
        elif isinstance(event, RunFinished):
            self.total = event.total
            self._clear()

    def bar(self) -> str:
        steps = max(self.steps, 1)
        filled = int(self.width * min(self.done, steps) / steps)
        flight = ", ".join(sorted(self.in_flight)[:3])
        more = f" +{len(self.in_flight) - 3}" if len(self.in_flight) > 3 else ""
        return (
            f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.steps} "
            f"{self.total.describe()} {flight}{more}"
        )

    def _status(self) -> None:
        if self.live:
            self.stream.raw.write("\r\x1b[2K")
            self.stream.write(self.bar()[:200])
            self.stream.flush()

    def _clear(self) -> None:
        if self.live:
            self.stream.raw.write("\r\x1b[2K")
            self.stream.flush()

    def _line(self, text: str) -> None:
        self._clear()
        if self.verbose and self._streamed:
            text = "\n" + text
            self._streamed = 0
        self.stream.write(text + "\n")
        self.stream.flush()
        self._status()
