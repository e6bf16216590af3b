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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Protocol

from p2c_notebook.errors import PaperError
from p2c_notebook.paper.model import Caption, Paper, Section
from p2c_notebook.paper.text import ACKNOWLEDGEMENTS, REFERENCES, decode_text, heading_kind

_MAX_FILE = 20 * 1024 * 1024
_MAX_TOTAL = 200 * 1024 * 1024
_MAX_EXPANDED = 20 * 1024 * 1024
_MAX_FILES = 10_000
_TEX = (".tex", ".ltx", ".latex")


class _Source(Protocol):
    name: str

    def files(self) -> list[str]: ...

    def exists(self, rel: str) -> bool: ...

    def read(self, rel: str) -> bytes | None: ...


class _DirSource:
    """Files under a folder; reads never leave it (symlinks included)."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root.resolve()
        self.name = name

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
        target = (self.root / rel).resolve()
        if not self.exists(rel):
            return None
        if target.stat().st_size > _MAX_FILE:
            raise PaperError(f"{rel} in {self.name} is larger than 20 MB: that is not a LaTeX source file.")
        return target.read_bytes()


class _MemorySource:
    """Files from an archive, held in memory under normalised relative names."""

    def __init__(self, contents: dict[str, bytes], name: str) -> None:
        self.contents = contents
        self.name = name

    def files(self) -> list[str]:
        return sorted(self.contents)

    def exists(self, rel: str) -> bool:
        return rel in self.contents

    def read(self, rel: str) -> bytes | None:
        return self.contents.get(rel)


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


def _archive_source(path: Path) -> _Source:
    """Load a .tar(.gz)/.tgz/.zip bundle (or a gzipped single .tex) into memory, safely."""
    data = path.read_bytes()
    contents: dict[str, bytes] = {}
    total = 0

    def add(name: str, size: int, read: Callable[[], bytes | None]) -> None:
        nonlocal total
        safe = _safe_name(name)
        if safe is None or size > _MAX_FILE or len(contents) >= _MAX_FILES:
            return
        total += size
        if total > _MAX_TOTAL:
            raise PaperError(f"{path.name} unpacks to more than 200 MB: give the LaTeX source folder instead.")
        blob = read()
        if blob is not None:
            contents[safe] = blob

    try:
        if data.startswith(b"PK\x03\x04"):
            with zipfile.ZipFile(io.BytesIO(data)) as zipped:
                for info in zipped.infolist():
                    if not info.is_dir():
                        add(info.filename, info.file_size, functools.partial(zipped.read, info))
        else:
            gzipped = data.startswith(b"\x1f\x8b")
            raw = _gunzip(data, path.name) if gzipped else data
            if raw[257:262] != b"ustar" and not path.name.lower().endswith((".tar", ".tar.gz", ".tgz")):
                if not gzipped:
                    raise ValueError("it is neither a zip, a tar nor a gzip file")
                single = path.name.removesuffix(".gz")
                return _MemorySource({single if single.endswith(_TEX) else f"{single}.tex": raw}, path.name)
            with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as archive:
                for member in archive.getmembers():
                    if member.isfile():
                        add(member.name, member.size, functools.partial(_tar_read, archive, member))
    except (OSError, EOFError, tarfile.TarError, zipfile.BadZipFile, ValueError) as exc:
        raise PaperError(
            f"{path.name} is not a readable .tar.gz/.tgz/.zip LaTeX bundle ({exc}): download the source "
            "again, or unpack it and give the folder."
        ) from exc
    return _MemorySource(contents, path.name)


def _gunzip(data: bytes, name: str) -> bytes:
    """Decompress gzip data, refusing archives that unpack to more than the size limit."""
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as handle:
        raw = handle.read(_MAX_TOTAL + 1)
    if len(raw) > _MAX_TOTAL:
        raise PaperError(f"{name} unpacks to more than 200 MB: give the LaTeX source folder instead.")
    return raw


def _tar_read(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes | None:
    handle = archive.extractfile(member)
    return handle.read() if handle is not None else None


def _strip_comments(text: str) -> str:
    """Remove % comments (not \\%), comment environments and \\iffalse ... \\fi blocks."""
    text = re.sub(r"\\(url|href)\{[^}\n]*\}", lambda m: m.group(0).replace("%", "\\%"), text)
    text = re.sub(r"(?<!\\)((?:\\\\)*)%[^\n]*", r"\1", text)
    text = re.sub(r"\\begin\{comment\}.*?\\end\{comment\}", "", text, flags=re.S)
    return re.sub(r"\\iffalse\b.*?\\fi\b", "", text, flags=re.S)


_INPUT = re.compile(r"\\(input|include|subfile)(?![A-Za-z])\s*(?:\{([^{}]*)\}|([^\s{}\\%]+))")


@dataclass
class _Expander:
    """Resolves \\input/\\include recursively inside one source, guarding cycles and size."""

    source: _Source
    main: str
    size: int = 0
    read_files: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # preamble \\input files not in the source

    def load(self, rel: str) -> str:
        data = self.source.read(rel)
        if data is None:
            raise PaperError(f"{rel} cannot be read from {self.source.name}.")
        return _strip_comments(decode_text(data, rel, "LaTeX source"))

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

    def expand(self, rel: str, stack: tuple[str, ...] = (), preamble: bool = False) -> str:
        """`rel` with its \\input/\\include files inlined. A file missing from the body is an error; one
        missing from the preamble (before \\begin{document}: macros, or TeX-installation files such as
        glyphtounicode) is skipped and listed in `missing`."""
        if rel in stack:
            chain = " -> ".join((*stack, rel))
            raise PaperError(f"LaTeX files in {self.source.name} include each other in a cycle ({chain}).")
        if len(stack) > 32:
            raise PaperError(f"\\input nesting in {self.source.name} is deeper than 32 files.")
        text = self.load(rel)
        begin = -1 if preamble else text.find("\\begin{document}")
        self.read_files.append(rel)
        self.size += len(text)
        if self.size > _MAX_EXPANDED:
            raise PaperError(f"{self.source.name} expands to more than 20 MB of LaTeX: is \\input looping?")

        def replace(match: re.Match[str]) -> str:
            target = match.group(2) if match.group(2) is not None else match.group(3)
            if "#" in target:  # inside a macro definition: not a file name
                return match.group(0)
            if not target.strip():
                return ""
            in_preamble = preamble or match.start() < begin
            child = self.resolve(target, rel, in_preamble)
            if child is None:
                self.missing.append(target.strip())
                return ""
            return "\n" + self.expand(child, (*stack, rel), in_preamble) + "\n"

        return _INPUT.sub(replace, text)


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


def _group(text: str, start: int, open_: str = "{", close: str = "}") -> tuple[str, int] | None:
    """The balanced {...} group starting at (or after spaces from) `start`: (content, end index)."""
    index = start
    while index < len(text) and text[index] in " \t\n":
        index += 1
    if index >= len(text) or text[index] != open_:
        return None
    depth = 0
    for pos in range(index, len(text)):
        char = text[pos]
        if char == "\\":
            continue
        if char == open_ and (pos == 0 or text[pos - 1] != "\\"):
            depth += 1
        elif char == close and text[pos - 1] != "\\":
            depth -= 1
            if depth == 0:
                return text[index + 1 : pos], pos + 1
    return None


def _command_arg(text: str, command: str) -> tuple[str, int, int] | None:
    """Find `\\command[opt]{arg}`: (arg, start, end) of the first occurrence."""
    for match in re.finditer(rf"\\{command}(?![A-Za-z])\*?\s*(?:\[[^\]]*\])?", text):
        group = _group(text, match.end())
        if group:
            return group[0], match.start(), group[1]
    return None


def _map_command(text: str, command: str, render: Callable[[str], str]) -> str:
    """Replace every `\\command[opt]{arg}` (balanced braces) by `render(arg)`, in one pass."""
    out: list[str] = []
    position = 0
    for match in re.finditer(rf"\\{command}(?![A-Za-z])\*?\s*(?:\[[^\]]*\])?", text):
        group = _group(text, match.end()) if match.start() >= position else None
        if group is None:
            continue
        out.extend((text[position : match.start()], render(group[0])))
        position = group[1]
    out.append(text[position:])
    return "".join(out)


def _table_cells(text: str) -> str:
    """Keep only the content of `\\multicolumn{n}{c}{x}` and `\\multirow{n}{*}{x}`."""
    out: list[str] = []
    position = 0
    for match in re.finditer(r"\\(multicolumn|multirow)(?![A-Za-z])", text):
        if match.start() < position:
            continue
        end = match.end()
        content = None
        for _ in range(3):
            end += len(re.match(r"\s*(?:\[[^\]]*\])?\s*\*?", text[end:]).group(0))  # type: ignore[union-attr]
            group = _group(text, end)
            if group is None:
                break
            content, end = group
        if content is not None:
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


def _macros(text: str) -> dict[str, str]:
    """Zero-argument \\newcommand/\\def macros (e.g. \\dmodel), to expand in the body."""
    macros: dict[str, str] = {}
    pattern = r"\\(?:re)?newcommand\*?\s*\{?\\([A-Za-z]+)\}?\s*(?=\{)|\\def\s*\\([A-Za-z]+)\s*(?=\{)"
    for match in re.finditer(pattern, text):
        group = _group(text, match.end())
        name = match.group(1) or match.group(2)
        body = group[0] if group else ""
        risky = name in _PROTECTED or re.search(r"#|\\(?:begin|end|section|input|include)\b", body)
        if group and not risky and len(body) <= 200 and len(macros) < 500:
            macros[name] = body
    return macros


def _expand_macros(text: str, macros: dict[str, str]) -> str:
    if not macros:
        return text
    pattern = re.compile(r"\\(" + "|".join(sorted(map(re.escape, macros), key=len, reverse=True)) + r")(?![A-Za-z])")
    for _ in range(3):
        text, count = pattern.subn(lambda m: macros[m.group(1)], text)
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


def _drop_env_args(text: str) -> str:
    """Remove `\\begin{tabular}{lcc}`-style markers together with their brace arguments."""
    out: list[str] = []
    position = 0
    for match in re.finditer(r"\\begin\s*\{([^}]*)\}", text):
        if match.start() < position or match.group(1) not in _ENV_ARGS:
            continue
        end = match.end()
        option = re.match(r"\s*\[[^\]]*\]", text[end:])
        end += option.end() if option else 0
        for _ in range(_ENV_ARGS[match.group(1)]):
            group = _group(text, end)
            if group is None:
                break
            end = group[1]
        out.append(text[position : match.start()])
        position = end
    out.append(text[position:])
    return "".join(out)


def _plain(text: str, labels: dict[str, str]) -> str:
    """Turn LaTeX markup into readable plain text (math placeholders are left alone)."""
    text = re.sub(r"\\(?:no)?cite[a-zA-Z]*\*?\s*(?:\[[^\]]*\]\s*){0,2}\{[^}]*\}", "[cite]", text)
    text = re.sub(r"\\eqref\s*\{([^}]*)\}", lambda m: f"({labels.get(m.group(1).strip(), '?')})", text)
    text = re.sub(
        r"\\(?:auto|c|C|page|name|sub|v)?ref\*?\s*\{([^}]*)\}",
        lambda m: ", ".join(labels.get(k.strip(), "[ref]") for k in m.group(1).split(",")),
        text,
    )
    text = re.sub(r"\\href\s*\{[^}]*\}\s*\{([^}]*)\}", r"\1", text)
    text = re.sub(r"\\(?:textcolor|colorbox)\s*\{[^}]*\}\s*\{([^{}]*)\}", r"\1", text)
    text = re.sub(r"\\paragraph\*?\s*\{([^{}]*)\}\s*", r"\n\n\1 ", text)
    text = _map_command(text, "footnote", lambda note: f" ({note.strip()})")
    text = _table_cells(text)
    text = _drop_env_args(text)
    text = re.sub(rf"\\(?:{_DROP})(?![A-Za-z])\s*", " ", text)
    text = re.sub(rf"\\(?:{_DROP_ARG})(?![A-Za-z])\*?\s*(?:\[[^\]]*\])?(?:\s*\{{[^{{}}]*\}}){{0,3}}", "", text)
    for _ in range(8):
        text, count = re.subn(rf"\\(?:{_UNWRAP})\s*(?:\[[^\]]*\])?\s*\{{([^{{}}]*)\}}", r"\1", text)
        text, bare = re.subn(r"(?<![\\\w\]])\{([^{}\n]*)\}", r"\1", text)
        if not count and not bare:
            break
    text = re.sub(r"\\item\s*\[([^\]]*)\]", r"\n- \1:", text)
    text = re.sub(r"\\item(?![A-Za-z])", "\n- ", text)
    text = re.sub(r"\\begin\{[^}]*\}(?:\[[^\]]*\])?|\\end\{[^}]*\}", "\n", text)
    text = re.sub(r"(?<!\\)&", " | ", text)
    text = re.sub(r"\\\\(?:\[[^\]]*\])?|\\newline", "\n", text)

    def accent(match: re.Match[str]) -> str:
        return unicodedata.normalize("NFC", match.group(2) + _ACCENTS[match.group(1)])

    text = re.sub(r"\\(['`\"^~=.])\{?([A-Za-z])\}?", accent, text)
    text = re.sub(r"\\([cuvH])\{([A-Za-z])\}", accent, text)
    text = re.sub(r"\\(?:ldots|dots|cdots)(?![A-Za-z])", "...", text)
    text = re.sub(r"\\([%&_#${}])", r"\1", text)
    text = re.sub(r"\\[,;:! ]", " ", text)
    text = text.replace("~", " ").replace("``", '"').replace("''", '"').replace("---", "\u2014")
    text = text.replace("--", "\u2013")
    text = re.sub(r"(?<![\\\w])\{([^{}\n]*)\}", r"\1", text)
    return text


def _reflow(text: str) -> str:
    """Join the source's wrapped lines into paragraphs; keep list items, table rows and equations."""
    paragraphs: list[str] = []
    for block in re.split(r"\n\s*\n", text):
        lines = [re.sub(r"[ \t]+", " ", ln).strip() for ln in block.split("\n")]
        out: list[str] = []
        for line in lines:
            if not line or line in ("|",):
                continue
            structural = line.startswith(("- ", "\x00")) or " | " in line
            if out and not structural and not out[-1].startswith("\x00") and " | " not in out[-1]:
                out[-1] = f"{out[-1]} {line}"
            else:
                out.append(line)
        if not out:
            continue
        if paragraphs and " | " in out[0] and " | " in paragraphs[-1].rsplit("\n", 1)[-1]:
            paragraphs[-1] += "\n" + "\n".join(out)  # consecutive table rows stay one block
        else:
            paragraphs.append("\n".join(out))
    return "\n\n".join(paragraphs)


