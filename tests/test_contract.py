"""Each file's contract (what it defines here and only here, the import line for each dependency, what other files
define, the config keys, the entry point) reaches its analysis and coding calls, derived from the approved designs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

from conftest import CODE, DESIGN, LOGIC, settings_for, small_scenario

from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.stages.artifacts import ArchitectureDesign, LogicDesign
from p2c_notebook.stages.contract import config_keys, file_contract

CONFIG = {"training": {"lr": 0.1, "epochs": 3}, "seed": 0}


def designs(design: dict[str, Any] = DESIGN, logic: dict[str, Any] = LOGIC) -> tuple[ArchitectureDesign, LogicDesign]:
    return ArchitectureDesign.model_validate(design), LogicDesign.model_validate(logic)


def line(contract: str, start: str) -> str:
    return next(text for text in contract.splitlines() if text.startswith(start))


def test_a_file_is_told_to_define_its_designed_classes_and_import_the_rest() -> None:
    design, logic = designs()
    contract = file_contract(design, logic, "models/net.py", CONFIG)
    assert "class Net (methods: forward)" in line(contract, "- Define here")
    assert "Data" not in line(contract, "- Define here")
    assert "`from data import Data`" in line(contract, "- Import from")


def test_the_import_line_adds_what_the_written_dependency_defines() -> None:
    design, logic = designs()
    written = {"data.py": CODE["data.py"] + "\nSCALE = 2\n_hidden = 1\n"}
    contract = file_contract(design, logic, "models/net.py", CONFIG, written)
    assert "`from data import Data, load, SCALE`" in line(contract, "- Import from")


def test_classes_of_files_outside_the_dependencies_are_named_as_defined_elsewhere() -> None:
    design, logic = designs()
    contract = file_contract(design, logic, "data.py", CONFIG)
    assert line(contract, "- Defined in other files").endswith("Net in models/net.py")
    assert line(contract, "- Import from").endswith("none")


def test_config_keys_are_listed_dotted_and_the_entry_point_is_named_only_for_its_file() -> None:
    design, logic = designs()
    main = file_contract(design, logic, "main.py", CONFIG)
    assert "training.lr, training.epochs, seed" in main
    assert "This file is the entry point" in main
    assert "entry point" not in file_contract(design, logic, "data.py", CONFIG)
    assert config_keys({"a": {}, "b": {"c": {"d": 1}}}) == ["a", "b.c.d"]


def test_a_dependency_without_designed_classes_or_code_is_imported_as_a_module() -> None:
    files: list[dict[str, Any]] = [dict(f) for f in cast(list[dict[str, Any]], LOGIC["files"])]
    files[2]["depends_on"] = ["models/net.py", "data.py", "utils/io.py"]
    logic = {**LOGIC, "files": [*files, {"path": "utils/io.py", "role": "helpers", "depends_on": []}]}
    design = {**DESIGN, "file_list": [*cast(list[str], DESIGN["file_list"]), "utils/io.py"]}
    contract = file_contract(*designs(design, logic), "main.py", CONFIG)
    assert "`import utils.io`" in line(contract, "- Import from")


def test_files_that_are_not_python_get_no_contract() -> None:
    design, logic = designs()
    assert file_contract(design, logic, "config.yaml", CONFIG) == ""


def test_the_analysis_and_coding_requests_carry_the_contract(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    server = serve(small_scenario())
    with Pipeline.start(paper_md, tmp_path / "run", settings=settings_for(server)) as pipeline:
        assert pipeline.run().state == "done"
    by_call = {(r["stage"], r["file"]): r["messages"][-1]["content"] for r in server.requests if r["attempt"] == 1}
    for stage in ("analysis", "code"):
        task = by_call[(stage, "main.py")]
        assert "What `main.py` owns" in task
        assert "This file is the entry point" in task
        assert "`from data import" in task and "`from models.net import Net" in task
    # Coding sees the written dependency's own functions too (`load` is not in the design).
    assert "`from data import Data, load`" in by_call[("code", "main.py")]
    assert "`from data import Data`" in by_call[("analysis", "main.py")]
    assert json.loads((tmp_path / "run/planning/logic.json").read_text())["files"][0]["path"] == "data.py"
