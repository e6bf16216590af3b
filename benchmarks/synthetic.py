"""A synthetic PaperCoder run of N files, with replies of chosen sizes, for the pipeline benchmark.

    from synthetic import build
    synth = build(8)                     # 8 files, depth-4 dependency graph, default output sizes
    scenario = synth.scenario(latency=0.5, token_latency=0.001)

Sizes are in tokens as `p2c_notebook.tokens.estimate_tokens` counts them (what the scripted server reports as
`completion_tokens`), each within ±3% of its target. Every reply is valid for the stage that asks for it: the
design and logic design validate (and agree with each other), config is a YAML mapping, code is Python that
parses and imports the files it depends on. Padding is deterministic prose spread over many fields, so the
artifacts look like (dull) model output rather than one giant string.
"""

from __future__ import annotations

import json
import math
import random
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from p2c_notebook.stages.artifacts import ArchitectureDesign, LogicDesign, parse_config
from p2c_notebook.tokens import estimate_tokens

ROOT = Path(__file__).resolve().parents[1]
TRANSFORMER_PDF = ROOT.parent / "shared" / "papers" / "transformer" / "Transformer.pdf"
FALLBACK_PAPER = ROOT / "examples" / "mixup" / "paper.tex"
TOLERANCE = 0.03
STAGES = ("plan", "design", "logic", "config", "analysis", "code")

# Files of a Transformer reproduction by dependency level: utilities, components, training, entry point.
LEVELS: tuple[tuple[str, ...], ...] = (
    ("utils/config.py", "utils/masking.py", "utils/seed.py", "utils/io.py", "utils/metrics.py", "utils/logging.py"),
    (
        "data/vocab.py",
        "models/attention.py",
        "data/dataset.py",
        "models/embeddings.py",
        "models/feed_forward.py",
        "data/batching.py",
        "models/positional.py",
        "models/layer_norm.py",
        "models/generator.py",
        "data/tokenizer.py",
        "models/encoder_layer.py",
        "models/decoder_layer.py",
        "data/bpe.py",
        "models/label_smoothing.py",
        "data/collate.py",
        "models/init.py",
    ),
    ("train/trainer.py", "eval/evaluator.py", "train/optimizer.py", "eval/beam_search.py", "train/checkpoint.py"),
    ("main.py",),
)

_WORDS_TEXT = (
    "the model attention encoder decoder layer stack applies multi-head scaled dot-product softmax over keys "
    "queries values residual connection normalisation dropout embedding positional encoding sinusoid frequency "
    "wavelength tensor batch sequence length vocabulary token byte-pair translation corpus sentence pairs "
    "training optimiser schedule warmup steps learning rate label smoothing beam search length penalty "
    "checkpoint average evaluation score dimension hidden inner feed-forward network projection heads parallel "
    "mask future positions shape configuration value paper states section table figure result baseline "
    "implementation follows uses returns computes each every input output shared weights matrix linear "
    "transformation regularisation perplexity validation split news test development"
)
WORDS = tuple(_WORDS_TEXT.split())
IDENTIFIERS = ("x", "mask", "memory", "tokens", "lengths", "state", "batch", "logits", "targets", "config")
METHODS = ("forward", "step", "reset", "encode", "decode", "compute", "update", "load", "save", "prepare", "score")


@dataclass(frozen=True)
class Sizes:
    """Output sizes in tokens (the issue's measurement of the reference implementation)."""

    plan: int = 1500
    design: int = 1200
    logic: int = 1200
    config: int = 300
    analysis: int = 800
    code: int = 1500

    def of(self, stage: str) -> int:
        return int(getattr(self, stage))


@dataclass
class Synthetic:
    """One generated run: files in dependency order, their direct dependencies and every reply's text."""

    files: list[str]
    deps: dict[str, list[str]]
    replies: dict[tuple[str, str], str]
    sizes: Sizes
    design: dict[str, Any] = field(default_factory=dict)
    logic: dict[str, Any] = field(default_factory=dict)

    def reply(self, stage: str, file: str = "") -> str:
        return self.replies[(stage, file)]

    def output_tokens(self, stage: str, file: str = "") -> int:
        return estimate_tokens(self.reply(stage, file))

    def total_output_tokens(self) -> int:
        return sum(estimate_tokens(text) for text in self.replies.values())

    def scenario(self, latency: float = 0.0, token_latency: float = 0.0) -> dict[str, Any]:
        """A scripted-server scenario answering every stage of this run (keyed on stage and file)."""
        responses = [
            {"stage": stage, "file": file or "*", "content": text} for (stage, file), text in self.replies.items()
        ]
        return {"model": "*", "latency": latency, "token_latency": token_latency, "responses": responses}


