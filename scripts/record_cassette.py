"""Re-record examples/mixup/local.cassette.jsonl: the local model's calls for the example paper and the notebooks.

    python scripts/record_cassette.py            # keep what still matches, record what is missing (minutes)
    python scripts/record_cassette.py --fresh    # start from an empty cassette (about 25 minutes on 2 cores)

Each workshop notebook runs with the cassette replayed and the local model answering only what the cassette lacks
(`P2C_REPLAY_FALLBACK=local`), those calls appended to it (`P2C_RECORD`). Then every notebook runs again on the
cassette alone, as students will run it (executed copies go to runs/recording/; the shipped notebooks stay
without outputs).
Needs `pip install -e '.[test,local]'`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASSETTE = ROOT / "examples" / "mixup" / "local.cassette.jsonl"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def execute(notebook: Path, env: dict[str, str], label: str) -> None:
    command = [
        sys.executable,
        "-m",
        "jupyter",
        "nbconvert",
        "--to",
        "notebook",
        "--execute",
        "--ExecutePreprocessor.timeout=-1",
        "--output-dir",
        str(ROOT / "runs" / "recording" / label),
    ]
    print(f"{label}: {notebook.name}", flush=True)
    subprocess.run([*command, str(notebook)], cwd=ROOT, env=env, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh", action="store_true", help="delete the cassette first")
    args = parser.parse_args()
    if args.fresh:  # empty, not deleted: replaying a cassette that does not exist is an error
        CASSETTE.write_text("", encoding="utf-8")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "P2C_"))}
    with tempfile.TemporaryDirectory(prefix="p2c-recording-") as scratch:
        # Each pass starts from empty run folders (the notebooks re-attach to theirs, which would replay nothing).
        recording = {
            **clean,
            "P2C_REPLAY_FALLBACK": "local",
            "P2C_RECORD": str(CASSETTE),
            "P2C_NOTEBOOK_RUNS": f"{scratch}/recording",
        }
        for notebook in NOTEBOOKS:
            execute(notebook, recording, "recording")
        replayed = {**clean, "P2C_NOTEBOOK_RUNS": f"{scratch}/replayed"}
        for notebook in NOTEBOOKS:  # the cassette alone: what students will see
            execute(notebook, replayed, "replayed")
    print(f"{CASSETTE}: {sum(1 for line in CASSETTE.open(encoding='utf-8') if line.strip())} calls")
    return 0


if __name__ == "__main__":
    sys.exit(main())
