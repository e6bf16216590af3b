"""The walkthrough's Run panel, driven as a person drives it (`button.click()`, typing), over real HTTP against the
scripted model and in the real sandbox: nothing runs before a click, the output and the result are shown, and a
failing smoke run is repaired only through fixes the user applies (side by side, Apply / Reject / Edit)."""

from __future__ import annotations

import html
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import settings_for, small_scenario

from p2c_notebook.errors import ConfigError
from p2c_notebook.execute import sandbox
from p2c_notebook.execute.repair import Proposal
from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.run.store import RunStore
from p2c_notebook.ui import Walkthrough
from p2c_notebook.ui.runpanel import RunPanel, side_by_side_html

BUG = "print(Net().forward(load())[5])\n"
LOUD = "print('<script>alert(1)</script>')\n"  # output the panel must escape
BROKEN_MAIN = "from data import load\nfrom models.net import Net\n\n" + LOUD + BUG
FIXED = "print(Net().forward(load()))\n"
SCRIPT = '#!/usr/bin/env bash\nset -euo pipefail\necho "smoke=${1:-}"\npython main.py\n'
NO_MARKUP = re.compile(r"<(script|img)\b", re.I)


def block(path: str, search: str, replace: str) -> str:
    return f"{path}\n<<<<<<< SEARCH\n{search}=======\n{replace}>>>>>>> REPLACE\n"


def fix_requests(server: Any) -> list[Any]:
    return [r for r in server.requests if r["stage"] == "fix"]


@pytest.fixture
def opened(serve: Any, paper_md: Path, tmp_path: Path) -> Any:
    """A finished run whose main.py fails at run time, and its walkthrough; the model answers `fix` with `fixes`."""
    try:
        sandbox.isolation()
    except ConfigError as exc:
        pytest.skip(str(exc))

    def make(*fixes: str, extra: tuple[dict[str, Any], ...] = ()) -> tuple[Any, Path, Walkthrough, RunPanel]:
        scenario = small_scenario()
        for response in scenario["responses"]:
            if response["stage"] == "code" and response.get("file") == "main.py":
                response["content"] = f"```python\n{BROKEN_MAIN}```"
        scenario["responses"] += [{"stage": "fix", "content": text} for text in fixes] + list(extra)
        server = serve(scenario)
        run = tmp_path / "run"
        with Pipeline.start(paper_md, run, settings=settings_for(server)) as pipeline:
            assert pipeline.run().state == "done"
        wt = Walkthrough(Pipeline.open(run, settings=settings_for(server)))
        panel = wt.run_panel
        panel.python.value = sys.executable  # no venv: the test's own interpreter, as --python
        return server, run, wt, panel

    return make


def click(wt: Walkthrough, widget: Any) -> None:
    widget.click()
    wt.wait(timeout=120)


def test_the_panel_shows_what_will_run_and_runs_nothing_until_clicked(opened: Any) -> None:
    server, run, wt, panel = opened()
    plan = panel.plan.value
    assert "Run: python main.py --smoke" in plan and "Full run: python main.py" in plan
    assert f"Interpreter: {sys.executable}" in plan and "Sandbox: bubblewrap" in plan and "Limits:" in plan
    assert "no reproduce.sh" in plan and panel.reproduce_button.layout.display is None  # offered, one call
    assert not panel.smoke_button.disabled and not panel.full_button.disabled
    assert panel.repair_button.layout.display == "none" and panel.fix_box.layout.display == "none"
    wt.refresh()
    assert not (run / "exec").exists() and fix_requests(server) == [] and "exec" not in RunStore(run).meta
    panel.python.value = ""
    assert "Install into" in panel.plan.value and "exec/venv" in panel.plan.value  # the plan follows the field


