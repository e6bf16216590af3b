"""One prompt builder: renders templates and assembles the shared conversation prefix.

Every call starts with the same system message and paper; every analysis and coding call starts with the
same byte-identical prefix (instructions, paper, plan, design, logic, config) and puts the per-file part
last, so providers' prefix caches hit.
"""

from __future__ import annotations

import ast
import hashlib
import json
from dataclasses import dataclass
from functools import cache, cached_property, lru_cache
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from pydantic import BaseModel, ValidationError

from p2c_notebook import pysource
from p2c_notebook.content import Content, image_part, text_part
from p2c_notebook.errors import RunError
from p2c_notebook.paper.model import Paper
from p2c_notebook.run.store import read_regular
from p2c_notebook.stages import registry

#: Chat messages: {"role": ..., "content": Content}; content is text, or text and image parts (`--figures`).
Messages = list[dict[str, Any]]


@cache
def _template(name: str) -> Template:
    text = resources.files("p2c_notebook.prompts").joinpath(f"{name}.md").read_text(encoding="utf-8")
    return Template(text.strip())


def render(name: str, **values: str) -> str:
    """Render prompts/<name>.md; a missing value is a programming error, so it raises KeyError."""
    return _template(name).substitute(values)


@cache
def json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A model's JSON schema, built once (pydantic takes milliseconds each time); callers must not change it."""
    return model.model_json_schema()


@cache
def schema_text(model: type[BaseModel]) -> str:
    return json.dumps(json_schema(model), separators=(",", ":"), sort_keys=True)


MAX_FIGURES_SENT = 8  # figure images a planning call carries at most (~1.1k tokens each at 1270 x 945)
MAX_FIGURE_BYTES = 2 << 20  # per image: a larger PNG (a photograph) is left out
MAX_FIGURES_BYTES = 8 << 20  # all images of a call together: request bodies past ~10 MB meet proxy limits


@dataclass(frozen=True)
class Figure:
    """A saved figure image and its caption, as a planning call carries it."""

    name: str  # relative to paper/: "figures/fig1.png"
    label: str  # "Figure 1"
    caption: str
    data: bytes

    @cached_property
    def part(self) -> dict[str, Any]:
        """Its `image_url` part, encoded once: every planning call sends the same one."""
        return image_part(self.data, f"paper/{self.name}")


@dataclass(frozen=True)
class Figures:
    """The figures the planning calls carry, and a note of each figure left out (and why)."""

    figures: tuple[Figure, ...] = ()
    left_out: tuple[str, ...] = ()

    def parts(self) -> list[dict[str, Any]]:
        """Content parts: a line saying what follows, then each figure's caption and its image."""
        intro = f"\n\nThe paper's figures follow, each after its caption ({len(self.figures)} images"
        intro += f"; left out: {'; '.join(self.left_out)})." if self.left_out else ")."
        parts = [text_part(intro)]
        for figure in self.figures:
            parts.append(text_part(f"\n\n{figure.label} ({figure.name}): {figure.caption}"))
            parts.append(figure.part)
        return parts

    def describe(self) -> str:
        """One line for the run: what is sent (files and hashes) and what was left out."""
        left = f"; left out: {'; '.join(self.left_out)}" if self.left_out else ""
        if not self.figures:
            return (
                "--figures: no figure images to send (only a PDF's captioned figures are saved, in paper/figures/)"
                f"{left}; the calls carry the text only."
            )
        sent = ", ".join(f"{f.name} (sha256 {hashlib.sha256(f.data).hexdigest()[:12]})" for f in self.figures)
        return f"The planning calls carry {len(self.figures)} figure image(s): {sent}{left}."


def _size(limit: int) -> str:
    return f"{limit / 2**20:g} MiB" if limit >= 1 << 20 else f"{limit:,} bytes"


