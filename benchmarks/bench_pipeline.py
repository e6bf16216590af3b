"""Pipeline benchmark ("fast and frugal"): our schedule against a reference-like one, over HTTP.

    python benchmarks/bench_pipeline.py                  # N = 8 and 16 files, ~3 min in all
    python benchmarks/bench_pipeline.py --n 8 --save     # also write benchmarks/results/latest.json
    python benchmarks/bench_pipeline.py --n 3 --quick    # zero latency, no extras: a smoke test

For each N it generates a synthetic run (benchmarks/synthetic.py: depth-4 dependency graph, replies of the
issue's output sizes), then in the same process:

* ours: `Pipeline.start(paper).run()` against a ScriptedServer with 0.5 s per call + 1 ms per output token,
  served from a child process as a provider's server would be (`--in-process-server`: from a thread of this
  process, where its per-request work competes with the client for the GIL, more so the more calls run at once);
* reference-like: the reference implementation's schedule through the same openai client and the same
  server replies: 2N + 4 strictly sequential calls, the planning conversation, then one analysis call per
  file and one coding call per file, each re-sending the paper, every planning answer and (coding) the full
  code of every file written before it;
* the critical-path lower bound of the dependency DAG our pipeline must respect
  (plan -> design -> logic -> analysis(f) -> code(f), config after the plan, code(f) after code(each dependency)).

It prints one table (wall time, bound, calls, input tokens, input tokens in a prefix an earlier call already
sent, output tokens; rows ours / reference-like / ratio) and the targets, then the extras: reading the
Transformer PDF, our idle overhead per call, PlantUML cold/warm renders and drawing each stage's widget.
Results go to a temporary JSON file (printed), or to benchmarks/results/latest.json with --save.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import openai
from process import ServerProcess  # benchmarks/process.py (a benchmark helper, not shipped)
from pydantic import SecretStr
from synthetic import Synthetic, build, depth, paper_path, reference_paper_text

from p2c_notebook.backends import ChatRequest, OpenAIBackend
from p2c_notebook.paper import read_paper
from p2c_notebook.prompts.builder import PromptBuilder, language_for, render
from p2c_notebook.run.estimate import TYPICAL_FILES
from p2c_notebook.run.events import ArtifactSaved, Event
from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.run.usage import Usage, cost_of
from p2c_notebook.settings import Settings
from p2c_notebook.stages.artifacts import ArchitectureDesign, LogicDesign
from p2c_notebook.stages.registry import planning_names, stage_of
from p2c_notebook.testing import ScriptedServer
from p2c_notebook.tokens import estimate_tokens

RESULTS = Path(__file__).resolve().parent / "results"
API_KEY = "sk-bench"
MODEL = "bench"
PRICED_AS = "gpt-4o-mini"  # list prices used for the dollar column (the scripted model has none)
# The reference implementation measured with its own scripts (the issue), for context only.
REFERENCE_PUBLISHED = {
    8: {"calls": 20, "input_tokens": 355_000, "wall_s": 36.8},
    16: {"calls": 36, "input_tokens": 761_000, "wall_s": 65.2},
}
TARGET_WALL = {8: 0.45, 16: 0.35}
TARGET_CRITICAL = 1.05
TARGET_INPUT = 0.75
TARGET_CACHED = 0.85
TARGET_OVERHEAD_MS = 5.0
TARGET_PDF_S = 1.0
TARGET_WIDGET_MS = 150.0
TARGET_WARM_MS = 100.0
TARGET_ESTIMATE = 0.25


@dataclass
class Measured:
    """One schedule's figures: wall time, its lower bound and what the server's usage reports added up to."""

    schedule: str
    wall_s: float
    critical_s: float
    calls: int
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    cost_usd: float | None = None
    timeline: list[dict[str, Any]] = field(default_factory=list)
    delays: dict[str, float] = field(default_factory=dict)
    estimates: list[dict[str, Any]] = field(default_factory=list)  # ours: before the run, then with the file list

    @property
    def cached_share(self) -> float:
        return self.cached_tokens / self.input_tokens if self.input_tokens else 0.0


# --- the critical path ----------------------------------------------------------------------------------------
def critical_path(durations: Mapping[str, float], deps: Mapping[str, Sequence[str]]) -> tuple[float, list[str]]:
    """Length and nodes of the longest path through a DAG whose nodes take `durations` seconds.

    A node starts when every node in `deps[node]` has finished; nodes missing from `deps` have none.
    """
    finish: dict[str, float] = {}
    previous: dict[str, str | None] = {}
    visiting: set[str] = set()

    def end(node: str) -> float:
        if node in finish:
            return finish[node]
        if node in visiting:
            raise ValueError(f"the dependency graph has a cycle through {node}")
        visiting.add(node)
        before = [(end(d), d) for d in deps.get(node, ())]
        start, parent = max(before, default=(0.0, None))
        visiting.discard(node)
        finish[node] = start + durations[node]
        previous[node] = parent
        return finish[node]

    if not durations:
        return 0.0, []
    last = max(durations, key=end)
    path = [last]
    while (parent := previous[path[-1]]) is not None:
        path.append(parent)
    return finish[last], path[::-1]


def pipeline_dag(synth: Synthetic) -> dict[str, list[str]]:
    """What our pipeline must respect: plan -> design -> logic, config after the plan, analysis after logic and
    config, code after its analysis and after the code of the files it depends on."""
    deps: dict[str, list[str]] = {"plan": [], "design": ["plan"], "logic": ["design"], "config": ["plan"]}
    for path in synth.files:
        deps[f"analysis/{path}"] = ["logic", "config"]
        deps[f"code/{path}"] = [f"analysis/{path}", *(f"code/{d}" for d in synth.deps[path])]
    return deps


def call_seconds(synth: Synthetic, latency: float, token_latency: float) -> dict[str, float]:
    """Each call's duration under the scripted server's latency model."""
    return {
        f"{stage}/{file}" if file else stage: latency + token_latency * synth.output_tokens(stage, file)
        for stage, file in synth.replies
    }


def dispatch_delays(
    steps: Sequence[Mapping[str, Any]], seconds: Mapping[str, float], deps: Mapping[str, Sequence[str]]
) -> dict[str, float]:
    """When each request reached the server, against when it could have: after its inputs' replies ended.

    `deps` maps a call to the calls it waits for (the DAG for ours, the previous call for a sequential schedule);
    a reply is taken to end `seconds[call]` after its request arrived (the latency model, no overheads). The delay
    covers the server streaming slower than its model, the client, and whatever the caller does in between.
    """
    started = {(f"{s['stage']}/{s['file']}" if s["file"] else s["stage"]): float(s["start_s"]) for s in steps}
    delays = [
        start - max(started[d] + seconds[d] for d in deps[node])
        for node, start in started.items()
        if deps.get(node) and all(d in started for d in deps[node])
    ] or [0.0]
    first = min(started.values(), default=0.0)
    return {"startup_s": first, "median_s": statistics.median(delays), "max_s": max(delays)}


def sequential_deps(steps: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    names = [f"{s['stage']}/{s['file']}" if s["file"] else s["stage"] for s in steps]
    return {name: names[i - 1 : i] for i, name in enumerate(names)}


# --- ours -----------------------------------------------------------------------------------------------------
Server = ScriptedServer | ServerProcess
Serve = Callable[[dict[str, Any]], Server]


def settings_for(server: Server, concurrency: int, stream: bool = True) -> Settings:
    key = SecretStr(API_KEY)
    return Settings(base_url=server.base_url, api_key=key, model=MODEL, concurrency=concurrency, stream=stream)


def timeline(server: Server, began_epoch: float) -> list[dict[str, Any]]:
    return [
        {"stage": r["stage"], "file": r["file"], "start_s": round(r["timestamp"] - began_epoch, 4)}
        for r in server.requests
    ]


def run_ours(
    synth: Synthetic,
    paper: Path,
    latency: float,
    token_latency: float,
    stream: bool = True,
    serve: Serve = ServerProcess,
) -> Measured:
    """The full pipeline over HTTP; only `run()` is timed (reading the paper is measured on its own)."""
    seconds, dag = call_seconds(synth, latency, token_latency), pipeline_dag(synth)
    bound, _ = critical_path(seconds, dag)
    with (
        serve(synth.scenario(latency, token_latency)) as server,
        tempfile.TemporaryDirectory(prefix="p2c-bench-") as tmp,
    ):
        settings = settings_for(server, len(synth.files), stream)
        if len(synth.files) > settings.max_files:  # N = 64: a design of more files than the default bound
            settings = settings.model_copy(update={"max_files": len(synth.files)})
        with Pipeline.start(paper, Path(tmp) / "run", settings=settings) as pipeline:
            began_epoch, began = time.time(), time.perf_counter()
            result = pipeline.run()
            wall = time.perf_counter() - began
            spent = pipeline.store.spent()
            # The second estimate covers the file stages; what planning used by then is added to it.
            planned = sum((pipeline.store.entry(a).usage for a in planning_names()), Usage())  # type: ignore[union-attr]
            estimates = []
            for i, e in enumerate(pipeline.estimates):
                done = planned if i else Usage()
                tokens_in, cached = e.input_tokens + done.prompt_tokens, e.cached_tokens + done.cached_tokens
                tokens_out = e.output_tokens + done.completion_tokens
                estimates.append(
                    {
                        "when": "before the run" if i == 0 else "once the file list was known (planning as used)",
                        "calls": len(e.calls) + done.calls,
                        "input_tokens": tokens_in,
                        "cached_tokens": cached,
                        "output_tokens": tokens_out,
                        "cost_usd": cost_of(PRICED_AS, tokens_in, tokens_out, cached),
                    }
                )
        if result.state != "done":
            raise RuntimeError(f"the pipeline did not finish: {result.message}")
        calls = len(server.requests)
        steps = timeline(server, began_epoch)
    return Measured(
        "ours",
        wall,
        bound,
        calls,
        spent.prompt_tokens,
        spent.cached_tokens,
        spent.completion_tokens,
        priced(spent),
        steps,
        dispatch_delays(steps, seconds, dag),
        estimates,
    )


def priced(usage: Usage) -> float | None:
    return cost_of(PRICED_AS, usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)


# --- the reference-like schedule ------------------------------------------------------------------------------
class ReferenceLike:
    """The reference implementation's schedule: sequential calls, each re-sending everything it uses."""

    def __init__(self, synth: Synthetic, paper_text: str, backend: OpenAIBackend) -> None:
        self.synth = synth
        self.paper_text = paper_text
        self.backend = backend
        self.prompts = PromptBuilder(paper_text, {"design": ArchitectureDesign, "logic": LogicDesign})
        self.usage = Usage()
        self.system = render("system")

    def call(self, messages: list[dict[str, str]], stage: str, file: str = "") -> str:
        completion = self.backend.complete(ChatRequest(messages, stage, file), lambda _: None)
        self.usage += completion.usage
        return completion.text

    def run(self) -> None:
        answers: dict[str, str] = {}
        conversation = [{"role": "system", "content": self.system}]
        for step in planning_names():  # one growing conversation, as the reference does
            conversation.append({"role": "user", "content": self.prompts.task(step)})
            answers[step] = self.call(list(conversation), step)
            conversation.append({"role": "assistant", "content": answers[step]})
        logic = LogicDesign.model_validate_json(answers["logic"])
        context = "\n\n".join(
            [
                render("paper", paper=self.paper_text),
                f"## Overall plan\n\n{answers['plan']}",
                f"## Architecture design\n\n{answers['design']}",
                f"## Logic design\n\n{answers['logic']}",
                f"## Configuration\n\n{answers['config']}",
            ]
        )
        analyses: dict[str, str] = {}
        for item in logic.files:
            deps = ", ".join(item.depends_on) or "no other file"
            task = render("analysis", path=item.path, role=item.role, depends_on=deps)
            analyses[item.path] = self.call(self.user(f"{context}\n\n{task}"), "analysis", item.path)
        written: dict[str, str] = {}
        for item in logic.files:
            blocks = [render("dependency_file", path=p, code=c.rstrip()) for p, c in written.items()]
            earlier = render("dependencies", files="\n".join(blocks)) + "\n\n" if blocks else ""
            task = render(
                "code",
                path=item.path,
                role=item.role,
                analysis=analyses[item.path].strip(),
                dependency_code=earlier,
                language=language_for(item.path),
            )
            reply = self.call(self.user(f"{context}\n\n{task}"), "code", item.path)
            written[item.path] = reply.strip().removeprefix("```python").removesuffix("```").strip() + "\n"

    def user(self, content: str) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system}, {"role": "user", "content": content}]


