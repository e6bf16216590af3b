"""The stage registry: a stage registered from outside the package flows through the run, the CLI, the run
folder's manifest and the widget, with no other change anywhere. The toy stage is a repository summary made
after the code (once per run, not per file) from the plan and every code file; its model answers over HTTP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import CODE, LOGIC, settings_for, small_scenario, use_server

from p2c_notebook.cli import EXIT_PAUSED, main
from p2c_notebook.errors import ConfigError
from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.run.store import Entry
from p2c_notebook.stages import registry
from p2c_notebook.stages.artifacts import LogicDesign
from p2c_notebook.stages.context import StageContext, feedback_messages
from p2c_notebook.stages.parsing import extract_markdown
from p2c_notebook.stages.registry import Stage, inputs_for

SUMMARY_TEXT = "# Summary\n\nThree files: the data, the model and the entry point."
FILES = [f["path"] for f in LOGIC["files"]]


def make_summary(ctx: StageContext, feedback: str | None = None) -> Entry:
    """The toy stage: one call that sees the plan and every code file, saved as summary/repository.md."""
    logic = ctx.logic()
    code = "\n\n".join(f"{path}:\n{ctx.store.read(f'code/{path}')}" for path in logic.order)
    messages = [
        {"role": "system", "content": "Summarise a generated repository in a few lines."},
        {"role": "user", "content": f"{ctx.answers()['plan']}\n\n{code}"},
    ]
    messages = feedback_messages(ctx, "summary", messages, feedback)
    text, usage = ctx.ask("summary", "summary", "", messages, extract_markdown)
    return ctx.store.save("summary", text, ctx.input_hashes(inputs_for("summary", logic)), ctx.backend.model, usage)


SUMMARY = Stage(
    "summary",
    "repository summary",
    "summary/repository.md",
    make_summary,
    inputs=("plan", "code/*"),
    verb="summarize",
    typical_output=200,
)


@pytest.fixture
def summary_stage(request: pytest.FixtureRequest) -> Stage:
    registry.register(SUMMARY)
    request.addfinalizer(lambda: registry.unregister("summary"))
    return SUMMARY


def scenario() -> dict[str, Any]:
    plan = small_scenario()
    plan["responses"].append({"stage": "summary", "content": SUMMARY_TEXT})
    return plan


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, serve: Any) -> Any:
    server = serve(scenario())
    use_server(monkeypatch, server)
    return server


def artifacts(run: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run / "manifest.json").read_text(encoding="utf-8"))["artifacts"]
    return data


# --- a registered stage, end to end ----------------------------------------------------------------------
def test_a_registered_stage_runs_after_the_code_and_shows_in_status_show_and_the_manifest(
    summary_stage: Stage, env: Any, paper_md: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert main(["run", str(paper_md), "--out", str(run)]) == 0
    stages = [r["stage"] for r in env.requests]
    assert stages[-1] == "summary" and stages.count("summary") == 1  # once per run, after every code file
    asked = env.requests[-1]["messages"][-1]["content"]
    assert all(code in asked for code in CODE.values())  # its inputs reached its prompt
    entry = artifacts(run)["summary"]
    assert entry["path"] == "summary/repository.md" and entry["status"] == "generated"
    assert set(entry["inputs"]) == {"plan", *(f"code/{f}" for f in FILES)}
    assert (run / "summary" / "repository.md").read_text(encoding="utf-8").startswith("# Summary")
    capsys.readouterr()

    assert main(["status", str(run)]) == 0
    status = capsys.readouterr().out
    assert any(line.split()[:2] == ["summary", "generated"] for line in status.splitlines())
    assert "Nothing left to do" in status
    assert main(["show", str(run), "summary"]) == 0
    assert capsys.readouterr().out.startswith(SUMMARY_TEXT)


def test_editing_an_input_of_a_registered_stage_makes_it_stale_and_a_rerun_redoes_only_it(
    summary_stage: Stage, env: Any, paper_md: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert main(["run", str(paper_md), "--out", str(run)]) == 0
    (run / "repo" / "main.py").write_text(CODE["main.py"] + "# tuned by hand\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["status", str(run)]) == 0
    status = capsys.readouterr().out
    assert any(line.split()[:2] == ["summary", "stale"] for line in status.splitlines())
    before = len(env.requests)
    assert main(["run", str(run)]) == 0
    assert [r["stage"] for r in env.requests[before:]] == ["summary"]  # the edit is kept; only the summary redone
    assert "# tuned by hand" in env.requests[-1]["messages"][-1]["content"]
    assert artifacts(run)["summary"]["status"] == "generated"


def test_a_registered_stage_waits_for_approval_of_its_inputs(
    summary_stage: Stage, env: Any, paper_md: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    assert main(["run", str(paper_md), "--out", str(run), "--until", "code"]) == 0
    assert "summary" not in artifacts(run) and "summary" not in {r["stage"] for r in env.requests}
    for stage in ("planning", "analysis"):
        assert main(["approve", str(run), stage]) == 0
    assert main(["run", str(run), "--approve-each"]) == EXIT_PAUSED  # the code is not approved yet
    assert "summary" not in artifacts(run)
    assert main(["approve", str(run), "coding"]) == 0
    assert main(["run", str(run), "--approve-each"]) == 0
    assert artifacts(run)["summary"]["status"] == "generated"


def test_the_widget_shows_a_panel_and_a_step_for_a_registered_stage(
    summary_stage: Stage, serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    from p2c_notebook.ui import Walkthrough

    server = serve(scenario())
    wt = Walkthrough(Pipeline.start(paper_md, tmp_path / "run", settings=settings_for(server)))
    try:
        assert list(wt.panels)[-1] == "summary" and "p2c-step-summary" in wt.stepper.value
        assert wt.stage_states()["summary"] == "todo"
        wt.run(require_approval=False, block=True)
        assert wt.last_error is None and wt.last_result is not None and wt.last_result.state == "done"
        panel = wt.panel("summary")
        assert panel.status == "generated" and panel.widget in wt.panel_box.children
        assert "Three files" in "".join(_html(panel.widget))
        assert wt.stage_states()["summary"] == "done" and wt.next_stage() is None
    finally:
        wt.close()
        wt.pipeline.close()


def _html(widget: Any) -> list[str]:
    values = [str(widget.value)] if type(widget).__name__ == "HTML" else []
    for child in getattr(widget, "children", ()):
        values.extend(_html(child))
    return values


def test_a_registered_stage_gets_its_magic_verb_and_its_name_in_the_cli_help(
    summary_stage: Stage, capsys: pytest.CaptureFixture[str]
) -> None:
    from p2c_notebook.ui.magics import parse_line, run_verbs

    assert run_verbs() == {"plan": "config", "analyze": "analysis", "code": "code", "summarize": "summary", "run": None}
    assert parse_line("summarize --approve-each").command == "summarize"
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "analysis, code, reproduce, summary (or planning, coding)" in " ".join(capsys.readouterr().out.split())


# --- the registry itself -----------------------------------------------------------------------------------
def test_the_built_in_stages_record_the_inputs_they_always_did() -> None:
    logic = LogicDesign.model_validate(LOGIC)
    planning = ["plan", "design", "logic", "config"]
    assert [s.name for s in registry.stages()] == [*planning, "analysis", "code", "reproduce"]
    assert [s.name for s in registry.stages() if s.on_request] == ["reproduce"]  # never made by a default run
    assert inputs_for("plan") == ["paper"] and inputs_for("config") == ["paper", "plan"]
    assert inputs_for("logic") == ["paper", "plan", "design"]
    # "answers" (to the open questions) is recorded only once there are answers: see test_questions.py
    assert inputs_for("analysis/main.py", logic) == ["paper", *planning, "answers"]
    assert inputs_for("code/main.py", logic) == [
        "paper",
        *planning,
        "answers",
        "analysis/main.py",
        "code/models/net.py",
        "code/data.py",
    ]
    unplanned = inputs_for("code/unplanned.py", logic)
    assert unplanned == ["paper", *planning, "answers"]  # a file the user wrote: no file inputs
    assert registry.artifact_file("code/models/net.py") == "repo/models/net.py"
    assert registry.artifact_file("analysis/main.py") == "analysis/main.py.md"
    assert registry.verbs() == {"plan": "config", "analyze": "analysis", "code": "code"}


def test_a_stage_name_taken_or_unknown_is_refused_with_the_known_names() -> None:
    with pytest.raises(ConfigError, match="already registered"):
        registry.register(Stage("repo", "again", "x.md", make_summary))  # an alias of code
    with pytest.raises(ConfigError, match="per-file"):
        registry.register(Stage("notes", "notes", "notes.md", make_summary, per_file=True))
    with pytest.raises(ConfigError, match=r"use one of plan, design, logic, config, analysis, code, reproduce \(or"):
        registry.get("nonsense")
    with pytest.raises(ConfigError, match="built-in"):
        registry.unregister("code")
    assert registry.find("summary") is None  # a test's stage does not outlive its test
