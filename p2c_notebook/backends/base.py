"""What every backend is: the request, the reply, and the small interface the stages call."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from p2c_notebook.backends.retry import RetryNotice
from p2c_notebook.run.usage import Usage
from p2c_notebook.settings import Settings

#: {"role": ..., "content": text, or text and image parts (`p2c_notebook.content`: `--figures`)}
Messages = list[dict[str, Any]]
OnRetry = Callable[[RetryNotice], None]


@dataclass
class ChatRequest:
    """One call: the messages plus which artifact it is for (sent as X-P2C-* headers for tracing)."""

    messages: Messages
    stage: str
    file: str = ""
    attempt: int = 1
    schema: dict[str, Any] | None = None
    schema_name: str = "artifact"


@dataclass
class Completion:
    """A reply; `max_tokens` is the output limit that was in effect (None when the backend cannot tell) and
    `continuations` how many times a reply cut off at that limit was continued."""

    text: str
    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None
    max_tokens: int | None = None
    continuations: int = 0


class Backend(Protocol):
    """What a stage needs from a model: a completion for a request, streaming deltas as they come.

    `on_retry` hears about each retry before its wait; when its `restart` is true the text streamed so far
    is void (the retry streams the reply again from the start).
    """

    @property
    def description(self) -> str: ...

    @property
    def model(self) -> str: ...

    @property
    def settings(self) -> Settings:
        """The settings this backend really runs with (a local model's are tuned: repairs, reply limit, prices)."""
        ...

    @property
    def context_window(self) -> int | None:
        """Tokens the model reads at most, when the backend knows (None: unknown)."""
        ...

    def complete(
        self, request: ChatRequest, on_delta: Callable[[str], None], on_retry: OnRetry | None = None
    ) -> Completion: ...

    def close(self) -> None: ...


class WrappedBackend:
    """A backend around another (recording, a shared limit): what the inner one is passes through unchanged."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner

    @property
    def description(self) -> str:
        return self.inner.description

    @property
    def model(self) -> str:
        return self.inner.model

    @property
    def settings(self) -> Settings:
        """The wrapped backend's own settings (a local model's are tuned): wrapping changes nothing."""
        return self.inner.settings

    @property
    def context_window(self) -> int | None:
        return self.inner.context_window

    def close(self) -> None:
        self.inner.close()
