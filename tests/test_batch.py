"""`p2c batch`: many papers against ONE scripted server, one shared concurrency limit, resumable, one summary."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from conftest import CODE, settings_for, small_scenario, subprocess_env

from p2c_notebook import cli
from p2c_notebook.run.batch import Batch, BatchOptions, BatchStarted, PaperFinished, read_spec, run_batch
from p2c_notebook.run.events import Event
from p2c_notebook.testing import ScriptedServer

ARTIFACTS = 4 + 2 * len(CODE)  # plan, design, logic, config; analysis and code per file
LATENCY = 0.12


def write_papers(folder: Path, count: int) -> list[Path]:
    """`count` distinct small papers (distinct texts, so each is its own run)."""
    folder.mkdir(parents=True, exist_ok=True)
    papers = []
    for i in range(count):
        path = folder / f"paper{i}.md"
        path.write_text(
            f"# Toy Model {i}\n\n## Abstract\n\nWe fit linear model number {i} with SGD.\n\n"
            f"## 1 Method\n\nMinimise $$L = (y - wx)^2$$ with learning rate 0.{i + 1} for {i + 2} epochs.\n",
            encoding="utf-8",
        )
        papers.append(path)
    return papers


def chat_requests(server: ScriptedServer) -> list[Any]:
    return [r for r in server.requests if r["path"].endswith("/chat/completions")]


def assert_at_most_in_flight(server: ScriptedServer, limit: int, latency: float) -> None:
    """Every request takes at least `latency`; so `limit + 1` arrivals within less than that were in flight at once."""
    arrivals = sorted(r["timestamp"] for r in chat_requests(server))
    for first, last in zip(arrivals, arrivals[limit:], strict=False):
        assert last - first >= latency * 0.9, f"{limit + 1} requests arrived within {last - first:.3f} s"


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_six_papers_at_concurrency_two_all_finish_and_the_server_never_sees_three_calls_at_once(
    serve: Any, tmp_path: Path
) -> None:
    server = serve(small_scenario(latency=LATENCY))
    write_papers(tmp_path / "papers", 6)
    heard: list[Event] = []
    out = tmp_path / "batch"
    # Each paper's own pipeline may run 4 calls at once: only the shared limiter keeps the total at 2.
    options = BatchOptions(out=out, settings=settings_for(server, concurrency=4), concurrency=2)
    result = run_batch(tmp_path / "papers", options, sinks=(heard.append,))

    assert [p.state for p in result.papers] == ["done"] * 6
    assert_at_most_in_flight(server, 2, LATENCY)
    assert result.peak_concurrency == 2
    assert len(chat_requests(server)) == 6 * ARTIFACTS
    rows = read_csv(out / "summary.csv")
    assert [r["paper"] for r in rows] == [f"paper{i}" for i in range(6)] + ["total"]
    assert all(int(r["calls"]) == ARTIFACTS and int(r["tokens in"]) > 0 for r in rows[:-1])
    assert int(rows[-1]["calls"]) == 6 * ARTIFACTS
    assert "| paper0 | done |" in (out / "summary.md").read_text(encoding="utf-8")
    finished = [e for e in heard if isinstance(e, PaperFinished)]
    assert sorted(e.done for e in finished) == list(range(1, 7)) and all(e.total == 6 for e in finished)


def test_a_failing_paper_is_reported_and_the_others_finish(serve: Any, tmp_path: Path) -> None:
    scenario = small_scenario()
    scenario["model"] = "gpt-4o-mini"  # any other model name is refused (HTTP 404)
    server = serve(scenario)
    folder = tmp_path / "papers"
    good = write_papers(folder, 3)
    (folder / "empty.md").write_text("", encoding="utf-8")  # unreadable: no text
    spec = tmp_path / "batch.yaml"
    entries = [{"paper": f"papers/{p.name}"} for p in good]
    entries.append({"paper": "papers/empty.md"})
    entries.append({"paper": f"papers/{good[0].name}", "name": "wrong-model", "model": "no-such-model"})
    spec.write_text(json.dumps(entries), encoding="utf-8")  # JSON is YAML

    result = run_batch(spec, BatchOptions(out=tmp_path / "out", settings=settings_for(server), concurrency=2))

    states = {p.name: p.state for p in result.papers}
    assert states == {"paper0": "done", "paper1": "done", "paper2": "done", "empty": "failed", "wrong-model": "failed"}
    errors = {p.name: p.error for p in result.failed}
    assert "empty" in errors["empty"].lower() or "no text" in errors["empty"].lower()
    assert "no-such-model" in errors["wrong-model"]
    rows = {r["paper"]: r for r in read_csv(tmp_path / "out" / "summary.csv")}
    assert rows["wrong-model"]["state"] == "failed" and rows["wrong-model"]["note"]
    assert rows["total"]["state"] == "3/5 done"


def test_a_rerun_skips_the_finished_papers_and_makes_no_calls(serve: Any, tmp_path: Path) -> None:
    server = serve(small_scenario())
    write_papers(tmp_path / "papers", 3)
    options = BatchOptions(out=tmp_path / "out", settings=settings_for(server), concurrency=3)
    first = run_batch(tmp_path / "papers", options)
    sent = len(chat_requests(server))

    again = run_batch(tmp_path / "papers", options)

    assert len(chat_requests(server)) == sent
    assert all(p.skipped and p.state == "done" for p in again.papers)
    assert [p.calls for p in again.papers] == [p.calls for p in first.papers]


def test_an_interrupted_batch_resumes_without_paying_any_artifact_twice(serve: Any, tmp_path: Path) -> None:
    server = serve(small_scenario(latency=0.05))
    write_papers(tmp_path / "papers", 4)
    options = BatchOptions(out=tmp_path / "out", settings=settings_for(server), concurrency=1)
    batch = Batch(tmp_path / "papers", options)
    stopping = threading.Thread(target=batch.cancel)

    def stop_after_first(event: Event) -> None:
        if isinstance(event, PaperFinished) and event.done == 1:
            stopping.start()

    batch.bus.subscribe(stop_after_first)
    stopped = batch.run()
    stopping.join()
    assert stopped.interrupted
    assert 1 <= sum(p.state == "done" for p in stopped.papers) < 4

    resumed = run_batch(tmp_path / "papers", options)

    assert [p.state for p in resumed.papers] == ["done"] * 4
    answered = [r for r in chat_requests(server) if r["fault"] is None]
    assert len(answered) == 4 * ARTIFACTS  # every artifact of every paper paid exactly once


def test_rate_limits_pause_every_paper_and_nothing_is_lost_or_paid_twice(serve: Any, tmp_path: Path) -> None:
    wait = 1.0
    faults = [{"stage": "analysis", "kind": "status", "status": 429, "retry_after": wait, "after": 3}]
    server = serve(small_scenario(latency=0.05, faults=faults))
    write_papers(tmp_path / "papers", 4)
    # Three slots: while the refused call waits in its own slot, two others could keep calling, were it not paused.
    options = BatchOptions(out=tmp_path / "out", settings=settings_for(server), concurrency=3)

    result = run_batch(tmp_path / "papers", options)

    assert [p.state for p in result.papers] == ["done"] * 4
    requests = chat_requests(server)
    refused = [r for r in requests if r["fault"] == "status"]
    assert len(refused) == 1
    # After a 429 no new call (of any paper) starts before its Retry-After; one already on its way may arrive.
    for refusal in refused:
        early = [
            r for r in requests if refusal["timestamp"] + 0.35 < r["timestamp"] < refusal["timestamp"] + wait - 0.05
        ]
        assert not early, f"{len(early)} call(s) started during the pause"
    assert result.rate_limit_pauses == 1
    assert len(requests) - len(refused) == 4 * ARTIFACTS == sum(p.calls for p in result.papers)


def test_spec_lists_take_per_paper_settings_and_reject_unknown_keys(tmp_path: Path) -> None:
    write_papers(tmp_path / "papers", 2)
    spec = tmp_path / "list.csv"
    spec.write_text("paper,reference,model\npapers/paper0.md,ref0,m-a\npapers/paper1.md,,\n", encoding="utf-8")
    papers = read_spec(spec)
    assert [p.name for p in papers] == ["paper0", "paper1"]
    assert papers[0].settings == {"model": "m-a"} and papers[0].reference == tmp_path / "ref0"
    assert papers[1].settings == {} and papers[1].reference is None
    bad = tmp_path / "bad.yaml"
    bad.write_text("- paper: papers/paper0.md\n  colour: blue\n", encoding="utf-8")
    try:
        read_spec(bad)
    except Exception as exc:  # noqa: BLE001 - checked below
        assert "colour" in str(exc) and type(exc).__name__ == "ConfigError"
    else:
        raise AssertionError("an unknown key was accepted")


def test_the_cli_prints_a_line_per_paper_and_the_table(
    serve: Any, tmp_path: Path, monkeypatch: Any, capsys: Any
) -> None:
    server = serve(small_scenario())
    write_papers(tmp_path / "papers", 2)
    monkeypatch.setenv("P2C_CONFIG", "/nonexistent")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-SECRET-0123456789abcdef")
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    code = cli.main(["batch", str(tmp_path / "papers"), "--out", str(tmp_path / "out"), "--concurrency", "2"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "[1/2]" in printed and "[2/2]" in printed
    assert "| total | 2/2 done |" in printed


def test_eval_scores_every_paper_and_a_rerun_evaluates_only_what_lacks_a_score(serve: Any, tmp_path: Path) -> None:
    scenario = small_scenario()
    judged = {"components": ["linear model"], "critique_list": [], "score": 4}
    scenario["responses"].insert(0, {"stage": "judge", "content": json.dumps(judged)})
    server = serve(scenario)
    write_papers(tmp_path / "papers", 2)
    plain = BatchOptions(out=tmp_path / "out", settings=settings_for(server), concurrency=2)
    run_batch(tmp_path / "papers", plain)
    generated = len(chat_requests(server))

    scored = run_batch(tmp_path / "papers", replace(plain, evaluate=True, samples=2))

    assert [p.score for p in scored.papers] == [4.0, 4.0]
    judging = chat_requests(server)[generated:]
    assert len(judging) == 4 and all(r["stage"] == "judge" for r in judging)  # no paper generated again
    rows = read_csv(tmp_path / "out" / "summary.csv")
    assert [r["score"] for r in rows] == ["4.00", "4.00", "4.00"]


def test_ctrl_c_stops_the_batch_cleanly_and_the_same_command_resumes_it(serve: Any, tmp_path: Path) -> None:
    # The papers share one call at a time, so they finish close together; every call after the first paper's worth
    # takes half a second more, so Ctrl-C after the first paper lands before the last (whatever the load).
    slow = {"stage": "*", "kind": "keepalive", "sleep": 0.5, "after": ARTIFACTS, "times": None}
    server = serve(small_scenario(latency=0.1, faults=[slow]))
    write_papers(tmp_path / "papers", 4)
    command = [sys.executable, "-m", "p2c_notebook.cli", "batch", str(tmp_path / "papers"), "--out"]
    command += [str(tmp_path / "out"), "--concurrency", "1"]
    env = subprocess_env(server)
    # Ctrl-C as a terminal sends it: to a process that has SIGINT's default disposition. An ignored SIGINT is
    # inherited across exec (Python then installs no KeyboardInterrupt handler), and something earlier in a full
    # test session leaves this process's SIGINT ignored; a child started from it would never see the interrupt.
    def default_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    pipes: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    with subprocess.Popen(command, env=env, preexec_fn=default_sigint, **pipes) as process:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("[1/4]"):
                process.send_signal(signal.SIGINT)
                break
        out, err = process.communicate(timeout=120)
    assert process.returncode == 130, (out, err)
    assert "Traceback" not in err and "resume" in err
    stopped = {r["paper"]: r["state"] for r in read_csv(tmp_path / "out" / "summary.csv")}
    assert 1 <= list(stopped.values()).count("done") < 4

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)

    assert again.returncode == 0, again.stderr
    assert "(kept)" in again.stdout
    assert len([r for r in chat_requests(server) if r["fault"] in (None, "keepalive")]) == 4 * ARTIFACTS


def test_with_eval_the_judges_calls_tokens_and_cost_are_their_own_columns_and_in_the_totals(
    serve: Any, tmp_path: Path
) -> None:
    scenario = small_scenario()
    judged = {"components": ["linear model"], "critique_list": [], "score": 3}
    scenario["responses"].insert(0, {"stage": "judge", "content": json.dumps(judged)})
    server = serve(scenario)
    write_papers(tmp_path / "papers", 2)
    options = BatchOptions(out=tmp_path / "out", settings=settings_for(server), concurrency=2, evaluate=True, samples=3)

    result = run_batch(tmp_path / "papers", options)

    judging = [r for r in chat_requests(server) if r["stage"] == "judge"]
    assert len(judging) == 2 * 3
    assert [p.eval_calls for p in result.papers] == [3, 3] and all(p.calls == ARTIFACTS for p in result.papers)
    total = result.total()
    assert total.eval_calls == 6 and total.eval_prompt_tokens > 0 and total.eval_completion_tokens > 0
    for paper in result.papers:  # the same as the judge's own record of what it paid
        usage = json.loads((Path(paper.run) / "eval" / "summary.json").read_text(encoding="utf-8"))["usage"]
        assert (paper.eval_prompt_tokens, paper.eval_completion_tokens) == (
            usage["prompt_tokens"],
            usage["completion_tokens"],
        )
    rows = read_csv(tmp_path / "out" / "summary.csv")
    assert [r["eval calls"] for r in rows] == ["3", "3", "6"]
    assert rows[-1]["calls"] == str(2 * ARTIFACTS)  # the generation's, apart from the judge's
    assert int(rows[-1]["eval tokens in"]) == sum(int(r["eval tokens in"]) for r in rows[:-1]) > 0
    assert rows[-1]["eval cost"] != "" and float(rows[-1]["eval cost"]) >= 0
    markdown = (tmp_path / "out" / "summary.md").read_text(encoding="utf-8")
    assert "| eval calls |" in markdown and f"together: {2 * ARTIFACTS + 6} calls" in markdown
    # The row kept by a rerun keeps what judging cost (batch.json).
    again = run_batch(tmp_path / "papers", options)
    assert all(p.skipped for p in again.papers) and again.total().eval_calls == 6


def test_without_a_concurrency_the_batch_takes_a_llamacpp_servers_slots_for_all_its_papers(
    serve: Any, tmp_path: Path
) -> None:
    server = serve(small_scenario(latency=LATENCY, slots=2))
    write_papers(tmp_path / "papers", 4)
    heard: list[Event] = []
    options = BatchOptions(out=tmp_path / "out", settings=settings_for(server))  # no concurrency anywhere

    result = run_batch(tmp_path / "papers", options, sinks=(heard.append,))

    assert [p.state for p in result.papers] == ["done"] * 4
    assert [e.concurrency for e in heard if isinstance(e, BatchStarted)] == [2]
    assert server.load()["max_in_flight"] <= 2 and result.peak_concurrency == 2


def test_a_batch_ramped_past_a_servers_capacity_halves_and_pays_each_artifact_once(
    serve: Any, tmp_path: Path
) -> None:
    server = serve(small_scenario(latency=0.1, capacity=5, capacity_retry_after=0.2))
    write_papers(tmp_path / "papers", 6)
    settings = settings_for(server, max_retries=8, retry_base_delay=0.05, retry_max_delay=0.5)
    batch = Batch(tmp_path / "papers", BatchOptions(out=tmp_path / "out", settings=settings))
    assert batch.limiter.adaptive

    result = batch.run()

    assert [p.state for p in result.papers] == ["done"] * 6
    decisions = batch.limiter.decisions
    assert max(d.limit for d in decisions) > 5 and any(d.why.startswith("rate limited") for d in decisions)
    assert len([r for r in chat_requests(server) if r["fault"] is None]) == 6 * ARTIFACTS
