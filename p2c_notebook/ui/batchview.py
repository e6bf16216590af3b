"""A batch in a notebook: a live progress view fed by the batch's events, and charts of its summary.

    view = BatchView()
    batch = Batch("papers.yaml", options, sinks=(view,))   # or batch.bus.subscribe(view)
    display(view.widget); batch.run()
    show_summary("runs/batch/papers")                     # the table and one bar chart per figure

The charts are plain SVG drawn here (bars per paper, one chart per figure): no plotting library is installed
with the notebook extra, and a few bars need none. Every paper name and note is escaped.
"""

from __future__ import annotations

import csv
import html
import io
import threading
from dataclasses import dataclass
from pathlib import Path

import ipywidgets as widgets  # type: ignore[import-untyped]

from p2c_notebook.run.batch import SUMMARY_CSV, BatchFinished, BatchStarted, PaperFinished, PaperStarted
from p2c_notebook.run.events import Event

# The summary.csv columns charted, with their titles (a column the file lacks is left out).
CHARTED = (
    ("calls", "calls"),
    ("tokens in", "tokens in"),
    ("tokens out", "tokens out"),
    ("cost", "cost ($)"),
    ("time s", "time (s)"),
    ("errors", "check errors"),
    ("warnings", "check warnings"),
    ("score", "score (of 5)"),
    ("eval calls", "judge calls"),
    ("eval cost", "judge cost ($)"),
)


@dataclass
class _Paper:
    state: str = "waiting"
    calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float | None = 0.0
    seconds: float = 0.0
    note: str = ""


class BatchView:
    """The batch as it runs: a progress bar, and a row per paper (waiting, running, then its outcome).

    A sink of the batch's events (called from its threads); `html()` is what the widget shows."""

    def __init__(self) -> None:
        self.papers: dict[str, _Paper] = {}
        self.total = 0
        self.done = 0
        self.out = ""
        self.finished = False
        self._lock = threading.Lock()
        self.bar = widgets.IntProgress(value=0, min=0, max=1, description="papers")
        self.table = widgets.HTML(value=self.html())
        self.widget = widgets.VBox([self.bar, self.table])

    def __call__(self, event: Event) -> None:
        with self._lock:
            if isinstance(event, BatchStarted):
                self.total, self.out = event.papers, event.out
            elif isinstance(event, PaperStarted):
                self.papers.setdefault(event.name, _Paper()).state = "running"
            elif isinstance(event, PaperFinished) and event.result is not None:
                row = event.result
                self.papers[row.name] = _Paper(
                    row.state + (" (kept)" if row.skipped else ""),
                    row.calls + row.eval_calls,
                    row.prompt_tokens + row.eval_prompt_tokens,
                    row.completion_tokens + row.eval_completion_tokens,
                    row.all_cost,
                    row.seconds,
                    row.error.splitlines()[0][:200] if row.error else "",
                )
                self.done, self.total = event.done, event.total
            elif isinstance(event, BatchFinished):
                self.finished = True
            else:
                return
            self.bar.max = max(1, self.total)
            self.bar.value = self.done
            self.table.value = self.html()

    def html(self) -> str:
        head = f"{self.done} of {self.total} papers over" + (" — finished" if self.finished else "")
        if self.out:
            head += f" · {html.escape(self.out)}"
        cells = "".join(f"<th>{c}</th>" for c in ("paper", "state", "calls", "tokens in", "tokens out", "cost", "time"))
        rows = []
        for name, paper in self.papers.items():
            cost = "unknown" if paper.cost is None else f"${paper.cost:.4f}"
            note = f"<br><small>{html.escape(paper.note)}</small>" if paper.note else ""
            values = (
                f"{html.escape(name)}",
                f"{html.escape(paper.state)}{note}",
                f"{paper.calls}",
                f"{paper.tokens_in:,}",
                f"{paper.tokens_out:,}",
                cost,
                f"{paper.seconds:.1f} s",
            )
            rows.append("<tr>" + "".join(f"<td>{v}</td>" for v in values) + "</tr>")
        return f"<div class='p2c-batch'><p>{head}</p><table><tr>{cells}</tr>{''.join(rows)}</table></div>"


# ------------------------------------------------------------------------------------------------ the summary
def read_summary(folder: Path | str) -> list[dict[str, str]]:
    """The rows of a batch folder's summary.csv (the totals row last)."""
    text = (Path(folder) / SUMMARY_CSV).read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def chart_svg(rows: list[dict[str, str]], column: str, title: str, width: int = 360) -> str:
    """One horizontal bar per paper (the totals row left out) of `column`; an empty cell draws no bar."""
    papers = [r for r in rows if r.get("paper") != "total"]
    values = [_number(r.get(column, "")) for r in papers]
    top = max((v for v in values if v is not None), default=0.0) or 1.0
    bar, label = 16, 110
    height = 24 + bar * len(papers) + 6
    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img' "
        f"aria-label='{html.escape(title, quote=True)}'>",
        f"<text x='0' y='14' font-size='12' font-weight='bold'>{html.escape(title)}</text>",
    ]
    for i, (row, value) in enumerate(zip(papers, values, strict=True)):
        y = 22 + i * bar
        name = html.escape(row.get("paper", "")[:18])
        parts.append(f"<text x='0' y='{y + 12}' font-size='11'>{name}</text>")
        if value is not None:
            length = (width - label - 70) * max(0.0, value) / top
            shown = f"{value:,.4f}" if "cost" in column else f"{value:,.2f}".rstrip("0").rstrip(".")
            parts.append(f"<rect x='{label}' y='{y + 2}' width='{length:.1f}' height='{bar - 4}' fill='#4c78a8'/>")
            parts.append(f"<text x='{label + length + 4:.1f}' y='{y + 12}' font-size='11'>{shown}</text>")
    parts.append("</svg>")
    return "".join(parts)


def summary_charts(rows: list[dict[str, str]]) -> str:
    """Every charted figure the summary has, side by side (HTML of SVG charts)."""
    charts = [chart_svg(rows, column, title) for column, title in CHARTED if rows and column in rows[0]]
    return "<div style='display:flex;flex-wrap:wrap;gap:12px'>" + "".join(charts) + "</div>"


def summary_table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "<p>The summary is empty.</p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v or '')}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


@dataclass(frozen=True)
class SummaryView:
    """The summary's table and charts; a notebook shows it as HTML (`_repr_html_`)."""

    rows: list[dict[str, str]]

    def _repr_html_(self) -> str:
        return summary_table(self.rows) + summary_charts(self.rows)


def show_summary(folder: Path | str) -> SummaryView:
    """The summary of the batch folder `folder`, as one notebook output."""
    return SummaryView(read_summary(folder))
