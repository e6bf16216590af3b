"""`read_paper`: pick the reader from the file's content (magic bytes) first, its extension second."""

from __future__ import annotations

import codecs
import os
from pathlib import Path

from p2c_notebook.errors import PaperError
from p2c_notebook.paper.latex import read_latex, read_latex_bundle, read_latex_folder
from p2c_notebook.paper.model import Paper, limit_characters
from p2c_notebook.paper.pdf import DEFAULT_MAX_CHARS, DEFAULT_MAX_PAGES, read_pdf
from p2c_notebook.paper.s2orc import read_s2orc
from p2c_notebook.paper.text import MAX_TEXT_BYTES, read_markdown, read_text

SUPPORTED = "PDF, LaTeX (.tex, a source folder, .tar.gz/.tgz/.zip bundle), s2orc .json, Markdown (.md) or .txt"
_BUNDLES = (".tar.gz", ".tgz", ".tar", ".zip", ".gz")
_MIN_CHARS = 1000

# What a file named .pdf really is, judged by its first bytes: (magic, what it is, what to do).
_IMPOSTORS = (
    (
        b"PK\x03\x04",
        "a ZIP archive (a Word .docx, or a zipped source bundle)",
        "export the paper as PDF, or rename a LaTeX source bundle to .zip",
    ),
    (
        b"\x1f\x8b",
        "a gzip archive (arXiv serves LaTeX sources like this)",
        "rename it to .tar.gz to read the LaTeX source, or download the PDF",
    ),
    (b"\x89PNG", "a PNG image", "download the paper's PDF"),
    (b"\xff\xd8\xff", "a JPEG image", "download the paper's PDF"),
    (b"%!PS", "a PostScript file", "convert it with `ps2pdf paper.ps paper.pdf`"),
    (b"AT&TFORM", "a DjVu file", "convert it to PDF (e.g. `ddjvu -format=pdf`)"),
    (b"{\\rtf", "an RTF document", "export the paper as PDF"),
    (b"\xd0\xcf\x11\xe0", "an old Word/Office document", "export the paper as PDF"),
)


def _not_pdf(path: Path, head: bytes) -> PaperError:
    lowered = head.lstrip().lower()
    if lowered.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")) or b"<html" in lowered[:512]:
        return PaperError(
            f"{path.name} is an HTML page saved with a .pdf name, not a PDF (the download probably saved "
            "the web page around the paper): download the PDF itself, e.g. https://arxiv.org/pdf/<id>."
        )
    for magic, what, todo in _IMPOSTORS:
        if head.startswith(magic):
            return PaperError(f"{path.name} is {what}, not a PDF: {todo}.")
    if b"\\documentclass" in head or b"\\section" in head:
        return PaperError(f"{path.name} is LaTeX source, not a PDF: rename it to .tex, or give the PDF.")
    kind = "binary data" if b"\x00" in head else "text"
    return PaperError(
        f"{path.name} is not a PDF (it holds {kind} and does not start with %PDF-): re-download the paper, "
        f"or give a file in one of the supported formats: {SUPPORTED}."
    )


def read_paper(
    path: str | os.PathLike[str], *, max_pages: int = DEFAULT_MAX_PAGES, max_chars: int = DEFAULT_MAX_CHARS
) -> Paper:
    """Read a paper from a PDF, LaTeX source, s2orc JSON, Markdown or text file.

    Limits keep the work and the prompt bounded: at most `max_pages` pages of a PDF are read, and the text
    the model sees (`Paper.to_text`) is cut to `max_chars` characters (at least 1,000) from the end. What is
    skipped is listed in `Paper.dropped` (and so in the report); text files over 20 MB are refused.
    """
    max_chars = max(max_chars, _MIN_CHARS)
    paper = _read(Path(path), max_pages, max_chars)
    if paper.source_characters is None and Path(path).is_file() and paper.source_format != "pdf":
        paper = paper.model_copy(update={"source_characters": _text_length(Path(path))})
    return limit_characters(paper, max_chars)


def _text_length(path: Path) -> int | None:
    """Characters of a text source (LaTeX, s2orc JSON, Markdown), to report what compaction saved."""
    if path.stat().st_size > MAX_TEXT_BYTES:
        return None
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    count = 0
    try:
        with path.open("rb") as handle:  # in chunks: the whole file decoded at once would double the peak
            while chunk := handle.read(1 << 20):
                count += len(decoder.decode(chunk))
    except OSError:
        return None
    return count + len(decoder.decode(b"", final=True))


def _read(path: Path, max_pages: int, max_chars: int) -> Paper:
    if not path.exists():
        raise PaperError(f"{path} does not exist: check the path (it is relative to {Path.cwd()}).")
    if path.is_dir():
        return read_latex_folder(path)
    if not path.is_file():
        raise PaperError(f"{path} is not a regular file: give the paper's PDF, LaTeX or text file.")
    try:
        with path.open("rb") as handle:
            head = handle.read(1024)
    except OSError as exc:
        raise PaperError(f"{path} cannot be read ({exc.strerror}): check its permissions.") from exc
    if not head:
        raise PaperError(f"{path.name} is empty (0 bytes): the download or export failed; fetch it again.")
    name = path.name.lower()
    if b"%PDF-" in head:
        return read_pdf(path, max_pages=max_pages, max_chars=max_chars)
    if name.endswith(".pdf"):
        raise _not_pdf(path, head)
    if head.startswith((b"\x1f\x8b", b"PK\x03\x04")) or name.endswith(_BUNDLES) or head[257:262] == b"ustar":
        return read_latex_bundle(path)
    size = path.stat().st_size
    if size > MAX_TEXT_BYTES:
        raise PaperError(
            f"{path.name} is {size / 2**20:.0f} MB, too large for a paper's text (the limit is "
            f"{MAX_TEXT_BYTES // 2**20} MB): check that you picked the right file, or give the paper's PDF."
        )
    suffix = path.suffix.lower()
    if suffix in (".tex", ".ltx", ".latex"):
        return read_latex(path)
    if suffix == ".json":
        return read_s2orc(path)
    if suffix in (".md", ".markdown", ".mdown"):
        return read_markdown(path)
    if suffix == ".txt":
        return read_text(path)
    stripped = head.lstrip()
    if stripped.startswith(b"{"):
        return read_s2orc(path)
    if b"\\documentclass" in head or b"\\section" in head or b"\\begin{" in head:
        return read_latex(path)
    raise PaperError(f"{path.name}: unknown paper format {suffix or '(no extension)'}; give {SUPPORTED}.")
