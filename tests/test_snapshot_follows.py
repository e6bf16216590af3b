"""The static snapshot follows the run: a notebook saved or exported after later cells shows their result.

The walkthrough's snapshot output is displayed under a display id and redrawn (`update_display`) as the run
changes: coalesced while a job runs (at most one per interval, from a timer thread), once more when a job or a call
from a cell ends (on the calling thread, so nbclient, which applies only the messages of the cell it executes,
saves the final state), and never with an unchanged snapshot.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import API_KEY, CODE, ROOT, settings_for, small_scenario, use_server
from IPython.core.interactiveshell import InteractiveShell

from p2c_notebook.run.events import ArtifactSaved, Event
from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.ui import Walkthrough, fallback

HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)>"
COMPLETE = re.compile(r"p2c-badge-complete'>(\d+)/\1 files")  # the repository panel's badge, all files made
ACTIVE = re.compile(r"<script|<img|<[^>]*\son\w+\s*=|<[^>]*javascript:", re.I)


class Sent:
    """What the shell published: (bundle, keyword arguments, thread name, time)."""

    def __init__(self) -> None:
        self.items: list[tuple[dict[str, Any], dict[str, Any], str, float]] = []

    def updates(self, display_id: str) -> list[tuple[dict[str, Any], str, float]]:
        return [
            (data, thread, when)
            for data, kwargs, thread, when in self.items
            if kwargs.get("update") and (kwargs.get("transient") or {}).get("display_id") == display_id
        ]


@pytest.fixture
def sent() -> Iterator[Sent]:
    """The in-process IPython shell's display messages, from any thread (the kernel would send them on IOPub)."""
    record = Sent()
    shell = InteractiveShell.instance()
    publish = shell.display_pub.publish

    def capture(data: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        record.items.append((data, kwargs, threading.current_thread().name, time.monotonic()))

    shell.display_pub.publish = capture  # type: ignore[method-assign]
    try:
        yield record
    finally:
        shell.display_pub.publish = publish  # type: ignore[method-assign]


def test_a_run_of_many_saves_redraws_the_snapshot_a_few_times_and_ends_on_its_final_state(
    serve: Any, paper_md: Path, tmp_path: Path, sent: Sent
) -> None:
    server = serve(small_scenario(latency=0.4))  # ten calls: the run takes a few seconds
    wt = Walkthrough(Pipeline.start(paper_md, tmp_path / "run", settings=settings_for(server)), auto_approve=True)
    saves: list[Event] = []
    wt.pipeline.bus.subscribe(lambda e: saves.append(e) if isinstance(e, ArtifactSaved) else None)
    wt._ipython_display_()
    shown = time.monotonic()
    assert wt.run(block=True) is None and wt.last_error is None
    ended = time.monotonic()
    updates = sent.updates(wt.fallback_id)
    assert len(saves) >= 10 and 2 <= len(updates) <= (ended - shown) / fallback.FOLLOW_INTERVAL + 2
    times = [shown, *(when for _, _, when in updates)]
    gaps = [b - a for a, b in zip(times, times[1:-1], strict=False)]  # the last one is the end's, sent at once
    assert all(gap >= fallback.FOLLOW_INTERVAL * 0.9 for gap in gaps), gaps
    assert any(thread == "p2c-snapshot" for _, thread, _ in updates[:-1])  # it followed while the run went on
    final, thread, when = updates[-1]
    assert thread == threading.current_thread().name and when <= ended  # from the waiting cell, before it ended
    assert COMPLETE.search(final["text/html"]) and not COMPLETE.search(updates[0][0]["text/html"])
    assert f"p2c-fallback {wt.fallback_id}" in final["text/html"]  # still hidden by the live widget's rule
    assert "code done" in final["text/plain"] and "VBox(" not in final["text/plain"]
    time.sleep(fallback.FOLLOW_INTERVAL * 1.5)
    assert len(sent.updates(wt.fallback_id)) == len(updates)  # nothing changed since: nothing more is sent
    wt.refresh()  # re-read from disk: unchanged, nothing sent
    assert len(sent.updates(wt.fallback_id)) == len(updates)
    assert all(API_KEY not in str(data) for data, _, _, _ in sent.items)
    wt.close()
    wt.pipeline.close()


def test_calls_from_cells_redraw_the_snapshot_at_once_and_a_walkthrough_never_displayed_sends_nothing(
    serve: Any, paper_md: Path, tmp_path: Path, sent: Sent
) -> None:
    server = serve(small_scenario())
    run = tmp_path / "run"
    with Pipeline.start(paper_md, run, settings=settings_for(server)) as pipeline:
        assert pipeline.run().state == "done"
    hidden = Walkthrough(Pipeline.open(run, settings=settings_for(server)))
    config = hidden.read("config")
    hidden.edit("config", config.replace("lr: 0.1", "lr: 0.2"))
    assert sent.items == []  # library use, no notebook: no display, no update
    hidden.close()

    wt = Walkthrough(Pipeline.open(run, settings=settings_for(server)))
    wt._ipython_display_()
    before = len(sent.items)
    wt.edit("config", config.replace("lr: 0.1", "lr: 0.05"))  # within the interval of the display: still at once
    (edited, thread, _), *more = sent.updates(wt.fallback_id)
    assert not more and thread == threading.current_thread().name and len(sent.items) == before + 1
    assert "0.05" in edited["text/html"] and "p2c-status-edited" in edited["text/html"]
    assert "p2c-badge-stale" in edited["text/html"] and "stale" in edited["text/plain"]
    wt.edit("config", config.replace("lr: 0.1", "lr: 0.05"))  # the same text again: nothing to redraw
    plan = re.compile(r"p2c-panel-plan [^']*p2c-status-(\w+)")
    assert plan.findall(edited["text/html"]) == ["generated"]
    wt.approve("plan")
    assert len(sent.updates(wt.fallback_id)) == 2  # the approval changed the plan's badge
    assert plan.findall(sent.updates(wt.fallback_id)[-1][0]["text/html"]) == ["approved"]
    time.sleep(fallback.FOLLOW_INTERVAL * 1.5)
    assert len(sent.updates(wt.fallback_id)) == 2
    wt.close()
    wt.pipeline.close()


def test_changes_coalesce_into_one_redraw_per_interval_and_an_unchanged_snapshot_is_not_sent() -> None:
    """The follower alone (pure logic over a counter): a burst of changes is one redraw; a flush sends at once."""
    state = {"version": 0}
    published: list[tuple[str, str]] = []
    done = threading.Event()

    def publish(bundle: dict[str, str], display_id: str) -> None:
        published.append((bundle["text/plain"], threading.current_thread().name))
        done.set()

    follower = fallback.Follower("p2c-fallback-x", lambda: {"text/plain": f"v{state['version']}"}, publish, 0.3)
    follower.changed()
    assert not follower.displayed and not done.wait(0.5) and published == []  # not displayed: nothing to redraw
    follower.shown({"text/plain": "v0"})
    started = time.monotonic()
    for version in range(1, 201):  # 200 saves in a burst
        state["version"] = version
        follower.changed()
    assert done.wait(5) and time.monotonic() - started >= 0.25
    time.sleep(0.5)
    assert published == [("v200", "p2c-snapshot")]
    here = threading.current_thread().name
    follower.flush()  # the cell's thread sends again what only the timer sent: it may have come between cells
    follower.flush()
    follower.changed()  # a change that leaves the snapshot as it is
    follower.flush()
    assert published[1:] == [("v200", here)]
    state["version"] = 201
    follower.changed()
    follower.flush()  # at once, on this thread, and the pending timer dropped
    time.sleep(0.5)
    assert published[2:] == [("v201", here)]
    state["version"] = 202
    follower.changed()
    other = threading.Thread(target=follower.flush, name="another-thread")  # not the cell's: left to the timer
    other.start()
    other.join()
    time.sleep(0.5)
    assert published[3:] == [("v202", "p2c-snapshot")]
    follower.close()
    state["version"] = 203
    follower.changed()
    follower.flush()
    assert len(published) == 4  # closed: nothing more


@pytest.mark.slow
def test_an_executed_notebook_saves_the_snapshot_as_the_later_cells_left_it(
    serve: Any, paper_md: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nbclient executes: display(w), then a run in steps, a background run joined by a later cell, and an edit.
    The first cell's saved snapshot shows their result, escaped, without the key; the notebook keeps two outputs
    there (updates replace, never add), and the live widget's style sheet still hides that snapshot."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    scenario = small_scenario()
    scenario["responses"][0]["content"] = f"# Plan\n\nStep {HOSTILE}\n"
    server = serve(scenario)
    use_server(monkeypatch, server)  # the kernel inherits the key from the environment: never in a cell
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    run = tmp_path / "run"
    cells = [
        "from p2c_notebook.ui import walkthrough\n"
        f"w = walkthrough({str(paper_md)!r}, {str(run)!r}, auto_approve=True)\n"
        "display(w)",
        'w.run(until="config", block=True)\nassert w.last_error is None, w.last_error',
        "w.run()  # in the background",
        "w.wait()\nassert w.last_error is None, w.last_error",
        'w.edit("config", w.read("config").replace("lr: 0.1", "lr: 0.05"))',
        "print(w.style.value)",
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    client = nbclient.NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    errors = [o for c in notebook.cells for o in c.outputs if o["output_type"] == "error"]
    assert not errors, errors[0]["evalue"] if errors else ""
    snapshot, view = notebook.cells[0].outputs
    page, text = snapshot["data"]["text/html"], snapshot["data"]["text/plain"]
    assert COMPLETE.search(page) and all(Path(f).name in page for f in CODE)  # the later cells' files
    assert "0.05" in page and "p2c-status-edited" in page and "p2c-badge-stale" in page  # and the last edit
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and not ACTIVE.search(page)
    assert f"run folder {run}" in text and "code stale" in text and "VBox(" not in text
    fallback_id = re.search(r"class='p2c-fallback (p2c-fallback-[0-9a-f]+)'", page).group(1)  # type: ignore[union-attr]
    assert fallback.hide_rule(fallback_id) in notebook.cells[-1].outputs[0]["text"]  # the live widget hides it
    assert "application/vnd.jupyter.widget-view+json" in view["data"]
    assert API_KEY not in nbformat.writes(notebook)
