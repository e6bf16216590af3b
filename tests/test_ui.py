"""The notebook front end over real run folders: the walkthrough widget and the %p2c magics.

Widgets are driven the way a person drives them (`button.click()`, typing into a Textarea) and checked
against the run folder; the magics run in a real IPython shell. Models answer over HTTP (ScriptedServer).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ipywidgets
import pytest
from conftest import API_KEY, CODE, LOGIC, magics_of, magics_shell, settings_for, small_scenario
from IPython.core.interactiveshell import InteractiveShell

import p2c_notebook
from p2c_notebook.run.events import Event, StageStarted
from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.run.store import RunStore, artifact_file
from p2c_notebook.settings import Settings
from p2c_notebook.ui import Walkthrough, walkthrough
from p2c_notebook.ui.panels import DiagramView, load_uml

FILES = [f["path"] for f in LOGIC["files"]]
PANELS = [
    "plan",
    "design",
    "logic",
    "config",
    *(f"analysis/{f}" for f in FILES),
    *(f"code/{f}" for f in FILES),
    "code/config.yaml",  # repo/config.yaml, the planning config's copy, is tracked like every file in repo/
]
DOWNSTREAM = {a for a in PANELS if a.startswith(("analysis/", "code/"))}
HOSTILE = "# Plan\n\nStep one <script>alert(1)</script> and <img src=x onerror=alert(2)> [x](javascript:alert(3))\n"


# --- helpers ---------------------------------------------------------------------------------------------
def manifest(run: Path) -> dict[str, str]:
    data = json.loads((run / "manifest.json").read_text())
    return {name: entry["status"] for name, entry in data["artifacts"].items()}


def make_run(server: Any, paper: Path, run: Path, until: str | None = None, **extra: Any) -> Path:
    with Pipeline.start(paper, run, settings=settings_for(server, **extra)) as pipeline:
        assert pipeline.run(until=until).state in ("done", "stopped")
    return run


def open_walkthrough(server: Any, run: Path, **extra: Any) -> Walkthrough:
    return Walkthrough(Pipeline.open(run, settings=settings_for(server, **extra)))


def html_values(widget: Any) -> list[str]:
    values = [widget.value] if isinstance(widget, ipywidgets.HTML) else []
    for child in getattr(widget, "children", ()):
        values.extend(html_values(child))
    return values


def badge(wt: Walkthrough, artifact: str) -> set[str]:
    """The status classes of the panel's badge, as the page gets them in its head."""
    return set(re.findall(r"p2c-badge-[a-z]+", wt.panel(artifact).head.value))


def requests_for(server: Any, stage: str, file: str = "") -> list[Any]:
    return [r for r in server.requests if r["stage"] == stage and r["file"] == file]


@pytest.fixture
def finished(serve: Any, paper_md: Path, tmp_path: Path) -> tuple[Any, Path]:
    server = serve(small_scenario())
    return server, make_run(server, paper_md, tmp_path / "run")


# --- the walkthrough widget ------------------------------------------------------------------------------
def test_one_panel_per_artifact_in_pipeline_order(finished: tuple[Any, Path]) -> None:
    server, run = finished
    wt = open_walkthrough(server, run)
    assert list(wt.panels) == PANELS
    queue = wt.questions_panel.widget  # the open questions, between the planning and the files
    assert [p.widget for p in wt.panels.values()] == [
        c for c in wt.panel_box.children if c not in wt.pending.values() and c is not queue
    ]
    assert all(p.value == "" for p in wt.pending.values())  # every planned file has its panel
    net = wt.panel("code/models/net.py")
    assert {"p2c-panel", "p2c-panel-code-models-net-py", "p2c-stage-code"} <= set(net.widget._dom_classes)
    assert all(badge(wt, a) == {"p2c-badge-generated"} for a in PANELS)
    assert [b.description for b in (net.approve_button, net.edit_button, net.regenerate_button)] == [
        "Approve",
        "Edit",
        "Regenerate",
    ]
    code_html = "".join(html_values(net.widget))
    assert "p2c-highlight" in code_html and "forward" in code_html
    design = wt.panel("design")
    views = [c for w in design.content.children for c in getattr(w, "children", ())]
    mermaid = [o for view in views for o in getattr(view, "outputs", ())]
    assert any("classDiagram" in o["data"]["text/vnd.mermaid"] for o in mermaid)
    assert any("sequenceDiagram" in o["data"]["text/vnd.mermaid"] for o in mermaid)
    logic_html = "".join(html_values(wt.panel("logic").widget))
    assert "p2c-logic-table" in logic_html and "models/net.py" in logic_html and "the model" in logic_html
    assert "main.py" in wt.repo_panel.tree.value and "4/4 files" in wt.repo_panel.badge.value
    assert "p2c-badge-complete" in wt.repo_panel.badge._dom_classes
    assert wt.run_button.disabled and "all artifacts generated" in wt.next_label.value
    assert wt.stale_button.layout.visibility == "hidden"  # hidden in its slot: the toolbar does not move
    assert "in" in wt.meter.value and "$" in wt.meter.value
    assert "<style>" in wt.style.value and ".p2c-badge-stale" in wt.style.value


