"""What the generated code is worth, and what the model reads, in the walkthrough: the static checks (a badge and
a file:line list per code file, a repository summary), the Evaluate panel (the judge over HTTP, scripted), and
the Paper panel (sections with tokens, the appendix, what was left out, the figures); widget and static view.

Widgets are driven as a person drives them (`button.click()`, typing) and checked against the run folder.
"""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path
from typing import Any

import ipywidgets
import pymupdf
from conftest import CODE, settings_for, small_scenario
from pdfpages import BOLD, PROSE, PdfPage, box_diagram

from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.settings import Settings
from p2c_notebook.ui import Walkthrough
from p2c_notebook.ui.quality import anchor_id

#: main.py without its import of Net: `Net` is undefined at line 3 (the repair re-ask gets the same reply).
UNDEFINED = "from data import load\n\nprint(Net().forward(load()))\n"
HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)>"
NOWHERE = Settings.model_validate({"model": "gpt-4o-mini", "api_key": "sk-test", "base_url": "http://127.0.0.1:9"})
NO_MARKUP = re.compile(r"<script|<[^>]*\son\w+\s*=|<[^>]*javascript:", re.I)  # in a tag, not in text


def verdict(score: int, *critiques: tuple[str, str, list[str]]) -> dict[str, Any]:
    return {
        "components": ["linear model", "SGD with learning rate 0.1"],
        "critique_list": [
            {"component": c, "severity": s, "files": f, "critique": f"{c} is not as the paper says"}
            for c, s, f in critiques
        ],
        "score": score,
    }


def finished_run(serve: Any, paper: Path, run: Path, *first: dict[str, Any], **overrides: Any) -> Any:
    """A finished run of the three-file scenario; `first` replies answer before the scenario's own."""
    scenario = small_scenario(**overrides)
    scenario["responses"] = [*first, *scenario["responses"]]
    server = serve(scenario)
    with Pipeline.start(paper, run, settings=settings_for(server)) as pipeline:
        assert pipeline.run().state == "done"
    server.reset()  # from here on the recorded requests are the widget's
    return server


def open_walkthrough(server: Any, run: Path) -> Walkthrough:
    return Walkthrough(Pipeline.open(run, settings=settings_for(server)))


def judge_requests(server: Any) -> list[Any]:
    return [r for r in server.requests if r["stage"] == "judge"]


def panel_of(page: str, slug: str) -> str:
    """One panel of the static view (a <details> for a code file)."""
    match = re.search(rf"<details class='p2c-panel p2c-panel-{slug} .*?</details>", page, re.S)
    assert match, slug
    return match.group(0)


