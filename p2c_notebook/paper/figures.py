"""Where a PDF page's figures are: embedded images and clusters of vector drawing that are pictures.

The PDF reader keeps the text inside these regions (axis labels, tick labels, boxes of a diagram) out of the body
paragraphs: interleaved with the prose it reads as noise and costs tokens. A cluster of drawing is a picture when
it holds curves, slanted lines or colour; rules and grids alone (tables, boxes around text) are not. The
benchmark (`benchmarks/bench_reader_eval.py`) measures leakage with its own, independent yardstick.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymupdf as _pymupdf

from p2c_notebook.paper.model import Caption, Paper

pymupdf: Any = _pymupdf  # untyped library

MAX_PATHS = 6000  # drawing paths looked at per page: a plot of 100k points is a figure long before its last point
MIN_IMAGE_SHARE = 0.005  # of the page area: smaller images are logos, icons or glyphs drawn as images
MIN_DRAWING_SHARE = 0.012  # of the page area: smaller clusters are arrows, brackets or rules in the text
_TOUCH = 3.0  # points: drawings this close belong to the same figure
_THIN = 1.5  # points: a path thinner than this in width or height is a line (rule, axis, arrow shaft)
_STICK_OUT = 6.0  # points a line may reach past the one cluster it touches and still belong to it
_COVER = 0.9  # a path covering this share of the page is a page background, not a figure


@dataclass(frozen=True)
class Region:
    """A figure's bounding box on its page (PDF points, y down) and what it was found from."""

    x0: float
    y0: float
    x1: float
    y1: float
    kind: str  # "image" | "drawing"

    @property
    def area(self) -> float:
        return max(0.0, self.x1 - self.x0) * max(0.0, self.y1 - self.y0)

    def overlap(self, box: tuple[float, float, float, float], margin: float = 0.0) -> float:
        """The share of `box`'s area inside this region grown by `margin` points."""
        x0, y0, x1, y1 = box
        width = min(x1, self.x1 + margin) - max(x0, self.x0 - margin)
        height = min(y1, self.y1 + margin) - max(y0, self.y0 - margin)
        area = max(x1 - x0, 0.01) * max(y1 - y0, 0.01)
        return max(0.0, width) * max(0.0, height) / area


def _grey(colour: Any) -> bool:
    return not colour or max(colour) - min(colour) < 0.1


def _pictorial(path: dict[str, Any]) -> bool:
    """Curves, slanted lines or colour: what plots and diagrams are made of and tables are not."""
    if path.get("fill") is not None and not _grey(path["fill"]) and path.get("fill_opacity", 1.0) > 0:
        return True
    if path.get("color") is not None and not _grey(path["color"]):
        return True
    for item in path["items"]:
        if item[0] in ("c", "qu"):
            return True
        if item[0] == "l":
            (ax, ay), (bx, by) = item[1], item[2]
            if abs(ax - bx) > 1 and abs(ay - by) > 1:
                return True
    return False


def _framing(path: dict[str, Any], page_area: float) -> bool:
    """Whether a path can be part of a figure: anything but a page background. Invisible and white boxes count:
    drawing programs frame a figure with one, and a plot's white background holds its curves together."""
    x0, y0, x1, y1 = (float(v) for v in path["rect"])
    return bool((x1 - x0) * (y1 - y0) < _COVER * page_area)


