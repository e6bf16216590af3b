"""The batch in a notebook: the live view fed by a real batch's events (no browser), and the summary notebook."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nbformat
import pytest
from conftest import settings_for, small_scenario
from test_batch import write_papers

from p2c_notebook.run.batch import SUMMARY_NOTEBOOK, BatchOptions, PaperStarted, run_batch
from p2c_notebook.run.events import Event
from p2c_notebook.ui.batchview import BatchView, chart_svg, read_summary, show_summary


def test_the_live_view_follows_a_batch_paper_by_paper(serve: Any, tmp_path: Path) -> None:
    server = serve(small_scenario())
    folder = tmp_path / "papers"
    write_papers(folder, 2)
    (folder / "<b>empty.md").write_text("", encoding="utf-8")  # fails: no text; its name must come out escaped
    view = BatchView()
    seen_running: list[str] = []

    def after_view(event: Event) -> None:  # subscribed after the view: sees what the view shows at that moment
        if isinstance(event, PaperStarted):
            seen_running.append(view.html())

    options = BatchOptions(out=tmp_path / "out", settings=settings_for(server), concurrency=1)
    result = run_batch(folder, options, sinks=(view, after_view))

    assert seen_running and all("running" in page for page in seen_running)
    assert (view.bar.value, view.bar.max) == (3, 3) and view.finished
    page = view.table.value
    assert page == view.html() and "3 of 3 papers over" in page
    for paper in result.papers:
        row = view.papers[paper.name]
        assert row.state.startswith(paper.state) and row.calls == paper.calls
    assert "&lt;b&gt;empty" in page and "<b>empty" not in page
    assert page.count(">done<") == 2 and ">failed" in page


def test_a_rerun_shows_the_kept_papers_as_kept(serve: Any, tmp_path: Path) -> None:
    server = serve(small_scenario())
    write_papers(tmp_path / "papers", 2)
    options = BatchOptions(out=tmp_path / "out", settings=settings_for(server), concurrency=2)
    run_batch(tmp_path / "papers", options)
    view = BatchView()
    run_batch(tmp_path / "papers", options, sinks=(view,))
    assert [p.state for p in view.papers.values()] == ["done (kept)", "done (kept)"]


def test_charts_draw_a_bar_per_paper_and_none_for_an_empty_cell() -> None:
    rows = [
        {"paper": "a<x>", "calls": "10", "score": "4.00"},
        {"paper": "b", "calls": "5", "score": ""},
        {"paper": "total", "calls": "15", "score": "4.00"},
    ]
    calls, score = chart_svg(rows, "calls", "calls"), chart_svg(rows, "score", "score")
    assert calls.count("<rect") == 2 and score.count("<rect") == 1
    assert "a&lt;x&gt;" in calls and "total" not in calls
    widths = [float(part.split("'")[0]) for part in calls.split("width='")[2:]]
    assert widths[0] == pytest.approx(2 * widths[1])  # bars in proportion


@pytest.mark.slow
def test_the_batch_folder_has_a_summary_notebook_that_runs_offline(serve: Any, tmp_path: Path) -> None:
    from nbclient import NotebookClient

    server = serve(small_scenario())
    write_papers(tmp_path / "papers", 2)
    out = tmp_path / "out"
    run_batch(tmp_path / "papers", BatchOptions(out=out, settings=settings_for(server), concurrency=2))
    server.stop()  # the notebook reads summary.csv only

    notebook = nbformat.read(out / SUMMARY_NOTEBOOK, as_version=4)  # type: ignore[no-untyped-call]
    nbformat.validate(notebook)
    NotebookClient(notebook, timeout=120, resources={"metadata": {"path": str(out)}}).execute()

    shown = [o["data"]["text/html"] for c in notebook.cells if c.cell_type == "code" for o in c.outputs if "data" in o]
    assert len(shown) == 1 and shown[0].count("<svg") >= 8
    assert shown[0] == show_summary(out)._repr_html_()
    assert [r["paper"] for r in read_summary(out)] == ["paper0", "paper1", "total"]
    assert json.loads((out / SUMMARY_NOTEBOOK).read_text(encoding="utf-8"))["cells"][1]["outputs"] == []
