"""Paper readers: the Transformer paper in every format, generated layouts, and unusual inputs.

Bad papers are in test_bad_papers.py; arbitrary bytes in test_properties.py.
"""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

import pymupdf
import pytest

from p2c_notebook.errors import PaperError
from p2c_notebook.paper import Paper, read_paper

EXAMPLE_PAPER_PDF = Path(__file__).resolve().parents[1] / "examples" / "mixup" / "paper.pdf"

PAPERS = Path(__file__).parents[1].parent / "shared/papers/transformer"
TOP_LEVEL = {
    "1": "Introduction",
    "2": "Background",
    "3": "Model Architecture",
    "4": "Why Self-Attention",
    "5": "Training",
    "6": "Results",
    "7": "Conclusion",
}
LOREM = (
    "Neural networks learn representations from data and we study how attention layers route "
    "information between positions in long sequences while keeping the computation parallel. "
)


def transformer(name: str) -> Path:
    path = PAPERS / name
    if not path.exists():
        pytest.skip(f"{path} is not available")
    return path


def numbered(paper: Paper) -> dict[str, str]:
    return {s.number: s.heading for s in paper.sections if s.number}


def assert_transformer(paper: Paper, *, results_heading: bool = True) -> None:
    assert "Attention Is All You Need" in paper.title
    assert paper.abstract.startswith("The dominant sequence transduction models")
    sections = numbered(paper)
    for number, heading in TOP_LEVEL.items():
        if number == "6" and not results_heading:
            assert "6.1" in sections
            continue
        assert sections.get(number) == heading, (number, sections)
    assert sections["3.2.1"] == "Scaled Dot-Product Attention"
    assert sections["3.2.2"] == "Multi-Head Attention"
    assert sections["5.3"] == "Optimizer"
    assert len(paper.captions) >= 5
    labels = {c.label for c in paper.captions}
    assert {"Figure 1", "Figure 2", "Table 1", "Table 2", "Table 3"} <= labels
    text = paper.to_text()
    assert not re.search(r"^\[\d+\] [A-Z]", text, re.M), "bibliography entries leaked into the text"
    assert "Jimmy Lei Ba" not in text
    assert "We are grateful to Nal Kalchbrenner" not in text


# --- the Transformer paper in each format ------------------------------------------------------


def test_transformer_pdf() -> None:
    paper = read_paper(transformer("Transformer.pdf"))
    assert_transformer(paper)
    assert paper.source_format == "pdf" and paper.pages == 15
    assert any("softmax" in e or "Attention(Q" in e for e in paper.equations)
    assert all(c.page for c in paper.captions)
    assert next(c for c in paper.captions if c.label == "Table 1").page == 6
    text = paper.to_text()
    assert "arXiv:1706.03762" not in text, "the rotated arXiv margin stamp leaked"
    assert text.index("3.1 Encoder and Decoder Stacks") < text.index("3.2 Attention")
    assert "Equal contribution" not in paper.abstract
    section = next(s for s in paper.sections if s.number == "3.2.1")
    assert section.page == 4 and "softmax" in section.text
    assert any(d.startswith("references") for d in paper.dropped)
    assert any(d.startswith("acknowledgements") for d in paper.dropped)
    assert any("arXiv" in d for d in paper.dropped)


def test_transformer_pdf_text_is_deterministic() -> None:
    path = transformer("Transformer.pdf")
    assert read_paper(path).to_text() == read_paper(path).to_text()


def test_transformer_latex() -> None:
    paper = read_paper(transformer("Transformer_cleaned.tex"))
    assert_transformer(paper)
    assert paper.source_format == "latex"
    assert any("\\mathrm{softmax}" in e for e in paper.equations)
    section = next(s for s in paper.sections if s.number == "3.2.1")
    assert "\\sqrt{d_k}" in section.text and "$$" in section.text
    assert "[cite]" in paper.to_text() and "\\citep" not in paper.to_text()
    assert len(paper.captions) == 9


def test_transformer_cleaned_json() -> None:
    paper = read_paper(transformer("Transformer_cleaned.json"))
    assert_transformer(paper, results_heading=False)
    assert paper.source_format == "s2orc"
    assert paper.title == "Attention Is All You Need"
    assert "acknowledgements" in paper.dropped
    assert len(paper.captions) == 9


def test_transformer_raw_json() -> None:
    paper = read_paper(transformer("Transformer.json"))
    assert_transformer(paper, results_heading=False)
    assert any("softmax" in e for e in paper.equations)
    assert "references" in paper.dropped
    section = next(s for s in paper.sections if s.number == "3.2.1")
    assert "softmax" in section.text and "EQUATION" not in section.text


