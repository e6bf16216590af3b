"""The estimate shown before a run, and the context-window check that refuses a paper before paying."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLE, settings_for, small_scenario

import p2c_notebook.run.pipeline as pipeline_module
from p2c_notebook.errors import PaperError
from p2c_notebook.run.estimate import TYPICAL_FILES, filler, known_context_window
from p2c_notebook.run.events import Event, Notice, RunStarted
from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.tokens import estimate_tokens

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import synthetic  # noqa: E402


def _within(estimated: float, actual: float, share: float) -> bool:
    return abs(estimated - actual) <= share * actual


def test_the_estimate_before_a_typical_run_is_within_a_quarter_of_what_it_uses(serve: Any, tmp_path: Path) -> None:
    synth = synthetic.build(TYPICAL_FILES)  # replies of the typical sizes, a depth-4 repository
    server = serve(synth.scenario())
    started: list[RunStarted] = []
    with Pipeline.start(EXAMPLE / "paper.pdf", tmp_path / "run", settings=settings_for(server)) as pipeline:
        before = pipeline.estimate()
        pipeline.bus.subscribe(lambda e: started.append(e) if isinstance(e, RunStarted) else None)
        assert pipeline.run().state == "done"
        spent = pipeline.store.spent()
        refined = pipeline.estimates[1]
    assert len(before.calls) == spent.calls == 2 * TYPICAL_FILES + 4
    assert _within(before.input_tokens, spent.prompt_tokens, 0.25)
    assert _within(before.output_tokens, spent.completion_tokens, 0.25)
    assert before.cost is not None and spent.cost is not None and _within(before.cost, spent.cost, 0.25)
    assert started[0].estimate == before.describe() and "$" in started[0].estimate
    # Once the logic design is saved the estimate counts the real files and dependencies.
    assert len(refined.calls) == 2 * TYPICAL_FILES and not refined.files_assumed


def test_the_refined_estimate_never_holds_back_a_call(
    serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refinement runs off the scheduler: made to block until released, every file call still reaches the
    server (were it on the scheduler's thread, none after the first few would be sent and this would time out)."""
    files = 4
    synth = synthetic.build(files)
    server = serve(synth.scenario())
    release, refining = threading.Event(), threading.Event()
    estimate = Pipeline._estimate

    def blocked(self: Pipeline, first: int, last: int, file_todo: dict[str, list[str]] | None = None) -> Any:
        if file_todo is not None:  # the refinement (the first estimate has no decided file steps)
            refining.set()
            release.wait()
        return estimate(self, first, last, file_todo)

    monkeypatch.setattr(Pipeline, "_estimate", blocked)
    events: list[Event] = []
    outcome: list[str] = []
    with Pipeline.start(EXAMPLE / "paper.pdf", tmp_path / "run", settings=settings_for(server)) as pipeline:
        pipeline.bus.subscribe(events.append)
        runner = threading.Thread(target=lambda: outcome.append(pipeline.run().state))
        runner.start()
        try:
            assert refining.wait(60), "the refinement never started"
            assert _eventually(lambda: len(_file_requests(server)) == 2 * files), "calls waited for the estimate"
            assert len(pipeline.estimates) == 1  # still refining, and every call went out meanwhile
        finally:
            release.set()
            runner.join(60)
        assert outcome == ["done"] and len(pipeline.estimates) == 2
    refined = [e for e in events if isinstance(e, Notice) and e.message.startswith("Estimate for the rest")]
    assert len(refined) == 1
    assert events.index(refined[0]) < next(i for i, e in enumerate(events) if type(e).__name__ == "RunFinished")


def _file_requests(server: Any) -> list[Any]:
    return [r for r in server.requests if r.get("stage") in ("analysis", "code")]


