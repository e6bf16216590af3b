"""The Run panel: run the generated repository in the sandbox and repair what fails, each fix approved by a click.

It shows first exactly what will be installed and run (the plan `p2c exec` prints), and nothing runs until Smoke
run or Full run is clicked. The output streams in; the result says the exit status, the time, the peak memory and
where the attempt's log is. On failure, Repair asks the model for a fix (`execute.repair`): each proposal is shown
as a side-by-side diff with Apply, Reject and Edit; a fix that changes a file the user edited needs its own
confirmation; an applied fix is a new version of the code (with its provenance) and the smoke run runs again, for
at most the chosen number of rounds. Everything is the library's (`execute.runner`, `execute.repair`); this module
only calls it and draws its events. All text (output, code, model replies) is escaped.
"""

from __future__ import annotations

import difflib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ipywidgets as widgets  # type: ignore[import-untyped]

from p2c_notebook.errors import P2CError, RunError
from p2c_notebook.execute import repair, runner
from p2c_notebook.execute.repair import Proposal, Repair
from p2c_notebook.execute.runner import ExecPlan
from p2c_notebook.execute.sandbox import ExecOutput, Outcome
from p2c_notebook.run.events import Event
from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.ui import render
from p2c_notebook.ui.panels import button, html, show

#: start(label, work, block): run `work` as a background job (the walkthrough's, with its busy state and status).
Start = Callable[[str, Callable[[], str], bool], None]

OUTPUT_TAIL = 20000  # characters of the streamed output kept on screen (the whole of it is in the attempt's log)
OUTPUT_INTERVAL = 0.1  # seconds between redraws of the streamed output
CONTEXT = 3  # unchanged lines shown around each change in the side-by-side diff
STYLE = """<style>
.p2c-sbs { border-collapse: collapse; width: 100%; table-layout: fixed; font-family: var(--jp-code-font-family,
  monospace); font-size: var(--jp-code-font-size, 12px); }
.p2c-sbs td { vertical-align: top; white-space: pre-wrap; word-break: break-all; padding: 0 4px;
  border-left: 1px solid var(--jp-border-color2, #ddd); color: var(--jp-content-font-color1, inherit); }
.p2c-sbs td.p2c-sbs-no { width: 3em; text-align: right; color: var(--jp-content-font-color3, #888); }
.p2c-sbs th { text-align: left; font-weight: 600; padding: 2px 4px; }
.p2c-sbs td.p2c-diff-del, .p2c-sbs td.p2c-diff-add { font-weight: 500; }
.p2c-sbs tr.p2c-sbs-gap td { text-align: center; color: var(--jp-content-font-color3, #888); }
.p2c-run-output pre { max-height: 24em; overflow: auto; }
</style>"""


# ------------------------------------------------------------------------------------------- drawing (pure)
def side_by_side_html(path: str, old: str, new: str, context: int = CONTEXT) -> str:
    """One file's change as a two-column table: the current text left, the fixed text right, changed lines
    marked (p2c-diff-del / p2c-diff-add), unchanged runs cut to `context` lines around each change. Escaped."""
    a, b = old.splitlines(), new.splitlines()
    rows: list[str] = []
    for group in difflib.SequenceMatcher(None, a, b, autojunk=False).get_grouped_opcodes(context):
        if rows:
            rows.append("<tr class='p2c-sbs-gap'><td colspan='4'>…</td></tr>")
        for tag, i1, i2, j1, j2 in group:
            left, right = a[i1:i2], b[j1:j2]
            for k in range(max(len(left), len(right))):
                rows.append(
                    _cell(i1 + k + 1, left[k] if k < len(left) else None, "same" if tag == "equal" else "del")
                    + _cell(j1 + k + 1, right[k] if k < len(right) else None, "same" if tag == "equal" else "add")
                )
    body = "".join(f"<tr>{row}</tr>" for row in rows)
    return (
        f"<table class='p2c-sbs'><colgroup><col style='width:3em'><col><col style='width:3em'><col></colgroup>"
        f"<thead><tr><th colspan='2'>{render.esc(path)} (now)</th><th colspan='2'>{render.esc(path)} (fixed)</th>"
        f"</tr></thead><tbody>{body}</tbody></table>"
    )


