"""Earlier versions of an artifact are kept in the run folder (history/) before it is replaced, and compared with
the current one: the library (`versions`, `diff`), `p2c diff`, and the panel's "Compare with" view."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import settings_for, small_scenario

from p2c_notebook.cli import main
from p2c_notebook.errors import RunError
from p2c_notebook.run import history
from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.run.store import KEEP_VERSIONS
from p2c_notebook.ui import Walkthrough

CONFIG_REPLIES = [f"```yaml\nlr: 0.{n}\nepochs: 3\n```" for n in range(1, 20)]


def scenario() -> dict[str, Any]:
    base = small_scenario()
    base["responses"][3] = {"stage": "config", "replies": [{"content": c} for c in CONFIG_REPLIES]}
    return base


@pytest.fixture
def run(serve: Any, paper_md: Path, tmp_path: Path) -> tuple[Any, Path]:
    server = serve(scenario())
    with Pipeline.start(paper_md, tmp_path / "run", settings=settings_for(server)) as pipeline:
        assert pipeline.run().state == "done"
    return server, tmp_path / "run"


def test_a_regenerated_artifact_keeps_its_previous_version_and_diffs_against_it(run: tuple[Any, Path]) -> None:
    server, folder = run
    with Pipeline.open(folder, settings=settings_for(server)) as pipeline:
        assert [(v.number, v.status) for v in history.versions(pipeline.store, "config")] == [(0, "generated")]
        with pytest.raises(RunError, match="no earlier version"):
            history.diff(pipeline.store, "config")
        pipeline.regenerate("config", feedback="A smaller learning rate.")
        kept = history.versions(pipeline.store, "config")
        assert [v.number for v in kept] == [1, 0] and kept[0].status == "generated"
        assert (folder / "history" / "planning" / "config.yaml.1").read_text() == "lr: 0.1\nepochs: 3\n"
        assert history.text_of(pipeline.store, "config", 1) == "lr: 0.1\nepochs: 3\n"
        diff = history.diff(pipeline.store, "config")
    assert "-lr: 0.1" in diff and "+lr: 0.2" in diff and " epochs: 3" in diff
    assert "config (version 1)" in diff and "config (current)" in diff
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["history"]["config"][0]["path"] == "history/planning/config.yaml.1"


def test_an_edit_and_a_rerun_keep_the_version_they_replace(run: tuple[Any, Path]) -> None:
    server, folder = run
    with Pipeline.open(folder, settings=settings_for(server)) as pipeline:
        plan = pipeline.store.read("plan")
        pipeline.edit("plan", plan + "\nMy own note.\n")
        assert history.text_of(pipeline.store, "plan", 1) == plan
        assert pipeline.run().state == "done"  # the plan changed: what depends on it is made again
        config_versions = [v.number for v in history.versions(pipeline.store, "config")]
        code_versions = [v.number for v in history.versions(pipeline.store, "code/main.py")]
    assert code_versions == [0]  # re-made with the same text: no copy of an identical version
    assert config_versions == [1, 0]  # the config was re-made from the edited plan, with a new reply


def test_only_the_last_ten_versions_are_kept(run: tuple[Any, Path]) -> None:
    server, folder = run
    with Pipeline.open(folder, settings=settings_for(server)) as pipeline:
        for _ in range(KEEP_VERSIONS + 2):
            pipeline.regenerate("config")
        numbers = [v.number for v in history.versions(pipeline.store, "config")]
    assert numbers == [*range(3, KEEP_VERSIONS + 3), 0]
    files = sorted(p.name for p in (folder / "history" / "planning").iterdir())
    assert len(files) == KEEP_VERSIONS and "config.yaml.1" not in files and "config.yaml.2" not in files


def test_p2c_diff_prints_the_diff_and_lists_the_versions(run: tuple[Any, Path], capsys: Any) -> None:
    server, folder = run
    with Pipeline.open(folder, settings=settings_for(server)) as pipeline:
        pipeline.regenerate("config")
        pipeline.regenerate("config")
    assert main(["diff", str(folder), "config"]) == 0
    out = capsys.readouterr().out
    assert "-lr: 0.2" in out and "+lr: 0.3" in out
    assert main(["diff", str(folder), "config", "--against", "1"]) == 0
    out = capsys.readouterr().out
    assert "-lr: 0.1" in out and "+lr: 0.3" in out
    assert main(["diff", str(folder), "config", "--against", "0"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == ["1", "2", "0"] and "current (generated)" in listed[-1]
    assert main(["diff", str(folder), "config", "--against", "7"]) == RunError.exit_code
    assert "no earlier version 7" in capsys.readouterr().err


def test_the_panel_compares_any_earlier_version_as_escaped_html(run: tuple[Any, Path]) -> None:
    server, folder = run
    wt = Walkthrough(Pipeline.open(folder, settings=settings_for(server)))
    panel = wt.panel("config")
    assert panel.compare_box is None  # nothing to compare yet: no compare view
    wt.edit("config", "lr: 0.1\nepochs: 3\nnote: '<script>alert(1)</script>'\n")
    wt.regenerate("config", overwrite_edited=True, block=True)
    assert wt.last_error is None, wt.last_error
    assert panel.compare_box is not None and panel.compare_box in panel.widget.children
    options = dict(panel.compare.options)
    assert any(label.startswith("version 2 (edited") for label in options)
    assert panel.diff.value == ""  # drawn when a version is chosen
    panel.compare.value = 2
    shown = panel.diff.value
    assert "p2c-diff-del" in shown and "&lt;script&gt;" in shown and "<script>" not in shown
    assert "p2c-diff-add" in shown and "lr: 0.2" in shown
    panel.compare.value = 1
    assert "p2c-diff-same" in panel.diff.value and "&lt;script&gt;" not in panel.diff.value
    wt.close()


def test_the_diff_colours_are_theme_variables() -> None:
    css = (Path(__file__).resolve().parents[1] / "widgets" / "p2c.css").read_text()
    rules = dict(re.findall(r"(\.p2c-diff[\w-]*)\s*\{([^}]*)\}", css))
    assert {".p2c-diff", ".p2c-diff-add", ".p2c-diff-del", ".p2c-diff-hunk"} <= set(rules)
    for body in rules.values():
        for declaration in body.split(";"):
            if re.match(r"\s*(color|background(-color)?)\s*:", declaration):
                assert "var(--" in declaration, declaration
