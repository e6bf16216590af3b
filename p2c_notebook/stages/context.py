"""What every stage needs: the run folder, the backend, the event bus and the prompt builder."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar, cast

from pydantic import BaseModel, ValidationError

from p2c_notebook import pysource
from p2c_notebook.backends import Backend, ChatRequest, Messages
from p2c_notebook.backends.retry import RetryNotice
from p2c_notebook.errors import Cancelled, PlanError, ReplyError, RunError
from p2c_notebook.prompts import PromptBuilder
from p2c_notebook.prompts.builder import json_schema, render
from p2c_notebook.run.events import EventBus, StageStarted, TokenDelta, UsageReported
from p2c_notebook.run.questions import prompt_block
from p2c_notebook.run.store import RunStore
from p2c_notebook.run.usage import Usage
from p2c_notebook.settings import Settings
from p2c_notebook.stages import registry
from p2c_notebook.stages.artifacts import ArchitectureDesign, LogicDesign, parse_config
from p2c_notebook.stages.parsing import ParseError
from p2c_notebook.stages.registry import artifact_file

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
DELTA_INTERVAL_S = 0.03  # streamed text reaches the event bus at most this often per reply (~30 frames a second)


def describe_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:8]:
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    return "the JSON does not match the schema (" + "; ".join(parts) + ")."


@dataclass(frozen=True)
class Review:
    """What the static checks say of a usable reply: the re-ask naming its problems ("" when there is nothing
    to fix), how many errors it has (to keep the better of two replies), and one line for the notice."""

    request: str = ""
    errors: int = 0
    summary: str = ""


def with_review(messages: Messages, reply: str, problems: str) -> Messages:
    """The checks' re-ask continues the same conversation (the cache-friendly prefix is kept)."""
    return [
        *messages,
        {"role": "assistant", "content": reply},
        {"role": "user", "content": render("review", problems=problems)},
    ]


