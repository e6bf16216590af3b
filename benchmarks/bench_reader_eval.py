"""How well the PDF reader reads real papers: `python benchmarks/bench_reader_eval.py [--pymupdf4llm]`.

Papers: the ten in `../shared/papers/corpus/`, the Transformer (`../shared/papers/transformer/`) and the example
paper (`examples/mixup/paper.pdf`). For each it measures, against the truth in `benchmarks/reader_truth/NAME.json`
(and the PDF's own outline, the authors' list of sections, where the PDF has one):

- recall: share of the true headings found as sections (text compared without numbering, case or punctuation);
- extra: sections that are no true heading (body lines read as headings);
- refs/acks: references and acknowledgements dropped; appendix: the first appendix section marked as such;
- equations and tables kept (display equations found; tables rendered as Markdown tables);
- leak: words from inside figures (images, and vector drawings with curves, slants or colour) that reach the
  section text, found by reading the paper again with those regions blanked out and counting the words that
  went missing from the body;
- tokens as read, and the read time (ms per 15 pages, the target is under 1,000).

Prints one table and writes `benchmarks/results/reader.json`. `--pymupdf4llm` scores pymupdf4llm's Markdown
(read by our Markdown reader) on the same truth, for comparison.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
import unicodedata
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymupdf

from p2c_notebook.paper import Paper, read_paper
from p2c_notebook.paper.text import heading_kind

ROOT = Path(__file__).resolve().parents[1]
TRUTH = ROOT / "benchmarks" / "reader_truth"
RESULTS = ROOT / "benchmarks" / "results" / "reader.json"
EXAMPLE = ROOT / "examples" / "mixup" / "paper.pdf"
TARGET_MEAN, TARGET_EACH = 0.95, 0.85
_NUMBER = re.compile(r"^\s*(?:(?:\d{1,2}|[A-Z]|[IVX]{1,5})(?:\.\d{1,2}){0,3}\.?)\s+(?=\S)")


def shared_papers() -> Path | None:
    """`../shared/papers` beside the repository, where the test papers live (absent in a bare clone)."""
    folder = ROOT.parent / "shared" / "papers"
    return folder if (folder / "corpus").is_dir() else None


def corpus() -> list[tuple[str, Path]]:
    """(name, pdf) for every paper with a truth file whose PDF is here."""
    shared = shared_papers()
    found: list[tuple[str, Path]] = []
    for truth in sorted(TRUTH.glob("*.json")):
        name = truth.stem
        if name == "mixup":
            path: Path | None = EXAMPLE
        elif name == "transformer":
            path = shared / "transformer" / "Transformer.pdf" if shared else None
        else:
            path = shared / "corpus" / f"{name}.pdf" if shared else None
        if path is not None and path.exists():
            found.append((name, path))
    return found


def normalize(heading: str) -> str:
    """A heading compared without its number, case, accents, ligatures, spaces or punctuation."""
    text = unicodedata.normalize("NFKC", heading).replace("\u2019", "'")
    text = _NUMBER.sub("", text)
    return re.sub(r"[^0-9a-z]+", "", text.lower())


def variants(heading: str) -> set[str]:
    """`normalize` with one or two leading numbers stripped: "A A Practical Guide" is appendix A, "A Practical
    Guide"; an outline may give either."""
    once = normalize(heading)
    twice = normalize(_NUMBER.sub("", unicodedata.normalize("NFKC", heading), count=1))
    return {once, twice} - {""}


def pair(expected: list[str], found: list[str]) -> tuple[list[str], list[str]]:
    """Match true and found headings one to one: (true headings missed, found headings that match none)."""
    unused = list(found)
    missed = []
    for heading in expected:
        wanted = variants(heading)
        hit = next((f for f in unused if variants(f) & wanted), None)
        if hit is None:
            missed.append(heading)
        else:
            unused.remove(hit)
    return missed, unused


def true_headings(path: Path, truth: dict[str, Any]) -> list[str]:
    """The outline's entries (or the hand-checked list), less abstract, references and acknowledgements."""
    if truth.get("outline"):
        with pymupdf.open(path) as doc:
            entries = [title for _, title, _ in doc.get_toc()]
    else:
        entries = list(truth["headings"])
    return [e for e in entries if heading_kind(e) is None and normalize(e)]


def label(number: str | None, heading: str) -> str:
    return f"{number} {heading}" if number else heading


