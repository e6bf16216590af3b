"""The open questions of the planning as a queue the user works through before the files are written.

The plan's "Unclear points" section and the designs' `open_questions` list what the paper leaves open. Each gets an
id (`design-2`: the design's second question) and a state: open, answered, or judgement (the user said "use your
judgement"). Answers are saved in the run folder as the artifact `answers` (planning/answers.yaml), which the
per-file stages take as an input: saving one makes the analysis and code stale, and their prompts carry a short
"Answers to open questions" block (none at all while nothing is answered, so those prompts are unchanged).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from p2c_notebook.errors import PlanError, RunError
from p2c_notebook.prompts.builder import render
from p2c_notebook.run.store import RunStore
from p2c_notebook.stages import registry

if TYPE_CHECKING:
    from p2c_notebook.run.pipeline import Pipeline

JUDGEMENT = "Use your judgement: choose what the paper most likely intends, and say in a comment what you chose."
MAX_ANSWER = 4000  # characters: an answer is a sentence or a paragraph, not a document
_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+(.*\S)\s*$")
_OPEN = re.compile(r"unclear|open question|unspecified|ambigu", re.IGNORECASE)


@dataclass(frozen=True)
class Question:
    """One open question and where it stands."""

    id: str  # "<source>-<n>", n counted from 1 within its source
    source: str  # plan | design | logic
    text: str
    state: str = "open"  # open | answered | judgement
    answer: str = ""

    def describe(self) -> str:
        """One line for `p2c questions`: id, state, question (and the answer)."""
        line = f"{self.id:<10} {self.state:<9} {self.text}"
        if self.state == "answered":
            line += f"\n{'':<21}answer: {self.answer}"
        return line


def sources() -> tuple[str, ...]:
    """The planning stages that ask open questions: the plan (its "Unclear points" section) and every planning stage
    whose schema has `open_questions` (the architecture and logic designs)."""
    return tuple(
        s.name
        for s in registry.planning()
        if s.name == "plan" or (s.schema is not None and "open_questions" in s.schema.model_fields)
    )


def plan_questions(plan: str) -> list[str]:
    """The items under the plan's "Unclear points" (or "Open questions") heading, up to the next heading."""
    found: list[str] = []
    level = 0
    for line in plan.splitlines():
        heading = _HEADING.match(line.strip())
        if heading:
            if level and len(heading.group(1)) <= level:
                break
            if not level and _OPEN.search(heading.group(2)):
                level = len(heading.group(1))
            continue
        item = _ITEM.match(line) if level else None
        if item:
            found.append(item.group(1).strip())
    return found


def _same(question: str) -> str:
    """The question as compared for repeats: case, spacing and end punctuation aside."""
    return " ".join(question.casefold().split()).rstrip(" ?.!:;")


def asked(store: RunStore) -> list[tuple[str, str]]:
    """(source, question) for every open question the saved planning asks, in planning order.

    A question a later stage repeats (the logic design often copies the architecture design's list) is listed
    once, under the stage that asked it first: one answer serves both, and the queue is not padded with copies."""
    found: list[tuple[str, str]] = []
    seen: set[str] = set()
    for source in sources():
        if store.entry(source) is None:
            continue
        try:
            text = store.read(source)
        except RunError:
            continue
        try:
            if source == "plan":
                items = plan_questions(text)
            else:
                schema = registry.get(source).schema
                items = list(getattr(schema.model_validate_json(text), "open_questions", [])) if schema else []
        except ValidationError:
            continue  # an invalid design is reported by its panel and by the run
        for question in (q.strip() for q in items):
            if question and _same(question) not in seen:
                seen.add(_same(question))
                found.append((source, question))
    return found


def saved_answers(store: RunStore) -> list[dict[str, Any]]:
    """The answers in planning/answers.yaml: dicts with source, question, and answer or judgement."""
    if store.entry(registry.ANSWERS) is None:
        return []
    text = store.read(registry.ANSWERS)
    try:
        data = yaml.safe_load(text) or []
    except yaml.YAMLError as exc:
        raise PlanError(
            f"{store.root / registry.ANSWERS_PATH} is not valid YAML ({str(exc).splitlines()[0]}); fix it, or delete "
            "it to answer the questions again."
        ) from None
    if not isinstance(data, list) or not all(isinstance(a, dict) and "question" in a for a in data):
        raise PlanError(
            f"{store.root / registry.ANSWERS_PATH} is not a list of answers (question, answer); fix it or delete it."
        )
    return data


