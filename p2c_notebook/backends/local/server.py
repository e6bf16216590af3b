"""The llama.cpp server as a child process: llama-cpp-python's OpenAI-compatible `llama_cpp.server`.

It listens on 127.0.0.1 only, on a free port, and lives exactly as long as its owner: `close()` stops it,
an atexit hook stops it when the interpreter (CLI or notebook kernel) exits, and when the owner dies without
either, the child notices its stdin pipe closing and exits too. Stopped children are always reaped.

Its output (model metadata, chat template, timings) goes to a log file, never into an error message: `log_path`
(a run's `logs/local-server.log`), appended to by every start, or else a private temporary file that is kept
under the temporary folder only when the server fails.

The child is `python -c "...main(ARGS)"` from this module: it starts the watchdog, then runs
`python -m llama_cpp.server ARGS...` in the same process.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import re
import runpy
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

from p2c_notebook.backends.local.weights import LocalModelError

INSTALL = "pip install 'p2c-notebook[local]'  (or: CMAKE_BUILD_PARALLEL_LEVEL=2 pip install 'llama-cpp-python[server]')"
_TAIL = 2000
_CHILD = "import sys; from p2c_notebook.backends.local.server import main; main(sys.argv[1:])"
_LOG_LIMIT = 4 * 1024 * 1024  # a run folder's server log starts afresh beyond this (each start appends)
# What a failed start's log says, in our words: the log itself is never quoted (it holds a page of metadata).
_DIAGNOSES = (
    (r"out of memory|failed to allocate|cannot allocate|bad_alloc|unable to allocate", "it ran out of memory"),
    (r"failed to load model|error loading model|unable to load model", "llama.cpp could not load the model file"),
    (r"address already in use", "its port was taken"),
)


class _NotReady(Exception):
    """The child exited or stayed silent while starting (what happened, in words)."""


class ServerStartError(LocalModelError):
    """The llama.cpp server did not start (bad model file, out of memory, time-out): the server failed,
    exit code 4 like any model server (a missing engine is a LocalModelError, exit 2)."""

    exit_code = 4


def describe_exit(code: int | None) -> str:
    """A child's exit status in words: `killed by SIGKILL`, `exit code 1`."""
    if code is None:  # stopped by us, or never started
        return "not running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _append_only(log: IO[bytes]) -> None:
    """The child shares the file's offset with us: with O_APPEND its writes land at the end even after
    we read the tail (a file opened in mode "a" by name has it; a temporary file needs it set)."""
    with contextlib.suppress(ImportError, OSError):
        import fcntl

        flags = fcntl.fcntl(log.fileno(), fcntl.F_GETFL)
        fcntl.fcntl(log.fileno(), fcntl.F_SETFL, flags | os.O_APPEND)


def diagnose(log: str) -> str | None:
    """A short reason for a failure that the server's output names (None when it names none we know)."""
    for pattern, reason in _DIAGNOSES:
        if re.search(pattern, log, re.IGNORECASE):
            return reason
    return None


def engine_installed() -> bool:
    """llama-cpp-python with its server extra (fastapi, uvicorn, sse-starlette...) is importable."""
    return all(importlib.util.find_spec(name) is not None for name in ("llama_cpp", "uvicorn", "fastapi"))


