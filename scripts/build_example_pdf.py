"""Build the PDF of the project's example paper from its LaTeX source, with pymupdf alone (no TeX).

Only the LaTeX subset that `examples/mixup/paper.tex` uses is understood: title, author, abstract,
numbered sections and subsections, equation and align, table (tabular), figure (with an \\fbox
placeholder), caption, itemize, enumerate, textbf, emph, cite, ref, thebibliography and inline $math$.
Mathematics is written as plain Unicode text (\\alpha -> α, \\frac{a+b}{c} -> (a+b)/c, with _ and ^
kept), and numbered display equations end with their number on the same text line, e.g.
"λ ∼ Beta(α, α)    (4)", so that the PDF has a readable text layer.

The pages are US letter in two columns, the title block spans both columns on page 1, and the output is
byte-for-byte deterministic. `python scripts/build_example_pdf.py` rebuilds examples/mixup/paper.pdf.
"""

from __future__ import annotations

import argparse
import html
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymupdf as _pymupdf

from p2c_notebook.errors import PaperError

pymupdf: Any = _pymupdf  # untyped library: keep its calls out of mypy's strict checks

__all__ = ["build_pdf", "main", "math_to_text", "render_pdf"]

# --- page geometry (points) -------------------------------------------------------------------------

PAGE = pymupdf.paper_rect("letter")
MARGIN_X = 54.0
MARGIN_TOP = 54.0
MARGIN_BOTTOM = 60.0
GUTTER = 18.0
COLUMN_WIDTH = (PAGE.width - 2 * MARGIN_X - GUTTER) / 2
BODY_SIZE = 10.0  # pt, as in the CSS below
FIXED_DATE = "D:20240101000000Z"  # metadata dates: fixed so that the same source gives the same bytes
_FILE_ID = "7032632d6e6f7465626f6f6b2d70617065"  # fixed trailer /ID ("p2c-notebook-pape" in hex)

CSS = """
* { font-family: serif; }
body { margin: 0; padding: 0; font-size: 10pt; line-height: 1.25; }
h1.title { font-size: 17pt; font-weight: bold; text-align: center; margin: 6pt 0 10pt 0; }
p.author { font-size: 11pt; text-align: center; margin: 0 0 12pt 0; }
p.abshead { font-size: 10pt; font-weight: bold; text-align: center; margin: 0 0 4pt 0; }
p.abstract { font-size: 9.5pt; text-align: justify; margin: 0 48pt 6pt 48pt; }
h2 { font-size: 12pt; font-weight: bold; margin: 10pt 0 5pt 0; }
h3 { font-size: 10.5pt; font-weight: bold; margin: 8pt 0 4pt 0; }
p { margin: 0; text-align: justify; text-indent: 12pt; }
p.ni { text-indent: 0; }
p.eq { text-indent: 0; white-space: pre; text-align: right; margin: 5pt 0 5pt 0; }
p.eqc { text-indent: 0; white-space: pre; text-align: center; margin: 5pt 0 5pt 0; }
p.eqlong { text-indent: 0; text-align: center; margin: 5pt 0 5pt 0; }
p.caption { text-indent: 0; font-size: 9pt; text-align: justify; margin: 6pt 0 8pt 0; }
p.box { text-indent: 0; font-size: 9pt; text-align: center; border: 0.6pt solid black;
        padding: 8pt 6pt 8pt 6pt; margin: 4pt 8pt 2pt 8pt; }
div.float { margin: 10pt 0 14pt 0; }
table.tab { margin-left: auto; margin-right: auto; border-collapse: collapse; font-size: 9pt; }
table.tab td { padding: 1.5pt 5pt 1.5pt 5pt; }
td.rule { border-top: 0.6pt solid black; }
td.l { text-align: left; }
td.c { text-align: center; }
td.r { text-align: right; }
ul, ol { margin: 3pt 0 3pt 0; padding-left: 16pt; }
li { text-align: justify; margin: 0 0 2pt 0; }
p.bib { text-indent: 0; font-size: 9pt; text-align: left; margin: 0 0 4pt 0; }
p.pagenum { text-indent: 0; text-align: center; font-size: 9pt; }
p.measure { text-indent: 0; white-space: pre; margin: 0; text-align: left; }
"""

# --- LaTeX -> text ----------------------------------------------------------------------------------

