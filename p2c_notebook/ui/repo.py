"""The generated repository: a file tree for display, and the library's zip archive offered as a download."""

from __future__ import annotations

import base64
from pathlib import Path

from p2c_notebook.run.archive import repo_files
from p2c_notebook.ui.render import esc

__all__ = ["DATA_URL_LIMIT", "download_html", "repo_files", "tree_html", "tree_text"]

#: Larger archives are offered by path only: a data URL that size would bloat the notebook.
DATA_URL_LIMIT = 20 * 1024 * 1024


def tree_text(files: list[str]) -> str:
    """An indented tree: folders once, files under them."""
    lines: list[str] = []
    shown: set[str] = set()
    for file in files:
        parts = file.split("/")
        for depth, folder in enumerate(parts[:-1]):
            key = "/".join(parts[: depth + 1])
            if key not in shown:
                shown.add(key)
                lines.append("    " * depth + folder + "/")
        lines.append("    " * (len(parts) - 1) + parts[-1])
    return "\n".join(lines)


def tree_html(repo: Path) -> str:
    files = repo_files(repo)
    if not files:
        return "<p class='p2c-hint'>No repository files yet: the coding stage writes them.</p>"
    return f"<pre class='p2c-tree'>{esc(repo.name)}/\n{esc(tree_text(files))}</pre>"


def download_html(archive: Path) -> str:
    """A download link carrying the archive as a data URL (works offline, in any front end)."""
    size = archive.stat().st_size
    where = f"<span class='p2c-hint'>Saved to <code>{esc(str(archive))}</code> ({size / 1024:.1f} KiB).</span>"
    if size > DATA_URL_LIMIT:
        return where
    data = base64.b64encode(archive.read_bytes()).decode("ascii")
    return (
        f'<a class="p2c-download-link" download="{esc(archive.name)}" '
        f'href="data:application/zip;base64,{data}">Download {esc(archive.name)}</a> {where}'
    )
