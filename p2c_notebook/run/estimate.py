"""What a run will cost before it starts: calls, tokens and dollars, and whether the prompts fit the model.

The prompts are the ones the pipeline will send, built by the same prompt builder from what is already in
the run folder. What does not exist yet is stood in for by text of a typical size and, before the logic design
exists, by a typical repository; the expected re-asks (a reply that could not be used, asked again) are added.
Those typical sizes depend on the model (a small local model writes far less than a hosted one) and live in one
data file, `typical_sizes.yaml` beside this module, which says where each number comes from (recorded runs:
`benchmarks/bench_estimate.py --derive`). Tokens are counted offline (`p2c_notebook.tokens`), and cached tokens
are those in a prefix an earlier call of the run already sent.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from p2c_notebook.content import content_tokens, leading_text
from p2c_notebook.errors import PaperError
from p2c_notebook.prompts.builder import Figures, Messages, PromptBuilder
from p2c_notebook.run.usage import cost_of
from p2c_notebook.stages import registry
from p2c_notebook.tokens import common_prefix_len, estimate_tokens

SIZES_FILE = Path(__file__).with_name("typical_sizes.yaml")


@dataclass(frozen=True)
class Profile:
    """Typical sizes for the models whose names start with one of `models` (`models` empty: any other model).

    `reply_tokens`: a stage's reply (a stage not named falls back to the registry's `typical_output`);
    `files` and `imports`: the typical repository before the logic design exists (each file imports the
    `imports` files before it); `reasks`: expected re-asks per artifact of a stage; `reask_error_tokens`: the
    problem a re-ask quotes; `carried`: prompt tokens a reply counts for, per reply token, when a later prompt
    carries it (1.0 where the server counts both alike; the embedded model reports its reply in its own tokens
    while its prompts are counted offline, and the offline count of the same text is larger)."""

    name: str
    models: tuple[str, ...] = ()
    files: int = 8
    imports: int = 2
    reply_tokens: Mapping[str, int] = field(default_factory=dict)
    reasks: Mapping[str, float] = field(default_factory=dict)
    reask_error_tokens: int = 0
    carried: float = 1.0

    def reply(self, stage: str) -> int:
        return int(self.reply_tokens.get(stage, registry.get(stage).typical_output))

    def carried_reply(self, stage: str) -> int:
        """The stand-in size (prompt tokens) of a stage's reply that a later prompt carries."""
        return round(self.reply(stage) * self.carried)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Profile:
        return cls(
            name=str(data.get("name", "")),
            models=tuple(str(m) for m in data.get("models") or ()),
            files=int(data.get("files", 8)),
            imports=int(data.get("imports", 2)),
            reply_tokens={str(k): int(v) for k, v in (data.get("reply_tokens") or {}).items()},
            reasks={str(k): float(v) for k, v in (data.get("reasks") or {}).items()},
            reask_error_tokens=int(data.get("reask_error_tokens", 0)),
            carried=float(data.get("carried", 1.0)),
        )


@functools.lru_cache(maxsize=1)
def profiles() -> tuple[Profile, ...]:
    """The profiles of `typical_sizes.yaml`, the default (no `models`) last."""
    data = yaml.safe_load(SIZES_FILE.read_text(encoding="utf-8"))
    listed = tuple(Profile.from_dict(p) for p in data["profiles"])
    return tuple(sorted(listed, key=lambda p: not p.models))


def profile_for(model: str) -> Profile:
    """The profile of `model` (by the longest matching name prefix), else the default one."""
    name = model.split("/")[-1].lower()
    best: tuple[int, Profile] | None = None
    for profile in profiles():
        for prefix in profile.models:
            if name.startswith(prefix.lower()) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), profile)
    if best is not None:
        return best[1]
    return next(p for p in profiles() if not p.models)


TYPICAL_FILES = profile_for("").files  # the default profile's: a hosted model's typical repository
TYPICAL_IMPORTS = profile_for("").imports

