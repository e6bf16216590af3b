"""`%p2c` and `%%p2c feedback`: parse the line, call the library, display the result.

`%load_ext p2c_notebook` registers one `P2CMagics` instance with the shell; it holds the current pipeline,
so there is no module-level state and nothing else in the kernel is touched. Errors become one line on
stderr (`p2c: error: ...`); the API key is never shown.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.display import display as _display

from p2c_notebook.errors import EditedArtifactError, P2CError, RunError
from p2c_notebook.render import TerminalRenderer, escape_controls
from p2c_notebook.run.pipeline import Pipeline, RunResult
from p2c_notebook.run.session import RunOptions, add_settings_arguments, open_run, settings_from
from p2c_notebook.settings import Settings, load_settings
from p2c_notebook.stages import registry
from p2c_notebook.stages.registry import stage_of
from p2c_notebook.ui import render

if TYPE_CHECKING:
    from p2c_notebook.ui.walkthrough import Walkthrough

T = TypeVar("T")
display: Callable[..., object] = _display  # IPython leaves `display` unannotated

HELP = """\
%p2c load PAPER [--name N | --out DIR]   read a paper (or open a run folder) and show its walkthrough
%p2c plan | analyze | code | run         run the planning stage / analysis / coding / everything left
      [--approve-each] [--background]    (run also takes --from STAGE and --overwrite-edited)
%p2c status                              each artifact's status, tokens and cost
%p2c show ARTIFACT                       show plan, design, logic, config, analysis/FILE or code/FILE
%p2c approve ARTIFACT [ARTIFACT ...]     approve artifacts (or a stage: planning, analysis, coding)
%%p2c feedback ARTIFACT [--overwrite-edited]
<feedback text>                          regenerate one artifact with the cell body as feedback
%p2c use [--model M] [--base-url URL] [--backend B] [--api-key K] [--reset]
                                         choose the model server (the key is never shown)
%p2c eval [--reference DIR] [--judge MODEL] [-n N] [--again]
                                         judge the generated code against the paper (score 1-5, critiques)
%p2c exec [--smoke | --full] [--python PATH] [--no-sandbox] [--yes]
                                         run the generated code in a sandbox: shows what it will run; --yes runs it
%p2c fix [--rounds N] [--python PATH] [--no-sandbox] [--yes] [--overwrite-edited]
                                         repair a failing smoke run: each fix the model proposes is shown to apply,
                                         edit or reject (Run panel); --yes runs and applies them without asking
%p2c questions [--answer ID TEXT | --judgement ID]
                                         the planning's open questions; answer one (analysis and code go stale)
%p2c walkthrough | cancel | help         show the widget / stop a background run / this text"""


def run_verbs() -> dict[str, str | None]:
    """Each verb that runs stages and the stage it stops after: the stages' verbs (`Stage.verb`: "plan" until
    config, "analyze" until analysis, "code" until code) and "run" (everything left)."""
    return {**registry.verbs(), "run": None}


class MagicUsageError(Exception):
    """The magic line does not parse."""


class _HelpShown(Exception):
    """argparse printed a help text (`-h`); nothing else to do."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise MagicUsageError(message)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if status:
            raise MagicUsageError(message or "invalid arguments")
        raise _HelpShown


def _parser() -> _Parser:
    parser = _Parser(prog="%p2c", add_help=False)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    load = sub.add_parser("load")
    load.add_argument("paper")
    where = load.add_mutually_exclusive_group()
    where.add_argument("--name", help="run folder runs/NAME")
    where.add_argument("--out", help="run folder")
    for name in run_verbs():
        stage = sub.add_parser(name)
        stage.add_argument("--approve-each", action="store_true")
        stage.add_argument("--background", action="store_true")
        if name == "run":
            stage.add_argument("--from", dest="from_stage", metavar="STAGE")
            stage.add_argument("--overwrite-edited", action="store_true")
    sub.add_parser("status")
    show = sub.add_parser("show")
    show.add_argument("artifact")
    approve = sub.add_parser("approve")
    approve.add_argument("artifacts", nargs="+")
    feedback = sub.add_parser("feedback")
    feedback.add_argument("artifact")
    feedback.add_argument("--overwrite-edited", action="store_true")
    use = sub.add_parser("use")
    add_settings_arguments(use)  # the same options as `p2c run`
    use.add_argument("--reset", action="store_true", help="forget what earlier `use` lines set")
    judge = sub.add_parser("eval")
    judge.add_argument("--reference")
    judge.add_argument("--judge")
    judge.add_argument("-n", type=int, default=8)
    judge.add_argument("--again", action="store_true", help="judge again even when the evaluation is current")
    execute = sub.add_parser("exec")
    mode = execute.add_mutually_exclusive_group()
    mode.add_argument("--smoke", dest="mode", action="store_const", const="smoke")
    mode.add_argument("--full", dest="mode", action="store_const", const="full")
    execute.add_argument("--python")
    execute.add_argument("--no-sandbox", action="store_true")
    execute.add_argument("--yes", action="store_true")
    repair = sub.add_parser("fix")
    repair.add_argument("--rounds", type=int, default=3)
    repair.add_argument("--python")
    repair.add_argument("--no-sandbox", action="store_true")
    repair.add_argument("--yes", action="store_true")
    repair.add_argument("--overwrite-edited", action="store_true")
    questions = sub.add_parser("questions")
    reply = questions.add_mutually_exclusive_group()
    reply.add_argument("--answer", nargs=2, metavar=("ID", "TEXT"))
    reply.add_argument("--judgement", metavar="ID")
    for name in ("walkthrough", "cancel", "help"):
        sub.add_parser(name)
    return parser