def _eventually(condition: Any, limit: float = 60.0) -> bool:
    """Polls until `condition()` holds; `limit` only ends a test that would otherwise hang (never a threshold)."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_finished_run_has_nothing_left_to_estimate(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    server = serve(small_scenario())
    with Pipeline.start(paper_md, tmp_path / "run", settings=settings_for(server)) as pipeline:
        pipeline.run(until="config")
        rest = pipeline.estimate()
        assert not rest.files_assumed and {c.artifact for c in rest.calls} == {
            f"{stage}/{f}" for stage in ("analysis", "code") for f in pipeline.files()
        }
        pipeline.run()
        assert pipeline.estimate().calls == () and "nothing left" in pipeline.estimate().describe()


def test_a_paper_longer_than_the_context_window_is_refused_before_any_call(serve: Any, tmp_path: Path) -> None:
    server = serve(small_scenario())
    settings = settings_for(server, context_window=3000)
    with (
        Pipeline.start(EXAMPLE / "paper.pdf", tmp_path / "run", settings=settings) as pipeline,
        pytest.raises(PaperError, match="no call was made"),
    ):
        pipeline.run()
    assert server.requests == []


def test_a_call_that_may_not_fit_is_announced_before_paying(serve: Any, tmp_path: Path) -> None:
    server = serve(small_scenario())
    notices: list[Event] = []
    paper_tokens = 4_100  # the example paper is ~4,000 tokens: it fits, the later calls with the plan do not
    settings = settings_for(server, context_window=paper_tokens + 3_000 + 500)
    with Pipeline.start(EXAMPLE / "paper.pdf", tmp_path / "run", settings=settings) as pipeline:
        pipeline.bus.subscribe(notices.append)
        assert pipeline.run().state == "done"  # a warning, not a refusal
    warnings = [n.message for n in notices if isinstance(n, Notice) and n.level == "warning"]
    assert any("may not fit" in w and "context window" in w for w in warnings)


def test_filler_and_model_windows() -> None:
    assert estimate_tokens(filler(1234)) == 1234
    assert known_context_window("gpt-4o-mini-2024-07-18") == 128_000
    assert known_context_window("openai/gpt-4.1") == 1_047_576
    assert known_context_window("some-local-model") is None


def test_p2c_paper_prints_what_a_run_would_cost_before_any_run(capsys: pytest.CaptureFixture[str]) -> None:
    from p2c_notebook.cli import main

    assert main(["paper", str(EXAMPLE / "paper.pdf"), "--model", "gpt-4.1"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("Estimate for a run: 20 calls for 8 files") and "$" in last and "gpt-4.1" in last


def test_the_refined_estimate_counts_the_file_steps_as_decided_however_late_it_is_made(
    serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a loaded machine every file call may come back before the refinement runs: it must still count them all
    (it estimates the file steps the run decided on, not what is left when it happens to run)."""
    monkeypatch.setattr(pipeline_module, "_SENDING_S", 3600.0)  # the refinement runs only after every step is back
    synth = synthetic.build(4)
    server = serve(synth.scenario())
    with Pipeline.start(EXAMPLE / "paper.pdf", tmp_path / "run", settings=settings_for(server)) as pipeline:
        assert pipeline.run().state == "done"
        refined = pipeline.estimates[1]
    assert len(refined.calls) == 2 * 4 and not refined.files_assumed


# --- the estimate against recorded real runs (benchmarks/bench_estimate.py) ---------------------------------
import bench_estimate  # noqa: E402

from p2c_notebook.run.estimate import estimate_paper, profile_for  # noqa: E402


def test_the_estimate_for_the_shipped_cassettes_paper_is_within_35_percent_of_its_recorded_run() -> None:
    """The recorded run of examples/mixup (the embedded model): tokens in and out within the target. Fails when
    the typical sizes, the prompts or the recording drift apart."""
    recording = bench_estimate.load(str(EXAMPLE / "local.cassette.jsonl"))
    compared = bench_estimate.compare(recording)
    assert compared.profile.startswith("recorded"), "the recorded model's own profile is used"
    for estimated, used in (compared.tokens_in, compared.tokens_out):
        assert _within(estimated, used, bench_estimate.TARGET), compared.row()
    assert _within(compared.calls[0], compared.calls[1], bench_estimate.TARGET), compared.row()


def test_the_recorded_run_is_the_first_generation_of_each_artifact_with_its_reasks() -> None:
    recording = bench_estimate.load(str(EXAMPLE / "local.cassette.jsonl"))
    firsts = [(c["request"]["stage"], c["request"]["file"]) for c in recording.calls if c["request"]["attempt"] == 1]
    assert len(firsts) == len(set(firsts)) == 4 + 2 * len(recording.files)
    assert recording.later > 0 and "<paper>" not in recording.paper and recording.paper.strip()


