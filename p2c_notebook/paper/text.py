"""Markdown and plain-text readers, plus the heading and caption helpers every reader shares."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol

from p2c_notebook.errors import PaperError
from p2c_notebook.paper.model import Caption, Paper, Section

REFERENCES = "references"
ACKNOWLEDGEMENTS = "acknowledgements"
ABSTRACT = "abstract"

_KIND_NAMES = {
    ABSTRACT: ("abstract",),
    REFERENCES: ("references", "reference", "bibliography", "literature cited", "works cited", "cited works"),
    ACKNOWLEDGEMENTS: (
        "acknowledgements",
        "acknowledgments",
        "acknowledgement",
        "acknowledgment",
        "acknowledgements and disclosure of funding",
        "acknowledgments and disclosure of funding",
        "funding",
    ),
}
COMMON_HEADINGS = frozenset(
    {
        "introduction",
        "related work",
        "related works",
        "background",
        "method",
        "methods",
        "methodology",
        "approach",
        "experiments",
        "experimental setup",
        "results",
        "discussion",
        "conclusion",
        "conclusions",
        "limitations",
        "future work",
        "appendix",
        "appendices",
        "supplementary material",
        "broader impact",
        "broader impacts",
        "ethics statement",
    }
).union(*_KIND_NAMES.values())

_NUMBERED = re.compile(r"^(?P<num>(?:\d{1,2}|[A-Z])(?:\.\d{1,2}){0,3})\.?\s+(?P<title>[^\W\d_].*)$")
_CAPTION = re.compile(
    r"^[*_\s]*(?P<kind>Figure|FIGURE|Fig\.|FIG\.|Table|TABLE|Tab\.|Algorithm|ALGORITHM)\s*"
    r"(?P<num>[A-Z]?\d{1,3}(?:\.\d{1,2})?|[IVX]{1,5})[*_]*\s*[:.|]\s*[*_]*\s*(?P<text>.*)$",
    re.S,
)


def normalize_heading(heading: str) -> str:
    """Lower-case a heading and strip numbering, markup and trailing punctuation."""
    text = re.sub(r"[*_#`]", "", heading).strip()
    match = _NUMBERED.match(text)
    if match:
        text = match.group("title")
    return re.sub(r"\s+", " ", text).strip(" .:").lower()


def heading_kind(heading: str) -> str | None:
    """Return "abstract", "references" or "acknowledgements" for those headings, else None."""
    name = normalize_heading(heading)
    for kind, names in _KIND_NAMES.items():
        if name in names:
            return kind
    return None


def split_number(heading: str) -> tuple[str | None, str]:
    """Split "3.2 Attention" into ("3.2", "Attention"); unnumbered headings give (None, heading)."""
    text = heading.strip()
    match = _NUMBERED.match(text)
    if match and not (len(match.group("num")) == 1 and match.group("num").isalpha() and " " not in text):
        return match.group("num"), match.group("title").strip()
    return None, text


def match_caption(text: str) -> tuple[str, str, str] | None:
    """Return (kind, label, text) when `text` starts a figure/table caption such as "Table 2: ..."."""
    match = _CAPTION.match(text)
    if not match:
        return None
    word = match.group("kind").lower()
    kind = "table" if word.startswith("tab") else "algorithm" if word.startswith("alg") else "figure"
    label = f"{kind.capitalize()} {match.group('num')}"
    return kind, label, match.group("text").strip()


def decode_text(data: bytes, name: str, what: str) -> str:
    """Decode UTF-8 (or Latin-1 for legacy files), refusing binary content with a PaperError."""
    if b"\x00" in data[:65536]:
        raise PaperError(f"{name} contains binary data, not {what}: check that you picked the right file.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    sample = text[:65536]
    controls = sum(1 for ch in sample if ord(ch) < 32 and ch not in "\t\n\r\f" or 0x7F <= ord(ch) < 0xA0)
    if sample and controls > max(2, len(sample) // 100):
        raise PaperError(
            f"{name} does not look like {what} (it contains control characters): "
            "check that you picked the right file, or save it as UTF-8 text."
        )
    return text.replace("\r\n", "\n").replace("\r", "\n")


_ATX = re.compile(r"^(#{1,6})\s+(.*)$")  # the closing #s are stripped in Python: `.*?\s*#*\s*$` is quadratic
_DISPLAY = re.compile(r"\$\$|\\\[")
_DISPLAY_END = {"$$": "$$", "\\[": "\\]"}
_ABSTRACT_RUN_IN = re.compile(r"^[*_\s]*abstract[*_]*\s*[:.\u2014\u2013-]+[*_]*\s*", re.I)
_PLAIN_HEADING = re.compile(r"^(?:\d{1,2}(?:\.\d{1,2}){0,3}\.?|[A-Z](?:\.\d{1,2}){0,3}\.?)\s+[A-Z][^.!?]{0,90}$")


def _atx_title(text: str) -> str:
    """An ATX heading's text without trailing spaces and closing #s (`## Title ##`)."""
    return text.rstrip().rstrip("#").rstrip()


