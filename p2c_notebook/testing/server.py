"""A scripted OpenAI-compatible HTTP server, so notebooks and tests run offline and deterministically.

Replies and faults come from a `Scenario`, keyed on the `X-P2C-Stage`, `X-P2C-File` and `X-P2C-Attempt`
headers the pipeline sends. Only the standard library's threaded HTTP server is used, so it runs anywhere.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, TypedDict, TypeVar
from urllib.parse import unquote

from p2c_notebook.content import image_tokens, images_of
from p2c_notebook.errors import P2CError
from p2c_notebook.testing.scenario import CONTENT_FAULTS, Fault, ResponseRule, Scenario, load_scenario
from p2c_notebook.tokens import common_prefix_len, estimate_tokens

_CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")
_MALFORMED = '{"file_list": ['
_WORDS = re.compile(r"\S+\s*|\s+")
_WORDS_PER_CHUNK = 3
_POLL_S = 0.02  # how often serve_forever checks for stop(); stop() waits up to this long
_HTML_TITLES = {200: "Welcome", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Time-out"}
_HUGE_PIECE = 4096  # characters per chunk of a `huge` reply: small chunks would make a 10 MB stream crawl


@dataclass(frozen=True)
class _Habit:
    """How a known server treats what a request asks: which response_format types it follows (`None`: it takes
    any and ignores it), which request fields it refuses and with which status, and whether a stream carries
    usage."""

    formats: frozenset[str] | None
    format_status: int
    format_message: str
    unknown: frozenset[str]
    unknown_status: int
    unknown_message: str
    stream_usage: bool


_ALL_FORMATS = frozenset({"text", "json_object", "json_schema"})
_HABITS: dict[str, _Habit] = {
    "openai": _Habit(_ALL_FORMATS, 400, "", frozenset(), 400, "", True),
    "vllm": _Habit(_ALL_FORMATS, 400, "", frozenset(), 400, "", True),
    "ollama": _Habit(None, 400, "", frozenset(), 400, "", False),
    "lmstudio": _Habit(
        frozenset({"text", "json_schema"}),
        400,
        "'response_format.type' must be 'json_schema' or 'text'",
        frozenset({"max_completion_tokens"}),
        400,
        "Unrecognized key(s) in object: '{field}'",
        True,
    ),
    "llamacpp": _Habit(
        frozenset({"text", "json_object"}),
        500,
        "response_format.type: Input should be 'text' or 'json_object'",
        frozenset({"max_completion_tokens"}),
        500,
        "{field}: Extra inputs are not permitted",
        False,
    ),
}


#: How a server with a text-only model refuses image parts (`vision: false`), by habit (None: OpenAI's own API).
_IMAGE_REFUSALS: dict[str | None, tuple[int, str]] = {
    None: (400, "Invalid content type. image_url is only supported by certain models."),
    "openai": (400, "Invalid content type. image_url is only supported by certain models."),
    "vllm": (400, "The model is not a multimodal model"),
    "ollama": (500, "this model is missing data required for image input"),
    "lmstudio": (400, "Model does not support images. Please use a model that does."),
    "llamacpp": (500, "image input is not supported - hint: if this is unexpected, you may need to provide the mmproj"),
}


def _image_refusal(habit: str | None) -> tuple[int, dict[str, Any]]:
    status, message = _IMAGE_REFUSALS[habit]
    return status, _error(message, "server_error" if status >= 500 else "invalid_request_error")


def _habit_refusal(habit: _Habit, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]] | None:
    """The error a server with this habit answers the request with, or None when it takes it."""
    for field_name in sorted(habit.unknown):
        if field_name in body:
            return habit.unknown_status, _error(habit.unknown_message.format(field=field_name), "invalid_request_error")
    wanted = body.get("response_format")
    kind = wanted.get("type") if isinstance(wanted, dict) else None
    if kind is not None and habit.formats is not None and kind not in habit.formats:
        type_ = "server_error" if habit.format_status >= 500 else "invalid_request_error"
        return habit.format_status, _error(habit.format_message, type_)
    return None


def _unformatted(text: str) -> str:
    """A JSON reply as a model writes it when no response_format holds it to bare JSON: in a fence, with prose."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if not isinstance(value, dict):
        return text
    return f"Here is the JSON you asked for:\n\n```json\n{text}\n```\n"


