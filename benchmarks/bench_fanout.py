"""Concurrency and the cache-aware fan-out, measured: the whole pipeline over HTTP against the latency-model server
(a child process, as in bench_pipeline.py), for each N, in four set-ups:

- `fixed N, fan-out off`: concurrency N, every ready call sent at once (the schedule before this change);
- `fixed N, fan-out on`: concurrency N, calls sharing a long prefix sent once the first one's first token is back,
  except the calls of steps on the longest chain (they never wait: any wait there is wall time);
- `default, fan-out on`: no concurrency set: the limiter ramps up (what a run gets against a hosted / vLLM server);
- `fixed 4, fan-out on`: the old default.

Prefix reuse is counted honestly by the scripted server: a prefix is cached only when an earlier request with it
had its first token sent before this one arrived. Each repeat runs every set-up once, in alternating order
(ABBA...), so a busy spell of the machine hits each of them alike; the table gives the median wall time, its
spread (min-max), and the median of the paired differences against the first set-up of the same repeat.
N above 40 raises the run's `max_files` to N (in `bench_pipeline.run_ours`).

    python benchmarks/bench_fanout.py --n 8 16 32 [--repeat 3] [--out results/fanout.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import bench_pipeline as bench
from synthetic import build, depth, paper_path

from p2c_notebook.run import limiter
from p2c_notebook.run import pipeline as pipeline_module
from p2c_notebook.settings import Settings

SETUPS: dict[str, tuple[int | None, bool]] = {
    "fixed N, fan-out off": (0, False),  # 0: N
    "fixed N, fan-out on": (0, True),
    "default, fan-out on": (None, True),
    "fixed 4, fan-out on": (4, True),
}


def run_setup(n: int, limit: int | None, fan_out: bool, latency: float, token_latency: float) -> dict[str, Any]:
    synth = build(n)
    original, original_fan_out = bench.settings_for, limiter.CACHE_AWARE_FAN_OUT
    original_gate = limiter.fan_out_gate
    gates: list[limiter.PrefixGate] = []

    def settings_for(server: bench.Server, concurrency: int, stream: bool = True) -> Settings:
        chosen = original(server, limit or n, stream)
        if limit is None:  # as if the user set nothing: the limiter fits the server
            return Settings.model_validate(chosen.model_dump(exclude={"concurrency"}) | {"api_key": bench.API_KEY})
        return chosen

    def fan_out_gate() -> limiter.PrefixGate | None:  # the run's gate, kept to count its waits
        gate = original_gate()
        gates.extend([gate] if gate is not None else [])
        return gate

    bench.settings_for, limiter.CACHE_AWARE_FAN_OUT = settings_for, fan_out
    vars(pipeline_module)["fan_out_gate"] = fan_out_gate  # the run makes its gate through this name
    try:
        measured = bench.run_ours(synth, paper_path(), latency, token_latency)
    finally:
        bench.settings_for, limiter.CACHE_AWARE_FAN_OUT = original, original_fan_out
        vars(pipeline_module)["fan_out_gate"] = original_gate
    return {
        "held": sum(g.held for g in gates),
        "hurried": sum(g.hurried for g in gates),
        "wall_s": measured.wall_s,
        "bound_s": measured.critical_s,
        "input_tokens": measured.input_tokens,
        "cached_tokens": measured.cached_tokens,
        "cached_share": measured.cached_share,
        "calls": measured.calls,
        "depth": depth(synth.deps),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[8, 16, 32], help="numbers of files (e.g. 8 16 32 64)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per set-up (the median wall time is shown)")
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--token-latency", type=float, default=0.001)
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--out", type=Path, help="write the JSON results here")
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    print(
        "| N | depth | set-up | wall s (median) | spread s | vs first set-up (paired median) | bound s | wall / bound "
        "| input tokens | cached share | calls held / hurried |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for n in args.n:
        measured: dict[str, list[dict[str, Any]]] = {name: [] for name in args.setups}
        for repeat in range(args.repeat):  # ABBA: each set-up goes first as often as last
            order = args.setups if repeat % 2 == 0 else args.setups[::-1]
            for name in order:
                concurrency, fan_out = SETUPS[name]
                measured[name].append(run_setup(n, concurrency, fan_out, args.latency, args.token_latency))
        base = measured[args.setups[0]]
        for name, runs in measured.items():
            walls = [r["wall_s"] for r in runs]
            wall = statistics.median(walls)
            first = runs[0]
            shares = [r["cached_share"] for r in runs]
            paired = statistics.median(r["wall_s"] / b["wall_s"] - 1 for r, b in zip(runs, base, strict=True))
            row = {"n": n, "setup": name, **first, "wall_s": wall, "walls_s": walls, "paired_vs_first": paired}
            rows.append({**row, "cached_shares": shares})
            share = f"{min(shares):.1%}" + (f"-{max(shares):.1%}" if max(shares) > min(shares) else "")
            held = "/".join(f"{statistics.median(r[k] for r in runs):g}" for k in ("held", "hurried"))
            print(
                f"| {n} | {first['depth']} | {name} | {wall:.2f} | {min(walls):.2f}-{max(walls):.2f} | "
                f"{paired:+.1%} | {first['bound_s']:.2f} | {wall / first['bound_s']:.3f} | {first['input_tokens']:,} "
                f"| {share} | {held} |",
                flush=True,
            )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
