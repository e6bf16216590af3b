"""Compare an artifact with its earlier versions (kept by the run store in history/ before each replacement).

Versions are numbered as the store numbers them (1 is the oldest kept); 0 names the current version.
"""

from __future__ import annotations

import difflib
import html
from dataclasses import dataclass
from pathlib import Path

from p2c_notebook.errors import RunError
from p2c_notebook.run.store import RunStore

CURRENT = 0
MAX_DIFF_LINES = 4000  # a diff longer than this is cut (and says so): a panel is not a file viewer


@dataclass(frozen=True)
class Version:
    """One version of an artifact: `number` 0 is the current one."""

    number: int
    status: str
    updated: str
    replaced: str = ""

    @property
    def label(self) -> str:
        if self.number == CURRENT:
            return f"current ({self.status})"
        when = self.replaced.replace("T", " ")[:16]
        return f"version {self.number} ({self.status}, replaced {when} UTC)"


def _store(run: RunStore | Path | str) -> RunStore:
    if isinstance(run, RunStore):
        return run
    if not RunStore.is_run(run):
        raise RunError(f"{run} is not a p2c run folder (no manifest.json). Start one with `p2c run PAPER`.")
    return RunStore(run)


def versions(run: RunStore | Path | str, artifact: str) -> list[Version]:
    """Every version of `artifact` there is to compare: the earlier ones kept (oldest first), then the current."""
    store = _store(run)
    entry = store.entry(artifact)
    kept = [
        Version(int(v["n"]), str(v.get("status", "")), str(v.get("updated", "")), str(v.get("replaced", "")))
        for v in store.versions(artifact)
    ]
    if entry is None:
        if not kept:
            raise RunError(f"{artifact} has not been generated yet in {store.root}: there is nothing to compare.")
        return kept
    return [*kept, Version(CURRENT, entry.status, entry.updated)]


def text_of(run: RunStore | Path | str, artifact: str, number: int) -> str:
    store = _store(run)
    return store.read(artifact) if number == CURRENT else store.version_text(artifact, number)


def _pair(store: RunStore, artifact: str, older: int | None, newer: int) -> tuple[int, int]:
    """`older` None: the latest kept version (what the current one replaced)."""
    if older is None:
        kept = store.versions(artifact)
        if not kept:
            raise RunError(
                f"{artifact} has no earlier version in {store.root}: it has not been regenerated or edited since it "
                "was first made."
            )
        older = int(kept[-1]["n"])
    return older, newer


def diff(run: RunStore | Path | str, artifact: str, older: int | None = None, newer: int = CURRENT) -> str:
    """A unified diff of two versions of `artifact` (default: the one before the current, and the current)."""
    store = _store(run)
    older, newer = _pair(store, artifact, older, newer)
    before, after = text_of(store, artifact, older), text_of(store, artifact, newer)
    lines = difflib.unified_diff(
        before.splitlines(), after.splitlines(), _name(artifact, older), _name(artifact, newer), lineterm=""
    )
    return "\n".join(lines)


def _name(artifact: str, number: int) -> str:
    return f"{artifact} ({'current' if number == CURRENT else f'version {number}'})"


def diff_html(run: RunStore | Path | str, artifact: str, older: int | None = None, newer: int = CURRENT) -> str:
    """The diff as escaped HTML: one line per diff line, added and removed lines marked by class (p2c.css
    colours them with the theme's variables)."""
    text = diff(run, artifact, older, newer)
    if not text:
        return "<p class='p2c-hint'>The two versions are identical.</p>"
    rows = text.splitlines()
    cut = len(rows) > MAX_DIFF_LINES
    parts = []
    for line in rows[:MAX_DIFF_LINES]:
        if line.startswith(("+++", "---")):
            css = "p2c-diff-file"
        elif line.startswith("@@"):
            css = "p2c-diff-hunk"
        elif line.startswith("+"):
            css = "p2c-diff-add"
        elif line.startswith("-"):
            css = "p2c-diff-del"
        else:
            css = "p2c-diff-same"
        parts.append(f"<span class='{css}'>{html.escape(line) or ' '}</span>")
    more = f"<p class='p2c-hint'>… {len(rows) - MAX_DIFF_LINES} more lines.</p>" if cut else ""
    return f"<pre class='p2c-diff'>{chr(10).join(parts)}</pre>{more}"
