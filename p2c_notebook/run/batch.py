"""Many papers against one model server: `run_batch` runs each paper in its own run folder, resumably, with one
concurrency limit shared by every model call of every run, and writes a summary table.

The server is what scales; a batch must be a good client of it. Every call of every pipeline (and of the judge)
passes through one `SharedLimiter`, so the server never sees more than `concurrency` requests from this batch, and
a 429 with Retry-After pauses new calls of every paper, not only the one that was refused. A paper that fails is
recorded in the summary and never stops the others; an interrupted batch resumes where it stopped.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from p2c_notebook.backends import make_backend
from p2c_notebook.errors import Cancelled, ConfigError, P2CError
from p2c_notebook.run.events import Event, EventBus, Sink
from p2c_notebook.run.limiter import LimitedBackend, SharedLimiter, fan_out_gate, limiter_for
from p2c_notebook.run.session import RunOptions, open_run
from p2c_notebook.run.store import RunStore, atomic_write
from p2c_notebook.run.usage import Usage
from p2c_notebook.settings import Settings, load_settings
from p2c_notebook.stages import runchecks

STATE_FILE = "batch.json"
SUMMARY_MD = "summary.md"
SUMMARY_CSV = "summary.csv"
SUMMARY_NOTEBOOK = "summary.ipynb"
_SPEC_KEYS = {"paper", "reference", "name", "settings"}


# ------------------------------------------------------------------------------------------------ the spec
@dataclass(frozen=True)
class BatchPaper:
    """One paper of a batch: its name (its run folder's), the paper, an optional reference repository for the
    evaluation, and settings overrides for this paper only (e.g. another model)."""

    name: str
    paper: Path
    reference: Path | None = None
    settings: dict[str, Any] = field(default_factory=dict)


def read_spec(spec: Path | str) -> list[BatchPaper]:
    """The papers a spec names: a folder (every paper in it), a YAML list or a CSV table. Paths in a list are
    relative to the list's folder."""
    path = Path(spec)
    if path.is_dir():
        entries: list[dict[str, Any]] = [
            {"paper": str(p)} for p in sorted(path.iterdir()) if not p.name.startswith((".", "_"))
        ]
    elif path.suffix.lower() in (".yaml", ".yml"):
        entries = _yaml_entries(path)
    elif path.suffix.lower() == ".csv":
        entries = _csv_entries(path)
    elif not path.exists():
        raise ConfigError(f"Batch spec {path} does not exist: give a folder of papers, a .yaml or a .csv list.")
    else:
        raise ConfigError(f"Batch spec {path}: give a folder of papers, a .yaml or a .csv list (not {path.suffix}).")
    papers: list[BatchPaper] = []
    names: set[str] = set()
    for number, entry in enumerate(entries, 1):
        papers.append(_paper(entry, path.parent if path.is_file() else path, number, names, path))
    if not papers:
        raise ConfigError(f"Batch spec {path} names no paper.")
    return papers


def _yaml_entries(path: Path) -> list[dict[str, Any]]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"Batch spec {path} could not be read as YAML ({exc}).") from None
    if isinstance(data, dict) and "papers" in data:
        data = data["papers"]
    if not isinstance(data, list):
        raise ConfigError(f"Batch spec {path}: write a list of papers (or `papers:` with a list).")
    return [e if isinstance(e, dict) else {"paper": e} for e in data]


def _csv_entries(path: Path) -> list[dict[str, Any]]:
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"Batch spec {path} could not be read as CSV ({exc}).") from None
    return [{k.strip(): v.strip() for k, v in row.items() if k and v and v.strip()} for row in rows]


def _paper(entry: dict[str, Any], base: Path, number: int, names: set[str], spec: Path) -> BatchPaper:
    paper = entry.get("paper")
    if not isinstance(paper, str) or not paper:
        raise ConfigError(f"Batch spec {spec}: entry {number} has no `paper`.")
    overrides = dict(entry.get("settings") or {})
    unknown = [k for k in entry if k not in _SPEC_KEYS and k not in Settings.model_fields]
    if unknown:
        raise ConfigError(
            f"Batch spec {spec}: entry {number} has unknown key(s) {', '.join(unknown)}; use paper, reference, "
            "name, settings or a settings field such as model."
        )
    overrides.update({k: v for k, v in entry.items() if k in Settings.model_fields})
    source = base / paper
    name = str(entry.get("name") or _stem(source)).replace(" ", "_").replace("/", "_")
    unique, n = name, 2
    while unique in names:
        unique, n = f"{name}-{n}", n + 1
    names.add(unique)
    reference = entry.get("reference")
    return BatchPaper(unique, source, base / str(reference) if reference else None, overrides)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".tar.gz", ".tgz"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem or name


