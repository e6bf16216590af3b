"""The bound on planned files is a setting (`max_files`, P2C_MAX_FILES): 40 by default, at most 200.

Over HTTP against the scripted server: a 64-file design is accepted with max_files 64 and refused (re-asked, then
an error) by default; the JSON schema the model is shown stays the prompt it always was."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import settings_for

from p2c_notebook.errors import ConfigError, P2CError
from p2c_notebook.prompts.builder import schema_text
from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.settings import load_settings
from p2c_notebook.stages.artifacts import MAX_FILES, MAX_FILES_CEILING, ArchitectureDesign, LogicDesign

FILES = [f"pkg/module_{i:02d}.py" for i in range(63)] + ["main.py"]


def wide_scenario() -> dict[str, Any]:
    """A plan whose design and logic design list 64 files (main.py imports all the others)."""
    design = {"implementation_approach": "Many small modules.", "file_list": FILES, "open_questions": []}
    logic = {
        "files": [{"path": p, "role": "a module", "depends_on": FILES[:-1] if p == "main.py" else []} for p in FILES],
        "required_packages": [],
    }
    responses = [
        {"stage": "plan", "content": "# Plan\n\nSixty-four modules."},
        {"stage": "design", "content": json.dumps(design)},
        {"stage": "logic", "content": json.dumps(logic)},
        {"stage": "config", "content": "```yaml\nlr: 0.1\n```"},
    ]
    return {"model": "*", "responses": responses}


def test_max_files_above_the_default_accepts_a_64_file_design(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    server = serve(wide_scenario())
    settings = settings_for(server, max_files=64)
    with Pipeline.start(paper_md, tmp_path / "run", settings=settings) as pipeline:
        assert pipeline.run(until="logic").state == "stopped"
        assert pipeline.files()[-1] == "main.py" and len(pipeline.files()) == 64


def test_by_default_a_design_of_more_than_40_files_is_refused(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    server = serve(wide_scenario())
    with (
        Pipeline.start(paper_md, tmp_path / "run", settings=settings_for(server)) as pipeline,
        pytest.raises(P2CError, match="at most 40 items"),
    ):
        pipeline.run(until="design")
    assert len([r for r in server.requests if r["stage"] == "design"]) == 2  # the reply, then one re-ask


@pytest.mark.parametrize("value", ["0", "201", "many"])
def test_max_files_outside_1_to_200_is_a_one_line_config_error(value: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={"P2C_MAX_FILES": value}, file=tmp_path / "none.yaml")
    assert "max_files" in str(raised.value) and "\n" not in str(raised.value)


def test_max_files_comes_from_the_environment_and_the_schema_the_model_sees_keeps_the_default(tmp_path: Path) -> None:
    assert load_settings(environ={"P2C_MAX_FILES": "64"}, file=tmp_path / "none.yaml").max_files == 64
    assert load_settings(environ={}, file=tmp_path / "none.yaml").max_files == MAX_FILES == 40
    for model in (ArchitectureDesign, LogicDesign):
        assert f'"maxItems":{MAX_FILES},' in schema_text(
            model
        ) and f'"maxItems":{MAX_FILES_CEILING}' not in schema_text(model)


def test_the_command_line_takes_max_files(
    serve: Any, paper_md: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import use_server

    from p2c_notebook.cli import main

    use_server(monkeypatch, serve(wide_scenario()))
    run = tmp_path / "run"
    args = ["run", str(paper_md), "--out", str(run), "--until", "logic", "--model", "gpt-4o-mini"]
    assert main([*args, "--max-files", "64"]) == 0
    assert len(json.loads((run / "planning" / "logic.json").read_text())["files"]) == 64
