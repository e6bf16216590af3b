"""`p2c fix`: a failing smoke run goes to the model (over HTTP), whose search/replace edits are validated, shown,
and applied only when approved; bounded rounds; the user's own edits are protected."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import benchmark, magics_of, magics_shell, small_scenario, use_server

from p2c_notebook.cli import main
from p2c_notebook.errors import ConfigError, PlanError, ReplyError, UnsafePathError
from p2c_notebook.execute import sandbox
from p2c_notebook.execute.repair import (
    Edit,
    apply_edits,
    named_files,
    parse_edits,
    trim_traceback,
    whole_file_edits,
)
from p2c_notebook.run.store import RunStore

BUG = "print(Net().forward(load())[5])\n"
BROKEN_MAIN = "from data import load\nfrom models.net import Net\n\n" + BUG


def block(path: str, search: str, replace: str) -> str:
    return f"{path}\n<<<<<<< SEARCH\n{search}=======\n{replace}>>>>>>> REPLACE\n"


FIX = block("main.py", BUG, "print(Net().forward(load()))\n")


def scenario(*fixes: str) -> dict[str, Any]:
    plan = small_scenario()
    for response in plan["responses"]:
        if response["stage"] == "code" and response.get("file") == "main.py":
            response["content"] = f"```python\n{BROKEN_MAIN}```"
    plan["responses"] += [{"stage": "fix", "content": text} for text in fixes]
    return plan


@pytest.fixture
def generated(monkeypatch: pytest.MonkeyPatch, serve: Any, paper_md: Path, tmp_path: Path) -> Any:
    """A run whose generated main.py fails at run time (an IndexError no static check sees)."""
    try:
        sandbox.isolation()
    except ConfigError as exc:
        pytest.skip(str(exc))

    def make(*fixes: str) -> tuple[Any, Path]:
        server = serve(scenario(*fixes))
        use_server(monkeypatch, server)
        run = tmp_path / "run"
        assert main(["run", str(paper_md), "--out", str(run)]) == 0
        return server, run

    return make


def fix_requests(server: Any) -> list[Any]:
    return [r for r in server.requests if r["stage"] == "fix"]


@pytest.mark.slow
def test_a_whole_corrected_file_instead_of_blocks_is_applied_as_a_diff(
    generated: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Small models often answer with the whole file: taken when it names a shown file (or only one was shown)."""
    fixed = BROKEN_MAIN.replace(BUG, "print(Net().forward(load()))\n")
    server, run = generated(f"Here is the corrected file.\n\n**main.py**\n```python\n{fixed}```\n")
    capsys.readouterr()
    assert main(["fix", str(run), "--python", sys.executable, "--yes"]) == 0
    out = capsys.readouterr().out
    assert "-print(Net().forward(load())[5])" in out and "+print(Net().forward(load()))" in out
    assert "passes after 1 round(s)" in out and len(fix_requests(server)) == 1
    assert (run / "repo" / "main.py").read_text() == fixed


def test_whole_file_replies_name_a_shown_file_and_must_parse() -> None:
    current = {"main.py": "x = 1\n", "data.py": "y = 2\n"}
    reply = "data.py:\n```python\ny = 3\n```\n`main.py`\n```python\nx = 4\n```\n"
    assert whole_file_edits(reply, current, ["main.py", "data.py"]) == [
        Edit("data.py", "y = 2\n", "y = 3\n"),
        Edit("main.py", "x = 1\n", "x = 4\n"),
    ]
    assert whole_file_edits("```python\nx = 5\n```", current, ["main.py"]) == [Edit("main.py", "x = 1\n", "x = 5\n")]
    assert whole_file_edits("```python\nx = 5\n```", current, ["main.py", "data.py"]) == []  # which file?
    assert whole_file_edits("other.py\n```python\nz = 1\n```", current, ["main.py", "data.py"]) == []
    assert whole_file_edits("no code at all", current, ["main.py"]) == []


