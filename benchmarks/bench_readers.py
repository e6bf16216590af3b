"""Time the paper readers on the Transformer paper in each format: `python benchmarks/bench_readers.py`."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from p2c_notebook.paper import read_paper

PAPERS = Path(__file__).resolve().parents[1].parent / "shared/papers/transformer"
FILES = ("Transformer.pdf", "Transformer_cleaned.tex", "Transformer_cleaned.json", "Transformer.json")
RUNS = 5


def main() -> int:
    found = [PAPERS / name for name in FILES if (PAPERS / name).exists()]
    if not found:
        print(f"no papers found in {PAPERS}")
        return 1
    for path in found:
        timings = []
        for _ in range(RUNS):
            start = time.perf_counter()
            paper = read_paper(path)
            timings.append(time.perf_counter() - start)
        median_ms = statistics.median(timings) * 1000
        print(f"{path.name:28} median of {RUNS}: {median_ms:7.1f} ms")
        print(f"    {paper.report().summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
