"""`p2c exec`: it says what it will run, runs nothing without a yes, and records whether the repository ran."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import magics_shell, small_scenario, use_server

from p2c_notebook.cli import main
from p2c_notebook.errors import ConfigError, RunError
from p2c_notebook.execute import runner, sandbox
from p2c_notebook.run.store import RunStore

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run folder whose repo/ is the hand-written reference implementation."""
    root = tmp_path / "run"
    shutil.copytree(ROOT / "examples" / "mixup" / "reference", root / "repo")
    RunStore(root).set_meta(title="mixup")
    return root


def _sandboxed() -> None:
    try:
        sandbox.isolation()
    except ConfigError as exc:
        pytest.skip(str(exc))


def test_without_a_yes_nothing_runs_and_the_plan_is_shown(
    run_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _sandboxed()
    monkeypatch.setattr(sys, "stdin", open("/dev/null"))  # noqa: SIM115 - not a terminal: no one to ask
    assert main(["exec", str(run_dir), "--python", sys.executable]) == ConfigError.exit_code
    out, err = capsys.readouterr()
    assert "Run: python main.py --smoke (from the entry point" in out and "Sandbox:" in out and "Limits:" in out
    assert "pass --yes" in err and not (run_dir / "exec").exists() and "exec" not in RunStore(run_dir).meta


def test_a_declined_prompt_runs_nothing(
    run_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _sandboxed()
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    assert main(["exec", str(run_dir), "--python", sys.executable]) == 0
    assert "Not run." in capsys.readouterr().out and not (run_dir / "exec").exists()


def test_the_plan_prefers_reproduce_sh_and_lists_the_requirements(run_dir: Path) -> None:
    _sandboxed()
    (run_dir / "repo" / "reproduce.sh").write_text('python main.py "$@"\n')
    (run_dir / "repo" / "requirements.txt").write_text("numpy==1.26.4  # arrays\npyyaml\n")
    full = runner.plan(run_dir, "full")
    assert full.command == ["bash", "reproduce.sh"] and full.install == ["numpy==1.26.4", "pyyaml"]
    assert any("numpy==1.26.4, pyyaml" in line and "venv" in line for line in full.describe())
    assert runner.plan(run_dir).command == ["bash", "reproduce.sh", "--smoke"]
    (run_dir / "repo" / "requirements.txt").write_text("--index-url https://evil.example/simple\nnumpy\n")
    with pytest.raises(ConfigError, match="more than packages by name"):
        runner.plan(run_dir)


def test_a_folder_without_generated_code_is_refused(tmp_path: Path) -> None:
    RunStore(tmp_path).set_meta(title="empty")
    with pytest.raises(RunError, match="no generated repository"):
        runner.plan(tmp_path, python=sys.executable)


@pytest.mark.slow
def test_exec_runs_the_smoke_run_and_status_says_the_repository_ran(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _sandboxed()
    assert main(["exec", str(run_dir), "--python", sys.executable, "--yes"]) == 0
    out = capsys.readouterr().out
    assert "ECE" in out and "Attempt 1 ran: passed" in out  # the output streamed, then the verdict
    recorded = RunStore(run_dir).meta["exec"]
    assert recorded["passed"] and recorded["mode"] == "smoke" and recorded["log"] == "exec/attempt-1.log"
    assert json.loads((run_dir / "exec" / "attempt-1.json").read_text())["exit_code"] == 0
    main(["status", str(run_dir)])
    assert "Repository ran (smoke run, attempt 1): passed" in capsys.readouterr().out


@pytest.mark.slow
def test_a_broken_repository_fails_with_its_error_and_status_says_so(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _sandboxed()
    model = run_dir / "repo" / "model.py"
    model.write_text(model.read_text() + "\nraise ValueError('shapes (64,2) and (3,64) not aligned')\n")
    assert main(["exec", str(run_dir), "--python", sys.executable, "--yes"]) == 1
    out = capsys.readouterr().out
    assert "not aligned" in out and "Attempt 1 failed: exit status 1" in out
    main(["status", str(run_dir)])
    assert "Repository did not run (smoke run, attempt 1): exit status 1" in capsys.readouterr().out


@pytest.mark.slow
def test_the_magic_shows_the_plan_and_runs_only_with_yes(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _sandboxed()
    monkeypatch.setenv("P2C_CONFIG", str(tmp_path / "no-config.yaml"))
    with magics_shell() as shell:
        shell.run_line_magic("p2c", f"load {run_dir}")
        capsys.readouterr()
        shell.run_line_magic("p2c", f"exec --python {sys.executable}")
        shown = capsys.readouterr()
        assert "Run: python main.py --smoke" in shown.out and "Add --yes" in shown.out
        assert not (run_dir / "exec").exists()
        shell.run_line_magic("p2c", f"exec --python {sys.executable} --yes")
    ran = capsys.readouterr()
    assert "p2c: error" not in ran.err, ran.err
    assert "ECE" in ran.out and "Attempt 1 ran: passed" in ran.out and RunStore(run_dir).meta["exec"]["passed"]


@pytest.mark.slow
def test_without_python_the_run_gets_its_own_venv_and_what_it_holds_is_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _sandboxed()
    root = tmp_path / "run"
    (root / "repo").mkdir(parents=True)
    (root / "repo" / "main.py").write_text("import sys\nprint('prefix', sys.prefix, sys.argv[1:])\n")
    RunStore(root).set_meta(title="venv")
    assert main(["exec", str(root), "--yes"]) == 0
    out = capsys.readouterr().out
    assert "Install into" in out and "requirements.txt lists no package" in out
    assert f"prefix {root / 'exec' / 'venv'} ['--smoke']" in out  # the venv's interpreter, inside the sandbox
    assert (root / "exec" / "installed.txt").is_file() and (root / "exec" / "install.log").is_file()
    assert RunStore(root).meta["exec"]["python"] == str(root / "exec" / "venv" / "bin" / "python")


def test_without_main_py_the_entry_point_the_checks_find_runs(run_dir: Path) -> None:
    _sandboxed()
    (run_dir / "repo" / "main.py").rename(run_dir / "repo" / "train.py")
    assert runner.plan(run_dir, python=sys.executable).command == ["python", "train.py", "--smoke"]
    (run_dir / "repo" / "train.py").rename(run_dir / "repo" / "helpers.py")
    with pytest.raises(RunError, match="no entry point"):
        runner.plan(run_dir, python=sys.executable)


# --- a repository without reproduce.sh: exec offers to make it (one model call) ------------------------------
SCRIPT = '#!/usr/bin/env bash\nset -euo pipefail\necho "smoke=${1:-}"\npython main.py\n'


@pytest.fixture
def finished(monkeypatch: pytest.MonkeyPatch, serve: Any, paper_md: Path, tmp_path: Path) -> tuple[Any, Path]:
    """A complete run (no reproduce.sh); the model would answer the reproduce stage with SCRIPT."""
    _sandboxed()
    scenario = small_scenario()
    scenario["responses"].append({"stage": "reproduce", "content": f"```bash\n{SCRIPT}```"})
    server = serve(scenario)
    use_server(monkeypatch, server)
    run = tmp_path / "run"
    assert main(["run", str(paper_md), "--out", str(run)]) == 0
    return server, run


def reproduce_requests(server: Any) -> list[Any]:
    return [r for r in server.requests if r["stage"] == "reproduce"]


def test_exec_says_reproduce_sh_is_missing_and_makes_it_only_on_a_yes(
    finished: tuple[Any, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, run = finished
    capsys.readouterr()
    answers = iter(["n", "n"])  # generate reproduce.sh: no; run the entry point: no
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: next(answers))
    assert main(["exec", str(run), "--python", sys.executable]) == 0
    out = capsys.readouterr().out
    assert "no reproduce.sh" in out and "one model call" in out and "the entry point runs instead" in out
    assert "Run: python main.py --smoke" in out and "Not run." in out
    assert reproduce_requests(server) == [] and not (run / "repo" / "reproduce.sh").exists()
    monkeypatch.setattr(sys, "stdin", open("/dev/null"))  # noqa: SIM115 - no terminal: refused, nothing made
    assert main(["exec", str(run), "--python", sys.executable]) == ConfigError.exit_code
    assert reproduce_requests(server) == [] and not (run / "exec").exists()


@pytest.mark.slow
def test_exec_with_yes_makes_reproduce_sh_with_one_call_and_runs_it(
    finished: tuple[Any, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    server, run = finished
    before = len(server.requests)
    assert main(["exec", str(run), "--python", sys.executable, "--yes"]) == 0
    out = capsys.readouterr().out
    assert [r["stage"] for r in server.requests[before:]] == ["reproduce"]  # one call, nothing else redone
    assert (run / "repo" / "reproduce.sh").read_text() == SCRIPT and "Generated " in out
    assert "Run: bash reproduce.sh --smoke\n" in out and "smoke=--smoke" in out and "[2.0, 4.0, 6.0]" in out
    assert main(["exec", str(run), "--python", sys.executable, "--yes"]) == 0  # made once: not offered again
    assert len(reproduce_requests(server)) == 1 and "no reproduce.sh" not in capsys.readouterr().out


def test_exec_offers_nothing_while_other_artifacts_are_stale(
    finished: tuple[Any, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, run = finished
    plan = run / "planning" / "plan.md"
    plan.write_text(plan.read_text() + "\nMore.\n")  # an edit of the plan: everything after it is stale
    monkeypatch.setattr(sys, "stdin", open("/dev/null"))  # noqa: SIM115
    assert main(["exec", str(run), "--python", sys.executable]) == ConfigError.exit_code
    out = capsys.readouterr().out
    assert "one model call" not in out and "Run: python main.py --smoke (from the entry point" in out


def test_the_exec_magic_offers_reproduce_sh_and_makes_it_only_with_yes(
    finished: tuple[Any, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    server, run = finished
    with magics_shell() as shell:
        shell.run_line_magic("p2c", f"load {run}")
        capsys.readouterr()
        shell.run_line_magic("p2c", f"exec --python {sys.executable}")
        shown = capsys.readouterr()
    assert "no reproduce.sh" in shown.out and "(and to generate reproduce.sh first)" in shown.out, shown.err
    assert reproduce_requests(server) == [] and not (run / "exec").exists()
