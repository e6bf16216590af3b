"""Static checks of a generated repository against its design.

Does each file compile, use only names it defines or imports (pyflakes), import from the repository only modules
and names that exist, define each designed class once and where designed (with its designed methods), import
what the logic design says it depends on, read only keys `config.yaml` has, and does the entry point run?

Pure: generated code is parsed, never imported or run, and nothing is written; the result is data the caller
saves as `checks.json`. Every message names the fix, because it goes back to the model in a repair re-ask.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import os
import re
import sys
import typing
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pyflakes import checker as pyflakes_checker
from pyflakes import messages as pyflakes_messages

from p2c_notebook import pysource
from p2c_notebook.errors import PlanError, RunError
from p2c_notebook.stages.artifacts import ArchitectureDesign, ClassSpec, LogicDesign, parse_config, topological_order
from p2c_notebook.stages.configreads import assigned_names, missing_config_reads

Severity = Literal["error", "warning"]

#: Every check, in the order reports list them. Errors make a repository unclean; warnings are shown only.
CHECKS = (
    "syntax",
    "undefined-name",
    "import-star",
    "unresolved-import",
    "missing-file",
    "missing-class",
    "misplaced-class",
    "duplicated-class",
    "missing-method",
    "method-arity",
    "undeclared-dependency",
    "unused-dependency",
    "missing-config-key",
    "entry-point",
    "lint",
)

#: File names that usually run the experiment, best first (used when the logic design names no entry point).
ENTRY_NAMES = ("main.py", "run.py", "__main__.py", "train.py", "run_experiment.py", "experiment.py")
_ENTRY_ROLE = re.compile(r"\bentry[ -]?point\b|\bmain script\b|\bruns? the (whole )?experiments?\b", re.IGNORECASE)
#: Common import lines for names generated code uses without importing them (facts about the libraries).
_KNOWN_IMPORTS = {
    "np": "import numpy as np",
    "pd": "import pandas as pd",
    "plt": "import matplotlib.pyplot as plt",
    "nn": "import torch.nn as nn",
    "F": "import torch.nn.functional as F",
    "optim": "import torch.optim as optim",
    "tf": "import tensorflow as tf",
    "sns": "import seaborn as sns",
    "tqdm": "from tqdm import tqdm",
    "DataLoader": "from torch.utils.data import DataLoader",
    "TensorDataset": "from torch.utils.data import TensorDataset",
    "dataclass": "from dataclasses import dataclass",
    "Path": "from pathlib import Path",
}
# fmt: off
_THIRD_PARTY_MODULES = frozenset({
    "torch", "torchvision", "torchaudio", "torchtext", "numpy", "pandas", "scipy", "sklearn", "yaml",
    "matplotlib", "tensorflow", "keras", "jax", "flax", "optax", "transformers", "datasets", "tokenizers",
    "accelerate", "timm", "lightning", "pytorch_lightning", "tqdm", "seaborn", "einops", "PIL", "cv2", "h5py",
    "wandb", "tensorboard", "omegaconf", "hydra", "nltk", "spacy", "gym", "gymnasium", "networkx", "numba",
    "sympy", "xgboost", "lightgbm", "statsmodels", "torch_geometric", "dgl", "sentencepiece", "requests",
})
# fmt: on
#: Distributions whose import name differs from their own (the common ones in ML code).
_DISTRIBUTION_IMPORTS = {
    "pyyaml": "yaml",
    "scikit_learn": "sklearn",
    "pillow": "PIL",
    "opencv_python": "cv2",
    "opencv_python_headless": "cv2",
    "pytorch_lightning": "pytorch_lightning",
    "tensorflow_cpu": "tensorflow",
    "beautifulsoup4": "bs4",
}
_TYPING_NAMES = frozenset(typing.__all__)
_SETUP_CALLS = frozenset({"insert", "append", "filterwarnings", "basicConfig", "seed", "manual_seed", "set_seed"})


@dataclass(frozen=True)
class Violation:
    """One problem at `file:line` (line 0: the file as a whole), with a one-line message that says how to fix it."""

    check: str
    file: str
    line: int
    message: str
    severity: Severity = "error"

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}" if self.line else (self.file or "repository")

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "file": self.file,
            "line": self.line,
            "message": self.message,
            "severity": self.severity,
        }


@dataclass
class CheckReport:
    """Violations per checked file (with the sha256 of the code they were found in: stale when it changes),
    violations of the repository as a whole, and the counts the fidelity figures need."""

    files: dict[str, list[Violation]] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)
    repository: list[Violation] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def violations(self) -> list[Violation]:
        return [v for items in self.files.values() for v in items] + list(self.repository)

    @property
    def errors(self) -> list[Violation]:
        return [v for v in self.violations if v.severity == "error"]

    @property
    def is_clean(self) -> bool:
        return not self.errors

    def summary(self) -> dict[str, int]:
        """Violations per check (every check listed, zeros included, so runs compare column by column)."""
        counts = dict.fromkeys(CHECKS, 0)
        for violation in self.violations:
            counts[violation.check] = counts.get(violation.check, 0) + 1
        return counts

    def to_json(self) -> dict[str, Any]:
        """The content of `checks.json`."""
        return {
            "version": 1,
            "is_clean": self.is_clean,
            "errors": len(self.errors),
            "warnings": len(self.violations) - len(self.errors),
            "summary": self.summary(),
            "stats": dict(self.stats),
            "files": {
                path: {"sha256": self.digests.get(path, ""), "violations": [v.to_json() for v in items]}
                for path, items in self.files.items()
            },
            "repository": [v.to_json() for v in self.repository],
        }


@dataclass(frozen=True)
class Fidelity:
    """The README's "Output quality" figures for one generated repository."""

    files: int
    undefined_names: int
    unresolved_imports: int
    designed_classes: int
    classes_once_where_designed: int
    duplicated_classes: int
    undeclared_dependencies: int
    unused_dependencies: int
    declared_dependencies: int
    declared_dependencies_imported: int
    missing_config_keys: int
    entry_point: bool

    @property
    def dependency_share(self) -> float | None:
        """Share of the logic design's declared dependencies the code imports (None: none declared)."""
        if not self.declared_dependencies:
            return None
        return self.declared_dependencies_imported / self.declared_dependencies

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = dict(self.__dict__)
        data["dependency_share"] = self.dependency_share
        return data


