"""The walkthrough widget in a real browser: JupyterLab, driven by Playwright in Debian's chromium.

A person's path through the widget, click by click: open the notebook, run it, then "Run next stage" and
"Approve" for every stage until the repository is complete; edit config.yaml in its panel and see the analysis and
code go stale; the Mermaid class and sequence diagrams are rendered by JupyterLab. A second notebook, whose
scripted model answers with HTML and script tags, shows that model text stays text. Then what a workshop does to a
notebook: restart the kernel and re-attach to the same run folder; save, shut down, re-open (the static snapshot,
not "model not found"); click through in the widget and then run all cells (no traceback); a student's own edit of
config.yaml replayed from a cassette (the explanation) and with a live fallback (it works); the dark theme.

Screenshots of each milestone go to test-artifacts/browser/. Needs JupyterLab, Playwright (the Python package;
no downloaded browser) and /usr/bin/chromium: skipped without them, except under CI, where that is a failure.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "mixup"
NOTEBOOK = ROOT / "tests" / "browser" / "walkthrough.ipynb"
SHOTS = ROOT / "test-artifacts" / "browser"
CHROMIUM = os.environ.get("P2C_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
INSTALL = "bash scripts/system-deps.sh && pip install -e '.[test]'"
FILES = json.loads((EXAMPLE / "replies" / "design.json").read_text(encoding="utf-8"))["file_list"]
PLANNING = ["plan", "design", "logic", "config"]
HOSTILE = '<script>window.__p2c_xss=1</script><img src=x onerror="window.__p2c_xss=2">'
WAIT_MS = 30_000  # a whole stage (7 files) takes well under a second with the scripted server


def slug(artifact: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "-", artifact).strip("-")


def require_tools() -> None:
    """Skip without a browser stack; under CI (env CI set) a missing piece is a failure, with the fix."""
    missing = []
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"chromium ({CHROMIUM})")
    for module in ("playwright", "jupyterlab"):
        if importlib.util.find_spec(module) is None:
            missing.append(f"the Python package {module}")
    if missing:
        message = f"The browser test needs {', '.join(missing)}: install with `{INSTALL}`."
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


# --- JupyterLab ------------------------------------------------------------------------------------------
@dataclass
class Lab:
    url: str
    token: str
    root: Path
    tmp: Path
    log: Path
    news_answered: bool = False  # JupyterLab asks once per settings folder

    def notebook_url(self, path: str) -> str:
        return f"{self.url}/lab/tree/{path}?reset&token={self.token}"  # reset: no tabs restored from before

    def log_tail(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-3000:]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def lab_root(base: Path) -> Path:
    """What JupyterLab serves: the example paper, the test notebook, and a copy of it next to a hostile scenario."""
    root = base / "root"
    shutil.copytree(EXAMPLE, root / "examples" / "mixup")
    (root / "browser").mkdir()
    shutil.copy(NOTEBOOK, root / "browser" / NOTEBOOK.name)
    (root / "hostile").mkdir()
    shutil.copy(NOTEBOOK, root / "hostile" / NOTEBOOK.name)
    scenario = yaml.safe_load((EXAMPLE / "scenario.yaml").read_text(encoding="utf-8"))
    for rule in scenario["responses"]:
        if "content_file" in rule:
            rule["content_file"] = str(root / "examples" / "mixup" / rule["content_file"])
        if rule["stage"] == "plan":
            rule.pop("content_file", None)
            rule["content"] = f"# Plan\n\nStep one {HOSTILE} and then the rest.\n"
    (root / "hostile" / "scenario.yaml").write_text(yaml.safe_dump(scenario, sort_keys=False), encoding="utf-8")
    return root


def lab_environment(base: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "P2C_", "JUPYTER"))}
    dirs = {
        "JUPYTER_CONFIG_DIR": "config",
        "JUPYTER_RUNTIME_DIR": "runtime",
        "JUPYTER_DATA_DIR": "data",
        "JUPYTERLAB_WORKSPACES_DIR": "workspaces",
        "JUPYTERLAB_SETTINGS_DIR": "settings",
        "IPYTHONDIR": "ipython",
        "TMPDIR": "tmp",
    }
    for name, folder in dirs.items():
        (base / folder).mkdir(exist_ok=True)
        env[name] = str(base / folder)
    # Every cell attached to the page (no virtual scrolling), so every panel can be found and clicked.
    tracker = base / "settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text(json.dumps({"windowingMode": "none"}), encoding="utf-8")
    env["P2C_CONFIG"] = str(base / "no-p2c-config.yaml")
    return env


def wait_until_ready(lab: Lab, process: subprocess.Popen[bytes], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"JupyterLab exited with {process.returncode}:\n{lab.log_tail()}")
        status = f"{lab.url}/api/status?token={lab.token}"
        with contextlib.suppress(OSError, urllib.error.URLError), urllib.request.urlopen(status, timeout=2) as reply:
            if reply.status == 200:
                return
        time.sleep(0.25)
    pytest.fail(f"JupyterLab was not ready after {seconds} s:\n{lab.log_tail()}")


def stop(process: subprocess.Popen[bytes]) -> None:
    """End JupyterLab's process group: SIGTERM first (it shuts its kernels down), SIGKILL if it lingers.

    Kernels run in sessions of their own, and exit by themselves once their parent server is gone."""
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    require_tools()
    base = tmp_path_factory.mktemp("lab")
    root = lab_root(base)
    env = lab_environment(base)
    port, token = free_port(), secrets.token_hex(16)
    log = base / "jupyterlab.log"
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--allow-root",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--port-retries=0",
        f"--ServerApp.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command,
            cwd=root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        instance = Lab(f"http://127.0.0.1:{port}", token, root, Path(env["TMPDIR"]), log)
        wait_until_ready(instance, process)
        yield instance
    finally:
        stop(process)


# --- the browser -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser(lab: Lab) -> Iterator[Any]:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright, tempfile.TemporaryDirectory(prefix="p2c-chromium-") as profile:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000},
        )
        context.set_default_timeout(WAIT_MS)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh tab in the shared browser."""
    page = browser.new_page()
    try:
        yield page
    finally:
        page.close()


