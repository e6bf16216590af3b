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

The snapshot is displayed under a display id, and a `Follower` redraws it (`update_display`) as the run changes,
so a notebook saved or exported after later cells ran shows their result, not the state at display time.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
KERNEL_NOTE = "(The interactive view needs Jupyter with ipywidgets and a running kernel: run the cell again.)"
FOLLOW_INTERVAL = 1.0  # seconds: a displayed snapshot is redrawn at most once per interval while a job runs

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


def publish_update(bundle: dict[str, str], display_id: str) -> None:
    """IPython's `update_display` of a raw bundle; nothing outside IPython (where `display` would print it)."""
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.display import update_display

    if not InteractiveShell.initialized():
        return
    update: Callable[..., object] = update_display  # IPython leaves it unannotated
    update(bundle, raw=True, display_id=display_id)


def digest(bundle: dict[str, str]) -> str:
    return hashlib.sha256("\0".join(f"{k}\0{v}" for k, v in sorted(bundle.items())).encode()).hexdigest()


class Follower:
    """Keeps a displayed snapshot in step with what it shows, without flooding the front end.

    `changed()` (any thread, cheap: the pipeline's threads call it on every saved file) marks the snapshot out of
    date; one redraw follows, at most one per `interval`, on a timer thread. `flush()` on the thread that displayed
    the snapshot (the kernel's, which runs the cells) redraws at once: at the end of each call from a cell, so the
    update leaves while that cell still runs. It also sends again what only a timer sent: the kernel tags a
    thread's message with the cell running at the time, and one sent between cells belongs to none (nbclient, which
    applies the messages of the cell it executes, drops it). `flush()` on another thread waits for the timer.
    A redraw whose bundle equals the one on screen sends nothing. Nothing is sent before `shown()` (the
    walkthrough was never displayed) or after `close()`.

    From a thread the update goes out as the widget's own redraws do (ipykernel queues every IOPub message on its
    IO thread), so nothing waits for the front end: nbclient applies it while a cell runs, front ends that track
    display ids across cells (classic Notebook, VS Code) whenever it comes, JupyterLab only while the cell that
    displayed the walkthrough runs.
    """

    def __init__(
        self,
        display_id: str,
        bundle: Callable[[], dict[str, str]],
        publish: Callable[[dict[str, str], str], None] = publish_update,
        interval: float = FOLLOW_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.display_id = display_id
        self.bundle = bundle
        self.publish = publish
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()  # the fields below; never held while a bundle is made or sent
        self._drawing = threading.Lock()  # one redraw at a time, so a flush waits for a timer's redraw to be sent
        self._owner: int | None = None  # the thread that displayed the snapshot; None: not displayed
        self._on_screen = ""  # digest of the bundle last displayed or sent from any thread
        self._delivered = ""  # ... from the owner's thread, within a cell
        self._dirty = False
        self._drawn = 0.0  # when the last redraw was made
        self._timer: threading.Timer | None = None
        self._closed = False

    @property
    def displayed(self) -> bool:
        return self._owner is not None and not self._closed

    def shown(self, bundle: dict[str, str]) -> None:
        """The snapshot was displayed (again) with `bundle` under the display id: later changes redraw it."""
        with self._lock:
            self._owner = threading.get_ident()
            self._on_screen = self._delivered = digest(bundle)
            self._drawn = self.clock()
            self._dirty = False

    def changed(self) -> None:
        """What the snapshot shows may have changed: redraw within `interval` (coalesced with later changes)."""
        with self._lock:
            if self._owner is None or self._closed:
                return
            self._dirty = True
            self._schedule()

    def flush(self) -> None:
        """On the owner's thread: redraw now what changed or what only a timer sent (a pending timer is dropped).
        On another thread: leave it to the timer."""
        with self._lock:
            if self._owner is None or self._closed:
                return
            if threading.get_ident() != self._owner:
                if self._dirty:
                    self._schedule()
                return
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        self._draw(owner=True)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _schedule(self) -> None:
        """One timer at a time (the caller holds the lock), due `interval` after the last redraw."""
        if self._timer is not None:
            return
        delay = max(0.0, self._drawn + self.interval - self.clock())
        self._timer = threading.Timer(delay, self._tick)
        self._timer.daemon = True
        self._timer.name = "p2c-snapshot"
        self._timer.start()

    def _tick(self) -> None:
        """The timer stays pending while it draws (a slow redraw, the diagrams', must not let the changes it
        missed start another at once); what changed meanwhile is drawn `interval` after."""
        self._draw(owner=False)
        with self._lock:
            if self._timer is threading.current_thread():
                self._timer = None
                if self._dirty and not self._closed:
                    self._schedule()

    def _draw(self, owner: bool) -> None:
        with self._drawing:
            with self._lock:
                if self._closed or not (self._dirty or (owner and self._on_screen != self._delivered)):
                    return
                self._dirty = False
                sent = self._delivered if owner else self._on_screen
            fresh: str | None = None
            try:
                bundle = self.bundle()
                fresh = digest(bundle)
                if fresh != sent:
                    self.publish(bundle, self.display_id)
            except Exception:  # noqa: BLE001 - a snapshot that cannot be redrawn must not break the run
                fresh = None  # the next change tries again
            with self._lock:
                self._drawn = self.clock()
                if fresh is not None:
                    self._on_screen = fresh
                    if owner:
                        self._delivered = fresh


class WithFallback:
    """Displays as two outputs: the snapshot `page()` makes at display time, then `widget` (see the module).

    `follower`: the snapshot is displayed under the follower's display id, and the follower told what is on
    screen, so it can redraw it; without one it stays as displayed."""

    def __init__(
        self,
        widget: Any,
        fallback_id: str,
        page: Callable[[], str],
        text: Callable[[], str],
        follower: Follower | None = None,
    ) -> None:
        self.widget = widget
        self.fallback_id = fallback_id
        self.page = page
        self.text = text
        self.follower = follower

    @staticmethod
    def snapshot_bundle(fallback_id: str, page: str, text: str) -> dict[str, str]:
        return {"text/html": fallback_page(fallback_id, page), "text/plain": text}

    def outputs(self) -> list[dict[str, Any]]:
        """The two mime bundles, in display order."""
        view = {k: v for k, v in (self.widget._repr_mimebundle_() or {}).items() if k == WIDGET_VIEW}
        return [self.snapshot_bundle(self.fallback_id, self.page(), self.text()), {**view, "text/plain": KERNEL_NOTE}]

    def _ipython_display_(self) -> None:
        """The snapshot (under its display id when it is followed), then the widget."""
        from IPython.display import display

        show: Callable[..., object] = display  # IPython leaves `display` unannotated
        snapshot, view = self.outputs()
        if self.follower is not None:
            show(snapshot, raw=True, display_id=self.follower.display_id)
            self.follower.shown(snapshot)
        else:
            show(snapshot, raw=True)
        show(view, raw=True)