_MATH_SYMBOLS = {
    "alpha": "α", "beta": "β", "gamma": "γ", "delta": "δ", "epsilon": "ε", "varepsilon": "ε",
    "zeta": "ζ", "eta": "η", "theta": "θ", "vartheta": "ϑ", "iota": "ι", "kappa": "κ", "lambda": "λ",
    "mu": "μ", "nu": "ν", "xi": "ξ", "pi": "π", "rho": "ρ", "sigma": "σ", "tau": "τ", "phi": "φ",
    "varphi": "φ", "chi": "χ", "psi": "ψ", "omega": "ω", "Gamma": "Γ", "Delta": "Δ", "Theta": "Θ",
    "Lambda": "Λ", "Xi": "Ξ", "Pi": "Π", "Sigma": "Σ", "Phi": "Φ", "Psi": "Ψ", "Omega": "Ω",
    "sum": "Σ", "prod": "Π", "int": "∫", "nabla": "∇", "partial": "∂", "infty": "∞", "cdot": "·",
    "times": "×", "pm": "±", "mp": "∓", "leq": "≤", "le": "≤", "geq": "≥", "ge": "≥", "neq": "≠",
    "ne": "≠", "approx": "≈", "sim": "∼", "propto": "∝", "equiv": "≡", "in": "∈", "notin": "∉",
    "subset": "⊂", "subseteq": "⊆", "cup": "∪", "cap": "∩", "to": "→", "rightarrow": "→",
    "leftarrow": "←", "Rightarrow": "⇒", "mapsto": "↦", "ldots": "…", "cdots": "⋯", "dots": "…",
    "top": "⊤", "prime": "′", "mid": "|", "vert": "|", "lvert": "|", "rvert": "|", "Vert": "‖",
    "lVert": "‖", "rVert": "‖", "langle": "⟨", "rangle": "⟩", "forall": "∀", "exists": "∃",
    "odot": "⊙", "circ": "∘", "star": "⋆", "ell": "ℓ", "emptyset": "∅", "lfloor": "⌊", "rfloor": "⌋",
    "lceil": "⌈", "rceil": "⌉",
}  # fmt: skip
_MATH_FUNCTIONS = {
    "log", "ln", "exp", "max", "min", "arg", "argmax", "argmin", "sup", "inf", "lim", "sin", "cos",
    "tan", "tanh", "det", "dim", "Pr", "softmax",
}  # fmt: skip
_RELATIONS = {"≤", "≥", "≠", "≈", "∼", "∈", "∉", "→", "←", "⇒", "∝", "≡", "⊂", "⊆", "↦"}
_BLACKBOARD = {"R": "ℝ", "N": "ℕ", "Z": "ℤ", "Q": "ℚ", "C": "ℂ"}
_ACCENTS = {"tilde": "\u0303", "hat": "\u0302", "widehat": "\u0302", "widetilde": "\u0303", "bar": "\u0304",
            "overline": "\u0304", "dot": "\u0307", "ddot": "\u0308", "vec": "\u20d7"}  # fmt: skip
_MATH_STYLE = {"mathrm", "mathit", "mathbf", "mathsf", "mathtt", "boldsymbol", "bm", "mathcal", "mathscr",
               "mathfrak", "operatorname"}  # fmt: skip
_MATH_TEXT = {"text", "textrm", "textit", "textbf", "mbox", "textnormal"}
_DROP = {"left", "right", "big", "Big", "bigg", "Bigg", "bigl", "bigr", "Bigl", "Bigr", "displaystyle",
         "textstyle", "limits", "nolimits", "nonumber", "notag", "centering", "small", "footnotesize",
         "scriptsize", "normalsize", "large", "Large", "noindent", "hline", "toprule", "midrule",
         "bottomrule", "par", "maketitle", "newblock", "raggedright", "protect", "quad", "qquad"}  # fmt: skip
_TEXT_ESCAPES = {"%": "%", "&": "&", "_": "_", "#": "#", "$": "$", "{": "{", "}": "}", ",": " ", " ": " ",
                 ";": " ", ":": " ", "!": "", "|": "‖", "-": ""}  # fmt: skip
_SIMPLE_SCRIPT = re.compile(r"[\w.′⊤\u0300-\u036f\u20d7]+")
_LABEL = re.compile(r"\\label\s*\{([^{}]*)\}")
_SPACES = "|" + " " * 40 + "|"  # measured to know the width of one space


def _strip_comments(tex: str) -> str:
    """Drop % comments (an escaped \\% stays)."""
    return "\n".join(re.sub(r"(?<!\\)%.*", "", line) for line in tex.splitlines())


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\n":
        i += 1
    return i


