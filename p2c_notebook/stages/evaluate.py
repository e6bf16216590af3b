"""Judge a generated repository against its paper (PaperCoder, section 4.3), with or without a reference.

A judge model lists the components the paper requires, critiques the repository against them (severity high,
medium or low) and gives one correctness score from 1 to 5, as schema-checked JSON. It is sampled `n` times; the
mean of the valid samples is the result, reported with its spread. A reply that is not valid is re-asked once and
then dropped (kept on disk, with what it cost). With a reference repository too long for the judge's context
window, the judge first picks the reference files that matter from a list of names and sizes.

Everything lands in the run folder's `eval/`: one file per sample and `eval/summary.json`, which records the hash
of the code it judged, so the result goes stale when the code changes (`eval_status`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import statistics
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from p2c_notebook.backends import Backend, Messages, make_backend
from p2c_notebook.errors import ConfigError, ReplyError, RunError
from p2c_notebook.prompts import PromptBuilder
from p2c_notebook.prompts.builder import render, schema_text
from p2c_notebook.run.estimate import known_context_window
from p2c_notebook.run.events import ArtifactSaved, Event, EventBus, Progress, Sink, UsageReported
from p2c_notebook.run.runlog import RunLog
from p2c_notebook.run.store import RunStore, atomic_write, now
from p2c_notebook.run.usage import Usage
from p2c_notebook.secrets import Scrubber
from p2c_notebook.settings import Settings
from p2c_notebook.stages.context import StageContext
from p2c_notebook.stages.parsing import ParseError, extract_json
from p2c_notebook.tokens import estimate_tokens

EVAL_DIR = "eval"
SUMMARY = "eval/summary.json"
SAMPLES = "eval/samples"
JUDGE_STAGE = "judge"  # the X-P2C-Stage of a judging call (X-P2C-File: sample-N)
NARROW_STAGE = "judge-narrow"  # the call that picks the reference files to show
DEFAULT_SAMPLES = 8
REPLY_ROOM = 4096  # tokens kept free in the judge's window for its reply (less when max_tokens is smaller)
PROMPT_MARGIN = 0.05  # token counts are estimates (within ~15%): keep this share of the window spare as well
Mode = Literal["reference-free", "reference-based"]
EvalStatus = Literal["missing", "current", "stale"]
Severity = Literal["high", "medium", "low"]
SEVERITIES: tuple[Severity, ...] = ("high", "medium", "low")

# Bounds on what is read from a repository (generated or reference): source code, not data sets.
MAX_FILES = 2000
MAX_FILE_BYTES = 512 * 1024
MAX_TOTAL_BYTES = 32 * 1024 * 1024
MAX_ARCHIVE_MEMBERS = 20_000
SKIPPED_DIRS = frozenset({"__pycache__", "node_modules", "venv", "site-packages", "wandb"})
SKIPPED_SUFFIXES = (".pyc", ".pyo", ".so", ".o", ".pt", ".pth", ".ckpt", ".npy", ".npz", ".pkl", ".bin", ".zip")


# --------------------------------------------------------------------------------------------------- the replies
class Critique(BaseModel):
    """One component the repository gets wrong or lacks."""

    model_config = ConfigDict(extra="ignore")

    component: str = Field(min_length=1, description="the paper's component this is about")
    severity: Severity
    files: list[str] = Field(default_factory=list, description="repository files concerned")
    critique: str = Field(min_length=1, description="what is wrong or missing")

    @field_validator("severity", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("files", mode="before")
    @classmethod
    def _listed(cls, value: object) -> object:
        """One file written as a string instead of a list of one is no reason to re-ask."""
        return [value] if isinstance(value, str) and value.strip() else [] if value is None else value


class Judgement(BaseModel):
    """The judge's answer: the components the paper requires, the critiques and one score."""

    model_config = ConfigDict(extra="ignore")

    components: list[str] = Field(min_length=1, description="components the paper requires")
    critique_list: list[Critique] = Field(description="one entry per missing or wrong component")
    score: int = Field(ge=1, le=5, description="correctness, 1 (does not implement the paper) to 5 (faithful)")