# Context windows (tokens) of common models; settings.context_window overrides, local backends report theirs.
CONTEXT_WINDOWS = {
    "gpt-4o": 128_000,
    "gpt-4o-mini": 128_000,
    "gpt-4.1": 1_047_576,
    "gpt-4.1-mini": 1_047_576,
    "gpt-4.1-nano": 1_047_576,
    "o3": 200_000,
    "o3-mini": 200_000,
    "o4-mini": 200_000,
    "gpt-5": 400_000,
    "gpt-5-mini": 400_000,
    "gpt-5-nano": 400_000,
}


def known_context_window(model: str) -> int | None:
    name = model.split("/")[-1]
    for known in sorted(CONTEXT_WINDOWS, key=len, reverse=True):  # gpt-4o-mini before gpt-4o
        if name == known or name.startswith(known + "-"):
            return CONTEXT_WINDOWS[known]
    return None


def filler(tokens: int) -> str:
    """Stand-in text that `estimate_tokens` counts as exactly `tokens`."""
    return "word " * tokens


@dataclass(frozen=True)
class Call:
    artifact: str
    input_tokens: int
    cached_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Estimate:
    model: str
    calls: tuple[Call, ...]
    files: int
    files_assumed: bool
    cost: float | None
    paper_tokens: int = 0  # the paper alone, as the estimate counted it

    @property
    def input_tokens(self) -> int:
        return sum(c.input_tokens for c in self.calls)

    @property
    def cached_tokens(self) -> int:
        return sum(c.cached_tokens for c in self.calls)

    @property
    def output_tokens(self) -> int:
        return sum(c.output_tokens for c in self.calls)

    @property
    def largest_prompt(self) -> int:
        return max((c.input_tokens for c in self.calls), default=0)

    def describe(self) -> str:
        if not self.calls:
            return "Estimate: nothing left to generate."
        cost = "cost unknown" if self.cost is None else f"~${self.cost:.2f}"
        files = f"{self.files} files"
        if self.files_assumed:
            files += " (a typical repository; refined once the logic design exists)"
        return (
            f"Estimate: {len(self.calls)} calls for {files}, ~{self.input_tokens:,} input tokens "
            f"(~{self.cached_tokens:,} in a prefix already sent), ~{self.output_tokens:,} output tokens, "
            f"{cost} with {self.model}"
        )


@functools.lru_cache(maxsize=1024)
def _tokens(text: str) -> int:
    """Counted paragraph by paragraph, each remembered: the paper, the plan and the designs recur in every call."""
    return sum(_paragraph_tokens(p) for p in text.split("\n\n")) + text.count("\n\n")


@functools.lru_cache(maxsize=8192)
def _paragraph_tokens(text: str) -> int:
    return estimate_tokens(text)


def prompt_tokens(messages: Messages) -> int:
    """As servers count them: the message texts joined by newlines; an image by `content.image_tokens`."""
    return sum(content_tokens(m["content"], _tokens) for m in messages) + max(0, len(messages) - 1)


class _Prefixes:
    """Cached tokens as a provider's prefix cache would count them: the longest prefix an earlier call sent."""

    def __init__(self) -> None:
        self._sent: list[Messages] = []

    def cached(self, messages: Messages) -> int:
        best = 0
        for earlier in self._sent:
            same, most = 0, min(len(messages), len(earlier))
            while same < most and messages[same] == earlier[same]:
                same += 1
            covered = sum(content_tokens(m["content"], _tokens) for m in messages[:same])
            if same < most and messages[same]["role"] == earlier[same]["role"]:
                a, b = leading_text(messages[same]["content"]), leading_text(earlier[same]["content"])
                covered += _tokens(a[: common_prefix_len(a, b)])
            best = max(best, covered)
        self._sent.append(messages)
        return best


