"""Notebook front end: the walkthrough widget (ipywidgets 8) and the `%p2c` magics.

from p2c_notebook.ui import walkthrough
walkthrough("paper.pdf")          # or Walkthrough(pipeline)
"""

from p2c_notebook.ui.walkthrough import Walkthrough, walkthrough

__all__ = ["Walkthrough", "walkthrough"]
