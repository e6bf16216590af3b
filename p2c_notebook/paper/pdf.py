"""PDF reader (pymupdf, in-process): layout-aware text in reading order, then paper structure.

Layout: horizontal text lines only (rotated margin stamps are dropped); running headers/footers and
page numbers removed; lines merged into visual rows; two-column pages read left column, then right,
with full-width rows (titles, wide figures) kept at their vertical position.
Structure: title (largest font on page 1), abstract, numbered/unnumbered headings (bold or larger
font), display equations, figure/table captions; references and acknowledgements are dropped.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymupdf as _pymupdf

from p2c_notebook.errors import PaperError
from p2c_notebook.paper.figures import Graphics, Region, page_graphics
from p2c_notebook.paper.hygiene import escape_markdown, fold, markdown_table, repair_glyphs
from p2c_notebook.paper.model import DEFAULT_MAX_CHARS, Caption, Paper, Section
from p2c_notebook.paper.outline import Entry, locate
from p2c_notebook.paper.text import (
    ABSTRACT,
    ACKNOWLEDGEMENTS,
    COMMON_HEADINGS,
    REFERENCES,
    finish_paper,
    heading_kind,
    match_caption,
    normalize_heading,
)

pymupdf: Any = _pymupdf  # untyped library: keep its calls out of mypy's strict checks
DEFAULT_MAX_PAGES = 100
__all__ = ["DEFAULT_MAX_CHARS", "DEFAULT_MAX_PAGES", "read_pdf"]
_FLAGS = pymupdf.TEXT_PRESERVE_WHITESPACE | pymupdf.TEXT_MEDIABOX_CLIP
_MATH_FONT = re.compile(r"CMMI|CMSY|CMEX|CMBSY|MSBM|MSAM|Math|Symbol|STIX|rsfs|EUFM|EUSM|txsy|txmi|pxmi|txex|LMMI|LMSY")
_MATH_CHARS = set("=+−±×÷∑∏∫√∞∂∇≤≥≠≈∈∉⊂⊆∪∩∀∃→←↔⇒⇔·∘⊗⊕‖αβγδϵεζηθκλμνξπρστυφϕχψωΓΔΘΛΞΠΣΦΨΩ")
_CM_ROMAN = re.compile(r"^(?:[A-Z]{6}\+)?(?:CMR\d|LMRoman|SFRM)")
_RELATIONS = set("=≤≥<>≈≠∈∝≡→⇒←∼~")
_EQ_TAG = re.compile(r"(?:^|\s)\(\s*(\d{1,3}[a-z]?|[A-Z]\.\d{1,3})\s*\)\s*$")
_PAGE_NUMBER = re.compile(r"^(?:[Pp]age\s*)?(?:\d{1,4}|[ivxlc]{1,6})(?:\s*(?:of|/)\s*\d{1,4})?$")
_ARXIV_STAMP = re.compile(r"^arXiv:\s?\d{4}\.\d{4,5}(v\d+)?\b")
_ABSTRACT_RUN_IN = re.compile(r"^abstract\s*[\u2014\u2013:.\-]+\s*", re.I)


@dataclass
class _Line:
    """One horizontal text line from pymupdf, with the font facts we need."""

    x0: float
    y0: float
    x1: float
    y1: float
    text: str
    size: float
    bold: float  # share of letters in bold fonts
    math: float  # share of characters in math fonts or math symbols
    lead_bold: str  # leading bold words (run-in headings such as "Acknowledgements")
    roman: float = 0.0  # share of characters in Computer Modern roman, math unless the body uses it


@dataclass
class _Row:
    """Lines on one visual row of one column; the unit the structure pass walks."""

    page: int
    lines: list[_Line]
    left: float = 0.0  # the column's left and right edges
    right: float = 0.0
    gap: float | None = None  # vertical gap to the previous row of the same column, None at a column top
    prev_short: bool = False
    rules: list[float] = field(default_factory=list)  # x of vertical rules crossing the row (a ruled table)

    @property
    def x0(self) -> float:
        return min(ln.x0 for ln in self.lines)

    @property
    def x1(self) -> float:
        return max(ln.x1 for ln in self.lines)

    @property
    def y0(self) -> float:
        return min(ln.y0 for ln in self.lines)

    @property
    def y1(self) -> float:
        return max(ln.y1 for ln in self.lines)

    def _weighted(self, attr: str) -> float:
        total = sum(len(ln.text) for ln in self.lines) or 1
        return float(sum(getattr(ln, attr) * len(ln.text) for ln in self.lines)) / total

    @property
    def size(self) -> float:
        return max(self.lines, key=lambda ln: len(ln.text)).size

    @property
    def bold(self) -> float:
        return self._weighted("bold")

    @property
    def math(self) -> float:
        return self._weighted("math")

    @property
    def lead_bold(self) -> str:
        return min(self.lines, key=lambda ln: ln.x0).lead_bold

    @property
    def text(self) -> str:
        parts: list[str] = []
        last = None
        for line in sorted(self.lines, key=lambda ln: ln.x0):
            if parts and last is not None and line.x0 - last > 0.15 * line.size:
                parts.append(" ")
            parts.append(line.text)
            last = line.x1
        return re.sub(r"\s+", " ", "".join(parts)).strip()


def _is_bold(font: str, flags: int) -> bool:
    return bool(flags & 16) or re.search(r"Bold|Medi|Semibold|Demi|Black|Heavy|CMBX|\.B$|-B$", font) is not None


def _page_lines(page: Any, body_font: Counter[str]) -> tuple[list[_Line], int]:
    """Horizontal text lines of a page and the number of rotated lines skipped."""
    lines: list[_Line] = []
    rotated = 0
    for block in page.get_text("dict", flags=_FLAGS)["blocks"]:
        for line in block.get("lines", ()):
            direction = line.get("dir", (1.0, 0.0))
            spans = [s for s in line["spans"] if s["text"].strip()]
            if not spans:
                continue
            if abs(direction[1]) > 0.05 or direction[0] < 0:
                rotated += 1
                continue
            text = "".join(repair_glyphs(s["text"], bool(_MATH_FONT.search(s["font"]))) for s in line["spans"])
            text = re.sub(r"[\x00-\x08\x0b-\x1f\ufffd]", "", fold(text).replace("\u00a0", " ")).strip()
            if not text:
                continue
            sizes: Counter[float] = Counter()
            letters = bold_letters = chars = bold_chars = math_chars = roman_chars = 0
            lead_bold: list[str] = []
            leading = True
            for span in spans:
                content = span["text"]
                count = len(content.strip())
                sizes[round(span["size"], 1)] += count
                body_font[span["font"]] += count
                bold = _is_bold(span["font"], span["flags"])
                span_letters = sum(ch.isalpha() for ch in content)
                letters += span_letters
                bold_letters += span_letters if bold else 0
                bold_chars += count if bold else 0
                leading = leading and bold
                if leading:
                    lead_bold.append(content)
                chars += count
                if _MATH_FONT.search(span["font"]):
                    math_chars += count
                elif _CM_ROMAN.match(span["font"]):
                    roman_chars += count
                else:
                    math_chars += sum(ch in _MATH_CHARS for ch in content)
            x0, y0, x1, y1 = line["bbox"]
            textual = [s["bbox"] for s in spans if not _MATH_FONT.search(s["font"])]
            if textual and y1 - y0 > 1.6 * max(s["size"] for s in spans):  # a tall root or brace: the text's height
                y0, y1 = min(b[1] for b in textual), max(b[3] for b in textual)
            lines.append(
                _Line(
                    x0=x0,
                    y0=y0,
                    x1=x1,
                    y1=y1,
                    text=text,
                    size=_line_size(sizes, text),
                    bold=bold_letters / letters if letters else bold_chars / max(chars, 1),
                    math=math_chars / chars if chars else 0.0,
                    lead_bold="".join(lead_bold).strip(),
                    roman=roman_chars / chars if chars else 0.0,
                )
            )
    return lines, rotated


@dataclass
class _Figure:
    """Text found inside one figure region of a page, kept out of the paragraphs."""

    region: Region
    text: str
    lines: int
    used: bool = False  # attached to a caption


FIGURE_TEXT_CHARS = 300  # a caption's "Figure text" note is cut to this: labels, not a second paper


def _common_size(pages: list[list[_Line]]) -> float:
    """The font size most characters have (the body's), before rows are built."""
    sizes: Counter[float] = Counter()
    for lines in pages:
        for line in lines:
            sizes[round(line.size * 2) / 2] += len(line.text)
    return sizes.most_common(1)[0][0] if sizes else 10.0


def _prose(lines: list[_Line]) -> bool:
    """Whether lines read as running text (a shaded box or a text layer over a scan), not a figure's labels."""
    characters = sum(len(ln.text) for ln in lines)
    sentences = sum(len(ln.text) for ln in lines if len(ln.text.split()) >= 8)
    return len(lines) >= 3 and sentences > 0.5 * characters


def _figure_text(lines: list[_Line], regions: list[Region], body_size: float) -> tuple[list[_Line], list[_Figure]]:
    """Split a page's lines into body lines and the text of each figure region.

    A line is figure text when it lies inside a region, or just beside it (tick labels and axis titles sit
    outside the plot's frame) when it is small print or a few words; a caption line never is. A region whose
    text reads as prose is no figure (a shaded box around a theorem, a scan's text layer) and keeps its text.
    """
    if not regions:
        return lines, []
    taken: set[int] = set()
    figures: list[_Figure] = []
    for region in regions:
        inside = []
        for index, line in enumerate(lines):
            if index in taken or match_caption(line.text):
                continue
            box = (line.x0, line.y0, line.x1, line.y1)
            if region.overlap(box, 2.0) >= 0.6:
                inside.append(index)
                continue
            size = max(line.size, 1.0)
            near = _beside(region, box, size)
            small = line.size < body_size - 0.5 or (len(line.text.split()) <= 3 and line.bold < 0.8)
            if near and small and (line.x1 - line.x0) < 0.5 * (region.x1 - region.x0 + 1):
                inside.append(index)
        members = [lines[i] for i in inside]
        if members and _prose(members):
            continue
        taken.update(inside)
        members.sort(key=lambda ln: (round(ln.y0), ln.x0))
        text = re.sub(r"\s+", " ", " ".join(ln.text for ln in members)).strip()
        figures.append(_Figure(region=region, text=text, lines=len(members)))
    return [ln for i, ln in enumerate(lines) if i not in taken], figures


def _beside(region: Region, box: tuple[float, float, float, float], size: float) -> bool:
    """Whether a line's box lies within a few characters of the region's frame (left, right or below/above)."""
    x0, y0, x1, y1 = box
    return (
        x0 >= region.x0 - 3.0 * size
        and x1 <= region.x1 + 3.0 * size
        and y0 >= region.y0 - 1.6 * size
        and y1 <= region.y1 + 1.6 * size
    )


def _nearest_figure(figures: list[_Figure], row: _Row) -> _Figure | None:
    """The text of the figure a caption row belongs to: the nearest unused region above it (figure captions sit
    below their figure) or, failing that, below it (table captions sit above); one overlapping it horizontally
    first."""
    best: tuple[float, _Figure] | None = None
    for figure in figures:
        region = figure.region
        if figure.used:
            continue
        above = row.y0 - region.y1
        below = region.y0 - row.y1
        distance = above if above >= -4 else below + 50 if below >= -4 else None
        if distance is not None and min(region.x1, row.x1) - max(region.x0, row.x0) <= 0:
            distance += 100  # beside it: the other column's figure, or a short caption set flush left
        if distance is not None and distance < 200 and (best is None or distance < best[0]):
            best = (distance, figure)
    if best is None:
        return None
    chosen = best[1].region
    group = [  # side-by-side panels of one figure: regions level with the chosen one
        f
        for f in figures
        if not f.used
        and min(f.region.y1, chosen.y1) - max(f.region.y0, chosen.y0)
        > 0.5 * min(f.region.y1 - f.region.y0, chosen.y1 - chosen.y0)
    ]
    group.sort(key=lambda f: f.region.x0)
    for figure in group:
        figure.used = True
    box = Region(
        min(f.region.x0 for f in group),
        min(f.region.y0 for f in group),
        max(f.region.x1 for f in group),
        max(f.region.y1 for f in group),
        chosen.kind,
    )
    text = " ".join(f.text for f in group if f.text)
    return _Figure(region=box, text=text, lines=sum(f.lines for f in group), used=True)


def _short(text: str) -> str:
    return text if len(text) <= FIGURE_TEXT_CHARS else text[: text.rfind(" ", 0, FIGURE_TEXT_CHARS)] + " ..."


def _line_size(sizes: Counter[float], text: str) -> float:
    """The size most characters have; for small capitals ("I" large, "NTRODUCTION" small) the capitals' size."""
    size = sizes.most_common(1)[0][0]
    letters = [ch for ch in text if ch.isalpha()]
    if len(letters) >= 3 and all(ch.isupper() for ch in letters):
        return max(sizes)
    return size


def _roman_is_math(pages: list[list[_Line]], fonts: Counter[str]) -> None:
    """Count Computer Modern roman (CMR10...) as math, unless the body text itself is set in it."""
    body_font = fonts.most_common(1)[0][0] if fonts else ""
    if _CM_ROMAN.match(body_font):
        return
    for lines in pages:
        for line in lines:
            line.math = min(1.0, line.math + line.roman)


def _running_lines(pages: list[list[_Line]], heights: list[float]) -> tuple[set[tuple[int, int]], int, int]:
    """Indexes (page, line) of running headers/footers and page numbers, plus how many of each."""
    bands: dict[str, set[int]] = {}
    for page_no, lines in enumerate(pages):
        height = heights[page_no]
        for line in lines:
            if line.y1 < 0.1 * height or line.y0 > 0.9 * height:
                key = re.sub(r"\d+", "#", line.text.lower()).strip()
                bands.setdefault(key, set()).add(page_no)
    threshold = max(2, math.ceil(0.3 * len(pages)))
    repeated = {key for key, found in bands.items() if len(found) >= threshold and len(pages) >= 2}
    drop: set[tuple[int, int]] = set()
    headers = numbers = 0
    for page_no, lines in enumerate(pages):
        height = heights[page_no]
        for index, line in enumerate(lines):
            in_band = line.y1 < 0.1 * height or line.y0 > 0.9 * height
            if in_band and _PAGE_NUMBER.match(line.text):
                drop.add((page_no, index))
                numbers += 1
            elif in_band and re.sub(r"\d+", "#", line.text.lower()).strip() in repeated:
                drop.add((page_no, index))
                headers += 1
            elif _ARXIV_STAMP.match(line.text):
                drop.add((page_no, index))
    return drop, headers, numbers


def _fragment(small: _Line, big: _Line) -> bool:
    """A sub/superscript or a short math piece (fraction part) that belongs to `big`'s row."""
    return small.size < 0.85 * big.size or (small.math >= 0.5 and small.x1 - small.x0 < 0.4 * (big.x1 - big.x0))


def _fits(row: list[_Line], line: _Line) -> bool:
    overlap = any(min(m.y1, line.y1) - max(m.y0, line.y0) >= 0.5 * min(m.y1 - m.y0, line.y1 - line.y0) for m in row)
    main = max(row, key=lambda m: len(m.text))  # a sub/superscript of the row must not pull in the next line
    if not overlap or min(main.y1, line.y1) - max(main.y0, line.y0) <= 0:
        return False
    for member in row:
        crossing = min(member.x1, line.x1) - max(member.x0, line.x0) > 1.0
        if crossing and not (_fragment(line, member) or _fragment(member, line)):
            return False
    return True


def _rows(lines: list[_Line], page: int) -> list[_Row]:
    """Merge lines that sit on the same visual row (table cells, equation pieces, split headings)."""
    groups: list[list[_Line]] = []
    for line in sorted(lines, key=lambda ln: (ln.y0, ln.x0)):
        for group in reversed(groups[-8:]):
            if _fits(group, line):
                group.append(line)
                break
        else:
            groups.append([line])
    rows = [_Row(page=page, lines=g) for g in groups]
    rows.sort(key=lambda r: (r.y0, r.x0))
    return rows


def _link(rows: list[_Row], left: float, right: float) -> list[_Row]:
    """Record the column edges, vertical gaps and short previous lines used to split paragraphs."""
    previous: _Row | None = None
    for row in rows:
        row.left, row.right = left, right
        if previous is not None:
            row.gap = row.y0 - previous.y1
            row.prev_short = previous.x1 < right - 0.12 * (right - left)
        previous = row
    return rows


def _layout(lines: list[_Line], page: int) -> list[_Row]:
    """Order a page's lines into rows: single column, or left column then right between full-width rows."""
    if not lines:
        return []
    lo = min(ln.x0 for ln in lines)
    hi = max(ln.x1 for ln in lines)
    width = max(hi - lo, 1.0)
    mid = (lo + hi) / 2
    tolerance = 0.03 * width
    sides: dict[str, list[_Line]] = {"L": [], "R": [], "F": []}
    for line in lines:
        in_left = line.x1 <= mid + tolerance
        in_right = line.x0 >= mid - tolerance
        side = "F" if in_left == in_right else "L" if in_left else "R"
        sides[side].append(line)
    weight = {k: sum(len(ln.text) for ln in v) for k, v in sides.items()}
    total = sum(weight.values()) or 1
    two_columns = (  # little text crosses the middle, and both sides hold text
        weight["F"] <= 0.4 * total
        and weight["L"] >= 0.1 * total
        and weight["R"] >= 0.03 * total
        and len(sides["L"]) >= 3
        and len(sides["R"]) >= 2
    )
    if not two_columns:
        right = sorted(ln.x1 for ln in lines)[int(0.9 * (len(lines) - 1))]
        return _link(_rows(lines, page), lo, right)
    left_rows = _link(_rows(sides["L"], page), lo, max(ln.x1 for ln in sides["L"]))
    right_rows = _link(_rows(sides["R"], page), min(ln.x0 for ln in sides["R"]), hi)
    full_rows = _link(_rows(sides["F"], page), lo, hi)
    ordered: list[_Row] = []
    top = -math.inf
    for separator in [*full_rows, None]:
        bottom = separator.y0 if separator is not None else math.inf
        for column in (left_rows, right_rows):
            band = [r for r in column if top <= (r.y0 + r.y1) / 2 < bottom]
            if band:
                band[0].gap = None
            ordered.extend(band)
        if separator is not None:
            ordered.append(separator)
            top = separator.y1
    return ordered


_HEADING_NUMBER = re.compile(
    r"^(?:(?:Appendix|APPENDIX)\s+)?((?:\d{1,2}|[A-Z]|[IVX]{1,4})(?:\.\d{1,2}){0,3})\.?:?\s+([^\W\d_][^\n]*)$"
)


def _all_caps(text: str) -> bool:
    """ALL-CAPS wording ("1 INTRODUCTION", "REFERENCES"): the ICLR/NeurIPS-style heading set in small capitals."""
    letters = [ch for ch in text if ch.isalpha()]
    return len(letters) >= 4 and all(ch.isupper() for ch in letters)


def _heading(row: _Row, body_size: float) -> tuple[str | None, str, int] | None:
    """(number, heading, level) when a row is a section heading, judged by font, numbering and wording.

    A heading stands out from the body by weight (bold), size (larger than the body's most common size) or
    case (ALL CAPS, as in templates that set headings in small capitals at body size); it is short, does not end
    like a sentence and holds little math. Numbered headings may be `1`, `1.2.3`, `A.1`, roman `IV`, or
    `Appendix A.`; unnumbered ones must be a common section name or set large and bold.
    """
    text = row.text.strip()
    words = text.split()
    if not words or len(text) > 120 or len(words) > 14 or row.math > 0.5 or text.endswith((",", ";")):
        return None
    caps = _all_caps(text)
    strong = row.bold >= 0.8 or row.size >= body_size + 1.0
    if not (strong or caps) or _is_tabular(row):
        return None
    match = _HEADING_NUMBER.match(text)
    if match and not match.group(2).rstrip().endswith("."):
        number, title = match.group(1), match.group(2).strip()
        roman = re.fullmatch(r"[IVX]{2,4}", number) is not None
        if number.isalpha() and not roman and row.size < body_size + 0.5 and not caps and not text.startswith("App"):
            return None  # "A Simple Baseline" in bold is a run-in phrase; appendix "A Proofs" is larger
        return number, title, 1 if roman else number.count(".") + 1
    name = normalize_heading(text)
    large_bold = row.size >= body_size + 0.5 and row.bold >= 0.8 and not text.endswith(".")
    if name in COMMON_HEADINGS or name.startswith(("appendix", "appendices")):
        return None, text.rstrip(".:"), 1
    if large_bold and text[0].isupper() and len(words) <= 10:
        return None, text.rstrip(".:"), 1
    return None


def _is_equation(row: _Row) -> bool:
    text = row.text
    if len(text) < 3 or match_caption(text) or (row.rules and _is_tabular(row)):  # a ruled table's row
        return False
    width = max(row.right - row.left, 1.0)
    indented = row.x0 > row.left + 0.05 * width
    relation = any(ch in _RELATIONS for ch in text)
    tag = _EQ_TAG.search(text)
    if tag:
        lines = sorted(row.lines, key=lambda ln: ln.x0)
        separated = len(lines) > 1 and lines[-1].x0 - max(ln.x1 for ln in lines[:-1]) > 2 * row.size
        return (separated or indented) and (row.math >= 0.25 or relation)
    return indented and relation and row.math >= 0.5


def _is_tabular(row: _Row) -> bool:
    """A table row: cells separated by wide horizontal gaps, or by vertical rules (a ruled table's narrow cells)."""
    lines = sorted(row.lines, key=lambda ln: ln.x0)
    return any(
        b.x0 - a.x1 > 2.5 * row.size or any(a.x1 - 1 <= x <= b.x0 + 1 for x in row.rules)
        for a, b in zip(lines, lines[1:], strict=False)
    )


def _rule_rows(rows: list[_Row], rules: list[tuple[float, float, float]]) -> None:
    """Note on each row the vertical rules that cross its middle between its first and last character."""
    if not rules:
        return
    for row in rows:
        middle = (row.y0 + row.y1) / 2
        row.rules = [x for x, y0, y1 in rules if y0 <= middle <= y1 and row.x0 < x < row.x1]


def _cells(row: _Row) -> list[tuple[float, float, str]]:
    """A table row's cells (x0, x1, text): its lines, split where the horizontal gap is wider than a space."""
    cells: list[tuple[float, float, str]] = []
    for line in sorted(row.lines, key=lambda ln: ln.x0):
        if cells and line.x0 - cells[-1][1] < 0.8 * line.size:
            x0, _, text = cells[-1]
            cells[-1] = (x0, line.x1, f"{text} {line.text}")
        else:
            cells.append((line.x0, line.x1, line.text))
    return cells


def _grid(rows: list[list[tuple[float, float, str]]]) -> list[list[str]]:
    """Rows of cells aligned into columns: a column is a run of x that some row's cell covers."""
    spans = sorted((x0, x1) for row in rows for x0, x1, _ in row)
    columns: list[list[float]] = []
    for x0, x1 in spans:
        if columns and x0 <= columns[-1][1]:
            columns[-1][1] = max(columns[-1][1], x1)
        else:
            columns.append([x0, x1])
    grid = []
    for row in rows:
        line = [""] * len(columns)
        for x0, x1, text in row:
            middle = (x0 + x1) / 2
            column = next((i for i, (a, b) in enumerate(columns) if a <= middle <= b), len(columns) - 1)
            line[column] = f"{line[column]} {text}".strip()
        grid.append(line)
    return grid


@dataclass
class _Vocabulary:
    """Words seen inside rows, to tell "sequence-" + "aligned" (keep) from "transduc-" + "tion" (join)."""

    words: set[str] = field(default_factory=set)
    compounds: set[str] = field(default_factory=set)

    def learn(self, text: str) -> None:
        tokens = text.lower().split()
        for token in tokens[1:-1]:
            word = token.strip(".,;:()[]\"'")
            if "-" in word:
                self.compounds.add(word)
            elif word.isalpha():
                self.words.add(word)

    def join(self, lines: list[str]) -> str:
        """Join a paragraph's rows, undoing end-of-line hyphenation where the halves are not words.

        "transduc-" + "tion" joins to "transduction" and "LAN-" + "GUAGE" to "LANGUAGE"; "state-of-the-" + "art",
        "sequence-" + "aligned" (both words) and "GPT-" + "2" keep their hyphen.
        """
        out = ""
        for line in lines:
            head = re.match(r"[A-Za-z]+", line)
            tail = re.search(r"(\S*?)([A-Za-z]+)-$", out)
            if not out:
                out = line
            elif tail and head:
                before, first, second = tail.group(1), tail.group(2), head.group(0)
                same_case = first.isupper() == second.isupper() or (first[-1].islower() and second.islower())
                compound = f"{before}{first}-{second}".lower()
                keep = (
                    compound in self.compounds
                    or "-" in before  # "state-of-the-": already a compound
                    or (first.lower() in self.words and second.lower() in self.words and len(second) > 3)
                    or not same_case
                    or not (second.islower() or second.isupper())
                    or re.match(r"[A-Za-z]+-", line) is not None
                )
                out = out + line if keep else out[:-1] + line
            elif (
                re.search(r"(?:https?://|www\.)\S*[/.\-_]$", out)
                or re.search(r"[A-Za-z]-$", out)
                and line[:1].isdigit()
            ):
                out += line
            else:
                out = f"{out} {line}"
        return out


@dataclass
class _Builder:
    """Walks rows in reading order and assembles the Paper's parts."""

    vocabulary: _Vocabulary
    abstract: list[str] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    captions: list[Caption] = field(default_factory=list)
    equations: list[str] = field(default_factory=list)
    skipped: dict[str, list[int]] = field(default_factory=dict)
    mode: str = "front"  # front | abstract | body | skip:<kind>
    kind: str = "text"  # what the open block is: text | caption | equation | table
    block: list[str] = field(default_factory=list)
    paragraphs: list[str] = field(default_factory=list)
    footnotes: list[str] = field(default_factory=list)
    caption: Caption | None = None
    abstract_size: float = 0.0
    cells: list[list[tuple[float, float, str]]] = field(default_factory=list)  # the open table's rows of cells
    appendix: bool = False  # whether the appendix has begun
    numbered_body: bool = False  # whether a section numbered 1, 2, ... was seen (so "A" starts the appendix)
    figures: dict[int, list[_Figure]] = field(default_factory=dict)  # text kept out of the body, by page

    def end_paragraph(self) -> None:
        if self.kind == "caption" and self.caption is not None:
            self.caption.text = self.vocabulary.join([self.caption.text, *self.block]).strip()
            self.caption = None
        elif self.kind == "equation" and self.block:
            equation = "\n".join(self.block)
            self.equations.append(equation)
            self.paragraphs.append(equation)
        elif self.kind == "table" and self.block:
            grid = _grid(self.cells)
            table = len(grid) >= 2 and len(grid[0]) >= 2
            self.paragraphs.append(markdown_table(grid) if table else escape_markdown("\n".join(self.block)))
        elif self.block:
            self.paragraphs.append(escape_markdown(self.vocabulary.join(self.block)))
            self.paragraphs.extend(self.footnotes)
            self.footnotes = []
        self.block, self.kind = [], "text"

    def end_section(self) -> None:
        self.end_paragraph()
        self.paragraphs.extend(self.footnotes)
        self.footnotes = []
        text = "\n\n".join(p for p in self.paragraphs if p.strip())
        self.paragraphs = []
        if not text:
            return
        if self.mode == "abstract":
            self.abstract.append(text)
        elif self.mode == "body":
            if not self.sections:
                self.sections.append(Section(heading="Text"))
            current = self.sections[-1]
            current.text = f"{current.text}\n\n{text}" if current.text else text

    def skip(self, kind: str, page: int) -> None:
        self.skipped.setdefault(kind, []).append(page)

    def start(self, row: _Row, heading: tuple[str | None, str, int]) -> None:
        self.end_section()
        number, title, level = heading
        kind = heading_kind(title)
        if kind == ABSTRACT and not self.sections:
            self.mode = "abstract"
        elif kind in (REFERENCES, ACKNOWLEDGEMENTS):
            self.mode = f"skip:{kind}"
            self.skip(kind or "", row.page)
        else:
            letter = number is not None and re.match(r"[A-Z](?:\.|$)", number) is not None and number not in "IVX"
            after_references = self.mode == f"skip:{REFERENCES}" and self.numbered_body
            if _is_appendix_heading(title) or (letter and self.numbered_body) or after_references:
                self.appendix = True
            self.numbered_body = self.numbered_body or (number is not None and number[:1].isdigit())
            self.mode = "body"
            section = Section(heading=title, number=number, level=level, page=row.page, appendix=self.appendix)
            self.sections.append(section)

    def open(self, kind: str, text: str) -> None:
        self.end_paragraph()
        self.kind, self.block = kind, [text]

    def add(self, row: _Row, new_paragraph: bool, footnote: bool) -> None:
        text = row.text
        if self.mode.startswith("skip:"):
            self.skip(self.mode[5:], row.page)
            return
        if self.mode == "abstract":
            self.abstract_size = self.abstract_size or row.size
            if footnote or row.size < self.abstract_size - 0.6:
                self.skip("front matter", row.page)
                return
        caption = match_caption(text) if new_paragraph or row.gap is None else None
        if caption:
            self.end_paragraph()
            self.caption = Caption(kind=caption[0], label=caption[1], text=caption[2], page=row.page)
            # A figure's caption takes its region; a table's caption (above the table) would take the figure below
            figure = _nearest_figure(self.figures.get(row.page, []), row) if caption[0] == "figure" else None
            if figure is not None:
                region = figure.region
                self.caption.figure_text = _short(figure.text)
                self.caption.box = [round(v, 1) for v in (region.x0, region.y0, region.x1, region.y1)]
            self.captions.append(self.caption)
            self.kind = "caption"
        elif footnote and self.kind != "caption":
            if self.footnotes and not re.match(r"[\d*\u2020\u2021\u00a7\u00b6]", text):
                self.footnotes[-1] = self.vocabulary.join([self.footnotes[-1], text])
            else:
                self.footnotes.append(text)
        elif self.kind != "caption" and _is_equation(row):
            if self.kind == "equation":
                self.block.append(text)
            else:
                self.open("equation", text)
        elif self.kind == "equation" and row.math >= 0.6 and len(text) <= 30 and (row.gap or 0) < row.size:
            self.block[-1] = f"{self.block[-1]} {text}"
        elif _is_tabular(row):  # a table right below its caption ends the caption
            if self.kind != "table":
                self.open("table", text)
                self.cells = []
            else:
                self.block.append(text)
            self.cells.append(_cells(row))
        elif new_paragraph or self.kind in ("equation", "table"):
            self.open("text", text)
        else:
            self.block.append(text)


def _new_paragraph(row: _Row, previous: _Row | None) -> bool:
    if previous is None or row.text[:1] in "\u2022\u25e6\u25aa\u25a0\u25cf":  # bullets start items
        return True
    if row.gap is None:  # top of a column or page: continue a sentence cut by the column break
        last = previous.text
        return last.endswith((".", ":", "!", "?")) and not row.text[:1].islower()
    height = max(row.y1 - row.y0, 1.0)
    return row.gap > 0.45 * min(height, row.size * 1.3) or row.prev_short or abs(row.size - previous.size) > 1.0


def _footnotes(rows: list[_Row], body_size: float) -> set[int]:
    """Indexes of small-font rows below the last body-size row of their page column (footnotes)."""
    lowest: dict[tuple[int, float], float] = {}
    for row in rows:
        if row.size >= body_size - 0.5:
            key = (row.page, row.left)
            lowest[key] = max(lowest.get(key, 0.0), row.y1)
    return {
        i
        for i, row in enumerate(rows)
        if row.size < body_size - 0.5
        and row.y0 >= lowest.get((row.page, row.left), math.inf) - 1
        and not _is_tabular(row)  # a small-print table at the foot of a column is no footnote
    }


def _title(rows: list[_Row]) -> tuple[str, set[int]]:
    """The largest-font text on the first page with text, and the indexes of its rows."""
    first_page = [i for i, r in enumerate(rows) if r.page == rows[0].page and sum(ch.isalpha() for ch in r.text) >= 3]
    if not first_page:
        return "", set()
    largest = max(rows[i].size for i in first_page)
    start = next(i for i in first_page if rows[i].size >= largest - 0.5)
    chosen = [start]
    for index in range(start + 1, len(rows)):
        if rows[index].page != rows[start].page or rows[index].size < largest - 0.5:
            break
        chosen.append(index)
    title = " ".join(rows[i].text for i in chosen)
    return re.sub(r"\s+", " ", title).strip()[:300], set(chosen)


def _pages_text(pages: list[int]) -> str:
    first, last = min(pages), max(pages)
    return f"page {first}" if first == last else f"pages {first}-{last}"


@contextmanager
def _quiet_mupdf() -> Iterator[None]:
    """Keep MuPDF from printing repair warnings to stderr while we read."""
    errors = pymupdf.TOOLS.mupdf_display_errors()
    warnings = pymupdf.TOOLS.mupdf_display_warnings()
    pymupdf.TOOLS.mupdf_display_errors(False)
    pymupdf.TOOLS.mupdf_display_warnings(False)
    try:
        yield
    finally:
        pymupdf.TOOLS.mupdf_display_errors(errors)
        pymupdf.TOOLS.mupdf_display_warnings(warnings)


def _open(path: Path) -> Any:
    """Open the PDF from its file (MuPDF reads what it needs, not the whole file into memory)."""
    with path.open("rb") as handle:
        size = handle.seek(0, 2)
        handle.seek(max(0, size - 2048))
        tail = handle.read()
    if not size:
        raise PaperError(f"{path.name} is empty (0 bytes): the download failed; fetch the PDF again.")
    try:
        doc = pymupdf.open(str(path), filetype="pdf")
    except Exception as exc:  # pymupdf raises FileDataError/RuntimeError/ValueError for broken files
        raise PaperError(
            f"{path.name} is a damaged or truncated PDF ({exc}): download it again, or repair it "
            "(e.g. `qpdf in.pdf out.pdf`)."
        ) from exc
    if doc.needs_pass:
        doc.close()
        raise PaperError(
            f"{path.name} is password-protected: save an unprotected copy (e.g. "
            "`qpdf --decrypt --password=PASSWORD in.pdf out.pdf`) and read that."
        )
    truncated = doc.is_repaired and b"%%EOF" not in tail
    if doc.page_count == 0 or truncated:
        doc.close()
        raise PaperError(
            f"{path.name} is a truncated or damaged PDF ({'no %%EOF marker' if truncated else 'no pages'}): "
            "the download was probably cut short; fetch the PDF again."
        )
    return doc


def _extract(
    doc: Any, path: Path, max_pages: int, max_chars: int
) -> tuple[list[list[_Line]], list[float], int, Counter[str], bool, list[Graphics]]:
    """Lines and figure regions of the first `max_pages` pages, stopping early once they hold twice `max_chars`
    characters."""
    fonts: Counter[str] = Counter()
    pages: list[list[_Line]] = []
    graphics: list[Graphics] = []
    heights: list[float] = []
    rotated = 0
    images = False
    characters = 0
    for number in range(min(doc.page_count, max_pages)):
        if characters > 2 * max_chars:
            break
        try:
            page = doc[number]
            lines, turned = _page_lines(page, fonts)
            images = images or (not lines and bool(page.get_images()))
            graphics.append(page_graphics(page) if lines else Graphics(regions=[], rules=[]))
        except PaperError:
            raise
        except Exception as exc:  # a page pymupdf cannot parse
            raise PaperError(f"{path.name}: page {number + 1} cannot be read ({exc}); the PDF is damaged.") from exc
        pages.append(lines)
        heights.append(float(page.rect.height) or 792.0)
        rotated += turned
        characters += sum(len(line.text) for line in lines)
    return pages, heights, rotated, fonts, images, graphics


def _outline(doc: Any) -> list[Entry]:
    """The PDF's outline (bookmarks) as entries; empty when it has none or it cannot be read."""
    try:
        toc = doc.get_toc(simple=True)
    except Exception:  # a damaged outline is no reason to refuse the paper: read headings from the layout
        return []
    return [Entry(int(level), fold(str(title)), int(page)) for level, title, page in toc[:500]]


def read_pdf(path: Path, *, max_pages: int = DEFAULT_MAX_PAGES, max_chars: int = DEFAULT_MAX_CHARS) -> Paper:
    """Read a PDF paper: at most `max_pages` pages, and no more once the pages read hold twice `max_chars`
    characters (the text is cut to `max_chars` later). Pages not read are listed in `dropped`."""
    with _quiet_mupdf():
        doc = _open(path)
        try:
            page_count = doc.page_count
            pages, heights, rotated, fonts, images, graphics = _extract(doc, path, max(1, max_pages), max(1, max_chars))
            outline = _outline(doc)
        finally:
            doc.close()
    read_characters = sum(len(ln.text) for lines in pages for ln in lines)
    if read_characters < 50:
        hint = "it is a scanned, image-only PDF" if images else "it holds no text"
        raise PaperError(
            f"{path.name} has no text layer ({hint}): run OCR first, e.g. "
            f"`ocrmypdf {path.name} {path.stem}-ocr.pdf`, and read the OCR'd PDF."
        )
    _roman_is_math(pages, fonts)
    drop, headers, numbers = _running_lines(pages, heights)
    rows: list[_Row] = []
    figures: dict[int, list[_Figure]] = {}
    line_size = _common_size(pages)
    for page_no, lines in enumerate(pages):
        kept = [ln for i, ln in enumerate(lines) if (page_no, i) not in drop]
        kept, figures[page_no + 1] = _figure_text(kept, graphics[page_no].regions, line_size)
        page_rows = _layout(kept, page_no + 1)
        _rule_rows(page_rows, graphics[page_no].rules)
        rows.extend(page_rows)
    sizes: Counter[float] = Counter()
    for row in rows:
        sizes[round(row.size * 2) / 2] += len(row.text)
    body_size = sizes.most_common(1)[0][0] if sizes else 10.0
    limit = (page_count, len(pages), max_pages)
    paper = _structure(rows, body_size, path, limit, (rotated, headers, numbers), outline, figures)
    _check_usable(paper, rows, path, len(pages))
    return paper.model_copy(update={"source_characters": read_characters})


def _unclipped_characters(path: Path, pages: int) -> int:
    """Characters of the first `pages` pages including text placed outside the page (only to explain a refusal)."""
    with _quiet_mupdf(), pymupdf.open(str(path), filetype="pdf") as doc:
        return sum(
            len(re.sub(r"\s+", "", doc[i].get_text("text", flags=0, clip=pymupdf.INFINITE_RECT())))
            for i in range(min(pages, doc.page_count))
        )


MIN_BODY_CHARS = 200  # a paper's abstract and sections hold at least this much text...
MIN_CHARS_PER_PAGE = 120  # ...and this much per page read (real papers hold 2,000-5,000 a page)


def _check_usable(paper: Paper, rows: list[_Row], path: Path, pages: int) -> None:
    """Refuse a PDF whose usable text is implausibly small for its pages (a broken text layer), saying why.

    Going ahead would spend a run on a few dozen tokens of "paper": a text layer that is one huge line (read as
    the title), text placed outside the pages, or only headers and labels.
    """
    body = len(paper.abstract) + sum(len(s.text) for s in paper.sections)
    needed = max(MIN_BODY_CHARS, MIN_CHARS_PER_PAGE * pages)
    if body >= needed:
        return
    longest = max((len(r.text) for r in rows), default=0)
    total = sum(len(r.text) for r in rows)
    outside = _unclipped_characters(path, pages) - sum(len(re.sub(r"\s+", "", r.text)) for r in rows)
    if outside > total:
        why = f"{outside:,} characters of its text lie outside the pages, such as one line running off the page"
    elif longest >= 0.5 * total and longest >= 200:
        why = f"its text layer is essentially one line of {longest:,} characters"
    else:
        why = f"its text layer holds only {total:,} characters in {pages} page{'s' if pages != 1 else ''}"
    raise PaperError(
        f"{path.name}: refused, only {body:,} characters of usable text were found ({why}; a paper this long "
        f"should have at least {needed:,}): re-export or print the paper to a new PDF, run OCR "
        f"(`ocrmypdf --force-ocr {path.name} {path.stem}-ocr.pdf`), or give its LaTeX source or text."
    )


def _candidate(row: _Row, body_size: float) -> bool:
    """Whether a row could be a heading at all: short, not a table row, not math, not small print."""
    return len(row.text) <= 160 and row.math <= 0.5 and not _is_tabular(row) and row.size >= body_size - 0.6


def _headings(
    rows: list[_Row], body_size: float, title_rows: set[int], outline: list[Entry]
) -> tuple[list[tuple[str | None, str, int] | None], set[int]]:
    """The heading of each row (or None), and the rows that continue a heading wrapped onto them.

    With an outline whose entries are found in the text, its entries are the headings, plus the layout's
    abstract, references, acknowledgements and appendix headings (which outlines often leave out). Without one,
    headings come from the layout (`_heading`), a heading wrapped onto the next row(s) in the same style joined.
    """
    layout = [None if i in title_rows else _heading(row, body_size) for i, row in enumerate(rows)]
    continued: set[int] = set()
    texts = [(r.page, r.text if i not in title_rows and _candidate(r, body_size) else "") for i, r in enumerate(rows)]
    located = locate(outline, texts) if outline else None
    if located is not None:
        references = next((i for i, h in enumerate(layout) if h and heading_kind(h[1]) == REFERENCES), len(rows))
        headings: list[tuple[str | None, str, int] | None] = [
            h if h is not None and (heading_kind(h[1]) or _is_appendix_heading(h[1]) or i > references) else None
            for i, h in enumerate(layout)
        ]
        for hit in located:
            headings[hit.row] = (hit.number, hit.title, hit.level)
            for extra in range(hit.row + 1, hit.row + hit.span):
                headings[extra] = None
                continued.add(extra)
        return headings, continued
    for index, heading in enumerate(layout):
        if heading is None or index in continued:
            continue
        number, title, level = heading
        following = index + 1
        while (
            following < len(rows)
            and following - index <= 2
            and _plain_or_unnumbered(layout[following], rows[following])
            and _continues(rows[following - 1], rows[following], body_size)
            and len(title) + len(rows[following].text) <= 150
        ):
            title = f"{title} {rows[following].text}"
            continued.add(following)
            following += 1
        layout[index] = (number, title, level)
    return layout, continued


def _plain_or_unnumbered(heading: tuple[str | None, str, int] | None, row: _Row) -> bool:
    """A row that may continue the heading above it: no heading of its own, or an unnumbered, unnamed one."""
    return heading is None or (heading[0] is None and heading_kind(row.text) is None)


def _continues(heading: _Row, row: _Row, body_size: float) -> bool:
    """Whether `row` is the second line of the heading in `heading`: same page, style and size, right below."""
    gap = row.y0 - heading.y1
    return (
        row.page == heading.page
        and abs(row.size - heading.size) < 0.3
        and abs(row.bold - heading.bold) < 0.2
        and (row.bold >= 0.8 or row.size >= body_size + 1.0)
        and -0.5 * row.size < gap < 0.6 * row.size
        and abs(row.x0 - heading.x0) < 4 * row.size
        and len(row.text) <= 80
        and not row.text.endswith(",")
        and _HEADING_NUMBER.match(row.text) is None
        and not match_caption(row.text)
        and _candidate(row, body_size)
    )


def _is_appendix_heading(title: str) -> bool:
    name = normalize_heading(title)
    return name.startswith(("appendix", "appendices", "supplementary material", "supplemental material"))


def _structure(
    rows: list[_Row],
    body_size: float,
    path: Path,
    limit: tuple[int, int, int],
    removed: tuple[int, int, int],
    outline: list[Entry] | None = None,
    figures: dict[int, list[_Figure]] | None = None,
) -> Paper:
    """The Paper from rows in reading order; `limit` is (pages in the file, pages read, the page limit)."""
    title, title_rows = _title(rows)
    headings, continued = _headings(rows, body_size, title_rows, outline or [])
    first_page = rows[0].page if rows else 1
    marks = [
        i
        for i, row in enumerate(rows)
        if i not in title_rows
        and row.page <= first_page + 1
        and (not title_rows or i > min(title_rows))
        and (headings[i] is not None or _ABSTRACT_RUN_IN.match(row.text))
    ]
    abstract = [i for i in marks if (h := headings[i]) is None or heading_kind(h[1]) == ABSTRACT]
    if abstract:  # authors and affiliations between the title and the abstract are front matter, not headings
        marks = [i for i in marks if i >= abstract[0]]
    vocabulary = _Vocabulary()
    for row in rows:
        vocabulary.learn(row.text)
    title = vocabulary.join([rows[i].text for i in sorted(title_rows)])[:300] if title_rows else title
    footnotes = _footnotes(rows, body_size)
    builder = _Builder(vocabulary=vocabulary, figures=figures or {})
    start = marks[0] if marks else min(title_rows, default=0)
    if not marks:
        builder.mode = "body"
    previous: _Row | None = None
    front: list[list[str]] = []
    for index, row in enumerate(rows):
        if index in title_rows or index in continued:
            continue
        if index < start:
            builder.skip("front matter", row.page)
            if _new_paragraph(row, previous) or not front:
                front.append([])
            front[-1].append(row.text)
            previous = row
            continue
        heading = headings[index]
        run_in = _ABSTRACT_RUN_IN.match(row.text)
        if heading is not None and not (builder.mode == "abstract" and heading[1].lower() == "abstract"):
            builder.start(row, heading)
        elif run_in and builder.mode == "front":
            builder.end_section()
            builder.mode = "abstract"
            builder.block.append(row.text[run_in.end() :])
        elif row.lead_bold and heading_kind(row.lead_bold) == ACKNOWLEDGEMENTS and builder.mode != "front":
            builder.start(row, (None, "Acknowledgements", 1))
        else:
            if builder.mode == "front":
                builder.mode = "body"
            builder.add(row, _new_paragraph(row, previous), index in footnotes)
        if index not in footnotes:
            previous = row
    builder.end_section()
    unlabelled = max((vocabulary.join(p) for p in front), key=len, default="")
    if not builder.abstract and len(unlabelled) >= 400:  # an abstract without an "Abstract" heading
        builder.abstract.append(unlabelled)
    dropped = _dropped(builder.skipped, removed)
    figure_lines = sum(f.lines for found in (figures or {}).values() for f in found)
    if figure_lines:
        attached = sum(f.lines for found in (figures or {}).values() for f in found if f.used)
        dropped.append(f"text inside figures ({figure_lines} lines, {attached} kept with their captions)")
    page_count, read, max_pages = limit
    if read < page_count:
        why = f"over the {max_pages}-page limit" if read >= max_pages else "not read: the pages before hold enough text"
        dropped.append(f"pages {read + 1}-{page_count} ({why})")
    return finish_paper(builder, title, path, "pdf", dropped, (page_count, read))


def _dropped(skipped: dict[str, list[int]], removed: tuple[int, int, int]) -> list[str]:
    rotated, headers, numbers = removed
    dropped = [f"{kind} ({_pages_text(pages)})" for kind, pages in skipped.items()]
    if headers:
        dropped.append(f"running headers/footers ({headers} lines)")
    if numbers:
        dropped.append(f"page numbers ({numbers})")
    if rotated:
        dropped.append(f"rotated text such as arXiv margin stamps ({rotated} lines)")
    return dropped
