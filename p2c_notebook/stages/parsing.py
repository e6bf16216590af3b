"""Tolerant parsing of model replies. Failures raise ParseError, which the stage turns into one re-ask."""

from __future__ import annotations

import json
import re
from typing import Any

from p2c_notebook import pysource

_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([\w+.-]*)[^\n]*\n(.*?)^[ \t]*\1[ \t]*$", re.S | re.M)
_LONE_FENCE_START = re.compile(r"\A[ \t]*(?:`{3,}|~{3,})[ \t]*[\w+.-]*[ \t]*\n")
_LONE_FENCE_END = re.compile(r"\n[ \t]*(?:`{3,}|~{3,})[ \t]*\Z")
_FENCE_LINE = re.compile(r"^[ \t]*(?:`{3,}|~{3,})[ \t]*([\w+.-]*)[ \t]*$", re.M)
_CONTENT = re.compile(r"\[CONTENT\](.*?)\[/CONTENT\]", re.S | re.I)
_TRAILING_COMMA = re.compile(r",(\s*[}\]])")


class ParseError(ValueError):
    """A reply that does not contain what was asked for; the message is fed back to the model."""


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """All fenced blocks as (language, body)."""
    return [(m.group(2).lower(), m.group(3)) for m in _FENCE.finditer(text)]


def _strip_wrappers(text: str) -> str:
    match = _CONTENT.search(text)
    return match.group(1).strip() if match else text.strip()


def extract_json(text: str) -> Any:
    """JSON from a bare reply, a [CONTENT] block, a fenced block, or the outermost {...} in prose."""
    body = _strip_wrappers(text)
    if not body:
        raise ParseError("the reply was empty; a JSON object was expected.")
    candidates = [body]
    candidates += [b for lang, b in fenced_blocks(body) if lang in ("json", "", "javascript")]
    start, end = body.find("{"), body.rfind("}")
    if 0 <= start < end:
        candidates.append(body[start : end + 1])
    error = "no JSON object found in the reply."
    for candidate in candidates:
        for attempt in (candidate, _TRAILING_COMMA.sub(r"\1", candidate)):
            try:
                return json.loads(attempt)
            except json.JSONDecodeError as exc:
                error = f"the reply is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})."
            except RecursionError:
                error = "the reply's JSON is nested too deeply; a flat JSON object was expected."
    raise ParseError(error)


def extract_yaml(text: str) -> str:
    """The body of the ```yaml block (or the bare reply when it has no fence)."""
    body = _strip_wrappers(text)
    blocks = fenced_blocks(body)
    for lang, block in blocks:
        if lang in ("yaml", "yml"):
            return block.strip() + "\n"
    if blocks:
        return blocks[0][1].strip() + "\n"
    if not body:
        raise ParseError("the reply was empty; a ```yaml block was expected.")
    return body + "\n"


def extract_code(text: str, language: str) -> str:
    """The file's content: the fenced block in the wanted language, else the longest block, else the bare reply
    (without a fence line left unmatched at its start or end: a small model asked to revise a file it was shown
    unfenced often answers unfenced but closes a fence it never opened)."""
    body = _strip_wrappers(text)
    blocks = fenced_blocks(body)
    if blocks:
        wanted = [b for lang, b in blocks if lang == language or (language == "python" and lang == "py")]
        code = wanted[0] if wanted else max((b for _, b in blocks), key=len)
    else:
        code = _unpaired(_LONE_FENCE_END.sub("", _LONE_FENCE_START.sub("", body)), language)
    if not code.strip():
        raise ParseError(f"the reply contained no code; the whole file was expected in one ```{language} block.")
    return code.rstrip() + "\n"


def _unpaired(body: str, language: str) -> str:
    """A reply with a fence line inside that pairs with nothing: the file is on one side, the model's remarks on the
    other (code, then a closing fence and "This code defines ..."; or a sentence, then an opening fence and code).
    The side after an opening fence (one naming a language, or with nothing before it) comes first, else the side
    before; for Python, the first side that parses wins."""
    fence = _FENCE_LINE.search(body)
    if fence is None:
        return body
    before, after = body[: fence.start()], body[fence.end() :]
    sides = [after, before] if fence.group(1) or not before.strip() else [before, after]
    if language == "python":
        for side in sides:
            try:
                pysource.parse(side)
            except (SyntaxError, ValueError):
                continue
            if side.strip():
                return side
    return sides[0]


def extract_markdown(text: str, minimum: int = 20) -> str:
    """Free text (plan, analysis): reject empty or near-empty replies rather than continue on them."""
    body = _strip_wrappers(text)
    if len(body) < minimum:
        raise ParseError(f"the reply was empty or too short ({len(body)} characters); a full answer was expected.")
    return body + "\n"