def _cell(number: int, line: str | None, kind: str) -> str:
    if line is None:
        return "<td class='p2c-sbs-no'></td><td></td>"
    return f"<td class='p2c-sbs-no'>{number}</td><td class='p2c-diff-{kind}'>{render.esc(line) or ' '}</td>"


def proposal_html(proposal: Proposal) -> str:
    """A proposal: its round, the error it answers, each file side by side, and which files need a confirmation."""
    files = "".join(side_by_side_html(path, old, new) for path, (old, new) in proposal.changes.items())
    lines = proposal.error.strip().splitlines()  # the trimmed traceback, then "[the run's reason]"
    error = " ".join(lines[-2:]) if len(lines) > 1 else "".join(lines)
    notes = []
    if proposal.edited:
        notes.append(
            f"<p class='p2c-warning'>It changes file(s) you edited: {render.esc(', '.join(proposal.edited))}; "
            "applying it needs your confirmation.</p>"
        )
    if proposal.revised:
        notes.append(f"<p class='p2c-hint'>With your changes to {render.esc(', '.join(proposal.revised))}.</p>")
    return (
        f"<div class='p2c-fix'><p><b>Round {proposal.round}: proposed fix</b> "
        f"({proposal.lines_changed()} line(s) changed in {len(proposal.changes)} file(s)) for "
        f"<code>{render.esc(render.one_line(error, 300))}</code></p>"
        f"{''.join(notes)}{files}</div>"
    )


def outcome_html(outcome: Outcome, run_dir: Path) -> str:
    """The result of one run: verdict, exit status, time, peak memory and the attempt's log."""
    css = "p2c-note" if outcome.passed else "p2c-error"
    verdict = "Ran: passed" if outcome.passed else f"Failed: {outcome.reason}"
    log = run_dir / outcome.log
    return (
        f"<div class='p2c-run-result'><span class='{css}'><b>{render.esc(verdict)}</b></span> · "
        f"attempt {outcome.attempt} · exit status {render.esc(str(outcome.exit_code))} · "
        f"{outcome.seconds:.1f} s · peak memory {outcome.peak_memory_mb:.0f} MiB · "
        f"log <code title='{render.esc(str(log))}'>{render.esc(outcome.log)}</code></div>"
    )


