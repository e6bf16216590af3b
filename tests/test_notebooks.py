"""The shipped notebooks: each runs top to bottom in a fresh kernel, offline, and is saved without outputs.

A notebook runs with its own folder as the working directory, as nbval and JupyterLab run it. Magic errors do
not raise (they print one `p2c: error:` line), so the stream outputs are checked for them too. Each notebook keeps
its run folder beside it (notebooks/runs/NAME); the tests point P2C_NOTEBOOK_RUNS at a folder of their own, so a
test never sees another's run and leaves nothing in the repository.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT

nbformat = pytest.importorskip("nbformat")

NOTEBOOKS = ROOT / "notebooks"
SHIPPED = sorted(NOTEBOOKS.glob("*.ipynb"))
SAVED = [*SHIPPED, *sorted((ROOT / "tests" / "browser").glob("*.ipynb"))]
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
EXPECTED = {  # lines the notebook prints when it did what it says (the replies are the recorded local model's)
    "01-quickstart.ipynb": ["done\n", "evaluate.py\n", "models/\n    net.py", "config.yaml"],
    "02-workshop-exercise.ipynb": [
        "'5e-4' str",
        "11 artifacts are stale:",
        "re-asked files:",
        "+++ code/train.py (current)",
        "  A: Use your judgement",
    ],
    "03-magics-tour.ipynb": [
        "%p2c load PAPER",
        "approved config\n",
        "The repository is in",
        "Regenerated code/train.py with your feedback.",
    ],
}
SECONDS = 60  # each takes 5-10 s here (the aim: under 30 s); the bound leaves room for a busy machine


def snapshot(*folders: Path) -> set[str]:
    """The paths under the folders (a notebook that wrote into the repository would add some)."""
    return {str(p) for folder in folders for p in folder.rglob("*")}


def outputs_of(notebook: Any) -> list[Any]:
    return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]


def stream_text(notebook: Any) -> str:
    return "".join(o.get("text", "") for o in outputs_of(notebook) if o["output_type"] == "stream")


def test_the_three_notebooks_are_there() -> None:
    assert [p.name for p in SHIPPED] == ["01-quickstart.ipynb", "02-workshop-exercise.ipynb", "03-magics-tour.ipynb"]


@pytest.mark.parametrize("path", SAVED, ids=lambda p: p.name)
def test_saved_without_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert notebook.nbformat == 4
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    assert "widgets" not in notebook.metadata  # no saved widget state either
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (path.name, cell.source[:60])


def execute(path: Path, runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run the notebook top to bottom in a fresh kernel, offline, with its run folders under `runs`."""
    nbclient = pytest.importorskip("nbclient")
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "P2C_API_KEY", "P2C_BASE_URL", "P2C_MODEL", "P2C_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("P2C_CONFIG", str(tmp_path / "no-config.yaml"))  # the kernel inherits this environment
    monkeypatch.setenv("P2C_NOTEBOOK_RUNS", str(runs))
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()
    return notebook


def assert_no_error(notebook: Any) -> None:
    errors = [o for o in outputs_of(notebook) if o["output_type"] == "error"]
    assert not errors, errors
    text = stream_text(notebook)
    assert "p2c: error" not in text and "Traceback" not in text, text


def run_state(runs: Path) -> dict[str, Any]:
    """Every run folder's artifacts (hash and status), kept versions and model calls so far."""
    from p2c_notebook.run.store import RunStore

    state: dict[str, Any] = {}
    for manifest in sorted(runs.glob("*/manifest.json")):
        store = RunStore(manifest.parent)
        artifacts = {entry.artifact: (entry.sha256, entry.status) for entry in store.entries()}
        history = sorted(str(p.relative_to(manifest.parent)) for p in (manifest.parent / "history").rglob("*"))
        state[manifest.parent.name] = (artifacts, history, store.spent().calls)
    return state


def test_quickstart_says_how_to_use_a_real_model() -> None:
    first = nbformat.read(NOTEBOOKS / "01-quickstart.ipynb", as_version=4).cells[0]
    assert first.cell_type == "markdown"
    for needle in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "base_url=", "model=", "local.cassette.jsonl", "offline"):
        assert needle.lower() in first.source.lower(), needle


@pytest.mark.slow
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_notebook_runs_offline_in_a_fresh_kernel(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = snapshot(NOTEBOOKS, ROOT / "examples")
    started = time.perf_counter()
    notebook = execute(path, tmp_path / "runs", tmp_path, monkeypatch)
    seconds = time.perf_counter() - started
    outputs = outputs_of(notebook)
    assert_no_error(notebook)
    text = stream_text(notebook)
    for needle in EXPECTED[path.name]:
        assert needle in text, needle
    assert any(WIDGET_VIEW in o.get("data", {}) for o in outputs), "no walkthrough widget view"
    assert snapshot(NOTEBOOKS, ROOT / "examples") == before, "the notebook left files in the repository"
    assert seconds < SECONDS, f"{path.name} took {seconds:.1f} s"
    if path.name == "01-quickstart.ipynb":
        mermaid = [o["data"]["text/vnd.mermaid"] for o in outputs if "text/vnd.mermaid" in o.get("data", {})]
        assert [m.split("\n", 1)[0] for m in mermaid] == ["classDiagram", "sequenceDiagram"]


@pytest.mark.slow
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_running_a_notebook_again_resumes_its_run_folder_and_sends_nothing(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Restart the kernel and run all cells again: the same run folder, every cell reports what is done, nothing is
    regenerated and no model call is made (02 ends with an edit that makes 11 artifacts stale: they stay so)."""
    runs = tmp_path / "runs"
    assert_no_error(execute(path, runs, tmp_path, monkeypatch))
    first = run_state(runs)
    assert len(first) == 1 and next(iter(first.values()))[2] > 0, first  # one run folder, made by model calls
    again = execute(path, runs, tmp_path, monkeypatch)
    assert_no_error(again)
    assert run_state(runs) == first
    if path.name == "03-magics-tour.ipynb":
        text = stream_text(again)
        assert "Already done" in text and "was already regenerated with this feedback" in text, text
