"""One way in: open a run folder or start one from a paper, and the settings options every front end takes.

The CLI (`p2c run`), the magics (`%p2c load`, `%p2c use`) and the widget (`walkthrough()`) all open runs with
`open_run` and parse the model's settings with `add_settings_arguments` / `settings_from`, so the three cannot
drift apart in what they accept or how a run folder is told from a paper.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2c_notebook.backends import Backend
from p2c_notebook.run.events import Sink
from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.run.store import RunStore
from p2c_notebook.settings import Settings


@dataclass(frozen=True)
class RunOptions:
    """How to open a run: where a new one goes, the settings, who listens, and the sections left out.

    `exclude_sections`: None keeps the run's earlier choice; [] brings every section back. `backend`: calls go
    through this one (the caller closes it; a batch passes one that shares its concurrency limit)."""

    out: Path | str | None = None
    settings: Settings | None = None
    sinks: tuple[Sink, ...] = ()
    exclude_sections: list[str] | None = None
    backend: Backend | None = None


def open_run(source: Path | str, options: RunOptions | None = None) -> Pipeline:
    """Open the run folder `source`, or read the paper `source` and open (or create) its run folder."""
    options = options or RunOptions()
    if not RunStore.is_run(source):
        return Pipeline.start(
            source,
            options.out,
            settings=options.settings,
            sinks=options.sinks,
            exclude_sections=options.exclude_sections,
            backend=options.backend,
        )
    pipeline = Pipeline.open(source, settings=options.settings, sinks=options.sinks, backend=options.backend)
    if options.exclude_sections is not None:
        try:
            pipeline.choose_sections(options.exclude_sections)
        except BaseException:
            pipeline.close()
            raise
    return pipeline


# The settings options, as the CLI and `%p2c use` both spell them: settings field -> (flag, argparse keywords).
SETTINGS_OPTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "model": ("--model", {"help": "model name (P2C_MODEL)"}),
    "base_url": ("--base-url", {"help": "OpenAI-compatible server URL (OPENAI_BASE_URL / P2C_BASE_URL)"}),
    "api_key": ("--api-key", {"help": "API key (prefer OPENAI_API_KEY: flags end up in shell history)"}),
    "backend": (
        "--backend",
        {"help": "openai (default), auto, local[:MODEL or .gguf], replay:CASSETTE.jsonl or scripted:SCENARIO.yaml"},
    ),
    "record": ("--record", {"metavar": "CASSETTE", "help": "append every model call to this .jsonl cassette"}),
    "concurrency": ("--concurrency", {"type": int, "help": "parallel model calls for analysis and coding"}),
    "max_tokens": ("--max-tokens", {"type": int, "help": "output token limit per call"}),
    "tokens_per_minute": (
        "--tokens-per-minute",
        {"type": int, "metavar": "N", "help": "tokens sent in any 60 s, shared by all runs (P2C_TOKENS_PER_MINUTE)"},
    ),
    "max_files": (
        "--max-files",
        {"type": int, "metavar": "N", "help": "the most files a design may plan, up to 200 (P2C_MAX_FILES)"},
    ),
    "reasoning_effort": ("--reasoning-effort", {"choices": ["minimal", "low", "medium", "high"]}),
    "temperature": ("--temperature", {"type": float}),
    "timeout": ("--timeout", {"type": float, "help": "seconds one call may take, start to end"}),
    "read_timeout": (
        "--read-timeout",
        {"type": float, "help": "seconds of silence from the server before a call times out"},
    ),
    "max_reply_chars": ("--max-reply-chars", {"type": int, "help": "characters a reply may have before it is stopped"}),
    "stream": ("--no-stream", {"action": "store_const", "const": False, "help": "do not stream replies"}),
    "figures": (
        "--figures",
        {
            "action": "store_const",
            "const": True,
            "help": "send the paper's figure images with the planning calls (P2C_FIGURES; needs a vision model)",
        },
    ),
}


def add_settings_arguments(
    parser: argparse.ArgumentParser, only: Iterable[str] | None = None, helps: dict[str, str] | None = None
) -> None:
    """Add the settings options (`only` those named, by settings field) to a parser; `helps` rewords some."""
    for name in SETTINGS_OPTIONS if only is None else only:
        flag, keywords = SETTINGS_OPTIONS[name]
        keywords = {**keywords, "dest": name}
        if helps and name in helps:
            keywords["help"] = helps[name]
        parser.add_argument(flag, **keywords)


def settings_from(args: argparse.Namespace) -> dict[str, Any]:
    """The settings overrides parsed by `add_settings_arguments` (None where an option was not given)."""
    return {name: getattr(args, name) for name in SETTINGS_OPTIONS if hasattr(args, name)}
