"""The `p2c` command line: parse arguments, call the library, render its events."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO, cast

from p2c_notebook.errors import ConfigError, P2CError, PlanError, RunError
from p2c_notebook.execute.runner import describe_status as describe_exec
from p2c_notebook.paper import read_paper
from p2c_notebook.paper.model import describe_sections, exclude_sections, parse_patterns
from p2c_notebook.render import TerminalRenderer, TerminalStream
from p2c_notebook.run.estimate import estimate_paper
from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.run.runlog import last_failure
from p2c_notebook.run.session import RunOptions, add_settings_arguments, open_run, settings_from
from p2c_notebook.secrets import Scrubber
from p2c_notebook.settings import load_settings
from p2c_notebook.stages import registry, runchecks

EXIT_PAUSED = 10
EXIT_INTERRUPTED = 130


def _parser() -> argparse.ArgumentParser:
    stages = registry.describe()  # "plan, design, logic, config, analysis, code (or planning, coding)"
    artifacts = ", ".join(s.name + "/F" if s.per_file else s.name for s in registry.stages())
    parser = argparse.ArgumentParser(prog="p2c", description="Turn an ML paper into a code repository (PaperCoder).")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run (or resume) the pipeline on a paper or an existing run folder")
    run.add_argument("paper", help="PDF, .tex, LaTeX folder or .tar.gz, s2orc .json, .md/.txt; or a run folder")
    run.add_argument("--out", help="run folder (default: runs/<paper name>)")
    run.add_argument(
        "--exclude-sections",
        metavar="PATTERNS",
        help="leave sections out of what the model sees: comma-separated globs on titles or numbers, e.g. "
        '"Appendix*,6.2" ("" brings them all back); see `p2c paper PAPER`',
    )
    run.add_argument("--from", dest="from_stage", metavar="STAGE", help=f"redo from this stage: {stages}")
    run.add_argument("--until", metavar="STAGE", help="stop after this stage")
    run.add_argument(
        "--approve-each", action="store_true", help="pause before each stage until its inputs are approved"
    )
    run.add_argument("--overwrite-edited", action="store_true", help="allow --from to regenerate artifacts you edited")
    add_settings_arguments(run)  # the same options as `%p2c use`
    run.add_argument("-v", "--verbose", action="store_true", help="print the model's replies as they stream")

    status = sub.add_parser("status", help="show each artifact's status and what the next run does")
    status.add_argument("run")

    check = sub.add_parser("check", help="list what the static checks find in the generated code (exit 5: problems)")
    check.add_argument("run")

    show = sub.add_parser("show", help=f"print one artifact ({artifacts})")
    show.add_argument("run")
    show.add_argument("artifact")

    approve = sub.add_parser("approve", help=f"approve artifacts (or a stage: {', '.join(registry.groups())})")
    approve.add_argument("run")
    approve.add_argument("artifacts", nargs="+")

    paper = sub.add_parser("paper", help="read a paper and report what was extracted (no model calls)")
    paper.add_argument("paper")
    paper.add_argument("--text", action="store_true", help="print the text the model will see")
    paper.add_argument("--exclude-sections", metavar="PATTERNS", help="as `p2c run --exclude-sections`: preview it")
    paper.add_argument("--model", help="the model to estimate tokens and cost for (default: the configured one)")

    judge = sub.add_parser("eval", help="judge the generated repository against the paper (1-5, n samples)")
    judge.add_argument("run", help="a run folder with generated code")
    judge.add_argument("--reference", metavar="DIR", help="the authors' repository: a folder, .zip or .tar.gz")
    judge.add_argument("--judge", metavar="MODEL", help="the judge model (default: the configured model)")
    judge.add_argument("-n", type=int, default=8, help="judging samples, averaged (default 8)")
    add_settings_arguments(
        judge,
        only=("base_url", "api_key", "backend", "concurrency", "max_tokens", "temperature"),
        helps={
            "base_url": "OpenAI-compatible server URL of the judge",
            "concurrency": "judging calls at once (default: the concurrency setting)",
        },
    )

    compare = sub.add_parser("compare", help="several runs side by side as a Markdown table")
    compare.add_argument("runs", nargs="+", help="run folders")

    execute = sub.add_parser("exec", help="run the generated repository in a sandbox (asks first; exit 1: it failed)")
    execute.add_argument("run")
    mode = execute.add_mutually_exclusive_group()
    mode.add_argument("--smoke", dest="mode", action="store_const", const="smoke", help="a tiny run (default)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full", help="the whole run")
    execute.add_argument("--python", metavar="PATH", help="an existing interpreter (default: a venv for this run)")
    execute.add_argument("--no-sandbox", action="store_true", help="run unconfined where no sandbox is available")
    execute.add_argument("--yes", action="store_true", help="run (and make a missing reproduce.sh) without asking")
    add_settings_arguments(execute)  # the model that writes a missing reproduce.sh, when you say yes

    repair = sub.add_parser("fix", help="smoke-run the repository and repair failures with the model (asks per diff)")
    repair.add_argument("run")
    repair.add_argument("--rounds", type=int, default=3, help="at most this many repair rounds (default 3)")
    repair.add_argument("--python", metavar="PATH", help="an existing interpreter (default: a venv for this run)")
    repair.add_argument("--no-sandbox", action="store_true", help="run unconfined where no sandbox is available")
    repair.add_argument("--yes", action="store_true", help="run, and apply each proposed diff, without asking")
    repair.add_argument("--overwrite-edited", action="store_true", help="with --yes: also change files you edited")
    add_settings_arguments(repair)

    diff = sub.add_parser("diff", help="what changed in an artifact: an earlier version against the current one")
    diff.add_argument("run")
    diff.add_argument("artifact", help=f"one artifact ({artifacts}) or a repository path")
    diff.add_argument(
        "--against", type=int, metavar="N", help="the earlier version to compare (default: the latest; 0 lists them)"
    )

    batch = sub.add_parser("batch", help="run many papers (a folder, or a .yaml/.csv list) with one shared limit")
    batch.add_argument("spec", help="a folder of papers, or a .yaml/.csv list: paper, reference, settings per paper")
    batch.add_argument("--out", metavar="DIR", help="the batch folder (default: runs/batch/<spec name>)")
    batch.add_argument("--eval", action="store_true", help="also judge each finished paper (as `p2c eval`)")
    batch.add_argument("-n", type=int, default=8, help="with --eval: judging samples per paper (default 8)")
    batch.add_argument("--judge", metavar="MODEL", help="with --eval: the judge model (default: the paper's model)")
    calls_at_once = "model calls at once across the whole batch (default: fitted to the server)"
    add_settings_arguments(batch, helps={"concurrency": calls_at_once})

    questions = sub.add_parser("questions", help="the open questions of the planning: list, answer them")
    questions.add_argument("run")
    answer = questions.add_mutually_exclusive_group()
    answer.add_argument("--answer", nargs=2, metavar=("ID", "TEXT"), help="save your answer to a question")
    answer.add_argument("--judgement", metavar="ID", help='answer a question with "use your judgement"')
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    settings = load_settings(settings_from(args))
    renderer = TerminalRenderer(verbose=args.verbose)
    started = time.monotonic()
    exclude = parse_patterns(args.exclude_sections)
    options = RunOptions(out=args.out, settings=settings, sinks=(renderer,), exclude_sections=exclude)
    pipeline = open_run(Path(args.paper), options)
    with pipeline:
        result = pipeline.run(args.from_stage, args.until, args.approve_each, args.overwrite_edited)
        spent = pipeline.store.spent()
    elapsed = time.monotonic() - started
    print(result.message)
    print(f"Time: {elapsed:.1f} s; this run folder so far: {spent.calls} calls, {spent.describe()}")
    if result.state == "done":
        checked = runchecks.current(pipeline.store.root)
        print(runchecks.describe(checked) + _check_hint(checked, pipeline.store.root))
    if result.state == "paused":
        return EXIT_PAUSED
    if result.state == "cancelled":
        return EXIT_INTERRUPTED
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    pipeline = Pipeline.open(args.run)
    rows = pipeline.rows()
    width = max(len(r.artifact) for r in rows)
    checked = runchecks.current(pipeline.store.root, write=False) if (pipeline.store.root / "repo").is_dir() else None
    for row in rows:
        tokens = "" if row.status == "missing" else row.usage.describe()
        note = " (inputs changed since your edit)" if row.inputs_changed else ""
        problems = _file_problems(checked, row.artifact) if checked is not None else ""
        print(f"{row.artifact:<{width}}  {row.status:<9}  {tokens}{note}{problems}")
    print(f"Spent in this run folder: {pipeline.store.spent().calls} calls, {pipeline.store.spent().describe()}")
    done = [r.artifact for r in rows if r.status not in ("missing", "stale")]
    print(f"Done: {len(done)} of {len(rows)} artifacts (kept; a rerun does not ask for them again).")
    failure = last_failure(pipeline.store.root / "logs" / "run.log")
    if failure and len(done) < len(rows):
        print(f"The last run stopped with: {failure}")
    if checked is not None and checked["files"]:
        print(runchecks.describe(checked) + _check_hint(checked, pipeline.store.root))
    ran = describe_exec(pipeline.store.meta)
    if ran:
        print(ran)
    print(pipeline.next_command())
    return 0


def _file_problems(checked: dict[str, Any], artifact: str) -> str:
    """`  [2 problems, 1 warning]` after a code file's status line ("" when it has none, or is not code)."""
    stage, _, path = artifact.partition("/")
    entry = checked["files"].get(path) if stage == "code" else None
    if not entry or not entry["violations"]:
        return ""
    errors = sum(1 for v in entry["violations"] if v["severity"] == "error")
    warnings = len(entry["violations"]) - errors
    parts = [f"{errors} problem(s)"] if errors else []
    parts += [f"{warnings} warning(s)"] if warnings else []
    return f"  [{', '.join(parts)}]"