def paper_path() -> Path:
    """The Transformer PDF where ../shared has it, else the bundled example paper."""
    return TRANSFORMER_PDF if TRANSFORMER_PDF.exists() else FALLBACK_PAPER


def reference_paper_text(paper: Path, ours: str) -> tuple[str, str]:
    """The paper as the reference implementation sends it, and where that text came from.

    The reference reads the GROBID (s2orc) JSON stripped of citation and equation spans, the `*_cleaned.json`
    beside the Transformer PDF in ../shared, and puts the loaded JSON in every prompt. Without that file both
    schedules get our reading of the paper.
    """
    cleaned = paper.with_name(f"{paper.stem}_cleaned.json")
    if cleaned.exists():
        return json.dumps(json.loads(cleaned.read_text(encoding="utf-8")), ensure_ascii=False), cleaned.name
    return ours, f"our reading of {paper.name}"


# --- the dependency graph -----------------------------------------------------------------------------------
def graph_depth(n: int) -> int:
    """Files on the longest dependency chain: 4 up to 8 files, one more each time the file count doubles (16: 5,
    32: 6, 64: 7), as a larger reproduction stacks more layers; n itself below 4."""
    if n < 4:
        return n
    return max(4, 1 + math.ceil(math.log2(n)))


def level_counts(n: int) -> list[int]:
    """How many files each level gets: utilities (a quarter), components over `graph_depth(n) - 3` levels,
    training and evaluation (a fifth), the entry point."""
    if n < 4:
        return [1] * max(n, 0) or _too_few(n)
    low, train = max(1, round(n * 0.25)), max(1, round(n * 0.2))
    middle_levels = graph_depth(n) - 3
    middle = n - 1 - low - train
    if middle < middle_levels:
        low -= middle_levels - middle
        middle = middle_levels
    share, extra = divmod(middle, middle_levels)
    return [low, *[share + (i < extra) for i in range(middle_levels)], train, 1]


def _too_few(n: int) -> list[int]:
    raise ValueError(f"cannot plan {n} files: use 1 or more")


def _names(pool: tuple[str, ...], count: int, folder: str, stem: str) -> list[str]:
    """`count` file names: the pool's first, then numbered ones in `folder` (a large run's extra modules)."""
    return [*pool[:count], *(f"{folder}/{stem}_{k:02d}.py" for k in range(1, count - len(pool) + 1))]


def dependency_graph(n: int) -> tuple[list[str], dict[str, list[str]]]:
    """n files in dependency order and their direct dependencies (each file depends on the level below)."""
    counts = level_counts(n)
    if n >= 4:
        components = _names(LEVELS[1], sum(counts[1:-2]), "models", "block")
        levels = [_names(LEVELS[0], counts[0], "utils", "helper")]
        for count in counts[1:-2]:
            levels.append(components[:count])
            components = components[count:]
        levels += [_names(LEVELS[2], counts[-2], "train", "stage"), ["main.py"]]
    else:
        levels = [[LEVELS[i][0]] for i in range(n)]
        levels[-1] = ["main.py"]
    deps: dict[str, list[str]] = {}
    for index, level in enumerate(levels):
        below = levels[index - 1] if index else []
        lower = [f for lv in levels[: max(0, index - 1)] for f in lv]
        for j, path in enumerate(level):
            if not below:
                deps[path] = []
            elif index == len(levels) - 1 and index > 0:  # the entry point uses every file of the level below
                deps[path] = [*below, *lower[:1]]
            else:
                share = [f for k, f in enumerate(below) if k % len(level) == j][:3] or [below[j % len(below)]]
                deps[path] = [*share, *(lower[j % len(lower) : j % len(lower) + 1] if lower else [])]
    files = [f for level in levels for f in level]
    return files, deps


def depth(deps: dict[str, list[str]]) -> int:
    """Files on the longest dependency chain."""
    memo: dict[str, int] = {}

    def chain(node: str) -> int:
        if node not in memo:
            memo[node] = 1 + max((chain(d) for d in deps.get(node, [])), default=0)
        return memo[node]

    return max((chain(node) for node in deps), default=0)