_SECTION = re.compile(r"\\(section|subsection|subsubsection)(\*?)\s*(?:\[[^\]]*\])?\s*(?=\{)|\\appendix(?![A-Za-z])")
_FLOAT = re.compile(r"\\begin\{(figure\*?|table\*?|wrapfigure|wraptable|SCfigure|algorithm\*?)\}(.*?)\\end\{\1\}", re.S)
_EQUATION = re.compile(
    r"\\begin\{(equation|align|gather|multline|eqnarray|flalign|alignat|displaymath)(\*?)\}(.*?)\\end\{\1\2\}"
    r"|(?<!\\)\\\[(.*?)(?<!\\)\\\]|\$\$(.*?)\$\$",
    re.S,
)
_INLINE = re.compile(r"(?<![\\$])\$(?!\$)(?:[^$\\]|\\.){1,500}?(?<!\\)\$|\\\((?:.|\n){1,500}?\\\)")


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

        def display(match: re.Match[str]) -> str:
            nonlocal numbered
            env, star = match.group(1), match.group(2)
            inner = match.group(3) if env else (match.group(4) or match.group(5) or "")
            for label in re.findall(r"\\label\s*\{([^}]*)\}", inner):
                if env and not star:
                    self.labels[label.strip()] = str(numbered + 1)
            inner = re.sub(r"\\label\s*\{[^}]*\}|\\nonumber|\\notag", "", inner).strip()
            if env and not star and env != "displaymath":
                numbered += 1
            if not inner:
                return ""
            self.equations.append(inner)
            return f"\n\x00E{len(self.equations) - 1}\x00\n"

        text = _EQUATION.sub(display, text)

        def inline(match: re.Match[str]) -> str:
            self.inline.append(match.group(0))
            return f"\x00M{len(self.inline) - 1}\x00"

        return _INLINE.sub(inline, text)

    def restore(self, text: str) -> str:
        text = re.sub(r"\x00M(\d+)\x00", lambda m: self.inline[int(m.group(1))], text)
        return re.sub(r"\x00E(\d+)\x00", lambda m: f"$$\n{self.equations[int(m.group(1))]}\n$$", text)

    def floats(self, text: str) -> str:
        counters = {"figure": 0, "table": 0, "algorithm": 0}

        def replace(match: re.Match[str]) -> str:
            env, body = match.group(1), re.sub(r"^\s*\[[^\]]*\]", "", match.group(2))
            kind = "table" if "table" in env else "algorithm" if "algorithm" in env else "figure"
            counters[kind] += 1
            label = f"{kind.capitalize()} {counters[kind]}"
            for name in re.findall(r"\\label\s*\{([^}]*)\}", body):
                self.labels[name.strip()] = str(counters[kind])
            found = _command_arg(body, "caption")
            rest = re.sub(r"\\label\s*\{[^}]*\}", "", body)
            while found:
                if found[0].strip():
                    caption = self.restore(_plain(found[0], self.labels))
                    caption_text = re.sub(r"\s+", " ", caption).strip()
                    self.captions.append(Caption(kind=kind, label=label, text=caption_text))
                rest = rest[: found[1]] + rest[found[2] :]
                found = _command_arg(rest, "caption")
            return f"\n\n{rest}\n\n" if kind == "table" else "\n\n"

        return _FLOAT.sub(replace, text)


