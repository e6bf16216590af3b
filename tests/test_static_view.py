"""The walkthrough without a kernel: the static snapshot every widget output carries (text/html, text/plain).

A saved notebook opened on GitHub or in VS Code, or exported with nbconvert, has no widget manager: it shows the
output's text/html. That snapshot must hold the whole walkthrough (plan, diagrams as inline SVG rendered offline,
file list, code, statuses) and load nothing from the network. The example paper's scripted run is the subject.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import DESIGN, settings_for, small_scenario

from p2c_notebook.cli import main
from p2c_notebook.diagrams import plantuml as uml
from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.stages.artifacts import ArchitectureDesign
from p2c_notebook.ui import Walkthrough, walkthrough
from p2c_notebook.ui.render import inline_svg

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "mixup"
SCENARIO = f"scripted:{EXAMPLE / 'scenario.yaml'}"
FILES = ArchitectureDesign.model_validate_json((EXAMPLE / "replies" / "design.json").read_text()).file_list
CHROMIUM = os.environ.get("P2C_CHROMIUM", "/usr/bin/chromium")
# nbconvert's own page template loads these two (its JavaScript loader and MathJax); nothing else may be asked for.
TEMPLATE_URLS = (
    "https://cdnjs.cloudflare.com/ajax/libs/require.js/",
    "https://cdnjs.cloudflare.com/ajax/libs/mathjax/",
)


def require_diagram_tools() -> None:
    try:
        uml.find_java()
        uml.find_jar()
    except uml.DiagramError as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    if shutil.which("dot") is None:
        pytest.skip("Graphviz (dot) is not installed: apt-get install graphviz")


@pytest.fixture(scope="module")
def mixup_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`p2c run examples/mixup/paper.pdf --out RUN --backend scripted:examples/mixup/scenario.yaml`."""
    require_diagram_tools()
    run = tmp_path_factory.mktemp("static") / "mixup"
    assert main(["run", str(EXAMPLE / "paper.pdf"), "--out", str(run), "--backend", SCENARIO]) == 0
    return run


def output_of(page: str) -> str:
    """The walkthrough's own markup in a page (nbconvert wraps it in its template)."""
    start = re.search(r"<div class=[\"']p2c-static[\"']>", page).start()  # type: ignore[union-attr]
    return page[start : page.index("A static snapshot of the walkthrough", start)]


def assert_offline_snapshot(snapshot: str) -> None:
    """Class, sequence and dependency diagrams as inline SVG, every planned file listed, code, statuses; no
    script, event handler or network address anywhere in it."""
    for diagram in ("class-diagram", "sequence-diagram"):
        block = re.search(rf"<div class=[\"']p2c-diagram p2c-diagram-{diagram}[\"']>(.*?)</div></div>", snapshot, re.S)
        assert block and "<svg" in block.group(1) and "</svg>" in block.group(1), diagram
    assert re.search(r"<div class=[\"']p2c-graph[\"']><div class=[\"']p2c-svg[\"']><svg", snapshot)
    tree = re.search(r"<pre class=[\"']p2c-tree[\"']>(.*?)</pre>", snapshot, re.S)
    assert tree and all(Path(f).name in tree.group(1) for f in FILES)
    assert re.search(r"p2c-badge-complete[\"']>(\d+)/\1 files", snapshot) and "p2c-badge-generated" in snapshot
    assert '<span class="nc">Trainer</span>' in snapshot  # trainer.py's code, highlighted
    assert "p2c-stepper" in snapshot and "all artifacts generated" in snapshot
    assert not re.search(r"<script|<[^>]*\son\w+\s*=|<[^>]*javascript:", snapshot, re.I)
    addresses = set(re.findall(r"(?:src|href)\s*=\s*[\"']([^\"']+)", snapshot))
    assert not [a for a in addresses if not a.startswith("#")], addresses
    assert "mermaid" not in re.sub(r"<style>.*?</style>", "", snapshot, flags=re.S).lower()  # no Mermaid to load


