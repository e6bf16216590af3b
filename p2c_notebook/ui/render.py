"""Safe HTML for the widgets: every piece of model or user text is escaped before it becomes markup.

Nothing here imports ipywidgets, so the magics can use it in a terminal IPython too.
"""

from __future__ import annotations

import base64
import functools
import html
import re
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from p2c_notebook.run.usage import Usage
from p2c_notebook.settings import Settings
from p2c_notebook.stages import registry
from p2c_notebook.stages.artifacts import ArchitectureDesign, LogicDesign

_SLUG = re.compile(r"[^A-Za-z0-9_]+")


def esc(text: str) -> str:
    return html.escape(text, quote=True)


def shown_url(url: str | None) -> str:
    """A base URL fit to print: credentials inside it (user:password@) are masked."""
    if not url:
        return "default"
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def backend_label(settings: Settings) -> str:
    """Which model actually answers, without starting it (a scripted run does not use `settings.model`)."""
    kind, _, arg = settings.backend.partition(":")
    if kind == "scripted":
        return f"scripted replies ({Path(arg).name})"
    if kind == "replay":
        return f"replay of {Path(arg).name}"
    if kind == "local" or (kind == "auto" and not settings.base_url and not settings.api_key):
        return f"local model {arg}".strip()
    return f"{settings.model} at {shown_url(settings.base_url)}"


def slug(artifact: str) -> str:
    """A CSS-class-safe name: `code/models/net.py` -> `code-models-net-py`."""
    return _SLUG.sub("-", artifact).strip("-") or "artifact"


def title_of(artifact: str) -> str:
    """A panel's heading: its stage's title (`Stage.label`), and the file for a per-file stage."""
    if artifact == registry.PAPER:
        return "Paper"
    name, _, path = artifact.partition("/")
    stage = registry.find(name)
    title = stage.title if stage is not None else name
    return f"{title}: {path}" if path else title


def usage_line(usage: Usage) -> str:
    if not usage.calls:
        return ""
    calls = f"{usage.calls} call" + ("s" if usage.calls != 1 else "")
    return f"{calls}, {usage.describe()}"


def one_line(text: str, limit: int = 400) -> str:
    """Error messages for a panel: whitespace collapsed, cut to a readable length."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def unexpected(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return one_line(f"Unexpected error ({type(exc).__name__}){': ' + first if first else ''}")


# --- code -----------------------------------------------------------------------------------------
def highlight(code: str, filename: str = "", language: str = "") -> str:
    """Syntax-highlighted HTML (Pygments escapes the text); a plain escaped <pre> without Pygments."""
    try:
        from pygments import highlight as pyg_highlight  # type: ignore[import-untyped]
    except ImportError:
        return f'<pre class="p2c-code">{esc(code)}</pre>'
    result: str = pyg_highlight(code, _lexer(language, Path(filename or "x.txt").suffix), _formatter())
    return result


@functools.lru_cache(maxsize=64)
def _lexer(language: str, suffix: str) -> Any:
    """Finding a lexer by file name scans every lexer Pygments has: once per kind of file is enough."""
    from pygments.lexers import TextLexer, get_lexer_by_name, get_lexer_for_filename  # type: ignore[import-untyped]
    from pygments.util import ClassNotFound  # type: ignore[import-untyped]

    from p2c_notebook.prompts.builder import language_for

    language = language or language_for(f"x{suffix}")  # by name: no scan of every lexer's file patterns
    try:
        return get_lexer_by_name(language) if language != "text" else get_lexer_for_filename(f"x{suffix}")
    except ClassNotFound:
        return TextLexer()


@functools.lru_cache(maxsize=1)
def _formatter() -> Any:
    from pygments.formatters import HtmlFormatter  # type: ignore[import-untyped]

    return HtmlFormatter(cssclass="p2c-highlight")


@functools.lru_cache(maxsize=1)
def stylesheet() -> str:
    """p2c.css (shipped as `p2c_notebook.assets`, or widgets/ in a checkout).

    Pygments' own style sheet is not added: its colours are for a light page (light background, dark text), so
    code was unreadable in a dark theme. p2c.css maps Pygments' token classes onto the theme's editor colours.
    """
    css = ""
    try:
        css = resources.files("p2c_notebook.assets").joinpath("p2c.css").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError, OSError):
        fallback = Path(__file__).resolve().parents[2] / "widgets" / "p2c.css"
        if fallback.is_file():
            css = fallback.read_text(encoding="utf-8")
    return css


# --- Markdown: CommonMark by markdown-it-py, raw HTML escaped (model text is untrusted) ---------------
_SAFE_SCHEMES = ("http", "https")


def _safe_link(url: str) -> bool:
    """Only web links stay links: javascript:, data:, file: and relative paths render as text."""
    return urlsplit(url.strip()).scheme.lower() in _SAFE_SCHEMES


def _fence(renderer: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
    token = tokens[idx]
    language = token.info.strip().split(maxsplit=1)[0] if token.info.strip() else ""
    if language:
        return highlight(token.content, language=language)
    return f'<pre class="p2c-code">{esc(token.content)}</pre>'


def _code_block(renderer: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
    return f'<pre class="p2c-code">{esc(tokens[idx].content)}</pre>'


def _link_open(renderer: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
    tokens[idx].attrSet("target", "_blank")
    tokens[idx].attrSet("rel", "noopener noreferrer")
    return str(renderer.renderToken(tokens, idx, options, env))


@functools.lru_cache(maxsize=1)
def _markdown() -> Any:
    """CommonMark with tables; `html: False` turns every tag in the text into visible text, images stay text (no
    request to an address a model wrote), and links open in a new tab without access to this page."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table").disable("image")
    md.validateLink = _safe_link  # type: ignore[method-assign]  # markdown-it-py's documented hook
    md.add_render_rule("fence", _fence)
    md.add_render_rule("code_block", _code_block)
    md.add_render_rule("link_open", _link_open)
    return md