def load_figures(
    paper_dir: Path, limit: int = MAX_FIGURES_SENT, max_bytes: int = MAX_FIGURE_BYTES, total: int = MAX_FIGURES_BYTES
) -> Figures:
    """The run's saved figures (paper/paper.json's captions with an image), in paper order, within the limits;
    read without following links. A figure that cannot be sent is noted in `left_out`, never an error."""
    try:
        paper = Paper.model_validate_json(read_regular(paper_dir, "paper.json"))
    except (RunError, OSError, ValidationError):
        return Figures(left_out=("paper/paper.json could not be read",))
    figures: list[Figure] = []
    left_out: list[str] = []
    used = 0
    for caption in paper.captions:
        if not caption.image:
            continue
        where = f"{caption.label} ({caption.image})"
        if len(figures) >= limit:
            left_out.append(f"{where}: at most {limit} figures are sent")
            continue
        parts = Path(caption.image).parts
        if len(parts) != 2 or parts[0] != "figures":
            left_out.append(f"{where}: not a file in paper/figures/")
            continue
        try:
            data = read_regular(paper_dir, caption.image, max_bytes)
        except (RunError, OSError):
            left_out.append(f"{where}: missing, unreadable or over {_size(max_bytes)}")
            continue
        if not data.startswith(b"\x89PNG\r\n\x1a\n"):
            left_out.append(f"{where}: not a PNG image")
            continue
        if used + len(data) > total:
            left_out.append(f"{where}: the images together would pass {_size(total)}")
            continue
        used += len(data)
        figures.append(Figure(caption.image, caption.label, caption.text.strip(), data))
    return Figures(tuple(figures), tuple(left_out))


class PromptBuilder:
    """Builds chat messages from saved artifact texts (as the user approved or edited them)."""

    def __init__(
        self, paper_text: str, schemas: dict[str, type[BaseModel]] | None = None, figures: Figures | None = None
    ) -> None:
        self._paper_text = paper_text
        self._schemas = registry.schemas() if schemas is None else schemas
        self._figures = figures

    def task(self, step: str) -> str:
        """A planning stage's task: its template (`Stage.prompt`), with the paper (plan) or its JSON schema."""
        template = registry.get(step).template
        if step == "plan":
            return render(template, paper_block=render("paper", paper=self._paper_text))
        if step in self._schemas:
            return render(template, schema=schema_text(self._schemas[step]))
        return render(template)

    def conversation(self, answers: dict[str, str], upto: str) -> Messages:
        """The planning conversation before step `upto`: system, then a task/answer pair per step it builds on
        (`Stage.context`)."""
        messages: Messages = [{"role": "system", "content": render("system")}]
        for step in registry.get(upto).context:
            messages.append({"role": "user", "content": self._task_content(step)})
            messages.append({"role": "assistant", "content": answers[step]})
        return messages

    def planning(self, step: str, answers: dict[str, str]) -> Messages:
        return [*self.conversation(answers, upto=step), {"role": "user", "content": self._task_content(step)}]

    def _task_content(self, step: str) -> Content:
        """A planning task as sent: with figures, the plan task (which holds the paper, and opens every planning
        call) carries them right after the paper text, so each later planning call shares the cached prefix."""
        text = self.task(step)
        if step != "plan" or not self._figures or not self._figures.figures:
            return text
        paper = render("paper", paper=self._paper_text)
        cut = text.find(paper) + len(paper) if paper in text else len(text)
        parts = [text_part(text[:cut]), *self._figures.parts()]
        return parts + [text_part(text[cut:])] if text[cut:] else parts

    def file_prefix(self, answers: dict[str, str]) -> tuple[Messages, str]:
        """The shared start of every analysis and coding call, and the text their last message begins with.

        It repeats the planning calls' opening (system, paper, plan) byte for byte, so the paper is already
        in the provider's prefix cache, then gives the approved design, logic design and config compactly:
        no planning instructions or JSON schemas, which a file-level call does not need.
        """
        # Text only, with or without figures: the specs and code are written from the plan and designs, which
        # saw the figures; images in every file call would cost ~1k tokens each per call (README, --figures).
        messages: Messages = [
            {"role": "system", "content": render("system")},
            {"role": "user", "content": self.task("plan")},
            {"role": "assistant", "content": answers["plan"]},
        ]
        context = render(
            "context",
            design=compact_json(answers["design"]),
            logic=compact_json(answers["logic"]),
            config=answers["config"],
        )
        return messages, context

    def _file_call(self, answers: dict[str, str], task: str) -> Messages:
        """The shared prefix, then the per-file message; the user's answers to the open questions (when there are
        any: `answers["answers"]`, the rendered open_answers block) come between the design and the task."""
        messages, context = self.file_prefix(answers)
        replies = answers.get(registry.ANSWERS, "")
        body = f"{context}\n\n{replies}\n\n{task}" if replies else f"{context}\n\n{task}"
        return [*messages, {"role": "user", "content": body}]

    def analysis(self, answers: dict[str, str], path: str, role: str, depends_on: list[str]) -> Messages:
        task = render("analysis", path=path, role=role, depends_on=", ".join(depends_on) or "no other file")
        return self._file_call(answers, task)

    def code(
        self,
        answers: dict[str, str],
        path: str,
        role: str,
        analysis: str,
        direct: dict[str, str],
        interfaces: dict[str, str],
    ) -> Messages:
        """A coding call: full code of direct dependencies, interfaces of their own dependencies."""
        blocks = [render("dependency_file", path=p, code=c.rstrip()) for p, c in direct.items()]
        blocks += [render("interface_file", path=p, code=c.rstrip()) for p, c in interfaces.items()]
        # Dependencies before the per-file task: files sharing a dependency share a longer cached prefix.
        deps = render("dependencies", files="\n".join(blocks)) + "\n\n" if blocks else ""
        task = render(
            "code",
            path=path,
            role=role,
            analysis=analysis.strip(),
            dependency_code=deps,
            language=language_for(path),
        )
        return self._file_call(answers, task)

    @staticmethod
    def with_repair(messages: Messages, reply: str, error: str) -> Messages:
        return [
            *messages,
            {"role": "assistant", "content": reply},
            {"role": "user", "content": render("repair", error=error)},
        ]

    @staticmethod
    def with_feedback(messages: Messages, previous: str, feedback: str) -> Messages:
        return [
            *messages,
            {"role": "assistant", "content": previous},
            {"role": "user", "content": render("feedback", feedback=feedback.strip())},
        ]


