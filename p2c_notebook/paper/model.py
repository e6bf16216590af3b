"""The one in-memory form of a paper, whatever format it was read from."""

from __future__ import annotations

from pydantic import BaseModel, Field

from p2c_notebook.tokens import estimate_tokens


class Section(BaseModel):
    """A section (or sub-section) of the paper body, in reading order."""

    heading: str
    number: str | None = None  # "3.2" for numbered sections, None otherwise
    level: int = 1
    text: str = ""
    page: int | None = None  # 1-based page where the heading appears (PDF only)


class Caption(BaseModel):
    """A figure or table caption, e.g. kind="table", label="Table 3"."""

    kind: str
    label: str
    text: str
    page: int | None = None


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
    dropped: list[str] = Field(default_factory=list)  # what was removed: "references", "acknowledgements"...

    def to_text(self) -> str:
        """Render the paper as Markdown for prompts: stable, byte-identical for the same paper."""
        parts = [f"# {self.title}"]
        if self.abstract:
            parts.append(f"## Abstract\n\n{self.abstract.strip()}")
        for section in self.sections:
            marks = "#" * min(6, section.level + 1)
            heading = f"{section.number} {section.heading}" if section.number else section.heading
            body = section.text.strip()
            parts.append(f"{marks} {heading}\n\n{body}" if body else f"{marks} {heading}")
        if self.captions:
            lines = [f"- {c.label}: {c.text.strip()}" for c in self.captions]
            parts.append("## Figure and table captions\n\n" + "\n".join(lines))
        return "\n\n".join(parts).strip() + "\n"

    def report(self) -> PaperReport:
        text = self.to_text()
        return PaperReport(
            source=self.source,
            source_format=self.source_format,
            pages=self.pages,
            sections=len(self.sections),
            equations=len(self.equations),
            captions=len(self.captions),
            characters=len(text),
            estimated_tokens=estimate_tokens(text),
            dropped=list(self.dropped),
        )


class PaperReport(BaseModel):
    """What a reader found: shown to the user before any tokens are spent."""

    source: str
    source_format: str
    pages: int | None
    sections: int
    equations: int
    captions: int
    characters: int
    estimated_tokens: int
    dropped: list[str]

    def summary(self) -> str:
        pages = f"{self.pages} pages, " if self.pages else ""
        dropped = f"; dropped {', '.join(self.dropped)}" if self.dropped else ""
        return (
            f"{self.source} ({self.source_format}): {pages}{self.sections} sections, "
            f"{self.equations} equations, {self.captions} captions, {self.characters:,} characters, "
            f"~{self.estimated_tokens:,} tokens{dropped}"
        )
