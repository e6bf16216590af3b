"""The paper as the model will see it, before the plan: its sections with their tokens (the appendix marked),
what was left out (by the reader, by the user's choice, to fit the model) and the figures saved into the run
folder (`paper/figures/`), inlined as data so a saved notebook keeps them.

It reads `paper/paper.json` (what the model sees) and `paper/source.json` (the paper as read), never through a
link; every piece of paper text is escaped, and an image is shown only when it is a PNG under paper/figures/.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ipywidgets as widgets  # type: ignore[import-untyped]
from pydantic import ValidationError

from p2c_notebook.errors import P2CError
from p2c_notebook.paper.model import Caption, Paper, Section, parse_patterns, section_label
from p2c_notebook.run.store import read_regular
from p2c_notebook.tokens import estimate_tokens
from p2c_notebook.ui import render
from p2c_notebook.ui.panels import button, html

PAPER_JSON = "paper/paper.json"
SOURCE_JSON = "paper/source.json"
PNG = b"\x89PNG\r\n\x1a\n"
MAX_IMAGE_BYTES = 4 * 1024 * 1024  # one figure (render_figures keeps them near 1.2 megapixels: far less)
MAX_IMAGES_BYTES = 24 * 1024 * 1024  # all figures of one paper inlined into the notebook
_IMAGE = re.compile(r"figures/[A-Za-z0-9_-]{1,64}\.png")


@dataclass
class PaperView:
    """What the panel draws: the paper the model sees, the paper as read (None in older run folders), and
    the user's choice recorded in the run (`manifest.json` meta: exclude patterns, appendix dropped to fit)."""

    paper: Paper | None
    source: Paper | None
    choice: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def _load(run_dir: Path, rel: str) -> Paper | None:
    try:
        return Paper.model_validate_json(read_regular(run_dir, rel))
    except FileNotFoundError:
        return None
    except ValidationError:
        raise P2CError(
            f"{run_dir / rel} does not hold a paper p2c can read; start the run again from the paper."
        ) from None


def load_view(run_dir: Path, meta: dict[str, Any]) -> PaperView:
    choice = meta.get("paper") if isinstance(meta.get("paper"), dict) else {}
    try:
        return PaperView(_load(run_dir, PAPER_JSON), _load(run_dir, SOURCE_JSON), dict(choice or {}))
    except (P2CError, OSError, ValueError) as exc:
        return PaperView(None, None, {}, str(exc) or render.unexpected(exc))


def _key(section: Section) -> tuple[str, int, int | None]:
    return section_label(section), section.level, section.page


def section_rows(paper: Paper, source: Paper | None) -> list[tuple[Section, bool]]:
    """The sections in reading order, each with whether the model sees it: the paper as read, with the ones left
    out of what the model sees (excluded, dropped to fit) marked; the kept ones as the model sees them."""
    if source is None:
        return [(s, True) for s in paper.sections]
    kept = list(paper.sections)
    rows: list[tuple[Section, bool]] = []
    at = 0
    for section in source.sections:
        if at < len(kept) and _key(kept[at]) == _key(section):
            rows.append((kept[at], True))
            at += 1
        else:
            rows.append((section, False))
    rows += [(s, True) for s in kept[at:]]  # not in the paper as read (should not happen): shown, not lost
    return rows