# --- sizing -------------------------------------------------------------------------------------------------
def words(seed: int, count: int) -> list[str]:
    """A deterministic word stream: `words(s, n)` is always a prefix of `words(s, n + 1)`."""
    rng = random.Random(seed)
    return [rng.choice(WORDS) for _ in range(count)]


def sentences(stream: list[str]) -> str:
    """Words into sentences of 12 (a period and capital by position, so a longer stream extends the text)."""
    out: list[str] = []
    for i, word in enumerate(stream):
        out.append(word.capitalize() if i % 12 == 0 else word)
        if i % 12 == 11 or i == len(stream) - 1:
            out[-1] += "."
    return " ".join(out)


def fill(slots: list[int], count: int) -> list[int]:
    """Deal `count` words round-robin into slots of the given capacities (words); a full slot is skipped."""
    got = [0] * len(slots)
    index = 0
    for _ in range(count):
        for _ in range(len(slots)):
            if got[index % len(slots)] < slots[index % len(slots)]:
                break
            index += 1
        else:
            raise ValueError("every padding slot is full")
        got[index % len(slots)] += 1
        index += 1
    return got


def fit(make: Callable[[int], str], target: int, tolerance: float = TOLERANCE) -> str:
    """The text `make(k)` whose token count is nearest `target` (make must grow with k)."""
    low, high = 0, 1
    while estimate_tokens(make(high)) < target:
        low, high = high, high * 2
        if high > 1 << 20:
            raise ValueError("the text never reaches its target size")
    while high - low > 1:
        mid = (low + high) // 2
        if estimate_tokens(make(mid)) < target:
            low = mid
        else:
            high = mid
    best = min((make(low), make(high)), key=lambda text: abs(estimate_tokens(text) - target))
    got = estimate_tokens(best)
    if abs(got - target) > tolerance * target:
        raise ValueError(f"cannot size the text to {target} tokens (nearest {got}): its skeleton is too large")
    return best


def camel(path: str) -> str:
    stem = Path(path).stem
    return "".join(part.capitalize() for part in stem.split("_")) or "Module"


