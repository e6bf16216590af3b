"""Hostile model output and a hostile run folder: nothing escapes the run folder, nothing is executed.

Complements tests/test_pipeline.py (`..`, absolute, `~`, drive letters, case collisions) with NUL bytes and
reserved device names, symbolic links planted in the run folder, object-constructing YAML tags and generated
code that would act on import.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import CODE, DESIGN, LOGIC, settings_for, small_scenario

from p2c_notebook.errors import ReplyError, RunError
from p2c_notebook.run.archive import repo_files, repository_zip
from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.run.store import RunStore
from p2c_notebook.ui import render


def start(paper: Path, run: Path, server: Any) -> Pipeline:
    return Pipeline.start(paper, run, settings=settings_for(server))


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("evil\x00.py", "control characters"),
        ("models/\x00/x.py", "control characters"),
        ("CON", "Windows reserves"),
        ("NUL", "Windows reserves"),
        ("aux.py", "Windows reserves"),
        ("com1.txt", "Windows reserves"),
        ("models/Lpt9.py", "Windows reserves"),
        ("prn.tar.gz", "Windows reserves"),
        ("models/a:b.py", "cannot hold"),
        ("trailing.", "cannot hold"),
        ("<img src=x onerror=alert(1)>.py", "cannot hold"),
    ],
)
def test_designed_file_names_with_nul_bytes_or_device_names_are_refused(
    serve: Any, paper_md: Path, tmp_path: Path, bad: str, why: str
) -> None:
    server = serve(small_scenario(design={**DESIGN, "file_list": [*DESIGN["file_list"], bad]}))
    run = tmp_path / "run"
    with start(paper_md, run, server) as pipeline, pytest.raises(ReplyError, match=why):
        pipeline.run()
    assert [r["attempt"] for r in server.requests if r["stage"] == "design"] == [1, 2]
    assert "design" not in json.loads((run / "manifest.json").read_text())["artifacts"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "toy.md"]


# --- symbolic links in the run folder ---------------------------------------------------------------------


@pytest.fixture
def planned(serve: Any, paper_md: Path, tmp_path: Path) -> tuple[Any, Path, Path]:
    """A run that has its plan, and a folder outside it holding a file that must stay untouched."""
    server = serve(small_scenario())
    run = tmp_path / "run"
    with start(paper_md, run, server) as pipeline:
        assert pipeline.run(until="analysis").state == "stopped"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x").write_text("precious\n")
    return server, run, outside


@pytest.mark.parametrize(
    ("link", "target"),
    [
        ("repo/models", "."),  # a folder inside the repository points outside
        ("repo/main.py", "x"),  # a file of the repository points at a file outside
        ("repo/data.py", "missing.py"),  # ... or at a file that does not exist yet
        ("repo", "."),  # the repository folder itself
        ("logs/run.log", "x"),  # the log is appended to, which would follow a link
        (".lock", "x"),  # the lock file is truncated, which would follow a link
    ],
)
def test_generated_files_are_never_written_through_a_symbolic_link(
    planned: tuple[Any, Path, Path], link: str, target: str
) -> None:
    server, run, outside = planned
    where = run / link
    where.parent.mkdir(parents=True, exist_ok=True)
    if where.exists() or where.is_symlink():
        where.unlink()
    where.symlink_to(outside / target)
    before = files_under(outside)
    with Pipeline.open(run, settings=settings_for(server)) as pipeline, pytest.raises(RunError) as caught:
        pipeline.run()
    message = str(caught.value)
    assert "symbolic link" in message or "lock file" in message, message
    assert "remove" in message.lower()
    assert files_under(outside) == before, "nothing was written outside the run folder"
    assert sorted(os.listdir(outside)) == ["x"]


def test_an_artifact_replaced_by_a_link_is_not_read_into_a_prompt(planned: tuple[Any, Path, Path]) -> None:
    server, run, outside = planned
    (outside / "x").write_text("TOP-SECRET-CONTENT\n")
    analysis = run / "analysis/data.py.md"
    analysis.unlink()
    analysis.symlink_to(outside / "x")
    calls = len(server.requests)
    with Pipeline.open(run, settings=settings_for(server)) as pipeline, pytest.raises(RunError, match="symbolic link"):
        pipeline.run()
    assert "TOP-SECRET-CONTENT" not in json.dumps(server.requests[calls:])


def test_the_repository_download_leaves_linked_files_out(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    server = serve(small_scenario())
    run = tmp_path / "run"
    with start(paper_md, run, server) as pipeline:
        pipeline.run()
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT\n")
    (run / "repo/secret.txt").symlink_to(secret)
    (run / "repo/elsewhere").symlink_to(tmp_path, target_is_directory=True)
    assert "secret.txt" not in repo_files(run / "repo") and not any("elsewhere" in f for f in repo_files(run / "repo"))
    archive = repository_zip(RunStore(run))
    assert b"TOP-SECRET-CONTENT" not in archive.read_bytes()


def test_a_plan_with_a_script_and_script_links_renders_them_as_text(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    plan = (
        "# Plan\n\n<script>alert(1)</script>\n\nSee [the code](javascript:alert(2)), [this](JaVaScRiPt:alert(3)), "
        "<javascript:alert(4)>, [data](data:text/html;base64,PHNjcmlwdD4=) and [the paper](https://arxiv.org/abs/1).\n\n"
        '| a | b |\n|---|---|\n| <img src=x onerror=alert(5)> | <a href="javascript:alert(6)">x</a> |\n'
    )
    scenario = small_scenario()
    scenario["responses"][0] = {"stage": "plan", "content": plan}
    server = serve(scenario)
    with start(paper_md, tmp_path / "run", server) as pipeline:
        assert pipeline.run(until="plan").state == "stopped"
        shown = render.artifact_html("plan", pipeline.store.read("plan"))
    assert "<script" not in shown and "<img" not in shown and "&lt;script&gt;alert(1)&lt;/script&gt;" in shown
    assert not any(f'href="{scheme}' in shown.lower() for scheme in ("javascript", "data"))
    assert shown.count("<a ") == 1  # only the https link became a link; the others stay visible text
    assert '<a href="https://arxiv.org/abs/1" target="_blank" rel="noopener noreferrer">the paper</a>' in shown
    assert "<table>" in shown  # the table rule is on, its cells escaped like the rest


# --- YAML and code that would act ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "yaml_text",
    [
        '!!python/object/apply:os.system ["touch {marker}"]',
        'lr: !!python/object/apply:os.system ["touch {marker}"]\nepochs: 3',
        "lr: !!python/object/new:subprocess.Popen [[touch, {marker}]]",
        "lr: !!python/name:os.system",
    ],
)
def test_config_with_object_constructing_yaml_tags_is_refused_and_runs_nothing(
    serve: Any, paper_md: Path, tmp_path: Path, yaml_text: str
) -> None:
    marker = tmp_path / "pwned"
    scenario = small_scenario()
    scenario["responses"][3] = {"stage": "config", "content": "```yaml\n" + yaml_text.format(marker=marker) + "\n```"}
    server = serve(scenario)
    with start(paper_md, tmp_path / "run", server) as pipeline, pytest.raises(ReplyError) as caught:
        pipeline.run()
    assert "config" in str(caught.value)
    assert [r["attempt"] for r in server.requests if r["stage"] == "config"] == [1, 2]
    assert not marker.exists()
    assert not (tmp_path / "run/planning/config.yaml").exists()


def test_generated_code_is_never_executed(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    marker = tmp_path / "imported"
    acting = f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
    scenario = small_scenario()
    for response in scenario["responses"]:
        if response["stage"] == "code":
            code = CODE[response["file"]]
            response["content"] = f"```python\n{acting}{code}```"
    server = serve(scenario)
    run = tmp_path / "run"
    with start(paper_md, run, server) as pipeline:
        assert pipeline.run().state == "done"
        pipeline.rows()
        pipeline.regenerate("code/main.py")
    for item in LOGIC["files"]:
        assert (run / "repo" / item["path"]).read_text().startswith(acting)
    assert not marker.exists(), "a generated file was imported or run"