def _group(text: str, i: int) -> tuple[str, int]:
    """Read a {braced} argument starting at text[i] (after optional spaces): (content, index after it).

    A missing brace reads a single token instead, as TeX does.
    """
    i = _skip_space(text, i)
    if i >= len(text):
        return "", i
    if text[i] != "{":
        if text[i] == "\\":
            m = re.match(r"\\([A-Za-z]+|.)", text[i:])
            token = m.group(0) if m else text[i]
            return token, i + len(token)
        return text[i], i + 1
    depth = 0
    for j in range(i, len(text)):
        ch = text[j]
        if ch == "\\":
            continue
        if ch == "{" and (j == 0 or text[j - 1] != "\\"):
            depth += 1
        elif ch == "}" and (j == 0 or text[j - 1] != "\\"):
            depth -= 1
            if depth == 0:
                return text[i + 1 : j], j + 1
    raise PaperError(f"Unbalanced braces in the LaTeX source near: {text[i : i + 60]!r}")


def _optional(text: str, i: int) -> int:
    """Skip an [optional] argument if there is one; return the index after it."""
    j = _skip_space(text, i)
    if j < len(text) and text[j] == "[":
        end = text.find("]", j)
        if end != -1:
            return end + 1
    return i


def _split_top(text: str, sep: str) -> list[str]:
    """Split on `sep` ('\\\\' or '&') outside braces, ignoring escaped ampersands."""
    parts: list[str] = []
    depth = 0
    start = 0
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and text.startswith(sep, i) and depth == 0 and sep == "\\\\":
            parts.append(text[start:i])
            i += 2
            start = i
            continue
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif sep == "&" and ch == "&" and depth == 0:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def math_to_text(tex: str) -> str:
    """Simple LaTeX math as readable Unicode text: \\alpha -> α, \\frac{a+b}{c d} -> (a+b)/(c d), x_{i} -> x_i.

    Fractions keep single tokens bare (\\frac{1}{B} -> 1/B); sub- and superscripts keep braces only around
    more than one token (\\theta_{t+1} -> θ_{t+1}).
    """
    text = _math(tex)
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"([(\[{]) ", r"\1", re.sub(r" ([)\]}])", r"\1", text))
    return text.replace("\x00", "  ")


def _script(content: str) -> str:
    return content if _SIMPLE_SCRIPT.fullmatch(content) else "{" + content + "}"


def _wrap(content: str) -> str:
    content = content.strip()
    simple = _SIMPLE_SCRIPT.fullmatch(content) or re.fullmatch(r"\|[^|\s]+\||\w*\([^()\s]+\)", content)
    return content if simple else "(" + content + ")"


