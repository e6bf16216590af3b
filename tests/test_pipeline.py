"""The pipeline over the wire: real openai client, scripted server on 127.0.0.1, real run folders."""

from __future__ import annotations

import ast
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import API_KEY, CODE, DESIGN, settings_for, small_scenario

from p2c_notebook.backends import OpenAIBackend
from p2c_notebook.errors import EditedArtifactError, PlanError, ReplyError, RunError
from p2c_notebook.run.events import ArtifactSaved, AwaitingApproval, Event, Notice, TokenDelta, UsageReported
from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.run.store import sha256

ALL = [
    "paper",
    "plan",
    "design",
    "logic",
    "config",
    *(f"analysis/{f}" for f in ["data.py", "models/net.py", "main.py"]),
    *(f"code/{f}" for f in ["data.py", "models/net.py", "main.py"]),
    "code/config.yaml",  # repo/config.yaml, the planning config's copy, tracked like every file in repo/
]


def calls(server: Any) -> Counter[tuple[str, str]]:
    return Counter((r["stage"], r["file"]) for r in server.requests)


def start(paper: Path, run: Path, server: Any, events: list[Event] | None = None, **extra: Any) -> Pipeline:
    sinks = (events.append,) if events is not None else ()
    return Pipeline.start(paper, run, settings=settings_for(server, **extra), sinks=sinks)