# ------------------------------------------------------------------------------------------------ results
State = Literal["done", "failed", "stopped", "cancelled", "not run"]


@dataclass(frozen=True)
class PaperResult:
    """One row of the summary; `skipped` when a rerun found the paper finished and made no call for it.
    `calls` to `cost` are the generation's; `eval_*` what judging it cost (`--eval`), counted apart."""

    name: str
    paper: str
    run: str
    state: State
    error: str = ""
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost: float | None = 0.0
    seconds: float = 0.0
    check_errors: int | None = None
    check_warnings: int | None = None
    score: float | None = None
    paper_sha256: str = ""
    skipped: bool = False
    eval_calls: int = 0
    eval_prompt_tokens: int = 0
    eval_completion_tokens: int = 0
    eval_cost: float | None = 0.0

    @property
    def all_cost(self) -> float | None:
        """Generation and evaluation together (None when either is unknown)."""
        return None if self.cost is None or self.eval_cost is None else self.cost + self.eval_cost


@dataclass(frozen=True)
class BatchResult:
    out: Path
    papers: list[PaperResult]
    interrupted: bool = False
    peak_concurrency: int = 0
    rate_limit_pauses: int = 0

    @property
    def failed(self) -> list[PaperResult]:
        return [p for p in self.papers if p.state == "failed"]

    def total(self) -> PaperResult:
        """The totals row: sums, and the mean score over the papers that have one."""
        rows = self.papers
        scores = [p.score for p in rows if p.score is not None]
        costs = [p.cost for p in rows]
        eval_costs = [p.eval_cost for p in rows]
        return PaperResult(
            name="total",
            paper="",
            run=str(self.out),
            state="done" if all(p.state == "done" for p in rows) else "stopped",
            calls=sum(p.calls for p in rows),
            prompt_tokens=sum(p.prompt_tokens for p in rows),
            completion_tokens=sum(p.completion_tokens for p in rows),
            cached_tokens=sum(p.cached_tokens for p in rows),
            cost=None if any(c is None for c in costs) else sum(c or 0.0 for c in costs),
            seconds=sum(p.seconds for p in rows),
            check_errors=sum(p.check_errors or 0 for p in rows),
            check_warnings=sum(p.check_warnings or 0 for p in rows),
            score=sum(scores) / len(scores) if scores else None,
            eval_calls=sum(p.eval_calls for p in rows),
            eval_prompt_tokens=sum(p.eval_prompt_tokens for p in rows),
            eval_completion_tokens=sum(p.eval_completion_tokens for p in rows),
            eval_cost=None if any(c is None for c in eval_costs) else sum(c or 0.0 for c in eval_costs),
        )


# ------------------------------------------------------------------------------------------------ events
@dataclass(frozen=True)
class BatchStarted(Event):
    out: str = ""
    papers: int = 0
    finished: int = 0  # papers an earlier batch run finished: skipped
    concurrency: int = 0


@dataclass(frozen=True)
class PaperStarted(Event):
    name: str = ""


@dataclass(frozen=True)
class PaperFinished(Event):
    """One paper is over (done, failed or stopped); `done` of `total` papers are over so far."""

    result: PaperResult | None = None
    done: int = 0
    total: int = 0


@dataclass(frozen=True)
class BatchFinished(Event):
    result: BatchResult | None = None


# ------------------------------------------------------------------------------------------------ running
@dataclass(frozen=True)
class BatchOptions:
    """`settings`: every paper's (a paper's own overrides go on top); its `concurrency` is the batch's one limit
    on calls at once. `evaluate`: judge each finished paper with `samples` samples (`judge`: another model)."""

    out: Path | str | None = None
    settings: Settings | None = None
    concurrency: int | None = None
    evaluate: bool = False
    samples: int = 8
    judge: str | None = None


