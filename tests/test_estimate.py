"""The estimate shown before a run, and the context-window check that refuses a paper before paying."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLE, settings_for, small_scenario

import p2c_notebook.run.pipeline as pipeline_module
from p2c_notebook.errors import PaperError
from p2c_notebook.run.estimate import TYPICAL_FILES, filler, known_context_window
from p2c_notebook.run.events import ArtifactSaved, Event, Notice, RunStarted, StageStarted
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


def test_the_refined_estimate_waits_until_the_file_calls_are_on_their_way(serve: Any, tmp_path: Path) -> None:
    synth = synthetic.build(4)
    server = serve(synth.scenario(latency=0.3))
    events: list[Event] = []
    with Pipeline.start(EXAMPLE / "paper.pdf", tmp_path / "run", settings=settings_for(server)) as pipeline:
        pipeline.bus.subscribe(events.append)
        assert pipeline.run().state == "done"
        assert len(pipeline.estimates) == 2
    order = [
        "refined" if isinstance(e, Notice) and e.message.startswith("Estimate for the rest") else type(e).__name__
        for e in events
        if isinstance(e, (Notice, StageStarted, ArtifactSaved))
        and (not isinstance(e, StageStarted | ArtifactSaved) or e.artifact.startswith("analysis/"))
    ]
    # Computing it takes tens of milliseconds: the first file calls go out first and it overlaps their latency.
    assert order.index("StageStarted") < order.index("refined") < order.index("ArtifactSaved")


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
