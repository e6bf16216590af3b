"""Evaluation (PaperCoder section 4.3) over real HTTP: the openai client against the scripted server."""

from __future__ import annotations

import importlib.util
import io
import json
import statistics
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from conftest import API_KEY, EXAMPLE, settings_for, small_scenario

from p2c_notebook.backends import OpenAIBackend
from p2c_notebook.cli import main
from p2c_notebook.errors import ConfigError, ReplyError
from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.run.store import RunStore
from p2c_notebook.run.usage import Usage
from p2c_notebook.stages.evaluate import (
    JUDGE_STAGE,
    NARROW_STAGE,
    EvalSummary,
    eval_status,
    eval_view,
    evaluate_run,
    read_reference,
)

REFERENCE = EXAMPLE / "reference"


def verdict(score: Any, *critiques: tuple[str, str, list[str]]) -> dict[str, Any]:
    """A judge's JSON reply: components, critiques (component, severity, files) and the score."""
    return {
        "components": ["linear model", "SGD with learning rate 0.1", "3 epochs"],
        "critique_list": [
            {"component": c, "severity": s, "files": f, "critique": f"{c} is not as the paper says"}
            for c, s, f in critiques
        ],
        "score": score,
    }


def generated_run(serve: Any, paper: Path, run: Path, judge: list[dict[str, Any]]) -> tuple[Any, Path]:
    """A finished run of the three-file toy scenario; the same server answers the judge with `judge`."""
    scenario = small_scenario()
    scenario["responses"] = judge + scenario["responses"]
    server = serve(scenario)
    with Pipeline.start(paper, run, settings=settings_for(server)) as pipeline:
        assert pipeline.run().state == "done"
    server.reset()  # from here on the recorded requests are the judge's
    return server, run


def judged(server: Any, run: Path, n: int, reference: Path | None = None, **extra: Any) -> EvalSummary:
    settings = settings_for(server, **extra)
    backend = OpenAIBackend(settings)
    try:
        return evaluate_run(run, backend, settings, n, reference)
    finally:
        backend.close()


def prompts(server: Any, stage: str) -> list[str]:
    return [r["messages"][-1]["content"] for r in server.requests if r["stage"] == stage]


