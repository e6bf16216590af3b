"""Files made from artifacts: the design's diagrams as SVG and the logic design's file dependency graph.

The library makes them, not the views: each is written into the run folder and recorded in the manifest with the
hash of the artifact it was made from (`RunStore.save_derived`), and reused while that artifact is unchanged
(`RunStore.derived`), whatever the file times say. The renderer is passed in (`p2c_notebook.diagrams.plantuml`
renders with PlantUML and Graphviz, which an installation may lack), so this module needs neither.
"""

from __future__ import annotations

from collections.abc import Callable

from p2c_notebook.run.store import RunStore
from p2c_notebook.stages.artifacts import LogicDesign

DEPENDENCY_GRAPH = "planning/dependencies.svg"


def diagram_path(name: str) -> str:
    """Where the design diagram `name` ("class_diagram", "sequence_diagram") is saved as SVG."""
    return f"planning/{name}.svg"


def dependency_graph(store: RunStore, render: Callable[[LogicDesign], str]) -> str:
    """The file dependency graph as SVG: the recorded one while the logic design is unchanged, else made now by
    `render` from the saved logic design and recorded."""
    current = store.derived(DEPENDENCY_GRAPH)
    if current is not None:
        return current
    svg = render(LogicDesign.model_validate_json(store.read("logic")))
    store.save_derived(DEPENDENCY_GRAPH, svg, "logic")
    return svg


def saved_diagram(store: RunStore, name: str) -> str | None:
    """The design diagram `name` as last rendered, while the design is unchanged since (None: render it again)."""
    return store.derived(diagram_path(name))


def render_diagram(store: RunStore, name: str, plantuml: str, render: Callable[[str], str]) -> str:
    """Render the design diagram `name` from its PlantUML source (as generated, or as the user edited it), save
    it and record it as made from the design as it is now."""
    svg = render(plantuml)
    store.save_derived(diagram_path(name), svg, "design")
    return svg
