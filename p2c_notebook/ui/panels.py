"""One panel per artifact: status badge, rendered content, and the Approve / Edit / Regenerate controls.

Panels are views; what they do goes through their owner (the Walkthrough), which holds the pipeline.
Every message shown comes from a P2CError (written for people) or is one line; model text is escaped.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import ipywidgets as widgets  # type: ignore[import-untyped]
from pydantic import ValidationError

from p2c_notebook.diagrams.sources import (
    class_diagram_mermaid,
    class_diagram_plantuml,
    sequence_diagram_mermaid,
    sequence_diagram_plantuml,
)
from p2c_notebook.errors import EditedArtifactError, P2CError
from p2c_notebook.run import derived
from p2c_notebook.run.archive import repository_zip
from p2c_notebook.run.history import CURRENT, Version
from p2c_notebook.run.pipeline import Row
from p2c_notebook.run.store import RunStore
from p2c_notebook.stages.artifacts import ArchitectureDesign, LogicDesign
from p2c_notebook.ui import render
from p2c_notebook.ui.repo import download_html, repo_files, tree_html

NO_UML = "Static SVG diagrams need p2c_notebook.diagrams.plantuml, which this installation does not have."


class PanelOwner(Protocol):
    """What a panel asks of the walkthrough."""

    @property
    def run_dir(self) -> Path: ...

    @property
    def store(self) -> RunStore: ...

    @property
    def busy(self) -> bool: ...

    def read(self, artifact: str) -> str: ...

    def approve(self, artifact: str) -> list[str]: ...

    def edit(self, artifact: str, text: str) -> list[str]: ...

    def regenerate(
        self, artifact: str, feedback: str | None = None, overwrite_edited: bool = False, block: bool = False
    ) -> str | None: ...

    def versions(self, artifact: str) -> list[Version]: ...

    def diff_html(self, artifact: str, older: int, newer: int = CURRENT) -> str: ...


def load_uml() -> ModuleType | None:
    """p2c_notebook.diagrams.plantuml, imported on first use; None where it is not installed."""
    try:
        return importlib.import_module("p2c_notebook.diagrams.plantuml")
    except ImportError:
        return None


def close_tree(widget: Any) -> None:
    """Close a widget and everything inside it, so replaced content does not linger in the kernel."""
    for child in getattr(widget, "children", ()):
        close_tree(child)
    widget.close()


def show(widget: Any, visible: bool) -> None:
    widget.layout.display = None if visible else "none"


def reserve(widget: Any, visible: bool) -> None:
    """Show or hide a widget but keep its place, so the widgets beside it do not move when it appears."""
    widget.layout.visibility = None if visible else "hidden"


def html(value: str = "", *classes: str) -> Any:
    box = widgets.HTML(value=value)
    for name in classes:
        box.add_class(name)
    return box


def button(description: str, tooltip: str, css: str, style: str = "") -> Any:
    widget = widgets.Button(description=description, tooltip=tooltip, button_style=style)
    widget.add_class(css)
    return widget


class ArtifactPanel:
    """The panel of one artifact; `widget` is its VBox (classes p2c-panel, p2c-panel-<slug>)."""

    def __init__(self, artifact: str, owner: PanelOwner) -> None:
        self.artifact = artifact
        self.stage = artifact.partition("/")[0]
        self.owner = owner
        self.status = "missing"
        self.digest: str | None = ""  # nothing drawn yet: the first update fills the content, whatever it is
        self.render_seconds = 0.0
        self._usage = ""
        # Title, status badge and usage in one widget: a panel is drawn for every file as it lands, and each
        # widget is a model (with its layout and style) to create and synchronise.
        self.head = html("", "p2c-head")
        self.message = html("", "p2c-message")
        self.content = widgets.VBox()
        self.content.add_class("p2c-content")
        self.checks = html("", "p2c-checks-box")  # a code file's static checks (filled by the walkthrough)
        self.widget = widgets.VBox([self.head, self.checks, self.content, self.message])
        for name in ("p2c-panel", f"p2c-panel-{render.slug(artifact)}", f"p2c-stage-{self.stage}"):
            self.widget.add_class(name)
        self.has_controls = False
        self.editor_box: Any = None
        self.compare_box: Any = None
        self._busy = False
        self._set_status("missing")

    def _arrange(self) -> None:
        """The panel's parts in order; the controls, editor and compare view exist only once needed."""
        parts = [self.head, self.checks, self.content]
        if self.compare_box is not None:
            parts.append(self.compare_box)
        if self.editor_box is not None:
            parts.append(self.editor_box)
        parts.append(self.message)
        if self.has_controls:
            parts += [self.feedback, self.actions]
        self.widget.children = parts

    def _draw_head(self) -> None:
        status = render.esc(self.status)
        self.head.value = (
            f"<div class='p2c-panel-head'><span class='p2c-title'>{render.esc(render.title_of(self.artifact))}"
            f"</span><span class='p2c-badge p2c-status p2c-badge-{status}'>{status}</span>"
            f"<span class='p2c-usage'>{render.esc(self._usage)}</span></div>"
        )

    def ensure_controls(self) -> None:
        """Buttons, feedback box and editor, built when the artifact first exists and no job runs.

        A logic design of 16 files adds 32 panels at once; without their controls they are a tenth of the
        widgets, so the logic panel is drawn promptly.
        """
        if self.has_controls:
            return
        self.has_controls = True
        artifact = self.artifact
        self.approve_button = button("Approve", f"Approve {artifact} so the next stage may use it", "p2c-approve")
        self.edit_button = button("Edit", f"Edit {artifact} by hand", "p2c-edit")
        self.regenerate_button = button("Regenerate", f"Generate {artifact} again, with the feedback", "p2c-regenerate")
        self.confirm_button = button("Confirm", "Regenerate and overwrite your edits", "p2c-confirm", "danger")
        self.feedback = widgets.Textarea(
            placeholder="Feedback for Regenerate (optional): what should change?",
            rows=2,
            layout=widgets.Layout(width="100%"),
        )
        self.feedback.add_class("p2c-feedback")
        show(self.confirm_button, False)
        self.actions = widgets.HBox(
            [self.approve_button, self.edit_button, self.regenerate_button, self.confirm_button]
        )
        self.actions.add_class("p2c-actions")
        self.approve_button.on_click(lambda _: self._guard(self._approve))
        self.edit_button.on_click(lambda _: self._guard(self._open_editor))
        self.regenerate_button.on_click(lambda _: self._guard(lambda: self._regenerate(False)))
        self.confirm_button.on_click(lambda _: self._guard(lambda: self._regenerate(True)))
        self._arrange()

    def ensure_editor(self) -> None:
        """The editor, built on the first Edit: most artifacts are never edited by hand."""
        self.ensure_controls()
        if self.editor_box is not None:
            return
        self.editor = widgets.Textarea(rows=16, layout=widgets.Layout(width="100%"))
        self.editor.add_class("p2c-editor")
        self.save_button = button("Save", "Validate and save your version", "p2c-save", "primary")
        self.cancel_button = button("Cancel", "Close the editor without saving", "p2c-edit-cancel")
        self.save_button.on_click(lambda _: self._guard(self._save))
        self.cancel_button.on_click(lambda _: self._close_editor())
        self.editor_box = widgets.VBox([self.editor, widgets.HBox([self.save_button, self.cancel_button])])
        self.editor_box.add_class("p2c-editor-box")
        self._arrange()
        self.set_busy(self._busy)

    # --- state from the run folder -------------------------------------------------------------------
    def update(self, row: Row, digest: str | None, busy: bool) -> None:
        """Bring the panel in line with a manifest row; content is re-rendered only when the file changed.

        The buttons come once no job runs: while one does they would all be disabled, and building them for
        every file that lands mid-run is most of the cost of drawing it.
        """
        if row.status != "missing" and not busy:
            self.ensure_controls()
        note = " · inputs changed since your edit" if row.inputs_changed else ""
        usage = render.usage_line(row.usage) + note
        usage_changed, self._usage = usage != self._usage, usage
        if row.status != self.status:
            self._set_status(row.status)  # draws the head, with the usage too
        elif usage_changed:
            self._draw_head()
        self.set_busy(busy)
        if digest != self.digest:
            self.digest = digest
            started = time.perf_counter()
            self._fill()
            self.render_seconds = time.perf_counter() - started

    def set_busy(self, busy: bool) -> None:
        self._busy = busy
        if not self.has_controls:
            return
        exists = self.status != "missing"
        self.approve_button.disabled = busy or self.status not in ("generated",)
        self.edit_button.disabled = busy or not exists
        self.regenerate_button.disabled = busy or not exists
        self.confirm_button.disabled = busy
        if self.editor_box is not None:
            self.save_button.disabled = busy

    def _set_status(self, status: str) -> None:
        self.widget.remove_class(f"p2c-status-{self.status}")
        self.status = status
        self.widget.add_class(f"p2c-status-{status}")
        self._draw_head()
        if status == "stale":  # "Approved ..." or "Saved ..." describe a version that is now out of date
            self.clear_message()
        if status != "edited" and self.has_controls:
            show(self.confirm_button, False)

    def _fill(self) -> None:
        old = list(self.content.children)
        if self.digest is None:
            self._fill_missing()
        else:
            try:
                text = self.owner.read(self.artifact)
            except P2CError as exc:
                self.content.children = [html(f"<p class='p2c-error'>{render.esc(render.one_line(str(exc)))}</p>")]
            else:
                self.content.children = self._views(text)
        for child in old:
            close_tree(child)
        self._draw_compare()

    # --- compare with earlier versions ---------------------------------------------------------------
    def _draw_compare(self) -> None:
        """A "Compare with" list of the earlier versions the run folder keeps (none: no compare view)."""
        try:
            earlier = [v for v in self.owner.versions(self.artifact) if v.number != CURRENT]
        except P2CError:
            earlier = []
        if not earlier:
            if self.compare_box is not None:
                show(self.compare_box, False)
            return
        if self.compare_box is None:
            self.compare = widgets.Dropdown(description="Compare with", options=[("—", -1)], value=-1)
            self.compare.add_class("p2c-compare-choice")
            self.compare.style.description_width = "initial"
            self.diff = html("", "p2c-diff-box")
            self.compare.observe(lambda _: self._draw_diff(), names="value")
            self.compare_box = widgets.VBox([self.compare, self.diff])
            self.compare_box.add_class("p2c-compare")
            self._arrange()
        show(self.compare_box, True)
        options = [("— an earlier version —", -1)] + [(v.label, v.number) for v in reversed(earlier)]
        chosen = self.compare.value if self.compare.value in {n for _, n in options} else -1
        self.compare.options = options
        self.compare.value = chosen
        self._draw_diff()

    def _draw_diff(self) -> None:
        """The diff of the chosen earlier version against the current one (added lines +, removed -)."""
        number = self.compare.value
        if number is None or number < 0:
            self.diff.value = ""
            return
        try:
            self.diff.value = self.owner.diff_html(self.artifact, int(number))
        except P2CError as exc:
            self.diff.value = f"<p class='p2c-error'>{render.esc(render.one_line(str(exc)))}</p>"

    def _fill_missing(self) -> None:
        hint = "Not generated yet: click <b>Run next stage</b>."
        self.content.children = [html(f"<p class='p2c-hint'>{hint}</p>")]

    def _views(self, text: str) -> list[Any]:
        if self.stage == "design":
            return self._design_views(text)
        if self.stage == "logic":
            return self._logic_views(text)
        return [html(render.artifact_html(self.artifact, text), "p2c-rendered")]

    def _design_views(self, text: str) -> list[Any]:
        try:
            design = ArchitectureDesign.model_validate_json(text)
        except ValidationError as exc:
            return self._invalid(text, exc)
        store = self.owner.store
        views = [html(render.design_html(design), "p2c-rendered")]
        diagrams = (
            ("Class diagram", "class_diagram", class_diagram_mermaid, class_diagram_plantuml),
            ("Sequence diagram", "sequence_diagram", sequence_diagram_mermaid, sequence_diagram_plantuml),
        )
        for title, name, to_mermaid, to_plantuml in diagrams:
            mermaid, plantuml = to_mermaid(design), to_plantuml(design)
            try:
                svg: str | None = diagram_svg(store, name, plantuml)
            except (P2CError, OSError):
                svg = None  # the Mermaid source still shows; "Render SVG" says what is wrong
            views.append(DiagramView(title, name, mermaid, plantuml, store, svg).widget)
        return views

    def _logic_views(self, text: str) -> list[Any]:
        try:
            logic = LogicDesign.model_validate_json(text)
        except ValidationError as exc:
            return self._invalid(text, exc)
        graph = dependency_graph(self.owner.store)
        return [html(render.logic_html(logic), "p2c-rendered"), html(graph, "p2c-graph")]

    def _invalid(self, text: str, exc: ValidationError) -> list[Any]:
        problem = f"This file does not match the schema ({exc.error_count()} problem(s)); edit it or regenerate it."
        return [
            html(f"<p class='p2c-error'>{render.esc(problem)}</p>"),
            html(render.artifact_html(self.artifact, text)),
        ]

    # --- actions ---------------------------------------------------------------------------------------
    def _guard(self, action: Callable[[], str | None]) -> None:
        """The edge for button clicks: a P2CError becomes its message, anything else one line."""
        try:
            note = action()
        except EditedArtifactError:
            self.ask_confirmation()
        except P2CError as exc:
            self.show_error(str(exc))
        except Exception as exc:  # noqa: BLE001 - a click must never dump a traceback into the page
            self.show_error(render.unexpected(exc))
        else:
            if note:
                self.show_note(note)

    def show_error(self, text: str) -> None:
        self.message.value = f"<span class='p2c-error'>{render.esc(render.one_line(text, 1200))}</span>"

    def show_note(self, text: str) -> None:
        self.message.value = f"<span class='p2c-note'>{render.esc(render.one_line(text))}</span>"

    def clear_message(self) -> None:
        self.message.value = ""

    def ask_confirmation(self) -> None:
        self.ensure_controls()
        show(self.confirm_button, True)
        self.show_error(f"{self.artifact} holds your edits: click Confirm to regenerate it and lose them.")

    def _approve(self) -> str:
        approved = self.owner.approve(self.artifact)
        return f"Approved {', '.join(approved)}."

    def _open_editor(self) -> str | None:
        self.ensure_editor()
        self.editor.value = self.owner.read(self.artifact)
        show(self.editor_box, True)
        self.clear_message()
        return None

    def _close_editor(self) -> None:
        if self.editor_box is not None:
            show(self.editor_box, False)
        self.clear_message()

    def _save(self) -> str:
        if self.editor.value == self.owner.read(self.artifact):
            show(self.editor_box, False)
            return "Nothing to save: this is the text already saved."
        stale = self.owner.edit(self.artifact, self.editor.value)
        show(self.editor_box, False)
        return "Saved your edit." + (f" Now stale: {len(stale)} artifact(s) that depend on it." if stale else "")

    def _regenerate(self, confirmed: bool) -> str | None:
        if self.status == "edited" and not confirmed:
            self.ask_confirmation()
            return None
        show(self.confirm_button, False)
        feedback = self.feedback.value.strip() or None
        self.show_note(f"Regenerating {self.artifact}…")  # before the job starts: it may finish at once
        return self.owner.regenerate(self.artifact, feedback, overwrite_edited=confirmed)