def _math(tex: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(tex):
        ch = tex[i]
        if ch == "\\":
            m = re.match(r"\\([A-Za-z]+)\*?|\\(.)", tex[i:])
            if m is None:
                i += 1
                continue
            i += len(m.group(0))
            name = m.group(1)
            if name is None:
                sym = m.group(2)
                out.append(
                    {"{": "{", "}": "}", "|": "‖", "\\": " ", ",": " ", ";": " ", ":": " ", "!": ""}.get(sym, sym)
                )
                continue
            if name in ("left", "right") and i < len(tex) and tex[i] == ".":
                i += 1
                continue
            if name in ("quad", "qquad"):
                out.append(" \x00")
            elif name in _DROP or name == "label":
                if name == "label":
                    _, i = _group(tex, i)
            elif name in _MATH_SYMBOLS:
                sym = _MATH_SYMBOLS[name]
                out.append(f" {sym} " if sym in _RELATIONS else sym)
            elif name in _MATH_FUNCTIONS:
                out.append(name)
            elif name in ("frac", "dfrac", "tfrac"):
                num, i = _group(tex, i)
                den, i = _group(tex, i)
                out.append(_wrap(_math(num)) + "/" + _wrap(_math(den)))
            elif name == "sqrt":
                i = _optional(tex, i)
                arg, i = _group(tex, i)
                out.append("√" + _wrap(_math(arg)))
            elif name == "mathbb":
                arg, i = _group(tex, i)
                out.append(_BLACKBOARD.get(arg.strip(), arg.strip()))
            elif name in _ACCENTS:
                arg, i = _group(tex, i)
                inner = _math(arg).strip()
                out.append(inner + _ACCENTS[name] if len(inner) == 1 else f"{name}({inner})")
            elif name in _MATH_STYLE:
                arg, i = _group(tex, i)
                out.append(_math(arg))
            elif name in _MATH_TEXT:
                arg, i = _group(tex, i)
                out.append(_plain_text(arg))
            else:
                out.append(name)
        elif ch in "_^":
            arg, i = _group(tex, i + 1)
            out.append(ch + _script(_math(arg).strip()))
        elif ch in "{}&":
            if ch == "{":
                arg, i = _group(tex, i)
                out.append(_math(arg))
            else:
                i += 1
        elif ch == "-":
            out.append("−")
            i += 1
        elif ch == "~":
            out.append(" ")
            i += 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _plain_text(tex: str) -> str:
    """Text-mode LaTeX without markup (used inside \\text{} and for metadata)."""
    return re.sub(r"<[^>]+>", "", html.unescape(_Inline({}, {}).convert(tex))).replace("\u00a0", " ").strip()


class _Inline:
    """Text-mode LaTeX -> HTML, resolving \\cite and \\ref through the maps given."""

    def __init__(self, labels: dict[str, str], citations: dict[str, int]) -> None:
        self.labels = labels
        self.citations = citations

    def convert(self, tex: str) -> str:
        out: list[str] = []
        i = 0
        while i < len(tex):
            ch = tex[i]
            if ch == "$":
                end = i + 1
                while end < len(tex) and not (tex[end] == "$" and tex[end - 1] != "\\"):
                    end += 1
                out.append(html.escape(math_to_text(tex[i + 1 : end])))
                i = end + 1
            elif ch == "\\":
                i = self._command(tex, i, out)
            elif ch in "{}":
                i += 1
            elif ch == "~":
                out.append("\u00a0")
                i += 1
            elif tex.startswith("---", i):
                out.append("—")
                i += 3
            elif tex.startswith("--", i):
                out.append("–")
                i += 2
            elif tex.startswith("``", i):
                out.append("“")
                i += 2
            elif tex.startswith("''", i):
                out.append("”")
                i += 2
            elif ch in " \t\n":
                out.append(" ")
                i += 1
            else:
                out.append(html.escape(ch))
                i += 1
        text = re.sub(r" {2,}", " ", "".join(out))
        return text.strip()

    def _command(self, tex: str, i: int, out: list[str]) -> int:
        m = re.match(r"\\([A-Za-z]+)\*?|\\(.)", tex[i:], re.DOTALL)
        if m is None:
            return i + 1
        i += len(m.group(0))
        name = m.group(1)
        if name is None:
            sym = m.group(2)
            if sym == "\\":
                out.append("<br/>")
            else:
                out.append(html.escape(_TEXT_ESCAPES.get(sym, sym)))
            return i
        if name == "textbf":
            arg, i = _group(tex, i)
            out.append(f"<b>{self.convert(arg)}</b>")
        elif name in ("emph", "textit"):
            arg, i = _group(tex, i)
            out.append(f"<i>{self.convert(arg)}</i>")
        elif name in ("texttt", "url"):
            arg, i = _group(tex, i)
            out.append(f"<tt>{html.escape(arg)}</tt>")
        elif name == "cite":
            i = _optional(tex, i)
            arg, i = _group(tex, i)
            numbers = [str(self.citations.get(key.strip(), "?")) for key in arg.split(",")]
            out.append("[" + ", ".join(numbers) + "]")
        elif name in ("ref", "eqref"):
            arg, i = _group(tex, i)
            number = self.labels.get(arg.strip(), "??")
            out.append(f"({number})" if name == "eqref" else number)
        elif name == "parbox":
            i = _optional(tex, i)
            i = _optional(tex, i)
            i = _optional(tex, i)
            _, i = _group(tex, i)
            arg, i = _group(tex, i)
            out.append(self.convert(arg))
        elif name in ("label", "vspace", "hspace", "includegraphics", "footnote", "thanks"):
            i = _optional(tex, i)
            _, i = _group(tex, i)
        elif name in _DROP:
            if name in ("quad", "qquad"):
                out.append(" ")
        elif name in ("LaTeX", "TeX"):
            out.append(name)
        elif name in ("ldots", "dots"):
            out.append("…")
        else:
            j = _skip_space(tex, i)
            if j < len(tex) and tex[j] == "{":
                arg, i = _group(tex, j)
                out.append(self.convert(arg))
        return i


# --- document structure -----------------------------------------------------------------------------


@dataclass
class _Heading:
    level: int
    number: str | None
    title: str


@dataclass
class _Para:
    tex: str
    indent: bool = True


@dataclass
class _Equation:
    lines: list[tuple[str, str | None]]  # (math source, number or None)


@dataclass
class _List:
    ordered: bool
    items: list[str]


@dataclass
class _Float:
    kind: str  # "table" | "figure"
    number: int
    parts: list[tuple[str, Any]] = field(default_factory=list)  # ("caption", tex) | ("tabular", rows) | ("box", tex)


@dataclass
class _Bibliography:
    items: list[tuple[str, str]]


_Block = _Heading | _Para | _Equation | _List | _Float | _Bibliography


@dataclass
class _Document:
    title: str = ""
    author: str = ""
    abstract: str = ""
    blocks: list[_Block] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    citations: dict[str, int] = field(default_factory=dict)


_STRUCTURE = re.compile(r"\\(section|subsection|subsubsection)(\*?)\s*\{|\\begin\s*\{([A-Za-z]+\*?)\}")


class _Parser:
    def __init__(self) -> None:
        self.doc = _Document()
        self.section = 0
        self.subsection = 0
        self.equation = 0
        self.counters = {"table": 0, "figure": 0}
        self.target = ""  # what a \label refers to right now

    def parse(self, tex: str) -> _Document:
        tex = _strip_comments(tex)
        for name in ("title", "author"):
            m = re.search(r"\\" + name + r"\s*(?=[\[{])", tex)
            if m:
                arg, _ = _group(tex, _optional(tex, m.end()))
                setattr(self.doc, name, arg.strip())
        begin = tex.find("\\begin{document}")
        end = tex.rfind("\\end{document}")
        if begin == -1:
            raise PaperError("The LaTeX source has no \\begin{document}.")
        body = tex[begin + len("\\begin{document}") : end if end != -1 else len(tex)]
        for key in re.findall(r"\\bibitem\s*(?:\[[^\]]*\])?\s*\{([^{}]*)\}", body):
            self.doc.citations.setdefault(key.strip(), len(self.doc.citations) + 1)
        self._blocks(body)
        return self.doc

    def _take_labels(self, tex: str, target: str) -> str:
        for key in _LABEL.findall(tex):
            self.doc.labels[key.strip()] = target
        return _LABEL.sub("", tex)

    def _text(self, tex: str, after_block: bool) -> None:
        chunks = re.split(r"\n\s*\n", tex)
        for index, chunk in enumerate(chunks):
            chunk = self._take_labels(chunk, self.target)
            chunk = re.sub(r"\\(maketitle|centering|noindent)\b", "", chunk)
            if not chunk.strip():
                continue
            continuation = index == 0 and after_block and not re.match(r"\s*\n\s*\n", tex)
            previous = self.doc.blocks[-1] if self.doc.blocks else None
            indent = not continuation and not isinstance(previous, _Heading)
            self.doc.blocks.append(_Para(chunk.strip(), indent=indent))

    def _blocks(self, body: str) -> None:
        pos = 0
        after_block = False
        while True:
            m = _STRUCTURE.search(body, pos)
            if m is None:
                self._text(body[pos:], after_block)
                return
            self._text(body[pos : m.start()], after_block)
            if m.group(1):
                title, pos = _group(body, m.end() - 1)
                self._heading(m.group(1), bool(m.group(2)), title)
                after_block = False
                continue
            env = m.group(3)
            inner, pos = self._environment(body, m.end(), env)
            self._env(env, inner)
            after_block = True

    def _environment(self, body: str, start: int, env: str) -> tuple[str, int]:
        pattern = re.compile(r"\\(begin|end)\s*\{" + re.escape(env) + r"\}")
        depth = 1
        for m in pattern.finditer(body, start):
            depth += 1 if m.group(1) == "begin" else -1
            if depth == 0:
                return body[start : m.start()], m.end()
        raise PaperError(f"\\begin{{{env}}} has no matching \\end{{{env}}}.")

    def _heading(self, kind: str, starred: bool, title: str) -> None:
        level = {"section": 1, "subsection": 2}.get(kind, 3)
        number: str | None = None
        if not starred and level == 1:
            self.section += 1
            self.subsection = 0
            number = str(self.section)
        elif not starred and level == 2:
            self.subsection += 1
            number = f"{self.section}.{self.subsection}"
        if number:
            self.target = number
        self.doc.blocks.append(_Heading(level, number, title.strip()))

    def _env(self, env: str, inner: str) -> None:
        name = env.rstrip("*")
        if name == "abstract":
            self.doc.abstract = inner.strip()
        elif name in ("equation", "align", "gather", "multline", "eqnarray", "displaymath"):
            numbered = not env.endswith("*") and name != "displaymath"
            self.doc.blocks.append(self._equation(inner, numbered, split=name != "equation"))
        elif name in ("itemize", "enumerate"):
            items = re.split(r"\\item\b\s*(?:\[[^\]]*\])?", inner)[1:]
            self.doc.blocks.append(_List(name == "enumerate", [self._take_labels(t, self.target) for t in items]))
        elif name in ("table", "figure"):
            self.doc.blocks.append(self._float(name, inner))
        elif name == "thebibliography":
            _, start = _group(inner, 0)
            pieces = re.split(r"\\bibitem\s*(?:\[[^\]]*\])?\s*\{([^{}]*)\}", inner[start:])
            entries = [(str(pieces[k]).strip(), str(pieces[k + 1]).strip()) for k in range(1, len(pieces) - 1, 2)]
            self.doc.blocks.append(_Bibliography(entries))
        else:
            self._blocks(inner)

    def _equation(self, inner: str, numbered: bool, split: bool) -> _Equation:
        lines: list[tuple[str, str | None]] = []
        for raw in _split_top(inner, "\\\\") if split else [inner]:
            if not raw.strip():
                continue
            number: str | None = None
            if numbered and not re.search(r"\\(nonumber|notag)\b", raw):
                self.equation += 1
                number = str(self.equation)
            for key in _LABEL.findall(raw):
                self.doc.labels[key.strip()] = number or "??"
            lines.append((_LABEL.sub("", raw), number))
        return _Equation(lines)

    def _float(self, kind: str, inner: str) -> _Float:
        self.counters[kind] += 1
        block = _Float(kind, self.counters[kind])
        for key in _LABEL.findall(inner):
            self.doc.labels[key.strip()] = str(block.number)
        inner = _LABEL.sub("", inner)
        found: list[tuple[int, str, Any]] = []
        for m in re.finditer(r"\\caption\s*(?=[\[{])", inner):
            arg, _ = _group(inner, _optional(inner, m.end()))
            found.append((m.start(), "caption", arg))
        for m in re.finditer(r"\\begin\{tabular\}", inner):
            _, spec_end = _group(inner, _optional(inner, m.end()))
            spec = inner[m.end() : spec_end]
            body, _ = self._environment(inner, spec_end, "tabular")
            found.append((m.start(), "tabular", (_columns(spec), _rows(body))))
        for m in re.finditer(r"\\(fbox|framebox)\s*(?=[\[{])", inner):
            arg, _ = _group(inner, _optional(inner, m.end()))
            found.append((m.start(), "box", arg))
        for m in re.finditer(r"\\includegraphics\s*(?:\[[^\]]*\])?\s*\{([^{}]*)\}", inner):
            found.append((m.start(), "box", f"[image: {m.group(1)}]"))
        block.parts = [(kind_, value) for _, kind_, value in sorted(found, key=lambda item: item[0])]
        return block


def _columns(spec: str) -> list[str]:
    spec = re.sub(r"[p|@]\{[^{}]*\}|\|", "", spec)
    return [c for c in spec.replace(" ", "") if c in "lcr"]


def _rows(body: str) -> list[tuple[list[str], bool]]:
    """Rows of a tabular as (cells, rule above the row); a final rule shows as a row with no cells."""
    rows: list[tuple[list[str], bool]] = []
    rule = False
    for raw in _split_top(body, "\\\\"):
        text = raw.strip()
        while True:
            m = re.match(r"\\(hline|toprule|midrule|bottomrule)\s*", text)
            if m is None:
                break
            rule = True
            text = text[m.end() :]
        if text:
            rows.append(([cell.strip() for cell in _split_top(text, "&")], rule))
            rule = False
    if rule:
        rows.append(([], True))
    return rows


# --- HTML --------------------------------------------------------------------------------------------


class _Renderer:
    def __init__(self, doc: _Document) -> None:
        self.doc = doc
        self.inline = _Inline(doc.labels, doc.citations)
        self.equation_lines: list[str] = []
        self.widths: dict[str, float] = {}

    def header_html(self) -> str:
        parts = [f'<h1 class="title">{self.inline.convert(self.doc.title)}</h1>']
        if self.doc.author:
            parts.append(f'<p class="author">{self.inline.convert(self.doc.author)}</p>')
        if self.doc.abstract:
            parts.append('<p class="abshead">Abstract</p>')
            parts.append(f'<p class="abstract">{self.inline.convert(self.doc.abstract)}</p>')
        return "\n".join(parts)

    def body_html(self) -> str:
        texts = [math_to_text(src) for block in self.doc.blocks if isinstance(block, _Equation)
                 for src, _ in block.lines]  # fmt: skip
        numbers = [f"({block.lines[-1][1]})" for block in self.doc.blocks if isinstance(block, _Equation)]
        self.widths = _measure([*texts, *numbers, "(99)", _SPACES, "||"])
        return "\n".join(self._block(block) for block in self.doc.blocks)

    def _block(self, block: _Block) -> str:
        if isinstance(block, _Heading):
            tag = {1: "h2", 2: "h3"}.get(block.level, "h3")
            title = self.inline.convert(block.title)
            return f"<{tag}>{block.number} {title}</{tag}>" if block.number else f"<{tag}>{title}</{tag}>"
        if isinstance(block, _Para):
            cls = "" if block.indent else ' class="ni"'
            return f"<p{cls}>{self.inline.convert(block.tex)}</p>"
        if isinstance(block, _Equation):
            return "\n".join(self._equation_line(src, number) for src, number in block.lines)
        if isinstance(block, _List):
            tag = "ol" if block.ordered else "ul"
            body = "".join(f"<li>{self.inline.convert(item)}</li>" for item in block.items)
            return f"<{tag}>{body}</{tag}>"
        if isinstance(block, _Float):
            return self._float(block)
        items: list[str] = []
        for key, text in block.items:
            number = self.doc.citations.get(key, len(items) + 1)
            items.append(f'<p class="bib">[{number}] {self.inline.convert(text)}</p>')
        return "<h2>References</h2>\n" + "\n".join(items)

    def _equation_line(self, src: str, number: str | None) -> str:
        """One display line: centred in the column, its number flush right on the same text line.

        The gap is made of spaces (white-space: pre), so the text layer reads "body    (n)". A line too
        wide for the column is set in a smaller font, down to 70%, and wraps beyond that.
        """
        text = math_to_text(src)
        body = html.escape(text)
        label = f"({number})" if number is not None else ""
        space = (self.widths.get(_SPACES, 100.0) - self.widths.get("||", 0.0)) / 40 or 2.5
        width = self.widths.get(text, 5.0 * len(text))
        label_width = self.widths.get(label, self.widths.get("(99)", 15.0)) if label else 0.0
        needed = width + (label_width + 3 * space if label else 0.0)
        # Numbered lines keep a visible indent, which is how readers tell a display from a text line.
        target = (0.88 if label else 0.96) * COLUMN_WIDTH
        scale = min(1.0, target / needed) if needed > 0 else 1.0
        if scale < 0.7:
            return f'<p class="eqlong">{body}   {label}</p>'
        style = f' style="font-size: {int(BODY_SIZE * scale * 10) / 10:.1f}pt"' if scale < 1.0 else ""
        if not label:
            return f'<p class="eqc"{style}>{body}</p>'
        gap = max((COLUMN_WIDTH - width * scale) / 2 - label_width * scale, 2 * space * scale)
        return f'<p class="eq"{style}>{body}{" " * max(2, round(gap / (space * scale)))}{label}</p>'

    def _float(self, block: _Float) -> str:
        name = "Table" if block.kind == "table" else "Figure"
        parts = []
        for kind, value in block.parts:
            if kind == "caption":
                parts.append(f'<p class="caption">{name} {block.number}: {self.inline.convert(value)}</p>')
            elif kind == "box":
                parts.append(f'<p class="box">{self.inline.convert(value)}</p>')
            elif kind == "tabular":
                parts.append(self._tabular(*value))
        return '<div class="float">' + "\n".join(parts) + "</div>"

    def _tabular(self, columns: list[str], rows: list[tuple[list[str], bool]]) -> str:
        out = ['<table class="tab">']
        width = max([len(columns)] + [len(cells) for cells, _ in rows])
        for cells, rule in rows:
            if not cells:  # closing rule: an empty, thin row carrying the top border
                out.append("<tr>" + "".join('<td class="rule"></td>' for _ in range(width)) + "</tr>")
                continue
            cells = cells + [""] * (width - len(cells))
            tds = []
            for index, cell in enumerate(cells):
                align = columns[index] if index < len(columns) else "l"
                cls = f"{align} rule" if rule else align
                tds.append(f'<td class="{cls}">{self.inline.convert(cell)}</td>')
            out.append("<tr>" + "".join(tds) + "</tr>")
        out.append("</table>")
        return "\n".join(out)


def _measure(texts: Sequence[str]) -> dict[str, float]:
    """Widths (points) of single-line texts, set with the document's own CSS and fonts."""
    unique = list(dict.fromkeys(t for t in texts if t))
    if not unique:
        return {}
    line = 16.0
    rect = pymupdf.Rect(0, 0, 4000, line * (len(unique) + 2) * 2)
    markup = "".join(f'<p class="measure">{html.escape(t)}</p>' for t in unique)
    buffer = io.BytesIO()
    writer = pymupdf.DocumentWriter(buffer)
    story = pymupdf.Story(markup, user_css=CSS)
    device = writer.begin_page(rect)
    story.place(rect)
    story.draw(device)
    writer.end_page()
    writer.close()
    with pymupdf.open("pdf", buffer.getvalue()) as scratch:
        rows: dict[int, list[float]] = {}
        for block in scratch[0].get_text("dict")["blocks"]:
            for text_line in block.get("lines", []):
                x0, y0, x1, y1 = text_line["bbox"]
                key = round((y0 + y1) / 2)
                span = rows.setdefault(key, [x0, x1])
                span[0], span[1] = min(span[0], x0), max(span[1], x1)
    widths = [x1 - x0 for _, (x0, x1) in sorted(rows.items())]
    if len(widths) != len(unique):
        return {}
    return dict(zip(unique, widths, strict=True))


# --- layout ------------------------------------------------------------------------------------------


def _columns_for(top: float) -> list[pymupdf.Rect]:
    bottom = PAGE.height - MARGIN_BOTTOM
    left = pymupdf.Rect(MARGIN_X, top, MARGIN_X + COLUMN_WIDTH, bottom)
    right = pymupdf.Rect(PAGE.width - MARGIN_X - COLUMN_WIDTH, top, PAGE.width - MARGIN_X, bottom)
    return [left, right]


def _page_number(device: Any, number: int) -> None:
    story = pymupdf.Story(f'<p class="pagenum">{number}</p>', user_css=CSS)
    rect = pymupdf.Rect(MARGIN_X, PAGE.height - MARGIN_BOTTOM + 22, PAGE.width - MARGIN_X, PAGE.height - 10)
    story.place(rect)
    story.draw(device)


def _layout(header: str, body: str) -> bytes:
    buffer = io.BytesIO()
    writer = pymupdf.DocumentWriter(buffer)
    head_story = pymupdf.Story(header, user_css=CSS)
    body_story = pymupdf.Story(body, user_css=CSS)
    page_number = 0
    more = True
    while more:
        page_number += 1
        if page_number > 200:
            raise PaperError("The example paper did not fit in 200 pages; is a table or equation too wide?")
        device = writer.begin_page(PAGE)
        top = MARGIN_TOP
        if page_number == 1:
            head_rect = pymupdf.Rect(MARGIN_X, MARGIN_TOP, PAGE.width - MARGIN_X, PAGE.height / 2)
            _, filled = head_story.place(head_rect)
            head_story.draw(device)
            top = pymupdf.Rect(filled).y1 + 14
        for column in _columns_for(top):
            status, _ = body_story.place(column)
            body_story.draw(device)
            more = bool(status)
            if not more:
                break
        _page_number(device, page_number)
        writer.end_page()
    writer.close()
    return buffer.getvalue()


def _finish(raw: bytes, doc: _Document) -> bytes:
    """Fixed metadata and file identifier, compressed: the same source always gives the same bytes."""
    with pymupdf.open("pdf", raw) as pdf:
        pdf.set_metadata(
            {
                "title": _plain_text(doc.title),
                "author": _plain_text(doc.author.split("\\\\")[0]),
                "subject": "Example paper of p2c-notebook",
                "keywords": "mixup, calibration, MLP",
                "creator": "p2c-notebook scripts/build_example_pdf.py",
                "producer": "PyMuPDF",
                "creationDate": FIXED_DATE,
                "modDate": FIXED_DATE,
            }
        )
        pdf.subset_fonts()
        pdf.xref_set_key(-1, "ID", f"[<{_FILE_ID}><{_FILE_ID}>]")
        data: bytes = pdf.tobytes(garbage=3, deflate=True, no_new_id=True)
    return data


def render_pdf(tex: str) -> bytes:
    """The PDF bytes for LaTeX source `tex` (the example paper's subset of LaTeX)."""
    doc = _Parser().parse(tex)
    if not doc.title:
        raise PaperError("The LaTeX source has no \\title{...}.")
    renderer = _Renderer(doc)
    return _finish(_layout(renderer.header_html(), renderer.body_html()), doc)


def build_pdf(tex_path: str | Path, pdf_path: str | Path) -> Path:
    """Render the LaTeX file `tex_path` to a two-column PDF at `pdf_path`; returns the PDF path."""
    source = Path(tex_path)
    try:
        tex = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise PaperError(f"Cannot read the LaTeX source {source}: {exc.strerror or exc}.") from None
    target = Path(pdf_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(render_pdf(tex))
    return target


def _repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def main(argv: Sequence[str] | None = None, echo: Callable[[str], None] = print) -> int:
    """Command line: rebuild examples/mixup/paper.pdf (or --tex SOURCE --out PDF)."""
    example = _repo_root() / "examples" / "mixup"
    parser = argparse.ArgumentParser(
        prog="python scripts/build_example_pdf.py", description="Render the example paper to PDF."
    )
    parser.add_argument("--tex", type=Path, default=example / "paper.tex", help="LaTeX source")
    parser.add_argument("--out", type=Path, default=example / "paper.pdf", help="PDF to write")
    args = parser.parse_args(argv)
    echo(str(build_pdf(args.tex, args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
