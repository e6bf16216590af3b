"""Repair benchmark: does the generated repository run, before repair and after each round of model-proposed fixes?

    python benchmarks/bench_repair.py                               # the example paper, fixes by the embedded model
    python benchmarks/bench_repair.py --save                        # also write benchmarks/results/repair.json
    python benchmarks/bench_repair.py --run RUN --backend scripted:FIXES.yaml --python "$(which python)"

The repository: a copy of each `--run` folder, or (default) the example paper's run replayed offline from the shipped
cassette (`examples/mixup/local.cassette.jsonl`, a real run of the embedded 1.5B model); the original folders are
never changed. For each, the smoke run runs in the sandbox (`p2c exec --smoke`), then while it fails, for at most
`--rounds` rounds, the model of `--backend` proposes a fix (`p2c fix`'s loop, `execute.repair.Repair`), which is
applied without asking (as `p2c fix --yes --overwrite-edited`) and the smoke run runs again.

It prints one table: per round, the executable rate (the share of repositories whose smoke run passes by then),
the lines the fixes changed so far as a share of all lines of the generated code (PaperCoder reports ~0.5-0.8%
with o3-mini), and the time of the round (the model's proposal, then the smoke run). A proposal the repair refuses
(a block that does not apply twice) ends that repository's rounds and is counted as a failed round.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from p2c_notebook.errors import P2CError
from p2c_notebook.execute.repair import Repair
from p2c_notebook.execute.runner import plan
from p2c_notebook.execute.sandbox import Limits
from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "mixup"
CASSETTE = EXAMPLE / "local.cassette.jsonl"
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Round:
    """One round of one repository: round 0 is the run before any repair."""

    round: int
    passed: bool
    reason: str
    lines_changed: int = 0  # by this round's fix
    model_seconds: float = 0.0
    run_seconds: float = 0.0
    refused: str = ""  # why the proposal was refused (the round then ends the repository's repair)


@dataclass
class Repository:
    source: str
    lines: int  # lines of the generated code files before repair
    files: int
    rounds: list[Round] = field(default_factory=list)

    def passed_by(self, number: int) -> bool:
        return any(r.passed for r in self.rounds if r.round <= number)

    def changed_by(self, number: int) -> int:
        return sum(r.lines_changed for r in self.rounds if r.round <= number)


def replayed_example(folder: Path) -> Path:
    """The example paper's run, replayed from the shipped cassette (no model; a few seconds)."""
    settings = load_settings({"backend": f"replay:{CASSETTE}"})
    try:
        with Pipeline.start(EXAMPLE / "paper.pdf", folder, settings=settings) as pipeline:
            result = pipeline.run()
    except P2CError as exc:
        raise SystemExit(
            f"replaying {CASSETTE} failed ({str(exc)[:300]}): the prompts changed since it was recorded; re-record it "
            "(scripts/record_cassette.py) or pass --run RUN."
        ) from None
    if result.state != "done":
        raise SystemExit(f"replaying {CASSETTE} did not finish: {result.message}")
    return folder


def copy_run(source: Path, folder: Path) -> Path:
    """A copy of the run folder without its earlier runs of the code (attempts start at 1, no venv)."""
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("exec"))
    return folder


def code_lines(pipeline: Pipeline) -> tuple[int, int]:
    """Lines and number of the generated code files (the artifacts a fix can change)."""
    texts = [pipeline.store.read(r.artifact) for r in pipeline.rows() if r.artifact.startswith("code/")]
    return sum(len(t.splitlines()) for t in texts if t), len(texts)


def measure(run: Path, source: str, args: argparse.Namespace) -> Repository:
    """Run, then repair round by round, timing the model and the smoke run of each round."""
    settings = load_settings({"backend": args.backend, **({"model": args.model} if args.model else {})})
    limits = Limits(wall_s=args.wall)
    with Pipeline.open(run, settings=settings) as pipeline:
        lines, files = code_lines(pipeline)
        repo = Repository(source, lines, files)
        exec_plan = plan(run, "smoke", args.python, limits=limits)
        loop = Repair(pipeline, exec_plan, args.rounds)
        outcome = loop.run()
        repo.rounds.append(Round(0, outcome.passed, outcome.reason, run_seconds=outcome.seconds))
        say(args, f"{source}: round 0: {outcome.reason} ({outcome.seconds:.1f} s)")
        while loop.can_propose:
            started = time.monotonic()
            try:
                proposal = loop.propose()
            except P2CError as exc:  # refused (does not apply, escapes, no block) or the model failed
                seconds = time.monotonic() - started
                repo.rounds.append(Round(loop.round, False, "fix refused", model_seconds=seconds, refused=str(exc)))
                say(args, f"{source}: round {loop.round}: fix refused: {exc}")
                break
            model_seconds = time.monotonic() - started
            outcome = loop.accept(proposal, overwrite_edited=True)
            changed = proposal.lines_changed()
            repo.rounds.append(
                Round(loop.round, outcome.passed, outcome.reason, changed, model_seconds, outcome.seconds)
            )
            say(args, f"{source}: round {loop.round}: {outcome.reason} ({changed} line(s) changed)")
    return repo


