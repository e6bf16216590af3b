"""The orchestrator: chains the stage functions over one run folder, resumably.

Approval is a pause plus a resume from saved state: `run(require_approval=True)` stops before a stage
whose inputs are not approved, and the caller (CLI, widget, magic) approves and calls `run` again.
"""

from __future__ import annotations

import shlex
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import ValidationError

from p2c_notebook.backends import Backend, make_backend
from p2c_notebook.diagrams.sources import diagram_files
from p2c_notebook.errors import (
    Cancelled,
    ConfigError,
    EditedArtifactError,
    P2CError,
    PaperError,
    PlanError,
    RunError,
)
from p2c_notebook.paper import Paper, read_paper
from p2c_notebook.paper.figures import render_figures
from p2c_notebook.paper.model import exclude_sections, section_label, without_appendices
from p2c_notebook.prompts import PromptBuilder
from p2c_notebook.prompts.builder import Figures, load_figures
from p2c_notebook.run.estimate import (
    Estimate,
    Plan,
    available_memory,
    check_fits,
    estimate_plan,
    known_context_window,
    larger_local_context,
    needed_context,
    typical_files,
)
from p2c_notebook.run.events import (
    ArtifactSaved,
    AwaitingApproval,
    EventBus,
    Notice,
    Progress,
    RunFinished,
    RunStarted,
    Sink,
)
from p2c_notebook.run.limiter import LimitedBackend, SharedLimiter, fan_out_gate, limiter_for, urgent
from p2c_notebook.run.runlog import RunLog
from p2c_notebook.run.store import Entry, RunStore, Status, atomic_write, sha256
from p2c_notebook.run.usage import Usage
from p2c_notebook.secrets import Scrubber
from p2c_notebook.settings import Settings, load_settings
from p2c_notebook.stages import registry, runchecks
from p2c_notebook.stages.artifacts import ArchitectureDesign, LogicDesign, max_files_context, parse_config
from p2c_notebook.stages.context import StageContext, describe_validation
from p2c_notebook.stages.registry import Stage, artifact_file, stage_of
from p2c_notebook.tokens import estimate_tokens

_RAMP_POLL_S = 0.1  # how often the scheduler looks whether a ramping limit lets more steps go
_SENDING_S = 0.05  # how long the scheduler lets new calls go out before doing its own deferred work
#: repo/config.yaml, a copy of planning/config.yaml tracked like any artifact (unless the plan codes its own).
REPO_CONFIG = "code/config.yaml"


def config_copied(files: list[str]) -> bool:
    """Whether repo/config.yaml is the planning config's copy: there are files, and none of them is config.yaml."""
    return bool(files) and REPO_CONFIG.partition("/")[2] not in files


@dataclass
class RunResult:
    state: Literal["done", "paused", "stopped", "cancelled"]
    message: str
    produced: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)


@dataclass
class Row:
    artifact: str
    status: str
    path: str
    usage: Usage
    inputs_changed: bool = False


