"""Record any run to a cassette, and replay it offline and deterministically.

A cassette is JSON Lines, one entry per model call. Each entry is found again by a key: the sha256 of the
canonical JSON of what the pipeline asked (messages, stage, file, attempt, schema name), which does not depend
on the model, server or settings. The entry also keeps a compact copy of the request for debugging (every
message's role, length and hash, and the last message in full), the reply text, finish reason and usage.
Every credential of the settings, and anything that looks like one (`sk-...` keys, `Bearer`/`Basic` tokens,
authorization or api-key fields, passwords in URLs), is scrubbed before a line is written (see `secrets`).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from p2c_notebook.backends.base import Backend, ChatRequest, Completion, OnRetry, WrappedBackend
from p2c_notebook.content import describe, describe_image, images_of, text_of
from p2c_notebook.errors import BackendError, ConfigError
from p2c_notebook.run.usage import Usage
from p2c_notebook.secrets import Scrubber
from p2c_notebook.settings import Settings

FORMAT = 1
_STREAM_PIECE = 64  # characters per replayed delta

#: How to switch a notebook (or the CLI) to a live model, in one line each.
_LIVE_HINT = (
    'SETTINGS = {"backend": "openai", "base_url": "http://HOST:8000/v1", "model": "MODEL"} (or keep the replay and '
    'add "replay_fallback": "openai" to it so only what the cassette lacks goes to the model), or '
    "`%p2c use --backend openai --base-url http://HOST:8000/v1 --model MODEL`"
)


class ReplayMissError(BackendError):
    """The replayed run asked something the cassette does not hold.

    `str()` is one line (the CLI's); `explanation` is the short paragraph a notebook shows a student."""

    def __init__(self, message: str, explanation: str = "") -> None:
        super().__init__(message)
        self.explanation = explanation or message


def _recorded(entry: dict[str, Any], field: str) -> str:
    request = entry.get("request")
    value = request.get(field) if isinstance(request, dict) else None
    return str(value) if value else ""


def _difference(wanted: list[dict[str, Any]], same: list[dict[str, Any]]) -> str:
    """Where this request leaves the recorded ones with the same stage and file (the closest of them)."""
    longest = 0
    for entry in same:
        recorded = entry.get("request", {}).get("messages", [])
        common = 0
        while common < min(len(wanted), len(recorded)) and recorded[common].get("sha256") == wanted[common]["sha256"]:
            common += 1
        if common == len(wanted):
            return "the recorded call had more messages (a repair or feedback turn)"
        longest = max(longest, common)
    return f"the first difference is in message {longest + 1} ({wanted[longest]['role']})"


def _keyed(message: dict[str, Any]) -> dict[str, Any]:
    """A message as a key holds it: an image by its bytes' hash, not its data."""
    content = message.get("content")
    return {**message, "content": describe(content, named=False)} if isinstance(content, list) else message


def request_key(request: ChatRequest) -> str:
    """Stable across machines, models and settings: only what the pipeline asked (an image: its bytes' hash)."""
    content = {
        "messages": [_keyed(m) for m in request.messages],
        "stage": request.stage,
        "file": request.file,
        "attempt": request.attempt,
        "schema": request.schema_name if request.schema is not None else None,
    }
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _digest(content: object) -> str:
    """A text's hash; of text and images, the hash of their record (an image by its bytes' hash)."""
    text = content if isinstance(content, str) else json.dumps(describe(content, named=False), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _compact_message(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content", "")
    compact = {"role": message.get("role", ""), "chars": len(text_of(content)), "sha256": _digest(content)}
    images = images_of(content)
    if images:  # which figure files went along, never their data
        compact["images"] = [describe_image(url) for url in images]
    return compact


def _compact(request: ChatRequest) -> dict[str, Any]:
    return {
        "stage": request.stage,
        "file": request.file,
        "attempt": request.attempt,
        "schema": request.schema_name if request.schema is not None else None,
        "messages": [_compact_message(m) for m in request.messages],
        "last_message": describe(request.messages[-1].get("content", "")) if request.messages else "",
    }


class RecordingBackend(WrappedBackend):
    """Wraps any backend and appends one cassette line per completed call (failed calls are not recorded)."""

    def __init__(self, inner: Backend, path: Path | str, scrub: Scrubber | None = None) -> None:
        super().__init__(inner)
        self.path = Path(path)
        self._scrub = scrub or Scrubber()
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @property
    def description(self) -> str:
        return f"{self.inner.description}, recording to {self.path}"

    def complete(
        self, request: ChatRequest, on_delta: Callable[[str], None], on_retry: OnRetry | None = None
    ) -> Completion:
        completion = self.inner.complete(request, on_delta, on_retry)
        entry = {
            "v": FORMAT,
            "key": request_key(request),
            "model": self.inner.model,
            "backend": self.inner.description,
            "request": _compact(request),
            "reply": completion.text,
            "finish_reason": completion.finish_reason,
            "usage": completion.usage.to_dict(),
        }
        key = entry.pop("key")
        line = json.dumps({"key": key, **self._scrub.value(entry)}, ensure_ascii=False) + "\n"
        self._append(line.encode("utf-8"))
        return completion

    def _append(self, data: bytes) -> None:
        """One write on an O_APPEND descriptor, then fsync: lines never interleave or half-exist on success."""
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)


def read_cassette(path: Path | str) -> list[dict[str, Any]]:
    """Entries of a cassette; a last line cut short by a crash is ignored, any other bad line is an error."""
    source = Path(path)
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ConfigError(f"No cassette at {source}. Record one with `p2c run PAPER --record {source}`.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Cannot read the cassette {source}: {exc}.") from None
    entries: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
                raise ValueError("not a cassette entry")
        except ValueError:
            if number == len(lines):
                break  # the run was killed while writing its last line
            raise ConfigError(f"{source}, line {number}, is not a cassette entry; record the cassette again.") from None
        entries.append(entry)
    return entries

_MAX_REPAIRS = next(int(m.le) for m in Settings.model_fields["max_repairs"].metadata if hasattr(m, "le"))


def _attempt(entry: dict[str, Any]) -> int:
    """Which attempt at its request a recorded call was (1: the first ask)."""
    request = entry.get("request")
    attempt = request.get("attempt", 1) if isinstance(request, dict) else 1
    return attempt if isinstance(attempt, int) and attempt > 0 else 1


class ReplayBackend:
    """Serves replies from a cassette: the same request always gets the same reply (the latest recorded)."""

    def __init__(self, path: Path | str, fallback: Backend | None = None, settings: Settings | None = None) -> None:
        self.path = Path(path)
        self.fallback = fallback
        self._lock = threading.Lock()
        self._entries = read_cassette(self.path)
        self._settings = self._replaying(settings or Settings())
        self._by_key: dict[str, list[dict[str, Any]]] = {}
        for entry in self._entries:
            self._by_key.setdefault(entry["key"], []).append(entry)
        models = sorted({str(e.get("model", "")) for e in self._entries if e.get("model")})
        self._model = models[0] if len(models) == 1 else "replay"

    def _replaying(self, settings: Settings) -> Settings:
        """The run's settings, with as many re-asks of an unusable reply as the cassette recorded for one request
        and as the fallback makes (the local model gets two): a recording made with more re-asks than the run's
        default must replay them all, or the run would stop where the recorded one went on. A `max_repairs` the
        user set is kept."""
        if "max_repairs" in settings.model_fields_set:
            return settings
        recorded = max((_attempt(e) for e in self._entries), default=1) - 1
        live = self.fallback.settings.max_repairs if self.fallback is not None else 0
        wanted = min(max(settings.max_repairs, recorded, live), _MAX_REPAIRS)
        return settings if wanted == settings.max_repairs else settings.model_copy(update={"max_repairs": wanted})

    @property
    def model(self) -> str:
        return self._model

    @property
    def settings(self) -> Settings:
        """The settings the run gave: they decide re-asks and limits, as they did when the calls were recorded."""
        return self._settings

    @property
    def context_window(self) -> int | None:
        return None  # a cassette reads no prompt: nothing to refuse before replaying

    @property
    def description(self) -> str:
        described = f"replay of {self.path} ({len(self._entries)} recorded calls from {self._model})"
        return described + (f", else {self.fallback.description}" if self.fallback else "")

    def complete(
        self, request: ChatRequest, on_delta: Callable[[str], None], on_retry: OnRetry | None = None
    ) -> Completion:
        key = request_key(request)
        with self._lock:
            recorded = self._by_key.get(key)
        if not recorded and self.fallback is not None:
            completion = self.fallback.complete(request, on_delta, on_retry)
            with self._lock:  # asked again in this session: replayed, not paid twice
                entry: dict[str, Any] = {"reply": completion.text, "usage": completion.usage.to_dict()}
                self._by_key[key] = [{**entry, "finish_reason": completion.finish_reason}]
            return completion
        if not recorded:
            line, paragraph = self._miss_message(request)
            raise ReplayMissError(line, paragraph)
        entry = recorded[-1]  # recorded again (a resumed or repeated recording): the latest reply wins
        text = str(entry.get("reply", ""))
        for start in range(0, len(text), _STREAM_PIECE):
            on_delta(text[start : start + _STREAM_PIECE])
        usage = entry.get("usage")
        return Completion(
            text, Usage.from_dict(usage) if isinstance(usage, dict) else Usage(calls=1), entry.get("finish_reason")
        )

    def _miss_message(self, request: ChatRequest) -> tuple[str, str]:
        """Why the cassette has no reply, in a student's terms: what it holds for this stage and file, that only
        the notebook's own text was recorded, and the two ways on (the notebook's text, or a live model).

        Returns the one line (what the CLI prints) and the paragraph (what the widget shows)."""
        where = f"stage={request.stage}, file={request.file or '-'}"
        same = [
            e for e in self._entries if _recorded(e, "stage") == request.stage and _recorded(e, "file") == request.file
        ]
        held = sorted(
            {
                _recorded(e, "file") or _recorded(e, "stage")
                for e in self._entries
                if _recorded(e, "stage") == request.stage
            }
        )
        if not same:
            listed = ", ".join(held[:8]) + (" …" if len(held) > 8 else "")
            found = f"{self.path.name} has no call for this stage and file" + (
                f" (for {request.stage} it holds: {listed})" if held else f" (nor any for {request.stage})"
            )
        else:
            found = (
                f"{self.path.name} holds {len(same)} call(s) for it, made from the notebook's own text; "
                + _difference(_compact(request)["messages"], same)
            )
        line = (
            f"no recording for this request ({where}): the prompt differs from the recorded run, because {found}. "
            "A cassette replays only the exact text it recorded: an edit in your own words or your own feedback "
            "is a new request. Undo the edit (or drop the feedback) to replay it, or use a live model (--backend "
            "openai --base-url URL, or P2C_REPLAY_FALLBACK=openai to send only what the cassette lacks); or "
            "re-record with --record."
        )
        paragraph = (
            f"This notebook replays recorded model replies ({self.path.name}), and it has none for this request "
            f"({request.stage}{' of ' + request.file if request.file else ''}): {found}. "
            "Only the notebook's own text was recorded, so an edit in your own words or your own feedback is a new "
            "question that needs a live model. To go on without one, use the notebook's text: undo your edit (or "
            "clear the feedback box) and click again. To use your own words, point the notebook at a live model "
            f"with one line: {_LIVE_HINT}."
        )
        return line, paragraph

    def close(self) -> None:
        if self.fallback is not None:
            self.fallback.close()