def dependency_graph(store: RunStore, inline: bool = False) -> str:
    """The saved logic design's file dependency graph as an image (made and recorded by the library, reused while
    the logic design is unchanged), or why there is none. `inline` gives an <svg> element for the static snapshot
    instead of an <img>."""
    uml = load_uml()
    if uml is None:
        return f"<p class='p2c-hint'>{render.esc(NO_UML)}</p>"
    try:
        svg = derived.dependency_graph(store, uml.dependency_graph_svg)
    except Exception as exc:  # noqa: BLE001 - DiagramError (missing Graphviz...) or RunError: one line
        message = render.one_line(str(exc) or repr(exc))
        return f"<p class='p2c-error'>No dependency graph: {render.esc(message)}</p>"
    if inline:
        return render.inline_svg(svg, "p2c-dependencies", "File dependency graph")
    return render.svg_img(svg, "File dependency graph")


def diagram_svg(store: RunStore, name: str, plantuml: str) -> str:
    """A design diagram as SVG: the one recorded for the design as it is now, else rendered offline by PlantUML
    (saved and recorded by the library).

    Raises P2CError (a DiagramError, a RunError) or OSError; NO_UML as a P2CError without the renderer.
    """
    saved = derived.saved_diagram(store, name)
    if saved is not None:
        return saved
    uml = load_uml()
    if uml is None:
        raise P2CError(NO_UML)
    return derived.render_diagram(store, name, plantuml, uml.render_plantuml)


