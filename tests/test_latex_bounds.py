"""LaTeX input bounds (issue #11): decompressed text of every form is held to 20 MB, and every LaTeX pass is linear.

Each bomb is made at test time, small enough to be quick, and read by the CLI (`p2c paper X`) in a child process
with a time limit: it is refused with exit 3 and one line that names the limit and what to do. The passes that
were quadratic (or worse) are read at sizes where the old code took minutes; `benchmarks/bench_bounds.py` measures
the full sizes (time and peak memory).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from p2c_notebook.paper.latex import MAX_TEXT, read_capped

pytestmark = pytest.mark.slow

MB = 2**20
HEAD = "\\documentclass{article}\n\\begin{document}\n\\section{Method}\nWe mix pairs of examples.\n\n"
TAIL = "\n\\end{document}\n"


def tar_gz(path: Path, members: list[tuple[str, bytes | int]], level: int = 1) -> Path:
    """A .tar.gz of members given as bytes, or as a size of spaces (streamed, never held in memory)."""
    with tarfile.open(path, "w:gz", compresslevel=level) as archive:
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.size = content if isinstance(content, int) else len(content)
            data = _Spaces(content) if isinstance(content, int) else io.BytesIO(content)
            archive.addfile(info, data)  # type: ignore[arg-type]
    return path


class _Spaces(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        count = min(len(buffer), self.left)
        buffer[:count] = b" " * count
        self.left -= count
        return count


MAIN = (HEAD + "\\input{part}\n" + TAIL).encode()


# --- the streamed cap --------------------------------------------------------------------------------


class _Endless:
    """A stream that never ends, counting what was taken from it."""

    def __init__(self) -> None:
        self.taken = 0

    def read(self, size: int = -1, /) -> bytes:
        size = 1 << 16 if size < 0 else size
        self.taken += size
        return b"x" * size


def test_a_capped_read_of_an_endless_stream_stops_one_byte_past_the_limit() -> None:
    stream = _Endless()
    assert read_capped(stream, 3 * MB) is None
    assert stream.taken == 3 * MB + 1


def _peak_mb(argv: list[str], tmp_path: Path) -> tuple[int, str, float]:
    """Exit code, stderr and peak memory (MB) of one `p2c` child, measured by the kernel for that child alone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "P2C_"))}
    with open(tmp_path / "stderr.txt", "w+") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "p2c_notebook.cli", *argv],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**env, "P2C_CONFIG": "/nonexistent"},
        )
        timer = threading.Timer(60, process.kill)
        timer.start()
        _, status, usage = os.wait4(process.pid, 0)  # that one child's peak memory
        timer.cancel()
        err.seek(0)
        return os.waitstatus_to_exitcode(status), err.read(), usage.ru_maxrss / 1024


def test_a_gzip_bomb_is_refused_having_unpacked_no_more_than_the_limit(tmp_path: Path) -> None:
    """100 MB of LaTeX in a 100 KB .tex.gz: refused at 20 MB, by a process that never holds the rest."""
    path = tmp_path / "paper.tex.gz"
    with gzip.open(path, "wb", compresslevel=1) as handle:
        handle.write(HEAD.encode())
        for _ in range(100):
            handle.write(b" " * MB)
    # The same child doing nothing but start: its imports (and whatever a fork carries over) are the baseline.
    _, _, baseline = _peak_mb(["--help"], tmp_path)
    code, stderr, peak = _peak_mb(["paper", str(path)], tmp_path)
    assert code == 3 and stderr.count("\n") == 1, stderr
    assert "paper.tex in paper.tex.gz unpacks to more than 20 MB of LaTeX text (the limit)" in stderr
    assert "give the paper's main .tex file" in stderr
    # Holding the 100 MB whole (bytes, then decoded text) would take over 200 MB above the baseline.
    assert peak - baseline < 100, (peak, baseline)


# --- every bomb class through the CLI ------------------------------------------------------------------


def _bundle_member(folder: Path) -> Path:
    return tar_gz(folder / "src.tar.gz", [("main.tex", MAIN), ("part.tex", MAX_TEXT + 1)])


def _bundle_sum(folder: Path) -> Path:
    return tar_gz(folder / "src.tar.gz", [("main.tex", MAIN), *((f"part{i}.tex", 8 * MB) for i in range(3))])


