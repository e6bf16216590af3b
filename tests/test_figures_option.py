"""`--figures`: the paper's saved figure images go to a vision model with the planning calls, over real HTTP.

The paper is a PDF built here with two captioned figures (an embedded image and a drawn curve); the reader saves
them into the run folder (paper/figures/), and the scripted server records what each request carried.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pymupdf
import pytest
from conftest import no_settings, small_scenario, use_server
from pdfpages import BOLD, PROSE, PdfPage

from p2c_notebook.backends.replay import read_cassette
from p2c_notebook.cli import main
from p2c_notebook.content import image_tokens, images_of, text_of
from p2c_notebook.paper.model import Caption, Paper
from p2c_notebook.prompts.builder import Figures, load_figures
from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.secrets import Scrubber
from p2c_notebook.settings import Settings, load_settings

CAPTIONS = {
    "Figure 1": "The heat map of the attention weights.",
    "Figure 2": "Training loss falls with every epoch.",
}
PLANNING = ("plan", "design", "logic", "config")


def figures_pdf(path: Path) -> Path:
    """One page: prose, an embedded image with its caption, prose, a drawn curve with its caption, a section."""
    doc = pymupdf.open()
    page = PdfPage(doc)
    page.line("Seeing Figures", size=18, font=BOLD)
    page.y += 8
    page.line("Abstract", size=12, font=BOLD)
    page.paragraph("We study figures. " + PROSE)
    page.line("1 Introduction", size=12, font=BOLD)
    page.paragraph("Before the image. " + PROSE)
    page.image(pymupdf.Rect(180, page.y + 10, 430, page.y + 100), (200, 120, 40))
    page.y += 116
    page.line(f"Figure 1: {CAPTIONS['Figure 1']}")
    page.paragraph("Between the figures. " + PROSE)
    top = page.y + 14
    shape = page.page.new_shape()
    shape.draw_bezier((100, top + 60), (200, top), (300, top + 80), (420, top + 10))
    shape.finish(color=(0.1, 0.3, 0.9), width=1.5)
    shape.commit()
    page.y = top + 96
    page.line(f"Figure 2: {CAPTIONS['Figure 2']}")
    page.paragraph("After the plot. " + PROSE)
    page.line("2 Method", size=12, font=BOLD)
    page.paragraph("The method section. " + PROSE * 2)
    page.done()
    doc.save(path)
    return path


@pytest.fixture
def pdf(tmp_path: Path) -> Path:
    return figures_pdf(tmp_path / "seeing.pdf")


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch, serve: Any) -> Any:
    """The scripted server with the small scenario; `p2c` commands in this process talk to it."""
    server = serve(small_scenario())
    use_server(monkeypatch, server)
    return server


def plan_message(request: Any) -> Any:
    """The content of the message that holds the paper (the plan task, second in every call)."""
    return request["messages"][1]["content"]


def decoded(url: str) -> bytes:
    return base64.b64decode(url.partition("base64,")[2])


def test_with_figures_each_planning_call_carries_the_images_after_the_paper_with_their_captions(
    server: Any, pdf: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    assert main(["run", str(pdf), "--out", str(run), "--figures"]) == 0
    saved = {name: (run / "paper" / name).read_bytes() for name in ("figures/fig1.png", "figures/fig2.png")}
    planning = [r for r in server.requests if r["stage"] in PLANNING]
    assert sorted(r["stage"] for r in planning) == sorted(PLANNING)
    first = plan_message(planning[0])
    for request in planning:  # byte-identical in every planning call: one cached prefix for paper and images
        assert plan_message(request) == first
    kinds = [part["type"] for part in first]
    assert kinds == ["text", "text", "text", "image_url", "text", "image_url", "text"]
    assert first[0]["text"].rstrip().endswith("</paper>")  # right after the paper text ...
    assert first[-1]["text"].lstrip().startswith("Task: write the overall plan")  # ... and before the task
    assert "2 images" in first[1]["text"]
    for (label, caption), name, caption_part, image in zip(
        CAPTIONS.items(), saved, first[2:6:2], first[3:7:2], strict=True
    ):
        assert caption_part["text"].strip() == f"{label} ({name}): {caption}"
        assert decoded(image["image_url"]["url"]) == saved[name]  # the saved file, as a PNG data URL
        assert image["image_url"]["url"].startswith("data:image/png;base64,")
    # The analysis and coding calls are text only (README: ~1k tokens an image, in every file call).
    files = [r for r in server.requests if r["stage"] in ("analysis", "code")]
    assert files and all(not images_of(m["content"]) for r in files for m in r["messages"])
    assert text_of(first).count("</paper>") == 1


def test_without_figures_no_request_carries_an_image(server: Any, pdf: Path, tmp_path: Path) -> None:
    assert main(["run", str(pdf), "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "paper" / "figures" / "fig1.png").is_file()  # saved all the same, for the notebook
    assert server.requests and all(isinstance(m["content"], str) for r in server.requests for m in r["messages"])


@pytest.mark.parametrize("habit", [None, "vllm", "llamacpp", "lmstudio", "ollama"])
def test_a_server_that_refuses_images_stops_with_one_line_and_keeps_what_was_paid_for(
    monkeypatch: pytest.MonkeyPatch,
    serve: Any,
    pdf: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    habit: str | None,
) -> None:
    scenario = small_scenario(vision=False, **({"habit": habit} if habit else {}))
    server = serve(scenario)
    use_server(monkeypatch, server)
    run = tmp_path / "run"
    assert main(["run", str(pdf), "--out", str(run), "--until", "plan"]) == 0  # paid for, text only
    plan = (run / "planning" / "plan.md").read_bytes()
    capsys.readouterr()
    server.reset()
    assert main(["run", str(run), "--figures"]) == 4  # the server refused: exit code of a server problem
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("p2c: error:")]
    assert len(lines) == 1 and "Traceback" not in err
    assert "refused the paper's figure images" in lines[0]
    assert "drop --figures" in lines[0] and "vision model" in lines[0]
    assert "base64" not in err
    carried = [r for r in server.requests if images_of(plan_message(r))]
    assert carried and all(r["fault"] in ("habit", "vision") for r in carried)  # none was answered
    # Never retried (llama.cpp and Ollama say 500, which is otherwise retried): one refusal per planning call.
    stages = [r["stage"] for r in carried if r["fault"] == "vision"]
    assert stages and len(stages) == len(set(stages)) and set(stages) <= set(PLANNING)
    assert (run / "planning" / "plan.md").read_bytes() == plan
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["artifacts"]["plan"]["sha256"] == hashlib.sha256(plan).hexdigest()
    # Without --figures the run goes on from where it stopped: the plan is not asked for again.
    server.reset()
    assert main(["run", str(run)]) == 0
    assert "plan" not in [r["stage"] for r in server.requests]


def test_a_recorded_run_with_figures_replays_by_image_hash_and_its_cassette_holds_no_image_data(
    server: Any, pdf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cassette = tmp_path / "run.cassette.jsonl"
    run = tmp_path / "run"
    assert main(["run", str(pdf), "--out", str(run), "--figures", "--record", str(cassette)]) == 0
    text = cassette.read_text()
    assert "base64" not in text and "iVBOR" not in text  # no PNG data, in any form
    entries = read_cassette(cassette)
    plan = next(e for e in entries if e["request"]["stage"] == "plan")
    recorded = plan["request"]["messages"][1]["images"]
    fig1 = (run / "paper" / "figures" / "fig1.png").read_bytes()
    assert recorded[0]["file"] == "paper/figures/fig1.png"
    assert recorded[0]["sha256"] == hashlib.sha256(fig1).hexdigest() and recorded[0]["bytes"] == len(fig1)
    assert [i["file"] for i in recorded] == ["paper/figures/fig1.png", "paper/figures/fig2.png"]
    code = [e for e in entries if e["request"]["stage"] == "code"]
    assert code and all("images" not in m for e in code for m in e["request"]["messages"])
    # Replayed offline into a new run folder (the figures are rendered again, to the same bytes): every call found.
    server.stop()
    replayed = tmp_path / "replayed"
    capsys.readouterr()
    assert main(["run", str(pdf), "--out", str(replayed), "--figures", "--backend", f"replay:{cassette}"]) == 0
    assert (replayed / "repo" / "main.py").read_bytes() == (run / "repo" / "main.py").read_bytes()
    # The images are part of the key: the same paper without them is a different request.
    capsys.readouterr()
    assert main(["run", str(pdf), "--out", str(tmp_path / "text"), "--backend", f"replay:{cassette}"]) == 4
    assert "no recording for this request (stage=plan" in capsys.readouterr().err


def test_the_run_log_and_manifest_name_the_figures_by_file_and_hash_never_their_data(
    server: Any, pdf: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    assert main(["run", str(pdf), "--out", str(run), "--figures"]) == 0
    log = (run / "logs" / "run.log").read_text()
    digest = hashlib.sha256((run / "paper" / "figures" / "fig2.png").read_bytes()).hexdigest()
    assert "figures/fig2.png (sha256 " + digest[:12] in log
    for name in ("logs/run.log", "manifest.json"):
        assert "base64" not in (run / name).read_text()
    assert json.loads((run / "manifest.json").read_text())  # still JSON


def test_an_error_that_echoes_an_image_is_written_with_the_image_file_and_hash(tmp_path: Path) -> None:
    """Pure logic: a server error quoting the request's data URL reaches logs and the terminal shortened."""
    figures = one_saved_figure(tmp_path / "paper")
    url = figures.parts()[2]["image_url"]["url"]
    scrubbed = Scrubber().text(f"HTTP 400: cannot decode {url} (bad image)")
    data = decoded(url)
    assert "base64" not in scrubbed
    assert f"[image paper/figures/fig1.png sha256:{hashlib.sha256(data).hexdigest()[:16]}, {len(data)} bytes]" in (
        scrubbed
    )


