"""LaTeX reader: a .tex file, a source folder or a .tar.gz/.tgz/.zip bundle (read in memory).

`\\input`/`\\include` are resolved inside the source root only; the title, abstract, numbered sections,
display equations (kept as LaTeX) and float captions are extracted; the bibliography and the
acknowledgements are dropped; simple markup becomes plain text.
"""

from __future__ import annotations

import functools
import gzip
import io
import os
import posixpath
import re
import tarfile
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Protocol

from p2c_notebook.errors import PaperError
from p2c_notebook.paper.model import Caption, Paper, Section
from p2c_notebook.paper.text import ACKNOWLEDGEMENTS, MAX_TEXT_BYTES, REFERENCES, decode_text, heading_kind

MAX_TEXT = MAX_TEXT_BYTES  # LaTeX text of every form: one file, one member, their sum, the expanded document
_MAX_UNPACKED = 200 * 1024 * 1024  # all of a tar stream, figures included, that we decompress to find the text
_MAX_FILES = 10_000
_MAX_INCLUDES = 10_000  # \\input/\\include expansions in one document
_CHUNK = 1 << 16
_TEX = (".tex", ".ltx", ".latex")
# Members a bundle carries that are never LaTeX text: skipped unread (a tar stream still decompresses them).
_BINARY = frozenset(
    (".pdf", ".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".eps", ".ps", ".svg", ".ico")
    + (".mp4", ".mov", ".avi", ".gz", ".tgz", ".tar", ".zip", ".bz2", ".xz", ".7z", ".pt", ".pth", ".ckpt", ".npy")
    + (".npz", ".h5", ".pkl", ".bin", ".ttf", ".otf", ".pfb", ".woff", ".mat", ".docx", ".pptx", ".xlsx")
)
_MB = MAX_TEXT // 2**20


def read_capped(handle: _Readable, limit: int) -> bytes | None:
    """Up to `limit` bytes from a stream, None when it holds more; it never reads more than limit + 1 bytes,
    so a decompression bomb costs at most the limit in time and memory."""
    parts: list[bytes] = []
    size = 0
    while True:
        chunk = handle.read(min(_CHUNK, limit + 1 - size))
        if not chunk:
            return b"".join(parts)
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def _too_large(what: str) -> PaperError:
    return PaperError(
        f"{what} more than {_MB} MB of LaTeX text (the limit): give the paper's main .tex file, or a source "
        "folder or bundle holding only the paper's own files."
    )


class _Source(Protocol):
    name: str

    def files(self) -> list[str]: ...

    def exists(self, rel: str) -> bool: ...

    def read(self, rel: str) -> bytes | None: ...

    def forget(self) -> None:
        """Drop what was read (once the document is expanded)."""


class _DirSource:
    """Files under a folder; reads never leave it (symlinks included). What is read is kept, and all of it
    together is at most MAX_TEXT bytes."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root.resolve()
        self.name = name
        self.cache: dict[str, bytes] = {}
        self.total = 0

    def files(self) -> list[str]:
        found: list[str] = []
        for folder, dirs, names in os.walk(self.root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            rel = Path(folder).relative_to(self.root)
            found.extend(str(PurePosixPath(*rel.parts, n)) for n in sorted(names) if not n.startswith("."))
            if len(found) > _MAX_FILES:
                raise PaperError(f"{self.name} holds more than {_MAX_FILES} files: give the paper's own folder.")
        return found

    def exists(self, rel: str) -> bool:
        target = (self.root / rel).resolve()
        return target.is_relative_to(self.root) and target.is_file()

    def read(self, rel: str) -> bytes | None:
        if rel in self.cache:
            return self.cache[rel]
        if not self.exists(rel):
            return None
        target = (self.root / rel).resolve()
        try:
            with target.open("rb") as handle:
                data = read_capped(handle, MAX_TEXT)
        except OSError as exc:
            raise PaperError(f"{rel} in {self.name} cannot be read ({exc.strerror}): check its permissions.") from exc
        if data is None:
            raise _too_large(f"{rel} in {self.name} holds")
        if self.total + len(data) > MAX_TEXT:
            raise _too_large(f"the .tex files read from {self.name} hold")
        self.total += len(data)
        self.cache[rel] = data
        return data

    def forget(self) -> None:
        self.cache.clear()


class _MemorySource:
    """Text files from an archive, held in memory under normalised relative names."""

    def __init__(self, contents: dict[str, bytes], name: str) -> None:
        self.contents = contents
        self.name = name

    def files(self) -> list[str]:
        return sorted(self.contents)

    def exists(self, rel: str) -> bool:
        return rel in self.contents

    def read(self, rel: str) -> bytes | None:
        return self.contents.get(rel)

    def forget(self) -> None:
        self.contents.clear()


def _safe_name(name: str) -> str | None:
    """Normalise an archive member name; None for absolute paths or names that climb out ("..")."""
    name = name.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return None
    normal = posixpath.normpath(name)
    if normal in (".", "") or normal == ".." or normal.startswith("../"):
        return None
    if normal.startswith("__MACOSX/") or posixpath.basename(normal).startswith("._"):
        return None  # macOS resource forks, not sources
    return normal


class _Counted:
    """A stream that refuses to give more than `limit` bytes in all: bounds a tar stream's decompression."""

    def __init__(self, stream: _Readable, limit: int, name: str) -> None:
        self.stream, self.limit, self.name, self.count = stream, limit, name, 0

    def read(self, size: int = -1, /) -> bytes:
        data = self.stream.read(min(size, self.limit + 1 - self.count) if size >= 0 else self.limit + 1 - self.count)
        self.count += len(data)
        if self.count > self.limit:
            raise PaperError(
                f"{self.name} unpacks to more than {self.limit // 2**20} MB: unpack it yourself and give the "
                "folder (or the main .tex file)."
            )
        return data


class _Collector:
    """Keeps an archive's text members, one at a time, within the size and count limits."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.contents: dict[str, bytes] = {}
        self.total = 0
        self.members = 0

    def add(self, name: str, stream: Callable[[], _Readable | None]) -> None:
        self.members += 1
        if self.members > _MAX_FILES:
            raise PaperError(f"{self.name} holds more than {_MAX_FILES} files: give the paper's own source.")
        safe = _safe_name(name)
        if safe is None or posixpath.splitext(safe)[1].lower() in _BINARY:
            return
        handle = stream()
        if handle is None:
            return
        data = read_capped(handle, MAX_TEXT)
        if data is None:
            raise _too_large(f"{safe} in {self.name} unpacks to")
        if self.total + len(data) > MAX_TEXT:
            raise _too_large(f"the text files in {self.name} hold")
        self.total += len(data)
        self.contents[safe] = data


def _archive_source(path: Path) -> _Source:
    """Read a .tar(.gz)/.tgz/.zip bundle (or a gzipped single .tex) as a stream, keeping only its text files.

    Every member and the sum of the kept ones are held to MAX_TEXT bytes, checked while they are decompressed;
    a tar stream as a whole (figures included) to 200 MB."""
    collector = _Collector(path.name)
    try:
        with path.open("rb") as raw:
            head = raw.read(4)
            raw.seek(0)
            if head.startswith(b"PK\x03\x04"):
                with zipfile.ZipFile(raw) as zipped:
                    infos = zipped.infolist()
                    if len(infos) > _MAX_FILES:
                        raise PaperError(f"{path.name} holds more than {_MAX_FILES} files: give the paper's source.")
                    for info in infos:
                        if not info.is_dir():
                            collector.add(info.filename, functools.partial(zipped.open, info))
                return _MemorySource(collector.contents, path.name)
            gzipped = head.startswith(b"\x1f\x8b")
            stream: _Readable = gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw
            block = stream.read(512)
            tar = block[257:262] == b"ustar" or path.name.lower().endswith((".tar", ".tar.gz", ".tgz"))
            if not tar:
                if not gzipped:
                    raise ValueError("it is neither a zip, a tar nor a gzip file")
                single = path.name.removesuffix(".gz")
                single = single if single.lower().endswith(_TEX) else f"{single}.tex"
                collector.add(single, lambda: _Prefixed(block, stream))
                return _MemorySource(collector.contents, path.name)
            counted = _Counted(_Prefixed(block, stream), _MAX_UNPACKED, path.name)
            with tarfile.open(fileobj=counted, mode="r|") as archive:  # type: ignore[call-overload]
                for member in archive:
                    if member.isfile():
                        collector.add(member.name, functools.partial(archive.extractfile, member))
                    archive.members = []  # a stream's members need not be remembered
    except (
        OSError,
        EOFError,
        tarfile.TarError,
        zipfile.BadZipFile,
        ValueError,
        zlib.error,
        NotImplementedError,
    ) as exc:
        raise PaperError(
            f"{path.name} is not a readable .tar.gz/.tgz/.zip LaTeX bundle ({exc}): download the source "
            "again, or unpack it and give the folder."
        ) from exc
    return _MemorySource(collector.contents, path.name)


class _Prefixed:
    """A stream with bytes already read from it put back in front."""

    def __init__(self, prefix: bytes, stream: _Readable) -> None:
        self.prefix, self.stream = prefix, stream

    def read(self, size: int = -1, /) -> bytes:
        if self.prefix:
            if size < 0:
                data, self.prefix = self.prefix + self.stream.read(), b""
                return data
            data, self.prefix = self.prefix[:size], self.prefix[size:]
            return data
        return self.stream.read(size)


def pairs(text: str, opener: re.Pattern[str], closer: Callable[[re.Match[str]], str]) -> Iterator[_Pair]:
    """Non-overlapping spans from each `opener` match to the first match of its closer regex after it, left to
    right (what `open.*?close` with re.S finds), in linear time: a closer missing after one opener is missing
    after every later one, so it is searched for once, not once per opener (the quadratic case of `.*?`)."""
    compiled: dict[str, re.Pattern[str]] = {}
    missing: set[str] = set()
    position = 0
    while match := opener.search(text, position):
        source = closer(match)
        if source in missing:
            position = match.start() + 1
            continue
        pattern = compiled.get(source) or compiled.setdefault(source, re.compile(source))
        found = pattern.search(text, match.end())
        if found is None:
            missing.add(source)
            position = match.start() + 1
            continue
        yield _Pair(match, found.start(), found.end())
        position = found.end()


@dataclass(frozen=True)
class _Pair:
    """An opener match, where its content ends (the closer's start) and where the closer ends."""

    opener: re.Match[str]
    inner_end: int
    end: int

    @property
    def inner(self) -> str:
        return self.opener.string[self.opener.end() : self.inner_end]


def sub_pairs(
    text: str, opener: re.Pattern[str], closer: Callable[[re.Match[str]], str], render: Callable[[_Pair], str]
) -> tuple[str, int]:
    """Replace every span `pairs` finds by `render(pair)`: (new text, number of spans)."""
    out: list[str] = []
    position = count = 0
    for pair in pairs(text, opener, closer):
        out.extend((text[position : pair.opener.start()], render(pair)))
        position, count = pair.end, count + 1
    if not count:
        return text, 0
    out.append(text[position:])
    return "".join(out), count


_COMMENT = re.compile(r"(\\[\\%])|%[^\n]*")  # a \\ or \% is kept as it is; a bare % starts a comment
_COMMENT_ENV = re.compile(r"\\begin\{comment\}")
_IFFALSE = re.compile(r"\\iffalse\b")


def _strip_comments(text: str) -> str:
    """Remove % comments (not \\%), comment environments and \\iffalse ... \\fi blocks."""
    text = re.sub(r"\\(url|href)\{[^{}\n]*\}", lambda m: m.group(0).replace("%", "\\%"), text)
    text = _COMMENT.sub(r"\1", text)
    text = sub_pairs(text, _COMMENT_ENV, lambda _: r"\\end\{comment\}", lambda _: "")[0]
    return sub_pairs(text, _IFFALSE, lambda _: r"\\fi\b", lambda _: "")[0]


_INPUT = re.compile(r"\\(input|include|subfile)(?![A-Za-z])\s*(?:\{([^{}]*)\}|([^\s{}\\%]+))")


@dataclass
class _Expander:
    """Resolves \\input/\\include recursively inside one source, guarding cycles, depth and size: the expanded
    document (every inclusion counted, however often a file is included) is at most MAX_TEXT characters."""

    source: _Source
    main: str
    size: int = 0
    includes: int = 0
    missing: list[str] = field(default_factory=list)  # preamble \\input files not in the source
    loaded: dict[str, str] = field(default_factory=dict)

    def load(self, rel: str) -> str:
        if rel not in self.loaded:
            data = self.source.read(rel)
            if data is None:
                raise PaperError(f"{rel} cannot be read from {self.source.name}.")
            self.loaded[rel] = _strip_comments(decode_text(data, rel, "LaTeX source"))
        return self.loaded[rel]

    def resolve(self, target: str, including: str, preamble: bool = False) -> str | None:
        """The source file `target` names; None for a missing file named in the preamble."""
        target = target.strip().strip('"')
        if target.startswith("/") or re.match(r"^[A-Za-z]:", target):
            raise PaperError(
                f"\\input{{{target}}} in {including} points outside the LaTeX source ({self.source.name}): "
                "only files inside the source folder are read; copy the file into it."
            )
        bases = [posixpath.dirname(self.main), posixpath.dirname(including)]
        for base in dict.fromkeys(bases):
            for candidate in (target, f"{target}.tex"):
                normal = posixpath.normpath(posixpath.join(base, candidate))
                if normal == ".." or normal.startswith("../"):
                    raise PaperError(
                        f"\\input{{{target}}} in {including} points outside the LaTeX source "
                        f"({self.source.name}): copy the file into the source folder."
                    )
                if self.source.exists(normal):
                    return normal
        if preamble:
            return None
        raise PaperError(
            f"{including} includes {target!r} (\\input/\\include), but no file {target}"
            f"{'' if target.endswith('.tex') else '[.tex]'} exists in {self.source.name}: "
            "add the missing file to the source, or remove that line."
        )

    def expand(self, rel: str) -> str:
        """`rel` with its \\input/\\include files inlined. A file missing from the body is an error; one
        missing from the preamble (before \\begin{document}: macros, or TeX-installation files such as
        glyphtounicode) is skipped and listed in `missing`."""
        out: list[str] = []
        self._expand(rel, (), False, out)
        self.loaded.clear()  # the expanded text is all that is needed now: memory is part of the bound
        self.source.forget()
        return "".join(out)

    def _expand(self, rel: str, stack: tuple[str, ...], preamble: bool, out: list[str]) -> None:
        if rel in stack:
            chain = " -> ".join((*stack, rel))
            raise PaperError(f"LaTeX files in {self.source.name} include each other in a cycle ({chain}).")
        if len(stack) > 32:
            raise PaperError(f"\\input nesting in {self.source.name} is deeper than 32 files.")
        self.includes += 1
        if self.includes > _MAX_INCLUDES:
            raise PaperError(
                f"{self.source.name} has more than {_MAX_INCLUDES} \\input/\\include expansions: is a file "
                "included in a loop? Give the main .tex file with the text inlined."
            )
        text = self.load(rel)
        begin = -1 if preamble else text.find("\\begin{document}")
        self.size += len(text)
        if self.size > MAX_TEXT:
            raise _too_large(f"{self.source.name} expands (\\input/\\include) to")
        position = 0
        for match in _INPUT.finditer(text):
            target = match.group(2) if match.group(2) is not None else match.group(3)
            if "#" in target:  # inside a macro definition: not a file name
                continue
            out.append(text[position : match.start()])
            position = match.end()
            if not target.strip():
                continue
            in_preamble = preamble or match.start() < begin
            child = self.resolve(target, rel, in_preamble)
            if child is None:
                self.missing.append(target.strip())
                continue
            out.append("\n")
            self._expand(child, (*stack, rel), in_preamble, out)
            out.append("\n")
        out.append(text[position:])


def _main_file(source: _Source) -> str:
    """The file with \\documentclass and \\begin{document} (else the one with most sections)."""
    candidates = [f for f in source.files() if f.lower().endswith(_TEX)]
    if not candidates:
        raise PaperError(
            f"{source.name} contains no .tex files: give the folder or bundle holding the LaTeX source, "
            "or the paper's PDF."
        )
    scored: list[tuple[int, int, int, str]] = []
    for name in candidates:
        text = _strip_comments((source.read(name) or b"").decode("utf-8", "replace"))
        score = 4 * ("\\documentclass" in text) + 4 * ("\\begin{document}" in text)
        score += PurePosixPath(name).stem.lower() in ("main", "ms", "paper", "article", "root")
        sections = len(re.findall(r"\\(?:sub)*section\*?\s*[\[{]", text))
        scored.append((score, sections, -name.count("/"), name))
    return max(scored)[3]


_MAX_NESTING = 255  # TeX's own limit on grouping levels
_BRACE_TOKEN = re.compile(r"\\[\s\S]|\{(?:[^{}\\]|\\[\s\S])*\}|[{}]")
_SPACES = re.compile(r"[ \t\n]*")
_OPTION = r"(?:\[[^\[\]]*\])"  # [opt]: stops at the next "[", so scans from many openers never overlap


def _groups(text: str, starts: Iterable[int]) -> dict[int, tuple[str, int]]:
    """The balanced {...} group at (or after spaces from) each of `starts`: {start: (content, end index)}.

    One pass over the braces for all starts together, where one scan per start would be quadratic (an unclosed
    brace makes every later scan run to the end). Innermost groups are matched whole in C; with nothing pending
    the pass jumps to the next start. Braces nested deeper than TeX allows inside an argument are refused."""
    begins: dict[int, list[int]] = {}  # position of "{" -> the starts that lead to it
    for start in starts:
        index = _SPACES.match(text, start).end()  # type: ignore[union-attr]
        if index < len(text) and text[index] == "{":
            begins.setdefault(index, []).append(start)
    queries = sorted(begins)
    found: dict[int, tuple[str, int]] = {}
    pending: list[tuple[int, int]] = []  # (position of "{", depth before it)
    depth = 0
    next_query = 0
    while next_query < len(queries):
        depth, position = 0, queries[next_query]
        for token in _BRACE_TOKEN.finditer(text, position):
            at = token.start()
            while next_query < len(queries) and queries[next_query] < at:
                next_query += 1  # inside an escape: not a group
            here = next_query < len(queries) and queries[next_query] == at
            kind = token.group()
            if kind[0] == "\\":
                continue
            if len(kind) > 1:  # an innermost group, matched whole
                if here:
                    found.update(dict.fromkeys(begins[at], (text[at + 1 : token.end() - 1], token.end())))
                    next_query += 1
            elif kind == "{":
                if here:
                    pending.append((at, depth))
                    next_query += 1
                depth += 1
                if pending and depth - pending[0][1] > _MAX_NESTING:
                    raise PaperError(
                        f"braces nest more than {_MAX_NESTING} levels deep (TeX's own limit) in the LaTeX "
                        "source: the file is damaged or not a paper; give the PDF."
                    )
            else:
                depth -= 1
                if pending and pending[-1][1] == depth:
                    opened = pending.pop()[0]
                    found.update(dict.fromkeys(begins[opened], (text[opened + 1 : at], at + 1)))
            if not pending and (next_query >= len(queries) or queries[next_query] > token.end()):
                break  # nothing open: jump to the next start
        else:
            pending.clear()  # unclosed to the end: no group
            break
    return found


def _command_matches(text: str, command: str) -> list[re.Match[str]]:
    return list(re.finditer(rf"\\{command}(?![A-Za-z])\*?\s*{_OPTION}?", text))


def _command_arg(text: str, command: str) -> tuple[str, int, int] | None:
    """Find `\\command[opt]{arg}`: (arg, start, end) of the first occurrence."""
    matches = _command_matches(text, command)
    groups = _groups(text, (m.end() for m in matches))
    for match in matches:
        group = groups.get(match.end())
        if group:
            return group[0], match.start(), group[1]
    return None


def _map_command(text: str, command: str, render: Callable[[str], str]) -> str:
    """Replace every `\\command[opt]{arg}` (balanced braces) by `render(arg)`, in one pass."""
    matches = _command_matches(text, command)
    if not matches:
        return text
    groups = _groups(text, (m.end() for m in matches))
    out: list[str] = []
    position = 0
    for match in matches:
        group = groups.get(match.end()) if match.start() >= position else None
        if group is None:
            continue
        out.extend((text[position : match.start()], render(group[0])))
        position = group[1]
    out.append(text[position:])
    return "".join(out)


def _argument_chains(
    text: str, starts: dict[int, int], counts: dict[int, int], before: re.Pattern[str]
) -> dict[int, tuple[str | None, int]]:
    """Up to counts[key] consecutive {...} arguments from starts[key], each after what `before` matches:
    {key: (content of the last argument found or None, where the last one ends, else starts[key])}.
    One pass over the text per argument position, for all keys together."""
    result: dict[int, tuple[str | None, int]] = {key: (None, start) for key, start in starts.items()}
    active = list(starts)
    for round_ in range(max(counts.values(), default=0)):
        active = [key for key in active if round_ < counts[key]]
        at = {key: before.match(text, result[key][1]).end() for key in active}  # type: ignore[union-attr]
        groups = _groups(text, at.values())
        still: list[int] = []
        for key in active:
            group = groups.get(at[key])
            if group is not None:
                result[key] = group
                still.append(key)
        active = still
    return result


_CELL = re.compile(r"\\(multicolumn|multirow)(?![A-Za-z])")
_CELL_GAP = re.compile(rf"\s*(?:{_OPTION}\s*)?\*?")


def _table_cells(text: str) -> str:
    """Keep only the content of `\\multicolumn{n}{c}{x}` and `\\multirow{n}{*}{x}`."""
    matches = list(_CELL.finditer(text))
    if not matches:
        return text
    chains = _argument_chains(
        text, {m.start(): m.end() for m in matches}, dict.fromkeys((m.start() for m in matches), 3), _CELL_GAP
    )
    out: list[str] = []
    position = 0
    for match in matches:
        content, end = chains[match.start()]
        if match.start() < position or content is None:
            continue
        out.extend((text[position : match.start()], content))
        position = end
    out.append(text[position:])
    return "".join(out)


def _remove_command(text: str, command: str) -> str:
    return _map_command(text, command, lambda _: "")


_PROTECTED = frozenset(
    [
        "section",
        "subsection",
        "subsubsection",
        "paragraph",
        "caption",
        "label",
        "ref",
        "eqref",
        "cite",
        "citep",
        "citet",
        "begin",
        "end",
        "input",
        "include",
        "title",
        "author",
        "abstract",
        "item",
        "footnote",
        "emph",
        "textbf",
        "textit",
        "appendix",
        "bibliography",
        "maketitle",
    ]
)


_DEFINITION = re.compile(r"\\(?:re)?newcommand\*?\s*\{?\\([A-Za-z]+)\}?\s*(?=\{)|\\def\s*\\([A-Za-z]+)\s*(?=\{)")


def _macros(text: str, end: int) -> dict[str, str]:
    """Zero-argument \\newcommand/\\def macros (e.g. \\dmodel) defined before `end`, to expand in the body."""
    macros: dict[str, str] = {}
    matches = list(_DEFINITION.finditer(text, 0, end))
    groups = _groups(text, (m.end() for m in matches))
    for match in matches:
        group = groups.get(match.end())
        name = match.group(1) or match.group(2)
        body = group[0] if group else ""
        if not group or len(body) > 200 or len(macros) >= 500 or name in _PROTECTED:
            continue
        if not re.search(r"#|\\(?:begin|end|section|input|include)\b", body):
            macros[name] = body
    return macros


def _expand_macros(text: str, macros: dict[str, str]) -> str:
    """Expand the macros (three rounds, for macros that use macros); what they add is held to the body's own
    size (and MAX_TEXT), so a macro that uses itself (`\\def\\a{\\a\\a}`) cannot grow the text without end."""
    if not macros:
        return text
    pattern = re.compile(r"\\(" + "|".join(sorted(map(re.escape, macros), key=len, reverse=True)) + r")(?![A-Za-z])")
    added, budget = 0, min(len(text), MAX_TEXT)

    def expand(match: re.Match[str]) -> str:
        nonlocal added
        body = macros[match.group(1)]
        added += len(body) - len(match.group(0))
        if added > budget:
            raise PaperError(
                "the LaTeX macros (\\newcommand/\\def) more than double the text (or add over "
                f"{_MB} MB): does a macro use itself? Remove that definition, or give the PDF."
            )
        return body

    for _ in range(3):
        text, count = pattern.subn(expand, text)
        if not count:
            break
    return text


_ACCENTS = {"'": "\u0301", "`": "\u0300", '"': "\u0308", "^": "\u0302", "~": "\u0303", "=": "\u0304"}
_ACCENTS.update({".": "\u0307", "c": "\u0327", "u": "\u0306", "v": "\u030c", "H": "\u030b"})
_UNWRAP = (
    "textbf|textit|emph|texttt|textsc|textrm|textsf|textnormal|textup|textsl|underline|uline|mbox|"
    "text|hl|mathrm|mathbf|mathit|url|nolinkurl|textsuperscript|textsubscript|ensuremath|bm|boldsymbol|"
    "paragraph\\*?|subparagraph\\*?|textmd|makebox|fbox|caption\\*?|centerline"
)
_DROP_ARG = (
    "label|vspace\\*?|hspace\\*?|includegraphics|bibliographystyle|bibliography|thispagestyle|"
    "pagestyle|setlength|addtolength|setcounter|addcontentsline|usepackage|newcommand|renewcommand|"
    "input|graphicspath|cline|cmidrule|hypersetup|definecolor|affiliation|author|icmlauthor|"
    "icmlaffiliation|icmlcorrespondingauthor|icmlkeywords|keywords|pdfinfo|resizebox|scalebox|rule|"
    "specialrule|addlinespace|arrayrulecolor|rowcolor|columncolor|cellcolor"
)
_DROP = (
    "centering|small|footnotesize|scriptsize|tiny|normalsize|large|Large|LARGE|huge|Huge|bf|it|em|rm|"
    "sc|tt|sf|noindent|newpage|clearpage|pagebreak|linebreak|medskip|smallskip|bigskip|vfill|hfill|"
    "maketitle|tableofcontents|appendix|raggedright|raggedleft|protect|xspace|par|nobreak|"
    "phantomsection|FloatBarrier|balance|onecolumn|twocolumn|hline|toprule|midrule|bottomrule|"
    "printbibliography|and|newline|qquad|quad|indent|null|relax|selectfont|normalfont|titlebreak|"
    "boldmath|unboldmath|hfil|vfil|strut|displaystyle|textstyle"
)


_ENV_ARGS = {"tabular": 1, "tabular*": 2, "tabularx": 2, "minipage": 1, "wrapfigure": 2, "wraptable": 2}
_ENV_ARGS.update({"array": 1, "subfigure": 1, "multicols": 1, "adjustbox": 1, "tabulary": 2})


_BEGIN = re.compile(r"\\begin\s*\{([^{}]*)\}")
_OPTION_AFTER = re.compile(rf"\s*{_OPTION}")


def _drop_env_args(text: str) -> str:
    """Remove `\\begin{tabular}{lcc}`-style markers together with their brace arguments."""
    matches = [m for m in _BEGIN.finditer(text) if m.group(1) in _ENV_ARGS]
    if not matches:
        return text
    starts: dict[int, int] = {}
    for match in matches:
        option = _OPTION_AFTER.match(text, match.end())
        starts[match.start()] = option.end() if option else match.end()
    counts = {m.start(): _ENV_ARGS[m.group(1)] for m in matches}
    chains = _argument_chains(text, starts, counts, _SPACES)
    out: list[str] = []
    position = 0
    for match in matches:
        if match.start() < position:
            continue
        out.append(text[position : match.start()])
        position = chains[match.start()][1]
    out.append(text[position:])
    return "".join(out)


# A lookbehind comes after the literal it guards, so that the regex engine can scan for the literal.
_BARE_GROUP = re.compile(r"\{(?<![\\\w\]]\{)([^{}\n]*)\}")
_LAST_GROUP = re.compile(r"\{(?<![\\\w]\{)([^{}\n]*)\}")
_AMPERSAND = re.compile(r"&(?<!\\&)")


def _plain(text: str, labels: dict[str, str]) -> str:
    """Turn LaTeX markup into readable plain text (math placeholders are left alone)."""
    text = re.sub(r"\\(?:no)?cite[a-zA-Z]*\*?\s*(?:\[[^\[\]]*\]\s*){0,2}\{[^{}]*\}", "[cite]", text)
    text = re.sub(r"\\eqref\s*\{([^{}]*)\}", lambda m: f"({labels.get(m.group(1).strip(), '?')})", text)
    text = re.sub(
        r"\\(?:auto|c|C|page|name|sub|v)?ref\*?\s*\{([^{}]*)\}",
        lambda m: ", ".join(labels.get(k.strip(), "[ref]") for k in m.group(1).split(",")),
        text,
    )
    text = re.sub(r"\\href\s*\{[^{}]*\}\s*\{([^{}]*)\}", r"\1", text)
    text = re.sub(r"\\(?:textcolor|colorbox)\s*\{[^{}]*\}\s*\{([^{}]*)\}", r"\1", text)
    text = re.sub(r"\\paragraph\*?\s*\{([^{}]*)\}\s*", r"\n\n\1 ", text)
    text = _map_command(text, "footnote", lambda note: f" ({note.strip()})")
    text = _table_cells(text)
    text = _drop_env_args(text)
    text = re.sub(rf"\\(?:{_DROP})(?![A-Za-z])\s*", " ", text)
    text = re.sub(rf"\\(?:{_DROP_ARG})(?![A-Za-z])\*?\s*(?:\[[^\[\]]*\])?(?:\s*\{{[^{{}}]*\}}){{0,3}}", "", text)
    for _ in range(8):
        text, count = re.subn(rf"\\(?:{_UNWRAP})\s*(?:\[[^\[\]]*\]\s*)?\{{([^{{}}]*)\}}", r"\1", text)
        text, bare = _BARE_GROUP.subn(r"\1", text)
        if not count and not bare:
            break
    text = re.sub(r"\\item\s*\[([^\[\]]*)\]", r"\n- \1:", text)
    text = re.sub(r"\\item(?![A-Za-z])", "\n- ", text)
    text = re.sub(r"\\begin\{[^{}]*\}(?:\[[^\[\]]*\])?|\\end\{[^{}]*\}", "\n", text)
    text = _AMPERSAND.sub(" | ", text)
    text = re.sub(r"\\\\(?:\[[^\[\]]*\])?|\\newline", "\n", text)

    def accent(match: re.Match[str]) -> str:
        return unicodedata.normalize("NFC", match.group(2) + _ACCENTS[match.group(1)])

    text = re.sub(r"\\(['`\"^~=.])\{?([A-Za-z])\}?", accent, text)
    text = re.sub(r"\\([cuvH])\{([A-Za-z])\}", accent, text)
    text = re.sub(r"\\(?:ldots|dots|cdots)(?![A-Za-z])", "...", text)
    text = re.sub(r"\\([%&_#${}])", r"\1", text)
    text = re.sub(r"\\[,;:! ]", " ", text)
    text = text.replace("~", " ").replace("``", '"').replace("''", '"').replace("---", "\u2014")
    text = text.replace("--", "\u2013")
    text = _LAST_GROUP.sub(r"\1", text)
    return text


_BLANK_LINES = re.compile(r"\n\s*\n")


def _blocks(text: str) -> Iterator[str]:
    """The text between blank lines, one at a time (a list of them all costs an object per paragraph)."""
    position = 0
    for match in _BLANK_LINES.finditer(text):
        yield text[position : match.start()]
        position = match.end()
    yield text[position:]


def _reflow(text: str) -> str:
    """Join the source's wrapped lines into paragraphs; keep list items, table rows and equations.

    Lines are gathered in lists and joined once (joining string to string is quadratic in a long paragraph);
    paragraphs are written out as they are done, so memory is the text's, not an object per paragraph."""
    result = io.StringIO()
    last = ""  # the last line written
    for block in _blocks(re.sub(r"[ \t][ \t]+|\t", " ", text)):
        out: list[list[str]] = []  # output lines, each the source lines it joins
        joinable = False  # whether the last output line takes the next source line
        for raw in block.split("\n"):
            line = raw.strip()
            if not line or line == "|":
                continue
            table = " | " in line
            if joinable and not table and not line.startswith(("- ", "\x00")):
                out[-1].append(line)
            else:
                out.append([line])
                joinable = not line.startswith("\x00") and not table
        if not out:
            continue
        lines = [" ".join(parts) for parts in out]
        if last:  # consecutive table rows stay one block
            result.write("\n" if " | " in lines[0] and " | " in last else "\n\n")
        result.write("\n".join(lines))
        last = lines[-1]
    return result.getvalue()


_SECTION = re.compile(r"\\(section|subsection|subsubsection)(\*?)\s*(?:\[[^\[\]]*\]\s*)?(?=\{)|\\appendix(?![A-Za-z])")
_LABELS = re.compile(r"\s*(?:\\label\s*\{([^{}]*)\}\s*)+")
_FLOAT = re.compile(r"\\begin\{(figure\*?|table\*?|wrapfigure|wraptable|SCfigure|algorithm\*?)\}")
_DISPLAY = re.compile(
    r"\\begin\{(equation|align|gather|multline|eqnarray|flalign|alignat|displaymath)(\*?)\}|(?<!\\)\\\[|\$\$"
)
# Inline math: `$...$` or `\(...\)`, at most 500 characters; neither can hold the start of another, so the
# scans from successive starts never overlap (linear, where `.{1,500}?` rescans 500 characters per start).
_INLINE = re.compile(r"\$(?<![\\$]\$)(?!\$)(?:[^$\\]|\\.){1,500}?(?<!\\)\$|\\\((?:[^\\]|\\[^(]){1,500}?\\\)")
_ACK = re.compile(r"\\begin\{(ack|acks|acknowledgments?|acknowledgements?)\}")


def _end_of(match: re.Match[str]) -> str:
    """The closer regex of a `\\begin{env}` match (group 1 the name, group 2 a star if any)."""
    star = (match.group(2) or "") if match.re.groups > 1 else ""
    return re.escape(f"\\end{{{match.group(1)}{star}}}")


def _display_end(match: re.Match[str]) -> str:
    if match.group(1):
        return _end_of(match)
    return r"(?<!\\)\\\]" if match.group(0).startswith("\\") else r"\$\$"


@dataclass
class _Document:
    """Extraction state: placeholders for math, labels for \\ref, what was found and dropped."""

    labels: dict[str, str] = field(default_factory=dict)
    equations: list[str] = field(default_factory=list)
    inline: list[str] = field(default_factory=list)
    captions: list[Caption] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def drop(self, what: str) -> None:
        if what not in self.dropped:
            self.dropped.append(what)

    def protect_math(self, text: str) -> str:
        numbered = 0

        def display(pair: _Pair) -> str:
            nonlocal numbered
            env, star, inner = pair.opener.group(1), pair.opener.group(2), pair.inner
            for label in re.findall(r"\\label\s*\{([^{}]*)\}", inner):
                if env and not star:
                    self.labels[label.strip()] = str(numbered + 1)
            inner = re.sub(r"\\label\s*\{[^{}]*\}|\\nonumber|\\notag", "", inner).strip()
            if env and not star and env != "displaymath":
                numbered += 1
            if not inner:
                return ""
            self.equations.append(inner)
            return f"\n\x00E{len(self.equations) - 1}\x00\n"

        text = sub_pairs(text, _DISPLAY, _display_end, display)[0]

        def inline(match: re.Match[str]) -> str:
            self.inline.append(match.group(0))
            return f"\x00M{len(self.inline) - 1}\x00"

        return _INLINE.sub(inline, text)

    def restore(self, text: str) -> str:
        text = re.sub(r"\x00M(\d+)\x00", lambda m: self.inline[int(m.group(1))], text)
        return re.sub(r"\x00E(\d+)\x00", lambda m: f"$$\n{self.equations[int(m.group(1))]}\n$$", text)

    def floats(self, text: str) -> str:
        counters = {"figure": 0, "table": 0, "algorithm": 0}

        def replace(pair: _Pair) -> str:
            env, body = pair.opener.group(1), re.sub(r"^\s*\[[^\[\]]*\]", "", pair.inner)
            kind = "table" if "table" in env else "algorithm" if "algorithm" in env else "figure"
            counters[kind] += 1
            label = f"{kind.capitalize()} {counters[kind]}"
            for name in re.findall(r"\\label\s*\{([^{}]*)\}", body):
                self.labels[name.strip()] = str(counters[kind])

            def caption(text: str) -> str:
                if text.strip():
                    caption_text = re.sub(r"\s+", " ", self.restore(_plain(text, self.labels))).strip()
                    self.captions.append(Caption(kind=kind, label=label, text=caption_text))
                return ""

            rest = _map_command(re.sub(r"\\label\s*\{[^{}]*\}", "", body), "caption", caption)
            return f"\n\n{rest}\n\n" if kind == "table" else "\n\n"

        return sub_pairs(text, _FLOAT, _end_of, replace)[0]


def _drop_back_matter(body: str, doc: _Document) -> str:
    """Remove the bibliography and acknowledgement environments, noting them in `dropped`."""
    body, refs = re.subn(r"\\begin\{thebibliography\}.*?(?:\\end\{thebibliography\}|$)", "", body, flags=re.S)
    body, cites = re.subn(r"\\(?:bibliography|printbibliography|nobibliography)(?![A-Za-z])(?:\{[^{}]*\})?", "", body)
    if refs or cites:
        doc.drop(REFERENCES)
    body, acks = sub_pairs(body, _ACK, _end_of, lambda _: "")
    if acks:
        doc.drop(ACKNOWLEDGEMENTS)
    return body


def _sections(body: str, doc: _Document) -> list[Section]:
    """Split the body at \\section/\\subsection/\\subsubsection, numbering unstarred ones."""
    counters = [0, 0, 0]
    appendix = False
    pieces: list[tuple[Section | None, str]] = []
    position = 0
    current: Section | None = None
    matches = list(_SECTION.finditer(body))
    groups = _groups(body, (m.end() for m in matches if m.group(1) is not None))
    for match in matches:
        if match.start() < position:
            continue
        pieces.append((current, body[position : match.start()]))
        if match.group(1) is None:  # \appendix
            appendix, counters, position, current = True, [0, 0, 0], match.end(), current
            continue
        group = groups.get(match.end())
        if group is None:
            position = match.end()
            continue
        title, position = group
        level = ("section", "subsection", "subsubsection").index(match.group(1)) + 1
        number = None
        if not match.group(2):
            counters[level - 1] += 1
            counters[level:] = [0] * (3 - level)
            parts = [chr(64 + counters[0]) if appendix and 0 < counters[0] <= 26 else str(counters[0])]
            parts += [str(c) for c in counters[1:level]]
            number = ".".join(parts)
        labels = _LABELS.match(body, position)
        if labels and number:
            for name in re.findall(r"\\label\s*\{([^{}]*)\}", labels.group(0)):
                doc.labels.setdefault(name.strip(), number)
        heading = re.sub(r"\s+", " ", _plain(title, doc.labels)).strip()
        current = Section(heading=doc.restore(heading) or "Untitled", number=number, level=level)
    pieces.append((current, body[position:]))

    sections: list[Section] = []
    texts: dict[int, list[str]] = {}  # id(section) -> its texts, joined once at the end
    skip_level = 0
    pieces.reverse()  # taken from the end, so that each raw piece is freed once converted
    while pieces:
        section, raw = pieces.pop()
        text = doc.restore(_reflow(_plain(raw, doc.labels))).strip()
        del raw
        if section is None:
            if len(re.sub(r"\W", "", text)) > 40:
                sections.append(Section(heading="Text", text=text))
            continue
        if skip_level and section.level > skip_level:
            continue
        kind = heading_kind(section.heading)
        if kind in (REFERENCES, ACKNOWLEDGEMENTS):
            doc.drop(kind or "")
            skip_level = section.level
            continue
        skip_level = 0
        if id(section) not in texts:
            texts[id(section)] = [text]
            sections.append(section)
        else:
            texts[id(sections[-1])].append(text)
    for section in sections:
        if id(section) in texts:
            section.text = "\n\n".join(t for t in texts[id(section)] if t)
    return sections


_MAX_UNITS = 10_000  # headings, and floats: each costs a Section or a Caption; a long thesis has a few hundred


def _check_units(text: str, name: str) -> None:
    """Refuse a text with more headings or floats than any paper has: each is converted on its own, so their
    number, not the text's size, would bound the time."""
    headings = sum(text.count(f"\\{command}") for command in ("section", "subsection", "subsubsection", "appendix"))
    floats = sum(text.count(f"\\begin{{{env}") for env in ("figure", "table", "wrap", "SCfigure", "algorithm"))
    for count, what in ((headings, "\\section/\\subsection/\\appendix headings"), (floats, "figures and tables")):
        if count > _MAX_UNITS:
            raise PaperError(
                f"{name} has {count:,} {what}, more than the {_MAX_UNITS:,} any paper has: give the paper's own "
                ".tex file, or its PDF."
            )


def _parse(text: str, name: str) -> Paper:
    """Extract a Paper from expanded, comment-free LaTeX."""
    _check_units(text, name)
    begin = text.find("\\begin{document}")
    end = text.find("\\end{document}")
    if begin < 0 and not re.search(r"\\(?:sub)*section\*?\s*[\[{]", text):
        raise PaperError(
            f"{name} does not look like a LaTeX paper: no \\begin{{document}} and no \\section. "
            "Give the main .tex file (or the whole source folder), or the PDF."
        )
    body = text[begin + len("\\begin{document}") if begin >= 0 else 0 : end if end > begin else len(text)]
    doc = _Document()
    title = ""
    for command in ("title", "icmltitle"):
        found = _command_arg(text, command)
        if found:
            raw = re.sub(r"\\(?:thanks|footnote)\s*\{[^{}]*\}", "", found[0])
            title = re.sub(r"\s+", " ", _plain(raw, {})).strip()
            break
    macros = _macros(text, end if end > begin else len(text))
    del text  # the body is a copy: memory is part of the bound
    body = _expand_macros(body, macros)
    body = _drop_back_matter(body, doc)
    for command in ("title", "icmltitle", "author", "icmlauthor", "affiliation", "address", "date", "thanks"):
        body = _remove_command(body, command)
    body = doc.protect_math(body)
    abstract = ""
    opened = body.find("\\begin{abstract}")
    closed = body.find("\\end{abstract}", opened + len("\\begin{abstract}")) if opened >= 0 else -1
    if closed >= 0:
        abstract = body[opened + len("\\begin{abstract}") : closed]
        body = body[:opened] + body[closed + len("\\end{abstract}") :]
    else:
        found = _command_arg(body, "abstract")
        if found:
            abstract, body = found[0], body[: found[1]] + body[found[2] :]
    body = doc.floats(body)
    abstract = re.sub(r"\s+", " ", doc.restore(_plain(abstract, doc.labels))).strip()
    sections = _sections(body, doc)
    if not sections and not abstract:
        raise PaperError(f"{name} has no text we could extract: give the main .tex file or the PDF.")
    return Paper(
        title=title or Path(name).stem,
        abstract=abstract,
        sections=sections,
        equations=["\n".join(ln.strip() for ln in e.split("\n") if ln.strip()) for e in doc.equations],
        captions=doc.captions,
        source=name,
        source_format="latex",
        dropped=doc.dropped,
    )


def _read_source(source: _Source, main: str, text: str | None = None) -> Paper:
    """The paper whose main file is `main` (its comment-free `text` when already loaded)."""
    expander = _Expander(source, main)
    if text is not None:
        expander.loaded[main] = text
        del text
    paper = _parse(expander.expand(main), source.name)  # no name holds the expanded text: _parse frees it
    if not expander.missing:
        return paper
    names = ", ".join(dict.fromkeys(expander.missing))
    note = f"preamble \\input files not in {source.name} ({names}: macros defined there stay unexpanded)"
    return paper.model_copy(update={"dropped": [*paper.dropped, note]})


def read_latex(path: Path) -> Paper:
    """Read a single .tex file; its \\input files are looked up next to it."""
    source = _DirSource(path.parent, path.name)
    paper = _read_source(source, path.name, _main_text(source, path.name))
    return paper.model_copy(update={"source": path.name})


def _main_text(source: _DirSource, name: str) -> str:
    """A single .tex file's comment-free text, refused when it is empty or not LaTeX."""
    data = source.read(name) or b""
    if not data.strip():
        raise PaperError(f"{name} is empty: give the main .tex file of the paper.")
    text = _strip_comments(decode_text(data, name, "LaTeX source"))
    sections = re.search(r"\\(?:sub)*section\*?\s*[\[{]", text)
    if "\\documentclass" not in text and "\\begin{document}" not in text and not sections:
        raise PaperError(
            f"{name} does not look like a LaTeX paper: no \\begin{{document}} and no \\section. "
            "Give the main .tex file (or the whole source folder), or the PDF."
        )
    return text


def read_latex_folder(path: Path) -> Paper:
    """Read a LaTeX source folder: the main file is found by \\documentclass / \\begin{document}."""
    source = _DirSource(path, path.name or str(path))
    return _read_source(source, _main_file(source))


def read_latex_bundle(path: Path) -> Paper:
    """Read a .tar.gz/.tgz/.tar/.zip LaTeX source bundle, in memory (no member can escape)."""
    source = _archive_source(path)
    return _read_source(source, _main_file(source))
