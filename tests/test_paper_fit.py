"""Fitting the paper to the model's context window, and the sections the user leaves out.

Over HTTP with the scripted server and a `context_window` setting: a paper whose appendix does not fit runs without
it (and says so); one that does not fit even then is refused before any call, naming the largest sections.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pymupdf
import pytest
from conftest import settings_for, small_scenario
from pdfpages import BOLD, PROSE, PdfPage

from p2c_notebook.errors import ConfigError, PaperError
from p2c_notebook.paper import read_paper
from p2c_notebook.paper.model import exclude_sections
from p2c_notebook.run.estimate import larger_local_context
from p2c_notebook.run.events import Event, Notice
from p2c_notebook.run.pipeline import Pipeline


def paper_pdf(path: Path, *, method: int, appendix: int) -> Path:
    """A paper: introduction, a method of `method` paragraphs, references, and an appendix of `appendix`."""
    doc = pymupdf.open()
    page = PdfPage(doc)
    page.line("Fitting Papers To Models", size=18, font=BOLD)
    page.y += 8

    def heading(text: str) -> None:
        nonlocal page
        if page.y > 640:
            page.done()
            page = PdfPage(doc)
        page.y += 8
        page.line(text, size=12, font=BOLD)

    def paragraphs(count: int, what: str) -> None:
        nonlocal page
        for index in range(count):
            if page.y > 660:
                page.done()
                page = PdfPage(doc)
            page.paragraph(f"{what} paragraph {index}. " + PROSE * 2)

    heading("Abstract")
    paragraphs(1, "Abstract")
    heading("1 Introduction")
    paragraphs(2, "Introduction")
    heading("2 Method")
    paragraphs(method, "Method")
    heading("References")
    page.paragraph("A. Author. A paper. 2020.")
    heading("Appendix A Proofs")
    paragraphs(appendix, "Proof")
    heading("B More Results")
    paragraphs(2, "Results")
    page.done()
    doc.save(path)
    return path


def window_for(paper: Path, tmp_path: Path, server: Any, slack: int) -> int:
    """The window the largest call needs with the appendix left out (reply room included), plus `slack`."""
    with Pipeline.start(
        paper, tmp_path / "probe", settings=settings_for(server), exclude_sections=["appendix"]
    ) as probe:
        estimate = probe.estimate()
        window, reply_room = probe._window(estimate)
    return max(c.input_tokens for c in estimate.calls) + reply_room + slack


def test_a_paper_whose_appendix_does_not_fit_runs_without_it_and_says_so(serve: Any, tmp_path: Path) -> None:
    paper = paper_pdf(tmp_path / "long.pdf", method=3, appendix=40)
    server = serve(small_scenario())
    settings = settings_for(server, context_window=window_for(paper, tmp_path, server, 300))
    notices: list[Event] = []
    with Pipeline.start(paper, tmp_path / "run", settings=settings) as pipeline:
        assert "Proof paragraph" in pipeline.store.read("paper")
        pipeline.bus.subscribe(notices.append)
        assert pipeline.run().state == "done"
        text = pipeline.store.read("paper")
        meta = pipeline.store.meta["paper"]
    assert "Proof paragraph" not in text and "Method paragraph 2" in text
    assert meta["fitted"] is True
    warnings = [n.message for n in notices if isinstance(n, Notice) and n.level == "warning"]
    assert any("its appendix" in w and "left out" in w for w in warnings)
    assert all("Proof paragraph" not in json.dumps(r) for r in server.requests)
    # Opening the run again with the same PDF keeps the fitted paper: nothing goes stale.
    with Pipeline.start(paper, tmp_path / "run", settings=settings) as again:
        assert again.store.read("paper") == text
        assert all(row.status not in ("stale", "missing") for row in again.rows())


def test_a_paper_that_does_not_fit_even_without_its_appendix_is_refused_naming_the_largest_sections(
    serve: Any, tmp_path: Path
) -> None:
    paper = paper_pdf(tmp_path / "long.pdf", method=30, appendix=10)
    server = serve(small_scenario())
    settings = settings_for(server, context_window=4_000)
    with Pipeline.start(paper, tmp_path / "run", settings=settings) as pipeline, pytest.raises(PaperError) as refused:
        pipeline.run()
    message = str(refused.value)
    assert "no call was made" in message and "left out the appendix" in message
    assert "--exclude-sections" in message and "'2 Method'" in message
    assert message.index("'2 Method'") < message.index("'A Proofs'")  # the largest first
    assert server.requests == []


def test_excluded_sections_are_left_out_and_changing_the_choice_makes_the_run_stale(serve: Any, tmp_path: Path) -> None:
    paper = paper_pdf(tmp_path / "paper.pdf", method=2, appendix=2)
    server = serve(small_scenario())
    settings = settings_for(server)
    with Pipeline.start(paper, tmp_path / "run", settings=settings, exclude_sections=["Appendix*", "1"]) as pipeline:
        text = pipeline.store.read("paper")
        assert (
            "Introduction paragraph" not in text and "Proof paragraph" not in text and "Results paragraph" not in text
        )
        assert pipeline.store.meta["paper"]["exclude"] == ["Appendix*", "1"]
        pipeline.run(until="plan")
    with Pipeline.start(paper, tmp_path / "run", settings=settings) as same:  # None keeps the earlier choice
        assert same.store.read("paper") == text
        assert {row.artifact: row.status for row in same.rows()}["plan"] != "stale"
    with Pipeline.start(paper, tmp_path / "run", settings=settings, exclude_sections=[]) as changed:
        assert "Introduction paragraph" in changed.store.read("paper")
        assert {row.artifact: row.status for row in changed.rows()}["plan"] == "stale"
    with pytest.raises(ConfigError, match="names no section"):
        Pipeline.start(paper, tmp_path / "run", settings=settings, exclude_sections=["Conclusion"])


def test_exclusion_patterns_match_titles_numbers_and_sub_sections(tmp_path: Path) -> None:
    paper = read_paper(paper_pdf(tmp_path / "paper.pdf", method=1, appendix=1))
    assert [(s.number, s.heading, s.appendix) for s in paper.sections] == [
        ("1", "Introduction", False),
        ("2", "Method", False),
        ("A", "Proofs", True),
        ("B", "More Results", True),
    ]
    kept, unmatched = exclude_sections(paper, ["*results", "2", "nothing*"])
    assert [s.heading for s in kept.sections] == ["Introduction", "Proofs"] and unmatched == ["nothing*"]
    assert kept.dropped[-1] == "2 sections excluded by choice (2 Method, B More Results)"
    nested = paper.model_copy(
        update={"sections": [paper.sections[0], paper.sections[1].model_copy(update={"number": "1.1", "level": 2})]}
    )
    assert exclude_sections(nested, ["1"])[0].sections == []  # a section takes its sub-sections along


def test_the_local_context_grows_only_within_the_model_and_the_memory() -> None:
    gib = 1 << 30
    assert larger_local_context("qwen2.5-coder-1.5b", 16_384, 20_000, 8 * gib) == (20_480, "")
    assert larger_local_context("qwen2.5-coder-1.5b", 16_384, 40_000, 8 * gib)[1].endswith("32,768 tokens")
    grown, why = larger_local_context("qwen2.5-coder-1.5b", 16_384, 32_000, gib)
    assert grown is None and "more memory" in why
    assert larger_local_context("my-own.gguf", 16_384, 20_000, None)[0] is None


def test_the_paper_command_lists_the_sections_with_tokens_and_the_run_command_excludes_them(
    monkeypatch: pytest.MonkeyPatch, serve: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from test_cli import cli_env

    from p2c_notebook.cli import main

    server = serve(small_scenario())
    for key, value in cli_env(server).items():
        monkeypatch.setenv(key, value)
    paper = paper_pdf(tmp_path / "paper.pdf", method=2, appendix=2)
    assert main(["paper", str(paper)]) == 0
    listed = capsys.readouterr().out
    assert "Sections the model will see:" in listed
    assert re.search(r"^  2 Method  ~[\d,]+ tokens$", listed, re.M)
    assert re.search(r"^  A Proofs  ~[\d,]+ tokens  \[appendix\]$", listed, re.M)
    assert main(["paper", str(paper), "--exclude-sections", "Appendix*"]) == 0
    assert "[appendix]" not in capsys.readouterr().out
    assert main(["paper", str(paper), "--exclude-sections", "Conclusion"]) == 2
    run = tmp_path / "run"
    assert main(["run", str(paper), "--out", str(run), "--until", "plan", "--exclude-sections", "appendix,1"]) == 0
    assert "Proof paragraph" not in json.dumps(server.requests) and "Method paragraph" in json.dumps(server.requests)
    assert main(["run", str(run), "--until", "plan", "--exclude-sections", ""]) == 0  # all sections back: replanned
    assert "Proof paragraph" in json.dumps(server.requests[-1])
