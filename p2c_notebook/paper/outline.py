"""Headings from a PDF's own outline (bookmarks), checked against the page text.

The outline is the authors' list of sections, written by their tools, so it beats any guess from fonts; but its
page numbers and levels are sometimes wrong (hyperref nesting), and an entry may name no line on the page. Each
entry is therefore located in the rows themselves, in order; entries that cannot be found are left out, and an
outline whose entries mostly cannot be found is not used at all.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

_NUMBER = re.compile(
    r"^\s*(?:(?:appendix|APPENDIX|Appendix)\s+)?((?:\d{1,2}|[A-Z]|[IVX]{1,4})(?:\.\d{1,2}){0,3})[.:]?\s+(?=\S)"
)
MIN_FOUND = 0.5  # share of the outline's entries that must be found in the text for the outline to be used


@dataclass(frozen=True)
class Entry:
    """One outline entry: its level (1 = top), its title, its 1-based page (0 when the outline gives none)."""

    level: int
    title: str
    page: int


@dataclass(frozen=True)
class Located:
    """An entry found in the rows: first row, how many rows the heading spans, its number (from the text)."""

    row: int
    span: int
    number: str | None
    title: str
    level: int


def key(text: str) -> str:
    """Text compared without numbering, case, accents, ligatures, spaces or punctuation."""
    text = unicodedata.normalize("NFKC", text)
    text = _NUMBER.sub("", text, count=1)
    return re.sub(r"[\W_]+", "", text.lower())


def keys(text: str) -> set[str]:
    """`key` of the text, and of the text as is: "A Practical Guide" may be section A or start with an article."""
    return {key(text), re.sub(r"[\W_]+", "", unicodedata.normalize("NFKC", text).lower())} - {""}


def split(text: str) -> tuple[str | None, str]:
    """("3.2", "Attention") from "3.2 Attention" (or "Appendix A. Proofs" -> ("A", "Proofs"))."""
    match = _NUMBER.match(text)
    if not match:
        return None, text.strip()
    return match.group(1), text[match.end() :].strip()


def locate(entries: list[Entry], rows: list[tuple[int, str]], max_len: int = 160) -> list[Located] | None:
    """Find each outline entry among `rows` ((page, text) in reading order); None when too few are found."""
    wanted = [e for e in entries if keys(e.title)]
    if not wanted:
        return None
    found: list[Located] = []
    start = 0
    for entry in wanted:
        hit = _find(entry, rows, start, max_len)
        if hit is None:
            continue
        index, span = hit
        text = " ".join(rows[i][1] for i in range(index, index + span))
        number, title = split(text)
        level = number.count(".") + 1 if number else max(1, entry.level)
        found.append(Located(index, span, number, title, level))
        start = index + span
    if len(found) < MIN_FOUND * len(wanted):
        return None
    return found


def _find(entry: Entry, rows: list[tuple[int, str]], start: int, max_len: int) -> tuple[int, int] | None:
    """(row, span) of the first match at or after `start`: on the entry's page (+-1) first, then anywhere later."""
    target = keys(entry.title)
    near = [i for i in range(start, len(rows)) if entry.page and abs(rows[i][0] - entry.page) <= 1]
    later = range(start, len(rows))
    for candidates in (near, later):
        for index in candidates:
            span = _match(target, rows, index, max_len)
            if span:
                return index, span
    return None


def _match(targets: set[str], rows: list[tuple[int, str]], index: int, max_len: int) -> int:
    """How many rows from `index` spell one of `targets` (0 when none): a heading may wrap onto 2-3 rows."""
    text = rows[index][1]
    if not text or len(text) > max_len:
        return 0
    for joined in keys(text):
        if joined in targets:
            return 1
        span = 1
        while span < 3 and any(t.startswith(joined) for t in targets) and index + span < len(rows):
            following = rows[index + span]
            if following[0] != rows[index][0] or not following[1] or len(following[1]) > max_len:
                break
            joined += re.sub(r"[\W_]+", "", unicodedata.normalize("NFKC", following[1]).lower())
            span += 1
            if joined in targets:
                return span
    return 0
