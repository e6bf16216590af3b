"""Typed artifacts of the three stages, and the checks that tie them together."""

from __future__ import annotations

from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from p2c_notebook.errors import PlanError
from p2c_notebook.paths import safe_relative_path

# Bounds keep grammar-constrained decoding (small local models) from running forever.
_SHORT = 200
_LONG = 4000
#: files a design may plan unless the `max_files` setting says otherwise (the JSON schema the model sees says this)
MAX_FILES = 40
#: the most `max_files` may be: a design is read (and a saved one re-read) up to this many files
MAX_FILES_CEILING = 200


def within_max_files(value: list[Any], info: ValidationInfo) -> list[Any]:
    """The run's bound on planned files, passed as validation context {"max_files": n} where a design is made or
    edited (a saved one is read up to `MAX_FILES_CEILING`); said as pydantic says a list is too long."""
    bound = (info.context or {}).get("max_files") if isinstance(info.context, dict) else None
    if isinstance(bound, int) and len(value) > bound:
        raise PydanticCustomError(
            "too_long",
            "List should have at most {max_length} items after validation, not {actual_length}",
            {"field_type": "List", "max_length": bound, "actual_length": len(value)},
        )
    return value


def max_files_context(max_files: int) -> dict[str, int]:
    """The validation context that bounds a design made or edited in a run to `max_files` files."""
    return {"max_files": max_files}


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
    # The schema the model is shown keeps the default bound (the prompt it always was); a design is read up to the
    # ceiling, and the run's own bound is checked where one is made or edited (`within_max_files`).
    file_list: list[str] = Field(min_length=1, max_length=MAX_FILES_CEILING, json_schema_extra={"maxItems": MAX_FILES})
    classes: list[ClassSpec] = Field(default_factory=list, max_length=40)
    relations: list[Relation] = Field(default_factory=list, max_length=60)
    sequence: SequenceDiagram = Field(default_factory=SequenceDiagram)
    open_questions: list[str] = Field(default_factory=list, max_length=20)

    _repeated: list[str] = PrivateAttr(default_factory=list)

    @field_validator("file_list")
    @classmethod
    def _paths_are_safe(cls, value: list[str], info: ValidationInfo) -> list[str]:
        return check_file_list(within_max_files(value, info))

    @model_validator(mode="wrap")
    @classmethod
    def _note_repeats(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> ArchitectureDesign:
        """Remember files the reply listed more than once (kept once), for `check` to mention."""
        design: ArchitectureDesign = handler(data)
        raw = data.get("file_list") if isinstance(data, dict) else None
        if isinstance(raw, list) and len(raw) > len(design.file_list):
            listed = [safe_relative_path(p) for p in raw]
            design._repeated = [p for p in design.file_list if listed.count(p) > 1]
        return design

    def check(self) -> list[str]:
        """Consistency warnings that do not invalidate the design (returned, not raised)."""
        warnings = [f"{p!r} was listed more than once; kept once" for p in self._repeated]
        files = set(self.file_list)
        names = {c.name for c in self.classes}
        for spec in self.classes:
            if spec.file not in files:
                warnings.append(
                    f"class {spec.name} lives in {spec.file!r}, which is not in the file list: add the file to the "
                    "design's file_list or move the class (Edit the design), or Regenerate it with that as feedback"
                )
        for message in self.sequence.messages:
            for end in (message.source, message.target):
                if end not in names and end not in self.sequence.participants:
                    warnings.append(
                        f"sequence message {message.call!r} names unknown participant {end!r}: add {end!r} to the "
                        "design's sequence participants or classes (Edit the design), or Regenerate the design "
                        "with that as feedback"
                    )
        return warnings


class FileLogic(BaseModel):
    path: str = Field(max_length=_SHORT)
    role: str = Field(max_length=_LONG)
    depends_on: list[str] = Field(
        default_factory=list, max_length=MAX_FILES_CEILING, json_schema_extra={"maxItems": MAX_FILES}
    )

    _depends_within = field_validator("depends_on")(within_max_files)


class LogicDesign(BaseModel):
    """The logic design l: files in dependency order, with roles, packages and shared knowledge."""

    files: list[FileLogic] = Field(
        min_length=1, max_length=MAX_FILES_CEILING, json_schema_extra={"maxItems": MAX_FILES}
    )
    required_packages: list[str] = Field(default_factory=list, max_length=40)
    shared_knowledge: str = Field(default="", max_length=_LONG)
    open_questions: list[str] = Field(default_factory=list, max_length=20)

    _files_within = field_validator("files")(within_max_files)

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
        warnings = []
        firsts: dict[str, FileLogic] = {}
        for item in normalised:
            if item.path in firsts:
                warnings.append(f"The logic design lists {item.path} more than once; kept its first entry.")
            firsts.setdefault(item.path, item)
        normalised = list(firsts.values())
        paths = [f.path for f in normalised]
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
    """Normalise planned paths (NFC); keep the first of exact duplicates; reject unsafe paths, names that
    collide on some file system (case, look-alike letters) and a name used both as a file and as a folder.

    Raises before any file is written or asked for, so a bad plan never fails half-way through the code.
    """
    result: list[str] = []
    seen: dict[str, str] = {}
    for raw in paths:
        path = safe_relative_path(raw)
        if path in result:
            continue  # the same file twice: listed once (ArchitectureDesign.check says so)
        key = _skeleton(path.casefold())
        if key in seen:
            same = seen[key].casefold() == path.casefold()
            how = "the same file on many file systems" if same else "names that look alike"
            raise PlanError(f"The file list names {seen[key]!r} and {raw!r}: {how}. Keep one of them.")
        seen[key] = path
        result.append(path)
    _check_files_and_folders(result)
    return result


#: What p2c itself writes into repo/: a planned folder of that name would make the write fail.
_OWN_REPO_FILES = ("config.yaml",)
#: Letters of other scripts drawn like Latin ones (after case folding): two names differing only in these
#: would be told apart by no reader. Names mixing scripts are refused by the sanitiser; this catches a name
#: written wholly in look-alikes (Cyrillic `сор.py` beside `cop.py`).
_LOOK_ALIKES = str.maketrans(
    "\u0430\u0435\u043e\u0440\u0441\u0443\u0445\u0455\u0456\u0458\u04bb\u0501\u051b\u051d"
    "\u03bf\u03bd\u03b9\u03c1\u03ba\u03c5\u03c7\u0585\u0578\u057d",
    "aeopcyxsijhdqwovipkuxonu",
)


def _skeleton(folded: str) -> str:
    return folded.translate(_LOOK_ALIKES)


def _check_files_and_folders(paths: list[str]) -> None:
    """Each name is a file or a folder, never both: `model` beside `model/x.py` (or `model.md/x.py`, whose
    folder is where the notes of `model` are saved) could not be written. Compared case-folded, as on the
    file systems that ignore case, where `Models/` and `models/` are also one folder."""
    planned = {p.casefold(): p for p in paths}
    files = {**{p.casefold(): p for p in _OWN_REPO_FILES}, **planned}
    folders: dict[str, str] = {}
    for path in paths:
        parts = path.split("/")
        for end in range(1, len(parts)):
            folder = "/".join(parts[:end])
            key = folder.casefold()
            if key in files:
                mine = " (p2c writes the run's config there)" if key not in planned else ""
                raise PlanError(
                    f"The file list uses {files[key]!r}{mine} both as a file and as the folder of {path!r}. "
                    "Rename one of them."
                )
            if key.endswith(".md") and key[:-3] in planned:
                raise PlanError(
                    f"The notes on {planned[key[:-3]]!r} are saved as analysis/{planned[key[:-3]]}.md, which "
                    f"{path!r} needs as a folder. Rename one of them."
                )
            if folders.setdefault(key, folder) != folder:
                raise PlanError(
                    f"The file list spells one folder two ways ({folders[key]!r} and {folder!r}): the same "
                    "folder on many file systems. Use one spelling."
                )


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