def one_saved_figure(folder: Path) -> Figures:
    """A run folder's paper/ with one saved figure, read by `load_figures`."""
    (folder / "figures").mkdir(parents=True)
    pixmap = pymupdf.Pixmap(pymupdf.csRGB, pymupdf.IRect(0, 0, 40, 20), False)
    pixmap.set_rect(pixmap.irect, (10, 200, 30))
    (folder / "figures" / "fig1.png").write_bytes(pixmap.tobytes("png"))
    caption = Caption(kind="figure", label="Figure 1", text="A green box.", image="figures/fig1.png")
    (folder / "paper.json").write_text(Paper(title="T", captions=[caption]).model_dump_json())
    return load_figures(folder)


def test_the_embedded_local_model_with_figures_is_refused_before_any_call(
    monkeypatch: pytest.MonkeyPatch, pdf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    no_settings(monkeypatch)
    monkeypatch.setenv("P2C_FIGURES", "1")  # from the environment, as from --figures
    run = tmp_path / "run"
    assert main(["run", str(pdf), "--out", str(run)]) == 2  # auto: no key, no URL -> the local model
    err = capsys.readouterr().err
    assert "reads text only" in err and "drop --figures (P2C_FIGURES)" in err and "Traceback" not in err
    assert not (run / "logs" / "local-server.log").exists()  # the server was never started
    assert main(["run", str(run), "--backend", "local"]) == 2
    assert not (run / "planning").exists()


def test_figures_are_off_unless_asked_for() -> None:
    assert load_settings(environ={}, file=Path("/nonexistent")).figures is False
    assert load_settings(environ={"P2C_FIGURES": "1"}, file=Path("/nonexistent")).figures is True
    assert load_settings(environ={"P2C_FIGURES": "0"}, file=Path("/nonexistent")).figures is False


def test_the_estimate_counts_each_image_in_the_planning_calls_only_and_the_cap_says_what_it_left_out(
    pdf: Path, tmp_path: Path
) -> None:
    def calls(figures: bool) -> dict[str, int]:
        settings = Settings.model_validate(
            {"model": "gpt-4o-mini", "api_key": "sk-test", "base_url": "http://127.0.0.1:9", "figures": figures}
        )
        with Pipeline.start(pdf, tmp_path / f"run-{figures}", settings=settings) as pipeline:
            return {c.artifact: c.input_tokens for c in pipeline.estimate().calls}

    with_images, without = calls(True), calls(False)
    sent = load_figures(tmp_path / "run-True" / "paper")
    urls = [p["image_url"]["url"] for p in sent.parts() if p["type"] == "image_url"]
    assert len(urls) == 2
    pictures = sum(image_tokens(u) for u in urls)
    assert all(image_tokens(u) > 85 for u in urls)  # read from each PNG's size, not a flat guess
    for artifact, tokens in with_images.items():
        if artifact.split(" ")[0] in PLANNING:
            assert pictures < tokens - without[artifact] < pictures + 80  # the images, plus their caption lines
        else:
            assert tokens == without[artifact]  # analysis and coding calls carry no image
    capped = load_figures(tmp_path / "run-True" / "paper", limit=1)
    assert [f.name for f in capped.figures] == ["figures/fig1.png"]
    assert capped.left_out == ("Figure 2 (figures/fig2.png): at most 1 figures are sent",)
    assert "left out: Figure 2 (figures/fig2.png): at most 1 figures are sent" in capped.parts()[0]["text"]
    small = load_figures(tmp_path / "run-True" / "paper", max_bytes=64)
    assert not small.figures and len(small.left_out) == 2
    assert all(note.endswith(": missing, unreadable or over 64 bytes") for note in small.left_out)
    assert "left out: Figure 1 (figures/fig1.png): missing" in small.describe()


@pytest.mark.parametrize(("width", "height", "tokens"), [(40, 20, 255), (1270, 945, 1105), (3000, 500, 765)])
def test_an_image_counts_as_openai_counts_a_high_detail_image(width: int, height: int, tokens: int) -> None:
    """Pure logic: 85 + 170 per 512-pixel tile after fitting 2048 x 2048 and a short side of at most 768."""
    pixmap = pymupdf.Pixmap(pymupdf.csRGB, pymupdf.IRect(0, 0, width, height), False)
    url = "data:image/png;base64," + base64.b64encode(pixmap.tobytes("png")).decode()
    assert image_tokens(url) == tokens
    assert image_tokens("data:image/jpeg;base64," + "A" * 100) == 765  # size unknown: counted as 1024 x 1024


def test_with_figures_a_paper_without_saved_figures_runs_on_its_text_and_says_so(
    server: Any, paper_md: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    assert main(["run", str(paper_md), "--out", str(run), "--figures"]) == 0
    assert all(isinstance(m["content"], str) for r in server.requests for m in r["messages"])
    assert "--figures: no figure images to send" in (run / "logs" / "run.log").read_text()
