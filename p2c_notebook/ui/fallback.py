"""A widget output that still shows something when its widget cannot: the static snapshot as its own output.

JupyterLab's widget renderer outranks text/html in a trusted notebook, so a static snapshot inside the widget's
own output is never shown there: a saved notebook re-opened (or a kernel restarted) shows "Error displaying widget:
model not found" instead. So a widget is displayed as two outputs: first the snapshot (text/html), then the widget
(its view, and one line of text/plain). Two CSS rules pair them up:

- the live widget's own style sheet hides its snapshot (by an id unique to the display), so a running notebook
  shows the widget alone; it exists only while the widget is drawn;
- the snapshot's style sheet hides the output right after it when it holds JupyterLab's widget error, so a
  re-opened notebook shows the snapshot instead of the error.

nbconvert, GitHub and VS Code without a kernel show the snapshot and the text line. Nothing here runs a script.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
KERNEL_NOTE = "(The interactive view needs Jupyter with ipywidgets and a running kernel: run the cell again.)"

# In the snapshot's output: hide the next output while it holds JupyterLab's widget error. The widget renderer
# adds `jupyter-widgets` to its own output node only when it could not draw the widget ("model not found");
# a drawn widget is a child of that node instead.
ERROR_RULE = (
    ".jp-OutputArea-child:has(.p2c-fallback) + .jp-OutputArea-child:has(> .jp-OutputArea-output.jupyter-widgets)"
    "{display:none}"
)


def new_id() -> str:
    """An id for one display: the live widget hides only the snapshot shown with it."""
    return f"p2c-fallback-{secrets.token_hex(6)}"


def hide_rule(fallback_id: str) -> str:
    """For the live widget's style sheet: hide its snapshot (the whole output row in JupyterLab)."""
    return f".{fallback_id}{{display:none!important}}.jp-OutputArea-child:has(.{fallback_id}){{display:none!important}}"


def fallback_page(fallback_id: str, page: str) -> str:
    """The snapshot `page` (plain HTML) wrapped so that the rules above can find it."""
    return f"<style>{ERROR_RULE}</style><div class='p2c-fallback {fallback_id}'>{page}</div>"


class WithFallback:
    """Displays as two outputs: the snapshot `page()` makes at display time, then `widget` (see the module).

    `redrawn`: the snapshot is displayed under `fallback_id` as its display id, so `update_display` can redraw it."""

    def __init__(
        self,
        widget: Any,
        fallback_id: str,
        page: Callable[[], str],
        text: Callable[[], str],
        redrawn: bool = True,
    ) -> None:
        self.widget = widget
        self.fallback_id = fallback_id
        self.page = page
        self.text = text
        self.redrawn = redrawn

    @staticmethod
    def snapshot_bundle(fallback_id: str, page: str, text: str) -> dict[str, str]:
        return {"text/html": fallback_page(fallback_id, page), "text/plain": text}

    def outputs(self) -> list[dict[str, Any]]:
        """The two mime bundles, in display order."""
        view = {k: v for k, v in (self.widget._repr_mimebundle_() or {}).items() if k == WIDGET_VIEW}
        return [self.snapshot_bundle(self.fallback_id, self.page(), self.text()), {**view, "text/plain": KERNEL_NOTE}]

    def _ipython_display_(self) -> None:
        """The snapshot (under its display id when it is redrawn), then the widget."""
        from IPython.display import display

        show: Callable[..., object] = display  # IPython leaves `display` unannotated
        snapshot, view = self.outputs()
        if self.redrawn:
            show(snapshot, raw=True, display_id=self.fallback_id)
        else:
            show(snapshot, raw=True)
        show(view, raw=True)
