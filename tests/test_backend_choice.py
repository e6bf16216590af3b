"""Which backend runs: explicit configuration, else a configured server, else the local model (with a notice)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from conftest import API_KEY, small_scenario

import p2c_notebook.backends
from p2c_notebook.backends import OpenAIBackend, choose_backend, make_backend
from p2c_notebook.backends.replay import RecordingBackend, ReplayBackend
from p2c_notebook.errors import ConfigError
from p2c_notebook.run.events import Event, Notice
from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.settings import Settings, load_settings


def _settings(tmp_path: Path, environ: dict[str, str], config: str = "", **overrides: Any) -> Settings:
    """Settings as a user gets them: a config file (maybe empty), the environment, then explicit values.

    An empty config file says `backend: auto`: "nothing chosen" until `auto` is the default of Settings.backend.
    """
    file = tmp_path / "config.yaml"
    file.write_text(config or "backend: auto\n", encoding="utf-8")
    return load_settings(overrides, environ, file)


class _NoLocalModel:
    """Stands in for LocalBackend: records that it was built instead of starting llama.cpp."""

    built: list[str | None] = []

    def __init__(self, settings: Settings, model: str | None = None) -> None:
        _NoLocalModel.built.append(model)

    model = description = "fake-local"

    def close(self) -> None:
        pass


@pytest.fixture
def fake_local(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    _NoLocalModel.built = []
    monkeypatch.setattr(p2c_notebook.backends, "LocalBackend", _NoLocalModel)  # what the "local" factory builds
    return _NoLocalModel.built


def _llama_children() -> list[str]:
    """Command lines of this process's children that run llama.cpp (Linux /proc; empty elsewhere)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and ("llama_cpp" in cmdline or "p2c_notebook.backends.local" in cmdline):
            found.append(cmdline)
    return found


def test_explicit_configuration_wins(tmp_path: Path) -> None:
    env = {"OPENAI_API_KEY": API_KEY, "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    assert choose_backend(_settings(tmp_path, env, backend="local")) == ("local", "")
    assert choose_backend(_settings(tmp_path, env, backend="local:qwen2.5-coder-0.5b")) == (
        "local",
        "qwen2.5-coder-0.5b",
    )
    assert choose_backend(_settings(tmp_path, env, "backend: replay:x.jsonl\n")) == ("replay", "x.jsonl")
    assert choose_backend(_settings(tmp_path, {"P2C_BACKEND": "openai"})) == ("openai", "")
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):  # asked for openai: no silent local fallback
        make_backend(_settings(tmp_path, {"P2C_BACKEND": "openai"}))
    with pytest.raises(ConfigError, match="Unknown backend 'ollama'.*local"):
        make_backend(_settings(tmp_path, {}, backend="ollama"))


def test_a_configured_key_or_base_url_means_that_server(tmp_path: Path) -> None:
    assert choose_backend(_settings(tmp_path, {"OPENAI_API_KEY": API_KEY})) == ("openai", "")
    assert choose_backend(_settings(tmp_path, {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})) == ("openai", "")
    assert choose_backend(_settings(tmp_path, {}, "backend: auto\napi_key: k\n")) == ("openai", "")
    assert choose_backend(_settings(tmp_path, {})) == ("local", "")


def test_scripted_server_in_the_environment_never_starts_the_local_model(
    serve: Any, paper_md: Path, tmp_path: Path, fake_local: list[str | None]
) -> None:
    server = serve(small_scenario())
    settings = _settings(tmp_path, {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": API_KEY})
    notes: list[str] = []
    backend = make_backend(settings, notify=notes.append)
    assert isinstance(backend, OpenAIBackend) and notes == []
    backend.close()
    events: list[Event] = []
    with Pipeline.start(paper_md, tmp_path / "run", settings=settings, sinks=(events.append,)) as pipeline:
        assert pipeline.run().state == "done"
        assert _llama_children() == []
    assert fake_local == [] and len(server.requests) == 10
    assert not [e for e in events if isinstance(e, Notice) and "local model" in e.message]


def test_nothing_configured_runs_the_local_model_with_a_one_line_notice(
    tmp_path: Path, fake_local: list[str | None]
) -> None:
    notes: list[str] = []
    backend = make_backend(_settings(tmp_path, {}), notify=notes.append)
    assert isinstance(backend, _NoLocalModel) and fake_local == [None]
    assert len(notes) == 1 and "\n" not in notes[0]
    note = notes[0]
    assert "local model qwen2.5-coder-" in note and "Qwen2.5-Coder" in note  # which backend and model
    assert "OPENAI_API_KEY" in note and "--backend openai" in note  # how to switch


def test_explicit_local_model_needs_no_notice_and_keeps_its_argument(
    tmp_path: Path, fake_local: list[str | None]
) -> None:
    notes: list[str] = []
    make_backend(_settings(tmp_path, {}, backend="local:/models/mine.gguf"), notify=notes.append)
    make_backend(_settings(tmp_path, {"P2C_LOCAL_MODEL": "qwen2.5-coder-0.5b"}, backend="local"), notify=notes.append)
    assert fake_local == ["/models/mine.gguf", "qwen2.5-coder-0.5b"] and notes == []


def test_record_wraps_any_backend_and_replay_needs_a_cassette(tmp_path: Path, fake_local: list[str | None]) -> None:
    recording = make_backend(_settings(tmp_path, {}, record=str(tmp_path / "c.jsonl")))
    assert isinstance(recording, RecordingBackend) and isinstance(recording.inner, _NoLocalModel)
    with pytest.raises(ConfigError, match="replay:CASSETTE"):
        make_backend(_settings(tmp_path, {}, backend="replay"))
    (tmp_path / "empty.jsonl").write_text("", encoding="utf-8")
    assert isinstance(
        make_backend(_settings(tmp_path, {}, backend=f"replay:{tmp_path / 'empty.jsonl'}")), ReplayBackend
    )
