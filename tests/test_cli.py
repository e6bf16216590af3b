"""The `p2c` command line, including a real subprocess killed with SIGKILL in the middle of coding."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import API_KEY, small_scenario

from p2c_notebook.cli import EXIT_PAUSED, main
from p2c_notebook.run.store import sha256


def cli_env(server: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "P2C_"))}
    env.update({"OPENAI_API_KEY": API_KEY, "OPENAI_BASE_URL": server.base_url, "P2C_CONFIG": "/nonexistent"})
    return env


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, serve: Any) -> Any:
    server = serve(small_scenario())
    for key, value in cli_env(server).items():
        monkeypatch.setenv(key, value)
    return server


def test_run_status_show_and_approve(
    env: Any, paper_md: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert main(["run", str(paper_md), "--out", str(run)]) == 0
    out = capsys.readouterr()
    assert "The repository is in" in out.out and "calls" in out.out
    assert "saved code/main.py" in out.err
    assert main(["status", str(run)]) == 0
    status = capsys.readouterr().out
    assert "code/models/net.py" in status and "Nothing left to do" in status
    assert main(["show", str(run), "config"]) == 0
    assert capsys.readouterr().out.startswith("lr: 0.1")
    assert main(["show", str(run), "models/net.py"]) == 0
    assert "class Net" in capsys.readouterr().out
    assert main(["approve", str(run), "planning"]) == 0
    assert "approved config" in capsys.readouterr().out


def test_edited_config_shows_stale_and_rerun_regenerates_only_those(
    env: Any, paper_md: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    main(["run", str(paper_md), "--out", str(run)])
    (run / "planning/config.yaml").write_text("lr: 0.01\nepochs: 3\n")
    capsys.readouterr()
    main(["status", str(run)])
    lines = dict(
        line.split()[:2]
        for line in capsys.readouterr().out.splitlines()
        if line.startswith(("code/", "analysis/", "plan", "config", "design", "logic"))
    )
    assert lines["config"] == "edited" and lines["plan"] == "generated"
    assert all(v == "stale" for k, v in lines.items() if k.startswith(("analysis/", "code/")))
    before = len(env.requests)
    assert main(["run", str(run)]) == 0
    assert {r["stage"] for r in env.requests[before:]} == {"analysis", "code"}


def test_approve_each_pauses_with_its_own_exit_code(env: Any, paper_md: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["run", str(paper_md), "--out", str(run), "--approve-each"]) == EXIT_PAUSED
    assert main(["approve", str(run), "plan"]) == 0
    assert main(["run", str(run), "--approve-each", "--until", "design"]) == 0


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["run", "missing.pdf"], 3, "missing.pdf"),
        (["status", "nowhere"], 6, "not a p2c run folder"),
        (["run", "PAPER", "--from", "nonsense"], 2, "Unknown stage"),
    ],
)
def test_errors_are_one_clear_line_with_an_exit_code(
    env: Any, paper_md: Path, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    argv = [str(paper_md) if a == "PAPER" else a for a in argv]
    assert main(argv) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_unreachable_server_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, paper_md: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("P2C_CONFIG", "/nonexistent")
    argv = ["run", str(paper_md), "--out", str(tmp_path / "r"), "--base-url", "http://127.0.0.1:9/v1"]
    assert main([*argv, "--timeout", "5"]) == 4
    err = capsys.readouterr().err
    assert "Cannot reach the model server" in err and API_KEY not in err
    assert err.count("Cannot reach the model server") == 1  # said once, as the command exits
    assert err.splitlines()[-1].startswith("p2c: error: Cannot reach the model server")


def test_missing_key_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, paper_md: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for key in list(os.environ):
        if key.startswith(("OPENAI_", "P2C_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("P2C_CONFIG", "/nonexistent")
    assert main(["run", str(paper_md), "--out", str(tmp_path / "r"), "--backend", "openai"]) == 2
    assert "OPENAI_API_KEY" in capsys.readouterr().err


@pytest.mark.slow
def test_sigkill_during_coding_then_rerun_repeats_no_saved_call(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    scenario = small_scenario(latency=0.4)
    server = serve(scenario)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "p2c_notebook.cli", "run", str(paper_md), "--out", str(run), "--concurrency", "1"]
    proc = subprocess.Popen(cmd, env=cli_env(server), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = run / "manifest.json"
    deadline = time.monotonic() + 60
    saved: list[str] = []
    while time.monotonic() < deadline:
        if manifest.exists():
            saved = list(json.loads(manifest.read_text())["artifacts"])
            if any(a.startswith("code/") for a in saved):
                break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert any(a.startswith("code/") for a in saved), "the run never reached coding"
    assert not all(f"code/{f}" in saved for f in ("data.py", "models/net.py", "main.py")), "killed too late"
    saved = list(json.loads(manifest.read_text())["artifacts"])
    before = Counter((r["stage"], r["file"]) for r in server.requests)
    done = subprocess.run(cmd, env=cli_env(server), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    counts = Counter((r["stage"], r["file"]) for r in server.requests)
    for artifact in saved:
        if artifact == "paper":
            continue
        stage, _, file = artifact.partition("/")
        key = (stage, file) if stage in ("analysis", "code") else (stage, "")
        assert counts[key] == before[key] == 1, f"{artifact} was requested again"
    data = json.loads(manifest.read_text())
    for name, entry in data["artifacts"].items():
        path = run / entry["path"]
        assert sha256(path.read_bytes()) == entry["sha256"], name
        if path.suffix == ".py":
            ast.parse(path.read_text())
    assert not list(run.rglob("*.tmp"))


def test_api_key_never_reaches_output_run_folder_or_logs(
    env: Any, paper_md: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    env.add_fault({"stage": "logic", "kind": "malformed"})
    assert main(["run", str(paper_md), "--out", str(run), "-v"]) == 0
    main(["status", str(run)])
    out = capsys.readouterr()
    assert API_KEY not in out.out + out.err
    for path in run.rglob("*"):
        if path.is_file():
            assert API_KEY.encode() not in path.read_bytes(), path