# ------------------------------------------------------------------------------------------------ the panel
class RunPanel:
    """The Run panel of one pipeline's run folder; `widget` is its VBox (classes p2c-panel, p2c-panel-run).

    Jobs run through `start` (the walkthrough's background job, so one thing runs at a time and Cancel and the
    status line cover it); without one, the panel runs its own thread."""

    def __init__(self, pipeline: Pipeline, start: Start | None = None, busy: Callable[[], bool] | None = None) -> None:
        self.pipeline = pipeline
        self._own_running = False
        self._start_job = start or self._own_start
        self._busy = busy or (lambda: self._own_running)
        self._own_thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.last_error: str | None = None
        self.outcome: Outcome | None = None  # the last run made from this panel
        self.loop: Repair | None = None
        self.proposal: Proposal | None = None
        self.applied: list[Proposal] = []  # applied in this panel, for the record shown
        self._plan_key: tuple[object, ...] | None = None
        self._plan_ok = False
        self._output = ""
        self._drawn_at = 0.0

        self.style = html(STYLE)
        self.head = html("<span class='p2c-title'>Run the code</span>", "p2c-panel-head")
        self.plan = html("", "p2c-run-plan")
        self.reproduce_button = button(
            "Generate reproduce.sh", "Ask the model for reproduce.sh: one call (the reproduce stage)", "p2c-reproduce"
        )
        self.python = widgets.Text(
            placeholder="optional: an existing Python interpreter (default: a virtual environment for this run)",
            description="Python",
            layout=widgets.Layout(width="100%"),
        )
        self.python.add_class("p2c-run-python")
        self.rounds = widgets.BoundedIntText(value=3, min=1, max=10, description="Rounds")
        self.rounds.add_class("p2c-run-rounds")
        self.smoke_button = button(
            "Smoke run", "Run the tiny path in the sandbox (shown above)", "p2c-smoke", "primary"
        )
        self.full_button = button("Full run", "Run the whole experiment in the sandbox (shown above)", "p2c-full")
        self.repair_button = button(
            "Repair",
            "Ask the model for a fix of the failure (one call); you apply or reject it",
            "p2c-repair",
            "warning",
        )
        self.output = html("", "p2c-run-output")
        self.result = html("", "p2c-run-result-box")
        self.fix_view = html("", "p2c-fix-view")
        self.apply_button = button("Apply", "Apply this fix, then run the smoke run again", "p2c-fix-apply", "success")
        self.reject_button = button("Reject", "Leave the code as it is", "p2c-fix-reject")
        self.edit_button = button("Edit", "Change the fixed text before applying it", "p2c-fix-edit")
        self.confirm_button = button(
            "Overwrite my edits", "Apply the fix to the files you edited", "p2c-fix-confirm", "danger"
        )
        self.editors = widgets.VBox()
        self.save_edit_button = button("Use my version", "Keep your text as the fix (not applied yet)", "p2c-fix-save")
        self.message = html("", "p2c-message")
        show(self.output, False)
        show(self.repair_button, False)
        show(self.confirm_button, False)
        show(self.reproduce_button, False)
        fix_actions = widgets.HBox([self.apply_button, self.reject_button, self.edit_button, self.confirm_button])
        fix_actions.add_class("p2c-actions")
        self.edit_box = widgets.VBox([self.editors, self.save_edit_button])
        show(self.edit_box, False)
        self.fix_box = widgets.VBox([self.fix_view, fix_actions, self.edit_box])
        self.fix_box.add_class("p2c-fix-box")
        show(self.fix_box, False)
        controls = widgets.HBox([self.smoke_button, self.full_button, self.rounds, self.repair_button])
        controls.add_class("p2c-actions")
        self.widget = widgets.VBox(
            [
                self.style,
                self.head,
                self.plan,
                self.reproduce_button,
                self.python,
                controls,
                self.output,
                self.result,
                self.fix_box,
                self.message,
            ]
        )
        for name in ("p2c-panel", "p2c-panel-run"):
            self.widget.add_class(name)

        self.smoke_button.on_click(lambda _: self._click(lambda: self.execute("smoke")))
        self.full_button.on_click(lambda _: self._click(lambda: self.execute("full")))
        self.repair_button.on_click(lambda _: self._click(self.repair))
        self.apply_button.on_click(lambda _: self._click(self.apply))
        self.confirm_button.on_click(lambda _: self._click(lambda: self.apply(overwrite_edited=True)))
        self.reject_button.on_click(lambda _: self._click(self.reject))
        self.edit_button.on_click(lambda _: self._click(self.open_editors))
        self.save_edit_button.on_click(lambda _: self._click(self.save_edits))
        self.reproduce_button.on_click(lambda _: self._click(self.make_reproduce))
        self.python.observe(lambda _: self.update(self.busy), names="value")
        self._draw_last()
        self.update(False)

    # --- state --------------------------------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return self.pipeline.store.root

    @property
    def busy(self) -> bool:
        return self._busy()

    def exec_plan(self, mode: str = "smoke") -> ExecPlan:
        """What a run in `mode` would install and run (the interpreter field, else a venv for this run)."""
        return runner.plan(self.run_dir, mode, self.python.value.strip() or None)

    def update(self, busy: bool) -> None:
        """Redraw the plan when the repository or the interpreter changed (never while a job runs: the code is
        changing then); buttons follow the job state."""
        if not busy:
            key = self._key()
            if key != self._plan_key:
                self._plan_key = key
                self._draw_plan()
        self.set_busy(busy)

    def set_busy(self, busy: bool) -> None:
        waiting = self.proposal is not None  # a fix on screen: decide it first
        self.smoke_button.disabled = self.full_button.disabled = busy or waiting or not self._plan_ok
        self.repair_button.disabled = busy or waiting or not self._plan_ok
        self.reproduce_button.disabled = busy or waiting
        for control in (self.apply_button, self.reject_button, self.edit_button, self.confirm_button):
            control.disabled = busy or not waiting
        self.save_edit_button.disabled = busy or not waiting
        self.python.disabled = self.rounds.disabled = busy

    def _key(self) -> tuple[object, ...]:
        repo = self.run_dir / "repo"
        stamps: list[int | None] = []
        for name in ("reproduce.sh", "requirements.txt", "main.py"):
            try:
                stamps.append((repo / name).stat().st_mtime_ns)
            except OSError:
                stamps.append(None)
        statuses = tuple((e.artifact, e.status) for e in self.pipeline.store.entries())  # the reproduce offer
        return (self.python.value.strip(), repo.is_dir(), *stamps, statuses)

    # --- actions (each raises P2CError; the buttons show it in the panel) -----------------------------------
    def execute(self, mode: str = "smoke", block: bool = False) -> None:
        """Run the repository in the sandbox (what Smoke run / Full run do); never without being asked."""
        exec_plan = self.exec_plan(mode)

        def work() -> str:
            self._clear_output()
            outcome = runner.execute(exec_plan, self._sink)
            self._finished_run(outcome)
            self.loop = None
            return self._say(outcome.describe(), "note" if outcome.passed else "error")

        self._start(f"Running the {mode} run in the sandbox", work, block)

    def repair(self, block: bool = False) -> None:
        """Propose a fix for the failing smoke run (running it first unless the last smoke run here failed)."""
        if self.proposal is not None:
            raise RunError("A proposed fix is waiting: apply, edit or reject it first.")
        exec_plan = self.exec_plan("smoke")
        last = self.outcome if self.outcome is not None and self.outcome.command == exec_plan.command else None
        loop = Repair(self.pipeline, exec_plan, int(self.rounds.value), self._sink, last)

        def work() -> str:
            self.loop = loop
            if loop.outcome is None:
                self._clear_output()
                self._finished_run(loop.run())
            return self._next_round(loop)

        self._start("Repairing: asking the model for a fix", work, block)

    def apply(self, overwrite_edited: bool = False, block: bool = False) -> None:
        """Apply the fix on screen (a fix to files you edited needs `overwrite_edited`: the confirm button), then
        run the smoke run again and, while it fails and rounds remain, propose the next fix."""
        proposal, loop = self._pending()
        if proposal.edited and not overwrite_edited:
            show(self.confirm_button, True)
            self._say(
                f"This fix changes file(s) you edited ({', '.join(proposal.edited)}): click Overwrite my edits to "
                "apply it anyway, or Reject.",
                "warning",
            )
            return

        def work() -> str:
            self._clear_output()
            outcome = loop.accept(proposal, overwrite_edited)
            self.applied.append(proposal)
            self._set_proposal(None)
            self._finished_run(outcome)
            return self._next_round(loop)

        self._start(f"Applying the round {proposal.round} fix and running the smoke run again", work, block)

    def reject(self) -> str:
        """Drop the fix on screen: the code stays as it is."""
        _, loop = self._pending()
        self._set_proposal(None)
        self.set_busy(self.busy)
        return self._say(loop.reject(), "note")

    def open_editors(self) -> None:
        """One text box per file of the fix, holding the fixed text, for the user's own version."""
        proposal, _ = self._pending()
        boxes = []
        for path, (_, new) in proposal.changes.items():
            area = widgets.Textarea(value=new, description=path, layout=widgets.Layout(width="100%", height="16em"))
            area.add_class("p2c-fix-editor")
            boxes.append(area)
        self.editors.children = boxes
        show(self.edit_box, True)

    def edit(self, path: str, text: str) -> Proposal:
        """Replace the fixed text of one file of the fix on screen (validated: a Python file must parse)."""
        proposal, _ = self._pending()
        revised = repair.revise(proposal, path, text)
        self._set_proposal(revised)
        self._say(f"Your version of {path} is the fix now; Apply applies it.", "note")
        return revised

    def save_edits(self) -> None:
        for area in self.editors.children:
            changes = self.proposal.changes if self.proposal is not None else {}
            if area.description in changes and area.value != changes[area.description][1]:
                self.edit(area.description, area.value)
        show(self.edit_box, False)

    def make_reproduce(self, block: bool = False) -> None:
        """Generate repo/reproduce.sh (one model call) when the repository has none."""

        def work() -> str:
            done = runner.make_reproduce(self.pipeline)
            self._plan_key = None
            return self._say(done, "note")

        self._start("Generating reproduce.sh (one model call)", work, block)

    def fix_all(self, rounds: int, overwrite_edited: bool = False, block: bool = False) -> None:
        """`%p2c fix --yes`: the whole loop without asking (as `p2c fix --yes`); each applied fix is shown. Files
        you edited are changed only with `overwrite_edited`."""
        exec_plan = self.exec_plan("smoke")

        def approve(proposal: Proposal) -> bool:
            self._set_proposal(proposal, decided=True)
            return overwrite_edited or not proposal.edited

        def work() -> str:
            self._clear_output()
            result = repair.fix(self.pipeline, exec_plan, approve, rounds, self._sink)
            self._finished_run(result.outcome)
            return self._say(result.message, "note" if result.passed else "error")

        self._start(f"Running and repairing (at most {rounds} round(s), fixes applied without asking)", work, block)

    def offer_repair(self, rounds: int) -> None:
        """Show Repair with this many rounds (what `%p2c fix` does before anything runs)."""
        self.rounds.value = max(1, min(rounds, self.rounds.max))
        show(self.repair_button, True)
        self._say(
            "Nothing runs until you click: Repair runs the smoke run and, while it fails, shows each fix the model "
            "proposes for you to apply, edit or reject.",
            "hint",
        )

    # --- the loop -------------------------------------------------------------------------------------------
    def _next_round(self, loop: Repair) -> str:
        """After a run: done, out of rounds, or the next proposal on screen (one model call)."""
        if not loop.can_propose:
            return self._say(loop.message(), "note" if loop.passed else "error")
        proposal = loop.propose()
        self._set_proposal(proposal)
        return self._say(
            f"Round {proposal.round} of {loop.rounds}: a fix is proposed below; Apply, Edit or Reject it.", "hint"
        )

    def _pending(self) -> tuple[Proposal, Repair]:
        if self.proposal is None or self.loop is None:
            raise RunError("No proposed fix to act on: click Repair after a failed run.")
        if self.busy:
            raise RunError("A run is in progress: wait for it to finish.")
        return self.proposal, self.loop

    def _set_proposal(self, proposal: Proposal | None, decided: bool = False) -> None:
        self.proposal = None if decided else proposal
        show(self.confirm_button, False)
        show(self.edit_box, False)
        if proposal is None:
            show(self.fix_box, False)
            self.fix_view.value = ""
            return
        self.fix_view.value = proposal_html(proposal)
        show(self.fix_box, True)
        self.set_busy(self.busy)

    # --- drawing --------------------------------------------------------------------------------------------
    def _draw_plan(self) -> None:
        """What Smoke run and Full run would do, exactly as `p2c exec` says it; or why nothing can run yet."""
        offer = None
        try:
            offer = runner.reproduce_offer(self.pipeline) if (self.run_dir / "repo").is_dir() else None
            smoke = self.exec_plan("smoke")
            full = self.exec_plan("full")
        except P2CError as exc:
            self._plan_ok = False
            text = str(exc)
            if not (self.run_dir / "repo").is_dir():
                text = "Nothing to run yet: the code is not generated."
            self.plan.value = f"<p class='p2c-hint'>{render.esc(render.one_line(text, 1000))}</p>"
        else:
            self._plan_ok = True
            lines = [*smoke.describe(), f"Full run: {' '.join(full.command)}"]
            items = "".join(f"<li>{render.esc(line)}</li>" for line in lines)
            self.plan.value = f"<p class='p2c-hint'>Smoke run / Full run will do exactly this:</p><ul>{items}</ul>"
        if offer is not None:
            self.plan.value += f"<p class='p2c-hint'>{render.esc(offer)}</p>"
        show(self.reproduce_button, offer is not None)

    def _draw_last(self) -> None:
        """The last run recorded in the run folder (by `p2c exec`, `p2c fix` or this panel)."""
        line = runner.describe_status(self.pipeline.store.meta)
        if line:
            self.result.value = f"<div class='p2c-hint'>{render.esc(line)}</div>"
            last = self.pipeline.store.meta.get("exec")
            show(self.repair_button, isinstance(last, dict) and not last.get("passed"))

    def _finished_run(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self._draw_output(force=True)
        self.result.value = outcome_html(outcome, self.run_dir)
        show(self.repair_button, not outcome.passed or self.repair_button.layout.display is None)

    def _clear_output(self) -> None:
        with self._lock:
            self._output = ""
        show(self.output, True)
        self.output.value = "<pre></pre>"

    def _sink(self, event: Event) -> None:
        """Output as it arrives (from the sandbox's reader thread): kept and redrawn at most every 0.1 s."""
        if isinstance(event, ExecOutput):
            with self._lock:
                self._output = (self._output + event.text)[-OUTPUT_TAIL:]
            self._draw_output()

    def _draw_output(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._drawn_at < OUTPUT_INTERVAL:
            return
        self._drawn_at = now
        with self._lock:
            text = self._output
        self.output.value = f"<pre>{render.esc(text)}</pre>"

    def _say(self, text: str, level: str) -> str:
        self.message.value = (
            f"<span class='p2c-{level}'>{render.esc(render.one_line(text, 1000))}</span>" if text else ""
        )
        return text

    # --- jobs -----------------------------------------------------------------------------------------------
    def _start(self, label: str, work: Callable[[], str], block: bool) -> None:
        if self.busy:
            raise RunError("A run is in progress: wait for it to finish.")
        self.last_error = None

        def guarded() -> str:
            try:
                return work()
            except P2CError as exc:
                self.last_error = render.one_line(str(exc))
                self._say(str(exc), "error")
                raise
            finally:
                self.set_busy(False)  # the job is ending: the host redraws the rest

        self._say(label + "…", "hint")
        self._start_job(label, guarded, block)

    def _own_start(self, label: str, work: Callable[[], str], block: bool) -> None:
        """Without a walkthrough: one job at a time on the panel's own thread."""

        def target() -> None:
            try:
                work()
            except P2CError:
                pass  # already shown in the panel
            except Exception as exc:  # noqa: BLE001 - the thread's edge: one line in the page, never a traceback
                self.last_error = render.unexpected(exc)
                self._say(self.last_error, "error")
            finally:
                self._own_running = False
                self.update(False)

        self._own_running = True
        self.set_busy(True)
        self._own_thread = threading.Thread(target=target, name="p2c-run-panel", daemon=True)
        self._own_thread.start()
        if block:
            self._own_thread.join()

    def wait(self, timeout: float | None = None) -> None:
        """Join the panel's own job (with a walkthrough, use its `wait`)."""
        if self._own_thread is not None:
            self._own_thread.join(timeout)

    def _click(self, action: Callable[[], Any]) -> None:
        """The edge for the panel's buttons: a refusal is one line here, never a traceback."""
        try:
            action()
        except P2CError as exc:
            self._say(str(exc), "error")
        except Exception as exc:  # noqa: BLE001 - never a traceback in the page
            self._say(render.unexpected(exc), "error")