def test_the_widget_output_carries_a_static_snapshot_and_a_summary(mixup_run: Path) -> None:
    wt = walkthrough(mixup_run, backend=SCENARIO)
    bundle = wt._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle  # JupyterLab still gets the live widget
    assert_offline_snapshot(bundle["text/html"])
    text = bundle["text/plain"]
    assert "VBox(" not in text and str(mixup_run) in text
    assert "plan done" in text and "code done" in text and "all artifacts generated" in text
    assert (mixup_run / "planning" / "class_diagram.svg").is_file()  # rendered once, kept in the run folder
    alone = wt.static_view()._repr_mimebundle_()
    assert set(alone) == {"text/html", "text/plain"} and "<svg" in alone["text/html"]


def test_the_snapshot_follows_the_run_folder(mixup_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "copy"
    shutil.copytree(mixup_run, run)
    wt = walkthrough(run, backend=SCENARIO)
    config = (run / "planning" / "config.yaml").read_text()
    wt.edit("config", config.replace("learning_rate: 0.1", "learning_rate: 0.05"))
    snapshot = wt._repr_mimebundle_()["text/html"]
    assert "p2c-status-edited" in snapshot and "learning_rate" in snapshot and "0.05" in snapshot
    assert (
        snapshot.count("'p2c-badge p2c-badge-stale'") == 2 * len(FILES) + 1
    )  # analyses, code files and repo/config.yaml
    assert "Re-run stale" in snapshot


def test_inline_svg_keeps_the_drawing_and_drops_what_could_act() -> None:
    hostile = (
        '<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        'width="300px" height="100px" style="width:300px;height:100px;background:#FFF;" viewBox="0 0 300 100">'
        '<defs><filter id="f1"/></defs><script>alert(1)</script><style>body{display:none}</style>'
        '<g onclick="alert(2)" filter="url(#f1)"><rect width="10" height="10" onload="alert(3)"/>'
        '<text x="1" y="9">Trainer &lt;b&gt;</text></g><a xlink:href="javascript:alert(4)"><text>x</text></a>'
        '<foreignObject><div>html</div></foreignObject><image href="http://example.com/x.png"/></svg>'
    )
    shown = inline_svg(hostile, "p2c-test", "A diagram")
    assert "<rect" in shown and "Trainer &lt;b&gt;" in shown and 'aria-label="A diagram"' in shown
    assert not re.search(r"script|onclick|onload|<style|javascript|foreignObject|example\.com", shown, re.I)
    assert 'id="p2c-test-f1"' in shown and 'filter="url(#p2c-test-f1)"' in shown  # ids cannot clash on a page
    assert "width:300px" not in shown and "background:#FFF" in shown  # the page width decides the size
    assert inline_svg("<html><script>x</script></html>", "p", "t") == "" and inline_svg("not xml <", "p", "t") == ""


def test_model_text_stays_text_in_the_static_view(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    """Hostile text in the plan, an analysis and the design's diagram labels: escaped in the snapshot too."""
    require_diagram_tools()
    hostile = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    design = json.loads(json.dumps(DESIGN))
    design["sequence"]["messages"][0]["call"] = f"load() {hostile}"
    design["open_questions"] = [hostile]
    scenario = small_scenario(design=design)
    scenario["responses"][0]["content"] = f"# Plan\n\nStep {hostile} [x](javascript:alert(3))\n"
    scenario["responses"][4]["content"] = f"## data.py\n\n{hostile} `<b>x</b>`"
    server = serve(scenario)
    run = tmp_path / "run"
    with Pipeline.start(paper_md, run, settings=settings_for(server)) as pipeline:
        assert pipeline.run().state == "done"
    snapshot = Walkthrough(Pipeline.open(run, settings=settings_for(server))).static_html()
    assert snapshot.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 3  # plan, analysis, open question
    assert not re.search(r"<script|<img|<[^>]*\son\w+\s*=|<[^>]*javascript:", snapshot, re.I)  # text, not markup
    sequence = re.search(r"p2c-diagram-sequence-diagram'>(.*?)</div></div>", snapshot, re.S)
    assert sequence and "<svg" in sequence.group(1) and "load()" in sequence.group(1)


def executed_notebook(run: Path, tmp_path: Path, store_widget_state: bool) -> Any:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    source = f"from p2c_notebook.ui import walkthrough\nwt = walkthrough({str(run)!r}, backend={SCENARIO!r})\nwt"
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    client = nbclient.NotebookClient(
        notebook, timeout=120, store_widget_state=store_widget_state, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    assert not [o for o in notebook.cells[0].outputs if o["output_type"] == "error"]
    return notebook


def export(notebook: Any, **config: Any) -> str:
    nbconvert = pytest.importorskip("nbconvert")
    from traitlets.config import Config

    page: str = nbconvert.HTMLExporter(config=Config(config)).from_notebook_node(notebook)[0]
    return page


# What `jupyter nbconvert --to html` needs for a notebook that carries widget state (nbclient's and papermill's
# default, or JupyterLab's "Save Widget State Automatically"): without it nbconvert picks the widget view,
# which loads its renderer from the network. JupyterLab's default save carries no widget state.
DROP_WIDGET_STATE = {"ClearMetadataPreprocessor": {"enabled": True, "clear_notebook_metadata": True}}


@pytest.mark.slow
@pytest.mark.parametrize("store_widget_state", [False, True], ids=["as-jupyterlab-saves", "with-widget-state"])
def test_an_nbconvert_export_shows_the_walkthrough_offline(
    mixup_run: Path, tmp_path: Path, store_widget_state: bool
) -> None:
    notebook = executed_notebook(mixup_run, tmp_path, store_widget_state)
    page = export(notebook, **(DROP_WIDGET_STATE if store_widget_state else {}))
    assert_offline_snapshot(output_of(page))
    assert "html-manager" not in page and "unpkg.com" not in page
    assert not re.search(r"<pre[^>]*class=[\"']mermaid", page)  # nbconvert's template loads Mermaid only for these
    scripts = re.findall(r"<script[^>]*\ssrc=[\"']([^\"']+)", page)
    assert all(src.startswith(TEMPLATE_URLS) for src in scripts), scripts


def contrast(first: str, second: str) -> float:
    """WCAG contrast ratio of two CSS rgb()/rgba() colours."""

    def luminance(colour: str) -> float:
        channels = [float(c) / 255 for c in re.findall(r"[\d.]+", colour)[:3]]
        linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    high, low = sorted((luminance(first), luminance(second)), reverse=True)
    return (high + 0.05) / (low + 0.05)


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.parametrize("theme", ["light", "dark"])
def test_the_exported_page_shows_the_diagrams_with_the_network_blocked(
    mixup_run: Path, tmp_path: Path, theme: str
) -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"needs chromium at {CHROMIUM}")
    playwright = pytest.importorskip("playwright.sync_api")
    notebook = executed_notebook(mixup_run, tmp_path, store_widget_state=False)
    page_file = tmp_path / f"walkthrough-{theme}.html"
    page_file.write_text(export(notebook, HTMLExporter={"theme": theme}), encoding="utf-8")
    asked: list[str] = []
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})

            def offline(route: Any) -> None:
                """The network is blocked: only the page's own file loads; every other request is noted."""
                if route.request.url.startswith("file:"):
                    route.continue_()
                else:
                    asked.append(route.request.url)
                    route.abort()

            page.route("**/*", offline)
            page.goto(page_file.as_uri())
            for name in ("class-diagram", "sequence-diagram"):
                svg = page.locator(f".p2c-diagram-{name} svg")
                playwright.expect(svg).to_be_visible()
                box = svg.bounding_box()
                assert box and box["height"] > 100 and box["width"] <= 1280, (name, box)
                assert svg.locator("text").count() > 5  # the drawing itself, not an empty frame
            playwright.expect(page.locator(".p2c-panel-repo .p2c-tree")).to_contain_text("trainer.py")
            assert page.evaluate("() => document.documentElement.scrollWidth <= innerWidth")  # no sideways scroll
            code = page.locator(".p2c-panel-config .p2c-highlight")
            colours = code.evaluate("e => [getComputedStyle(e).color, getComputedStyle(e).backgroundColor]")
            page.screenshot(path=str(tmp_path / f"static-{theme}.png"))
        finally:
            browser.close()
    assert contrast(*colours) >= 4.5, (theme, colours)
    assert all(url.startswith(TEMPLATE_URLS) for url in asked), asked
