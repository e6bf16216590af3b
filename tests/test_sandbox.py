"""The sandbox contains hostile generated code: each attempt fails, says why, and leaves the outside as it was."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2c_notebook.errors import ConfigError
from p2c_notebook.execute import sandbox
from p2c_notebook.execute.sandbox import ExecOutput, Limits, Outcome, classify
from p2c_notebook.run.events import Event

ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk-test-DO-NOT-LEAK-4f9a8c"
PYTHON = Path(sys.executable)


@pytest.fixture(params=["bwrap", "unshare"])
def kind(request: pytest.FixtureRequest) -> str:
    """Each isolation this machine offers (bubblewrap, and plain unshare, the fallback without it)."""
    wanted: str = request.param
    if wanted == "bwrap" and not sandbox.bwrap_works():
        pytest.skip("bubblewrap is not installed or cannot make namespaces here (scripts/system-deps.sh installs it)")
    if wanted == "unshare" and not sandbox.unshare_works():
        pytest.skip("unshare cannot create namespaces here")
    return wanted


def _python(kind: str) -> Path:
    """This interpreter; under unshare as root, one the user 'nobody' can run (the hostile code needs no packages)."""
    if kind == "bwrap" or os.geteuid() != 0 or sandbox.open_to_others(PYTHON):
        return PYTHON
    for candidate in (Path("/usr/bin/python3"), Path("/usr/local/bin/python3")):
        if candidate.exists() and sandbox.open_to_others(candidate):
            return candidate
    pytest.skip("no interpreter the user 'nobody' may run, for unshare")


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fake home with SSH keys and a key file, an API key in the environment, and a run folder."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text(f"PRIVATE KEY {SECRET}\n")
    (home / ".config" / "p2c").mkdir(parents=True)
    (home / ".config" / "p2c" / "key").write_text(SECRET)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("P2C_API_KEY", SECRET)
    (tmp_path / "run" / "repo").mkdir(parents=True)
    (tmp_path / "run" / "manifest.json").write_text("{}\n")
    yield tmp_path


def _snapshot(root: Path) -> dict[str, str]:
    """Every file outside the run's exec/ folder (where the parent writes the log), with its content hash."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "exec" not in p.relative_to(root).parts
    }


SHORT = Limits(wall_s=20)


def _attempt(world: Path, kind: str, code: str, limits: Limits = SHORT) -> tuple[Outcome, str, str]:
    (world / "run" / "repo" / "hostile.py").write_text(textwrap.dedent(code))
    before = _snapshot(world)
    streamed: list[str] = []

    def sink(event: Event) -> None:
        if isinstance(event, ExecOutput):
            streamed.append(event.text)

    outcome = sandbox.run(world / "run", ["python", "hostile.py"], _python(kind), limits=limits, kind=kind, sink=sink)
    assert _snapshot(world) == before, "the sandboxed code changed something outside its scratch copy"
    log = (world / "run" / outcome.log).read_text()
    saved = json.loads((world / "run" / "exec" / f"attempt-{outcome.attempt}.json").read_text())
    assert saved["reason"] == outcome.reason and saved["passed"] is outcome.passed
    return outcome, log, "".join(streamed)


@pytest.mark.slow
def test_the_reference_implementation_passes_its_smoke_run_in_the_sandbox(tmp_path: Path, kind: str) -> None:
    shutil.copytree(ROOT / "examples" / "mixup" / "reference", tmp_path / "run" / "repo")
    if kind == "unshare" and os.geteuid() == 0 and not sandbox.open_to_others(PYTHON):
        with pytest.raises(ConfigError, match="closed to other users.*apt-get install bubblewrap"):
            sandbox.run(tmp_path / "run", ["python", "main.py", "--smoke"], PYTHON, kind=kind)
        return
    lines: list[str] = []
    outcome = sandbox.run(
        tmp_path / "run", ["python", "main.py", "--smoke"], PYTHON, kind=kind, sink=lambda e: lines.append(str(e))
    )
    assert outcome.passed, (outcome.reason, (tmp_path / "run" / outcome.log).read_text()[-2000:])
    assert "ECE" in (tmp_path / "run" / outcome.log).read_text() and lines
    assert outcome.exit_code == 0 and outcome.peak_memory_mb > 1 and outcome.log == "exec/attempt-1.log"
    again = sandbox.run(tmp_path / "run", ["python", "main.py", "--smoke"], PYTHON, kind=kind)
    assert again.attempt == 2 and (tmp_path / "run" / "exec" / "attempt-2.log").is_file()


@pytest.mark.slow
def test_a_socket_to_a_local_listener_cannot_be_opened(world: Path, kind: str) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    accepted: list[object] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            accepted.append(listener.accept())

    outcome, log, streamed = _attempt(
        world,
        kind,
        f"""
        import socket
        socket.create_connection(("127.0.0.1", {port}), timeout=3).sendall(b"stolen")
        """,
    )
    watcher = threading.Thread(target=accept)
    watcher.start()
    watcher.join()
    listener.close()
    assert not outcome.passed and not accepted
    assert "network" in outcome.reason
    assert any(sign in log and sign in streamed for sign in ("Network is unreachable", "Connection refused"))