@pytest.mark.slow  # runs generated code in the sandbox
def test_a_failing_smoke_run_is_repaired_in_the_panel_with_an_applied_fix(opened: Any) -> None:
    server, run, wt, panel = opened(block("main.py", BUG, FIXED))
    click(wt, panel.smoke_button)
    assert wt.last_error is None, wt.last_error
    output = panel.output.value
    assert "IndexError" in output and "&lt;script&gt;alert(1)&lt;/script&gt;" in output and not NO_MARKUP.search(output)
    result = panel.result.value
    assert "Failed: exit status 1" in result and "exit status 1" in result and "peak memory" in result
    assert "exec/attempt-1.log" in result and "attempt 1" in result
    assert panel.repair_button.layout.display is None and not panel.repair_button.disabled
    assert fix_requests(server) == []  # a failed run asks nothing by itself

    click(wt, panel.repair_button)
    assert wt.last_error is None, wt.last_error
    assert len(fix_requests(server)) == 1 and panel.proposal is not None
    view = panel.fix_view.value
    assert "Round 1: proposed fix" in view and "IndexError" in view and "p2c-sbs" in view
    assert "<td class='p2c-diff-del'>print(Net().forward(load())[5])</td>" in view
    assert "<td class='p2c-diff-add'>print(Net().forward(load()))</td>" in view
    assert "&lt;script&gt;" in view and not NO_MARKUP.search(view)
    assert (run / "repo" / "main.py").read_text() == BROKEN_MAIN  # shown, not applied
    assert panel.smoke_button.disabled and panel.repair_button.disabled  # decide the fix first
    assert len(list((run / "exec").glob("attempt-*.json"))) == 1  # the failed run was reused, not run again

    click(wt, panel.apply_button)
    assert wt.last_error is None, wt.last_error
    assert (run / "repo" / "main.py").read_text().endswith(FIXED)
    assert "Ran: passed" in panel.result.value and "[2.0, 4.0, 6.0]" in panel.output.value
    assert "passes after 1 round(s)" in panel.message.value and panel.fix_box.layout.display == "none"
    store = RunStore(run)
    assert store.meta["fixes"][0]["round"] == 1 and store.meta["fixes"][0]["files"] == ["main.py"]
    assert store.meta["exec"]["passed"] and store.meta["exec"]["attempt"] == 2
    assert (run / "history").is_dir() and any((run / "history").rglob("main.py.*"))  # the earlier version kept
    shown = html.unescape(re.sub(r"<[^>]+>", "", "".join(_html(wt.panel("code/main.py").widget))))
    assert FIXED in shown and BUG not in shown  # the code panel shows the new version
    assert len(fix_requests(server)) == 1


@pytest.mark.slow  # runs generated code in the sandbox
def test_a_rejected_fix_leaves_the_code_untouched(opened: Any) -> None:
    server, run, wt, panel = opened(block("main.py", BUG, FIXED))
    click(wt, panel.repair_button)  # no run yet: Repair runs the smoke run first
    assert panel.proposal is not None and len(list((run / "exec").glob("attempt-*.json"))) == 1
    panel.reject_button.click()
    assert "Fix rejected: the code is unchanged." in panel.message.value and panel.proposal is None
    assert (run / "repo" / "main.py").read_text() == BROKEN_MAIN and "fixes" not in RunStore(run).meta
    assert not panel.smoke_button.disabled and panel.fix_box.layout.display == "none"


@pytest.mark.slow  # runs generated code in the sandbox
def test_a_file_changed_on_disk_after_the_proposal_is_not_overwritten(opened: Any) -> None:
    server, run, wt, panel = opened(block("main.py", BUG, FIXED))
    click(wt, panel.repair_button)
    mine = BROKEN_MAIN + "# typed while the fix was on screen\n"
    (run / "repo" / "main.py").write_text(mine)
    click(wt, panel.apply_button)
    assert "main.py changed since the fix was proposed" in panel.message.value
    assert (run / "repo" / "main.py").read_text() == mine and "fixes" not in RunStore(run).meta


@pytest.mark.slow  # runs generated code in the sandbox
def test_a_fix_to_a_file_you_edited_needs_its_own_confirmation(opened: Any) -> None:
    mine = BROKEN_MAIN.replace(BUG, "# mine\n" + BUG)
    server, run, wt, panel = opened(block("main.py", "# mine\n" + BUG, "# mine\n" + FIXED))
    (run / "repo" / "main.py").write_text(mine)  # the user's own edit, on disk
    wt.refresh()
    click(wt, panel.repair_button)
    assert panel.proposal is not None and panel.proposal.edited == ["main.py"]
    assert "It changes file(s) you edited: main.py" in panel.fix_view.value
    panel.apply_button.click()  # not enough: it asks
    wt.wait(timeout=60)
    assert (run / "repo" / "main.py").read_text() == mine and "fixes" not in RunStore(run).meta
    assert panel.confirm_button.layout.display is None and "Overwrite my edits" in panel.message.value
    click(wt, panel.confirm_button)
    assert wt.last_error is None, wt.last_error
    assert (run / "repo" / "main.py").read_text().endswith("# mine\n" + FIXED)
    assert RunStore(run).meta["exec"]["passed"]