@contextlib.contextmanager
def shot_on_failure(page: Any, name: str) -> Iterator[None]:
    """When the test fails, a screenshot of where it stood: test-artifacts/browser/failure-NAME.png."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            page.screenshot(path=str(SHOTS / f"failure-{name}.png"))
        raise


def shoot(page: Any, name: str, target: Any | None = None) -> None:
    dismiss_news(page, wait_ms=0)
    if target is not None:
        target.scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def dismiss_news(page: Any, wait_ms: int) -> bool:
    """JupyterLab asks once whether to fetch Jupyter news; answer No so the toast covers nothing."""
    button = page.locator(".jp-toast-button", has_text=re.compile(r"^No$"))
    with contextlib.suppress(Exception):
        if wait_ms:
            button.wait_for(state="visible", timeout=wait_ms)
        if button.is_visible():
            button.click()
            return True
    return False


def open_and_run(page: Any, lab: Lab, path: str) -> Any:
    """Open a notebook, run all its cells from the Run menu, and return the walkthrough widget."""
    from playwright.sync_api import expect

    page.goto(lab.notebook_url(path))
    notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
    expect(notebook.locator(".jp-Cell").first).to_be_visible()
    # The indicator says idle before any kernel is attached ("No Kernel"): wait for the kernel itself.
    expect(notebook.locator(".jp-Toolbar-kernelName")).to_contain_text("Python 3")
    expect(notebook.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")).to_be_attached()
    if not lab.news_answered:
        lab.news_answered = dismiss_news(page, wait_ms=10_000)
    if page.locator("#jp-left-stack").is_visible():
        page.keyboard.press("Control+b")  # hide the file browser: more room for the widget
    notebook.locator(".jp-Cell").first.click()  # make this notebook the current one for the Run menu
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    widget = notebook.locator(".p2c-walkthrough")
    try:
        expect(widget).to_be_visible()
    except AssertionError:
        outputs = notebook.locator(".jp-OutputArea-output").all_inner_texts()
        pytest.fail(f"The walkthrough did not appear. Outputs: {outputs}\nJupyterLab log:\n{lab.log_tail()}")
    return widget


def manifest(lab: Lab, folder: str = "browser") -> dict[str, str]:
    """Statuses in the run folder the kernel made (runs/mixup beside the notebook in `folder`)."""
    data = json.loads((lab.root / folder / "runs" / "mixup" / "manifest.json").read_text(encoding="utf-8"))
    return {name: entry["status"] for name, entry in data["artifacts"].items()}


def notebook_in(lab: Lab, folder: str, settings: dict[str, Any] | None = None, cells: tuple[str, ...] = ()) -> str:
    """A copy of the test notebook in a folder of its own (its own run folder), with a settings.json and more
    cells when asked; returns its path for `open_and_run`."""
    nbformat: Any = pytest.importorskip("nbformat")
    where = lab.root / folder
    where.mkdir()
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    notebook.cells += [nbformat.v4.new_code_cell(source) for source in cells]
    for index, cell in enumerate(notebook.cells):
        cell.id = f"{folder}-{index}"
    nbformat.write(notebook, where / NOTEBOOK.name)
    if settings is not None:
        (where / "settings.json").write_text(json.dumps(settings), encoding="utf-8")
    return f"{folder}/{NOTEBOOK.name}"


def click_through_with_auto_approve(widget: Any) -> None:
    """Tick Auto-approve and click Run next stage until the repository is complete."""
    from playwright.sync_api import expect

    widget.locator(".p2c-auto-approve input").check()
    for _ in range(8):
        if "all artifacts generated" in widget.locator(".p2c-next").inner_text():
            break
        done = widget.locator(".p2c-stepper .p2c-step-done")
        before = done.count()
        run_next = widget.locator(".p2c-run-next")
        expect(run_next).to_be_enabled()
        run_next.click()
        expect(done).not_to_have_count(before)  # the stage is generated (and approved)
    expect(widget.locator(".p2c-next")).to_contain_text("all artifacts generated")


def edit_config(widget: Any, old: str, new: str) -> None:
    """Edit config.yaml in its panel, in one's own words, and save it."""
    from playwright.sync_api import expect

    config = widget.locator(".p2c-panel-config")
    config.locator(".p2c-edit").click()
    editor = config.locator(".p2c-editor textarea")
    expect(editor).to_be_visible()
    assert old in editor.input_value()
    editor.fill(editor.input_value().replace(old, new))
    config.locator(".p2c-save").click()
    expect(config).to_have_class(re.compile(r"\bp2c-status-edited\b"))