def _huge_text(chars: int) -> str:
    """`chars` characters of comment lines."""
    line = "# " + "x" * 77 + "\n"
    return (line * (chars // len(line) + 1))[:chars]


def _html_page(status: int) -> bytes:
    """A proxy's error page (or, with 200, a web site where the API was expected)."""
    title = f"{status} {_HTML_TITLES.get(status, 'Error')}"
    return f"<html><head><title>{title}</title></head><body><h1>{title}</h1><hr>nginx</body></html>".encode()


class RecordedRequest(TypedDict):
    """One chat request as the server saw it (never the Authorization header or API key)."""

    index: int
    timestamp: float
    path: str
    stage: str
    file: str
    attempt: int | None
    continuation: int | None
    model: str
    messages: list[Any]
    response_format: Any
    stream: bool
    max_tokens: int | None
    max_completion_tokens: int | None
    reasoning_effort: str | None
    temperature: float | None
    seed: int | None
    fault: str | None
    in_flight: int


@dataclass
class _Answer:
    """What to send back for one request, decided atomically under the server lock."""

    status: int = 200
    error: dict[str, Any] | None = None
    text: str = ""
    fault: Fault | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    index: int = 0
    prompt: str = ""  # the serialised messages: the server's prefix cache holds it once its first token is sent
    note: str | None = None  # recorded as `fault` when no scripted fault applies ("habit": a habit's refusal)


def _error(message: str, type_: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def _status_error(fault: Fault) -> dict[str, Any]:
    if fault.status == 429:
        return _error(fault.message or "Rate limit reached (scripted fault).", "requests", "rate_limit_exceeded")
    if fault.status >= 500:
        return _error(fault.message or "The server had an error (scripted fault).", "server_error")
    return _error(fault.message or f"Scripted HTTP {fault.status} fault.", "invalid_request_error")


def _content_text(content: Any) -> str:
    """Message content is a string or a list of parts; only text parts count."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _covered_text(roles: list[str], texts: list[str], shared: int) -> str:
    """The message contents inside the first `shared` serialised characters, joined like `prompt_tokens`."""
    covered: list[str] = []
    pos = 0
    for role, text in zip(roles, texts, strict=True):
        pos += len(role) + 1
        if pos >= shared:
            break
        covered.append(text[: shared - pos])
        pos += len(text) + 1
    return "\n".join(covered)


def _continued_text(messages: list[Any]) -> str | None:
    """The reply so far in a continuation request: the assistant turn just before the last user turn."""
    if len(messages) >= 2 and isinstance(messages[-2], dict) and messages[-2].get("role") == "assistant":
        return _content_text(messages[-2].get("content"))
    return None


def _to_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _chunks(text: str) -> list[str]:
    """Split a reply into pieces of a few tokens that concatenate back to exactly `text`."""
    words = _WORDS.findall(text)
    return ["".join(words[i : i + _WORDS_PER_CHUNK]) for i in range(0, len(words), _WORDS_PER_CHUNK)]


_S = TypeVar("_S", bound="Served")


class Served:
    """`with server:` starts it and stops it however the block ends."""

    def start(self) -> str:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self: _S) -> _S:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class ScriptedServer(Served):
    """Serve a scenario on a background thread; use as a context manager or call `start()` / `stop()`."""

    def __init__(
        self,
        scenario: Scenario | Mapping[str, Any] | str | Path,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        verbose: bool = False,
    ) -> None:
        self.scenario = load_scenario(scenario)
        self.host = host
        self.port = port
        self.verbose = verbose
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._extra_faults: list[Fault] = []
        self._extra_responses: list[ResponseRule] = []
        self._hits: dict[int, int] = {}
        self._requests: list[RecordedRequest] = []
        self._processed: list[str] = []  # prompts whose first reply token was sent: what a prefix cache holds
        self.in_flight = 0  # chat requests being answered now (not those refused for `capacity`)
        self.max_in_flight = 0  # the most there ever were at once
        self.over_capacity = 0  # requests refused because `capacity` were in flight
        self._slot_free = threading.Condition(self._lock)  # with `slots`: one of them was freed
        self.running = 0  # with `slots`: requests holding a slot (those waiting for one are in `in_flight` too)
        self.queued = 0  # with `slots`: requests that waited for a free slot
        self._arrivals = 0  # chat requests so far: with `interrupt_requests`, a stream ends when this moves
        self.interrupted = 0  # streams ended early that way

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> str:
        """Bind (port 0 = any free port), serve on a daemon thread, and return the base URL."""
        if self._httpd is None:
            self._stopping.clear()
            self._httpd = _HTTPServer((self.host, self.port), self)
            self.port = self._httpd.server_address[1]
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, args=(_POLL_S,), name="p2c-scripted", daemon=True
            )
            self._thread.start()
        return self.base_url

    def stop(self) -> None:
        """Stop serving, wake sleeping handlers and drop open connections."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def base_url(self) -> str:
        """`http://HOST:PORT/v1`, the value to give the OpenAI client as `base_url`."""
        if self._httpd is None:
            raise RuntimeError("The scripted server is not running; call start() first.")
        return f"http://{self.host}:{self.port}/v1"

    # -- script state ----------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the chat requests received so far, oldest first."""
        with self._lock:
            return [RecordedRequest(**r) for r in self._requests]

    def load(self) -> dict[str, int]:
        """Requests in flight now, the most there were at once, and how many `capacity` refused."""
        with self._lock:
            return {
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
                "over_capacity": self.over_capacity,
            }

    def add_fault(self, fault: Fault | Mapping[str, Any]) -> None:
        """Add a fault ahead of all existing ones."""
        parsed = fault if isinstance(fault, Fault) else self.scenario.parse_fault(fault)
        with self._lock:
            self._extra_faults.insert(0, parsed)

    def add_response(self, response: ResponseRule | Mapping[str, Any]) -> None:
        """Add a response entry ahead of all existing ones."""
        parsed = response if isinstance(response, ResponseRule) else self.scenario.parse_response(response)
        with self._lock:
            self._extra_responses.insert(0, parsed)

    def reset(self) -> None:
        """Back to the scenario as loaded: forget requests, counters, prefix cache and runtime additions."""
        with self._lock:
            self._extra_faults.clear()
            self._extra_responses.clear()
            self._hits.clear()
            self._requests.clear()
            self._processed.clear()
            self.max_in_flight = self.in_flight
            self.over_capacity = 0
            self.queued = 0

    def _hit(self, rule: object) -> int:
        """Count one more match of `rule`; return how many there were before."""
        seen = self._hits.get(id(rule), 0)
        self._hits[id(rule)] = seen + 1
        return seen

    def _decide(
        self, path: str, headers: Mapping[str, str], body: Mapping[str, Any], arrived: float, in_flight: int = 0
    ) -> _Answer:
        """Record the request and pick its answer; `headers` holds the lower-cased X-P2C-* headers.

        `arrived` (epoch seconds) is when its headers came in: the record's timestamp. Its cached tokens are the
        longest prefix it shares with a prompt already processed (first token sent) when it arrived: a provider
        cannot reuse a prefix it is still reading for another request."""
        stage = headers.get("x-p2c-stage", "")
        file = unquote(headers.get("x-p2c-file", ""))  # the client percent-encodes it (UTF-8)
        attempt = _to_int(headers.get("x-p2c-attempt"))
        continuation = _to_int(headers.get("x-p2c-continuation"))
        model = str(body.get("model", ""))
        messages = body.get("messages")
        messages = messages if isinstance(messages, list) else []
        texts = [_content_text(m.get("content")) if isinstance(m, dict) else "" for m in messages]
        roles = [str(m.get("role", "")) if isinstance(m, dict) else "" for m in messages]
        serial = "".join(f"{role}\n{text}\n" for role, text in zip(roles, texts, strict=True))
        prompt_tokens = estimate_tokens("\n".join(texts))
        images = [url for m in messages if isinstance(m, dict) for url in images_of(m.get("content"))]
        prompt_tokens += sum(image_tokens(url) for url in images)  # the client's own approximation
        with self._lock:
            shared = max((common_prefix_len(serial, p) for p in self._processed), default=0)
            prior = _continued_text(messages) if continuation else None
            habit = _HABITS[self.scenario.habit] if self.scenario.habit else None
            refusal = _habit_refusal(habit, body) if habit else None
            note = "habit"
            if refusal is None and images and not self.scenario.vision:
                refusal, note = _image_refusal(self.scenario.habit), "vision"
            if refusal is not None:
                answer = _Answer(refusal[0], refusal[1], note=note)
            else:
                answer = self._choose(stage, file, attempt, model, prior)
            answer.prompt_tokens = prompt_tokens
            cached = estimate_tokens(_covered_text(roles, texts, shared))
            answer.cached_tokens = min(prompt_tokens, cached)
            answer.index = len(self._requests)
            answer.prompt = serial
            self._requests.append(
                RecordedRequest(
                    index=answer.index,
                    timestamp=arrived,
                    path=path,
                    stage=stage,
                    file=file,
                    attempt=attempt,
                    continuation=continuation,
                    model=model,
                    messages=messages,
                    response_format=body.get("response_format"),
                    stream=bool(body.get("stream")),
                    max_tokens=body.get("max_tokens"),
                    max_completion_tokens=body.get("max_completion_tokens"),
                    reasoning_effort=body.get("reasoning_effort"),
                    temperature=body.get("temperature"),
                    seed=body.get("seed"),
                    fault=answer.fault.kind if answer.fault else answer.note,
                    in_flight=in_flight,
                )
            )
        return answer

    def _choose(self, stage: str, file: str, attempt: int | None, model: str, prior: str | None = None) -> _Answer:
        """Model check, then faults (each counts every match), then the first matching response.

        `prior` is the reply so far of a continuation request: when the scripted reply starts with it, only
        the rest is sent (so a reply cut at `length` and continued adds up to the scripted text)."""
        if not self.scenario.accepts_model(model):
            message = f"The model `{model}` does not exist or you do not have access to it."
            return _Answer(404, _error(message, "invalid_request_error", "model_not_found"))
        fault: Fault | None = None
        for candidate in [*self._extra_faults, *self.scenario.faults]:
            if candidate.matches(stage, file, attempt) and candidate.active_for(self._hit(candidate)) and fault is None:
                fault = candidate
        if fault is not None and fault.kind == "status":
            return _Answer(fault.status, _status_error(fault), fault=fault)
        if fault is not None and fault.kind == "reject_model":
            message = f"The model `{model}` does not exist or you do not have access to it."
            return _Answer(404, _error(message, "invalid_request_error", "model_not_found"), fault=fault)
        if fault is not None and fault.kind not in CONTENT_FAULTS:
            return _Answer(fault=fault)
        for rule in [*self._extra_responses, *self.scenario.responses]:
            if rule.matches(stage, file, attempt):
                # A faulted delivery does not use up a reply of a `replies` sequence.
                seen = self._hits.get(id(rule), 0) if fault else self._hit(rule)
                text = rule.reply_at(seen).text
                if prior and text.startswith(prior):
                    text = text[len(prior) :]
                return _Answer(text=text, fault=fault)
        message = f"no scripted response for stage={stage} file={file}"
        late = fault if fault is not None and fault.kind == "timeout" else None  # still answers late
        return _Answer(400, _error(message, "invalid_request_error", "no_scripted_response"), fault=late)

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless the server stops first; False means stop answering."""
        return seconds <= 0 or not self._stopping.wait(seconds)

    def _enter(self) -> int | None:
        """One more request in flight (its count, itself included), or None when `capacity` are already."""
        with self._lock:
            capacity = self.scenario.capacity
            if capacity is not None and self.in_flight >= capacity:
                self.over_capacity += 1
                return None
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return self.in_flight

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _take_slot(self) -> bool | None:
        """With `slots`, wait for a free one, as llama.cpp's server queues a request beyond its slots: whether the
        request had to wait, or None when the server stops first. Without `slots`, False at once."""
        slots = self.scenario.slots
        if slots is None:
            return False
        with self._slot_free:
            waited = False
            while self.running >= slots:
                if self._stopping.is_set():
                    return None
                waited = True
                self._slot_free.wait(_POLL_S)
            if waited:
                self.queued += 1
            self.running += 1
        return waited

    def _free_slot(self) -> None:
        if self.scenario.slots is None:
            return
        with self._slot_free:
            self.running -= 1
            self._slot_free.notify()

    def _first_token(self, prompt: str) -> None:
        """The reply to `prompt` starts: from now on its prefix is cached for requests that arrive later."""
        with self._lock:
            self._processed.append(prompt)


class _HTTPServer(ThreadingHTTPServer):
    """Threaded server that tracks open connections so `stop()` can drop them, and stays quiet."""

    daemon_threads = True
    # socketserver's backlog is 5: a burst of new connections beyond it waits for the client's SYN retry (1 s),
    # which no provider's server makes its clients do.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], owner: ScriptedServer) -> None:
        self.owner = owner
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self.connections_lock:
            open_now = list(self.connections)
        for conn in open_now:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if self.owner.verbose:
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """One connection; HTTP/1.1 keep-alive, chunked transfer for streams so truncation is detectable."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # small SSE writes must not wait for delayed ACKs (40 ms each)
    server: _HTTPServer
    _leave_early: Callable[[], None]  # set for each chat request in `_chat`, before anything is answered

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        if self.server.owner.verbose:
            super().log_message(format, *args)

    def handle(self) -> None:
        try:
            super().handle()
        except (OSError, ValueError):  # client went away, or stop() dropped the connection
            self.close_connection = True

    # -- routing ---------------------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        owner, path = self.server.owner, self.path.split("?", 1)[0].rstrip("/")
        if path in ("/v1/models", "/models"):
            names = [m for m in owner.scenario.models if not any(ch in m for ch in "*?[")] or ["scripted"]
            self._json(200, {"object": "list", "data": [self._model(n) for n in names]})
        elif path.startswith(("/v1/models/", "/models/")):
            name = path.rsplit("/", 1)[1]
            if owner.scenario.accepts_model(name):
                self._json(200, self._model(name))
            else:
                self._json(
                    404,
                    _error(f"The model `{name}` does not exist.", "invalid_request_error", "model_not_found"),
                )
        elif path == "/_p2c/requests":
            self._json(200, owner.requests)
        elif path == "/_p2c/load":
            self._json(200, owner.load())
        elif path == "/props" and owner.scenario.slots is not None:  # llama.cpp's server: its parallel slots
            self._json(200, {"total_slots": owner.scenario.slots, "model_path": "scripted.gguf"})
        else:
            self._json(404, _error(f"Unknown path {path}", "invalid_request_error", "unknown_url"))

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        arrived = (time.time(), time.monotonic())
        owner, path = self.server.owner, self.path.split("?", 1)[0].rstrip("/")
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._json(400, _error("The request body is not valid JSON.", "invalid_request_error"))
            return
        if not isinstance(body, dict):
            self._json(400, _error("The request body must be a JSON object.", "invalid_request_error"))
        elif path in _CHAT_PATHS:
            self._chat(path, body, arrived)
        elif path == "/_p2c/reset":
            owner.reset()
            self._json(200, {"ok": True})
        elif path in ("/_p2c/faults", "/_p2c/responses"):
            try:
                (owner.add_fault if path.endswith("faults") else owner.add_response)(body)
            except P2CError as exc:
                self._json(400, _error(str(exc), "invalid_request_error"))
            else:
                self._json(200, {"ok": True})
        else:
            self._json(404, _error(f"Unknown path {path}", "invalid_request_error", "unknown_url"))

    # -- chat completions ------------------------------------------------------------------------------

    def _chat(self, path: str, body: dict[str, Any], arrived: tuple[float, float]) -> None:
        """Answer a chat request `scenario.latency` seconds after it `arrived` (epoch, monotonic): the time the
        server itself takes to read and record it is part of that latency, not added to it. A request beyond the
        scenario's `capacity` is refused at once with a 429, as a hosted API's concurrency limit does; one beyond
        its `slots` waits for a free slot, as llama.cpp's server does, and its latency counts from then."""
        owner = self.server.owner
        in_flight = owner._enter()
        if in_flight is None:
            message = f"Too many requests at once (at most {owner.scenario.capacity}); retry later (scripted)."
            retry = {"Retry-After": f"{owner.scenario.capacity_retry_after:g}"}
            self._json(429, _error(message, "requests", "rate_limit_exceeded"), retry)
            return
        waited = owner._take_slot()
        if waited is None:
            owner._leave()
            self._drop()
            return
        if waited:  # the server starts on it now
            arrived = (arrived[0], time.monotonic())
        left = False

        def leave() -> None:
            """Out of the in-flight count once: just before the last bytes of the reply go out, since a client
            that has read them may send its next request before this handler returns."""
            nonlocal left
            if not left:
                left = True
                owner._free_slot()
                owner._leave()

        self._leave_early = leave
        try:
            self._answer_chat(path, body, arrived, in_flight)
        finally:
            leave()

    def _answer_chat(self, path: str, body: dict[str, Any], arrived: tuple[float, float], in_flight: int) -> None:
        owner = self.server.owner
        headers = {k.lower(): v for k, v in self.headers.items() if k.lower().startswith("x-p2c-")}
        with owner._lock:
            owner._arrivals += 1
            self._arrival = owner._arrivals
        answer = owner._decide(path, headers, body, arrived[0], in_flight)
        kind = answer.fault.kind if answer.fault else None
        if kind == "reset":
            self._reset()
            return
        latency = owner.scenario.latency + owner.scenario.load_latency * (in_flight - 1)
        if not owner._sleep(latency - (time.monotonic() - arrived[1])):
            self._drop()
            return
        if kind == "timeout" and answer.fault is not None:
            sleep = owner.scenario.fault_sleep if answer.fault.sleep is None else answer.fault.sleep
            if not owner._sleep(sleep):
                self._drop()
                return
        if kind == "html" and answer.fault is not None:
            status = answer.fault.status if "status" in answer.fault.model_fields_set else 502
            self._send(status, _html_page(status), "text/html; charset=utf-8")
            return
        if answer.error is not None:
            extra = {}
            if answer.fault is not None and answer.fault.retry_after is not None:
                extra["Retry-After"] = f"{answer.fault.retry_after:g}"
            # Some servers echo the credentials in their errors: `{authorization}` in a message does the same.
            auth = json.dumps(self.headers.get("Authorization", ""))[1:-1]
            self._json(answer.status, json.loads(json.dumps(answer.error).replace("{authorization}", auth)), extra)
            return
        owner._first_token(answer.prompt)  # what follows is the reply: the prompt has been processed
        text = answer.text
        habit = _HABITS[owner.scenario.habit] if owner.scenario.habit else None
        wanted = body.get("response_format")
        if habit is not None and (habit.formats is None or not isinstance(wanted, dict)):
            text = _unformatted(text)  # no response_format in effect: the model wraps its JSON
        if kind == "malformed":
            text = answer.fault.content if answer.fault and answer.fault.content is not None else _MALFORMED
        elif kind == "empty":
            text = ""
        if kind == "huge" and answer.fault is not None and answer.fault.chars is not None:
            text = _huge_text(answer.fault.chars)
            pieces = [text[i : i + _HUGE_PIECE] for i in range(0, len(text), _HUGE_PIECE)]
        else:
            pieces = _chunks(text)
        finish = "stop"
        if kind == "length":
            pieces, finish = pieces[: len(pieces) // 2], "length"
        # A huge reply's tokens are guessed (4 characters each): counting 10 MB would delay the first byte.
        completion = len(text) // 4 if kind == "huge" else estimate_tokens("".join(pieces))
        usage: dict[str, Any] | None = {
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": answer.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": answer.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }
        if kind == "no_usage":
            usage = None
        meta = {
            "id": f"chatcmpl-p2c-{answer.index}",
            "created": int(time.time()),
            "model": body.get("model", ""),
        }
        slow = answer.fault if kind in ("trickle", "keepalive") else None
        if body.get("stream"):
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            include_usage = include_usage and (habit is None or habit.stream_usage)
            self._stream(meta, pieces, finish, usage if include_usage else None, kind == "truncate", slow)
        else:
            self._complete(meta, "".join(pieces), finish, usage, completion, kind == "truncate", slow)

    def _complete(
        self,
        meta: dict[str, Any],
        text: str,
        finish: str,
        usage: dict[str, Any] | None,
        tokens: int,
        truncate: bool,
        slow: Fault | None = None,
    ) -> None:
        message = {"role": "assistant", "content": text, "refusal": None}
        payload: dict[str, Any] = {
            **meta,
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        }
        if usage is not None:
            payload["usage"] = usage
        if not self.server.owner._sleep(self.server.owner.scenario.token_latency * tokens):
            self._drop()
            return
        data = json.dumps(payload).encode()
        if slow is not None:  # whitespace before the JSON (a body that takes its time), then the JSON
            self._slow_body(data, slow)
            return
        if not truncate:
            self._leave_early()
            self._send(200, data, "application/json")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.close_connection = True

    def _stream(
        self,
        meta: dict[str, Any],
        pieces: list[str],
        finish: str,
        usage: dict[str, Any] | None,
        truncate: bool,
        slow: Fault | None = None,
    ) -> None:
        owner = self.server.owner
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        base = {**meta, "object": "chat.completion.chunk", "system_fingerprint": None}
        with_usage = {"usage": None} if usage is not None else {}

        def event(delta: dict[str, Any], finish_reason: str | None = None) -> None:
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
            self._chunk(f"data: {json.dumps({**base, 'choices': [choice], **with_usage})}\n\n")

        event({"role": "assistant", "content": ""})
        if slow is not None and slow.kind == "keepalive":  # SSE comments only, for `sleep` seconds
            until = time.monotonic() + self._fault_sleep(slow)
            while time.monotonic() < until:
                if not owner._sleep(slow.interval):
                    self._drop()
                    return
                self._chunk(": keep-alive\n\n")
        if slow is not None and slow.kind == "trickle":
            if not self._trickle(event, pieces, slow):
                return
            pieces = []
        # Paced against one deadline, so the stream lasts token_latency x tokens however long each write takes.
        began, tokens = time.monotonic(), 0
        for piece in pieces[: len(pieces) // 2] if truncate else pieces:
            tokens += estimate_tokens(piece)
            if not owner._sleep(began + owner.scenario.token_latency * tokens - time.monotonic()):
                self._drop()
                return
            if owner.scenario.interrupt_requests and owner._arrivals != self._arrival:
                # Another request arrived: the reply stops where it is, `[DONE]` with no finish reason.
                with owner._lock:
                    owner.interrupted += 1
                self._chunk("data: [DONE]\n\n")
                self.wfile.write(b"0\r\n\r\n")
                return
            event({"content": piece})
        if truncate:  # no terminating chunk: the client sees an incomplete body
            self.close_connection = True
            return
        self._leave_early()
        event({}, finish)
        if usage is not None:
            self._chunk(f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n")
        self._chunk("data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")

    def _fault_sleep(self, fault: Fault) -> float:
        return self.server.owner.scenario.fault_sleep if fault.sleep is None else fault.sleep

    def _trickle(self, event: Any, pieces: list[str], fault: Fault) -> bool:
        """The reply one piece every `interval` seconds, then (with `sleep`) spaces until `sleep` seconds have
        passed; False when the server stopped meanwhile."""
        owner = self.server.owner
        until = time.monotonic() + (fault.sleep or 0.0)
        for piece in pieces:
            if not owner._sleep(fault.interval):
                self._drop()
                return False
            event({"content": piece})
        while time.monotonic() < until:
            if not owner._sleep(fault.interval):
                self._drop()
                return False
            event({"content": " "})
        return True

    def _slow_body(self, data: bytes, fault: Fault) -> None:
        """A JSON body sent in chunks: a space every `interval` seconds for `sleep` seconds (a keepalive fault:
        `fault_sleep` by default; a trickle: one space per reply piece at least), then the JSON."""
        owner = self.server.owner
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        seconds = self._fault_sleep(fault) if fault.kind == "keepalive" else (fault.sleep or 0.0)
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            if not owner._sleep(fault.interval):
                self._drop()
                return
            self._chunk(" ")
        self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))

    # -- low level -------------------------------------------------------------------------------------

    def _model(self, name: str) -> dict[str, Any]:
        owner = {"vllm": "vllm", "llamacpp": "llamacpp"}.get(self.server.owner.scenario.habit or "", "p2c-scripted")
        return {"id": name, "object": "model", "created": 0, "owned_by": owner}

    def _chunk(self, text: str) -> None:
        data = text.encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _send(self, status: int, data: bytes, content_type: str, extra: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _json(self, status: int, payload: Any, extra: Mapping[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", extra)

    def _drop(self) -> None:
        """Give up on this connection without another byte (server stopping)."""
        self.close_connection = True

    def _reset(self) -> None:
        """Abort the connection with a TCP RST: linger 0, then the last reference closes the socket."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()
        self.connection.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run a scenario in the foreground until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m p2c_notebook.testing.server", description=__doc__)
    parser.add_argument("--scenario", required=True, help="scenario YAML/JSON file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed at start)")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    try:
        server = ScriptedServer(args.scenario, args.host, args.port, verbose=args.verbose)
        url = server.start()
    except (P2CError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)  # also when started in the background, where SIGINT is ignored
    print(f"scripted server listening on {url}", flush=True)
    try:
        while not done.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
