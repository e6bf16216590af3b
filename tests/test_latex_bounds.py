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
import zipfile
from pathlib import Path

import pytest

from p2c_notebook.paper.latex import MAX_TEXT, read_capped

MB = 2**20
HEAD = "\\documentclass{article}\n\\begin{document}\n\\section{Method}\nWe mix pairs of examples.\n\n"
TAIL = "\n\\end{document}\n"


def cli(path: Path, timeout: float = 60) -> tuple[int, str]:
    """`p2c paper PATH` in a fresh process, killed past `timeout` seconds: (exit code, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "P2C_"))}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "p2c_notebook.cli", "paper", str(path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**env, "P2C_CONFIG": "/nonexistent"},
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"p2c paper {path.name} ran past {timeout} s")
    return done.returncode, done.stderr


def refused(path: Path, *fragments: str, timeout: float = 60) -> str:
    code, stderr = cli(path, timeout)
    assert code == 3, stderr
    assert "Traceback" not in stderr and stderr.startswith("p2c: error: ") and stderr.count("\n") == 1, stderr
    for fragment in fragments:
        assert fragment in stderr, f"{fragment!r} not in {stderr!r}"
    return stderr


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


def test_a_gzip_bomb_is_refused_having_unpacked_no_more_than_the_limit(tmp_path: Path) -> None:
    """150 MB of LaTeX in a 150 KB .tex.gz: refused at 20 MB, in a process that never holds the rest."""
    path = tmp_path / "paper.tex.gz"
    with gzip.open(path, "wb", compresslevel=1) as handle:
        handle.write(HEAD.encode())
        for _ in range(150):
            handle.write(b" " * MB)
    code, stderr = cli(path)
    assert code == 3 and stderr.count("\n") == 1, stderr
    assert "paper.tex in paper.tex.gz unpacks to more than 20 MB of LaTeX text (the limit)" in stderr
    assert "give the paper's main .tex file" in stderr
    assert _peak_rss_mb_reading(path) < 150  # it would be over 150 MB had the whole file been unpacked


def _peak_rss_mb_reading(path: Path) -> float:
    """Peak resident memory (MB) of a fresh process that reads `path`; that one child's, from os.wait4."""
    code = "import sys\nfrom p2c_notebook.paper import read_paper\ntry: read_paper(sys.argv[1])\nexcept Exception: pass"
    process = subprocess.Popen([sys.executable, "-c", code, str(path)])
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.returncode == 0
    return usage.ru_maxrss / 1024


# --- archives -----------------------------------------------------------------------------------------


def test_a_bundle_member_over_the_limit_is_refused(tmp_path: Path) -> None:
    path = tar_gz(tmp_path / "src.tar.gz", [("main.tex", MAIN), ("part.tex", MAX_TEXT + 1)])
    refused(path, "part.tex in src.tar.gz unpacks to more than 20 MB of LaTeX text (the limit)")


def test_bundle_members_over_the_limit_together_are_refused(tmp_path: Path) -> None:
    members: list[tuple[str, bytes | int]] = [("main.tex", MAIN), *((f"part{i}.tex", 8 * MB) for i in range(3))]
    path = tar_gz(tmp_path / "src.tar.gz", members)
    refused(path, "the text files in src.tar.gz hold more than 20 MB of LaTeX text (the limit)")


def test_a_zip_member_over_the_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "src.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("main.tex", MAIN)
        with archive.open("part.tex", "w") as member:
            for _ in range(21):
                member.write(b" " * MB)
    refused(path, "part.tex in src.zip unpacks to more than 20 MB of LaTeX text (the limit)")


def test_a_bundle_whose_figures_unpack_past_the_stream_limit_is_refused(tmp_path: Path) -> None:
    """Figures are skipped unread, but a tar stream is decompressed to reach the next member: 200 MB at most."""
    path = tar_gz(tmp_path / "src.tar.gz", [("main.tex", MAIN), ("part.tex", b"Text."), ("fig.png", 210 * MB)])
    refused(path, "src.tar.gz unpacks to more than 200 MB", "unpack it yourself and give the folder")


def test_a_bundle_with_large_figures_within_the_stream_limit_is_read(tmp_path: Path) -> None:
    path = tar_gz(tmp_path / "src.tar.gz", [("main.tex", MAIN), ("fig.png", 60 * MB), ("part.tex", b"Words.")])
    code, stderr = cli(path)
    assert code == 0, stderr


def test_a_bundle_of_too_many_members_is_refused(tmp_path: Path) -> None:
    members: list[tuple[str, bytes | int]] = [("main.tex", MAIN), ("part.tex", b"Text.")]
    members += [(f"data/{i}.txt", b"x") for i in range(10_001)]
    refused(tar_gz(tmp_path / "src.tar.gz", members), "src.tar.gz holds more than 10000 files")


# --- folders and \input -------------------------------------------------------------------------------


def test_a_folder_whose_tex_files_together_pass_the_limit_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "main.tex").write_bytes(MAIN)
    (source / "part.tex").write_text("Text.")
    for i in range(3):
        (source / f"draft{i}.tex").write_bytes(b"x" * (8 * MB))
    refused(source, "the .tex files read from src hold more than 20 MB of LaTeX text (the limit)")


def test_a_file_included_until_the_expansion_passes_the_limit_is_refused(tmp_path: Path) -> None:
    (tmp_path / "part.tex").write_text("Words of a part. " * (MB // 17))
    main = tmp_path / "main.tex"
    main.write_text(HEAD + "\\input{part}\n" * 25 + TAIL)
    refused(main, "main.tex expands (\\input/\\include) to more than 20 MB of LaTeX text (the limit)")


def test_an_empty_file_included_ten_thousand_times_is_refused(tmp_path: Path) -> None:
    (tmp_path / "part.tex").write_text("")
    main = tmp_path / "main.tex"
    main.write_text(HEAD + "\\input{part}\n" * 10_001 + TAIL)
    refused(main, "main.tex has more than 10000 \\input/\\include expansions", "included in a loop?")


def test_files_that_include_each_other_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.tex").write_text("\\input{b}\n")
    (tmp_path / "b.tex").write_text("\\input{a}\n")
    main = tmp_path / "main.tex"
    main.write_text(HEAD + "\\input{a}\n" + TAIL)
    refused(main, "include each other in a cycle (main.tex -> a.tex -> b.tex -> a.tex)")


# --- what the passes do with hostile text ---------------------------------------------------------


def test_a_macro_that_uses_itself_is_refused_once_it_has_grown_by_the_limit(tmp_path: Path) -> None:
    main = tmp_path / "main.tex"
    main.write_text("\\documentclass{article}\n\\def\\a{" + "\\a" * 100 + "}\n" + HEAD[24:] + "\\a " * 200_000 + TAIL)
    refused(main, "macros (\\newcommand/\\def) expand to more than 20 MB", "does a macro use itself?")


def test_braces_nested_deeper_than_tex_allows_are_refused(tmp_path: Path) -> None:
    main = tmp_path / "main.tex"
    main.write_text(HEAD + "\\footnote{" + "{" * 2 * MB + TAIL)
    refused(main, "braces nest more than 255 levels deep (TeX's own limit)")


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
    for name, text in (("no-blank-lines", NO_BLANK_LINE * (2 * MB // len(NO_BLANK_LINE))), ("one-line", "word " * MB)):
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
