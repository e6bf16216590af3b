"""The `reproduce` stage: `repo/reproduce.sh`, how to run the generated repository (and its `--smoke` mode).

Made on request only (`p2c exec` when the repository has none, or `p2c run --until reproduce`): a default run does
not make it, so the runs recorded before it existed replay unchanged.
"""

from __future__ import annotations

from p2c_notebook.prompts.builder import render
from p2c_notebook.run.store import Entry
from p2c_notebook.stages.checks import entry_file
from p2c_notebook.stages.context import StageContext, feedback_messages
from p2c_notebook.stages.parsing import ParseError, extract_code
from p2c_notebook.stages.registry import inputs_for

ENTRY_LIMIT = 12000  # characters of the entry point the model sees


def parse_script(reply: str) -> str:
    """The script from the reply; it must be a bash script (the model re-asks once otherwise)."""
    script = extract_code(reply, "bash")
    if not script.startswith("#!") or "bash" not in script.splitlines()[0]:
        raise ParseError("reproduce.sh must start with `#!/usr/bin/env bash`; reply with the whole script again.")
    return script


def make_reproduce(ctx: StageContext, feedback: str | None = None) -> Entry:
    logic = ctx.logic()
    files = "\n".join(f"- {path}" for path in logic.order)
    entry = entry_file(None, logic, logic.order) or logic.order[-1]  # main.py, else the designed entry point
    source = ctx.store.read(f"code/{entry}")[:ENTRY_LIMIT]
    prefix, context = ctx.prompts.file_prefix(ctx.answers())
    task = render("reproduce", files=files, entry=source)
    messages = feedback_messages(
        ctx, "reproduce", [*prefix, {"role": "user", "content": f"{context}\n\n{task}"}], feedback
    )
    script, usage = ctx.ask("reproduce", "reproduce", "", messages, parse_script)
    inputs = ctx.input_hashes(inputs_for("reproduce", logic))
    return ctx.store.save("reproduce", script, inputs, ctx.backend.model, usage)