@dataclass
class Plan:
    """The run still to do: planning steps, files (path -> dependencies) and which of them to analyse / code."""

    planning: list[str]
    files: dict[str, list[str]]
    analysis: list[str]
    code: list[str]
    files_assumed: bool


def typical_files(count: int = TYPICAL_FILES, imports: int = TYPICAL_IMPORTS) -> dict[str, list[str]]:
    names = [f"module_{i}.py" for i in range(count)]
    return {name: names[max(0, i - imports) : i] for i, name in enumerate(names)}


def estimate_plan(
    paper: str,
    plan: Plan,
    saved: Callable[[str], str | None],
    model: str,
    prices: dict[str, tuple[float, float, float]] | None = None,
    profile: Profile | None = None,
    figures: Figures | None = None,
) -> Estimate:
    """Tokens of every call in `plan`, in the order the pipeline sends them; `saved(artifact)` gives what exists.

    `profile`: the typical sizes (default: the model's); a plan whose files are assumed gets the profile's
    typical repository, whatever files it named. `figures`: the images the planning calls carry (`--figures`)."""
    sizes = profile or profile_for(model)
    if plan.files_assumed:
        files = typical_files(sizes.files, sizes.imports)
        plan = Plan(plan.planning, files, list(files) if plan.analysis else [], list(files) if plan.code else [], True)
    builder = PromptBuilder(paper, figures=figures)
    prefixes = _Prefixes()
    calls: list[Call] = []
    asked: dict[str, list[tuple[Messages, str]]] = {}  # stage -> (prompt, artifact) of each call, for re-asks

    def text(artifact: str, typical: int) -> str:
        current = saved(artifact)
        return current if current is not None else filler(typical)

    answers = {step: text(step, sizes.carried_reply(step)) for step in registry.planning_names()}
    answers["config"] = f"```yaml\n{answers['config'].rstrip()}\n```"

    def add(artifact: str, stage: str, messages: Messages, output: int) -> None:
        calls.append(Call(artifact, prompt_tokens(messages), prefixes.cached(messages), output))
        asked.setdefault(stage, []).append((messages, artifact))

    for step in plan.planning:
        add(step, step, builder.planning(step, answers), sizes.reply(step))
    for path in plan.analysis:
        messages = builder.analysis(answers, path, "", plan.files[path])
        add(f"analysis/{path}", "analysis", messages, sizes.reply("analysis"))
    for path in plan.code:
        direct = {d: text(f"code/{d}", sizes.carried_reply("code")) for d in plan.files[path]}
        analysis = text(f"analysis/{path}", sizes.carried_reply("analysis"))
        add(f"code/{path}", "code", builder.code(answers, path, "", analysis, direct, {}), sizes.reply("code"))
    for stage, prompt, artifact in _reasks(sizes, asked):
        repair = PromptBuilder.with_repair(prompt, filler(sizes.carried_reply(stage)), filler(sizes.reask_error_tokens))
        calls.append(Call(f"{artifact} (re-ask)", prompt_tokens(repair), prefixes.cached(repair), sizes.reply(stage)))
    usage_cost = _cost(model, calls, prices)
    return Estimate(model, tuple(calls), len(plan.files), plan.files_assumed, usage_cost, _tokens(paper))


def _reasks(sizes: Profile, asked: Mapping[str, list[tuple[Messages, str]]]) -> list[tuple[str, Messages, str]]:
    """The expected re-asks, whole calls: the run's expected number (each stage's rate times its calls, summed
    over the stages, rounded), given to the stages in order of their expected share, each its first calls."""
    expected = {stage: sizes.reasks.get(stage, 0.0) * len(calls) for stage, calls in asked.items()}
    left = round(sum(expected.values()))
    chosen: list[tuple[str, Messages, str]] = []
    for stage in sorted(expected, key=lambda s: -expected[s]):
        take = min(left, len(asked[stage]), math.ceil(expected[stage]))
        chosen += [(stage, prompt, artifact) for prompt, artifact in asked[stage][:take]]
        left -= take
    return chosen


