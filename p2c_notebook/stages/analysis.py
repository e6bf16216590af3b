"""Analysis: one detailed implementation spec per planned file."""

from __future__ import annotations

from p2c_notebook.run.store import Entry
from p2c_notebook.stages.context import StageContext, feedback_messages
from p2c_notebook.stages.parsing import extract_markdown
from p2c_notebook.stages.registry import inputs_for


def analyze_file(ctx: StageContext, path: str, feedback: str | None = None) -> Entry:
    """Write analysis/<path>.md for one file of the logic design."""
    artifact = f"analysis/{path}"
    logic = ctx.logic()
    item = next(f for f in logic.files if f.path == path)
    messages = ctx.prompts.analysis(ctx.answers(), path, item.role, item.depends_on)
    messages = feedback_messages(ctx, artifact, messages, feedback)
    text, usage = ctx.ask(artifact, "analysis", path, messages, extract_markdown)
    return ctx.store.save(artifact, text, ctx.input_hashes(inputs_for(artifact, logic)), ctx.backend.model, usage)