class FileChoice(BaseModel):
    """The reference files the judge wants to see, most important first."""

    model_config = ConfigDict(extra="ignore")

    files: list[str] = Field(min_length=1)


def parse_judgement(text: str) -> Judgement:
    return Judgement.model_validate(extract_json(text))


# ----------------------------------------------------------------------------------------------- repositories
@dataclass(frozen=True)
class SourceFile:
    path: str  # relative, with forward slashes
    text: str

    @property
    def tokens(self) -> int:
        return estimate_tokens(self.text)


@dataclass
class Tree:
    """The text files of a repository, and what was left out (binary, too large, past the bounds)."""

    files: list[SourceFile] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    _bytes: int = 0

    def add(self, path: str, raw: bytes) -> bool:
        """Keep a file if it is text and within the bounds; False once the bounds are reached (stop reading)."""
        if len(self.files) >= MAX_FILES or self._bytes + len(raw) > MAX_TOTAL_BYTES:
            self.skipped.append(f"{path} (past the limit of {MAX_FILES} files / {MAX_TOTAL_BYTES >> 20} MiB)")
            return False
        if len(raw) > MAX_FILE_BYTES:
            self.skipped.append(f"{path} (larger than {MAX_FILE_BYTES >> 10} KiB)")
            return True
        if b"\0" in raw[:8192]:
            self.skipped.append(f"{path} (binary)")
            return True
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            self.skipped.append(f"{path} (not UTF-8 text)")
            return True
        self.files.append(SourceFile(path, text))
        self._bytes += len(raw)
        return True

    def sorted(self) -> Tree:
        self.files.sort(key=lambda f: f.path)
        return self


def _wanted(path: str) -> bool:
    parts = PurePosixPath(path).parts
    if any(p.startswith(".") or p in SKIPPED_DIRS for p in parts):
        return False
    return not path.lower().endswith(SKIPPED_SUFFIXES)


def _safe_member(name: str) -> str | None:
    """An archive member's name as a relative path, or None when it is absolute or climbs out (`..`)."""
    name = name.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return None
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


def read_folder(root: Path) -> Tree:
    """Text files under `root`, never through a link (links, pipes and devices are skipped)."""
    tree = Tree()
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    for folder, dirs, names in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIPPED_DIRS)
        for name in sorted(names):
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            if not _wanted(rel):
                continue
            try:
                info = os.lstat(path)
                if not stat.S_ISREG(info.st_mode):
                    tree.skipped.append(f"{rel} (not a regular file)")
                    continue
                fd = os.open(path, os.O_RDONLY | nofollow)
                with os.fdopen(fd, "rb") as handle:
                    raw = handle.read(MAX_FILE_BYTES + 1)
            except OSError as exc:
                tree.skipped.append(f"{rel} ({exc.strerror or exc})")
                continue
            if not tree.add(rel, raw):
                return tree.sorted()
    return tree.sorted()


def _strip_common_folder(tree: Tree) -> Tree:
    """`project-main/src/x.py` -> `src/x.py`: archives of a repository usually wrap it in one folder."""
    firsts = {f.path.split("/", 1)[0] for f in tree.files}
    if len(firsts) == 1 and all("/" in f.path for f in tree.files):
        tree.files = [SourceFile(f.path.split("/", 1)[1], f.text) for f in tree.files]
    return tree


def _read_zip(path: Path) -> Tree:
    tree = Tree()
    with zipfile.ZipFile(path) as archive:
        for count, info in enumerate(archive.infolist()):
            if count >= MAX_ARCHIVE_MEMBERS:
                tree.skipped.append(f"members past the first {MAX_ARCHIVE_MEMBERS}")
                break
            rel = _safe_member(info.filename)
            if info.is_dir() or rel is None or not _wanted(rel):
                continue
            kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the archiver recorded no file type
            if kind and kind != stat.S_IFREG:  # a link or a device stored in the archive
                tree.skipped.append(f"{rel} (not a regular file)")
                continue
            if info.file_size > MAX_FILE_BYTES:
                tree.skipped.append(f"{rel} (larger than {MAX_FILE_BYTES >> 10} KiB)")
                continue
            with archive.open(info) as member:  # bounded: a member may lie about its size
                if not tree.add(rel, member.read(MAX_FILE_BYTES + 1)):
                    break
    return tree


