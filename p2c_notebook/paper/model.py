"""The one in-memory form of a paper, whatever format it was read from."""

from __future__ import annotations

import fnmatch

from pydantic import BaseModel, Field

from p2c_notebook.tokens import estimate_tokens

DEFAULT_MAX_CHARS = 300_000  # ~100k tokens (PDF text runs ~3 characters a token), with room left in a 128k context


class Section(BaseModel):
    """A section (or sub-section) of the paper body, in reading order."""

    heading: str
    number: str | None = None  # "3.2" for numbered sections, None otherwise
    level: int = 1
    text: str = ""
    page: int | None = None  # 1-based page where the heading appears (PDF only)
    appendix: bool = False  # part of the appendix (supplementary material), the first thing dropped to fit a model

    def render(self) -> str:
        """The section as Markdown, as `Paper.to_text` shows it."""
        marks = "#" * min(6, self.level + 1)
        heading = f"{self.number} {self.heading}" if self.number else self.heading
        body = self.text.strip()
        return f"{marks} {heading}\n\n{body}" if body else f"{marks} {heading}"


class Caption(BaseModel):
    """A figure or table caption, e.g. kind="table", label="Table 3"."""

    kind: str
    label: str
    text: str
    page: int | None = None
    figure_text: str = ""  # PDF: the words inside the figure (labels of a diagram, a plot's axes), cut short
    box: list[float] | None = None  # PDF: the figure's region on `page` (x0, y0, x1, y1 in points)
    image: str | None = None  # in a run folder: the figure rendered, relative to paper/ ("figures/fig1.png")

    def render(self) -> str:
        """The caption as one line of `Paper.to_text`'s caption list."""
        inside = f" (Figure text: {self.figure_text.strip()})" if self.figure_text.strip() else ""
        return f"- {self.label}: {self.text.strip()}{inside}"


class Paper(BaseModel):
    """A parsed paper: what the stages see. References, acknowledgements and running headers are dropped."""

    title: str
    abstract: str = ""
    sections: list[Section] = Field(default_factory=list)
    equations: list[str] = Field(default_factory=list)
    captions: list[Caption] = Field(default_factory=list)
    source: str = ""  # file name the paper was read from
    source_format: str = ""  # pdf | latex | s2orc | markdown | text
    pages: int | None = None
    pages_read: int | None = None  # PDF: how many of `pages` were read (the rest is listed in `dropped`)
    dropped: list[str] = Field(default_factory=list)  # what was removed: "references", "acknowledgements"...
    # Characters of the source as read (a PDF's text layer, the file's text otherwise), before compaction.
    source_characters: int | None = None

    def to_text(self) -> str:
        """Render the paper as Markdown for prompts: stable, byte-identical for the same paper."""
        parts = [f"# {self.title}"]
        if self.abstract:
            parts.append(f"## Abstract\n\n{self.abstract.strip()}")
        parts.extend(section.render() for section in self.sections)
        if self.captions:
            lines = [c.render() for c in self.captions]
            parts.append("## Figure and table captions\n\n" + "\n".join(lines))
        return "\n\n".join(parts).strip() + "\n"

    def report(self) -> PaperReport:
        text = self.to_text()
        return PaperReport(
            source=self.source,
            source_format=self.source_format,
            pages=self.pages,
            pages_read=self.pages_read,
            sections=len(self.sections),
            equations=len(self.equations),
            captions=len(self.captions),
            characters=len(text),
            estimated_tokens=estimate_tokens(text),
            dropped=list(self.dropped),
            source_characters=self.source_characters,
        )