def default_threads() -> int:
    """All cores this process may use (llama-cpp-python's own default is half of them)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LlamaServer:
    """One `llama_cpp.server` child process serving one GGUF model under the name `alias`."""

    def __init__(
        self,
        model_path: Path,
        alias: str,
        n_ctx: int,
        n_threads: int | None = None,
        chat_format: str | None = None,
        startup_timeout: float = 180.0,
        python: str = sys.executable,
        log_path: Path | None = None,
    ) -> None:
        self.model_path = model_path
        self.alias = alias
        self.n_ctx = n_ctx
        self.n_threads = n_threads or default_threads()
        self.chat_format = chat_format
        self.startup_timeout = startup_timeout
        self.python = python
        self.log_path = log_path
        self.port = 0
        self.starts = 0  # how many times a child was started (a restart makes it 2)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._kept: Path | None = None  # where the temporary log was kept after a failure
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def command(self) -> list[str]:
        args = [
            self.python,
            "-c",
            _CHILD,
            "--model",
            str(self.model_path),
            "--model_alias",
            self.alias,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_ctx",
            str(self.n_ctx),
            "--n_threads",
            str(self.n_threads),
            "--n_threads_batch",
            str(self.n_threads),
            "--logits_all",  # True (the default) keeps n_ctx x vocabulary floats: gigabytes for a long context
            "False",
            "--use_mlock",  # locking the whole model in RAM fails under ordinary memlock limits
            "False",
        ]
        if self.chat_format:
            args += ["--chat_format", self.chat_format]
        return args

    def start(self) -> str:
        """Start the server and wait until it answers; return its base URL (…/v1)."""
        with self._lock:
            if self._proc is not None:
                return self.base_url
            if not engine_installed():
                raise LocalModelError(f"The local model needs llama-cpp-python with its server extra: {INSTALL}")
            for attempt in (1, 2):  # a free port can be taken by someone else before the server binds it
                self.port = free_port()
                self._open_log()
                self._proc = subprocess.Popen(
                    self.command(),
                    stdin=subprocess.PIPE,  # the child's watchdog: EOF on it means the owner is gone
                    stdout=self._log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # a Ctrl-C that cancels a run must not kill the server under it
                )
                self.starts += 1
                atexit.register(self.close)
                try:
                    self._wait_ready()
                    return self.base_url
                except _NotReady as exc:
                    self._note(str(exc))
                    self._stop_locked()
                    if attempt == 2 or diagnose(self.log_tail()) != "its port was taken":
                        raise ServerStartError(self._start_failure(str(exc))) from None
            raise AssertionError("unreachable")

    def restart(self) -> str:
        """Reap a server that died and start a new one (on a new port); return its base URL."""
        with self._lock:
            proc = self._proc
            if proc is not None:
                self._note(f"the server exited ({describe_exit(proc.poll())}); starting it again")
                self._stop_locked()
        return self.start()

    def _open_log(self) -> None:
        """The log is opened once and appended to by every start, so a restart keeps what the dead server said."""
        if self._log is None and self.log_path is not None:
            try:
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                large = self.log_path.is_file() and self.log_path.stat().st_size > _LOG_LIMIT
                self._log = self.log_path.open("w+b" if large else "a+b")
            except OSError:
                self.log_path = None  # an unwritable run folder must not stop the model: keep it in a temporary file
        if self._log is None:
            self._log = tempfile.TemporaryFile(prefix="p2c-llama-")  # noqa: SIM115 - closed by close()
            _append_only(self._log)
        self._note(f"starting the llama.cpp server for {self.model_path.name} on port {self.port}")

    def _note(self, text: str) -> None:
        """A line of our own in the server's log, so a reader sees where each server life begins and ends."""
        if self._log is None:
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with contextlib.suppress(OSError, ValueError):
            self._log.write(f"\n=== p2c {stamp}: {text} ===\n".encode())
            self._log.flush()

    @property
    def log_file(self) -> Path | None:
        """Where the server's output can be read after a failure (None: in a temporary file not kept)."""
        return self.log_path or self._kept

    def _keep_log(self) -> None:
        """A failure with no run folder: copy the temporary log to a file that outlives the server."""
        if self.log_path is not None or self._log is None:
            return
        try:
            self._log.flush()
            self._log.seek(0)
            if self._kept is None:
                fd, name = tempfile.mkstemp(prefix="p2c-llama-server-", suffix=".log")
                os.close(fd)
                self._kept = Path(name)
            self._kept.write_bytes(self._log.read())
        except (OSError, ValueError):
            self._kept = None

    def keep_log(self) -> Path | None:
        """Make the log outlive the server (a failure the owner reports); return where it is."""
        with self._lock:
            self._keep_log()
            return self.log_file

    def where_logged(self) -> str:
        """`its log is in PATH`, or why there is none."""
        return f"its log is in {self.log_file}" if self.log_file else "its log could not be kept"

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        url = f"{self.base_url}/models"
        while True:
            code = self._proc.poll()
            if code is not None:
                raise _NotReady(f"exited while starting ({describe_exit(code)})")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our own loopback server
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise _NotReady(
                    f"did not answer within {self.startup_timeout:.0f} s (loading the model may need more time "
                    "or memory)"
                )
            time.sleep(0.2)

    def _start_failure(self, what: str) -> str:
        """One line: what happened, the reason the log names (if one we know), and where the log will be."""
        reason = diagnose(self.log_tail(20 * _TAIL))
        self._keep_log()
        return (
            f"The llama.cpp server for {self.model_path.name} {what}" + (f": {reason}" if reason else "") + "; "
            f"{self.where_logged()}. Check the model file and free memory (or lower P2C_LOCAL_N_CTX), then rerun."
        )

    def log_tail(self, limit: int = _TAIL) -> str:
        if self._log is None:
            return ""
        try:
            self._log.flush()
            size = self._log.seek(0, os.SEEK_END)
            self._log.seek(max(0, size - limit))
            text = self._log.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""
        return text.strip() or "(no output)"

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def exit_code(self, wait: float = 0.0) -> int | None:
        """The dead server's exit status (negative: the signal), waiting up to `wait` s for a dying one
        (its connections break an instant before it can be reaped); None while it runs or when none started."""
        proc = self._proc
        if proc is None:
            return None
        try:
            return proc.wait(timeout=wait) if wait > 0 else proc.poll()
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s), reap it and close its log; safe to call twice."""
        with self._lock:
            self._stop_locked()
            if self._log is not None:
                with contextlib.suppress(OSError):
                    self._log.close()
                self._log = None

    def _stop_locked(self) -> None:
        proc, self._proc = self._proc, None
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
        if proc is not None:
            if proc.stdin:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    stop = close


def _watch_stdin() -> None:
    """Exit as soon as the owner's end of our stdin closes (the owner exited or was killed)."""
    with contextlib.suppress(OSError):
        while sys.stdin.buffer.read(4096):
            pass
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
    os._exit(0)


def main(argv: list[str]) -> None:
    threading.Thread(target=_watch_stdin, name="p2c-owner-watchdog", daemon=True).start()
    sys.argv = ["llama_cpp.server", *argv]
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
