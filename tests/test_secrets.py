"""Credentials never reach run folders, manifests, logs, cassettes, errors shown to people or notebook outputs,
even when the model server echoes the Authorization header back in its error bodies.

Credentials: the API key (from the environment, the --api-key flag and the settings file) and a user name and
password in the base URL (sent as HTTP Basic auth). Every byte a run produces is searched for each secret as
written, percent-encoded and base64-encoded: a server echoing `Authorization: Basic ...` shows the base64 form.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import ipywidgets
import pytest
from conftest import small_scenario, subprocess_env
from IPython.core.interactiveshell import InteractiveShell

from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.secrets import Scrubber, url_credentials
from p2c_notebook.settings import Settings
from p2c_notebook.ui import Walkthrough

# Distinctive, and unlike `sk-...` so that only scrubbing of the configured key itself can hide them.
ENV_KEY = "p2c-distinctive-ENVKEY-5b8e61d0c4"
FLAG_KEY = "p2c-distinctive-FLAGKEY-a93f27e1b6"
FILE_KEY = "p2c-distinctive-FILEKEY-0c7d4e8f12"
KEYS = (ENV_KEY, FLAG_KEY, FILE_KEY)
USER, PASSWORD = "user", "s3cr@t"  # in a URL: user:s3cr%40t; sent as Basic base64("user:s3cr@t")
ECHO = "Unauthorized request: the server received Authorization: {authorization}"


def encodings(secret: str) -> set[str]:
    """The secret as written, percent-encoded (either hex case) and base64-encoded (padded or not)."""
    data = secret.encode("utf-8")
    forms = {secret, quote(secret, safe=""), quote_plus(secret, safe="")}
    forms |= {re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), f) for f in forms}
    for encoded in (base64.b64encode(data), base64.urlsafe_b64encode(data)):
        forms |= {encoded.decode(), encoded.decode().rstrip("=")}
    return forms


FORMS = sorted({form for secret in (*KEYS, PASSWORD, f"{USER}:{PASSWORD}") for form in encodings(secret)})


def leaks(text: str | bytes) -> list[str]:
    """Every form of every secret found in `text`, and any Bearer or Basic token that is not the placeholder."""
    data = text.encode("utf-8", "replace") if isinstance(text, str) else text
    found = [form for form in FORMS if form.encode() in data]
    return found + [m.decode() for m in re.findall(rb"(?:Bearer|Basic) (?!\[secret\])\S*", data)]


def test_the_searched_forms_include_what_a_server_echoes() -> None:
    """The search is not vacuous: it holds the Basic token httpx sends and the URL's percent-encoded password."""
    assert "dXNlcjpzM2NyQHQ=" in FORMS and "s3cr%40t" in FORMS and "user%3As3cr%40t" in FORMS
    assert leaks("Authorization: Basic dXNlcjpzM2NyQHQ") and leaks(f"key={base64.b64encode(ENV_KEY.encode())!r}")
    assert not leaks("Authorization: Basic [secret], Bearer [secret], http://user:[secret]@host/v1")


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
@pytest.mark.slow
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
    for code in (401, 400, 500):
        server.add_fault({"stage": "code", "kind": "status", "status": code, "message": ECHO, "times": None})
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
        assert not leaks(failed.stdout + failed.stderr), (source, code, failed.stderr)
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


@pytest.mark.parametrize(
    "shown",
    [
        "Authorization: Basic dXNlcjpzM2NyQHQ=",  # what httpx sends for user:s3cr%40t
        "dXNlcjpzM2NyQHQ",  # unpadded
        "http://user:s3cr%40t@h:1/v1 and http://user:s3cr%40T@h/v1",
        "user:s3cr@t",
        "s3cr@t alone, and s3cr%40t, s3cr%40t",
        "czNjckB0",  # the password's own base64
        f"{ENV_KEY} {quote(ENV_KEY)} {base64.b64encode(ENV_KEY.encode()).decode()}",
        "Proxy-Authorization: Basic cHJveHk6cHJveHktcGFzcw==",
    ],
)
def test_the_scrubber_knows_every_form_of_the_configured_credentials(shown: str) -> None:
    settings = Settings.model_validate({"api_key": ENV_KEY, "base_url": f"http://{USER}:s3cr%40t@h:1/v1"})
    scrubbed = Scrubber.for_settings(settings, {"HTTPS_PROXY": "http://proxy:proxy-pass@10.0.0.1:3128"}).text(shown)
    assert not leaks(scrubbed) and "proxy-pass" not in scrubbed and "[secret]" in scrubbed, scrubbed


def test_the_scrubber_finds_a_password_as_json_and_repr_escape_it() -> None:
    password = "quo'te\\back\"slash"
    scrub = Scrubber(url_credentials(f"https://me:{quote(password, safe='')}@example.org/v1"))
    for text in (repr(f"error: {password}"), json.dumps({"error": password}), password):
        assert password not in scrub.text(text)
        assert "'te" not in scrub.text(text) and "back" not in scrub.text(text), scrub.text(text)