def run_reference(
    synth: Synthetic,
    paper_text: str,
    latency: float,
    token_latency: float,
    stream: bool = True,
    serve: Serve = ServerProcess,
) -> Measured:
    seconds = call_seconds(synth, latency, token_latency)
    bound = sum(seconds.values())  # sequential: every call is on its path
    with serve(synth.scenario(latency, token_latency)) as server:
        began_epoch, began = time.time(), time.perf_counter()
        backend = OpenAIBackend(settings_for(server, 1, stream))
        try:
            reference = ReferenceLike(synth, paper_text, backend)
            reference.run()
        finally:
            backend.close()
        wall = time.perf_counter() - began
        usage = reference.usage
        steps = timeline(server, began_epoch)
        return Measured(
            "reference-like",
            wall,
            bound,
            len(server.requests),
            usage.prompt_tokens,
            usage.cached_tokens,
            usage.completion_tokens,
            priced(usage),
            steps,
            dispatch_delays(steps, seconds, sequential_deps(steps)),
        )


# --- extras ---------------------------------------------------------------------------------------------------
def warm_up_client() -> None:
    """One request through a bare `openai` client first: its once-per-process work (imports, platform headers,
    the first connection) then counts against neither schedule, whichever runs first."""
    with ScriptedServer({"model": "*", "responses": [{"stage": "*", "content": "ok"}]}) as server:
        client = openai.OpenAI(api_key=API_KEY, base_url=server.base_url)
        try:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "warm up"}])
        finally:
            client.close()


