"""Model backends behind one small interface (`base.Backend`), and the registry that builds one from settings.

`openai` (any OpenAI-compatible server) is the default; `local` serves a GGUF model with llama.cpp, `replay` answers
from a recorded cassette, `scripted` from a scenario file (the scripted server). Modules inside this package import
`base` and each other's modules, never this package, so there is no import cycle.
"""

from __future__ import annotations

from collections.abc import Callable

from p2c_notebook.backends.base import Backend, ChatRequest, Completion, Messages, OnRetry
from p2c_notebook.backends.local import LocalBackend, describe_choice
from p2c_notebook.backends.openai import OpenAIBackend
from p2c_notebook.backends.replay import RecordingBackend, ReplayBackend
from p2c_notebook.errors import ConfigError
from p2c_notebook.secrets import Scrubber
from p2c_notebook.settings import Settings

__all__ = [
    "BACKENDS",
    "Backend",
    "ChatRequest",
    "Completion",
    "Messages",
    "OnRetry",
    "OpenAIBackend",
    "choose_backend",
    "make_backend",
]

Notify = Callable[[str], None] | None


def choose_backend(settings: Settings) -> tuple[str, str]:
    """(kind, argument) of the backend to build. `auto`: a configured key or base URL means an
    OpenAI-compatible server; nothing configured means the local model."""
    kind, _, arg = settings.backend.partition(":")
    if kind == "auto":
        return ("openai", "") if settings.base_url or settings.api_key else ("local", arg)
    return kind, arg


def make_backend(settings: Settings, notify: Notify = None) -> Backend:
    """Build the backend a settings object names (wrapped in a recorder with `settings.record`).

    `notify` receives one line when the choice is not obvious from the settings (auto -> local model).
    """
    if settings.replay_fallback and choose_backend(settings)[0] == "replay":
        return _extended_replay(settings, notify)
    kind, arg = choose_backend(settings)
    factory = BACKENDS.get(kind)
    if factory is None:
        raise ConfigError(
            f"Unknown backend {settings.backend!r}: use auto, {', '.join(_USAGE[k] for k in BACKENDS)}."
        )
    backend = factory(settings, arg, notify)
    if settings.record:
        return RecordingBackend(backend, settings.record, Scrubber.for_settings(settings))
    return backend


def _extended_replay(settings: Settings, notify: Notify) -> Backend:
    """Replay the cassette; what it lacks goes to the fallback backend (recorded with `settings.record`)."""
    fallback = make_backend(settings.model_copy(update={"backend": settings.replay_fallback}), notify)
    return ReplayBackend(choose_backend(settings)[1], fallback=fallback, settings=settings)


def _openai(settings: Settings, arg: str, notify: Notify) -> Backend:
    return OpenAIBackend(settings)


def _local(settings: Settings, arg: str, notify: Notify) -> Backend:
    model = arg or settings.local_model
    if settings.figures:  # refused before the server starts: it would only ignore or reject the images
        raise ConfigError(
            f"The embedded local model ({describe_choice(model)}) reads text only, so it cannot take the paper's "
            "figures: drop --figures (P2C_FIGURES), or use a vision model on a server (--backend openai --base-url "
            "URL --model MODEL)."
        )
    if notify and settings.backend.partition(":")[0] == "auto":
        notify(
            f"No OPENAI_API_KEY or OPENAI_BASE_URL set: running the local model {describe_choice(model)} "
            "on this machine; set OPENAI_API_KEY or OPENAI_BASE_URL, or pass --backend openai, to use a server."
        )
    return LocalBackend(settings, model)


def _replay(settings: Settings, arg: str, notify: Notify) -> Backend:
    if not arg:
        raise ConfigError("--backend replay needs a cassette file: --backend replay:CASSETTE.jsonl")
    return ReplayBackend(arg, settings=settings)


def _scripted(settings: Settings, arg: str, notify: Notify) -> Backend:
    if not arg:
        raise ConfigError("--backend scripted needs a scenario file: --backend scripted:SCENARIO.yaml")
    # Imported here, not at the top: `python -m p2c_notebook.testing.server` must not find itself imported.
    from p2c_notebook.testing.server import ScriptedServer

    server = ScriptedServer(arg)
    base_url = server.start()
    model = settings.model if "model" in settings.model_fields_set else "scripted"
    scripted = settings.model_copy(update={"base_url": base_url, "api_key": None, "model": model})
    return OpenAIBackend(scripted, on_close=server.stop)


Factory = Callable[[Settings, str, Notify], Backend]
#: Every backend `--backend KIND[:ARG]` can name: one entry each. A new backend is one module and one entry here.
BACKENDS: dict[str, Factory] = {"openai": _openai, "local": _local, "replay": _replay, "scripted": _scripted}
_USAGE = {
    "openai": "openai",
    "local": "local[:MODEL or .gguf]",
    "replay": "replay:CASSETTE.jsonl",
    "scripted": "scripted:SCENARIO.yaml",
}
