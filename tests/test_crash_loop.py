"""Crash safety: `p2c run` subprocesses killed with SIGKILL at seeded random moments, over and over.

After every kill the run folder must be consistent (the manifest parses, every entry's file exists with the
recorded hash and holds a whole reply, nothing lands outside the run folder), every rerun resumes, and no
artifact that was saved before a kill is ever asked of the model again. Set P2C_CRASH_SEED to replay a loop.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import CODE, small_scenario, subprocess_env

from p2c_notebook.run.store import sha256

KILLS = 20
SEED = int(os.environ.get("P2C_CRASH_SEED", "6061"))
ALL = {
    "paper",
    "plan",
    "design",
    "logic",
    "config",
    *(f"analysis/{f}" for f in CODE),
    *(f"code/{f}" for f in CODE),
    "code/config.yaml",
}


def _artifact_of(request: Any) -> str:
    return f"{request['stage']}/{request['file']}" if request["file"] else str(request["stage"])


def _expected_contents() -> dict[str, str]:
    """What each generated artifact's file must hold in full (a prefix would be a half-written file)."""
    return {f"code/{path}": code for path, code in CODE.items()}


def check_consistent(run: Path, outside_root: Path, allowed_outside: set[Path]) -> dict[str, Any]:
    """The invariants that must hold whenever the process dies; returns the manifest's artifacts."""
    stray = [p for p in outside_root.rglob("*") if not any(p == a or a in p.parents for a in allowed_outside)]
    stray += [p for p in outside_root.rglob("*") if p.parent.name == "cwd" and p.parent.parent == outside_root]
    assert not stray, f"files written outside the run folder: {stray}"
    manifest = run / "manifest.json"
    if not manifest.exists():
        return {}
    data = json.loads(manifest.read_text(encoding="utf-8"))  # written atomically: always whole JSON
    expected = _expected_contents()
    for name, entry in data["artifacts"].items():
        assert not entry["path"].endswith(".tmp") and ".tmp" not in Path(entry["path"]).name, entry
        path = run / entry["path"]
        assert path.is_file(), f"{name}: the manifest names {entry['path']}, which does not exist"
        raw = path.read_bytes()
        assert sha256(raw) == entry["sha256"], f"{name}: the file does not match its recorded hash"
        if name in expected:
            assert raw.decode("utf-8") == expected[name], f"{name} holds a partial or foreign reply"
        assert entry["status"] in ("generated", "approved"), f"{name} is {entry['status']} after a crash"
    return dict(data["artifacts"])


@pytest.mark.slow
def test_sigkill_at_random_moments_never_corrupts_the_run_and_never_pays_twice(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    # Streaming with per-token latency, so kills land before, during and between calls and around saves.
    server = serve(small_scenario(latency=0.05, token_latency=0.001))
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    allowed = {paper_md, workdir}  # plus each round's run folder; the working folder must stay empty
    env = subprocess_env(server, P2C_MAX_RETRIES="0")
    kills = rounds = 0
    history: list[str] = []
    while kills < KILLS:
        rounds += 1
        run = tmp_path / f"run{rounds}"
        allowed.add(run)
        cmd = [sys.executable, "-m", "p2c_notebook.cli", "run", str(paper_md), "--out", str(run)]
        while True:
            saved = check_consistent(run, tmp_path, allowed)
            boundary = len(server.requests)
            proc = subprocess.Popen(cmd, env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            delay = rng.uniform(0.2, 2.4) if kills < KILLS else None  # then the last rerun runs to the end
            try:
                proc.wait(timeout=delay if delay is not None else 60)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
            stderr = proc.stderr.read().decode() if proc.stderr else ""
            if proc.stderr:
                proc.stderr.close()
            history.append(f"round {rounds}: {delay or 0:.2f}s rc={proc.returncode} saved={len(saved)}")
            context = f"seed {SEED}; " + "; ".join(history[-5:])
            repeated = [_artifact_of(r) for r in server.requests[boundary:] if _artifact_of(r) in saved]
            assert not repeated, f"saved artifacts were asked again: {repeated} ({context})"
            if proc.returncode != -signal.SIGKILL:
                assert proc.returncode == 0, f"{stderr}\n{context}"
                break
        # The run that was not killed completed: the repository is whole and the folder consistent.
        artifacts = check_consistent(run, tmp_path, allowed)
        assert set(artifacts) == ALL, context
        for path, code in CODE.items():
            assert (run / "repo" / path).read_text(encoding="utf-8") == code
        assert (run / "repo/config.yaml").is_file()
        assert not list(run.rglob("*.tmp")), "temp files of killed writers must be cleaned up"
        tracked = {run / e["path"] for n, e in artifacts.items() if n.startswith("code/")} | {run / "repo/config.yaml"}
        assert {p for p in (run / "repo").rglob("*") if p.is_file()} == tracked
    before = len(server.requests)
    done = subprocess.run(cmd, env=env, cwd=workdir, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert len(server.requests) == before, "rerunning a finished run asked the model again"
    assert kills >= KILLS, history
