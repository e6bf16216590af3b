"""The scripted server in a child process, for measurements where it must not share the client's interpreter.

A provider's server does not run inside the client's Python: in-process, the server's per-request work (parsing a
paper-sized body, counting its tokens, pacing the stream) takes the GIL from the client, and the more calls run
concurrently the more it does. Benchmarks of concurrent schedules serve from here; tests keep `ScriptedServer`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from p2c_notebook.testing.server import RecordedRequest, Served

_READY = "scripted server listening on "


class ServerProcess(Served):
    """`python -m p2c_notebook.testing.server` for one scenario; `base_url` and `requests` as `ScriptedServer`."""

    def __init__(self, scenario: Mapping[str, Any] | str | Path, timeout: float = 30.0) -> None:
        self._scenario = scenario
        self._timeout = timeout  # to start, to stop, to answer
        self._proc: subprocess.Popen[str] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._base_url = ""
        self.returncode: int | None = None  # and `stderr`: how the last child ended, once stopped
        self.stderr = ""

    def start(self) -> str:
        """Start the child, wait until it listens, and return its base URL."""
        if self._proc is not None:
            return self._base_url
        if isinstance(self._scenario, Mapping):
            self._tmp = tempfile.TemporaryDirectory(prefix="p2c-scenario-")
            path = Path(self._tmp.name) / "scenario.json"
            path.write_text(json.dumps(self._scenario), encoding="utf-8")
        else:
            path = Path(self._scenario)
        package_root = str(Path(__file__).resolve().parents[2])
        search = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONPATH": search}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "p2c_notebook.testing.server", "--scenario", str(path), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()  # the child prints it once bound, or exits
        if not line.startswith(_READY):
            self.stop()
            why = line or self.stderr.strip() or "no output"
            raise RuntimeError(f"The scripted server process did not start: {why}")
        self._base_url = line.removeprefix(_READY)
        return self._base_url

    def stop(self) -> None:
        """SIGTERM, then wait (killed if it does not stop)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                _, self.stderr = proc.communicate(timeout=self._timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, self.stderr = proc.communicate()
            self.returncode = proc.returncode
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    @property
    def base_url(self) -> str:
        if self._proc is None:
            raise RuntimeError("The scripted server process is not running; call start() first.")
        return self._base_url

    @property
    def requests(self) -> list[RecordedRequest]:
        """The chat requests the child received so far, oldest first (fetched from its `/_p2c/requests`)."""
        url = self.base_url.removesuffix("/v1") + "/_p2c/requests"
        with urllib.request.urlopen(url, timeout=self._timeout) as reply:  # noqa: S310 - our own 127.0.0.1 URL
            return cast(list[RecordedRequest], json.loads(reply.read()))

    @property
    def load(self) -> dict[str, int]:
        """Requests in flight now, the most at once so far, and how many `capacity` refused (`/_p2c/load`)."""
        url = self.base_url.removesuffix("/v1") + "/_p2c/load"
        with urllib.request.urlopen(url, timeout=self._timeout) as reply:  # noqa: S310 - our own 127.0.0.1 URL
            return cast(dict[str, int], json.loads(reply.read()))