class Pipeline:
    """One run folder and how to advance it. Create with `Pipeline.start(paper)` or `Pipeline.open(run)`."""

    def __init__(
        self,
        run_dir: Path | str,
        settings: Settings | None = None,
        backend: Backend | None = None,
        sinks: tuple[Sink, ...] = (),
    ) -> None:
        self.store = RunStore(run_dir)
        self.settings = settings or load_settings()
        self.bus = EventBus(*sinks)
        self._backend = backend
        self._own_backend = backend is None
        self._limited_backend: LimitedBackend | None = None
        self._cancel = threading.Event()
        self.estimates: list[Estimate] = []  # of the last run: at its start, and once its file list was known
        self._figure_set: tuple[str | None, Figures] | None = None  # (paper hash, figures) with --figures
        self.log = RunLog(self.store.root / "logs" / "run.log", Scrubber.for_settings(self.settings))
        self.bus.subscribe(self.log)

    # --- opening ----------------------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        paper: Path | str,
        out: Path | str | None = None,
        *,
        exclude_sections: list[str] | None = None,
        **kwargs: Any,
    ) -> Pipeline:
        """Read the paper and open (or create) its run folder; a changed paper makes everything stale.

        `exclude_sections` (globs on section titles or numbers, e.g. ["Appendix*", "6.2"]) leaves sections out of
        what the model sees; it is part of the run's inputs. None keeps the run's earlier choice."""
        source = Path(paper)
        run_dir = Path(out) if out else Path("runs") / source.stem.replace(" ", "_")
        parsed = read_paper(source)
        pipeline = cls(run_dir, **kwargs)
        with pipeline.store.locked():
            parsed = pipeline._save_figures(source, parsed)
            pipeline._save_paper(parsed, exclude=exclude_sections)
        return pipeline

    def _save_figures(self, source: Path, paper: Paper) -> Paper:
        """Render a PDF's figures into paper/figures/ (bounded in number and size; see `render_figures`) and note
        each image on its caption in paper.json. A figure that cannot be rendered costs a warning, not the run."""
        if paper.source_format != "pdf":
            return paper
        try:
            paper, files = render_figures(source, paper)
            for name, data in files.items():
                atomic_write(self.store.root / "paper" / name, data, durable=False)
        except (RunError, OSError, RuntimeError, ValueError) as exc:
            self.bus.warn(f"The paper's figures were not saved ({exc}); the run goes on without their images.")
        return paper

    def choose_sections(self, exclude: list[str]) -> None:
        """Leave out the sections `exclude` names (globs on titles or numbers; [] brings every section back) in
        a run folder: part of the run's inputs, so what was generated from the paper becomes stale."""
        source = self._source_paper()
        if source is None:
            raise ConfigError(
                f"{self.store.root} does not keep the paper as read (an older run folder): start it again from the "
                "paper with `p2c run PAPER --exclude-sections ...`."
            )
        with self.store.locked():
            self._save_paper(source, exclude=exclude)

    @classmethod
    def open(cls, run_dir: Path | str, **kwargs: Any) -> Pipeline:
        if not RunStore.is_run(run_dir):
            raise RunError(f"{run_dir} is not a p2c run folder (no manifest.json). Start one with `p2c run PAPER`.")
        return cls(run_dir, **kwargs)

    def _save_paper(self, read: Paper, exclude: list[str] | None = None, fitted: bool | None = None) -> None:
        """Save what the model sees of the paper as read: less the sections the user excluded, and less the
        appendix when it was dropped to fit the model (`fitted`). None keeps the run's earlier choice; a new
        exclusion list starts the fitting afresh. paper/source.json keeps the paper as read."""
        earlier = self.store.meta.get("paper") or {}
        if exclude is None:
            exclude = list(earlier.get("exclude", []))
            fitted = bool(earlier.get("fitted")) if fitted is None else fitted
        paper, unmatched = exclude_sections(read, exclude)
        if unmatched:
            names = "; ".join(section_label(s) for s in read.sections) or "none"
            raise ConfigError(
                f"--exclude-sections {', '.join(repr(p) for p in unmatched)} names no section of {read.source}: "
                f"use a title or number glob from `p2c paper {read.source}` (its sections: {names[:600]})."
            )
        paper = without_appendices(paper) if fitted else paper
        text = paper.to_text()
        report = paper.report()
        self.bus.info(f"Paper: {report.summary()}", "paper")
        if self.store.hash_of("paper") == sha256(text):
            return
        if self.store.entry("paper") is not None and any(self.store.entry(s) for s in registry.planning_names()):
            self.bus.warn("The paper changed since this run started: everything generated from it is now stale.")
        extra = {
            "paper/paper.json": paper.model_dump_json(indent=2) + "\n",
            "paper/source.json": read.model_dump_json(indent=2) + "\n",
        }
        self.store.save("paper", text, {}, status="approved", extra_files=extra)
        self.store.set_meta(
            paper={
                "source": paper.source,
                "format": paper.source_format,
                "report": report.model_dump(),
                "exclude": list(exclude),
                "fitted": bool(fitted),
            }
        )
        for note in self.store.refresh(self.order()):  # e.g. what the lock recovered from a killed run
            self.bus.info(note)

    # --- backend ----------------------------------------------------------------------------------
    @property
    def backend(self) -> Backend:
        if self._backend is None:
            settings = self.settings
            if not settings.local_server_log:  # an embedded llama.cpp server logs into this run's logs/
                log = str(self.store.root / "logs" / "local-server.log")
                settings = settings.model_copy(update={"local_server_log": log})
            self._backend = make_backend(settings, notify=self.bus.info)
        return self._backend

    def close(self) -> None:
        if self._backend is not None and self._own_backend:
            self._backend.close()
            self._backend = None

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def cancel(self) -> None:
        """Stop after the calls in flight; nothing saved is lost and the next run resumes."""
        self._cancel.set()

    def _context(self) -> StageContext:
        paper = self.store.read("paper")
        prompts = PromptBuilder(paper, figures=self._figures())  # templates and schemas, from the registry
        for stage in registry.stages():  # the stage modules are imported here, never first in a worker thread
            stage.function()
        backend = self._limited()
        # The backend's own settings: a local model's are tuned (more repair re-asks, its reply limit).
        return StageContext(self.store, backend, self.bus, self._effective_settings(), prompts, self._cancel)

    def _limited(self) -> LimitedBackend:
        """The backend behind the limiter that fits its server (a batch passes one already limited: its limit is
        shared by every paper)."""
        backend = self.backend
        if isinstance(backend, LimitedBackend):
            return backend
        if self._limited_backend is None or self._limited_backend.inner is not backend:
            limiter = limiter_for(self.settings)
            limiter.listen(self.bus.warn)  # e.g. calls waiting for the token-rate budget
            self._limited_backend = LimitedBackend(backend, limiter, fan_out_gate(), self._cancel)
        return self._limited_backend

    def _cap(self, limiter: SharedLimiter) -> int:
        """Steps at once now: the limiter's current limit, and never more than a concurrency the user set."""
        chosen = self.settings.concurrency if "concurrency" in self.settings.model_fields_set else limiter.ceiling
        return max(1, min(chosen, limiter.limit))

    # --- what exists --------------------------------------------------------------------------------
    def files(self) -> list[str]:
        """Planned files in dependency order ([] before the logic design exists or when it is invalid)."""
        logic = self._saved_logic()
        return logic.order if logic is not None else []

    def order(self) -> list[str]:
        """Every artifact of the run in order: the paper, the planning, each per-file stage's files (and the config's
        copy), then the stages made after the files."""
        files = self.files()
        copies = [REPO_CONFIG] if config_copied(files) else []
        ids = registry.artifacts(files, registry.planning()) + registry.artifacts(files, registry.file_stages())
        later = tuple(s for s in registry.finishing() if not s.on_request or self.store.entry(s.name))
        return ["paper", *ids, *copies, *registry.artifacts(files, later)]

    def rows(self, recorded: bool = False) -> list[Row]:
        """Each artifact's status as the files on disk say now (read-only: safe while another process runs).

        `recorded`: as the manifest records it, without re-reading the files: cheap, and safe mid-run (the
        running pipeline keeps the manifest current)."""
        if not recorded:
            self.store.reload()
            self.store.refresh(self.order(), persist=False)
            self._adopt_written(persist=False)
        rows = []
        known = {e.artifact: e for e in self.store.entries()}
        for artifact in self.order():
            entry = known.get(artifact)
            if entry is None:
                rows.append(Row(artifact, "missing", artifact_file(artifact), Usage(calls=0)))
            else:
                rows.append(Row(artifact, entry.status, entry.path, entry.usage, entry.inputs_changed))
        return rows

    def next_command(self) -> str:
        rows = self.rows()
        todo = [r.artifact for r in rows if r.status in ("missing", "stale")]
        if not todo:
            return "Nothing left to do: the repository is in " + str(self.store.root / "repo")
        command = shlex.join(["p2c", "run", str(self.store.root), *self._last_run_flags()])
        return f"Next: `{command}` generates {todo[0]}" + (f" and {len(todo) - 1} more" if len(todo) > 1 else "")

    def _run_options(self) -> dict[str, str]:
        """How this run reaches its model, as flags would say it (never the key, nor a password in a URL)."""
        given = self.settings.model_fields_set
        options = {"backend": self.settings.backend} if self.settings.backend != "auto" else {}
        if "model" in given:
            options["model"] = self.settings.model
        url = self.settings.base_url
        if url and "base_url" in given and not (urlsplit(url).username or urlsplit(url).password):
            options["base_url"] = url
        return options

    def _last_run_flags(self) -> list[str]:
        """The flags of the run that last worked in this folder, so `p2c run RUN` asks the same model."""
        last = self.store.meta.get("last_run")
        if not isinstance(last, dict):
            return []
        flags = []
        for name in ("backend", "model", "base_url"):
            value = last.get(name)
            if isinstance(value, str) and value:
                flags += [f"--{name.replace('_', '-')}", value]
        return flags

    # --- running ------------------------------------------------------------------------------------
    def run(
        self,
        from_stage: str | None = None,
        until: str | None = None,
        require_approval: bool = False,
        overwrite_edited: bool = False,
    ) -> RunResult:
        """Generate every missing or stale artifact from `from_stage` to `until` (inclusive)."""
        first = registry.index(from_stage) if from_stage else 0
        last = registry.index(until) if until else registry.last_by_default()
        if first > last:
            raise ConfigError(f"--from {from_stage} comes after --until {until}.")
        self._cancel.clear()
        with self.store.locked():
            for note in self.store.refresh(self.order()):
                self.bus.info(note)
            self._adopt_written()
            self._warn_kept_edits()
            if from_stage:
                self._redo_from(registry.stages()[first].name, overwrite_edited)
            produced: list[str] = []
            try:
                result = self._run(first, last, require_approval, produced)
            except Cancelled as exc:
                result = RunResult("cancelled", str(exc), produced)
            except P2CError as exc:
                self.bus.emit(Notice(level="error", message=str(exc)))
                self.bus.emit(RunFinished(ok=False, message=str(exc), total=self.store.spent()))
                raise
            finally:
                self.store.flush()
            self.bus.emit(RunFinished(ok=result.state != "cancelled", message=result.message, total=self.store.spent()))
            return result

    def estimate(self, until: str | None = None) -> Estimate:
        """Calls, tokens and cost of what `run(until=until)` would generate now (nothing is sent)."""
        return self._estimate(0, registry.index(until) if until else registry.last_by_default())

    def _estimate(self, first: int, last: int, file_todo: dict[str, list[str]] | None = None) -> Estimate:
        """`file_todo`: the file steps as they stood when the run decided them (the refined estimate is made a
        moment later, and must not depend on how many of them have come back by then)."""
        planning = self._planning_todo(first, last)
        files: dict[str, list[str]] = {}
        logic = None if "logic" in planning else self._saved_logic()
        if logic is not None:
            files = {f.path: list(f.depends_on) for f in logic.files}
            todo_files = file_todo if file_todo is not None else self._file_todo(first, last, list(files))
            analysis, code = todo_files["analysis"], todo_files["code"]
        elif last >= registry.index("analysis"):
            files = typical_files()
            analysis = list(files)
            code = list(files) if last >= registry.index("code") else []
        else:
            analysis, code = [], []
        todo = set(planning) | {f"analysis/{f}" for f in analysis} | {f"code/{f}" for f in code}

        def saved(artifact: str) -> str | None:
            if artifact in todo or self.store.entry(artifact) is None:
                return None
            try:
                return self.store.read(artifact)
            except RunError:
                return None

        plan = Plan(planning, files, analysis, code, files_assumed=logic is None)
        model = self._backend.model if self._backend is not None else self.settings.model
        paper, prices = self.store.read("paper"), self._effective_settings().prices
        return estimate_plan(paper, plan, saved, model, prices, figures=self._figures())

    def _figures(self) -> Figures | None:
        """The figure images the planning calls carry (`--figures`), read once per paper version; the run log
        says which files (and hashes) go, and which were left out and why."""
        if not self.settings.figures:
            return None
        version = self.store.hash_of("paper")
        if self._figure_set is None or self._figure_set[0] != version:
            self._figure_set = (version, load_figures(self.store.root / "paper"))
            self.bus.info(self._figure_set[1].describe(), "paper")
        return self._figure_set[1]

    def _effective_settings(self) -> Settings:
        """The settings the backend really uses (a local model's are tuned: its prices, its reply limit)."""
        return self._backend.settings if self._backend is not None else self.settings

    def _saved_logic(self) -> LogicDesign | None:
        if self.store.entry("logic") is None:
            return None
        try:
            return LogicDesign.model_validate_json(self.store.read("logic"))
        except ValidationError:
            return None

    def _window(self, estimate: Estimate) -> tuple[int | None, int]:
        """The model's context window (settings, else the backend's, else a known model's) and the reply room."""
        window = self.settings.context_window or (self._backend.context_window if self._backend is not None else None)
        window = window or known_context_window(estimate.model)
        return window, min(self._effective_settings().max_tokens, 2 * registry.get("code").typical_output)

    def _fit_paper(self, estimate: Estimate, first: int, last: int) -> Estimate:
        """Fit the paper to the model before any call: leave out the appendix (while nothing was generated from
        the paper yet), then raise a local model's context where the model and memory allow; refuse when even
        the paper alone cannot fit, saying what was tried and which sections are largest."""
        window, reply_room = self._window(estimate)
        if window is None or not estimate.calls or needed_context(estimate, reply_room) <= window:
            return estimate
        tried: list[str] = []
        source = self._source_paper()
        fresh = not any(self.store.entry(step) for step in registry.planning_names())
        if source is not None and fresh and any(s.appendix for s in source.sections):
            before = estimate.paper_tokens
            if not (self.store.meta.get("paper") or {}).get("fitted"):
                self._save_paper(source, fitted=True)
                estimate = self._estimate(first, last)
                left = before - estimate.paper_tokens
                tried.append(f"left out the appendix (~{left:,} tokens)")
                self.bus.warn(
                    f"The paper does not fit {estimate.model}'s context window of {window:,} tokens: its appendix "
                    f"(~{left:,} tokens) is left out of what the model sees. To keep it, use a model with a larger "
                    "window, or choose the sections yourself with --exclude-sections."
                )
        if needed_context(estimate, reply_room) > window:
            grown = self._grow_local_context(estimate, needed_context(estimate, reply_room), tried)
            if grown is not None:
                estimate, window = self._estimate(first, last), grown
        if estimate.paper_tokens + reply_room > window:
            raise PaperError(self._refusal(estimate, window, reply_room, tried))
        return estimate

    def _source_paper(self) -> Paper | None:
        """The paper as read (paper/source.json), or None in a run folder written before it was kept."""
        try:
            raw = (self.store.root / "paper" / "source.json").read_text(encoding="utf-8")
            return Paper.model_validate_json(raw)
        except (OSError, ValidationError, UnicodeDecodeError):
            return None

    def _grow_local_context(self, estimate: Estimate, needed: int, tried: list[str]) -> int | None:
        """Restart the embedded model with a larger context when its model and this machine's memory allow it
        (not when the user chose the context or the window, nor for a backend the caller passed in)."""
        backend = self._backend
        current = getattr(backend, "n_ctx", None)
        if backend is None or not isinstance(current, int) or not self._own_backend:
            return None
        if self.settings.local_n_ctx or self.settings.context_window:
            tried.append("kept the local context you set (P2C_LOCAL_N_CTX / P2C_CONTEXT_WINDOW)")
            return None
        target, why = larger_local_context(backend.model, current, needed, available_memory())
        if target is None:
            tried.append(f"could not raise the local model's context ({why})")
            return None
        self.bus.info(f"Raising the local model's context from {current:,} to {target:,} tokens to fit the paper.")
        self.close()
        self.settings = self.settings.model_copy(update={"local_n_ctx": target})
        self.backend  # noqa: B018 - started again with the larger context
        tried.append(f"raised the local model's context from {current:,} to {target:,} tokens")
        return target

    def _refusal(self, estimate: Estimate, window: int, reply_room: int, tried: list[str]) -> str:
        """Why the paper is refused, what was tried, and the largest sections to exclude."""
        source = self._source_paper()
        sections = sorted(
            ((estimate_tokens(s.render()), section_label(s)) for s in (source.sections if source else [])),
            reverse=True,
        )[:5]
        largest = ", ".join(f"{name!r} (~{tokens:,})" for tokens, name in sections) or "unknown"
        done = "; ".join(tried) if tried else "nothing could be left out automatically"
        return (
            f"The paper is ~{estimate.paper_tokens:,} tokens and {estimate.model} reads at most {window:,} "
            f"(with {reply_room:,} kept for its reply): no call was made. Tried: {done}. Exclude sections with "
            f"--exclude-sections (largest: {largest}), or use a model with a larger context window."
        )

    def _check_budget(self, estimate: Estimate) -> None:
        """Before paying: refuse a paper the model cannot read; warn when the largest call may not fit."""
        window, reply_room = self._window(estimate)
        warning = check_fits(estimate, window, reply_room)
        if warning:
            self.bus.warn(warning)

    def _run(self, first: int, last: int, require_approval: bool, produced: list[str]) -> RunResult:
        todo_planning = self._planning_todo(first, last)
        steps = len(todo_planning) + self._later_steps_needed(first, last, self.files(), bool(todo_planning))
        estimate = None
        if steps:
            self.backend  # noqa: B018 - started first: the estimate uses its model, prices and context window
            estimate = self._estimate(first, last)
            self.estimates = [estimate]
            if self.store.meta.get("last_run") != self._run_options():
                self.store.set_meta(last_run=self._run_options())
        if estimate is not None:
            estimate = self._fit_paper(estimate, first, last)
            self.estimates = [estimate]
            self._check_budget(estimate)
        self.bus.emit(
            RunStarted(
                run_dir=str(self.store.root),
                model=self.backend.description if steps else self.settings.model,
                backend=self.settings.backend,
                steps=steps,
                estimate=estimate.describe() if estimate is not None else "",
            )
        )
        progress = _Counter(self.bus, steps)
        if require_approval:
            for step in todo_planning:
                pending = self._unapproved(["paper", *registry.get(step).context])
                if pending:
                    return self._pause(pending, step, produced)
                self._check_cancel()
                self._saved(self._step(self._context(), step), produced, progress)
        elif todo_planning:
            # config.yaml builds on the plan only: it is written while the designs are.
            deps = {s: [d for d in registry.get(s).context if d in todo_planning] for s in todo_planning}
            self._schedule(todo_planning, deps, produced, progress)
        file_stages = registry.file_stages()
        if last < registry.index(file_stages[0].name):
            return RunResult("stopped", f"Stopped after {registry.stages()[last].name} as asked.", produced)
        logic = self._checked_logic()
        self._drop_orphans(logic)
        files = logic.order
        todo = self._file_todo(first, last, files)
        refine: Callable[[], None] | None = None
        refiner: threading.Thread | None = None
        if estimate is not None and estimate.files_assumed and any(todo.values()):

            decided = {stage: list(paths) for stage, paths in todo.items()}

            def refining() -> None:
                refined = self._estimate(first, last, decided)  # the real file list and dependencies are known now
                self.estimates.append(refined)
                self.bus.info(refined.describe().replace("Estimate:", "Estimate for the rest of the run:", 1))

            # Its own thread: the scheduler only starts it, so no call ever waits for the estimate's work.
            refiner = threading.Thread(target=refining, name="p2c-estimate", daemon=True)
            refine = refiner.start

        later = self._finishing_todo(first, last, bool(todo_planning) or any(todo.values()))
        progress.remaining(sum(len(t) for t in todo.values()) + len(later))
        in_range = [s for s in file_stages if registry.index(s.name) <= last]
        gate = ["paper", *registry.planning_names()]  # what the first per-file stage waits for
        batch: list[Stage] = []
        try:
            for stage in in_range:
                if todo[stage.name] and require_approval:
                    pending = self._unapproved(gate)
                    if pending:
                        return self._pause(pending, stage.name, produced)
                batch.append(stage)
                # Each stage on its own when the next waits for approval of it (or is not asked for); otherwise one
                # schedule for them all: code(f) starts once analysis(f) and the code it imports are saved.
                if require_approval or stage is in_range[-1]:
                    if any(todo[s.name] for s in batch):
                        self._schedule(*_file_graph(batch, todo, logic), produced, progress, refine)
                        refine = None
                    batch = []
                gate = [stage.artifact(f) for f in files]
        finally:  # also when a step fails: the refined estimate's notice never comes after the run's error
            if refiner is not None and refiner.ident is not None:
                refiner.join()  # the run's estimates are complete when it returns
        if last < registry.index(file_stages[-1].name):
            return RunResult("stopped", f"Stopped after {registry.stages()[last].name} as asked.", produced)
        self._copy_repo_config()
        runchecks.record_repository(self.store)  # checks.json: the whole repository (entry point, copies...)
        later = self._finishing_todo(first, last, False)
        if later:
            result = self._run_finishing(later, logic, require_approval, produced, progress)
            if result is not None:
                return result
        return RunResult("done", f"The repository is in {self.store.root / 'repo'}", produced)

    def _run_finishing(
        self, todo: list[str], logic: LogicDesign, require_approval: bool, produced: list[str], progress: _Counter
    ) -> RunResult | None:
        """The stages after the files (none built in), each once its inputs are saved (and approved, if asked)."""
        if require_approval:
            for step in todo:
                pending = self._unapproved(registry.inputs_for(step, logic))
                if pending:
                    return self._pause(pending, step, produced)
                self._check_cancel()
                self._saved(self._step(self._context(), step), produced, progress)
            return None
        deps = {s: [i for i in registry.inputs_for(s, logic) if i in todo] for s in todo}
        self._schedule(todo, deps, produced, progress)
        return None

    def _finishing_todo(self, first: int, last: int, upstream: bool) -> list[str]:
        """The stages after the files this run makes: missing or stale ones (and, when `upstream` work is still
        to come, unedited ones: what they are made from is about to change)."""
        todo = []
        for stage in registry.finishing():
            if stage.on_request and registry.index(stage.name) != last:
                continue  # made only when `--until` names it
            wanted = self._needs(stage.name) or (upstream and not self._edited(stage.name))
            if wanted and first <= registry.index(stage.name) <= last:
                todo.append(stage.name)
        return todo

    def _planning_todo(self, first: int, last: int) -> list[str]:
        """Planning steps this run generates: missing or stale ones, and unedited ones built on those."""
        todo: list[str] = []
        for stage in registry.planning():
            step = stage.name
            if not first <= registry.index(step) <= last:
                continue
            redo_input = any(d in todo for d in stage.context) and not self._edited(step)
            if self._needs(step) or redo_input:
                todo.append(step)
        return todo

    def _later_steps_needed(self, first: int, last: int, files: list[str], planning: bool) -> int:
        """Steps after the planning this run makes, as far as is known before it starts."""
        todo = self._file_todo(first, last, files)
        upstream = planning or any(todo.values())
        return sum(len(t) for t in todo.values()) + len(self._finishing_todo(first, last, upstream))

    def _file_todo(self, first: int, last: int, files: list[str]) -> dict[str, list[str]]:
        """Per per-file stage, the files this run generates: missing or stale ones, and those whose artifact of an
        earlier stage it is made from is regenerated (a regenerated analysis redoes unedited code)."""
        todo: dict[str, list[str]] = {}
        for stage in registry.file_stages():
            if not first <= registry.index(stage.name) <= last:
                todo[stage.name] = []
                continue
            feeding = [s.name for s in registry.file_stages() if f"{s.name}/{{file}}" in stage.inputs]
            todo[stage.name] = [
                f
                for f in files
                if self._needs(stage.artifact(f))
                or (any(f in todo.get(s, []) for s in feeding) and not self._edited(stage.artifact(f)))
            ]
        return todo

    def _schedule(
        self,
        artifacts: list[str],
        deps: dict[str, list[str]],
        produced: list[str],
        progress: _Counter,
        once_started: Callable[[], None] | None = None,
    ) -> None:
        """Run steps concurrently; a step starts as soon as the steps it depends on are saved.

        When more steps are ready than the concurrency limit allows, the one with the longest chain of
        steps waiting on it goes first, so the critical path never queues behind leaves. Only steps with slack
        (`_patient_steps`) may wait at the cache-aware fan-out; the others' calls go at once. `once_started` is
        called once the steps' calls are on their way (nothing came back for a moment); it must return at once
        (the refined estimate passes its thread's `start`), so it never holds back a ready step.
        """
        remaining = sorted(artifacts, key=_chain_lengths(artifacts, deps).__getitem__, reverse=True)
        patient = _patient_steps(artifacts, deps)
        running: dict[Future[Entry], str] = {}
        done: set[str] = set()
        errors: list[BaseException] = []
        ctx = self._context()
        if any("/" in a for a in artifacts):  # file steps share the planning: read it once, not in each thread
            ctx.answers()
            ctx.logic()
        limiter = self._limited().limiter  # its limit may grow or shrink as calls come back
        workers = self.settings.concurrency if "concurrency" in self.settings.model_fields_set else limiter.ceiling
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="p2c") as pool:
            while remaining or running:
                if not errors and not self._cancel.is_set():
                    ready = [a for a in remaining if all(d in done for d in deps.get(a, []))]
                    for artifact in ready:
                        if len(running) >= self._cap(limiter):
                            break
                        remaining.remove(artifact)
                        running[pool.submit(self._step, ctx, artifact, artifact in patient)] = artifact
                    limiter.queued(id(self), len([a for a in ready if a in remaining]))  # a ramp grows with demand
                if not running:
                    break
                try:
                    idle = _SENDING_S if once_started is not None else None
                    if limiter.adaptive and len(running) < len(remaining) + len(running) and idle is None:
                        idle = _RAMP_POLL_S  # a ramping limit may let more steps go before any comes back
                    finished, _ = wait(list(running), timeout=idle, return_when=FIRST_COMPLETED)
                except KeyboardInterrupt:
                    self._cancel.set()  # streams in flight stop at their next token
                    raise
                if not finished and once_started is not None:  # the calls are on their way: nothing to delay
                    once_started()
                    once_started = None
                for future in finished:
                    artifact = running.pop(future)
                    try:
                        entry = future.result()
                    except BaseException as exc:  # noqa: BLE001 - re-raised below after the others finish
                        errors.append(exc)
                        continue
                    done.add(artifact)
                    self._saved(entry, produced, progress)
        limiter.queued(id(self), 0)
        if once_started is not None:  # every step came back before the calls ever left it idle
            once_started()
        if errors:
            raise errors[0]
        self._check_cancel()

    def _step(self, ctx: StageContext, artifact: str, patient: bool | None = None) -> Entry:
        """Make one artifact. `patient`, from a schedule: its calls may wait at the cache-aware fan-out (the step
        has slack: True) or never do (it is on the longest chain: False); None: one step alone, nothing to say."""
        adopted = self._adopt([artifact])  # written by the user since the run started: never asked for
        if adopted:
            return adopted[0]
        if patient is None:
            return registry.make(ctx, artifact)
        with urgent(not patient):
            return registry.make(ctx, artifact)

    def _saved(self, entry: Entry, produced: list[str], progress: _Counter) -> None:
        produced.append(entry.artifact)
        self.bus.emit(
            ArtifactSaved(artifact=entry.artifact, path=str(self.store.root / entry.path), status=entry.status)
        )
        progress.step()
        self.store.refresh(self.order())

    def _pause(self, pending: list[str], stage: str, produced: list[str]) -> RunResult:
        self.bus.emit(AwaitingApproval(pending=tuple(pending), next_stage=stage))
        message = (
            f"Paused before {stage}: approve {', '.join(pending)} first (`p2c approve {self.store.root} ARTIFACT`)."
        )
        return RunResult("paused", message, produced, pending)

    def _check_cancel(self) -> None:
        if self._cancel.is_set():
            raise Cancelled("Cancelled; everything saved so far is kept. Run again to resume.")

    def _edited(self, artifact: str) -> bool:
        entry = self.store.entry(artifact)
        return entry is not None and entry.status == "edited"

    def _needs(self, artifact: str) -> bool:
        entry = self.store.entry(artifact)
        return entry is None or entry.status == "stale"

    def _warn_kept_edits(self) -> None:
        """Once per run: edits kept although what they were made from has changed since."""
        for entry in self.store.entries():
            if entry.status == "edited" and entry.inputs_changed:
                self.bus.warn(
                    f"{entry.artifact} was edited by you and what it depends on has changed since; your edit is "
                    f"kept. Use --from {stage_of(entry.artifact)} --overwrite-edited to regenerate it.",
                    entry.artifact,
                )

    def _unapproved(self, artifacts: list[str]) -> list[str]:
        pending = []
        for artifact in artifacts:
            entry = self.store.entry(artifact)
            if entry is None or entry.status not in ("approved", "edited"):
                pending.append(artifact)
        return pending

    def _redo_from(self, step: str, overwrite_edited: bool) -> None:
        index = registry.index(step)
        targets = [a for a in self.order() if a != "paper" and registry.index(stage_of(a)) >= index]
        edited = [a for a in targets if (e := self.store.entry(a)) is not None and e.status == "edited"]
        if edited and not overwrite_edited:
            raise EditedArtifactError(
                f"--from {step} would overwrite what you edited: {', '.join(edited)}. "
                "Pass --overwrite-edited to regenerate them anyway, or start later in the pipeline."
            )
        for artifact in targets:
            if self.store.entry(artifact) is not None:
                self.store.set_status(artifact, "stale")

    def _checked_logic(self) -> LogicDesign:
        ctx = self._context()
        design, logic = ctx.design(), ctx.logic()
        try:
            checked, _ = logic.check_against(design)
        except PlanError as exc:
            raise PlanError(
                f"The logic design does not match the architecture design: {exc} "
                f"Fix {self.store.root / 'planning/logic.json'} or rerun with --from logic."
            ) from None
        return checked

    def _drop_orphans(self, logic: LogicDesign) -> None:
        """Files no longer planned: forget generated ones, keep (and mention) the user's edits."""
        planned = set(logic.order)
        file_stages = {s.name for s in registry.file_stages()}
        for entry in self.store.entries():
            stage, _, path = entry.artifact.partition("/")
            if entry.artifact == REPO_CONFIG:
                continue  # the copy of the config when not planned, a planned file when it is
            if stage in file_stages and path not in planned:
                keep = entry.status == "edited"
                self.store.forget(entry.artifact, delete_file=not keep)
                if keep:
                    self.bus.warn(f"{entry.path} is no longer planned; your edited copy is left in place.")

    def _copy_repo_config(self) -> None:
        """repo/config.yaml: the planning config, copied when missing or stale; an edit of the copy is kept."""
        if not config_copied(self.files()) or self._adopt([REPO_CONFIG]):
            return
        entry = self.store.entry(REPO_CONFIG)
        if entry is None or entry.status == "stale":
            saved = self._save_repo_config()
            self.bus.emit(
                ArtifactSaved(artifact=REPO_CONFIG, path=str(self.store.root / saved.path), status="generated")
            )
            self.store.refresh(self.order())

    def _save_repo_config(self) -> Entry:
        return self.store.save(REPO_CONFIG, self.store.read("config"), {"config": self.store.hash_of("config") or ""})

    def _inputs_of(self, artifact: str) -> list[str]:
        """What an artifact is made from (as its stage records it), for a file the user wrote in its place."""
        if artifact == REPO_CONFIG and config_copied(self.files()):
            return ["config"]
        stage = registry.get(stage_of(artifact))
        per_file_inputs = any("/" in i for i in stage.inputs)  # only these need the logic design
        return registry.inputs_for(artifact, self._saved_logic() if per_file_inputs else None)

    def _adopt(self, artifacts: list[str], persist: bool = True) -> list[Entry]:
        """Files the user wrote where an artifact is missing become that artifact as an edit: never asked for.

        ("write the artifact yourself and rerun" is what a failed reply suggests.) Each is checked the way an
        edit is, except in a read-only view (`persist=False`: `p2c status`, the widget), which shows it as edited
        and leaves the error to the run; one whose inputs do not exist yet waits until they do (the step itself
        adopts it then).
        """
        adopted = []
        pending = self.store.meta.get("pending") or {}
        for artifact in artifacts:
            if artifact == "paper" or artifact in pending or self.store.entry(artifact) is not None:
                continue
            rel = artifact_file(artifact)
            text = self.store.read_path(rel)
            if text is None:
                continue
            inputs = self._inputs_of(artifact)
            if not registry.get(stage_of(artifact)).per_file and any(self.store.entry(i) is None for i in inputs):
                continue
            try:
                extra = validate_edit(artifact, text, self) if persist else {}
            except PlanError as exc:
                raise PlanError(
                    f"{self.store.root / rel}, written by you where {artifact} was missing, cannot be used: {exc} "
                    "Fix the file, or delete it to have it generated."
                ) from None
            status: Status = "edited"
            if artifact == REPO_CONFIG and self.store.entry("config") and text == self.store.read("config"):
                status = "generated"  # the copy an earlier version wrote without recording it
            hashes = {i: h for i in inputs if (h := self.store.hash_of(i)) is not None}
            adopted.append(self.store.adopt(artifact, text, hashes, status, extra, persist))
            if persist and status == "edited":
                self.bus.info(
                    f"{rel} was written by you where {artifact} was missing: it is kept as your edit and not asked "
                    "for; what depends on it is regenerated.",
                    artifact,
                )
        if adopted:
            self.store.refresh(self.order(), persist)
        return adopted

    def _adopt_written(self, persist: bool = True) -> None:
        """`_adopt` over every artifact; an adopted logic design brings its files, so look again."""
        while self._adopt(self.order(), persist):
            pass

    # --- human gates -------------------------------------------------------------------------------
    def resolve(self, name: str) -> list[str]:
        """An artifact id, a stage name, or a repository path -> artifact ids."""
        order = self.order()
        if name in order:
            return [name]
        members = registry.in_group(name)  # "planning", "analysis", "coding"
        stage = registry.find(name)
        if not members and stage is not None and stage.per_file:  # "code", "repo", "analyze": each of its files
            members = (stage,)
        if members:
            wanted = {s.name for s in members}
            return [a for a in order if stage_of(a) in wanted]
        for per_file in reversed(registry.file_stages()):  # a repository path: its code, else its analysis
            if f"{per_file.name}/{name}" in order:
                return [f"{per_file.name}/{name}"]
        raise RunError(f"No artifact {name!r} in {self.store.root}. Known: {', '.join(order)}.")

    def approve(self, name: str) -> list[str]:
        with self.store.locked():
            self.store.refresh(self.order())
            self._adopt_written()
            artifacts = self.resolve(name)
            for artifact in artifacts:
                entry = self.store.entry(artifact)
                if entry is None:
                    raise RunError(f"{artifact} has not been generated yet; run `p2c run {self.store.root}` first.")
                if entry.status == "stale":
                    raise RunError(
                        f"{artifact} is stale: regenerate it before approving (`p2c run {self.store.root}`)."
                    )
                if entry.status != "edited":
                    self.store.set_status(artifact, "approved")
            return artifacts

    def edit(self, artifact: str, text: str) -> Entry:
        """Save the user's version of an artifact after validating it; dependents become stale."""
        with self.store.locked():
            entry = self.store.entry(artifact)
            if entry is None:
                raise RunError(f"{artifact} does not exist yet; generate it before editing.")
            extra = validate_edit(artifact, text, self)
            saved = self.store.save(artifact, text, entry.inputs, entry.model, entry.usage, "edited", extra)
            self.store.refresh(self.order())
            return saved

    def regenerate(self, artifact: str, feedback: str | None = None, overwrite_edited: bool = False) -> Entry:
        """Generate one artifact again (optionally with feedback); its dependents become stale."""
        self._cancel.clear()
        with self.store.locked():
            self.store.refresh(self.order())
            self._adopt_written()
            entry = self.store.entry(artifact)
            if entry is not None and entry.status == "edited" and not overwrite_edited:
                raise EditedArtifactError(f"{artifact} holds your edits; confirm overwriting them to regenerate it.")
            ctx = self._context()
            try:
                if artifact == REPO_CONFIG and config_copied(self.files()):
                    saved = self._save_repo_config()
                else:
                    saved = registry.make(ctx, artifact, feedback)
            finally:
                self.store.flush()
            self.bus.emit(ArtifactSaved(artifact=artifact, path=str(self.store.root / saved.path), status=saved.status))
            self.store.refresh(self.order())
            return saved