def module(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


def methods_of(path: str, count: int) -> list[str]:
    start = sum(map(ord, path)) % len(METHODS)
    return [METHODS[(start + i) % len(METHODS)] for i in range(count)]


# --- the replies --------------------------------------------------------------------------------------------
def plan_reply(target: int, seed: int) -> str:
    heads = ["Methodology", "Experiments", "Datasets", "Hyper-parameters", "Evaluation", "Unclear points"]

    def make(k: int) -> str:
        counts = fill([10**6] * len(heads) * 2, k)
        parts = ["# Reproduction plan: Attention Is All You Need\n"]
        for i, head in enumerate(heads):
            parts.append(f"## {i + 1}. {head}\n")
            parts.append(sentences(words(seed + 2 * i, counts[2 * i])) + "\n")
            bullets = words(seed + 2 * i + 1, counts[2 * i + 1])
            for start in range(0, len(bullets), 10):
                parts.append(f"- {sentences(bullets[start : start + 10])}")
            parts.append("")
        return "\n".join(parts)

    return fit(make, target)


def design_value(files: list[str], deps: dict[str, list[str]], target: int, seed: int) -> dict[str, Any]:
    """An ArchitectureDesign as JSON data: structure scaled to leave room for padding, then padded.

    Many files do not all get a class: a design of 1.2k tokens describes the main classes only (those of the
    upper levels first), which is what a model writes for a large file list.
    """

    def skeleton(count: int, methods: int, attributes: int) -> dict[str, Any]:
        chosen = [p for p in reversed(files)][:count]
        names = {camel(p) for p in chosen}
        classes = [
            {
                "name": camel(path),
                "file": path,
                "attributes": [
                    {"name": IDENTIFIERS[(i + a) % len(IDENTIFIERS)], "type": "Tensor"} for a in range(attributes)
                ],
                "methods": [
                    {"name": name, "args": f"{IDENTIFIERS[i % len(IDENTIFIERS)]}: Tensor", "returns": "Tensor"}
                    for name in methods_of(path, methods)
                ],
            }
            for i, path in enumerate(chosen)
        ]
        edges = [
            {"source": camel(p), "target": camel(d), "kind": "uses", "label": ""}
            for p in chosen
            for d in deps[p]
            if camel(d) in names
        ]
        top = files[-1]
        calls = [
            {"source": camel(top), "target": camel(d), "call": f"{methods_of(d, 1)[0]}()", "returns": ""}
            for d in deps[top]
            if camel(d) in names
        ]
        return {
            "implementation_approach": "",
            "file_list": list(files),
            "classes": classes,
            "relations": edges[:60],
            "sequence": {"participants": sorted(names)[:30], "messages": calls[:60]},
            "open_questions": [],
        }

    def shapes() -> list[tuple[int, int, int]]:
        rich = [(len(files), m, a) for m, a in ((2, 2), (2, 1), (1, 1), (1, 0))]
        return rich + [(count, 1, 0) for count in range(len(files) - 1, 0, -1)]

    base = next(
        (s for s in (skeleton(*shape) for shape in shapes()) if estimate_tokens(json.dumps(s)) <= 0.7 * target),
        None,
    )
    if base is None:
        raise ValueError(f"no design of {len(files)} files fits in {target} tokens")

    def value(k: int) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(json.dumps(base))
        # slots: the approach, 12 open questions, every relation label (each within its field's limit)
        slots = [550] + [40] * 12 + [24] * len(data["relations"])
        counts = fill(slots, k)
        data["implementation_approach"] = sentences(words(seed, counts[0]))
        data["open_questions"] = [sentences(words(seed + 1 + i, c)) for i, c in enumerate(counts[1:13]) if c]
        for i, relation in enumerate(data["relations"]):
            relation["label"] = " ".join(words(seed + 100 + i, counts[13 + i]))
        return data

    text = fit(lambda k: json.dumps(value(k)), target)
    return dict(json.loads(text))


def logic_value(files: list[str], deps: dict[str, list[str]], target: int, seed: int) -> dict[str, Any]:
    def value(k: int) -> dict[str, Any]:
        slots = [500] * len(files) + [500, 40, 40, 40]
        counts = fill(slots, k)
        return {
            "files": [
                {"path": p, "role": sentences(words(seed + i, counts[i])) or "module", "depends_on": deps[p]}
                for i, p in enumerate(files)
            ],
            "required_packages": ["torch", "numpy", "pyyaml", "sacrebleu"],
            "shared_knowledge": sentences(words(seed + 999, counts[len(files)])),
            "open_questions": [sentences(words(seed + 500 + i, c)) for i, c in enumerate(counts[-3:]) if c],
        }

    text = fit(lambda k: json.dumps(value(k)), target)
    return dict(json.loads(text))


CONFIG_KEYS = (
    ("model.d_model", "512"),
    ("model.d_ff", "2048"),
    ("model.heads", "8"),
    ("model.layers", "6"),
    ("model.dropout", "0.1"),
    ("train.batch_tokens", "25000"),
    ("train.warmup_steps", "4000"),
    ("train.steps", "100000"),
    ("train.label_smoothing", "0.1"),
    ("optimizer.beta1", "0.9"),
    ("optimizer.beta2", "0.98"),
    ("optimizer.eps", "1.0e-9"),
    ("eval.beam_size", "4"),
    ("eval.length_penalty", "0.6"),
    ("data.vocab_size", "37000"),
    ("seed", "1234"),
)


def config_reply(target: int, seed: int) -> str:
    def make(k: int) -> str:
        counts = fill([30] * len(CONFIG_KEYS), k)
        lines: list[str] = []
        section = ""
        for i, (key, value) in enumerate(CONFIG_KEYS):
            head, _, name = key.rpartition(".")
            if head and head != section:
                lines.append(f"{head}:")
                section = head
            indent = "  " if head else ""
            comment = " ".join(words(seed + i, counts[i]))
            lines.append(f"{indent}{name or head}: {value}" + (f"  # {comment}" if comment else ""))
        return "```yaml\n" + "\n".join(lines) + "\n```"

    return fit(make, target)


def analysis_reply(path: str, deps: list[str], target: int, seed: int) -> str:
    heads = ["Purpose", "Classes and functions", "Interactions", "Algorithms from the paper", "Config keys"]
    heads.append("Edge cases")

    def make(k: int) -> str:
        counts = fill([10**6] * len(heads), k)
        parts = [f"## Analysis of `{path}`\n"]
        for i, head in enumerate(heads):
            parts.append(f"### {head}\n")
            if head == "Classes and functions":
                parts += [f"- `{camel(path)}.{m}(x: Tensor) -> Tensor`" for m in methods_of(path, 2)]
            if head == "Interactions" and deps:
                parts += [f"- imports `{camel(d)}` from `{d}`" for d in deps]
            parts.append(sentences(words(seed + i, counts[i])) + "\n")
        return "\n".join(parts)

    return fit(make, target)


def code_text(path: str, deps: list[str], k: int, seed: int) -> str:
    """A module of one class (with the design's methods) and a builder function; k words of documentation."""
    name = camel(path)
    method_names = [*methods_of(path, 2), "describe", "validate"]
    counts = fill([10**6] * (len(method_names) + 3), k)
    streams = [words(seed + i, c) for i, c in enumerate(counts)]

    def doc(stream: list[str], indent: str) -> str:
        body = sentences(stream) or "Synthetic module."
        lines = textwrap.wrap(body, 100 - len(indent))
        if len(lines) == 1:
            return f'{indent}"""{lines[0]}"""\n'
        return f'{indent}"""' + f"\n{indent}".join(lines) + f'\n{indent}"""\n'

    out = [doc(streams[0], ""), "\nfrom __future__ import annotations\n\nimport math\n"]
    if deps:
        out.append("\n" + "".join(f"from {module(d)} import {camel(d)}\n" for d in deps))
    out.append(f"\n\nclass {name}:\n")
    out.append(doc(streams[1], "    "))
    out.append(
        "\n    def __init__(self, config: dict[str, float]) -> None:\n"
        "        self.config = config\n"
        '        self.scale = float(config.get("scale", 1.0))\n'
        f"        self.parts: list[type] = [{', '.join(camel(d) for d in deps)}]\n"
    )
    for i, method in enumerate(method_names):
        out.append(f"\n    def {method}(self, values: list[float]) -> list[float]:\n")
        out.append(doc(streams[2 + i], "        "))
        out.append(
            f"        total = sum(values) * self.scale + {i}\n"
            "        norm = math.sqrt(sum(v * v for v in values)) or 1.0\n"
            "        return [v / (total or norm) for v in values]\n"
        )
    out.append(f"\n\ndef build(config: dict[str, float]) -> {name}:\n")
    out.append(doc(streams[-1], "    "))
    out.append(f"    return {name}(config)\n")
    if path == "main.py" or path.endswith("/main.py"):
        out.append('\n\nif __name__ == "__main__":\n    build({"scale": 1.0})\n')
    return "".join(out)


def code_reply(path: str, deps: list[str], target: int, seed: int) -> str:
    return fit(lambda k: f"```python\n{code_text(path, deps, k, seed)}```", target)


def build(n: int, sizes: Sizes | None = None, seed: int = 0) -> Synthetic:
    """A run of n files: every reply of its stage's size, all of them mutually consistent. Beyond ~24 files the
    designs cannot list every file in the issue's sizes: they grow to 45 (design) and 60 (logic) tokens a file."""
    sizes = sizes or Sizes()
    sizes = replace(sizes, design=max(sizes.design, 45 * n), logic=max(sizes.logic, 60 * n))
    files, deps = dependency_graph(n)
    design = design_value(files, deps, sizes.design, seed + 10)
    logic = logic_value(files, deps, sizes.logic, seed + 20)
    replies: dict[tuple[str, str], str] = {
        ("plan", ""): plan_reply(sizes.plan, seed),
        ("design", ""): json.dumps(design),
        ("logic", ""): json.dumps(logic),
        ("config", ""): config_reply(sizes.config, seed + 30),
    }
    for i, path in enumerate(files):
        replies[("analysis", path)] = analysis_reply(path, deps[path], sizes.analysis, seed + 1000 + 10 * i)
        replies[("code", path)] = code_reply(path, deps[path], sizes.code, seed + 5000 + 10 * i)
    return Synthetic(files, deps, replies, sizes, design, logic)


def check(synth: Synthetic, tolerance: float = TOLERANCE) -> list[str]:
    """Problems with a generated run ([] when every reply is valid and within tolerance of its size)."""
    problems: list[str] = []
    design = ArchitectureDesign.model_validate(synth.design)
    logic, _ = LogicDesign.model_validate(synth.logic).check_against(design)
    if logic.order != synth.files:
        problems.append(f"the logic design's order {logic.order} is not dependencies-first {synth.files}")
    config = synth.reply("config").removeprefix("```yaml\n").removesuffix("```")
    parse_config(config)
    for (stage, file), text in synth.replies.items():
        target = synth.sizes.of(stage)
        got = estimate_tokens(text)
        if abs(got - target) > tolerance * target:
            problems.append(f"{stage} {file}: {got} tokens, target {target}")
        if stage == "code":
            import ast

            ast.parse(text.removeprefix("```python\n").removesuffix("```"))
    return problems
