"""Parsing Python source one thread at a time.

CPython 3.11 keeps the AST constructor's recursion depth in interpreter-wide state: two threads building ASTs
at once (the coding stage checks files concurrently) can fail with "SystemError: AST constructor recursion
depth mismatch" (python/cpython#106905). Every parse and compile of generated code goes through this lock.
"""

from __future__ import annotations

import ast
import threading

_LOCK = threading.Lock()


def parse(source: str, filename: str = "<unknown>") -> ast.Module:
    """`ast.parse`, serialised; raises SyntaxError (and ValueError for a NUL byte) as it does."""
    with _LOCK:
        return ast.parse(source, filename)


def check_compiles(source: str, filename: str = "<unknown>") -> None:
    """Raise SyntaxError when `source` would not compile (checks what parsing alone lets through)."""
    with _LOCK:
        compile(source, filename, "exec", dont_inherit=True)
