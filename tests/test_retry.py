"""The retry policy (backoff, jitter, Retry-After) and retries inside one streamed, continued reply."""

from __future__ import annotations

import random
import ssl
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from conftest import settings_for, small_scenario

from p2c_notebook.backends import ChatRequest, OpenAIBackend
from p2c_notebook.backends.local.backend import MAX_TOKENS, tuned_settings
from p2c_notebook.backends.openai import sse_chunks
from p2c_notebook.backends.retry import IncompleteReply, RetryNotice, RetryPolicy, classify, retry_after
from p2c_notebook.errors import BackendError, ConfigError, ReplyError
from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.settings import Settings, load_settings
from p2c_notebook.testing import ScriptedServer

REPLY = " ".join(f"word{i}" for i in range(60))


def status_error(status: int, headers: dict[str, str] | None = None) -> openai.APIStatusError:
    request = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")
    response = httpx2.Response(status, headers=headers or {}, request=request)
    return openai.APIStatusError(f"HTTP {status}", response=response, body=None)


def test_backoff_is_full_jitter_below_a_doubling_ceiling_capped_at_max_delay() -> None:
    policy = RetryPolicy(retries=6, base_delay=1.0, max_delay=5.0)
    rng = random.Random(7)
    for failed in range(1, 7):
        ceiling = min(5.0, 2.0 ** (failed - 1))
        draws = [policy.delay(failed, None, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in draws)
        assert max(draws) > 0.8 * ceiling and min(draws) < 0.2 * ceiling, "spread over the whole range"


def test_retry_after_replaces_the_drawn_wait_and_is_capped() -> None:
    policy = RetryPolicy(retries=3, base_delay=0.001, max_delay=10.0)
    assert policy.delay(1, 4.0) == 4.0
    assert policy.delay(3, 120.0) == 10.0
    assert policy.attempts == 4


def test_retry_after_reads_seconds_milliseconds_and_http_dates() -> None:
    assert retry_after({"retry-after": "3"}) == 3.0
    assert retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    now = time.time()
    date = format_datetime(datetime.fromtimestamp(now, timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert retry_after({"retry-after": date}, now=now) == pytest.approx(30, abs=1)
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0, "a date in the past: go now"
    assert retry_after({"retry-after": "soon"}) is None
    assert retry_after({}) is None


@pytest.mark.parametrize(("status", "retried"), [(429, True), (500, True), (502, True), (503, True), (504, True),
                                                 (400, False), (401, False), (403, False), (404, False)])  # fmt: skip
def test_only_transient_statuses_are_retried(status: int, retried: bool) -> None:
    assert (classify(status_error(status)) is not None) == retried


def test_notice_says_why_how_long_and_which_attempt() -> None:
    notice = RetryNotice("rate limited (HTTP 429)", 2.14, 2, 5)
    assert notice.describe() == "rate limited (HTTP 429), retrying in 2.1 s (attempt 2/5)"


def test_retry_settings_come_from_the_environment() -> None:
    env = {
        "P2C_MAX_RETRIES": "5",
        "P2C_RETRY_BASE_DELAY": "0.5",
        "P2C_RETRY_MAX_DELAY": "12",
        "P2C_MAX_CONTINUATIONS": "4",
    }
    settings = load_settings(environ=env, file=Path("/nonexistent/config.yaml"))
    assert (settings.max_retries, settings.retry_base_delay, settings.retry_max_delay) == (5, 0.5, 12.0)
    assert settings.max_continuations == 4


def backend_for(server: ScriptedServer, **extra: Any) -> OpenAIBackend:
    values: dict[str, Any] = {"base_url": server.base_url, "api_key": "sk-test", "retry_base_delay": 0.001}
    return OpenAIBackend(Settings.model_validate({**values, **extra}))


def test_a_continuation_cut_off_mid_stream_is_retried_and_the_whole_reply_shown_once() -> None:
    scenario = {
        "responses": [{"stage": "plan", "content": REPLY}],
        "faults": [
            {"stage": "plan", "kind": "length"},
            {"stage": "plan", "kind": "truncate", "after": 1},  # the continuation's first try
        ],
    }
    shown = ""
    notices: list[RetryNotice] = []

    def on_delta(text: str) -> None:
        nonlocal shown
        shown += text

    def on_retry(notice: RetryNotice) -> None:
        nonlocal shown
        notices.append(notice)
        if notice.restart:
            shown = ""

    with ScriptedServer(scenario) as server:
        backend = backend_for(server)
        completion = backend.complete(ChatRequest([{"role": "user", "content": "plan"}], "plan"), on_delta, on_retry)
        assert [(r["continuation"], r["fault"]) for r in server.requests] == [
            (None, "length"),
            (1, "truncate"),
            (1, None),
        ]
        assert server.requests[1]["response_format"] is None
    assert completion.text == REPLY and completion.finish_reason == "stop" and completion.continuations == 1
    assert completion.usage.calls == 2 and completion.max_tokens == backend.max_tokens
    assert [n.restart for n in notices] == [True] and shown == REPLY


def test_a_persistent_failure_stops_after_max_retries_with_the_stage_and_file() -> None:
    scenario = {
        "responses": [{"stage": "code", "content": REPLY}],
        "faults": [{"stage": "code", "kind": "status", "status": 429, "retry_after": 0, "times": None}],
    }
    with ScriptedServer(scenario) as server:
        backend = backend_for(server, max_retries=4)
        with pytest.raises(BackendError, match=r"after 5 attempts \(stage code, file train.py\)"):
            backend.complete(ChatRequest([{"role": "user", "content": "x"}], "code", "train.py"), lambda _: None)
        assert len(server.requests) == 5


def test_a_reply_cut_at_the_limit_every_time_names_the_limit_the_backend_really_used(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    server = serve(small_scenario(faults=[{"stage": "plan", "kind": "length", "times": None}]))
    settings = settings_for(server)  # max_tokens 8192, which the local model's tuning lowers
    local_like = OpenAIBackend(tuned_settings(settings, "gpt-4o-mini", server.base_url))
    pipeline = Pipeline.start(paper_md, tmp_path / "run", settings=settings, backend=local_like)
    with pipeline, pytest.raises(ReplyError) as info:
        pipeline.run()
    local_like.close()
    assert f"max_tokens={MAX_TOKENS})" in str(info.value) and str(settings.max_tokens) not in str(info.value)
    assert [r["max_tokens"] for r in server.requests] == [MAX_TOKENS] * 3


class _Lines:
    """A stand-in for the SDK's streaming response: only what `sse_chunks` reads."""

    def __init__(self, lines: list[str], broken: BaseException | None = None) -> None:
        self.lines, self.broken, self.request = lines, broken, None

    def iter_lines(self) -> Iterator[str]:
        yield from self.lines
        if self.broken is not None:
            raise self.broken


def test_sse_chunks_read_events_the_way_servers_send_them() -> None:
    lines = [
        ": keep-alive comment",
        'data: {"choices": [{"delta": {"content": "a"}}]}',
        "",
        "event: message",
        'data: {"choices": [{"delta":',
        'data:  {"content": "b"}}]}',
        "",
        "data: [DONE]",
        "",
        'data: {"never": "read"}',
        "",
    ]
    chunks = list(sse_chunks(_Lines(lines)))
    assert [c["choices"][0]["delta"]["content"] for c in chunks] == ["a", "b"]


def test_sse_chunks_raise_errors_sent_in_the_stream() -> None:
    with pytest.raises(openai.APIError, match="overloaded"):
        list(sse_chunks(_Lines(['data: {"error": {"message": "overloaded"}}', ""])))
    with pytest.raises(IncompleteReply, match="not JSON"):
        list(sse_chunks(_Lines(["data: {oops", ""])))


class _SdkLines(_Lines):
    __module__ = "httpx2._models"  # where the SDK's responses come from: their transport errors are httpx2's


def test_a_connection_that_breaks_mid_stream_is_an_incomplete_reply() -> None:
    response = _SdkLines(['data: {"choices": []}', ""], broken=httpx2.RemoteProtocolError("peer closed"))
    with pytest.raises(IncompleteReply, match="RemoteProtocolError"):
        list(sse_chunks(response))


def test_backends_share_one_verifying_tls_context_built_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from p2c_notebook.backends.openai import _tls_context, _tls_environment

    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    context = _tls_context(*_tls_environment())
    assert context is _tls_context(*_tls_environment())  # the CA bundle is loaded once per process
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    certifi = pytest.importorskip("certifi")
    monkeypatch.setenv("SSL_CERT_FILE", certifi.where())
    assert _tls_context(*_tls_environment()) is not context  # a changed certificate setting is honoured


def test_an_unreadable_certificate_bundle_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match="Cannot load the TLS certificates .*missing.pem.* unset them"):
        OpenAIBackend(Settings(base_url="http://127.0.0.1:9/v1", model="m"))
