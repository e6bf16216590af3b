"""Bounds benchmark (issue #11): time and peak memory of reading the largest accepted inputs and the bombs.

    python benchmarks/bench_bounds.py            # every case at full size, ~1-2 min; writes results/bounds.json
    python benchmarks/bench_bounds.py --scale 0.1 --out /tmp/b.json   # a smoke run at a tenth of the sizes

Each input is generated in a temporary folder, then read by `read_paper` in a fresh Python process; the
table gives the reading time inside that process (imports excluded), the process's wall time and its peak
resident memory (`ru_maxrss` of that one child, from `os.wait4`), and what came of it: accepted (characters
of text kept) or refused (the one-line message). The target: any accepted LaTeX input of up to 20 MB reads in
under 5 s and 300 MB; a bomb is refused, or read, within the same bounds. The time is judged on the reading's
CPU time ("cpu s"): on a shared machine the wall time ("read s") also counts other processes' work.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
MB = 2**20
TIME_LIMIT_S = 5.0
MEMORY_LIMIT_MB = 300.0

_PARAGRAPH = (
    "We train the model with \\emph{mixup} on pairs of examples, as in \\citet{zhang2018}, and report the "
    "mean over five seeds in Table~\\ref{tab:main}. The loss $\\mathcal{L}(\\theta)$ is minimised with Adam "
    "\\footnote{With $\\beta_1 = 0.9$ and a {\\bf warm-up} of 4000 steps.} at a learning rate of \\lr.\n"
)
_PREAMBLE = "\\documentclass{article}\n\\newcommand{\\lr}{$3 \\times 10^{-4}$}\n\\title{A Bounded Paper}\n"


def _head(title: str = "A Bounded Paper") -> str:
    return _PREAMBLE.replace("A Bounded Paper", title) + "\\begin{document}\n\\maketitle\n"


def valid_tex(size: int) -> str:
    """A realistic paper of about `size` characters: sections, wrapped paragraphs, equations, floats."""
    parts = [_head(), "\\begin{abstract}\nWe read papers in bounded time.\n\\end{abstract}\n"]
    length = sum(map(len, parts))
    number = 0
    while length < size:
        number += 1
        block = (
            f"\\section{{Part {number}}}\\label{{sec:{number}}}\n"
            + _PARAGRAPH * 6
            + "\n"
            + f"\\begin{{equation}}\\label{{eq:{number}}}\ny_{{{number}}} = \\lambda x_i + (1 - \\lambda) x_j\n"
            + "\\end{equation}\n\n"
            + "\\begin{table}[t]\\centering\\begin{tabular}{lcc}\\toprule a & b & c \\\\ 1 & 2 & 3 \\\\\n"
            + f"\\bottomrule\\end{{tabular}}\\caption{{Results of part {number}.}}\\label{{tab:{number}}}"
            + "\\end{table}\n\n"
            + _PARAGRAPH * 4
            + "\n"
        )
        parts.append(block)
        length += len(block)
    parts.append("\\end{document}\n")
    return "".join(parts)


def no_blank_lines(size: int) -> str:
    """One paragraph of `size` characters: wrapped lines, no blank line (the quadratic line joining)."""
    line = "the model is trained on mixed pairs of examples and evaluated on held-out data\n"
    return _head() + "\\section{Method}\n" + line * (size // len(line)) + "\\end{document}\n"


def one_line(size: int) -> str:
    """A single line of `size` characters."""
    words = "mixing examples regularises the network " * (size // 40)
    return _head() + "\\section{Method}\n" + words + "\n\\end{document}\n"


def short_paragraphs(size: int) -> str:
    """Paragraphs of one short sentence each (the most paragraphs per megabyte a paper could have)."""
    return _head() + "\\section{Method}\n" + "Mixing helps.\n\n" * (size // 15) + "\\end{document}\n"


def many_sections(size: int) -> str:
    """A heading every 12 characters."""
    return _head() + "\\section{Part}\n" * (size // 15) + "\\end{document}\n"


def deep_braces(size: int) -> str:
    """A section title that opens `size` braces and never closes them."""
    return _head() + "\\section{" + "{" * size + "\n\\end{document}\n"


def open_braces(size: int) -> str:
    """`size` braces in the body, outside any command."""
    return _head() + "\\section{Method}\n" + "{" * size + "\n\\end{document}\n"


def unclosed(size: int) -> str:
    """Environments, display math and arguments opened and never closed, repeated (`.*?` rescans the rest)."""
    unit = "\\begin{equation} \\[ \\begin{figure} \\footnote{ \\cite[ \\ref{ \\begin{ack} \\( x "
    return _head() + "\\section{Method}\nText.\n" + unit * (size // len(unit)) + "\n\\end{document}\n"


def macro_bomb(size: int) -> str:
    """A macro that doubles itself, used `size // 3` times."""
    return "\\documentclass{article}\n\\def\\a{\\a\\a}\n\\begin{document}\n\\section{A}\n" + "\\a " * (size // 3)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def gz_bomb(folder: Path, size: int) -> Path:
    """A `.tex.gz` unpacking to `size` bytes of LaTeX (the issue's: 676 KB to 190 MB)."""
    path = folder / "bomb.tex.gz"
    with gzip.open(path, "wb", compresslevel=9) as handle:
        handle.write(_head().encode())
        chunk = b" " * MB
        for _ in range(size // MB):
            handle.write(chunk)
    return path


def _tar(path: Path, members: Sequence[tuple[str, int | bytes]]) -> Path:
    """A .tar.gz of members, each given as its bytes or as a size of zeros, streamed (never in memory)."""
    with tarfile.open(path, "w:gz", compresslevel=9) as archive:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if isinstance(content, bytes):
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))
            else:
                info.size = content
                archive.addfile(info, _Zeros(content))
    return path