def parse_line(line: str) -> argparse.Namespace:
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise MagicUsageError(f"cannot split the line: {exc}") from None
    if not words:
        raise MagicUsageError("say what to do, e.g. `%p2c load paper.pdf`")
    return _parser().parse_args(words)


def error(message: str) -> None:
    print(escape_controls(f"p2c: error: {render.one_line(message, 1000)}"), file=sys.stderr)


def cancellable(pipeline: Pipeline, work: Callable[[], T]) -> T:
    """Run `work` on a thread and join it; Ctrl-C / a kernel interrupt cancels the pipeline cleanly."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="p2c-magic", daemon=True)
    thread.start()
    try:
        thread.join()
    except KeyboardInterrupt:
        pipeline.cancel()
        thread.join()
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


@magics_class
class P2CMagics(Magics):
    """The `%p2c` magics; one instance per shell holds the current pipeline and its walkthrough."""

    def __init__(self, shell: Any = None, widgets: bool | None = None) -> None:
        super().__init__(shell)  # type: ignore[no-untyped-call]
        self.overrides: dict[str, Any] = {}
        self.pipeline: Pipeline | None = None
        self.walkthrough: Walkthrough | None = None
        self.widgets = widgets  # None: widgets when running in a Jupyter kernel with ipywidgets

    @line_cell_magic  # type: ignore[untyped-decorator]
    def p2c(self, line: str, cell: str | None = None) -> None:
        """Turn a paper into a repository, stage by stage: `%p2c help` lists the commands."""
        try:
            args = parse_line(line)
            if cell is not None and args.command != "feedback":
                raise MagicUsageError("only `%%p2c feedback ARTIFACT` takes a cell body")
            verbs = run_verbs()
            if args.command in verbs:
                self._run(args, verbs[args.command])
            else:
                getattr(self, f"_cmd_{args.command}")(args, cell)
        except _HelpShown:
            pass
        except MagicUsageError as exc:
            error(f"{exc} (see `%p2c help`)")
        except P2CError as exc:
            error(str(exc))
        except KeyboardInterrupt:
            error("interrupted; everything saved so far is kept. Run again to resume.")
        except Exception as exc:  # noqa: BLE001 - the edge: one line, never a traceback
            error(render.unexpected(exc))

    # --- state -----------------------------------------------------------------------------------------
    def use_widgets(self) -> bool:
        if self.widgets is not None:
            return self.widgets
        if getattr(self.shell, "kernel", None) is None:
            return False
        try:
            import ipywidgets  # type: ignore[import-untyped]  # noqa: F401
        except ImportError:
            return False
        return True

    def settings(self) -> Settings:
        return load_settings(self.overrides)

    def require(self) -> Pipeline:
        if self.pipeline is None:
            raise RunError("No paper loaded: start with `%p2c load PAPER` (a paper file or a run folder).")
        return self.pipeline

    def _widget(self) -> Walkthrough:
        pipeline = self.require()
        if self.walkthrough is None or self.walkthrough.pipeline is not pipeline:
            from p2c_notebook.ui.walkthrough import Walkthrough

            self.walkthrough = Walkthrough(pipeline)
        return self.walkthrough

    def _open(self, source: Path, out: Path | None, settings: Settings) -> Pipeline:
        sinks = () if self.use_widgets() else (TerminalRenderer(),)
        return open_run(source, RunOptions(out=out, settings=settings, sinks=sinks))

    def close(self) -> None:
        if self.walkthrough is not None:
            self.walkthrough.close()
            self.walkthrough = None
        if self.pipeline is not None:
            self.pipeline.close()
            self.pipeline = None

    def _idle(self) -> None:
        if self.walkthrough is not None and self.walkthrough.busy:
            raise RunError("A run is in progress: wait for it, or stop it with `%p2c cancel`.")

    # --- commands --------------------------------------------------------------------------------------
    def _cmd_help(self, args: argparse.Namespace, cell: str | None) -> None:
        print(HELP)

    def _cmd_load(self, args: argparse.Namespace, cell: str | None) -> None:
        self._idle()
        settings = self.settings()
        out = Path(args.out) if args.out else Path("runs") / args.name if args.name else None
        pipeline = self._open(Path(args.paper), out, settings)
        self.close()
        self.pipeline = pipeline
        print(f"Run folder: {pipeline.store.root}")
        if self.use_widgets():
            display(self._widget())
        print(self._next_hint())

    def _cmd_use(self, args: argparse.Namespace, cell: str | None) -> None:
        self._idle()
        if args.reset:
            self.overrides.clear()
        given = settings_from(args)
        candidate = {**self.overrides, **{k: v for k, v in given.items() if v is not None}}
        settings = load_settings(candidate)  # validate before keeping anything
        self.overrides = candidate
        if self.pipeline is not None:
            root = self.pipeline.store.root
            self.close()
            self.pipeline = self._open(root, None, settings)
        key = "set" if settings.api_key else "not set (OPENAI_API_KEY)"
        print(f"model: {render.backend_label(settings)} · backend: {settings.backend} · key: {key}")
        if args.api_key:
            print("note: prefer OPENAI_API_KEY; a key typed in a magic line is kept in the notebook and its history.")

    def _run(self, args: argparse.Namespace, until: str | None) -> None:
        pipeline = self.require()
        from_stage = getattr(args, "from_stage", None)
        overwrite = getattr(args, "overwrite_edited", False)
        if self.use_widgets():
            wt = self._widget()
            display(wt.progress_output())  # with a static line for a re-opened notebook
            wt.run(from_stage, until, args.approve_each, overwrite, block=not args.background)
            if args.background:
                print("Running in the background; `%p2c cancel` stops it.")
                return
            if wt.last_error:
                raise RunError(wt.last_error)
            if wt.last_result is None:
                return
            result = wt.last_result
        else:
            if args.background:
                raise MagicUsageError("--background needs the notebook widgets (ipywidgets in a Jupyter kernel)")
            result = cancellable(pipeline, lambda: pipeline.run(from_stage, until, args.approve_each, overwrite))
        print(self._describe(result))
        spent = pipeline.store.spent()
        print(f"This run folder so far: {spent.calls} calls, {spent.describe()}")

    def _cmd_status(self, args: argparse.Namespace, cell: str | None) -> None:
        pipeline = self.require()
        busy = self.walkthrough is not None and self.walkthrough.busy
        # mid-run, read the manifest as recorded; the running pipeline keeps it current
        recorded = pipeline.rows(recorded=busy)
        rows = [r for r in recorded if r.artifact != "paper"]
        width = max(len(r.artifact) for r in rows)
        lines, cells = [], []
        for row in rows:
            note = " (inputs changed since your edit)" if row.inputs_changed else ""
            usage = render.usage_line(row.usage)
            lines.append(f"{row.artifact:<{width}}  {row.status:<9}  {usage}{note}")
            cells.append(
                f"<tr><td><code>{render.esc(row.artifact)}</code></td>"
                f"<td><span class='p2c-badge p2c-badge-{render.esc(row.status)}'>{render.esc(row.status)}</span></td>"
                f"<td>{render.esc(usage + note)}</td></tr>"
            )
        spent = pipeline.store.spent()
        footer = f"Spent in this run folder: {spent.calls} calls, {spent.describe()}. {self._next_hint()}"
        table = (
            "<table class='p2c-table'><thead><tr><th>Artifact</th><th>Status</th><th>Usage</th></tr></thead>"
            f"<tbody>{''.join(cells)}</tbody></table><p>{render.esc(footer)}</p>"
        )
        display({"text/plain": escape_controls("\n".join([*lines, footer])), "text/html": table}, raw=True)
        if self.walkthrough is not None and not busy:
            self.walkthrough.refresh()

    def _cmd_questions(self, args: argparse.Namespace, cell: str | None) -> None:
        """List the open questions (ids, states); --answer / --judgement saves one, as `p2c questions` does."""
        from p2c_notebook.run import questions

        pipeline = self.require()
        if args.answer or args.judgement:
            self._idle()
            qid = args.answer[0] if args.answer else args.judgement
            stale = questions.answer(pipeline, qid, args.answer[1] if args.answer else None, bool(args.judgement))
            print(f"Saved the answer to {qid}." + (f" Now stale: {len(stale)} artifact(s)." if stale else ""))
            if self.walkthrough is not None:
                self.walkthrough.refresh()
            return
        queue = questions.questions(pipeline.store)
        lines = [q.describe() for q in queue] or ["No open questions: the plan and designs ask none (yet)."]
        print(escape_controls("\n".join(lines)))

    def _cmd_show(self, args: argparse.Namespace, cell: str | None) -> None:
        pipeline = self.require()
        for artifact in pipeline.resolve(args.artifact):
            text = pipeline.store.read(artifact)
            page = f"<h4>{render.esc(render.title_of(artifact))}</h4>{render.artifact_html(artifact, text)}"
            display({"text/plain": escape_controls(text), "text/html": page}, raw=True)  # a terminal shows it

    def _cmd_approve(self, args: argparse.Namespace, cell: str | None) -> None:
        pipeline = self.require()
        self._idle()
        for name in args.artifacts:
            for artifact in pipeline.approve(name):
                print(f"approved {artifact}")
        if self.walkthrough is not None:
            self.walkthrough.refresh()

    def _cmd_feedback(self, args: argparse.Namespace, cell: str | None) -> None:
        feedback = (cell or "").strip()
        if not feedback:
            raise MagicUsageError("write the feedback as the cell body: `%%p2c feedback ARTIFACT` on the first line")
        pipeline = self.require()
        self._idle()
        targets = pipeline.resolve(args.artifact)
        if len(targets) != 1:
            raise MagicUsageError(f"{args.artifact} names {len(targets)} artifacts; give one, e.g. code/main.py")
        artifact = targets[0]
        try:
            if self.use_widgets():
                wt = self._widget()
                display(wt.progress_output())  # with a static line for a re-opened notebook
                done = wt.regenerate(artifact, feedback, args.overwrite_edited, block=True)
                if wt.last_error:
                    raise RunError(wt.last_error)
                if done is not None:  # this feedback made the current version already: nothing was sent
                    print(done)
                    return
            else:
                cancellable(pipeline, lambda: pipeline.regenerate(artifact, feedback, args.overwrite_edited))
        except EditedArtifactError as exc:
            raise EditedArtifactError(f"{exc} Add --overwrite-edited to the magic line to do so.") from None
        stale = [r.artifact for r in pipeline.rows() if r.status == "stale"]
        print(f"Regenerated {artifact} with your feedback." + (f" Now stale: {', '.join(stale)}." if stale else ""))

    def _cmd_eval(self, args: argparse.Namespace, cell: str | None) -> None:
        from p2c_notebook.stages.evaluate import judge, report_lines
        from p2c_notebook.ui.quality import already_evaluated

        pipeline = self.require()
        self._idle()
        done = None if args.again or args.judge else already_evaluated(pipeline.store.root, args.n, args.reference)
        if done is not None:  # the cell run again: nothing to pay for
            print(escape_controls(done))
            return
        settings = load_settings({**self.overrides, "model": args.judge} if args.judge else self.overrides)
        sinks = () if self.use_widgets() else (TerminalRenderer(),)
        summary = judge(pipeline.store.root, settings, args.n, args.reference, sinks=sinks)
        print(escape_controls("\n".join(report_lines(summary))))

    def _cmd_exec(self, args: argparse.Namespace, cell: str | None) -> None:
        """Without --yes it only shows what would be installed and run: the second line, with --yes, is the ask."""
        from p2c_notebook.execute import runner
        from p2c_notebook.execute.sandbox import ExecOutput

        pipeline = self.require()
        self._idle()
        offer = runner.reproduce_offer(pipeline)
        if offer is not None:
            print(offer)
            if args.yes:
                print(runner.make_reproduce(pipeline))
        exec_plan = runner.plan(pipeline.store.root, args.mode or "smoke", args.python, args.no_sandbox)
        print(escape_controls("\n".join(exec_plan.describe())))
        if not args.yes:
            made = " (and to generate reproduce.sh first)" if offer is not None else ""
            print(f"Nothing was run. Add --yes to the same line to run it{made}.")
            return

        def sink(event: object) -> None:
            if isinstance(event, ExecOutput):
                sys.stdout.write(escape_controls(event.text))

        outcome = runner.execute(exec_plan, sink)
        pipeline.store.reload()
        print(outcome.describe())

    def _cmd_fix(self, args: argparse.Namespace, cell: str | None) -> None:
        """The repair loop (`p2c fix`). In the notebook it is the walkthrough's Run panel: nothing runs before a
        click there and each fix waits for Apply / Reject. --yes runs and applies without asking, as the CLI."""
        from p2c_notebook.execute import repair, runner
        from p2c_notebook.execute.sandbox import ExecOutput

        pipeline = self.require()
        self._idle()
        if args.rounds < 1:
            raise MagicUsageError(f"--rounds must be at least 1 (got {args.rounds})")
        exec_plan = runner.plan(pipeline.store.root, "smoke", args.python, args.no_sandbox)
        if self.use_widgets():
            panel = self._widget().run_panel
            panel.python.value = args.python or ""
            panel.offer_repair(args.rounds)
            display(panel.widget)
            if args.yes:
                panel.fix_all(args.rounds, args.overwrite_edited, block=True)
                self._widget().wait()
                pipeline.store.reload()
                if panel.last_error:
                    raise RunError(panel.last_error)
            return
        print(escape_controls("\n".join(exec_plan.describe())))
        print(f"Then, while it fails: at most {args.rounds} round(s) of model-proposed edits.")
        if not args.yes:
            print(
                "Nothing was run. Add --yes to run it and apply each fix without asking (files you edited also need "
                "--overwrite-edited), or use the Run panel of the walkthrough, which asks per fix."
            )
            return

        def sink(event: object) -> None:
            if isinstance(event, ExecOutput):
                sys.stdout.write(escape_controls(event.text))

        def approve(proposal: repair.Proposal) -> bool:
            print(f"Round {proposal.round}: proposed fix ({proposal.lines_changed()} line(s) changed)")
            print(escape_controls(proposal.diff()))
            if proposal.edited and not args.overwrite_edited:
                print(f"It changes file(s) you edited: {', '.join(proposal.edited)}; add --overwrite-edited to allow.")
                return False
            return True

        result = cancellable(pipeline, lambda: repair.fix(pipeline, exec_plan, approve, args.rounds, sink))
        pipeline.store.reload()
        print(result.outcome.describe())
        print(result.message)

    def _cmd_walkthrough(self, args: argparse.Namespace, cell: str | None) -> None:
        if not self.use_widgets():
            raise MagicUsageError("the walkthrough widget needs ipywidgets in a Jupyter kernel")
        display(self._widget())

    def _cmd_cancel(self, args: argparse.Namespace, cell: str | None) -> None:
        if self.walkthrough is not None and self.walkthrough.busy:
            self.walkthrough.cancel()
            print("Cancelling after the calls in flight; what is saved is kept.")
        else:
            print("Nothing is running.")

    # --- messages --------------------------------------------------------------------------------------
    def _next_hint(self) -> str:
        pipeline = self.require()
        todo = [r.artifact for r in pipeline.rows() if r.status in ("missing", "stale")]
        if not todo:
            if pipeline.files():
                return f"Nothing left to do: the repository is in {pipeline.store.root / 'repo'}."
            return "Next: `%p2c plan`."
        return f"Next: `%p2c {registry.verb_for(stage_of(todo[0]))}` generates {todo[0]}" + (
            f" and {len(todo) - 1} more." if len(todo) > 1 else "."
        )

    @staticmethod
    def _describe(result: RunResult) -> str:
        if result.state == "paused":
            return (
                f"Paused: approve {', '.join(result.pending)} first (`%p2c approve ARTIFACT`, or the Approve "
                "buttons), then run the stage again."
            )
        return result.message


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext p2c_notebook` (or p2c_notebook.ui.magics): register the magics on this shell."""
    ipython.register_magics(P2CMagics(ipython))


def unload_ipython_extension(ipython: Any) -> None:
    """Close the current pipeline and remove the magics from this shell."""
    magics = ipython.magics_manager.registry.pop(P2CMagics.__name__, None)
    if isinstance(magics, P2CMagics):
        magics.close()
    for kind in ("line", "cell"):
        ipython.magics_manager.magics[kind].pop("p2c", None)
