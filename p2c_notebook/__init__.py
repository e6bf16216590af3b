"""p2c-notebook: turn an ML paper into a code repository, stage by stage, with a person in the loop."""

from p2c_notebook.errors import P2CError
from p2c_notebook.pipeline import Pipeline, RunResult
from p2c_notebook.settings import Settings, load_settings

__all__ = ["P2CError", "Pipeline", "RunResult", "Settings", "load_settings"]
__version__ = "0.1.0"
