"""The stage registry: the one place that says which stages a run has, in which order, and what each is.

The pipeline, the run store, the prompt builder, the estimate, the CLI, the magics and the widget all read it, so
a new stage is one module (its `make` function) plus one `register(Stage(...))`. The built-in stages are declared
once, below, with `make` as "module:function" strings resolved on first use: this module imports no stage module,
the run store or the UI, so everything may import it without a cycle.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from p2c_notebook.errors import ConfigError, RunError
from p2c_notebook.paths import safe_relative_path
from p2c_notebook.stages.artifacts import ArchitectureDesign, LogicDesign

if TYPE_CHECKING:
    from p2c_notebook.run.store import Entry
    from p2c_notebook.stages.context import StageContext

#: The paper as the model sees it: an artifact every stage is made from, but not a model stage.
PAPER = "paper"
PAPER_PATH = "paper/paper.md"
#: The user's answers to the planning's open questions (`p2c questions`): an input of the stages that declare it,
#: recorded only once there are answers, so a run without any records (and asks) what it always did.
ANSWERS = "answers"
ANSWERS_PATH = "planning/answers.yaml"
OPTIONAL_INPUTS = frozenset({ANSWERS})


@dataclass(frozen=True)
class Stage:
    """One stage: what it makes, where that lives, what it is made from, and how people call it."""

    name: str
    label: str  # how the widget names it: "overall plan", "architecture design", ...
    path: str  # in the run folder; a per-file stage's has "{file}": "analysis/{file}.md", "repo/{file}"
    # (ctx, feedback) -> Entry, or per file (ctx, path, feedback) -> Entry; "module:function" is imported on first use
    make: Callable[..., Entry] | str
    per_file: bool = False
    context: tuple[str, ...] = ()  # earlier stages whose task/answer pairs this stage's conversation repeats
    # What it is made from (recorded as its input hashes): "paper", stage names, "analysis/{file}" (the same
    # file's), "code/{deps}" (the files it imports, from the logic design), "code/*" (every planned file)
    inputs: tuple[str, ...] = (PAPER,)
    group: str = ""  # what `--from planning` / `p2c approve planning` mean; "" is its own name
    verb: str = ""  # its `%p2c` magic ("plan", "analyze", "code"); "" is `%p2c run`
    aliases: tuple[str, ...] = ()  # other names for it on the command line
    prompt: str = ""  # its task template in p2c_notebook/prompts ("" is its name)
    schema: type[BaseModel] | None = None  # the JSON schema its reply must follow
    typical_output: int = 1000  # the estimate's stand-in reply size, in tokens
    kind: str = "markdown"  # how views render it: markdown | json | yaml | code
    on_request: bool = False  # made only when asked for (`--until NAME`, `p2c exec`), never by a default run

    @property
    def family(self) -> str:
        return self.group or self.name

    @property
    def title(self) -> str:
        """The label as a heading: "Overall plan" (a file name such as config.yaml keeps its case)."""
        return self.label if "." in self.label else self.label[:1].upper() + self.label[1:]

    @property
    def template(self) -> str:
        return self.prompt or self.name

    def function(self) -> Callable[..., Entry]:
        """The function that makes this stage's artifact (imported now when declared as "module:function")."""
        if callable(self.make):
            return self.make
        module, _, name = self.make.partition(":")
        made: Callable[..., Entry] = getattr(importlib.import_module(module), name)
        return made

    def artifact(self, file: str = "") -> str:
        return f"{self.name}/{file}" if self.per_file else self.name


