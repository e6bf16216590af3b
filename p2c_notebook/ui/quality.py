"""What the generated code is worth, in the walkthrough: the static checks (a badge and a file:line list per code
file, a summary for the repository) and the Evaluate panel (score, critiques that link to their files, whether
the result is current, and the button that runs the judge on the walkthrough's background thread).

Everything comes from the library (`runchecks`, `evaluate`); this module only draws it. Model and file text is
escaped; the only links are fragments to the code panels of this run.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ipywidgets as widgets  # type: ignore[import-untyped]

from p2c_notebook.errors import P2CError, RunError
from p2c_notebook.run.events import Event, EventBus, Progress
from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.run.usage import Usage
from p2c_notebook.stages import runchecks
from p2c_notebook.stages.checks import Violation
from p2c_notebook.stages.evaluate import (
    DEFAULT_SAMPLES,
    SUMMARY,
    EvalView,
    eval_status,
    eval_view,
    evaluate_run,
    load_summary,
)
from p2c_notebook.ui import render
from p2c_notebook.ui.panels import button, html, show
from p2c_notebook.ui.repo import repo_files


def already_evaluated(run_dir: Path, n: int, reference: str | None) -> str | None:
    """The "already done" notice when the run's evaluation is current (the code unchanged since) and was made with
    the same number of samples and reference: a notebook cell run again then pays for nothing. None otherwise."""

    def where(path: str | None) -> str | None:
        return str(Path(path).expanduser().resolve()) if path else None

    try:
        summary = load_summary(run_dir)
        current = summary is not None and eval_status(run_dir) == "current"
    except (P2CError, OSError):
        return None
    if summary is None or not current or summary.n != n or where(summary.reference) != where(reference):
        return None
    return (
        f"Already evaluated, and the code has not changed since: {summary.describe()}. Evaluate again (the button, "
        "or again=True) to draw new samples."
    )


MAX_LISTED = 200  # violations listed per file: a file past that is broken as a whole, the count says so


# --------------------------------------------------------------------------------------------------- links
def anchor_id(run_dir: Path, path: str) -> str:
    """The element id of a code file's panel: unique per run folder, so two walkthroughs on a page never share."""
    run = hashlib.sha256(str(Path(run_dir).resolve()).encode("utf-8")).hexdigest()[:8]
    return f"p2c-{run}-{render.slug(path)}"


def file_link(run_dir: Path, path: str) -> str:
    """A link that scrolls to (and in the static view opens) the file's code panel."""
    return f"<a class='p2c-file-link' href='#{anchor_id(run_dir, path)}'><code>{render.esc(path)}</code></a>"


# --------------------------------------------------------------------------------------------- static checks
def _count(violations: list[Violation]) -> tuple[int, int]:
    errors = sum(1 for v in violations if v.severity == "error")
    return errors, len(violations) - errors


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def checks_badge(violations: list[Violation], anchor: str = "") -> str:
    """A file's badge: clean, or N problems (errors) and/or M warnings."""
    ident = f" id='{render.esc(anchor)}'" if anchor else ""
    errors, warnings = _count(violations)
    if not violations:
        return f"<span class='p2c-badge p2c-badge-clean'{ident} title='Static checks: no problems'>clean</span>"
    parts = []
    if errors:
        parts.append(f"<span class='p2c-badge p2c-badge-problems'>{_plural(errors, 'problem')}</span>")
    if warnings:
        parts.append(f"<span class='p2c-badge p2c-badge-warnings'>{_plural(warnings, 'warning')}</span>")
    return f"<span class='p2c-checks-badges'{ident} title='Static checks'>{''.join(parts)}</span>"


def violations_html(violations: list[Violation]) -> str:
    """The violations as a list: file:line, message, the check that found it and its severity, all escaped."""
    items = []
    for v in violations[:MAX_LISTED]:
        items.append(
            f"<li class='p2c-violation p2c-violation-{render.esc(v.severity)}'>"
            f"<code class='p2c-location'>{render.esc(v.location)}</code> "
            f"<span class='p2c-violation-message'>{render.esc(render.one_line(v.message, 600))}</span> "
            f"<span class='p2c-check-name'>[{render.esc(v.check)}]</span> "
            f"<span class='p2c-severity'>{render.esc(v.severity)}</span></li>"
        )
    more = len(violations) - MAX_LISTED
    tail = f"<li class='p2c-hint'>… and {more} more (`p2c check` lists them all)</li>" if more > 0 else ""
    return f"<ul class='p2c-violations'>{''.join(items)}{tail}</ul>" if items else ""


