"""The repair loop: a failing smoke run's error goes to the model, which answers with search/replace edits.

Every proposal is validated before anyone sees it (each block must apply exactly once, to a generated file inside
the repository) and applied only once the caller's `approve` says yes; applied edits are new versions of the code
artifacts, with their provenance (round, attempt, error) in the manifest's `fixes`, and the static checks run
again. Rounds are bounded; the loop stops as soon as the smoke run passes.

`fix` is the whole loop for a caller that can answer at once (the CLI's prompt); `Repair` is the same loop one step
at a time, for a caller that waits on a person between steps (the walkthrough's Run panel): run, propose, then
apply or reject when the user clicks.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from p2c_notebook.errors import EditedArtifactError, PlanError, RunError
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
from p2c_notebook.stages.context import check_python
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
    revised: list[str] = field(default_factory=list)  # files whose proposed text the user changed before applying

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


def _path_line(line: str) -> str:
    """A path as models write it on the line before a block: `train.py`, **train.py**, File: train.py, train.py:"""
    return line.strip().strip("`*#").removeprefix("File:").strip().strip("`*:").strip()


def whole_file_edits(reply: str, current: dict[str, str], shown: list[str]) -> list[Edit]:
    """Whole corrected files instead of search/replace blocks, as small models often answer: each fenced block
    preceded by the path of a file that was shown (or the only file shown) replaces that file; [] when the reply
    has no such block. The change is shown as a diff and applied like any other edit."""
    lines = reply.splitlines()
    edits: list[Edit] = []
    i = 0
    while i < len(lines):
        if not lines[i].lstrip().startswith("```"):
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), len(lines))
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        named = _path_line(before)
        path = named if named in shown else shown[0] if len(shown) == 1 and not edits else ""
        if path and current.get(path):
            edits.append(Edit(path, current[path], "\n".join(lines[i + 1 : end]) + "\n"))
        i = end + 1
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
    pipeline._cancel.clear()  # as a run does: a Cancel of an earlier job must not stop this call
    ctx = pipeline._context()

    def parse(reply: str) -> tuple[list[Edit], dict[str, tuple[str, str]]]:
        try:
            edits = parse_edits(reply)
        except ParseError:
            edits = whole_file_edits(reply, current, shown[:4])
            if not edits:
                raise
            for edit in edits:  # a whole file must at least parse, as generated code must
                check_python(edit.path, edit.replace)
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


def revise(proposal: Proposal, path: str, text: str) -> Proposal:
    """The proposal with the user's own text for one of its files (the widget's Edit); a Python file must still
    parse. Applying it records that the user changed the fix."""
    if path not in proposal.changes:
        raise PlanError(f"The fix does not change {path}; edit one of its files: {', '.join(proposal.changes)}.")
    text = text if text.endswith("\n") or not text else text + "\n"
    if path.endswith(".py"):
        try:
            compile(text, path, "exec", dont_inherit=True)
        except SyntaxError as exc:
            where = f"line {exc.lineno}: {exc.msg}"
            raise PlanError(f"Your version of {path} does not parse ({where}); correct it or reject the fix.") from None
    old = proposal.changes[path][0]
    changes = {**proposal.changes, path: (old, text)}
    revised = sorted({*proposal.revised, path})
    return replace(proposal, changes={p: pair for p, pair in changes.items() if pair[0] != pair[1]}, revised=revised)


def apply(pipeline: Pipeline, proposal: Proposal, attempt: int, overwrite_edited: bool = False) -> list[str]:
    """Save each changed file as a new version of its code artifact and record where the fix came from.

    Refused (nothing saved) when the fix changes a file the user edited and `overwrite_edited` is not given, or
    when a file changed on disk since the fix was proposed (the fix was made for the text the model saw)."""
    if proposal.edited and not overwrite_edited:
        raise EditedArtifactError(
            f"The fix changes file(s) you edited ({', '.join(proposal.edited)}); confirm overwriting your edits."
        )
    if not proposal.changes:
        raise PlanError("The fix changes nothing (your edit brought every file back): nothing to apply.")
    store = pipeline.store
    with store.locked():
        store.reload()
        for path, (old, _) in proposal.changes.items():
            if store.entry(f"code/{path}") is None or store.read(f"code/{path}") != old:
                raise RunError(f"{path} changed since the fix was proposed: nothing was applied; repair again.")
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
                **({"revised_by_user": proposal.revised} if proposal.revised else {}),
            },
        ]
        store.set_meta(fixes=fixes)
    runchecks.current(store.root)
    return sorted(proposal.changes)


class Repair:
    """The repair loop one step at a time: `run`, then while it fails `propose`, and `accept` or `reject` what the
    user decided. At most `rounds` proposals; `accept` applies the fix and runs the smoke run again."""

    def __init__(
        self,
        pipeline: Pipeline,
        exec_plan: ExecPlan,
        rounds: int = 3,
        sink: Callable[[Event], None] | None = None,
        outcome: Outcome | None = None,
    ) -> None:
        if rounds < 1:
            raise RunError(f"Repair rounds must be at least 1 (got {rounds}).")
        self.pipeline = pipeline
        self.exec_plan = exec_plan
        self.rounds = rounds
        self.sink = sink
        self.outcome = outcome  # the last run (None: not run yet); a failed one the caller already has is reused
        self.round = 0  # proposals made so far
        self.rejected = False

    @property
    def passed(self) -> bool:
        return self.outcome is not None and self.outcome.passed

    @property
    def can_propose(self) -> bool:
        return self.outcome is not None and not self.outcome.passed and not self.rejected and self.round < self.rounds

    def run(self) -> Outcome:
        self.outcome = runner.execute(self.exec_plan, self.sink)
        return self.outcome

    def propose(self) -> Proposal:
        """One model call for the next round (RunError when the run passes or the rounds are used up)."""
        if self.outcome is None:
            raise RunError("Run the smoke run first: there is no failure to repair yet.")
        if not self.can_propose:
            raise RunError(self.message())
        self.round += 1
        return propose(self.pipeline, self.exec_plan, self.outcome, self.round)

    def accept(self, proposal: Proposal, overwrite_edited: bool = False) -> Outcome:
        """Apply the approved fix (a new version of each file, its provenance, the checks), then run again."""
        assert self.outcome is not None
        apply(self.pipeline, proposal, self.outcome.attempt, overwrite_edited)
        return self.run()

    def reject(self) -> str:
        self.rejected = True
        return self.message()

    def message(self) -> str:
        """Where the loop stands, in one line."""
        if self.outcome is None:
            return "Not run yet."
        if self.outcome.passed:
            return f"The smoke run passes after {self.round} round(s) of fixes."
        if self.rejected:
            return "Fix rejected: the code is unchanged."
        if self.round >= self.rounds:
            return f"Still failing after {self.round} round(s): {self.outcome.reason}."
        return f"The smoke run fails ({self.outcome.reason}); {self.rounds - self.round} round(s) of repair left."


def fix(
    pipeline: Pipeline,
    exec_plan: ExecPlan,
    approve: Callable[[Proposal], bool],
    rounds: int = 3,
    sink: Callable[[Event], None] | None = None,
) -> FixResult:
    """Run; while it fails and rounds remain, propose a fix, apply it if approved, and run again.

    `approve` sees `proposal.edited` (files the user edited): saying yes to such a proposal is that confirmation."""
    loop = Repair(pipeline, exec_plan, rounds, sink)
    outcome = loop.run()
    while loop.can_propose:
        proposal = loop.propose()
        if not approve(proposal):
            loop.reject()
            break
        outcome = loop.accept(proposal, overwrite_edited=True)
    return FixResult(loop.passed, loop.round, outcome, loop.message())
