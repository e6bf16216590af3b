"""Planning: overall plan -> architecture design -> logic design, and config.yaml from the plan.

Each call continues the conversation of the steps it builds on (`Stage.context` in the stage registry).
"""

from __future__ import annotations

import json

from p2c_notebook.diagrams.sources import diagram_files
from p2c_notebook.run.store import Entry
from p2c_notebook.stages.artifacts import ArchitectureDesign, Config, LogicDesign, max_files_context
from p2c_notebook.stages.context import Review, StageContext, feedback_messages
from p2c_notebook.stages.logiccheck import check_logic_design, fix_logic_design
from p2c_notebook.stages.parsing import extract_json, extract_markdown, extract_yaml
from p2c_notebook.stages.registry import inputs_for


def make_plan(ctx: StageContext, feedback: str | None = None) -> Entry:
    messages = feedback_messages(ctx, "plan", ctx.prompts.planning("plan", {}), feedback)
    text, usage = ctx.ask("plan", "plan", "", messages, extract_markdown)
    return ctx.store.save("plan", text, ctx.input_hashes(inputs_for("plan")), ctx.backend.model, usage)


def _design(reply: str, max_files: int) -> ArchitectureDesign:
    return ArchitectureDesign.model_validate(extract_json(reply), context=max_files_context(max_files))


def make_design(ctx: StageContext, feedback: str | None = None) -> Entry:
    messages = feedback_messages(ctx, "design", ctx.prompts.planning("design", ctx.answers("design")), feedback)
    design, usage = ctx.ask(
        "design", "design", "", messages, lambda reply: _design(reply, ctx.settings.max_files), ArchitectureDesign
    )
    for warning in design.check():
        ctx.bus.warn(f"Design: {warning}", "design")
    text = design.model_dump_json(indent=2) + "\n"
    return ctx.store.save(
        "design",
        text,
        ctx.input_hashes(inputs_for("design")),
        ctx.backend.model,
        usage,
        extra_files=diagram_files(design),
    )


def make_logic(ctx: StageContext, feedback: str | None = None) -> Entry:
    design = ctx.design()
    warnings: dict[int, list[str]] = {}  # per parsed reply: the re-ask's reply may not be the one kept

    def parse(reply: str) -> LogicDesign:
        # What is mechanical (a repeated or self dependency, a dependency by base name) is fixed here and said so;
        # `check_against` drops a file listed twice (keeping the first) and orders dependencies first.
        bounded = max_files_context(ctx.settings.max_files)
        fixed, notes = fix_logic_design(LogicDesign.model_validate(extract_json(reply), context=bounded), design)
        logic, more = fixed.check_against(design)
        warnings[id(logic)] = notes + more
        return logic

    def review(logic: LogicDesign) -> Review:
        # What only the model can fix (no file depends on another...) is sent back once.
        problems = check_logic_design(design, logic)
        if not problems:
            return Review()
        lines = "\n".join(f"- {p}" for p in problems)
        request = f"The logic design has {len(problems)} problem(s); fix each and reply with the whole JSON:\n{lines}"
        return Review(request, len(problems), f"The logic design check found {len(problems)} problem(s)")

    messages = feedback_messages(ctx, "logic", ctx.prompts.planning("logic", ctx.answers("logic")), feedback)
    logic, usage = ctx.ask("logic", "logic", "", messages, parse, LogicDesign, review)
    for warning in warnings.get(id(logic), []):
        ctx.bus.warn(warning, "logic")
    for problem in check_logic_design(design, logic):  # left after the re-ask: saved all the same, and shown
        ctx.bus.warn(f"Logic design: {problem}", "logic")
    text = json.dumps(logic.model_dump(), indent=2, ensure_ascii=False) + "\n"
    return ctx.store.save("logic", text, ctx.input_hashes(inputs_for("logic")), ctx.backend.model, usage)


def make_config(ctx: StageContext, feedback: str | None = None) -> Entry:
    messages = feedback_messages(ctx, "config", ctx.prompts.planning("config", ctx.answers("config")), feedback)
    config, usage = ctx.ask("config", "config", "", messages, lambda r: Config(text=extract_yaml(r)))
    return ctx.store.save("config", config.text, ctx.input_hashes(inputs_for("config")), ctx.backend.model, usage)
