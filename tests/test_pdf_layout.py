"""The PDF reader's layout rules, pinned on small papers built here with pymupdf (no corpus needed).

ALL-CAPS / small-capital headings (the ICLR template), the PDF outline, wrapped headings, appendices, tables,
hyphenation, Markdown escaping, glyph repair and degenerate text layers.
"""

from __future__ import annotations

from pathlib import Path

import pymupdf
import pytest
from pdfpages import BOLD, SERIF, PdfPage

from p2c_notebook.cli import main
from p2c_notebook.errors import PaperError
from p2c_notebook.paper import read_paper
from p2c_notebook.paper.hygiene import escape_markdown, fold, repair_glyphs
from p2c_notebook.paper.model import without_appendices

BODY = 9.6
LOREM = (
    "Neural networks learn representations from data and we study how attention layers route "
    "information between positions in long sequences while keeping the computation parallel. "
)


class Page(PdfPage):
    """A page in the fonts and sizes a paper template uses, with small-capital headings."""

    def __init__(self, doc: pymupdf.Document) -> None:
        super().__init__(doc, body=BODY)

    def caps(self, number: str, title: str, size: float = 12.0, gap: float = 10) -> None:
        """A small-capitals heading: number and first letters at `size`, the other capitals at 80% of it."""
        self.y += gap
        x = 72.0
        if number:
            _, end = self.writer.append((x, self.y), number, font=SERIF, fontsize=size)
            x = end.x + 10
        for word in title.split():
            _, end = self.writer.append((x, self.y), word[0], font=SERIF, fontsize=size)
            if len(word) > 1:
                _, end = self.writer.append(end, word[1:], font=SERIF, fontsize=0.8 * size)
            x = end.x + 0.3 * size
        self.y += size + 4


def full_line(head: str, tail: str, width: float = 460) -> str:
    """`head`, filler words, `tail`: a line as wide as the column, so that it does not end a paragraph."""
    words = [head]
    while SERIF.text_length(" ".join([*words, "word", tail]), fontsize=BODY) < width:
        words.append("word")
    return " ".join([*words, tail])


def iclr_pdf(path: Path, *, outline: list[list[object]] | None = None) -> None:
    """An ICLR-style paper: small-capital, regular-weight headings; subsections at body size; references."""
    doc = pymupdf.open()
    one = Page(doc)
    one.line("AN ICLR STYLE PAPER ABOUT READING", size=17)
    one.y += 8
    one.line("Ann Author, Bob Writer", x=200)
    one.line("{ann, bob}@example.org", x=200)
    one.caps("", "ABSTRACT", gap=14)
    one.paragraph("ABSTRACTTEXT " + LOREM * 2)
    one.caps("1", "INTRODUCTION")
    one.paragraph("INTROTEXT " + LOREM * 3)
    one.y += 6
    for head, tail in (("We", "improve the state-of-the-"), ("art in", "LAN-"), ("GUAGE modelling", "today.")):
        one.line(full_line(head, tail))
    one.caps("2", "METHOD")
    one.paragraph("METHODTEXT " + LOREM * 2)
    one.caps("2.1", "UPDATE RULE", size=BODY)
    one.paragraph("RULETEXT " + LOREM * 2)
    one.done()
    two = Page(doc)
    two.caps("3", "EXPERIMENTS")
    two.paragraph("EXPERIMENTTEXT " + LOREM)
    two.y += 6
    two.line("Table 1: Accuracy of the models.")
    two.y += 4
    xs = [72.0, 220.0, 320.0]
    two.cells(["# Epochs", "Accuracy", "Loss"], xs)
    two.cells(["10", "91.2", "0.31"], xs)
    two.cells(["20", "93.5", "0.22"], xs)
    two.paragraph("AFTERTABLE " + LOREM)
    two.caps("", "REFERENCES")
    for number in range(1, 6):
        two.line(f"Author {number}. A cited paper number {number}. In Proceedings, 2020.")
    two.caps("A", "PROOFS OF THE CLAIMS")
    two.paragraph("PROOFTEXT " + LOREM * 2)
    two.done()
    if outline is not None:
        doc.set_toc(outline)
    doc.save(path)


