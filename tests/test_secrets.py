"""The API key and the Authorization header never reach run folders, manifests, logs, cassettes, errors shown
to people or notebook outputs, even when the model server echoes them back in its error bodies.

Keys come from the environment, the --api-key flag and the settings file; every byte a run produces is searched.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ipywidgets
import pytest
from conftest import small_scenario, subprocess_env
from IPython.core.interactiveshell import InteractiveShell

from p2c_notebook.pipeline import Pipeline
from p2c_notebook.settings import Settings
from p2c_notebook.ui import Walkthrough

# Distinctive, and unlike `sk-...` so that only scrubbing of the configured key itself can hide them.
ENV_KEY = "p2c-distinctive-ENVKEY-5b8e61d0c4"
FLAG_KEY = "p2c-distinctive-FLAGKEY-a93f27e1b6"
FILE_KEY = "p2c-distinctive-FILEKEY-0c7d4e8f12"
KEYS = (ENV_KEY, FLAG_KEY, FILE_KEY)
ECHO = "Unauthorized request: the server received Authorization: {authorization}"


def leaks(text: str | bytes) -> list[str]:
    """Keys found in `text`, and any bearer token that is not the scrubbed placeholder."""
    data = text.encode("utf-8", "replace") if isinstance(text, str) else text
    found = [key for key in KEYS if key.encode() in data]
    return found + [m.decode() for m in re.findall(rb"Bearer (?!\[secret\])\S*", data)]


def assert_no_secret_in_tree(*folders: Path) -> int:
    searched = 0
    for folder in folders:
        for path in [folder] if folder.is_file() else folder.rglob("*"):
            if path.is_file():
                searched += 1
                assert not leaks(path.read_bytes()), f"{path} holds {leaks(path.read_bytes())}"
    return searched


def p2c_run(server: Any, tmp_path: Path, *args: str, key_env: str | None = ENV_KEY, config: str = "") -> Any:
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text(config)
    env = subprocess_env(server, P2C_CONFIG=str(settings_file), P2C_MAX_RETRIES="0")
    if key_env is None:
        del env["OPENAI_API_KEY"]
    else:
        env["OPENAI_API_KEY"] = key_env
    cmd = [sys.executable, "-m", "p2c_notebook.cli", "run", *args]
    return subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("source", "flags", "key_env", "config"),
    [
        ("environment", [], ENV_KEY, ""),
        ("--api-key", ["--api-key", FLAG_KEY], ENV_KEY, ""),
        ("settings file", [], None, f"api_key: {FILE_KEY}\n"),
    ],
)
def test_a_recorded_full_run_and_a_failing_run_hold_no_key_anywhere(
    serve: Any,
    paper_md: Path,
    tmp_path: Path,
    source: str,
    flags: list[str],
    key_env: str | None,
    config: str,
) -> None:
    server = serve(small_scenario())
    run, cassette = tmp_path / "run", tmp_path / "calls.cassette.jsonl"
    # A repair turn (the first design reply is junk) also goes through the log and the cassette.
    server.add_fault({"stage": "design", "kind": "malformed"})
    done = p2c_run(
        server,
        tmp_path,
        str(paper_md),
        "--out",
        str(run),
        "--record",
        str(cassette),
        "-v",
        *flags,
        key_env=key_env,
        config=config,
    )
    assert done.returncode == 0, done.stderr
    assert not leaks(done.stdout + done.stderr)
    # The server echoes the Authorization header in its error bodies: 401, 400 and 500 alike.
    for status in (401, 400, 500):
        server.add_fault({"stage": "code", "kind": "status", "status": status, "message": ECHO, "times": None})
        failed = p2c_run(
            server,
            tmp_path,
            str(run),
            "--from",
            "code",
            "--record",
            str(cassette),
            *flags,
            key_env=key_env,
            config=config,
        )
        assert failed.returncode == 4, failed.stderr
        assert "p2c: error:" in failed.stderr and "Traceback" not in failed.stderr
        assert not leaks(failed.stdout + failed.stderr), (source, status, failed.stderr)
        server.reset()
    status = subprocess.run(
        [sys.executable, "-m", "p2c_notebook.cli", "status", str(run)],
        env=subprocess_env(server),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0 and not leaks(status.stdout + status.stderr)
    assert (run / "logs/run.log").stat().st_size and cassette.stat().st_size
    assert assert_no_secret_in_tree(run, cassette) >= 15  # manifest, artifacts, diagrams, repo, log, cassette


def test_the_error_echo_really_carries_the_key(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    """The scripted server's `{authorization}` echo works, so the tests above search for something real."""
    import openai

    server = serve(small_scenario(faults=[{"stage": "plan", "kind": "status", "status": 500, "message": ECHO}]))
    client = openai.OpenAI(api_key=ENV_KEY, base_url=server.base_url, max_retries=0)
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], extra_headers={"X-P2C-Stage": "plan"}
        )
    assert f"Bearer {ENV_KEY}" in str(caught.value)


# --- notebook outputs ------------------------------------------------------------------------------------


@pytest.fixture
def shell(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[InteractiveShell]:
    monkeypatch.chdir(tmp_path)
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "P2C_API_KEY", "P2C_BASE_URL", "P2C_MODEL", "P2C_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("P2C_CONFIG", str(tmp_path / "no-config.yaml"))
    monkeypatch.setenv("P2C_MAX_RETRIES", "0")
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "p2c_notebook.ui.magics")
    yield ip
    ip.run_line_magic("unload_ext", "p2c_notebook.ui.magics")


def html_values(widget: Any) -> list[str]:
    values = [str(widget.value)] if isinstance(widget, (ipywidgets.HTML, ipywidgets.Label)) else []
    for child in getattr(widget, "children", ()):
        values.extend(html_values(child))
    return values


def test_magics_and_the_widget_never_show_the_key_even_in_errors(
    shell: InteractiveShell,
    serve: Any,
    paper_md: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    faults = [{"stage": "design", "kind": "status", "status": 500, "message": ECHO, "times": None}]
    server = serve(small_scenario(faults=faults))
    bundles: list[Any] = []
    monkeypatch.setattr(shell.display_pub, "publish", lambda data, *a, **k: bundles.append(data))
    run = tmp_path / "run"
    for line in (
        f"use --base-url {server.base_url} --api-key {FLAG_KEY}",
        f"load {paper_md} --out {run}",
        "plan",  # fails at the design with the echoing error
        "status",
        "show plan",
    ):
        shell.run_line_magic("p2c", line)
    captured = capsys.readouterr()
    assert "p2c: error:" in captured.err and "HTTP 500" in captured.err
    assert not leaks(captured.out + captured.err), captured.err
    assert not leaks(repr(bundles))
    settings = Settings.model_validate({"base_url": server.base_url, "api_key": FLAG_KEY, "max_retries": 0})
    wt = Walkthrough(Pipeline.open(run, settings=settings))
    server.add_fault({"stage": "plan", "kind": "status", "status": 500, "message": ECHO})
    wt.regenerate("plan", block=True)
    assert wt.last_error and "HTTP 500" in wt.last_error
    assert not leaks(wt.last_error) and not leaks("".join(html_values(wt.widget)))
    assert_no_secret_in_tree(run)
