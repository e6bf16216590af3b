"""One prompt builder: renders templates and assembles the shared conversation prefix.

Every call starts with the same system message and paper; every analysis and coding call starts with the
same byte-identical prefix (instructions, paper, plan, design, logic, config) and puts the per-file part
last, so providers' prefix caches hit.
"""

from __future__ import annotations

import ast
import json
from functools import cache, lru_cache
from importlib import resources
from string import Template
from typing import Any

from pydantic import BaseModel

from p2c_notebook import pysource
from p2c_notebook.stages import registry

Messages = list[dict[str, str]]


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


class PromptBuilder:
    """Builds chat messages from saved artifact texts (as the user approved or edited them)."""

    def __init__(self, paper_text: str, schemas: dict[str, type[BaseModel]] | None = None) -> None:
        self._paper_text = paper_text
        self._schemas = registry.schemas() if schemas is None else schemas

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
            messages.append({"role": "user", "content": self.task(step)})
            messages.append({"role": "assistant", "content": answers[step]})
        return messages

    def planning(self, step: str, answers: dict[str, str]) -> Messages:
        return [*self.conversation(answers, upto=step), {"role": "user", "content": self.task(step)}]

    def file_prefix(self, answers: dict[str, str]) -> tuple[Messages, str]:
        """The shared start of every analysis and coding call, and the text their last message begins with.

        It repeats the planning calls' opening (system, paper, plan) byte for byte, so the paper is already
        in the provider's prefix cache, then gives the approved design, logic design and config compactly:
        no planning instructions or JSON schemas, which a file-level call does not need.
        """
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