def _read_tar(path: Path) -> Tree:
    tree = Tree()
    with tarfile.open(path, "r:*") as archive:
        for count, info in enumerate(archive):
            if count >= MAX_ARCHIVE_MEMBERS:
                tree.skipped.append(f"members past the first {MAX_ARCHIVE_MEMBERS}")
                break
            rel = _safe_member(info.name)
            if rel is None or not info.isfile() or not _wanted(rel):  # links and devices are never followed
                continue
            if info.size > MAX_FILE_BYTES:
                tree.skipped.append(f"{rel} (larger than {MAX_FILE_BYTES >> 10} KiB)")
                continue
            member = archive.extractfile(info)
            if member is None:
                continue
            with member:
                if not tree.add(rel, member.read(MAX_FILE_BYTES + 1)):
                    break
    return tree


def read_reference(source: Path | str) -> Tree:
    """A reference repository: a folder, or a .zip / .tar(.gz, .bz2, .xz) archive read in memory.

    Nothing is extracted to disk, so no member can land outside a folder; names that are absolute or climb out
    with `..` are skipped, as are links, devices, binary files and anything past the size bounds.
    """
    path = Path(source)
    if path.is_dir():
        tree = read_folder(path)
    elif not path.is_file():
        raise ConfigError(f"The reference {path} does not exist. Pass a folder, a .zip or a .tar.gz with --reference.")
    else:
        try:
            if zipfile.is_zipfile(path):
                tree = _read_zip(path)
            elif tarfile.is_tarfile(path):
                tree = _read_tar(path)
            else:
                raise ConfigError(f"The reference {path} is neither a folder nor a .zip or .tar.gz archive.")
        except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError, RuntimeError) as exc:
            raise ConfigError(
                f"Cannot read the reference archive {path}: {exc}. Check the file or unpack it."
            ) from None
        tree = _strip_common_folder(tree).sorted()
    if not tree.files:
        raise ConfigError(f"The reference {path} holds no text files to compare with. Point --reference at its code.")
    return tree


def repository_hash(files: list[SourceFile]) -> str:
    """sha256 over the judged files (names and contents): any edit, addition or removal changes it."""
    digest = hashlib.sha256()
    for source in sorted(files, key=lambda f: f.path):
        digest.update(f"{source.path}\0{hashlib.sha256(source.text.encode('utf-8')).hexdigest()}\n".encode())
    return digest.hexdigest()


def generated_files(run_dir: Path) -> list[SourceFile]:
    return read_folder(Path(run_dir) / "repo").files


def clean_name(name: str) -> str:
    """A file name as a judge may write it (`./train.py`, `` `train.py` ``) as a repository-relative path."""
    name = name.strip().strip("`").replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name


def format_files(files: list[SourceFile]) -> str:
    return "\n\n".join(f'<file path="{f.path}">\n{f.text.rstrip()}\n</file>' for f in files)


# ------------------------------------------------------------------------------------------------ the results
class MergedCritique(BaseModel):
    """A critique as the valid samples agree on it: worst severity, every file named, how many raised it."""

    component: str
    severity: Severity
    files: list[str]
    critique: str
    samples: int


class SampleRecord(BaseModel):
    """One judging sample as saved in eval/samples/: its replies (a re-ask adds one), verdict and cost."""

    index: int
    valid: bool
    judgement: Judgement | None = None
    error: str | None = None
    replies: list[str] = Field(default_factory=list)
    usage: dict[str, object] = Field(default_factory=dict)


