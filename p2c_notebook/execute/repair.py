"""The repair loop: a failing smoke run's error goes to the model, which answers with search/replace edits.

Every proposal is validated before anyone sees it (each block must apply exactly once, to a generated file inside
the repository) and applied only once the caller's `approve` says yes; applied edits are new versions of the code
artifacts, with their provenance (round, attempt, error) in the manifest's `fixes`, and the static checks run
again. Rounds are bounded; the loop stops as soon as the smoke run passes.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from p2c_notebook.errors import PlanError
from p2c_notebook.execute import runner
from p2c_notebook.execute.runner import ExecPlan
from p2c_notebook.execute.sandbox import Outcome
from p2c_notebook.paths import safe_relative_path
from p2c_notebook.prompts.builder import render
from p2c_notebook.run.events import Event
from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.run.store import now
from p2c_notebook.run.usage import Usage
from p2c_notebook.stages import runchecks
from p2c_notebook.stages.parsing import ParseError

TRACE_LINES = 60  # lines of the trimmed error the model sees
FILE_LIMIT = 20000  # characters of each named file the model sees
_FRAME = re.compile(r'^  File "(?P<path>[^"]+)", line (?P<line>\d+)')


@dataclass(frozen=True)
class Edit:
    path: str
    search: str
    replace: str


@dataclass(frozen=True)
class Proposal:
    """A validated set of edits: each file's text before and after, and which of them the user edited."""

    round: int
    edits: list[Edit]
    changes: dict[str, tuple[str, str]]
    edited: list[str] = field(default_factory=list)  # files with the user's own edits: need their own yes
    error: str = ""
    usage: Usage = field(default_factory=Usage)

    def diff(self) -> str:
        parts = []
        for path, (old, new) in self.changes.items():
            lines = difflib.unified_diff(
                old.splitlines(keepends=True), new.splitlines(keepends=True), f"a/{path}", f"b/{path}"
            )
            parts.append("".join(lines))
        return "\n".join(parts)

    def lines_changed(self) -> int:
        return sum(1 for line in self.diff().splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---"))


@dataclass(frozen=True)
class FixResult:
    passed: bool
    rounds: int
    outcome: Outcome
    message: str


def repository_path(raw: str, files: set[str]) -> str | None:
    """The repository file a traceback path names ('/sandbox/repo/models/net.py' -> 'models/net.py'), or None."""
    marker = "/repo/"
    if marker not in raw:
        return raw if raw in files else None
    rel = raw.split(marker, 1)[1]
    return rel if rel in files else None


def trim_traceback(log: str, files: set[str]) -> str:
    """The last traceback with only the repository's own frames (library frames become one `...` line)."""
    lines = log.rstrip().splitlines()
    start = max((i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")), default=-1)
    if start < 0:
        return "\n".join(lines[-TRACE_LINES:])
    kept: list[str] = [lines[start]]
    i, skipped = start + 1, False
    while i < len(lines):
        frame = _FRAME.match(lines[i])
        body = lines[i + 1] if i + 1 < len(lines) and lines[i + 1].startswith("    ") else None
        if frame:
            rel = repository_path(frame["path"], files)
            if rel is not None:
                kept.append(lines[i].replace(frame["path"], rel))
                kept += [body] if body is not None else []
                skipped = False
            elif not skipped:
                kept.append("  ...")
                skipped = True
            i += 2 if body is not None else 1
            continue
        kept.append(lines[i])
        i += 1
    return "\n".join(kept[-TRACE_LINES:])


def named_files(trimmed: str, files: set[str]) -> list[str]:
    """The repository files the trimmed error names, innermost (most likely at fault) first."""
    named = [m["path"] for line in trimmed.splitlines() if (m := _FRAME.match(line)) and m["path"] in files]
    return list(dict.fromkeys(reversed(named)))


def parse_edits(reply: str) -> list[Edit]:
    """Search/replace blocks: a path line, `<<<<<<< SEARCH`, old lines, `=======`, new lines, `>>>>>>> REPLACE`."""
    lines = reply.splitlines()
    edits: list[Edit] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() != "<<<<<<< SEARCH":
            i += 1
            continue
        path = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        path = path.strip().strip("`").removeprefix("File:").strip().strip("`")
        try:
            middle = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "=======")
            end = next(j for j in range(middle + 1, len(lines)) if lines[j].strip() == ">>>>>>> REPLACE")
        except StopIteration:
            raise ParseError("a search/replace block is not closed (======= and >>>>>>> REPLACE).") from None
        search, replace = "\n".join(lines[i + 1 : middle]), "\n".join(lines[middle + 1 : end])
        edits.append(Edit(path, search + "\n" if search else "", replace + "\n" if replace else ""))
        i = end + 1
    if not edits:
        raise ParseError("no search/replace block: answer with the path, <<<<<<< SEARCH, =======, >>>>>>> REPLACE.")
    return edits


def apply_edits(current: dict[str, str], edits: list[Edit]) -> dict[str, tuple[str, str]]:
    """Each touched file's (old, new) text; PlanError when a block escapes the repository, names a file that is not
    generated code, or does not match exactly once (nothing is applied then)."""
    changes: dict[str, tuple[str, str]] = {}
    for edit in edits:
        path = safe_relative_path(edit.path)  # UnsafePathError (a PlanError) for ../, /abs, ~ and the like
        if path not in current:
            raise PlanError(f"The fix edits {path}, which is not a generated file of this repository: refused.")
        old, text = changes.get(path, (current[path], current[path]))
        found = text.count(edit.search) if edit.search else 0
        if found != 1:
            where = "nowhere" if found == 0 else f"{found} times"
            raise PlanError(f"A search block for {path} matches {where}; it must match exactly once: refused.")
        changes[path] = (old, text.replace(edit.search, edit.replace, 1))
    return {path: pair for path, pair in changes.items() if pair[0] != pair[1]}


def propose(pipeline: Pipeline, exec_plan: ExecPlan, outcome: Outcome, round_number: int) -> Proposal:
    """One model call: the trimmed error, the files it names (or the entry point) and their analyses."""
    store = pipeline.store
    rows = {r.artifact: r for r in pipeline.rows()}
    current = {a.removeprefix("code/"): store.read(a) for a in rows if a.startswith("code/") and store.entry(a)}
    log = (exec_plan.run_dir / outcome.log).read_text(errors="replace")
    error = trim_traceback(log, set(current)) + f"\n[{outcome.reason}]"
    shown = named_files(error, set(current)) or [f for f in ("main.py",) if f in current]
    blocks = []
    for path in shown[:4]:
        analysis = store.read(f"analysis/{path}") if store.entry(f"analysis/{path}") else "(no analysis)"
        blocks.append(f"{path}:\n```python\n{current[path][:FILE_LIMIT]}```\n\nAnalysis of {path}:\n{analysis}")
    task = render("fix", command=" ".join(exec_plan.command), error=error, files="\n\n".join(blocks))
    messages = [{"role": "system", "content": render("system")}, {"role": "user", "content": task}]
    ctx = pipeline._context()

    def parse(reply: str) -> tuple[list[Edit], dict[str, tuple[str, str]]]:
        edits = parse_edits(reply)
        try:
            changes = apply_edits(current, edits)
        except PlanError as exc:  # a block that does not apply: the model gets one chance to correct it
            raise ParseError(str(exc)) from None
        if not changes:
            raise ParseError("the edits change nothing; answer with the edit that fixes the error.")
        return edits, changes

    (edits, changes), usage = ctx.ask(f"fix/{round_number}", "fix", "", messages, parse)
    edited = [p for p in changes if rows[f"code/{p}"].status == "edited"]
    return Proposal(round_number, edits, changes, edited, error, usage)


def apply(pipeline: Pipeline, proposal: Proposal, attempt: int) -> list[str]:
    """Save each changed file as a new version of its code artifact and record where the fix came from."""
    store = pipeline.store
    with store.locked():
        store.reload()
        for path, (_, new) in proposal.changes.items():
            entry = store.entry(f"code/{path}")
            inputs = dict(entry.inputs) if entry is not None else {}
            store.save(f"code/{path}", new, inputs, pipeline.backend.model, proposal.usage)
        fixes = [
            *store.meta.get("fixes", []),
            {
                "round": proposal.round,
                "attempt": attempt,
                "error": proposal.error.splitlines()[-2] if proposal.error.count("\n") else proposal.error,
                "files": sorted(proposal.changes),
                "lines_changed": proposal.lines_changed(),
                "at": now(),
            },
        ]
        store.set_meta(fixes=fixes)
    runchecks.current(store.root)
    return sorted(proposal.changes)


def fix(
    pipeline: Pipeline,
    exec_plan: ExecPlan,
    approve: Callable[[Proposal], bool],
    rounds: int = 3,
    sink: Callable[[Event], None] | None = None,
) -> FixResult:
    """Run; while it fails and rounds remain, propose a fix, apply it if approved, and run again."""
    outcome = runner.execute(exec_plan, sink)
    for number in range(1, rounds + 1):
        if outcome.passed:
            return FixResult(True, number - 1, outcome, f"The smoke run passes after {number - 1} round(s) of fixes.")
        proposal = propose(pipeline, exec_plan, outcome, number)
        if not approve(proposal):
            return FixResult(False, number, outcome, "Fix rejected: the code is unchanged.")
        apply(pipeline, proposal, outcome.attempt)
        outcome = runner.execute(exec_plan, sink)
    if outcome.passed:
        return FixResult(True, rounds, outcome, f"The smoke run passes after {rounds} round(s) of fixes.")
    return FixResult(False, rounds, outcome, f"Still failing after {rounds} round(s): {outcome.reason}.")