def median_s(action: Callable[[], object], repeat: int) -> float:
    timings = []
    for _ in range(repeat):
        began = time.perf_counter()
        action()
        timings.append(time.perf_counter() - began)
    return statistics.median(timings)


def pdf_read(path: Path, repeat: int = 5) -> dict[str, Any]:
    seconds = median_s(lambda: read_paper(path), repeat)
    return {"paper": path.name, "median_s": seconds, "runs": repeat, "summary": read_paper(path).report().summary()}


def _instrumented_run(synth: Synthetic, paper: Path, serve: Serve) -> tuple[float, float, int, float, list[Any]]:
    """Our pipeline one call at a time on a zero-latency server: wall, time inside the backend's complete(),
    atomic writes (count, seconds) and the requests the server received."""
    from p2c_notebook.run import store

    atomic_write = store.atomic_write
    inside, writes, written = 0.0, 0, 0.0
    with (
        serve(synth.scenario()) as server,
        tempfile.TemporaryDirectory(prefix="p2c-bench-") as tmp,
        Pipeline.start(paper, Path(tmp) / "run", settings=settings_for(server, 1)) as pipeline,
    ):
        complete = pipeline.backend.complete

        def timed_complete(request: ChatRequest, on_delta: Callable[[str], None], *more: Any) -> Any:
            nonlocal inside
            began = time.perf_counter()
            try:
                return complete(request, on_delta, *more)
            finally:
                inside += time.perf_counter() - began

        def timed_write(path: Path, data: str | bytes, durable: bool = True) -> None:
            nonlocal writes, written
            began = time.perf_counter()
            atomic_write(path, data, durable)
            writes, written = writes + 1, written + time.perf_counter() - began

        pipeline.backend.complete = timed_complete  # type: ignore[method-assign,assignment]
        store.atomic_write = timed_write
        try:
            began = time.perf_counter()
            pipeline.run()
            wall = time.perf_counter() - began
        finally:
            store.atomic_write = atomic_write
        return wall, inside, writes, written, server.requests


