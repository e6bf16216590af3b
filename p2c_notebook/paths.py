"""The path sanitiser: generated file names never leave the repository folder, never enter a folder or file that
a tool trusts or runs on entering it (`.git/`, `.envrc`, `.vscode/`...), and never hide or disguise a character.

A model reply can be steered by the paper it reads, so every planned name is treated as hostile input.
"""

from __future__ import annotations

import posixpath
import re
import unicodedata

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
#: 255 bytes is the longest name most file systems allow; a save needs 17 more for its temporary name
#: (`.NAME.XXXXXXXX.tmp`) and for the notes' `.md` (analysis/NAME.md).
MAX_PART_BYTES = 255 - 17
MAX_PATH_CHARS = 1024  # also in UTF-8 bytes: a run folder's path plus this stays far below PATH_MAX (4096)

#: Dot-files a research repository legitimately has, allowed at any depth as the file's own name. Each is data
#: that a tool only reads for settings and never runs: ignore patterns, attribute names (a filter or diff
#: driver runs only if the user's own git config defines it), an empty placeholder, editor whitespace settings.
#: Everything else starting with a dot is refused: `.git` (hooks, `core.fsmonitor`), `.envrc` (direnv),
#: `.vscode`/`.idea`/`.devcontainer` (tasks, interpreters, containers), `.hg`/`.svn`, `.env` (loaded into
#: terminals by editors), `.python-version`/`.tool-versions` (pick the interpreter a shim runs),
#: `.pre-commit-config.yaml`/`.pylintrc` (run code on commit or lint), `.gitmodules` (fetches on clone).
ALLOWED_DOT_FILES = frozenset({".gitignore", ".gitattributes", ".gitkeep", ".dockerignore", ".editorconfig"})
#: CI definitions, kept as text: GitHub runs them only after the user pushes them, nothing local reads them.
_WORKFLOW = re.compile(r"\.github/workflows/[^./][^/]*\.ya?ml")
#: A Windows 8.3 short name (`GIT~1` is `.git` on NTFS): it can stand for a hidden tool folder.
_SHORT_NAME = re.compile(r"[^~]{1,8}~[0-9]+(\.[^.]*)?")
#: Code points Unicode marks "default ignorable" (rendered as nothing) that are not format characters (Cf):
#: Hangul fillers, variation selectors, the combining grapheme joiner, Khmer inherent vowels; plus braille blank.
_INVISIBLE = re.compile(
    "[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u2800\u3164\ufe00-\ufe0f\uffa0\U000e0100-\U000e01ef]"
)
#: Bidirectional controls (all Cf) named separately: they make a name display as something it is not.
_BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
#: Scripts with letters that look like Latin ones (о/o, а/a, ο/o, օ/o, Ꭺ/A): never mixed with another script.
_CONFUSABLE_SCRIPTS = {"LATIN", "CYRILLIC", "GREEK", "ARMENIAN", "CHEROKEE", "COPTIC"}
#: Script mixes that whole languages write in one word (Japanese, Korean, Chinese with Latin).
_WRITTEN_TOGETHER = (
    {"LATIN", "HAN", "HIRAGANA", "KATAKANA"},
    {"LATIN", "HAN", "HANGUL"},
    {"LATIN", "HAN", "BOPOMOFO"},
)