def file_checks_html(run_dir: Path, path: str, violations: list[Violation] | None, error: str = "") -> str:
    """What a code panel shows under its head: the anchor the critique links land on, the badge and the list."""
    anchor = anchor_id(run_dir, path)
    if error:
        return (
            f"<div class='p2c-checks' id='{anchor}'><span class='p2c-error'>Static checks: "
            f"{render.esc(render.one_line(error))}</span></div>"
        )
    if violations is None:  # not Python, or not checked yet: only the anchor the critique links land on
        return f"<div class='p2c-checks p2c-checks-none' id='{anchor}'></div>"
    label = "<span class='p2c-checks-label'>Static checks</span>"
    return f"<div class='p2c-checks' id='{anchor}'>{label}{checks_badge(violations)}{violations_html(violations)}</div>"


@dataclass(frozen=True)
class ChecksResult:
    """The run's checks as the widget draws them: violations per file ("" = the repository's own) and the
    record they come from (for the repair effect), or why there are none."""

    found: dict[str, list[Violation]]
    data: dict[str, Any] | None
    error: str = ""

    def of(self, path: str) -> list[Violation] | None:
        """A file's violations; None when the file is not checked (not Python, or no checks yet)."""
        return self.found.get(path) if self.data is not None else None


def load_checks(run_dir: Path, write: bool) -> ChecksResult:
    """The checks of the code as it is now: recomputed when stale as `p2c check` does (and saved with `write`),
    never a traceback."""
    try:
        data = runchecks.current(run_dir, write=write)
    except (P2CError, OSError, ValueError, KeyError) as exc:
        return ChecksResult({}, None, str(exc) or render.unexpected(exc))
    return ChecksResult(runchecks.violations_of(data), data)


def repository_checks_html(run_dir: Path, result: ChecksResult) -> str:
    """The repository panel's summary: the totals (`runchecks.describe`), the repository-level violations, the
    files with problems (linked to their panels) and what the in-loop repair changed."""
    if result.error:
        return f"<p class='p2c-error'>Static checks: {render.esc(render.one_line(result.error))}</p>"
    if result.data is None:
        return ""
    data = result.data
    errors, warnings = int(data.get("errors", 0)), int(data.get("warnings", 0))
    state = "problems" if errors else "warnings" if warnings else "clean"
    line = render.esc(runchecks.describe(data))
    parts = [
        f"<div class='p2c-checks-summary p2c-checks-{state}'><span class='p2c-checks-describe'>{line}</span></div>"
    ]
    own = result.found.get("", [])
    if own:
        parts.append("<div class='p2c-hint'>The repository as a whole:</div>" + violations_html(own))
    flagged = [(p, vs) for p, vs in result.found.items() if p and vs]
    if flagged:
        items = "".join(f"<li>{file_link(run_dir, p)} {checks_badge(vs)}</li>" for p, vs in flagged)
        parts.append(f"<ul class='p2c-checks-files'>{items}</ul>")
    effect = _repair_line(data)
    if effect:
        parts.append(f"<div class='p2c-hint p2c-repair-effect'>{render.esc(effect)}</div>")
    return "".join(parts)


def _repair_line(data: dict[str, Any]) -> str:
    """One line on the in-loop repair re-asks: how many files, and the problems before and after."""
    try:
        effect = runchecks.repair_effect(data)
    except (KeyError, TypeError, ValueError):
        return ""
    asked = effect["files"]["re_asked"]
    if not asked:
        return ""
    before, after = sum(effect["before"].values()), sum(effect["after"].values())
    files = _plural(asked, "file")
    return f"The in-loop repair re-asked {files}: {before} violation(s) in the first replies, {after} now."