def _raw_client_run(synth: Synthetic, requests: Sequence[Any], serve: Serve) -> float:
    """The same requests through a bare openai client, one at a time, streaming like the backend."""
    with serve(synth.scenario()) as server:
        began = time.perf_counter()
        client = openai.OpenAI(api_key=API_KEY, base_url=server.base_url, max_retries=3)
        for request in requests:
            extra: dict[str, Any] = {}
            if request["response_format"] is not None:
                extra["response_format"] = request["response_format"]
            stream = client.chat.completions.create(
                model=request["model"],
                messages=request["messages"],
                max_tokens=request["max_tokens"],
                stream=True,
                stream_options={"include_usage": True},
                extra_headers={
                    "X-P2C-Stage": request["stage"],
                    "X-P2C-File": request["file"],
                    "X-P2C-Attempt": str(request["attempt"] or 1),
                },
                **extra,
            )
            "".join(c.choices[0].delta.content or "" for c in stream if c.choices and c.choices[0].delta)
        client.close()
        return time.perf_counter() - began


def idle_overhead(synth: Synthetic, paper: Path, serve: Serve = ServerProcess, repeat: int = 3) -> dict[str, Any]:
    """Our time per call beyond the bare openai client's, one call at a time against a zero-latency server.

    Both send the same messages with the same parameters (streaming, usage chunk, response_format) to a fresh
    server, so the server's own work is the same on both sides and cancels out. The breakdown times what the
    pipeline spends outside its backend's `complete` and in the run folder's atomic (fsync'ed) writes.
    """
    per_call, outside, writes, written = [], [], [], []
    calls = 0
    for _ in range(repeat):
        wall, inside, count, seconds, requests = _instrumented_run(synth, paper, serve)
        raw = _raw_client_run(synth, requests, serve)
        calls = len(requests)
        per_call.append((wall - raw) / calls * 1000)
        outside.append((wall - inside) / calls * 1000)
        writes.append(count / calls)
        written.append(seconds / calls * 1000)
    return {
        "calls": calls,
        "overhead_ms_per_call": statistics.median(per_call),
        "outside_backend_ms_per_call": statistics.median(outside),
        "atomic_writes_per_call": statistics.median(writes),
        "atomic_write_ms_per_call": statistics.median(written),
        "runs": repeat,
    }