def _check_hint(checked: dict[str, Any], run: Path) -> str:
    return f" `p2c check {run}` lists them." if checked["errors"] or checked["warnings"] else ""


def cmd_check(args: argparse.Namespace) -> int:
    """Each violation as file:line: message; exit 0 when no errors remain, 5 when some do."""
    pipeline = Pipeline.open(args.run)
    if not any(r.status != "missing" for r in pipeline.rows() if r.artifact.startswith("code/")):
        raise RunError(f"No code has been generated in {args.run} yet; run `p2c run {args.run}` first.")
    checked = runchecks.current(pipeline.store.root)
    for violations in runchecks.violations_of(checked).values():
        for violation in violations:
            label = "" if violation.severity == "error" else " (warning)"
            print(f"{violation.location}: {violation.message}{label} [{violation.check}]")
    print(runchecks.describe(checked))
    return PlanError.exit_code if checked["errors"] else 0


def cmd_show(args: argparse.Namespace) -> int:
    pipeline = Pipeline.open(args.run)
    for artifact in pipeline.resolve(args.artifact):
        sys.stdout.write(pipeline.store.read(artifact))
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    pipeline = Pipeline.open(args.run)
    for name in args.artifacts:
        for artifact in pipeline.approve(name):
            print(f"approved {artifact}")
    return 0


