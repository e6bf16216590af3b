"""s2orc JSON reader: the reference implementation's cleaned form and raw s2orc (with cite/eq spans)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from p2c_notebook.errors import PaperError
from p2c_notebook.paper.model import Caption, Paper, Section
from p2c_notebook.paper.text import ACKNOWLEDGEMENTS, REFERENCES, decode_text, heading_kind, match_caption


def _shape_error(name: str, detail: str) -> PaperError:
    return PaperError(
        f"{name} is JSON but not an s2orc paper ({detail}): expected keys title, abstract and "
        "pdf_parse.body_text[{text, section, sec_num}]. Convert the PDF with s2orc-doc2json, "
        "or pass the PDF itself."
    )


def _paragraph_text(paragraph: dict[str, Any], equations: list[str]) -> str:
    """A body paragraph's text with "EQUATION" placeholders replaced by the raw equation strings."""
    text = str(paragraph.get("text") or "")
    spans = paragraph.get("eq_spans")
    spans = (
        [s for s in spans if isinstance(s, dict) and str(s.get("raw_str") or "").strip()]
        if isinstance(spans, list)
        else []
    )
    spans.sort(key=lambda s: s.get("start") if isinstance(s.get("start"), int) else 0)
    rendered = [f"{str(s['raw_str']).strip()} {str(s.get('eq_num') or '').strip()}".strip() for s in spans]
    equations.extend(rendered)
    for span, equation in reversed(list(zip(spans, rendered, strict=True))):
        start, end = span.get("start"), span.get("end")
        if isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= len(text):
            text = text[:start] + equation + text[end:]
    return "[equation]" if text.strip() == "EQUATION" else text


def _sections(body: list[Any], equations: list[str], dropped: list[str]) -> list[Section]:
    """Group consecutive paragraphs that share a section heading and number."""
    sections: list[Section] = []
    key: tuple[str, str | None] | None = None
    skipping = False
    for paragraph in body:
        if not isinstance(paragraph, dict):
            continue
        heading = str(paragraph.get("section") or "").strip()
        number = paragraph.get("sec_num")
        number = str(number).strip() if number not in (None, "") else None
        text = _paragraph_text(paragraph, equations).strip()
        if heading and (heading, number) != key:
            key = (heading, number)
            kind = heading_kind(heading)
            skipping = kind in (REFERENCES, ACKNOWLEDGEMENTS)
            if skipping:
                if kind and kind not in dropped:
                    dropped.append(kind)
                continue
            if number:
                level = number.count(".") + 1
            elif sections and sections[-1].number:
                level = min(sections[-1].level + 1, 3)
            else:
                level = 1
            sections.append(Section(heading=heading, number=number, level=level, text=text))
            continue
        if skipping or not text:
            continue
        if not sections:
            sections.append(Section(heading="Text"))
        current = sections[-1]
        current.text = f"{current.text}\n\n{text}" if current.text else text
    return sections


def _captions(entries: Any) -> list[Caption]:
    """Figure and table ref_entries that have caption text, labelled "Figure 2" / "Table 1"."""
    captions: list[Caption] = []
    if not isinstance(entries, dict):
        return captions
    counters = {"figure": 0, "table": 0}
    for key in sorted(entries, key=lambda k: (re.sub(r"\d+", "", str(k)), int(re.sub(r"\D", "", k) or 0))):
        entry = entries[key]
        if not isinstance(entry, dict):
            continue
        kind = str(entry.get("type_str") or "").lower()
        if kind not in counters:
            continue
        counters[kind] += 1
        text = str(entry.get("text") or "").strip()
        if not text:
            continue
        parsed = match_caption(text)
        number = entry.get("fig_num") or entry.get("num") or counters[kind]
        label = parsed[1] if parsed else f"{kind.capitalize()} {number}"
        captions.append(Caption(kind=kind, label=label, text=parsed[2] if parsed else text))
    return captions


def _abstract(document: dict[str, Any], parse: dict[str, Any]) -> str:
    if isinstance(document.get("abstract"), str) and document["abstract"].strip():
        return str(document["abstract"]).strip()
    paragraphs = parse.get("abstract")
    if isinstance(paragraphs, list):
        texts = [str(p.get("text") or "").strip() for p in paragraphs if isinstance(p, dict)]
        return "\n\n".join(t for t in texts if t)
    return str(paragraphs or "").strip()


def _title(title: str) -> str:
    """Drop a notice that PDF parsers glue before long titles ("Provided proper attribution ... works.")."""
    parts = re.split(r"(?<=[a-z])\.\s+(?=[A-Z])", title)
    if len(title.split()) > 20 and len(parts) > 1 and 2 <= len(parts[-1].split()) <= 20:
        return parts[-1].strip()
    return title


def read_s2orc(path: Path) -> Paper:
    """Read an s2orc JSON file (cleaned or raw) into a Paper."""
    text = decode_text(path.read_bytes(), path.name, "JSON")
    if not text.strip():
        raise PaperError(f"{path.name} is empty: export the paper to s2orc JSON again, or pass the PDF.")
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise PaperError(f"{path.name} is not valid JSON ({exc}): re-export it, or pass the PDF instead.") from exc
    if not isinstance(document, dict):
        raise _shape_error(path.name, f"top level is a {type(document).__name__}, not an object")
    parse = document.get("pdf_parse", document)
    if not isinstance(parse, dict) or not isinstance(parse.get("body_text"), list):
        raise _shape_error(path.name, "no pdf_parse.body_text list")
    equations: list[str] = []
    dropped: list[str] = []
    sections = _sections(parse["body_text"], equations, dropped)
    back = parse.get("back_matter")
    for entry in back if isinstance(back, list) else []:
        kind = heading_kind(str(entry.get("section") or "")) if isinstance(entry, dict) else None
        name = kind if kind in (ACKNOWLEDGEMENTS, REFERENCES) else "back matter"
        if name not in dropped:
            dropped.append(name)
    if parse.get("bib_entries") and REFERENCES not in dropped:
        dropped.append(REFERENCES)
    title = _title(str(document.get("title") or parse.get("title") or "").strip()) or path.stem
    if not sections and not _abstract(document, parse):
        raise _shape_error(path.name, "body_text and abstract are empty")
    return Paper(
        title=title,
        abstract=_abstract(document, parse),
        sections=sections,
        equations=equations,
        captions=_captions(parse.get("ref_entries")),
        source=path.name,
        source_format="s2orc",
        dropped=dropped,
    )
