"""Model text never drives the terminal: control characters a reply (or a server's error) carries are shown
escaped as `\\xNN` by `p2c show`, `p2c run -v` and `p2c status`, and the text around them stays visible."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import small_scenario, subprocess_env

from p2c_notebook.render import TerminalRenderer, escape_controls
from p2c_notebook.run.events import ArtifactSaved, Notice, RunStarted, StageStarted, TokenDelta

pytestmark = pytest.mark.slow

# Retitle the window (OSC 0 ... BEL), clear the screen (CSI 2J), a C1 CSI (U+009B) and a lone CR.
HOSTILE = "title\x1b]0;pwned\x07 clear\x1b[2J colour\x9b31m over\rwritten"
SHOWN = r"title\x1b]0;pwned\x07 clear\x1b[2J colour\x9b31m over\x0dwritten"
RAW_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (HOSTILE, SHOWN),
        ("bell\x07 nul\x00 backspace\x08 del\x7f", r"bell\x07 nul\x00 backspace\x08 del\x7f"),
        ("c1 \x80 to \x9f", r"c1 \x80 to \x9f"),
        ("lines\nand\ttabs stay", "lines\nand\ttabs stay"),
        ("windows\r\nline ends", "windows\nline ends"),
        ("vertical\x0btab, form\x0cfeed", r"vertical\x0btab, form\x0cfeed"),
        ("prose: é, 中文, ✓, \xa0 and a literal \\x1b", "prose: é, 中文, ✓, \xa0 and a literal \\x1b"),
    ],
)
def test_control_characters_are_shown_not_obeyed(text: str, shown: str) -> None:
    assert escape_controls(text) == shown


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_live_status_line_writes_only_its_own_redraw_codes() -> None:
    """On a terminal the renderer redraws its line with CR + erase-line; a hostile artifact name or notice in the
    same stream is escaped, so those are the only control sequences written."""
    stream = _Tty()
    renderer = TerminalRenderer(stream)
    renderer(RunStarted(run_dir="run", steps=2, model="m\x1b]0;x\x07"))
    renderer(StageStarted(artifact=f"code/{HOSTILE}.py"))
    renderer(TokenDelta(artifact=f"code/{HOSTILE}.py", text=HOSTILE))
    renderer(Notice(level="warning", message=HOSTILE))
    renderer(ArtifactSaved(artifact=f"code/{HOSTILE}.py", path=f"repo/{HOSTILE}.py"))
    written = stream.getvalue()
    assert written.count("\r\x1b[2K") >= 3
    assert not RAW_CONTROL.search(written.replace("\r\x1b[2K", ""))
    assert SHOWN in written


def _run(server: Any, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = subprocess_env(server, P2C_MAX_RETRIES="0")
    cmd = [sys.executable, "-m", "p2c_notebook.cli", *args]
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def _assert_escaped(done: subprocess.CompletedProcess[str], stream: str, shown: str = SHOWN) -> None:
    output = done.stdout + done.stderr
    assert not RAW_CONTROL.search(output), ascii(output)
    assert shown in getattr(done, stream), (stream, ascii(output))


def test_show_run_v_and_status_escape_model_text(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    scenario = small_scenario()
    scenario["responses"][0]["content"] += f"\n\n{HOSTILE}\n"
    server = serve(scenario)
    run = tmp_path / "run"
    streamed = _run(server, tmp_path, "run", str(paper_md), "--out", str(run), "--until", "plan", "-v")
    assert streamed.returncode == 0, streamed.stderr
    _assert_escaped(streamed, "stderr")  # the reply as it streamed
    assert HOSTILE in (run / "planning/plan.md").read_bytes().decode()  # the artifact itself is kept as it came

    shown = _run(server, tmp_path, "show", str(run), "plan")
    assert shown.returncode == 0, shown.stderr
    _assert_escaped(shown, "stdout")

    # A server error quoting the text: the failing run's error line, then `p2c status`'s "last run stopped with".
    server.add_fault({"stage": "design", "kind": "status", "status": 500, "message": HOSTILE, "times": None})
    failed = _run(server, tmp_path, "run", str(run))
    assert failed.returncode == 4, failed.stderr
    one_line = SHOWN.split(r"\x0d")[0]  # an error is one line: its CR became a space before it was shown
    _assert_escaped(failed, "stderr", one_line)
    status = _run(server, tmp_path, "status", str(run))
    assert status.returncode == 0 and "The last run stopped with" in status.stdout, status.stdout
    _assert_escaped(status, "stdout", one_line)