def questions(store: RunStore) -> list[Question]:
    """The queue: every open question the planning asks, with its state and answer."""
    answers = {(str(a.get("source", "")), str(a["question"])): a for a in saved_answers(store)}
    result: list[Question] = []
    counts: dict[str, int] = {}
    for source, text in asked(store):
        counts[source] = counts.get(source, 0) + 1
        given = answers.get((source, text))
        if given is None:
            state, answer = "open", ""
        elif given.get("judgement"):
            state, answer = "judgement", JUDGEMENT
        else:
            state, answer = "answered", str(given.get("answer", ""))
        result.append(Question(f"{source}-{counts[source]}", source, text, state, answer))
    return result


def answer(pipeline: Pipeline, question_id: str, text: str | None = None, judgement: bool = False) -> list[str]:
    """Save the answer to one question (or "use your judgement") in planning/answers.yaml; returns the artifacts
    that became stale because of it (those made from the answers: the analysis and the code).

    Saving the answer a question already has changes nothing and makes nothing stale."""
    if judgement == (text is not None):
        raise PlanError("Give either an answer or 'use your judgement' for a question, not both (nor neither).")
    if text is not None and not text.strip():
        raise PlanError(f"The answer to {question_id} is empty: write one, or use --judgement.")
    if text is not None and len(text) > MAX_ANSWER:
        raise PlanError(f"The answer to {question_id} is {len(text)} characters; keep it under {MAX_ANSWER}.")
    store = pipeline.store
    with store.locked():
        store.refresh(pipeline.order())
        queue = questions(store)
        chosen = next((q for q in queue if q.id == question_id), None)
        if chosen is None:
            known = ", ".join(q.id for q in queue) or "none: the planning asks no open question"
            raise PlanError(f"No open question {question_id!r} in {store.root}; the ids are: {known}.")
        record: dict[str, Any] = {"id": chosen.id, "source": chosen.source, "question": chosen.text}
        record.update({"judgement": True} if judgement else {"answer": (text or "").strip()})
        kept = [a for a in saved_answers(store) if (a.get("source"), a["question"]) != (chosen.source, chosen.text)]
        order = {(q.source, q.text): i for i, q in enumerate(queue)}
        entries = sorted(
            [*kept, record], key=lambda a: order.get((str(a.get("source")), str(a["question"])), len(order))
        )
        content = _yaml(entries)
        if store.entry(registry.ANSWERS) is not None and store.read(registry.ANSWERS) == content:
            return []
        before = {e.artifact for e in store.entries() if e.status == "stale"}
        saved = store.save(registry.ANSWERS, content, {}, status="approved")
        _mark_dependents(store, saved.sha256)
        store.refresh(pipeline.order())
        return [e.artifact for e in store.entries() if e.status == "stale" and e.artifact not in before]


def _mark_dependents(store: RunStore, digest: str) -> None:
    """What declares the answers as an input and was made without these answers is stale (an artifact made before
    there were any answers does not record them, so the hashes alone would not say so); edits are kept."""
    takes = {s.name for s in registry.stages() if registry.ANSWERS in s.inputs}
    for entry in store.entries():
        made_without = entry.inputs.get(registry.ANSWERS) != digest
        if registry.stage_of(entry.artifact) in takes and made_without and entry.status != "edited":
            store.set_status(entry.artifact, "stale")


def _yaml(entries: list[dict[str, Any]]) -> str:
    header = (
        "# Answers to the open questions of the plan and designs (`p2c questions RUN`); they go into the analysis\n"
        "# and coding prompts. Edit them here or answer again; either makes the analysis and code stale.\n"
    )
    return header + yaml.safe_dump(entries, sort_keys=False, allow_unicode=True, width=110)


def prompt_block(text: str) -> str:
    """The answers file as it enters the per-file prompts ("" when it holds no answer)."""
    try:
        data = yaml.safe_load(text) or []
    except yaml.YAMLError:
        return ""
    lines = []
    for item in data if isinstance(data, list) else []:
        if not isinstance(item, dict) or "question" not in item:
            continue
        reply = JUDGEMENT if item.get("judgement") else str(item.get("answer", "")).strip()
        if reply:
            lines.append(f"- Q: {' '.join(str(item['question']).split())}\n  A: {' '.join(reply.split())}")
    return render("open_answers", answers="\n".join(lines)) if lines else ""
