"""The fault matrix: every stage meets every fault over real HTTP (openai client -> scripted server on 127.0.0.1).

Each case checks the outcome (recovered by a retry, a re-ask or a continuation, or a clear error naming the
stage and file and how to fix it), that what was shown while streaming is exactly the reply that was kept, that
every saved artifact matches its manifest hash, and that a rerun without the fault makes only the missing calls
and ends with the same repository as a run that met no fault. The table of outcomes prints in the summary.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import API_KEY, FAULT_MATRIX, settings_for, small_scenario

from p2c_notebook.errors import BackendError, P2CError, ReplyError
from p2c_notebook.run.events import Event, Notice, TokenDelta
from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.run.store import sha256
from p2c_notebook.testing import ScriptedServer

FILE = "models/net.py"  # analysis and coding faults hit this file: it has a dependency and a dependent
STAGES: dict[str, tuple[str, str]] = {  # artifact: (X-P2C-Stage, X-P2C-File)
    "plan": ("plan", ""),
    "design": ("design", ""),
    "logic": ("logic", ""),
    "config": ("config", ""),
    f"analysis/{FILE}": ("analysis", FILE),
    f"code/{FILE}": ("code", FILE),
}
SCHEMA_INVALID = {  # a well-formed reply that is not what the stage asked for
    "plan": "Sure.",
    "design": json.dumps({"file_list": "main.py"}),
    "logic": json.dumps({"files": [{"path": 3}]}),
    "config": "```yaml\n- lr\n- epochs\n```",
    "analysis": "OK.",
    "code": "```python\ndef forward(:\n```",
}
RETRIES = 2  # attempts = 3
MAX_TOKENS = 512
CLIENT_TIMEOUT = 1.0


@dataclass(frozen=True)
class Case:
    """A fault and what must come of it: `outcome` is recovered-by (retried / re-asked / continued /
    completed) or "error", with `error` the exception and `fix` words its message must hold."""

    name: str
    fault: dict[str, Any]
    outcome: str
    error: type[P2CError] | None = None
    fix: tuple[str, ...] = ()
    calls: int | None = None  # requests for the faulted artifact in the faulted run
    notice: str = ""  # words a retry notice must hold
    by_stage: dict[str, str] = field(default_factory=dict)  # per-stage fault content


CASES = [
    Case("HTTP 429 with Retry-After", {"kind": "status", "status": 429, "retry_after": 0.2}, "retried", calls=2,
         notice="rate limited (HTTP 429), retrying in 0.2 s (attempt 2/3)"),
    Case("HTTP 429 without Retry-After", {"kind": "status", "status": 429}, "retried", calls=2,
         notice="rate limited (HTTP 429), retrying in 0.00 s (attempt 2/3)"),
    Case("HTTP 500", {"kind": "status", "status": 500}, "retried", calls=2, notice="HTTP 500"),
    Case("HTTP 502", {"kind": "status", "status": 502}, "retried", calls=2, notice="HTTP 502"),
    Case("HTTP 503", {"kind": "status", "status": 503}, "retried", calls=2, notice="HTTP 503"),
    Case("HTTP 503 on every attempt", {"kind": "status", "status": 503, "times": None}, "error", BackendError,
         ("HTTP 503 after 3 attempts", "Rerun"), calls=3),
    Case("connection reset", {"kind": "reset"}, "retried", calls=2, notice="the connection failed"),
    Case("read time-out", {"kind": "timeout", "sleep": 5 * CLIENT_TIMEOUT}, "retried", calls=2,
         notice="did not answer in time"),
    Case("stream cut off mid-way", {"kind": "truncate"}, "retried", calls=2, notice="the reply stream was cut off"),
    Case("finish_reason=length", {"kind": "length"}, "continued", calls=2),
    Case("finish_reason=length every time", {"kind": "length", "times": None}, "error", ReplyError,
         (f"max_tokens={MAX_TOKENS}", "after 2 continuation", "--max-tokens"), calls=3),
    Case("empty content", {"kind": "empty"}, "re-asked", calls=2),
    Case("malformed JSON", {"kind": "malformed"}, "re-asked", calls=2),
    Case("schema-invalid reply", {"kind": "malformed"}, "re-asked", calls=2, by_stage=SCHEMA_INVALID),
    Case("unusable reply twice", {"kind": "malformed", "times": None}, "error", ReplyError,
         ("unusable twice", "--model"), calls=2),
    Case("missing usage", {"kind": "no_usage"}, "completed", calls=1),
    Case("HTML error page (HTTP 502)", {"kind": "html"}, "retried", calls=2, notice="HTTP 502 (an HTML error page)"),
    Case("HTML page instead of JSON (HTTP 200)", {"kind": "html", "status": 200}, "error", BackendError,
         ("web page", "--base-url"), calls=1),
    Case("model name rejected", {"kind": "reject_model"}, "error", BackendError, ("--model", "does not know"),
         calls=1),
]  # fmt: skip


def hashes(run: Path) -> dict[str, str]:
    """Every artifact in the manifest, after checking that the file on disk still has the recorded hash."""
    artifacts = json.loads((run / "manifest.json").read_text())["artifacts"]
    for name, entry in artifacts.items():
        assert sha256((run / entry["path"]).read_bytes()) == entry["sha256"], f"{name} changed on disk"
    return {name: entry["sha256"] for name, entry in artifacts.items()}


def artifact_of(request: Any) -> str:
    stage, file = request["stage"], request["file"]
    return f"{stage}/{file}" if file else stage


def shown_text(events: list[Event], artifact: str) -> str:
    """What a viewer of the stream shows at the end: deltas appended, a restart clearing what came before."""
    text = ""
    for event in events:
        if isinstance(event, TokenDelta) and event.artifact == artifact:
            text = ("" if event.restart else text) + event.text
    return text


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The artifacts of a run that meets no fault: every case must end with exactly these."""
    root = tmp_path_factory.mktemp("baseline")
    paper = root / "toy.md"
    paper.write_text(PAPER, encoding="utf-8")
    with ScriptedServer(small_scenario()) as server, Pipeline.start(paper, root / "run", settings=fast(server)) as p:
        assert p.run().state == "done"
    return hashes(root / "run")