@pytest.mark.slow
def test_a_failing_smoke_run_is_repaired_in_one_round_with_an_approved_diff(
    generated: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    server, run = generated(FIX)
    capsys.readouterr()
    assert main(["fix", str(run), "--python", sys.executable, "--yes"]) == 0
    out = capsys.readouterr().out
    assert "IndexError" in out and "-print(Net().forward(load())[5])" in out and "+print(Net().forward(load()))" in out
    assert "[2.0, 4.0, 6.0]" in out and "passes after 1 round(s)" in out
    asked = fix_requests(server)
    assert len(asked) == 1
    prompt = asked[0]["messages"][-1]["content"]
    assert "IndexError" in prompt and BUG.strip() in prompt and "Analysis of main.py" in prompt
    assert 'File "main.py"' in prompt and "/sandbox/" not in prompt  # trimmed to the repository's frames
    assert (run / "repo" / "main.py").read_text().endswith("print(Net().forward(load()))\n")
    store = RunStore(run)
    assert store.meta["fixes"][0]["round"] == 1 and store.meta["fixes"][0]["files"] == ["main.py"]
    assert store.meta["exec"]["passed"] and store.entry("code/main.py") is not None
    assert json.loads((run / "exec" / "attempt-1.json").read_text())["passed"] is False


@pytest.mark.slow
def test_a_rejected_diff_leaves_the_code_untouched(
    generated: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, run = generated(FIX)
    answers = iter(["y", "n"])  # run it: yes; apply the fix: no
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: next(answers))
    assert main(["fix", str(run), "--python", sys.executable]) == 1
    assert "Fix rejected: the code is unchanged." in capsys.readouterr().out
    assert (run / "repo" / "main.py").read_text() == BROKEN_MAIN and "fixes" not in RunStore(run).meta


@pytest.mark.slow
@pytest.mark.parametrize(
    "reply",
    [block("../outside.py", "x\n", "y\n"), block("main.py", "no such line\n", "y\n"), "Just rename the index."],
    ids=["escapes-the-repository", "does-not-apply", "no-block"],
)
def test_a_diff_that_does_not_apply_or_escapes_the_repository_is_refused(
    generated: Any, capsys: pytest.CaptureFixture[str], reply: str
) -> None:
    server, run = generated(reply)
    assert main(["fix", str(run), "--python", sys.executable, "--yes"]) == ReplyError.exit_code
    assert len(fix_requests(server)) == 2  # asked once more with the problem, then refused
    assert (run / "repo" / "main.py").read_text() == BROKEN_MAIN and not (run / "outside.py").exists()
    assert "fixes" not in RunStore(run).meta


@pytest.mark.slow
def test_the_round_limit_stops_a_repair_that_does_not_help(generated: Any, capsys: pytest.CaptureFixture[str]) -> None:
    server, run = generated(block("main.py", BUG, BUG + "# tried\n"))
    assert main(["fix", str(run), "--python", sys.executable, "--yes", "--rounds", "2"]) == 1
    assert "Still failing after 2 round(s)" in capsys.readouterr().out
    assert len(fix_requests(server)) == 2 and [f["round"] for f in RunStore(run).meta["fixes"]] == [1, 2]
    assert (run / "repo" / "main.py").read_text().count("# tried") == 2


@pytest.mark.slow
def test_a_file_the_user_edited_is_not_overwritten_without_its_own_yes(
    generated: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    server, run = generated(FIX.replace(BUG, "# mine\n" + BUG))
    mine = BROKEN_MAIN.replace(BUG, "# mine\n" + BUG)
    (run / "repo" / "main.py").write_text(mine)
    assert main(["fix", str(run), "--python", sys.executable, "--yes"]) == 1
    out = capsys.readouterr().out
    assert "changes file(s) you edited: main.py" in out and "Fix rejected" in out
    assert (run / "repo" / "main.py").read_text() == mine
    assert main(["fix", str(run), "--python", sys.executable, "--yes", "--overwrite-edited"]) == 0
    assert (run / "repo" / "main.py").read_text().endswith("print(Net().forward(load()))\n")


def test_the_traceback_keeps_the_repository_frames_and_names_the_files() -> None:
    log = (
        "epoch 1\nTraceback (most recent call last):\n"
        '  File "/sandbox/repo/main.py", line 4, in <module>\n    train()\n'
        '  File "/usr/lib/python3/site-packages/numpy/core.py", line 9, in dot\n    return x\n'
        '  File "/usr/lib/python3/site-packages/numpy/core.py", line 12, in inner\n    raise\n'
        '  File "/sandbox/repo/models/net.py", line 7, in forward\n    return w @ x\n'
        "ValueError: shapes (2,) and (3,) not aligned\n"
    )
    trimmed = trim_traceback(log, {"main.py", "models/net.py"})
    assert "numpy" not in trimmed and trimmed.count("  ...") == 1 and "/sandbox" not in trimmed
    assert trimmed.endswith("ValueError: shapes (2,) and (3,) not aligned")
    assert named_files(trimmed, {"main.py", "models/net.py"}) == ["models/net.py", "main.py"]


def test_edits_apply_exactly_once_inside_the_repository() -> None:
    current = {"main.py": "a = 1\nb = 2\na = 1\n", "data.py": "x = 1\n"}
    edits = parse_edits("`data.py`\n<<<<<<< SEARCH\nx = 1\n=======\nx = 2\n>>>>>>> REPLACE\n")
    assert edits == [Edit("data.py", "x = 1\n", "x = 2\n")]
    assert apply_edits(current, edits) == {"data.py": ("x = 1\n", "x = 2\n")}
    with pytest.raises(PlanError, match="2 times"):
        apply_edits(current, [Edit("main.py", "a = 1\n", "a = 3\n")])
    with pytest.raises(UnsafePathError):
        apply_edits(current, [Edit("/etc/passwd", "root", "x")])
    with pytest.raises(PlanError, match="not a generated file"):
        apply_edits(current, [Edit("new.py", "", "x")])


# --- %p2c fix ------------------------------------------------------------------------------------------------
@pytest.fixture
def shell(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    monkeypatch.setenv("P2C_CONFIG", str(tmp_path / "no-config.yaml"))
    with magics_shell() as ip:
        yield ip


@pytest.mark.slow
def test_the_fix_magic_without_yes_runs_nothing_and_with_yes_repairs_like_the_cli(
    generated: Any, shell: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    server, run = generated(FIX)
    shell.run_line_magic("p2c", f"load {run}")
    capsys.readouterr()
    shell.run_line_magic("p2c", f"fix --python {sys.executable}")
    shown = capsys.readouterr()
    assert "Run: python main.py --smoke" in shown.out and "Nothing was run. Add --yes" in shown.out, shown.err
    assert not (run / "exec").exists() and fix_requests(server) == []
    shell.run_line_magic("p2c", f"fix --python {sys.executable} --yes")
    ran = capsys.readouterr()
    assert "p2c: error" not in ran.err, ran.err
    assert "-print(Net().forward(load())[5])" in ran.out and "+print(Net().forward(load()))" in ran.out
    assert "passes after 1 round(s)" in ran.out and len(fix_requests(server)) == 1
    assert (run / "repo" / "main.py").read_text().endswith("print(Net().forward(load()))\n")
    assert RunStore(run).meta["fixes"][0]["round"] == 1


@pytest.mark.slow
def test_the_fix_magic_in_a_notebook_applies_a_fix_only_on_the_users_click(
    generated: Any, shell: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    server, run = generated(FIX, FIX)
    magics_of(shell).widgets = True  # as in a Jupyter kernel with ipywidgets
    shell.run_line_magic("p2c", f"load {run}")
    shell.run_line_magic("p2c", f"fix --python {sys.executable} --rounds 2")
    assert "p2c: error" not in capsys.readouterr().err
    wt = magics_of(shell).walkthrough
    assert wt is not None
    panel = wt.run_panel
    assert panel.rounds.value == 2 and panel.repair_button.layout.display is None and not panel.repair_button.disabled
    assert "Run: python main.py --smoke" in panel.plan.value and "Nothing runs until you click" in panel.message.value
    assert not (run / "exec").exists() and fix_requests(server) == []
    panel.repair_button.click()
    wt.wait(timeout=120)
    assert len(fix_requests(server)) == 1 and "p2c-diff-add" in panel.fix_view.value
    assert (run / "repo" / "main.py").read_text() == BROKEN_MAIN  # proposed, shown, not applied
    panel.reject_button.click()
    assert (run / "repo" / "main.py").read_text() == BROKEN_MAIN and "fixes" not in RunStore(run).meta
    panel.repair_button.click()  # the next proposal; this one the user applies
    wt.wait(timeout=120)
    panel.apply_button.click()
    wt.wait(timeout=120)
    assert wt.last_error is None, wt.last_error
    assert (run / "repo" / "main.py").read_text().endswith("print(Net().forward(load()))\n")
    assert RunStore(run).meta["exec"]["passed"] and len(fix_requests(server)) == 2


# --- the repair benchmark's harness (benchmarks/bench_repair.py), with a scripted model ------------------------
@pytest.mark.slow
def test_the_repair_benchmark_measures_rounds_lines_and_time_on_a_copy(
    generated: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = benchmark("bench_repair")
    server, run = generated()
    fixes = tmp_path / "fixes.json"  # the model that proposes fixes: a scripted server of its own
    fixes.write_text(json.dumps({"model": "*", "responses": [{"stage": "fix", "content": FIX}]}))
    out = tmp_path / "repair.json"
    argv = ["--run", str(run), "--backend", f"scripted:{fixes}", "--python", sys.executable, "--rounds", "2"]
    assert bench.main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| before repair | 0% |" in printed and "| after round 1 | 100% |" in printed
    result = json.loads(out.read_text())
    lines = sum(len(f.read_text().splitlines()) for f in (run / "repo").rglob("*") if f.is_file())  # config too
    before, first, second = result["summary"]
    assert before["executable_rate"] == 0 and first["executable_rate"] == second["executable_rate"] == 1
    assert first["lines_changed"] == 2 and first["lines_changed_share"] == pytest.approx(2 / lines)
    assert first["model_seconds"] > 0 and first["run_seconds"] > 0 and second["attempted_this_round"] == 0
    rounds = result["repositories"][0]["rounds"]
    assert [(r["round"], r["passed"]) for r in rounds] == [(0, False), (1, True)]
    assert (run / "repo" / "main.py").read_text() == BROKEN_MAIN and not (run / "exec").exists()  # a copy was fixed


REFERENCE = Path(__file__).resolve().parents[1] / "examples" / "mixup" / "reference"
PERMUTATION = "    perm = rng.permutation(x.shape[0])\n"
BROKEN_PERMUTATION = "    perm = rng.permutation(x.shape[0] + 1)\n"  # one index too many: fails only when it runs


def reference_scenario(fix: str) -> dict[str, Any]:
    """A scripted run whose repository is the hand-written reference implementation, with mixup.py broken."""
    files = {p.name: p.read_text(encoding="utf-8") for p in sorted(REFERENCE.iterdir()) if p.suffix in (".py", ".yaml")}
    files["mixup.py"] = files["mixup.py"].replace(PERMUTATION, BROKEN_PERMUTATION)
    order = ["data.py", "model.py", "mixup.py", "metrics.py", "train.py", "main.py", "config.yaml"]
    needs = {"train.py": ["data.py", "model.py", "mixup.py", "metrics.py"], "main.py": ["train.py"]}
    design = {"implementation_approach": "NumPy.", "file_list": order, "classes": [], "relations": []}
    roles = {"main.py": "entry point"}
    logic = {
        "files": [{"path": p, "role": roles.get(p, p), "depends_on": needs.get(p, [])} for p in order],
        "required_packages": ["numpy", "pyyaml"],
    }
    responses: list[dict[str, Any]] = [
        {"stage": "plan", "content": "# Plan\n\nMixup for small MLPs, as the paper describes."},
        {"stage": "design", "content": json.dumps(design)},
        {"stage": "logic", "content": json.dumps(logic)},
        {"stage": "config", "content": f"```yaml\n{files['config.yaml']}```"},
    ]
    for path, code in files.items():
        fence = "yaml" if path.endswith(".yaml") else "python"
        responses.append({"stage": "analysis", "file": path, "content": f"## {path}\n\nAs the paper says."})
        responses.append({"stage": "code", "file": path, "content": f"```{fence}\n{code}```"})
    responses.append({"stage": "fix", "content": fix})
    return {"model": "*", "responses": responses}


@pytest.mark.slow
def test_a_broken_copy_of_the_reference_implementation_is_repaired_by_the_model(
    monkeypatch: pytest.MonkeyPatch, serve: Any, paper_md: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        sandbox.isolation()
    except ConfigError as exc:
        pytest.skip(str(exc))
    server = serve(reference_scenario(block("mixup.py", BROKEN_PERMUTATION, PERMUTATION)))
    use_server(monkeypatch, server)
    run = tmp_path / "run"
    assert main(["run", str(paper_md), "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["fix", str(run), "--python", sys.executable, "--yes"]) == 0
    out = capsys.readouterr().out
    assert "IndexError" in out and "passes after 1 round(s)" in out
    prompt = fix_requests(server)[0]["messages"][-1]["content"]
    assert 'File "mixup.py"' in prompt and BROKEN_PERMUTATION.strip() in prompt  # the file at fault was shown
    assert (run / "repo" / "mixup.py").read_text() == (REFERENCE / "mixup.py").read_text()
