"""p2c-notebook: turn an ML paper into a code repository, stage by stage, with a person in the loop."""

from typing import Any

from p2c_notebook.errors import P2CError
from p2c_notebook.run.pipeline import Pipeline, RunResult
from p2c_notebook.settings import Settings, load_settings

__all__ = ["P2CError", "Pipeline", "RunResult", "Settings", "load_settings"]


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext p2c_notebook`: registers the %p2c / %%p2c magics (imported lazily: IPython is optional)."""
    from p2c_notebook.ui.magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from p2c_notebook.ui.magics import unload_ipython_extension as unload

    unload(ipython)
__version__ = "0.1.0"