_LANGUAGES = {
    ".py": "python",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".json": "json",
    ".sh": "bash",
    ".md": "markdown",
    ".toml": "toml",
    ".txt": "text",
    ".cfg": "ini",
    ".ini": "ini",
}


def language_for(path: str) -> str:
    """The fence language for a file: non-Python files are not fenced as Python."""
    for suffix, language in _LANGUAGES.items():
        if path.endswith(suffix):
            return language
    return "text"


def interface_of(path: str, code: str) -> str:
    """Signatures and docstrings only: enough to call a module without paying for its body."""
    if not path.endswith(".py"):
        return code
    try:
        tree = pysource.parse(code, path)
    except SyntaxError:
        return code
    lines: list[str] = []

    def signature(node: ast.FunctionDef | ast.AsyncFunctionDef, indent: str) -> None:
        prefix = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
        returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
        lines.append(f"{indent}{prefix} {node.name}({ast.unparse(node.args)}){returns}: ...")

    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            signature(node, "")
        elif isinstance(node, ast.ClassDef):
            bases = ", ".join(ast.unparse(b) for b in node.bases)
            lines.append(f"class {node.name}({bases}):" if bases else f"class {node.name}:")
            members = [n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
            for member in members:
                signature(member, "    ")
            if not members:
                lines.append("    ...")
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and len(ast.unparse(node)) < 120:
            lines.append(ast.unparse(node))
    return "\n".join(lines)


@lru_cache(maxsize=16)
def compact_json(text: str) -> str:
    """JSON without indentation (about a quarter fewer tokens); text that is not JSON is kept as it is."""
    try:
        return json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False)
    except ValueError:
        return text.strip()


def canonical_json(value: Any) -> str:
    """Artifacts re-enter prompts in one canonical form so the prefix stays byte-identical."""
    return json.dumps(value, indent=2, ensure_ascii=False)