@pytest.mark.slow
def test_home_secrets_and_api_keys_are_out_of_reach(world: Path, kind: str) -> None:
    if kind != "bwrap" and os.geteuid() != 0:
        pytest.skip("unshare leaves your own files readable (only bubblewrap hides them)")
    outcome, log, _ = _attempt(
        world,
        kind,
        f"""
        import os
        print("ENV", sorted(os.environ))
        print("KEY" if any("{SECRET}" in v for v in os.environ.values()) else "no key in the environment")
        for path in ("{world}/home/.ssh/id_ed25519", "{world}/home/.config/p2c/key",
                     os.path.expanduser("~/.ssh/id_ed25519"), "{world}/run/manifest.json"):
            try:
                print("READ", open(path).read())
            except OSError as exc:
                print("denied", type(exc).__name__)
        raise SystemExit(3)
        """,
    )
    assert SECRET not in log and "READ" not in log and log.count("denied") == 4
    assert "no key in the environment" in log and "OPENAI" not in log and "P2C" not in log
    assert outcome.reason == "exit status 3" and not outcome.passed


@pytest.mark.slow
def test_environment_holds_no_api_key_whatever_the_isolation(world: Path, kind: str) -> None:
    outcome, log, _ = _attempt(world, kind, "import os, sys; print(sorted(os.environ)); sys.exit(1)")
    assert SECRET not in log and "OPENAI_API_KEY" not in log and "P2C_API_KEY" not in log and not outcome.passed


@pytest.mark.slow
def test_writes_outside_the_scratch_copy_fail(world: Path, kind: str) -> None:
    outcome, log, _ = _attempt(
        world,
        kind,
        f"""
        import os
        open("inside.txt", "w").write("fine")  # its own copy: allowed, and thrown away
        failures = 0
        for path in ("{world}/run/repo/hostile.py", "{world}/run/pwned.txt", "{world}/home/.bashrc",
                     "{world}/outside.txt"):
            try:
                open(path, "a").write("pwned")
                print("WROTE", path)
            except OSError as exc:
                failures += 1
                print("refused", type(exc).__name__)
        raise SystemExit(0 if failures == 0 else 2)
        """,
    )
    assert "WROTE" not in log and log.count("refused") == 4
    assert outcome.reason == "exit status 2" and not outcome.passed


@pytest.mark.slow
def test_a_fork_bomb_hits_the_process_limit(world: Path, kind: str) -> None:
    outcome, log, _ = _attempt(
        world,
        kind,
        """
        import os, time
        children = 0
        while True:
            if os.fork() == 0:
                time.sleep(30)
                os._exit(0)
            children += 1
        """,
        Limits(wall_s=20, processes=40),
    )
    assert not outcome.passed and "process limit (40)" in outcome.reason, outcome.reason
    assert outcome.seconds < 15


@pytest.mark.slow
def test_allocating_far_beyond_the_memory_limit_fails(world: Path, kind: str) -> None:
    outcome, log, _ = _attempt(
        world, kind, "blob = bytearray(8 * 1024**3)\nprint('allocated')\n", Limits(wall_s=20, memory_mb=512)
    )
    assert "allocated" not in log and not outcome.passed
    assert "memory limit (512 MiB)" in outcome.reason and outcome.peak_memory_mb < 512


@pytest.mark.slow
def test_running_forever_is_stopped_at_the_wall_time_limit(world: Path, kind: str) -> None:
    outcome, _, _ = _attempt(world, kind, "import time\nwhile True:\n    time.sleep(1)\n", Limits(wall_s=2))
    assert not outcome.passed and outcome.reason == "wall time limit (2 s): stopped"
    assert 2 <= outcome.seconds < 10 and outcome.exit_code is not None


@pytest.mark.slow
def test_spinning_is_stopped_at_the_cpu_time_limit(world: Path, kind: str) -> None:
    outcome, _, _ = _attempt(world, kind, "while True:\n    pass\n", Limits(wall_s=20, cpu_s=1))
    assert not outcome.passed and outcome.reason == "CPU time limit (1 s)"


def test_reasons_name_the_limit_that_was_hit() -> None:
    limits = Limits(memory_mb=256, processes=10, cpu_s=5, file_mb=1, wall_s=7)
    assert classify(0, False, 0.1, "", limits) == "passed"
    assert classify(-9, True, 0.1, "", limits) == "wall time limit (7 s): stopped"
    assert classify(-24, False, 5.0, "", limits) == "CPU time limit (5 s)"
    assert classify(128 + 25, False, 0.0, "", limits) == "file size limit (1 MiB)"
    assert classify(1, False, 0.1, "Traceback\nMemoryError\n", limits).endswith(
        "memory limit (256 MiB) reached (MemoryError)"
    )
    forks = classify(1, False, 0.1, "BlockingIOError: Resource temporarily unavailable", limits)
    assert "process limit (10)" in forks
    assert classify(2, False, 0.1, "ValueError: bad shape", limits) == "exit status 2"


def test_no_sandbox_is_refused_with_how_to_get_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ConfigError, match="apt-get install bubblewrap.*--no-sandbox"):
        sandbox.isolation()
    assert sandbox.isolation(no_sandbox=True) == "none"