MAX_TEXT_BYTES = 20 * 1024 * 1024  # a paper's LaTeX, JSON, Markdown or text is well under this
_CHUNK = 1 << 16


def read_text_file(path: Path) -> bytes:
    """A text file's bytes, read in chunks and refused once past MAX_TEXT_BYTES (a file that grows, a device or
    a pipe never fills memory)."""
    parts: list[bytes] = []
    size = 0
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                size += len(chunk)
                if size > MAX_TEXT_BYTES:
                    raise PaperError(
                        f"{path.name} is over {MAX_TEXT_BYTES // 2**20} MB, too large for a paper's text (the "
                        "limit): check that you picked the right file, or give the paper's PDF."
                    )
                parts.append(chunk)
    except OSError as exc:
        raise PaperError(f"{path} cannot be read ({exc.strerror}): check its permissions.") from exc
    return b"".join(parts)


class _Builder:
    """Collects sections, equations and captions while a text reader walks the paper."""

    def __init__(self) -> None:
        self.abstract: list[str] = []
        self.sections: list[Section] = []
        self.captions: list[Caption] = []
        self.equations: list[str] = []
        self.dropped: list[str] = []
        self.mode = "body"  # body | abstract | skip
        self.paragraphs: list[str] = []

    def flush(self) -> None:
        if self.mode == "abstract":
            self.abstract.extend(p for p in self.paragraphs if p.strip())
        elif self.mode == "body" and self.paragraphs:
            if not self.sections:
                self.sections.append(Section(heading="Text"))
            body = "\n\n".join(p.strip() for p in self.paragraphs if p.strip())
            section = self.sections[-1]
            section.text = f"{section.text}\n\n{body}".strip() if section.text else body
        self.paragraphs = []

    def heading(self, heading: str, level: int) -> None:
        self.flush()
        kind = heading_kind(heading)
        if kind == ABSTRACT:
            self.mode = "abstract"
            return
        if kind in (REFERENCES, ACKNOWLEDGEMENTS):
            self.mode = "skip"
            if kind not in self.dropped:
                self.dropped.append(kind)
            return
        self.mode = "body"
        number, title = split_number(heading)
        depth = number.count(".") + 1 if number else level
        self.sections.append(Section(heading=title, number=number, level=max(1, min(depth, 6))))

    def paragraph(self, text: str) -> None:
        text = text.strip()
        if not text or self.mode == "skip":
            return
        caption = match_caption(text)
        if caption:
            self.captions.append(Caption(kind=caption[0], label=caption[1], text=caption[2]))
            return
        for equation in _displays(text):
            if equation.strip():
                self.equations.append(equation.strip())
        if not self.abstract and self.mode == "body" and not self.sections and _ABSTRACT_RUN_IN.match(text):
            self.abstract.append(_ABSTRACT_RUN_IN.sub("", text))
            return
        self.paragraphs.append(text)


def _displays(text: str) -> list[str]:
    """The contents of `$$...$$` and `\\[...\\]` (non-empty, left to right), in linear time: a closer missing
    after one opener is missing after all later ones, where `.+?` would rescan the rest for each."""
    found: list[str] = []
    missing: set[str] = set()
    position = 0
    while match := _DISPLAY.search(text, position):
        closer = _DISPLAY_END[match.group()]
        end = -1 if match.group() in missing else text.find(closer, match.end() + 1)  # `.+?`: one character or more
        if end < 0:
            missing.add(match.group())
            position = match.start() + 1
            continue
        found.append(text[match.end() : end])
        position = end + len(closer)
    return found