def static_body(artifact: str, text: str, store: RunStore) -> str:
    """The content of a panel for the static snapshot: what the widget shows, with the diagrams as inline SVG."""
    stage = artifact.partition("/")[0]
    try:
        if stage == "design":
            design = ArchitectureDesign.model_validate_json(text)
            parts = [render.design_html(design)]
            for title, name, source in (
                ("Class diagram", "class_diagram", class_diagram_plantuml(design)),
                ("Sequence diagram", "sequence_diagram", sequence_diagram_plantuml(design)),
            ):
                try:
                    image = render.inline_svg(diagram_svg(store, name, source), f"p2c-{name}", title)
                except (P2CError, OSError) as exc:
                    image = f"<p class='p2c-error'>{render.esc(render.one_line(str(exc) or repr(exc)))}</p>"
                css = f"p2c-diagram p2c-diagram-{name.replace('_', '-')}"
                parts.append(f"<div class='{css}'><b>{render.esc(title)}</b>{image}</div>")
            return "".join(parts)
        if stage == "logic":
            logic = LogicDesign.model_validate_json(text)
            graph = dependency_graph(store, inline=True)
            return render.logic_html(logic) + f"<div class='p2c-graph'>{graph}</div>"
    except ValidationError:
        pass  # shown as the file's text, as the widget does
    return render.artifact_html(artifact, text)