def _drop_back_matter(body: str, doc: _Document) -> str:
    """Remove the bibliography and acknowledgement environments, noting them in `dropped`."""
    body, refs = re.subn(r"\\begin\{thebibliography\}.*?(?:\\end\{thebibliography\}|$)", "", body, flags=re.S)
    body, cites = re.subn(r"\\(?:bibliography|printbibliography|nobibliography)(?![A-Za-z])(?:\{[^}]*\})?", "", body)
    if refs or cites:
        doc.drop(REFERENCES)
    ack = r"\\begin\{(ack|acks|acknowledgments?|acknowledgements?)\}.*?\\end\{\1\}"
    body, acks = re.subn(ack, "", body, flags=re.S)
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
    for match in _SECTION.finditer(body):
        if match.start() < position:
            continue
        pieces.append((current, body[position : match.start()]))
        if match.group(1) is None:  # \appendix
            appendix, counters, position, current = True, [0, 0, 0], match.end(), current
            continue
        group = _group(body, match.end())
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
        labels = re.match(r"\s*(?:\\label\s*\{([^}]*)\}\s*)+", body[position:])
        if labels and number:
            for name in re.findall(r"\\label\s*\{([^}]*)\}", labels.group(0)):
                doc.labels.setdefault(name.strip(), number)
        heading = re.sub(r"\s+", " ", _plain(title, doc.labels)).strip()
        current = Section(heading=doc.restore(heading) or "Untitled", number=number, level=level)
    pieces.append((current, body[position:]))

    sections: list[Section] = []
    skip_level = 0
    for section, raw in pieces:
        text = doc.restore(_reflow(_plain(raw, doc.labels))).strip()
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
        if not any(s is section for s in sections):
            section.text = text
            sections.append(section)
        else:
            sections[-1].text = f"{sections[-1].text}\n\n{text}".strip()
    return sections