def markdown_html(text: str) -> str:
    """Markdown to HTML where no input text can become a tag, attribute or script."""
    return '<div class="p2c-markdown">' + str(_markdown().render(text)) + "</div>"


# --- planning artifacts ------------------------------------------------------------------------------
def design_html(design: ArchitectureDesign) -> str:
    files = "".join(f"<li><code>{esc(f)}</code></li>" for f in design.file_list)
    parts = [
        "<h4>Implementation approach</h4>",
        markdown_html(design.implementation_approach),
        f"<h4>Files ({len(design.file_list)})</h4><ul class='p2c-files'>{files}</ul>",
    ]
    if design.open_questions:
        questions = "".join(f"<li>{esc(q)}</li>" for q in design.open_questions)
        parts.append(f"<h4>Open questions</h4><ul>{questions}</ul>")
    return "".join(parts)


def logic_html(logic: LogicDesign) -> str:
    rows = "".join(
        f"<tr><td>{n}</td><td><code>{esc(f.path)}</code></td><td>{esc(f.role)}</td>"
        f"<td>{', '.join(f'<code>{esc(d)}</code>' for d in f.depends_on) or '—'}</td></tr>"
        for n, f in enumerate(logic.files, 1)
    )
    parts = [
        "<table class='p2c-table p2c-logic-table'><thead><tr><th>#</th><th>File</th><th>Role</th>"
        f"<th>Depends on</th></tr></thead><tbody>{rows}</tbody></table>"
    ]
    if logic.required_packages:
        packages = ", ".join(f"<code>{esc(p)}</code>" for p in logic.required_packages)
        parts.append(f"<p><strong>Required packages:</strong> {packages}</p>")
    if logic.shared_knowledge.strip():
        parts.append("<h4>Shared knowledge</h4>" + markdown_html(logic.shared_knowledge))
    if logic.open_questions:
        questions = "".join(f"<li>{esc(q)}</li>" for q in logic.open_questions)
        parts.append(f"<h4>Open questions</h4><ul>{questions}</ul>")
    return "".join(parts)


_SVG_NS = "http://www.w3.org/2000/svg"
_XLINK_NS = "http://www.w3.org/1999/xlink"
_DROPPED_ELEMENTS = {"script", "foreignobject", "iframe", "object", "embed", "style", "a", "image", "use"}
_SIZE_STYLE = re.compile(r"\b(width|height)\s*:[^;]*;?", re.IGNORECASE)


def _local(name: str) -> str:
    return name.rpartition("}")[2]