class EvalSummary(BaseModel):
    """eval/summary.json: the score over the valid samples, their spread, and what was judged."""

    version: int = 1
    mode: Mode
    judge: str
    created: str
    n: int
    valid: int
    scores: list[int]
    mean: float | None
    std: float | None
    min: int | None
    max: int | None
    repo_sha256: str
    files: list[str]
    reference: str | None = None
    reference_files: list[str] = Field(default_factory=list)
    narrowed: bool = False
    notes: list[str] = Field(default_factory=list)
    critiques: list[MergedCritique] = Field(default_factory=list)
    usage: dict[str, object] = Field(default_factory=dict)

    def describe(self) -> str:
        if self.mean is None:
            return f"no valid sample of {self.n} ({self.mode}, judge {self.judge})"
        spread = f"std {self.std:.2f}, min {self.min}, max {self.max}"
        return (
            f"{self.mean:.2f} / 5 ({spread}; {self.valid} of {self.n} samples valid; {self.mode}, judge {self.judge})"
        )


def merge_critiques(judgements: list[Judgement]) -> list[MergedCritique]:
    """Critiques of the same component (same words, case and punctuation aside) across samples become one."""
    merged: dict[str, MergedCritique] = {}
    for judgement in judgements:
        seen: set[str] = set()
        for item in judgement.critique_list:
            key = " ".join(re.findall(r"\w+", item.component.lower()))
            entry = merged.get(key)
            if entry is None:
                merged[key] = MergedCritique(
                    component=item.component, severity=item.severity, files=list(dict.fromkeys(item.files)),
                    critique=item.critique, samples=1,
                )  # fmt: skip
                seen.add(key)
                continue
            if SEVERITIES.index(item.severity) < SEVERITIES.index(entry.severity):
                entry.severity, entry.critique = item.severity, item.critique
            entry.files = list(dict.fromkeys([*entry.files, *item.files]))
            if key not in seen:
                entry.samples += 1
                seen.add(key)
    return sorted(merged.values(), key=lambda c: (SEVERITIES.index(c.severity), -c.samples, c.component.lower()))


def summarise(scores: list[int]) -> tuple[float | None, float | None, int | None, int | None]:
    """Mean, sample standard deviation (0 for one sample), min and max of the valid scores."""
    if not scores:
        return None, None, None, None
    std = statistics.stdev(scores) if len(scores) > 1 else 0.0
    return statistics.fmean(scores), std, min(scores), max(scores)


def load_summary(run_dir: Path | str) -> EvalSummary | None:
    path = Path(run_dir) / SUMMARY
    try:
        return EvalSummary.model_validate_json(path.read_bytes())
    except (OSError, ValidationError, ValueError):
        return None


def eval_status(run_dir: Path | str) -> EvalStatus:
    """ "missing" (never judged, or the summary is unreadable), "current", or "stale" (the code changed since)."""
    summary = load_summary(run_dir)
    if summary is None:
        return "missing"
    return "current" if repository_hash(generated_files(Path(run_dir))) == summary.repo_sha256 else "stale"


@dataclass(frozen=True)
class EvalView:
    """What an Evaluate panel shows: status, the summary, and each critique's files as run-folder paths."""

    status: EvalStatus
    summary: EvalSummary | None
    links: dict[str, str]  # a file a critique names -> its path in the run folder (only files that exist)


def eval_view(run_dir: Path | str) -> EvalView:
    root = Path(run_dir)
    summary = load_summary(root)
    if summary is None:
        return EvalView("missing", None, {})
    files = generated_files(root)
    known = {f.path for f in files}
    links = {}
    for critique in summary.critiques:
        for name in critique.files:
            rel = clean_name(name)
            if rel in known:
                links[name] = f"repo/{rel}"
    status: EvalStatus = "current" if repository_hash(files) == summary.repo_sha256 else "stale"
    return EvalView(status, summary, links)


# ------------------------------------------------------------------------------------------------- the judge
class _UsageBySample:
    """Collects the usage of each call per sample id (a dropped sample's calls were paid for too)."""

    def __init__(self) -> None:
        self.usage: dict[str, Usage] = {}
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        if isinstance(event, UsageReported):
            with self._lock:
                self.usage[event.artifact] = self.usage.get(event.artifact, Usage()) + event.usage


