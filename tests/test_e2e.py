"""End to end over HTTP: real papers through the real openai client into complete run folders."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from conftest import EXAMPLE, TRANSFORMER

from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.settings import Settings
from p2c_notebook.stages.artifacts import LogicDesign

SCENARIO = EXAMPLE / "scenario.yaml"

PAPERS = [
    pytest.param(EXAMPLE / "paper.pdf", id="example-pdf"),
    pytest.param(EXAMPLE / "paper.tex", id="example-latex"),
    *(
        pytest.param(
            TRANSFORMER / name,
            id=f"transformer-{name}",
            marks=pytest.mark.skipif(not (TRANSFORMER / name).exists(), reason="../shared/papers not present"),
        )
        for name in ("Transformer.pdf", "Transformer_cleaned.json", "Transformer_cleaned.tex")
    ),
]


@pytest.mark.parametrize("paper", PAPERS)
def test_paper_to_complete_run_folder(paper: Path, tmp_path: Path) -> None:
    settings = Settings(backend=f"scripted:{SCENARIO}", api_key=None)
    run = tmp_path / "run"
    with Pipeline.start(paper, run, settings=settings) as pipeline:
        result = pipeline.run()
        assert result.state == "done"
        rows = pipeline.rows()
    assert all(row.status == "generated" or row.artifact == "paper" for row in rows)
    logic = LogicDesign.model_validate_json((run / "planning/logic.json").read_text())
    assert any("/" in path for path in logic.order), "the example plans a file in a sub-folder"
    for path in logic.order:
        target = run / "repo" / path
        assert target.is_file() and target.stat().st_size > 0, path
        assert (run / "analysis" / f"{path}.md").is_file()
        if path.endswith(".py"):
            ast.parse(target.read_text())
    assert (run / "repo/config.yaml").is_file()
    manifest = json.loads((run / "manifest.json").read_text())
    copied = "config.yaml" not in logic.order  # repo/config.yaml, the planning config's copy, is an artifact too
    assert len(manifest["artifacts"]) == 5 + 2 * len(logic.order) + copied
    paper_text = (run / "paper/paper.md").read_text()
    assert len(paper_text) > 2000
    assert manifest["paper"]["report"]["sections"] >= 5
