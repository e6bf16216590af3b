"""`p2c exec`: say exactly what will be installed and run, then run it in the sandbox and record whether it ran.

Nothing here runs on its own: `plan()` only looks, and the caller (CLI prompt, `%p2c exec --yes`) decides to
call `execute()`. The outcome goes into the run's manifest meta (`exec`), which `p2c status` reports.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from p2c_notebook.errors import ConfigError, RunError
from p2c_notebook.execute import sandbox
from p2c_notebook.execute.sandbox import ExecOutput, Limits, Outcome
from p2c_notebook.run.events import Event
from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.run.store import RunStore
from p2c_notebook.stages.artifacts import LogicDesign
from p2c_notebook.stages.checks import entry_file

#: Where a run's own virtual environment lives when no `--python` is given.
VENV = "exec/venv"


@dataclass(frozen=True)
class ExecPlan:
    """What `execute` will do, in full, for the user to read before saying yes."""

    run_dir: Path
    mode: str  # "smoke" | "full"
    command: list[str]
    python: Path  # the interpreter `python` means inside the sandbox
    install: list[str]  # requirements to install into the run's venv first ([] with --python)
    kind: str  # "bwrap" | "unshare" | "none"
    limits: Limits
    derived: bool  # the command comes from the entry point (no reproduce.sh)

    def describe(self) -> list[str]:
        lines = [f"Run folder: {self.run_dir} (the code runs on a scratch copy of repo/, which is thrown away)"]
        if self.python == self.run_dir / VENV / "bin" / "python":
            wanted = ", ".join(self.install) or "nothing (requirements.txt lists no package)"
            lines.append(
                f"Install into {self.run_dir / VENV} (this run's virtual environment, with network, before the "
                f"sandbox starts): {wanted}"
            )
        else:
            lines.append(f"Interpreter: {self.python} (nothing is installed)")
        how = (
            f" (from the entry point: the repository has no reproduce.sh; `p2c run {self.run_dir} --until reproduce`"
            " writes one)"
            if self.derived
            else ""
        )
        lines.append(f"Run: {' '.join(self.command)}{how}")
        lines.append(f"Sandbox: {sandbox.describe_isolation(self.kind)}")
        limits = self.limits
        lines.append(
            f"Limits: {limits.wall_s:g} s wall, {limits.cpu_s} s CPU, {limits.memory_mb} MiB memory, "
            f"{limits.processes} processes, {limits.file_mb} MiB per file; no API keys in its environment"
        )
        return lines


def plan(
    run_dir: Path | str,
    mode: str = "smoke",
    python: Path | str | None = None,
    no_sandbox: bool = False,
    limits: Limits | None = None,
) -> ExecPlan:
    """Work out what would be installed and run; runs nothing (it only asks the interpreter where it lives)."""
    root = Path(run_dir)
    repo = root / "repo"
    if not RunStore.is_run(root) or not repo.is_dir():
        raise RunError(f"{root} has no generated repository (repo/); run `p2c run {root}` first.")
    kind = sandbox.isolation(no_sandbox)
    flag = ["--smoke"] if mode == "smoke" else []
    if (repo / "reproduce.sh").is_file():
        command, derived = ["bash", "reproduce.sh", *flag], False
    elif (entry := entry_point(root)) is not None:
        command, derived = ["python", entry, *flag], True
    else:
        raise RunError(
            f"{repo} has no reproduce.sh and no entry point (main.py, run.py, train.py...): nothing says how to run "
            f"it; `p2c run {root} --until reproduce` writes reproduce.sh."
        )
    install: list[str] = []
    if python is not None:
        interpreter = sandbox.interpreter(Path(python))  # refuses a path that is not an interpreter, now
    else:
        interpreter = root / VENV / "bin" / "python"
        install = _requirements(repo)
    return ExecPlan(root, mode, command, interpreter, install, kind, limits or Limits(), derived)


def entry_point(root: Path) -> str | None:
    """The repository file that runs the experiment: main.py, else the one the logic design calls the entry point,
    else the best-named file (run.py, train.py...), as the static checks find it."""
    repo = root / "repo"
    if (repo / "main.py").is_file():
        return "main.py"
    logic = _saved_logic(root)
    files = sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*.py") if p.is_file())
    found = entry_file(None, logic, files)
    return found if found is not None and (repo / found).is_file() else None


def _saved_logic(root: Path) -> LogicDesign | None:
    store = RunStore(root)
    if store.entry("logic") is None:
        return None
    try:
        return LogicDesign.model_validate_json(store.read("logic"))
    except (ValidationError, RunError):
        return None


def reproduce_offer(pipeline: Pipeline) -> str | None:
    """What to tell the user when the repository has no reproduce.sh but this run could make it now with one model
    call (the `reproduce` stage: every other artifact is generated and up to date); None otherwise."""
    if (pipeline.store.root / "repo" / "reproduce.sh").is_file():
        return None
    rows = pipeline.rows()
    if not any(r.artifact.startswith("code/") for r in rows):
        return None
    if any(r.status in ("missing", "stale") for r in rows if r.artifact != "reproduce"):
        return None  # `p2c run` first: more than one call; the entry point runs meanwhile
    return (
        "The repository has no reproduce.sh (how to install and run it, with a --smoke mode). Generating it is "
        "one model call (the reproduce stage, a second only if its reply is not a script)."
    )


def make_reproduce(pipeline: Pipeline) -> str:
    """Generate repo/reproduce.sh (the `reproduce` stage) when nothing else is left to make; returns what was done."""
    rows = pipeline.rows()
    todo = [r.artifact for r in rows if r.status in ("missing", "stale") and r.artifact != "reproduce"]
    if todo:
        raise RunError(
            f"{len(todo)} artifact(s) are missing or stale ({todo[0]}...): run `p2c run {pipeline.store.root}` "
            "first, so that reproduce.sh is made from the current code."
        )
    result = pipeline.run(until="reproduce")
    if not (pipeline.store.root / "repo" / "reproduce.sh").is_file():
        raise RunError(f"reproduce.sh was not made: {result.message}")
    return f"Generated {pipeline.store.root / 'repo' / 'reproduce.sh'}."


def _requirements(repo: Path) -> list[str]:
    path = repo / "requirements.txt"
    if not path.is_file():
        return []
    lines = [line.split("#", 1)[0].strip() for line in path.read_text(errors="replace").splitlines()]
    bad = [line for line in lines if line.startswith("-") or "://" in line or line.startswith((".", "/"))]
    if bad:
        raise ConfigError(
            f"requirements.txt asks for more than packages by name ({bad[0]!r}); remove that line, or install "
            "yourself and pass --python PATH."
        )
    return [line for line in lines if line]


def execute(exec_plan: ExecPlan, sink: Callable[[Event], None] | None = None) -> Outcome:
    """Install (venv mode), run in the sandbox, record the outcome in the manifest; return it."""
    if not exec_plan.python.exists() or exec_plan.install:
        _install(exec_plan, sink)
    outcome = sandbox.run(
        exec_plan.run_dir,
        exec_plan.command,
        exec_plan.python,
        limits=exec_plan.limits,
        kind=exec_plan.kind,
        sink=sink,
    )
    store = RunStore(exec_plan.run_dir)
    with store.locked():
        store.reload()
        store.set_meta(exec={**outcome.to_dict(), "mode": exec_plan.mode, "python": str(exec_plan.python)})
    return outcome


def _install(exec_plan: ExecPlan, sink: Callable[[Event], None] | None) -> None:
    """A per-run venv with the requirements, and `pip freeze` of it in exec/installed.txt. This step has the
    network (the sandboxed run does not); its environment holds no API keys either."""
    venv = exec_plan.run_dir / VENV
    env = {"PATH": os.defpath, "LANG": "C.UTF-8", "HOME": str(venv), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    log = exec_plan.run_dir / "exec" / "install.log"
    log.parent.mkdir(exist_ok=True)
    steps = [[sys.executable, "-m", "venv", str(venv)]] if not (venv / "bin" / "python").exists() else []
    if exec_plan.install:
        steps.append([str(venv / "bin" / "python"), "-m", "pip", "install", *exec_plan.install])
    with log.open("a", encoding="utf-8") as out:
        for step in steps:
            done = subprocess.run(step, env=env, capture_output=True, text=True, check=False, timeout=3600)
            out.write(f"$ {' '.join(step)}\n{done.stdout}{done.stderr}")
            if sink is not None:
                sink(ExecOutput(text=done.stdout + done.stderr))
            if done.returncode != 0:
                raise RunError(
                    f"Installing the requirements failed (see {log}); fix requirements.txt or pass --python PATH."
                )
    frozen = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "freeze"], env=env, capture_output=True, text=True, check=False
    )
    (exec_plan.run_dir / "exec" / "installed.txt").write_text(frozen.stdout)


def describe_status(meta: dict[str, Any]) -> str | None:
    """The line `p2c status` prints about the last run of the repository (None: it never ran)."""
    last = meta.get("exec")
    if not isinstance(last, dict):
        return None
    verdict = "ran" if last.get("passed") else "did not run"
    return (
        f"Repository {verdict} ({last.get('mode', 'smoke')} run, attempt {last.get('attempt')}): "
        f"{last.get('reason')}; output in {last.get('log')}"
    )