PAPER = (
    "# Toy Linear Models\n\n## Abstract\n\nWe fit a linear model with SGD.\n\n"
    "## 1 Method\n\nMinimise $$L = (y - wx)^2$$ with learning rate 0.1 for 3 epochs.\n"
)


def fast(server: ScriptedServer) -> Any:
    return settings_for(
        server,
        max_retries=RETRIES,
        retry_base_delay=0.001,
        retry_max_delay=0.5,
        timeout=CLIENT_TIMEOUT,
        max_tokens=MAX_TOKENS,
    )


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@pytest.mark.parametrize("artifact", list(STAGES))
def test_fault_matrix(
    case: Case,
    artifact: str,
    serve: Any,
    tmp_path: Path,
    baseline: dict[str, str],
    request: pytest.FixtureRequest,
) -> None:
    table = request.config.stash.setdefault(FAULT_MATRIX, {})
    table[(case.name, artifact)] = "FAIL"
    stage, file = STAGES[artifact]
    server = serve(small_scenario())
    fault = {"stage": stage, "file": file or "*", **case.fault}
    if case.by_stage:
        fault["content"] = case.by_stage[stage]
    server.add_fault(fault)
    paper = tmp_path / "toy.md"
    paper.write_text(PAPER, encoding="utf-8")
    run = tmp_path / "run"
    events: list[Event] = []

    pipeline = Pipeline.start(paper, run, settings=fast(server), sinks=(events.append,))
    with pipeline:
        if case.error is None:
            assert pipeline.run().state == "done"
        else:
            with pytest.raises(case.error) as info:
                pipeline.run()
            message = str(info.value)
            assert stage in message and file in message, f"the error must name the stage and file: {message}"
            for words in case.fix:
                assert words in message, f"{words!r} missing from: {message}"
            assert artifact not in hashes(run)
    faulted = [r for r in server.requests if artifact_of(r) == artifact]
    assert len(faulted) == case.calls, [r["fault"] for r in faulted]
    assert all(v == 1 for k, v in Counter(map(artifact_of, server.requests)).items() if k != artifact)
    warnings = [e.message for e in events if isinstance(e, Notice) and e.level == "warning" and e.artifact == artifact]
    if case.outcome == "retried":
        assert any(case.notice in w and stage in w and file in w for w in warnings), warnings
    if case.outcome == "re-asked":
        assert [r["attempt"] for r in faulted] == [1, 2]
        assert any("asking the model once more" in w for w in warnings), warnings
    if case.outcome == "continued":
        assert [r["continuation"] for r in faulted] == [None, 1]
        assert faulted[1]["messages"][-2]["role"] == "assistant"
    if case.outcome == "completed":
        entry = json.loads((run / "manifest.json").read_text())["artifacts"][artifact]
        assert entry["usage"]["estimated"] is True and entry["usage"]["completion_tokens"] > 0
    if case.error is None:  # the stream as shown ends as exactly the reply that was kept
        assert hashes(run) == baseline
        assert shown_text(events, artifact) == expected_reply(server, artifact)

    saved = hashes(run)
    server.reset()  # the fault is gone and the request log empty: the rerun resumes
    with Pipeline.open(run, settings=fast(server)) as again:
        assert again.run().state == "done"
    redone = Counter(map(artifact_of, server.requests))
    copied = {"paper", "code/config.yaml"}  # never asked for: the paper is read, repo/config.yaml copied
    assert set(redone) == set(baseline) - set(saved) - copied, "only what was missing is asked for"
    assert all(n == 1 for n in redone.values())
    after = hashes(run)
    assert after == baseline
    assert {k: after[k] for k in saved} == saved, "artifacts saved before the fault are untouched"
    table[(case.name, artifact)] = case.outcome if case.error is None else f"error ({case.error.__name__})"