def _clipped_paths(
    entries: list[dict[str, Any]], page_area: float
) -> list[tuple[tuple[float, float, float, float], bool]]:
    """Visible paths as (box cut to the clip paths around it, pictorial): a bar of a bar chart may run far past
    the plot's clip rectangle, and only the part shown belongs to the figure."""
    clips: list[tuple[int, tuple[float, float, float, float]]] = []  # (nesting level, scissor box)
    paths: list[tuple[tuple[float, float, float, float], bool]] = []
    for entry in entries:
        level = int(entry.get("level", 0))
        while clips and clips[-1][0] >= level:
            clips.pop()
        kind = entry.get("type")
        if kind == "clip":
            clips.append((level, tuple(float(v) for v in entry["scissor"])))  # type: ignore[arg-type]
            continue
        if kind == "group" or "items" not in entry or not _framing(entry, page_area):
            continue
        x0, y0, x1, y1 = (float(v) for v in entry["rect"])
        for _, (cx0, cy0, cx1, cy1) in clips:
            x0, y0, x1, y1 = max(x0, cx0), max(y0, cy0), min(x1, cx1), min(y1, cy1)
        if x1 >= x0 and y1 >= y0:
            paths.append(((x0, y0, x1, y1), _pictorial(entry)))
    return paths


def _touch(a: list[float], b: tuple[float, float, float, float] | list[float], slack: float = _TOUCH) -> bool:
    return a[0] - slack <= b[2] and b[0] - slack <= a[2] and a[1] - slack <= b[3] and b[1] - slack <= a[3]


def _clusters(paths: list[tuple[tuple[float, float, float, float], bool]]) -> list[tuple[list[float], bool]]:
    """Group drawn paths into clusters (box, holds a pictorial path).

    Shapes (boxes, fills, curves, markers) that touch within `_TOUCH` points form a cluster. A thin straight line
    joins the clusters it touches at both ends (an arrow between two boxes of a diagram) or the one it barely
    sticks out of (a plot's tick mark); it does not carry a cluster along: rules of a table set right below a
    plot would otherwise make the table part of the figure.
    """
    shapes = [p for p in paths if p[1] or (p[0][2] - p[0][0] > _THIN and p[0][3] - p[0][1] > _THIN)]
    lines = [p[0] for p in paths if not (p[1] or (p[0][2] - p[0][0] > _THIN and p[0][3] - p[0][1] > _THIN))]
    clusters: list[tuple[list[float], bool]] = []
    for (x0, y0, x1, y1), pictorial in sorted(shapes, key=lambda p: (p[0][1], p[0][0])):
        box, picture = [x0, y0, x1, y1], pictorial
        keep = []
        for other, other_picture in clusters:
            if _touch(other, box):
                box = [min(box[0], other[0]), min(box[1], other[1]), max(box[2], other[2]), max(box[3], other[3])]
                picture = picture or other_picture
            else:
                keep.append((other, other_picture))
        clusters = [*keep, (box, picture)]
    for line in lines:
        touched = [c for c in clusters if _touch(c[0], line)]
        if not touched:
            continue
        box = [min(c[0][0] for c in touched), min(c[0][1] for c in touched)]
        box += [max(c[0][2] for c in touched), max(c[0][3] for c in touched)]
        inside = (
            line[0] >= box[0] - _STICK_OUT
            and line[1] >= box[1] - _STICK_OUT
            and line[2] <= box[2] + _STICK_OUT
            and line[3] <= box[3] + _STICK_OUT
        )
        if len(touched) == 1 and not inside:
            continue
        merged = [min(box[0], line[0]), min(box[1], line[1]), max(box[2], line[2]), max(box[3], line[3])]
        clusters = [c for c in clusters if all(c is not t for t in touched)] + [(merged, any(c[1] for c in touched))]
    return clusters


def _merge(regions: list[Region]) -> list[Region]:
    """Regions that overlap joined into one (a plot drawn over an image, sub-figures side by side that touch)."""
    merged: list[Region] = []
    for region in sorted(regions, key=lambda r: (r.y0, r.x0)):
        for index, other in enumerate(merged):
            if (
                other.overlap((region.x0, region.y0, region.x1, region.y1)) > 0
                or region.overlap((other.x0, other.y0, other.x1, other.y1)) > 0
            ):
                kind = other.kind if other.kind == region.kind else "drawing"
                merged[index] = Region(
                    min(other.x0, region.x0),
                    min(other.y0, region.y0),
                    max(other.x1, region.x1),
                    max(other.y1, region.y1),
                    kind,
                )
                break
        else:
            merged.append(region)
    return merged


