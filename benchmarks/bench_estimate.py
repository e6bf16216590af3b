"""The pre-run estimate against recorded real runs (cassettes) and against the synthetic run.

    python benchmarks/bench_estimate.py             # every recording, and the synthetic run
    python benchmarks/bench_estimate.py --save      # also write benchmarks/results/estimate.json
    python benchmarks/bench_estimate.py --derive    # the typical sizes the recordings give (typical_sizes.yaml)

A cassette (`examples/*/*.cassette.jsonl`, and with git every earlier committed version of it; and the runs kept
for this benchmark only, `benchmarks/recordings/*.cassette.jsonl`) records each model call of a session: the
request (stage, file, attempt, each message's length and the last one in full), the reply and its usage. A session
is a run and whatever the notebooks did after it; the *recorded run* is each artifact's first generation with its
re-asks (attempt > 1); a later attempt 1 of the same artifact (a regeneration with feedback, a re-run after an
edit) is left out. Its paper is the text the run read, taken from the plan call (the estimate sees exactly what the
model saw). For each recording it compares the estimate the run would have shown before its first call
(`estimate_paper`, the model's profile) with what the recorded run used: calls, tokens in and tokens out, as
ratios (1.00 = exact; the target is within 35% for tokens). Leave-one-out: the same with the profile derived from
the *other* recordings only, without the calls they share with the left-out run, which says how well the sizes
carry to a run they did not see.
`--derive` prints the profile the recordings give (`derive`: why each number is what it is is said in
typical_sizes.yaml, which holds its output).

The synthetic figure is the other kind: a run against the scripted server whose replies are built at the default
profile's sizes (benchmarks/synthetic.py), so it measures the prompt counting, not the size assumptions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from p2c_notebook.backends.replay import read_cassette
from p2c_notebook.prompts.builder import render
from p2c_notebook.run.estimate import TYPICAL_FILES, Estimate, Profile, estimate_paper, profile_for
from p2c_notebook.stages.artifacts import LogicDesign
from p2c_notebook.stages.evaluate import JUDGE_STAGE, NARROW_STAGE
from p2c_notebook.tokens import estimate_tokens

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
RECORDINGS = Path(__file__).resolve().parent / "recordings"
TARGET = 0.35  # tokens in and out within 35% of the recorded run
PLANNING = ("plan", "design", "logic", "config")
NOT_GENERATION = frozenset({JUDGE_STAGE, NARROW_STAGE})


@dataclass(frozen=True)
class Recording:
    """The recorded run of one cassette: its calls (first generations and their re-asks), paper and model."""

    label: str
    model: str
    paper: str
    calls: tuple[dict[str, Any], ...]
    later: int = 0  # calls of the session after the run (regenerations), left out

    @property
    def prompt_tokens(self) -> int:
        return sum(_usage(c, "prompt_tokens") for c in self.calls)

    @property
    def completion_tokens(self) -> int:
        return sum(_usage(c, "completion_tokens") for c in self.calls)

    def of(self, stage: str, first: bool = True) -> list[dict[str, Any]]:
        """The calls of `stage`: first attempts (`first`) or re-asks."""
        return [c for c in self.calls if c["request"]["stage"] == stage and (c["request"]["attempt"] == 1) == first]

    @property
    def files(self) -> list[str]:
        return sorted({c["request"]["file"] for c in self.calls if c["request"]["file"]})

    def logic(self) -> LogicDesign | None:
        """The run's last logic design that parses (a re-ask's replaces the first attempt's)."""
        found = None
        for call in self.of("logic") + self.of("logic", first=False):
            text = str(call.get("reply", ""))
            try:
                found = LogicDesign.model_validate_json(text[text.index("{") : text.rindex("}") + 1])
            except ValueError:
                continue
        return found


def _usage(call: dict[str, Any], key: str) -> int:
    value = (call.get("usage") or {}).get(key, 0)
    return int(value) if isinstance(value, (int, float)) else 0


