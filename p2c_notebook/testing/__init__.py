"""Offline testing helpers: a scripted OpenAI-compatible server driven by a scenario file."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from p2c_notebook.testing.scenario import Scenario, load_scenario

if TYPE_CHECKING:
    from p2c_notebook.testing.server import ScriptedServer

__all__ = ["Scenario", "ScriptedServer", "load_scenario"]


def __getattr__(name: str) -> Any:
    """Import the server lazily so `python -m p2c_notebook.testing.server` does not import it twice."""
    if name == "ScriptedServer":
        from p2c_notebook.testing.server import ScriptedServer

        return ScriptedServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
