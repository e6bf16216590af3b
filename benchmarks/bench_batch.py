"""Batch benchmark: many papers through `run_batch` (what `p2c batch` runs) against ONE latency-model server.

    nice -n 10 python benchmarks/bench_batch.py                 # 30 papers x 8 files at concurrency 32
    nice -n 10 python benchmarks/bench_batch.py --papers 10     # a smaller batch on a slow machine
    python benchmarks/bench_batch.py --save                     # also write benchmarks/results/batch.json

Figures are SYNTHETIC: the synthetic repository of benchmarks/synthetic.py (replies of the issue's sizes), the
scripted server in its own process with 0.5 s per call + 1 ms per output token. Each paper is the Transformer
paper as Markdown under its own title ("... (copy 07)"), so no two papers share a prompt prefix, and its own model
name (`bench-copy07`), so the server's request log tells the papers apart. Three measurements:

* one paper alone at the batch's concurrency (more than it can use: its widest stage is N analyses): the longest
  single run as measured, beside its critical path under the latency model (the dependency DAG of bench_pipeline);
* the whole batch at concurrency K: wall time against the lower bound max(critical path, work / K), where work is
  every call's latency-model duration summed. `waves` = max(1, work / (K x critical path)): how many critical
  paths' worth of calls the K slots must carry; the bound is critical path x waves, the target 1.2x it. (Counting
  ceil(calls / K) waves would treat every call as a whole critical path: that figure is printed too);
* the same batch under a 429 storm (injected 429s with and without Retry-After, 503s asking for a pause, and the
  server refusing any request beyond K at once): every paper done, every artifact saved, every (paper, stage,
  file, attempt) answered exactly once (a refused request is not paid), and the server never over K at once.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from bench_pipeline import API_KEY, MODEL, Server, call_seconds, critical_path, pipeline_dag
from process import ServerProcess  # benchmarks/process.py (a benchmark helper, not shipped)
from pydantic import SecretStr
from synthetic import Synthetic, build, paper_path

from p2c_notebook.paper import read_paper
from p2c_notebook.run.batch import BatchOptions, BatchResult, run_batch
from p2c_notebook.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_RATIO = 1.2
PLANNING = ("plan", "design", "logic", "config")

Serve = Callable[[dict[str, Any]], Server]


# --- the batch ----------------------------------------------------------------------------------------------
def write_papers(folder: Path, count: int, source: Path) -> Path:
    """`count` papers (the source read once, as Markdown under a title of its own) and a YAML spec naming each
    with its own model name; returns the spec."""
    text = read_paper(source).to_text()
    title, _, body = text.partition("\n")
    entries = []
    for k in range(1, count + 1):
        name = f"copy{k:02d}"
        (folder / f"{name}.md").write_text(f"{title} ({name})\n{body}", encoding="utf-8")
        entries.append({"paper": f"{name}.md", "name": name, "model": f"{MODEL}-{name}"})
    spec = folder / "papers.yaml"
    spec.write_text(yaml.safe_dump(entries, sort_keys=False), encoding="utf-8")
    return spec


def storm(papers: int, files: int) -> list[dict[str, Any]]:
    """429s with Retry-After on designs and analyses, 429s without it (exponential backoff) on code, 503s asking
    for a pause on plans; each storm starts partway into its stage's requests, scaled to the batch."""
    analyses, codes = papers * files, papers * files
    return [
        {"stage": "plan", "kind": "status", "status": 503, "retry_after": 0.3, "after": papers // 3, "times": 3},
        {"stage": "design", "kind": "status", "status": 429, "retry_after": 1, "after": papers // 4, "times": 6},
        {
            "stage": "analysis",
            "kind": "status",
            "status": 429,
            "retry_after": 0.5,
            "after": analyses // 4,
            "times": max(4, analyses // 10),
        },
        {"stage": "code", "kind": "status", "status": 429, "after": codes // 2, "times": max(4, codes // 10)},
    ]


def settings_for(server: Server) -> Settings:
    """The batch's settings; retries generous enough that a storm never exhausts one call's."""
    return Settings(
        base_url=server.base_url,
        api_key=SecretStr(API_KEY),
        model=MODEL,
        max_retries=10,
        retry_base_delay=0.1,
        retry_max_delay=2.0,
    )


def run_one_batch(
    synth: Synthetic,
    spec: Path,
    out: Path,
    concurrency: int,
    latency: float,
    token_latency: float,
    faults: Sequence[Mapping[str, Any]] = (),
    capacity: int | None = None,
    serve: Serve = ServerProcess,
) -> dict[str, Any]:
    """One batch against a fresh server: wall time, what the batch reports and what the server saw."""
    scenario = synth.scenario(latency, token_latency)
    scenario["faults"] = list(faults)
    if capacity is not None:
        scenario["capacity"], scenario["capacity_retry_after"] = capacity, 0.5
    with serve(scenario) as server:
        options = BatchOptions(out=out, settings=settings_for(server), concurrency=concurrency)
        began = time.perf_counter()
        result = run_batch(spec, options)
        wall = time.perf_counter() - began
        requests = server.requests
        load = server.load() if callable(server.load) else server.load
    return {
        "wall_s": wall,
        "papers_done": sum(p.state == "done" for p in result.papers),
        "errors": {p.name: p.error for p in result.papers if p.state != "done"},
        "peak_concurrency": result.peak_concurrency,
        "rate_limit_pauses": result.rate_limit_pauses,
        "server": dict(load),
        "lost": lost_artifacts(result, synth),
        **audit(requests, [p.name for p in result.papers], synth),
        **usage(result),
    }


def audit(requests: Sequence[Mapping[str, Any]], names: Sequence[str], synth: Synthetic) -> dict[str, Any]:
    """What the server answered (paid) and refused, per paper and per (paper, stage, file, attempt)."""
    answered = [r for r in requests if r["fault"] is None]
    per_call = Counter((str(r["model"]), r["stage"], r["file"], r["attempt"]) for r in answered)
    per_paper = Counter(str(r["model"]).removeprefix(f"{MODEL}-") for r in answered)
    expected = len(synth.replies)
    return {
        "requests": len(requests),
        "answered": len(answered),
        "refused_by_faults": len(requests) - len(answered),
        "repeated_paid_calls": sum(n - 1 for n in per_call.values() if n > 1),
        "papers_not_paid_once_per_call": sorted(n for n in names if per_paper.get(n, 0) != expected),
        "calls_per_paper": expected,
    }


def lost_artifacts(result: BatchResult, synth: Synthetic) -> list[str]:
    """Every planned file missing from a paper's repository (and every paper that did not finish)."""
    lost: list[str] = []
    for paper in result.papers:
        repo = Path(paper.run) / "repo"
        for path in synth.files:
            if not (repo / path).is_file():
                lost.append(f"{paper.name}/{path}")
    return lost


def usage(result: BatchResult) -> dict[str, Any]:
    total = result.total()
    return {
        "calls": total.calls,
        "input_tokens": total.prompt_tokens,
        "cached_tokens": total.cached_tokens,
        "output_tokens": total.completion_tokens,
    }


# --- the bounds ---------------------------------------------------------------------------------------------
def bounds(synth: Synthetic, papers: int, concurrency: int, latency: float, token_latency: float) -> dict[str, Any]:
    """The latency model's figures: one run's critical path, the batch's work and the waves K slots allow."""
    seconds = call_seconds(synth, latency, token_latency)
    critical, path = critical_path(seconds, pipeline_dag(synth))
    work = papers * sum(seconds.values())
    calls = papers * len(seconds)
    waves = max(1.0, work / (concurrency * critical)) if critical else 1.0
    return {
        "critical_path_s": critical,
        "critical_path": path,
        "dependency_depth": len(path),
        "work_s": work,
        "calls": calls,
        "waves": waves,
        "bound_s": critical * waves,  # = max(critical path, work / K)
        "naive_waves": math.ceil(calls / concurrency),
        "graham_s": work / concurrency + critical,  # what any schedule that never idles a free slot stays under
    }


# --- main -----------------------------------------------------------------------------------------------------
def measure(
    papers: int,
    files: int,
    concurrency: int,
    latency: float,
    token_latency: float,
    storm_run: bool = True,
    serve: Serve = ServerProcess,
) -> dict[str, Any]:
    synth = build(files)
    figures = bounds(synth, papers, concurrency, latency, token_latency)
    with tempfile.TemporaryDirectory(prefix="p2c-bench-batch-") as tmp:
        root = Path(tmp)
        (root / "papers").mkdir()
        spec = write_papers(root / "papers", papers, paper_path())
        (root / "one").mkdir()
        single_spec = write_papers(root / "one", 1, paper_path())
        single = run_one_batch(synth, single_spec, root / "out-one", concurrency, latency, token_latency, serve=serve)
        clean = run_one_batch(synth, spec, root / "out", concurrency, latency, token_latency, serve=serve)
        stormy = None
        if storm_run:
            faults = storm(papers, files)
            stormy = run_one_batch(
                synth,
                spec,
                root / "out-storm",
                concurrency,
                latency,
                token_latency,
                faults,
                capacity=concurrency,
                serve=serve,
            )
    return {
        "synthetic": True,
        "papers": papers,
        "files": files,
        "concurrency": concurrency,
        "latency_s": latency,
        "token_latency_s": token_latency,
        "bounds": figures,
        "single": single,
        "batch": clean,
        "storm": stormy,
        "ratio": clean["wall_s"] / figures["bound_s"] if figures["bound_s"] else None,
        "ratio_single_measured": (
            clean["wall_s"] / (single["wall_s"] * figures["waves"]) if single["wall_s"] else None
        ),
        "target_ratio": TARGET_RATIO,
    }


def times(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}x"


def report(data: Mapping[str, Any]) -> str:
    b, one, batch, stormy = data["bounds"], data["single"], data["batch"], data["storm"]
    k = data["concurrency"]
    lines = [
        f"SYNTHETIC: {data['papers']} papers x {data['files']} files, concurrency {k}, "
        f"{data['latency_s']} s per call + {data['token_latency_s'] * 1000:g} ms per output token",
        f"one run's critical path: {b['critical_path_s']:.2f} s ({b['dependency_depth']} calls deep); "
        f"one paper alone measured: {one['wall_s']:.2f} s",
        f"work: {b['calls']} calls, {b['work_s']:.1f} call-seconds; waves = max(1, work / (K x critical path)) "
        f"= {b['waves']:.2f} (ceil(calls / K) would be {b['naive_waves']})",
        f"bound = critical path x waves = {b['bound_s']:.2f} s; a schedule that never idles a free slot stays under "
        f"work / K + critical path = {b['graham_s']:.2f} s",
        f"batch wall: {batch['wall_s']:.2f} s = {times(data['ratio'])} the bound (target {TARGET_RATIO}x); "
        f"{times(data['ratio_single_measured'])} the measured single run x waves; "
        f"{batch['papers_done']}/{data['papers']} done, peak {batch['peak_concurrency']} at once "
        f"(server: {batch['server'].get('max_in_flight')})",
        f"tokens: {batch['input_tokens']:,} in ({batch['cached_tokens'] / max(1, batch['input_tokens']):.1%} "
        f"cached), {batch['output_tokens']:,} out, {batch['calls']} calls",
    ]
    if stormy is not None:
        lines.append(
            f"429 storm: wall {stormy['wall_s']:.2f} s; {stormy['papers_done']}/{data['papers']} done; "
            f"{stormy['refused_by_faults']} requests refused by injected faults, "
            f"{stormy['server'].get('over_capacity')} over capacity {k}; {stormy['rate_limit_pauses']} pauses; "
            f"lost artifacts {len(stormy['lost'])}; repeated paid calls {stormy['repeated_paid_calls']}; "
            f"papers not paid exactly once per call: {len(stormy['papers_not_paid_once_per_call'])}; "
            f"server peak in flight {stormy['server'].get('max_in_flight')}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--papers", type=int, default=30)
    parser.add_argument("--files", type=int, default=8, help="files per paper's repository (at most 40)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--token-latency", type=float, default=0.001)
    parser.add_argument("--no-storm", action="store_true", help="skip the 429-storm batch")
    parser.add_argument("--save", action="store_true", help="write benchmarks/results/batch.json")
    parser.add_argument("--out", type=Path, help="write the JSON results here")
    args = parser.parse_args(argv)
    data = measure(args.papers, args.files, args.concurrency, args.latency, args.token_latency, not args.no_storm)
    print(report(data), flush=True)
    target = args.out or (RESULTS / "batch.json" if args.save else None)
    if target is not None:
        target.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        print(f"results: {target}")
    failed = data["storm"] is not None and (
        data["storm"]["lost"] or data["storm"]["repeated_paid_calls"] or data["storm"]["papers_not_paid_once_per_call"]
    )
    return 1 if failed or data["batch"]["lost"] else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