def sections_html(paper: Paper, source: Paper | None) -> str:
    rows = []
    for section, seen in section_rows(paper, source):
        tokens = estimate_tokens(section.render())
        classes = f"p2c-section p2c-section-level-{min(max(section.level, 1), 6)}"
        marks = []
        if section.appendix:
            classes += " p2c-section-appendix"
            marks.append("<span class='p2c-badge p2c-badge-appendix'>appendix</span>")
        if not seen:
            classes += " p2c-section-left-out"
            marks.append("<span class='p2c-badge p2c-badge-left-out'>left out</span>")
        page = f"p. {section.page}" if section.page else ""
        rows.append(
            f"<tr class='{classes}'><td class='p2c-section-title'>{render.esc(section_label(section))}</td>"
            f"<td class='p2c-num'>~{tokens:,}</td><td>{render.esc(page)}</td><td>{''.join(marks)}</td></tr>"
        )
    if not rows:
        return "<p class='p2c-hint'>No sections were found: the model sees the paper's text as one block.</p>"
    return (
        "<table class='p2c-table p2c-sections'><thead><tr><th>Section</th><th>Tokens</th><th>Page</th><th></th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def left_out_html(paper: Paper, choice: dict[str, Any]) -> str:
    """What the model will not see, and why: the reader's drops (references...), the user's exclusions and the
    appendix dropped to fit the model's window."""
    items = [f"<li>{render.esc(render.one_line(note, 300))}</li>" for note in paper.dropped]
    patterns = [str(p) for p in choice.get("exclude") or []]
    parts = []
    if patterns:
        shown = ", ".join(f"<code>{render.esc(p)}</code>" for p in patterns)
        parts.append(
            f"<div class='p2c-hint'>Sections excluded by your choice (part of the run's inputs): {shown}</div>"
        )
    if choice.get("fitted"):
        parts.append(
            "<div class='p2c-hint'>The appendix was dropped so the paper fits the model's context window.</div>"
        )
    if items:
        parts.append(f"<div class='p2c-left-out'><b>Not shown to the model:</b><ul>{''.join(items)}</ul></div>")
    return "".join(parts)


def image_data(run_dir: Path, rel: str | None) -> bytes | None:
    """A figure's PNG from paper/figures/ (None when the name is not one `render_figures` writes, the file is
    missing, a link, too large, or not a PNG)."""
    if not rel or not _IMAGE.fullmatch(rel):
        return None
    try:
        raw = read_regular(run_dir, f"paper/{rel}", limit=MAX_IMAGE_BYTES)
    except (FileNotFoundError, P2CError, OSError):
        return None
    return raw if raw.startswith(PNG) else None


def figures_html(run_dir: Path, captions: list[Caption]) -> str:
    """Each figure's image with its caption; captions without an image (tables, figures not rendered) listed."""
    figures, others = [], []
    budget = MAX_IMAGES_BYTES
    for caption in captions:
        label, text = render.esc(caption.label), render.esc(caption.text.strip())
        data = image_data(run_dir, caption.image)
        if data is not None and len(data) <= budget:
            budget -= len(data)
            encoded = base64.b64encode(data).decode("ascii")
            figures.append(
                f"<figure class='p2c-figure'><img alt='{label}' src='data:image/png;base64,{encoded}'>"
                f"<figcaption><b>{label}</b>: {text}</figcaption></figure>"
            )
        else:
            others.append(f"<li><b>{label}</b>: {text}</li>")
    parts = []
    if figures:
        parts.append(
            f"<details class='p2c-figures-box' open><summary>Figures ({len(figures)}), saved in "
            f"<code>paper/figures/</code></summary><div class='p2c-figures'>{''.join(figures)}</div></details>"
        )
    if others:
        parts.append(
            f"<details class='p2c-captions'><summary>Other captions ({len(others)})</summary>"
            f"<ul>{''.join(others)}</ul></details>"
        )
    return "".join(parts)


def paper_head(view: PaperView) -> str:
    tokens = f"~{view.paper.report().estimated_tokens:,} tokens" if view.paper is not None else "not read"
    state = "complete" if view.paper is not None else "missing"
    return (
        "<div class='p2c-panel-head'><span class='p2c-title'>Paper</span>"
        f"<span class='p2c-badge p2c-badge-{state}'>{render.esc(tokens)}</span></div>"
    )


def paper_html(run_dir: Path, view: PaperView) -> str:
    """The panel's content: the reader's summary, the sections (what the model sees), what was left out, figures."""
    if view.error:
        return f"<p class='p2c-error'>{render.esc(render.one_line(view.error))}</p>"
    paper = view.paper
    if paper is None:
        return "<p class='p2c-hint'>This run folder does not keep the paper as read (paper/paper.json).</p>"
    source = view.source
    seen = len(paper.sections)
    parts = [
        f"<div class='p2c-hint p2c-paper-summary'>{render.esc(paper.report().summary())}</div>",
        f"<h4>Sections the model will see ({seen}"
        + (f" of {len(source.sections)}" if source is not None and len(source.sections) != seen else "")
        + ")</h4>",
        sections_html(paper, source),
        left_out_html(paper, view.choice),
        figures_html(run_dir, (source or paper).captions),
    ]
    return "".join(parts)


def static_paper_html(run_dir: Path, meta: dict[str, Any]) -> str:
    view = load_view(run_dir, meta)
    return f"<div class='p2c-panel p2c-panel-paper'>{paper_head(view)}{paper_html(run_dir, view)}</div>"


def _stamp(run_dir: Path) -> tuple[tuple[object, ...], ...]:
    found: list[tuple[object, ...]] = []
    for rel in (PAPER_JSON, SOURCE_JSON):
        try:
            info = (run_dir / rel).stat()
            found.append((rel, info.st_mtime_ns, info.st_size))
        except OSError:
            found.append((rel,))
    return tuple(found)


class PaperPanel:
    """The Paper panel of the widget, redrawn only when the paper files or the user's choice changed; with a
    field to leave sections out before planning (`choose`: the walkthrough's `choose_sections`)."""

    def __init__(self, run_dir: Path, choose: Callable[[list[str]], list[str]]) -> None:
        self.run_dir = run_dir
        self.head = html("", "p2c-head")
        self.body = html("", "p2c-paper-body")
        self.exclude = widgets.Text(
            placeholder="sections to leave out, e.g. Appendix*, 6.2 (globs on titles or numbers; empty: keep all)",
            description="Leave out",
            layout=widgets.Layout(width="100%"),
        )
        self.exclude.add_class("p2c-exclude-sections")
        self.apply_button = button(
            "Apply", "Leave these sections out of what the model sees (what was generated from the paper goes stale)",
            "p2c-apply-sections",
        )  # fmt: skip
        self.message = html("", "p2c-message")
        self.apply_button.on_click(lambda _: self._apply(choose))
        controls = widgets.HBox([self.exclude, self.apply_button])
        controls.add_class("p2c-actions")
        self.widget = widgets.VBox([self.head, self.body, controls, self.message])
        for name in ("p2c-panel", "p2c-panel-paper"):
            self.widget.add_class(name)
        self._key: object = None

    def _apply(self, choose: Callable[[list[str]], list[str]]) -> None:
        """The edge for Apply: the choice goes to the pipeline (a pattern naming no section is refused there)."""
        patterns = parse_patterns(self.exclude.value) or []
        try:
            stale = choose(patterns)
        except P2CError as exc:
            self.message.value = f"<span class='p2c-error'>{render.esc(render.one_line(str(exc), 900))}</span>"
            return
        except Exception as exc:  # noqa: BLE001 - never a traceback in the page
            self.message.value = f"<span class='p2c-error'>{render.esc(render.unexpected(exc))}</span>"
            return
        what = "Every section is shown to the model." if not patterns else "Saved: those sections are left out."
        tail = f" Now stale: {len(stale)} artifact(s) made from the paper." if stale else ""
        self.message.value = f"<span class='p2c-note'>{render.esc(what + tail)}</span>"

    def update(self, meta: dict[str, Any], busy: bool = False) -> None:
        self.apply_button.disabled = busy
        paper = meta.get("paper")
        chosen = list(paper.get("exclude") or []) if isinstance(paper, dict) else []
        key = (_stamp(self.run_dir), repr(chosen), bool(paper.get("fitted")) if isinstance(paper, dict) else False)
        if key == self._key:
            return
        self._key = key
        self.exclude.value = ", ".join(str(p) for p in chosen)
        view = load_view(self.run_dir, meta)
        self.head.value = paper_head(view)
        self.body.value = paper_html(self.run_dir, view)