def recorded_run(entries: Sequence[dict[str, Any]], label: str) -> Recording:
    """The run within a session's cassette entries (see the module's docstring)."""
    run: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    in_run: dict[tuple[str, str], bool] = {}
    for entry in entries:
        request = entry.get("request") or {}
        key = (str(request.get("stage", "")), str(request.get("file", "")))
        if key[0] in NOT_GENERATION:
            continue  # judging (`p2c eval`) is asked for after a run, and estimated apart from it
        if request.get("attempt") == 1:
            in_run[key] = key not in seen
            seen.add(key)
        if in_run.get(key, False):
            run.append(entry)
    plans = [e for e in run if e["request"]["stage"] == "plan"]
    if not plans:
        raise ValueError(f"{label}: no plan call, so no run of a paper")
    asked = str(plans[0]["request"]["last_message"])
    paper = asked[asked.index("<paper>\n") + len("<paper>\n") : asked.rindex("\n</paper>")]
    models = sorted({str(e.get("model", "")) for e in run})
    return Recording(label, models[0] if len(models) == 1 else "replay", paper, tuple(run), len(entries) - len(run))


def load(source: str) -> Recording:
    """A cassette file, or `COMMIT:PATH` for a committed version of one (read with git)."""
    if Path(source).is_file():
        resolved = Path(source).resolve()
        label = resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else resolved
        return recorded_run(read_cassette(resolved), str(label))
    commit, _, path = source.partition(":")
    text = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True)
    entries = [json.loads(line) for line in text.stdout.splitlines() if line.strip()]
    return recorded_run(entries, f"{path} at {commit}")


def shipped() -> list[str]:
    return [str(p) for p in sorted(ROOT.glob("examples/*/*.cassette.jsonl"))]


def committed(paths: Iterable[str]) -> list[str]:
    """`COMMIT:PATH` for every committed version of each shipped cassette, newest first ([] without git)."""
    found: list[str] = []
    for path in paths:
        relative = str(Path(path).resolve().relative_to(ROOT))
        log = subprocess.run(
            ["git", "log", "--format=%h", "--", relative], cwd=ROOT, capture_output=True, text=True, check=False
        )
        found += [f"{commit}:{relative}" for commit in log.stdout.split()]
    return found


def distinct(sources: Iterable[str]) -> list[Recording]:
    """The recordings of these sources, each recorded run once: a later commit of a cassette that only added calls
    after the run (a notebook's evaluation, a regeneration) holds the same run, which must not count twice."""
    found: list[Recording] = []
    seen: set[str] = set()
    for source in sources:
        recording = load(source)
        key = json.dumps([c.get("key", c["request"]) for c in recording.calls], sort_keys=True)
        if key not in seen:
            seen.add(key)
            found.append(recording)
    return found


def kept() -> list[str]:
    """Recordings kept for this benchmark only (benchmarks/recordings/: runs of a prompt variant not shipped)."""
    return [str(p) for p in sorted(RECORDINGS.glob("*.cassette.jsonl"))]


def all_recordings() -> list[Recording]:
    """The shipped cassettes, the kept recordings and, with git, every distinct earlier recorded run of the
    shipped ones."""
    return distinct(shipped() + kept() + committed(shipped()))


# ------------------------------------------------------------------------------------------------ deriving
def _key(call: dict[str, Any]) -> str:
    return str(call.get("key") or json.dumps(call["request"], sort_keys=True))


def distinct_calls(recordings: Sequence[Recording], unseen: Recording | None = None) -> list[dict[str, Any]]:
    """Every call of these runs once: a call with the same request (key) in two recordings is one observation
    (a later session that replayed or re-made the same planning from the same prompt at temperature 0). Calls
    that `unseen` also made are left out (leave-one-out must not see the left-out run's calls)."""
    hidden = {_key(c) for c in unseen.calls} if unseen else set()
    found: dict[str, dict[str, Any]] = {}
    for recording in recordings:
        for call in recording.calls:
            if _key(call) not in hidden:
                found.setdefault(_key(call), call)
    return list(found.values())


def minimax_scale(estimated: Sequence[int], used: Sequence[int]) -> float:
    """The factor s for which s * estimated is closest to used in the worst case, as relative error: with
    q = estimated / used per run, the worst errors are 1 - s * min(q) and s * max(q) - 1, equal at
    s = 2 / (min(q) + max(q)) (for one estimate E and runs u: E = 2 u_min u_max / (u_min + u_max))."""
    ratios = [e / u for e, u in zip(estimated, used, strict=True) if u]
    return 2 / (min(ratios) + max(ratios)) if ratios else 1.0


