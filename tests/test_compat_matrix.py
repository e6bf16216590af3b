"""The compatibility matrix: the planning stages and the files succeed over HTTP against the scripted server
imitating each known server's habits (see docs/scenario-format.md, "Habits"), with a bounded number of
requests: a refusal is met once per server, the fallback is remembered, and nothing is retried unchanged."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import CODE, settings_for, small_scenario

from p2c_notebook.backends import ChatRequest, OpenAIBackend
from p2c_notebook.backends.openai import learned_capabilities
from p2c_notebook.errors import BackendError
from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.testing import ScriptedServer

MODEL = "o4-mini"  # a reasoning model: its token limit goes as max_completion_tokens, which some servers refuse
PAPER = "# Toy\n\n## Abstract\n\nA linear model fitted with SGD on toy data.\n\n## 1 Method\n\nlr 0.1, 3 epochs.\n"
ARTIFACTS = 4 + 2 * len(CODE)  # plan, design, logic, config, then an analysis and a code file per file


@pytest.fixture
def paper(tmp_path: Path) -> Path:
    path = tmp_path / "toy.md"
    path.write_text(PAPER, encoding="utf-8")
    return path


# habit: (refused requests in a first run, what is learned, design's response_format, usage estimated)
MATRIX: dict[str, tuple[int, dict[str, str], str | None, bool]] = {
    "openai": (0, {}, "json_schema", False),
    "vllm": (0, {}, "json_schema", False),
    "ollama": (0, {}, "json_schema", True),
    "lmstudio": (1, {"token_parameter": "max_tokens"}, "json_schema", False),
    "llamacpp": (2, {"token_parameter": "max_tokens", "structured_output": "json_object"}, "json_object", True),
}


def artifact_of(request: Any) -> str:
    return f"{request['stage']}/{request['file']}" if request["file"] else request["stage"]


@pytest.mark.parametrize("habit", list(MATRIX))
def test_a_run_succeeds_against_each_server_habit_with_bounded_requests(
    habit: str, paper: Path, tmp_path: Path
) -> None:
    refused, learned, design_format, estimated = MATRIX[habit]
    with ScriptedServer(small_scenario(habit=habit)) as server:
        settings = settings_for(server, model=MODEL)
        with Pipeline.start(paper, tmp_path / "run", settings=settings) as pipeline:
            assert pipeline.run().state == "done"
        requests = server.requests
        answered = [r for r in requests if r["fault"] is None]
        assert len(requests) == ARTIFACTS + refused, [(artifact_of(r), r["fault"]) for r in requests]
        assert sum(r["fault"] == "habit" for r in requests) == refused
        assert all(n == 1 for n in Counter(map(artifact_of, answered)).values()), "no repair, no retry"
        design = [r for r in answered if r["stage"] == "design"][0]
        assert (design["response_format"] or {}).get("type") == design_format
        assert learned_capabilities(server.base_url, MODEL) == learned
        manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
        assert manifest["artifacts"]["design"]["usage"].get("estimated", False) is estimated
        for path, code in CODE.items():
            assert (tmp_path / "run" / "repo" / path).read_text() == code

        server.reset()  # a second run in this process: what was learned is not probed again
        with Pipeline.start(paper, tmp_path / "again", settings=settings) as pipeline:
            assert pipeline.run().state == "done"
        assert len(server.requests) == ARTIFACTS and all(r["fault"] is None for r in server.requests)


def test_a_refused_schema_format_is_not_retried_when_it_was_asked_for_explicitly(paper: Path, tmp_path: Path) -> None:
    with ScriptedServer(small_scenario(habit="llamacpp")) as server:
        settings = settings_for(server, structured_output="json_schema", max_retries=3, retry_base_delay=0.001)
        with (
            Pipeline.start(paper, tmp_path / "run", settings=settings) as pipeline,
            pytest.raises(BackendError) as info,
        ):
            pipeline.run()
        assert [r["fault"] for r in server.requests if r["stage"] == "design"] == ["habit"], "retried unchanged"
    message = str(info.value)
    assert "refused the request's response_format with HTTP 500 (stage design)" in message
    assert "Input should be 'text' or 'json_object'" in message and "P2C_STRUCTURED_OUTPUT=auto" in message
    assert "\n" not in message and info.value.exit_code == 4


def test_the_format_falls_back_to_plain_text_with_the_schema_in_the_prompt() -> None:
    scenario = {
        "responses": [{"stage": "design", "content": 'Here it is:\n```json\n{"file_list": ["a.py"]}\n```'}],
        "faults": [
            {"stage": "design", "kind": "status", "status": 422, "message": "response_format json_schema unsupported"},
            {"stage": "design", "kind": "status", "status": 400, "after": 1, "message": "Unknown response_format"},
        ],
    }
    schema = {"type": "object", "properties": {"file_list": {"type": "array"}}}
    with ScriptedServer(scenario) as server:
        backend = OpenAIBackend(settings_for(server))
        request = ChatRequest([{"role": "user", "content": "Design it."}], "design", schema=schema, schema_name="D")
        assert backend.complete(request, lambda _: None).text.startswith("Here it is")
        backend.complete(request, lambda _: None)  # the next call goes as plain text at once
        backend.close()
        sent = server.requests
    assert [(r["response_format"] or {}).get("type") for r in sent] == ["json_schema", "json_object", None, None]
    schema_text = json.dumps(schema, separators=(",", ":"), sort_keys=True)
    assert schema_text not in sent[0]["messages"][-1]["content"]
    assert all(schema_text in r["messages"][-1]["content"] for r in sent[1:])
    assert backend.capabilities["structured_output"] == "off"


def test_a_too_long_request_naming_max_tokens_is_not_taken_for_a_refused_parameter() -> None:
    message = "'max_tokens' is too large: 8192. This model's maximum context length is 4096 tokens."
    scenario = {
        "responses": [{"stage": "plan", "content": "The plan."}],
        "faults": [{"stage": "plan", "kind": "status", "status": 400, "message": message}],
    }
    with ScriptedServer(scenario) as server:
        backend = OpenAIBackend(settings_for(server))
        with pytest.raises(BackendError, match="maximum context length"):
            backend.complete(ChatRequest([{"role": "user", "content": "Plan."}], "plan"), lambda _: None)
        backend.close()
        assert len(server.requests) == 1 and server.requests[0]["max_tokens"] == 8192
        assert learned_capabilities(server.base_url, "gpt-4o-mini") == {}


def test_a_server_error_that_names_no_parameter_is_still_retried() -> None:
    scenario = {
        "responses": [{"stage": "plan", "content": "The plan."}],
        "faults": [{"stage": "plan", "kind": "status", "status": 500, "message": "CUDA out of memory"}],
    }
    with ScriptedServer(scenario) as server:
        backend = OpenAIBackend(settings_for(server, retry_base_delay=0.001))
        assert backend.complete(ChatRequest([{"role": "user", "content": "Plan."}], "plan"), lambda _: None).text
        backend.close()
        assert [r["fault"] for r in server.requests] == ["status", None]


def test_a_server_that_stops_a_reply_when_another_request_arrives_gets_calls_one_at_a_time(
    paper: Path, tmp_path: Path
) -> None:
    """llama.cpp's own server ends the reply in progress when a new request arrives (`interrupt_requests`, on by
    default); the design and config calls go out together, so each would cut the other off until the retries ran
    out. The first cut-off while another call is open teaches the backend to send calls to that server singly."""
    scenario = small_scenario(habit="llamacpp", interrupt_requests=True, latency=0.05, token_latency=0.02)
    with ScriptedServer(scenario) as server:
        settings = settings_for(server, model=MODEL, concurrency=4, retry_base_delay=0.01, max_retries=3)
        with Pipeline.start(paper, tmp_path / "run", settings=settings) as pipeline:
            assert pipeline.run().state == "done"
        assert 1 <= server.interrupted <= 2, "a cut-off teaches one-at-a-time; at most the two open calls are cut"
        for path, code in CODE.items():
            assert (tmp_path / "run" / "repo" / path).read_text() == code
        server.reset()
        interrupted = server.interrupted
        with Pipeline.start(paper, tmp_path / "again", settings=settings) as pipeline:
            assert pipeline.run().state == "done"
        assert server.interrupted == interrupted, "learned for this server: nothing is cut off any more"