def diagram_renders(synth: Synthetic, repeat: int = 5) -> dict[str, Any]:
    """PlantUML: a fresh renderer's first diagram (cold, Java start included), then warm renders."""
    from p2c_notebook.diagrams import plantuml as uml
    from p2c_notebook.diagrams.sources import class_diagram_plantuml, sequence_diagram_plantuml

    try:
        uml.find_java()
        uml.find_jar()
    except uml.DiagramError as exc:
        return {"skipped": str(exc)}
    design = ArchitectureDesign.model_validate(synth.design)
    sources = {"class": class_diagram_plantuml(design), "sequence": sequence_diagram_plantuml(design)}
    result: dict[str, Any] = {}
    with uml.PlantUMLRenderer() as renderer:
        began = time.perf_counter()
        renderer.render(sources["class"])
        result["cold_class_s"] = time.perf_counter() - began
        began = time.perf_counter()
        renderer.render(sources["sequence"])
        result["first_sequence_s"] = time.perf_counter() - began
        for name, source in sources.items():
            result[f"warm_{name}_s"] = median_s(functools.partial(renderer.render, source), repeat)
    if uml.find_dot():
        logic = LogicDesign.model_validate(synth.logic)
        uml.dependency_graph_svg(logic)
        result["warm_dependency_graph_s"] = median_s(lambda: uml.dependency_graph_svg(logic), repeat)
    return result


def widget_draws(
    synth: Synthetic, paper: Path, serve: Serve = ServerProcess, latency: float = 0.0, token_latency: float = 0.0
) -> dict[str, Any]:
    """How long after an artifact is saved its stage's panel is drawn, live during a run (zero latency by
    default: every reply at once, the worst case), and how long a walkthrough over the finished run folder takes
    to open and to refresh."""
    from p2c_notebook.ui.walkthrough import Walkthrough

    with (
        serve(synth.scenario(latency, token_latency)) as server,
        tempfile.TemporaryDirectory(prefix="p2c-bench-") as tmp,
    ):
        run_dir = Path(tmp) / "run"
        settings = settings_for(server, len(synth.files))
        saved: dict[str, float] = {}
        drawn: dict[str, float] = {}
        with Pipeline.start(paper, run_dir, settings=settings) as pipeline:
            save = pipeline.store.save

            def timed_save(artifact: str, *args: Any, **kwargs: Any) -> Any:
                entry = save(artifact, *args, **kwargs)
                saved[artifact] = time.perf_counter()
                return entry

            pipeline.store.save = timed_save  # type: ignore[method-assign]
            walkthrough = Walkthrough(pipeline, auto_approve=True)

            def after_walkthrough(event: Event) -> None:  # subscribed after the walkthrough: runs once it drew
                if isinstance(event, ArtifactSaved):
                    drawn[event.artifact] = time.perf_counter()

            pipeline.bus.subscribe(after_walkthrough)
            walkthrough.run(block=True)  # as the Run button does: on the walkthrough's thread, panels busy
            result = walkthrough.last_result
            if result is None or result.state != "done":
                raise RuntimeError(f"the walkthrough's run did not finish: {result}")
            walkthrough.close()
        live: dict[str, list[float]] = {}
        for artifact, at in drawn.items():
            live.setdefault(stage_of(artifact), []).append(at - saved[artifact])
        began = time.perf_counter()
        finished = Walkthrough(Pipeline.open(run_dir, settings=settings))
        opened = time.perf_counter() - began
        refresh = median_s(finished.refresh, 3)
        panels: dict[str, float] = {}
        for artifact, panel in finished.panels.items():
            stage = stage_of(artifact)
            panels[stage] = max(panels.get(stage, 0.0), panel.render_seconds)
        finished.close()
    return {
        "live_after_save_s": {stage: max(times) for stage, times in live.items()},
        "live_after_save_median_s": {stage: statistics.median(times) for stage, times in live.items()},
        "open_finished_s": opened,
        "refresh_s": refresh,
        "panel_render_s": panels,
    }