def cmd_paper(args: argparse.Namespace) -> int:
    paper = read_paper(args.paper)
    paper, unmatched = exclude_sections(paper, parse_patterns(args.exclude_sections) or [])
    if unmatched:
        raise ConfigError(
            f"--exclude-sections {', '.join(repr(p) for p in unmatched)} names no section of {args.paper}."
        )
    if args.text:
        print(paper.to_text())
        return 0
    print(paper.report().summary())
    print("Sections the model will see:")
    for line in describe_sections(paper):
        print(f"  {line}")
    model = args.model or load_settings({}).model
    print(estimate_paper(paper.to_text(), model).describe().replace("Estimate:", "Estimate for a run:"))
    return 0


def _eval_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"model": args.judge, **settings_from(args)}


def cmd_eval(args: argparse.Namespace) -> int:
    from p2c_notebook.stages.evaluate import judge, report_lines

    settings = load_settings(_eval_settings(args))
    summary = judge(args.run, settings, args.n, args.reference, sinks=(TerminalRenderer(),))
    for line in report_lines(summary):
        print(line)
    print(f"Saved in {Path(args.run) / 'eval'} (every sample, with its cost)")
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    """Show what will be installed and run, ask, run it in the sandbox with its output live; 0 when it ran."""
    from p2c_notebook.execute import runner
    from p2c_notebook.execute.sandbox import ExecOutput

    _offer_reproduce(args)
    exec_plan = runner.plan(args.run, args.mode or "smoke", args.python, args.no_sandbox)
    for line in exec_plan.describe():
        print(line)
    if not args.yes:
        if not sys.stdin.isatty():
            raise ConfigError("Not running without a yes: pass --yes to run it (nothing was run).")
        if input("Run it? [y/N] ").strip().lower() not in ("y", "yes"):
            print("Not run.")
            return 0

    def sink(event: object) -> None:
        if isinstance(event, ExecOutput):
            sys.stdout.write(event.text)
            sys.stdout.flush()

    outcome = runner.execute(exec_plan, sink)
    print(outcome.describe())
    return 0 if outcome.passed else 1