# --- generated PDFs ------------------------------------------------------------------------------


def box(page: pymupdf.Page, rect: tuple[float, float, float, float], text: str, **style: object) -> None:
    assert page.insert_textbox(pymupdf.Rect(*rect), text, **style) >= 0, f"text does not fit: {text[:30]}"


def two_column_pdf(path: Path, pages: int = 1) -> None:
    """A two-column paper: full-width title and abstract, columns, header, page numbers, arXiv stamp."""
    doc = pymupdf.open()
    body = {"fontsize": 10, "align": pymupdf.TEXT_ALIGN_JUSTIFY}
    bold = {"fontsize": 11, "fontname": "hebo"}
    for number in range(1, pages + 1):
        page = doc.new_page(width=612, height=792)
        page.insert_text((72, 40), "Preprint under review - do not distribute", fontsize=8)
        page.insert_text((300, 760), str(number), fontsize=9)
        page.insert_text((30, 560), "arXiv:2401.00001v1 [cs.LG] 1 Jan 2024", fontsize=16, rotate=90)
        if number == 1:
            box(page, (72, 60, 540, 100), "Column Order Matters", fontsize=20, fontname="hebo", align=1)
            box(page, (72, 105, 540, 125), "Abstract", align=1, **bold)
            box(page, (90, 130, 522, 190), "We test the reading order of two-column papers. " * 4, **body)
            page.insert_text((72, 210), "1 Introduction", **bold)
            box(page, (72, 218, 300, 400), "LEFTFIRST " + LOREM * 3, **body)
            page.insert_text((72, 420), "2 Method", **bold)
            box(page, (72, 428, 300, 560), "LEFTSECOND " + LOREM * 2, **body)
            page.insert_text((100, 580), "y = W x + b", fontsize=10)
            page.insert_text((280, 580), "(1)", fontsize=10)
            box(page, (72, 590, 300, 720), "LEFTTHIRD " + LOREM * 2, **body)
            page.insert_text((312, 210), "3 Results", **bold)
            box(page, (312, 218, 540, 400), "RIGHTFIRST " + LOREM * 3, **body)
            box(page, (312, 410, 540, 440), "Table 1: Accuracy on the benchmark.", fontsize=10)
            page.insert_text((312, 460), "4 Conclusion", **bold)
            box(page, (312, 468, 540, 720), "RIGHTSECOND " + LOREM * 4, **body)
        else:
            page.insert_text((72, 210), f"{number + 3} Appendix Part", **bold)
            box(page, (72, 220, 300, 720), f"APPENDIX{number} " + LOREM * 8, **body)
            page.insert_text((312, 210), "References", **bold)
            refs = "".join(f"[{i}] A. Author. A cited paper number {i}. 2020.\n" for i in range(1, 12))
            box(page, (312, 220, 540, 720), refs, fontsize=10)
    doc.save(path)


def test_two_column_reading_order(tmp_path: Path) -> None:
    path = tmp_path / "two.pdf"
    two_column_pdf(path, pages=3)
    paper = read_paper(path)
    assert paper.title == "Column Order Matters"
    assert paper.abstract.startswith("We test the reading order")
    assert [s.number for s in paper.sections][:4] == ["1", "2", "3", "4"]
    assert [s.heading for s in paper.sections][:4] == ["Introduction", "Method", "Results", "Conclusion"]
    text = paper.to_text()
    marks = ["LEFTFIRST", "LEFTSECOND", "LEFTTHIRD", "RIGHTFIRST", "RIGHTSECOND"]
    positions = [text.index(mark) for mark in marks]
    assert positions == sorted(positions)
    assert "y = W x + b (1)" in paper.equations
    assert [(c.label, c.page) for c in paper.captions] == [("Table 1", 1)]
    assert "Preprint under review" not in text
    assert "arXiv:2401" not in text
    assert "A cited paper" not in text
    assert any(d.startswith("references") for d in paper.dropped)
    assert any(d.startswith("running headers") for d in paper.dropped)