def safe_relative_path(raw: str) -> str:
    """Return `raw` as a normalised (NFC) POSIX path inside the repository, or raise UnsafePathError.

    Rejects absolute paths, `..`, `~`, drive letters, NUL and control characters, names no file system can
    hold (lone surrogates, over 255 bytes), names Windows reserves (CON, aux.py, `<>:"|?*`, a trailing dot),
    dot-paths outside ALLOWED_DOT_FILES (tool folders such as `.git/`), invisible, bidirectional and
    compatibility characters, and parts that mix look-alike scripts.
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
    text = unicodedata.normalize("NFC", text)
    if len(text.encode("utf-8")) > MAX_PATH_CHARS:
        raise UnsafePathError(f"The file name {text[:60]!r}... is longer than {MAX_PATH_CHARS} bytes in UTF-8.")
    _check_characters(raw, text)
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
        if part[0].isspace():
            raise UnsafePathError(f"The file name {raw!r} has a part starting with a space ({part!r}); remove it.")
        if len(part.encode("utf-8")) > MAX_PART_BYTES:
            raise UnsafePathError(f"The file name {raw!r} has a part longer than {MAX_PART_BYTES} bytes.")
        _check_script_mix(raw, part)
    path = posixpath.join(*parts)
    _check_tool_paths(raw, path, parts)
    return path


def _check_characters(raw: str, text: str) -> None:
    """Refuse characters that hide or disguise what a name is: shown as nothing, reordering the text around
    them, or a compatibility form (fullwidth `ｍ`, ligature `ﬁ`, superscript `²`) of a plainer character."""
    for ch in text:
        category = unicodedata.category(ch)
        code = f"U+{ord(ch):04X} ({unicodedata.name(ch, 'unnamed')})"
        if ch in _BIDI:
            raise UnsafePathError(
                f"The file name {raw!r} contains the bidirectional control {code}, which makes a name display "
                "differently from what it is; rename the file without it."
            )
        if category in ("Cf", "Zl", "Zp") or (category == "Zs" and ch != " ") or _INVISIBLE.match(ch):
            raise UnsafePathError(
                f"The file name {raw!r} contains the invisible character {code}; rename the file without it."
            )
        if category in ("Co", "Cn"):
            raise UnsafePathError(
                f"The file name {raw!r} contains {code}, a private-use or unassigned code point; rename the file."
            )
        if unicodedata.decomposition(ch).startswith("<"):
            plain = unicodedata.normalize("NFKC", ch)
            raise UnsafePathError(
                f"The file name {raw!r} contains the look-alike character {code}; write it as {plain!r}."
            )


def _script(ch: str) -> str | None:
    """The script of a letter or non-ASCII digit, read from its Unicode name (None for neutral characters)."""
    if ch.isascii():
        return "LATIN" if ch.isalpha() else None
    if not unicodedata.category(ch).startswith(("L", "Nd")):
        return None
    name = unicodedata.name(ch, "")
    first = name.split(" ")[0].split("-")[0]
    if first in ("CJK", "IDEOGRAPHIC"):
        return "HAN"
    if first in ("MODIFIER", "KATAKANA") and "HIRAGANA" in name:  # the prolonged sound mark serves both
        return None
    return first or None


def _check_script_mix(raw: str, part: str) -> None:
    """A word (letters and marks between `_`, `-`, `.`, digits...) may mix Latin with one other script, or the mixes CJK
    languages write, never scripts whose letters look alike: `mоdel.py` with a Cyrillic `о` would pass for
    `model.py`. Words of different scripts may share a name: `модель_v2.py`."""
    for word in "".join(ch if unicodedata.category(ch)[0] in "LM" else " " for ch in part).split():
        scripts = {s for s in map(_script, word) if s}
        if len(scripts) < 2 or any(scripts <= mix for mix in _WRITTEN_TOGETHER):
            continue
        if len(scripts) == 2 and "LATIN" in scripts and not scripts & (_CONFUSABLE_SCRIPTS - {"LATIN"}):
            continue
        names = ", ".join(sorted(s.title() for s in scripts))
        raise UnsafePathError(
            f"The file name {raw!r} mixes scripts ({names}) in the word {word!r}, so it can pass for another "
            "name; write each word in one script."
        )


def _check_tool_paths(raw: str, path: str, parts: list[str]) -> None:
    """Refuse any dot-path outside the allow-list, and names that stand for one (`GIT~1`, fullwidth dots)."""
    for index, part in enumerate(parts):
        folded = unicodedata.normalize("NFKC", part).casefold()
        if _SHORT_NAME.fullmatch(folded):
            raise UnsafePathError(
                f"The file name {raw!r} has the form of a Windows short name ({part!r}), which can stand for a "
                "hidden tool folder such as .git; rename it."
            )
        if not folded.startswith("."):
            continue
        last = index == len(parts) - 1
        if (last and part in ALLOWED_DOT_FILES) or (index == 0 and part == ".github" and _WORKFLOW.fullmatch(path)):
            continue
        raise UnsafePathError(
            f"The file name {raw!r} enters {part!r}: generated files may not create dot-files or dot-folders, "
            "which tools such as git, direnv and editors trust or run (allowed: "
            + ", ".join(sorted(ALLOWED_DOT_FILES))
            + ", .github/workflows/*.yml)."
        )
