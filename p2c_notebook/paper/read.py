"""`read_paper`: pick the reader from the file's content (magic bytes) first, its extension second."""

from __future__ import annotations

import os
from pathlib import Path

from p2c_notebook.errors import PaperError
from p2c_notebook.paper.latex import read_latex, read_latex_bundle, read_latex_folder
from p2c_notebook.paper.model import Paper
from p2c_notebook.paper.pdf import DEFAULT_MAX_PAGES, read_pdf
from p2c_notebook.paper.s2orc import read_s2orc
from p2c_notebook.paper.text import read_markdown, read_text

SUPPORTED = "PDF, LaTeX (.tex, a source folder, .tar.gz/.tgz/.zip bundle), s2orc .json, Markdown (.md) or .txt"
_BUNDLES = (".tar.gz", ".tgz", ".tar", ".zip", ".gz")


def _not_pdf(path: Path, head: bytes) -> PaperError:
    lowered = head.lstrip().lower()
    if lowered.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")) or b"<html" in lowered[:512]:
        return PaperError(
            f"{path.name} is an HTML page saved with a .pdf name, not a PDF (the download probably saved "
            "the web page around the paper): download the PDF itself, e.g. https://arxiv.org/pdf/<id>."
        )
    return PaperError(
        f"{path.name} is not a PDF (it does not start with %PDF-): re-download the paper, "
        f"or give a file in one of the supported formats: {SUPPORTED}."
    )


def read_paper(path: str | os.PathLike[str], *, max_pages: int = DEFAULT_MAX_PAGES) -> Paper:
    """Read a paper from a PDF, LaTeX source, s2orc JSON, Markdown or text file.

    `max_pages` bounds the work on very long PDFs; what is skipped is listed in `Paper.dropped`.
    """
    path = Path(path)
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
        return read_pdf(path, max_pages=max_pages)
    if name.endswith(".pdf"):
        raise _not_pdf(path, head)
    if head.startswith((b"\x1f\x8b", b"PK\x03\x04")) or name.endswith(_BUNDLES) or head[257:262] == b"ustar":
        return read_latex_bundle(path)
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
