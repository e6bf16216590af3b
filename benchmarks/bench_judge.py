"""The judge's discrimination: does it score the reference implementation above a deliberately broken copy?

    python benchmarks/bench_judge.py                      # the embedded model judges, n = 8 each (slow on a CPU)
    python benchmarks/bench_judge.py --n 2 --backend scripted:examples/mixup/scenario.yaml   # harness check
    python benchmarks/bench_judge.py --judge gpt-4o-mini --backend openai --save

Two run folders are made from examples/mixup/paper.tex (no model call): one whose repo/ is the hand-written
reference implementation (examples/mixup/reference/), one whose repo/ is a broken copy of it: the mixup equations
removed (`mix_batch` returns the batch unmixed, so every "mixup" run is ERM) and metrics.py emptied (no accuracy,
no ECE). Each is judged reference-free, n samples (`p2c eval`), one call at a time so that a local server's prompt
cache serves every sample after the first. Reported: each mean and spread, the gap, how often a reference sample
outscores a broken sample (all n x n pairs; ties apart), and whether the broken copy's critiques name the two
broken files.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from p2c_notebook.render import TerminalRenderer
from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.settings import load_settings
from p2c_notebook.stages.evaluate import EvalSummary, judge

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "mixup"
REFERENCE = EXAMPLE / "reference"
RESULTS = Path(__file__).resolve().parent / "results"
MIXING = (
    "    lam = float(rng.beta(alpha, alpha))\n"
    "    perm = rng.permutation(x.shape[0])\n"
    "    return lam * x + (1.0 - lam) * x[perm], lam * y + (1.0 - lam) * y[perm], lam\n"
)


def make_run(folder: Path, broken: bool) -> Path:
    """A run folder holding the paper and, as its repository, the reference or its broken copy."""
    with Pipeline.start(EXAMPLE / "paper.tex", folder, settings=load_settings({"backend": "openai"})):
        pass
    repo = folder / "repo"
    shutil.copytree(REFERENCE, repo, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if broken:
        mixup = (repo / "mixup.py").read_text(encoding="utf-8")
        if MIXING not in mixup:
            raise SystemExit("examples/mixup/reference/mixup.py changed: update MIXING in this benchmark")
        (repo / "mixup.py").write_text(mixup.replace(MIXING, "    return x, y, 1.0\n"), encoding="utf-8")
        (repo / "metrics.py").write_text("", encoding="utf-8")
    return folder


def pairs(good: list[int], bad: list[int]) -> dict[str, float]:
    """Shares of (reference sample, broken sample) pairs ranked right, tied and wrong."""
    total = len(good) * len(bad) or 1
    right = sum(g > b for g, b in itertools.product(good, bad)) / total
    tied = sum(g == b for g, b in itertools.product(good, bad)) / total
    return {"right": right, "tied": tied, "wrong": 1 - right - tied}


def names_broken_files(summary: EvalSummary) -> dict[str, bool]:
    named = {f for c in summary.critiques for f in c.files}
    text = " ".join(f"{c.component} {c.critique}" for c in summary.critiques).lower()
    return {
        "mixup.py named": "mixup.py" in named,
        "metrics.py named": "metrics.py" in named,
        "mixing mentioned": "mix" in text,
        "ece or accuracy mentioned": "ece" in text or "calibration" in text or "accuracy" in text,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=8, help="judging samples per repository (default 8)")
    parser.add_argument("--backend", default="local", help="the judge's backend (default: the embedded model)")
    parser.add_argument("--judge", help="the judge model (default: the backend's)")
    parser.add_argument("--concurrency", type=int, default=1, help="judging calls at once (default 1)")
    parser.add_argument("--save", action="store_true", help="write benchmarks/results/judge.json")
    parser.add_argument("-v", "--verbose", action="store_true", help="show progress")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {"backend": args.backend, "model": args.judge, "concurrency": args.concurrency}
    settings = load_settings(overrides)
    sinks = (TerminalRenderer(),) if args.verbose else ()
    results: dict[str, Any] = {"n": args.n, "backend": args.backend, "judge": args.judge}
    summaries: dict[str, EvalSummary] = {}
    with tempfile.TemporaryDirectory(prefix="p2c-bench-judge-") as tmp:
        for name, broken in (("reference", False), ("broken", True)):
            run = make_run(Path(tmp) / name, broken)
            started = time.monotonic()
            summaries[name] = judge(run, settings, args.n, sinks=sinks)
            results[f"{name}_seconds"] = round(time.monotonic() - started, 1)
            print(f"{name:<9} {summaries[name].describe()} in {results[f'{name}_seconds']:.0f} s", flush=True)
    good, bad = summaries["reference"], summaries["broken"]
    ranking = pairs(good.scores, bad.scores)
    gap = None if good.mean is None or bad.mean is None else good.mean - bad.mean
    results.update(
        judge=good.judge,
        reference=good.model_dump(include={"scores", "mean", "std", "min", "max", "valid"}),
        broken=bad.model_dump(include={"scores", "mean", "std", "min", "max", "valid"}),
        gap=gap,
        pairs=ranking,
        broken_critiques=names_broken_files(bad),
        broken_critique_list=[c.model_dump() for c in bad.critiques],
    )
    print(f"gap (reference - broken): {'n/a' if gap is None else f'{gap:+.2f}'}")
    print(
        f"pairs ranked right {ranking['right']:.0%}, tied {ranking['tied']:.0%}, wrong {ranking['wrong']:.0%} "
        f"({len(good.scores)} x {len(bad.scores)} valid samples)"
    )
    print("broken copy's critiques: " + ", ".join(f"{k}: {v}" for k, v in results["broken_critiques"].items()))
    text = json.dumps(results, indent=2) + "\n"
    if args.save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "judge.json").write_text(text, encoding="utf-8")
        print(f"saved {RESULTS / 'judge.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
