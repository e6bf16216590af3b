"""The path sanitiser: generated file names never leave the repository folder."""

from __future__ import annotations

import posixpath
import re

from p2c_notebook.errors import UnsafePathError

_DRIVE = re.compile(r"^[A-Za-z]:")
_RESERVED = {
    "con",
    "prn",
    "aux",
    "nul",
    *(f"com{i}" for i in range(1, 10)),
    *(f"lpt{i}" for i in range(1, 10)),
}


def safe_relative_path(raw: str) -> str:
    """Return `raw` as a normalised POSIX path inside the repository, or raise UnsafePathError.

    Rejects absolute paths, `..`, `~`, drive letters, NUL and control characters, and reserved device names.
    """
    if not isinstance(raw, str) or not raw.strip():
        raise UnsafePathError("A generated file has an empty name.")
    text = raw.strip().replace("\\", "/")
    if any(ord(ch) < 32 for ch in text):
        raise UnsafePathError(f"The file name {raw!r} contains control characters.")
    if text.startswith("/") or _DRIVE.match(text):
        raise UnsafePathError(f"The file name {raw!r} is absolute; generated files must stay inside the repository.")
    if text.startswith("~"):
        raise UnsafePathError(f"The file name {raw!r} points into a home folder; use a path inside the repository.")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts:
        raise UnsafePathError(f"The file name {raw!r} names no file.")
    if ".." in parts:
        raise UnsafePathError(f"The file name {raw!r} contains '..'; generated files must stay inside the repository.")
    for part in parts:
        if part.split(".")[0].casefold() in _RESERVED or part.endswith((" ", ".")) or ":" in part:
            raise UnsafePathError(f"The file name {raw!r} uses a reserved or invalid name ({part!r}).")
    return posixpath.join(*parts)