def default_out(spec: Path | str) -> Path:
    return Path("runs") / "batch" / _stem(Path(spec).resolve())


def run_batch(spec: Path | str, options: BatchOptions | None = None, sinks: tuple[Sink, ...] = ()) -> BatchResult:
    """Run every paper of `spec` (see `read_spec`) and write the summary; Ctrl-C stops cleanly (a rerun resumes)."""
    return Batch(spec, options, sinks).run()


class Batch:
    """One batch run; `cancel()` (from any thread) stops it after the calls in flight, as Ctrl-C does."""

    def __init__(self, spec: Path | str, options: BatchOptions | None = None, sinks: tuple[Sink, ...] = ()) -> None:
        self.options = options or BatchOptions()
        self.papers = read_spec(spec)
        self.out = Path(self.options.out) if self.options.out else default_out(spec)
        self.settings = self.options.settings or load_settings()
        # One limit for every call of every paper: fixed when asked, else fitted to the server (see run.limiter).
        self.limiter: SharedLimiter = limiter_for(self.settings, self.options.concurrency)
        self.gate = fan_out_gate()
        self.bus = EventBus(*sinks)
        self.limiter.listen(self.bus.warn)  # one notice for the batch, e.g. calls waiting for the token budget
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._running: dict[str, Any] = {}  # name -> its open Pipeline, to cancel
        self._state: dict[str, dict[str, Any]] = {}

    def cancel(self) -> None:
        self._cancel.set()
        with self._lock:
            pipelines = list(self._running.values())
        for pipeline in pipelines:
            pipeline.cancel()

    def run(self) -> BatchResult:
        self.out.mkdir(parents=True, exist_ok=True)
        self._state = self._read_state()
        results: dict[str, PaperResult] = {}
        todo: list[BatchPaper] = []
        for paper in self.papers:
            kept = self._finished(paper)
            if kept is not None:
                results[paper.name] = kept
            else:
                todo.append(paper)
        self.bus.emit(
            BatchStarted(
                out=str(self.out), papers=len(self.papers), finished=len(results), concurrency=self.limiter.limit
            )
        )
        total = len(self.papers)
        for paper in self.papers:
            if paper.name in results:
                self._finish(results[paper.name], len(results), total)
        interrupted = False
        pool = ThreadPoolExecutor(max_workers=max(1, min(len(todo), self.limiter.ceiling)))
        try:
            futures = [pool.submit(self._one, p) for p in todo]
            handled: set[Future[PaperResult]] = set()
            while len(handled) < len(futures):
                # Ctrl-C may land anywhere in this thread: stop every run after its calls in flight, keep waiting
                # for them, and record each paper once (`handled` is marked before its row is written).
                try:
                    wait([f for f in futures if f not in handled], timeout=0.2, return_when=FIRST_COMPLETED)
                    for future in [f for f in futures if f.done() and f not in handled]:
                        handled.add(future)
                        result = future.result()
                        results[result.name] = result
                        self._finish(result, len(results), total)
                except KeyboardInterrupt:
                    interrupted = True
                    self.cancel()
        finally:
            pool.shutdown(wait=True)
        interrupted = interrupted or self._cancel.is_set()
        ordered = [results.get(p.name) or self._not_run(p) for p in self.papers]
        batch = BatchResult(self.out, ordered, interrupted, self.limiter.peak, self.limiter.pauses)
        write_summary(batch)
        self.bus.emit(BatchFinished(result=batch))
        return batch

    def _finish(self, result: PaperResult, done: int, total: int) -> None:
        with self._lock:
            self._state[result.name] = asdict(result)
            atomic_write(self.out / STATE_FILE, json.dumps({"papers": self._state}, indent=2) + "\n")
        self.bus.emit(PaperFinished(result=result, done=done, total=total))

    def _read_state(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads((self.out / STATE_FILE).read_text(encoding="utf-8"))
            papers = data.get("papers") if isinstance(data, dict) else None
            return papers if isinstance(papers, dict) else {}
        except (OSError, ValueError):
            return {}

    def _finished(self, paper: BatchPaper) -> PaperResult | None:
        """The earlier result of a paper finished by an earlier batch run (same paper, run folder still there,
        and scored when this run evaluates); None when it must run."""
        record = self._state.get(paper.name)
        if not isinstance(record, dict) or record.get("state") != "done":
            return None
        try:
            result = PaperResult(**{**record, "skipped": True})
        except TypeError:
            return None
        if result.paper_sha256 != _digest(paper.paper) or not (self.out / paper.name).is_dir():
            return None
        if self.options.evaluate and result.score is None:
            return None
        return result

    def _not_run(self, paper: BatchPaper) -> PaperResult:
        return PaperResult(paper.name, str(paper.paper), str(self.out / paper.name), "not run")

    def _one(self, paper: BatchPaper) -> PaperResult:
        """Run one paper (then its checks and evaluation); any error becomes its row, never the batch's."""
        earlier = self._state.get(paper.name) or {}
        base = PaperResult(
            paper.name, str(paper.paper), str(self.out / paper.name), "failed", paper_sha256=_digest(paper.paper)
        )
        if self._cancel.is_set():
            return replace(base, state="not run")
        self.bus.emit(PaperStarted(name=paper.name))
        started = time.monotonic()
        spent = float(earlier.get("seconds") or 0.0)
        try:
            result = self._generate(paper, base)
        except P2CError as exc:
            result = replace(base, state="failed", error=str(exc))
        except Exception as exc:  # noqa: BLE001 - one paper's unexpected failure must not stop the batch
            result = replace(base, state="failed", error=f"{type(exc).__name__}: {exc}")
        return replace(result, seconds=spent + time.monotonic() - started)

    def _generate(self, paper: BatchPaper, base: PaperResult) -> PaperResult:
        settings = _merged(self.settings, paper.settings, paper.name)
        backend = LimitedBackend(make_backend(settings), self.limiter, self.gate, self._cancel)
        run_dir = self.out / paper.name
        try:
            pipeline = open_run(paper.paper, RunOptions(out=run_dir, settings=settings, backend=backend))
            with pipeline:
                with self._lock:
                    self._running[paper.name] = pipeline
                if self._cancel.is_set():
                    pipeline.cancel()
                try:
                    outcome = pipeline.run()
                finally:
                    with self._lock:
                        self._running.pop(paper.name, None)
                spent = pipeline.store.spent()
            result = replace(
                base,
                state="done" if outcome.state == "done" else "cancelled" if outcome.state == "cancelled" else "stopped",
                error="" if outcome.state == "done" else outcome.message,
                calls=spent.calls,
                prompt_tokens=spent.prompt_tokens,
                completion_tokens=spent.completion_tokens,
                cached_tokens=spent.cached_tokens,
                cost=spent.cost,
            )
        finally:
            backend.close()
        if result.state != "done":
            return result
        checked = runchecks.current(run_dir)
        result = replace(result, check_errors=int(checked["errors"]), check_warnings=int(checked["warnings"]))
        if self.options.evaluate:
            result = replace(result, score=self._evaluate(paper, settings, run_dir))
            result = _with_eval_usage(result, RunStore(run_dir).spent())
        return result

    def _evaluate(self, paper: BatchPaper, settings: Settings, run_dir: Path) -> float | None:
        from p2c_notebook.stages.evaluate import evaluate_run

        judged = _merged(settings, {"model": self.options.judge} if self.options.judge else {}, paper.name)
        backend = LimitedBackend(make_backend(judged), self.limiter, self.gate, self._cancel)
        try:
            summary = evaluate_run(
                run_dir, backend, backend.settings, self.options.samples, paper.reference, cancel=self._cancel
            )
        except Cancelled:
            return None
        finally:
            backend.close()
        return summary.mean


def _with_eval_usage(result: PaperResult, spent: Usage) -> PaperResult:
    """What judging cost: the run folder's spent total now, less what it was after generating (the judge's
    calls count in it as they are paid, a dropped or cancelled sample's too)."""
    cost = None if spent.cost is None or result.cost is None else max(0.0, spent.cost - result.cost)
    return replace(
        result,
        eval_calls=max(0, spent.calls - result.calls),
        eval_prompt_tokens=max(0, spent.prompt_tokens - result.prompt_tokens),
        eval_completion_tokens=max(0, spent.completion_tokens - result.completion_tokens),
        eval_cost=cost,
    )


def _merged(settings: Settings, overrides: dict[str, Any], name: str) -> Settings:
    if not overrides:
        return settings
    try:
        return Settings.model_validate({**settings.model_dump(exclude_unset=True), **overrides})
    except ValueError as exc:
        raise ConfigError(f"The settings of paper {name} in the batch spec are invalid ({exc}).") from None


def _digest(path: Path) -> str:
    """The paper's fingerprint: a changed paper runs again (a folder: its files' names and sizes)."""
    try:
        if path.is_dir():
            listing = sorted(f"{p.relative_to(path)}:{p.stat().st_size}" for p in path.rglob("*") if p.is_file())
            return hashlib.sha256("\n".join(listing).encode()).hexdigest()
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


# ------------------------------------------------------------------------------------------------ summary
COLUMNS = (
    "paper",
    "state",
    "calls",
    "tokens in",
    "tokens out",
    "cost",
    "time s",
    "errors",
    "warnings",
    "score",
    "eval calls",
    "eval tokens in",
    "eval tokens out",
    "eval cost",
    "note",
)


def _row(result: PaperResult) -> list[str]:
    def number(value: float | int | None, fmt: str = "{}") -> str:
        return "" if value is None else fmt.format(value)

    note = (
        result.error.splitlines()[0][:200] if result.error else ("kept from an earlier run" if result.skipped else "")
    )
    return [
        result.name,
        result.state,
        str(result.calls),
        str(result.prompt_tokens),
        str(result.completion_tokens),
        "unknown" if result.cost is None else f"{result.cost:.4f}",
        f"{result.seconds:.1f}",
        number(result.check_errors),
        number(result.check_warnings),
        number(result.score, "{:.2f}"),
        str(result.eval_calls),
        str(result.eval_prompt_tokens),
        str(result.eval_completion_tokens),
        "unknown" if result.eval_cost is None else f"{result.eval_cost:.4f}",
        note,
    ]


def summary_rows(batch: BatchResult) -> list[list[str]]:
    """The table: one row per paper, then the totals."""
    total = _row(batch.total())
    total[1] = f"{sum(p.state == 'done' for p in batch.papers)}/{len(batch.papers)} done"
    return [_row(p) for p in batch.papers] + [total]


def summary_markdown(batch: BatchResult) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in summary_rows(batch)]
    total = batch.total()
    if total.eval_calls:
        cost = "cost unknown" if total.all_cost is None else f"${total.all_cost:.4f}"
        lines.append(
            f"\nGeneration and evaluation together: {total.calls + total.eval_calls} calls, "
            f"{total.prompt_tokens + total.eval_prompt_tokens} tokens in, "
            f"{total.completion_tokens + total.eval_completion_tokens} tokens out, {cost}."
        )
    return "\n".join(lines) + "\n"