# --- static checks -------------------------------------------------------------------------------------------
def test_each_code_panel_shows_a_checks_badge_and_its_violations_at_file_line(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    code_reply = {"stage": "code", "file": "main.py", "content": f"```python\n{UNDEFINED}```"}
    repaired = {"stage": "code", "file": "data.py", "attempt": 2, "content": f"```python\n{CODE['data.py']}```"}
    broken = {
        "stage": "code",
        "file": "data.py",
        "content": f"```python\n{CODE['data.py'].replace('Data()', 'Dta()')}```",
    }
    server = finished_run(serve, paper_md, tmp_path / "run", code_reply, repaired, broken)
    wt = open_walkthrough(server, tmp_path / "run")

    main = wt.panel("code/main.py").checks.value
    assert "p2c-badge-problems" in main and "1 problem<" in main
    assert re.search(r"<code class='p2c-location'>main\.py:3</code>.*Net.*\[undefined-name\].*error", main)
    assert f"id='{anchor_id(tmp_path / 'run', 'main.py')}'" in main  # where the critique links land
    data = wt.panel("code/data.py").checks.value
    assert "p2c-badge-clean" in data and "p2c-violation" not in data
    net = wt.panel("code/models/net.py").checks.value  # `load` imported, never used: a warning, not a problem
    assert "p2c-badge-warnings'>1 warning<" in net and "p2c-badge-problems" not in net
    assert re.search(r"p2c-violation-warning'><code class='p2c-location'>models/net\.py:1</code>.*\[lint\]", net)
    assert "p2c-badge" not in wt.panel("code/config.yaml").checks.value  # only Python is checked
    assert wt.panel("plan").checks.value == ""
    summary = wt.repo_panel.checks.value
    assert "Static checks: 1 problem(s) remain in 1 file(s)" in summary
    assert f"href='#{anchor_id(tmp_path / 'run', 'main.py')}'" in summary
    # data.py was repaired by its re-ask and main.py's came back unchanged: both cost a re-ask, both are counted
    assert "repair re-asked 2 files:" in summary

    page = wt.static_html()
    closed = panel_of(page, "code-main-py")
    head = closed[: closed.index("</summary>")]
    assert "p2c-badge-problems" in head and f"id='{anchor_id(tmp_path / 'run', 'main.py')}'" in head
    assert "main.py:3" in closed and "[undefined-name]" in closed
    assert "p2c-badge-clean" in panel_of(page, "code-data-py")
    assert "1 problem(s) remain" in page


def test_a_file_fixed_on_disk_has_its_checks_recomputed_like_p2c_check(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    code_reply = {"stage": "code", "file": "main.py", "content": f"```python\n{UNDEFINED}```"}
    run = tmp_path / "run"
    server = finished_run(serve, paper_md, run, code_reply)
    wt = open_walkthrough(server, run)
    assert "p2c-badge-problems" in wt.panel("code/main.py").checks.value

    (run / "repo" / "main.py").write_text(CODE["main.py"], encoding="utf-8")  # the import added by hand
    wt.refresh_button.click()

    assert "p2c-badge-clean" in wt.panel("code/main.py").checks.value
    assert "no problems in" in wt.repo_panel.checks.value
    recorded = json.loads((run / "checks.json").read_text())
    assert recorded["errors"] == 0 and recorded["files"]["main.py"]["violations"] == []

    wt.edit("code/main.py", UNDEFINED.replace("print", "\nprint"))  # an edit in the widget: line 4 now
    assert "main.py:4" in wt.panel("code/main.py").checks.value


# --- evaluation ----------------------------------------------------------------------------------------------
def test_evaluate_runs_n_samples_on_click_and_shows_score_critiques_and_links(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    judge = {
        "stage": "judge",
        "replies": [
            {"json": verdict(4, ("learning rate", "high", ["main.py", "./models/net.py", "missing.py"]))},
            {"json": verdict(2, ("learning rate", "medium", ["main.py"]), ("epochs", "low", []))},
            {"json": verdict(3)},
        ],
    }
    run = tmp_path / "run"
    server = finished_run(serve, paper_md, run, judge)
    wt = open_walkthrough(server, run)
    panel = wt.quality.eval_panel
    wt.refresh()
    assert judge_requests(server) == []  # opening and redrawing never judge
    assert "p2c-badge-missing" in panel.head.value and "Not evaluated yet" in panel.body.value
    assert not panel.evaluate_button.disabled and panel.cancel_button.disabled

    panel.samples.value = 3
    panel.evaluate_button.click()
    wt.wait(timeout=60)

    assert wt.last_error is None, wt.last_error
    assert len(judge_requests(server)) == 3
    assert panel.progress.value == 3 and panel.progress.description == "3/3"
    assert "p2c-badge-current" in panel.head.value
    body = panel.body.value
    assert "<span class='p2c-score'>3.00</span> / 5" in body and "3 of 3 samples valid" in body
    assert "min 2, max 4" in body and "reference-free" in body
    high = re.search(r"<tr class='p2c-critique p2c-critique-high'>.*?</tr>", body, re.S)
    assert high and "learning rate" in high.group(0) and "2/3" in high.group(0)
    for path in ("main.py", "models/net.py"):  # links to the code panels, whose checks carry the anchor
        anchor = anchor_id(run, path)
        assert f"href='#{anchor}'" in high.group(0) and f"id='{anchor}'" in wt.panel(f"code/{path}").checks.value
    assert "p2c-unknown-file" in high.group(0) and "missing.py" in high.group(0)  # named, not linked
    assert "p2c-critique-low" in body and "Judging: 3 calls" in body
    assert "Evaluated: 3.00 / 5" in wt.status_line.value

    static = wt.static_html()
    assert "p2c-panel-eval" in static and "<span class='p2c-score'>3.00</span>" in static

    # The code changes: the result is kept, marked stale, and says how to refresh it.
    wt.edit("code/data.py", CODE["data.py"] + "\n\nSCALE = 2\n")
    assert "p2c-badge-stale" in panel.head.value and "The code changed since it was judged" in panel.body.value
    assert len(judge_requests(server)) == 3


def test_evaluate_is_cancellable_and_keeps_the_earlier_result_untouched(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    finished_run(serve, paper_md, run)
    slow = small_scenario(token_latency=0.05)  # a judge reply streams for seconds: Cancel lands mid-sample
    slow["responses"] = [{"stage": "judge", "json": verdict(5)}, *slow["responses"]]
    server = serve(slow)
    wt = Walkthrough(Pipeline.open(run, settings=settings_for(server, concurrency=1)))
    panel = wt.quality.eval_panel
    panel.samples.value = 4
    panel.evaluate_button.click()
    deadline = time.monotonic() + 10
    while not judge_requests(server) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert judge_requests(server), wt.status_line.value
    assert wt.busy and not panel.cancel_button.disabled and panel.evaluate_button.disabled
    panel.cancel_button.click()
    wt.wait(timeout=60)

    assert not wt.busy and wt.last_error is None and "Cancelled" in wt.status_line.value
    assert len(judge_requests(server)) < 4
    assert not (run / "eval" / "summary.json").exists() and "p2c-badge-missing" in panel.head.value
    assert not panel.evaluate_button.disabled and panel.cancel_button.disabled


def test_judge_text_is_escaped_in_the_panel_and_the_static_view(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    hostile = verdict(1, (f"optimizer {HOSTILE}", "high", [f"main.py{HOSTILE}", "javascript:alert(3)"]))
    run = tmp_path / "run"
    server = finished_run(serve, paper_md, run, {"stage": "judge", "json": hostile})
    wt = open_walkthrough(server, run)
    wt.evaluate(1, block=True)
    assert wt.last_error is None, wt.last_error
    for html in (wt.quality.eval_panel.body.value, wt.static_html()):
        assert "optimizer &lt;script&gt;" in html and not NO_MARKUP.search(html)
        assert "href='javascript" not in html and 'href="javascript' not in html


def test_an_evaluation_that_cannot_start_says_why_in_the_panel(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    server = finished_run(serve, paper_md, run)
    wt = open_walkthrough(server, run)
    panel = wt.quality.eval_panel
    panel.reference.value = str(tmp_path / "no-such-reference")
    panel.samples.value = 2
    panel.evaluate_button.click()
    wt.wait(timeout=30)
    assert "does not exist" in panel.message.value and "p2c-error" in panel.message.value
    assert "does not exist" in (wt.last_error or "") and judge_requests(server) == []


# --- the paper -----------------------------------------------------------------------------------------------
def figure_paper(path: Path, hostile: str) -> None:
    """One page: two numbered sections (one heading hostile), a box diagram with its caption, references and an
    appendix section."""
    doc = pymupdf.open()
    page = PdfPage(doc)
    page.line("Routing Attention", size=18, font=BOLD)
    page.y += 8
    page.line("Abstract", size=12, font=BOLD)
    page.paragraph("We study attention. " + PROSE)
    page.y += 8
    page.line("1 Introduction", size=12, font=BOLD)
    page.paragraph("First paragraph. " + PROSE)
    top = page.y + 14
    box_diagram(page.page, top, ("Tokenizer", "Embedder", "Classifier"))
    page.y = top + 56
    page.line(f"Figure 1: The pipeline {hostile}.")
    page.paragraph("Second paragraph. " + PROSE)
    page.y += 8
    page.line(f"2 Method {hostile}", size=12, font=BOLD)
    page.paragraph("The method. " + PROSE * 2)
    page.y += 8
    page.line("References", size=12, font=BOLD)
    page.paragraph("[1] A. Author. A paper. 2020.")
    page.y += 8
    page.line("A Proofs", size=12, font=BOLD)
    page.paragraph("The appendix proof. " + PROSE * 2)
    page.done()
    doc.save(path)


def test_the_paper_panel_lists_sections_with_tokens_the_appendix_and_the_figures(tmp_path: Path) -> None:
    figure_paper(tmp_path / "paper.pdf", HOSTILE)
    settings = NOWHERE  # reading the paper makes no call
    wt = Walkthrough(Pipeline.start(tmp_path / "paper.pdf", tmp_path / "run", settings=settings))
    children = list(wt.widget.children)
    assert children.index(wt.paper_panel.widget) < children.index(wt.panel_box)  # before the plan

    body = wt.paper_panel.body.value
    assert re.search(r"~[\d,]+ tokens", wt.paper_panel.head.value)
    rows = re.findall(r"<tr class='(p2c-section[^']*)'><td class='p2c-section-title'>(.*?)</td><td[^>]*>~(\d+)", body)
    assert [title for _, title, _ in rows][0] == "1 Introduction"
    assert all(int(tokens) > 0 for _, _, tokens in rows)
    appendix = [title for classes, title, _ in rows if "p2c-section-appendix" in classes]
    assert appendix == ["A Proofs"] and "p2c-badge-appendix" in body
    assert "Method &lt;script&gt;" in body and "references (page 1)" in body  # what the reader dropped
    figure = re.search(r"<figure class='p2c-figure'><img alt='Figure 1' src='data:image/png;base64,([^']+)'>", body)
    assert figure and base64.b64decode(figure.group(1)).startswith(b"\x89PNG")
    assert (tmp_path / "run" / "paper" / "figures" / "fig1.png").read_bytes() == base64.b64decode(figure.group(1))
    assert "The pipeline &lt;script&gt;" in body and not NO_MARKUP.search(body)

    static = wt.static_html()
    assert "p2c-panel-paper" in static and static.index("p2c-panel-paper") < static.index("p2c-panel-plan")
    assert figure.group(1) in static and not NO_MARKUP.search(static)


def test_sections_left_out_in_the_panel_are_shown_dimmed_with_the_reason(tmp_path: Path) -> None:
    figure_paper(tmp_path / "paper.pdf", "")
    wt = Walkthrough(Pipeline.start(tmp_path / "paper.pdf", tmp_path / "run", settings=NOWHERE))
    panel = wt.paper_panel
    assert "p2c-section-left-out" not in panel.body.value and panel.exclude.value == ""

    panel.exclude.value = "2*"
    panel.apply_button.click()
    body = panel.body.value
    left = re.findall(r"<tr class='[^']*p2c-section-left-out[^']*'><td class='p2c-section-title'>(.*?)</td>", body)
    assert left == ["2 Method"] and "excluded by your choice" in body and "<code>2*</code>" in body
    assert "Sections the model will see (2 of 3)" in body and "left out" in panel.message.value
    meta = json.loads((tmp_path / "run" / "manifest.json").read_text())["paper"]
    assert meta["exclude"] == ["2*"]  # part of the run's inputs
    assert "Method" not in (tmp_path / "run" / "paper" / "paper.md").read_text()

    panel.exclude.value = "Discussion"  # names no section: refused, nothing changes
    panel.apply_button.click()
    assert "names no section" in panel.message.value and "p2c-error" in panel.message.value
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["paper"]["exclude"] == ["2*"]

    panel.exclude.value = ""
    panel.apply_button.click()
    assert "p2c-section-left-out" not in panel.body.value and "Every section" in panel.message.value


def test_a_figure_path_outside_paper_figures_is_never_inlined(tmp_path: Path) -> None:
    figure_paper(tmp_path / "paper.pdf", "")
    run = tmp_path / "run"
    Pipeline.start(tmp_path / "paper.pdf", run, settings=NOWHERE).close()
    saved = json.loads((run / "paper" / "paper.json").read_text())
    saved["captions"][0]["image"] = "../manifest.json"
    (run / "paper" / "source.json").write_text(json.dumps(saved))
    (run / "paper" / "paper.json").write_text(json.dumps(saved))
    wt = Walkthrough(Pipeline.open(run, settings=NOWHERE))
    body = wt.paper_panel.body.value
    assert "<img" not in body and "Other captions (1)" in body and "Figure 1" in body
    assert isinstance(wt.paper_panel.widget, ipywidgets.VBox)