_PLANNING = ("plan", "design", "logic", "config")
_BUILT_IN = (
    Stage(
        "plan",
        "overall plan",
        "planning/plan.md",
        "p2c_notebook.stages.planning:make_plan",
        inputs=(PAPER,),
        group="planning",
        verb="plan",
        aliases=("planning",),
        typical_output=1500,
    ),
    Stage(
        "design",
        "architecture design",
        "planning/design.json",
        "p2c_notebook.stages.planning:make_design",
        context=("plan",),
        inputs=(PAPER, "plan"),
        group="planning",
        verb="plan",
        schema=ArchitectureDesign,
        typical_output=1200,
        kind="json",
    ),
    Stage(
        "logic",
        "logic design",
        "planning/logic.json",
        "p2c_notebook.stages.planning:make_logic",
        context=("plan", "design"),
        inputs=(PAPER, "plan", "design"),
        group="planning",
        verb="plan",
        schema=LogicDesign,
        typical_output=1200,
        kind="json",
    ),
    # config.yaml takes its values from the paper and the plan only, so it is written alongside the
    # architecture and logic designs, off the critical path.
    Stage(
        "config",
        "config.yaml",
        "planning/config.yaml",
        "p2c_notebook.stages.planning:make_config",
        context=("plan",),
        inputs=(PAPER, "plan"),
        group="planning",
        verb="plan",
        typical_output=300,
        kind="yaml",
    ),
    Stage(
        "analysis",
        "analysis",
        "analysis/{file}.md",
        "p2c_notebook.stages.analysis:analyze_file",
        per_file=True,
        inputs=(PAPER, *_PLANNING, ANSWERS),
        verb="analyze",
        aliases=("analyze",),
        typical_output=800,
    ),
    Stage(
        "code",
        "code",
        "repo/{file}",
        "p2c_notebook.stages.coding:code_file",
        per_file=True,
        inputs=(PAPER, *_PLANNING, ANSWERS, "analysis/{file}", "code/{deps}"),
        group="coding",
        verb="code",
        aliases=("coding", "repo"),
        typical_output=1500,
        kind="code",
    ),
    # How to run the repository (`bash reproduce.sh --smoke`): on request only, so that a default run (and the
    # cassettes recorded before it existed) asks for what it always did.
    Stage(
        "reproduce",
        "reproduce.sh",
        "repo/reproduce.sh",
        "p2c_notebook.execute.reproduce:make_reproduce",
        inputs=(PAPER, *_PLANNING, "code/*"),
        typical_output=400,
        kind="text",
        on_request=True,
    ),
)
_stages: list[Stage] = list(_BUILT_IN)


# --- changing the registry ------------------------------------------------------------------------------
def register(stage: Stage, after: str | None = None) -> Stage:
    """Add a stage (a plug-in, or a test's toy stage) after `after` (default: last); a name taken is refused."""
    taken = {n for s in _stages for n in (s.name, *s.aliases)} | {PAPER, ANSWERS}
    clash = [n for n in (stage.name, *stage.aliases) if n in taken]
    if clash:
        raise ConfigError(f"A stage named {clash[0]!r} is already registered: choose another name.")
    if "/" in stage.name or not stage.name:
        raise ConfigError(f"A stage name is one word without '/': {stage.name!r} is not.")
    if stage.per_file != ("{file}" in stage.path):
        raise ConfigError(f"Stage {stage.name!r}: a per-file stage's path has {{file}}, and only its path has.")
    index = len(_stages) if after is None else _index(get(after).name) + 1
    _stages.insert(index, stage)
    return stage


def unregister(name: str) -> None:
    """Remove a stage added with `register` (the built-in ones stay)."""
    if name in {s.name for s in _BUILT_IN}:
        raise ConfigError(f"{name!r} is a built-in stage and cannot be removed.")
    _stages[:] = [s for s in _stages if s.name != name]


# --- reading it -----------------------------------------------------------------------------------------
def stages() -> tuple[Stage, ...]:
    """Every stage, in the order a run makes them."""
    return tuple(_stages)


def names() -> tuple[str, ...]:
    return tuple(s.name for s in _stages)


def find(name: str) -> Stage | None:
    """The stage `name` (or one of its aliases) names, or None."""
    return next((s for s in _stages if name == s.name or name in s.aliases), None)


def get(name: str) -> Stage:
    """The stage `name` (or one of its aliases) names; an unknown name is a ConfigError naming the known ones."""
    stage = find(name)
    if stage is None:
        raise ConfigError(f"Unknown stage {name!r}: use one of {describe()}.")
    return stage


def describe() -> str:
    """The stage names for help texts and errors: "plan, ..., code (or planning, coding)"."""
    extra = [g for g in groups() if g not in names()]
    return ", ".join(names()) + (f" (or {', '.join(extra)})" if extra else "")


def groups() -> tuple[str, ...]:
    """The stage groups in order ("planning", "analysis", "coding"): what `p2c approve GROUP` approves."""
    return tuple(dict.fromkeys(s.family for s in _stages))


def in_group(group: str) -> tuple[Stage, ...]:
    return tuple(s for s in _stages if s.family == group)


def index(name: str) -> int:
    """The position of the stage `name` (or an alias) in the run; ConfigError when unknown."""
    return _index(get(name).name)


