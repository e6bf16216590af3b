"""One writer per run folder: a second process or notebook gets "in use"; a killed writer's lock is recovered.

Also: a writer killed between replacing an artifact's file and recording it in the manifest.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import CODE, settings_for, small_scenario, subprocess_env

import p2c_notebook.run.store as store_module
from p2c_notebook.errors import RunError
from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.run.store import RunStore, sha256


def wait_for(condition: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.slow
def test_second_process_is_refused_then_recovers_the_killed_writers_lock(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    server = serve(small_scenario(fault_sleep=60))
    server.add_fault({"stage": "design", "kind": "timeout"})  # writer A hangs in its design call
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "p2c_notebook.cli", "run", str(paper_md), "--out", str(run)]
    writer = subprocess.Popen(cmd, env=subprocess_env(server), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: any(r["stage"] == "design" for r in server.requests))
        second = subprocess.run(cmd, env=subprocess_env(server), capture_output=True, text=True, timeout=60)
        assert second.returncode == RunError.exit_code == 6, second.stderr
        assert f"is in use by process {writer.pid} on {socket.gethostname()}" in second.stderr
        assert "wait for the other run to finish or stop it" in second.stderr
        assert "Traceback" not in second.stderr
        status = subprocess.run(
            [sys.executable, "-m", "p2c_notebook.cli", "status", str(run)],
            env=subprocess_env(server),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0 and "plan" in status.stdout, "reading a run in use stays possible"
        assert (run / ".lock").read_text().startswith(f"pid {writer.pid} "), "the refused process took nothing over"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert f"pid {writer.pid}" in (run / ".lock").read_text(), "the killed writer's line is still there"
    design_calls = sum(r["stage"] == "design" for r in server.requests)
    resumed = subprocess.run(cmd, env=subprocess_env(server), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"Recovered the run folder: the run that held it (pid {writer.pid} on" in resumed.stderr
    assert sum(r["stage"] == "plan" for r in server.requests) == 1, "the saved plan was not asked again"
    assert sum(r["stage"] == "design" for r in server.requests) == design_calls + 1
    assert (run / ".lock").read_text() == "", "a clean exit leaves nothing to recover"
    again = subprocess.run(cmd, env=subprocess_env(server), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "Recovered" not in again.stderr


def test_second_pipeline_in_the_same_process_is_refused_clearly(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    server = serve(small_scenario())
    with Pipeline.start(paper_md, tmp_path / "run", settings=settings_for(server)) as first:
        with first.store.locked():
            second = Pipeline.open(tmp_path / "run", settings=settings_for(server))
            with pytest.raises(RunError, match="in use by another pipeline in this same process"):
                second.run()
            with pytest.raises(RunError, match="in use"):
                second.approve("plan")
        assert second.run().state == "done", "usable as soon as the first lets go"


class Killed(BaseException):
    """Stands in for SIGKILL at one precise instruction (a real kill cannot be aimed that well)."""


def die_after_writing(monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    """The process 'dies' right after atomically replacing the file whose path ends with `suffix`."""
    real = store_module.atomic_write

    def write(path: Path, data: str | bytes, durable: bool = True) -> None:
        real(path, data, durable)
        if str(path).endswith(suffix):
            raise Killed

    monkeypatch.setattr(store_module, "atomic_write", write)


def test_writer_killed_between_file_and_manifest_is_adopted_not_mistaken_for_an_edit(
    serve: Any, paper_md: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve(small_scenario())
    run = tmp_path / "run"
    with Pipeline.start(paper_md, run, settings=settings_for(server)) as pipeline:
        pipeline.run()
    server.add_response({"stage": "code", "file": "main.py", "content": "```python\nprint('second version')\n```"})
    with monkeypatch.context() as patch:
        die_after_writing(patch, "repo/main.py")
        with Pipeline.open(run, settings=settings_for(server)) as pipeline, pytest.raises(Killed):
            pipeline.regenerate("code/main.py")
    assert (run / "repo/main.py").read_text() == "print('second version')\n"
    recorded = json.loads((run / "manifest.json").read_text())["artifacts"]["code/main.py"]
    assert recorded["sha256"] == sha256(CODE["main.py"]), "the manifest still has the old version"
    calls = len(server.requests)
    with Pipeline.open(run, settings=settings_for(server)) as pipeline:
        notes: list[str] = []
        pipeline.bus.subscribe(lambda event: notes.append(getattr(event, "message", "")))
        assert pipeline.run().state == "done"
        entry = pipeline.store.entry("code/main.py")
    assert entry is not None and entry.status == "generated", "a generated file is not a user edit"
    assert entry.sha256 == sha256("print('second version')\n")
    assert len(server.requests) == calls, "the file written before the crash was not paid for again"
    assert any("kept code/main.py, fully written just before that run stopped" in n for n in notes)
    assert "pending" not in json.loads((run / "manifest.json").read_text())


def test_new_artifact_written_before_the_kill_is_not_asked_again(
    serve: Any, paper_md: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve(small_scenario())
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        die_after_writing(patch, "planning/plan.md")
        with Pipeline.start(paper_md, run, settings=settings_for(server)) as pipeline, pytest.raises(Killed):
            pipeline.run()
    assert "plan" not in json.loads((run / "manifest.json").read_text())["artifacts"]
    with Pipeline.open(run, settings=settings_for(server)) as pipeline:
        assert pipeline.run().state == "done"
    assert [r["stage"] for r in server.requests].count("plan") == 1
    assert RunStore(run).entry("plan") is not None


def test_a_half_written_file_from_before_the_kill_is_not_adopted(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    server = serve(small_scenario())
    run = tmp_path / "run"
    with Pipeline.start(paper_md, run, settings=settings_for(server)) as pipeline:
        pipeline.run(until="plan")
    manifest = json.loads((run / "manifest.json").read_text())
    intent = {**manifest["artifacts"]["plan"], "path": "planning/design.json", "sha256": sha256("{}")}
    manifest["pending"] = {"design": intent}  # the killed writer meant to write design.json ...
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "planning/design.json").write_text('{"file_li')  # ... and never finished
    with Pipeline.open(run, settings=settings_for(server)) as pipeline:
        assert pipeline.run().state == "done"
    assert [r["stage"] for r in server.requests].count("design") == 1
    assert json.loads((run / "planning/design.json").read_text())["file_list"]
