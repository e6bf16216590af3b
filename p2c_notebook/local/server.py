"""The llama.cpp server as a child process: llama-cpp-python's OpenAI-compatible `llama_cpp.server`.

It listens on 127.0.0.1 only, on a free port, and lives exactly as long as its owner: `close()` stops it,
an atexit hook stops it when the interpreter (CLI or notebook kernel) exits, and when the owner dies without
either, the child notices its stdin pipe closing and exits too. Stopped children are always reaped.

The child is `python -c "...main(ARGS)"` from this module: it starts the watchdog, then runs
`python -m llama_cpp.server ARGS...` in the same process.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
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

from p2c_notebook.local.weights import LocalModelError

INSTALL = "pip install 'p2c-notebook[local]'  (or: CMAKE_BUILD_PARALLEL_LEVEL=2 pip install 'llama-cpp-python[server]')"
_TAIL = 2000
_CHILD = "import sys; from p2c_notebook.local.server import main; main(sys.argv[1:])"


class ServerStartError(LocalModelError):
    """The llama.cpp server did not start (missing engine, bad model file, out of memory, time-out)."""


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
    ) -> None:
        self.model_path = model_path
        self.alias = alias
        self.n_ctx = n_ctx
        self.n_threads = n_threads or default_threads()
        self.chat_format = chat_format
        self.startup_timeout = startup_timeout
        self.python = python
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
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
                raise ServerStartError(f"The local model needs llama-cpp-python with its server extra: {INSTALL}")
            for attempt in (1, 2):  # a free port can be taken by someone else before the server binds it
                self.port = free_port()
                self._log = tempfile.TemporaryFile(prefix="p2c-llama-")  # noqa: SIM115 - closed by close()
                self._proc = subprocess.Popen(
                    self.command(),
                    stdin=subprocess.PIPE,  # the child's watchdog: EOF on it means the owner is gone
                    stdout=self._log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # a Ctrl-C that cancels a run must not kill the server under it
                )
                atexit.register(self.close)
                try:
                    self._wait_ready()
                    return self.base_url
                except ServerStartError:
                    tail = self.log_tail()
                    self._stop_locked()
                    if attempt == 2 or "address already in use" not in tail.lower():
                        raise
            raise AssertionError("unreachable")

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        url = f"{self.base_url}/models"
        while True:
            code = self._proc.poll()
            if code is not None:
                raise ServerStartError(
                    f"The llama.cpp server for {self.model_path.name} exited with code {code} while starting. "
                    f"Its last output:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our own loopback server
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"The llama.cpp server for {self.model_path.name} did not answer within "
                    f"{self.startup_timeout:.0f} s (loading the model may need more time or memory). "
                    f"Its last output:\n{self.log_tail()}"
                )
            time.sleep(0.2)

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

    def close(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s) and reap it; safe to call twice."""
        with self._lock:
            self._stop_locked()

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
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None

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