def test_reference_free_score_is_the_mean_of_valid_samples_with_spread_and_cost(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    invalid = {"json": verdict(7)}  # JSON, but the score is out of range: re-asked once, then dropped
    judge = [
        {"stage": "judge", "attempt": 2, "replies": [invalid]},
        {
            "stage": "judge",
            "replies": [
                {"json": verdict(5)},
                {"json": verdict(3, ("learning rate", "High", ["main.py"]))},
                invalid,
                {"json": verdict(4, ("learning rate", "medium", ["models/net.py"]), ("epochs", "low", []))},
            ],
        },
    ]
    server, run = generated_run(serve, paper_md, tmp_path / "run", judge)
    spent_before = RunStore(run).spent()

    summary = judged(server, run, n=4)

    assert (summary.valid, summary.n, sorted(summary.scores)) == (3, 4, [3, 4, 5])
    assert summary.mean == pytest.approx(4.0) and summary.std == pytest.approx(statistics.stdev([3, 4, 5]))
    assert (summary.min, summary.max, summary.mode) == (3, 5, "reference-free")
    attempts = sorted(r["attempt"] for r in server.requests)
    assert attempts == [1, 1, 1, 1, 2] and {r["stage"] for r in server.requests} == {JUDGE_STAGE}
    prompt = prompts(server, JUDGE_STAGE)[0]
    assert "We fit a linear model with SGD" in prompt and '<file path="models/net.py">' in prompt
    assert "class Net" in prompt and "<reference_repository>" not in prompt
    # Critiques of one component merge across samples: the worst severity, every file named, how many said it.
    first = summary.critiques[0]
    # (Which sample gets which scripted reply depends on the order the concurrent calls arrive in.)
    assert (first.component, first.severity, sorted(first.files), first.samples) == (
        "learning rate",
        "high",
        ["main.py", "models/net.py"],
        2,
    )
    assert [c.component for c in summary.critiques] == ["learning rate", "epochs"]
    # Every sample is kept, the dropped one with both replies and the error; each with what it cost.
    records = [json.loads(p.read_text()) for p in sorted((run / "eval/samples").glob("sample-*.json"))]
    assert len(records) == 4 and sum(r["valid"] for r in records) == 3
    dropped = next(r for r in records if not r["valid"])
    assert len(dropped["replies"]) == 2 and "score" in dropped["error"] and dropped["usage"]["calls"] == 2
    paid = sum((Usage.from_dict(r["usage"]) for r in records), Usage())
    assert paid.calls == 5 and paid.cost is not None and paid.cost > 0
    total = Usage.from_dict(summary.usage)
    assert (total.calls, total.prompt_tokens, total.completion_tokens) == (
        5,
        paid.prompt_tokens,
        paid.completion_tokens,
    )
    assert total.cost == pytest.approx(paid.cost)
    spent = RunStore(run).spent()  # the manifest on disk counts the judging in the run's spent total
    assert spent.calls == spent_before.calls + 5
    assert spent.prompt_tokens == spent_before.prompt_tokens + paid.prompt_tokens
    saved = EvalSummary.model_validate_json((run / "eval/summary.json").read_text())
    assert saved == summary


def test_a_reply_that_is_not_json_is_reasked_once_then_dropped(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    prose = "The repository looks quite good to me, I would give it a four."
    judge = [
        {"stage": "judge", "file": "sample-2", "content": prose},  # both attempts: dropped
        {"stage": "judge", "file": "sample-3", "attempt": 1, "content": prose},
        {"stage": "judge", "file": "sample-3", "attempt": 2, "json": verdict(2)},  # recovered on the re-ask
        {"stage": "judge", "json": verdict(4)},
    ]
    server, run = generated_run(serve, paper_md, tmp_path / "run", judge)

    summary = judged(server, run, n=3)

    assert sorted(summary.scores) == [2, 4] and summary.mean == pytest.approx(3.0)
    by_sample = {f: [r for r in server.requests if r["file"] == f] for f in ("sample-1", "sample-2", "sample-3")}
    assert [len(v) for v in by_sample.values()] == [1, 2, 2]
    reask = by_sample["sample-2"][1]["messages"]
    assert reask[-2] == {"role": "assistant", "content": prose}
    assert "not valid JSON" in reask[-1]["content"] or "no JSON object" in reask[-1]["content"]
    record = json.loads((run / "eval/samples/sample-2.json").read_text())
    assert record["valid"] is False and record["replies"] == [prose, prose]


def test_no_valid_sample_fails_clearly_and_keeps_what_was_paid(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    server, run = generated_run(serve, paper_md, tmp_path / "run", [{"stage": "judge", "content": "no idea"}])
    with pytest.raises(ReplyError, match="None of the 2 judging samples"):
        judged(server, run, n=2)
    summary = EvalSummary.model_validate_json((run / "eval/summary.json").read_text())
    assert summary.valid == 0 and summary.mean is None and Usage.from_dict(summary.usage).calls == 4


def test_reference_based_judge_sees_the_reference_whole_when_it_fits(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    server, run = generated_run(serve, paper_md, tmp_path / "run", [{"stage": "judge", "json": verdict(3)}])

    summary = judged(server, run, n=2, reference=REFERENCE)

    assert summary.mode == "reference-based" and not summary.narrowed
    assert summary.reference_files == [
        "config.yaml",
        "data.py",
        "main.py",
        "metrics.py",
        "mixup.py",
        "model.py",
        "train.py",
    ]
    assert not prompts(server, NARROW_STAGE)
    prompt = prompts(server, JUDGE_STAGE)[0]
    reference = prompt[prompt.index("<reference_repository>") : prompt.index("</reference_repository>")]
    assert "def mix_batch" in reference and "class Net" not in reference
    assert prompt.index("</reference_repository>") < prompt.index("<generated_repository>")


def test_a_reference_too_long_for_the_window_is_narrowed_to_the_judges_choice(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    reference = tmp_path / "authors"
    (reference / "src").mkdir(parents=True)
    (reference / "src/model.py").write_text("class AuthorsNet:\n    pass\n")
    (reference / "train.py").write_text("def authors_train():\n    return 0.1\n")
    (reference / "tables.py").write_text("ROWS = [\n" + "    [1.0, 2.0, 3.0, 4.0],\n" * 4000 + "]\n")
    judge = [
        {"stage": NARROW_STAGE, "json": {"files": ["train.py", "./src/model.py", "missing.py"]}},
        {"stage": JUDGE_STAGE, "json": verdict(4)},
    ]
    server, run = generated_run(serve, paper_md, tmp_path / "run", judge)

    summary = judged(server, run, n=2, reference=reference, context_window=12_000)

    assert summary.narrowed and summary.reference_files == ["train.py", "src/model.py"]
    assert any("missing.py" in note for note in summary.notes)
    [listing] = prompts(server, NARROW_STAGE)
    assert "tables.py (" in listing and "tokens)" in listing and "ROWS" not in listing
    assert server.requests[0]["stage"] == NARROW_STAGE  # chosen before any judging call
    for prompt in prompts(server, JUDGE_STAGE):
        assert "def authors_train" in prompt and "class AuthorsNet" in prompt and "ROWS" not in prompt
        assert "Only 2 of the reference's 3 files are shown" in prompt


def test_a_narrowing_reply_naming_no_listed_file_is_reasked_then_fails_with_its_cost_counted(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    reference = tmp_path / "authors"
    reference.mkdir()
    (reference / "train.py").write_text("def authors_train():\n    return 0.1\n")
    (reference / "tables.py").write_text("ROWS = [\n" + "    [1.0, 2.0, 3.0, 4.0],\n" * 4000 + "]\n")
    judge = [{"stage": NARROW_STAGE, "json": {"files": ["model.py"]}}, {"stage": JUDGE_STAGE, "json": verdict(4)}]
    server, run = generated_run(serve, paper_md, tmp_path / "run", judge)
    before = RunStore(run).spent().calls

    with pytest.raises(ReplyError, match="could not choose the reference files"):
        judged(server, run, n=2, reference=reference, context_window=12_000)

    assert [(r["stage"], r["attempt"]) for r in server.requests] == [(NARROW_STAGE, 1), (NARROW_STAGE, 2)]
    assert "none of the files chosen (model.py) is in the list" in server.requests[1]["messages"][-1]["content"]
    assert RunStore(run).spent().calls == before + 2


def test_a_repository_too_long_for_the_judge_is_refused_before_any_call(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    server, run = generated_run(serve, paper_md, tmp_path / "run", [{"stage": "judge", "json": verdict(4)}])
    with pytest.raises(ConfigError, match="larger window"):
        judged(server, run, n=2, context_window=4_500)
    assert server.requests == []


def test_evaluation_goes_stale_when_the_code_changes(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    server, run = generated_run(
        serve, paper_md, tmp_path / "run", [{"stage": "judge", "json": verdict(4, ("lr", "low", ["main.py"]))}]
    )
    assert eval_status(run) == "missing"
    judged(server, run, n=1)
    assert eval_status(run) == "current"
    (run / "repo/__pycache__").mkdir(exist_ok=True)
    (run / "repo/__pycache__/main.cpython-311.pyc").write_bytes(b"\0compiled")  # running the code is no edit
    assert eval_status(run) == "current"
    view = eval_view(run)
    assert view.links == {"main.py": "repo/main.py"}
    main_py = run / "repo/main.py"
    main_py.write_text(main_py.read_text() + "# edited\n")
    assert eval_status(run) == "stale" and eval_view(run).status == "stale"
    main_py.write_text(main_py.read_text().replace("# edited\n", ""))
    assert eval_status(run) == "current"
    (run / "repo/extra.py").write_text("x = 1\n")
    assert eval_status(run) == "stale"


def test_reference_archives_are_read_in_memory_without_escapes_or_links(tmp_path: Path) -> None:
    zipped = tmp_path / "ref.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("project-main/src/model.py", "class M: ...\n")
        archive.writestr("project-main/README.md", "# readme\n")
        archive.writestr("../evil.py", "escape\n")
        archive.writestr("/abs.py", "absolute\n")
        archive.writestr("project-main/weights.bin", b"\0\1\2")
    tree = read_reference(zipped)
    assert [f.path for f in tree.files] == ["README.md", "src/model.py"]
    assert not (tmp_path / "evil.py").exists() and not Path("/abs.py").exists()

    tarred = tmp_path / "ref.tar.gz"
    with tarfile.open(tarred, "w:gz") as archive:

        def add(name: str, data: bytes, kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.size, info.type, info.linkname = len(data), kind, link
            archive.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        add("repo/train.py", b"def train(): ...\n")
        add("repo/passwd", b"", tarfile.SYMTYPE, "/etc/passwd")
        add("repo/../../outside.py", b"x = 1\n")
        add("repo/huge.py", b"#" * (600 * 1024))
    tree = read_reference(tarred)
    assert [f.path for f in tree.files] == ["train.py"]
    assert any("huge.py" in s for s in tree.skipped)
    (tmp_path / "notes.txt").write_text("not an archive\n")
    with pytest.raises(ConfigError, match="neither a folder"):
        read_reference(tmp_path / "notes.txt")


def test_cli_eval_prints_score_spread_and_critiques_and_compare_tabulates_runs(
    serve: Any, paper_md: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    judge = [{"stage": "judge", "json": verdict(3, ("training loop", "high", ["main.py", "data.py"]))}]
    server, run = generated_run(serve, paper_md, tmp_path / "run", judge)
    other = tmp_path / "other"
    with Pipeline.start(paper_md, other, settings=settings_for(server)) as pipeline:
        pipeline.run()
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("P2C_CONFIG", str(tmp_path / "none.yaml"))
    for name in ("P2C_MODEL", "P2C_BACKEND", "P2C_API_KEY", "P2C_BASE_URL", "P2C_CONTEXT_WINDOW"):
        monkeypatch.delenv(name, raising=False)

    assert main(["eval", str(run), "--judge", "gpt-4o-mini", "-n", "3"]) == 0
    out = capsys.readouterr().out
    assert "Score: 3.00 / 5 (std 0.00, min 3, max 3; 3 of 3 samples valid" in out
    assert "high   training loop [main.py, data.py] (3/3)" in out
    assert API_KEY not in out

    assert main(["compare", str(run), str(other)]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert table[0] == "| run | model | calls | tokens in / out | cost | time | checks | eval score |"
    assert len(table) == 4 and "gpt-4o-mini" in table[2]
    assert "3.00 ± 0.00 (3/3, reference-free, current)" in table[2] and table[3].endswith("| - |")


# --- the hand-written reference implementation of the example paper ---------------------------------------
def test_reference_implementation_smoke_run_finishes_in_seconds(tmp_path: Path) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(REFERENCE / "main.py"), "--smoke", "--json", str(tmp_path / "r.json")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 30
    rows = json.loads((tmp_path / "r.json").read_text())
    assert {(r["dataset"], r["alpha"]) for r in rows} == {
        (d, a) for d in ("moons", "spirals", "blobs") for a in (0.0, 1.0)
    }
    assert all(0.5 < r["accuracy"] / 100 <= 1 and r["ece"] >= 0 for r in rows)


@pytest.fixture
def reference_modules() -> Iterator[dict[str, ModuleType]]:
    loaded = {}
    for name in ("model", "mixup", "metrics"):
        spec = importlib.util.spec_from_file_location(f"mixup_reference_{name}", REFERENCE / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        loaded[name] = module
    yield loaded


def test_reference_backward_pass_matches_finite_differences(reference_modules: dict[str, ModuleType]) -> None:
    rng = np.random.default_rng(0)
    net = reference_modules["model"].MLP(2, 5, 3, rng)
    x = rng.normal(size=(7, 2))
    targets = rng.dirichlet(np.ones(3), size=7)  # soft (mixed) targets
    _, grads = net.loss_and_grads(x, targets, 0.01)
    for name, value in net.params.items():
        numeric = np.zeros_like(value)
        for index in np.ndindex(value.shape):
            old = value[index]
            value[index] = old + 1e-6
            up, _ = net.loss_and_grads(x, targets, 0.01)
            value[index] = old - 1e-6
            down, _ = net.loss_and_grads(x, targets, 0.01)
            value[index] = old
            numeric[index] = (up - down) / 2e-6
        assert np.allclose(grads[name], numeric, atol=1e-6), name


def test_reference_mixup_draws_one_beta_weight_and_mixes_inputs_and_labels(
    reference_modules: dict[str, ModuleType],
) -> None:
    mix = reference_modules["mixup"].mix_batch
    x, y = np.arange(12.0).reshape(6, 2), np.eye(3)[[0, 1, 2, 0, 1, 2]]
    mixed_x, mixed_y, lam = mix(x, y, 0.4, np.random.default_rng(3))
    replay = np.random.default_rng(3)
    assert lam == replay.beta(0.4, 0.4)
    perm = replay.permutation(6)
    assert np.allclose(mixed_x, lam * x + (1 - lam) * x[perm])
    assert np.allclose(mixed_y, lam * y + (1 - lam) * y[perm]) and np.allclose(mixed_y.sum(axis=1), 1)
    same_x, same_y, one = mix(x, y, 0.0, np.random.default_rng(3))  # alpha = 0 is ERM
    assert one == 1.0 and same_x is x and same_y is y
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    labels = np.array([0, 1, 1])
    # bins of width 1/15: 0.9 -> bin 13, 0.6 -> bin 8, 0.8 -> bin 11; each |acc - conf| weighted 1/3
    expected = (abs(1 - 0.9) + abs(0 - 0.6) + abs(1 - 0.8)) / 3
    assert reference_modules["metrics"].ece(probs, labels, 15) == pytest.approx(expected)


def test_magic_eval_judges_the_loaded_run(
    serve: Any, paper_md: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    judge = [{"stage": "judge", "json": verdict(2, ("objective", "high", ["models/net.py"]))}]
    server, run = generated_run(serve, paper_md, tmp_path / "run", judge)
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "P2C_API_KEY", "P2C_BASE_URL", "P2C_MODEL", "P2C_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("P2C_CONFIG", str(tmp_path / "no-config.yaml"))
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "p2c_notebook.ui.magics")
    try:
        shell.run_line_magic("p2c", f"use --base-url {server.base_url} --api-key {API_KEY}")
        shell.run_line_magic("p2c", f"load {run}")
        capsys.readouterr()
        shell.run_line_magic("p2c", "eval -n 2 --judge gpt-4o")
    finally:
        shell.run_line_magic("unload_ext", "p2c_notebook.ui.magics")
    captured = capsys.readouterr()
    assert "p2c: error" not in captured.err
    assert "Score: 2.00 / 5" in captured.out and "high   objective [models/net.py] (2/2)" in captured.out
    assert {r["model"] for r in server.requests} == {"gpt-4o"} and eval_status(run) == "current"
