"""Message content: a string, or a list of OpenAI content parts when the paper's figures go along (`--figures`).

One module knows both shapes, so everything that reads messages (token estimates, the cassette key and record,
the scrubber, the scripted server) treats images alike: counted with one documented approximation
(`image_tokens`), and written down by file name and hash (`describe`), never as their base64 data.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import math
import re
import struct
import threading
from collections.abc import Iterable, Mapping
from typing import Any

#: A message's content: plain text, or text and image parts ({"type": "text" | "image_url", ...}).
Content = str | list[dict[str, Any]]

#: Tokens an image counts when its size cannot be read: a 1024 x 1024 image under the rule of `image_tokens`.
UNKNOWN_IMAGE_TOKENS = 765
_DATA_URL = re.compile(r"data:(image/[A-Za-z0-9.+-]+);base64,([A-Za-z0-9+/=]{64,})")
_PNG = b"\x89PNG\r\n\x1a\n"
_NAMES: dict[str, str] = {}  # image sha256 -> the run-folder file it was read from (paper/figures/figN.png)
_NAMES_LOCK = threading.Lock()
_MAX_NAMES = 1024


def text_of(content: object) -> str:
    """The text a content carries (its text parts joined); images add nothing."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def leading_text(content: object) -> str:
    """The text before a content's first image: what a prefix cache can share with a text-only content."""
    if not isinstance(content, list):
        return text_of(content)
    lead = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            break
        lead.append(part["text"])
    return "".join(lead)


def images_of(content: object) -> list[str]:
    """The image URLs (data URLs, here) of a content's image parts, in order."""
    if not isinstance(content, list):
        return []
    urls = []
    for part in content:
        image = part.get("image_url") if isinstance(part, dict) and part.get("type") == "image_url" else None
        url = image.get("url") if isinstance(image, dict) else image
        if isinstance(url, str):
            urls.append(url)
    return urls


def has_images(messages: Iterable[Mapping[str, Any]]) -> bool:
    return any(images_of(m.get("content")) for m in messages if isinstance(m, Mapping))


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def image_part(data: bytes, name: str, media_type: str = "image/png") -> dict[str, Any]:
    """An `image_url` part holding `data` as a base64 data URL; `name` (its run-folder file) is remembered by
    hash so that logs and cassettes can say which file a request carried."""
    url = f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"
    digest = hashlib.sha256(data).hexdigest()
    with _NAMES_LOCK:
        if len(_NAMES) >= _MAX_NAMES:
            _NAMES.clear()
        _NAMES[digest] = name
    return {"type": "image_url", "image_url": {"url": url}}


@functools.lru_cache(maxsize=16)  # a run sends at most 8 images: each decoded once, not kept past that
def _decoded(url: str) -> bytes | None:
    match = _DATA_URL.fullmatch(url)
    if match is None:
        return None
    try:
        return base64.b64decode(match.group(2), validate=True)
    except (binascii.Error, ValueError):
        return None


def image_digest(url: str) -> str:
    """sha256 of the image's bytes (what `sha256sum paper/figures/figN.png` prints); of the URL when it is not
    a data URL."""
    data = _decoded(url)
    return hashlib.sha256(data if data is not None else url.encode("utf-8")).hexdigest()


def image_size(url: str) -> tuple[int, int] | None:
    """Width and height of a PNG data URL, read from its header (None for anything else)."""
    head = url.partition(",")[2][:44] if url.startswith("data:") else ""
    try:
        data = base64.b64decode(head[: len(head) // 4 * 4])
    except (binascii.Error, ValueError):
        return None
    if len(data) < 24 or not data.startswith(_PNG):
        return None
    width, height = struct.unpack(">II", data[16:24])
    return (width, height) if width and height else None


def image_tokens(url: str) -> int:
    """Input tokens an image costs, approximated as OpenAI counts a high-detail image: scaled to fit 2048 x 2048,
    then its short side to 768 pixels (never up), 170 tokens per 512-pixel tile plus 85. Other servers count
    differently (Qwen2-VL: one token per 28 x 28 pixels, ~1,500 for a 1270 x 945 figure); this is an estimate."""
    size = image_size(url)
    if size is None:
        return UNKNOWN_IMAGE_TOKENS
    width, height = (float(v) for v in size)
    scale = min(1.0, 2048 / max(width, height))
    width, height = width * scale, height * scale
    scale = min(1.0, 768 / min(width, height))
    width, height = width * scale, height * scale
    return 85 + 170 * math.ceil(width / 512) * math.ceil(height / 512)


def content_tokens(content: object, count_text: Any) -> int:
    """Tokens of a content: its text by `count_text`, each image by `image_tokens`."""
    if isinstance(content, str):
        return int(count_text(content))
    parts = content if isinstance(content, list) else []
    texts = sum(int(count_text(p["text"])) for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str))
    return texts + sum(image_tokens(url) for url in images_of(content))


def image_name(url: str) -> str:
    """The run-folder file an image was read from, when this process read it ("" when unknown)."""
    with _NAMES_LOCK:
        return _NAMES.get(image_digest(url), "")


def describe_image(url: str, named: bool = True) -> dict[str, Any]:
    """An image as logs and cassettes record it: its file, hash and size, not its data. `named=False`: the hash
    alone, which is all a cassette key may depend on (the file name is known only where the figures were read)."""
    described: dict[str, Any] = {"type": "image_url", "sha256": image_digest(url)}
    if not named:
        return described
    data = _decoded(url)
    if data is not None:
        described["bytes"] = len(data)
    name = image_name(url)
    if name:
        described["file"] = name
    return described


def describe(content: object, named: bool = True) -> Any:
    """`content` with each image part replaced by `describe_image`'s record (text stays as it is)."""
    if not isinstance(content, list):
        return content
    described: list[Any] = []
    for part in content:
        urls = images_of([part])
        described.append(describe_image(urls[0], named) if urls else part)
    return described


def shorten_data_urls(text: str) -> str:
    """Base64 image data in free text (an error that echoes the request) as `[image sha256:..., N bytes]`."""
    if "base64," not in text:
        return text

    def short(match: re.Match[str]) -> str:
        record = describe_image(match.group(0))
        name = f"{record['file']} " if "file" in record else ""
        size = f", {record['bytes']} bytes" if "bytes" in record else ""
        return f"[image {name}sha256:{record['sha256'][:16]}{size}]"

    return _DATA_URL.sub(short, text)