# --- report ---------------------------------------------------------------------------------------------------
def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def cell(value: float, width: int, digits: int = 3) -> str:
    return f"{'-':>{width}}" if value != value else f"{value:>{width}.{digits}f}"  # NaN (no bound) as "-"


def table(results: Sequence[dict[str, Any]]) -> str:
    head = (
        f"{'N':>3}  {'schedule':<15}{'wall s':>8}{'crit. s':>9}{'wall/crit':>10}{'calls':>7}"
        f"{'input tok':>12}{'prefix-cached tok':>20}{'output tok':>12}{f'$ ({PRICED_AS})':>16}"
    )
    lines = [head, "-" * len(head)]
    for result in results:
        n = result["n"]
        ours, ref = (Measured(**{k: v for k, v in result[s].items() if k != "cached_share"}) for s in ("ours", "ref"))
        for m in (ours, ref):
            cost = "-" if m.cost_usd is None else f"{m.cost_usd:.4f}"
            cached = f"{m.cached_tokens:,} ({m.cached_share:.0%})"
            lines.append(
                f"{n:>3}  {m.schedule:<15}{m.wall_s:>8.2f}{m.critical_s:>9.2f}{cell(ratio(m.wall_s, m.critical_s), 10)}"
                f"{m.calls:>7}{m.input_tokens:>12,}{cached:>20}{m.output_tokens:>12,}{cost:>16}"
            )
        cost_ratio = "-" if not (ours.cost_usd and ref.cost_usd) else f"{ours.cost_usd / ref.cost_usd:.3f}"
        lines.append(
            f"{n:>3}  {'ratio':<15}{ratio(ours.wall_s, ref.wall_s):>8.3f}"
            f"{cell(ratio(ours.critical_s, ref.critical_s), 9)}{'':>10}{ratio(ours.calls, ref.calls):>7.2f}"
            f"{ratio(ours.input_tokens, ref.input_tokens):>12.3f}{ratio(ours.cached_tokens, ref.cached_tokens):>20.3f}"
            f"{ratio(ours.output_tokens, ref.output_tokens):>12.3f}{cost_ratio:>16}"
        )
    return "\n".join(lines)


def targets(results: Sequence[dict[str, Any]], extras: Mapping[str, Any]) -> list[tuple[str, bool]]:
    checks: list[tuple[str, bool]] = []

    def at_most(text: str, value: float, limit: float) -> None:
        checks.append((f"{text} (target <= {limit:g})", value <= limit))

    for result in results:
        n, ours, ref = result["n"], result["ours"], result["ref"]
        wall = ratio(ours["wall_s"], ref["wall_s"])
        if n in TARGET_WALL:
            at_most(f"N={n}: wall time {wall:.3f}x the reference-like schedule's", wall, TARGET_WALL[n])
        if ours["critical_s"] > 0:  # zero latency (--quick) has no bound to compare with
            crit = ratio(ours["wall_s"], ours["critical_s"])
            at_most(f"N={n}: wall time {crit:.3f}x the critical-path bound", crit, TARGET_CRITICAL)
        tokens = ratio(ours["input_tokens"], ref["input_tokens"])
        at_most(f"N={n}: input tokens {tokens:.3f}x the reference-like schedule's", tokens, TARGET_INPUT)
        for estimate in ours.get("estimates", [])[:1] if n == TYPICAL_FILES else ours.get("estimates", [])[1:]:
            worst = max(
                abs(ratio(estimate[k], ours[k]) - 1) for k in ("input_tokens", "output_tokens", "cost_usd") if ours[k]
            )
            text = f"N={n}: estimate {estimate['when']} off by at most {worst:.1%} (tokens in, out, dollars)"
            checks.append((f"{text} (target <= {TARGET_ESTIMATE:.0%})", worst <= TARGET_ESTIMATE))
        share = ratio(ours["cached_tokens"], ours["input_tokens"])
        text = f"N={n}: {share:.1%} of input tokens in a prefix already sent (target >= {TARGET_CACHED:.0%})"
        checks.append((text, share >= TARGET_CACHED))
    if "overhead" in extras:
        ms = extras["overhead"]["overhead_ms_per_call"]
        at_most(f"our idle overhead per LLM call {ms:.2f} ms", ms, TARGET_OVERHEAD_MS)
    if "pdf" in extras:
        seconds = extras["pdf"]["median_s"]
        at_most(f"reading {extras['pdf']['paper']} {seconds:.3f} s", seconds, TARGET_PDF_S)
    for key, how in (("widgets", "every reply at once"), ("widgets_paced", "under the latency model")):
        for n, widgets in extras.get(key, {}).items():
            worst = max(widgets["live_after_save_s"].values()) * 1000
            text = f"N={n}, {how}: slowest stage widget drawn {worst:.1f} ms after its artifact is saved"
            at_most(text, worst, TARGET_WIDGET_MS)
    warm = [v * 1000 for k, v in extras.get("diagrams", {}).items() if k.startswith("warm_")]
    if warm:
        at_most(f"slowest warm diagram render {max(warm):.1f} ms", max(warm), TARGET_WARM_MS)
    return checks


