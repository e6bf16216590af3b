"""The walkthrough widget: the run folder as panels, and the controls that advance it.

The widget's state comes from the run folder (`pipeline.rows()` and the files on disk), so re-running the
cell after a kernel restart shows the run as it is. Runs happen on a background thread so the kernel stays
responsive; `wait()` (or `block=True`) joins it. Events from the pipeline drive the live views.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ipywidgets as widgets  # type: ignore[import-untyped]

from p2c_notebook.backends.replay import ReplayMissError
from p2c_notebook.errors import Cancelled, EditedArtifactError, P2CError, RunError
from p2c_notebook.run import history, questions
from p2c_notebook.run.events import (
    ArtifactSaved,
    AwaitingApproval,
    Event,
    Notice,
    Progress,
    RunFinished,
    RunStarted,
    StageStarted,
    TokenDelta,
    UsageReported,
)
from p2c_notebook.run.history import Version
from p2c_notebook.run.pipeline import Pipeline, Row, RunResult
from p2c_notebook.run.questions import Question
from p2c_notebook.run.session import RunOptions, open_run
from p2c_notebook.run.store import RunStore, sha256
from p2c_notebook.run.usage import Usage
from p2c_notebook.settings import load_settings
from p2c_notebook.stages import registry
from p2c_notebook.stages.evaluate import DEFAULT_SAMPLES
from p2c_notebook.stages.registry import stage_of
from p2c_notebook.ui import fallback, render
from p2c_notebook.ui.panels import ArtifactPanel, RepoPanel, button, close_tree, html, reserve, show, static_body
from p2c_notebook.ui.paperview import PaperPanel, static_paper_html
from p2c_notebook.ui.quality import Quality, already_evaluated
from p2c_notebook.ui.questions import QuestionsPanel
from p2c_notebook.ui.repo import tree_html
from p2c_notebook.ui.runpanel import RunPanel

STEP_LABELS = {
    "done": "done",
    "waiting": "waiting for you",
    "stale": "stale",
    "running": "running",
    "todo": "to do",
}
STREAM_INTERVAL = 0.1  # seconds between redraws of the streamed text
STREAM_TAIL = 3000  # characters of streamed text kept on screen


class Walkthrough:
    """A widget over one Pipeline. Display it (it is displayable) or embed `.widget` in a layout."""

    def __init__(self, pipeline: Pipeline, auto_approve: bool = False) -> None:
        self.pipeline = pipeline
        self.panels: dict[str, ArtifactPanel] = {}
        self.last_result: RunResult | None = None
        self.last_error: str | None = None
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._running = False
        self._closed = False
        self._cancel_requested = False
        self._streams: dict[str, str] = {}
        self._in_flight: list[str] = []  # artifacts whose calls are running, oldest first
        self._streaming = ""
        self._stream_drawn = 0.0
        self._notices: list[tuple[str, str]] = []
        self._rows: list[Row] = []
        self._running_stages: set[str] = set()  # stages with a call in flight, for the stepper
        self._job_label = ""
        self._next_text = ""

        self.fallback_id = fallback.new_id()  # the live widget hides the static snapshot shown with it
        # Once displayed, the snapshot follows the run (coalesced redraws; a final one after each job and cell call).
        self._follower = fallback.Follower(self.fallback_id, self._snapshot_bundle)
        self.style = html(f"<style>{render.stylesheet()}{fallback.hide_rule(self.fallback_id)}</style>", "p2c-style")
        self.header = html(self._header(), "p2c-header")
        self.stepper = html("", "p2c-stepper-box")
        self.run_button = button("Run next stage", "Generate the next stage's artifacts", "p2c-run-next", "primary")
        self.next_label = html("", "p2c-next", "p2c-next-line")
        self.auto_approve = widgets.Checkbox(value=auto_approve, description="Auto-approve", indent=False)
        self.auto_approve.add_class("p2c-auto-approve")
        self.stale_button = button("Re-run stale", "Regenerate every stale artifact", "p2c-rerun-stale", "warning")
        self.cancel_button = button("Cancel", "Stop after the calls in flight; saved work is kept", "p2c-cancel-run")
        self.refresh_button = button("Refresh", "Re-read the run folder from disk", "p2c-refresh")
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="0/0")
        self.progress.add_class("p2c-progress")
        self.meter = html("", "p2c-meter")
        self.status_line = html("", "p2c-status-line")
        self.notices = html("", "p2c-notices")
        self.stream = html("", "p2c-stream")
        show(self.stream, False)
        toolbar = widgets.HBox(
            [
                self.run_button,
                self.auto_approve,
                self.stale_button,
                self.cancel_button,
                self.refresh_button,
            ]
        )
        toolbar.add_class("p2c-toolbar")
        meters = widgets.HBox([self.progress, self.meter])
        meters.add_class("p2c-meters")
        self.progress_box = widgets.VBox([toolbar, meters, self.status_line, self.notices, self.stream])
        self.progress_box.add_class("p2c-progress-box")
        self.panel_box = widgets.VBox()
        self.panel_box.add_class("p2c-panels")
        self.pending = {s.name: html("", "p2c-pending", f"p2c-pending-{s.name}") for s in registry.file_stages()}
        self.repo_panel = RepoPanel(self.pipeline.store)
        self.questions_panel = QuestionsPanel(self)  # the open questions, between the planning and the files
        self._questions: list[Question] = []
        self._questions_key: tuple[str | None, ...] = ()
        self.paper_panel = PaperPanel(self.run_dir, self.choose_sections)  # before the plan: sections, figures
        self.quality = Quality(self.run_dir, self._evaluate_clicked, self.cancel)  # checks, Evaluate
        # Run the code, repair what fails (execute/): its jobs are this widget's background jobs.
        self.run_panel = RunPanel(
            pipeline, lambda label, work, block: self._start(label, work, None, block), lambda: self.busy
        )
        self.widget = widgets.VBox(
            [
                self.style,
                self.header,
                self.stepper,
                self.next_label,
                self.progress_box,
                self.paper_panel.widget,
                self.panel_box,
                self.repo_panel.widget,
                self.quality.eval_panel.widget,
                self.run_panel.widget,
            ]
        )
        self.widget.add_class("p2c-walkthrough")
        self.progress_view = widgets.VBox([self.style, self.progress_box])
        self.progress_view.add_class("p2c-walkthrough")

        self.run_button.on_click(lambda _: self._click(self.run_stage))
        self.stale_button.on_click(lambda _: self._click(self.rerun_stale))
        self.cancel_button.on_click(lambda _: self.cancel())
        self.refresh_button.on_click(lambda _: self._click(self.refresh))
        self.auto_approve.observe(lambda _: self._draw_steps(), names="value")
        pipeline.bus.subscribe(self._on_event)
        self.refresh()

    # --- display ---------------------------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        """The widget view, plus a static snapshot (text/html) and a summary (text/plain) in one bundle, for a
        caller that asks for one. A notebook displays `_ipython_display_`'s two outputs instead."""
        bundle = dict(self.widget._repr_mimebundle_(**kwargs) or {})
        with contextlib.suppress(P2CError):  # the run folder as it is now; the snapshot says what it cannot read
            self.refresh()
        bundle["text/plain"] = self.summary()
        bundle["text/html"] = self._snapshot()
        return bundle

    def _ipython_display_(self) -> None:
        """Two outputs: the static snapshot, then the widget (see `p2c_notebook.ui.fallback`), so a notebook
        re-opened without the widget's state shows the snapshot where JupyterLab would say "model not found"."""
        with contextlib.suppress(P2CError):
            self.refresh()
        fallback.WithFallback(
            self.widget, self.fallback_id, self._snapshot, self.summary, self._follower
        )._ipython_display_()

    def _snapshot_bundle(self) -> dict[str, str]:
        """The displayed snapshot as it is now, for its redraws (`update_display`, see `fallback.Follower`): every
        change of what it shows (`_apply`, the stepper) asks for one; a job's end and each call from a cell send
        the last one while that cell runs, so nbclient saves the final state in the output that displayed it.
        JupyterLab applies updates only while the displaying cell runs: its saved snapshot may be older."""
        return fallback.WithFallback.snapshot_bundle(self.fallback_id, self._snapshot(), self.summary())

    def progress_output(self) -> fallback.WithFallback:
        """The toolbar and progress alone (what the magics show while a stage runs), with its own static line."""
        line = "The progress of a run was shown here live; the lines below say how it ended."
        page = f"<div class='p2c-static-progress'><p class='p2c-hint'>{line}</p></div>"
        return fallback.WithFallback(self.progress_view, self.fallback_id, lambda: page, lambda: line)

    def _snapshot(self) -> str:
        try:
            return self.static_html()
        except Exception as exc:  # noqa: BLE001 - a snapshot problem must not hide the widget
            return f"<p class='p2c-error'>No static view: {render.esc(render.unexpected(exc))}</p>"

    def static_view(self) -> StaticView:
        """The snapshot alone (no widget), e.g. as a notebook's last cell so a saved copy shows the final state."""
        self.refresh()
        return StaticView(self.static_html(), self.summary())

    def summary(self) -> str:
        """Plain text: the run, each stage's state and what to do next."""
        states = self.stage_states(self._rows)
        stages = " · ".join(f"{s.name} {STEP_LABELS[states[s.name]]}" for s in registry.stages() if s.name in states)
        return "\n".join(
            [
                f"p2c walkthrough: run folder {self.run_dir}",
                f"Stages: {stages}",
                self._next_text,
                "(The interactive walkthrough needs Jupyter with ipywidgets and a running kernel.)",
            ]
        )

    def static_html(self) -> str:
        """The walkthrough as plain HTML, read from the run folder: header, stepper, every panel's content with
        the diagrams as inline SVG (rendered offline), and the repository's file list. Nothing in it loads from
        the network or runs a script.
        """
        rows = [r for r in self.pipeline.rows(recorded=self.busy) if r.artifact != "paper"]
        parts = [
            f"<style>{render.stylesheet()}</style>",
            f"<div class='p2c-header'>{self._header()}</div>",
            self.stepper.value,
            f"<div class='p2c-next p2c-next-line'>{self.next_label.value}</div>",
            static_paper_html(self.run_dir, self.pipeline.store.meta),
        ]
        for stage in registry.stages():
            for row in (r for r in rows if stage_of(r.artifact) == stage.name):
                if row.status == "missing" and stage.per_file:
                    continue  # listed by the stage's pending line
                if row.status == "missing":
                    body = "<p class='p2c-hint'>Not generated yet.</p>"
                else:
                    try:
                        body = static_body(row.artifact, self.read(row.artifact), self.store)
                    except P2CError as exc:
                        body = f"<p class='p2c-error'>{render.esc(render.one_line(str(exc)))}</p>"
                usage = render.usage_line(row.usage)
                badges = ""
                if stage.name == "code" and row.status != "missing":  # the static checks: badge in the head
                    badges, listed = self.quality.static_code(row.artifact)
                    body = listed + body
                parts.append(render.static_panel_html(row.artifact, row.status, usage, body, stage.per_file, badges))
            if stage.name in self.pending:
                parts.append(self.pending[stage.name].value)
        code = [r for r in rows if stage_of(r.artifact) == "code"]
        done = sum(r.status != "missing" for r in code)
        state = "complete" if code and done == len(code) else ("partial" if done else "missing")
        parts.append(
            "<div class='p2c-panel p2c-panel-repo'><div class='p2c-panel-head'><span class='p2c-title'>Repository"
            f"</span><span class='p2c-badge p2c-badge-{state}'>{done}/{len(code)} files</span></div>"
            f"{tree_html(self.run_dir / 'repo')}{self.quality.static_repository()}</div>"
        )
        parts.append(self.quality.static_eval())
        parts.append(
            "<p class='p2c-hint'>A static snapshot of the walkthrough, taken when this output was made. Run the "
            "cell in Jupyter with a kernel for the interactive one.</p>"
        )
        return f"<div class='p2c-static'>{''.join(parts)}</div>"

    def close(self) -> None:
        """Close the widgets and stop listening to the pipeline (which stays open)."""
        self._closed = True
        self._follower.close()
        close_tree(self.progress_view)
        close_tree(self.widget)

    # --- the run folder --------------------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return self.pipeline.store.root

    @property
    def store(self) -> RunStore:
        """The run folder's store: panels ask the library for the files made from artifacts through it."""
        return self.pipeline.store

    @property
    def busy(self) -> bool:
        return self._running

    def panel(self, artifact: str) -> ArtifactPanel:
        return self.panels[artifact]

    def read(self, artifact: str) -> str:
        return self.pipeline.store.read(artifact)

    def refresh(self) -> None:
        """Re-read the run folder (user edits on disk included) and redraw what changed.

        While a job runs, the manifest is read as recorded: the running pipeline keeps it current. A displayed
        snapshot is redrawn now, on the calling thread (see `_snapshot_bundle`).
        """
        self._apply(self.pipeline.rows(recorded=self.busy))
        self._follower.flush()

    def _apply(self, rows: list[Row]) -> None:
        with self._lock:
            if self._closed:
                return
            rows = [r for r in rows if r.artifact != "paper"]
            # Planned files get a panel once their analysis / code exists; until then one line per stage lists
            # them, so a logic design of many files is drawn at once.
            shown = [r for r in rows if r.status != "missing" or not registry.get(stage_of(r.artifact)).per_file]
            for stage, line in self.pending.items():
                planned = [r for r in rows if stage_of(r.artifact) == stage]
                missing = [r.artifact.partition("/")[2] for r in planned if r.status == "missing"]
                line.value = render.pending_html(registry.get(stage).label, missing, len(planned))
            order = [r.artifact for r in shown]
            if order != list(self.panels):
                self._rebuild(order)
            busy = self.busy
            for row in shown:
                entry = self.pipeline.store.entry(row.artifact)
                self.panels[row.artifact].update(row, entry.sha256 if entry else None, busy)
            nxt = self.next_stage(rows)
            self.run_button.disabled = busy or nxt is None
            self._rows = rows
            self._draw_steps()
            reserve(self.stale_button, any(r.status == "stale" for r in rows))
            self.stale_button.disabled = busy
            self.cancel_button.disabled = not busy
            self._draw_meter(self.pipeline.store.spent())
            code = [r for r in rows if stage_of(r.artifact) == "code"]
            self.repo_panel.update(sum(r.status != "missing" for r in code), len(code))
            self._draw_questions(busy)
            self.paper_panel.update(self.pipeline.store.meta, busy)
            self.quality.update(self.panels, self.repo_panel.checks, any(r.status != "missing" for r in code), busy)
            self.run_panel.update(busy)
        self._follower.changed()

    def stage_states(self, rows: list[Row] | None = None) -> dict[str, str]:
        """Each stage's state for the stepper: done, waiting (for the user's approval), stale, running or todo.

        A generated stage waits for the user only while approval is required and a later stage still has work:
        that is where the next run would pause.
        """
        rows = [r for r in (rows if rows is not None else self.pipeline.rows()) if r.artifact != "paper"]
        auto = bool(self.auto_approve.value)
        states: dict[str, str] = {}
        made = {stage_of(r.artifact) for r in rows}
        steps = tuple(s.name for s in registry.stages() if not s.on_request or s.name in made)  # reproduce: if asked
        for stage in steps:
            statuses = [r.status for r in rows if stage_of(r.artifact) == stage]
            if self.busy and stage in self._running_stages:
                states[stage] = "running"
            elif "stale" in statuses:
                states[stage] = "stale"
            elif not statuses or "missing" in statuses:
                states[stage] = "todo"
            elif auto or all(s in ("approved", "edited") for s in statuses):
                states[stage] = "done"
            else:
                states[stage] = "generated"
        for index, stage in enumerate(steps):
            if states[stage] == "generated":
                later = any(
                    states[s] in ("todo", "stale", "running") and not registry.get(s).on_request  # made when asked
                    for s in steps[index + 1 :]
                )
                states[stage] = "waiting" if later else "done"
        return states

    def _draw_steps(self) -> None:
        """The stepper and the line under it that says what to click next."""
        rows = self._rows
        states = self.stage_states(rows)
        nxt = self.next_stage(rows)
        waiting = next((s for s in states if states[s] == "waiting"), None)
        running = next((s for s in states if states[s] == "running"), None)
        current = waiting or running or nxt
        self.stepper.value = render.stepper_html(
            [
                (s.name, s.label, states[s.name], STEP_LABELS[states[s.name]])
                for s in registry.stages()
                if s.name in states
            ],
            current,
        )
        stale = sum(r.status == "stale" for r in rows)
        if self.busy:
            text = f"{self._job_label or 'Running'}… Click Cancel to stop after the calls in flight."
        elif waiting is not None:
            where = "each of its panels" if registry.get(waiting).per_file else "its panel"
            text = (
                f"Your turn: review the {registry.get(waiting).label} below and click Approve in {where} "
                "(or tick Auto-approve), then Run next stage."
            )
        elif stale and nxt is not None:
            text = (
                f"Next: click Re-run stale to regenerate {stale} stale artifact(s), "
                f"starting with the {registry.get(nxt).label}."
            )
        elif nxt is not None:
            text = f"Next: click Run next stage to generate the {registry.get(nxt).label}."
        else:
            text = "Done: all artifacts generated. The repository's files are listed at the bottom (Download zip)."
        self._next_text = text
        self.next_label.value = f"<b>{render.esc(text.partition(':')[0])}:</b>{render.esc(text.partition(':')[2])}"
        self._follower.changed()

    def _rebuild(self, order: list[str]) -> None:
        old = self.panels
        self.panels = {a: old.pop(a) if a in old else ArtifactPanel(a, self) for a in order}
        children = []
        for stage in registry.names():
            children += [p.widget for a, p in self.panels.items() if stage_of(a) == stage]
            if stage in self.pending:
                children.append(self.pending[stage])
            if stage == registry.planning_names()[-1]:
                children.append(self.questions_panel.widget)
        self.panel_box.children = children
        for gone in old.values():
            close_tree(gone.widget)

    def next_stage(self, rows: list[Row] | None = None) -> str | None:
        """The first stage with a missing or stale artifact (None when everything is generated)."""
        rows = rows if rows is not None else self.pipeline.rows()
        todo = {stage_of(r.artifact) for r in rows if r.status in ("missing", "stale")}
        per_file = [s.name for s in registry.file_stages()]
        if "logic" not in todo and not any(stage_of(r.artifact) in per_file for r in rows):
            todo.update(per_file)  # the file list is unknown until the logic design exists
        return next((step for step in registry.names() if step in todo), None)

    # --- actions (each raises P2CError; the buttons show it in the page) -------------------------------
    def approve(self, artifact: str) -> list[str]:
        self._require_idle()
        approved = self.pipeline.approve(artifact)
        self.refresh()
        return approved

    def edit(self, artifact: str, text: str) -> list[str]:
        """Save the user's version (validated by the pipeline); returns the artifacts it made stale.

        The text already saved (the same edit made in the widget, then in a cell) changes nothing and says so."""
        self._require_idle()
        if self.pipeline.store.entry(artifact) is not None and self.read(artifact) == text:
            self._already(f"{artifact} already holds this text: nothing to save.")
            return []
        before = {r.artifact for r in self.pipeline.rows() if r.status == "stale"}
        self.pipeline.edit(artifact, text)
        rows = self.pipeline.rows()
        self._apply(rows)
        self._follower.flush()
        return [r.artifact for r in rows if r.status == "stale" and r.artifact not in before]

    def regenerate(
        self, artifact: str, feedback: str | None = None, overwrite_edited: bool = False, block: bool = False
    ) -> str | None:
        """Generate one artifact again on the background thread; `feedback` goes to the model.

        Feedback this artifact's current version was already made with (in the widget, then again in a cell) is
        not sent again, also when the version went stale since (a later cell, run before, changed its inputs): the
        notice saying so is returned (None when a job started)."""
        self._settle(block)
        panel = self.panels.get(artifact)
        if feedback and self._applied(artifact, feedback):
            entry = self.pipeline.store.entry(artifact)
            stale = entry is not None and entry.status == "stale"
            since = " It is stale since: Re-run stale brings it up to date." if stale else ""
            return self._already(
                f"{artifact} was already regenerated with this feedback (its current version); change the feedback "
                f"to ask for something else.{since}"
            )

        def work() -> str:
            before = {r.artifact for r in self.pipeline.rows() if r.status == "stale"}
            saved = self.pipeline.regenerate(artifact, feedback, overwrite_edited)
            self._remember_feedback(artifact, feedback, saved.sha256)
            self._approve_passed()
            if panel is not None:
                if panel.has_controls:
                    panel.feedback.value = ""
                panel.show_note(f"Regenerated {artifact}" + (" with your feedback." if feedback else "."))
            stale = [r.artifact for r in self.pipeline.rows() if r.status == "stale" and r.artifact not in before]
            if not stale:
                return f"Regenerated {artifact}."
            return f"Regenerated {artifact}; {len(stale)} artifact(s) that depend on it are now stale: Re-run stale."

        self._start(f"Regenerating {artifact}", work, panel, block)
        return None

    def _applied(self, artifact: str, feedback: str) -> bool:
        """Whether the artifact's current version was made with this feedback (stale or not)."""
        self.pipeline.store.reload()
        record = (self.pipeline.store.meta.get("feedback") or {}).get(artifact)
        entry = self.pipeline.store.entry(artifact)
        return (
            isinstance(record, dict)
            and entry is not None
            and record.get("sha256") == entry.sha256
            and record.get("feedback") == sha256(feedback.strip())
        )

    def _remember_feedback(self, artifact: str, feedback: str | None, digest: str) -> None:
        store = self.pipeline.store
        with contextlib.suppress(RunError), store.locked():  # a memory for "already done": never worth a failure
            given = dict(store.meta.get("feedback") or {})
            if feedback:
                given[artifact] = {"feedback": sha256(feedback.strip()), "sha256": digest}
            else:
                given.pop(artifact, None)
            store.set_meta(feedback=given)

    def _settle(self, block: bool) -> None:
        """A blocking call from a cell waits for the job a click started, then sees what it did."""
        if block and self.busy:
            self.wait()

    def _already(self, message: str) -> str:
        """What an action reports when what it asks is already done: a notice, never an error."""
        self.last_error = None
        self.last_result = RunResult("done", message)
        self._status(message, "note")
        return message

    # --- the open questions ---------------------------------------------------------------------------
    def questions(self) -> list[Question]:
        """The planning's open questions with their states (see `p2c_notebook.run.questions`)."""
        return questions.questions(self.pipeline.store)

    def answer(self, question_id: str, text: str | None = None, judgement: bool = False) -> list[str]:
        """Save an answer (or "use your judgement"); returns what became stale (the analysis and code made without
        it). The same answer again changes nothing."""
        self._require_idle()
        stale = questions.answer(self.pipeline, question_id, text, judgement)
        self.refresh()
        return stale

    def _draw_questions(self, busy: bool) -> None:
        """Re-read the queue only when what it is made from changed (this runs on every saved file)."""
        key = tuple(self.pipeline.store.hash_of(a) for a in (*questions.sources(), registry.ANSWERS))
        if key == self._questions_key:
            self.questions_panel.update(self._questions, busy)
            return
        try:
            queue = self.questions()
        except P2CError as exc:  # answers.yaml damaged by hand: said in the panel, the rest still draws
            self.questions_panel.message.value = f"<span class='p2c-error'>{render.esc(str(exc))}</span>"
            return
        self._questions_key, self._questions = key, queue
        self.questions_panel.update(queue, busy)

    # --- earlier versions (the compare view) -----------------------------------------------------------
    def versions(self, artifact: str) -> list[Version]:
        """The artifact's earlier versions kept in the run folder, then its current one."""
        return history.versions(self.pipeline.store, artifact)

    def diff_html(self, artifact: str, older: int, newer: int = history.CURRENT) -> str:
        return history.diff_html(self.pipeline.store, artifact, older, newer)

    def run(
        self,
        from_stage: str | None = None,
        until: str | None = None,
        require_approval: bool | None = None,
        overwrite_edited: bool = False,
        block: bool = False,
        missing_only: bool = False,
    ) -> str | None:
        """`Pipeline.run` on the background thread; approval is required unless Auto-approve is ticked.

        When every artifact up to `until` is already generated and up to date (the steps were done in the widget
        before the cell ran), nothing runs: the notice saying so is returned (None when a job started).
        `missing_only`: a cell that generates what is missing also counts stale artifacts as done (a later cell
        of the same notebook, run before, made them stale), so running the notebook again sends nothing."""
        self._settle(block)
        require = not self.auto_approve.value if require_approval is None else require_approval
        done = self._done_until(until, missing_only) if from_stage is None else None
        if done is not None:
            return self._already(done)

        def work() -> str:
            result = self.pipeline.run(from_stage, until, require, overwrite_edited)
            self.last_result = result
            if not require:
                self._approve_passed()
            if result.state == "paused":
                return (
                    f"Waiting for approval of {', '.join(result.pending)}: click Approve in their panels "
                    "(or tick Auto-approve), then Run next stage."
                )
            return result.message

        last = registry.find(until) if until else registry.stages()[registry.last_by_default()]
        label = f"Running until {last.label if last else until}"
        self._start(label, work, None, block)
        return None

    def _done_until(self, until: str | None, missing_only: bool = False) -> str | None:
        """The "already done" notice when nothing up to `until` is missing or stale (or, `missing_only`, missing),
        else None (there is work)."""
        last = registry.index(until) if until else registry.last_by_default()
        rows = [r for r in self.pipeline.rows() if r.artifact != "paper"]
        wanted = [r for r in rows if registry.index(stage_of(r.artifact)) <= last]
        known = {stage_of(r.artifact) for r in rows}
        if any(s.name not in known for s in registry.stages()[: last + 1]):
            return None  # a stage without any artifact yet (the files are unknown before the logic design)
        todo = ("missing",) if missing_only else ("missing", "stale")
        if any(r.status in todo for r in wanted):
            return None
        stale = sum(r.status == "stale" for r in wanted)
        if stale:
            return (
                f"Already generated: everything up to the {registry.stages()[last].label}; {stale} artifact(s) are "
                "stale since an edit or answer: Re-run stale (w.rerun_stale()) regenerates them."
            )
        if until is None or last == registry.last_by_default():
            repo = self.run_dir / "repo"
            return f"Already done: every artifact is generated and up to date; the repository is in {repo}."
        return f"Already done: everything up to the {registry.stages()[last].label} is generated and up to date."

    def _approve_passed(self) -> None:
        """With Auto-approve ticked, what a run generated is approved as it passes (so the badges say so).

        A stage is approved once all of it exists and nothing in it is stale; edited artifacts keep their badge.
        """
        if not self.auto_approve.value:
            return
        rows = self.pipeline.rows()
        for stage in registry.names():
            statuses = [r.status for r in rows if stage_of(r.artifact) == stage]
            if "generated" in statuses and not {"missing", "stale"} & set(statuses):
                self.pipeline.approve(stage)

    def run_stage(self, stage: str | None = None, block: bool = False) -> str | None:
        """Run one stage (default: the next one) — what the "Run next stage" button does."""
        self._settle(block)
        stage = stage or self.next_stage()
        if stage is None:
            return self._already(f"Nothing left to do: the repository is in {self.run_dir / 'repo'}.")
        return self.run(until=stage, block=block)

    def rerun_stale(self, block: bool = False) -> str | None:
        """Regenerate every stale artifact; with none stale (already re-run in the widget), say so and return."""
        self._settle(block)
        stale = [r.artifact for r in self.pipeline.rows() if r.status == "stale"]
        if not stale:
            return self._already("Nothing is stale: every artifact is up to date (already re-run).")
        last = max((stage_of(a) for a in stale), key=registry.index)
        return self.run(until=last, block=block)

    def choose_sections(self, exclude: list[str]) -> list[str]:
        """Leave out the paper's sections `exclude` names (globs on titles or numbers; [] brings all back): part of
        the run's inputs, so what was generated from the paper goes stale. Returns the artifacts now stale."""
        self._require_idle()
        self.pipeline.choose_sections(exclude)
        rows = self.pipeline.rows()
        self._apply(rows)
        self._follower.flush()
        return [r.artifact for r in rows if r.status == "stale"]

    def evaluate(
        self, n: int = DEFAULT_SAMPLES, reference: str | None = None, block: bool = False, again: bool = False
    ) -> str | None:
        """Judge the repository against the paper (`p2c eval`) on the background thread, with this run's model:
        what the Evaluate button does (`again=True`). Never automatic: it costs n calls. Without `again`, an
        evaluation that is current (the code unchanged) with the same n and reference is not paid for twice: the
        notice saying so is returned (None when a job started)."""
        self._settle(block)
        self._require_idle()
        done = None if again else already_evaluated(self.run_dir, n, reference)
        if done is not None:
            return self._already(done)
        work = self.quality.eval_panel.job(self.pipeline, n, reference, self._on_event)
        self._start(f"Evaluating the repository ({n} sample(s))", work, None, block)
        return None

    def _evaluate_clicked(self, n: int, reference: str | None) -> None:
        """The Evaluate button always judges again: the user asked for new samples."""
        self.evaluate(n, reference, again=True)

    def cancel(self) -> None:
        """Ask the running job to stop after the calls in flight; what is saved stays saved."""
        if not self.busy:  # the pipeline's flag would outlive this click and stop the next regeneration
            return
        self._cancel_requested = True
        self.pipeline.cancel()
        self.quality.cancel_event.set()  # an evaluation in flight
        self._status("Cancelling after the calls in flight…", "hint")

    def wait(self, timeout: float | None = None) -> RunResult | None:
        """Join the background job; an interrupt (Ctrl-C, kernel interrupt) cancels it cleanly. Then the displayed
        snapshot is redrawn from the calling cell, so a notebook executed by nbclient saves what the job made."""
        thread = self._thread
        if thread is not None:
            try:
                thread.join(timeout)
            except KeyboardInterrupt:
                self.cancel()
                thread.join()
        self._follower.flush()
        return self.last_result

    # --- the background job ----------------------------------------------------------------------------
    def _require_idle(self) -> None:
        if self._closed:
            raise RunError("This walkthrough was closed; create a new one to continue.")
        if self.busy:
            raise RunError("A run is in progress: wait for it to finish, or click Cancel.")

    def _start(self, label: str, work: Callable[[], str], panel: ArtifactPanel | None, block: bool) -> None:
        with self._lock:
            self._require_idle()
            self._running = True
            self._job_label = label
            self._running_stages.clear()
            self._cancel_requested = False
            self.last_error = None
            self._streams.clear()
            self._notices.clear()
            self.notices.value = ""
            self._thread = threading.Thread(target=self._job, args=(work, panel), name="p2c-walkthrough", daemon=True)
        self._status(label + "…", "hint")
        self._set_busy(True)
        self._draw_steps()
        self._thread.start()
        if block:
            self.wait()  # which redraws the displayed snapshot while the calling cell still runs

    def _job(self, work: Callable[[], str], panel: ArtifactPanel | None) -> None:
        message, level = "", "note"
        try:
            message = work()
        except Cancelled as exc:
            message, level = str(exc), "hint"
        except EditedArtifactError as exc:
            message, level = str(exc), "error"
            if panel is not None:
                panel.ask_confirmation()  # says it in the panel, with the Confirm button
                panel = None
        except ReplayMissError as exc:  # a student's own words: a paragraph saying what to do, not a code
            message, level = exc.explanation, "error"
        except P2CError as exc:
            message, level = str(exc), "error"
        except Exception as exc:  # noqa: BLE001 - the thread's edge: one line in the page, never a traceback
            message, level = render.unexpected(exc), "error"
        if level == "error":
            self.last_error = render.one_line(message)
            if panel is not None:
                panel.show_error(message)
        with self._lock:
            self._running = False
            self._running_stages.clear()
        self._draw_stream(force=True)
        try:
            self.refresh()
        except P2CError as exc:
            message, level = f"{message} (then: {exc})", "error"
        self._status(message, level)

    def _set_busy(self, busy: bool) -> None:
        self.run_button.disabled = busy
        self.stale_button.disabled = busy
        self.cancel_button.disabled = not busy
        for panel in self.panels.values():
            panel.set_busy(busy)
        self.quality.eval_panel.set_busy(busy)
        self.paper_panel.apply_button.disabled = busy
        self.run_panel.set_busy(busy)

    def _click(self, action: Callable[[], object]) -> None:
        """The edge for toolbar buttons."""
        try:
            action()
        except P2CError as exc:
            self._status(str(exc), "error")
        except Exception as exc:  # noqa: BLE001 - never a traceback in the page
            self._status(render.unexpected(exc), "error")

    def _add_notice(self, level: str, message: str) -> None:
        with self._lock:
            self._notices = [*self._notices[-4:], (level, message)]
            items = "".join(
                f"<div class='p2c-notice-{level}'>{render.esc(render.one_line(text, 300))}</div>"
                for level, text in self._notices
            )
        self.notices.value = items

    def _status(self, text: str, level: str) -> None:
        if self._closed:
            return
        self.status_line.value = f"<span class='p2c-{level}'>{render.esc(render.one_line(text, 1200))}</span>"

    # --- live views from pipeline events ---------------------------------------------------------------
    def _on_event(self, event: Event) -> None:
        """The pipeline's sink: runs on its threads, so it only updates a few widgets and never raises."""
        if self._closed:
            return
        try:
            self._handle(event)
        except Exception as exc:  # noqa: BLE001 - a display problem must not break the run
            self._status(f"(display) {render.unexpected(exc)}", "error")

    def _handle(self, event: Event) -> None:
        if isinstance(event, TokenDelta):
            with self._lock:
                text = ("" if event.restart else self._streams.get(event.artifact, "")) + event.text
                self._streams[event.artifact] = text[-STREAM_TAIL:]
                self._streaming = event.artifact
            self._draw_stream()
        elif isinstance(event, StageStarted):
            with self._lock:
                self._streams[event.artifact] = ""
                self._streaming = event.artifact
                self._in_flight = [*(a for a in self._in_flight if a != event.artifact), event.artifact]
                new_stage = stage_of(event.artifact) not in self._running_stages
                self._running_stages.add(stage_of(event.artifact))
            self._draw_stream(force=True)
            if new_stage:
                self._draw_steps()
        elif isinstance(event, RunStarted):
            if self._cancel_requested:  # Cancel clicked before the run cleared the pipeline's flag
                self.pipeline.cancel()
            self._draw_progress(0, event.steps)
            if event.estimate:
                self._add_notice("info", event.estimate)
        elif isinstance(event, Progress):
            self._draw_progress(event.done, event.total)
        elif isinstance(event, UsageReported):
            self._draw_meter(event.total)
        elif isinstance(event, ArtifactSaved):
            with self._lock:
                self._in_flight = [a for a in self._in_flight if a != event.artifact]
            self._draw_stream(force=True)
            self._apply(self.pipeline.rows(recorded=True))
        elif isinstance(event, Notice) and event.level != "error":  # errors reach the status line
            self._add_notice(event.level, event.message)
        elif isinstance(event, AwaitingApproval):
            self._status(f"Waiting for approval of {', '.join(event.pending)} before {event.next_stage}.", "hint")
        elif isinstance(event, RunFinished):
            with self._lock:
                self._in_flight = []
            self._draw_meter(event.total)
            self._draw_stream(force=True)

    def _draw_progress(self, done: int, total: int) -> None:
        self.progress.max = max(total, 1)
        self.progress.value = min(done, self.progress.max)
        self.progress.description = f"{done}/{total}"

    def _draw_meter(self, total: Usage) -> None:
        text = f"Tokens for this run: {total.describe()}"
        if self.meter.value != render.esc(text):
            self.meter.value = render.esc(text)

    def _draw_stream(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._stream_drawn < STREAM_INTERVAL:
            return
        self._stream_drawn = now
        with self._lock:
            artifact, text = self._streaming, self._streams.get(self._streaming, "")
            flying = list(self._in_flight)
        if not artifact:
            return
        show(self.stream, True)
        title = f"{'Streaming' if self.busy else 'Last reply'}: {artifact}"
        if len(flying) > 1:
            title += f" · {len(flying)} in flight: " + ", ".join(flying[:6]) + (" …" if len(flying) > 6 else "")
        self.stream.value = f"<div class='p2c-hint'>{render.esc(title)}</div><pre>{render.esc(text)}</pre>"

    def _header(self) -> str:
        """Paper, run folder and model: the run folder by name, its full path (often a long temp path) in a tooltip."""
        paper = self.pipeline.store.meta.get("paper", {})
        source = Path(str(paper.get("source", ""))).name if isinstance(paper, dict) else ""
        parts = [
            "<b>p2c walkthrough</b>",
            f"run folder <code class='p2c-run-folder' title='{render.esc(str(self.run_dir))}'>"
            f"{render.esc(self.run_dir.name)}</code>",
            f"model <code>{render.esc(render.backend_label(self.pipeline.settings))}</code>",
        ]
        if source:
            parts.insert(1, f"paper <code>{render.esc(source)}</code>")
        return " · ".join(parts)


class StaticView:
    """A walkthrough's static snapshot on its own: text/html and text/plain, no widget."""

    def __init__(self, page: str, text: str) -> None:
        self.page = page
        self.text = text

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, str]:
        return {"text/html": self.page, "text/plain": self.text}


def walkthrough(
    paper_or_run: Path | str, out: Path | str | None = None, auto_approve: bool = False, **settings: Any
) -> Walkthrough:
    """Open a run folder (or start one from a paper) and return its walkthrough widget.

    `settings` are overrides for `load_settings` (model, base_url, api_key, backend, ...).
    """
    pipeline = open_run(paper_or_run, RunOptions(out=out, settings=load_settings(settings)))
    return Walkthrough(pipeline, auto_approve=auto_approve)