def test_acl_style_first_page(tmp_path: Path) -> None:
    """Abstract in the left column, a footnote under it, a sentence running into the right column."""
    doc = pymupdf.open()
    page = doc.new_page(width=612, height=792)
    body = {"fontsize": 10, "align": pymupdf.TEXT_ALIGN_JUSTIFY}
    box(page, (72, 60, 540, 100), "Short Right Columns", fontsize=18, fontname="hebo", align=1)
    box(page, (72, 105, 540, 140), "Ann Author and Bob Writer\nSome University", fontsize=10, align=1)
    box(page, (72, 148, 300, 168), "Abstract", fontsize=11, fontname="hebo", align=1)
    box(page, (80, 170, 292, 300), "ABSTRACTTEXT " + LOREM * 2, **body)
    page.insert_text((72, 320), "1 Introduction", fontsize=11, fontname="hebo")
    box(page, (72, 328, 300, 640), "INTRO " + LOREM * 5 + "and the sentence continues", **body)
    box(page, (72, 690, 300, 720), "1Code is available online.", fontsize=8)
    box(page, (312, 150, 540, 300), "across the column break. " + LOREM * 2, **body)
    path = tmp_path / "acl.pdf"
    doc.save(path)
    paper = read_paper(path)
    assert paper.title == "Short Right Columns"
    assert paper.abstract.startswith("ABSTRACTTEXT") and "Ann Author" not in paper.to_text()
    intro = paper.sections[0]
    assert (intro.number, intro.heading) == ("1", "Introduction")
    assert "and the sentence continues across the column break." in intro.text
    assert intro.text.index("across the column break") < intro.text.index("Code is available")


def test_pdf_page_limit(tmp_path: Path) -> None:
    path = tmp_path / "long.pdf"
    two_column_pdf(path, pages=5)
    paper = read_paper(path, max_pages=2)
    assert paper.pages == 5 and paper.pages_read == 2
    assert "pages 3-5 (over the 2-page limit)" in paper.dropped


# --- reader choice ---------------------------------------------------------------------------------


def expect_error(path: Path, *fragments: str) -> PaperError:
    with pytest.raises(PaperError) as caught:
        read_paper(path)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, message
    return caught.value


def test_pdf_sniffed_by_content_not_extension(tmp_path: Path) -> None:
    path = tmp_path / "paper.download"
    two_column_pdf(tmp_path / "real.pdf")
    path.write_bytes((tmp_path / "real.pdf").read_bytes())
    assert read_paper(path).source_format == "pdf"


# --- LaTeX ---------------------------------------------------------------------------------------

MAIN_TEX = r"""\documentclass{article}
\newcommand{\dmodel}{d_{\text{model}}}
\title{A Bundled Paper\thanks{Work in progress.}}
\author{Ann Author}
\begin{document}
\maketitle
\begin{abstract}
We show that \emph{bundles} work. % a comment that must vanish
\end{abstract}
\input{sections/intro}
\section{Method}\label{sec:method}
The loss is 5\% lower, see Section~\ref{sec:intro} and Eq.~\eqref{eq:loss} \citep{smith2020}.
\begin{equation}
\mathcal{L} = \sum_i \ell(x_i, \dmodel) \label{eq:loss}
\end{equation}
\begin{figure}[t]
\includegraphics{fig.png}
\caption{A \textbf{figure} caption.}\label{fig:one}
\end{figure}
\subsection*{Details}
Figure~\ref{fig:one} shows it.
\section*{Acknowledgements}
We thank our funders.
\bibliography{refs}
\end{document}
"""


def test_latex_bundle(tmp_path: Path) -> None:
    path = tmp_path / "source.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for name, text in {
            "main.tex": MAIN_TEX,
            "sections/intro.tex": "\\section{Introduction}\\label{sec:intro}\nINTROTEXT with $x^2$.\n",
        }.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    paper = read_paper(path)
    assert paper.title == "A Bundled Paper"
    assert paper.abstract == "We show that bundles work."
    assert [(s.number, s.heading, s.level) for s in paper.sections] == [
        ("1", "Introduction", 1),
        ("2", "Method", 1),
        (None, "Details", 2),
    ]
    assert "INTROTEXT with $x^2$." in paper.sections[0].text
    method = paper.sections[1].text
    assert "5% lower, see Section 1 and Eq. (1) [cite]." in method
    assert paper.equations == ["\\mathcal{L} = \\sum_i \\ell(x_i, d_{\\text{model}})"]
    assert "$$\n\\mathcal{L}" in method
    assert [(c.kind, c.label, c.text) for c in paper.captions] == [("figure", "Figure 1", "A figure caption.")]
    assert paper.sections[2].text == "Figure 1 shows it."
    assert paper.dropped == ["references", "acknowledgements"]
    assert "We thank" not in paper.to_text()