def _offer_reproduce(args: argparse.Namespace) -> None:
    """A repository without reproduce.sh: say so and, on a yes (or --yes), make it (one model call)."""
    from p2c_notebook.execute import runner
    from p2c_notebook.run.store import RunStore

    if (Path(args.run) / "repo" / "reproduce.sh").is_file() or not RunStore.is_run(args.run):
        return
    settings = load_settings(settings_from(args))
    with open_run(Path(args.run), RunOptions(settings=settings, sinks=(TerminalRenderer(),))) as pipeline:
        offer = runner.reproduce_offer(pipeline)
        if offer is None:
            return
        print(offer)
        if args.yes or (sys.stdin.isatty() and _ask_yes("Generate reproduce.sh now?")):
            print(runner.make_reproduce(pipeline))
        else:
            print("Without it, the entry point runs instead.")


def cmd_fix(args: argparse.Namespace) -> int:
    """Run the smoke run; each failure's proposed diff is shown and applied only when approved; 0 once it passes."""
    from p2c_notebook.execute import repair, runner
    from p2c_notebook.execute.sandbox import ExecOutput

    settings = load_settings(settings_from(args))
    pipeline = open_run(Path(args.run), RunOptions(settings=settings, sinks=(TerminalRenderer(),)))
    exec_plan = runner.plan(args.run, "smoke", args.python, args.no_sandbox)
    for line in exec_plan.describe():
        print(line)
    print(
        f"Then, while it fails: at most {args.rounds} round(s) of model-proposed edits, each shown before it applies."
    )
    if not args.yes and not _ask_yes("Run it?"):
        return 0

    def sink(event: object) -> None:
        if isinstance(event, ExecOutput):
            sys.stdout.write(event.text)
            sys.stdout.flush()

    def approve(proposal: repair.Proposal) -> bool:
        print(f"Round {proposal.round}: proposed fix ({proposal.lines_changed()} line(s) changed)")
        print(proposal.diff())
        if proposal.edited:
            print(f"It changes file(s) you edited: {', '.join(proposal.edited)}.")
            if args.yes and args.overwrite_edited:
                return True
            return sys.stdin.isatty() and _ask_yes("Overwrite your edits with this fix?")
        return bool(args.yes) or _ask_yes("Apply this fix?")

    with pipeline:
        result = repair.fix(pipeline, exec_plan, approve, args.rounds, sink)
    print(result.outcome.describe())
    print(result.message)
    return 0 if result.passed else 1


def _ask_yes(question: str) -> bool:
    if not sys.stdin.isatty():
        raise ConfigError("Not going ahead without a yes: pass --yes (nothing more was run or changed).")
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def cmd_compare(args: argparse.Namespace) -> int:
    from p2c_notebook.stages.evaluate import compare_table

    print(compare_table(args.runs))
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    """A unified diff of the artifact's chosen earlier version against the current one (--against 0: the list)."""
    from p2c_notebook.run import history

    pipeline = Pipeline.open(args.run)
    pipeline.rows()  # the run folder as it is on disk (edits included)
    artifact = pipeline.resolve(args.artifact)[0] if args.artifact != registry.ANSWERS else args.artifact
    if args.against == 0:
        for version in history.versions(pipeline.store, artifact):
            print(f"{version.number:>3}  {version.label}")
        return 0
    text = history.diff(pipeline.store, artifact, args.against)
    print(text or f"{artifact}: the two versions are identical.")
    return 0


