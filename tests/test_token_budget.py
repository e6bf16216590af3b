"""The token-rate budget shared by every call of every run: a sliding window of the tokens sent in the last
minute. The window's arithmetic is pure and takes its times from the test; the limiter runs over HTTP against the
scripted server with a fake clock that the test moves, so what was sent when is decided, not timed."""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import settings_for, small_scenario

from p2c_notebook.backends import ChatRequest, OpenAIBackend
from p2c_notebook.errors import Cancelled
from p2c_notebook.run.limiter import LimitedBackend, SharedLimiter, Ticket, TokenWindow, call_tokens, limiter_for
from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.run.session import add_settings_arguments, settings_from
from p2c_notebook.settings import Settings, load_settings
from p2c_notebook.testing import ScriptedServer

REPLY = "A short reply of a few words."
MAX_TOKENS = 500


class FakeClock:
    """Minutes that pass when the test says so; the limiter is woken to look at the new time."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.limiter: SharedLimiter | None = None

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
        if self.limiter is not None:
            self.limiter.wake()


class RecordingLimiter(SharedLimiter):
    """A limiter that also keeps, per call, when (on its clock) it was sent and what it really used."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.usages: list[tuple[float, int]] = []

    def used(self, ticket: Ticket, tokens: int) -> None:
        assert ticket.sent is not None
        self.usages.append((ticket.sent.at, tokens))
        super().used(ticket, tokens)


def request(number: int) -> ChatRequest:
    messages = [{"role": "system", "content": "You write code."}, {"role": "user", "content": f"Write file {number}."}]
    return ChatRequest(messages, stage="code", file=f"f{number}.py")


