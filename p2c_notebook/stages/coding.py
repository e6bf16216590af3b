"""Coding: one file per call, seeing its analysis and the code it depends on (not the whole repository)."""

from __future__ import annotations

from p2c_notebook.prompts.builder import interface_of, language_for
from p2c_notebook.run.store import Entry
from p2c_notebook.stages import runchecks
from p2c_notebook.stages.artifacts import LogicDesign
from p2c_notebook.stages.checks import Violation
from p2c_notebook.stages.context import Review, StageContext, check_python, feedback_messages
from p2c_notebook.stages.parsing import extract_code
from p2c_notebook.stages.registry import inputs_for
from p2c_notebook.stages.runchecks import check_reply


def dependency_context(ctx: StageContext, logic: LogicDesign, path: str) -> tuple[dict[str, str], dict[str, str]]:
    """Full code of direct dependencies; interfaces of what those depend on in turn."""
    direct = {d: ctx.store.read(f"code/{d}") for d in logic.dependencies(path)}
    interfaces: dict[str, str] = {}
    frontier = [t for d in direct for t in logic.dependencies(d)]
    while frontier:
        dep = frontier.pop(0)
        if dep in direct or dep in interfaces or dep == path:
            continue
        interfaces[dep] = interface_of(dep, ctx.store.read(f"code/{dep}"))
        frontier.extend(logic.dependencies(dep))
    # In dependency order, so that calls needing the same files start their per-file part alike.
    rank = {f: i for i, f in enumerate(logic.order)}
    return _ordered(direct, rank), _ordered(interfaces, rank)


def _ordered(files: dict[str, str], rank: dict[str, int]) -> dict[str, str]:
    return dict(sorted(files.items(), key=lambda item: rank.get(item[0], len(rank))))


def code_file(ctx: StageContext, path: str, feedback: str | None = None) -> Entry:
    """Write repo/<path>; the Python it writes must parse, and what the static checks find in it is sent back
    once (a repair re-ask), then recorded in checks.json."""
    artifact = f"code/{path}"
    logic = ctx.logic()
    item = next(f for f in logic.files if f.path == path)
    direct, interfaces = dependency_context(ctx, logic, path)
    analysis = ctx.store.read(f"analysis/{path}")
    messages = ctx.prompts.code(ctx.answers(), path, item.role, analysis, direct, interfaces)
    messages = feedback_messages(ctx, artifact, messages, feedback)
    language = language_for(path)

    def parse(reply: str) -> str:
        code = extract_code(reply, language)
        check_python(path, code)
        return code

    design = ctx.design()
    found: dict[str, list[Violation]] = {}  # each reply's code -> what the static checks found in it

    def review(code: str) -> Review:
        found[code] = check_reply(ctx.store, design, logic, path, code)
        return runchecks.review(path, found[code])

    code, usage = ctx.ask(artifact, "code", path, messages, parse, review=review)
    entry = ctx.store.save(artifact, code, ctx.input_hashes(inputs_for(artifact, logic)), ctx.backend.model, usage)
    remaining = found.get(code, [])
    first = next(iter(found.values()), remaining)
    # The first reviewed reply's errors were sent back when a re-ask was allowed (`StageContext.ask`).
    re_asked = bool(runchecks.review(path, first).request) and ctx.settings.max_repairs > 0
    runchecks.record_file(ctx.store, path, code, remaining, first, re_asked)
    errors = [v for v in remaining if v.severity == "error"]
    if errors:  # saved all the same (usable, not perfect); what remains is shown, never hidden
        shown = "; ".join(str(v) for v in errors[:3]) + ("; ..." if len(errors) > 3 else "")
        ctx.bus.warn(
            f"{path} is saved with {len(errors)} problem(s) the static checks found ({shown}); "
            f"`p2c check {ctx.store.root}` lists them.",
            artifact,
        )
    return entry