@dataclass
class Evaluator:
    """Judges the repository of one run folder; `evaluate()` saves and returns the summary."""

    store: RunStore
    backend: Backend
    settings: Settings
    bus: EventBus = field(default_factory=EventBus)
    cancel: threading.Event = field(default_factory=threading.Event)

    def window(self) -> int | None:
        window = self.settings.context_window or self.backend.context_window
        return window or known_context_window(self.backend.model)

    def _context(self, paper: str) -> StageContext:
        # Exactly one re-ask for an unusable reply, whatever the backend's own repair setting.
        settings = self.settings.model_copy(update={"max_repairs": 1})
        return StageContext(self.store, self.backend, self.bus, settings, PromptBuilder(paper, {}), self.cancel)

    def evaluate(self, n: int = DEFAULT_SAMPLES, reference: Path | str | None = None) -> EvalSummary:
        if n < 1:
            raise ConfigError(f"-n must be at least 1 (got {n}): the number of judging samples.")
        paper = self.store.read("paper")
        files = generated_files(self.store.root)
        if not files:
            raise RunError(f"{self.store.root / 'repo'} holds no generated code to judge. Run `p2c run` first.")
        ref_tree = read_reference(reference) if reference is not None else None
        counter = _UsageBySample()
        self.bus.subscribe(counter)
        ctx = self._context(paper)
        notes = list(ref_tree.skipped[:20]) if ref_tree else []
        shown: list[SourceFile] = ref_tree.files if ref_tree else []
        narrowed = False
        if ref_tree is not None:
            shown, narrowed = self._fit_reference(ctx, paper, files, ref_tree.files, notes)
        else:
            self._check_fits(self._judge_messages(paper, files, None, ""))
        note = self._reference_note(ref_tree.files, shown) if ref_tree else ""
        messages = self._judge_messages(paper, files, shown if ref_tree else None, note)
        records = self._sample_all(ctx, messages, n, counter)
        judgements = [r.judgement for r in records if r.judgement is not None]
        scores = [j.score for j in judgements]
        mean, std, low, high = summarise(scores)
        total = sum(counter.usage.values(), Usage())
        summary = EvalSummary(
            mode="reference-based" if ref_tree else "reference-free",
            judge=self.backend.model,
            created=now(),
            n=n,
            valid=len(scores),
            scores=scores,
            mean=mean,
            std=std,
            min=low,
            max=high,
            repo_sha256=repository_hash(files),
            files=[f.path for f in files],
            reference=str(reference) if reference is not None else None,
            reference_files=[f.path for f in shown],
            narrowed=narrowed,
            notes=notes,
            critiques=merge_critiques(judgements),
            usage=total.to_dict(),
        )
        self._save(records, summary)
        if not scores:
            raise ReplyError(
                f"None of the {n} judging samples gave a valid judgement (each was re-asked once); the replies are "
                f"in {self.store.root / SAMPLES}. Try a stronger judge (--judge MODEL)."
            )
        return summary

    # --- prompts -------------------------------------------------------------------------------------------
    def _judge_messages(self, paper: str, files: list[SourceFile], ref: list[SourceFile] | None, note: str) -> Messages:
        task = render("judge_task", schema=schema_text(Judgement))
        if ref is None:
            user = render("judge_free", paper=paper.strip(), repository=format_files(files), task=task)
        else:
            user = render(
                "judge_ref",
                paper=paper.strip(),
                reference=format_files(ref),
                repository=format_files(files),
                reference_note=note,
                task=task,
            )
        return [{"role": "system", "content": render("judge_system")}, {"role": "user", "content": user}]

    @staticmethod
    def _reference_note(all_files: list[SourceFile], shown: list[SourceFile]) -> str:
        if len(shown) == len(all_files):
            return ""
        return f" Only {len(shown)} of the reference's {len(all_files)} files are shown: those that matter most."

    def _budget(self) -> int | None:
        """Tokens a judging prompt may have (None: the window is unknown, so nothing is narrowed)."""
        window = self.window()
        if window is None:
            return None
        return int(window * (1 - PROMPT_MARGIN)) - min(self.settings.max_tokens, REPLY_ROOM)

    def _check_fits(self, messages: Messages) -> None:
        budget, size = self._budget(), _tokens(messages)
        if budget is not None and size > budget:
            raise ConfigError(
                f"The paper and the generated repository take ~{size:,} tokens, more than the judge's context window "
                f"leaves for them (~{budget:,} of {self.window():,}). Use a judge with a larger window (--judge), or "
                "set context_window (P2C_CONTEXT_WINDOW) if the model's window is larger than assumed."
            )

    def _fit_reference(
        self, ctx: StageContext, paper: str, files: list[SourceFile], ref: list[SourceFile], notes: list[str]
    ) -> tuple[list[SourceFile], bool]:
        """The whole reference when it fits; else the files the judge picks, in its order, while they fit."""
        budget = self._budget()
        base = _tokens(self._judge_messages(paper, files, [], self._reference_note(ref, ref[:1])))
        self._check_fits(self._judge_messages(paper, files, None, ""))
        if budget is None or base + _tokens_of(ref) <= budget:
            return ref, False
        room = budget - base
        if room < 200:
            raise ConfigError(
                f"The paper and the generated repository leave no room in the judge's window (~{budget:,} tokens) "
                "for any of the reference. Use a judge with a larger window (--judge), or judge without --reference."
            )
        chosen = self._choose(ctx, paper, ref, room, notes)
        shown, used = [], 0
        for source in chosen:
            size = estimate_tokens(format_files([source])) + 2
            if used + size > room:
                notes.append(f"reference file {source.path} left out: it did not fit the judge's window")
                continue
            shown.append(source)
            used += size
        if not shown:
            raise ConfigError(
                f"None of the reference files the judge chose fits in the room left (~{room:,} tokens). Pass a "
                "smaller reference (only its source folder) or use a judge with a larger window (--judge)."
            )
        return shown, True

    def _choose(
        self, ctx: StageContext, paper: str, ref: list[SourceFile], room: int, notes: list[str]
    ) -> list[SourceFile]:
        by_path = {f.path: f for f in ref}
        listing = "\n".join(f"{f.path} ({f.tokens:,} tokens)" for f in ref)
        prompt = render(
            "judge_narrow", paper=paper.strip(), listing=listing, budget=f"{room:,}", schema=schema_text(FileChoice)
        )
        messages = [{"role": "system", "content": render("judge_system")}, {"role": "user", "content": prompt}]
        self._check_fits(messages)

        def parse(text: str) -> list[SourceFile]:
            choice = FileChoice.model_validate(extract_json(text))
            names = [clean_name(name) for name in choice.files]
            unknown = [name for name in names if name not in by_path]
            known = [by_path[name] for name in dict.fromkeys(names) if name in by_path]
            if not known:
                raise ParseError(f"none of the files chosen ({', '.join(names[:5])}) is in the list; use its paths.")
            if unknown:
                notes.append(f"the judge chose files not in the reference, ignored: {', '.join(unknown[:10])}")
            return known

        try:
            chosen, _ = ctx.ask("eval/narrow", NARROW_STAGE, "", messages, parse, FileChoice)
        except ReplyError as exc:
            raise ReplyError(f"The judge could not choose the reference files to compare with: {exc}") from None
        return chosen

    # --- sampling ------------------------------------------------------------------------------------------
    def _sample_all(self, ctx: StageContext, messages: Messages, n: int, counter: _UsageBySample) -> list[SampleRecord]:
        done = 0
        lock = threading.Lock()

        def one(index: int) -> SampleRecord:
            nonlocal done
            record = self._sample(ctx, messages, index, counter)
            with lock:
                done += 1
                self.bus.emit(Progress(artifact=f"eval/sample-{index}", done=done, total=n))
            return record

        self.bus.emit(Progress(done=0, total=n))
        workers = max(1, min(n, self.settings.concurrency))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="p2c-judge") as pool:
            futures = [pool.submit(one, i) for i in range(1, n + 1)]
            try:
                return [f.result() for f in futures]
            except BaseException:
                self.cancel.set()  # a failed call (server gone, cancelled): do not start the others
                raise
            finally:
                self.store.flush()  # what was paid is in the spent total even when a call failed

    def _sample(self, ctx: StageContext, messages: Messages, index: int, counter: _UsageBySample) -> SampleRecord:
        artifact = f"eval/sample-{index}"
        replies: list[str] = []

        def parse(text: str) -> Judgement:
            replies.append(text)
            return parse_judgement(text)

        try:
            judgement, _ = ctx.ask(artifact, JUDGE_STAGE, f"sample-{index}", messages, parse, Judgement)
        except ReplyError as exc:
            self.bus.warn(f"judging sample {index} dropped: {exc}", artifact)
            usage = counter.usage.get(artifact, Usage())
            return SampleRecord(index=index, valid=False, error=str(exc), replies=replies, usage=usage.to_dict())
        usage = counter.usage.get(artifact, Usage())
        return SampleRecord(index=index, valid=True, judgement=judgement, replies=replies, usage=usage.to_dict())

    # --- saving --------------------------------------------------------------------------------------------
    def _save(self, records: list[SampleRecord], summary: EvalSummary) -> None:
        """The samples first, then the summary: a summary on disk always has its samples next to it."""
        root = self.store.root / EVAL_DIR
        if (root / "samples").is_symlink() or root.is_symlink():
            raise RunError(f"{root} is a symbolic link; p2c never writes through links. Remove it and run again.")
        samples = root / "samples"
        old = samples.with_name(".samples.old")
        with contextlib.suppress(FileNotFoundError):
            if samples.is_dir():
                shutil.rmtree(old, ignore_errors=True)
                samples.rename(old)  # the previous evaluation's samples go as a whole
        for record in records:
            atomic_write(samples / f"sample-{record.index}.json", record.model_dump_json(indent=2) + "\n", False)
        atomic_write(root / "summary.json", summary.model_dump_json(indent=2) + "\n")
        shutil.rmtree(old, ignore_errors=True)
        self.store.flush()
        self.bus.emit(ArtifactSaved(artifact="eval", path=SUMMARY))


