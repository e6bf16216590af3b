"""A workshop room in one process: 30 notebook-style runs at once (each its own run folder, on its own thread)
against ONE scripted server with a latency model and injected 429s, sharing one limiter.

All complete, none loses an artifact, no paid call is made twice, and the shared limiter keeps the server under
its stated concurrency (the server counts the requests it had in flight at once)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import CODE, settings_for, small_scenario

from p2c_notebook.backends import OpenAIBackend
from p2c_notebook.run.limiter import LimitedBackend, PrefixGate, SharedLimiter, limiter_for
from p2c_notebook.run.pipeline import Pipeline

RUNS = 30
ARTIFACTS = 4 + 2 * len(CODE)  # plan, design, logic, config; analysis and code per file
STATED = 8

pytestmark = pytest.mark.slow


def storm() -> list[dict[str, Any]]:
    """429s with Retry-After on analyses, 429s without it (backoff) on code, a 503 asking for a pause on plans."""
    return [
        {"stage": "analysis", "kind": "status", "status": 429, "retry_after": 0.3, "after": 10, "times": 8},
        {"stage": "code", "kind": "status", "status": 429, "after": 20, "times": 6},
        {"stage": "plan", "kind": "status", "status": 503, "retry_after": 0.2, "after": 5, "times": 3},
    ]


def run_room(paper: Path, root: Path, settings: Any, limiter: SharedLimiter) -> list[str]:
    """RUNS pipelines at once, as 30 notebooks would start them; each run's outcome (or its error)."""
    gate = PrefixGate()
    outcomes: list[str] = [""] * RUNS
    barrier = threading.Barrier(RUNS)

    def one(index: int) -> None:
        backend = LimitedBackend(OpenAIBackend(settings), limiter, gate)
        try:
            barrier.wait()
            with Pipeline.start(paper, root / f"seat{index:02d}", settings=settings, backend=backend) as pipeline:
                outcomes[index] = pipeline.run().state
        except Exception as exc:  # noqa: BLE001 - reported by the assertion on outcomes
            outcomes[index] = f"{type(exc).__name__}: {exc}"
        finally:
            backend.close()

    threads = [threading.Thread(target=one, args=(i,), name=f"seat{i}") for i in range(RUNS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    return outcomes


def assert_nothing_lost_or_paid_twice(server: Any, root: Path) -> None:
    answered = [r for r in server.requests if r["fault"] is None]
    assert len(answered) == RUNS * ARTIFACTS  # each artifact of each run paid for exactly once
    for index in range(RUNS):
        repo = root / f"seat{index:02d}" / "repo"
        assert sorted(str(p.relative_to(repo)) for p in repo.rglob("*.py")) == sorted(CODE), index


def test_thirty_runs_share_a_stated_limit_through_a_429_storm(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    # The server takes STATED at once and refuses more: any excess the limiter let through would show as a refusal.
    server = serve(small_scenario(latency=0.1, token_latency=0.0005, capacity=STATED, faults=storm()))
    settings = settings_for(server, max_retries=6, retry_base_delay=0.05, retry_max_delay=0.5, concurrency=STATED)
    limiter = limiter_for(settings, explicit=STATED)

    outcomes = run_room(paper_md, tmp_path, settings, limiter)

    assert outcomes == ["done"] * RUNS
    load = server.load()
    assert load["max_in_flight"] <= STATED and load["over_capacity"] == 0 and limiter.peak <= STATED
    assert limiter.pauses >= 8 + 6 + 3  # every 429 and every 503 with Retry-After paused the whole room
    assert_nothing_lost_or_paid_twice(server, tmp_path)


def test_thirty_runs_ramp_up_to_a_hosted_server_and_back_off_when_it_refuses(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    capacity = 12
    scenario = small_scenario(latency=0.1, token_latency=0.0005, capacity=capacity, capacity_retry_after=0.2)
    scenario["faults"] = storm()
    server = serve(scenario)
    settings = settings_for(server, max_retries=8, retry_base_delay=0.05, retry_max_delay=0.5)
    limiter = limiter_for(settings)  # no concurrency set: a ramp
    assert limiter.adaptive

    outcomes = run_room(paper_md, tmp_path, settings, limiter)

    assert outcomes == ["done"] * RUNS
    assert max(d.limit for d in limiter.decisions) > limiter.decisions[0].limit  # it ramped up...
    assert any(d.why.startswith("rate limited") for d in limiter.decisions)  # ...and backed off
    assert_nothing_lost_or_paid_twice(server, tmp_path)