def _paragraphs(lines: list[str]) -> list[str]:
    """Split lines into paragraphs at blank lines, keeping $$...$$ blocks and code fences whole."""
    paragraphs: list[str] = []
    current: list[str] = []
    fenced = False
    dollars = 0  # $$ in `current`, counted as lines are added (recounting at each blank line is quadratic)
    for line in lines:
        if line.strip().startswith(("```", "~~~")):
            fenced = not fenced
        if not line.strip() and not fenced and dollars % 2 == 0:
            if current:
                paragraphs.append("\n".join(current))
            current, dollars = [], 0
        else:
            current.append(line.rstrip())
            dollars += line.count("$$")
    if current:
        paragraphs.append("\n".join(current))
    return paragraphs


class Parts(Protocol):
    """What a reader's builder has collected: abstract paragraphs, sections, equations, captions."""

    abstract: list[str]
    sections: list[Section]
    equations: list[str]
    captions: list[Caption]


def finish_paper(
    parts: Parts,
    title: str,
    path: Path,
    source_format: str,
    dropped: list[str],
    pages: tuple[int, int] | None = None,
) -> Paper:
    """The Paper from a builder's parts; `pages` is (pages in the file, pages read) for PDFs."""
    return Paper(
        title=title or path.stem,
        abstract="\n\n".join(parts.abstract).strip(),
        sections=parts.sections,
        equations=parts.equations,
        captions=parts.captions,
        source=path.name,
        source_format=source_format,
        pages=pages[0] if pages else None,
        pages_read=pages[1] if pages else None,
        dropped=dropped,
    )


def _finish(builder: _Builder, title: str, path: Path, source_format: str) -> Paper:
    builder.flush()
    return finish_paper(builder, title, path, source_format, builder.dropped)


def _load(path: Path, what: str) -> str:
    text = decode_text(read_text_file(path), path.name, what)
    if not text.strip():
        raise PaperError(f"{path.name} is empty: export the paper's text into it, or pick another file.")
    return text


def read_markdown(path: Path) -> Paper:
    """Read a Markdown paper: first heading = title, "# Abstract" = abstract, other headings = sections."""
    text = _load(path, "Markdown text")
    builder = _Builder()
    title = ""
    title_level = 1
    block: list[str] = []
    fenced = False
    lines = text.split("\n")
    skip = -1
    seen_heading = False

    def emit() -> None:
        for paragraph in _paragraphs(block):
            builder.paragraph(paragraph)
        block.clear()

    for index, line in enumerate(lines):
        if index == skip:
            continue
        if line.strip().startswith(("```", "~~~")):
            fenced = not fenced
        match = None if fenced else _ATX.match(line)
        underline = lines[index + 1].strip() if index + 1 < len(lines) else ""
        setext = (
            not fenced
            and bool(line.strip())
            and (not block or not block[-1].strip())
            and len(underline) >= 3
            and re.fullmatch(r"=+|-+", underline) is not None
        )
        if not match and not setext:
            block.append(line)
            continue
        heading = re.sub(r"[*_`]", "", _atx_title(match.group(2)) if match else line).strip()
        level = len(match.group(1)) if match else (1 if underline[0] == "=" else 2)
        skip = -1 if match else index + 1
        emit()
        if not seen_heading and heading_kind(heading) is None:
            title, title_level, seen_heading = heading, level, True
            builder.flush()
            continue
        seen_heading = True
        builder.heading(heading, max(1, level - title_level))
    emit()
    if not seen_heading:  # no headings at all: read it like plain text
        return _read_plain(text, path, "markdown")
    return _finish(builder, title, path, "markdown")


def _read_plain(text: str, path: Path, source_format: str) -> Paper:
    lines = text.split("\n")
    start = next(i for i, ln in enumerate(lines) if ln.strip())
    title = lines[start].strip()[:300]
    builder = _Builder()
    block: list[str] = []
    for index in range(start + 1, len(lines)):
        line = lines[index].strip()
        alone = not lines[index - 1].strip() and (index + 1 == len(lines) or not lines[index + 1].strip())
        is_heading = bool(line) and (
            (alone and heading_kind(line) is not None)
            or (alone and _PLAIN_HEADING.match(line) is not None and len(line.split()) <= 12)
            or (alone and normalize_heading(line) in COMMON_HEADINGS and len(line) < 60)
        )
        if is_heading:
            for paragraph in _paragraphs(block):
                builder.paragraph(paragraph)
            block = []
            builder.heading(line, 1)
        else:
            block.append(lines[index])
    for paragraph in _paragraphs(block):
        builder.paragraph(paragraph)
    return _finish(builder, title, path, source_format)


def read_text(path: Path) -> Paper:
    """Read a plain-text paper: first non-empty line = title; "Abstract" and numbered heading lines."""
    return _read_plain(_load(path, "plain text"), path, "text")
