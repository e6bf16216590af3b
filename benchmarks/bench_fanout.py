"""Concurrency and the cache-aware fan-out, measured: the whole pipeline over HTTP against the latency-model server
(a child process, as in bench_pipeline.py), for each N, in four set-ups:

- `fixed N, fan-out off`: concurrency N, every ready call sent at once (the schedule before this change);
- `fixed N, fan-out on`: concurrency N, calls sharing a long prefix sent once the first one's first token is back;
- `default, fan-out on`: no concurrency set: the limiter ramps up (what a run gets against a hosted / vLLM server);
- `fixed 4, fan-out on`: the old default.

Prefix reuse is counted honestly by the scripted server: a prefix is cached only when an earlier request with it
had its first token sent before this one arrived.

    python benchmarks/bench_fanout.py --n 8 16 32 [--repeat 2] [--out results/fanout.json]
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
from p2c_notebook.settings import Settings

SETUPS: dict[str, tuple[int | None, bool]] = {
    "fixed N, fan-out off": (0, False),  # 0: N
    "fixed N, fan-out on": (0, True),
    "default, fan-out on": (None, True),
    "fixed 4, fan-out on": (4, True),
}


def run_setup(n: int, concurrency: int | None, fan_out: bool, latency: float, token_latency: float) -> dict[str, Any]:
    synth = build(n)
    original, original_fan_out = bench.settings_for, limiter.CACHE_AWARE_FAN_OUT

    def settings_for(server: Any, _: int, stream: bool = True) -> Settings:
        chosen = original(server, concurrency or n, stream)
        if concurrency is None:  # as if the user set nothing: the limiter fits the server
            return Settings.model_validate(chosen.model_dump(exclude={"concurrency"}) | {"api_key": bench.API_KEY})
        return chosen

    bench.settings_for, limiter.CACHE_AWARE_FAN_OUT = settings_for, fan_out
    try:
        measured = bench.run_ours(synth, paper_path(), latency, token_latency)
    finally:
        bench.settings_for, limiter.CACHE_AWARE_FAN_OUT = original, original_fan_out
    return {
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
    parser.add_argument("--n", type=int, nargs="+", default=[8, 16, 32], help="numbers of files (at most 40)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per set-up (the median wall time is shown)")
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--token-latency", type=float, default=0.001)
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--out", type=Path, help="write the JSON results here")
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    print("| N | depth | set-up | wall s | bound s | wall / bound | input tokens | cached share |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for n in args.n:
        measured: dict[str, list[dict[str, Any]]] = {name: [] for name in args.setups}
        for _ in range(args.repeat):  # set-ups interleaved: a busy spell of the machine hits each of them alike
            for name in args.setups:
                concurrency, fan_out = SETUPS[name]
                measured[name].append(run_setup(n, concurrency, fan_out, args.latency, args.token_latency))
        for name, runs in measured.items():
            wall = statistics.median(r["wall_s"] for r in runs)
            first = runs[0]
            shares = [r["cached_share"] for r in runs]
            row = {"n": n, "setup": name, **first, "wall_s": wall, "walls_s": [r["wall_s"] for r in runs]}
            rows.append({**row, "cached_shares": shares})
            share = f"{min(shares):.1%}" + (f"-{max(shares):.1%}" if max(shares) > min(shares) else "")
            print(
                f"| {n} | {first['depth']} | {name} | {wall:.2f} | {first['bound_s']:.2f} | "
                f"{wall / first['bound_s']:.3f} | {first['input_tokens']:,} | {share} |",
                flush=True,
            )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
