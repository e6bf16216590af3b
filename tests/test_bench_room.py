"""The room benchmark's harness is right (not how fast any server is): benchmarks/bench_room.py builds the workshop's
call from the example paper, runs students as processes of their own against one server, sees who waited for a slot,
and says whether a room holds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import benchmark

from p2c_notebook.testing import ScriptedServer
from p2c_notebook.tokens import estimate_tokens

bench = benchmark("bench_room")


def test_each_student_regenerates_the_recorded_plan_of_the_example_paper_with_feedback_of_its_own() -> None:
    requests = bench.room_requests()
    assert len(requests) == len(bench.FEEDBACK) and len({json.dumps(r) for r in requests}) == len(requests)
    plan = bench.recorded_plan()
    for messages, feedback in zip(requests, bench.FEEDBACK, strict=True):
        system, task, previous, revise = messages
        assert system["role"] == "system" and task["role"] == "user" and "Mixup Regularisation" in task["content"]
        assert previous == {"role": "assistant", "content": plan} and plan.strip()
        assert revise["role"] == "user" and feedback in revise["content"]
    assert all(r[:3] == requests[0][:3] for r in requests)  # the room shares the paper and the plan as a prefix


def student(number: int, start: float, first: float, end: float, tokens: int = 41) -> dict[str, Any]:
    return {"student": number, "ok": True, "error": None, "start": start, "first": first, "end": end, "tokens": tokens}


def test_a_student_whose_first_token_came_after_another_reply_ended_waited_and_the_room_is_re_timed() -> None:
    criteria = bench.Criteria(max_ttft_s=5.0, min_rate=2.0)
    # One slot: the second student's first token comes after the first reply (40 tokens after the first in 10 s).
    room = bench.summarize([student(1, 0.0, 1.0, 11.0), student(2, 0.0, 12.0, 22.0)], criteria, reply_tokens=400)
    waited = [r["waited"] for r in room["per_student"]]
    assert waited == [False, True] and room["waited"] == 1 and room["failed"] == 0
    assert room["ttft_max_s"] == 12.0 and room["rate_median"] == pytest.approx(4.0) and not room["holds"]
    assert room["aggregate_tokens_per_s"] == pytest.approx(82 / 22)
    projected = room["projected"]
    assert projected["served_at_once"] == 1 and projected["waves"] == 2
    assert projected["last_ttft_s"] == pytest.approx(1.0 + (1.0 + 400 / 4.0)) and not projected["holds"]
    # Two slots: both stream at once, within the bounds: the room holds, with whole replies too (one wave).
    both = bench.summarize([student(1, 0.0, 1.0, 11.0), student(2, 0.0, 1.5, 11.5)], criteria, reply_tokens=400)
    assert both["waited"] == 0 and both["holds"] and both["projected"]["holds"]
    assert both["projected"]["last_ttft_s"] == pytest.approx(1.25)


def test_a_room_with_a_failed_student_or_a_slow_stream_does_not_hold() -> None:
    criteria = bench.Criteria(max_ttft_s=5.0, min_rate=2.0)
    failed = {"student": 2, "ok": False, "error": "the reply stream was cut off", "start": 0.0}
    room = bench.summarize([student(1, 0.0, 1.0, 11.0), failed], criteria, reply_tokens=400)
    assert room["failed"] == 1 and room["errors"] == ["the reply stream was cut off"] and not room["holds"]
    assert room["projected"] is None
    slow = bench.summarize([student(1, 0.0, 1.0, 41.0)], criteria, reply_tokens=400)  # 1 token/s
    assert slow["rate_min"] == pytest.approx(1.0) and not slow["holds"]


def test_percentiles_interpolate_between_ranks() -> None:
    assert bench.percentile([3.0], 95) == 3.0
    assert bench.percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert bench.percentile([0.0, 10.0], 95) == pytest.approx(9.5)


def test_the_room_server_is_the_embedded_one_that_lets_a_reply_finish_when_the_next_request_arrives(
    tmp_path: Path,
) -> None:
    cli = pytest.importorskip("llama_cpp.server.cli")
    llama_settings = pytest.importorskip("llama_cpp.server.settings")
    command = bench.RoomServer(tmp_path / "model.gguf", "qwen2.5-coder-1.5b", 16384).command()
    parser = argparse.ArgumentParser()
    cli.add_args_from_model(parser, llama_settings.Settings)
    parsed = parser.parse_args(command[command.index("--model") :])  # what follows `python -c CHILD`
    server = cli.parse_model_from_args(llama_settings.ServerSettings, parsed)
    model = cli.parse_model_from_args(llama_settings.ModelSettings, parsed)
    assert server.interrupt_requests is False  # llama-cpp-python's default (True) cuts a streaming reply off
    assert model.n_ctx == 16384 and model.model_alias == "qwen2.5-coder-1.5b" and model.logits_all is False


def test_the_embedded_server_is_not_given_slots_it_does_not_have(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.main(["--slots", "4", "--students", "1"])  # refused before anything starts
    assert exc.value.code == 2 and "one request at a time" in capsys.readouterr().err


@pytest.mark.slow
def test_against_a_two_slot_server_the_third_of_three_students_waits_and_the_room_no_longer_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reply = " ".join(f"step{i} of the plan," for i in range(20))
    tokens = estimate_tokens(reply)
    assert 80 <= tokens <= 200  # ~2-4 s of streaming at 20 ms a token: far longer than a first token takes
    scenario = {"latency": 0.2, "token_latency": 0.02, "slots": 2, "responses": [{"stage": "plan", "content": reply}]}
    out = tmp_path / "room.json"
    with ScriptedServer(scenario) as server:
        code = bench.main(
            ["--url", server.base_url, "--model", "scripted", "--students", "2", "3", "--max-ttft", "1.5"]
            + ["--out", str(out)]
        )
        load, seen, queued = server.load(), server.requests, server.queued
    assert code == 0
    printed = capsys.readouterr().out
    table = [line.split() for line in printed.splitlines() if line.startswith(" ")]  # the rows, right-aligned
    rows = {row[0]: row for row in table}
    assert rows["2"][:3] == ["2", "0", "0"] and "yes" in rows["2"]  # students, failed, waited; holds
    assert rows["3"][:3] == ["3", "0", "1"] and "no" in rows["3"]
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["server"]["slots"] == 2 and data["server"]["slots_from"] == "/props"
    assert data["machine"]["cores"] >= 1 and data["request"]["max_tokens"] == 64
    pair, trio = data["rooms"]
    assert pair["holds"] and pair["waited"] == 0 and pair["failed"] == 0
    assert not trio["holds"] and trio["waited"] == 1 and trio["failed"] == 0
    (late,) = [r for r in trio["per_student"] if r["waited"]]
    early = [r for r in trio["per_student"] if not r["waited"]]
    assert late["ttft_s"] > 1.5 > max(r["ttft_s"] for r in early)
    assert late["first"] >= min(r["end"] for r in early)  # it started when a slot was freed
    assert all(r["tokens"] == tokens and r["tokens_counted_by"] == "server" for r in trio["per_student"])
    # The server saw the warm-up and 2 + 3 students' calls, all three of the last room at once; one queued.
    assert len(seen) == 1 + 2 + 3 and load["max_in_flight"] == 3 and queued == 1
    assert all(r["stage"] == "plan" and r["max_tokens"] == 64 for r in seen)
    assert all(r["messages"][-1]["content"].startswith("Revise your previous answer") for r in seen)
