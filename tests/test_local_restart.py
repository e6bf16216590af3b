"""The embedded server dying under the local backend: restarted once and the call re-sent, or one clear line.

These tests need no engine and no weights: the child process is the scripted server, started and killed exactly as
the llama.cpp server is (a real process, real HTTP, a real SIGKILL). tests/test_local_model.py kills the real
llama.cpp server the same way.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import small_scenario

from p2c_notebook.backends import ChatRequest
from p2c_notebook.backends.local import LlamaServer, LocalBackend, ServerStartError
from p2c_notebook.backends.local import backend as local_backend
from p2c_notebook.backends.local import server as local_server
from p2c_notebook.backends.retry import RetryNotice
from p2c_notebook.cli import main
from p2c_notebook.errors import BackendError
from p2c_notebook.run.events import Event, Notice, TokenDelta
from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.settings import Settings

pytestmark = pytest.mark.slow

CHAT_TEMPLATE_LINE = "llama_model_loader: - kv  tokenizer.chat_template str = {% for message in messages %}"


class ScriptedChild(LlamaServer):
    """A LlamaServer whose child is the scripted server; later lives may run `next_commands` instead."""

    instances: list[ScriptedChild] = []
    scenario: Path
    next_commands: list[list[str]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.startup_timeout = 30
        ScriptedChild.instances.append(self)

    def command(self) -> list[str]:
        if self.starts >= 1 and ScriptedChild.next_commands:
            return ScriptedChild.next_commands.pop(0)
        preamble = f"print({CHAT_TEMPLATE_LINE!r}, flush=True)"  # what llama.cpp prints: never in a message
        run = "from p2c_notebook.testing.server import main; sys.exit(main(sys.argv[1:]))"
        return [self.python, "-c", f"import sys; {preamble}; {run}", "--scenario", str(self.scenario)] + [
            "--port",
            str(self.port),
        ]


@pytest.fixture
def fake_gguf(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.gguf"
    path.write_bytes(b"GGUF" + b"\0" * 32)
    return path


@pytest.fixture
def children(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[ScriptedChild]]:
    """The local backend starts ScriptedChild servers for the small scenario; a reply starts after a second,
    time enough to kill the server in the middle of the call."""
    scenario = small_scenario(latency=1.0, token_latency=0.01)
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario), encoding="utf-8")
    ScriptedChild.scenario = path
    ScriptedChild.instances = []
    ScriptedChild.next_commands = []
    monkeypatch.setattr(local_backend, "LlamaServer", ScriptedChild)
    monkeypatch.setattr(local_server, "engine_installed", lambda: True)
    yield ScriptedChild.instances
    for child in ScriptedChild.instances:
        child.close()


def _requests(server: LlamaServer) -> list[dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/_p2c/requests", timeout=2) as reply:  # noqa: S310
            data: list[dict[str, Any]] = json.loads(reply.read())
            return data
    except OSError:
        return []


class Killer:
    """SIGKILLs each new server life (up to `times`) as soon as it has received a chat request: the OOM killer."""

    def __init__(self, servers: list[ScriptedChild], times: int) -> None:
        self.servers, self.times = servers, times
        self.killed: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05) and len(self.killed) < self.times:
            for server in list(self.servers):
                pid = server.pid
                if pid is not None and pid not in self.killed and server.running() and _requests(server):
                    os.kill(pid, signal.SIGKILL)
                    self.killed.append(pid)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _settings(model: Path, **extra: Any) -> Settings:
    return Settings(backend=f"local:{model}", api_key=None, concurrency=1, **extra)


def test_a_server_killed_during_the_plan_is_restarted_and_the_run_finishes_planning(
    children: list[ScriptedChild], fake_gguf: Path, paper_md: Path, tmp_path: Path
) -> None:
    events: list[Event] = []
    killer = Killer(children, times=1)
    run = tmp_path / "run"
    try:
        with Pipeline.start(paper_md, run, settings=_settings(fake_gguf), sinks=(events.append,)) as pipe:
            result = pipe.run(until="config")
            backend = pipe.backend
            assert isinstance(backend, LocalBackend)
            assert result.state == "stopped", result.message
            assert backend.restarts == 1 and backend.server.starts == 2 and backend.server.running()
            assert backend.server.pid not in killer.killed and len(killer.killed) == 1
            for artifact in ("plan", "design", "logic", "config"):
                entry = pipe.store.entry(artifact)
                assert entry is not None and entry.status == "generated", artifact
                assert entry.usage.calls == 1, artifact  # the killed call was re-sent once, nothing else twice
    finally:
        killer.stop()
    warnings = [e.message for e in events if isinstance(e, Notice) and e.level != "info"]
    assert any("server died (killed by SIGKILL); starting it again" in w for w in warnings), warnings
    assert any(isinstance(e, TokenDelta) and e.restart and e.artifact == "plan" for e in events)
    log = (run / "logs" / "local-server.log").read_text(encoding="utf-8")
    assert log.count("starting the llama.cpp server") == 2 and "killed by SIGKILL" in log
    assert CHAT_TEMPLATE_LINE in log  # both lives' output is kept


def test_a_server_that_dies_again_in_the_same_call_ends_the_run_in_one_line(
    children: list[ScriptedChild],
    fake_gguf: Path,
    paper_md: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in [k for k in os.environ if k.startswith(("OPENAI_", "P2C_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("P2C_CONFIG", "/nonexistent")
    killer = Killer(children, times=2)
    run = tmp_path / "run"
    try:
        code = main(["run", str(paper_md), "--out", str(run), "--backend", f"local:{fake_gguf}", "--until", "plan"])
    finally:
        killer.stop()
    err = capsys.readouterr().err
    assert code == BackendError.exit_code == 4, err
    errors = [line for line in err.splitlines() if "died again" in line]
    assert len(errors) == 1, err
    line = errors[0]
    log = run / "logs" / "local-server.log"
    assert "killed by SIGKILL" in line and "after a restart" in line and "stage plan" in line
    assert str(log) in line and "chat_template" not in err and "llama_model_loader" not in err
    assert len(killer.killed) == 2 and not any(Path(f"/proc/{pid}").exists() for pid in killer.killed)
    assert log.read_text(encoding="utf-8").count("killed by SIGKILL") >= 1
    assert Pipeline.open(run).store.entry("plan") is None


def test_a_server_that_cannot_start_again_is_one_line_naming_its_exit_and_log(
    children: list[ScriptedChild], fake_gguf: Path, tmp_path: Path
) -> None:
    crash = (
        f"import sys; print({CHAT_TEMPLATE_LINE!r}); print('llama_model_load: error loading model: out of range');"
        " sys.exit(3)"
    )
    ScriptedChild.next_commands = [[sys.executable, "-c", crash]] * 2
    log = tmp_path / "logs" / "local-server.log"
    backend = LocalBackend(_settings(fake_gguf, local_server_log=str(log)))
    try:
        request = ChatRequest([{"role": "user", "content": "Plan it."}], "plan")
        assert backend.complete(request, lambda _: None).text.startswith("# Plan")
        os.kill(backend.server.pid or 0, signal.SIGKILL)
        with pytest.raises(BackendError) as caught:
            backend.complete(request, lambda _: None)
    finally:
        backend.close()
    message = str(caught.value)
    assert "\n" not in message and "killed by SIGKILL" in message and "did not start again" in message
    assert "exit code 3" in message and "could not load the model file" in message and str(log) in message
    assert "chat_template" not in message and "out of range" not in message
    assert "out of range" in log.read_text(encoding="utf-8")


def test_a_server_killed_between_calls_is_restarted_at_most_twice_per_run(
    children: list[ScriptedChild], fake_gguf: Path, tmp_path: Path
) -> None:
    notices: list[RetryNotice] = []
    backend = LocalBackend(_settings(fake_gguf))
    request = ChatRequest([{"role": "user", "content": "Plan it."}], "plan")
    try:
        for restarts in (1, 2):
            os.kill(backend.server.pid or 0, signal.SIGKILL)
            time.sleep(0.2)
            assert backend.complete(request, lambda _: None, notices.append).text.startswith("# Plan")
            assert backend.restarts == restarts and backend.server.running()
        os.kill(backend.server.pid or 0, signal.SIGKILL)
        with pytest.raises(BackendError, match=r"died again \(killed by SIGKILL\) .* after 2 restarts in this run"):
            backend.complete(request, lambda _: None, notices.append)
    finally:
        backend.close()
    assert [n.restart for n in notices] == [True, True]
    assert backend.server.log_file is not None and backend.server.log_file.is_file()  # kept: no run folder
    backend.server.log_file.unlink()


def test_a_server_that_fails_to_start_says_so_in_one_line_and_keeps_its_log(tmp_path: Path) -> None:
    crash = "import sys; print('error loading model: tensor data is not within file bounds'); sys.exit(1)"

    class Crashing(LlamaServer):
        def command(self) -> list[str]:
            return [self.python, "-c", crash]

    server = Crashing(tmp_path / "model.gguf", "m", n_ctx=512, startup_timeout=30)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(local_server, "engine_installed", lambda: True)
            with pytest.raises(ServerStartError) as caught:
                server.start()
    finally:
        server.close()
    message = str(caught.value)
    assert caught.value.exit_code == 4 and "\n" not in message
    assert "exited while starting (exit code 1)" in message and "could not load the model file" in message
    kept = server.log_file
    assert kept is not None and str(kept) in message and "not within file bounds" not in message
    assert "not within file bounds" in kept.read_text(encoding="utf-8")
    kept.unlink()