def validate_edit(artifact: str, text: str, pipeline: Pipeline) -> dict[str, str]:
    """Check an edited artifact the way the pipeline would read it; return derived files to rewrite."""
    bounded = max_files_context(pipeline.settings.max_files)  # an edit may plan as many files as a reply may
    try:
        if artifact == "design":
            return diagram_files(ArchitectureDesign.model_validate_json(text, context=bounded))
        if artifact == "logic":
            design = ArchitectureDesign.model_validate_json(pipeline.store.read("design"))
            LogicDesign.model_validate_json(text, context=bounded).check_against(design)
        elif artifact == "config" or (artifact == REPO_CONFIG and config_copied(pipeline.files())):
            parse_config(text)
    except ValidationError as exc:
        raise PlanError(f"Your edit of {artifact} is invalid: {describe_validation(exc)}") from None
    if not text.strip():
        raise PlanError(f"Your edit of {artifact} is empty; write the artifact or regenerate it.")
    return {}


def _chain_lengths(steps: list[str], deps: dict[str, list[str]]) -> dict[str, int]:
    """For each step, the number of steps on the longest chain that starts with it (itself included)."""
    waiting: dict[str, list[str]] = {s: [] for s in steps}
    for step, needs in deps.items():
        for need in needs:
            waiting.setdefault(need, []).append(step)
    lengths: dict[str, int] = {}

    def length(step: str) -> int:
        if step not in lengths:
            lengths[step] = 1 + max((length(w) for w in waiting.get(step, [])), default=0)
        return lengths[step]

    for step in steps:
        length(step)
    return lengths