def _zip_member(folder: Path) -> Path:
    path = folder / "src.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("main.tex", MAIN)
        with archive.open("part.tex", "w") as member:
            for _ in range(21):
                member.write(b" " * MB)
    return path


def _figures_past_stream_limit(folder: Path) -> Path:
    """Figures are skipped unread, but a tar stream is decompressed to reach the next member: 200 MB at most."""
    return tar_gz(folder / "src.tar.gz", [("main.tex", MAIN), ("part.tex", b"Text."), ("fig.png", 210 * MB)])


def _figures_within_stream_limit(folder: Path) -> Path:
    return tar_gz(folder / "src.tar.gz", [("main.tex", MAIN), ("fig.png", 60 * MB), ("part.tex", b"Words.")])


def _many_members(folder: Path) -> Path:
    members: list[tuple[str, bytes | int]] = [("main.tex", MAIN), ("part.tex", b"Text.")]
    return tar_gz(folder / "src.tar.gz", members + [(f"data/{i}.txt", b"x") for i in range(10_001)])


def _folder_sum(folder: Path) -> Path:
    source = folder / "src"
    source.mkdir()
    (source / "main.tex").write_bytes(MAIN)
    (source / "part.tex").write_text("Text.")
    for i in range(3):
        (source / f"draft{i}.tex").write_bytes(b"x" * (8 * MB))
    return source


def _main(folder: Path, body: str, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).write_text(text)
    (folder / "main.tex").write_text(HEAD + body + TAIL)
    return folder / "main.tex"


