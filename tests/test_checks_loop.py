"""The static checks in the loop, over HTTP: a code reply's violations are sent back once (a repair re-ask),
what remains is saved, recorded in checks.json and shown (`p2c check`, `p2c status`, the run summary); the logic
design is fixed mechanically where it can be and re-asked where only the model can fix it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, cast

import pytest
from conftest import CODE, EXAMPLE, LOGIC, settings_for, small_scenario, use_server

from p2c_notebook.cli import main
from p2c_notebook.errors import ReplyError
from p2c_notebook.run.events import Event, Notice
from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.run.store import sha256
from p2c_notebook.stages import runchecks

LOGIC_FILES = cast(list[dict[str, Any]], LOGIC["files"])
#: main.py without its import of Net: `Net` is undefined at line 3.
UNDEFINED = "from data import load\n\nprint(Net().forward(load()))\n"


def code_reply(path: str, code: str, attempt: int | None = None) -> dict[str, Any]:
    reply: dict[str, Any] = {"stage": "code", "file": path, "content": f"```python\n{code}```"}
    if attempt is not None:
        reply["attempt"] = attempt
    return reply


def scenario_with(*first: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """The small scenario, with `first` answering before its own replies (the first match wins)."""
    scenario = small_scenario(**overrides)
    scenario["responses"] = [*first, *scenario["responses"]]
    return scenario


def run_pipeline(server: Any, paper: Path, run: Path, events: list[Event] | None = None, **extra: Any) -> Any:
    sinks = (events.append,) if events is not None else ()
    with Pipeline.start(paper, run, settings=settings_for(server, **extra), sinks=sinks) as pipeline:
        return pipeline.run()


def requests_for(server: Any, stage: str, file: str = "") -> list[Any]:
    return [r for r in server.requests if r["stage"] == stage and r["file"] == file]


def checks_json(run: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run / "checks.json").read_text())
    return data


def errors(violations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [v for v in violations if v["severity"] == "error"]


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch) -> Any:
    """`p2c` commands in this process talk to the given scripted server, with none of the caller's settings."""

    def use(server: Any) -> None:
        use_server(monkeypatch, server)

    return use


