"""The open-questions queue in the walkthrough: each question with an answer box and "Use your judgement".

A view over `p2c_notebook.run.questions`; what it does goes through its owner (the Walkthrough), which holds the
pipeline. Answering makes the analysis and code stale, which the walkthrough's stepper then shows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import ipywidgets as widgets  # type: ignore[import-untyped]

from p2c_notebook.errors import P2CError
from p2c_notebook.run.questions import Question
from p2c_notebook.ui import render
from p2c_notebook.ui.panels import button, close_tree, html, show

STATE_LABELS = {"open": "open", "answered": "answered", "judgement": "use your judgement"}


class QuestionsOwner(Protocol):
    def answer(self, question_id: str, text: str | None = None, judgement: bool = False) -> list[str]: ...


class QuestionsPanel:
    """One row per open question; hidden while the planning asks none."""

    def __init__(self, owner: QuestionsOwner) -> None:
        self.owner = owner
        self.head = html("", "p2c-questions-head")
        self.rows = widgets.VBox()
        self.message = html("", "p2c-message")
        self.widget = widgets.VBox([self.head, self.rows, self.message])
        for name in ("p2c-panel", "p2c-questions"):
            self.widget.add_class(name)
        self.boxes: dict[str, Any] = {}  # question id -> its answer Textarea
        self._shown: tuple[Question, ...] | None = None
        show(self.widget, False)

    def update(self, queue: list[Question], busy: bool) -> None:
        """Redraw when the questions or their answers changed; disable the buttons while a job runs."""
        if tuple(queue) != self._shown:
            self._shown = tuple(queue)
            self._draw(queue)
        for row in self.rows.children:
            for child in row.children:
                if isinstance(child, widgets.HBox):
                    for control in child.children:
                        control.disabled = busy

    def _draw(self, queue: list[Question]) -> None:
        show(self.widget, bool(queue))
        left = sum(q.state == "open" for q in queue)
        self.head.value = (  # the flex row inside the HTML widget, as an artifact panel's head: title and count apart
            "<div class='p2c-panel-head'><span class='p2c-title'>Open questions</span>"
            f"<span class='p2c-usage'>{left} of {len(queue)} open: answer them before the analysis and code "
            "(an answer makes what was made without it stale)</span></div>"
        )
        old = list(self.rows.children)
        self.boxes = {}
        self.rows.children = [self._row(q) for q in queue]
        for child in old:
            close_tree(child)

    def _row(self, question: Question) -> Any:
        text = html(
            f"<b>{render.esc(question.id)}</b> <span class='p2c-question-state'>"
            f"{render.esc(STATE_LABELS.get(question.state, question.state))}</span><div>{render.esc(question.text)}"
            "</div>"
        )
        box = widgets.Textarea(
            value=question.answer if question.state == "answered" else "",
            placeholder="Your answer (what the paper means, or what to choose)",
            rows=2,
            layout=widgets.Layout(width="100%"),
        )
        box.add_class("p2c-feedback")
        self.boxes[question.id] = box
        save = button("Save answer", f"Save your answer to {question.id}", "p2c-answer")
        judge = button("Use your judgement", "Let the model choose what the paper most likely means", "p2c-judgement")
        save.on_click(lambda _: self._guard(lambda: self.owner.answer(question.id, box.value)))
        judge.on_click(lambda _: self._guard(lambda: self.owner.answer(question.id, judgement=True)))
        row = widgets.VBox([text, box, widgets.HBox([save, judge])])
        row.add_class("p2c-question")
        row.add_class(f"p2c-question-{question.state}")
        return row

    def _guard(self, action: Callable[[], list[str]]) -> None:
        try:
            stale = action()
        except P2CError as exc:
            self.message.value = f"<span class='p2c-error'>{render.esc(render.one_line(str(exc)))}</span>"
            return
        except Exception as exc:  # noqa: BLE001 - a click must never dump a traceback into the page
            self.message.value = f"<span class='p2c-error'>{render.esc(render.unexpected(exc))}</span>"
            return
        note = "Saved." + (f" Now stale: {len(stale)} artifact(s) made without this answer." if stale else "")
        self.message.value = f"<span class='p2c-note'>{render.esc(note)}</span>"
