"""The reproduce stage: made on request only (`--until reproduce`), over HTTP, and then what `p2c exec` runs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import small_scenario, use_server

from p2c_notebook.cli import main
from p2c_notebook.errors import ConfigError
from p2c_notebook.execute import runner, sandbox
from p2c_notebook.execute.reproduce import parse_script
from p2c_notebook.run.store import RunStore
from p2c_notebook.stages.parsing import ParseError

SCRIPT = '#!/usr/bin/env bash\nset -euo pipefail\ncd "$(dirname "$0")"\necho "smoke=${1:-}"\npython main.py\n'


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, serve: Any) -> Any:
    scenario = small_scenario()
    scenario["responses"].append({"stage": "reproduce", "content": f"Here it is:\n```bash\n{SCRIPT}```\n"})
    server = serve(scenario)
    use_server(monkeypatch, server)
    return server


def test_a_default_run_does_not_make_reproduce_sh_and_until_reproduce_does(
    env: Any, paper_md: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert main(["run", str(paper_md), "--out", str(run)]) == 0
    assert "reproduce" not in {r["stage"] for r in env.requests} and not (run / "repo" / "reproduce.sh").exists()
    capsys.readouterr()
    main(["status", str(run)])
    status = capsys.readouterr().out
    assert "reproduce" not in status and "Nothing left to do" in status
    before = len(env.requests)
    assert main(["run", str(run), "--until", "reproduce"]) == 0
    asked = env.requests[before:]
    assert [r["stage"] for r in asked] == ["reproduce"]  # only the script: everything else was kept
    assert "main.py" in asked[0]["messages"][-1]["content"] and "--smoke" in asked[0]["messages"][-1]["content"]
    assert (run / "repo" / "reproduce.sh").read_text() == SCRIPT
    assert RunStore(run).meta["artifacts"]["reproduce"]["path"] == "repo/reproduce.sh"
    capsys.readouterr()
    main(["status", str(run)])
    assert any(line.split()[:2] == ["reproduce", "generated"] for line in capsys.readouterr().out.splitlines())
    try:
        sandbox.isolation()
    except ConfigError:
        return
    assert runner.plan(run, python=sys.executable).command == ["bash", "reproduce.sh", "--smoke"]


@pytest.mark.slow
def test_exec_runs_the_generated_reproduce_sh_in_smoke_mode(
    env: Any, paper_md: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        sandbox.isolation()
    except ConfigError as exc:
        pytest.skip(str(exc))
    run = tmp_path / "run"
    assert main(["run", str(paper_md), "--out", str(run), "--until", "reproduce"]) == 0
    capsys.readouterr()
    assert main(["exec", str(run), "--python", sys.executable, "--yes"]) == 0
    out = capsys.readouterr().out
    assert "Run: bash reproduce.sh --smoke\n" in out and "smoke=--smoke" in out and "[2.0, 4.0, 6.0]" in out


def test_a_reply_that_is_not_a_bash_script_is_refused() -> None:
    assert parse_script(f"```bash\n{SCRIPT}```") == SCRIPT
    with pytest.raises(ParseError, match="must start with"):
        parse_script("```bash\npython main.py\n```")