class DiagramView:
    """A diagram from the design: Mermaid rendered by JupyterLab, and a static PlantUML SVG on request.

    The Mermaid output also carries the PlantUML drawing as image/svg+xml: JupyterLab prefers Mermaid (its
    renderer ranks before SVG's), and front ends without Mermaid (VS Code, Colab) draw the SVG instead of
    showing the source.
    """

    def __init__(
        self, title: str, name: str, mermaid: str, plantuml: str, store: RunStore, svg: str | None = None
    ) -> None:
        self.name = name
        self.store = store
        self.svg_path = store.root / derived.diagram_path(name)
        self.mermaid = widgets.Output()
        self.mermaid.add_class("p2c-mermaid")
        # JupyterLab 4 renders text/vnd.mermaid itself (offline); others draw the SVG, or show the source.
        bundle = {"text/vnd.mermaid": mermaid, "text/plain": mermaid}
        if svg:
            bundle["image/svg+xml"] = svg
        self.mermaid.outputs = ({"output_type": "display_data", "data": bundle, "metadata": {}},)
        self.source = widgets.Textarea(value=plantuml, rows=6, layout=widgets.Layout(width="100%"))
        self.source.add_class("p2c-diagram-source")
        self.render_button = button(
            "Render SVG", f"Render the PlantUML source to {self.svg_path.name}", "p2c-render-svg"
        )
        self.result = html("", "p2c-diagram-svg")
        self.render_button.on_click(lambda _: self.render())
        self.widget = widgets.VBox(
            [
                html(f"<b>{render.esc(title)}</b>"),
                self.mermaid,
                html(
                    "<span class='p2c-hint'>PlantUML source (editable; Render SVG saves it to the run folder):</span>"
                ),
                self.source,
                self.render_button,
                self.result,
            ]
        )
        self.widget.add_class("p2c-diagram")
        self.widget.add_class(f"p2c-diagram-{name.replace('_', '-')}")

    def render(self) -> None:
        uml = load_uml()
        if uml is None:
            self.result.value = f"<p class='p2c-hint'>{render.esc(NO_UML)}</p>"
            return
        try:
            svg = derived.render_diagram(self.store, self.name, self.source.value, uml.render_plantuml)
        except Exception as exc:  # noqa: BLE001 - DiagramError or an OSError: shown next to the source
            message = render.one_line(str(exc) or repr(exc))
            self.result.value = f"<p class='p2c-error'>This diagram does not render: {render.esc(message)}</p>"
            return
        self.result.value = render.svg_img(svg, self.name)