def _parse(text: str, name: str) -> Paper:
    """Extract a Paper from expanded, comment-free LaTeX."""
    begin = text.find("\\begin{document}")
    end = text.find("\\end{document}")
    if begin < 0 and not re.search(r"\\(?:sub)*section\*?\s*[\[{]", text):
        raise PaperError(
            f"{name} does not look like a LaTeX paper: no \\begin{{document}} and no \\section. "
            "Give the main .tex file (or the whole source folder), or the PDF."
        )
    body = text[begin + len("\\begin{document}") if begin >= 0 else 0 : end if end > begin else len(text)]
    doc = _Document()
    body = _expand_macros(body, _macros(text[: max(begin, 0)] + body))
    body = _drop_back_matter(body, doc)
    title = ""
    for command in ("title", "icmltitle"):
        found = _command_arg(text, command)
        if found:
            raw = re.sub(r"\\(?:thanks|footnote)\s*\{[^{}]*\}", "", found[0])
            title = re.sub(r"\s+", " ", _plain(raw, {})).strip()
            break
    for command in ("title", "icmltitle", "author", "icmlauthor", "affiliation", "address", "date", "thanks"):
        body = _remove_command(body, command)
    body = doc.protect_math(body)
    abstract = ""
    match = re.search(r"\\begin\{abstract\}(.*?)\\end\{abstract\}", body, re.S)
    if match:
        abstract, body = match.group(1), body[: match.start()] + body[match.end() :]
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
        equations=[re.sub(r"\s*\n\s*", "\n", e).strip() for e in doc.equations],
        captions=doc.captions,
        source=name,
        source_format="latex",
        dropped=doc.dropped,
    )


