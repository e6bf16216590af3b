"""Generated code is parsed one thread at a time (CPython 3.11's AST constructor is not thread-safe)."""

from __future__ import annotations

import ast
import threading
import time
from pathlib import Path
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


def test_a_parse_hit_by_the_interpreters_ast_race_is_made_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Code outside the lock (Python 3.11's traceback formatting) also parses; the race's SystemError says nothing
    about the source, so the parse is made again. Any other SystemError, or a race that never ends, is raised."""
    real = ast.parse
    failures = iter([True, True, False])

    def racing(source: str, filename: str = "<unknown>", *args: Any, **kwargs: Any) -> ast.Module:
        if next(failures, False):
            raise SystemError("AST constructor recursion depth mismatch (before=1, after=2)")
        return real(source, filename)

    monkeypatch.setattr(ast, "parse", racing)
    assert isinstance(pysource.parse("x = 1\n").body[0], ast.Assign)

    def always(source: str, filename: str = "<unknown>", *args: Any, **kwargs: Any) -> ast.Module:
        raise SystemError("AST constructor recursion depth mismatch (before=1, after=2)")

    monkeypatch.setattr(ast, "parse", always)
    with pytest.raises(SystemError, match="mismatch"):
        pysource.parse("x = 1\n")

    calls: list[str] = []

    def other(source: str, filename: str = "<unknown>", *args: Any, **kwargs: Any) -> ast.Module:
        calls.append(source)
        raise SystemError("something else")

    monkeypatch.setattr(ast, "parse", other)
    with pytest.raises(SystemError, match="something else"):
        pysource.parse("x = 1\n")
    assert len(calls) == 1


def test_a_literal_is_read_through_the_same_parse() -> None:
    assert pysource.literal("'it said \\'no\\''") == "it said 'no'"
    assert pysource.literal(" (1, 'a') ") == (1, "a")
    with pytest.raises(ValueError):
        pysource.literal("__import__('os')")
    with pytest.raises(ValueError):
        pysource.literal("x = 1")
    with pytest.raises(SyntaxError):
        pysource.literal("'unterminated")


def test_the_last_runs_error_is_read_back_from_its_log(tmp_path: Path) -> None:
    from p2c_notebook.run.runlog import last_failure

    log = tmp_path / "run.log"
    log.write_text(
        "2026-11-29T08:00:00 RunFinished ok=False message=\"The server said 'no' (HTTP 500).\" state='failed'\n",
        encoding="utf-8",
    )
    assert last_failure(log) == "The server said 'no' (HTTP 500)."
    log.write_text("2026-11-29T08:00:00 RunFinished ok=True message='' state='done'\n", encoding="utf-8")
    assert last_failure(log) is None