def _expansion(folder: Path) -> Path:
    return _main(folder, "\\input{part}\n" * 25, {"part.tex": "Words of a part. " * (MB // 17)})


def _inclusions(folder: Path) -> Path:
    return _main(folder, "\\input{part}\n" * 10_001, {"part.tex": ""})


def _cycle(folder: Path) -> Path:
    return _main(folder, "\\input{a}\n", {"a.tex": "\\input{b}\n", "b.tex": "\\input{a}\n"})


def _macro(folder: Path) -> Path:
    (folder / "main.tex").write_text(
        HEAD.replace("\\begin{document}", "\\def\\a{" + "\\a" * 100 + "}\n\\begin{document}") + "\\a " * 200_000 + TAIL
    )
    return folder / "main.tex"


def _braces(folder: Path) -> Path:
    return _main(folder, "\\footnote{" + "{" * 2 * MB, {})


def _headings(folder: Path) -> Path:
    """10,001 headings and the one in HEAD."""
    return _main(folder, "\\subsubsection{x}\n" * 10_001, {})


def _floats(folder: Path) -> Path:
    return _main(folder, "\\begin{figure}\\caption{x}\\end{figure}\n" * 10_001, {})


# name: (make the input, exit code, fragments of the one line)
CASES: dict[str, tuple[Callable[[Path], Path], int, tuple[str, ...]]] = {
    "bundle member": (
        _bundle_member,
        3,
        ("part.tex in src.tar.gz unpacks to more than 20 MB of LaTeX text (the limit)",),
    ),
    "bundle members together": (_bundle_sum, 3, ("the text files in src.tar.gz hold more than 20 MB of LaTeX text",)),
    "zip member": (_zip_member, 3, ("part.tex in src.zip unpacks to more than 20 MB of LaTeX text (the limit)",)),
    "tar stream": (_figures_past_stream_limit, 3, ("src.tar.gz unpacks to more than 200 MB", "unpack it yourself")),
    "large figures": (_figures_within_stream_limit, 0, ()),
    "many members": (_many_members, 3, ("src.tar.gz holds more than 10000 files",)),
    "folder": (_folder_sum, 3, ("the .tex files read from src hold more than 20 MB of LaTeX text (the limit)",)),
    "expansion": (_expansion, 3, ("main.tex expands (\\input/\\include) to more than 20 MB of LaTeX text",)),
    "inclusions": (_inclusions, 3, ("more than 10000 \\input/\\include expansions", "included in a loop?")),
    "cycle": (_cycle, 3, ("include each other in a cycle (main.tex -> a.tex -> b.tex -> a.tex)",)),
    "macro": (_macro, 3, ("macros (\\newcommand/\\def) more than double the text", "does a macro use itself?")),
    "braces": (_braces, 3, ("braces nest more than 255 levels deep (TeX's own limit)",)),
    "headings": (_headings, 3, ("main.tex has 10,002 \\section/\\subsection/\\appendix headings",)),
    "floats": (_floats, 3, ("main.tex has 10,001 figures and tables, more than the 10,000 any paper has",)),
}

RUN_CLI = """
import io, json, sys
from p2c_notebook.cli import main
outcomes = {}
for path in sys.argv[1:]:
    sys.stdout, sys.stderr = io.StringIO(), io.StringIO()
    code = main(["paper", path])
    outcomes[path] = [code, sys.stderr.getvalue()]
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
print(json.dumps(outcomes))
"""


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str]]:
    """Every case read by `p2c paper`, one after the other in one child process (one start-up), killed past 180 s."""
    paths = {name: make(tmp_path_factory.mktemp(name.replace(" ", "-"))) for name, (make, _, _) in CASES.items()}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "P2C_"))}
    done = subprocess.run(
        [sys.executable, "-c", RUN_CLI, *map(str, paths.values())],
        capture_output=True,
        text=True,
        timeout=180,
        env={**env, "P2C_CONFIG": "/nonexistent"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout)
    return {name: tuple(found[str(path)]) for name, path in paths.items()}  # type: ignore[misc]


@pytest.mark.parametrize("case", list(CASES))
def test_each_bomb_class_is_refused_in_one_line_or_read(case: str, outcomes: dict[str, tuple[int, str]]) -> None:
    code, stderr = outcomes[case]
    expected, fragments = CASES[case][1], CASES[case][2]
    assert code == expected, stderr
    if expected:
        assert stderr.startswith("p2c: error: ") and stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
        for fragment in fragments:
            assert fragment in stderr, f"{fragment!r} not in {stderr!r}"


#: Openers that are never closed, each repeated through 1 MB: every `.*?` or unbounded scan from each of them
#: to the end of the text made these quadratic (hours at 20 MB); now each is found in one pass.
UNCLOSED = {
    "equation": "\\begin{equation} x ",
    "display": "\\[ x ",
    "figure": "\\begin{figure} x ",
    "ack": "\\begin{ack} x ",
    "comment": "\\begin{comment} x ",
    "iffalse": "\\iffalse x ",
    "inline": "\\( x ",
    "option": "\\cite[p. ",
    "ref": "\\ref{a ",
    "begin": "\\begin{x ",
    "url": "\\url{a%b ",
    "caption": "\\caption{x } ",
    "section": "\\section{x } ",
    "spaces": "\\textbf" + " " * 1000 + "x ",
    "markdown heading": "# a " + "# " * 1000,
}
NO_BLANK_LINE = "the model is trained on mixed pairs of examples and evaluated on held-out data\n"

READ_ALL = """
import json, sys
from p2c_notebook.errors import PaperError
from p2c_notebook.paper import read_paper
outcomes = {}
for path in sys.argv[1:]:
    try:
        outcomes[path] = len(read_paper(path).to_text())
    except PaperError as exc:
        outcomes[path] = str(exc)
print(json.dumps(outcomes))
"""


def test_unclosed_openers_and_long_paragraphs_are_read_in_linear_time(tmp_path: Path) -> None:
    """All of them in one child process, in well under the time the old code took for any one of them."""
    paths = []
    for name, unit in UNCLOSED.items():
        body = unit * (MB // len(unit))
        path = tmp_path / f"{name.replace(' ', '-')}.{'md' if name.startswith('markdown') else 'tex'}"
        path.write_text(body if path.suffix == ".md" else HEAD + body + TAIL)
        paths.append(path)
    long_texts = {"no-blank-lines": NO_BLANK_LINE * (2 * MB // len(NO_BLANK_LINE)), "one-line": "word " * (MB // 5)}
    for name, text in long_texts.items():
        path = tmp_path / f"{name}.tex"
        path.write_text(HEAD + text + TAIL)
        paths.append(path)
    done = subprocess.run(
        [sys.executable, "-c", READ_ALL, *map(str, paths)], capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 0, done.stderr[-2000:]
    outcomes = json.loads(done.stdout)
    assert set(outcomes) == set(map(str, paths))
    for path, outcome in outcomes.items():  # read, or refused with one line
        assert isinstance(outcome, int) or ("\n" not in outcome and len(outcome) < 400), (path, outcome)
    assert isinstance(outcomes[str(tmp_path / "no-blank-lines.tex")], int)
    assert isinstance(outcomes[str(tmp_path / "one-line.tex")], int)