def _shown(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drawn paths with their boxes cut to the clip paths that enclose them (a bar of a chart may extend far
    below its plot, clipped away: only what is painted is the figure)."""
    scissors: list[tuple[int, Any]] = []
    paths = []
    for entry in entries:
        while scissors and scissors[-1][0] >= entry.get("level", 0):
            scissors.pop()
        if entry["type"] == "clip":
            scissors.append((entry.get("level", 0), pymupdf.Rect(entry["scissor"])))
        elif entry["type"] != "group" and "items" in entry:
            rect = pymupdf.Rect(entry["rect"])
            for _, scissor in scissors:
                rect = rect & scissor
            if rect.is_valid:  # a path clipped away entirely comes out inverted
                paths.append({**entry, "rect": rect})
    return paths


def figure_regions(page: Any) -> list[Any]:
    """Regions of a page that are figures: images, and drawings with curves, slanted lines or colour fills.

    Axis-parallel rules and grids alone (tables) do not count. The reader does not use this function: it is the
    benchmark's own yardstick.
    """
    area = abs(page.rect)
    regions = [r for r in (page.get_image_rects(x[0])[0] for x in page.get_images() if page.get_image_rects(x[0]))]
    regions = [r for r in regions if abs(r) > 0.01 * area]
    paths = _shown(page.get_drawings(extended=True))
    for cluster in page.cluster_drawings(drawings=paths):
        if abs(cluster) < 0.02 * area:
            continue
        inside = [p for p in paths if p["rect"].intersects(cluster)]
        pictorial = any(
            item[0] == "c"
            or (item[0] == "l" and abs(item[1].x - item[2].x) > 1 and abs(item[1].y - item[2].y) > 1)
            or (p.get("fill") is not None and len(set(p["fill"])) > 1)
            for p in inside
            for item in p["items"]
        )
        if pictorial:
            regions.append(cluster)
    return regions


def words(paper: Paper) -> Counter[str]:
    return Counter(re.findall(r"[A-Za-z]{2,}", "\n".join(s.text for s in paper.sections)))


def leakage(path: Path, paper: Paper, reader: Callable[[Path], Paper]) -> tuple[int, int]:
    """(words from figure regions found in the section text, words inside figure regions)."""
    figure_words: Counter[str] = Counter()
    with pymupdf.open(path) as doc:
        for page in doc:
            for region in figure_regions(page):
                figure_words.update(re.findall(r"[A-Za-z]{2,}", page.get_textbox(region)))
                page.add_redact_annot(region)
            page.apply_redactions(images=pymupdf.PDF_REDACT_IMAGE_NONE, graphics=pymupdf.PDF_REDACT_LINE_ART_NONE)
        with tempfile.TemporaryDirectory() as folder:
            blanked = Path(folder) / path.name
            doc.save(blanked)
            without = reader(blanked)
    missing = words(paper) - words(without)
    leaked = sum(min(count, figure_words[word]) for word, count in missing.items())
    return leaked, sum(figure_words.values())


def markdown_tables(paper: Paper) -> int:
    text = paper.to_text()
    return len(re.findall(r"(?m)^\|.*\|\n\|(?: ?:?-{3,}:? ?\|)+$", text))


def evaluate(
    name: str, path: Path, reader: Callable[[Path], Paper] = read_paper, *, runs: int = 3, leaks: bool = True
) -> dict[str, Any]:
    """One paper's row of the table (`runs` timed reads; `leaks` False skips the figure-leak reread)."""
    truth = json.loads((TRUTH / f"{name}.json").read_text())
    timings, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        paper = reader(path)
        timings.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    expected = true_headings(path, truth)
    found_labels = [label(s.number, s.heading) for s in paper.sections]
    missed, unmatched = pair(expected, found_labels)
    matched = len(expected) - len(missed)
    allowed = {normalize(h) for h in truth.get("also_headings", [])}
    extra = [h for h in unmatched if not variants(h) & allowed]
    marked = [label(s.number, s.heading) for s in paper.sections if getattr(s, "appendix", False)]
    first_marked = next((i for i, s in enumerate(paper.sections) if getattr(s, "appendix", False)), None)
    if truth.get("appendix"):
        appendix_ok = bool(marked) and bool(variants(marked[0]) & variants(truth["appendix"]))
        appendix_ok = appendix_ok and all(getattr(s, "appendix", False) for s in paper.sections[first_marked or 0 :])
    else:
        appendix_ok = not marked
    leaked, figure_total = leakage(path, paper, reader) if leaks else (0, 0)
    report = paper.report()
    with pymupdf.open(path) as doc:
        pages = doc.page_count
    return {
        "paper": name,
        "pages": pages,
        "truth": "outline" if truth.get("outline") else "hand-checked",
        "headings": len(expected),
        "found": matched,
        "recall": matched / max(len(expected), 1),
        "missed": missed,
        "extra": extra,
        "references_dropped": any(d.startswith("references") for d in paper.dropped),
        "acknowledgements_dropped": (not truth.get("acknowledgements"))
        or any(d.startswith("acknowledgements") for d in paper.dropped),
        "appendix_expected": truth.get("appendix"),
        "appendix_marked": marked[:1],
        "appendix_ok": appendix_ok,
        "equations": len(paper.equations),
        "equations_ok": (len(paper.equations) > 0) == bool(truth.get("equations")),
        "tables": markdown_tables(paper),
        "tables_ok": (markdown_tables(paper) > 0) or not truth.get("tables"),
        "figure_words": figure_total,
        "figure_words_leaked": leaked,
        "tokens": report.estimated_tokens,
        "read_ms": statistics.median(timings) * 1000,
        "ms_per_15_pages": statistics.median(timings) * 1000 * 15 / max(pages, 1),
        # CPU time: what the reader costs, unlike wall time not inflated when other work shares the cores
        "cpu_ms_per_15_pages": statistics.median(cpu) * 1000 * 15 / max(pages, 1),
    }


def pymupdf4llm_reader(path: Path) -> Paper:
    """pymupdf4llm's Markdown of the PDF, read by our Markdown reader (headings are its `#` lines)."""
    import pymupdf4llm  # type: ignore[import-not-found]  # optional: only for the comparison

    markdown = pymupdf4llm.to_markdown(str(path), show_progress=False)
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / f"{path.stem}.md"
        target.write_text(markdown)
        paper = read_paper(target)
    return paper.model_copy(update={"source": path.name})


def table(rows: list[dict[str, Any]]) -> str:
    yes = {True: "yes", False: "NO"}
    head = (
        "| paper | truth | sections found | recall | extra | refs dropped | acks dropped | appendix | equations "
        "| tables | figure words leaked | tokens | ms / 15 pages (CPU) |"
    )
    lines = [head, "|" + " --- |" * 13]
    for r in rows:
        lines.append(
            f"| {r['paper']} | {r['truth']} | {r['found']} / {r['headings']} | {r['recall']:.0%} | {len(r['extra'])} "
            f"| {yes[r['references_dropped']]} | {yes[r['acknowledgements_dropped']]} "
            f"| {'-' if not r['appendix_expected'] else yes[r['appendix_ok']]} "
            f"| {r['equations']}{'' if r['equations_ok'] else ' NO'} | {r['tables']}{'' if r['tables_ok'] else ' NO'} "
            f"| {r['figure_words_leaked']} / {r['figure_words']} | {r['tokens']:,} "
            f"| {r['ms_per_15_pages']:.0f} ({r['cpu_ms_per_15_pages']:.0f}) |"
        )
    mean = statistics.mean(r["recall"] for r in rows) if rows else 0.0
    lines.append(f"\nmean recall {mean:.1%} (target >= {TARGET_MEAN:.0%}, every paper >= {TARGET_EACH:.0%})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pymupdf4llm", action="store_true", help="score pymupdf4llm instead of our reader")
    parser.add_argument("--details", action="store_true", help="also list missed and extra headings")
    args = parser.parse_args(argv)
    papers = corpus()
    if not papers:
        print(f"no papers: {ROOT.parent / 'shared' / 'papers'} is absent")
        return 1
    reader: Callable[[Path], Paper] = pymupdf4llm_reader if args.pymupdf4llm else read_paper
    rows = [evaluate(name, path, reader) for name, path in papers]
    print(table(rows))
    if args.details:
        for r in rows:
            if r["missed"] or r["extra"]:
                print(f"{r['paper']}: missed {r['missed']}; extra {r['extra']}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    target = RESULTS.with_name("reader-pymupdf4llm.json") if args.pymupdf4llm else RESULTS
    target.write_text(json.dumps({"papers": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