# --------------------------------------------------------------------------------------------------- public API


def load_repository(folder: Path | str) -> dict[str, str]:
    """Read a generated repository's Python files and its config.yaml (never through a symbolic link)."""
    root = Path(folder)
    if not root.is_dir():
        raise RunError(f"{root} is not a folder; pass a generated repository (a run's repo/ folder).")
    sources: dict[str, str] = {}
    for current, dirs, names in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        for name in sorted(names):
            path = Path(current, name)
            if path.is_symlink() or not (name.endswith(".py") or path.parent == root and name == "config.yaml"):
                continue
            rel = path.relative_to(root).as_posix()
            sources[rel] = path.read_bytes().decode("utf-8", errors="replace")
    return sources


def check_file(
    path: str,
    repository: Mapping[str, str],
    design: ArchitectureDesign | None = None,
    logic: LogicDesign | None = None,
    config: str | None = None,
) -> list[Violation]:
    """Check one file of `repository` (path -> source: the files written so far) against the design.

    Files the design plans but `repository` lacks yet count as existing modules: what they will define is only
    known for designed classes, so other names imported from them are not judged.
    """
    index = _Index(repository, design, logic, config)
    if path not in index.sources:
        raise KeyError(path)
    return _FileChecker(index, path).run()


def check_repository(
    repository: Path | str | Mapping[str, str],
    design: ArchitectureDesign | None = None,
    logic: LogicDesign | None = None,
    config: str | None = None,
) -> CheckReport:
    """Check every Python file of a complete repository (a folder, or path -> source) against the design.

    `config` is config.yaml's text; by default the repository's own config.yaml.
    """
    sources = dict(repository) if isinstance(repository, Mapping) else load_repository(repository)
    if config is None:
        config = sources.get("config.yaml")
    index = _Index(sources, design, logic, config)
    report = CheckReport()
    stats = dict.fromkeys(("declared_dependencies", "declared_dependencies_imported"), 0)
    for path in index.order:
        checker = _FileChecker(index, path)
        report.files[path] = checker.run()
        report.digests[path] = hashlib.sha256(index.sources[path].encode("utf-8")).hexdigest()
        stats["declared_dependencies"] += checker.declared_count
        stats["declared_dependencies_imported"] += checker.imported_count
    for planned in index.planned_order:
        if planned not in index.sources:
            report.repository.append(
                Violation(
                    "missing-file",
                    planned,
                    0,
                    f"the design plans {planned}, but the repository has no such file; generate it",
                )
            )
    entry = index.entry
    if entry is None and not any(_has_main_guard(t) for t in index.trees.values() if t is not None):
        report.repository.append(
            Violation(
                "entry-point",
                "",
                0,
                "no file runs the experiment: the design names no entry point and no "
                'file has an `if __name__ == "__main__":` block; add main.py that reads config.yaml and runs it',
            )
        )
    stats["files"] = len(report.files)
    runs = not any(v.check == "entry-point" for v in report.violations)
    stats["entry_point"] = int(runs and (entry is None or entry in index.sources))
    designed = index.designed
    stats["designed_classes"] = len(designed)
    stats["classes_once_where_designed"] = sum(
        1 for name, spec in designed.items() if index.class_sites(name) == [spec.file]
    )
    report.stats = stats
    return report


def repair_request(path: str, violations: list[Violation], warnings: bool = False) -> str:
    """The problems of one generated file as a repair re-ask names them, one line each with its line number
    ("" when there is nothing to repair). Warnings are left out unless asked for: the re-ask spends a call."""
    chosen = [v for v in violations if v.file == path and (warnings or v.severity == "error")]
    if not chosen:
        return ""
    lines = [f"- {'line ' + str(v.line) if v.line else 'the file'}: {v.message}" for v in chosen]
    return f"The static checks found {len(chosen)} problem(s) in {path}; fix each and reply with the whole file:\n" + (
        "\n".join(lines)
    )