@pytest.fixture
def iclr(tmp_path: Path) -> Path:
    path = tmp_path / "iclr.pdf"
    iclr_pdf(path)
    return path


def test_all_caps_small_capital_headings_are_sections(iclr: Path) -> None:
    paper = read_paper(iclr)
    assert [(s.number, s.heading, s.level) for s in paper.sections] == [
        ("1", "INTRODUCTION", 1),
        ("2", "METHOD", 1),
        ("2.1", "UPDATE RULE", 2),
        ("3", "EXPERIMENTS", 1),
        ("A", "PROOFS OF THE CLAIMS", 1),
    ]
    assert paper.abstract.startswith("ABSTRACTTEXT")
    assert "RULETEXT" in paper.sections[2].text and "INTROTEXT" in paper.sections[0].text


def test_all_caps_references_are_dropped_and_the_appendix_after_them_is_kept_and_marked(iclr: Path) -> None:
    paper = read_paper(iclr)
    text = paper.to_text()
    assert "A cited paper" not in text and any(d.startswith("references") for d in paper.dropped)
    assert "PROOFTEXT" in text
    assert [s.appendix for s in paper.sections] == [False, False, False, False, True]
    smaller = without_appendices(paper)
    assert "PROOFTEXT" not in smaller.to_text() and "INTROTEXT" in smaller.to_text()
    assert "the appendix (1 sections: A PROOFS OF THE CLAIMS)" in smaller.dropped[-1]


def test_authors_and_e_mails_before_the_abstract_stay_out_of_the_text(iclr: Path) -> None:
    paper = read_paper(iclr)
    assert paper.title == "AN ICLR STYLE PAPER ABOUT READING"
    text = paper.to_text()
    assert "Ann Author" not in text and "@example.org" not in text


def test_words_hyphenated_across_lines_are_joined_but_compounds_keep_their_hyphens(iclr: Path) -> None:
    intro = read_paper(iclr).sections[0].text
    assert "LANGUAGE modelling" in intro and "LAN-" not in intro
    assert "state-of-the-art in" in intro


def test_a_table_becomes_a_markdown_table_and_a_leading_hash_is_never_a_heading(iclr: Path) -> None:
    experiments = read_paper(iclr).sections[3].text
    assert (
        "| # Epochs | Accuracy | Loss |\n| --- | --- | --- |\n| 10 | 91.2 | 0.31 |\n| 20 | 93.5 | 0.22 |" in experiments
    )
    assert "AFTERTABLE" in experiments
    assert escape_markdown("# Epochs 10") == "\\# Epochs 10"
    assert escape_markdown("> quoted") == "\\> quoted" and escape_markdown("| a |") == "\\| a |"
    assert escape_markdown("An #1 result") == "An #1 result"


def test_a_body_line_starting_with_a_hash_is_escaped_in_the_text(tmp_path: Path) -> None:
    doc = pymupdf.open()
    page = Page(doc)
    page.line("A Paper With Hashes", size=17)
    page.line("1 Introduction", size=12, font=BOLD)
    page.paragraph(LOREM * 2)
    page.y += 8
    page.paragraph("# of parameters grows with depth. " + LOREM)
    page.done()
    path = tmp_path / "hash.pdf"
    doc.save(path)
    text = read_paper(path).to_text()
    assert "\n\\# of parameters grows with depth." in text
    assert "\n# of parameters" not in text