def say(args: argparse.Namespace, line: str) -> None:
    if args.verbose:
        print(line, file=sys.stderr, flush=True)


def summary(repos: list[Repository], rounds: int) -> list[dict[str, Any]]:
    """Per round: executable rate, lines changed so far (and their share of all lines), mean time of the round."""
    total = sum(r.lines for r in repos) or 1
    rows = []
    for number in range(rounds + 1):
        done = [x for repo in repos for x in repo.rounds if x.round == number]
        changed = sum(repo.changed_by(number) for repo in repos)
        rows.append(
            {
                "round": number,
                "executable_rate": sum(repo.passed_by(number) for repo in repos) / len(repos),
                "lines_changed": changed,
                "lines_changed_share": changed / total,
                "attempted_this_round": len(done) if number else 0,  # still failing, given a round
                "model_seconds": statistics.mean(x.model_seconds for x in done) if done and number else None,
                "run_seconds": statistics.mean(x.run_seconds for x in done) if done else None,
            }
        )
    return rows


def table(rows: list[dict[str, Any]], repos: list[Repository]) -> str:
    lines = [
        "| round | executable | lines changed (share of all) | repositories in the round | model s | smoke run s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        model = "-" if row["model_seconds"] is None else f"{row['model_seconds']:.1f}"
        run = "-" if row["run_seconds"] is None else f"{row['run_seconds']:.1f}"
        label = "before repair" if row["round"] == 0 else f"after round {row['round']}"
        lines.append(
            f"| {label} | {row['executable_rate']:.0%} | {row['lines_changed']} ({row['lines_changed_share']:.2%}) | "
            f"{row['attempted_this_round'] or '-'} | {model} | {run} |"
        )
    for repo in repos:
        last = repo.rounds[-1]
        lines.append(
            f"{repo.source}: {repo.files} files, {repo.lines} lines; last: round {last.round}, {last.reason}"
            + (f" ({last.refused})" if last.refused else "")
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", type=Path, help="a run folder (repeat for several; copied first)")
    parser.add_argument("--backend", default="local", help="the model proposing fixes (default: the embedded model)")
    parser.add_argument("--model", help="its model name (default: the backend's)")
    parser.add_argument("--rounds", type=int, default=3, help="repair rounds per repository (default 3)")
    parser.add_argument("--python", default=sys.executable, help="the interpreter (default: this one)")
    parser.add_argument("--wall", type=float, default=300.0, help="wall-time limit of each smoke run (default 300 s)")
    parser.add_argument("--save", action="store_true", help="write benchmarks/results/repair.json")
    parser.add_argument("--out", type=Path, help="write the JSON here instead")
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per round on stderr")
    args = parser.parse_args(argv)
    repos: list[Repository] = []
    with tempfile.TemporaryDirectory(prefix="p2c-bench-repair-") as tmp:
        sources = [(str(r), copy_run(r, Path(tmp) / f"run{i}")) for i, r in enumerate(args.run or [])]
        if not sources:
            sources = [(f"replay:{CASSETTE.relative_to(ROOT)}", replayed_example(Path(tmp) / "example"))]
        for source, run in sources:
            repos.append(measure(run, source, args))
    rows = summary(repos, args.rounds)
    print(f"Repair with {args.backend}, at most {args.rounds} round(s), {len(repos)} repository(ies):")
    print(table(rows, repos))
    results = {
        "backend": args.backend,
        "model": args.model,
        "rounds": args.rounds,
        "summary": rows,
        "repositories": [asdict(repo) for repo in repos],
    }
    text = json.dumps(results, indent=2) + "\n"
    target = args.out or (RESULTS / "repair.json" if args.save else None)
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        print(f"saved {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