def fidelity(report: CheckReport) -> Fidelity:
    """The figures of one report: what the "Output quality" table shows."""
    counts = report.summary()
    return Fidelity(
        files=report.stats.get("files", len(report.files)),
        undefined_names=counts["undefined-name"],
        unresolved_imports=counts["unresolved-import"],
        designed_classes=report.stats.get("designed_classes", 0),
        classes_once_where_designed=report.stats.get("classes_once_where_designed", 0),
        duplicated_classes=counts["duplicated-class"] + counts["misplaced-class"],
        undeclared_dependencies=counts["undeclared-dependency"],
        unused_dependencies=counts["unused-dependency"],
        declared_dependencies=report.stats.get("declared_dependencies", 0),
        declared_dependencies_imported=report.stats.get("declared_dependencies_imported", 0),
        missing_config_keys=counts["missing-config-key"],
        entry_point=bool(report.stats.get("entry_point", 0)),
    )


def measure_fidelity(
    repository: Path | str | Mapping[str, str],
    design: ArchitectureDesign | None = None,
    logic: LogicDesign | None = None,
    config: str | None = None,
) -> Fidelity:
    """Check a complete repository and return its fidelity figures."""
    return fidelity(check_repository(repository, design, logic, config))


def entry_file(
    design: ArchitectureDesign | None, logic: LogicDesign | None, files: list[str] | None = None
) -> str | None:
    """The file that runs the experiment: the one the logic design's role calls the entry point, else the
    best-named planned (or, without a design, existing) file: main.py, run.py, __main__.py, train.py..."""
    if logic is not None:
        for item in logic.files:
            if item.path.endswith(".py") and _ENTRY_ROLE.search(item.role):
                return item.path
    candidates = list(design.file_list) if design is not None else []
    if logic is not None:
        candidates += [p for p in logic.order if p not in candidates]
    if not candidates:
        candidates = list(files or [])
    for name in ENTRY_NAMES:
        matches = [p for p in candidates if p.rsplit("/", 1)[-1] == name]
        if matches:
            return min(matches, key=lambda p: p.count("/"))
    return None


# ------------------------------------------------------------------------------------------------ the index


@dataclass
class _Binding:
    line: int
    kind: Literal["class", "def", "assign", "import"]
    source: str = ""  # for an import: the dotted module it came from ("" when unknown)


def module_name(path: str) -> str | None:
    """`a/b.py` -> `a.b`, `a/__init__.py` -> `a`; None for a file no import statement can name."""
    if not path.endswith(".py"):
        return None
    parts = path[:-3].split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    if not parts or not all(p.isidentifier() for p in parts):
        return None
    return ".".join(parts)


class _Index:
    """What the whole repository defines: modules, packages, module-level names, classes, the plan."""

    def __init__(
        self,
        sources: Mapping[str, str],
        design: ArchitectureDesign | None,
        logic: LogicDesign | None,
        config: str | None,
    ) -> None:
        # A byte-order mark is legal at the start of a file Python reads, but not inside a string it compiles.
        self.sources = {p.removeprefix("./"): s.removeprefix("\ufeff") for p, s in sources.items() if p.endswith(".py")}
        self.design = design
        self.logic = logic
        self.config: dict[str, Any] | None = None
        if config is not None:
            try:
                self.config = parse_config(config)
            except PlanError:
                self.config = None
        self.trees: dict[str, ast.Module | None] = {}
        self.syntax: dict[str, tuple[int, str]] = {}
        for path, source in self.sources.items():
            self.trees[path] = _parse(path, source, self.syntax)
        planned: list[str] = []
        for item in _dependency_order(logic) + (list(design.file_list) if design else []):
            if item.endswith(".py") and item not in planned:
                planned.append(item)
        self.planned_order = planned
        self.modules: dict[str, str] = {}  # dotted name -> path, written and planned
        for path in [*planned, *self.sources]:
            name = module_name(path)
            if name is not None:
                self.modules.setdefault(name, path)
        self.packages: set[str] = set()
        for name in list(self.modules):
            parts = name.split(".")
            for i in range(1, len(parts)):
                self.packages.add(".".join(parts[:i]))
        self.top = {name.split(".")[0] for name in self.modules} | {p.split(".")[0] for p in self.packages}
        self.bindings = {p: _module_bindings(t) for p, t in self.trees.items() if t is not None}
        self.classes = {
            p: _first_classes(t.body) for p, t in self.trees.items() if t is not None
        }  # module-level class statements, also those shadowing an import of the same name
        ranked = [p for p in planned if p in self.sources]
        self.order = ranked + sorted(p for p in self.sources if p not in ranked)
        self.designed: dict[str, ClassSpec] = {}
        for spec in design.classes if design else []:
            if spec.file.endswith(".py"):
                self.designed.setdefault(spec.name, spec)  # the first spec wins for a repeated name
        self.entry = entry_file(design, logic, sorted(self.sources))
        #: Import names of the logic design's required packages (`pyyaml>=6` -> yaml, `scikit-learn` -> sklearn).
        self.packages_used = {_import_name(p) for p in (logic.required_packages if logic else [])}

    def class_sites(self, name: str) -> list[str]:
        """Files that define class `name` at module level, in the repository's order."""
        return [p for p in self.order if name in self.classes.get(p, {})]

    def definers(self, name: str, near: str = "") -> list[str]:
        """Files that define `name` (not merely import it): the designed file of a class first, then those in
        the folder of `near`, then the rest in the repository's order."""
        found = [
            p
            for p in self.order
            if name in self.classes.get(p, {})
            or ((b := self.bindings.get(p, {}).get(name)) is not None and b.kind != "import")
        ]
        folder = near.rsplit("/", 1)[0] if "/" in near else ""
        found.sort(key=lambda p: (p.rsplit("/", 1)[0] if "/" in p else "") != folder)
        spec = self.designed.get(name)
        if spec is not None and spec.file in self.modules.values():
            found = [spec.file] + [p for p in found if p != spec.file]
        return found

    def defines(self, module: str, name: str, seen: frozenset[str] = frozenset()) -> bool | None:
        """Whether module `module` binds `name` (re-exports and star imports followed); None: not known yet."""
        path = self.modules.get(module)
        if path is None or module in seen:
            return None
        if path not in self.sources:
            spec = self.designed.get(name)
            return True if spec is not None and spec.file == path else None
        binds = self.bindings.get(path)
        if binds is None:
            return None  # does not parse: reported there
        if name in binds:
            return True
        for star in binds.get("*", _Binding(0, "import")).source.split(","):
            if not star:
                continue
            if star.split(".")[0] not in self.top:
                return None  # a third-party star import may define anything
            if self.defines(star, name, seen | {module}):
                return True
        return False

    def import_line(self, name: str, path: str) -> str:
        module = module_name(path)
        return f"`from {module} import {name}`" if module else f"move it into an importable file ({path} is not)"