@dataclass
class StageContext:
    store: RunStore
    backend: Backend
    bus: EventBus
    settings: Settings
    prompts: PromptBuilder
    cancel: threading.Event = field(default_factory=threading.Event)
    _answers: dict[tuple[str, str | None], str] = field(default_factory=dict, repr=False)
    _designs: dict[tuple[str, str | None], BaseModel] = field(default_factory=dict, repr=False)

    # --- reading saved artifacts (as the user approved or edited them) ---------------------------
    def design(self) -> ArchitectureDesign:
        return self._load("design", ArchitectureDesign)

    def logic(self) -> LogicDesign:
        return self._load("logic", LogicDesign)

    def _load(self, artifact: str, model: type[M]) -> M:
        key = (artifact, self.store.hash_of(artifact))
        if key in self._designs:  # every file call of a run reads the same designs
            return cast(M, self._designs[key])
        text = self.store.read(artifact)
        try:
            loaded = model.model_validate_json(text)
        except ValidationError as exc:
            raise RunError(
                f"{self.store.root / artifact_file(artifact)} is not valid: {describe_validation(exc)} "
                f"Fix the file, or regenerate it with `p2c run {self.store.root} --from {artifact}`."
            ) from None
        self._designs[key] = loaded
        return loaded

    def answers(self, upto: str | None = None) -> dict[str, str]:
        """The planning answers as they re-enter prompts (config inside its yaml fence).

        With `upto`, only those the planning step `upto` builds on; without, all of them.
        """
        answers: dict[str, str] = {}
        for step in registry.get(upto).context if upto else registry.planning_names():
            key = (step, self.store.hash_of(step))
            if key not in self._answers:  # every file call of a run reads the same four answers
                text = self.store.read(step)
                if step == "config":
                    parse_config(text)
                    text = f"```yaml\n{text.rstrip()}\n```"
                self._answers[key] = text.rstrip()
            answers[step] = self._answers[key]
        if upto is None and self.store.entry(registry.ANSWERS) is not None:  # the user's, to the open questions
            key = (registry.ANSWERS, self.store.hash_of(registry.ANSWERS))
            if key not in self._answers:
                self._answers[key] = prompt_block(self.store.read(registry.ANSWERS))
            if self._answers[key]:
                answers[registry.ANSWERS] = self._answers[key]
        return answers

    def input_hashes(self, artifacts: list[str]) -> dict[str, str]:
        hashes = {}
        for artifact in artifacts:
            digest = self.store.hash_of(artifact)
            if digest is None and artifact in registry.OPTIONAL_INPUTS:
                continue  # e.g. no answers to the open questions: recorded as before
            if digest is None:
                raise RunError(f"{artifact} must exist before this step; run the earlier stages first.")
            hashes[artifact] = digest
        return hashes

    # --- one model call, with one repair re-ask -------------------------------------------------
    def ask(
        self,
        artifact: str,
        stage: str,
        file: str,
        messages: Messages,
        parse: Callable[[str], T],
        schema: type[BaseModel] | None = None,
        review: Callable[[T], Review] | None = None,
    ) -> tuple[T, Usage]:
        """Call the model and parse its reply; re-ask with the problem (`max_repairs` times), then fail clearly.

        `review` judges a usable reply (the static checks): its problems are sent back once, as one of the
        `max_repairs` re-asks. What the re-ask brings back is kept unless it has more errors than the first
        reply; a reply with problems left is returned all the same (the caller records and shows them).
        """
        self.bus.emit(StageStarted(artifact=artifact, stage=stage, file=file))
        total = Usage()
        request = ChatRequest(
            messages,
            stage,
            file,
            1,
            json_schema(schema) if schema else None,
            schema.__name__ if schema else "artifact",
        )
        where = f"{stage}" + (f" of {file}" if file else "")
        error = ""
        kept: tuple[T, Review] | None = None  # a usable reply whose problems were sent back once

        unsent: list[str] = []
        sent_at = 0.0

        def send() -> None:
            """Stream text goes out at most every DELTA_INTERVAL_S: one event per chunk, with many replies
            streaming at once, would keep the event bus (and whatever draws it) busy for nothing."""
            nonlocal sent_at
            sent_at = time.monotonic()
            if unsent:
                text = "".join(unsent)
                unsent.clear()
                self.bus.emit(TokenDelta(artifact, text))

        def restart() -> None:
            unsent.clear()
            self.bus.emit(TokenDelta(artifact, "", restart=True))

        def on_delta(text: str) -> None:
            if self.cancel.is_set():  # abandons the stream: the artifact in progress is discarded
                raise Cancelled(f"Cancelled while generating {artifact}; everything saved before is kept.")
            unsent.append(text)
            if time.monotonic() - sent_at >= DELTA_INTERVAL_S:
                send()

        def on_retry(notice: RetryNotice) -> None:
            if self.cancel.is_set():
                raise Cancelled(f"Cancelled while generating {artifact}; everything saved before is kept.")
            self.bus.warn(f"{where}: {notice.describe()}.", artifact)
            if notice.restart:
                restart()

        attempts = 1 + self.settings.max_repairs
        for attempt in range(1, attempts + 1):
            if self.cancel.is_set():
                raise Cancelled(f"Cancelled before {artifact}; everything saved before is kept.")
            if attempt > 1:
                restart()
            completion = self.backend.complete(request, on_delta, on_retry)
            send()
            total += completion.usage
            self.store.add_spent(completion.usage)
            self.bus.emit(UsageReported(artifact=artifact, usage=completion.usage, total=self.store.spent()))
            if completion.finish_reason == "length" and kept is not None:
                self.bus.warn(
                    f"The re-asked reply for {where} was cut off at the token limit; the first is kept.", artifact
                )
                return kept[0], total
            if completion.finish_reason == "length":
                limit = completion.max_tokens or self.settings.max_tokens
                continued = (
                    f", even after {completion.continuations} continuation(s)" if completion.continuations else ""
                )
                raise ReplyError(
                    f"The model's reply for {where} was cut off at the token limit (max_tokens={limit}){continued}. "
                    "Raise --max-tokens (P2C_MAX_TOKENS) or P2C_MAX_CONTINUATIONS and rerun; "
                    "finished artifacts are kept."
                )
            try:
                value = parse(completion.text)
            except ParseError as exc:
                error = str(exc)
            except ValidationError as exc:
                error = describe_validation(exc)
            except PlanError as exc:
                error = str(exc)
            else:
                verdict = review(value) if review is not None else Review()
                if kept is not None and verdict.errors > kept[1].errors:
                    self.bus.warn(
                        f"The re-asked reply for {where} has more problems ({verdict.errors}) than the first "
                        f"({kept[1].errors}); the first is kept.",
                        artifact,
                    )
                    return kept[0], total
                if not verdict.request or kept is not None or attempt == attempts:
                    return value, total
                kept = (value, verdict)
                self.bus.warn(
                    f"{verdict.summary} in the reply for {where}; asking the model once to fix them.", artifact
                )
                request = ChatRequest(
                    with_review(messages, completion.text, verdict.request),
                    stage,
                    file,
                    attempt + 1,
                    request.schema,
                    request.schema_name,
                )
                continue
            if kept is not None:  # the first reply was usable: its problems are recorded, not a failure
                self.bus.warn(f"The re-asked reply for {where} was unusable ({error}); the first is kept.", artifact)
                return kept[0], total
            if attempt < attempts:
                again = "once more" if attempts == 2 else f"again ({attempt} of {attempts - 1})"
                self.bus.warn(f"The reply for {where} was unusable ({error}); asking the model {again}.", artifact)
                request = ChatRequest(
                    PromptBuilder.with_repair(messages, completion.text, error),
                    stage,
                    file,
                    attempt + 1,
                    request.schema,
                    request.schema_name,
                )
        times = "twice" if attempts == 2 else f"{attempts} times"
        raise ReplyError(
            f"The model's reply for {where} was unusable {times}: {error} "
            "Try a stronger model (--model), or write the artifact yourself and rerun."
        )


MAX_QUOTED = 160  # characters of the offending line quoted back to the model


def check_python(path: str, code: str) -> None:
    """Generated Python must at least parse; the model gets the syntax error back to repair."""
    if not path.endswith(".py"):
        return
    try:
        pysource.parse(code, path)
    except SyntaxError as exc:
        raise ParseError(f"{path} has a syntax error at line {exc.lineno}{_quoted(exc.text)}: {exc.msg}.") from None


def _quoted(line: str | None) -> str:
    """The line a syntax error is on, for the re-ask: "invalid syntax" alone leaves a small model guessing where
    (it rewrote one unparseable line three times). Nothing when Python gives no line."""
    text = " ".join((line or "").split())
    if not text:
        return ""
    return f" (`{text[:MAX_QUOTED]}{'...' if len(text) > MAX_QUOTED else ''}`)"


def feedback_messages(ctx: StageContext, artifact: str, messages: Messages, feedback: str | None) -> Messages:
    """Regeneration with feedback: the previous version and the user's words go last."""
    if not feedback:
        return messages
    previous = ctx.store.read(artifact) if ctx.store.entry(artifact) else ""
    return PromptBuilder.with_feedback(messages, previous, feedback)
