"""llama.cpp's own server, started by hand as an Ollama or LM Studio user starts theirs, reached with --base-url.

`python -m llama_cpp.server` (the engine the `[local]` extra installs) serving the embedded weights under the name
`qwen2.5-coder`, and `p2c run PAPER --base-url http://127.0.0.1:PORT/v1 --model qwen2.5-coder --until config`
in a subprocess: nothing p2c tunes for its embedded model applies (no grammar schema, no repeat penalty), so this
is what a user of that server gets. It answers `response_format: json_schema` with HTTP 500, which p2c must
detect and work around. Like the other real-model tests, it is skipped without the engine or the weights
(and fails in CI, which must run it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT

from p2c_notebook.backends.local import DEFAULT_LOCAL_MODEL, LocalModelError, engine_installed, resolve
from p2c_notebook.backends.local.server import default_threads, free_port
from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.stages.artifacts import ArchitectureDesign, LogicDesign, parse_config

pytestmark = pytest.mark.slow


def _weights() -> Path:
    problem = None if engine_installed() else "llama-cpp-python is not installed: pip install 'p2c-notebook[local]'"
    if problem is None:
        try:
            return resolve(DEFAULT_LOCAL_MODEL).path
        except LocalModelError as exc:
            problem = str(exc)
    if os.environ.get("CI"):
        pytest.fail(f"CI must run llama.cpp's own server: {problem}", pytrace=False)
    pytest.skip(f"the local model is not installed: {problem}")


@pytest.fixture(scope="module")
def llamacpp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama.cpp's server as a user starts it (the context and thread count set, as its docs advise)."""
    model = _weights()
    port = free_port()
    log = tmp_path_factory.mktemp("llamacpp") / "server.log"
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--model_alias",
        "qwen2.5-coder",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "8192",
        "--n_threads",
        str(default_threads()),
        "--logits_all",  # its default keeps n_ctx x vocabulary floats (5 GB here), which this machine cannot spare
        "False",
    ]
    with log.open("wb") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                pytest.fail(f"llama.cpp's server exited with {server.returncode}; see {log}", pytrace=False)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2):  # noqa: S310
                    break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(f"llama.cpp's server did not answer in 180 s; see {log}", pytrace=False)
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_llamacpp_server_via_base_url_runs_the_planning_stages(llamacpp: str, paper_md: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "P2C_"))}
    env.update({"P2C_CONFIG": "/nonexistent", "PYTHONPATH": str(ROOT)})
    command = [sys.executable, "-m", "p2c_notebook.cli", "run", str(paper_md), "--out", str(run)]
    command += ["--base-url", llamacpp, "--model", "qwen2.5-coder", "--until", "config"]
    command += ["--timeout", "1800"]  # a plan on a busy 2-core CPU can outlast the 600 s default deadline
    command += ["--temperature", "0.2"]  # the server's own default (0.8) makes a 1.5B model's JSON needlessly loose
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1500, check=False)
    store = Pipeline.open(run).store
    if done.returncode == 5:
        # What this test is about held: the server took every request (its HTTP 500 for json_schema was met by
        # json_object, its cut-offs by one call at a time). A 1.5B model may still write a design that does not fit
        # the schema after its re-ask: that is the model, said in one line, with the plan kept.
        last = done.stderr.strip().splitlines()[-1]
        assert "unusable" in last and "Traceback" not in done.stderr, done.stderr[-3000:]
        assert len(store.read("plan")) > 100
        pytest.xfail(f"the model's reply was unusable (not a compatibility failure): {last[:300]}")
    assert done.returncode == 0, f"exit {done.returncode}:\n{done.stderr[-3000:]}"
    design = ArchitectureDesign.model_validate_json(store.read("design"))
    LogicDesign.model_validate_json(store.read("logic")).check_against(design)
    parse_config(store.read("config"))
    assert len(store.read("plan")) > 100
    assert not (run / "logs" / "local-server.log").exists()  # a server p2c does not own: nothing of ours to log
