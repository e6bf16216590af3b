"""The open-questions queue: listed with ids and states, answered from the CLI, the magic and the widget; answers
are saved in the run folder, reach the analysis and coding prompts, and make what was made without them stale.
Without answers the prompts are byte-identical to those of a run that never had the queue."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import DESIGN, settings_for, small_scenario

from p2c_notebook.cli import main
from p2c_notebook.errors import PlanError
from p2c_notebook.run import questions
from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.ui import Walkthrough

PLAN = (
    "# Plan\n\n## Methodology\nA tiny linear model.\n\n## 6. Unclear points\n- Which optimiser momentum?\n"
    "- How many epochs for the large run?\n\n## Notes\n- not a question\n"
)
LOGIC_Q = {
    "files": [
        {"path": "data.py", "role": "makes the data", "depends_on": []},
        {"path": "models/net.py", "role": "the model", "depends_on": ["data.py"]},
        {"path": "main.py", "role": "entry point", "depends_on": ["models/net.py", "data.py"]},
    ],
    "open_questions": ["Is the data normalised?"],
}


def scenario() -> dict[str, Any]:
    base = small_scenario(logic=LOGIC_Q)
    base["responses"][0] = {"stage": "plan", "content": PLAN}
    return base


def finished_run(server: Any, paper: Path, run: Path) -> Path:
    with Pipeline.start(paper, run, settings=settings_for(server)) as pipeline:
        assert pipeline.run().state == "done"
    return run


def last_user_message(request: Any) -> str:
    return str(request["messages"][-1]["content"])


def test_the_queue_lists_the_plans_and_designs_open_questions_with_ids_and_states(
    serve: Any, paper_md: Path, tmp_path: Path, capsys: Any
) -> None:
    run = finished_run(serve(scenario()), paper_md, tmp_path / "run")
    queue = questions.questions(Pipeline.open(run).store)
    assert [(q.id, q.text, q.state) for q in queue] == [
        ("plan-1", "Which optimiser momentum?", "open"),
        ("plan-2", "How many epochs for the large run?", "open"),
        ("design-1", DESIGN["open_questions"][0], "open"),
        ("logic-1", "Is the data normalised?", "open"),
    ]
    assert main(["questions", str(run)]) == 0
    out = capsys.readouterr().out
    assert "plan-2     open" in out and "4 of 4 open" in out and "--answer ID" in out


def test_a_question_a_later_stage_repeats_is_listed_once_and_one_answer_serves_both(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    repeated = {**LOGIC_Q, "open_questions": [DESIGN["open_questions"][0].upper() + "  ", "Is the data normalised?"]}
    base = small_scenario(logic=repeated)
    base["responses"][0] = {"stage": "plan", "content": PLAN}
    run = finished_run(serve(base), paper_md, tmp_path / "run")
    queue = questions.questions(Pipeline.open(run).store)
    assert [(q.id, q.text) for q in queue][2:] == [
        ("design-1", DESIGN["open_questions"][0]),
        ("logic-1", "Is the data normalised?"),
    ]


def test_an_answer_is_saved_goes_into_the_file_prompts_and_makes_analysis_and_code_stale(
    serve: Any, paper_md: Path, tmp_path: Path, capsys: Any
) -> None:
    server = serve(scenario())
    run = finished_run(server, paper_md, tmp_path / "run")
    before = len(server.requests)
    assert main(["questions", str(run), "--answer", "plan-1", "Momentum 0.9, as in Section 4."]) == 0
    assert main(["questions", str(run), "--judgement", "logic-1"]) == 0
    out = capsys.readouterr().out
    assert "Saved the answer to plan-1" in out and "Now stale: 7 artifact(s)" in out  # 3 analyses, 4 code files
    saved = yaml.safe_load((run / "planning" / "answers.yaml").read_text())
    assert saved == [
        {
            "id": "plan-1",
            "source": "plan",
            "question": "Which optimiser momentum?",
            "answer": "Momentum 0.9, as in Section 4.",
        },
        {"id": "logic-1", "source": "logic", "question": "Is the data normalised?", "judgement": True},
    ]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["artifacts"]["answers"]["path"] == "planning/answers.yaml"
    with Pipeline.open(run, settings=settings_for(server)) as pipeline:
        stale = {r.artifact for r in pipeline.rows() if r.status == "stale"}
        assert stale == {r.artifact for r in pipeline.rows() if r.artifact.startswith(("analysis/", "code/"))}
        assert {"plan", "design", "logic", "config"}.isdisjoint(stale)
        assert pipeline.run().state == "done"
        assert all(r.status != "stale" for r in pipeline.rows())
        recorded = pipeline.store.entry("analysis/main.py")
        assert recorded is not None and recorded.inputs["answers"] == pipeline.store.hash_of("answers")
    asked = server.requests[before:]
    assert sorted({r["stage"] for r in asked}) == ["analysis", "code"]
    for request in asked:
        text = last_user_message(request)
        assert "Answers to open questions" in text
        assert "- Q: Which optimiser momentum?\n  A: Momentum 0.9, as in Section 4." in text
        assert "- Q: Is the data normalised?\n  A: Use your judgement" in text
        assert text.index("</config>") < text.index("Answers to open questions") < text.index("Task:")
    states = {q.id: q.state for q in questions.questions(Pipeline.open(run).store)}
    assert states == {"plan-1": "answered", "plan-2": "open", "design-1": "open", "logic-1": "judgement"}


def test_without_answers_the_file_prompts_are_what_they_always_were(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    server = serve(scenario())
    finished_run(server, paper_md, tmp_path / "run")
    for request in server.requests:
        assert "answers_to_open_questions" not in json.dumps(request["messages"])
    analysis = next(r for r in server.requests if r["stage"] == "analysis")
    text = last_user_message(analysis)
    assert text.index("</config>\n\nTask: write a detailed implementation spec") > 0  # nothing in between
    entry = Pipeline.open(tmp_path / "run").store.entry("code/main.py")
    assert entry is not None and "answers" not in entry.inputs  # recorded as before the queue existed


def test_the_same_answer_twice_changes_nothing_and_a_bad_id_names_the_known_ones(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    server = serve(scenario())
    run = finished_run(server, paper_md, tmp_path / "run")
    pipeline = Pipeline.open(run, settings=settings_for(server))
    assert len(questions.answer(pipeline, "design-1", "Seed 0.")) == 7
    assert pipeline.run().state == "done"
    assert questions.answer(pipeline, "design-1", "Seed 0.") == []
    assert all(r.status != "stale" for r in pipeline.rows())
    with pytest.raises(PlanError, match=r"No open question 'design-9'.*plan-1, plan-2, design-1, logic-1"):
        questions.answer(pipeline, "design-9", "x")
    with pytest.raises(PlanError, match="empty"):
        questions.answer(pipeline, "plan-1", "  ")
    assert main(["questions", str(run), "--answer", "nope-1", "x"]) == PlanError.exit_code


def test_a_hand_edit_of_the_answers_file_makes_what_used_them_stale(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    server = serve(scenario())
    run = finished_run(server, paper_md, tmp_path / "run")
    pipeline = Pipeline.open(run, settings=settings_for(server))
    questions.answer(pipeline, "plan-2", "Ten epochs.")
    assert pipeline.run().state == "done"
    path = run / "planning" / "answers.yaml"
    path.write_text(path.read_text().replace("Ten epochs.", "Twenty epochs."))
    stale = {r.artifact for r in pipeline.rows() if r.status == "stale"}
    assert "analysis/main.py" in stale and "code/main.py" in stale and "config" not in stale


def test_the_widget_queue_answers_with_its_box_and_its_judgement_button(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    server = serve(scenario())
    run = finished_run(server, paper_md, tmp_path / "run")
    wt = Walkthrough(Pipeline.open(run, settings=settings_for(server)))
    panel = wt.questions_panel
    assert panel.widget.layout.display != "none" and "4 of 4 open" in panel.head.value
    assert panel.widget in wt.panel_box.children  # between the planning panels and the files
    assert wt.panel_box.children.index(panel.widget) < wt.panel_box.children.index(wt.panel("analysis/main.py").widget)
    panel.boxes["plan-1"].value = "Momentum 0.9."
    save = [b for b in _buttons(panel.widget) if "p2c-answer" in b._dom_classes]
    judge = [b for b in _buttons(panel.widget) if "p2c-judgement" in b._dom_classes]
    save[0].click()
    assert "Now stale: 7 artifact(s)" in panel.message.value
    assert wt.stage_states()["analysis"] == "stale" and wt.stage_states()["code"] == "stale"
    judge = [b for b in _buttons(panel.widget) if "p2c-judgement" in b._dom_classes]
    judge[3].click()  # logic-1
    assert {q.id: q.state for q in wt.questions()}["logic-1"] == "judgement"
    assert "2 of 4 open" in panel.head.value
    wt.close()


def _buttons(widget: Any) -> list[Any]:
    import ipywidgets

    found = [widget] if isinstance(widget, ipywidgets.Button) else []
    for child in getattr(widget, "children", ()):
        found += _buttons(child)
    return found


def test_the_magic_lists_and_answers_the_questions(
    serve: Any, paper_md: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    server = serve(scenario())
    run = finished_run(server, paper_md, tmp_path / "run")
    monkeypatch.setenv("P2C_CONFIG", str(tmp_path / "no-config.yaml"))
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "p2c_notebook.ui.magics")
    try:
        ip.run_line_magic("p2c", f"use --base-url {server.base_url} --api-key sk-test-0123456789 --model m")
        ip.run_line_magic("p2c", f"load {run}")
        capsys.readouterr()
        ip.run_line_magic("p2c", "questions")
        assert "design-1   open" in capsys.readouterr().out
        ip.run_line_magic("p2c", 'questions --answer design-1 "Seed 0, as in the appendix."')
        captured = capsys.readouterr()
        assert "Saved the answer to design-1. Now stale: 7 artifact(s)." in captured.out, captured.err
        ip.run_line_magic("p2c", "questions")
        assert "design-1   answered" in capsys.readouterr().out
    finally:
        ip.run_line_magic("unload_ext", "p2c_notebook.ui.magics")