def inline_svg(svg: str, prefix: str, title: str) -> str:
    """An SVG fit to put inside a page (a static view has no <img> data URLs everywhere): scripts, event handlers,
    styles, links and foreign content are dropped, ids are prefixed so two diagrams on a page do not share them,
    and the size follows the page width. Empty when the text is not an SVG.
    """
    import xml.etree.ElementTree as ET

    ET.register_namespace("", _SVG_NS)
    ET.register_namespace("xlink", _XLINK_NS)
    try:
        root = ET.fromstring(svg.encode("utf-8"))
    except ET.ParseError:
        return ""
    if _local(root.tag) != "svg":
        return ""

    def prune(parent: ET.Element) -> None:
        for child in list(parent):
            if not isinstance(child.tag, str) or _local(child.tag).lower() in _DROPPED_ELEMENTS:
                parent.remove(child)
            else:
                prune(child)

    prune(root)
    ids = {el.get("id", ""): f"{prefix}-{el.get('id')}" for el in root.iter() if el.get("id")}
    for element in root.iter():
        for key, value in list(element.attrib.items()):
            name = _local(key).lower()
            if name.startswith("on") or name == "href":
                del element.attrib[key]
            elif name == "id":
                element.set(key, ids[value])
            elif "url(" in value:
                element.set(key, re.sub(r"url\(#([^)]*)\)", lambda m: f"url(#{ids.get(m.group(1), 'none')})", value))
    root.set("style", _SIZE_STYLE.sub("", root.get("style", "")).strip())
    root.set("preserveAspectRatio", "xMidYMid meet")
    root.set("role", "img")
    root.set("aria-label", title)
    return f"<div class='p2c-svg'>{ET.tostring(root, encoding='unicode')}</div>"


def svg_img(svg: str, alt: str) -> str:
    """An SVG as an <img>: scripts inside an image never run, whatever the SVG holds."""
    data = base64.b64encode(svg.encode("utf-8")).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/svg+xml;base64,{data}">'


def artifact_html(artifact: str, text: str) -> str:
    """The read-only rendering of one artifact (also used by `%p2c show`)."""
    name, _, path = artifact.partition("/")
    stage = registry.find(name)
    if artifact == registry.PAPER or (stage is not None and stage.kind == "markdown"):
        return markdown_html(text)
    if stage is not None and not stage.per_file:  # highlighted as its file: config.yaml, design.json, ...
        return highlight(text, stage.path.rpartition("/")[2])
    return highlight(text, path)


def stepper_html(steps: list[tuple[str, str, str, str]], current: str | None) -> str:
    """The stages as numbered steps (stage, title, state, state label); `current` is outlined as where you are."""
    items = []
    for number, (stage, title, state, label) in enumerate(steps, 1):
        classes = f"p2c-step p2c-step-{esc(stage)} p2c-step-{esc(state)}"
        if stage == current:
            classes += " p2c-step-current"
        items.append(
            f"<li class='{classes}' title='{esc(title)}: {esc(label)}'><span class='p2c-step-index'>{number}</span>"
            f"<span class='p2c-step-name'>{esc(stage)}</span><span class='p2c-step-state'>{esc(label)}</span></li>"
        )
    return f"<ol class='p2c-stepper' aria-label='Stages'>{''.join(items)}</ol>"


def static_panel_html(artifact: str, status: str, usage: str, body: str, collapsed: bool, badges: str = "") -> str:
    """One panel of the static snapshot: the widget panel's head and content, without its controls.

    Per-file panels are <details> (closed): a repository of many files stays a short page, and opens on a click.
    `badges` (markup, already escaped: a code file's static checks) go in the head, seen while it is closed.
    """
    title = esc(title_of(artifact))
    head = (
        f"<span class='p2c-title'>{title}</span><span class='p2c-badge p2c-badge-{esc(status)}'>{esc(status)}</span>"
        f"{badges}<span class='p2c-usage'>{esc(usage)}</span>"
    )
    stage = esc(artifact.partition("/")[0])
    classes = f"p2c-panel p2c-panel-{slug(artifact)} p2c-stage-{stage} p2c-status-{esc(status)}"
    if collapsed:
        return (
            f"<details class='{classes}'><summary><span class='p2c-panel-head'>{head}</span></summary>"
            f"<div class='p2c-content'>{body}</div></details>"
        )
    return f"<div class='{classes}'><div class='p2c-panel-head'>{head}</div><div class='p2c-content'>{body}</div></div>"


def pending_html(stage_name: str, missing: list[str], planned: int) -> str:
    """One line for the planned files of a stage that have no panel yet (empty when there are none)."""
    if not missing:
        return ""
    shown = ", ".join(f"<code>{esc(f)}</code>" for f in missing[:40])
    more = f" and {len(missing) - 40} more" if len(missing) > 40 else ""
    return (
        f"<div class='p2c-hint'><b>{esc(stage_name)}</b>: {len(missing)} of {planned} planned file(s) not "
        f"generated yet: {shown}{more}.</div>"
    )