def derive(recordings: Sequence[Recording], name: str = "derived", unseen: Recording | None = None) -> Profile:
    """The typical sizes these recorded runs give (see typical_sizes.yaml for why each is what it is).

    Over their distinct calls: per stage the mean reply of a first attempt (each stage's share of a run), the
    re-asks per artifact, the problem a re-ask quotes, and `carried` (the offline count of a reply's text per
    reply token the server reported); over the runs: files and imports per file (means, rounded). Then one
    factor on every reply size, so that the estimate's tokens out are at the minimax point of the runs' totals.
    `unseen`: a run left out, whose calls are left out of the statistics too where another run shares them."""
    calls = distinct_calls(recordings, unseen)
    replies: dict[str, float] = {}
    reasks: dict[str, float] = {}
    for stage in sorted({c["request"]["stage"] for c in calls}):
        firsts = [_usage(c, "completion_tokens") for c in calls if c["request"]["stage"] == stage and _first(c)]
        again = [c for c in calls if c["request"]["stage"] == stage and not _first(c)]
        if firsts:
            replies[stage] = statistics.fmean(firsts)
            if again:
                reasks[stage] = round(len(again) / len(firsts), 3)
    logics = {json.dumps(logic.model_dump(), sort_keys=True): logic for r in recordings if (logic := r.logic())}
    imports = [len(f.depends_on) for logic in logics.values() for f in logic.files]
    template = estimate_tokens(render("repair", error=""))
    errors = [max(0, estimate_tokens(str(c["request"]["last_message"])) - template) for c in calls if not _first(c)]
    counted = [(estimate_tokens(str(c.get("reply", ""))), _usage(c, "completion_tokens")) for c in calls]
    shape = Profile(
        name=name,
        models=tuple(sorted({r.model.rsplit("-", 1)[0] for r in recordings})),
        files=round(statistics.fmean(len(r.files) for r in recordings)),
        imports=round(statistics.fmean(imports)) if imports else 0,
        reply_tokens={stage: round(size) for stage, size in replies.items()},
        reasks=reasks,
        reask_error_tokens=round(statistics.fmean(errors)) if errors else 0,
        carried=round(sum(c for c, _ in counted) / max(1, sum(u for _, u in counted)), 2),
    )
    estimated = [estimate_paper(r.paper, r.model, profile=shape).output_tokens for r in recordings]
    scale = minimax_scale(estimated, [r.completion_tokens for r in recordings])
    return replace(shape, reply_tokens={stage: round(size * scale) for stage, size in replies.items()})


def _first(call: dict[str, Any]) -> bool:
    return bool(call["request"]["attempt"] == 1)


def profile_yaml(profile: Profile) -> str:
    """The profile as an entry of typical_sizes.yaml."""
    replies = ", ".join(f"{k}: {v}" for k, v in profile.reply_tokens.items())
    reasks = ", ".join(f"{k}: {v}" for k, v in profile.reasks.items())
    return (
        f"  - name: {profile.name}\n    models: [{', '.join(profile.models)}]\n    files: {profile.files}\n"
        f"    imports: {profile.imports}\n    reply_tokens: {{{replies}}}\n    reasks: {{{reasks}}}\n"
        f"    reask_error_tokens: {profile.reask_error_tokens}\n    carried: {profile.carried}\n"
    )


# ------------------------------------------------------------------------------------------------ comparing
@dataclass
class Comparison:
    """One estimate against one recorded run; ratios are estimated / used."""

    label: str
    kind: str  # "recorded" or "synthetic"
    profile: str
    calls: tuple[int, int]
    tokens_in: tuple[int, int]
    tokens_out: tuple[int, int]
    notes: list[str] = field(default_factory=list)

    def ratio(self, pair: tuple[int, int]) -> float:
        return pair[0] / pair[1] if pair[1] else float("inf")

    @property
    def within_target(self) -> bool:
        return all(abs(self.ratio(p) - 1) <= TARGET for p in (self.tokens_in, self.tokens_out))

    def row(self) -> str:
        cells = [self.kind, self.label, self.profile]
        for pair in (self.calls, self.tokens_in, self.tokens_out):
            cells.append(f"{pair[0]:,} / {pair[1]:,} = {self.ratio(pair):.2f}x")
        cells.append("yes" if self.within_target else "**no**")
        return "| " + " | ".join(cells) + " |"


