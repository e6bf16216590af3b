"""The static checks of a recorded run's repository: on the model's first replies and on the code as saved.

    python benchmarks/bench_checks.py                   # the shipped cassette (a real embedded-model run)
    python benchmarks/bench_checks.py --cassette C --paper P --save

The run is replayed from the cassette into a scratch folder (no model call) while a second recorder notes every
call the run makes, in order. "Saved" is the repository as the run saved it, after the in-loop repair re-ask;
"first replies" is the same repository with each code file replaced by the model's first reply for it (attempt
1), before any re-ask. Both are checked as a whole (`checks.measure_fidelity`): the README's "Output quality"
table. `--save` writes benchmarks/results/checks.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from p2c_notebook.backends.replay import read_cassette
from p2c_notebook.prompts.builder import language_for
from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.settings import load_settings
from p2c_notebook.stages.artifacts import ArchitectureDesign, LogicDesign
from p2c_notebook.stages.checks import Fidelity, load_repository, measure_fidelity
from p2c_notebook.stages.parsing import extract_code

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "mixup"
RESULTS = Path(__file__).resolve().parent / "results"

ROWS: list[tuple[str, str]] = [
    ("undefined names", "undefined_names"),
    ("unresolved imports", "unresolved_imports"),
    ("duplicated or misplaced class definitions", "duplicated_classes"),
    ("missing config keys", "missing_config_keys"),
]


def replay(cassette: Path, paper: Path, folder: Path) -> tuple[Path, list[dict[str, Any]]]:
    """Replay the run; return its folder and the calls it made (as a recording of the replay holds them)."""
    calls = folder / "calls.jsonl"
    settings = load_settings({"backend": f"replay:{cassette}", "record": str(calls)})
    run = folder / "run"
    with Pipeline.start(paper, run, settings=settings) as pipeline:
        result = pipeline.run()
    if result.state != "done":
        raise SystemExit(f"the replayed run did not finish ({result.state}): re-record the cassette")
    return run, read_cassette(calls)


def first_replies(saved: dict[str, str], calls: list[dict[str, Any]]) -> tuple[dict[str, str], list[str]]:
    """The saved repository with each code file as the model first wrote it; and the files that were re-asked."""
    first = dict(saved)
    re_asked = []
    for call in calls:
        request = call["request"]
        if request["stage"] != "code":
            continue
        path = request["file"]
        if request["attempt"] == 1 and path in saved:
            first[path] = extract_code(call["reply"], language_for(path))
        elif request["attempt"] > 1:
            re_asked.append(path)
    return first, sorted(set(re_asked))


def describe(figures: Fidelity) -> dict[str, str]:
    cells = {label: str(getattr(figures, name)) for label, name in ROWS}
    errors = figures.undefined_names + figures.unresolved_imports + figures.duplicated_classes
    cells["errors counted above"] = str(errors + figures.missing_config_keys)
    cells["designed classes defined once, where designed"] = (
        f"{figures.classes_once_where_designed} of {figures.designed_classes}"
    )
    share = figures.dependency_share
    cells["declared dependencies imported"] = (
        f"{figures.declared_dependencies_imported} of {figures.declared_dependencies}"
        + (f" ({share:.0%})" if share is not None else "")
    )
    cells["undeclared imports (warnings)"] = str(figures.undeclared_dependencies)
    cells["entry point"] = "yes" if figures.entry_point else "no"
    return cells


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cassette", type=Path, default=EXAMPLE / "local.cassette.jsonl")
    parser.add_argument("--paper", type=Path, default=EXAMPLE / "paper.pdf")
    parser.add_argument("--save", action="store_true", help="write benchmarks/results/checks.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="p2c-bench-checks-") as tmp:
        run, calls = replay(args.cassette, args.paper, Path(tmp))
        design = ArchitectureDesign.model_validate_json((run / "planning" / "design.json").read_text("utf-8"))
        logic = LogicDesign.model_validate_json((run / "planning" / "logic.json").read_text("utf-8"))
        config = (run / "planning" / "config.yaml").read_text("utf-8")
        saved = load_repository(run / "repo")
        first, re_asked = first_replies(saved, calls)
        results = {
            "first replies": measure_fidelity(first, design, logic, config),
            "saved": measure_fidelity(saved, design, logic, config),
        }
    columns = {name: describe(figures) for name, figures in results.items()}
    print(f"{args.cassette.name}: {len(calls)} calls; files {', '.join(logic.order)}; re-asked: {', '.join(re_asked)}")
    print("| | " + " | ".join(columns) + " |")
    print("| --- |" + " --- |" * len(columns))
    for label in next(iter(columns.values())):
        print(f"| {label} | " + " | ".join(c[label] for c in columns.values()) + " |")
    if args.save:
        RESULTS.mkdir(exist_ok=True)
        data = {
            "cassette": str(args.cassette.relative_to(ROOT) if args.cassette.is_relative_to(ROOT) else args.cassette),
            "calls": len(calls),
            "files": logic.order,
            "re_asked": re_asked,
            **{name: figures.to_json() for name, figures in results.items()},
        }
        (RESULTS / "checks.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        print(f"saved {RESULTS / 'checks.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
