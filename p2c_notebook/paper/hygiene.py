"""Text hygiene for text taken from a PDF: characters a model would misread, and text that would read as Markdown.

- Ligatures (U+FB00-FB06) and mathematical alphanumerics (U+1D400-1D7FF, e.g. bold 𝐱) become plain letters.
- TeX fonts without a Unicode map decode some glyphs as arrows and dingbats: in a text font "E↵ect" is "Effect"
  (the ff ligature); in a math font "↵" is alpha. Both are mapped back.
- A body line that starts with `#`, `>` or `|` (a table header such as "# Epochs") is escaped, so it never turns
  into a Markdown heading, quote or table in the prompt.
"""

from __future__ import annotations

import re
import unicodedata

# Glyphs of TeX's math italic/symbol fonts as MuPDF decodes them when the PDF has no Unicode map.
_MATH_GLYPHS = str.maketrans(
    {
        "\u21b5": "α",  # ↵
        "\u2713": "θ",  # ✓
        "\u270f": "ε",  # ✏
        "\u21e3": "ζ",  # ⇣
        "\u21e1": "≈",  # ⇡
        "\u21e4": "*",  # ⇤
    }
)
_TEXT_GLYPHS = {"\u21b5": "ff", "\u21e4": "*"}  # ↵ is the ff ligature in a text font; ⇤ the footnote star
_FOLDED = re.compile("[\ufb00-\ufb06\U0001d400-\U0001d7ff]")
_MARKDOWN_START = re.compile(r"^([#>|])")


def fold(text: str) -> str:
    """Ligatures and mathematical alphanumerics as plain letters; everything else unchanged."""
    return _FOLDED.sub(lambda m: unicodedata.normalize("NFKC", m.group(0)), text)


def repair_glyphs(text: str, math_font: bool) -> str:
    """Undo the arrow/dingbat decoding of TeX glyphs, as math symbols in a math font, as letters otherwise."""
    if math_font:
        return text.translate(_MATH_GLYPHS)
    for glyph, letters in _TEXT_GLYPHS.items():
        if glyph in text:
            text = text.replace(glyph, letters)
    return text


def escape_markdown(paragraph: str) -> str:
    """Escape a paragraph's leading `#`, `>` or `|` so that body text is never read as Markdown structure."""
    return _MARKDOWN_START.sub(r"\\\1", paragraph)


def markdown_table(rows: list[list[str]]) -> str:
    """Cells as a Markdown table, the first row as its header; `|` inside a cell is escaped."""
    width = max(len(r) for r in rows)
    cells = [[c.replace("|", "\\|").strip() for c in r] + [""] * (width - len(r)) for r in rows]
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + " --- |" * width]
    lines.extend("| " + " | ".join(r) + " |" for r in cells[1:])
    return "\n".join(lines)