def test_run_next_stage_pauses_for_approval_then_auto_approves(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    server = serve(small_scenario())
    run = tmp_path / "run"
    wt = Walkthrough(Pipeline.start(paper_md, run, settings=settings_for(server)))
    assert list(wt.panels) == ["plan", "design", "logic", "config"] and wt.next_stage() == "plan"
    assert wt.run_button.description == "Run next stage"
    wt.run_button.click()
    assert wt.wait(timeout=30) is not None
    assert manifest(run)["plan"] == "generated" and badge(wt, "plan") == {"p2c-badge-generated"}
    assert wt.stream.layout.display is None and "Plan" in wt.stream.value
    wt.run_button.click()
    result = wt.wait(timeout=30)
    assert result is not None and result.state == "paused" and result.pending == ["plan"]
    assert "Waiting for approval of plan" in wt.status_line.value
    wt.panel("plan").approve_button.click()
    assert manifest(run)["plan"] == "approved" and badge(wt, "plan") == {"p2c-badge-approved"}
    wt.auto_approve.value = True
    for _ in range(6):
        if wt.next_stage() is None:
            break
        wt.run_button.click()
        wt.wait(timeout=30)
        assert wt.last_error is None
    assert wt.next_stage() is None and wt.last_result is not None and wt.last_result.state == "done"
    assert set(manifest(run)) == {"paper", *PANELS}
    assert wt.progress.value == wt.progress.max == 3 and wt.progress.description == "3/3"
    assert "out" in wt.meter.value
    assert (run / "repo/main.py").read_text() == CODE["main.py"]


def test_editing_config_marks_exactly_analysis_and_code_stale(finished: tuple[Any, Path]) -> None:
    server, run = finished
    wt = open_walkthrough(server, run)
    panel = wt.panel("config")
    assert panel.editor_box is None  # built on the first Edit
    panel.edit_button.click()
    assert panel.editor_box.layout.display is None
    assert panel.editor.value == (run / "planning/config.yaml").read_text()
    panel.editor.value = "lr: 0.05\nepochs: 3\n"
    panel.save_button.click()
    assert "p2c-note" in panel.message.value and panel.editor_box.layout.display == "none"
    status = manifest(run)
    assert status["config"] == "edited"
    assert {a for a, s in status.items() if s == "stale"} == DOWNSTREAM
    assert {a for a in PANELS if badge(wt, a) == {"p2c-badge-stale"}} == DOWNSTREAM
    assert badge(wt, "config") == {"p2c-badge-edited"}
    assert "p2c-status-stale" in wt.panel("code/main.py").widget._dom_classes
    assert wt.stale_button.layout.visibility is None and wt.stale_button.description == "Re-run stale"
    before = len(server.requests)
    wt.stale_button.click()
    result = wt.wait(timeout=30)
    assert result is not None and result.state == "paused" and len(server.requests) == before  # nothing approved
    wt.auto_approve.value = True
    wt.stale_button.click()
    wt.wait(timeout=30)
    assert {(r["stage"], r["file"]) for r in server.requests[before:]} == {
        (s, f) for s in ("analysis", "code") for f in FILES
    }
    assert "stale" not in manifest(run).values() and wt.stale_button.layout.visibility == "hidden"
    assert (run / "repo/config.yaml").read_text() == "lr: 0.05\nepochs: 3\n"


@pytest.mark.parametrize(
    ("artifact", "text", "expected"),
    [
        ("config", "lr: [0.1, 0.2\nepochs: 3\n", "does not parse"),
        ("design", '{"file_list": ["main.py"', "invalid"),
        ("logic", json.dumps({**LOGIC, "files": LOGIC["files"][:2]}), "exactly the designed files"),
    ],
)
def test_an_invalid_edit_shows_an_error_and_keeps_the_file(
    finished: tuple[Any, Path], artifact: str, text: str, expected: str
) -> None:
    server, run = finished
    wt = open_walkthrough(server, run)
    path = run / artifact_file(artifact)
    original = path.read_text()
    panel = wt.panel(artifact)
    panel.edit_button.click()
    panel.editor.value = text
    panel.save_button.click()
    assert "p2c-error" in panel.message.value and expected in panel.message.value
    assert "Traceback" not in panel.message.value and "\n" not in panel.message.value
    assert panel.editor_box.layout.display is None and panel.editor.value == text  # the edit is not lost
    assert path.read_text() == original
    assert manifest(run)[artifact] == "generated" and "stale" not in manifest(run).values()


def test_model_text_is_escaped_everywhere(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    scenario = small_scenario()
    scenario["responses"][0]["content"] = HOSTILE
    scenario["responses"][4]["content"] = "## data.py\n\n<script>alert(4)</script> `<b>x</b>`"
    server = serve(scenario)
    run = make_run(server, paper_md, tmp_path / "run", until="analysis")
    wt = open_walkthrough(server, run)
    for artifact in ("plan", "analysis/data.py"):
        values = "".join(html_values(wt.panel(artifact).widget))
        assert "&lt;script&gt;alert(" in values
        assert "<script" not in values and "<img" not in values and 'href="javascript' not in values
    assert "&lt;img src=x onerror=alert(2)&gt;" in wt.panel("plan").content.children[0].value
    assert "<code>&lt;b&gt;x&lt;/b&gt;</code>" in wt.panel("analysis/data.py").content.children[0].value
    wt.panel("plan").regenerate_button.click()  # the hostile reply streams again into the live view
    wt.wait(timeout=30)
    assert "&lt;script&gt;" in wt.stream.value and "<script" not in wt.stream.value


def test_regenerate_sends_the_feedback(finished: tuple[Any, Path]) -> None:
    server, run = finished
    wt = open_walkthrough(server, run)
    panel = wt.panel("code/main.py")
    panel.feedback.value = "please add docstrings"
    panel.regenerate_button.click()
    wt.wait(timeout=30)
    sent = requests_for(server, "code", "main.py")
    assert len(sent) == 2 and "please add docstrings" in json.dumps(sent[-1]["messages"])
    assert "please add docstrings" not in json.dumps(sent[0]["messages"])
    assert panel.feedback.value == "" and "with your feedback" in panel.message.value
    assert manifest(run)["code/main.py"] == "generated" and wt.last_error is None


def test_regenerating_an_edited_artifact_needs_confirmation(finished: tuple[Any, Path]) -> None:
    server, run = finished
    wt = open_walkthrough(server, run)
    wt.edit("code/main.py", "print('mine')\n")
    panel = wt.panel("code/main.py")
    assert badge(wt, "code/main.py") == {"p2c-badge-edited"}
    assert panel.confirm_button.layout.display == "none"
    before = len(server.requests)
    panel.regenerate_button.click()
    assert not wt.busy and len(server.requests) == before
    assert panel.confirm_button.layout.display is None and panel.confirm_button.description == "Confirm"
    assert "holds your edits" in panel.message.value
    assert (run / "repo/main.py").read_text() == "print('mine')\n"
    panel.confirm_button.click()
    wt.wait(timeout=30)
    assert len(server.requests) == before + 1
    assert (run / "repo/main.py").read_text() == CODE["main.py"]
    assert manifest(run)["code/main.py"] == "generated" and panel.confirm_button.layout.display == "none"


def steps(wt: Walkthrough) -> dict[str, str]:
    """The stepper as the page gets it: {stage: state class}."""
    return dict(re.findall(r"p2c-step-([a-z]+) p2c-step-([a-z]+)", wt.stepper.value))


def current_step(wt: Walkthrough) -> list[str]:
    return re.findall(r"p2c-step-([a-z]+) p2c-step-[a-z]+ p2c-step-current", wt.stepper.value)


def test_the_stepper_shows_where_you_are_and_what_to_click(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    server = serve(small_scenario())
    wt = Walkthrough(Pipeline.start(paper_md, tmp_path / "run", settings=settings_for(server)))
    assert steps(wt) == dict.fromkeys(("plan", "design", "logic", "config", "analysis", "code"), "todo")
    assert current_step(wt) == ["plan"] and "Run next stage to generate the overall plan" in wt.next_label.value
    seen: list[str] = []
    wt.pipeline.bus.subscribe(lambda e: seen.append(wt.stepper.value) if isinstance(e, StageStarted) else None)
    wt.run_stage(block=True)
    assert any("p2c-step-plan p2c-step-running p2c-step-current" in value for value in seen)
    # The plan exists but is not approved: the next run would pause there, so it waits for the user.
    assert steps(wt)["plan"] == "waiting" and current_step(wt) == ["plan"]
    assert "Your turn" in wt.next_label.value and "Approve" in wt.next_label.value
    wt.panel("plan").approve_button.click()
    assert steps(wt)["plan"] == "done" and current_step(wt) == ["design"]
    assert "Run next stage to generate the architecture design" in wt.next_label.value
    wt.auto_approve.value = True  # nothing waits for the user any more
    wt.run(block=True)
    assert set(steps(wt).values()) == {"done"} and current_step(wt) == []
    assert "all artifacts generated" in wt.next_label.value
    wt.edit("config", "lr: 0.5\nepochs: 1\n")
    assert [steps(wt)[s] for s in ("config", "analysis", "code")] == ["done", "stale", "stale"]
    assert current_step(wt) == ["analysis"] and "Re-run stale" in wt.next_label.value


def test_auto_approve_approves_what_the_run_generated(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    server = serve(small_scenario())
    wt = Walkthrough(Pipeline.start(paper_md, tmp_path / "run", settings=settings_for(server)), auto_approve=True)
    wt.run(block=True)
    assert wt.last_error is None and set(manifest(tmp_path / "run").values()) == {"approved"}
    assert all(badge(wt, a) == {"p2c-badge-approved"} and wt.panel(a).approve_button.disabled for a in PANELS)
    wt.edit("code/main.py", "print('mine')\n")  # a hand edit keeps its own badge through later auto-approvals
    wt.regenerate("code/data.py", block=True)
    assert manifest(tmp_path / "run")["code/main.py"] == "edited"
    assert manifest(tmp_path / "run")["code/data.py"] == "approved"


def test_a_panel_that_goes_stale_drops_its_approved_note(finished: tuple[Any, Path]) -> None:
    server, run = finished
    wt = open_walkthrough(server, run)
    panel = wt.panel("analysis/data.py")
    panel.approve_button.click()
    assert "Approved analysis/data.py" in panel.message.value
    wt.edit("config", "lr: 0.5\nepochs: 1\n")
    assert badge(wt, "analysis/data.py") == {"p2c-badge-stale"} and panel.message.value == ""


def test_regenerating_says_stale_only_when_something_became_stale(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    scenario = small_scenario()
    config = next(r for r in scenario["responses"] if r["stage"] == "config")
    config["replies"] = [config.pop("content"), "```yaml\nlr: 0.1\nepochs: 3\n```", "```yaml\nlr: 0.2\nepochs: 3\n```"]
    server = serve(scenario)
    run = make_run(server, paper_md, tmp_path / "run")
    wt = open_walkthrough(server, run)
    wt.regenerate("code/main.py", block=True)  # nothing depends on the entry point
    assert "Regenerated code/main.py." in wt.status_line.value and "stale" not in wt.status_line.value
    wt.regenerate("config", block=True)  # the same config again: what depends on it is still current
    assert "Regenerated config." in wt.status_line.value and "stale" not in wt.status_line.value
    assert "stale" not in manifest(run).values()
    wt.regenerate("config", block=True)  # a different one
    assert "p2c-note" in wt.status_line.value and "are now stale" in wt.status_line.value
    assert {a for a, s in manifest(run).items() if s == "stale"} == DOWNSTREAM


def test_code_and_config_take_their_colours_from_the_theme(finished: tuple[Any, Path]) -> None:
    """Dark theme: no fixed light background or text colour on code (Pygments' own sheet set both)."""
    server, run = finished
    wt = open_walkthrough(server, run)
    css = wt.style.value
    rules = re.findall(r"([^{}]+)\{([^}]*)\}", re.sub(r"/\*.*?\*/", "", css, flags=re.S))
    fixed = [
        (selector.strip(), declaration.strip())
        for selector, body in rules
        for declaration in body.split(";")
        if re.match(r"\s*(color|background(-color)?)\s*:", declaration) and "var(--" not in declaration
    ]
    # Fixed colours only where they are drawn on a fixed colour: badges and step numbers (white on a saturated
    # colour), and the white card behind PlantUML's black-on-transparent images.
    allowed = re.compile(r"p2c-badge|p2c-step-index|p2c-diagram-svg img|p2c-svg|p2c-highlight pre")
    assert [f for f in fixed if not allowed.search(f[0])] == []
    config = "".join(html_values(wt.panel("config").widget))
    assert "p2c-highlight" in config and "style=" not in config  # colours come from classes, not inline styles
    assert "--jp-cell-editor-background" in css and "--jp-mirror-editor-keyword-color" in css


def test_approve_refuses_a_stale_artifact_with_a_short_message(finished: tuple[Any, Path]) -> None:
    server, run = finished
    wt = open_walkthrough(server, run)
    wt.edit("config", "lr: 0.5\nepochs: 1\n")
    panel = wt.panel("analysis/data.py")
    panel.approve_button.click()  # disabled in the page; a stray click still gets a clear answer
    assert "p2c-error" in panel.message.value and "stale" in panel.message.value
    assert manifest(run)["analysis/data.py"] == "stale"


def test_cancel_stops_the_running_stage(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    scenario = small_scenario(token_latency=0.05)
    scenario["responses"][0]["content"] = "# Plan\n\n" + "A long plan, streamed slowly. " * 200
    server = serve(scenario)
    run = tmp_path / "run"
    pipeline = Pipeline.start(paper_md, run, settings=settings_for(server))
    started = threading.Event()

    def sink(event: Event) -> None:
        if isinstance(event, StageStarted):
            started.set()

    pipeline.bus.subscribe(sink)
    wt = Walkthrough(pipeline)
    assert wt.cancel_button.disabled
    wt.run_button.click()
    assert started.wait(10) and wt.busy and not wt.cancel_button.disabled
    assert all(p.regenerate_button.disabled for p in wt.panels.values() if p.has_controls)
    wt.cancel_button.click()
    result = wt.wait(timeout=30)
    assert result is not None and result.state == "cancelled", result
    assert not wt.busy and wt.cancel_button.disabled and not wt.run_button.disabled
    assert "Cancelled" in wt.status_line.value and wt.last_error is None
    assert "plan" not in manifest(run) and badge(wt, "plan") == {"p2c-badge-missing"}


def test_regenerate_works_after_a_cancelled_run(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    server = serve(small_scenario(token_latency=0.02))  # the design streams for seconds: Cancel lands mid-run
    run = make_run(server, paper_md, tmp_path / "run", until="plan")
    wt = open_walkthrough(server, run)
    wt.run(until="design", require_approval=False)
    wt.cancel()
    wt.wait(timeout=30)
    wt.regenerate("plan", block=True)
    assert wt.last_error is None and "Regenerated plan" in wt.status_line.value


def test_a_failing_model_server_shows_one_line_not_a_traceback(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    server = serve(small_scenario(faults=[{"stage": "plan", "kind": "status", "status": 500, "times": None}]))
    wt = Walkthrough(Pipeline.start(paper_md, tmp_path / "run", settings=settings_for(server, max_retries=0)))
    wt.run_button.click()
    wt.wait(timeout=30)
    assert wt.last_error and "\n" not in wt.last_error
    assert "p2c-error" in wt.status_line.value and "Traceback" not in wt.status_line.value
    assert not wt.busy and not wt.run_button.disabled


def test_the_widget_shows_the_run_as_it_is_on_disk(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    server = serve(small_scenario())
    run = make_run(server, paper_md, tmp_path / "run", until="analysis")
    with Pipeline.open(run) as pipeline:
        pipeline.approve("plan")
    (run / "planning/config.yaml").write_text("lr: 0.3\nepochs: 9\n")  # edited outside the widget
    wt = open_walkthrough(server, run)  # as after a kernel restart
    assert badge(wt, "plan") == {"p2c-badge-approved"} and badge(wt, "config") == {"p2c-badge-edited"}
    assert {a for a in wt.panels if badge(wt, a) == {"p2c-badge-stale"}} == {f"analysis/{f}" for f in FILES}
    assert not any(a.startswith("code/") for a in wt.panels)  # no code yet: one line lists the planned files
    assert "0.3" in "".join(html_values(wt.panel("config").widget))
    pending = wt.pending["code"].value
    repo = len(FILES) + 1  # and repo/config.yaml, the planning config's copy
    assert f"{repo} of {repo} planned file(s) not generated yet" in pending and "main.py" in pending
    (run / "planning/plan.md").write_text("# My own plan\n")
    wt.refresh()
    assert badge(wt, "plan") == {"p2c-badge-edited"} and badge(wt, "design") == {"p2c-badge-stale"}
    assert "My own plan" in wt.panel("plan").content.children[0].value
    assert wt.next_stage() == "design"


def test_panel_redraw_is_fast(finished: tuple[Any, Path]) -> None:
    server, run = finished
    wt = open_walkthrough(server, run)
    for panel in wt.panels.values():
        panel.digest = None  # force every panel to render its content again
    started = time.perf_counter()
    wt.refresh()
    total = time.perf_counter() - started
    slowest = max(p.render_seconds for p in wt.panels.values())
    # Measured, not tuned for: ~1-10 ms a panel here (the design panel's diagrams included). Loose bounds.
    assert slowest < 1.0 and total < 5.0, (slowest, total)


def test_download_zip_holds_the_repository(finished: tuple[Any, Path]) -> None:
    server, run = finished
    wt = open_walkthrough(server, run)
    assert wt.repo_panel.download_button.description == "Download zip"
    wt.repo_panel.download_button.click()
    archive = run / "run-repo.zip"
    with zipfile.ZipFile(archive) as handle:
        assert sorted(handle.namelist()) == sorted(f"run/{p}" for p in [*CODE, "config.yaml"])
        assert handle.read("run/models/net.py").decode() == CODE["models/net.py"]
    assert 'href="data:application/zip;base64,' in wt.repo_panel.link.value
    record = json.loads((run / "manifest.json").read_text())["derived"]["run-repo.zip"]  # made by the library
    assert record["source"] == "repo" and record["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()


def test_an_invalid_diagram_shows_its_error_next_to_the_editable_source(finished: tuple[Any, Path]) -> None:
    server, run = finished
    source = "@startuml\nclass A {\n@enduml\n"
    view = DiagramView("Class diagram", "class_diagram", "classDiagram\n", source, RunStore(run))
    view.render_button.click()
    if load_uml() is None:
        assert "p2c_notebook.diagrams.plantuml" in view.result.value
    else:  # a PlantUML syntax error, or no Java here: either way a readable message
        assert "p2c-error" in view.result.value and "does not render" in view.result.value
    assert view.source.value == "@startuml\nclass A {\n@enduml\n"
    assert not (run / "planning/class_diagram.svg").exists()


def test_render_svg_saves_the_diagram_into_the_run_folder(finished: tuple[Any, Path]) -> None:
    uml = load_uml()
    if uml is None:
        pytest.skip("p2c_notebook.diagrams.plantuml is not available")
    try:
        uml.find_java()
        uml.find_jar()
    except Exception as exc:  # noqa: BLE001 - no Java / PlantUML here
        pytest.skip(str(exc))
    server, run = finished
    wt = open_walkthrough(server, run)
    view = next(c for c in wt.panel("design").content.children if "p2c-diagram-class-diagram" in c._dom_classes)
    # The Mermaid output carries the PlantUML drawing too, for front ends without Mermaid (VS Code, Colab).
    assert "<svg" in view.children[1].outputs[0]["data"]["image/svg+xml"]
    (run / "planning/class_diagram.svg").unlink()
    assert view.children[5].value == ""  # no second copy of the drawing until asked for
    view.children[4].click()  # Render SVG
    assert "<svg" in (run / "planning/class_diagram.svg").read_text()
    assert "data:image/svg+xml;base64," in view.children[5].value


def test_the_panels_diagrams_are_recorded_as_derived_and_judged_current_by_the_designs_hash(
    finished: tuple[Any, Path],
) -> None:
    uml = load_uml()
    if uml is None:
        pytest.skip("p2c_notebook.diagrams.plantuml is not available")
    try:
        uml.find_java()
        uml.find_jar()
    except Exception as exc:  # noqa: BLE001 - no Java / PlantUML here
        pytest.skip(str(exc))
    if uml.find_dot() is None:
        pytest.skip("Graphviz (dot) is not installed")
    server, run = finished
    wt = open_walkthrough(server, run)  # its design and logic panels draw the diagrams and the graph
    made = json.loads((run / "manifest.json").read_text())["derived"]
    design_hash = wt.pipeline.store.hash_of("design")
    for name in ("class_diagram", "sequence_diagram"):
        assert made[f"planning/{name}.svg"]["source_sha256"] == design_hash
    assert made["planning/dependencies.svg"]["source_sha256"] == wt.pipeline.store.hash_of("logic")
    svg = run / "planning/class_diagram.svg"
    os.utime(svg, (5, 5))  # far older than the design: by file times it would be drawn again
    now = time.time() + 60
    os.utime(run / "planning/design.json", (now, now))  # touched, not changed
    again = open_walkthrough(server, run)
    assert svg.stat().st_mtime == 5, "a touched design kept its diagram: not drawn again"
    design = json.loads(again.read("design"))
    again.edit("design", json.dumps({**design, "open_questions": ["which optimiser?"]}, indent=2))
    third = open_walkthrough(server, run)
    record = json.loads((run / "manifest.json").read_text())["derived"]["planning/class_diagram.svg"]
    assert record["source_sha256"] == third.pipeline.store.hash_of("design") != design_hash
    assert svg.stat().st_mtime != 5


def test_walkthrough_function_starts_then_reopens_a_run(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    server = serve(small_scenario())
    options = {"base_url": server.base_url, "api_key": API_KEY, "model": "gpt-4o-mini"}
    first = walkthrough(paper_md, tmp_path / "run", auto_approve=True, **options)
    assert first.auto_approve.value and first.run_dir == tmp_path / "run"
    first.run_stage("config", block=True)
    assert first.last_result is not None and first.last_result.state == "stopped"
    again = walkthrough(tmp_path / "run", **options)
    # Auto-approve approved what the run generated: the badges say so, and Approve has nothing left to do.
    assert list(again.panels) == PANELS[:4] and all(badge(again, a) == {"p2c-badge-approved"} for a in PANELS[:4])
    assert all(again.panel(a).approve_button.disabled for a in PANELS[:4])
    assert all(f in again.pending["analysis"].value for f in FILES)
    assert "toy.md" in again.header.value and API_KEY not in again.header.value
    # The run folder by its name; the full path only in the tooltip.
    assert f">{(tmp_path / 'run').name}</code>" in again.header.value
    assert f"title='{tmp_path / 'run'}'" in again.header.value


# --- the magics, in a real IPython shell -----------------------------------------------------------------
@pytest.fixture
def shell(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[InteractiveShell]:
    monkeypatch.chdir(tmp_path)
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "P2C_API_KEY", "P2C_BASE_URL", "P2C_MODEL", "P2C_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("P2C_CONFIG", str(tmp_path / "no-config.yaml"))
    with magics_shell() as ip:
        yield ip


def p2c(ip: InteractiveShell, line: str) -> None:
    ip.run_line_magic("p2c", line)


def test_magics_drive_a_run_end_to_end(
    shell: InteractiveShell, serve: Any, paper_md: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve(small_scenario())
    run = tmp_path / "run"
    errors: list[str] = []

    def output() -> str:
        captured = capsys.readouterr()
        errors.append(captured.err)
        return captured.out

    p2c(shell, f"use --base-url {server.base_url} --api-key {API_KEY} --model gpt-4o-mini")
    text = output()
    assert "key: set" in text and "gpt-4o-mini" in text
    p2c(shell, f"load {paper_md} --out {run}")
    assert "Next: `%p2c plan`" in output()
    p2c(shell, "plan")
    assert set(manifest(run)) == {"paper", "plan", "design", "logic", "config"}
    p2c(shell, "analyze --approve-each")
    assert "Paused: approve plan, design, logic, config first" in output()
    p2c(shell, "status")
    text = output()
    assert "config" in text and "generated" in text and "Next: `%p2c analyze`" in text
    p2c(shell, "approve planning")
    assert "approved config" in output() and manifest(run)["design"] == "approved"
    p2c(shell, "analyze --approve-each")
    p2c(shell, "code")
    assert "The repository is in" in output()
    p2c(shell, "show code/models/net.py")
    assert "class Net" in output()
    shell.run_cell_magic("p2c", "feedback code/main.py", "please add docstrings\n")
    assert "Regenerated code/main.py with your feedback" in output()
    assert "please add docstrings" in json.dumps(requests_for(server, "code", "main.py")[-1]["messages"])
    assert manifest(run)["code/main.py"] == "generated"
    assert not [e for e in errors if "p2c: error" in e or "Traceback" in e]
    assert API_KEY not in "".join(errors)


def test_magics_never_show_the_api_key(
    shell: InteractiveShell, serve: Any, paper_md: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve(small_scenario())
    p2c(shell, f"use --base-url {server.base_url} --api-key {API_KEY}")
    p2c(shell, f"load {paper_md} --name toy")
    p2c(shell, "run")
    p2c(shell, "status")
    p2c(shell, "use --model gpt-4o")  # reopens the run with the new settings
    p2c(shell, "use")
    p2c(shell, "use --base-url http://me:hunter2@proxy.invalid/v1")
    captured = capsys.readouterr()
    assert API_KEY not in captured.out + captured.err and "hunter2" not in captured.out + captured.err
    assert captured.out.count("key: set") == 4 and "http://***@proxy.invalid/v1" in captured.out
    assert (tmp_path / "runs/toy/repo/main.py").exists()
    assert API_KEY not in (tmp_path / "runs/toy/logs/run.log").read_text()


def test_magic_errors_are_one_line_without_traceback(
    shell: InteractiveShell,
    serve: Any,
    paper_md: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cases = [
        ("show plan", "No paper loaded"),
        ("frobnicate", "invalid choice"),
        ("load", "required: paper"),
        ('load "unclosed', "No closing quotation"),
        ("load a.pdf --name x --out y", "not allowed with argument"),
        ("use --max-tokens -5", "Invalid settings"),
        (f"load {tmp_path / 'missing.pdf'}", "missing.pdf"),
        ("feedback plan", "cell body"),
    ]
    for line, expected in cases:
        p2c(shell, line)
        captured = capsys.readouterr()
        assert captured.err.startswith("p2c: error: ") and expected in captured.err, (line, captured.err)
        assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    shell.run_cell_magic("p2c", "status", "a body")
    assert "only `%%p2c feedback ARTIFACT` takes a cell body" in capsys.readouterr().err
    p2c(shell, "status --verbose")
    assert "unrecognized arguments: --verbose" in capsys.readouterr().err
    server = serve(small_scenario(faults=[{"stage": "plan", "kind": "status", "status": 500, "times": None}]))
    monkeypatch.setenv("P2C_MAX_RETRIES", "0")
    p2c(shell, f"use --base-url {server.base_url} --api-key {API_KEY}")
    p2c(shell, f"load {paper_md} --out {tmp_path / 'run'}")
    capsys.readouterr()
    p2c(shell, "plan")
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("p2c: error: ") and "Traceback" not in err
    assert API_KEY not in err


def test_feedback_on_an_edited_artifact_asks_for_overwrite(
    shell: InteractiveShell, serve: Any, paper_md: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve(small_scenario())
    run = make_run(server, paper_md, tmp_path / "run")
    (run / "repo/main.py").write_text("print('mine')\n")
    p2c(shell, f"use --base-url {server.base_url} --api-key {API_KEY}")
    p2c(shell, f"load {run}")
    capsys.readouterr()
    shell.run_cell_magic("p2c", "feedback code/main.py", "use argparse")
    assert "--overwrite-edited" in capsys.readouterr().err
    assert (run / "repo/main.py").read_text() == "print('mine')\n"
    shell.run_cell_magic("p2c", "feedback code/main.py --overwrite-edited", "use argparse")
    assert "Regenerated code/main.py" in capsys.readouterr().out
    assert (run / "repo/main.py").read_text() == CODE["main.py"]


def test_show_renders_escaped_html(
    shell: InteractiveShell, serve: Any, paper_md: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario = small_scenario()
    scenario["responses"][0]["content"] = HOSTILE
    server = serve(scenario)
    run = make_run(server, paper_md, tmp_path / "run", until="plan")
    bundles: list[dict[str, Any]] = []
    monkeypatch.setattr(shell.display_pub, "publish", lambda data, *a, **k: bundles.append(data))
    p2c(shell, f"load {run}")
    p2c(shell, "show plan")
    html = bundles[-1]["text/html"]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script" not in html and "<img" not in html
    assert "<script>alert(1)</script>" in bundles[-1]["text/plain"]


def test_magics_in_widget_mode_use_the_walkthrough(
    shell: InteractiveShell, serve: Any, paper_md: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve(small_scenario())
    magics = magics_of(shell)
    magics.widgets = True  # as in a Jupyter kernel
    p2c(shell, f"use --base-url {server.base_url} --api-key {API_KEY}")
    p2c(shell, f"load {paper_md} --out {tmp_path / 'run'}")
    wt = magics.walkthrough
    assert wt is not None and list(wt.panels) == ["plan", "design", "logic", "config"]
    p2c(shell, "plan")
    assert "Stopped after config as asked." in capsys.readouterr().out
    assert all(badge(wt, a) == {"p2c-badge-generated"} for a in ("plan", "design", "logic", "config"))
    p2c(shell, "code --background")
    assert "Running in the background" in capsys.readouterr().out
    p2c(shell, "status")  # mid-run it shows the manifest as recorded
    result = wt.wait(timeout=30)
    assert result is not None and result.state == "done" and wt.panel("code/main.py").status == "generated"
    p2c(shell, "approve code")
    assert badge(wt, "code/main.py") == {"p2c-badge-approved"}
    p2c(shell, "cancel")
    assert "Nothing is running." in capsys.readouterr().out


@pytest.mark.skipif(
    not hasattr(p2c_notebook, "load_ipython_extension"), reason="p2c_notebook/__init__.py does not export the hook yet"
)
def test_load_ext_p2c_notebook(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: Any) -> None:
    monkeypatch.chdir(tmp_path)
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "p2c_notebook")
    try:
        ip.run_line_magic("p2c", "help")
        assert "%p2c load PAPER" in capsys.readouterr().out
    finally:
        ip.run_line_magic("unload_ext", "p2c_notebook")


# --- in a real Jupyter kernel ----------------------------------------------------------------------------
@pytest.mark.slow
def test_notebook_runs_the_magics_in_a_kernel(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    server = serve(small_scenario())
    cells = [
        "%load_ext p2c_notebook.ui.magics",
        f"%p2c use --base-url {server.base_url} --api-key {API_KEY}",
        f"%p2c load {paper_md} --out run",
        "%p2c plan",
        "%p2c approve planning\n%p2c run",
        "wt = get_ipython().magics_manager.registry['P2CMagics'].walkthrough\n"
        "print(sorted({p.status for p in wt.panels.values()}), wt.last_error)",
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbclient.NotebookClient(notebook, timeout=120, resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells for o in cell.outputs]
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
    assert "['approved', 'generated'] None" in "".join(o.get("text", "") for o in outputs)
    assert API_KEY not in json.dumps(outputs)
    assert (tmp_path / "run/repo/main.py").read_text() == CODE["main.py"]


def test_the_stream_header_names_every_call_in_flight(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    server = serve(small_scenario(latency=0.2))
    run = make_run(server, paper_md, tmp_path / "run", until="config")
    wt = open_walkthrough(server, run, concurrency=len(FILES))
    headers: list[str] = []
    wt.pipeline.bus.subscribe(lambda e: headers.append(wt.stream.value) if isinstance(e, StageStarted) else None)
    wt.run(require_approval=False, block=True)  # the analyses all start at once
    assert wt.last_error is None
    assert any(f"{len(FILES)} in flight: analysis/" in h for h in headers), headers[-3:]


# --- idempotent cells: what the widget already did is reported, not an error -----------------------------------
def test_cells_after_the_same_steps_in_the_widget_report_them_done(finished: tuple[Any, Path]) -> None:
    """The exercise done in the widget (edit, Re-run stale, Regenerate with feedback), then its cells run: every
    cell reports what is already done, sends nothing and raises nothing."""
    server, run = finished
    wt = open_walkthrough(server, run)
    wt.auto_approve.value = True
    corrected = "lr: 0.05\nepochs: 3\n"
    config = wt.panel("config")
    config.edit_button.click()
    config.editor.value = corrected
    config.save_button.click()
    assert "Now stale" in config.message.value
    wt.stale_button.click()
    wt.wait()
    assert wt.last_error is None and all(r.status != "stale" for r in wt.pipeline.rows())
    feedback = "Name the entry point's function main."
    code = wt.panel("code/main.py")
    code.ensure_controls()
    code.feedback.value = feedback
    code.regenerate_button.click()
    wt.wait()
    assert wt.last_error is None
    asked = len(server.requests)
    manifest_before = manifest(run)

    assert wt.edit("config", corrected) == []  # the cells of the exercise, as written in the notebook
    assert "already holds this text" in wt.status_line.value
    assert wt.rerun_stale(block=True) == "Nothing is stale: every artifact is up to date (already re-run)."
    assert wt.last_error is None and wt.last_result is not None and wt.last_result.state == "done"
    assert "already regenerated with this feedback" in str(wt.regenerate("code/main.py", feedback, block=True))
    assert str(wt.run(until="config", block=True)).startswith("Already done: everything up to the config.yaml")
    assert str(wt.run(block=True)).startswith("Already done: every artifact is generated and up to date")
    assert "Nothing left to do" in str(wt.run_stage(block=True))
    assert wt.last_error is None
    assert len(server.requests) == asked and manifest(run) == manifest_before
    assert manifest(run)["config"] == "edited"

    # Different feedback is a new request, and asked for.
    assert wt.regenerate("code/main.py", "Also print the loss.", block=True) is None
    assert wt.last_error is None and len(server.requests) == asked + 1
    wt.close()


def test_a_blocking_cell_waits_for_the_job_a_click_started(finished: tuple[Any, Path]) -> None:
    server, run = finished
    wt = open_walkthrough(server, run)
    wt.regenerate("plan")  # a click: the job runs in the background
    wt.rerun_stale(block=True)  # the next cell: waits, then re-runs what the new plan made stale
    assert wt.last_error is None, wt.last_error
    assert all(r.status != "stale" for r in wt.pipeline.rows())
    wt.close()


def test_a_replay_miss_in_the_widget_is_a_paragraph_for_a_student(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    server = serve(small_scenario())
    cassette = tmp_path / "c.jsonl"
    run = make_run(server, paper_md, tmp_path / "run", record=str(cassette))
    server.stop()
    wt = Walkthrough(Pipeline.open(run, settings=Settings(backend=f"replay:{cassette}")))
    panel = wt.panel("config")
    panel.ensure_controls()
    panel.feedback.value = "My own words: use a learning rate of 0.3."
    panel.regenerate_button.click()
    wt.wait()
    shown = wt.status_line.value + panel.message.value
    assert "Only the notebook&#x27;s own text was recorded" in shown or "Only the notebook's own text" in shown
    assert "clear the feedback box" in shown and "SETTINGS = " in shown and "%p2c use --backend openai" in shown
    assert "…" not in wt.status_line.value  # the whole paragraph, not cut
    wt.close()


def test_a_notebook_run_again_after_its_later_edit_reports_done_and_sends_nothing(finished: tuple[Any, Path]) -> None:
    """The workshop notebook run twice on one run folder: its last cells regenerated a file with feedback and then
    edited the config (all analysis and code stale). Run again from the top, the cell that generates what is missing
    and the feedback cell report what is done; nothing is regenerated and no request is sent."""
    server, run = finished
    wt = open_walkthrough(server, run)
    feedback = "Name the entry point's function main."
    assert wt.regenerate("code/main.py", feedback, block=True) is None and wt.last_error is None
    stale = wt.edit("config", "lr: 0.05\nepochs: 3\n")
    assert "code/main.py" in stale
    asked, before = len(server.requests), manifest(run)

    again = open_walkthrough(server, run)  # the kernel restarted: a new widget over the same folder
    done = str(again.run(block=True, missing_only=True))
    assert done.startswith("Already generated: everything up to the") and f"{len(stale)} artifact(s) are stale" in done
    shown = str(again.regenerate("code/main.py", feedback, block=True))
    assert "already regenerated with this feedback" in shown and "stale since" in shown
    assert again.last_error is None and len(server.requests) == asked and manifest(run) == before
    # Without missing_only, a run regenerates what is stale: the notice is not a blanket "done".
    again.auto_approve.value = True
    assert again.run(block=True) is None and again.last_error is None and len(server.requests) > asked
    assert "stale" not in manifest(run).values()
    wt.close()
    again.close()


def test_an_evaluation_cell_run_again_pays_for_nothing_until_the_code_changes(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    verdict = {"components": ["linear model"], "critique_list": [], "score": 4}
    scenario = small_scenario()
    scenario["responses"] = [{"stage": "judge", "json": verdict}, *scenario["responses"]]
    server = serve(scenario)
    run = make_run(server, paper_md, tmp_path / "run")
    wt = open_walkthrough(server, run)
    judged = lambda: [r for r in server.requests if r["stage"] == "judge"]  # noqa: E731
    assert wt.evaluate(2, block=True) is None and wt.last_error is None and len(judged()) == 2
    assert str(wt.evaluate(2, block=True)).startswith("Already evaluated, and the code has not changed since: 4.00")
    assert len(judged()) == 2
    assert wt.evaluate(1, block=True) is None and len(judged()) == 3  # another number of samples is a new question
    wt._evaluate_clicked(1, None)  # the button always judges again
    wt.wait()
    assert len(judged()) == 4
    (run / "repo" / "main.py").write_text("print('changed by hand')\n", encoding="utf-8")
    assert wt.evaluate(1, block=True) is None and len(judged()) == 5  # the code changed: judged again
    wt.close()


def test_the_widget_is_displayed_after_its_static_snapshot(finished: tuple[Any, Path]) -> None:
    """Two outputs: the snapshot (text/html, marked so the live widget's style sheet hides it), then the widget view
    with one line of text. A front end without the widget's model shows the first; JupyterLab's "model not found"
    in the second is hidden by the first's rule."""
    from IPython.core.formatters import DisplayFormatter

    server, run = finished
    wt = open_walkthrough(server, run)
    shown: list[dict[str, Any]] = []
    shell = InteractiveShell.instance()
    publish = shell.display_pub.publish
    shell.display_pub.publish = lambda data, *args, **kwargs: shown.append(data)  # type: ignore[method-assign]
    try:
        shell.displayhook.shell = shell
        formatted, _ = DisplayFormatter(parent=shell).format(wt)  # what `w` as a cell's last line does
    finally:
        shell.display_pub.publish = publish  # type: ignore[method-assign]
    assert formatted == {}  # displayed by _ipython_display_, not as one bundle
    assert len(shown) == 2 and set(shown[0]) == {"text/html", "text/plain"}
    snapshot, view = shown
    assert f"p2c-fallback {wt.fallback_id}" in snapshot["text/html"] and "<svg" not in snapshot["text/plain"]
    assert "p2c-stepper" in snapshot["text/html"] and "jupyter-widgets" in snapshot["text/html"]
    assert set(view) == {"application/vnd.jupyter.widget-view+json", "text/plain"} and "kernel" in view["text/plain"]
    assert view["application/vnd.jupyter.widget-view+json"]["model_id"] == wt.widget.model_id
    assert f".jp-OutputArea-child:has(.{wt.fallback_id})" in wt.style.value  # the live widget hides its snapshot
    assert wt.fallback_id not in snapshot["text/html"].split("</style>", 1)[0]  # ... and only the widget does
    wt.close()


def test_a_blocking_call_redraws_the_displayed_snapshot_and_progress_views_are_not_redrawn(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    """nbclient (and JupyterLab within the displaying cell) applies `update_display`: the saved snapshot then shows
    the run as the cells left it. The magics' progress views keep their own one line."""
    server = serve(small_scenario())
    run = make_run(server, paper_md, tmp_path / "run", until="config")
    wt = open_walkthrough(server, run)
    wt.auto_approve.value = True
    sent: list[tuple[dict[str, Any], dict[str, Any]]] = []
    shell = InteractiveShell.instance()
    publish = shell.display_pub.publish
    shell.display_pub.publish = lambda data, *args, **kwargs: sent.append((data, kwargs))  # type: ignore[method-assign]
    try:
        wt._ipython_display_()
        wt.progress_output()._ipython_display_()
        assert wt.run(block=True) is None and wt.last_error is None
    finally:
        shell.display_pub.publish = publish  # type: ignore[method-assign]
    (snapshot, first), _, (progress, shown), _, *updates = sent  # a slow run also redraws while it goes
    redrawn, update = updates[-1]
    assert first["transient"] == {"display_id": wt.fallback_id} and not first.get("update")
    assert "display_id" not in (shown.get("transient") or {}) and "p2c-static-progress" in progress["text/html"]
    assert update["update"] and update["transient"] == {"display_id": wt.fallback_id}
    complete = re.compile(r"p2c-badge-complete'>(\d+)/\1 files")  # the repository panel's badge
    assert not complete.search(snapshot["text/html"]) and complete.search(redrawn["text/html"])
    wt.close()