def static_file_checks(run_dir: Path, path: str, result: ChecksResult) -> tuple[str, str]:
    """A code file in the static view: the badge for its (closed) panel's head, carrying the anchor the critique
    links land on, and the list for its body."""
    anchor = anchor_id(run_dir, path)
    if result.error:
        return f"<span id='{anchor}'></span>", file_checks_html(run_dir, path, None, result.error)
    violations = result.of(path)
    if violations is None:  # not Python, or no checks yet: only the anchor
        return f"<span id='{anchor}'></span>", ""
    return checks_badge(violations, anchor), violations_html(violations)


# ------------------------------------------------------------------------------------------------ evaluation
EVAL_HINT = (
    "Not evaluated yet. Evaluate asks the judge model (this run's model) to list the components the paper requires, "
    "critique the repository against them and score it 1-5, n times; a reference repository (the authors' code: "
    "a folder, .zip or .tar.gz) makes it reference-based. Each sample is one call; nothing runs until you click."
)


def critiques_html(run_dir: Path, view: EvalView) -> str:
    """The merged critique list: severity, component, critique, its files (linked to their panels when they exist
    in the repository) and how many valid samples raised it."""
    summary = view.summary
    if summary is None or not summary.critiques:
        return ""
    rows = []
    for c in summary.critiques:
        files = []
        for name in c.files:
            target = view.links.get(name)
            if target is not None:
                files.append(file_link(run_dir, target.removeprefix("repo/")))
            else:
                files.append(f"<code class='p2c-unknown-file' title='not in the repository'>{render.esc(name)}</code>")
        rows.append(
            f"<tr class='p2c-critique p2c-critique-{render.esc(c.severity)}'>"
            f"<td><span class='p2c-badge p2c-badge-{render.esc(c.severity)}'>{render.esc(c.severity)}</span></td>"
            f"<td>{render.esc(c.component)}</td><td>{render.esc(c.critique)}</td>"
            f"<td>{', '.join(files) or '—'}</td><td>{c.samples}/{summary.valid}</td></tr>"
        )
    return (
        "<table class='p2c-table p2c-critiques'><thead><tr><th>Severity</th><th>Component</th><th>Critique</th>"
        f"<th>Files</th><th>Samples</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def eval_html(run_dir: Path, view: EvalView) -> str:
    """The Evaluate panel's content: the score with its spread and the valid samples, when and how it was judged,
    whether the code changed since (stale), the critiques, notes and what judging cost."""
    summary = view.summary
    if summary is None:
        return f"<p class='p2c-hint'>{render.esc(EVAL_HINT)}</p>"
    parts = []
    if view.status == "stale":
        parts.append(
            "<p class='p2c-stale-note'>The code changed since it was judged: this score describes an earlier "
            "version. Click Evaluate to judge the code as it is now.</p>"
        )
    if summary.mean is None:
        score = f"<span class='p2c-score p2c-score-none'>no valid sample</span> of {summary.n}"
    else:
        score = (
            f"<span class='p2c-score'>{summary.mean:.2f}</span> / 5 <span class='p2c-spread'>(std {summary.std:.2f}, "
            f"min {summary.min}, max {summary.max}; {summary.valid} of {summary.n} samples valid)</span>"
        )
    parts.append(f"<div class='p2c-eval-score'>Score: {score}</div>")
    how = f"{summary.mode}, judge {summary.judge}, judged {summary.created}"
    if summary.reference:
        how += f", reference {summary.reference}"
        if summary.narrowed:
            how += f" (narrowed to the {len(summary.reference_files)} files the judge chose)"
    parts.append(f"<div class='p2c-hint'>{render.esc(how)}</div>")
    if summary.critiques:
        parts.append(f"<h4>Critiques ({len(summary.critiques)})</h4>{critiques_html(run_dir, view)}")
    elif summary.valid:
        parts.append("<p class='p2c-hint'>No critique: the judge found every component it listed implemented.</p>")
    if summary.notes:
        notes = "".join(f"<li>{render.esc(render.one_line(n, 300))}</li>" for n in summary.notes[:20])
        parts.append(
            f"<details class='p2c-eval-notes'><summary>Notes ({len(summary.notes)})</summary><ul>{notes}</ul></details>"
        )
    usage = Usage.from_dict(summary.usage)
    parts.append(f"<div class='p2c-usage'>Judging: {render.esc(render.usage_line(usage) or 'no calls')}</div>")
    return "".join(parts)


def eval_head(status: str) -> str:
    return (
        "<div class='p2c-panel-head'><span class='p2c-title'>Evaluation</span>"
        f"<span class='p2c-badge p2c-badge-{render.esc(status)}'>{render.esc(status)}</span></div>"
    )


def static_eval_html(run_dir: Path) -> str:
    """The Evaluate panel of the static view (no controls)."""
    try:
        view = eval_view(run_dir)
    except (P2CError, OSError) as exc:
        body = f"<p class='p2c-error'>{render.esc(render.one_line(str(exc) or repr(exc)))}</p>"
        return f"<div class='p2c-panel p2c-panel-eval'>{eval_head('missing')}{body}</div>"
    return f"<div class='p2c-panel p2c-panel-eval'>{eval_head(view.status)}{eval_html(run_dir, view)}</div>"


def state_key(run_dir: Path) -> tuple[tuple[object, ...], ...]:
    """What the checks and the evaluation depend on: the repository's files and the two records, by stat (a
    redraw of the walkthrough reads no file unless one of these changed)."""
    items: list[tuple[object, ...]] = []
    paths = [runchecks.CHECKS_JSON, SUMMARY, *(f"repo/{f}" for f in repo_files(run_dir / "repo"))]
    for rel in paths:
        try:
            info = (run_dir / rel).stat()
            items.append((rel, info.st_mtime_ns, info.st_size))
        except OSError:
            items.append((rel,))
    return tuple(items)


class EvalPanel:
    """The Evaluate panel: the result as the run folder holds it, and the controls that start a new one.

    The judging itself runs as one of the walkthrough's jobs (`start`): on its background thread, with its
    progress bar and its Cancel; never on its own.
    """

    def __init__(self, run_dir: Path, start: Callable[[int, str | None], None], cancel: Callable[[], None]) -> None:
        self.run_dir = run_dir
        self.cancel_event = threading.Event()
        self.running = False
        self.view: EvalView | None = None
        self.head = html(eval_head("missing"), "p2c-head")
        self.body = html("", "p2c-eval-body")
        self.samples = widgets.BoundedIntText(value=DEFAULT_SAMPLES, min=1, max=64, description="Samples")
        self.samples.add_class("p2c-eval-n")
        self.reference = widgets.Text(
            placeholder="optional: the authors' repository (folder, .zip or .tar.gz) for a reference-based score",
            description="Reference",
            layout=widgets.Layout(width="100%"),
        )
        self.reference.add_class("p2c-eval-reference")
        self.evaluate_button = button(
            "Evaluate", "Judge the repository against the paper: n calls to the model", "p2c-evaluate", "primary"
        )
        self.cancel_button = button("Cancel", "Stop judging after the calls in flight", "p2c-eval-cancel")
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="0/0")
        self.progress.add_class("p2c-eval-progress")
        show(self.progress, False)
        self.message = html("", "p2c-message")
        self.evaluate_button.on_click(lambda _: self._click(start))
        self.cancel_button.on_click(lambda _: cancel())
        controls = widgets.HBox([self.samples, self.evaluate_button, self.cancel_button, self.progress])
        controls.add_class("p2c-actions")
        self.widget = widgets.VBox([self.head, self.body, self.reference, controls, self.message])
        for name in ("p2c-panel", "p2c-panel-eval"):
            self.widget.add_class(name)

    def _click(self, start: Callable[[int, str | None], None]) -> None:
        """The edge for the Evaluate button: the walkthrough starts the job, a refusal is one line here."""
        try:
            start(int(self.samples.value), self.reference.value.strip() or None)
        except P2CError as exc:
            self.show(str(exc), "error")
        except Exception as exc:  # noqa: BLE001 - never a traceback in the page
            self.show(render.unexpected(exc), "error")

    def show(self, text: str, level: str) -> None:
        self.message.value = (
            f"<span class='p2c-{level}'>{render.esc(render.one_line(text, 600))}</span>" if text else ""
        )

    def update(self, busy: bool, changed: bool) -> None:
        """Redraw from the run folder when the code or the result changed; buttons follow the job state."""
        if changed or self.view is None:
            try:
                self.view = eval_view(self.run_dir)
            except (P2CError, OSError) as exc:
                self.body.value = f"<p class='p2c-error'>{render.esc(render.one_line(str(exc) or repr(exc)))}</p>"
            else:
                self.head.value = eval_head(self.view.status)
                self.body.value = eval_html(self.run_dir, self.view)
        self.set_busy(busy)

    def set_busy(self, busy: bool) -> None:
        """While any job of the walkthrough runs nothing starts here; Cancel only while judging."""
        self.evaluate_button.disabled = busy or not repo_files(self.run_dir / "repo")
        self.cancel_button.disabled = not (busy and self.running)
        self.samples.disabled = self.reference.disabled = busy

    def job(
        self, pipeline: Pipeline, n: int, reference: str | None, sink: Callable[[Event], None]
    ) -> Callable[[], str]:
        """The work of one evaluation, for the walkthrough's background thread: the pipeline's backend (a local
        model already loaded is used, not started twice) judges the run folder; events go to the walkthrough."""
        if n < 1:
            raise RunError(f"Samples must be at least 1 (got {n}).")
        self.cancel_event.clear()
        where = str(Path(reference).expanduser()) if reference else None

        def work() -> str:
            self.running = True
            self.set_busy(True)
            self.show(f"Judging the repository: {n} sample(s)…", "hint")
            self._draw_progress(0, n)
            show(self.progress, True)
            try:
                backend = pipeline.backend
                bus = EventBus(self._on_event, sink)
                summary = evaluate_run(pipeline.store.root, backend, backend.settings, n, where, bus, self.cancel_event)
            except P2CError as exc:
                self.show(str(exc), "error")
                raise
            finally:
                self.running = False
                show(self.progress, False)
            text = f"Evaluated: {summary.describe()}"
            self.show(text, "note")
            return text

        return work

    def _on_event(self, event: Event) -> None:
        if isinstance(event, Progress) and event.total:
            self._draw_progress(event.done, event.total)

    def _draw_progress(self, done: int, total: int) -> None:
        self.progress.max = max(total, 1)
        self.progress.value = min(done, self.progress.max)
        self.progress.description = f"{done}/{total}"


