"""The pipeline benchmark's harness is right (not how fast anything is): benchmarks/synthetic.py and
benchmarks/bench_pipeline.py, run with zero latency."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import benchmark
from pydantic import SecretStr

from p2c_notebook.backends import OpenAIBackend
from p2c_notebook.settings import Settings
from p2c_notebook.stages.artifacts import ArchitectureDesign, LogicDesign, parse_config
from p2c_notebook.testing import ScriptedServer, load_scenario
from p2c_notebook.tokens import estimate_tokens

synthetic = benchmark("synthetic")
bench = benchmark("bench_pipeline")


@pytest.fixture(scope="module", params=[8, 16])
def synth(request: pytest.FixtureRequest) -> Any:
    return synthetic.build(request.param)


def unfenced(reply: str, language: str) -> str:
    assert reply.startswith(f"```{language}\n") and reply.endswith("```")
    return reply.removeprefix(f"```{language}\n").removesuffix("```")


# --- the synthetic run ------------------------------------------------------------------------------------------
def test_design_and_logic_validate_and_agree(synth: Any) -> None:
    design = ArchitectureDesign.model_validate_json(synth.reply("design"))
    logic = LogicDesign.model_validate_json(synth.reply("logic"))
    checked, warnings = logic.check_against(design)
    assert warnings == []  # already dependencies-first
    assert checked.order == logic.order == design.file_list == synth.files
    assert {f.path: f.depends_on for f in logic.files} == synth.deps
    assert design.check() == []
    assert len(design.classes) >= 4 and design.open_questions and design.relations
    assert synthetic.check(synth) == []


def test_replies_are_the_issue_sizes_within_5_percent(synth: Any) -> None:
    targets = {"plan": 1500, "design": 1200, "logic": 1200, "config": 300, "analysis": 800, "code": 1500}
    stages = {stage for stage, _ in synth.replies}
    assert stages == set(targets)
    for (stage, file), text in synth.replies.items():
        got = estimate_tokens(text)
        assert abs(got - targets[stage]) <= 0.05 * targets[stage], (stage, file, got)
    assert len(synth.replies) == 4 + 2 * len(synth.files)


def test_config_and_code_are_what_the_pipeline_parses(synth: Any) -> None:
    assert parse_config(unfenced(synth.reply("config"), "yaml"))["model"]["d_model"] == 512
    for path in synth.files:
        tree = ast.parse(unfenced(synth.reply("code", path), "python"))
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        wanted = {d.removesuffix(".py").replace("/", ".") for d in synth.deps[path]}
        assert wanted <= imported, path
        assert synth.reply("analysis", path).startswith(f"## Analysis of `{path}`")


def test_the_graph_deepens_with_the_file_count_and_has_sub_folders(synth: Any) -> None:
    assert synthetic.depth(synth.deps) == {8: 4, 16: 5}[len(synth.files)]
    assert sum("/" in f for f in synth.files) >= len(synth.files) - 1
    assert synth.files[-1] == "main.py" and all(not synth.deps[f] for f in synth.files[:2])
    seen: set[str] = set()
    for path in synth.files:  # dependencies first
        assert set(synth.deps[path]) <= seen
        seen.add(path)


def test_small_graphs_and_limits() -> None:
    sizes = (1, 2, 3, 4, 5, 8, 9, 16, 17, 32, 40)
    assert [synthetic.depth(synthetic.dependency_graph(n)[1]) for n in sizes] == [1, 2, 3, 4, 4, 4, 5, 5, 6, 6, 7]
    files, deps = synthetic.dependency_graph(40)
    assert len(set(files)) == 40 and files[-1] == "main.py" and set(deps) == set(files)
    with pytest.raises(ValueError):
        synthetic.dependency_graph(0)


def test_scenario_loads_and_answers_every_stage(synth: Any, tmp_path: Path) -> None:
    data = synth.scenario(latency=0.5, token_latency=0.001)
    scenario = load_scenario(data)
    assert scenario.latency == 0.5 and scenario.token_latency == 0.001
    (tmp_path / "scenario.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    assert len(load_scenario(tmp_path / "scenario.yaml").responses) == len(synth.replies)


# --- the critical path ------------------------------------------------------------------------------------------
def test_critical_path_of_a_hand_made_dag() -> None:
    durations = {"a": 1.0, "b": 2.0, "c": 5.0, "d": 1.0, "e": 0.5}
    deps = {"b": ["a"], "c": ["a"], "d": ["b", "c"], "e": ["b"]}
    assert bench.critical_path(durations, deps) == (7.0, ["a", "c", "d"])
    assert bench.critical_path({"x": 2.0}, {}) == (2.0, ["x"])
    assert bench.critical_path({}, {}) == (0.0, [])
    with pytest.raises(ValueError, match="cycle"):
        bench.critical_path({"a": 1.0, "b": 1.0}, {"a": ["b"], "b": ["a"]})


def test_critical_path_of_the_pipeline_dag() -> None:
    small = synthetic.build(3)  # utils/config.py -> data/vocab.py -> main.py
    seconds = bench.call_seconds(small, latency=1.0, token_latency=0.0)
    length, path = bench.critical_path(seconds, bench.pipeline_dag(small))
    assert length == 3 + 1 + 3  # plan -> design -> logic (config beside them), one analysis, three code calls
    assert path[:4] == ["plan", "design", "logic", "analysis/utils/config.py"]
    assert path[-1] == "code/main.py"
    tokens = bench.call_seconds(small, latency=0.0, token_latency=0.001)
    assert tokens["plan"] == pytest.approx(small.output_tokens("plan") / 1000)


def test_dispatch_delays() -> None:
    steps = [{"stage": "plan", "file": "", "start_s": 0.1}, {"stage": "design", "file": "", "start_s": 1.3}]
    delays = bench.dispatch_delays(steps, {"plan": 1.0, "design": 1.0}, {"design": ["plan"]})
    assert delays["startup_s"] == pytest.approx(0.1)
    assert delays["median_s"] == pytest.approx(0.2)
    assert bench.sequential_deps(steps) == {"plan": [], "design": ["plan"]}


# --- the schedules ----------------------------------------------------------------------------------------------
def test_reference_like_schedule_resends_everything() -> None:
    small = synthetic.build(3)
    paper = "PAPER " * 200
    with ScriptedServer(small.scenario()) as server:
        backend = OpenAIBackend(Settings(base_url=server.base_url, api_key=SecretStr("sk-test"), model="bench"))
        try:
            bench.ReferenceLike(small, paper, backend).run()
        finally:
            backend.close()
        requests = server.requests
    assert [(r["stage"], r["file"]) for r in requests] == [
        *((s, "") for s in ("plan", "design", "logic", "config")),
        *(("analysis", f) for f in small.files),
        *(("code", f) for f in small.files),
    ]
    assert len(requests[3]["messages"]) == 8  # system, then plan, design and logic asked and answered, config
    codes = {f: unfenced(small.reply("code", f), "python").strip() for f in small.files}
    for request in requests[4:]:
        assert [m["role"] for m in request["messages"]] == ["system", "user"]
        user = request["messages"][1]["content"]
        assert paper.strip() in user and small.reply("config") in user and small.reply("logic") in user
    for index, request in enumerate(requests[7:]):
        user = request["messages"][1]["content"]
        assert all((codes[f] in user) == (i < index) for i, f in enumerate(small.files))


@pytest.mark.slow
def test_quick_run_completes_both_schedules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "latest.json"
    assert bench.main(["--n", "3", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "reference-like" in printed and "ratio" in printed
    data = json.loads(out.read_text())
    (result,) = data["results"]
    ours, ref = result["ours"], result["ref"]
    assert ours["calls"] == ref["calls"] == 2 * 3 + 4
    assert ours["output_tokens"] == ref["output_tokens"] == synthetic.build(3).total_output_tokens()
    assert ours["input_tokens"] > ours["cached_tokens"] > 0 and ref["input_tokens"] > 0
    assert ours["wall_s"] > 0 and ref["wall_s"] > 0 and ours["critical_s"] == 0.0
    assert {s["stage"] for s in ours["timeline"]} == {"plan", "design", "logic", "config", "analysis", "code"}
    assert data["extras"] == {}