def compare(recording: Recording, profile: Profile | None = None) -> Comparison:
    """The estimate before the run (with `profile`, default the model's) against the recorded run."""
    estimate: Estimate = estimate_paper(recording.paper, recording.model, profile=profile)
    used = (len(recording.calls), recording.prompt_tokens, recording.completion_tokens)
    return Comparison(
        recording.label,
        "recorded",
        (profile or profile_for(recording.model)).name,
        (len(estimate.calls), used[0]),
        (estimate.input_tokens, used[1]),
        (estimate.output_tokens, used[2]),
        [f"{recording.later} later call(s) of the session left out"] if recording.later else [],
    )


def leave_one_out(recordings: Sequence[Recording]) -> list[Comparison]:
    """Each recording against the profile derived from the others (runs of one model only), without the calls
    it shares with them (the runs' totals, which place the scale, still hold the shared calls' tokens)."""
    compared = []
    for i, recording in enumerate(recordings):
        others = [r for j, r in enumerate(recordings) if j != i and r.model == recording.model]
        if others:
            result = compare(recording, derive(others, f"derived from the other {len(others)}", unseen=recording))
            compared.append(replace(result, kind="recorded, left out"))
    return compared


def synthetic(files: int = TYPICAL_FILES) -> Comparison:
    """The synthetic run (replies at the default profile's sizes) against the scripted server: the estimate
    before the run against what it used."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from synthetic import build, paper_path

    from p2c_notebook.run.pipeline import Pipeline
    from p2c_notebook.settings import Settings
    from p2c_notebook.testing import ScriptedServer

    synth = build(files)
    with ScriptedServer(synth.scenario()) as server, tempfile.TemporaryDirectory() as tmp:
        settings = Settings.model_validate({"base_url": server.base_url, "api_key": "sk-bench", "model": "gpt-4o-mini"})
        with Pipeline.start(paper_path(), Path(tmp) / "run", settings=settings) as pipeline:
            before = pipeline.estimate()
            if pipeline.run().state != "done":
                raise RuntimeError("the synthetic run did not finish")
            spent = pipeline.store.spent()
    return Comparison(
        f"synthetic, {files} files, {paper_path().name}",
        "synthetic",
        profile_for(before.model).name,
        (len(before.calls), spent.calls),
        (before.input_tokens, spent.prompt_tokens),
        (before.output_tokens, spent.completion_tokens),
        ["replies generated at the default profile's sizes: it checks the prompt counting, not the sizes"],
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cassettes", nargs="*", help="cassettes or COMMIT:PATH (default: shipped and committed)")
    parser.add_argument("--no-history", action="store_true", help="only the cassettes as they are now")
    parser.add_argument("--no-synthetic", action="store_true", help="skip the synthetic run")
    parser.add_argument("--derive", action="store_true", help="print the profile the recordings give")
    parser.add_argument("--save", action="store_true", help="write benchmarks/results/estimate.json")
    args = parser.parse_args(argv)

    if args.cassettes:
        recordings = distinct(args.cassettes)
    else:
        recordings = distinct(shipped() + kept()) if args.no_history else all_recordings()
    if args.derive:
        print(profile_yaml(derive(recordings, "recorded")), end="")
        return 0
    rows = [compare(r) for r in recordings] + leave_one_out(recordings)
    if not args.no_synthetic:
        rows.append(synthetic())
    print("| kind | run | profile | calls est / used | tokens in est / used | tokens out est / used | within 35% |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(row.row())
    for row in rows:
        for note in row.notes:
            print(f"- {row.label}: {note}")
    if args.save:
        RESULTS.mkdir(exist_ok=True)
        saved = [{**asdict(r), "within_target": r.within_target} for r in rows]
        (RESULTS / "estimate.json").write_text(json.dumps(saved, indent=2) + "\n", encoding="utf-8")
        print(f"saved {RESULTS / 'estimate.json'}")
    return 0 if all(r.within_target for r in rows if r.kind == "recorded") else 1


if __name__ == "__main__":
    sys.exit(main())
