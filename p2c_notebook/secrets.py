"""One scrubber for every credential we send, in every form a server, a log line or a traceback may show it.

What we send: the API key (as `Authorization: Bearer KEY`), and credentials in a URL (`http://user:pass@host`:
httpx sends them as `Authorization: Basic base64(user:pass)`, with the percent-encoding undone). Servers echo
those headers in error bodies, and our own messages name URLs, so every text bound for a person or a file goes
through `Scrubber.text`: backend errors, the run log, cassettes, everything the CLI prints. (The manifest records
no URL that carries credentials: see `Pipeline._run_options`.)

Two layers: the exact secrets of this configuration in every encoding (raw, percent-encoded, base64, and as
JSON or `repr` escape them), then patterns for credentials we were not told about (`sk-...` keys, `Bearer`/
`Basic` tokens, `authorization`/`api-key`/`x-api-key` fields, passwords in any URL).
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, quote_plus, unquote, urlsplit

from p2c_notebook.content import shorten_data_urls

if TYPE_CHECKING:
    from p2c_notebook.settings import Settings

PLACEHOLDER = "[secret]"
MIN_LENGTH = 4  # shorter strings are scrubbed only in their combined forms (`user:pw`, base64): not in prose
_PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy")
_TOKEN = r"[A-Za-z0-9._~+/=\-]"


def _kept(match: re.Match[str]) -> str:
    return match.group(1) + PLACEHOLDER


def _basic(match: re.Match[str]) -> str:
    """A Basic token is base64 (no length of 4n+1) with a digit, `+/=` or a capital inside; prose is not."""
    token = match.group(2)
    if len(token) % 4 != 1 and re.search(r"[0-9+/=]|[a-z][A-Z]", token):
        return match.group(1) + PLACEHOLDER
    return match.group(0)


# Credentials nobody told us about. Prose and code must pass untouched ("basic building blocks",
# `api_key = os.environ[...]`), hence the lengths and the shape test of Basic tokens.
_PATTERNS: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"), lambda _: PLACEHOLDER),
    (re.compile(rf"(?i)(\bbearer\s+){_TOKEN}{{8,}}"), _kept),
    (re.compile(r"(?i)(\bbasic\s+)([A-Za-z0-9+/]{6,}={0,2})(?![A-Za-z0-9+/=])"), _basic),
    (
        re.compile(
            rf"(?i)(\b(?:proxy-)?(?:authorization|x-api-key|api[_-]?key)[\"']?\s*[:=]\s*[\"']?)"
            rf"(?!(?:bearer|basic)\s){_TOKEN}{{16,}}"
        ),
        _kept,
    ),
    # userinfo of any URL: keep the user name when a password follows it; greedy to the last `@` of the authority
    (re.compile(r"(?i)(\b[a-z][a-z0-9+.\-]*://[^\s/?#@:\[\]]*:)[^\s/?#]*(?=@)"), _kept),
    (re.compile(r"(?i)(\b[a-z][a-z0-9+.\-]*://)[^\s/?#@:\[\]]+(?=@)"), _kept),
]


def _percent_forms(text: str) -> set[str]:
    forms = {quote(text, safe=""), quote_plus(text, safe="")}
    return forms | {re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), f) for f in forms}


def _base64_forms(text: str) -> set[str]:
    data = text.encode("utf-8")
    forms = {base64.b64encode(data).decode("ascii"), base64.urlsafe_b64encode(data).decode("ascii")}
    return forms | {f.rstrip("=") for f in forms}


def _escaped_forms(text: str) -> set[str]:
    """As a JSON string or a Python `repr` spells it (cassettes, the manifest, the run log's fields)."""
    return {json.dumps(text)[1:-1], json.dumps(text, ensure_ascii=False)[1:-1], repr(text)[1:-1]}


def url_credentials(url: str | None) -> list[str]:
    """The secrets a URL's userinfo carries: the password and `user:password` as written and decoded, and the
    Basic token httpx builds from them (a user name alone, as some token URLs use, counts as the password)."""
    if not url or "@" not in url:
        return []
    try:
        netloc = urlsplit(url.strip()).netloc
    except ValueError:
        return []
    userinfo, at, _ = netloc.rpartition("@")
    if not at or not userinfo:
        return []
    raw_user, colon, raw_password = userinfo.partition(":")
    user, password = unquote(raw_user), unquote(raw_password)
    if not colon:
        return [raw_user, user, *_base64_forms(f"{user}:")]
    found = [raw_password, password, userinfo, f"{user}:{password}"]
    return found + sorted(_base64_forms(f"{user}:{password}"))


class Scrubber:
    """Replaces secrets in text and in every string of a JSON-like value. Build it with `for_settings`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if not secret:
                continue
            variants = {secret} | _percent_forms(secret) | _base64_forms(secret)
            for variant in variants | {e for v in variants for e in _escaped_forms(v)}:
                forms.add(variant)
        kept = sorted((f for f in forms if len(f) >= MIN_LENGTH), key=lambda f: (-len(f), f))
        self._exact = re.compile("|".join(map(re.escape, kept))) if kept else None

    @classmethod
    def for_settings(cls, settings: Settings | None, environ: Mapping[str, str] | None = None) -> Scrubber:
        """Every credential these settings send: the key, the base URL's userinfo, a proxy URL's userinfo."""
        environ = os.environ if environ is None else environ
        secrets: list[str] = []
        if settings is not None:
            if settings.api_key is not None:
                secrets.append(settings.api_key.get_secret_value())
            secrets += url_credentials(settings.base_url)
        for name in _PROXY_VARIABLES:
            secrets += url_credentials(environ.get(name))
        return cls(secrets)

    def text(self, value: str) -> str:
        value = shorten_data_urls(value)  # an error echoing a request's images: their file and hash, not the data
        if self._exact is not None:
            value = self._exact.sub(PLACEHOLDER, value)
        for pattern, replace in _PATTERNS:
            value = pattern.sub(replace, value)
        return value

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.value(k): self.value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.value(v) for v in value]
        return value

    def error(self, error: Exception) -> Exception:
        """The same kind of error with its message scrubbed (itself when there was nothing to scrub)."""
        text = self.text(str(error))
        if text == str(error):
            return error
        try:
            return type(error)(text)
        except TypeError:  # an error class that wants other arguments: the same error with the scrubbed text
            clone = copy.copy(error)
            clone.args = (text,)
            return clone