def _import_name(requirement: str) -> str:
    name = re.split(r"[<>=!~;\[ ]", requirement.strip(), maxsplit=1)[0].casefold().replace("-", "_")
    return _DISTRIBUTION_IMPORTS.get(name, name)


def _dependency_order(logic: LogicDesign | None) -> list[str]:
    """The logic design's files, dependencies first (the order they are coded in; listed order on a cycle)."""
    if logic is None:
        return []
    try:
        return topological_order({f.path: list(f.depends_on) for f in logic.files}, logic.order)
    except PlanError:
        return logic.order


def _parse(path: str, source: str, errors: dict[str, tuple[int, str]]) -> ast.Module | None:
    """Compile (which also finds `return` outside a function and the like), then parse; record a failure."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pysource.check_compiles(source, path)
            return pysource.parse(source, path)
    except SyntaxError as exc:
        errors[path] = (exc.lineno or 0, exc.msg)
    except (ValueError, RecursionError, MemoryError) as exc:
        errors[path] = (0, str(exc) or type(exc).__name__)
    return None


def _module_statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Module-level statements, looking inside if/try/with/for/while/match blocks but not into defs or classes."""
    for stmt in body:
        yield stmt
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        blocks = [getattr(stmt, name, None) for name in ("body", "orelse", "finalbody")]
        blocks += [
            getattr(part, "body", None) for part in [*getattr(stmt, "handlers", []), *getattr(stmt, "cases", [])]
        ]
        for block in blocks:
            if isinstance(block, list):
                yield from _module_statements([s for s in block if isinstance(s, ast.stmt)])


def _module_bindings(tree: ast.Module) -> dict[str, _Binding]:
    """Names a module binds at its top level (first binding wins); `*` carries the modules it star-imports."""
    found: dict[str, _Binding] = {}
    stars: list[str] = []

    def bind(name: str, binding: _Binding) -> None:
        found.setdefault(name, binding)

    for stmt in _module_statements(tree.body):
        if isinstance(stmt, ast.ClassDef):
            bind(stmt.name, _Binding(stmt.lineno, "class"))
        elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            bind(stmt.name, _Binding(stmt.lineno, "def"))
        elif isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                for name in assigned_names(target):
                    bind(name, _Binding(stmt.lineno, "assign"))
        elif isinstance(stmt, (ast.AnnAssign, ast.AugAssign, ast.For, ast.AsyncFor)):
            for name in assigned_names(stmt.target):
                bind(name, _Binding(stmt.lineno, "assign"))
        elif isinstance(stmt, (ast.With, ast.AsyncWith)):
            for item in stmt.items:
                if item.optional_vars is not None:
                    for name in assigned_names(item.optional_vars):
                        bind(name, _Binding(stmt.lineno, "assign"))
        elif isinstance(stmt, ast.Import):
            for alias in stmt.names:
                bind(alias.asname or alias.name.split(".")[0], _Binding(stmt.lineno, "import", alias.name))
        elif isinstance(stmt, ast.ImportFrom):
            module = ("." * stmt.level) + (stmt.module or "")
            for alias in stmt.names:
                if alias.name == "*":
                    stars.append(module)
                else:
                    bind(alias.asname or alias.name, _Binding(stmt.lineno, "import", module))
    if stars:
        found["*"] = _Binding(0, "import", ",".join(stars))
    return found


def _first_classes(body: list[ast.stmt]) -> dict[str, ast.ClassDef]:
    found: dict[str, ast.ClassDef] = {}
    for stmt in _module_statements(body):
        if isinstance(stmt, ast.ClassDef):
            found.setdefault(stmt.name, stmt)
    return found


def _members(node: ast.ClassDef) -> set[str]:
    names = set()
    for stmt in node.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(stmt.name)
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            for target in stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]:
                names.update(assigned_names(target))
    return names


def _same_shape(a: ast.ClassDef, b: ast.ClassDef) -> bool:
    """Two classes of one name are copies when at least half the members of the smaller one are in both;
    two unrelated `Entry` classes of different modules are not."""
    first, second = _members(a), _members(b)
    if not first or not second:
        return not first and not second
    return len(first & second) * 2 >= min(len(first), len(second))