def test_latex_bundle_rejects_path_traversal(tmp_path: Path) -> None:
    path = tmp_path / "evil.tgz"
    with tarfile.open(path, "w:gz") as archive:
        for name, text in {
            "main.tex": "\\documentclass{article}\\begin{document}\\input{../outside}\\end{document}",
            "../outside.tex": "\\section{Evil}",
        }.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    expect_error(path, "outside the LaTeX source")
    assert not (tmp_path.parent / "outside.tex").exists()


def test_latex_folder(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "sections").mkdir(parents=True)
    (source / "notes.tex").write_text("\\section{Not the main file}")
    (source / "paper.tex").write_text(MAIN_TEX)
    (source / "sections" / "intro.tex").write_text("\\section{Introduction}\nHello.\n")
    paper = read_paper(source)
    assert paper.title == "A Bundled Paper"
    assert paper.sections[0].heading == "Introduction"


def test_latex_input_cycle(tmp_path: Path) -> None:
    (tmp_path / "a.tex").write_text("\\documentclass{article}\\begin{document}\\input{b}\\end{document}")
    (tmp_path / "b.tex").write_text("\\section{B}\\input{a}")
    expect_error(tmp_path / "a.tex", "cycle", "a.tex -> b.tex -> a.tex")


def test_folder_without_tex(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("# Hi")
    expect_error(tmp_path, "no .tex files")


def test_tex_without_document_or_sections(tmp_path: Path) -> None:
    path = tmp_path / "notes.tex"
    path.write_text("just some words, no structure at all")
    expect_error(path, "notes.tex", "\\begin{document}")


# --- JSON, Markdown, text ------------------------------------------------------------------------


def test_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "paper.json"
    path.write_text("{not json")
    expect_error(path, "paper.json", "not valid JSON")


def test_json_of_another_shape(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text('[{"a": 1}]')
    expect_error(path, "data.json", "not an s2orc paper")


def test_markdown(tmp_path: Path) -> None:
    path = tmp_path / "paper.md"
    path.write_text(
        "# A Markdown Paper\n\n## Abstract\n\nShort abstract.\n\n## 1 Introduction\n\nIntro text.\n\n"
        "### 1.1 Setup\n\nThe model is\n\n$$\ny = f(x)\n$$\n\nFigure 1: A caption.\n\n"
        "## References\n\n[1] Someone. 2020.\n\n## Appendix\n\nMore.\n"
    )
    paper = read_paper(path)
    assert paper.title == "A Markdown Paper" and paper.abstract == "Short abstract."
    assert [(s.number, s.heading, s.level) for s in paper.sections] == [
        ("1", "Introduction", 1),
        ("1.1", "Setup", 2),
        (None, "Appendix", 1),
    ]
    assert paper.equations == ["y = f(x)"]
    assert "$$\ny = f(x)\n$$" in paper.sections[1].text
    assert [c.label for c in paper.captions] == ["Figure 1"]
    assert "Someone" not in paper.to_text() and paper.dropped == ["references"]


def test_plain_text(tmp_path: Path) -> None:
    path = tmp_path / "paper.txt"
    path.write_text("\n\nPlain Title\n\nAbstract\n\nThe abstract.\n\n1 Introduction\n\nBody text here.\n")
    paper = read_paper(path)
    assert paper.title == "Plain Title" and paper.abstract == "The abstract."
    assert [(s.number, s.heading) for s in paper.sections] == [("1", "Introduction")]


def test_empty_markdown(tmp_path: Path) -> None:
    path = tmp_path / "empty.md"
    path.write_text("  \n\n")
    expect_error(path, "empty.md", "is empty")


def test_missing_file_and_unknown_format(tmp_path: Path) -> None:
    expect_error(tmp_path / "nope.pdf", "nope.pdf", "does not exist")
    path = tmp_path / "paper.docx"
    path.write_bytes(b"\x00\x01binary")
    expect_error(path, "paper.docx", "unknown paper format")


def test_the_report_says_how_much_compaction_saved() -> None:
    report = read_paper(EXAMPLE_PAPER_PDF).report()
    assert report.source_characters is not None and report.source_characters > report.characters
    assert "% less than the" in report.summary() and "references" in report.summary()


def test_a_reader_that_stops_early_gets_no_traceback(tmp_path: Path) -> None:
    import subprocess

    shell = f"p2c paper {EXAMPLE_PAPER_PDF} --text | head -c 20"
    done = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in done.stderr and len(done.stdout) == 20
