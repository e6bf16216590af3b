"""What one planned file owns and what it imports: the contract its analysis and coding calls are given.

A small model asked for one file re-invents whatever it needs from the others (the recorded run defined `Net` in
three files and imported nothing across files). Both calls are therefore told, from the approved design and
logic design (and, when coding, the code of the dependencies already written): the classes to define here and
only here, the exact import line for each dependency, what other files define, the config.yaml keys, and
whether this file is the entry point. It is derived data, so the same inputs give the same text (cassettes
and prefix caches depend on that).
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from typing import Any

from p2c_notebook import pysource
from p2c_notebook.prompts.builder import render
from p2c_notebook.stages.artifacts import ArchitectureDesign, LogicDesign
from p2c_notebook.stages.checks import entry_file, module_name

MAX_NAMES = 12  # per import line: a module that defines more is named with its first ones and "..."
MAX_KEYS = 40  # config.yaml keys listed; the config itself is in the prompt's context


def _listing(items: list[str]) -> str:
    return "; ".join(items) if items else "none"


def _public_names(path: str, code: str) -> list[str]:
    """Top-level classes, functions and UPPER_CASE constants a dependency's code defines, in order."""
    try:
        tree = pysource.parse(code, path)
    except SyntaxError:
        return []
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name) and t.id.isupper()]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id.isupper():
            names.append(node.target.id)
    return [n for n in dict.fromkeys(names) if not n.startswith("_")]


def config_keys(config: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted leaf keys of the config (`training.lr`), in file order."""
    keys: list[str] = []
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            keys += config_keys(value, dotted + ".")
        else:
            keys.append(dotted)
    return keys


def _import_line(dependency: str, names: list[str]) -> str:
    module = module_name(dependency)
    if module is None:
        return f"`{dependency}` (not a Python module: read it as a file)"
    if not names:
        return f"`import {module}` (use the functions it defines)"
    shown = ", ".join(names[:MAX_NAMES]) + (", ..." if len(names) > MAX_NAMES else "")
    return f"`from {module} import {shown}`"


def file_contract(
    design: ArchitectureDesign,
    logic: LogicDesign,
    path: str,
    config: Mapping[str, Any],
    written: Mapping[str, str] | None = None,
) -> str:
    """The contract for `path` ("" for a file that is not Python source).

    `written` holds the code of dependencies already written (coding); without it (analysis) a dependency's
    names come from the design alone.
    """
    if not path.endswith(".py"):
        return ""
    written = written or {}
    own = [c for c in design.classes if c.file == path]
    defines = [
        f"class {c.name}" + (f" (methods: {', '.join(m.name for m in c.methods)})" if c.methods else "")
        for c in own
    ]
    dependencies = logic.dependencies(path)
    imports = []
    for dep in dependencies:
        designed = [c.name for c in design.classes if c.file == dep]
        found = _public_names(dep, written[dep]) if dep in written else []
        imports.append(_import_line(dep, list(dict.fromkeys([*designed, *found]))))
    own_names = {c.name for c in own}
    elsewhere = [
        f"{c.name} in {c.file}"
        for c in design.classes
        if c.file != path and c.file not in dependencies and c.name not in own_names
    ]
    keys = config_keys(config)
    shown_keys = ", ".join(keys[:MAX_KEYS]) + (", ..." if len(keys) > MAX_KEYS else "") if keys else "none yet"
    entry = "\n" + render("contract_entry").strip() if entry_file(design, logic) == path else ""
    return render(
        "contract",
        path=path,
        defines=_listing(defines) if defines else "the functions its role needs (no designed class lives here)",
        imports=_listing(imports),
        elsewhere=_listing(elsewhere),
        config_keys=shown_keys,
        entry=entry,
    ).rstrip("\n")