def until(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    """Wait for a state of the threads under test (never asserting on how long it took)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the state never came"
        time.sleep(0.005)


def in_threads(backend: LimitedBackend, numbers: list[int]) -> tuple[list[threading.Thread], list[BaseException]]:
    errors: list[BaseException] = []

    def call(number: int) -> None:
        try:
            backend.complete(request(number), lambda text: None)
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(n,)) for n in numbers]
    for thread in threads:
        thread.start()
    return threads, errors


def limited(server: ScriptedServer, budget: int, clock: FakeClock, **extra: Any) -> LimitedBackend:
    limiter = RecordingLimiter(8, tokens_per_minute=budget, clock=clock)
    clock.limiter = limiter
    return LimitedBackend(OpenAIBackend(settings_for(server, max_tokens=MAX_TOKENS, **extra)), limiter)


# -- the window's arithmetic ------------------------------------------------------------------------------------


def test_the_window_counts_only_what_was_sent_in_the_last_minute() -> None:
    window = TokenWindow(1000, 60)
    window.take(400, 0)
    window.take(400, 10)
    assert window.used(59.9) == 800
    assert window.used(60) == 400  # the first left the window exactly a minute after it was sent
    assert window.used(70) == 0


def test_a_call_waits_until_enough_of_the_window_has_passed_for_it() -> None:
    window = TokenWindow(1000, 60)
    window.take(400, 0)
    window.take(400, 10)
    assert window.delay(200, 20) == 0  # 800 + 200 fit
    assert window.delay(300, 20) == 40  # fits once the first 400 leave, at 60
    assert window.delay(700, 20) == 50  # needs both gone, at 70
    assert window.delay(300, 60) == 0


def test_a_call_larger_than_the_budget_goes_when_the_window_is_empty_never_never() -> None:
    window = TokenWindow(1000, 60)
    assert window.delay(5000, 0) == 0  # nothing sent: it goes alone
    window.take(5000, 0)
    assert window.delay(1, 30) == 30  # and nothing goes with it in its minute
    window.take(100, 60)
    assert window.delay(5000, 61) == 59  # the next oversize one waits until the window is empty again
    assert window.delay(5000, 120) == 0


def test_the_real_usage_replaces_the_estimate_in_the_window() -> None:
    window = TokenWindow(1000, 60)
    sent = window.take(900, 0)
    assert window.delay(500, 1) == 59
    TokenWindow.settle(sent, 120)
    assert window.used(1) == 120 and window.delay(500, 1) == 0


def test_a_budget_below_one_token_is_refused() -> None:
    from p2c_notebook.errors import ConfigError

    with pytest.raises(ConfigError, match="at least 1"):
        TokenWindow(0)


# -- the setting ------------------------------------------------------------------------------------------------


def test_the_budget_is_set_by_flag_or_environment_and_none_means_no_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    args = parser.parse_args(["--tokens-per-minute", "30000"])
    assert settings_from(args)["tokens_per_minute"] == 30000
    monkeypatch.setenv("P2C_CONFIG", "/nonexistent")
    monkeypatch.setenv("P2C_TOKENS_PER_MINUTE", "12000")
    settings = load_settings()
    assert settings.tokens_per_minute == 12000
    limiter = limiter_for(settings, explicit=2)
    assert limiter.tokens is not None and limiter.tokens.budget == 12000 and limiter.tokens.seconds == 60
    assert limiter_for(Settings(backend="local")).tokens is None


# -- over HTTP --------------------------------------------------------------------------------------------------


def test_calls_beyond_the_budget_wait_for_the_window_and_one_notice_says_so(serve: Any) -> None:
    server = serve({"model": "*", "responses": [{"stage": "*", "content": REPLY}]})
    clock = FakeClock()
    cost = call_tokens(request(0), MAX_TOKENS)
    backend = limited(server, 2 * cost + cost // 2, clock, stream=False)  # two estimates fit, not three
    # The server reports no usage: each call keeps its estimate, so exactly two go per minute.
    server.add_fault({"stage": "*", "kind": "no_usage", "times": None})
    limiter = backend.limiter
    assert isinstance(limiter, RecordingLimiter)
    heard: list[str] = []
    limiter.listen(heard.append)
    try:
        threads, errors = in_threads(backend, [1, 2, 3, 4, 5])
        until(lambda: len(server.requests) == 2 and limiter.token_waiting == 3 and limiter.in_use == 0)
        until(lambda: bool(heard))  # a wait of over a second is said once, not once per waiting call
        clock.advance(59)
        time.sleep(0.2)  # nothing may move within the minute
        assert len(server.requests) == 2 and limiter.token_waiting == 3
        clock.advance(1)
        until(lambda: len(server.requests) == 4 and limiter.token_waiting == 1 and limiter.in_use == 0)
        clock.advance(60)
        for thread in threads:
            thread.join(timeout=60)
    finally:
        backend.close()
    assert not errors and len(server.requests) == 5
    assert len(heard) == 1 and "--tokens-per-minute" in heard[0] and limiter.notices == heard
    assert limiter.token_waits == 3 and limiter.usages == []


def test_the_usage_the_server_reports_replaces_the_estimate_so_unused_max_tokens_free_the_budget(
    serve: Any,
) -> None:
    server = serve({"model": "*", "responses": [{"stage": "*", "content": REPLY}]})
    clock = FakeClock()
    cost = call_tokens(request(0), MAX_TOKENS)
    backend = limited(server, cost + cost // 2, clock)  # one estimate fits, two do not
    limiter = backend.limiter
    assert isinstance(limiter, RecordingLimiter)
    try:
        threads, errors = in_threads(backend, [1, 2, 3])
        for thread in threads:
            thread.join(timeout=60)  # the clock never moves: only the reported usage lets the others go
    finally:
        backend.close()
    assert not errors and len(server.requests) == 3
    assert [at for at, _ in limiter.usages] == [clock.now] * 3
    assert all(0 < tokens < MAX_TOKENS for _, tokens in limiter.usages)
    assert limiter.tokens is not None and limiter.tokens.used(clock.now) == sum(t for _, t in limiter.usages)


def test_a_call_larger_than_the_whole_budget_is_sent_alone_with_one_notice(serve: Any) -> None:
    server = serve({"model": "*", "responses": [{"stage": "*", "content": REPLY}]})
    server.add_fault({"stage": "*", "kind": "no_usage", "times": None})
    clock = FakeClock()
    backend = limited(server, call_tokens(request(0), MAX_TOKENS) // 2, clock, stream=False)
    limiter = backend.limiter
    try:
        threads, errors = in_threads(backend, [1, 2])
        until(lambda: len(server.requests) == 1 and limiter.token_waiting == 1 and limiter.in_use == 0)
        clock.advance(60)
        until(lambda: len(server.requests) == 2 and limiter.in_use == 0)
        for thread in threads:
            thread.join(timeout=60)
    finally:
        backend.close()
    assert not errors
    oversize = [n for n in limiter.notices if "larger than the whole budget" in n]
    assert len(oversize) == 1


def test_cancelling_ends_a_wait_for_the_budget_without_sending_the_call(serve: Any) -> None:
    server = serve({"model": "*", "responses": [{"stage": "*", "content": REPLY}]})
    server.add_fault({"stage": "*", "kind": "no_usage", "times": None})
    clock = FakeClock()
    cancel = threading.Event()
    backend = limited(server, call_tokens(request(0), MAX_TOKENS), clock, stream=False)
    backend.cancel = cancel
    limiter = backend.limiter
    try:
        threads, errors = in_threads(backend, [1, 2])
        until(lambda: len(server.requests) == 1 and limiter.token_waiting == 1)
        cancel.set()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        backend.close()
    assert len(server.requests) == 1
    assert [type(e) for e in errors] == [Cancelled] and limiter.token_waiting == 0 and limiter.in_use == 0


def test_a_whole_run_never_sends_more_than_the_budget_in_any_minute(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    server = serve(small_scenario())
    settings = settings_for(server, max_tokens=MAX_TOKENS, concurrency=4)
    clock = FakeClock()
    budget = 3000
    limiter = RecordingLimiter(4, tokens_per_minute=budget, clock=clock)
    clock.limiter = limiter
    backend = LimitedBackend(OpenAIBackend(settings), limiter)
    outcome: list[str] = []
    try:
        with Pipeline.start(paper_md, tmp_path / "run", settings=settings, backend=backend) as pipeline:
            runner = threading.Thread(target=lambda: outcome.append(pipeline.run().state))
            runner.start()
            while runner.is_alive():  # half a minute passes whenever every call left is held by the budget
                if limiter.token_waiting and not limiter.in_use:
                    clock.advance(30)
                time.sleep(0.005)
            runner.join()
    finally:
        backend.close()
    assert outcome == ["done"]
    sent = limiter.usages
    assert len(sent) == len(server.requests) >= 8
    assert len({at for at, _ in sent}) > 2  # the budget really spread the run over several minutes
    for _, end in sent:
        in_window = [tokens for at, tokens in sent if end - 60 < at <= end]
        assert sum(in_window) <= budget or len(in_window) == 1
