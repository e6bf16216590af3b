"""Shared fixtures: a scripted OpenAI-compatible server on 127.0.0.1 and small papers on disk."""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest

from p2c_notebook.settings import Settings
from p2c_notebook.testing import ScriptedServer

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from p2c_notebook.ui.magics import P2CMagics

#: test_fault_matrix.py records each (fault, artifact) outcome here; the summary prints them as a table.
FAULT_MATRIX = pytest.StashKey[dict[tuple[str, str], str]]()

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TRANSFORMER = SHARED / "papers" / "transformer"
EXAMPLE = ROOT / "examples" / "mixup"
API_KEY = "sk-test-SECRET-0123456789abcdef"

DESIGN = {
    "implementation_approach": "numpy only; a tiny linear model trained with SGD.",
    "file_list": ["main.py", "models/net.py", "data.py"],
    "classes": [
        {
            "name": "Net",
            "file": "models/net.py",
            "attributes": [{"name": "w", "type": "ndarray"}],
            "methods": [{"name": "forward", "args": "x: ndarray", "returns": "ndarray"}],
        },
        {"name": "Data", "file": "data.py", "methods": [{"name": "load", "args": "", "returns": "ndarray"}]},
    ],
    "relations": [{"source": "Net", "target": "Data", "kind": "uses"}],
    "sequence": {
        "participants": ["Main", "Net", "Data"],
        "messages": [
            {"source": "Main", "target": "Data", "call": "load()", "returns": "x"},
            {"source": "Main", "target": "Net", "call": "forward(x)", "returns": "y"},
        ],
    },
    "open_questions": ["Which seed?"],
}
LOGIC = {
    "files": [
        {"path": "data.py", "role": "makes the data", "depends_on": []},
        {"path": "models/net.py", "role": "the model", "depends_on": ["data.py"]},
        {"path": "main.py", "role": "entry point", "depends_on": ["models/net.py", "data.py"]},
    ],
    "required_packages": ["numpy"],
    "shared_knowledge": "config keys: lr, epochs",
    "open_questions": [],
}
CODE = {
    # The design places class Data (with load) here: the static checks would ask again for a file without it.
    "data.py": (
        "class Data:\n    def load(self):\n        return [1.0, 2.0, 3.0]\n\n\ndef load():\n    return Data().load()\n"
    ),
    "models/net.py": (
        "from data import load\n\n\nclass Net:\n    def forward(self, x):\n        return [2 * v for v in x]\n"
    ),
    "main.py": "from data import load\nfrom models.net import Net\n\nprint(Net().forward(load()))\n",
}


def benchmark(name: str) -> ModuleType:
    """A module of benchmarks/ (they import one another by name, so the folder goes on sys.path)."""
    folder = str(ROOT / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


def small_scenario(**overrides: Any) -> dict[str, Any]:
    """A three-file scenario (one file in a sub-folder) that answers every stage validly."""
    responses: list[dict[str, Any]] = [
        {"stage": "plan", "content": "# Plan\n\n## Methodology\nA tiny linear model trained with SGD on toy data."},
        {"stage": "design", "content": json.dumps(overrides.pop("design", DESIGN))},
        {"stage": "logic", "content": json.dumps(overrides.pop("logic", LOGIC))},
        {"stage": "config", "content": "```yaml\nlr: 0.1\nepochs: 3\n```"},
    ]
    for path, code in CODE.items():
        responses.append({"stage": "analysis", "file": path, "content": f"## {path}\n\nImplements {path} as designed."})
        responses.append({"stage": "code", "file": path, "content": f"```python\n{code}```"})
    scenario: dict[str, Any] = {"model": "*", "responses": responses}
    scenario.update(overrides)
    return scenario


@pytest.fixture
def serve() -> Iterator[Any]:
    """Start scripted servers for a test: `server = serve(scenario_dict_or_path)`."""
    servers: list[ScriptedServer] = []

    def start(scenario: Any) -> ScriptedServer:
        server = ScriptedServer(scenario)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def settings_for(server: ScriptedServer, **extra: Any) -> Settings:
    values: dict[str, Any] = {"base_url": server.base_url, "api_key": API_KEY, "model": "gpt-4o-mini"}
    values.update(extra)
    return Settings.model_validate(values)


def subprocess_env(server: ScriptedServer, **extra: str) -> dict[str, str]:
    """The environment of a `p2c` subprocess talking to `server`: none of the caller's keys or settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "P2C_"))}
    env.update(
        {
            "OPENAI_API_KEY": API_KEY,
            "OPENAI_BASE_URL": server.base_url,
            "P2C_CONFIG": "/nonexistent",
            "PYTHONPATH": str(ROOT),
            **extra,
        }
    )
    return env


def no_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """None of the caller's OPENAI_/P2C_ variables and no config file: a test sees only the settings it gives."""
    for key in [k for k in os.environ if k.startswith(("OPENAI_", "P2C_"))]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("P2C_CONFIG", "/nonexistent")


def use_server(monkeypatch: pytest.MonkeyPatch, server: ScriptedServer) -> None:
    """`p2c` commands in this process talk to `server`, with the test key and none of the caller's settings."""
    no_settings(monkeypatch)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)


@contextmanager
def magics_shell() -> Iterator[InteractiveShell]:
    """IPython's shell with the %p2c magics loaded; unloaded again after, as the shell is one per process."""
    from IPython.core.interactiveshell import InteractiveShell

    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "p2c_notebook.ui.magics")
    try:
        yield ip
    finally:
        ip.run_line_magic("unload_ext", "p2c_notebook.ui.magics")


def magics_of(ip: InteractiveShell) -> P2CMagics:
    """The loaded P2CMagics instance, to inspect its state (the current run, the last repair)."""
    from p2c_notebook.ui.magics import P2CMagics

    manager = ip.magics_manager
    assert manager is not None
    magics = manager.registry["P2CMagics"]
    assert isinstance(magics, P2CMagics)
    return magics


@pytest.fixture
def paper_md(tmp_path: Path) -> Path:
    path = tmp_path / "toy.md"
    path.write_text(
        "# Toy Linear Models\n\n## Abstract\n\nWe fit a linear model with SGD.\n\n"
        "## 1 Method\n\nMinimise $$L = (y - wx)^2$$ with learning rate 0.1 for 3 epochs.\n",
        encoding="utf-8",
    )
    return path


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """The fault matrix as a table (faults down, artifacts across): what came of each fault, or FAIL."""
    results = config.stash.get(FAULT_MATRIX, {})
    if not results:
        return
    faults = list(dict.fromkeys(fault for fault, _ in results))
    artifacts = list(dict.fromkeys(artifact for _, artifact in results))
    width = max(len(f) for f in faults)
    cells = [max(len(a), *(len(results.get((f, a), "")) for f in faults)) for a in artifacts]
    passed = sum(v != "FAIL" for v in results.values())
    terminalreporter.write_sep("=", f"fault matrix: {passed}/{len(results)} cases pass")
    terminalreporter.write_line(" | ".join([" " * width, *(a.ljust(c) for a, c in zip(artifacts, cells, strict=True))]))
    for fault in faults:
        row = [results.get((fault, a), "-").ljust(c) for a, c in zip(artifacts, cells, strict=True)]
        terminalreporter.write_line(" | ".join([fault.ljust(width), *row]))
