"""Bounded calls over real HTTP: a whole-call deadline that a trickling or keep-alive-only server cannot hold
open, an idle-read time-out shorter than it, and a cap on a reply's size that keeps a huge reply out of the run
folder and out of later prompts."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import settings_for, small_scenario, subprocess_env

from p2c_notebook.backends import ChatRequest, OpenAIBackend
from p2c_notebook.errors import BackendError, ConfigError, ReplyError
from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.run.store import sha256
from p2c_notebook.testing import ScriptedServer

DEADLINE = 1.0
IDLE = 0.4
SLACK = 1.0  # start-up, retry waits and thread scheduling on a loaded machine
REPLY = "A reply long enough to come in many small chunks. " * 6


def backend(server: ScriptedServer, **extra: Any) -> OpenAIBackend:
    values: dict[str, Any] = {
        "timeout": DEADLINE,
        "read_timeout": IDLE,
        "max_retries": 1,
        "retry_base_delay": 0.001,
        **extra,
    }
    return OpenAIBackend(settings_for(server, **values))


def ask(b: OpenAIBackend, stage: str = "plan", file: str = "") -> str:
    return b.complete(ChatRequest([{"role": "user", "content": "go"}], stage, file), lambda _: None).text


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "no-stream"])
@pytest.mark.parametrize("kind", ["trickle", "keepalive"])
def test_a_server_that_never_finishes_ends_at_the_deadline_after_the_retries(kind: str, stream: bool) -> None:
    """Each byte comes well within the idle time-out, so only the whole-call deadline can end the call."""
    scenario = {
        "responses": [{"stage": "plan", "content": REPLY}],
        "faults": [{"stage": "plan", "kind": kind, "sleep": 60, "interval": 0.05, "times": None}],
    }
    with ScriptedServer(scenario) as server:
        b = backend(server, stream=stream)
        began = time.monotonic()
        with pytest.raises(BackendError) as info:
            ask(b)
        took = time.monotonic() - began
        b.close()
        assert len(server.requests) == 2, "the deadline is retried like any time-out"
    assert 2 * DEADLINE <= took < 2 * DEADLINE + SLACK
    message = str(info.value)
    assert "\n" not in message and info.value.exit_code == 4
    assert "within the 1 s time-out after 2 attempts" in message and "--timeout" in message


def test_a_slow_but_steady_reply_within_the_deadline_is_complete() -> None:
    """The idle time-out is per silence, not per reply: a stream longer than it but inside the deadline is
    read whole."""
    pieces = len(REPLY.split()) // 3 + 1
    scenario = {
        "responses": [{"stage": "plan", "content": REPLY}],
        "faults": [{"stage": "plan", "kind": "trickle", "interval": 0.04}],
    }
    with ScriptedServer(scenario) as server:
        b = backend(server, timeout=5.0)
        began = time.monotonic()
        assert ask(b) == REPLY
        assert time.monotonic() - began > IDLE and pieces * 0.04 > IDLE
        b.close()
        assert len(server.requests) == 1


def test_a_deadline_met_once_is_retried_and_the_retry_is_kept() -> None:
    scenario = {
        "responses": [{"stage": "plan", "content": REPLY}],
        "faults": [{"stage": "plan", "kind": "keepalive", "sleep": 60, "interval": 0.05}],
    }
    notices: list[str] = []
    with ScriptedServer(scenario) as server:
        b = backend(server)
        request = ChatRequest([{"role": "user", "content": "go"}], "plan")
        assert b.complete(request, lambda _: None, lambda n: notices.append(n.describe())).text == REPLY
        b.close()
        assert [r["fault"] for r in server.requests] == ["keepalive", None]
    assert notices == ["the reply took longer than the 1 s time-out, retrying in 0.00 s (attempt 2/2)"]


def test_a_silent_server_times_out_after_the_idle_time_not_the_deadline() -> None:
    scenario = {
        "responses": [{"stage": "plan", "content": REPLY}],
        "faults": [{"stage": "plan", "kind": "timeout", "sleep": 30, "times": None}],
    }
    with ScriptedServer(scenario) as server:
        b = backend(server, timeout=30.0)
        began = time.monotonic()
        with pytest.raises(BackendError) as info:
            ask(b)
        took = time.monotonic() - began
        b.close()
    assert 2 * IDLE <= took < 2 * IDLE + SLACK
    assert "nothing came for 0.4 s" in str(info.value) and "--read-timeout" in str(info.value)


def test_a_reply_past_the_cap_is_stopped_mid_stream_with_a_one_line_error() -> None:
    scenario = {"faults": [{"stage": "code", "file": "*", "kind": "huge", "chars": 10_000_000}]}
    shown: list[str] = []
    with ScriptedServer(scenario) as server:
        b = backend(server, max_reply_chars=50_000, timeout=30.0, read_timeout=10.0)
        with pytest.raises(ReplyError) as info:
            b.complete(ChatRequest([{"role": "user", "content": "go"}], "code", "net.py"), shown.append)
        b.close()
        assert len(server.requests) == 1, "a reply too long is not asked for again"
    message = str(info.value)
    assert "\n" not in message and info.value.exit_code == 5
    assert "passed 50,000 characters" in message and "--max-reply-chars (P2C_MAX_REPLY_CHARS)" in message
    assert "file net.py" in message
    assert sum(map(len, shown)) <= 50_000, "nothing past the cap is passed on"


HUGE = {"kind": "huge", "chars": 10_000_000}
TRICKLE = {"kind": "trickle", "sleep": 60, "interval": 0.05, "times": None}


@pytest.mark.parametrize(
    "fault, error, words",
    [(HUGE, ReplyError, "passed 100,000 characters"), (TRICKLE, BackendError, "within the 1 s time-out")],
    ids=["huge", "trickle"],
)
def test_a_bounded_call_saves_nothing_of_its_reply_and_the_resume_pays_for_nothing_twice(
    fault: dict[str, Any], error: type[Exception], words: str, tmp_path: Path
) -> None:
    paper = tmp_path / "toy.md"
    paper.write_text("# Toy\n\n## Abstract\n\nA linear model fitted with SGD on toy data.\n", encoding="utf-8")
    run = tmp_path / "run"
    with ScriptedServer(small_scenario()) as server:
        server.add_fault({"stage": "code", "file": "models/net.py", **fault})
        settings = settings_for(
            server, max_reply_chars=100_000, timeout=DEADLINE, max_retries=1, retry_base_delay=0.001
        )
        with Pipeline.start(paper, run, settings=settings) as pipeline, pytest.raises(error) as info:
            pipeline.run()
        assert words in str(info.value) and "models/net.py" in str(info.value)
        saved = json.loads((run / "manifest.json").read_text())["artifacts"]
        assert "code/models/net.py" not in saved
        for path in run.rglob("*"):
            if path.is_file():
                assert "x" * 200 not in path.read_text("utf-8", "replace"), f"part of the huge reply is in {path}"
        before = {name: (entry["sha256"], entry.get("usage")) for name, entry in saved.items()}

        server.reset()
        with Pipeline.open(run, settings=settings) as again:
            assert again.run().state == "done"
        after = json.loads((run / "manifest.json").read_text())["artifacts"]
        asked = Counter(f"{r['stage']}/{r['file']}" if r["file"] else r["stage"] for r in server.requests)
        assert "code/models/net.py" in asked and set(asked) <= set(after) - set(before)
        assert all(n == 1 for n in asked.values()), "only what was missing is asked for, once"
        assert all("x" * 200 not in str(r["messages"]) for r in server.requests), "re-sent in a later prompt"
    for name, (digest, usage) in before.items():
        assert (after[name]["sha256"], after[name].get("usage")) == (digest, usage), name
        assert sha256((run / after[name]["path"]).read_bytes()) == digest


@pytest.mark.slow
def test_the_cli_exits_4_with_one_line_when_every_attempt_trickles(tmp_path: Path) -> None:
    paper = tmp_path / "toy.md"
    paper.write_text("# Toy\n\n## Abstract\n\nA linear model fitted with SGD on toy data.\n", encoding="utf-8")
    scenario = small_scenario(
        faults=[{"stage": "plan", "kind": "trickle", "sleep": 60, "interval": 0.05, "times": None}]
    )
    with ScriptedServer(scenario) as server:
        env = subprocess_env(
            server, P2C_TIMEOUT="1", P2C_READ_TIMEOUT="0.5", P2C_MAX_RETRIES="1", P2C_RETRY_BASE_DELAY="0.001"
        )
        cmd = [sys.executable, "-m", "p2c_notebook.cli", "run", str(paper), "--out", str(tmp_path / "run")]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        assert len(server.requests) == 2
    assert done.returncode == 4, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "did not finish its reply within the 1 s time-out after 2 attempts" in errors[0]
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "fault, problem",
    [
        ({"kind": "huge"}, "kind: huge needs chars"),
        ({"kind": "trickle", "interval": 0}, "interval"),
        ({"kind": "keepalive", "chars": 0}, "chars"),
    ],
)
def test_the_scenario_validator_checks_the_new_fault_fields(fault: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        ScriptedServer({"faults": [{"stage": "plan", **fault}]})


def test_settings_take_the_read_timeout_and_reply_cap_from_the_environment() -> None:
    from p2c_notebook.settings import load_settings

    settings = load_settings(environ={"P2C_READ_TIMEOUT": "7.5", "P2C_MAX_REPLY_CHARS": "1234"}, file=Path("/none"))
    assert (settings.read_timeout, settings.max_reply_chars, settings.timeout) == (7.5, 1234, 600.0)
    with pytest.raises(ConfigError, match="max_reply_chars"):
        load_settings({"max_reply_chars": 0}, environ={}, file=Path("/none"))