class _Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = min(len(buffer), self.left)
        buffer[:count] = bytes(count)
        self.left -= count
        return count


def tar_large_tex(folder: Path, size: int) -> Path:
    """A main.tex and large .tex members (size bytes each): refused at the first member over the limit."""
    main = (_head() + "\\section{A}\nText.\n\\input{big0}\n\\end{document}\n").encode()
    return _tar(folder / "large-tex.tar.gz", [("main.tex", main), *((f"big{i}.tex", size) for i in range(3))])


def tar_large_figures(folder: Path, size: int) -> Path:
    """A valid paper with figure members of `size` bytes each (skipped unread; the stream is bounded)."""
    main = valid_tex(20_000).encode()
    return _tar(folder / "large-figures.tar.gz", [("main.tex", main), *((f"fig{i}.png", size) for i in range(3))])


def tar_many_members(folder: Path, count: int) -> Path:
    """A valid paper and `count` tiny members."""
    members: list[tuple[str, int | bytes]] = [("main.tex", valid_tex(20_000).encode())]
    members += [(f"data/{i}.txt", b"x") for i in range(count)]
    return _tar(folder / "many-members.tar.gz", members)


def input_fan_out(folder: Path, count: int) -> Path:
    """A main.tex that inputs the same small file `count` times."""
    source = folder / "fan-out"
    source.mkdir(exist_ok=True)
    write(source / "part.tex", "Text of a part that is included many times.\n")
    write(source / "main.tex", _head() + "\\section{A}\n" + "\\input{part}\n" * count + "\\end{document}\n")
    return source


def input_tree(folder: Path, width: int) -> Path:
    """Three levels of \\input, each file including `width` files of the next level (width**3 leaves)."""
    source = folder / "tree"
    source.mkdir(exist_ok=True)
    write(source / "leaf.tex", "A leaf paragraph of the tree.\n\n")
    write(source / "mid.tex", "\\input{leaf}\n" * width)
    write(source / "top.tex", "\\input{mid}\n" * width)
    write(source / "main.tex", _head() + "\\section{A}\n" + "\\input{top}\n" * width + "\\end{document}\n")
    return source


