"""Figures in a PDF: their text stays out of the paragraphs and goes with the caption; ruled tables stay tables.

The papers are built here with pymupdf: a box diagram drawn with vector strokes and arrows, an embedded image
with labels written over it, a shaded box of prose, and a table with narrow cells between vertical rules.
"""

from __future__ import annotations

import json
from pathlib import Path

import pymupdf
from pdfpages import BOLD, PROSE, PdfPage, box_diagram

from p2c_notebook.paper import read_paper
from p2c_notebook.paper.figures import MAX_PIXELS, figure_regions, render_figures
from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.settings import Settings

BODY = 10.0
LABELS = ("Tokenizer", "Embedder", "Classifier", "Saliency", "Heatmap")


def image_with_labels(page: PdfPage, top: float) -> float:
    """An embedded raster image with words written over it (a heat map and its legend)."""
    page.image(pymupdf.Rect(180, top, 430, top + 90), (200, 120, 40))
    page.page.insert_text((190, top + 20), LABELS[3], fontname="helv", fontsize=9)
    page.page.insert_text((330, top + 80), LABELS[4], fontname="helv", fontsize=9)
    return top + 90


def figures_pdf(path: Path) -> None:
    doc = pymupdf.open()
    page = PdfPage(doc)
    page.line("Attention Routes Information", size=18, font=BOLD)
    page.y += 8
    page.line("Abstract", size=12, font=BOLD)
    page.paragraph("We study attention. " + PROSE)
    page.y += 8
    page.line("1 Introduction", size=12, font=BOLD)
    page.paragraph("First paragraph before the diagram. " + PROSE)
    page.y = box_diagram(page.page, page.y + 14, LABELS[:3]) + 16
    page.line("Figure 1: The pipeline, from tokens to classes.")
    page.paragraph("Second paragraph between the figures. " + PROSE)
    page.y = image_with_labels(page, page.y + 10) + 16
    page.line("Figure 2: Where the model looks.")
    page.paragraph("Third paragraph after the image. " + PROSE)
    page.y += 8
    page.line("2 Method", size=12, font=BOLD)
    page.paragraph("The method section. " + PROSE * 2)
    page.done()
    doc.save(path)


def test_labels_of_a_drawn_diagram_and_of_an_image_stay_out_of_the_paragraphs(tmp_path: Path) -> None:
    figures_pdf(tmp_path / "figures.pdf")
    paper = read_paper(tmp_path / "figures.pdf")
    body = "\n".join(s.text for s in paper.sections)
    assert [s.heading for s in paper.sections] == ["Introduction", "Method"]
    assert [label for label in LABELS if label in body] == []
    intro = paper.sections[0].text.split("\n\n")
    assert [p.split(".")[0] for p in intro] == [
        "First paragraph before the diagram",
        "Second paragraph between the figures",
        "Third paragraph after the image",
    ]
    assert all(p.endswith("whole batch of examples.") for p in intro)


def test_figure_text_is_kept_with_its_caption(tmp_path: Path) -> None:
    figures_pdf(tmp_path / "figures.pdf")
    paper = read_paper(tmp_path / "figures.pdf")
    captions = {c.label: c for c in paper.captions}
    assert captions["Figure 1"].figure_text == "Tokenizer Embedder Classifier"
    assert captions["Figure 2"].figure_text == "Saliency Heatmap"
    assert "- Figure 1: The pipeline, from tokens to classes. (Figure text: Tokenizer Embedder Classifier)" in (
        paper.to_text()
    )
    assert any(d.startswith("text inside figures (5 lines, 5 kept with their captions)") for d in paper.dropped)


def test_a_shaded_box_of_prose_and_a_page_of_plain_text_are_no_figures(tmp_path: Path) -> None:
    doc = pymupdf.open()
    page = PdfPage(doc)
    page.line("Shaded Boxes", size=18, font=BOLD)
    page.y += 8
    page.line("1 Introduction", size=12, font=BOLD)
    top = page.y
    page.paragraph("Inside the shaded box. " + PROSE * 2)
    page.page.draw_rect(pymupdf.Rect(66, top - 4, 546, page.y + 4), color=None, fill=(0.85, 0.9, 1.0), overlay=False)
    page.paragraph("After the box. " + PROSE)
    page.done()
    doc.save(tmp_path / "boxed.pdf")
    with pymupdf.open(tmp_path / "boxed.pdf") as check:
        assert len(figure_regions(check[0])) == 1  # the shaded box is pictorial (colour) ...
    paper = read_paper(tmp_path / "boxed.pdf")
    assert "Inside the shaded box." in paper.sections[0].text  # ... but its text reads as prose: kept
    assert not any(d.startswith("text inside figures") for d in paper.dropped)


def test_a_table_with_narrow_cells_between_vertical_rules_is_a_markdown_table(tmp_path: Path) -> None:
    doc = pymupdf.open()
    page = PdfPage(doc)
    page.line("Ruled Tables", size=18, font=BOLD)
    page.y += 8
    page.line("1 Results", size=12, font=BOLD)
    page.paragraph("The table below lists the error rates. " + PROSE)
    page.y += 12
    xs = [200.0, 250.0, 300.0, 350.0]
    rows = [["", "SGD", "Adam", "Ours"], ["lr 1", "2.26%", "8.68%", "1.76%"], ["lr 2", "2.51%", "2.03%", "2.82%"]]
    top = page.y - BODY
    for cells in rows:
        page.cells(cells, [x + 4 for x in xs])
    shape = page.page.new_shape()
    for x in [*xs, 400.0]:
        shape.draw_line((x, top), (x, page.y - BODY))
    shape.finish(color=(0, 0, 0), width=0.5)
    shape.commit()
    page.y += 6
    page.paragraph("After the table. " + PROSE)
    page.done()
    doc.save(tmp_path / "ruled.pdf")
    text = read_paper(tmp_path / "ruled.pdf").sections[0].text
    assert "|  | SGD | Adam | Ours |\n| --- | --- | --- | --- |\n| lr 1 | 2.26% | 8.68% | 1.76% |" in text


def test_a_pdf_read_into_a_run_keeps_its_figures_as_bounded_images_beside_their_captions(tmp_path: Path) -> None:
    figures_pdf(tmp_path / "figures.pdf")
    settings = Settings.model_validate({"model": "gpt-4o-mini", "api_key": "sk-test", "base_url": "http://127.0.0.1:9"})
    with Pipeline.start(tmp_path / "figures.pdf", tmp_path / "run", settings=settings) as pipeline:
        folder = pipeline.store.root / "paper"
    saved = json.loads((folder / "paper.json").read_text())
    images = {c["label"]: c["image"] for c in saved["captions"]}
    assert images == {"Figure 1": "figures/fig1.png", "Figure 2": "figures/fig2.png"}
    for name in images.values():
        with pymupdf.open(folder / name) as image:  # a PNG pymupdf can open, within the pixel bound
            pixmap = image[0].get_pixmap()
            assert 0 < pixmap.width * pixmap.height <= MAX_PIXELS
    # Bounded in number: at most `limit` figures are rendered, the other captions keep no image.
    paper, files = render_figures(tmp_path / "figures.pdf", read_paper(tmp_path / "figures.pdf"), limit=1)
    assert list(files) == ["figures/fig1.png"] and [c.image for c in paper.captions] == ["figures/fig1.png", None]
