"""One way in: `p2c run` and `%p2c use` read the same settings options, and `open_run` tells a run folder from a
paper for every front end."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from conftest import settings_for, small_scenario

from p2c_notebook.cli import _parser
from p2c_notebook.run.session import SETTINGS_OPTIONS, RunOptions, open_run, settings_from
from p2c_notebook.ui.magics import parse_line

VALUES = {int: "7", float: "2.5"}


def test_the_cli_and_the_magic_accept_the_same_settings_options_and_read_them_alike() -> None:
    words: list[str] = []
    for name, (flag, keywords) in SETTINGS_OPTIONS.items():
        if keywords.get("action") == "store_const":
            words.append(flag)
        elif "choices" in keywords:
            words += [flag, keywords["choices"][-1]]
        else:
            words += [flag, VALUES.get(keywords.get("type", str), f"value-of-{name}")]
    from_cli = settings_from(_parser().parse_args(["run", "paper.pdf", *words]))
    from_magic = settings_from(parse_line("use " + shlex.join(words)))
    assert from_cli == from_magic
    assert set(from_cli) == set(SETTINGS_OPTIONS) and None not in from_cli.values()
    assert from_cli["stream"] is False and from_cli["timeout"] == 2.5 and from_cli["max_tokens"] == 7


def test_open_run_starts_from_a_paper_and_reopens_the_run_folder_with_new_sections(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    settings = settings_for(serve(small_scenario()))
    with open_run(paper_md, RunOptions(out=tmp_path / "run", settings=settings)) as started:
        assert started.store.root == tmp_path / "run" and started.store.entry("paper") is not None
        before = started.store.hash_of("paper")
    with open_run(tmp_path / "run", RunOptions(settings=settings, exclude_sections=["1 Method"])) as opened:
        assert opened.store.hash_of("paper") != before  # the section left out changed what the model sees
        assert "learning rate" not in opened.store.read("paper")