def describe_extras(extras: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    if "pdf" in extras:
        pdf = extras["pdf"]
        lines.append(
            f"Reading {pdf['paper']}: {pdf['median_s'] * 1000:.1f} ms, median of {pdf['runs']} ({pdf['summary']})"
        )
    if "overhead" in extras:
        o = extras["overhead"]
        lines.append(
            f"Idle overhead (zero-latency server, one call at a time, {o['calls']} calls, median of {o['runs']}): "
            f"{o['overhead_ms_per_call']:.2f} ms per call more than a bare openai client; outside the backend's "
            f"complete() {o['outside_backend_ms_per_call']:.1f} ms per call, of which "
            f"{o['atomic_writes_per_call']:.1f} fsync'ed writes {o['atomic_write_ms_per_call']:.1f} ms"
        )
    diagrams = extras.get("diagrams", {})
    if "skipped" in diagrams:
        lines.append(f"Diagrams: skipped ({diagrams['skipped']})")
    elif diagrams:
        parts = [f"{k.removesuffix('_s').replace('_', ' ')} {v * 1000:.1f} ms" for k, v in diagrams.items()]
        lines.append("Diagrams (PlantUML, median of 5 warm): " + ", ".join(parts))
    for n, w in extras.get("widgets", {}).items():
        medians = w["live_after_save_median_s"]
        live = ", ".join(f"{s} {v * 1000:.1f} ({medians[s] * 1000:.1f})" for s, v in w["live_after_save_s"].items())
        panels = ", ".join(f"{s} {v * 1000:.1f}" for s, v in w["panel_render_s"].items())
        lines.append(
            f"N={n}: widget drawn after its artifact is saved (live, every reply at once; ms, worst (median) per "
            f"stage): {live}"
        )
        paced = extras.get("widgets_paced", {}).get(n)
        if paced:
            paced_medians = paced["live_after_save_median_s"]
            live = ", ".join(
                f"{s} {v * 1000:.1f} ({paced_medians[s] * 1000:.1f})" for s, v in paced["live_after_save_s"].items()
            )
            lines.append(f"N={n}: the same under the latency model: {live}")
        lines.append(
            f"N={n}: walkthrough over the finished run: open {w['open_finished_s'] * 1000:.0f} ms, refresh "
            f"{w['refresh_s'] * 1000:.1f} ms; panel render (worst per stage, ms): {panels}"
        )
    return lines


def measure(
    n: int,
    paper: Path,
    paper_text: str,
    latency: float,
    token_latency: float,
    stream: bool = True,
    serve: Serve = ServerProcess,
) -> dict[str, Any]:
    synth = build(n)
    ours = run_ours(synth, paper, latency, token_latency, stream, serve)
    ref = run_reference(synth, paper_text, latency, token_latency, stream, serve)
    return {
        "n": n,
        "depth": depth(synth.deps),
        "files": synth.files,
        "deps": synth.deps,
        "ours": {**asdict(ours), "cached_share": ours.cached_share},
        "ref": {**asdict(ref), "cached_share": ref.cached_share},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[8, 16], help="numbers of files (default 8 16)")
    parser.add_argument("--latency", type=float, default=0.5, help="seconds per call (default 0.5)")
    parser.add_argument("--token-latency", type=float, default=0.001, help="seconds per output token (0.001)")
    parser.add_argument("--quick", action="store_true", help="zero latency and no extras: a smoke test")
    parser.add_argument(
        "--no-stream",
        action="store_true",
        help="both schedules ask for whole replies instead of streams",
    )
    parser.add_argument(
        "--in-process-server",
        action="store_true",
        help="serve from a thread of this process instead of a child process",
    )
    parser.add_argument("--no-extras", action="store_true", help="only the pipeline table")
    parser.add_argument("--save", action="store_true", help="write benchmarks/results/latest.json")
    parser.add_argument("--out", type=Path, help="write the JSON results here")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    latency, token_latency = (0.0, 0.0) if args.quick else (args.latency, args.token_latency)

    paper = paper_path()
    paper_text, paper_source = reference_paper_text(paper, read_paper(paper).to_text())
    warm_up_client()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    print(
        f"{os.cpu_count()} CPUs, load average {load}; paper {paper.name} (the reference-like schedule sends "
        f"{paper_source}, ~{estimate_tokens(paper_text):,} tokens); scripted server: {latency:g} s per call "
        f"+ {token_latency * 1000:g} ms per output token, {'whole replies' if args.no_stream else 'streaming'}, "
        f"{'in this process' if args.in_process_server else 'in a child process'}; "
        "synthetic outputs (tokens): plan 1.5k, design 1.2k, logic 1.2k, config 0.3k, analysis 0.8k and code 1.5k "
        "per file",
        flush=True,
    )
    serve: Serve = ScriptedServer if args.in_process_server else ServerProcess
    results = []
    for n in args.n:
        print(f"N={n}: running ours, then the reference-like schedule...", flush=True)
        results.append(measure(n, paper, paper_text, latency, token_latency, not args.no_stream, serve))
    extras: dict[str, Any] = {}
    if not (args.quick or args.no_extras):
        synth = build(8)
        print("extras: PDF, idle overhead, diagrams, widgets...", flush=True)
        extras["pdf"] = pdf_read(paper)
        extras["overhead"] = idle_overhead(synth, paper, serve)
        extras["diagrams"] = diagram_renders(synth)
        extras["widgets"] = {str(n): widget_draws(build(n), paper, serve) for n in args.n}
        if latency:
            extras["widgets_paced"] = {
                str(n): widget_draws(build(n), paper, serve, latency, token_latency) for n in args.n
            }

    print()
    print(table(results))
    for result in results:
        for key in ("ours", "ref"):
            d = result[key]["delays"]
            print(
                f"N={result['n']} {result[key]['schedule']}: first request {d['startup_s'] * 1000:.0f} ms after "
                f"start; a request reaches the server {d['median_s'] * 1000:.0f} ms (median; max "
                f"{d['max_s'] * 1000:.0f}) after its inputs' replies would have ended under the latency model"
            )
    for result in results:
        ours = result["ours"]
        for e in ours.get("estimates", []):
            print(
                f"N={result['n']} estimate {e['when']}: {e['calls']} calls, {e['input_tokens']:,} input tokens "
                f"({ratio(e['input_tokens'], ours['input_tokens']):.3f}x what the run used), {e['output_tokens']:,} "
                f"output ({ratio(e['output_tokens'], ours['output_tokens']):.3f}x), "
                f"${e['cost_usd'] or 0:.4f} ({ratio(e['cost_usd'] or 0, ours['cost_usd'] or 0):.3f}x)"
            )
    for result in results:
        published = REFERENCE_PUBLISHED.get(result["n"])
        if published:
            print(
                f"(N={result['n']}: the reference implementation measured with its own scripts: {published['calls']} "
                f"calls, {published['input_tokens']:,} input tokens, {published['wall_s']} s)"
            )
    print()
    for line in describe_extras(extras):
        print(line)
    checks = targets(results, extras)
    if not args.quick:
        print("\nTargets:")
        for text, ok in checks:
            print(f"  [{'ok' if ok else 'MISSED'}] {text}")
    data = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": sys.version.split()[0],
        "latency_s": latency,
        "token_latency_s": token_latency,
        "stream": not args.no_stream,
        "server": "in-process" if args.in_process_server else "child process",
        "paper": paper.name,
        "reference_paper": paper_source,
        "cpus": os.cpu_count(),
        "load_average": load,
        "results": results,
        "extras": extras,
        "targets": [{"check": text, "ok": ok} for text, ok in checks],
    }
    out = args.out or (RESULTS / "latest.json" if args.save else Path(tempfile.gettempdir()) / "p2c-bench-latest.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    print(f"\nresults: {out}")
    return 1 if args.check and not all(ok for _, ok in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