def test_an_undefined_name_is_sent_back_once_with_its_line_and_the_repair_is_saved(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    server = serve(scenario_with(code_reply("main.py", CODE["main.py"], attempt=2), code_reply("main.py", UNDEFINED)))
    events: list[Event] = []
    assert run_pipeline(server, paper_md, tmp_path / "run", events).state == "done"
    asked = requests_for(server, "code", "main.py")
    assert [r["attempt"] for r in asked] == [1, 2]
    first, repair = asked
    problem = repair["messages"][-1]["content"]
    assert repair["messages"][-1]["role"] == "user"
    assert "line 3: `Net` is defined in models/net.py; import it: `from models.net import Net`" in problem
    assert repair["messages"][-2] == {"role": "assistant", "content": f"```python\n{UNDEFINED}```"}
    assert repair["messages"][: len(first["messages"])] == first["messages"], "the re-ask keeps the prefix"
    assert (tmp_path / "run/repo/main.py").read_text() == CODE["main.py"]
    entry = checks_json(tmp_path / "run")["files"]["main.py"]
    assert entry["violations"] == [] and entry["sha256"] == sha256(CODE["main.py"])
    assert [(v["check"], v["line"]) for v in errors(entry["before_repair"])] == [("undefined-name", 3)]
    assert any(isinstance(e, Notice) and "static checks found 1 problem" in e.message for e in events)
    effect = runchecks.repair_effect(checks_json(tmp_path / "run"))
    assert effect["before"]["undefined-name"] == 1 and effect["after"]["undefined-name"] == 0
    assert effect["files"]["re_asked"] == 1
    others = Counter((r["stage"], r["file"], r["attempt"]) for r in server.requests if r["file"] != "main.py")
    assert all(attempt == 1 for _, _, attempt in others), "only the file with a violation is asked again"


def test_a_reply_that_stays_wrong_is_saved_recorded_and_shown(
    serve: Any, cli_env: Any, paper_md: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve(scenario_with(code_reply("main.py", UNDEFINED)))
    cli_env(server)
    run = tmp_path / "run"
    assert main(["run", str(paper_md), "--out", str(run)]) == 0
    out = capsys.readouterr()
    assert "Static checks: 1 problem(s) remain in 1 file(s)" in out.out
    assert "main.py is saved with 1 problem(s) the static checks found (main.py:3: `Net` is defined" in out.err
    assert [r["attempt"] for r in requests_for(server, "code", "main.py")] == [1, 2], "re-asked once, not more"
    assert (run / "repo/main.py").read_text() == UNDEFINED
    recorded = checks_json(run)
    assert recorded["complete"] and not recorded["is_clean"] and recorded["errors"] == 1
    [violation] = errors(recorded["files"]["main.py"]["violations"])
    assert violation["check"] == "undefined-name" and violation["line"] == 3 and violation["severity"] == "error"
    assert recorded["files"]["main.py"]["sha256"] == sha256(UNDEFINED)
    effect = runchecks.repair_effect(recorded)  # a re-ask that changed nothing still cost a call: it is counted
    assert effect["files"]["re_asked"] == 1 and effect["before"]["undefined-name"] == 1

    assert main(["check", str(run)]) == 5
    listed = capsys.readouterr().out
    assert "main.py:3: `Net` is defined in models/net.py; import it: `from models.net import Net` [undefined-name]" in (
        listed
    )
    assert main(["status", str(run)]) == 0
    status = capsys.readouterr().out
    [line] = [x for x in status.splitlines() if x.startswith("code/main.py")]
    assert line.endswith("[1 problem(s), 1 warning(s)]")
    assert "Static checks: 1 problem(s) remain in 1 file(s)" in status
    assert [v.location for v in runchecks.checks_for(run)["main.py"] if v.severity == "error"] == ["main.py:3"]


def test_a_clean_run_asks_nothing_again_and_checks_clean(
    serve: Any, cli_env: Any, paper_md: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve(small_scenario())
    cli_env(server)
    run = tmp_path / "run"
    assert main(["run", str(paper_md), "--out", str(run)]) == 0
    assert "Static checks: no problems in 3 file(s)" in capsys.readouterr().out
    assert all(r["attempt"] == 1 for r in server.requests)
    assert main(["check", str(run)]) == 0
    assert checks_json(run)["is_clean"]


def test_editing_a_code_file_makes_its_entry_stale_and_check_recomputes_it(
    serve: Any, paper_md: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve(small_scenario())
    run = tmp_path / "run"
    run_pipeline(server, paper_md, run)
    assert checks_json(run)["is_clean"]
    edited = CODE["models/net.py"] + "\n\ndef scale(x):\n    return factor * x\n"
    (run / "repo/models/net.py").write_text(edited)
    [found] = [v for v in runchecks.checks_for(run)["models/net.py"] if v.severity == "error"]
    assert found.message.startswith("`factor` is used but never defined") and found.line == 10
    assert checks_json(run)["files"]["models/net.py"]["sha256"] == sha256(CODE["models/net.py"]), (
        "reading writes nothing"
    )
    assert main(["check", str(run)]) == 5
    assert "models/net.py:10: `factor` is used but never defined" in capsys.readouterr().out
    entry = checks_json(run)["files"]["models/net.py"]
    assert entry["sha256"] == sha256(edited) and [v["line"] for v in errors(entry["violations"])] == [10]
    (run / "repo/models/net.py").write_text(CODE["models/net.py"])
    assert main(["check", str(run)]) == 0


def test_a_worse_repair_keeps_the_first_reply(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    worse = "print(Net().forward(load()))\n"  # both names undefined now
    server = serve(scenario_with(code_reply("main.py", worse, attempt=2), code_reply("main.py", UNDEFINED)))
    events: list[Event] = []
    run_pipeline(server, paper_md, tmp_path / "run", events)
    assert (tmp_path / "run/repo/main.py").read_text() == UNDEFINED
    assert any(isinstance(e, Notice) and "more problems (2) than the first (1)" in e.message for e in events)


def test_the_re_ask_counts_under_max_repairs(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    server = serve(scenario_with(code_reply("main.py", UNDEFINED)))
    assert run_pipeline(server, paper_md, tmp_path / "run", max_repairs=0).state == "done"
    assert [r["attempt"] for r in requests_for(server, "code", "main.py")] == [1]
    [violation] = errors(checks_json(tmp_path / "run")["files"]["main.py"]["violations"])
    assert violation["check"] == "undefined-name"


def test_names_of_files_not_written_yet_do_not_fail_the_file_being_written(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    # data.py is coded first; it imports from files planned after it (not yet written when it is checked).
    early = "from models.net import Net\nfrom main import report\n\n\n" + CODE["data.py"]
    server = serve(scenario_with(code_reply("data.py", early)))
    run_pipeline(server, paper_md, tmp_path / "run")
    assert [r["attempt"] for r in requests_for(server, "code", "data.py")] == [1]


def test_a_logic_design_with_a_file_listed_twice_is_fixed_without_a_re_ask(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    twice = {**LOGIC, "files": [*LOGIC_FILES, {"path": "data.py", "role": "again", "depends_on": ["main.py"]}]}
    server = serve(small_scenario(logic=twice))
    events: list[Event] = []
    assert run_pipeline(server, paper_md, tmp_path / "run", events).state == "done"
    assert [r["attempt"] for r in requests_for(server, "logic")] == [1]
    assert any(
        isinstance(e, Notice) and "lists data.py more than once; kept its first entry" in e.message for e in events
    )
    saved = json.loads((tmp_path / "run/planning/logic.json").read_text())
    assert [f["path"] for f in saved["files"]] == ["data.py", "models/net.py", "main.py"]


def test_a_multi_file_logic_design_without_dependencies_is_re_asked_once(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    flat = {**LOGIC, "files": [{**f, "depends_on": []} for f in LOGIC_FILES]}
    server = serve(scenario_with({"stage": "logic", "attempt": 2, "content": json.dumps(LOGIC)}, logic=flat))
    assert run_pipeline(server, paper_md, tmp_path / "run").state == "done"
    asked = requests_for(server, "logic")
    assert [r["attempt"] for r in asked] == [1, 2]
    assert "No file depends on another in a design of 3 Python files" in asked[1]["messages"][-1]["content"]
    saved = json.loads((tmp_path / "run/planning/logic.json").read_text())
    assert {f["path"]: f["depends_on"] for f in saved["files"]}["main.py"] == ["models/net.py", "data.py"]


def test_a_logic_design_still_flat_after_the_re_ask_is_saved_and_the_problem_shown(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    flat = {**LOGIC, "files": [{**f, "depends_on": []} for f in LOGIC_FILES]}
    server = serve(small_scenario(logic=flat))
    events: list[Event] = []
    assert run_pipeline(server, paper_md, tmp_path / "run", events).state == "done"
    assert [r["attempt"] for r in requests_for(server, "logic")] == [1, 2]
    assert any(
        isinstance(e, Notice) and e.message.startswith("Logic design: No file depends on another") for e in events
    )


def test_the_example_scenario_runs_without_a_single_re_ask_and_checks_clean(serve: Any, tmp_path: Path) -> None:
    server = serve(EXAMPLE / "scenario.yaml")
    assert run_pipeline(server, EXAMPLE / "paper.tex", tmp_path / "run").state == "done"
    assert [r for r in server.requests if r["attempt"] != 1] == []
    recorded = checks_json(tmp_path / "run")
    assert recorded["is_clean"] and recorded["complete"] and recorded["errors"] == 0
    assert len(recorded["files"]) == 7


def test_a_run_stopped_half_way_shows_the_checks_of_what_it_wrote(
    serve: Any, paper_md: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve(scenario_with({"stage": "code", "file": "main.py", "content": "```python\ndef run(:\n```"}))
    run = tmp_path / "run"
    with pytest.raises(ReplyError):
        run_pipeline(server, paper_md, run)
    recorded = checks_json(run)
    assert sorted(recorded["files"]) == ["data.py", "models/net.py"] and not recorded["complete"]
    assert main(["status", str(run)]) == 0
    assert "Static checks: no problems in 2 file(s) (1 warning(s))." in capsys.readouterr().out
    assert main(["check", str(run)]) == 0, "the file not written yet is not reported as a problem"
