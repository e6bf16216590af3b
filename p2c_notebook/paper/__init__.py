"""Paper readers: PDF, LaTeX (file, folder, .tar.gz), s2orc JSON, Markdown and plain text."""

from p2c_notebook.paper.model import Caption, Paper, PaperReport, Section
from p2c_notebook.paper.read import read_paper

__all__ = ["Caption", "Paper", "PaperReport", "Section", "read_paper"]