def _has_main_guard(tree: ast.Module) -> bool:
    for stmt in tree.body:
        if isinstance(stmt, ast.If) and isinstance(stmt.test, ast.Compare):
            sides = [stmt.test.left, *stmt.test.comparators]
            names = {s.id for s in sides if isinstance(s, ast.Name)}
            values = {s.value for s in sides if isinstance(s, ast.Constant)}
            if "__name__" in names and "__main__" in values:
                return True
    return False


def _runs_at_top_level(tree: ast.Module) -> bool:
    """Script-style code: a call or loop at module level that is more than set-up (`sys.path.insert`...)."""
    for stmt in _module_statements(tree.body):
        if isinstance(stmt, (ast.For, ast.AsyncFor, ast.While)):
            return True
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
            func = stmt.value.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name not in _SETUP_CALLS:
                return True
    return False


# ----------------------------------------------------------------------------------------------- file checks


class _FileChecker:
    """All checks of one file; collects violations in line order."""

    def __init__(self, index: _Index, path: str) -> None:
        self.index = index
        self.path = path
        self.out: list[Violation] = []
        self.declared_count = 0
        self.imported_count = 0
        self.explicit: dict[str, int] = {}  # repository files this one imports from -> first line
        self.implicit: set[str] = set()  # package __init__ files that such imports run

    def add(self, check: str, line: int, message: str, severity: Severity = "error") -> None:
        self.out.append(Violation(check, self.path, line, message, severity))

    def run(self) -> list[Violation]:
        tree = self.index.trees.get(self.path)
        if tree is None:
            line, msg = self.index.syntax.get(self.path, (0, "unknown error"))
            self.add("syntax", line, f"does not parse: {msg}; fix the syntax so that the whole file is valid Python")
            return self.out
        self._pyflakes(tree)
        self._imports(tree)
        self._classes()
        self._dependencies()
        self._config_keys(tree)
        self._entry_point(tree)
        return sorted(self.out, key=lambda v: (v.line, CHECKS.index(v.check) if v.check in CHECKS else 99))

    # -- names (pyflakes)

    def _pyflakes(self, tree: ast.Module) -> None:
        report = pyflakes_checker.Checker(tree, filename=self.path)
        stars: dict[str, list[str]] = {}
        undefined: dict[str, list[int]] = {}
        for msg in sorted(report.messages, key=lambda m: m.lineno):
            args = msg.message_args
            if isinstance(msg, pyflakes_messages.UndefinedName):
                undefined.setdefault(str(args[0]), []).append(msg.lineno)
            elif isinstance(msg, pyflakes_messages.UndefinedLocal):
                self.add(
                    "undefined-name",
                    msg.lineno,
                    f"`{args[0]}` is used before it is assigned in this function; "
                    "assign it first, or pass it in as a parameter",
                )
            elif isinstance(msg, pyflakes_messages.UndefinedExport):
                self.add(
                    "undefined-name",
                    msg.lineno,
                    f"`__all__` names `{args[0]}`, which this module does not "
                    "define; define it or remove it from `__all__`",
                )
            elif isinstance(msg, pyflakes_messages.ImportStarUsage):
                stars.setdefault(str(args[1]), []).append(str(args[0]))
            elif isinstance(msg, (pyflakes_messages.ImportStarUsed, pyflakes_messages.ImportStarNotPermitted)):
                continue  # reported below, with the names it hides
            elif isinstance(msg, pyflakes_messages.UnusedImport) and self.path.endswith("__init__.py"):
                continue  # a package's __init__ imports to re-export
            else:
                text = msg.message % args
                fix = {
                    pyflakes_messages.UnusedImport: "remove the import",
                    pyflakes_messages.RedefinedWhileUnused: "keep one definition",
                    pyflakes_messages.UnusedVariable: "remove the assignment or use the value",
                }.get(type(msg), "fix it")
                self.add("lint", msg.lineno, f"{text}; {fix}", "warning")
        for name, lines in undefined.items():  # one violation per name, at its first use
            more = sorted(set(lines[1:]) - {lines[0]})
            also = f" (also used at line{'s' if len(more) > 1 else ''} {', '.join(map(str, more))})" if more else ""
            self.add("undefined-name", lines[0], self._undefined_hint(name) + also)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names):
                module = "." * node.level + (node.module or "")
                used = sorted({n for key, names in stars.items() if module in key.split(", ") for n in names})
                names = ", ".join(used) if used else "the names you use"
                self.add(
                    "import-star",
                    node.lineno,
                    f"`from {module} import *` hides where names come from; "
                    f"import them by name: `from {module} import {names}`",
                )

    def _undefined_hint(self, name: str) -> str:
        definers = [p for p in self.index.definers(name, self.path) if p != self.path]
        if definers:
            where = definers[0]
            return f"`{name}` is defined in {where}; import it: {self.index.import_line(name, where)}"
        if name in _TYPING_NAMES:
            return f"`{name}` is not defined; import it: `from typing import {name}`"
        if name in _KNOWN_IMPORTS:
            return f"`{name}` is not defined; import it: `{_KNOWN_IMPORTS[name]}`"
        if name in sys.stdlib_module_names or name in _THIRD_PARTY_MODULES:
            return f"`{name}` is used without being imported; add `import {name}` at the top of the file"
        return (
            f"`{name}` is used but never defined or imported in this file; define it here, take it as a "
            "parameter, or import it from the file that defines it"
        )

    # -- imports

    def _imports(self, tree: ast.Module) -> None:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    module = self._absolute(alias.name)
                    if module is not None:
                        self._import_module(node.lineno, module)
            elif isinstance(node, ast.ImportFrom):
                self._import_from(node)

    def _absolute(self, module: str) -> str | None:
        """The repository module an absolute import names: from the repository root, or (a script run from its
        own folder puts that folder first on the path) a sibling of this file; None: not the repository's."""
        top = module.split(".")[0]
        if top in self.index.top:
            return module
        folder = self.path.rsplit("/", 1)[0].replace("/", ".") if "/" in self.path else ""
        if folder and (f"{folder}.{top}" in self.index.modules or f"{folder}.{top}" in self.index.packages):
            return f"{folder}.{module}"
        return None

    def _import_module(self, line: int, module: str) -> None:
        parts = module.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix not in self.index.modules and prefix not in self.index.packages:
                self.add(
                    "unresolved-import",
                    line,
                    f"`import {module}`: the repository has no module `{prefix}` "
                    f"({_module_hint(prefix)}); import one of its modules: {self._module_list()}",
                )
                return
            self._record(line, prefix, explicit=i == len(parts))

    def _record(self, line: int, module: str, explicit: bool) -> None:
        path = self.index.modules.get(module)
        if path is None or path == self.path:
            return
        if explicit:
            self.explicit.setdefault(path, line)
        else:
            self.implicit.add(path)

    def _import_from(self, node: ast.ImportFrom) -> None:
        shown = "from " + "." * node.level + (node.module or "") + " import " + ", ".join(a.name for a in node.names)
        if node.level:
            own = module_name(self.path)
            package = (own or "").split(".")
            if not self.path.endswith("__init__.py"):
                package = package[:-1]
            if own is None or len(package) < node.level or package == [""]:
                self.add(
                    "unresolved-import",
                    node.lineno,
                    f"`{shown}` is a relative import outside a package, "
                    "which fails when the repository runs as scripts; import by module name from the repository "
                    "root instead (e.g. `from data import load_dataset`)",
                )
                return
            base = package[: len(package) - node.level + 1]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            absolute = self._absolute(node.module or "")
            if absolute is None:
                self._foreign_import(node, shown, node.module or "")
                return
            module = absolute
        index = self.index
        if module not in index.modules and module not in index.packages:
            names = [a.name for a in node.names if a.name != "*"]
            hints = [
                f"`{n}` is defined in {d[0]}: {index.import_line(n, d[0])}"
                for n in names
                if (d := [p for p in index.definers(n, self.path) if p != self.path])
            ]
            fix = "; ".join(hints) if hints else f"import from one of its modules: {self._module_list()}"
            self.add(
                "unresolved-import",
                node.lineno,
                f"`{shown}`: the repository has no module `{module}` ({_module_hint(module)}); {fix}",
            )
            return
        parts = module.split(".")
        for i in range(1, len(parts)):
            self._record(node.lineno, ".".join(parts[:i]), explicit=False)
        for alias in node.names:
            if alias.name == "*":
                self._record(node.lineno, module, explicit=True)
                continue
            sub = f"{module}.{alias.name}"
            if sub in index.modules or sub in index.packages:
                self._record(node.lineno, module, explicit=False)
                self._record(node.lineno, sub, explicit=True)
                continue
            known = index.defines(module, alias.name)
            self._record(node.lineno, module, explicit=True)
            if known is False or (known is None and module not in index.modules):
                where = index.modules.get(module, module.replace(".", "/") + "/")
                others = [p for p in index.definers(alias.name, self.path) if p != self.path]
                fix = (
                    f"it is defined in {others[0]}: {index.import_line(alias.name, others[0])}"
                    if others
                    else f"{_defined_names(index, where)}; use one of those names, or define `{alias.name}` there"
                )
                self.add("unresolved-import", node.lineno, f"`{shown}`: {where} does not define `{alias.name}`; {fix}")

    def _foreign_import(self, node: ast.ImportFrom, shown: str, module: str) -> None:
        """A module outside the repository is third-party and not judged, unless it is no module of the
        standard library and a name it should provide is one the repository defines: a misspelt own module."""
        top = module.split(".")[0]
        if not top or top in sys.stdlib_module_names or top in _THIRD_PARTY_MODULES or top in self.index.packages_used:
            return
        try:
            if importlib.util.find_spec(top) is not None:  # a top-level lookup on the path: nothing is imported
                return
        except (ImportError, ValueError):
            pass
        for alias in node.names:
            definers = [p for p in self.index.definers(alias.name, self.path) if p != self.path]
            if definers:
                self.add(
                    "unresolved-import",
                    node.lineno,
                    f"`{shown}`: the repository has no module `{module}` "
                    f"({_module_hint(module)}), and `{alias.name}` is defined in {definers[0]}; import it: "
                    f"{self.index.import_line(alias.name, definers[0])}",
                )
                return

    def _module_list(self) -> str:
        names = sorted(n for n in self.index.modules if self.index.modules[n] != self.path)
        return ", ".join(names[:12]) + (", ..." if len(names) > 12 else "") if names else "(none yet)"

    # -- design: classes and methods

    def _classes(self) -> None:
        index = self.index
        nodes = index.classes.get(self.path, {})
        for name, spec in index.designed.items():
            if spec.file != self.path or name in nodes:
                continue
            elsewhere = [p for p in index.class_sites(name) if p != self.path]
            if elsewhere:
                line = index.classes[elsewhere[0]][name].lineno
                self.add(
                    "missing-class",
                    0,
                    f"the design places class `{name}` here, but it is defined in "
                    f"{elsewhere[0]}:{line}; move the definition here and import it there",
                )
            else:
                self.add(
                    "missing-class",
                    0,
                    f"the design places class `{name}` here; define `class {name}` with "
                    f"its methods: {_spec_methods(spec)}",
                )
        for name, node in nodes.items():
            placed = index.designed.get(name)
            if placed is not None and placed.file == self.path:
                self._methods(placed, node)
            elif placed is not None:
                check = "duplicated-class" if name in index.classes.get(placed.file, {}) else "misplaced-class"
                self.add(
                    check,
                    node.lineno,
                    f"the design places class `{name}` in {placed.file}; delete this "
                    f"definition and import it: {index.import_line(name, placed.file)}",
                )
            elif not name.startswith("_"):  # a private helper class is each module's own business
                copies = [p for p in index.class_sites(name) if _same_shape(index.classes[p][name], node)]
                owner = copies[0]
                if owner != self.path:
                    line = index.classes[owner][name].lineno
                    self.add(
                        "duplicated-class",
                        node.lineno,
                        f"class `{name}` is already defined in {owner}:{line}; "
                        f"delete this copy and import it: {index.import_line(name, owner)}",
                    )

    def _methods(self, spec: ClassSpec, node: ast.ClassDef) -> None:
        for method in spec.methods:
            designed = _design_arity(method.args)
            found = self._find_method(node, method.name, depth=0)
            if found is None:
                inherited = any(
                    not _repo_base(self.index, self.path, base)
                    for base in node.bases
                    if _base_name(base) not in ("object", "ABC", "Generic", "Protocol")
                )
                if method.name == "__init__" and _is_record_class(node):
                    actual: tuple[int, float] | None = _record_arity(node)
                else:
                    self.add(
                        "missing-method",
                        node.lineno,
                        f"the design gives `{spec.name}` the method "
                        f"`{method.name}({method.args})`; define `def {method.name}(self"
                        f"{', ' + method.args if method.args.strip() else ''})` in class {spec.name}",
                        "warning" if inherited else "error",
                    )
                    continue
            else:
                actual = _def_arity(found) if isinstance(found, (ast.FunctionDef, ast.AsyncFunctionDef)) else None
            if designed is None or actual is None:
                continue
            low, high = actual
            if not low <= designed <= high:
                takes = f"{low}" if low == high else f"{low} to {'any number' if high == float('inf') else int(high)}"
                self.add(
                    "method-arity",
                    getattr(found, "lineno", node.lineno),
                    f"`{spec.name}.{method.name}` takes {takes} parameter(s) besides self, the design gives it "
                    f"{designed}: `{method.name}({method.args})`; change the signature to match (extra "
                    "parameters need defaults)",
                )

    def _find_method(self, node: ast.ClassDef, name: str, depth: int) -> ast.stmt | None:
        for stmt in _module_statements(node.body):
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and stmt.name == name:
                return stmt
            if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                if any(name in assigned_names(t) for t in targets):
                    return stmt
        if depth > 5:
            return None
        for base in node.bases:
            found = _repo_base(self.index, self.path, base)
            if found is not None:
                result = self._find_method(found, name, depth + 1)
                if result is not None:
                    return result
        return None

    # -- design: dependencies

    def _dependencies(self) -> None:
        logic = self.index.logic
        if logic is None or self.path not in logic.order:
            return
        declared = [d for d in logic.dependencies(self.path) if d.endswith(".py") and d != self.path]
        reached = set(self.explicit) | self.implicit
        for path in list(self.explicit):
            if path.endswith("__init__.py"):
                reached |= _init_sources(self.index, path)
        self.declared_count = len(declared)
        for dep in declared:
            if dep in reached:
                self.imported_count += 1
                continue
            if dep not in self.index.sources:
                continue  # not written yet: what it will define is unknown (a complete repository reports it missing)
            defines = _defined_names(self.index, dep)
            self.add(
                "unused-dependency",
                0,
                f"the logic design says this file depends on {dep}, but it imports "
                f"nothing from it ({defines}); import what you use from it instead of redefining it",
                "warning",
            )
        for path, line in sorted(self.explicit.items(), key=lambda item: item[1]):
            if path in declared:
                continue
            if path.endswith("__init__.py"):  # a package: fine when it re-exports a declared file of its own
                folder = path[: -len("__init__.py")]
                if path not in self.index.sources and any(d.startswith(folder) for d in declared):
                    continue  # not written yet: it may
                if _init_sources(self.index, path) & set(declared):
                    continue
            listed = ", ".join(declared) if declared else "none"
            self.add(
                "undeclared-dependency",
                line,
                f"imports from {path}, which the logic design does not list as "
                f"a dependency of this file (declared: {listed}); import from a declared file, or add {path} to "
                "this file's depends_on in the logic design",
                "warning",
            )

    # -- config keys

    def _config_keys(self, tree: ast.Module) -> None:
        if self.index.config is None:
            return
        for read in missing_config_reads(tree, self.index.config):
            tail = "; it falls back to its default" if read.has_default else ""
            self.add(
                "missing-config-key",
                read.line,
                f"`{read.code}` reads `{read.dotted}`, which config.yaml does not define{tail}; {read.hint}",
                "warning" if read.has_default else "error",
            )

    # -- entry point

    def _entry_point(self, tree: ast.Module) -> None:
        if self.path != self.index.entry:
            return
        if not _has_main_guard(tree) and not _runs_at_top_level(tree):
            self.add(
                "entry-point",
                0,
                "this file is the entry point that runs the experiment, but running it does "
                'nothing; add `if __name__ == "__main__":` calling the function that runs it',
            )


