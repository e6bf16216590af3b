"""The stages of a run: the registry (`p2c_notebook.stages.registry`) says which there are and what each is."""

from p2c_notebook.stages.registry import Stage, get, register, stages, unregister

__all__ = ["Stage", "get", "register", "stages", "unregister"]
