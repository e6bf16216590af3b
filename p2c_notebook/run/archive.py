"""The generated repository as a zip archive, made by the library (views only offer it).

The archive is deterministic: names sorted, every entry with the same fixed time and permissions, so the same
repository gives the same bytes (and the same hash in the manifest) on any machine. Links are never followed (a
link to a file elsewhere must not end up in a download), and its size is bounded.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

from p2c_notebook.errors import RunError
from p2c_notebook.run.store import RunStore, read_regular, sha256

REPO = "repo"
#: The time stamped on every entry (the earliest a zip can hold): the archive's bytes depend on the files only.
FIXED_TIME = (1980, 1, 1, 0, 0, 0)
#: The most the repository's files may hold together; more is not a generated repository.
MAX_ARCHIVE_BYTES = 256 * 1024 * 1024


def repo_files(repo: Path) -> list[str]:
    """Regular files under the repository folder, as sorted POSIX paths; links (to files or folders) and the temp
    files of a writer are left out, and linked folders are not entered."""
    if not repo.is_dir() or repo.is_symlink():
        return []
    found = []
    for folder, dirs, files in os.walk(repo, followlinks=False):
        here = Path(folder)
        dirs[:] = [d for d in dirs if not (here / d).is_symlink()]
        for name in files:
            path = here / name
            if path.is_symlink() or not path.is_file() or (name.startswith(".") and name.endswith(".tmp")):
                continue
            found.append(path.relative_to(repo).as_posix())
    return sorted(found)


def archive_path(store: RunStore) -> str:
    """Where the repository's zip is saved, relative to the run folder."""
    return f"{store.root.name}-repo.zip"


def repository_zip(store: RunStore) -> Path:
    """Zip the run's repository folder into the run folder and record it in the manifest as a derived file, with a
    hash of the files it was made from. Raises RunError when there are no files or they are too large."""
    repo = store.root / REPO
    files = repo_files(repo)
    if not files:
        raise RunError(f"{repo} holds no files yet; run the coding stage before downloading the repository.")
    too_large = RunError(
        f"{repo} holds more than {MAX_ARCHIVE_BYTES / 2**20:g} MiB; remove large files (data, checkpoints) from it "
        "before downloading the repository."
    )
    if sum((repo / file).lstat().st_size for file in files) > MAX_ARCHIVE_BYTES:
        raise too_large
    buffer, total, listing = io.BytesIO(), 0, []
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for file in files:
            data = read_regular(store.root, f"{REPO}/{file}", limit=MAX_ARCHIVE_BYTES)  # no link followed
            total += len(data)
            if total > MAX_ARCHIVE_BYTES:  # grew while being read
                raise too_large
            entry = zipfile.ZipInfo(f"{store.root.name}/{file}", date_time=FIXED_TIME)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, data)
            listing.append(f"{file}\0{sha256(data)}")
    rel = archive_path(store)
    store.save_derived(rel, buffer.getvalue(), REPO, source_sha256=sha256("\n".join(listing)))
    return store.root / rel
