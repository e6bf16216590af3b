"""Typed artifacts of the three stages, and the checks that tie them together."""

from __future__ import annotations

from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, field_validator

from p2c_notebook.errors import PlanError
from p2c_notebook.paths import safe_relative_path

# Bounds keep grammar-constrained decoding (small local models) from running forever.
_SHORT = 200
_LONG = 4000


class Attribute(BaseModel):
    name: str = Field(max_length=_SHORT)
    type: str = Field(default="", max_length=_SHORT)


class Method(BaseModel):
    name: str = Field(max_length=_SHORT)
    args: str = Field(default="", max_length=_SHORT, description="e.g. 'x: Tensor, mask: Tensor | None'")
    returns: str = Field(default="None", max_length=_SHORT)


class ClassSpec(BaseModel):
    name: str = Field(max_length=_SHORT)
    file: str = Field(max_length=_SHORT, description="the planned file this class lives in")
    attributes: list[Attribute] = Field(default_factory=list, max_length=30)
    methods: list[Method] = Field(default_factory=list, max_length=30)


class Relation(BaseModel):
    source: str = Field(max_length=_SHORT)
    target: str = Field(max_length=_SHORT)
    kind: Literal["inherits", "composes", "aggregates", "uses"] = "uses"
    label: str = Field(default="", max_length=_SHORT)


class Message(BaseModel):
    source: str = Field(max_length=_SHORT)
    target: str = Field(max_length=_SHORT)
    call: str = Field(max_length=_SHORT, description="method called, e.g. 'train(epochs)'")
    returns: str = Field(default="", max_length=_SHORT)


class SequenceDiagram(BaseModel):
    participants: list[str] = Field(default_factory=list, max_length=30)
    messages: list[Message] = Field(default_factory=list, max_length=60)


class ArchitectureDesign(BaseModel):
    """The architecture design d: file list, class diagram and call flow."""

    implementation_approach: str = Field(max_length=_LONG)
    file_list: list[str] = Field(min_length=1, max_length=40)
    classes: list[ClassSpec] = Field(default_factory=list, max_length=40)
    relations: list[Relation] = Field(default_factory=list, max_length=60)
    sequence: SequenceDiagram = Field(default_factory=SequenceDiagram)
    open_questions: list[str] = Field(default_factory=list, max_length=20)

    @field_validator("file_list")
    @classmethod
    def _paths_are_safe(cls, value: list[str]) -> list[str]:
        return check_file_list(value)

    def check(self) -> list[str]:
        """Consistency warnings that do not invalidate the design (returned, not raised)."""
        warnings: list[str] = []
        files = set(self.file_list)
        names = {c.name for c in self.classes}
        for spec in self.classes:
            if spec.file not in files:
                warnings.append(f"class {spec.name} lives in {spec.file!r}, which is not in the file list")
        for message in self.sequence.messages:
            for end in (message.source, message.target):
                if end not in names and end not in self.sequence.participants:
                    warnings.append(f"sequence message {message.call!r} names unknown participant {end!r}")
        return warnings


class FileLogic(BaseModel):
    path: str = Field(max_length=_SHORT)
    role: str = Field(max_length=_LONG)
    depends_on: list[str] = Field(default_factory=list, max_length=40)