def _tokens(messages: Messages) -> int:
    return sum(estimate_tokens(m["content"]) + 4 for m in messages)


def _tokens_of(files: list[SourceFile]) -> int:
    return estimate_tokens(format_files(files))


def evaluate_run(
    run_dir: Path | str,
    backend: Backend,
    settings: Settings,
    n: int = DEFAULT_SAMPLES,
    reference: Path | str | None = None,
    bus: EventBus | None = None,
    cancel: threading.Event | None = None,
) -> EvalSummary:
    """Judge a run folder's repository, holding the run folder's lock (no run may change the code meanwhile).

    Every event also goes to the run's log (logs/run.log), as a run's do.
    """
    if not RunStore.is_run(run_dir):
        raise RunError(f"{run_dir} is not a p2c run folder (no manifest.json). Start one with `p2c run PAPER`.")
    store = RunStore(run_dir)
    bus = bus or EventBus()
    bus.subscribe(RunLog(store.root / "logs" / "run.log", Scrubber.for_settings(settings)))
    with store.locked():
        try:
            return Evaluator(store, backend, settings, bus, cancel or threading.Event()).evaluate(n, reference)
        finally:
            store.flush()  # what was paid counts in the run's spent total, also when judging failed


def judge(
    run_dir: Path | str,
    settings: Settings,
    n: int = DEFAULT_SAMPLES,
    reference: Path | str | None = None,
    sinks: tuple[Sink, ...] = (),
    cancel: threading.Event | None = None,
) -> EvalSummary:
    """`evaluate_run` with a backend made from `settings` (the judge model) and closed afterwards."""
    bus = EventBus(*sinks)
    if not settings.local_server_log:  # an embedded llama.cpp server logs into this run's logs/
        settings = settings.model_copy(update={"local_server_log": str(Path(run_dir) / "logs" / "local-server.log")})
    backend = make_backend(settings, notify=bus.info)
    try:
        # A local model's tuned settings (its reply limit, its prices) are the ones its calls use.
        effective = getattr(backend, "settings", None)
        return evaluate_run(
            run_dir, backend, effective if isinstance(effective, Settings) else settings, n, reference, bus, cancel
        )
    finally:
        backend.close()


