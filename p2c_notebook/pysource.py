"""Parsing Python source one thread at a time.

CPython 3.11 keeps the AST constructor's recursion depth in interpreter-wide state: two threads building ASTs
at once (the coding stage checks files concurrently) can fail with "SystemError: AST constructor recursion
depth mismatch" (python/cpython#106905). Every parse and compile of generated code goes through this lock. Code
outside the package parses too (Python 3.11's traceback formatting calls `ast.parse`), so the lock cannot
exclude every race: a parse that fails this way is made again, since the error says nothing about the source.
"""

from __future__ import annotations

import ast
import threading

_LOCK = threading.Lock()
_RACE = "recursion depth mismatch"
_TRIES = 5


def parse(source: str, filename: str = "<unknown>") -> ast.Module:
    """`ast.parse`, serialised; raises SyntaxError (and ValueError for a NUL byte) as it does."""
    for _ in range(_TRIES - 1):
        try:
            with _LOCK:
                return ast.parse(source, filename)
        except SystemError as exc:
            if _RACE not in str(exc):
                raise
    with _LOCK:
        return ast.parse(source, filename)


def literal(text: str) -> object:
    """`ast.literal_eval` of `text`, parsed as `parse` does; ValueError or SyntaxError when it is no literal."""
    tree = parse(text.strip(), "<literal>")
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Expr):
        raise ValueError(f"not a literal: {text[:40]!r}")
    return ast.literal_eval(tree.body[0].value)


def check_compiles(source: str, filename: str = "<unknown>") -> None:
    """Raise SyntaxError when `source` would not compile (checks what parsing alone lets through)."""
    with _LOCK:
        compile(source, filename, "exec", dont_inherit=True)