def _patient_steps(steps: list[str], deps: dict[str, list[str]]) -> set[str]:
    """Steps whose calls may wait one time to first token at the cache-aware fan-out without delaying the schedule.

    Counted in steps: a step is patient when the longest chain through it is shorter than the schedule's longest
    chain by at least one step more than the waits already allowed on the way to it (a wait lasts one time to
    first token, never longer than a call). The steps on the longest chain (e.g. the analysis of the first file
    of the deepest import chain) never wait: they lead, and the others find their prefix cached.
    """
    known = set(steps)
    after = _chain_lengths(steps, deps)  # steps on the longest chain from a step on, itself included
    before: dict[str, int] = {}  # steps on the longest chain of inputs that must come before it

    def earlier(step: str) -> int:
        if step not in before:
            before[step] = max((1 + earlier(d) for d in deps.get(step, []) if d in known), default=0)
        return before[step]

    longest = max((earlier(s) + after[s] for s in steps), default=0)
    waits: dict[str, int] = {}  # waits allowed on the way to a step, itself included
    patient: set[str] = set()
    for step in sorted(steps, key=earlier):  # inputs first: an input has fewer steps before it
        spent = max((waits[d] for d in deps.get(step, []) if d in waits), default=0)
        if longest - earlier(step) - after[step] - spent >= 1:
            patient.add(step)
            spent += 1
        waits[step] = spent
    return patient


def _file_graph(
    stages: list[Stage], todo: dict[str, list[str]], logic: LogicDesign
) -> tuple[list[str], dict[str, list[str]]]:
    """File steps to run and what each waits for: those of its inputs also made in this schedule (code(f) after
    analysis(f) and code(each dependency of f))."""
    steps = [stage.artifact(f) for stage in stages for f in todo[stage.name]]
    made = set(steps)
    deps = {step: [i for i in registry.inputs_for(step, logic) if i in made] for step in steps}
    return steps, {step: needs for step, needs in deps.items() if needs}


class _Counter:
    """Counts finished steps for Progress events; the total grows once the file list is known."""

    def __init__(self, bus: EventBus, total: int) -> None:
        self.bus, self.done, self.total = bus, 0, total
        self._lock = threading.Lock()

    def remaining(self, count: int) -> None:
        with self._lock:
            self.total = self.done + count

    def step(self) -> None:
        with self._lock:
            self.done += 1
            self.total = max(self.total, self.done)
            self.bus.emit(Progress(done=self.done, total=self.total))