def write_summary(batch: BatchResult) -> None:
    """summary.md, summary.csv and summary.ipynb (its plots) in the batch folder, each replaced whole, so a reader
    never sees half a table."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    writer.writerows(summary_rows(batch))
    atomic_write(batch.out / SUMMARY_CSV, buffer.getvalue())
    atomic_write(batch.out / SUMMARY_MD, summary_markdown(batch))
    atomic_write(batch.out / SUMMARY_NOTEBOOK, summary_notebook())


def summary_notebook() -> str:
    """A notebook that shows the summary.csv beside it as a table and one bar chart per figure (offline, in a
    second: it reads the file, nothing else)."""

    def cell(kind: str, text: str) -> dict[str, Any]:
        made: dict[str, Any] = {"cell_type": kind, "id": f"summary-{kind}", "metadata": {}, "source": text}
        return {**made, "execution_count": None, "outputs": []} if kind == "code" else made

    cells = [
        cell(
            "markdown",
            "# Batch summary\n\nCalls, tokens, cost, time, the static checks and the evaluation score per paper, "
            "from `summary.csv` in this folder (written again by every `p2c batch` run). Run all cells.",
        ),
        cell("code", 'from p2c_notebook.ui.batchview import show_summary\n\nshow_summary(".")'),
    ]
    kernel = {"display_name": "Python 3", "language": "python", "name": "python3"}
    notebook = {"cells": cells, "metadata": {"kernelspec": kernel}, "nbformat": 4, "nbformat_minor": 5}
    return json.dumps(notebook, indent=1) + "\n"