class LogicDesign(BaseModel):
    """The logic design l: files in dependency order, with roles, packages and shared knowledge."""

    files: list[FileLogic] = Field(min_length=1, max_length=40)
    required_packages: list[str] = Field(default_factory=list, max_length=40)
    shared_knowledge: str = Field(default="", max_length=_LONG)
    open_questions: list[str] = Field(default_factory=list, max_length=20)

    @property
    def order(self) -> list[str]:
        return [f.path for f in self.files]

    def dependencies(self, path: str) -> list[str]:
        for item in self.files:
            if item.path == path:
                return list(item.depends_on)
        raise KeyError(path)

    def check_against(self, design: ArchitectureDesign) -> tuple[LogicDesign, list[str]]:
        """Validate against the design; return a copy ordered dependencies-first, and warnings.

        Raises PlanError when files differ from the design, a dependency is unknown, or there is a cycle.
        """
        normalised: list[FileLogic] = []
        for item in self.files:
            path = safe_relative_path(item.path)
            deps = [safe_relative_path(d) for d in item.depends_on]
            normalised.append(item.model_copy(update={"path": path, "depends_on": deps}))
        paths = [f.path for f in normalised]
        dupes = sorted({p for p in paths if paths.count(p) > 1})
        if dupes:
            raise PlanError(f"The logic design lists {', '.join(dupes)} more than once.")
        missing = [p for p in design.file_list if p not in paths]
        extra = [p for p in paths if p not in design.file_list]
        if missing or extra:
            raise PlanError(
                "The logic design must order exactly the designed files: "
                + (f"missing {missing}" if missing else "")
                + ("; " if missing and extra else "")
                + (f"not in the design {extra}" if extra else "")
            )
        known = set(paths)
        for item in normalised:
            unknown = [d for d in item.depends_on if d not in known]
            if unknown:
                raise PlanError(f"{item.path} depends on {unknown}, which are not planned files.")
            if item.path in item.depends_on:
                raise PlanError(f"{item.path} depends on itself.")
        ordered = topological_order({f.path: f.depends_on for f in normalised}, paths)
        warnings = []
        if ordered != paths:
            warnings.append("The logic design did not list dependencies first; reordered to " + ", ".join(ordered))
        by_path = {f.path: f for f in normalised}
        fixed = self.model_copy(update={"files": [by_path[p] for p in ordered]})
        return fixed, warnings


class Config(BaseModel):
    """config.yaml, kept as the text the user reads and edits; it must parse to a mapping."""

    text: str

    @field_validator("text")
    @classmethod
    def _parses(cls, value: str) -> str:
        parse_config(value)
        return value


def parse_config(text: str) -> dict[str, Any]:
    """Parse config.yaml safely (no object-constructing tags); raise PlanError with the YAML problem."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PlanError(f"config.yaml does not parse: {exc}") from None
    except RecursionError:
        raise PlanError("config.yaml is nested too deeply: keep settings to a few levels of keys.") from None
    except (ValueError, TypeError, AttributeError) as exc:  # a scalar the YAML types reject: 2024-02-30, !!int x
        raise PlanError(f"config.yaml has a value YAML cannot convert ({exc}): quote it as a string.") from None
    if not isinstance(data, dict) or not data:
        raise PlanError(
            "config.yaml must be a non-empty YAML mapping of settings (`training:` then indented "
            "`learning_rate: 0.1` lines), not Markdown headings or bullet lists."
        )
    return data


def check_file_list(paths: list[str]) -> list[str]:
    """Normalise planned paths; reject unsafe ones and duplicates (also those differing only in case)."""
    result: list[str] = []
    seen: dict[str, str] = {}
    for raw in paths:
        path = safe_relative_path(raw)
        key = path.casefold()
        if key in seen:
            raise PlanError(f"The file list names {seen[key]!r} and {raw!r}: the same file on many file systems.")
        seen[key] = path
        result.append(path)
    return result


def topological_order(deps: dict[str, list[str]], preferred: list[str]) -> list[str]:
    """Order nodes dependencies-first, keeping `preferred` order where possible; PlanError on a cycle."""
    done: list[str] = []
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        if state.get(node) == 2:
            return
        if state.get(node) == 1:
            cycle = trail[trail.index(node) :] + [node]
            raise PlanError("The file dependencies form a cycle: " + " -> ".join(cycle))
        state[node] = 1
        for dep in deps.get(node, []):
            visit(dep, trail + [node])
        state[node] = 2
        done.append(node)

    for node in preferred:
        visit(node, [])
    return done