def _cut(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, at a paragraph (else word) boundary when one is near."""
    if len(text) <= limit:
        return text
    end = text.rfind("\n\n", 0, limit + 1)
    if end < limit // 2:
        end = text.rfind(" ", 0, limit + 1)
    return text[: end if end > 0 else max(limit, 0)].rstrip()


def limit_characters(paper: Paper, max_chars: int) -> Paper:
    """Keep the paper's text (`to_text`) within `max_chars` characters, cutting from the end.

    Sections are kept in reading order until the budget runs out (the last one cut at a paragraph);
    what is cut is listed in `dropped`, so the report tells the user what the model will not see.
    """
    total = len(paper.to_text())
    if total <= max_chars:
        return paper
    abstract = _cut(paper.abstract.strip(), max_chars // 4)
    captions: list[Caption] = []
    caption_chars = 0
    for caption in paper.captions:
        caption_chars += len(caption.render()) + 1
        if caption_chars > max_chars // 10:
            break
        captions.append(caption)
    title = paper.title if len(paper.title) <= 300 else _cut(paper.title, 300)
    head = paper.model_copy(update={"title": title, "abstract": abstract, "sections": [], "captions": captions})
    used = len(head.to_text())
    sections: list[Section] = []
    first_cut: Section | None = None  # the first section not kept whole
    partial = False  # whether the start of `first_cut` is kept
    for section in paper.sections:
        size = len(section.render()) + 2
        if used + size <= max_chars:
            sections.append(section)
            used += size
            continue
        first_cut = section
        room = max_chars - used - len(section.model_copy(update={"text": ""}).render()) - 4
        if room >= 200:
            sections.append(section.model_copy(update={"text": _cut(section.text.strip(), room)}))
            partial = True
        break
    limited = head.model_copy(update={"sections": sections})
    notes = []
    if first_cut is not None:
        heading = f"{first_cut.number} {first_cut.heading}" if first_cut.number else first_cut.heading
        where = f" (page {first_cut.page})" if first_cut.page else ""
        notes.append(f"the text from {'the middle of ' if partial else ''}section {heading!r}{where} to the end")
    if len(captions) < len(paper.captions):
        notes.append(f"{len(paper.captions) - len(captions)} captions")
    if abstract != paper.abstract.strip():
        notes.append("the end of the abstract")
    kept = len(limited.to_text())
    what = ", ".join(notes) or "part of the text"
    note = f"{what} (over the {max_chars:,}-character limit: kept {kept:,} of {total:,} characters)"
    return limited.model_copy(update={"dropped": [*paper.dropped, note]})


class PaperReport(BaseModel):
    """What a reader found: shown to the user before any tokens are spent."""

    source: str
    source_format: str
    pages: int | None
    pages_read: int | None = None
    sections: int
    equations: int
    captions: int
    characters: int
    estimated_tokens: int
    source_characters: int | None = None
    dropped: list[str]

    def summary(self) -> str:
        pages = f"{self.pages} pages, " if self.pages else ""
        if self.pages and self.pages_read is not None and self.pages_read < self.pages:
            pages = f"{self.pages} pages (read only pages 1-{self.pages_read}), "
        dropped = f"; dropped {', '.join(self.dropped)}" if self.dropped else ""
        saved = ""
        if self.source_characters and self.source_characters > self.characters:
            share = 1 - self.characters / self.source_characters
            saved = f" ({share:.0%} less than the {self.source_characters:,} characters read)"
        return (
            f"{self.source} ({self.source_format}): {pages}{self.sections} sections, "
            f"{self.equations} equations, {self.captions} captions, {self.characters:,} characters{saved}, "
            f"~{self.estimated_tokens:,} tokens{dropped}"
        )


def without_appendices(paper: Paper) -> Paper:
    """The paper less its appendix sections, listed in `dropped`: the first thing to leave out when a paper
    does not fit the model's context window (the method and results are in the body)."""
    appendix = [s for s in paper.sections if s.appendix]
    if not appendix:
        return paper
    names = ", ".join(f"{s.number} {s.heading}" if s.number else s.heading for s in appendix if s.level == 1)
    kept = [s for s in paper.sections if not s.appendix]
    note = f"the appendix ({len(appendix)} sections: {names or appendix[0].heading}) to fit the model's context"
    return paper.model_copy(update={"sections": kept, "dropped": [*paper.dropped, note]})


def section_label(section: Section) -> str:
    """A section as `p2c paper` lists it and `--exclude-sections` matches it: "3.2 Training"."""
    return f"{section.number} {section.heading}" if section.number else section.heading


def _matches(pattern: str, section: Section) -> bool:
    """Whether a user's pattern names the section: a glob on its title, its number or both ("Appendix*", "6.2",
    "*ablation*"), case-insensitive; "appendix" alone (or "appendix*") names every section marked appendix."""
    wanted = pattern.strip().lower()
    if section.appendix and wanted.rstrip("*") in ("appendix", "appendices"):
        return True
    names = [section.heading.lower(), section_label(section).lower()]
    if section.number:
        names.append(section.number.lower())
    return any(fnmatch.fnmatchcase(name, wanted) for name in names)


def exclude_sections(paper: Paper, patterns: list[str]) -> tuple[Paper, list[str]]:
    """The paper less the sections the patterns name (and the sub-sections under them), listed in `dropped`;
    and the patterns that named no section (so a typo is reported, not silently ignored)."""
    wanted = [p for p in patterns if p.strip()]
    if not wanted:
        return paper, []
    kept: list[Section] = []
    removed: list[Section] = []
    used: set[str] = set()
    under: int | None = None  # level of the excluded section whose sub-sections follow
    for section in paper.sections:
        if under is not None and section.level > under:
            removed.append(section)
            continue
        under = None
        hits = [p for p in wanted if _matches(p, section)]
        if hits:
            used.update(hits)
            removed.append(section)
            under = section.level
        else:
            kept.append(section)
    unmatched = [p for p in wanted if p not in used]
    if not removed:
        return paper, unmatched
    names = ", ".join(section_label(s) for s in removed[:8]) + (", ..." if len(removed) > 8 else "")
    note = f"{len(removed)} sections excluded by choice ({names})"
    return paper.model_copy(update={"sections": kept, "dropped": [*paper.dropped, note]}), unmatched


def describe_sections(paper: Paper) -> list[str]:
    """One line per section the model will see: its number and title (indented by level), its tokens, and
    "appendix" where it is part of the appendix (the first thing left out to fit a small model)."""
    lines = []
    for section in paper.sections:
        indent = "  " * (max(section.level, 1) - 1)
        mark = "  [appendix]" if section.appendix else ""
        lines.append(f"{indent}{section_label(section)}  ~{estimate_tokens(section.render()):,} tokens{mark}")
    return lines


def parse_patterns(text: str | None) -> list[str] | None:
    """`--exclude-sections "Appendix*,6.2"` as a list of patterns; None when the option was not given."""
    if text is None:
        return None
    return [p.strip() for p in text.split(",") if p.strip()]