# ----------------------------------------------------------------------------------------------- helpers


def _module_hint(module: str) -> str:
    return f"no {module.replace('.', '/')}.py or {module.replace('.', '/')}/__init__.py"


def _defined_names(index: _Index, path: str) -> str:
    binds = index.bindings.get(path)
    if binds is None:
        return f"{path} is not written yet" if path not in index.sources else f"{path} does not parse"
    names = [n for n, b in binds.items() if b.kind != "import" and n != "*" and not n.startswith("_")]
    if not names:
        return f"{path} defines nothing public"
    return f"{path} defines: " + ", ".join(names[:15]) + (", ..." if len(names) > 15 else "")


def _spec_methods(spec: ClassSpec) -> str:
    return ", ".join(f"{m.name}({m.args})" for m in spec.methods) or "(none designed)"


def _base_name(base: ast.expr) -> str:
    if isinstance(base, ast.Name):
        return base.id
    if isinstance(base, ast.Attribute):
        return base.attr
    if isinstance(base, ast.Subscript):
        return _base_name(base.value)
    return ""


def _repo_base(index: _Index, path: str, base: ast.expr) -> ast.ClassDef | None:
    """The class statement of a base class defined in the repository (in this file or imported by name)."""
    name = _base_name(base)
    binds = index.bindings.get(path, {})
    binding = binds.get(name)
    if binding is None:
        return None
    target_path: str | None = path
    if binding.kind == "import":
        source = binding.source
        if source.startswith("."):
            return None
        target_path = index.modules.get(source)
    tree = index.trees.get(target_path or "")
    if tree is None:
        return None
    for stmt in _module_statements(tree.body):
        if isinstance(stmt, ast.ClassDef) and stmt.name == name:
            return stmt
    return None


