"""The scripted server against the real OpenAI client: replies, usage, every fault kind, the CLI."""

from __future__ import annotations

import json
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from p2c_notebook.errors import ConfigError
from p2c_notebook.testing import Scenario, ScriptedServer, load_scenario

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from process import ServerProcess  # noqa: E402 - benchmarks/process.py, a benchmark helper

PLAN = "Plan: implement the model, the trainer and the evaluation loop in three files, one after another."
SCENARIO: dict[str, Any] = {
    "model": ["gpt-test", "gpt-other"],
    "reject_models": ["gpt-bogus"],
    "fault_sleep": 2.0,
    "responses": [
        {"stage": "plan", "content": PLAN},
        {"stage": "design", "json": {"file_list": ["main.py", "model.py"]}},
        {"stage": "code", "file": "train.py", "content": "print('train')\n"},
        {"stage": "code", "file": "*.py", "content": "# generic\n"},
        {"stage": "analysis", "replies": [{"content": "first"}, "second", {"json": [1, 2]}]},
    ],
}
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are a careful engineer."},
    {"role": "user", "content": "Here is the paper. " * 30},
]


def headers(stage: str, file: str = "", attempt: int = 1) -> dict[str, str]:
    return {"X-P2C-Stage": stage, "X-P2C-File": file, "X-P2C-Attempt": str(attempt)}


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer(SCENARIO) as srv:
        yield srv


@pytest.fixture
def client(server: ScriptedServer) -> openai.OpenAI:
    return openai.OpenAI(api_key="sk-test", base_url=server.base_url, max_retries=0, timeout=5)


def ask(client: openai.OpenAI, stage: str, file: str = "", **kwargs: Any) -> str:
    reply = client.chat.completions.create(
        model="gpt-test", messages=MESSAGES, extra_headers=headers(stage, file), **kwargs
    )
    return reply.choices[0].message.content or ""


def stream(client: openai.OpenAI, stage: str, file: str = "", **kwargs: Any) -> list[Any]:
    chunks = client.chat.completions.create(
        model="gpt-test", messages=MESSAGES, extra_headers=headers(stage, file), stream=True, **kwargs
    )
    return list(chunks)


def streamed_text(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def get_json(url: str, data: bytes | None = None) -> Any:
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=5) as resp:
        return json.loads(resp.read())


# -- replies ---------------------------------------------------------------------------------------------


def test_replies_are_keyed_by_stage_and_file_globs(client: openai.OpenAI) -> None:
    assert ask(client, "plan") == PLAN
    assert json.loads(ask(client, "design")) == {"file_list": ["main.py", "model.py"]}
    assert ask(client, "code", "train.py") == "print('train')\n"
    assert ask(client, "code", "src/model.py") == "# generic\n"


def test_non_streaming_reply_has_usage(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="gpt-test", messages=MESSAGES, extra_headers=headers("plan"))
    assert reply.object == "chat.completion"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_streaming_sends_several_chunks_and_a_usage_chunk(client: openai.OpenAI) -> None:
    chunks = stream(client, "plan", stream_options={"include_usage": True})
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) > 3
    assert streamed_text(chunks) == PLAN
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0


def test_streaming_without_include_usage_sends_no_usage(client: openai.OpenAI) -> None:
    chunks = stream(client, "plan")
    assert streamed_text(chunks) == PLAN
    assert all(c.usage is None for c in chunks)


def test_replies_sequence_advances_and_last_repeats(client: openai.OpenAI) -> None:
    assert [ask(client, "analysis", "a.py") for _ in range(4)] == ["first", "second", "[1, 2]", "[1, 2]"]


def test_content_file_is_relative_to_the_scenario_file(tmp_path: Path) -> None:
    (tmp_path / "replies").mkdir()
    (tmp_path / "replies" / "plan.md").write_text("# Plan from a file\n", encoding="utf-8")
    scenario_file = tmp_path / "scenario.yaml"
    scenario_file.write_text(
        "responses:\n  - stage: plan\n    content_file: replies/plan.md\n  - stage: '*'\n    json: {ok: true}\n",
        encoding="utf-8",
    )
    with ScriptedServer(str(scenario_file)) as srv:
        client = openai.OpenAI(api_key="sk-test", base_url=srv.base_url, max_retries=0)
        assert ask(client, "plan") == "# Plan from a file\n"
        assert ask(client, "config") == '{"ok": true}'