def test_full_run_writes_every_artifact_and_the_repository(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    server = serve(small_scenario())
    events: list[Event] = []
    with start(paper_md, tmp_path / "run", server, events) as pipeline:
        result = pipeline.run()
    assert result.state == "done"
    run = tmp_path / "run"
    manifest = json.loads((run / "manifest.json").read_text())
    assert sorted(manifest["artifacts"]) == sorted(ALL)
    for path, code in CODE.items():
        assert (run / "repo" / path).read_text() == code
    assert (run / "repo/config.yaml").read_text().startswith("lr: 0.1")
    for name in ("class_diagram.mmd", "sequence_diagram.mmd", "class_diagram.puml", "sequence_diagram.puml"):
        assert (run / "planning" / name).stat().st_size > 0
    assert (run / "analysis/models/net.py.md").exists()
    entry = manifest["artifacts"]["code/main.py"]
    assert set(entry["inputs"]) >= {"analysis/main.py", "code/models/net.py", "code/data.py", "config"}
    assert entry["model"] == "gpt-4o-mini" and entry["usage"]["prompt_tokens"] > 0
    assert entry["usage"]["cost_usd"] is not None
    assert any(isinstance(e, TokenDelta) for e in events)
    assert sum(isinstance(e, ArtifactSaved) for e in events) == len(ALL) - 1
    assert any(isinstance(e, UsageReported) and e.usage.cached_tokens > 0 for e in events)
    assert all(v == 1 for v in calls(server).values())


def test_rerun_of_a_finished_run_makes_no_call(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    server = serve(small_scenario())
    with start(paper_md, tmp_path / "run", server) as pipeline:
        pipeline.run()
    before = len(server.requests)
    with start(paper_md, tmp_path / "run", server) as pipeline:
        assert pipeline.run().state == "done"
    assert len(server.requests) == before


def test_coding_prompt_holds_dependencies_not_the_whole_repository(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    server = serve(small_scenario())
    with start(paper_md, tmp_path / "run", server) as pipeline:
        pipeline.run()
    by_file = {r["file"]: r for r in server.requests if r["stage"] == "code"}
    data_prompt = by_file["data.py"]["messages"][-1]["content"]
    net_prompt = by_file["models/net.py"]["messages"][-1]["content"]
    assert "class Net" not in data_prompt and "def load" in net_prompt
    prefixes = {json.dumps(r["messages"][:-1]) for r in server.requests if r["stage"] in ("analysis", "code")}
    assert len(prefixes) == 1, "analysis and coding calls must share one byte-identical prefix"


def test_editing_config_marks_exactly_analysis_and_code_stale(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    server = serve(small_scenario())
    run = tmp_path / "run"
    with start(paper_md, run, server) as pipeline:
        pipeline.run()
    (run / "planning/config.yaml").write_text("lr: 0.05\nepochs: 3\n")
    pipeline = Pipeline.open(run, settings=settings_for(server))
    status = {r.artifact: r.status for r in pipeline.rows()}
    assert status["config"] == "edited"
    assert {a for a, s in status.items() if s == "stale"} == {a for a in ALL if a.startswith(("analysis/", "code/"))}
    assert {status[a] for a in ("paper", "plan", "design", "logic")} <= {"generated", "approved"}
    before = calls(server)
    pipeline.run()
    pipeline.close()
    after = calls(server) - before
    assert set(after) == {(s, f) for s in ("analysis", "code") for f in CODE}
    assert (run / "planning/config.yaml").read_text() == "lr: 0.05\nepochs: 3\n"
    assert (run / "repo/config.yaml").read_text() == "lr: 0.05\nepochs: 3\n"


def test_editing_one_analysis_invalidates_only_its_dependents(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    server = serve(small_scenario())
    run = tmp_path / "run"
    with start(paper_md, run, server) as pipeline:
        pipeline.run()
        pipeline.edit("analysis/models/net.py", "## net\n\nUse a bias term too, please.\n")
        stale = {r.artifact for r in pipeline.rows() if r.status == "stale"}
    assert stale == {"code/models/net.py", "code/main.py"}


def test_from_stage_refuses_to_overwrite_edits_without_permission(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    server = serve(small_scenario())
    run = tmp_path / "run"
    with start(paper_md, run, server) as pipeline:
        pipeline.run()
    (run / "repo/main.py").write_text("print('mine')\n")
    with start(paper_md, run, server) as pipeline:
        with pytest.raises(EditedArtifactError, match="code/main.py"):
            pipeline.run(from_stage="code")
        assert (run / "repo/main.py").read_text() == "print('mine')\n"
        pipeline.run(from_stage="code", overwrite_edited=True)
    assert (run / "repo/main.py").read_text() == CODE["main.py"]


def test_from_stage_redoes_that_stage_and_later_only(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    server = serve(small_scenario())
    with start(paper_md, tmp_path / "run", server) as pipeline:
        pipeline.run()
        before = calls(server)
        pipeline.run(from_stage="analysis")
    assert {s for s, _ in calls(server) - before} == {"analysis", "code"}


def test_approval_gates_pause_before_each_stage(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    server = serve(small_scenario())
    events: list[Event] = []
    with start(paper_md, tmp_path / "run", server, events) as pipeline:
        first = pipeline.run(require_approval=True)
        assert first.state == "paused" and first.pending == ["plan"]
        assert any(isinstance(e, AwaitingApproval) for e in events)
        for artifact in ("plan", "design", "logic", "config"):
            pipeline.approve(artifact)
            pipeline.run(require_approval=True)
        paused = pipeline.run(require_approval=True)
        assert paused.state == "paused" and all(p.startswith("analysis/") for p in paused.pending)
        pipeline.approve("analysis")
        assert pipeline.run(require_approval=True).state == "done"


def test_until_stops_after_the_named_stage(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    server = serve(small_scenario())
    with start(paper_md, tmp_path / "run", server) as pipeline:
        assert pipeline.run(until="planning").state == "stopped"
    assert {s for s, _ in calls(server)} == {"plan"}


@pytest.mark.parametrize("bad", ["../evil.py", "/tmp/x.py", "a/../../b.py", "C:/win.py", "~/home.py"])
def test_design_with_an_escaping_path_is_rejected(serve: Any, paper_md: Path, tmp_path: Path, bad: str) -> None:
    design = {**DESIGN, "file_list": [*DESIGN["file_list"], bad]}
    server = serve(small_scenario(design=design))
    run = tmp_path / "out" / "run"
    with start(paper_md, run, server) as pipeline, pytest.raises(ReplyError) as info:
        pipeline.run()
    assert "inside the repository" in str(info.value) or "home folder" in str(info.value)
    assert [r["attempt"] for r in server.requests if r["stage"] == "design"] == [1, 2]
    outside = [p for p in (tmp_path).rglob("*") if run not in p.parents and p != run and p != tmp_path / "out"]
    assert outside == [tmp_path / "toy.md"] or sorted(outside) == sorted([tmp_path / "toy.md"])
    assert not Path("/tmp/x.py").exists() or bad != "/tmp/x.py"
    assert "design" not in json.loads((run / "manifest.json").read_text())["artifacts"]


def test_case_colliding_files_are_rejected(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    design = {**DESIGN, "file_list": [*DESIGN["file_list"], "Main.py"]}
    server = serve(small_scenario(design=design))
    with start(paper_md, tmp_path / "run", server) as pipeline, pytest.raises(ReplyError, match="same file"):
        pipeline.run()


def test_malformed_reply_is_reasked_once_then_fails_clearly(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    scenario = small_scenario()
    scenario["responses"].insert(0, {"stage": "design", "content": '{"file_list": ['})
    server = serve(scenario)
    with start(paper_md, tmp_path / "run", server) as pipeline, pytest.raises(ReplyError) as info:
        pipeline.run()
    assert "unusable twice" in str(info.value) and "not valid JSON" in str(info.value)
    design_calls = [r for r in server.requests if r["stage"] == "design"]
    assert [r["attempt"] for r in design_calls] == [1, 2]
    assert "could not be used" in design_calls[1]["messages"][-1]["content"]
    assert (tmp_path / "run/planning/plan.md").exists(), "the plan, already paid for, is kept"


def test_malformed_reply_then_valid_reply_recovers(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    scenario = small_scenario()
    good = scenario["responses"][1]["content"]
    scenario["responses"][1] = {"stage": "design", "replies": [{"content": "not json at all"}, {"content": good}]}
    server = serve(scenario)
    with start(paper_md, tmp_path / "run", server) as pipeline:
        assert pipeline.run().state == "done"


def test_dependency_cycle_is_rejected(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    logic = {
        "files": [
            {"path": "data.py", "role": "d", "depends_on": ["main.py"]},
            {"path": "models/net.py", "role": "n", "depends_on": ["data.py"]},
            {"path": "main.py", "role": "m", "depends_on": ["models/net.py"]},
        ]
    }
    server = serve(small_scenario(logic=logic))
    with start(paper_md, tmp_path / "run", server) as pipeline, pytest.raises(ReplyError, match="cycle"):
        pipeline.run()


def test_python_with_a_syntax_error_is_reasked(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    scenario = small_scenario()
    scenario["responses"].insert(
        0,
        {
            "stage": "code",
            "file": "data.py",
            "replies": [
                {"content": "```python\ndef load(:\n```"},
                {"content": "```python\n" + CODE["data.py"] + "```"},
            ],
        },
    )
    server = serve(scenario)
    with start(paper_md, tmp_path / "run", server) as pipeline:
        pipeline.run()
    for path in CODE:
        ast.parse((tmp_path / "run/repo" / path).read_text())
    reask = [r for r in server.requests if r["stage"] == "code" and r["file"] == "data.py"][1]
    # The re-ask quotes the line, not only "invalid syntax": a small model otherwise rewrites the same line.
    assert "data.py has a syntax error at line 1 (`def load(:`): invalid syntax." in reask["messages"][-1]["content"]


def test_max_repairs_sets_how_often_an_unusable_reply_is_reasked(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    broken = {"content": "```python\ndef load(:\n```"}
    scenario = small_scenario()
    scenario["responses"].insert(
        0,
        {
            "stage": "code",
            "file": "data.py",
            "replies": [broken, broken, {"content": "```python\n" + CODE["data.py"] + "```"}],
        },
    )
    server = serve(scenario)
    with start(paper_md, tmp_path / "once", server) as pipeline, pytest.raises(ReplyError, match="unusable twice"):
        pipeline.run()
    server.reset()
    with start(paper_md, tmp_path / "twice", server, max_repairs=2) as pipeline:
        assert pipeline.run().state == "done"
    asked = [r["attempt"] for r in server.requests if r["stage"] == "code" and r["file"] == "data.py"]
    assert asked == [1, 2, 3]


def test_the_repair_reasks_follow_the_backends_own_settings(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    """A local model's tuned settings (two repairs) apply, not only the settings the run was started with."""
    server = serve(small_scenario())
    tuned = OpenAIBackend(settings_for(server, max_repairs=2, max_tokens=1234))
    with Pipeline.start(paper_md, tmp_path / "run", settings=settings_for(server), backend=tuned) as pipeline:
        ctx = pipeline._context()
        assert pipeline.settings.max_repairs == 1
        assert ctx.settings.max_repairs == 2 and ctx.settings.max_tokens == 1234


def test_unknown_model_completes_with_cost_unknown(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    server = serve(small_scenario())
    with start(paper_md, tmp_path / "run", server, model="my-own-finetune") as pipeline:
        assert pipeline.run().state == "done"
        assert pipeline.store.spent().cost is None
        assert "cost unknown" in pipeline.store.spent().describe()


def test_no_api_key_anywhere_in_the_run_folder(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    scenario = small_scenario()
    design = scenario["responses"][1]
    scenario["responses"].insert(
        0, {"stage": "design", "replies": [{"content": "junk"}, {"content": design["content"]}]}
    )
    server = serve(scenario)
    with start(paper_md, tmp_path / "run", server) as pipeline:
        pipeline.run()
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert any(p.name == "run.log" for p in files)
    for path in files:
        assert API_KEY.encode() not in path.read_bytes(), path


def test_second_writer_gets_a_clear_error(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    server = serve(small_scenario())
    pipeline = start(paper_md, tmp_path / "run", server)
    with pipeline.store.locked():
        other = Pipeline.open(tmp_path / "run", settings=settings_for(server))
        with pytest.raises(RunError, match="in use"):
            other.run()
    pipeline.close()


def test_invalid_edit_is_refused_and_the_file_kept(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    server = serve(small_scenario())
    with start(paper_md, tmp_path / "run", server) as pipeline:
        pipeline.run(until="config")
        before = (tmp_path / "run/planning/config.yaml").read_text()
        with pytest.raises(PlanError, match="config.yaml does not parse"):
            pipeline.edit("config", "lr: [unclosed\n")
        assert (tmp_path / "run/planning/config.yaml").read_text() == before


def test_regenerate_with_feedback_sends_the_feedback(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    server = serve(small_scenario())
    with start(paper_md, tmp_path / "run", server) as pipeline:
        pipeline.run()
        pipeline.regenerate("code/main.py", feedback="add a __main__ guard")
    last = server.requests[-1]
    assert last["stage"] == "code" and "add a __main__ guard" in last["messages"][-1]["content"]
    assert last["messages"][-2]["content"] == CODE["main.py"]


def test_manifest_hashes_match_files(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    server = serve(small_scenario())
    with start(paper_md, tmp_path / "run", server) as pipeline:
        pipeline.run()
    run = tmp_path / "run"
    for name, entry in json.loads((run / "manifest.json").read_text())["artifacts"].items():
        assert sha256((run / entry["path"]).read_bytes()) == entry["sha256"], name


def test_streamed_text_reaches_the_bus_in_batches_and_whole(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    design = json.dumps(DESIGN, indent=2)
    server = serve(small_scenario())
    server.add_response({"stage": "design", "content": design})  # hundreds of chunks, all at once
    events: list[Event] = []
    with start(paper_md, tmp_path / "run", server, events) as pipeline:
        assert pipeline.run(until="design").state == "stopped"
    deltas = [e for e in events if isinstance(e, TokenDelta) and e.artifact == "design"]
    chunks = len(design.split()) // 3  # the scripted server sends three words a chunk
    assert 1 <= len(deltas) < chunks / 4  # a reply that arrives at once is not one event per chunk
    assert "".join(d.text for d in deltas) == design  # and nothing is lost: the rest is sent when it ends


def test_cancel_discards_the_artifact_in_progress_and_keeps_the_rest(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    server = serve(small_scenario(token_latency=0.01))
    pipeline = start(paper_md, tmp_path / "run", server, concurrency=1)

    def cancel_on_first_code_token(event: Event) -> None:
        if isinstance(event, TokenDelta) and event.artifact.startswith("code/"):
            pipeline.cancel()

    pipeline.bus.subscribe(cancel_on_first_code_token)
    result = pipeline.run()
    assert result.state == "cancelled"
    saved = {e.artifact for e in pipeline.store.entries()}
    # One scheduler for both stages: code/data.py starts right after its analysis, before the others' analyses.
    assert "analysis/data.py" in saved
    assert not any(a.startswith("code/") for a in saved)
    assert not (tmp_path / "run/repo/data.py").exists()
    pipeline.bus = type(pipeline.bus)()
    assert pipeline.run().state == "done"
    pipeline.close()


def test_server_refusing_the_schema_format_falls_back_to_json_object(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    scenario = small_scenario()
    scenario["faults"] = [
        {"stage": "design", "kind": "status", "status": 400, "message": "response_format json_schema is not supported"}
    ]
    server = serve(scenario)
    with start(paper_md, tmp_path / "run", server) as pipeline:
        assert pipeline.run().state == "done"
    design_calls = [r for r in server.requests if r["stage"] == "design"]
    assert design_calls[0]["response_format"]["type"] == "json_schema"
    assert design_calls[1]["response_format"] == {"type": "json_object"}  # the next step down, remembered
    assert all(r["response_format"] == {"type": "json_object"} for r in server.requests if r["stage"] == "logic")


def test_the_next_command_asks_the_same_model_without_secrets(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    server = serve(small_scenario())
    with start(paper_md, tmp_path / "run", server) as pipeline:
        pipeline.run(until="config")
        command = pipeline.next_command()
    assert f"--model gpt-4o-mini --base-url {server.base_url}` generates analysis/" in command
    manifest_text = (tmp_path / "run" / "manifest.json").read_text()
    assert API_KEY not in manifest_text and '"last_run"' in manifest_text
    with_password = Pipeline(tmp_path / "other", settings=settings_for(server, base_url="http://me:pw@127.0.0.1:9/v1"))
    assert "base_url" not in with_password._run_options()


def test_what_the_lock_recovered_is_said_even_when_the_paper_changed(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    server = serve(small_scenario())
    with start(paper_md, tmp_path / "run", server) as pipeline:
        pipeline.run(until="plan")
    (tmp_path / "run" / ".lock").write_text("pid 99999 on elsewhere since 2026-01-01\n")  # a killed run's lock
    paper_md.write_text(paper_md.read_text() + "\n## 2 Results\n\nThe loss falls.\n")
    events: list[Event] = []
    start(paper_md, tmp_path / "run", server, events).close()
    notes = [e.message for e in events if isinstance(e, Notice)]
    assert any("Recovered the run folder" in n and "pid 99999" in n for n in notes), notes