# ------------------------------------------------------------------------------------------------ comparing
def _run_seconds(run_dir: Path) -> float | None:
    """Time spent generating, from the run log: each RunStarted to the RunFinished after it, summed."""
    try:
        with open(run_dir / "logs" / "run.log", "rb") as handle:
            text = handle.read(8 << 20).decode("utf-8", "replace")
    except OSError:
        return None
    total, started = 0.0, None
    for line in text.splitlines():
        stamp, _, rest = line.partition(" ")
        if rest.startswith("RunStarted"):
            started = _parse_time(stamp)
        elif rest.startswith("RunFinished") and started is not None:
            finished = _parse_time(stamp)
            if finished is not None:
                total += finished - started
            started = None
    return total or None


def _parse_time(stamp: str) -> float | None:
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None


def _checks_cell(run_dir: Path) -> str:
    try:
        data = json.loads((run_dir / "checks.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "-"
    if not isinstance(data, dict):
        return "-"
    errors, warnings = data.get("errors"), data.get("warnings")
    if isinstance(errors, int):
        clean = "clean" if errors == 0 else f"{errors} errors"
        return clean + (f", {warnings} warnings" if isinstance(warnings, int) and warnings else "")
    return "-"


def _models(store: RunStore) -> str:
    names = [e.model for e in store.entries() if e.model and e.artifact != "paper"]
    return ", ".join(dict.fromkeys(names)) or "-"


def compare_rows(runs: list[Path | str]) -> list[dict[str, str]]:
    """One row per run folder: model, calls, tokens, cost, time, checks and evaluation score."""
    rows = []
    for run in runs:
        root = Path(run)
        if not RunStore.is_run(root):
            raise RunError(f"{root} is not a p2c run folder (no manifest.json). Pass run folders to compare.")
        store = RunStore(root)
        spent = store.spent()
        seconds = _run_seconds(root)
        view = eval_view(root)
        score = "-"
        if view.summary is not None and view.summary.mean is not None:
            s = view.summary
            score = f"{s.mean:.2f} ± {s.std:.2f} ({s.valid}/{s.n}, {s.mode}, {view.status})"
        cost = "unknown" if spent.cost is None else f"${spent.cost:.4f}"
        rows.append(
            {
                "run": str(root),
                "model": _models(store),
                "calls": str(spent.calls),
                "tokens in / out": f"{spent.prompt_tokens:,} / {spent.completion_tokens:,}",
                "cost": cost,
                "time": "-" if seconds is None else f"{seconds:.0f} s",
                "checks": _checks_cell(root),
                "eval score": score,
            }
        )
    return rows


def compare_table(runs: list[Path | str]) -> str:
    """The runs side by side as a Markdown table (`|` in a cell is escaped)."""
    rows = compare_rows(runs)
    heads = list(rows[0]) if rows else []
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join("---" for _ in heads) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(row[h].replace("|", "\\|") for h in heads) + " |")
    return "\n".join(lines)


def iter_critique_lines(summary: EvalSummary) -> Iterator[str]:
    """The merged critique list as text lines: severity, component, files, how many samples raised it."""
    for c in summary.critiques:
        files = f" [{', '.join(c.files)}]" if c.files else ""
        yield f"{c.severity:<6} {c.component}{files} ({c.samples}/{summary.valid}): {c.critique}"


def report_lines(summary: EvalSummary) -> list[str]:
    """What `p2c eval` and `%p2c eval` print: the score and spread, each critique, and what judging cost."""
    lines = [f"Score: {summary.describe()}"]
    lines += [f"  {line}" for line in iter_critique_lines(summary)]
    if summary.valid and not summary.critiques:
        lines.append("  (no critique: the judge found every component it listed implemented)")
    if summary.narrowed:
        lines.append(f"  (the reference was narrowed to {len(summary.reference_files)} files the judge chose)")
    usage = Usage.from_dict(summary.usage)
    lines.append(f"Judging: {usage.calls} calls, {usage.describe()}")
    return lines