def estimate_paper(
    paper: str,
    model: str,
    prices: dict[str, tuple[float, float, float]] | None = None,
    profile: Profile | None = None,
) -> Estimate:
    """A whole run over `paper` with a typical repository, before any run folder exists."""
    sizes = profile or profile_for(model)
    files = typical_files(sizes.files, sizes.imports)
    plan = Plan(list(registry.planning_names()), files, list(files), list(files), files_assumed=True)
    return estimate_plan(paper, plan, lambda _: None, model, prices, sizes)


def _cost(model: str, calls: Iterable[Call], prices: dict[str, tuple[float, float, float]] | None) -> float | None:
    listed = list(calls)
    return cost_of(
        model,
        sum(c.input_tokens for c in listed),
        sum(c.output_tokens for c in listed),
        sum(c.cached_tokens for c in listed),
        prices,
    )


def typical_output(stage: str, model: str = "") -> int:
    """The stand-in reply size (tokens) of a stage's artifact that does not exist yet, for `model`."""
    return profile_for(model).reply(stage)


def check_fits(estimate: Estimate, window: int | None, reply_room: int) -> str | None:
    """Refuse before paying when the paper cannot fit; a warning when the largest call may not."""
    if window is None or not estimate.calls:
        return None
    if estimate.paper_tokens + reply_room > window:
        raise PaperError(
            f"The paper alone is ~{estimate.paper_tokens:,} tokens and {estimate.model} reads at most {window:,} "
            f"(with {reply_room:,} kept for its reply): no call was made. Use a model with a larger context window "
            "(--model, or P2C_CONTEXT_WINDOW if this one is larger than we think), or a shorter version of the paper."
        )
    largest = max(estimate.calls, key=lambda c: c.input_tokens)
    if largest.input_tokens + reply_room > window:
        return (
            f"The largest call ({largest.artifact}, ~{largest.input_tokens:,} tokens) may not fit {estimate.model}'s "
            f"context window of {window:,} tokens with room for its reply; a model with a larger window is safer."
        )
    return None


# Local models whose context can be raised: (longest context the model was trained for, KV-cache bytes a token
# takes at f16: layers x 2 (keys, values) x KV heads x head size x 2 bytes). Qwen2.5-Coder reads 32k tokens.
LOCAL_CONTEXTS = {
    "qwen2.5-coder-1.5b": (32_768, 28 * 2 * 2 * 128 * 2),
    "qwen2.5-coder-0.5b": (32_768, 24 * 2 * 2 * 64 * 2),
}
MEMORY_MARGIN = 1 << 30  # bytes left free for the rest of the machine after a larger cache
CONTEXT_STEP = 4096


def needed_context(estimate: Estimate, reply_room: int) -> int:
    """Tokens the largest call needs: its prompt and room for its reply."""
    return max((c.input_tokens for c in estimate.calls), default=0) + reply_room


def larger_local_context(model: str, current: int, needed: int, available: int | None) -> tuple[int | None, str]:
    """The context a local model can be raised to so that `needed` tokens fit (rounded up to `CONTEXT_STEP`),
    or None and why not: the model's own limit, or memory (`available` bytes; None when unknown)."""
    known = LOCAL_CONTEXTS.get(model)
    if known is None:
        return None, f"{model}'s longest context is not known"
    limit, per_token = known
    if needed > limit:
        return None, f"{model} reads at most {limit:,} tokens"
    target = min(limit, -(-needed // CONTEXT_STEP) * CONTEXT_STEP)
    if target <= current:
        return None, f"the local context is already {current:,} tokens"
    extra = (target - current) * per_token
    if available is not None and extra + MEMORY_MARGIN > available:
        return None, (
            f"a {target:,}-token context needs ~{extra / 2**30:.1f} GiB more memory and "
            f"{available / 2**30:.1f} GiB is free"
        )
    return target, ""


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux MemAvailable), or None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None