def _init_sources(index: _Index, init_path: str) -> set[str]:
    """Repository files a package's __init__.py imports from (what it re-exports)."""
    package = (module_name(init_path) or "").split(".")
    found: set[str] = set()
    for name, binding in index.bindings.get(init_path, {}).items():
        if binding.kind != "import":
            continue
        for source in binding.source.split(","):
            rest = source.lstrip(".")
            level = len(source) - len(rest)
            base = package[: len(package) - level + 1] if level else []
            module = ".".join(base + ([rest] if rest else []))
            for candidate in (module, f"{module}.{name}"):
                if candidate in index.modules:
                    found.add(index.modules[candidate])
    return found


def _is_record_class(node: ast.ClassDef) -> bool:
    """A dataclass or NamedTuple: its __init__ is generated from its annotated fields."""
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if _base_name(target) in ("dataclass", "define", "attrs", "frozen"):
            return True
    return any(_base_name(b) in ("NamedTuple", "BaseModel") for b in node.bases)


def _record_arity(node: ast.ClassDef) -> tuple[int, float]:
    required = total = 0
    for stmt in node.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            if "ClassVar" in ast.unparse(stmt.annotation):
                continue
            total += 1
            required += stmt.value is None
    return required, float(total)


def _def_arity(node: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[int, float]:
    """(required, most) parameters besides self/cls; most is infinite with *args or **kwargs."""
    args = node.args
    positional = [*args.posonlyargs, *args.args]
    static = any(_base_name(d) == "staticmethod" for d in node.decorator_list)
    if positional and not static:
        positional = positional[1:]
    required = len(positional) - len(args.defaults) + sum(d is None for d in args.kw_defaults)
    most = float("inf") if args.vararg or args.kwarg else float(len(positional) + len(args.kwonlyargs))
    return max(required, 0), most


def _design_arity(text: str) -> int | None:
    """How many parameters (besides self/cls, *args and **kwargs) a designed signature names; None if unclear."""
    text = text.strip().strip("()")
    if text.casefold() in ("", "none", "-", "void", "n/a", "self"):
        return 0
    try:
        parsed = pysource.parse(f"def _f({text}): pass").body[0]
    except SyntaxError:
        parsed = None
    if isinstance(parsed, ast.FunctionDef):
        names = [a.arg for a in [*parsed.args.posonlyargs, *parsed.args.args, *parsed.args.kwonlyargs]]
        return len([n for n in names if n not in ("self", "cls")])
    depth, count, current = 0, 0, ""
    for ch in text + ",":
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            item = current.strip()
            if item and not item.startswith("*") and item not in ("self", "cls", "..."):
                count += 1
            current = ""
        else:
            current += ch
    return count if depth == 0 else None