class Quality:
    """The checks and the evaluation of one walkthrough's run folder, redrawn only when the code changed."""

    def __init__(self, run_dir: Path, start: Callable[[int, str | None], None], cancel: Callable[[], None]) -> None:
        self.run_dir = run_dir
        self.eval_panel = EvalPanel(run_dir, start, cancel)
        self.checks = ChecksResult({}, None)
        self._key: tuple[tuple[object, ...], ...] | None = None
        self._drawn: dict[str, str] = {}

    @property
    def cancel_event(self) -> threading.Event:
        return self.eval_panel.cancel_event

    def update(self, panels: dict[str, Any], repo_checks: Any, has_code: bool, busy: bool) -> None:
        """Bring the code panels' checks, the repository's summary and the Evaluate panel in line with the run
        folder. While a job runs nothing is written (the running pipeline keeps checks.json)."""
        key = state_key(self.run_dir)
        changed = key != self._key
        if changed:
            self._key = key
            self.checks = load_checks(self.run_dir, write=not busy) if has_code else ChecksResult({}, None)
            if not busy:
                self._key = state_key(self.run_dir)  # checks.json as just recomputed, if it was
        for artifact, panel in panels.items():
            stage, _, path = artifact.partition("/")
            if stage != "code":
                continue
            value = file_checks_html(self.run_dir, path, self.checks.of(path), self.checks.error)
            if self._drawn.get(artifact) != value or panel.checks.value != value:
                panel.checks.value = self._drawn[artifact] = value
        summary = repository_checks_html(self.run_dir, self.checks)
        if repo_checks.value != summary:
            repo_checks.value = summary
        self.eval_panel.update(busy, changed)

    def static_code(self, artifact: str) -> tuple[str, str]:
        """(head badge, body list) of a code panel in the static view."""
        return static_file_checks(self.run_dir, artifact.partition("/")[2], self.checks)

    def static_repository(self) -> str:
        return repository_checks_html(self.run_dir, self.checks)

    def static_eval(self) -> str:
        return static_eval_html(self.run_dir)
