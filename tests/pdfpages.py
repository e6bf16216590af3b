"""Small papers written with pymupdf for the reader tests: one page at a time, text placed top to bottom.

One writer for every test that builds a PDF by hand, so that all of them set lines, wrapped paragraphs, table
rows and images the same way (and a change to how they are set is made once).
"""

from __future__ import annotations

from collections.abc import Sequence

import pymupdf

SERIF = pymupdf.Font("tiro")
BOLD = pymupdf.Font("tibo")
PROSE = (
    "We train the model on long sequences and report how the attention layers route information between "
    "positions while the computation stays parallel across the whole batch of examples. "
)


class PdfPage:
    """A US-letter page of `doc` written top to bottom from `top`; `done()` puts the text on the page.

    `y` is the baseline of the next line; tests move it to leave gaps or to draw figures between the lines.
    """

    def __init__(self, doc: pymupdf.Document, *, top: float = 72.0, body: float = 10.0) -> None:
        self.page = doc.new_page(width=612, height=792)
        self.writer = pymupdf.TextWriter(self.page.rect)
        self.y = top
        self.body = body

    def line(self, text: str, *, size: float | None = None, font: pymupdf.Font = SERIF, x: float = 72) -> None:
        size = self.body if size is None else size
        self.writer.append((x, self.y), text, font=font, fontsize=size)
        self.y += size + 2.5

    def paragraph(self, text: str, *, width: float = 468, size: float | None = None) -> None:
        """Text wrapped at `width` points (the column of a one-column paper), one line a row, after a gap."""
        size = self.body if size is None else size
        self.y += 6
        current = ""
        for word in text.split():
            trial = f"{current} {word}".strip()
            if SERIF.text_length(trial, fontsize=size) > width and current:
                self.line(current, size=size)
                current = word
            else:
                current = trial
        if current:
            self.line(current, size=size)

    def cells(self, cells: list[str], xs: list[float]) -> None:
        """One table row: each cell at its x, on one baseline."""
        for text, x in zip(cells, xs, strict=True):
            self.writer.append((x, self.y), text, font=SERIF, fontsize=self.body)
        self.y += self.body + 4

    def image(self, area: pymupdf.Rect, rgb: tuple[int, int, int]) -> None:
        """An embedded raster image (64x32 pixels of one colour) stretched over `area`."""
        pixmap = pymupdf.Pixmap(pymupdf.csRGB, pymupdf.IRect(0, 0, 64, 32), False)
        pixmap.set_rect(pixmap.irect, rgb)
        self.page.insert_image(area, pixmap=pixmap)

    def done(self) -> None:
        self.writer.write_text(self.page)


def box_diagram(page: pymupdf.Page, top: float, labels: Sequence[str]) -> float:
    """Three labelled boxes joined by arrows (shafts and slanted arrow heads), as a drawing program draws them;
    returns the diagram's bottom."""
    shape = page.new_shape()
    xs = [100.0, 250.0, 400.0]
    for x in xs:
        shape.draw_rect(pymupdf.Rect(x, top, x + 110, top + 40))
    for x in xs[:2]:
        start, end = pymupdf.Point(x + 110, top + 20), pymupdf.Point(x + 150, top + 20)
        shape.draw_line(start, end)
        shape.draw_polyline([end + (-6, -4), end, end + (-6, 4)])
    shape.finish(color=(0, 0, 0), width=0.8)
    shape.commit()
    for x, label in zip(xs, labels, strict=True):
        page.insert_text((x + 12, top + 24), label, fontname="helv", fontsize=9)
    return top + 40