def expected_reply(server: ScriptedServer, artifact: str) -> str:
    stage, file = STAGES[artifact]
    for rule in server.scenario.responses:
        if rule.matches(stage, file, 1):
            return rule.text
    raise AssertionError(f"no scripted reply for {artifact}")


@pytest.mark.slow
def test_status_after_a_failed_cli_run_lists_what_is_done_and_the_command_that_resumes(
    tmp_path: Path,
) -> None:
    scenario = small_scenario()
    broken = {**scenario, "faults": [{"stage": "code", "file": FILE, "kind": "status", "status": 503, "times": None}]}
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken), encoding="utf-8")
    (tmp_path / "fixed.yaml").write_text(yaml.safe_dump(scenario), encoding="utf-8")
    paper = tmp_path / "toy.md"
    paper.write_text(PAPER, encoding="utf-8")
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "P2C_"))}
    env.update(
        {"P2C_CONFIG": "/nonexistent", "P2C_API_KEY": API_KEY, "P2C_RETRY_BASE_DELAY": "0.001", "P2C_MAX_RETRIES": "1"}
    )

    def p2c(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "p2c_notebook.cli", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)

    failed = p2c("run", str(paper), "--out", str(run), "--backend", f"scripted:{tmp_path / 'broken.yaml'}")
    assert failed.returncode == BackendError.exit_code, failed.stderr
    assert "stage code, file models/net.py" in failed.stderr and "HTTP 503 after 2 attempts" in failed.stderr
    status = p2c("status", str(run))
    assert status.returncode == 0, status.stderr
    lines = {line.split()[0]: line.split()[1] for line in status.stdout.splitlines() if line.strip() and " " in line}
    assert lines["code/data.py"] == "generated" and lines["analysis/models/net.py"] == "generated"
    assert lines["code/models/net.py"] == "missing" and lines["code/main.py"] == "missing"
    assert "Done: 9 of 12 artifacts" in status.stdout  # the 12th: repo/config.yaml, copied at the end
    assert "HTTP 503" in status.stdout, "status repeats why the last run stopped"
    # The next command asks the same server the failed run asked (never with its key).
    again = f"p2c run {run} --backend scripted:{tmp_path / 'broken.yaml'}"
    assert f"Next: `{again}` generates code/models/net.py and 2 more" in status.stdout
    assert API_KEY not in status.stdout
    resumed = p2c("run", str(run), "--backend", f"scripted:{tmp_path / 'fixed.yaml'}")
    assert resumed.returncode == 0, resumed.stderr
    assert "saved code/models/net.py" in resumed.stderr and "saved code/data.py" not in resumed.stderr
    assert "Nothing left to do" in p2c("status", str(run)).stdout