def test_the_shipped_profile_is_what_the_recordings_give() -> None:
    """typical_sizes.yaml's recorded profile is the one `bench_estimate.py --derive` derives from the recordings
    (the shipped cassette, benchmarks/recordings/ and, with git, the shipped cassette's committed versions)."""
    recordings = bench_estimate.all_recordings()
    if len(recordings) < 4:
        pytest.skip("the earlier recordings are in git history, which this checkout lacks")
    derived = bench_estimate.derive(recordings)
    shipped = profile_for("qwen2.5-coder-1.5b")
    assert (shipped.files, shipped.imports) == (derived.files, derived.imports)
    assert dict(shipped.reply_tokens) == dict(derived.reply_tokens)
    assert dict(shipped.reasks) == pytest.approx(dict(derived.reasks), abs=0.001)
    assert (shipped.reask_error_tokens, shipped.carried) == (derived.reask_error_tokens, derived.carried)


def test_the_estimate_is_within_35_percent_of_every_committed_recording() -> None:
    """Not only the shipped run: every recorded run the benchmark reads (its earlier versions, with git, and
    benchmarks/recordings/), tokens in and out."""
    recordings = bench_estimate.all_recordings()
    assert len(recordings) >= 2
    missed = [c.row() for c in map(bench_estimate.compare, recordings) if not c.within_target]
    assert not missed, "\n".join(missed)


def test_the_derived_sizes_put_the_estimate_as_far_above_the_smallest_run_as_below_the_largest() -> None:
    """The reply sizes are scaled to the minimax point of the runs' tokens out: the worst over-estimate and the
    worst under-estimate are equal (up to rounding), so no other single figure has a smaller worst error."""
    recordings = bench_estimate.all_recordings()
    profile = bench_estimate.derive(recordings)
    ratios = [c.ratio(c.tokens_out) for c in (bench_estimate.compare(r, profile) for r in recordings)]
    assert max(ratios) - 1 == pytest.approx(1 - min(ratios), abs=0.01)
    assert bench_estimate.minimax_scale([100, 100], [80, 160]) * 100 == pytest.approx(2 * 80 * 160 / (80 + 160))


def test_a_call_recorded_in_two_sessions_counts_once_in_the_derivation() -> None:
    recording = bench_estimate.load(str(EXAMPLE / "local.cassette.jsonl"))
    later = bench_estimate.Recording("a later session", recording.model, recording.paper, recording.calls[:5])
    assert bench_estimate.derive([recording, later]).reasks == bench_estimate.derive([recording]).reasks
    assert len(bench_estimate.distinct_calls([recording, later])) == len(recording.calls)
    assert bench_estimate.distinct_calls([later], unseen=recording) == []  # leave-one-out sees none of its calls


def test_a_reply_a_later_prompt_carries_counts_there_at_the_profiles_carried_size() -> None:
    """The embedded model reports its replies in its own tokens and its prompts are counted offline, which counts
    the same text as more: the stand-in replies inside later prompts grow with `carried`, the replies do not."""
    paper = bench_estimate.load(str(EXAMPLE / "local.cassette.jsonl")).paper
    plain = replace(profile_for("qwen2.5-coder-1.5b"), carried=1.0)
    larger = estimate_paper(paper, "qwen2.5-coder-1.5b", profile=replace(plain, carried=1.5))
    base = estimate_paper(paper, "qwen2.5-coder-1.5b", profile=plain)
    assert larger.output_tokens == base.output_tokens and larger.input_tokens > base.input_tokens
    assert larger.calls[0].input_tokens == base.calls[0].input_tokens  # the plan call carries no reply


def test_models_get_their_own_profile_and_a_small_local_model_expects_a_smaller_run() -> None:
    paper = bench_estimate.load(str(EXAMPLE / "local.cassette.jsonl")).paper
    local, hosted = estimate_paper(paper, "qwen2.5-coder-1.5b"), estimate_paper(paper, "gpt-4.1")
    assert profile_for("openai/gpt-4.1").models == () and profile_for("Qwen2.5-Coder-0.5B").models
    assert local.files == profile_for("qwen2.5-coder-1.5b").files < hosted.files == TYPICAL_FILES
    assert local.output_tokens < hosted.output_tokens
    reasks = [c for c in local.calls if c.artifact.endswith("(re-ask)")]
    assert reasks and all(c.cached_tokens > 0 for c in reasks)  # a re-ask repeats its first attempt's prompt