def kernel_menu(page: Any, item: str) -> None:
    """Kernel menu > `item`, accepting the dialog that asks to confirm."""
    page.get_by_role("menuitem", name="Kernel", exact=True).click()
    page.get_by_role("menuitem", name=re.compile(rf"^{re.escape(item)}")).first.click()
    accept = page.locator(".jp-Dialog .jp-mod-accept")
    with contextlib.suppress(Exception):
        accept.wait_for(state="visible", timeout=3000)
        accept.click()


def wait_idle(notebook: Any) -> None:
    from playwright.sync_api import expect

    expect(notebook.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")).to_be_attached()


def output_text(notebook: Any) -> str:
    """The text of the outputs a person sees (hidden ones, such as a live widget's snapshot, left out)."""
    texts: list[str] = notebook.evaluate(
        "n => [...n.querySelectorAll('.jp-OutputArea-output')].filter(e => e.checkVisibility()).map(e => e.innerText)"
    )
    return "\n".join(texts)


def contrast(first: list[float], second: list[float]) -> float:
    """WCAG contrast ratio of two sRGB colours (0-255 channels)."""

    def luminance(colour: list[float]) -> float:
        linear = [c / 255 / 12.92 if c / 255 <= 0.03928 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in colour[:3]]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    high, low = sorted((luminance(first), luminance(second)), reverse=True)
    return (high + 0.05) / (low + 0.05)


# The colour a text is drawn in and the colour behind it: the element's own background composited over its
# ancestors' (a translucent code background over a dark page is dark).
COLOURS_JS = """e => {
    const parse = c => (c.match(/[\\d.]+/g) || []).map(Number);
    const layers = [];
    for (let n = e; n; n = n.parentElement) layers.push(parse(getComputedStyle(n).backgroundColor));
    let bg = [255, 255, 255];
    for (const l of layers.reverse()) {
        const a = l.length > 3 ? l[3] : 1;
        bg = bg.map((c, i) => a * l[i] + (1 - a) * c);
    }
    return [parse(getComputedStyle(e).color), bg];
}"""


# --- the tests -------------------------------------------------------------------------------------------
def test_click_through_every_stage_then_edit_the_config(page: Any, lab: Lab) -> None:
    with shot_on_failure(page, "click-through"):
        click_through(page, lab)


def test_model_text_with_markup_stays_text(page: Any, lab: Lab) -> None:
    with shot_on_failure(page, "hostile"):
        hostile_plan(page, lab)


def click_through(page: Any, lab: Lab) -> None:
    from playwright.sync_api import expect

    started = time.monotonic()
    widget = open_and_run(page, lab, "browser/walkthrough.ipynb")
    expect(widget.locator(".p2c-auto-approve input")).not_to_be_checked()
    shoot(page, "01-opened", widget)

    def panel(artifact: str) -> Any:
        return widget.locator(f".p2c-panel-{slug(artifact)}")

    def run_next_stage(expected: list[str]) -> None:
        widget.locator(".p2c-run-next").click()
        for artifact in expected:
            expect(panel(artifact)).to_have_class(re.compile(r"\bp2c-status-generated\b"))
            expect(panel(artifact).locator(".p2c-status")).to_have_text("generated")

    def approve(artifact: str) -> None:
        panel(artifact).locator(".p2c-approve").click()
        expect(panel(artifact)).to_have_class(re.compile(r"\bp2c-status-approved\b"))
        expect(panel(artifact).locator(".p2c-badge-approved")).to_be_visible()

    for artifact in PLANNING:
        run_next_stage([artifact])
        if artifact == "plan":
            shoot(page, "02-plan-generated", panel("plan"))
        approve(artifact)
    expect(widget.locator(".p2c-next")).to_contain_text("analysis")
    shoot(page, "03-planning-approved", panel("design"))

    analysis = [f"analysis/{f}" for f in FILES]
    run_next_stage(analysis)
    for artifact in analysis:
        approve(artifact)
    shoot(page, "04-analysis-approved", panel("analysis/main.py"))

    code = [f"code/{f}" for f in FILES]
    run_next_stage(code)
    repo = widget.locator(".p2c-panel-repo")
    tracked = len(FILES) + 1  # repo/config.yaml, the planning config's copy, is tracked like every file in repo/
    expect(repo.locator(".p2c-badge-complete")).to_have_text(f"{tracked}/{tracked} files")
    expect(repo.locator(".p2c-repo-tree")).to_contain_text("trainer.py")
    expect(widget.locator(".p2c-next")).to_contain_text("all artifacts generated")
    expect(panel("code/trainer.py").locator(".p2c-content")).to_contain_text("class Trainer")
    shoot(page, "05-repository-complete", repo)

    # The diagrams: JupyterLab's own Mermaid renderer turned both into SVG images, shown at full size.
    rendered = {}
    for name in ("class-diagram", "sequence-diagram"):
        view = panel("design").locator(f".p2c-diagram-{name}")
        images = view.locator(".jp-RenderedMermaid img[src^='data:image/svg+xml']")
        expect(images.first).to_be_visible()
        rendered[name] = images.count()
        box, image = view.bounding_box(), images.first.bounding_box()
        assert box and image and image["height"] > 100 and box["height"] > image["height"], (name, box, image)
    assert sum(rendered.values()) >= 2, rendered
    shoot(page, "06-class-diagram", panel("design").locator(".p2c-diagram-class-diagram .jp-RenderedMermaid"))
    shoot(page, "07-sequence-diagram", panel("design").locator(".p2c-diagram-sequence-diagram .jp-RenderedMermaid"))

    # Layout at 1280x800: the design panel is no inner scroll box (its diagrams are part of the page), nothing but
    # code scrolls sideways, the toolbar is one row, and its buttons stay put when "Re-run stale" appears.
    page.set_viewport_size({"width": 1280, "height": 800})
    content = panel("design").locator(".p2c-content")
    assert content.evaluate("e => e.scrollHeight <= e.clientHeight + 1"), "the design panel scrolls inside"
    sideways = widget.evaluate(
        """root => [...root.querySelectorAll('*')]
            .filter(e => ['auto', 'scroll'].includes(getComputedStyle(e).overflowX))
            .filter(e => e.scrollWidth > e.clientWidth + 1 && !e.closest('pre, .jp-RenderedMermaid'))
            .map(e => e.className)"""
    )
    assert sideways == [], sideways
    toolbar, run_button = widget.locator(".p2c-toolbar"), widget.locator(".p2c-run-next")
    toolbar_box, run_box = toolbar.bounding_box(), run_button.bounding_box()
    assert toolbar_box and run_box and toolbar_box["height"] < 1.8 * run_box["height"], (toolbar_box, run_box)
    buttons_before = [widget.locator(c).bounding_box() for c in (".p2c-run-next", ".p2c-cancel-run", ".p2c-refresh")]
    expect(widget.locator(".p2c-stepper .p2c-step-code")).to_contain_text("done")

    # Edit config.yaml in its panel: a different learning rate.
    config = panel("config")
    config.locator(".p2c-edit").click()
    editor = config.locator(".p2c-editor textarea")
    expect(editor).to_be_visible()
    original = editor.input_value()
    assert "learning_rate: 0.1\n" in original, original
    editor.fill(original.replace("learning_rate: 0.1\n", "learning_rate: 0.05\n"))
    shoot(page, "08-editing-config", config)
    config.locator(".p2c-save").click()
    expect(config).to_have_class(re.compile(r"\bp2c-status-edited\b"))
    expect(config.locator(".p2c-content")).to_contain_text("learning_rate: 0.05")
    expect(config.locator(".p2c-message")).to_contain_text("Now stale")
    for stage, count in (("analysis", len(FILES)), ("code", tracked)):
        expect(widget.locator(f".p2c-stage-{stage} .p2c-badge-stale")).to_have_count(count)
    for artifact in PLANNING[:3]:
        expect(panel(artifact).locator(".p2c-badge-approved")).to_be_visible()
    expect(widget.locator(".p2c-rerun-stale")).to_be_visible()
    buttons_after = [widget.locator(c).bounding_box() for c in (".p2c-run-next", ".p2c-cancel-run", ".p2c-refresh")]
    assert [b and b["x"] for b in buttons_after] == [b and b["x"] for b in buttons_before]
    expect(widget.locator(".p2c-stepper .p2c-step-current")).to_contain_text("analysis")
    expect(widget.locator(".p2c-next")).to_contain_text("Re-run stale")
    shoot(page, "09-config-edited-stale", panel("analysis/utils/__init__.py"))

    status = manifest(lab)
    assert status["config"] == "edited"
    assert {a for a, s in status.items() if s == "stale"} == {*analysis, *code, "code/config.yaml"}
    elapsed = time.monotonic() - started
    assert elapsed < 150, f"the click-through took {elapsed:.0f} s"


def hostile_plan(page: Any, lab: Lab) -> None:
    from playwright.sync_api import expect

    widget = open_and_run(page, lab, "hostile/walkthrough.ipynb")
    widget.locator(".p2c-run-next").click()
    plan = widget.locator(".p2c-panel-plan")
    expect(plan.locator(".p2c-status")).to_have_text("generated")
    expect(widget.locator(".p2c-stream")).to_contain_text(HOSTILE)  # the streamed reply, verbatim
    # The rendered Markdown shows the tags as text (CommonMark: `__` inside a word is not emphasis).
    expect(plan.locator(".p2c-content")).to_contain_text(HOSTILE)
    page.wait_for_timeout(500)  # an injected <img> would have failed to load and fired onerror by now
    assert widget.locator("script").count() == 0
    assert widget.locator("img[src='x']").count() == 0
    assert page.evaluate("() => typeof window.__p2c_xss") == "undefined"
    shoot(page, "10-hostile-plan-as-text", plan)


# --- a workshop's notebook: restarts, re-opening, cells after clicks, a student's own words, the dark theme ---
@pytest.fixture(scope="module")
def cassette(lab: Lab) -> Path:
    """The example's scripted run recorded as a cassette: the notebook's own text, as the workshop ships it."""
    from p2c_notebook.cli import main

    where = lab.root / "cassette"
    recording = where / "mixup.cassette.jsonl"
    scenario = f"scripted:{lab.root / 'examples' / 'mixup' / 'scenario.yaml'}"
    paper = lab.root / "examples" / "mixup" / "paper.pdf"
    command = ["run", str(paper), "--out", str(where / "run"), "--backend", scenario, "--record", str(recording)]
    assert main(command) == 0
    return recording


def test_a_restarted_kernel_reattaches_to_the_same_run_folder(page: Any, lab: Lab) -> None:
    from playwright.sync_api import expect

    with shot_on_failure(page, "restart"):
        path = notebook_in(lab, "restart")
        widget = open_and_run(page, lab, path)
        widget.locator(".p2c-run-next").click()
        plan = widget.locator(".p2c-panel-plan")
        expect(plan.locator(".p2c-status")).to_have_text("generated")
        plan.locator(".p2c-approve").click()
        expect(plan).to_have_class(re.compile(r"\bp2c-status-approved\b"))
        before = manifest(lab, "restart")
        assert before["plan"] == "approved"

        notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
        kernel_menu(page, "Restart Kernel")
        wait_idle(notebook)
        notebook.locator(".jp-Cell").first.click()
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        widget = notebook.locator(".p2c-walkthrough")
        expect(widget).to_have_count(1)
        plan = widget.locator(".p2c-panel-plan")
        expect(plan.locator(".p2c-status")).to_have_text("approved")  # the same run folder, as it was
        expect(widget.locator(".p2c-stepper .p2c-step-current")).to_have_class(re.compile(r"\bp2c-step-design\b"))
        assert manifest(lab, "restart") == before
        expect(notebook.locator(".p2c-fallback")).to_be_hidden()  # the live widget hides its snapshot
        # The new widget's buttons work: the next stage runs in the same folder.
        widget.locator(".p2c-run-next").click()
        expect(widget.locator(".p2c-panel-design .p2c-status")).to_have_text("generated")
        assert manifest(lab, "restart")["design"] == "generated" and manifest(lab, "restart")["plan"] == "approved"
        assert not list((lab.root / "restart").glob("runs/*/runs"))  # one run folder, nothing nested
        shoot(page, "11-restarted-and-reattached", widget)


def test_a_saved_notebook_reopened_without_its_kernel_shows_the_snapshot(page: Any, browser: Any, lab: Lab) -> None:
    from playwright.sync_api import expect

    with shot_on_failure(page, "reopen"):
        path = notebook_in(lab, "reopen")
        widget = open_and_run(page, lab, path)
        widget.locator(".p2c-run-next").click()
        expect(widget.locator(".p2c-panel-plan .p2c-status")).to_have_text("generated")
        notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
        expect(notebook.locator(".p2c-fallback")).to_be_hidden()
        notebook.locator(".jp-Cell").first.click()
        page.keyboard.press("Control+s")
        expect(page.locator(".jp-mod-dirty")).to_have_count(0)
        saved = json.loads((lab.root / path).read_text(encoding="utf-8"))
        shown = [o for c in saved["cells"] for o in c.get("outputs", []) if "text/html" in o.get("data", {})]
        assert any("p2c-fallback" in "".join(o["data"]["text/html"]) for o in shown)
        kernel_menu(page, "Shut Down Kernel")
        expect(notebook.locator(".jp-Toolbar-kernelName")).to_contain_text("No Kernel")

    again = browser.new_page()
    try:
        with shot_on_failure(again, "reopened"):
            again.goto(lab.notebook_url(path))
            notebook = again.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
            expect(notebook.locator(".jp-Cell").first).to_be_visible()
            expect(notebook.locator(".jp-Toolbar-kernelName")).to_contain_text("Python 3")
            wait_idle(notebook)
            # JupyterLab's widget renderer gives up once the new kernel has no such model: its error is there...
            error = notebook.locator(".jp-OutputArea-output.jupyter-widgets")
            expect(error).to_have_count(1)
            expect(error).to_contain_text("model not found")
            # ... but hidden, and the snapshot of the run is shown instead.
            expect(error).to_be_hidden()
            snapshot = notebook.locator(".p2c-fallback .p2c-static")
            expect(snapshot).to_be_visible()
            expect(snapshot.locator(".p2c-stepper")).to_be_visible()
            expect(snapshot.locator(".p2c-header")).to_contain_text("run folder mixup")
            assert notebook.locator(".p2c-walkthrough").count() == 0
            shoot(again, "12-reopened-static-snapshot", snapshot)
            # Running the cells again gives the live widget over the same run folder, as it is on disk.
            notebook.locator(".jp-Cell").first.click()
            again.get_by_role("menuitem", name="Run", exact=True).click()
            again.get_by_role("menuitem", name="Run All Cells", exact=True).click()
            widget = notebook.locator(".p2c-walkthrough")
            expect(widget.locator(".p2c-panel-plan .p2c-status")).to_have_text("generated")
            expect(notebook.locator(".p2c-fallback")).to_be_hidden()
            widget.locator(".p2c-panel-plan .p2c-approve").click()  # its buttons work
            expect(widget.locator(".p2c-panel-plan .p2c-status")).to_have_text("approved")
            assert manifest(lab, "reopen")["plan"] == "approved"
    finally:
        again.close()


def test_running_all_cells_after_the_steps_in_the_widget_reports_them_done(page: Any, lab: Lab) -> None:
    from playwright.sync_api import expect

    cells = (
        'w.run(until="config", block=True)\nassert w.last_error is None, w.last_error\nprint(w.last_result.message)',
        'stale = w.edit("config", w.read("config").replace("learning_rate: 0.1\\n", "learning_rate: 0.05\\n"))\n'
        'print(f"{len(stale)} newly stale")',
        "w.rerun_stale(block=True)\nassert w.last_error is None, w.last_error\nprint(w.last_result.message)",
        "w.run(block=True)\nassert w.last_error is None, w.last_error\nprint(w.last_result.message)",
    )
    with shot_on_failure(page, "cells-after-clicks"):
        path = notebook_in(lab, "cells", cells=cells)
        page.goto(lab.notebook_url(path))
        notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
        expect(notebook.locator(".jp-Toolbar-kernelName")).to_contain_text("Python 3")
        wait_idle(notebook)
        dismiss_news(page, wait_ms=0)
        notebook.locator(".jp-Cell").first.click()
        for _ in range(3):  # the heading, the set-up and the widget: the exercise's cells wait
            page.keyboard.press("Shift+Enter")
        widget = notebook.locator(".p2c-walkthrough")
        expect(widget).to_be_visible()
        click_through_with_auto_approve(widget)
        edit_config(widget, "learning_rate: 0.1\n", "learning_rate: 0.05\n")
        widget.locator(".p2c-rerun-stale").click()
        expect(widget.locator(".p2c-badge-stale")).to_have_count(0)
        expect(widget.locator(".p2c-next")).to_contain_text("all artifacts generated")
        before = manifest(lab, "cells")

        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        expect(notebook.locator(".jp-OutputArea-output").last).to_contain_text("Already done")
        wait_idle(notebook)
        text = output_text(notebook)
        assert "Traceback" not in text and "AssertionError" not in text and "p2c: error" not in text, text
        assert "already done" in text.lower() and "0 newly stale" in text and "Nothing is stale" in text, text
        assert manifest(lab, "cells") == before
        shoot(page, "13-cells-after-clicks", notebook.locator(".jp-Cell").last)


def test_a_students_own_config_edit_with_the_cassette_only_explains_itself(page: Any, lab: Lab, cassette: Path) -> None:
    from playwright.sync_api import expect

    with shot_on_failure(page, "student-replay"):
        widget = open_and_run(page, lab, notebook_in(lab, "student-replay", {"backend": f"replay:{cassette}"}))
        click_through_with_auto_approve(widget)
        edit_config(widget, "learning_rate: 0.1\n", "learning_rate: 0.2  # my own choice\n")
        widget.locator(".p2c-rerun-stale").click()
        status = widget.locator(".p2c-status-line")
        expect(status.locator(".p2c-error")).to_contain_text("own text was recorded")
        shown = status.inner_text()
        assert "replay_fallback" in shown and "live model" in shown and "Traceback" not in shown, shown
        assert "stale" in manifest(lab, "student-replay").values()  # nothing was made up
        shoot(page, "14-student-edit-cassette-only", status)


def test_a_students_own_config_edit_goes_to_the_live_fallback(page: Any, lab: Lab, cassette: Path) -> None:
    from playwright.sync_api import expect

    scenario = f"scripted:{lab.root / 'examples' / 'mixup' / 'scenario.yaml'}"
    settings = {"backend": f"replay:{cassette}", "replay_fallback": scenario}
    with shot_on_failure(page, "student-fallback"):
        widget = open_and_run(page, lab, notebook_in(lab, "student-fallback", settings))
        click_through_with_auto_approve(widget)
        edit_config(widget, "learning_rate: 0.1\n", "learning_rate: 0.2  # my own choice\n")
        widget.locator(".p2c-rerun-stale").click()
        expect(widget.locator(".p2c-badge-stale")).to_have_count(0)
        expect(widget.locator(".p2c-status-line .p2c-error")).to_have_count(0)
        status = manifest(lab, "student-fallback")
        assert status["config"] == "edited" and "stale" not in status.values(), status
        shoot(page, "15-student-edit-live-fallback", widget.locator(".p2c-status-line"))


def choose_theme(page: Any, theme: str) -> None:
    """Settings > Theme > `theme`."""
    page.get_by_role("menuitem", name="Settings", exact=True).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Theme$")).hover()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(rf"^{re.escape(theme)}$")).click()


def test_code_text_is_readable_in_the_dark_theme(page: Any, lab: Lab) -> None:
    from playwright.sync_api import expect

    with shot_on_failure(page, "dark"):
        widget = open_and_run(page, lab, notebook_in(lab, "dark"))
        click_through_with_auto_approve(widget)
        choose_theme(page, "JupyterLab Dark")
        try:
            expect(page.locator("body[data-jp-theme-light='false']")).to_be_attached()
            page.wait_for_timeout(500)  # the theme's style sheet applied
            code = widget.locator(".p2c-panel-config .p2c-highlight pre").first
            code.scroll_into_view_if_needed()
            fg, bg = code.evaluate(COLOURS_JS)
            assert sum(bg[:3]) / 3 < 100, bg  # the code block is dark in the dark theme
            assert contrast(fg, bg) >= 4.5, (fg, bg)
            tokens = widget.locator(".p2c-highlight span[class]")
            for index in range(min(tokens.count(), 60)):
                colour, behind = tokens.nth(index).evaluate(COLOURS_JS)
                assert contrast(colour, behind) >= 3, (tokens.nth(index).get_attribute("class"), colour, behind)
            shoot(page, "16-dark-theme-code", widget.locator(".p2c-panel-config"))
        finally:
            choose_theme(page, "JupyterLab Light")


# --- compare with an earlier version, and the open-questions queue ---------------------------------------------
MIXUP_REPLY = EXAMPLE / "replies" / "code" / "mixup.py.md"
OLD_LINE = "alpha <= 0 disables mixing (plain empirical risk minimisation)."
NEW_LINE = "alpha <= 0 turns mixing off: plain ERM, the baseline of Table 2."


def regenerating_scenario(lab: Lab, folder: str) -> None:
    """scenario.yaml beside the notebook in `folder`: the example's replies, except that code/mixup.py answers a
    second request (Regenerate) with one line reworded and a comment of markup added."""
    first = MIXUP_REPLY.read_text(encoding="utf-8")
    assert OLD_LINE in first and "import numpy as np\n" in first
    second = first.replace(OLD_LINE, NEW_LINE).replace("import numpy as np\n", f"import numpy as np\n\n# {HOSTILE}\n")
    scenario = yaml.safe_load((EXAMPLE / "scenario.yaml").read_text(encoding="utf-8"))
    for rule in scenario["responses"]:
        if "content_file" in rule:
            rule["content_file"] = str(lab.root / "examples" / "mixup" / rule["content_file"])
        if rule["stage"] == "code" and rule.get("file") == "mixup.py":
            rule.pop("content_file")
            rule["replies"] = [first, second]
    (lab.root / folder / "scenario.yaml").write_text(yaml.safe_dump(scenario, sort_keys=False), encoding="utf-8")


def test_a_regenerated_file_compares_with_its_earlier_version(page: Any, lab: Lab) -> None:
    from playwright.sync_api import expect

    with shot_on_failure(page, "diff"):
        path = notebook_in(lab, "diff")
        regenerating_scenario(lab, "diff")
        widget = open_and_run(page, lab, path)
        click_through_with_auto_approve(widget)
        mixup = widget.locator(f".p2c-panel-{slug('code/mixup.py')}")
        expect(mixup.locator(".p2c-compare")).to_have_count(0)  # nothing earlier to compare with yet
        mixup.locator(".p2c-regenerate").click()
        expect(mixup.locator(".p2c-content")).to_contain_text(NEW_LINE)
        choice = mixup.locator(".p2c-compare-choice select")
        expect(choice).to_be_visible()
        labels: list[str] = choice.locator("option").all_inner_texts()
        earlier = [label for label in labels if label.replace("\xa0", " ").startswith("version 1 ")]  # nbsp
        assert len(earlier) == 1, labels
        choice.select_option(label=earlier[0])

        diff = mixup.locator(".p2c-diff")
        expect(diff.locator(".p2c-diff-del")).to_have_text(f"-    {OLD_LINE}")
        expect(diff.locator(".p2c-diff-add", has_text=NEW_LINE)).to_have_text(f"+    {NEW_LINE}")
        # The model's markup is shown as text in the diff: no element made from it, no script run.
        expect(diff.locator(".p2c-diff-add", has_text="<script>")).to_have_text(f"+# {HOSTILE}")
        page.wait_for_timeout(500)  # an injected <img> would have failed to load and fired onerror by now
        assert widget.locator("script").count() == 0 and widget.locator("img[src='x']").count() == 0
        assert page.evaluate("() => typeof window.__p2c_xss") == "undefined"
        # One row per diff line: the lines follow each other with no blank line between them.
        rows = [diff.locator("span").nth(i).bounding_box() for i in range(3)]
        assert all(rows) and all(abs(b["y"] - a["y"] - a["height"]) < 1 for a, b in pairwise(rows)), rows
        shoot(page, "17-diff-with-earlier-version", mixup.locator(".p2c-compare"))

        added, removed = diff.locator(".p2c-diff-add").first, diff.locator(".p2c-diff-del")
        for line in (added, removed):
            fg, bg = line.evaluate(COLOURS_JS)
            assert contrast(fg, bg) >= 4.5, ("light", line.get_attribute("class"), fg, bg)
        choose_theme(page, "JupyterLab Dark")
        try:
            expect(page.locator("body[data-jp-theme-light='false']")).to_be_attached()
            page.wait_for_timeout(500)  # the theme's style sheet applied
            for line in (added, removed):
                fg, bg = line.evaluate(COLOURS_JS)
                assert sum(bg[:3]) / 3 < 100, ("dark", line.get_attribute("class"), bg)  # a dark row, not a light one
                assert contrast(fg, bg) >= 4.5, ("dark", line.get_attribute("class"), fg, bg)
            shoot(page, "18-diff-dark-theme", mixup.locator(".p2c-compare"))
        finally:
            choose_theme(page, "JupyterLab Light")


def test_answering_an_open_question_makes_the_analysis_and_code_stale(page: Any, lab: Lab) -> None:
    from playwright.sync_api import expect

    answer = "Use the bin edges (m/M, (m+1)/M] as written; a confidence of 0 goes into the first bin."
    with shot_on_failure(page, "questions"):
        widget = open_and_run(page, lab, notebook_in(lab, "questions"))
        click_through_with_auto_approve(widget)
        before = manifest(lab, "questions")
        queue = widget.locator(".p2c-questions")
        expect(queue).to_be_visible()
        rows = queue.locator(".p2c-question")
        total = rows.count()
        assert total >= 2, queue.inner_text()  # the example's design and logic design ask several
        expect(queue.locator(".p2c-panel-head")).to_contain_text(f"{total} of {total} open")
        row = rows.filter(has_text="ECE bin edges")
        expect(row).to_have_count(1)
        # Readable at a glance: the buttons show their whole label, the title and the count do not run together.
        for css in (".p2c-answer", ".p2c-judgement"):
            assert row.locator(css).evaluate("e => e.scrollWidth <= e.clientWidth"), f"{css}: its label is cut"
        title, count = (queue.locator(f".p2c-panel-head {c}").bounding_box() for c in (".p2c-title", ".p2c-usage"))
        assert title and count and count["x"] >= title["x"] + title["width"] + 4, (title, count)
        expect(row).to_have_class(re.compile(r"\bp2c-question-open\b"))
        row.locator("textarea").fill(answer)
        row.locator(".p2c-answer").click()

        row = rows.filter(has_text="ECE bin edges")  # the queue is redrawn with the answer
        expect(row).to_have_class(re.compile(r"\bp2c-question-answered\b"))
        expect(row.locator(".p2c-question-state")).to_have_text("answered")
        expect(row.locator("textarea")).to_have_value(answer)
        expect(queue.locator(".p2c-panel-head")).to_contain_text(f"{total - 1} of {total} open")
        expect(queue.locator(".p2c-message")).to_contain_text("Now stale")
        tracked = len(FILES) + 1  # code/config.yaml, the planning config's copy, is made without the answer too
        for stage, count in (("analysis", len(FILES)), ("code", tracked)):
            expect(widget.locator(f".p2c-stage-{stage}.p2c-status-stale")).to_have_count(count)
            expect(widget.locator(f".p2c-stage-{stage} .p2c-badge-stale")).to_have_count(count)
        stale_class = re.compile(r"\bp2c-status-stale\b")
        for artifact in PLANNING:
            expect(widget.locator(f".p2c-panel-{slug(artifact)}")).not_to_have_class(stale_class)
        current = widget.locator(".p2c-stepper .p2c-step-current")
        expect(current).to_have_class(re.compile(r"\bp2c-step-analysis\b"))
        expect(current).to_have_class(re.compile(r"\bp2c-step-stale\b"))
        expect(widget.locator(".p2c-next")).to_contain_text("Re-run stale")
        shoot(page, "19-question-answered", row)
        shoot(page, "20-answer-made-analysis-stale", widget.locator(".p2c-stepper"))

        status = manifest(lab, "questions")
        assert {a for a, s in status.items() if s == "stale"} == {
            a for a in before if a.startswith(("analysis/", "code/"))
        }, status
        assert all(status[a] == before[a] for a in PLANNING), (before, status)
        saved = yaml.safe_load((lab.root / "questions" / "runs" / "mixup" / "planning" / "answers.yaml").read_text())
        assert [a["answer"] for a in saved] == [answer], saved