@pytest.mark.slow  # runs generated code in the sandbox
def test_an_edited_fix_is_applied_as_the_user_wrote_it(opened: Any) -> None:
    server, run, wt, panel = opened(block("main.py", BUG, FIXED))
    click(wt, panel.repair_button)
    panel.edit_button.click()
    (area,) = panel.editors.children
    assert area.description == "main.py" and area.value.endswith(FIXED)
    area.value = area.value.replace(FIXED, "print(Net().forward(load()) +\n")  # does not parse: refused
    panel.save_edit_button.click()
    assert "does not parse" in panel.message.value and panel.proposal is not None
    assert panel.proposal.changes["main.py"][1].endswith(FIXED)
    area.value = area.value.replace("print(Net().forward(load()) +\n", "print('mine', Net().forward(load()))\n")
    panel.save_edit_button.click()
    assert "<td class='p2c-diff-add'>print(&#x27;mine&#x27;, Net().forward(load()))</td>" in panel.fix_view.value
    assert (run / "repo" / "main.py").read_text() == BROKEN_MAIN  # still only shown
    click(wt, panel.apply_button)
    assert (run / "repo" / "main.py").read_text().endswith("print('mine', Net().forward(load()))\n")
    fixes = RunStore(run).meta["fixes"]
    assert fixes[0]["revised_by_user"] == ["main.py"] and RunStore(run).meta["exec"]["passed"]
    assert "mine [2.0, 4.0, 6.0]" in panel.output.value


@pytest.mark.slow  # runs generated code in the sandbox
def test_the_rounds_are_bounded_in_the_panel(opened: Any) -> None:
    server, run, wt, panel = opened(block("main.py", BUG, BUG + "# tried\n"))
    panel.rounds.value = 2
    click(wt, panel.repair_button)
    click(wt, panel.apply_button)  # round 1 applied, still failing: round 2 is proposed at once
    assert panel.proposal is not None and panel.proposal.round == 2 and "Round 2 of 2" in panel.message.value
    click(wt, panel.apply_button)
    assert panel.proposal is None and "Still failing after 2 round(s)" in panel.message.value
    assert len(fix_requests(server)) == 2 and [f["round"] for f in RunStore(run).meta["fixes"]] == [1, 2]
    assert "Failed: exit status 1" in panel.result.value


@pytest.mark.slow  # runs generated code in the sandbox
def test_the_panel_offers_reproduce_sh_and_makes_it_with_one_call(opened: Any) -> None:
    reproduce = {"stage": "reproduce", "content": f"```bash\n{SCRIPT}```"}
    server, run, wt, panel = opened(extra=(reproduce,))
    before = len(server.requests)
    click(wt, panel.reproduce_button)
    assert wt.last_error is None, wt.last_error
    assert [r["stage"] for r in server.requests[before:]] == ["reproduce"]
    assert (run / "repo" / "reproduce.sh").read_text() == SCRIPT
    assert "Run: bash reproduce.sh --smoke" in panel.plan.value and panel.reproduce_button.layout.display == "none"
    click(wt, panel.smoke_button)
    assert "smoke=--smoke" in panel.output.value


def test_the_side_by_side_diff_escapes_and_cuts_unchanged_runs() -> None:
    old = "".join(f"line {i}\n" for i in range(40)) + "x = '<b>'\n"
    new = old.replace("line 3\n", "line three\n").replace("x = '<b>'", "x = '<img src=x onerror=alert(1)>'")
    table = side_by_side_html("a.py", old, new)
    assert "<td class='p2c-diff-del'>line 3</td>" in table and "<td class='p2c-diff-add'>line three</td>" in table
    assert "line 20" not in table and "p2c-sbs-gap" in table  # far from both changes: cut
    assert "&lt;img src=x onerror=alert(1)&gt;" in table and not NO_MARKUP.search(table)
    assert Proposal(1, [], {"a.py": (old, new)}).lines_changed() == 4


def _html(widget: Any) -> list[str]:
    values = [widget.value] if hasattr(widget, "value") and isinstance(widget.value, str) else []
    for child in getattr(widget, "children", ()):
        values.extend(_html(child))
    return values


@pytest.mark.slow  # runs generated code in the sandbox
def test_a_cancel_left_from_an_earlier_job_does_not_stop_the_next_repair(opened: Any) -> None:
    server, run, wt, panel = opened(block("main.py", BUG, FIXED))
    wt.pipeline.cancel()  # what Cancel leaves behind once its job has ended
    click(wt, panel.repair_button)
    assert wt.last_error is None, wt.last_error
    assert panel.proposal is not None and len(fix_requests(server)) == 1
