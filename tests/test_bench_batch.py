"""The batch benchmark's harness is right (not how fast anything is): benchmarks/bench_batch.py's bounds, its
count of paid calls, and a tiny batch with a 429 storm run through `run_batch` against the scripted server."""

from __future__ import annotations

import pytest
from conftest import benchmark

from p2c_notebook.testing import ScriptedServer

synthetic = benchmark("synthetic")
bench = benchmark("bench_batch")


def test_the_bound_is_the_critical_path_times_the_waves_of_work_the_slots_carry() -> None:
    small = synthetic.build(3)  # plan -> design -> logic -> one analysis -> three code calls: 7 calls deep
    wide = bench.bounds(small, papers=3, concurrency=4, latency=1.0, token_latency=0.0)
    assert wide["critical_path_s"] == 7.0 and wide["dependency_depth"] == 7
    assert wide["calls"] == 30 and wide["work_s"] == 30.0
    assert wide["waves"] == pytest.approx(30 / (4 * 7))  # more work than 4 slots do in one critical path
    assert wide["bound_s"] == pytest.approx(30 / 4)  # = work / K
    assert wide["naive_waves"] == 8 and wide["graham_s"] == pytest.approx(30 / 4 + 7)
    narrow = bench.bounds(small, papers=1, concurrency=32, latency=1.0, token_latency=0.0)
    assert narrow["waves"] == 1.0 and narrow["bound_s"] == 7.0  # one paper: its critical path bounds it


def test_a_call_answered_twice_for_the_same_paper_is_a_repeated_paid_call() -> None:
    small = synthetic.build(3)

    def request(
        model: str, stage: str, file: str = "", attempt: int = 1, fault: str | None = None
    ) -> dict[str, object]:
        return {"model": model, "stage": stage, "file": file, "attempt": attempt, "fault": fault}

    one = [request("bench-a", stage, file) for stage, file in small.replies]
    other = [request("bench-b", stage, file) for stage, file in small.replies]
    clean = bench.audit([*one, *other, request("bench-a", "plan", fault="status")], ["a", "b"], small)
    assert clean["repeated_paid_calls"] == 0 and clean["papers_not_paid_once_per_call"] == []
    assert clean["refused_by_faults"] == 1 and clean["answered"] == 20
    twice = bench.audit([*one, *other, request("bench-b", "code", small.files[0])], ["a", "b"], small)
    assert twice["repeated_paid_calls"] == 1 and twice["papers_not_paid_once_per_call"] == ["b"]
    repaired = bench.audit([*one, request("bench-a", "code", small.files[0], attempt=2)], ["a"], small)
    assert repaired["repeated_paid_calls"] == 0  # a re-ask is another attempt, not the same call paid twice


@pytest.mark.slow
def test_a_tiny_batch_through_a_429_storm_loses_nothing_and_pays_each_call_once() -> None:
    data = bench.measure(papers=3, files=3, concurrency=4, latency=0.0, token_latency=0.0, serve=ScriptedServer)
    for run in (data["single"], data["batch"], data["storm"]):
        assert run["errors"] == {} and run["lost"] == [] and run["repeated_paid_calls"] == 0
        assert run["papers_not_paid_once_per_call"] == [] and run["answered"] == run["calls"]
    assert data["single"]["papers_done"] == 1 and data["batch"]["papers_done"] == 3
    assert data["batch"]["answered"] == 3 * 10 and data["batch"]["refused_by_faults"] == 0
    stormy = data["storm"]
    assert stormy["papers_done"] == 3 and stormy["answered"] == 3 * 10
    assert stormy["refused_by_faults"] > 0 and stormy["rate_limit_pauses"] > 0
    assert stormy["server"]["max_in_flight"] <= 4 and stormy["server"]["over_capacity"] == 0
    assert "429 storm" in bench.report(data) and data["synthetic"] is True
