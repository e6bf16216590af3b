"""The logic design before analysis: mechanical repairs that need no model, and the problems that do.

A repeated dependency or one spelled `net.py` for `models/net.py` is fixed here and said so (a file entry listed
twice is dropped by `LogicDesign.check_against`, which runs next); a multi-file design in which no file imports
another, or whose dependencies contradict the class relations, goes back to the model with the problems named
(the caller re-asks).
"""

from __future__ import annotations

from p2c_notebook.errors import UnsafePathError
from p2c_notebook.paths import safe_relative_path
from p2c_notebook.stages.artifacts import ArchitectureDesign, FileLogic, LogicDesign
from p2c_notebook.stages.checks import entry_file

#: Relations that need the source class's file to import the target class's file.
_IMPORTING_RELATIONS = ("inherits", "composes")


def _key(path: str) -> str:
    """A path as the logic design's own check compares it (an unsafe one stays as it is: that check rejects it)."""
    try:
        return safe_relative_path(path)
    except UnsafePathError:
        return path


def fix_logic_design(logic: LogicDesign, design: ArchitectureDesign | None = None) -> tuple[LogicDesign, list[str]]:
    """Repair what is mechanical and return the repaired copy with one note per repair.

    - a dependency listed twice, or on the file itself: dropped;
    - with the design: a dependency naming a planned file by its base name alone (`net.py` for the only planned
      `models/net.py`) is completed; one naming no planned file at all (`torch`, `config.yaml`) is dropped.
    A file listed more than once is left to `LogicDesign.check_against`, which keeps the first entry and says so
    (one mechanism for edited designs and replies alike); later entries are not repaired here. Anything else
    (files missing or extra, cycles) is left for that check and the model.
    """
    notes: list[str] = []
    planned = {_key(p): p for p in design.file_list} if design is not None else {}
    by_base: dict[str, list[str]] = {}
    for path in planned.values():
        by_base.setdefault(path.rsplit("/", 1)[-1], []).append(path)
    kept: list[FileLogic] = []
    seen: set[str] = set()
    for item in logic.files:
        key = _key(item.path)
        if key in seen:  # left as it is: `LogicDesign.check_against` keeps the first entry and says so
            kept.append(item)
            continue
        seen.add(key)
        deps: list[str] = []
        for dep in item.depends_on:
            dep_key = _key(dep)
            if planned and dep_key not in planned:
                matches = by_base.get(dep_key.rsplit("/", 1)[-1], [])
                if len(matches) == 1:
                    notes.append(f"{item.path} depends on {dep!r}; read as the planned file {matches[0]}.")
                    dep, dep_key = matches[0], _key(matches[0])
                else:
                    notes.append(f"{item.path} depends on {dep!r}, which is not a planned file; dropped.")
                    continue
            if dep_key == key:
                notes.append(f"{item.path} depended on itself; dropped.")
            elif dep_key in (_key(d) for d in deps):
                notes.append(f"{item.path} listed the dependency {dep} more than once; kept one.")
            else:
                deps.append(dep)
        kept.append(item if deps == item.depends_on else item.model_copy(update={"depends_on": deps}))
    if not notes:
        return logic, []
    return logic.model_copy(update={"files": kept}), notes


def check_logic_design(design: ArchitectureDesign, logic: LogicDesign) -> list[str]:
    """Problems only the model can fix, one line each naming the fix; empty when there are none.

    - a multi-file design in which no file depends on another (each file would re-invent the others);
    - an entry point that depends on nothing, or no recognisable entry point at all;
    - a class that inherits from or composes a class of another file whose file does not depend on that file.
    """
    problems: list[str] = []
    deps = {_key(f.path): [_key(d) for d in f.depends_on] for f in logic.files}
    code_files = [p for p in deps if p.endswith(".py") and not p.endswith("__init__.py")]
    edges = sum(1 for p in code_files for d in deps[p] if d.endswith(".py"))
    if len(code_files) >= 2 and edges == 0:
        problems.append(
            f"No file depends on another in a design of {len(code_files)} Python files, so none would import the "
            "others and each would re-implement them; list in each file's depends_on the files whose classes and "
            "functions it uses."
        )
    entry = entry_file(design, logic)
    if entry is None:
        problems.append(
            "No file is recognisably the entry point; say in the role of the file that runs the experiment that it "
            "is the entry point (e.g. main.py)."
        )
    elif len(code_files) >= 2 and edges and not [d for d in deps.get(_key(entry), []) if d.endswith(".py")]:
        problems.append(
            f"{entry} runs the experiment but depends on no file; list the files whose classes and functions it "
            "uses in its depends_on."
        )
    file_of = {c.name: _key(c.file) for c in design.classes}
    for relation in design.relations:
        if relation.kind not in _IMPORTING_RELATIONS:
            continue
        source, target = file_of.get(relation.source), file_of.get(relation.target)
        if source is None or target is None or source == target or source not in deps or target not in deps:
            continue
        if target in deps[source]:
            continue
        verb = "inherits from" if relation.kind == "inherits" else "composes"
        backwards = " (the dependency points the other way: reverse it)" if source in _reach(deps, target) else ""
        problems.append(
            f"{relation.source} in {source} {verb} {relation.target} from {target}, but {source} does not depend on "
            f"{target}{backwards}; add {target} to the depends_on of {source}."
        )
    return problems


def _reach(deps: dict[str, list[str]], start: str) -> set[str]:
    """Files `start` depends on, directly or through others."""
    found: set[str] = set()
    stack = list(deps.get(start, []))
    while stack:
        node = stack.pop()
        if node not in found:
            found.add(node)
            stack.extend(deps.get(node, []))
    return found