@dataclass(frozen=True)
class Graphics:
    """What a page's drawing tells the reader: figure regions, and vertical rules (x, y0, y1) that separate the
    cells of a ruled table."""

    regions: list[Region]
    rules: list[tuple[float, float, float]]


def page_graphics(page: Any) -> Graphics:
    """The figure regions (images and pictorial drawing clusters, clipped to the page) and vertical rules of a
    pymupdf page, from one pass over its drawing."""
    rect = page.rect
    page_area = max(float(rect.width * rect.height), 1.0)
    regions: list[Region] = []
    if page.get_images():  # reading the page's resources is cheap; locating images interprets the page
        for info in page.get_image_info():
            x0, y0, x1, y1 = info["bbox"]
            x0, y0, x1, y1 = max(x0, rect.x0), max(y0, rect.y0), min(x1, rect.x1), min(y1, rect.y1)
            region = Region(x0, y0, x1, y1, "image")
            if MIN_IMAGE_SHARE * page_area <= region.area < _COVER * page_area:
                regions.append(region)
    paths = _clipped_paths(page.get_cdrawings(extended=True)[:MAX_PATHS], page_area)
    for (x0, y0, x1, y1), picture in _clusters(paths):
        x0, y0, x1, y1 = max(x0, rect.x0), max(y0, rect.y0), min(x1, rect.x1), min(y1, rect.y1)
        region = Region(x0, y0, x1, y1, "drawing")
        if picture and region.area >= MIN_DRAWING_SHARE * page_area:
            regions.append(region)
    rules = [
        ((box[0] + box[2]) / 2, box[1], box[3])
        for box, pictorial in paths
        if not pictorial and box[2] - box[0] < _THIN and box[3] - box[1] > 4
    ]
    return Graphics(regions=_merge(regions), rules=rules)


def figure_regions(page: Any) -> list[Region]:
    """The figure regions of a pymupdf page: images and pictorial drawing clusters, clipped to the page."""
    return page_graphics(page).regions


MAX_FIGURES = 20  # figures rendered into a run folder
MAX_PIXELS = 1_200_000  # per figure image (about 1270 x 945): enough to read, small enough to send a model
MAX_ZOOM = 2.0  # 144 dpi at most
_FRAME = 10.0  # points around the region: tick labels and axis titles sit just outside a plot's frame


def render_figures(
    path: Path, paper: Paper, *, limit: int = MAX_FIGURES, max_pixels: int = MAX_PIXELS
) -> tuple[Paper, dict[str, bytes]]:
    """PNG images of the paper's figures (captions of kind "figure" with a region), at most `limit` of them and
    `max_pixels` each; the paper comes back with each rendered caption's `image` set ("figures/figN.png")."""
    files: dict[str, bytes] = {}
    captions: list[Caption] = []
    with pymupdf.open(str(path), filetype="pdf") as doc:
        for caption in paper.captions:
            page_no = (caption.page or 0) - 1
            if caption.kind != "figure" or caption.box is None or len(files) >= limit or not 0 <= page_no < len(doc):
                captions.append(caption)
                continue
            page = doc[page_no]
            x0, y0, x1, y1 = caption.box
            clip = pymupdf.Rect(x0 - _FRAME, y0 - _FRAME, x1 + _FRAME, y1 + _FRAME) & page.rect
            if clip.is_empty:
                captions.append(caption)
                continue
            zoom = min(MAX_ZOOM, math.sqrt(max_pixels / max(clip.width * clip.height, 1.0)))
            pixmap = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), clip=clip, alpha=False)
            name = f"figures/fig{len(files) + 1}.png"
            files[name] = pixmap.tobytes("png")
            captions.append(caption.model_copy(update={"image": name}))
    return paper.model_copy(update={"captions": captions}), files
