"""The run log: one line per event (token deltas left out), with secrets scrubbed."""

from __future__ import annotations

import re
import threading
from datetime import datetime, timezone
from pathlib import Path

from p2c_notebook import pysource
from p2c_notebook.errors import RunError
from p2c_notebook.render import escape_controls
from p2c_notebook.run.events import Event, TokenDelta, UsageReported
from p2c_notebook.run.store import os_error_advice, read_regular
from p2c_notebook.secrets import Scrubber

_FINISHED = re.compile(r" RunFinished (?P<fields>.*)$")
_TAIL_BYTES = 1 << 20  # the last run's end is near the end of the log: read no more than this
_MESSAGE = re.compile(r"""\bmessage=(?P<text>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")


def last_failure(path: Path) -> str | None:
    """The error that ended the last run logged in `path`, or None when it finished well (or never ran)."""
    try:  # never through a link, never from a pipe (it would block `p2c status`)
        lines = read_regular(path.parent, path.name, _TAIL_BYTES, tail=True).decode("utf-8", "replace").splitlines()
    except (OSError, RunError):
        return None
    for line in reversed(lines):
        finished = _FINISHED.search(line)
        if finished is None:
            continue
        fields = finished.group("fields")
        if not fields.startswith("ok=False"):
            return None
        message = _MESSAGE.search(fields)
        try:
            text = pysource.literal(message.group("text")) if message else ""
        except (ValueError, SyntaxError):
            text = ""
        return str(text) or "the run stopped with an error (see logs/run.log)"
    return None


class RunLog:
    """An event sink appending to logs/run.log; never writes a credential of the run's settings (see `secrets`)."""

    def __init__(self, path: Path, scrub: Scrubber) -> None:
        self.path = path
        self.scrub = scrub.text
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        if isinstance(event, TokenDelta):
            return
        if isinstance(event, UsageReported):
            line = f"usage {event.artifact}: {event.usage.describe()} (run: {event.total.describe()})"
        else:
            fields = {k: v for k, v in vars(event).items() if v not in ("", None, ())}
            line = f"{type(event).__name__} " + " ".join(f"{k}={v!r}" for k, v in fields.items())
        stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a", encoding="utf-8") as handle:
                    handle.write(f"{stamp} {escape_controls(self.scrub(line))}\n")  # `cat run.log` obeys none
            except OSError as exc:  # a full disk stops the run here, with what to do, not a traceback
                raise RunError(f"Cannot write the run log {self.path}: {os_error_advice(exc)}") from None