def _index(name: str) -> int:
    return [s.name for s in _stages].index(name)


def planning() -> tuple[Stage, ...]:
    """The stages made once per run before the per-file stages (plan, design, logic, config)."""
    first = next((i for i, s in enumerate(_stages) if s.per_file), len(_stages))
    return tuple(_stages[:first])


def planning_names() -> tuple[str, ...]:
    return tuple(s.name for s in planning())


def file_stages() -> tuple[Stage, ...]:
    """The stages made once per planned file (analysis, code), in order."""
    return tuple(s for s in _stages if s.per_file)


def finishing() -> tuple[Stage, ...]:
    """The stages made once per run after the per-file ones: they run once every file is made."""
    return tuple(s for s in _stages if not s.per_file and s not in planning())


def last_by_default() -> int:
    """The index of the last stage a run without `--until` makes: a stage made on request only is not one."""
    return max((i for i, s in enumerate(_stages) if not s.on_request), default=len(_stages) - 1)


def verbs() -> dict[str, str]:
    """Each `%p2c` verb and the last stage it runs until ("plan" -> "config", "analyze" -> "analysis", ...)."""
    until: dict[str, str] = {}
    for stage in _stages:
        if stage.verb:
            until[stage.verb] = stage.name
    return until


def verb_for(stage: str) -> str:
    """The `%p2c` verb that makes `stage` ("run" for a stage without one of its own)."""
    return get(stage).verb or "run"


# --- artifacts ------------------------------------------------------------------------------------------
def stage_of(artifact: str) -> str:
    """The stage an artifact id belongs to: "code/models/net.py" -> "code"."""
    return artifact.partition("/")[0]


def artifact_file(artifact: str) -> str:
    """Where an artifact lives inside the run folder (relative path)."""
    if artifact == PAPER:
        return PAPER_PATH
    if artifact == ANSWERS:
        return ANSWERS_PATH
    name, slash, file = artifact.partition("/")
    stage = next((s for s in _stages if s.name == name and s.per_file == bool(slash)), None)
    if stage is None:
        known = [PAPER, *(s.name + "/FILE" if s.per_file else s.name for s in _stages)]
        raise RunError(f"Unknown artifact {artifact!r}: use {', '.join(known[:-1])} or {known[-1]}.")
    return stage.path.replace("{file}", safe_relative_path(file)) if stage.per_file else stage.path


def artifacts(files: list[str], stage_list: tuple[Stage, ...] | None = None) -> list[str]:
    """The artifact ids of `stage_list` (default: every stage) for the planned `files`, in run order."""
    result: list[str] = []
    for stage in _stages if stage_list is None else stage_list:
        result += [stage.artifact(f) for f in files] if stage.per_file else [stage.name]
    return result


def inputs_for(artifact: str, logic: LogicDesign | None = None) -> list[str]:
    """What an artifact is made from, as its stage records it (`Stage.inputs` with the files filled in).

    The per-file items need the logic design and a planned file; without them only the others are given."""
    name, _, file = artifact.partition("/")
    stage = get(name)
    known = logic is not None and (not stage.per_file or file in logic.order)
    result: list[str] = []
    for item in stage.inputs:
        kind, slash, pattern = item.partition("/")
        if not slash:
            result.append(item)
        elif not known or logic is None:
            continue
        elif pattern == "{file}":
            result.append(f"{kind}/{file}")
        elif pattern == "{deps}":
            result += [f"{kind}/{d}" for d in logic.dependencies(file)]
        elif pattern == "*":
            result += [f"{kind}/{f}" for f in logic.order]
        else:
            result.append(item)
    return result


def schemas() -> dict[str, type[BaseModel]]:
    """The stages whose replies follow a JSON schema, and the schema."""
    return {s.name: s.schema for s in _stages if s.schema is not None}


def make(ctx: StageContext, artifact: str, feedback: str | None = None) -> Entry:
    """Make one artifact with its stage's function (the one dispatch: runs and regenerations both use it)."""
    name, _, file = artifact.partition("/")
    stage = find(name)
    if stage is None or stage.name != name or stage.per_file != bool(file):
        raise RunError(f"{artifact} cannot be regenerated: no stage makes it.")
    function: Callable[..., Any] = stage.function()
    made: Entry = function(ctx, file, feedback) if stage.per_file else function(ctx, feedback)
    return made
