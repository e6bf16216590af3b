"""When and how long to wait before calling the model again: exponential backoff with full jitter,
honouring the server's Retry-After. The openai client's own retries are switched off, so every retry is
decided (and announced) here."""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import openai

#: HTTP statuses worth a second try: time-out, conflict, rate limit and the transient server errors.
RETRYABLE_STATUS: frozenset[int] = frozenset({408, 409, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524, 529})


class IncompleteReply(Exception):
    """A streamed reply ended without a finish reason: the connection was cut before the model finished."""


class CallDeadline(Exception):
    """One call ran past its wall-clock deadline (`timeout`): a server that trickles tokens or sends only
    keep-alives would otherwise hold it open for ever."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the call took longer than its {seconds:g} s time-out")
        self.seconds = seconds


@dataclass(frozen=True)
class RetryNotice:
    """One retry about to happen, for the user: why, how long we wait, which attempt comes next.

    `restart` is true when the failed attempt had already streamed text: what was shown is void.
    `rate_limited` is true when the server asked the client to slow down (HTTP 429, or a retryable status with
    Retry-After): a client sharing the server between many calls backs off all of them, not only this one.
    """

    reason: str
    delay: float
    attempt: int
    attempts: int
    restart: bool = False
    rate_limited: bool = False

    @classmethod
    def after(
        cls, exc: BaseException, reason: str, delay: float, attempt: int, attempts: int, restart: bool = False
    ) -> RetryNotice:
        """The notice for a retry after `exc`, with `rate_limited` read from the error itself (never the words)."""
        return cls(reason, delay, attempt, attempts, restart, is_rate_limited(exc))

    def describe(self) -> str:
        wait = f"{self.delay:.1f}" if self.delay >= 0.1 else f"{self.delay:.2f}"
        return f"{self.reason}, retrying in {wait} s (attempt {self.attempt}/{self.attempts})"


@dataclass(frozen=True)
class RetryPolicy:
    """`retries` after the first attempt; waits grow as base * 2^n, each drawn uniformly below that ("full
    jitter", so concurrent calls do not retry in lock-step) and never longer than `max_delay`. A server's
    Retry-After replaces the drawn wait, also capped at `max_delay`."""

    retries: int = 3
    base_delay: float = 1.0
    max_delay: float = 30.0

    @property
    def attempts(self) -> int:
        return self.retries + 1

    def delay(self, failed_attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait after attempt number `failed_attempt` (1-based) failed."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay)
        ceiling = min(self.max_delay, self.base_delay * (2 ** (failed_attempt - 1)))
        return (rng or random).uniform(0.0, ceiling)


def retry_after(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """The wait a server asks for: `retry-after-ms`, or `Retry-After` in seconds or as an HTTP date."""
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def is_html(response: Any) -> bool:
    """Whether a server sent a web page (a proxy's or gateway's error page, or the wrong URL) instead of JSON."""
    headers = getattr(response, "headers", None)
    if headers is None:
        return False
    return headers.get("content-type", "").split(";")[0].strip().lower() in (
        "text/html",
        "application/xhtml+xml",
    )


def classify(exc: BaseException) -> str | None:
    """Why a failed call may succeed when repeated, in words; None when repeating cannot help."""
    if isinstance(exc, IncompleteReply):
        return "the reply stream was cut off"
    if isinstance(exc, CallDeadline):
        return f"the reply took longer than the {exc.seconds:g} s time-out"
    if isinstance(exc, openai.APITimeoutError):
        return "the server did not answer in time"
    if isinstance(exc, openai.APIConnectionError):
        return "the connection failed"
    if isinstance(exc, openai.APIStatusError) and exc.status_code in RETRYABLE_STATUS:
        if exc.status_code == 429:
            return "rate limited (HTTP 429)"
        page = " (an HTML error page)" if is_html(exc.response) else ""
        return f"the server answered HTTP {exc.status_code}{page}"
    return None


def is_rate_limited(exc: BaseException) -> bool:
    """Whether the server refused the call to slow the client down: HTTP 429, or a retryable status (503, 529...)
    that says when to come back (Retry-After)."""
    if not isinstance(exc, openai.APIStatusError):
        return False
    if exc.status_code == 429:
        return True
    headers = getattr(exc.response, "headers", None)
    return exc.status_code in RETRYABLE_STATUS and retry_after(headers) is not None
