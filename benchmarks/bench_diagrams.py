"""Diagram rendering times: PlantUML cold start, warm class/sequence diagrams, Graphviz dependency graph.

    python benchmarks/bench_diagrams.py [--repeat 10]

Needs java (default-jre-headless), the PlantUML jar package and Graphviz dot, like tests/test_uml.py.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

from p2c_notebook.diagrams import plantuml as uml
from p2c_notebook.diagrams.sources import class_diagram_plantuml, sequence_diagram_plantuml
from p2c_notebook.stages.artifacts import ArchitectureDesign, LogicDesign

FILES = [
    "config.py",
    "data/dataset.py",
    "data/augment.py",
    "models/layers.py",
    "models/model.py",
    "train/loss.py",
    "train/trainer.py",
    "evaluate.py",
    "main.py",
]


def example_design() -> ArchitectureDesign:
    """A design of the size a paper produces: nine classes, relations and a twelve-message call flow."""
    names = ["Config", "Dataset", "Augment", "Block", "Model", "Loss", "Trainer", "Evaluator", "Main"]
    classes = [
        {
            "name": name,
            "file": path,
            "attributes": [{"name": f"{name.lower()}_{i}", "type": "Tensor"} for i in range(3)],
            "methods": [{"name": f"step{i}", "args": "x: Tensor, cfg: Config", "returns": "Tensor"} for i in range(3)],
        }
        for name, path in zip(names, FILES, strict=True)
    ]
    relations = [
        {"source": "Model", "target": "Block", "kind": "composes", "label": "layers"},
        {"source": "Dataset", "target": "Augment", "kind": "uses"},
        {"source": "Trainer", "target": "Model", "kind": "aggregates"},
        {"source": "Trainer", "target": "Loss", "kind": "uses"},
        {"source": "Trainer", "target": "Dataset", "kind": "uses"},
        {"source": "Evaluator", "target": "Model", "kind": "uses"},
        {"source": "Main", "target": "Trainer", "kind": "uses"},
        {"source": "Main", "target": "Config", "kind": "uses"},
    ]
    calls = [
        ("Main", "Config", "load(path)", "cfg"),
        ("Main", "Dataset", "build(cfg)", "ds"),
        ("Main", "Model", "build(cfg)", "model"),
        ("Main", "Trainer", "fit(model, ds)", ""),
        ("Trainer", "Dataset", "batches()", "x, y"),
        ("Dataset", "Augment", "apply(x)", "x'"),
        ("Trainer", "Model", "forward(x)", "logits"),
        ("Model", "Block", "forward(h)", "h"),
        ("Trainer", "Loss", "compute(logits, y)", "loss"),
        ("Main", "Evaluator", "evaluate(model)", "metrics"),
        ("Evaluator", "Model", "forward(x)", "logits"),
        ("Main", "Main", "report(metrics)", ""),
    ]
    return ArchitectureDesign.model_validate(
        {
            "implementation_approach": "benchmark design",
            "file_list": FILES,
            "classes": classes,
            "relations": relations,
            "sequence": {
                "participants": names,
                "messages": [{"source": s, "target": t, "call": c, "returns": r} for s, t, c, r in calls],
            },
        }
    )


def example_logic() -> LogicDesign:
    deps = {
        "data/dataset.py": ["config.py", "data/augment.py"],
        "models/layers.py": ["config.py"],
        "models/model.py": ["models/layers.py"],
        "train/loss.py": [],
        "train/trainer.py": ["models/model.py", "train/loss.py", "data/dataset.py"],
        "evaluate.py": ["models/model.py", "data/dataset.py"],
        "main.py": ["train/trainer.py", "evaluate.py", "config.py"],
    }
    order = ["config.py", "data/augment.py", "data/dataset.py", "models/layers.py", "models/model.py"]
    order += ["train/loss.py", "train/trainer.py", "evaluate.py", "main.py"]
    return LogicDesign.model_validate(
        {"files": [{"path": p, "role": "benchmark", "depends_on": deps.get(p, [])} for p in order]}
    )


def median_ms(action: Callable[[], object], repeat: int) -> tuple[float, float, float]:
    timings = []
    for _ in range(repeat):
        began = time.perf_counter()
        action()
        timings.append((time.perf_counter() - began) * 1000)
    return statistics.median(timings), min(timings), max(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10, help="warm renders per diagram (median reported)")
    args = parser.parse_args()

    design, logic = example_design(), example_logic()
    class_source, sequence_source = class_diagram_plantuml(design), sequence_diagram_plantuml(design)
    print(f"jar: {uml.find_jar()}")
    print(f"java: {uml.find_java()}   dot: {uml.find_dot()}")

    with uml.PlantUMLRenderer() as renderer:
        began = time.perf_counter()
        renderer.render(class_source)
        cold = time.perf_counter() - began
        print(f"PlantUML cold start (start Java + first class diagram): {cold * 1000:8.1f} ms")
        renderer.render(sequence_source)  # first sequence diagram loads its classes: not a warm render
        for name, source in (("class diagram", class_source), ("sequence diagram", sequence_source)):
            med, low, high = median_ms(functools.partial(renderer.render, source), args.repeat)
            print(f"PlantUML warm {name:<17} median {med:7.1f} ms  (min {low:.1f}, max {high:.1f}, n={args.repeat})")

    uml.dependency_graph_svg(logic)  # first call pays for imports
    med, low, high = median_ms(lambda: uml.dependency_graph_svg(logic), args.repeat)
    print(f"Graphviz dependency graph      median {med:7.1f} ms  (min {low:.1f}, max {high:.1f}, n={args.repeat})")


if __name__ == "__main__":
    main()
