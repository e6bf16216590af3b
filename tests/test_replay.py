"""Record a run to a cassette against the scripted server, then replay it offline, byte for byte."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import API_KEY, EXAMPLE, settings_for, small_scenario

from p2c_notebook.backends import ChatRequest
from p2c_notebook.backends.replay import ReplayBackend, ReplayMissError, Scrubber, read_cassette, request_key
from p2c_notebook.cli import main
from p2c_notebook.errors import ConfigError, P2CError, ReplyError
from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.settings import Settings

SCENARIO = EXAMPLE / "scenario.yaml"
BEARER = "Bearer abcdefghijklmnop0123456789"


def _artifacts(run: Path) -> dict[str, bytes]:
    """Every file a run produced, except the manifest and logs (they hold times and URLs)."""
    return {
        str(p.relative_to(run)): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.name != "manifest.json" and "logs" not in p.relative_to(run).parts
    }


def _record(paper: Path, run: Path, cassette: Path, server: Any) -> Pipeline:
    settings = settings_for(server, record=str(cassette))
    with Pipeline.start(paper, run, settings=settings) as pipeline:
        assert pipeline.run().state == "done"
    return pipeline


def test_replay_reproduces_the_recorded_run_without_a_server(serve: Any, tmp_path: Path) -> None:
    server = serve(SCENARIO)
    cassette = tmp_path / "run.cassette.jsonl"
    _record(EXAMPLE / "paper.pdf", tmp_path / "recorded", cassette, server)
    server.stop()
    entries = read_cassette(cassette)
    assert len(entries) == len(server.requests) == 4 + 2 * 7
    assert len({e["key"] for e in entries}) == len(entries)

    replay = Settings(backend=f"replay:{cassette}")
    with Pipeline.start(EXAMPLE / "paper.pdf", tmp_path / "replayed", settings=replay) as pipeline:
        assert pipeline.run().state == "done"
        assert pipeline.backend.model == "gpt-4o-mini"  # the recorded model, kept in the manifest
    recorded, replayed = _artifacts(tmp_path / "recorded"), _artifacts(tmp_path / "replayed")
    assert recorded.keys() == replayed.keys() and len(recorded) > 20
    assert recorded == replayed


def test_a_cassette_is_extended_with_only_the_calls_it_lacks(serve: Any, tmp_path: Path) -> None:
    """replay + replay_fallback + record: how the workshop cassette grows when a notebook asks something new."""
    server = serve(SCENARIO)
    cassette = tmp_path / "c.jsonl"
    planning = settings_for(server, record=str(cassette))
    with Pipeline.start(EXAMPLE / "paper.pdf", tmp_path / "first", settings=planning) as pipeline:
        assert pipeline.run(until="config").state == "stopped"
    assert len(read_cassette(cassette)) == len(server.requests) == 4

    extend = settings_for(server, backend=f"replay:{cassette}", replay_fallback="openai", record=str(cassette))
    with Pipeline.start(EXAMPLE / "paper.pdf", tmp_path / "second", settings=extend) as pipeline:
        assert pipeline.run().state == "done"
    asked = [r["stage"] for r in server.requests[4:]]
    assert sorted(set(asked)) == ["analysis", "code"] and len(asked) == 2 * 7  # planning came from the cassette
    assert len(read_cassette(cassette)) == 4 + 2 * 7

    server.stop()
    replay = Settings(backend=f"replay:{cassette}")
    with Pipeline.start(EXAMPLE / "paper.pdf", tmp_path / "third", settings=replay) as pipeline:
        assert pipeline.run().state == "done"
    assert _artifacts(tmp_path / "second") == _artifacts(tmp_path / "third")


def test_a_changed_paper_is_a_clear_replay_miss(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    cassette = tmp_path / "c.jsonl"
    _record(paper_md, tmp_path / "recorded", cassette, serve(small_scenario()))
    paper_md.write_text(paper_md.read_text().replace("learning rate 0.1", "learning rate 0.2"), encoding="utf-8")
    replay = Settings(backend=f"replay:{cassette}")
    with (
        Pipeline.start(paper_md, tmp_path / "replayed", settings=replay) as pipeline,
        pytest.raises(ReplayMissError) as caught,
    ):
        pipeline.run()
    message = str(caught.value)
    assert message.startswith("no recording for this request (stage=plan, file=-)")
    assert "the prompt differs from the recorded run" in message and "re-record with --record" in message
    assert "c.jsonl holds 1 call(s) for it, made from the notebook's own text" in message
    assert "message 2 (user)" in message  # the paper is in the first user message
    assert "\n" not in message  # one line for the CLI
    assert isinstance(caught.value, P2CError)


def test_a_file_the_recording_never_saw_names_stage_and_file(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    cassette = tmp_path / "c.jsonl"
    _record(paper_md, tmp_path / "recorded", cassette, serve(small_scenario()))
    backend = ReplayBackend(cassette)
    request = ChatRequest([{"role": "user", "content": "x"}], "code", "other.py")
    with pytest.raises(ReplayMissError, match=r"stage=code, file=other\.py\).*no call for this stage and file"):
        backend.complete(request, lambda _: None)


def test_no_secret_reaches_the_cassette(serve: Any, tmp_path: Path) -> None:
    paper = tmp_path / "leaky.md"
    paper.write_text(
        "# Leaky Paper\n\n## Abstract\n\nWe fit a linear model with SGD and did not scrub our notes.\n\n"
        f"## 1 Method\n\nOur key was {API_KEY}, sent as `Authorization: {BEARER}` to "
        "https://user:hunter2-password@example.invalid/v1 for learning rate 0.1.\n",
        encoding="utf-8",
    )
    cassette = tmp_path / "c.jsonl"
    _record(paper, tmp_path / "recorded", cassette, serve(small_scenario()))
    text = cassette.read_text(encoding="utf-8")
    for secret in (API_KEY, "SECRET-0123456789", BEARER.split()[1], "hunter2-password"):
        assert secret not in text
    assert "[secret]" in text
    # the key is computed before scrubbing, so the replay still matches the real prompt
    with Pipeline.start(paper, tmp_path / "replayed", settings=Settings(backend=f"replay:{cassette}")) as pipeline:
        assert pipeline.run().state == "done"


def test_scrubber_leaves_ordinary_code_alone() -> None:
    scrub = Scrubber(["my-configured-key"])
    code = 'def connect(api_key: str | None = None):\n    headers = {"Authorization": f"Bearer {api_key}"}\n'
    assert scrub.text(code) == code
    assert scrub.text("token my-configured-key here") == "token [secret] here"
    assert scrub.text('{"api_key": "abcdefghijklmnopqrstuvwx"}') == '{"api_key": "[secret]"}'


def test_record_and_replay_from_the_command_line(
    serve: Any, paper_md: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve(small_scenario())
    for key in list(os.environ):
        if key.startswith(("OPENAI_", "P2C_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("P2C_CONFIG", "/nonexistent")
    cassette = tmp_path / "cli.jsonl"
    base = ["run", str(paper_md), "--base-url", server.base_url, "--api-key", API_KEY]
    assert main([*base, "--out", str(tmp_path / "a"), "--record", str(cassette)]) == 0
    assert main(["run", str(paper_md), "--out", str(tmp_path / "b"), "--backend", f"replay:{cassette}"]) == 0
    assert _artifacts(tmp_path / "a") == _artifacts(tmp_path / "b")
    assert API_KEY not in cassette.read_text(encoding="utf-8")


def test_request_key_ignores_the_schema_body_but_not_the_prompt() -> None:
    messages = [{"role": "user", "content": "plan it"}]
    a = ChatRequest(messages, "design", schema={"type": "object"}, schema_name="ArchitectureDesign")
    b = ChatRequest(messages, "design", schema={"type": "object", "title": "x"}, schema_name="ArchitectureDesign")
    c = ChatRequest([{"role": "user", "content": "plan it!"}], "design", schema={}, schema_name="ArchitectureDesign")
    assert request_key(a) == request_key(b) != request_key(c)
    assert request_key(a) != request_key(ChatRequest(messages, "design", attempt=2, schema={}, schema_name="X"))


def test_cassette_files_that_are_missing_or_damaged_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No cassette at .*--record"):
        ReplayBackend(tmp_path / "none.jsonl")
    good = json.dumps({"key": "k", "reply": "r", "request": {"stage": "plan", "file": ""}})
    cut = tmp_path / "cut.jsonl"
    cut.write_text(good + "\n" + good[:20], encoding="utf-8")  # killed while writing the last line
    assert len(read_cassette(cut)) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n" + good + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="line 1"):
        read_cassette(bad)


def test_the_shipped_local_model_cassette_replays_the_example_paper(tmp_path: Path) -> None:
    """examples/mixup/local.cassette.jsonl: a real qwen2.5-coder-1.5b run, replayed offline.

    When this fails with "no recording for this request", a prompt, a check that re-asks or the paper reader
    changed: re-record with `python scripts/record_cassette.py --fresh` (it also records what the workshop
    notebooks ask; about 50 minutes on 2 busy cores).
    """
    cassette = EXAMPLE / "local.cassette.jsonl"
    replay = Settings(backend=f"replay:{cassette}")
    with Pipeline.start(EXAMPLE / "paper.pdf", tmp_path / "run", settings=replay) as pipeline:
        assert pipeline.run().state == "done"
        assert pipeline.backend.model == "qwen2.5-coder-1.5b"
        files = pipeline.files()
    assert files and all((tmp_path / "run" / "repo" / f).is_file() for f in files)
    for path in files:
        if path.endswith(".py"):
            ast.parse((tmp_path / "run" / "repo" / path).read_text(encoding="utf-8"))
    assert (tmp_path / "run" / "checks.json").is_file()  # the in-loop static checks ran on the replayed replies
    assert "[secret]" not in cassette.read_text(encoding="utf-8")  # nothing needed scrubbing in a local run


def test_a_students_own_feedback_is_a_miss_that_says_what_is_recorded_and_how_to_go_live(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    """Replay that teaches: the message names what the cassette holds for the stage, that only the notebook's text
    was recorded, how to use that text, and the one line that switches to a live model."""
    cassette = tmp_path / "c.jsonl"
    _record(paper_md, tmp_path / "run", cassette, serve(small_scenario()))
    with (
        Pipeline.open(tmp_path / "run", settings=Settings(backend=f"replay:{cassette}")) as pipeline,
        pytest.raises(ReplayMissError) as caught,
    ):
        pipeline.regenerate("config", feedback="Use my own learning rate of 0.3, please.")
    line, paragraph = str(caught.value), caught.value.explanation
    assert line.startswith("no recording for this request (stage=config, file=-)") and "\n" not in line
    assert "an edit in your own words or your own feedback is a new request" in line
    assert "--backend openai --base-url URL" in line and "P2C_REPLAY_FALLBACK=openai" in line
    assert "the recorded call had more messages" not in paragraph
    assert "c.jsonl holds 1 call(s) for it" in paragraph  # what is recorded for this stage
    assert "Only the notebook's own text was recorded" in paragraph
    assert "clear the feedback box" in paragraph and "undo your edit" in paragraph
    assert 'SETTINGS = {"backend": "openai"' in paragraph and "%p2c use --backend openai" in paragraph
    assert '"replay_fallback": "openai"' in paragraph


def test_a_file_the_cassette_lacks_lists_what_it_holds_for_that_stage(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    cassette = tmp_path / "c.jsonl"
    _record(paper_md, tmp_path / "run", cassette, serve(small_scenario()))
    request = ChatRequest([{"role": "user", "content": "x"}], "analysis", "extra.py")
    with pytest.raises(ReplayMissError) as caught:
        ReplayBackend(cassette).complete(request, lambda _: None)
    recorded = sorted({e["request"]["file"] for e in read_cassette(cassette) if e["request"]["stage"] == "analysis"})
    assert recorded and f"(for analysis it holds: {', '.join(recorded)})" in caught.value.explanation


def test_a_students_own_feedback_goes_to_the_live_fallback_when_one_is_configured(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    server = serve(small_scenario())
    cassette = tmp_path / "c.jsonl"
    _record(paper_md, tmp_path / "run", cassette, server)
    asked = len(server.requests)
    live = settings_for(server, backend=f"replay:{cassette}", replay_fallback="openai")
    with Pipeline.open(tmp_path / "run", settings=live) as pipeline:
        pipeline.regenerate("config", feedback="Use my own learning rate of 0.3, please.")
        pipeline.regenerate("plan")  # the notebook's own text: replayed, not asked
    sent = server.requests[asked:]
    assert [(r["stage"], r["file"]) for r in sent] == [("config", "")]
    assert "my own learning rate of 0.3" in json.dumps(sent[0]["messages"])


def test_a_cassette_recorded_with_more_re_asks_than_the_default_replays_them_all(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    """The local model gets two re-asks of an unusable reply; its recording must replay with two, not the default
    one, or the replay stops where the recorded run went on. A `max_repairs` the user set is kept."""
    scenario = small_scenario()
    broken = "```python\ndef load(:\n    return 1\n```"
    scenario["responses"][:0] = [
        {"stage": "code", "file": "data.py", "attempt": 1, "content": broken},
        {"stage": "code", "file": "data.py", "attempt": 2, "content": broken},
    ]
    server = serve(scenario)
    cassette = tmp_path / "run.cassette.jsonl"
    with Pipeline.start(
        paper_md, tmp_path / "recorded", settings=settings_for(server, max_repairs=2, record=str(cassette))
    ) as pipeline:
        assert pipeline.run().state == "done"
    server.stop()
    assert max(e["request"]["attempt"] for e in read_cassette(cassette)) == 3

    with Pipeline.start(paper_md, tmp_path / "replayed", settings=Settings(backend=f"replay:{cassette}")) as pipeline:
        assert pipeline.backend.settings.max_repairs == 2
        assert pipeline.run().state == "done"
    assert _artifacts(tmp_path / "replayed") == _artifacts(tmp_path / "recorded")

    strict = Settings(backend=f"replay:{cassette}", max_repairs=1)
    with Pipeline.start(paper_md, tmp_path / "strict", settings=strict) as pipeline:
        assert pipeline.backend.settings.max_repairs == 1
        with pytest.raises(ReplyError, match="unusable twice"):
            pipeline.run()
