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
    "conin$",
    "conout$",
    *(f"{port}{i}" for port in ("com", "lpt") for i in (*range(10), "\u00b9", "\u00b2", "\u00b3")),
}
_WINDOWS_INVALID = set('<>:"|?*')
MAX_PART_BYTES = 255  # the longest file name most file systems allow
MAX_PATH_CHARS = 1024


def safe_relative_path(raw: str) -> str:
    """Return `raw` as a normalised POSIX path inside the repository, or raise UnsafePathError.

    Rejects absolute paths, `..`, `~`, drive letters, NUL and control characters, names no file system can
    hold (lone surrogates, over 255 bytes) and names Windows reserves (CON, aux.py, `<>:"|?*`, a trailing dot).
    """
    if not isinstance(raw, str) or not raw.strip():
        raise UnsafePathError("A generated file has an empty name.")
    text = raw.strip().replace("\\", "/")
    if len(text) > MAX_PATH_CHARS:
        raise UnsafePathError(f"The file name {text[:60]!r}... is longer than {MAX_PATH_CHARS} characters.")
    if any(ord(ch) < 32 or 0x7F <= ord(ch) < 0xA0 for ch in text):
        raise UnsafePathError(f"The file name {raw!r} contains control characters.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsafePathError(f"The file name {raw!r} is not valid Unicode (a lone surrogate).") from None
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
        stem = part.split(".")[0].rstrip(" ").casefold()
        if stem in _RESERVED or part.endswith((" ", ".")) or _WINDOWS_INVALID.intersection(part):
            raise UnsafePathError(
                f"The file name {raw!r} uses a name Windows reserves or cannot hold ({part!r}); rename it."
            )
        if len(part.encode("utf-8")) > MAX_PART_BYTES:
            raise UnsafePathError(f"The file name {raw!r} has a part longer than {MAX_PART_BYTES} bytes.")
    return posixpath.join(*parts)