def cmd_questions(args: argparse.Namespace) -> int:
    """The queue of open questions with ids and states; --answer / --judgement saves one (and says what is stale)."""
    from p2c_notebook.run import questions

    pipeline = Pipeline.open(args.run)
    if args.answer or args.judgement:
        qid = args.answer[0] if args.answer else args.judgement
        stale = questions.answer(pipeline, qid, args.answer[1] if args.answer else None, bool(args.judgement))
        print(f"Saved the answer to {qid} in {pipeline.store.root / registry.ANSWERS_PATH}.")
        if stale:
            print(f"Now stale: {len(stale)} artifact(s) made before this answer; `p2c run {args.run}` redoes them.")
        return 0
    queue = questions.questions(pipeline.store)
    if not queue:
        print("No open questions: the plan and designs ask none (or are not generated yet).")
        return 0
    for question in queue:
        print(question.describe())
    left = sum(q.state == "open" for q in queue)
    print(f'{left} of {len(queue)} open. Answer with `p2c questions {args.run} --answer ID "TEXT"` or --judgement ID.')
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    """Run every paper; a line per paper as it ends, then the summary table; 0 when every paper is done."""
    from p2c_notebook.run.batch import (
        BatchFinished,
        BatchOptions,
        BatchStarted,
        PaperFinished,
        run_batch,
        summary_markdown,
    )

    settings = load_settings(settings_from(args))

    def progress(event: object) -> None:
        if isinstance(event, BatchStarted):
            kept = f"; {event.finished} finished earlier, kept" if event.finished else ""
            print(f"Batch of {event.papers} papers into {event.out}, {event.concurrency} calls at once{kept}")
        elif isinstance(event, PaperFinished) and event.result is not None:
            row = event.result
            what = row.error.splitlines()[0] if row.error else f"{row.calls} calls, {row.seconds:.1f} s"
            kept = " (kept)" if row.skipped else ""
            print(f"[{event.done}/{event.total}] {row.name}: {row.state}{kept}: {what}", flush=True)
        elif isinstance(event, BatchFinished) and event.result is not None:
            print(summary_markdown(event.result), end="")

    options = BatchOptions(out=args.out, settings=settings, evaluate=args.eval, samples=args.n, judge=args.judge)
    result = run_batch(args.spec, options, sinks=(progress,))
    print(f"Summary: {result.out / 'summary.md'} and summary.csv")
    if result.interrupted:
        print("Interrupted; everything finished is kept. Run the same command again to resume.", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 1 if result.failed else 0


COMMANDS = {
    "run": cmd_run,
    "status": cmd_status,
    "show": cmd_show,
    "approve": cmd_approve,
    "paper": cmd_paper,
    "check": cmd_check,
    "eval": cmd_eval,
    "compare": cmd_compare,
    "exec": cmd_exec,
    "fix": cmd_fix,
    "diff": cmd_diff,
    "questions": cmd_questions,
    "batch": cmd_batch,
}


def _scrubber(args: argparse.Namespace) -> Scrubber:
    """Every credential this command's settings send, so that nothing it prints (errors too) shows one."""
    try:
        given = (
            settings_from(args)
            if args.command in ("run", "fix", "batch", "exec")
            else _eval_settings(args)
            if args.command == "eval"
            else {}
        )
        return Scrubber.for_settings(load_settings(given))
    except P2CError:
        return Scrubber()  # the command itself reports the bad settings


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Its output goes through `TerminalStream`: control characters in model text are shown
    escaped, never obeyed, and credentials are scrubbed, on every path (artifacts, streaming, status, errors)."""
    args = _parser().parse_args(argv)
    stdout, stderr, scrub = sys.stdout, sys.stderr, _scrubber(args).text
    sys.stdout = cast(TextIO, TerminalStream(stdout, scrub))
    sys.stderr = cast(TextIO, TerminalStream(stderr, scrub))
    try:
        return _dispatch(args)
    finally:
        sys.stdout, sys.stderr = stdout, stderr


def _dispatch(args: argparse.Namespace) -> int:
    try:
        return COMMANDS[args.command](args)
    except P2CError as exc:
        print(f"p2c: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("p2c: interrupted; everything saved so far is kept. Run again to resume.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (`p2c paper X | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