def input_loop(folder: Path, _: int) -> Path:
    source = folder / "loop"
    source.mkdir(exist_ok=True)
    write(source / "a.tex", "\\input{b}\n")
    write(source / "b.tex", "\\input{a}\n")
    write(source / "main.tex", _head() + "\\section{A}\n\\input{a}\n\\end{document}\n")
    return source


def pdf_pages(folder: Path, pages: int) -> Path:
    """A PDF of `pages` pages of text (the reader keeps at most 100)."""
    import pymupdf

    path = folder / "pages.pdf"
    doc = pymupdf.open()
    text = "\n".join(f"Line {n}: mixing examples regularises the network trained on pairs." for n in range(40))
    for number in range(pages):
        page = doc.new_page()
        if number == 0:
            page.insert_text((72, 60), "A Long Paper", fontsize=16)
        page.insert_textbox(pymupdf.Rect(72, 80, 540, 760), f"{number + 1} Section {number + 1}\n" + text, fontsize=9)
    doc.save(path)
    doc.close()
    return path


def pdf_one_line(folder: Path, size: int) -> Path:
    """A PDF whose text layer is one huge line of `size` characters (tiny font, spread over a page)."""
    import pymupdf

    path = folder / "one-line.pdf"
    doc = pymupdf.open()
    page = doc.new_page(width=14400, height=200)
    words = "mixing examples regularises the network " * (size // 40)
    page.insert_text((10, 100), words, fontsize=1)
    doc.save(path)
    doc.close()
    return path


def _text(name: str, make: Callable[[int], str]) -> Callable[[Path, int], Path]:
    return lambda folder, size: write(folder / name, make(size))


# name, what it is, generator, full size
CASES: list[tuple[str, str, Callable[[Path, int], Path], int]] = [
    ("valid-19mb", "19 MB realistic .tex", _text("valid.tex", valid_tex), 19 * MB),
    ("no-blank-2mb", "2 MB .tex without blank lines", _text("noblank.tex", no_blank_lines), 2 * MB),
    ("no-blank-19mb", "19 MB .tex without blank lines", _text("noblank19.tex", no_blank_lines), 19 * MB),
    ("one-line-19mb", "19 MB .tex on one line", _text("oneline.tex", one_line), 19 * MB),
    ("paragraphs-19mb", "19 MB of one-line paragraphs", _text("paragraphs.tex", short_paragraphs), 19 * MB),
    ("many-sections", "19 MB of \\section headings", _text("sections.tex", many_sections), 19 * MB),
    ("deep-braces", "\\section{ + 19 MB of {", _text("deep.tex", deep_braces), 19 * MB),
    ("open-braces", "19 MB of { in the body", _text("open.tex", open_braces), 19 * MB),
    ("unclosed", "19 MB of unclosed environments", _text("unclosed.tex", unclosed), 19 * MB),
    ("macro-bomb", "\\def\\a{\\a\\a} used 1M times", _text("macro.tex", macro_bomb), 3 * MB),
    ("gz-bomb", ".tex.gz unpacking to 190 MB", gz_bomb, 190 * MB),
    ("tar-large-tex", ".tar.gz, three 200 MB .tex", tar_large_tex, 200 * MB),
    ("tar-large-figs", ".tar.gz, three 60 MB figures", tar_large_figures, 60 * MB),
    ("tar-many", ".tar.gz with 100,000 members", tar_many_members, 100_000),
    ("input-fan-out", "\\input of one file 100,000 times", input_fan_out, 100_000),
    ("input-tree", "\\input tree, 30^3 leaves", input_tree, 30),
    ("input-loop", "a.tex and b.tex input each other", input_loop, 1),
    ("pdf-1000-pages", "PDF of 1000 pages of text", pdf_pages, 1000),
    ("pdf-one-line", "PDF text layer of one 2 MB line", pdf_one_line, 2 * MB),
]

_WORKER = """
import json, sys, time
start = time.perf_counter()
from p2c_notebook.errors import PaperError
from p2c_notebook.paper import read_paper
imported = time.perf_counter()
cpu = time.process_time()
try:
    paper = read_paper(sys.argv[1])
    outcome = {"accepted": True, "characters": len(paper.to_text()), "message": paper.report().summary()[:300]}
except PaperError as exc:
    outcome = {"accepted": False, "characters": 0, "message": str(exc)}
outcome["read_s"] = time.perf_counter() - imported
outcome["read_cpu_s"] = time.process_time() - cpu
outcome["import_s"] = imported - start
print(json.dumps(outcome))
"""


def measure(path: Path, timeout: float = 120.0) -> dict[str, Any]:
    """Read `path` in a fresh process: its outcome, reading time, wall time and peak RSS (that child's own)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-c", _WORKER, str(path)], stdout=out, stderr=err)
        timer = threading.Timer(timeout, process.kill)
        timer.start()
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        timer.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        lines = out.read().decode().strip().splitlines()
        error = err.read().decode().strip()
    rss_mb = usage.ru_maxrss / 1024 if sys.platform != "darwin" else usage.ru_maxrss / MB
    if process.returncode != 0 or not lines:
        reason = "timed out" if process.returncode == -9 else f"exit {process.returncode}"
        return {"accepted": False, "characters": 0, "message": f"CRASH ({reason}): {error[-300:]}", "read_s": wall,
                "read_cpu_s": usage.ru_utime + usage.ru_stime, "import_s": 0.0, "wall_s": wall,
                "peak_rss_mb": rss_mb, "crashed": True}  # fmt: skip
    result: dict[str, Any] = json.loads(lines[-1])
    result.update(wall_s=wall, peak_rss_mb=rss_mb, crashed=False)
    return result


def run(scale: float, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="p2c-bounds-") as tmp:
        folder = Path(tmp)
        baseline = write(folder / "tiny.tex", valid_tex(5_000))
        rows.append({"case": "baseline", "what": "5 KB .tex (imports only)", "input_mb": 0.005, **measure(baseline)})
        for name, what, make, size in CASES:
            if names and name not in names:
                continue
            scaled = max(1, int(size * scale))
            path = make(folder, scaled)
            on_disk = sum(p.stat().st_size for p in path.rglob("*")) if path.is_dir() else path.stat().st_size
            row = {"case": name, "what": what, "size": scaled, "input_mb": on_disk / MB, **measure(path)}
            fast, small = row["read_cpu_s"] < TIME_LIMIT_S, row["peak_rss_mb"] < MEMORY_LIMIT_MB
            row["within"] = fast and small and not row["crashed"]
            rows.append(row)
            print(_row(row), flush=True)
            for item in path.rglob("*") if path.is_dir() else [path]:
                if item.is_file():
                    item.unlink()
    return rows


def _row(row: dict[str, Any]) -> str:
    outcome = f"accepted ({row['characters']:,} chars)" if row["accepted"] else "refused"
    mark = "" if row.get("within", True) else "  <-- over the bound"
    return (
        f"{row['case']:16} {row['input_mb']:8.2f} {row['read_s']:7.2f} {row['read_cpu_s']:7.2f} {row['wall_s']:7.2f} "
        f"{row['peak_rss_mb']:8.0f}  {outcome}{mark}\n{'':16} {row['message'][:150]}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every input size (default 1)")
    parser.add_argument("--case", action="append", help="run only this case (repeatable)")
    parser.add_argument("--out", type=Path, default=RESULTS / "bounds.json", help="where to write the JSON")
    args = parser.parse_args(argv)
    print(f"{'case':16} {'input MB':>8} {'read s':>7} {'cpu s':>7} {'wall s':>7} {'peak MB':>8}  outcome")
    rows = run(args.scale, args.case)
    print(_row(rows[0]))
    missed = [r["case"] for r in rows[1:] if not r["within"]]
    print(f"\ntarget: every case read or refused in < {TIME_LIMIT_S:.0f} s and < {MEMORY_LIMIT_MB:.0f} MB peak: "
          + ("met" if not missed else f"MISSED by {', '.join(missed)}"))  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}
    args.out.write_text(json.dumps({"scale": args.scale, "machine": machine, "cases": rows}, indent=2) + "\n")
    print(f"results: {args.out}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
