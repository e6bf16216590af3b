"""The run log: one line per event (token deltas left out), with secrets scrubbed."""

from __future__ import annotations

import ast
import re
import threading
from datetime import datetime, timezone
from pathlib import Path

from p2c_notebook.events import Event, TokenDelta, UsageReported

_FINISHED = re.compile(r" RunFinished (?P<fields>.*)$")
_MESSAGE = re.compile(r"""\bmessage=(?P<text>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")


def last_failure(path: Path) -> str | None:
    """The error that ended the last run logged in `path`, or None when it finished well (or never ran)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
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
            text = ast.literal_eval(message.group("text")) if message else ""
        except (ValueError, SyntaxError):
            text = ""
        return str(text) or "the run stopped with an error (see logs/run.log)"
    return None


class RunLog:
    """An event sink appending to logs/run.log; never writes a secret it was told about."""

    def __init__(self, path: Path, secrets: list[str]) -> None:
        self.path = path
        self._secrets = [s for s in secrets if s]
        self._lock = threading.Lock()

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[secret]")
        return text

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
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(f"{stamp} {self.scrub(line)}\n")