def test_the_outline_names_the_sections_even_without_bold_or_larger_headings(tmp_path: Path) -> None:
    """Headings set like body text are found from the PDF's outline, located in the page text; an outline
    entry that names no line in the text is left out."""
    doc = pymupdf.open()
    one = Page(doc)
    one.line("Plain Headings Everywhere", size=17)
    for number, name in (("1", "Introduction"), ("2", "Our Approach To Reading")):
        one.y += 8
        one.line(f"{number} {name}")
        one.paragraph(f"TEXT{number} " + LOREM * 2)
    one.y += 8
    one.line("2.1 A Heading Long Enough That It Wraps Onto")
    one.line("A Second Line")
    one.paragraph("WRAPTEXT " + LOREM * 2)
    one.done()
    doc.set_toc(
        [
            [1, "Introduction", 1],
            [1, "Our Approach To Reading", 1],
            [2, "A Heading Long Enough That It Wraps Onto A Second Line", 1],
            [1, "A Section That Is Not In The Text", 1],
        ]
    )
    path = tmp_path / "outline.pdf"
    doc.save(path)
    paper = read_paper(path)
    assert [(s.number, s.heading, s.level) for s in paper.sections] == [
        ("1", "Introduction", 1),
        ("2", "Our Approach To Reading", 1),
        ("2.1", "A Heading Long Enough That It Wraps Onto A Second Line", 2),
    ]
    assert "TEXT2" in paper.sections[1].text and "WRAPTEXT" in paper.sections[2].text


def test_a_bold_heading_wrapped_onto_two_lines_is_one_section(tmp_path: Path) -> None:
    doc = pymupdf.open()
    page = Page(doc)
    page.line("Wrapped Headings", size=17)
    page.line("1 Introduction", size=12, font=BOLD)
    page.paragraph(LOREM * 2)
    page.y += 8
    page.line("A.4 Comparison of BERT, ELMo, and", size=12, font=BOLD)
    page.line("OpenAI GPT", size=12, font=BOLD)
    page.paragraph("COMPARISON " + LOREM * 2)
    page.done()
    path = tmp_path / "wrapped.pdf"
    doc.save(path)
    sections = read_paper(path).sections
    assert [(s.number, s.heading) for s in sections] == [
        ("1", "Introduction"),
        ("A.4", "Comparison of BERT, ELMo, and OpenAI GPT"),
    ]
    assert sections[1].text.startswith("COMPARISON") and sections[1].appendix


def test_ligatures_math_letters_and_undecoded_tex_glyphs_become_plain_text() -> None:
    assert fold("e\ufb00ect of \ufb01ne-tuning") == "effect of fine-tuning"
    assert fold("\U0001d431 = \U0001d416\U0001d431") == "x = Wx"
    assert fold("x² ≤ α") == "x² ≤ α"  # only ligatures and math letters change
    assert repair_glyphs("E\u21b5ect of dropout", math_font=False) == "Effect of dropout"
    assert repair_glyphs("\u21b5 = 0.001, \u2713", math_font=True) == "α = 0.001, θ"


def one_line_pdf(path: Path, pages: int = 4) -> None:
    """The text layer of a broken export: one line of the whole text, running off the first page."""
    doc = pymupdf.open()
    for number in range(pages):
        page = doc.new_page()
        if number == 0:
            page.insert_text((50, 100), "Attention based models learn to translate. " * 400, fontsize=11)
    doc.save(path)


def test_a_pdf_whose_text_is_one_line_off_the_page_is_refused_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "oneline.pdf"
    one_line_pdf(path)
    with pytest.raises(PaperError) as caught:
        read_paper(path)
    message = str(caught.value)
    assert message.startswith("oneline.pdf: refused, only 0 characters of usable text")
    assert "outside the pages" in message and "ocrmypdf" in message


def test_a_pdf_with_a_huge_title_and_no_body_is_refused_by_the_command_with_exit_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = pymupdf.open()
    page = doc.new_page()
    page.insert_textbox(pymupdf.Rect(40, 40, 570, 760), "Huge " * 300, fontsize=14)
    for _ in range(3):
        doc.new_page()
    path = tmp_path / "title-only.pdf"
    doc.save(path)
    assert main(["paper", str(path)]) == 3
    err = capsys.readouterr().err
    assert err.startswith("p2c: error: title-only.pdf: refused") and err.count("\n") == 1