def _read_source(source: _Source, main: str) -> Paper:
    expander = _Expander(source, main)
    paper = _parse(expander.expand(main), source.name)
    if not expander.missing:
        return paper
    names = ", ".join(dict.fromkeys(expander.missing))
    note = f"preamble \\input files not in {source.name} ({names}: macros defined there stay unexpanded)"
    return paper.model_copy(update={"dropped": [*paper.dropped, note]})


def read_latex(path: Path) -> Paper:
    """Read a single .tex file; its \\input files are looked up next to it."""
    source = _DirSource(path.parent, path.name)
    data = path.read_bytes()
    if not data.strip():
        raise PaperError(f"{path.name} is empty: give the main .tex file of the paper.")
    text = _strip_comments(decode_text(data, path.name, "LaTeX source"))
    sections = re.search(r"\\(?:sub)*section\*?\s*[\[{]", text)
    if "\\documentclass" not in text and "\\begin{document}" not in text and not sections:
        raise PaperError(
            f"{path.name} does not look like a LaTeX paper: no \\begin{{document}} and no \\section. "
            "Give the main .tex file (or the whole source folder), or the PDF."
        )
    paper = _read_source(source, path.name)
    return paper.model_copy(update={"source": path.name})


def read_latex_folder(path: Path) -> Paper:
    """Read a LaTeX source folder: the main file is found by \\documentclass / \\begin{document}."""
    source = _DirSource(path, path.name or str(path))
    return _read_source(source, _main_file(source))


def read_latex_bundle(path: Path) -> Paper:
    """Read a .tar.gz/.tgz/.tar/.zip LaTeX source bundle, in memory (no member can escape)."""
    source = _archive_source(path)
    return _read_source(source, _main_file(source))
