"""Generated code is parsed one thread at a time (CPython 3.11's AST constructor is not thread-safe)."""

from __future__ import annotations

import ast
import threading
import time
from typing import Any

import pytest

from p2c_notebook import pysource


def test_parses_from_many_threads_never_overlap(monkeypatch: pytest.MonkeyPatch) -> None:
    inside, most = 0, 0
    guard = threading.Lock()
    real = ast.parse

    def slow_parse(source: str, filename: str = "<unknown>", *args: Any, **kwargs: Any) -> ast.Module:
        nonlocal inside, most
        with guard:
            inside += 1
            most = max(most, inside)
        time.sleep(0.01)  # long enough for another thread to enter if nothing stops it
        try:
            return real(source, filename)
        finally:
            with guard:
                inside -= 1

    monkeypatch.setattr(ast, "parse", slow_parse)
    threads = [threading.Thread(target=pysource.parse, args=(f"x = {i}\n",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == 1


def test_a_syntax_error_and_a_return_outside_a_function_are_reported() -> None:
    with pytest.raises(SyntaxError):
        pysource.parse("def f(:\n")
    pysource.parse("return 1\n")  # parses...
    with pytest.raises(SyntaxError):
        pysource.check_compiles("return 1\n")  # ...but does not compile