@pytest.mark.parametrize(
    "text",
    [
        "Basic building blocks and basic elements",
        "the token embeddings; a bearer of news",
        'api_key = os.environ["OPENAI_API_KEY"]',
        'headers = {"Authorization": f"Bearer {api_key}"}',
        "see http://127.0.0.1:8000/v1 or https://[::1]:8080/v1?next=a@b",
        "user names like user stay; so do emails such as me@example.org",
    ],
)
def test_the_scrubber_leaves_prose_code_and_plain_urls_alone(text: str) -> None:
    settings = Settings.model_validate({"api_key": ENV_KEY, "base_url": f"http://{USER}:s3cr%40t@h:1/v1"})
    assert Scrubber.for_settings(settings, {}).text(text) == text


def with_credentials(url: str) -> str:
    """`http://127.0.0.1:PORT/v1` -> `http://user:s3cr%40t@127.0.0.1:PORT/v1`."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{USER}:{quote(PASSWORD, safe='')}@{rest}"


def test_url_credentials_reach_the_server_as_basic_auth_and_come_back_in_its_echo(serve: Any) -> None:
    """httpx turns the URL's user:password into `Authorization: Basic base64(user:password)` (decoded first):
    the feature works, and the echo the tests below search for really carries the credentials."""
    import openai

    server = serve(small_scenario(faults=[{"stage": "plan", "kind": "status", "status": 500, "message": ECHO}]))
    client = openai.OpenAI(api_key=ENV_KEY, base_url=with_credentials(server.base_url), max_retries=0)
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], extra_headers={"X-P2C-Stage": "plan"}
        )
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert f"Basic {token}" in str(caught.value)
    reply = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}], extra_headers={"X-P2C-Stage": "plan"}
    )
    assert reply.choices[0].message.content  # the next request, not faulted, is answered


@pytest.mark.slow
def test_a_password_in_the_base_url_is_never_shown_or_saved_in_any_encoding(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    server = serve(small_scenario())
    url = with_credentials(server.base_url)
    run, cassette = tmp_path / "run", tmp_path / "calls.cassette.jsonl"
    flags = ["--base-url", url, "--record", str(cassette)]
    done = p2c_run(server, tmp_path, str(paper_md), "--out", str(run), "-v", *flags)
    assert done.returncode == 0, done.stderr
    assert not leaks(done.stdout + done.stderr)
    # 401 says which server rejected the credentials (its URL); 500 quotes the server's echo of the header.
    for code in (401, 500):
        server.add_fault({"stage": "code", "kind": "status", "status": code, "message": ECHO, "times": None})
        failed = p2c_run(server, tmp_path, str(run), "--from", "code", *flags)
        assert failed.returncode == 4 and "p2c: error:" in failed.stderr, failed.stderr
        assert "127.0.0.1" in failed.stderr or "HTTP 500" in failed.stderr  # the error still says what happened
        assert not leaks(failed.stdout + failed.stderr), (code, failed.stderr)
        server.reset()
    log = (run / "logs/run.log").read_text(encoding="utf-8")
    assert "Basic [secret]" in log  # the echo was logged, scrubbed: the search below is not vacuous
    # `p2c status` with settings that know nothing of the password: what it shows was scrubbed when written.
    status = subprocess.run(
        [sys.executable, "-m", "p2c_notebook.cli", "status", str(run)],
        env=subprocess_env(server),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0 and "The last run stopped with" in status.stdout, status.stdout
    assert not leaks(status.stdout + status.stderr), status.stdout
    assert "@" not in status.stdout.split("Next:")[-1]  # the hint never carries the credentials' URL
    assert not leaks((run / "manifest.json").read_text(encoding="utf-8"))
    assert assert_no_secret_in_tree(run, cassette) >= 15


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


@pytest.mark.parametrize("url_credentials", [False, True], ids=["key", "key and URL password"])
def test_magics_and_the_widget_never_show_the_key_even_in_errors(
    url_credentials: bool,
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
    url = with_credentials(server.base_url) if url_credentials else server.base_url
    for line in (
        f"use --base-url {url} --api-key {FLAG_KEY}",
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
    settings = Settings.model_validate({"base_url": url, "api_key": FLAG_KEY, "max_retries": 0})
    wt = Walkthrough(Pipeline.open(run, settings=settings))
    server.add_fault({"stage": "plan", "kind": "status", "status": 500, "message": ECHO})
    wt.regenerate("plan", block=True)
    assert wt.last_error and "HTTP 500" in wt.last_error
    assert not leaks(wt.last_error) and not leaks("".join(html_values(wt.widget)))
    assert_no_secret_in_tree(run)
