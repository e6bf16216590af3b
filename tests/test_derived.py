"""Files made from artifacts (diagram SVGs, the dependency graph, the repository zip) are made by the library,
recorded in the manifest with the hash of what they come from, and judged current by that hash, not by file times."""

from __future__ import annotations

import json
import os
import threading
import zipfile
from pathlib import Path
from typing import Any

import pytest
from conftest import CODE, LOGIC, settings_for, small_scenario

from p2c_notebook.errors import RunError
from p2c_notebook.run import archive, derived
from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.run.store import RunStore, sha256
from p2c_notebook.stages.artifacts import LogicDesign


def planned_run(serve: Any, paper: Path, run: Path) -> Pipeline:
    server = serve(small_scenario())
    pipeline = Pipeline.start(paper, run, settings=settings_for(server))
    assert pipeline.run(until="config").state == "stopped"
    return pipeline


class Renderer:
    """Stands in for PlantUML / Graphviz (pure logic): an SVG naming what it was drawn from, and a count."""

    def __init__(self) -> None:
        self.calls = 0

    def graph(self, logic: LogicDesign) -> str:
        self.calls += 1
        return f"<svg>{' '.join(logic.order)} #{self.calls}</svg>"

    def uml(self, source: str) -> str:
        self.calls += 1
        return f"<svg>{source} #{self.calls}</svg>"


def test_the_dependency_graph_is_recorded_with_the_logic_designs_hash_and_made_again_only_when_it_changes(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    with planned_run(serve, paper_md, tmp_path / "run") as pipeline:
        render = Renderer()
        first = derived.dependency_graph(pipeline.store, render.graph)
        assert "models/net.py" in first and render.calls == 1
        record = json.loads((tmp_path / "run" / "manifest.json").read_text())["derived"][derived.DEPENDENCY_GRAPH]
        assert record["source"] == "logic" and record["source_sha256"] == pipeline.store.hash_of("logic")
        assert (tmp_path / "run" / derived.DEPENDENCY_GRAPH).read_text() == first
        # An older file time on the SVG than on the logic design (a copy, a checkout) does not make it stale.
        os.utime(tmp_path / "run" / derived.DEPENDENCY_GRAPH, (1, 1))
        assert derived.dependency_graph(RunStore(tmp_path / "run"), render.graph) == first and render.calls == 1

        pipeline.edit("logic", json.dumps({**LOGIC, "shared_knowledge": "lr only"}, indent=2))
        again = derived.dependency_graph(pipeline.store, render.graph)
        assert again != first and render.calls == 2  # made from the edited logic design


def test_a_diagram_changed_on_disk_or_made_from_an_older_design_is_not_reused(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    with planned_run(serve, paper_md, tmp_path / "run") as pipeline:
        render = Renderer()
        assert derived.saved_diagram(pipeline.store, "class_diagram") is None
        svg = derived.render_diagram(pipeline.store, "class_diagram", "@startuml\nclass Net\n@enduml", render.uml)
        assert derived.saved_diagram(pipeline.store, "class_diagram") == svg
        path = tmp_path / "run" / derived.diagram_path("class_diagram")
        path.write_text("<svg>hand-made</svg>", encoding="utf-8")
        assert derived.saved_diagram(pipeline.store, "class_diagram") is None
        derived.render_diagram(pipeline.store, "class_diagram", "@startuml\nclass Net\n@enduml", render.uml)
        design = json.loads(pipeline.store.read("design"))
        pipeline.edit("design", json.dumps({**design, "open_questions": []}, indent=2))
        assert derived.saved_diagram(pipeline.store, "class_diagram") is None


def test_while_another_writer_holds_the_run_folder_the_file_is_written_but_not_recorded(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    with planned_run(serve, paper_md, tmp_path / "run") as pipeline:
        other = RunStore(tmp_path / "run")  # another writer: its own lock on the folder
        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            with other.locked():
                held.set()
                release.wait(10)

        thread = threading.Thread(target=hold)
        thread.start()
        try:
            assert held.wait(10)
            recorded = pipeline.store.save_derived(derived.DEPENDENCY_GRAPH, "<svg/>", "logic")
        finally:
            release.set()
            thread.join()
        assert not recorded and (tmp_path / "run" / derived.DEPENDENCY_GRAPH).read_text() == "<svg/>"
        assert "derived" not in json.loads((tmp_path / "run" / "manifest.json").read_text())
        with pipeline.store.locked():  # a run of this process holds it: recorded under that lock
            assert pipeline.store.save_derived(derived.DEPENDENCY_GRAPH, "<svg/>", "logic")
        assert pipeline.store.derived(derived.DEPENDENCY_GRAPH) == "<svg/>"


def test_a_touched_design_keeps_its_diagram_current_and_an_edited_one_makes_it_stale(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    with planned_run(serve, paper_md, tmp_path / "run") as pipeline:
        render = Renderer()
        svg = derived.render_diagram(pipeline.store, "sequence_diagram", "@startuml\nA -> B\n@enduml", render.uml)
        design_file = tmp_path / "run" / "planning" / "design.json"
        later = design_file.stat().st_mtime + 3600
        os.utime(design_file, (later, later))  # newer than the SVG, same bytes: still current
        assert derived.saved_diagram(RunStore(tmp_path / "run"), "sequence_diagram") == svg
        design = json.loads(pipeline.store.read("design"))
        design_file.write_text(json.dumps({**design, "open_questions": ["which optimiser?"]}), encoding="utf-8")
        os.utime(design_file, (1, 1))  # edited, yet older than the SVG: stale all the same
        edited = RunStore(tmp_path / "run")
        edited.refresh(["plan", "design", "logic", "config"])
        assert derived.saved_diagram(edited, "sequence_diagram") is None


def test_the_repository_zip_is_made_by_the_library_deterministically_and_recorded_as_derived(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    with Pipeline.start(paper_md, run, settings=settings_for(serve(small_scenario()))) as pipeline:
        pipeline.run()
        first = archive.repository_zip(pipeline.store).read_bytes()
        for file in (run / "repo").rglob("*"):
            os.utime(file, (1_000_000, 1_000_000))  # other file times: the same bytes
        again = archive.repository_zip(pipeline.store)
        assert again.read_bytes() == first
        with zipfile.ZipFile(again) as handle:
            names = handle.namelist()
            assert names == sorted(names) and {i.date_time for i in handle.infolist()} == {archive.FIXED_TIME}
            assert handle.read("run/models/net.py").decode() == CODE["models/net.py"]
        record = json.loads((run / "manifest.json").read_text())["derived"][archive.archive_path(pipeline.store)]
        assert record["source"] == "repo" and record["sha256"] == sha256(first)
        (run / "repo" / "models" / "net.py").write_text("changed = True\n", encoding="utf-8")
        archive.repository_zip(pipeline.store)
        changed = json.loads((run / "manifest.json").read_text())["derived"][archive.archive_path(pipeline.store)]
        assert changed["source_sha256"] != record["source_sha256"] and changed["sha256"] != record["sha256"]


def test_a_repository_larger_than_the_bound_is_refused_with_what_to_remove(
    serve: Any, paper_md: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    with Pipeline.start(paper_md, run, settings=settings_for(serve(small_scenario()))) as pipeline:
        pipeline.run()
        (run / "repo" / "checkpoint.bin").write_bytes(b"\0" * 4096)
        monkeypatch.setattr(archive, "MAX_ARCHIVE_BYTES", 2048)
        with pytest.raises(RunError, match="remove large files"):
            archive.repository_zip(pipeline.store)
        assert not (run / archive.archive_path(pipeline.store)).exists()
