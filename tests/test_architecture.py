"""The package's shape, read from its source with `ast`: no import cycle, the library never imports the UI, and
the stages are declared in one place (the stage registry), not in tables spread over the modules."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "p2c_notebook"
#: `%load_ext p2c_notebook` must reach the magics: the package's IPython hooks are the one way into the UI.
UI_ENTRY_POINTS = {("p2c_notebook", "load_ipython_extension"), ("p2c_notebook", "unload_ipython_extension")}
#: The stage tables the registry replaced; no module may define them again.
OLD_TABLES = {
    "STEPS",
    "ALIASES",
    "PLANNERS",
    "PLANNING",
    "PLANNING_STEPS",
    "PLANNING_CONTEXT",
    "INPUTS",
    "FILES",
    "TYPICAL_OUTPUT",
    "MAGIC_FOR_STAGE",
    "UNTIL",
    "STAGE_NAMES",
}
STAGE_NAMES = {"plan", "design", "logic", "config", "analysis", "code"}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported p2c_notebook module
    where: str  # "" at module level, else the function it is in
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(name: str, path: Path, known: set[str]) -> list[Import]:
    """Every import of a p2c_notebook module in `path`, module-level or inside a function (not TYPE_CHECKING)."""
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def targets(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        base = node.module or ""
        if node.level:
            anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
            base = ".".join([*anchor, base] if base else anchor)
        # `from package import module` imports the module; `from module import name` the module itself
        return [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                for other in child.orelse:
                    visit(other, where)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in targets(child):
                    if target in known:
                        found.append(Import(name, target, where, child.lineno))
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else where
            visit(child, where or inner)

    visit(ast.parse(path.read_text(encoding="utf-8")), "")
    return found


def all_imports() -> list[Import]:
    found = modules()
    return [i for name, path in found.items() for i in imports_of(name, path, set(found))]


def cycles(edges: list[Import]) -> list[list[str]]:
    """The strongly connected components of more than one module (or a module importing itself): the cycles."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.source, set()).add(edge.target)
        graph.setdefault(edge.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components


def describe(components: list[list[str]], edges: list[Import]) -> str:
    lines = []
    for component in components:
        inside = [e for e in edges if e.source in component and e.target in component]
        shown = (f"{e.source}:{e.line} -> {e.target}" + (f" (in {e.where})" if e.where else "") for e in inside)
        where = "; ".join(dict.fromkeys(shown))  # one line per import statement
        lines.append(f"{' <-> '.join(component)}: {where}")
    return "\n".join(lines)


# --- the tests -------------------------------------------------------------------------------------------
def test_the_import_graph_is_read_from_the_whole_package() -> None:
    edges = all_imports()
    wanted = Import("p2c_notebook.run.pipeline", "p2c_notebook.stages.registry", "", 0)
    assert wanted.target in {e.target for e in edges}
    assert any(e.where for e in edges)  # function-level imports are seen too
    planted = cycles(
        [Import("a", "b", "", 1), Import("b", "c", "", 1), Import("c", "a", "f", 1), Import("c", "d", "", 1)]
    )
    assert planted == [["a", "b", "c"]]  # the checker finds a cycle when there is one


def test_no_import_cycle_among_module_level_imports() -> None:
    edges = [e for e in all_imports() if not e.where]
    found = cycles(edges)
    assert not found, "import cycles:\n" + describe(found, edges)


def test_no_import_cycle_counting_function_level_imports() -> None:
    """A cycle held together by imports inside functions is a cycle all the same (backend.py <-> replay.py /
    local/ was one until the backends package)."""
    edges = all_imports()
    found = cycles(edges)
    assert not found, "import cycles:\n" + describe(found, edges)


def test_the_library_never_imports_the_ui() -> None:
    wrong = [
        e
        for e in all_imports()
        if not e.source.startswith("p2c_notebook.ui")
        and e.target.startswith("p2c_notebook.ui")
        and (e.source, e.where) not in UI_ENTRY_POINTS
    ]
    assert not wrong, "\n".join(f"{e.source}:{e.line} imports {e.target}" for e in wrong)


def test_the_stages_are_declared_only_in_the_registry() -> None:
    """No module defines the old stage tables, and no literal outside the registry lists the stages."""
    tables, listings = [], []
    for name, path in modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    if isinstance(target, ast.Name) and target.id in OLD_TABLES:
                        tables.append(f"{name}:{node.lineno} {target.id}")
            if name == "p2c_notebook.stages.registry":
                continue
            if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)):
                items = node.keys if isinstance(node, ast.Dict) else node.elts
                named = {i.value for i in items if isinstance(i, ast.Constant) and i.value in STAGE_NAMES}
                if len(named) >= 3:
                    listings.append(f"{name}:{node.lineno} {sorted(named)}")
    assert not tables, f"old stage tables: {tables}"
    assert not listings, f"stage names listed outside the registry: {listings}"


def test_every_package_folder_is_shipped() -> None:
    """A non-editable install carries only the packages pyproject.toml lists: a new folder must be listed there."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "p2c_notebook").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert found - listed == set(), f"add these to [tool.setuptools] packages: {sorted(found - listed)}"