def test_cached_tokens_grow_with_a_shared_prefix(client: openai.OpenAI) -> None:
    def cached(messages: list[ChatCompletionMessageParam]) -> tuple[int, int]:
        reply = client.chat.completions.create(model="gpt-test", messages=messages, extra_headers=headers("plan"))
        assert reply.usage is not None and reply.usage.prompt_tokens_details is not None
        return reply.usage.prompt_tokens_details.cached_tokens or 0, reply.usage.prompt_tokens

    first, _ = cached([*MESSAGES, {"role": "user", "content": "Write the plan."}])
    partial, prompt = cached([*MESSAGES, {"role": "user", "content": "Now the design."}])
    repeat, prompt_again = cached([*MESSAGES, {"role": "user", "content": "Now the design."}])
    assert first == 0
    assert 0 < partial < prompt
    assert partial < repeat == prompt_again


def test_a_prefix_counts_as_cached_only_once_an_earlier_request_with_it_had_its_first_token_sent() -> None:
    with ScriptedServer(
        {**SCENARIO, "latency": 1.0, "faults": [{"stage": "design", "kind": "status", "status": 429}]}
    ) as srv:
        client = openai.OpenAI(api_key="sk-test", base_url=srv.base_url, max_retries=0, timeout=5)

        def usage(stage: str, last: str) -> int:
            try:
                reply = client.chat.completions.create(
                    model="gpt-test",
                    messages=[*MESSAGES, {"role": "user", "content": last}],
                    extra_headers=headers(stage),
                )
            except openai.RateLimitError:
                return -1
            assert reply.usage is not None and reply.usage.prompt_tokens_details is not None
            return reply.usage.prompt_tokens_details.cached_tokens or 0

        refused = usage("design", "Refused: its prompt is never processed.")
        together: list[int] = []
        threads = [threading.Thread(target=lambda i=i: together.append(usage("plan", f"Part {i}."))) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        later = usage("plan", "Part 9.")
    assert refused == -1
    assert together == [0, 0, 0]  # sent at the same instant: none was processed when the others arrived
    assert later > 0  # by now the paper's prefix has been processed


def test_a_server_at_capacity_refuses_the_next_request_at_once_with_retry_after() -> None:
    with ScriptedServer({**SCENARIO, "latency": 0.4, "capacity": 2, "capacity_retry_after": 3}) as srv:
        client = openai.OpenAI(api_key="sk-test", base_url=srv.base_url, max_retries=0, timeout=5)
        outcomes: list[str] = []

        def one() -> None:
            try:
                outcomes.append(ask(client, "plan"))
            except openai.RateLimitError as exc:
                outcomes.append(f"429 after {exc.response.headers.get('retry-after')}")

        threads = [threading.Thread(target=one) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        load = get_json(srv.base_url.removesuffix("/v1") + "/_p2c/load")
        recorded = srv.requests
    assert sorted(outcomes) == sorted([PLAN, PLAN, "429 after 3"])
    assert load == {"in_flight": 0, "max_in_flight": 2, "over_capacity": 1}
    assert sorted(r["in_flight"] for r in recorded) == [1, 2]  # the refused one was never served


def test_slots_are_served_as_llamacpp_props_and_habits_name_the_model_owner() -> None:
    with ScriptedServer({**SCENARIO, "slots": 4, "habit": "vllm"}) as srv:
        root = srv.base_url.removesuffix("/v1")
        assert get_json(root + "/props")["total_slots"] == 4
        assert {m["owned_by"] for m in get_json(srv.base_url + "/models")["data"]} == {"vllm"}
    with ScriptedServer(SCENARIO) as srv, pytest.raises(urllib.error.HTTPError):
        get_json(srv.base_url.removesuffix("/v1") + "/props")  # not a llama.cpp server


def test_concurrent_requests_are_all_answered(client: openai.OpenAI, server: ScriptedServer) -> None:
    results: list[str] = []

    def worker(i: int) -> None:
        results.append(streamed_text(stream(client, "code", f"m{i}.py")))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["# generic\n"] * 8
    assert len(server.requests) == 8


def test_models_endpoint_lists_the_accepted_models(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["gpt-test", "gpt-other"]


# -- errors ----------------------------------------------------------------------------------------------


def test_rejected_and_unknown_models_get_404(client: openai.OpenAI) -> None:
    for model in ("gpt-bogus", "gpt-unlisted"):
        with pytest.raises(openai.NotFoundError) as info:
            client.chat.completions.create(model=model, messages=MESSAGES, extra_headers=headers("plan"))
        assert info.value.code == "model_not_found"


def test_no_matching_response_is_a_400_naming_stage_and_file(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        ask(client, "logic", "x.py")
    assert "no scripted response for stage=logic file=x.py" in str(info.value)


def test_invalid_scenarios_raise_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        load_scenario({"responses": [{"stage": "plan", "content": "a", "json": {}}]})
    with pytest.raises(ConfigError, match="kind"):
        load_scenario({"faults": [{"stage": "plan", "kind": "explode"}]})
    with pytest.raises(ConfigError, match="cannot be read"):
        load_scenario({"responses": [{"stage": "plan", "content_file": "missing.md"}]}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match="Cannot read"):
        load_scenario(tmp_path / "nope.yaml")


# -- faults ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("streaming", [False, True])
def test_status_fault_429_exposes_retry_after(client: openai.OpenAI, server: ScriptedServer, streaming: bool) -> None:
    server.add_fault({"stage": "code", "file": "train.py", "kind": "status", "status": 429, "retry_after": 1})
    with pytest.raises(openai.RateLimitError) as info:
        (stream if streaming else ask)(client, "code", "train.py")
    assert info.value.response.headers["retry-after"] == "1"
    assert info.value.code == "rate_limit_exceeded"
    assert ask(client, "code", "train.py") == "print('train')\n"  # times defaults to 1


def test_status_fault_defaults_to_500(client: openai.OpenAI, server: ScriptedServer) -> None:
    server.add_fault({"stage": "*", "kind": "status"})
    with pytest.raises(openai.InternalServerError) as info:
        ask(client, "plan")
    assert info.value.status_code == 500


def test_fault_after_and_times_select_matching_requests(client: openai.OpenAI, server: ScriptedServer) -> None:
    server.add_fault({"stage": "code", "file": "*.py", "kind": "empty", "after": 1, "times": 2})
    got = [ask(client, "code", "a.py") for _ in range(4)]
    assert got == ["# generic\n", "", "", "# generic\n"]


def test_faulted_request_does_not_advance_replies(client: openai.OpenAI, server: ScriptedServer) -> None:
    server.add_fault({"stage": "analysis", "kind": "malformed"})
    assert ask(client, "analysis") == '{"file_list": ['
    assert [ask(client, "analysis") for _ in range(2)] == ["first", "second"]


@pytest.mark.parametrize("streaming", [False, True])
def test_malformed_fault_sends_broken_json(client: openai.OpenAI, server: ScriptedServer, streaming: bool) -> None:
    server.add_fault({"stage": "design", "kind": "malformed"})
    text = streamed_text(stream(client, "design")) if streaming else ask(client, "design")
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


@pytest.mark.parametrize("streaming", [False, True])
def test_empty_fault_sends_empty_content(client: openai.OpenAI, server: ScriptedServer, streaming: bool) -> None:
    server.add_fault({"stage": "plan", "kind": "empty"})
    assert (streamed_text(stream(client, "plan")) if streaming else ask(client, "plan")) == ""


def test_html_fault_is_a_502_page(client: openai.OpenAI, server: ScriptedServer) -> None:
    server.add_fault({"stage": "plan", "kind": "html"})
    with pytest.raises(openai.InternalServerError) as info:
        ask(client, "plan")
    assert info.value.status_code == 502
    assert info.value.response.headers["content-type"].startswith("text/html")


@pytest.mark.parametrize("streaming", [False, True])
def test_reset_fault_is_a_connection_error(client: openai.OpenAI, server: ScriptedServer, streaming: bool) -> None:
    server.add_fault({"stage": "plan", "kind": "reset"})
    with pytest.raises(openai.APIConnectionError) as info:
        (stream if streaming else ask)(client, "plan")
    assert not isinstance(info.value, openai.APITimeoutError)
    assert ask(client, "plan") == PLAN  # the next connection works


def test_truncate_fault_non_streaming(client: openai.OpenAI, server: ScriptedServer) -> None:
    server.add_fault({"stage": "plan", "kind": "truncate"})
    with pytest.raises(openai.APIConnectionError):
        ask(client, "plan")


def test_truncate_fault_streaming_stops_midway(client: openai.OpenAI, server: ScriptedServer) -> None:
    server.add_fault({"stage": "plan", "kind": "truncate"})
    received: list[str] = []
    chunks = client.chat.completions.create(
        model="gpt-test", messages=MESSAGES, extra_headers=headers("plan"), stream=True
    )
    with pytest.raises(openai.APIConnectionError):
        for chunk in chunks:
            received.append(chunk.choices[0].delta.content or "")
    text = "".join(received)
    assert text and PLAN.startswith(text) and len(text) < len(PLAN)


@pytest.mark.parametrize("streaming", [False, True])
def test_length_fault_cuts_reply_with_finish_reason_length(
    client: openai.OpenAI, server: ScriptedServer, streaming: bool
) -> None:
    server.add_fault({"stage": "plan", "kind": "length"})
    if streaming:
        chunks = stream(client, "plan")
        text, finish = streamed_text(chunks), chunks[-1].choices[0].finish_reason
    else:
        reply = client.chat.completions.create(model="gpt-test", messages=MESSAGES, extra_headers=headers("plan"))
        text, finish = reply.choices[0].message.content or "", reply.choices[0].finish_reason
    assert finish == "length"
    assert text and PLAN.startswith(text) and len(text) < len(PLAN)


def test_no_usage_fault_drops_usage(client: openai.OpenAI, server: ScriptedServer) -> None:
    server.add_fault({"stage": "plan", "kind": "no_usage", "times": 2})
    reply = client.chat.completions.create(model="gpt-test", messages=MESSAGES, extra_headers=headers("plan"))
    assert reply.usage is None and reply.choices[0].message.content == PLAN
    chunks = stream(client, "plan", stream_options={"include_usage": True})
    assert streamed_text(chunks) == PLAN and all(c.usage is None for c in chunks)


def test_timeout_fault_exceeds_a_short_client_timeout(client: openai.OpenAI, server: ScriptedServer) -> None:
    server.add_fault({"stage": "plan", "kind": "timeout"})
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.3).chat.completions.create(
            model="gpt-test", messages=MESSAGES, extra_headers=headers("plan")
        )


def test_reject_model_fault_is_a_404_for_the_matching_requests_only(
    client: openai.OpenAI, server: ScriptedServer
) -> None:
    server.add_fault({"stage": "code", "file": "train.py", "kind": "reject_model"})
    with pytest.raises(openai.NotFoundError) as info:
        ask(client, "code", "train.py")
    assert info.value.code == "model_not_found"
    assert ask(client, "plan") == PLAN


def test_html_fault_with_status_200_is_a_web_page_where_json_was_expected(server: ScriptedServer) -> None:
    server.add_fault({"stage": "plan", "kind": "html", "status": 200})
    data = json.dumps({"model": "gpt-test", "messages": MESSAGES}).encode()
    request = urllib.request.Request(
        f"{server.base_url}/chat/completions",
        data=data,
        headers={**headers("plan"), "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/html")
        assert b"<html>" in resp.read()


def test_timeout_fault_sleep_overrides_fault_sleep(client: openai.OpenAI, server: ScriptedServer) -> None:
    server.add_fault({"stage": "plan", "kind": "timeout", "sleep": 0.05})
    assert (
        client.with_options(timeout=1.5)
        .chat.completions.create(model="gpt-test", messages=MESSAGES, extra_headers=headers("plan"))
        .choices[0]
        .message.content
        == PLAN
    )  # fault_sleep is 2 s: only the fault's own sleep was waited


def test_a_continuation_gets_the_rest_of_a_reply_cut_at_length(client: openai.OpenAI, server: ScriptedServer) -> None:
    server.add_fault({"stage": "plan", "kind": "length"})
    first = ask(client, "plan")
    rest = client.chat.completions.create(
        model="gpt-test",
        messages=[*MESSAGES, {"role": "assistant", "content": first}, {"role": "user", "content": "Continue."}],
        extra_headers={**headers("plan"), "X-P2C-Continuation": "1"},
    )
    assert first + (rest.choices[0].message.content or "") == PLAN
    assert [r["continuation"] for r in server.requests] == [None, 1]


def test_attempt_filter_targets_the_first_try_only(client: openai.OpenAI, server: ScriptedServer) -> None:
    server.add_fault({"stage": "design", "attempt": 1, "kind": "malformed", "times": None})
    assert ask(client, "design") == '{"file_list": ['
    repaired = client.chat.completions.create(
        model="gpt-test", messages=MESSAGES, extra_headers=headers("design", attempt=2)
    )
    assert json.loads(repaired.choices[0].message.content or "") == {"file_list": ["main.py", "model.py"]}


# -- recording and control -------------------------------------------------------------------------------


def test_requests_are_recorded_without_credentials(client: openai.OpenAI, server: ScriptedServer) -> None:
    client.chat.completions.create(
        model="gpt-test",
        messages=MESSAGES,
        extra_headers=headers("code", "train.py", attempt=2),
        response_format={"type": "json_object"},
        reasoning_effort="low",
        max_completion_tokens=500,
        temperature=0.2,
        seed=7,
    )
    [record] = server.requests
    assert (record["stage"], record["file"], record["attempt"], record["model"]) == ("code", "train.py", 2, "gpt-test")
    assert record["messages"] == MESSAGES
    assert record["response_format"] == {"type": "json_object"}
    assert record["reasoning_effort"] == "low" and record["max_completion_tokens"] == 500
    assert record["temperature"] == 0.2 and record["seed"] == 7 and record["stream"] is False
    assert "sk-test" not in json.dumps(server.requests)


def test_runtime_responses_take_priority_and_reset_restores(client: openai.OpenAI, server: ScriptedServer) -> None:
    server.add_response({"stage": "plan", "content": "override"})
    assert ask(client, "plan") == "override"
    server.reset()
    assert server.requests == []
    assert ask(client, "plan") == PLAN


def test_control_endpoints(client: openai.OpenAI, server: ScriptedServer) -> None:
    root = server.base_url.removesuffix("/v1")
    ask(client, "plan")
    [record] = get_json(f"{root}/_p2c/requests")
    assert record["stage"] == "plan" and "sk-test" not in json.dumps(record)
    assert get_json(f"{root}/_p2c/reset", data=b"{}") == {"ok": True}
    assert get_json(f"{root}/_p2c/requests") == []


def test_scenario_object_and_unversioned_path(tmp_path: Path) -> None:
    scenario = load_scenario({"responses": [{"stage": "*", "content": "any"}]})
    assert isinstance(scenario, Scenario)
    with ScriptedServer(scenario) as srv:
        client = openai.OpenAI(api_key="sk-test", base_url=srv.base_url.removesuffix("/v1"), max_retries=0)
        assert ask(client, "") == "any"
    with pytest.raises(RuntimeError):
        _ = srv.base_url


@pytest.mark.slow
def test_cli_serves_a_scenario_file_in_a_child_process(tmp_path: Path) -> None:
    scenario_file = tmp_path / "scenario.json"
    scenario_file.write_text(json.dumps({"responses": [{"stage": "plan", "content": "from the cli"}]}))
    child = ServerProcess(scenario_file)
    with child:
        assert child.base_url.startswith("http://127.0.0.1:")
        client = openai.OpenAI(api_key="sk-test", base_url=child.base_url, max_retries=0, timeout=5)
        assert ask(client, "plan") == "from the cli"
        assert [r["stage"] for r in child.requests] == ["plan"]
        assert child.requests[0]["messages"] == MESSAGES
    assert child.returncode == 0, child.stderr
    assert child.stderr == ""
    with pytest.raises(RuntimeError, match="not running"):
        _ = child.base_url


@pytest.mark.slow
def test_a_child_server_that_cannot_start_says_why(tmp_path: Path) -> None:
    bad = tmp_path / "scenario.json"
    bad.write_text("{not json")
    with pytest.raises(RuntimeError, match="did not start: error: "):
        ServerProcess(bad).start()