class RepoPanel:
    """The generated repository: its file tree and a "Download zip" button."""

    def __init__(self, store: RunStore) -> None:
        self.store = store
        self.repo = store.root / "repo"
        self.tree = html("", "p2c-repo-tree")
        self.badge = html("", "p2c-badge", "p2c-badge-missing")
        self.download_button = button("Download zip", "Zip the repository into the run folder", "p2c-download")
        self.link = html("", "p2c-download-box")
        self.message = html("", "p2c-message")
        self.download_button.on_click(lambda _: self.download())
        head = widgets.HBox([html("<span>Repository</span>", "p2c-title"), self.badge])
        head.add_class("p2c-panel-head")
        self.checks = html("", "p2c-repo-checks")  # the static checks' summary (filled by the walkthrough)
        self.widget = widgets.VBox(
            [head, self.tree, self.checks, widgets.HBox([self.download_button]), self.link, self.message]
        )
        for name in ("p2c-panel", "p2c-panel-repo"):
            self.widget.add_class(name)
        self._files: list[str] | None = None

    def update(self, done: int, total: int) -> None:
        files = repo_files(self.repo)
        if files != self._files:
            self._files = files
            self.tree.value = tree_html(self.repo)
        state = "complete" if total and done == total else ("partial" if done else "missing")
        for status in ("complete", "partial", "missing"):
            self.badge.remove_class(f"p2c-badge-{status}")
        self.badge.add_class(f"p2c-badge-{state}")
        self.badge.value = render.esc(f"{done}/{total} files")
        self.download_button.disabled = not files

    def download(self) -> None:
        try:
            archive = repository_zip(self.store)
            self.link.value = download_html(archive)
            self.message.value = ""
        except P2CError as exc:
            self.message.value = f"<span class='p2c-error'>{render.esc(render.one_line(str(exc)))}</span>"
        except OSError as exc:
            self.message.value = f"<span class='p2c-error'>{render.esc(render.unexpected(exc))}</span>"
