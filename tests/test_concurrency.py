"""Concurrency that fits the server, over HTTP against the scripted server: fixed when asked, a llama.cpp server's
slots, a ramp for hosted / vLLM servers that halves on 429 or growing latency, and the cache-aware fan-out.

Assertions are on the limiter's decisions and on what the server counted (requests in flight at once, cached
prefixes), never on wall-clock durations."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import CODE, LOGIC, settings_for, small_scenario

from p2c_notebook.backends import ChatRequest, OpenAIBackend
from p2c_notebook.backends.retry import RetryNotice
from p2c_notebook.run import limiter as limiting
from p2c_notebook.run.limiter import LimitedBackend, PrefixGate, SharedLimiter, limiter_for
from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.testing import ScriptedServer

REPLY = "A short reply of a few words that streams in several chunks."
PREFIX = "The paper, as every call of this run sends it first. " * 200  # ~10k characters


def scenario(**extra: Any) -> dict[str, Any]:
    return {"model": "*", "responses": [{"stage": "*", "content": REPLY}], **extra}


def request(number: int, prefix: str = "") -> ChatRequest:
    messages = [{"role": "system", "content": "You write code."}]
    if prefix:
        messages.append({"role": "user", "content": prefix})
    messages.append({"role": "user", "content": f"Write file number {number}."})
    return ChatRequest(messages, stage="code", file=f"f{number}.py")


def call_all(backend: Any, requests: list[ChatRequest], threads: int) -> list[str]:
    """Send `requests` from `threads` threads that start together; the replies in order."""
    replies: list[str] = [""] * len(requests)
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)
    lock = threading.Lock()
    todo = list(range(len(requests)))

    def worker() -> None:
        barrier.wait()
        while True:
            with lock:
                if not todo:
                    return
                index = todo.pop(0)
            try:
                replies[index] = backend.complete(requests[index], lambda text: None).text
            except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
                errors.append(exc)

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(timeout=120)
    if errors:
        raise errors[0]
    return replies


def fast_retries(server: ScriptedServer, **extra: Any) -> Any:
    return settings_for(server, max_retries=8, retry_base_delay=0.05, retry_max_delay=0.3, **extra)


# -- the 429 flag ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "flagged"),
    [
        ({"kind": "status", "status": 429}, True),
        ({"kind": "status", "status": 503, "retry_after": 0.05}, True),
        ({"kind": "status", "status": 500}, False),
        ({"kind": "reset"}, False),
    ],
)
def test_a_retry_notice_says_rate_limited_from_the_status_and_retry_after_not_from_its_words(
    serve: Any, fault: dict[str, Any], flagged: bool
) -> None:
    server = serve(scenario(faults=[{"stage": "*", **fault}]))
    notices: list[RetryNotice] = []
    backend = OpenAIBackend(fast_retries(server))
    try:
        assert backend.complete(request(1), lambda text: None, notices.append).text == REPLY
    finally:
        backend.close()
    assert [n.rate_limited for n in notices] == [flagged]


# -- choosing the limit ----------------------------------------------------------------------------------------


def test_a_concurrency_the_user_sets_is_a_fixed_limit(serve: Any) -> None:
    server = serve(scenario(slots=2))
    assert limiter_for(settings_for(server), explicit=5).limit == 5
    chosen = limiter_for(settings_for(server, concurrency=3))
    assert (chosen.limit, chosen.adaptive) == (3, False)


def test_a_llamacpp_server_gets_as_many_calls_as_it_has_slots(serve: Any) -> None:
    server = serve(scenario(slots=3, latency=0.2))
    limiter = limiter_for(settings_for(server))
    assert (limiter.limit, limiter.adaptive) == (3, False)
    backend = LimitedBackend(OpenAIBackend(settings_for(server)), limiter)

    assert call_all(backend, [request(i) for i in range(9)], threads=9) == [REPLY] * 9

    assert server.load()["max_in_flight"] <= 3 and limiter.peak == 3
    assert [d.limit for d in limiter.decisions] == [3]


def test_the_embedded_model_gets_one_call_at_a_time_and_a_hosted_api_a_ramp() -> None:
    from p2c_notebook.settings import Settings

    assert limiter_for(Settings(backend="local")).limit == 1
    hosted = limiter_for(Settings(api_key="sk-test"))  # api.openai.com: no probe, a ramp
    assert hosted.adaptive and hosted.limit == limiting.START and hosted.ceiling == limiting.CEILING


def test_a_hosted_server_is_ramped_up_until_it_says_429_and_the_limit_then_halves(serve: Any) -> None:
    server = serve(scenario(latency=0.15, capacity=6, capacity_retry_after=0.1))
    limiter = limiter_for(fast_retries(server))
    assert limiter.adaptive and limiter.limit == limiting.START
    backend = LimitedBackend(OpenAIBackend(fast_retries(server)), limiter)

    assert call_all(backend, [request(i) for i in range(60)], threads=16) == [REPLY] * 60

    load = server.load()
    assert load["over_capacity"] >= 1 and load["max_in_flight"] <= 6
    limits = [d.limit for d in limiter.decisions]
    assert max(limits) > 6  # it went past what the server takes...
    halvings = [(before.limit, after) for before, after in zip(limiter.decisions, limiter.decisions[1:], strict=False)]
    rate_limited = [(b, a.limit) for b, a in halvings if a.why.startswith("rate limited")]
    assert rate_limited and all(after == max(1, before // 2) for before, after in rate_limited)  # ...and halved
    assert limiter.pauses >= 1
    answered = [r for r in server.requests if r["fault"] is None]
    assert len(answered) == 60  # every refused call was sent again, none paid twice


def test_growing_first_token_latency_shrinks_the_limit_without_any_429(serve: Any) -> None:
    # Each request already in flight adds 0.2 s to a request's first token: a server that queues.
    server = serve(scenario(latency=0.05, load_latency=0.2))
    limiter = limiter_for(settings_for(server))
    backend = LimitedBackend(OpenAIBackend(settings_for(server)), limiter)

    assert call_all(backend, [request(i) for i in range(40)], threads=16) == [REPLY] * 40

    slower = [d for d in limiter.decisions if d.why.startswith("first token took")]
    assert slower and limiter.pauses == 0
    assert all(r["fault"] is None for r in server.requests)
    assert limiter.limit < max(d.limit for d in limiter.decisions)


def test_a_fixed_limiter_never_changes_whatever_the_server_says(serve: Any) -> None:
    server = serve(scenario(latency=0.05, capacity=2, capacity_retry_after=0.05))
    limiter = SharedLimiter(3)
    backend = LimitedBackend(OpenAIBackend(fast_retries(server)), limiter)
    call_all(backend, [request(i) for i in range(12)], threads=6)
    assert [d.limit for d in limiter.decisions] == [3] and limiter.limit == 3


# -- the cache-aware fan-out -------------------------------------------------------------------------------------


def cached_tokens_of(server: ScriptedServer, backend: Any) -> list[int]:
    """Send four calls sharing a long prefix at once; the cached tokens the server counted for each, in arrival
    order (usage is read back from the backend's completions)."""
    got: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def one(number: int) -> None:
        barrier.wait()
        completion = backend.complete(request(number, PREFIX), lambda text: None)
        with lock:
            got.append(completion.usage.cached_tokens)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return sorted(got)


def test_calls_sharing_a_long_prefix_go_after_the_first_ones_first_token_and_find_it_cached(serve: Any) -> None:
    server = serve(scenario(latency=0.3))
    gate = PrefixGate()
    backend = LimitedBackend(OpenAIBackend(settings_for(server)), SharedLimiter(4), gate)

    cached = cached_tokens_of(server, backend)

    assert cached[0] == 0 and all(c > 2000 for c in cached[1:])  # the prefix is ~2.5k tokens
    assert gate.held == 3
    first, *rest = sorted(server.requests, key=lambda r: r["timestamp"])
    assert all(r["in_flight"] <= 3 for r in rest) and first["in_flight"] == 1


def test_without_the_fan_out_calls_sent_at_once_find_nothing_cached(serve: Any) -> None:
    server = serve(scenario(latency=1.0))  # long enough for all four to arrive before the first token
    backend = LimitedBackend(OpenAIBackend(settings_for(server)), SharedLimiter(4), gate=None)
    assert cached_tokens_of(server, backend) == [0, 0, 0, 0]


def test_short_shared_prefixes_never_wait() -> None:
    gate = PrefixGate(min_chars=4096)
    first = gate.enter([{"role": "user", "content": "x" * 1000 + "a"}])
    second = gate.enter([{"role": "user", "content": "x" * 1000 + "b"}])  # would block for ever if it waited
    assert gate.held == 0
    gate.leave(first)
    gate.leave(second)


# -- a whole run ---------------------------------------------------------------------------------------------------


def test_a_run_against_a_llamacpp_server_never_sends_more_calls_than_its_slots(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    server = serve(small_scenario(latency=0.1, slots=2))
    with Pipeline.start(paper_md, tmp_path / "run", settings=settings_for(server)) as pipeline:
        assert pipeline.run().state == "done"
        limiter = pipeline._limited().limiter
    assert limiter.limit == 2 and not limiter.adaptive
    assert server.load()["max_in_flight"] <= 2 and limiter.peak == 2


def test_a_call_waits_only_for_the_calls_it_found_in_flight_never_for_a_second_wave() -> None:
    gate = PrefixGate(min_chars=4096)
    paper = "p" * 10_000
    first = gate.enter([{"role": "user", "content": paper + "A"}])
    # B and C share the paper with A, and 6,000 more characters with each other.
    prompts = {name: [{"role": "user", "content": paper + "x" * 6000 + name}] for name in "BC"}
    entered: dict[str, int] = {}
    threads = [threading.Thread(target=lambda n=n: entered.update({n: gate.enter(prompts[n])})) for n in "BC"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=0.3)
    assert entered == {}  # both wait for A's first token

    gate.first_token(first)
    for thread in threads:
        thread.join(timeout=10)

    assert set(entered) == {"B", "C"}  # neither waited for the other, though B and C share more than with A
    assert gate.held == 2


def test_a_call_on_the_critical_path_never_waits_at_the_gate_and_the_calls_with_slack_wait_for_it() -> None:
    gate = PrefixGate(min_chars=4096)
    shared = "p" * 10_000
    lead = gate.enter([{"role": "user", "content": shared + "A"}])
    with limiting.urgent():  # would block for ever if it waited: nobody sends A's first token
        critical = gate.enter([{"role": "user", "content": shared + "B"}])
    entered: list[int] = []
    follower = threading.Thread(target=lambda: entered.append(gate.enter([{"role": "user", "content": shared + "C"}])))
    follower.start()
    follower.join(timeout=0.3)
    assert entered == [] and gate.hurried == 1 and gate.held == 1  # C, with slack, waits for both A and B

    gate.first_token(lead)
    gate.first_token(critical)
    follower.join(timeout=10)
    assert len(entered) == 1


def two_chain_scenario(latency: float) -> dict[str, Any]:
    """data.py and models/net.py import nothing and main.py imports both: both analyses of the leaf files are on
    the longest chain (analysis, code, main's code); main.py's analysis has a step of slack."""
    files: list[dict[str, Any]] = json.loads(json.dumps(LOGIC["files"]))
    logic = {**LOGIC, "files": [{**f, "depends_on": []} if f["path"] == "models/net.py" else f for f in files]}
    scripted = small_scenario(logic=logic, latency=latency)
    for response in scripted["responses"]:
        if response["stage"] == "code" and response.get("file") == "models/net.py":
            response["content"] = (
                "```python\nclass Net:\n    def forward(self, x):\n        return [2 * v for v in x]\n```"
            )
    return scripted


def test_the_fan_out_holds_only_calls_with_slack_never_one_on_the_critical_path(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    server = serve(two_chain_scenario(latency=0.4))
    settings = settings_for(server, concurrency=8)
    gate = PrefixGate(min_chars=200)  # the toy design is short: a real one is past the default 4,096 characters
    backend = LimitedBackend(OpenAIBackend(settings), SharedLimiter(8), gate)
    with Pipeline.start(paper_md, tmp_path / "run", settings=settings, backend=backend) as pipeline:
        assert pipeline.run().state == "done"
        cached = {f: pipeline.store.entry(f"analysis/{f}").usage.cached_tokens for f in CODE}  # type: ignore[union-attr]
    backend.close()

    # Both analyses on the longest chain went at once (one of them would have waited before: `hurried`), so
    # neither found more than the planning's prefix cached; main.py's waited for their first token and found the
    # design context cached too.
    assert gate.hurried >= 1
    assert max(cached["data.py"], cached["models/net.py"]) < cached["main.py"]
    assert len([r for r in server.requests if r["stage"] == "analysis"]) == 3


def test_only_steps_with_slack_may_wait_and_a_chain_never_waits_more_often_than_its_slack() -> None:
    from p2c_notebook.run.pipeline import _patient_steps

    # a -> b -> c -> d is the longest chain; x feeds d with two steps of slack, y -> z feeds it with one.
    deps = {"b": ["a"], "c": ["b"], "d": ["c", "x", "z"], "z": ["y"]}
    assert _patient_steps(["a", "b", "c", "d", "x", "y", "z"], deps) == {"x", "y"}  # z's slack went to y's wait
    planning = {"design": ["plan"], "logic": ["design"], "config": ["plan"]}
    assert _patient_steps(["plan", "design", "logic", "config"], planning) == {"config"}


def test_a_call_with_slack_that_reaches_the_gate_first_still_waits_for_the_urgent_one_ready_with_it() -> None:
    gate = PrefixGate(min_chars=4096, grace=2.0)
    shared = "p" * 10_000
    entered: list[int] = []

    def patient() -> None:
        with limiting.urgent(False):
            entered.append(gate.enter([{"role": "user", "content": shared + "slack"}]))

    follower = threading.Thread(target=patient)
    follower.start()  # at the gate first, as a thread started first may be
    with limiting.urgent():
        critical = gate.enter([{"role": "user", "content": shared + "critical"}])
    follower.join(timeout=3.0)
    assert entered == [] and gate.held == 1 and gate.hurried == 0  # it waits for the urgent call's first token

    gate.first_token(critical)
    follower.join(timeout=10)
    assert len(entered) == 1
