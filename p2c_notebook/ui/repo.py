"""The generated repository: a file tree for display and a zip archive to download."""

from __future__ import annotations

import base64
import os
import tempfile
import zipfile
from pathlib import Path

from p2c_notebook.errors import RunError
from p2c_notebook.ui.render import esc

#: Larger archives are offered by path only: a data URL that size would bloat the notebook.
DATA_URL_LIMIT = 20 * 1024 * 1024


def repo_files(repo: Path) -> list[str]:
    """Files under the repository folder, as sorted POSIX paths (temp files of a writer left out).

    Symbolic links are left out too (rglob does not descend into linked folders): a link to a file elsewhere
    must not end up in the download.
    """
    if not repo.is_dir():
        return []
    found = []
    for path in repo.rglob("*"):
        if path.is_file() and not path.is_symlink() and not (path.name.startswith(".") and path.name.endswith(".tmp")):
            found.append(path.relative_to(repo).as_posix())
    return sorted(found)


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


def build_zip(repo: Path, target: Path) -> Path:
    """Zip the repository folder into `target` atomically (a crash leaves the old archive or none)."""
    files = repo_files(repo)
    if not files:
        raise RunError(f"{repo} holds no files yet; run the coding stage before downloading the repository.")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for file in files:
                archive.write(repo / file, f"{repo.parent.name}/{file}")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


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
