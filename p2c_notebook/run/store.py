"""The run folder: artifacts as human-readable files plus a manifest, written atomically.

The manifest is the state. Statuses are derived from recorded facts: a file whose hash differs from the
recorded one was edited by the user; an artifact whose inputs changed (or are themselves stale) is stale.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import socket
import stat
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from p2c_notebook.errors import RunError
from p2c_notebook.run.usage import Usage
from p2c_notebook.stages.registry import artifact_file as artifact_file  # where an artifact lives

Status = Literal["generated", "approved", "edited", "stale"]
MANIFEST = "manifest.json"
LOCK = ".lock"
LOG = "logs/run.log"
FOLDERS = ("paper", "planning", "analysis", "repo", "logs")
HISTORY = "history"  # earlier versions of replaced artifacts: history/<artifact file>.<n>
KEEP_VERSIONS = 10  # per artifact; older ones are deleted
MAX_FILE_BYTES = 64 * 1024 * 1024  # no artifact comes near this; a larger file is refused, not read into memory


def sha256(data: str | bytes) -> str:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return hashlib.sha256(raw).hexdigest()


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# What to do about an OS error while reading or writing the run folder, by errno.
_FIXES = {
    errno.ENOSPC: "the disk is full: free some space (or choose a run folder on another disk with --out)",
    errno.EDQUOT: "your disk quota is used up: free some space (or choose a run folder elsewhere with --out)",
    errno.EROFS: "the file system is read-only: choose a writable run folder with --out",
    errno.EACCES: "permission denied: make the run folder writable for you (or choose another with --out)",
    errno.EPERM: "the operation is not permitted: make the run folder writable for you (or choose another with --out)",
    errno.EIO: "an input/output error (a failing disk or a dropped network drive): check the disk",
    errno.ENAMETOOLONG: "a name is too long for this file system: shorten the planned file name (edit "
    "planning/design.json and planning/logic.json) or use a run folder with a shorter path",
    errno.EMFILE: "too many open files: raise the limit (`ulimit -n`)",
    errno.ENFILE: "the system has too many open files: close some programs",
    errno.ENOTDIR: "a file stands where a folder should be: move it away",
    errno.EISDIR: "a folder stands where a file should be: move it away",
}


def os_error_advice(exc: OSError) -> str:
    """One line for an OS error: what happened (with its errno name) and what to do about it."""
    name = errno.errorcode.get(exc.errno or 0, "")
    what = exc.strerror or str(exc)
    fix = _FIXES.get(exc.errno or 0, "check the run folder")
    return f"{what}{f' ({name})' if name else ''}; {fix}, then run again. Everything saved before is kept."


def atomic_write(path: Path, data: str | bytes, durable: bool = True) -> None:
    """Temp file in the same folder + os.replace: a crash leaves the old file or the new one.

    `durable` adds an fsync so the file also survives a power loss; bookkeeping writes skip it (5 ms each).
    An OS error (disk full, read-only, permissions...) removes the temp file and becomes a one-line RunError.
    The temp name is short (not the whole target name) so that a name the file system can hold always fits.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else data
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:24]}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(raw)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(exc, OSError):
            raise RunError(f"Cannot save {path}: {os_error_advice(exc)}") from None
        raise


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def _refuse(path: Path, mode: int, link: str | None, expected: str) -> RunError:
    target = f" (to {link})" if link is not None else ""
    return RunError(
        f"Refusing to read {path}: it is {_kind(mode)}{target} where {expected} should be, and p2c reads run files "
        f"only as regular files, never through links, pipes or devices. Remove it (and put the real {expected[2:]} "
        "there, or nothing to have it generated again), then run again."
    )


def open_regular(root: Path, rel: str) -> tuple[int, os.stat_result]:
    """Open root/rel for reading without following any link below `root`; only a regular file is opened.

    Each folder is opened relative to the one before with O_NOFOLLOW, so no link (planted or left behind) can
    send the read elsewhere, and the last part is checked before it is opened: a FIFO would block the open, a
    device would never end. Raises FileNotFoundError when nothing is there, RunError for anything else.
    """
    parts = Path(rel).parts
    if not {os.open, os.stat, os.readlink} <= os.supports_dir_fd:  # Windows: checked path by path instead
        return _open_regular_by_path(root, parts)
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    directory = getattr(os, "O_DIRECTORY", 0)
    where = root
    try:
        dir_fd = os.open(root, os.O_RDONLY | directory)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise RunError(f"Cannot read the run folder {root}: {os_error_advice(exc)}") from None
    try:
        for index, part in enumerate(parts):
            where = where / part
            info = os.stat(part, dir_fd=dir_fd, follow_symlinks=False)  # FileNotFoundError: nothing there
            last = index == len(parts) - 1
            wanted = stat.S_ISREG if last else stat.S_ISDIR
            if not wanted(info.st_mode):
                link = os.readlink(part, dir_fd=dir_fd) if stat.S_ISLNK(info.st_mode) else None
                raise _refuse(where, info.st_mode, link, "a file" if last else "a folder")
            flags = os.O_RDONLY | nofollow | getattr(os, "O_CLOEXEC", 0)
            flags |= getattr(os, "O_NONBLOCK", 0) if last else directory
            fd = os.open(part, flags, dir_fd=dir_fd)
            os.close(dir_fd)
            dir_fd = fd
        opened = os.fstat(dir_fd)
        if not stat.S_ISREG(opened.st_mode):  # swapped between the check and the open
            raise _refuse(where, opened.st_mode, None, "a file")
        return dir_fd, opened
    except FileNotFoundError:
        os.close(dir_fd)
        raise
    except OSError as exc:
        os.close(dir_fd)
        if exc.errno == errno.ELOOP:  # a link put there between the check and the open
            raise _refuse(where, stat.S_IFLNK, None, "a file or folder") from None
        raise RunError(f"Cannot read {where}: {os_error_advice(exc)}") from None
    except BaseException:
        os.close(dir_fd)
        raise


def _open_regular_by_path(root: Path, parts: tuple[str, ...]) -> tuple[int, os.stat_result]:
    """`open_regular` where folders cannot be opened (Windows): each part is checked, then the file opened."""
    where = root
    for index, part in enumerate(parts):
        where = where / part
        mode = os.lstat(where).st_mode  # FileNotFoundError: nothing there
        last = index == len(parts) - 1
        if not (stat.S_ISREG(mode) if last else stat.S_ISDIR(mode)):
            link = os.readlink(where) if stat.S_ISLNK(mode) else None
            raise _refuse(where, mode, link, "a file" if last else "a folder")
    try:
        fd = os.open(where, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise RunError(f"Cannot read {where}: {os_error_advice(exc)}") from None
    opened = os.fstat(fd)
    if not stat.S_ISREG(opened.st_mode):
        os.close(fd)
        raise _refuse(where, opened.st_mode, None, "a file")
    return fd, opened


def read_fd(fd: int, info: os.stat_result, path: Path, limit: int = MAX_FILE_BYTES, tail: bool = False) -> bytes:
    """Read an opened regular file, at most `limit` bytes; closes `fd`. `tail`: the last `limit` bytes."""
    try:
        if info.st_size > limit:
            if not tail:
                raise RunError(
                    f"Refusing to read {path}: it is {info.st_size // 1_000_000} MB, more than p2c reads as a run "
                    f"file ({limit // 1_000_000} MB). Replace it with the real file (or delete it) and run again."
                )
            os.lseek(fd, info.st_size - limit, os.SEEK_SET)
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit and not tail:
            raise RunError(f"Refusing to read {path}: it grew past {limit // 1_000_000} MB while being read.")
        return b"".join(chunks)[-limit:]
    except OSError as exc:
        raise RunError(f"Cannot read {path}: {os_error_advice(exc)}") from None
    finally:
        os.close(fd)


def read_regular(root: Path, rel: str, limit: int = MAX_FILE_BYTES, tail: bool = False) -> bytes:
    """The bytes of the regular file root/rel, read without following links (see `open_regular`)."""
    fd, info = open_regular(root, rel)
    return read_fd(fd, info, root / rel, limit, tail)


def manifest_text(data: dict[str, Any]) -> str:
    """The manifest as JSON with one line per artifact: readable, diffable, and encoded at C speed."""
    lines = []
    for key in sorted(data):
        value = data[key]
        if isinstance(value, dict) and key in ("artifacts", "pending", "derived", "history") and value:
            inner = ",\n".join(f"    {json.dumps(k)}: {json.dumps(value[k], sort_keys=True)}" for k in sorted(value))
            lines.append(f"  {json.dumps(key)}: {{\n{inner}\n  }}")
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value, sort_keys=True)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


@dataclass(frozen=True)
class Entry:
    """One artifact as the manifest records it."""

    artifact: str
    path: str
    sha256: str
    status: Status
    inputs: dict[str, str]
    model: str
    usage: Usage
    updated: str
    inputs_changed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "status": self.status,
            "inputs": self.inputs,
            "model": self.model,
            "usage": self.usage.to_dict(),
            "updated": self.updated,
            "inputs_changed": self.inputs_changed,
        }

    @classmethod
    def from_dict(cls, artifact: str, data: dict[str, Any]) -> Entry:
        return cls(
            artifact=artifact,
            path=str(data["path"]),
            sha256=str(data["sha256"]),
            status=data.get("status", "generated"),
            inputs=dict(data.get("inputs", {})),
            model=str(data.get("model", "")),
            usage=Usage.from_dict(data.get("usage", {})),
            updated=str(data.get("updated", "")),
            inputs_changed=bool(data.get("inputs_changed", False)),
        )


class RunStore:
    """Reads and writes one run folder. Thread-safe: files are generated concurrently."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._lock = threading.RLock()
        self._hashes: dict[str, tuple[int, int, str]] = {}
        self._dirty = False  # tokens spent that only memory holds
        self._notes: list[str] = []  # what locking recovered, handed out by the next refresh()
        self._held = 0  # how many `locked()` blocks of this process hold the run folder now
        self._data: dict[str, Any] = {
            "version": 1,
            "created": now(),
            "artifacts": {},
            "spent": Usage().to_dict(),
        }
        self.reload()

    def reload(self) -> None:
        """Read the manifest from disk: another process (CLI, second notebook) may have advanced the run.

        Held under the lock that writers in this process hold while they modify and flush.
        """
        manifest = self.root / MANIFEST
        with self._lock:
            try:
                raw = read_regular(self.root, MANIFEST)
            except FileNotFoundError:
                return
            try:
                data = json.loads(raw.decode("utf-8"))
            except ValueError as exc:
                raise RunError(
                    f"The manifest {manifest} is unreadable ({exc}). Restore it or start a new run."
                ) from None
            if not isinstance(data, dict) or "artifacts" not in data:
                raise RunError(f"{manifest} is not a p2c-notebook manifest. Choose another run folder.")
            self._data = data

    @staticmethod
    def is_run(path: Path | str) -> bool:
        return (Path(path) / MANIFEST).is_file()

    # --- manifest -------------------------------------------------------------------------------
    def _flush(self, durable: bool = False) -> None:
        """Write the manifest (atomically; an fsync only when asked: it is rebuilt from files if ever lost)."""
        atomic_write(self.root / MANIFEST, manifest_text(self._data), durable)
        self._dirty = False

    def flush(self) -> None:
        """Write what only memory holds (the tokens spent since the last artifact was saved)."""
        with self._lock:
            if self._dirty:
                self._flush()

    def _digest(self, rel: str) -> str:
        """sha256 of a run file, re-read only when its size or mtime changed since we last hashed it.

        Opened without following links and only as a regular file (FileNotFoundError when it is gone).
        """
        fd, info = open_regular(self.root, rel)
        cached = self._hashes.get(rel)
        if cached and cached[0] == info.st_mtime_ns and cached[1] == info.st_size:
            os.close(fd)
            return cached[2]
        digest = sha256(read_fd(fd, info, self.root / rel))
        self._hashes[rel] = (info.st_mtime_ns, info.st_size, digest)
        return digest

    def read_path(self, rel: str) -> str | None:
        """The text of a run file (None when there is none), read as `read` reads artifacts."""
        try:
            raw = read_regular(self.root, rel)
        except FileNotFoundError:
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RunError(
                f"{self.root / rel} is not UTF-8 text ({exc.reason} at byte {exc.start}). Save it as UTF-8 "
                "(or delete it to have it generated again) and run again."
            ) from None

    @property
    def meta(self) -> dict[str, Any]:
        return self._data

    def set_meta(self, **values: Any) -> None:
        with self._lock:
            self._data.update(values)
            self._flush()

    def entry(self, artifact: str) -> Entry | None:
        raw = self._data["artifacts"].get(artifact)
        return Entry.from_dict(artifact, raw) if raw else None

    def entries(self) -> list[Entry]:
        return [Entry.from_dict(a, d) for a, d in self._data["artifacts"].items()]

    def spent(self) -> Usage:
        """Everything paid for in this run folder, re-asks and failed attempts included."""
        return Usage.from_dict(self._data.get("spent", {}))

    def add_spent(self, usage: Usage) -> None:
        """Counted at once, written with the next manifest write (the artifact's save, or `flush`)."""
        with self._lock:
            self._data["spent"] = (self.spent() + usage).to_dict()
            self._dirty = True

    # --- artifacts ------------------------------------------------------------------------------
    def read(self, artifact: str) -> str:
        entry = self.entry(artifact)
        if entry is None:
            raise RunError(f"{artifact} has not been generated yet in {self.root}. Run `p2c run` first.")
        text = self.read_path(entry.path)
        if text is None:
            raise RunError(f"{self.root / entry.path} is missing; `p2c run {self.root}` generates {artifact} again.")
        return text

    def hash_of(self, artifact: str) -> str | None:
        entry = self.entry(artifact)
        return entry.sha256 if entry else None

    def save(
        self,
        artifact: str,
        content: str,
        inputs: dict[str, str],
        model: str = "",
        usage: Usage | None = None,
        status: Status = "generated",
        extra_files: dict[str, str] | None = None,
    ) -> Entry:
        """Write the artifact file (and derived files) atomically, then record it in the manifest.

        The entry is first recorded as pending: if the process dies after the file is replaced but before
        the manifest records it, the next writer adopts the file (see `locked`) instead of taking the new
        content for a user edit or paying for it again.
        """
        rel = artifact_file(artifact)
        target = self._inside(rel)
        extras = {self._inside(extra_rel): extra for extra_rel, extra in (extra_files or {}).items()}
        entry = Entry(artifact, rel, sha256(content), status, dict(inputs), model, usage or Usage(), now())
        self._keep_version(artifact, content)
        with self._lock:
            self._data.setdefault("pending", {})[artifact] = entry.to_dict()
            try:
                self._flush()
            except RunError:
                self._drop_pending(artifact)
                raise
        try:
            for path, extra in extras.items():
                atomic_write(path, extra)
            atomic_write(target, content)
            info = os.lstat(target)
        except (RunError, OSError) as exc:
            with self._lock, contextlib.suppress(RunError):  # the disk may refuse this too: pending is harmless
                self._drop_pending(artifact)
                self._flush()
            if isinstance(exc, OSError):
                raise RunError(f"Cannot save {target}: {os_error_advice(exc)}") from None
            raise
        with self._lock:
            self._hashes[rel] = (info.st_mtime_ns, info.st_size, entry.sha256)
            self._data["artifacts"][artifact] = entry.to_dict()
            self._drop_pending(artifact)
            self._flush()
        return entry

    # --- earlier versions ------------------------------------------------------------------------
    def _keep_version(self, artifact: str, content: str) -> None:
        """Before an artifact is replaced (regenerated, edited, re-run), copy the version on disk to
        history/<file>.<n> and record it, so it can be compared with the new one; the last KEEP_VERSIONS are kept.

        The copy is written before the new version, so a crash in between loses nothing; a copy whose record did
        not get written is simply written again under the same number."""
        raw = self._data["artifacts"].get(artifact)
        if raw is None:
            return
        try:
            old = self.read_path(str(raw["path"]))
        except RunError:
            return  # not readable text: nothing to compare against
        if old is None or old == content:
            return
        with self._lock:
            kept: list[dict[str, Any]] = list((self._data.get(HISTORY) or {}).get(artifact, []))
            number = (int(kept[-1]["n"]) + 1) if kept else 1
            rel = f"{HISTORY}/{raw['path']}.{number}"
            atomic_write(self._inside(rel), old)
            kept.append(
                {
                    "n": number,
                    "path": rel,
                    "sha256": sha256(old),
                    "status": str(raw.get("status", "")),
                    "model": str(raw.get("model", "")),
                    "updated": str(raw.get("updated", "")),
                    "replaced": now(),
                }
            )
            for gone in kept[:-KEEP_VERSIONS]:
                with contextlib.suppress(OSError):
                    (self.root / str(gone["path"])).unlink()
            self._data.setdefault(HISTORY, {})[artifact] = kept[-KEEP_VERSIONS:]

    def versions(self, artifact: str) -> list[dict[str, Any]]:
        """The kept earlier versions of an artifact, oldest first: n, path, sha256, status, model, updated (when
        that version was saved) and replaced (when it was replaced)."""
        return [dict(v) for v in (self._data.get(HISTORY) or {}).get(artifact, [])]

    def version_text(self, artifact: str, number: int) -> str:
        """The text of an earlier version (`versions`' n)."""
        found = next((v for v in self.versions(artifact) if int(v["n"]) == number), None)
        if found is None:
            kept = ", ".join(str(v["n"]) for v in self.versions(artifact)) or "none"
            raise RunError(f"{artifact} has no earlier version {number} in {self.root} (kept: {kept}).")
        text = self.read_path(str(found["path"]))
        if text is None:
            raise RunError(f"{self.root / str(found['path'])} is missing: that earlier version of {artifact} is gone.")
        return text

    # --- derived files ---------------------------------------------------------------------------
    def save_derived(self, rel: str, content: str | bytes, source: str, source_sha256: str | None = None) -> bool:
        """Write a file made from an artifact (a diagram's SVG, the dependency graph) and record in the manifest
        the hash of the version of `source` it was made from, so views judge it current by that hash (file times
        lie after a copy, a checkout or an edit made within the same second).

        Recorded while this process holds the run folder (a run of its own in progress) or can take it now; when
        another process holds it, the file is written all the same and views make it again later. Returns whether
        it was recorded. `source_sha256` names the version for a source that is not one artifact (the repository
        folder a zip is made from)."""
        digest = source_sha256 or self.hash_of(source)
        if digest is None:
            raise RunError(f"{source} does not exist yet: generate it before the files made from it.")
        target = self._inside(rel)
        try:
            atomic_write(target, content)
        except OSError as exc:
            raise RunError(f"Cannot save {target}: {os_error_advice(exc)}") from None
        record = {"source": source, "source_sha256": digest, "sha256": sha256(content)}
        if self._held:
            self._record_derived(rel, record)
            return True
        try:
            with self.locked():
                self._record_derived(rel, record)
        except RunError:
            return False
        return True

    def _record_derived(self, rel: str, record: dict[str, str]) -> None:
        with self._lock:
            self._data.setdefault("derived", {})[rel] = record
            self._flush()

    def derived(self, rel: str) -> str | None:
        """A derived file's text while it is current: made from its source artifact as that is now, and not
        changed since it was written (None otherwise: make it again)."""
        record = (self._data.get("derived") or {}).get(rel)
        if not isinstance(record, dict) or self.hash_of(str(record.get("source"))) != record.get("source_sha256"):
            return None
        try:
            text = self.read_path(rel)
        except RunError:
            return None
        return text if text is not None and sha256(text) == record.get("sha256") else None

    def _drop_pending(self, artifact: str) -> None:
        pending = self._data.get("pending", {})
        pending.pop(artifact, None)
        if not pending:
            self._data.pop("pending", None)

    def adopt(
        self,
        artifact: str,
        text: str,
        inputs: dict[str, str],
        status: Status = "edited",
        extra_files: dict[str, str] | None = None,
        persist: bool = True,
    ) -> Entry:
        """Record a file someone else wrote where `artifact` was missing (its text as read), without a call.

        `persist=False` records it in memory only (a read-only view such as `p2c status`).
        """
        rel = artifact_file(artifact)
        entry = Entry(artifact, rel, sha256(text), status, dict(inputs), "", Usage(), now())
        with self._lock:
            if persist:
                for extra_rel, extra in (extra_files or {}).items():
                    atomic_write(self._inside(extra_rel), extra)
            self._data["artifacts"][artifact] = entry.to_dict()
            if persist:
                self._flush()
        return entry

    def set_status(self, artifact: str, status: Status) -> None:
        with self._lock:
            entry = self._data["artifacts"].get(artifact)
            if entry is None:
                raise RunError(f"{artifact} does not exist in {self.root} yet; nothing to mark {status}.")
            entry["status"] = status
            entry["updated"] = now()
            self._flush()

    def forget(self, artifact: str, delete_file: bool) -> None:
        with self._lock:
            raw = self._data["artifacts"].pop(artifact, None)
            self._flush()
        if raw and delete_file:
            with contextlib.suppress(OSError):
                (self.root / raw["path"]).unlink()

    def _inside(self, rel: str) -> Path:
        """A run-relative path that stays inside the run folder and passes through no symbolic link.

        Generated files are never written (or read) through a link: a link in the run folder, planted or
        left behind, could otherwise send a write anywhere on the machine.
        """
        current = self.root
        for part in Path(rel).parts:
            current = current / part
            if current.is_symlink():
                raise RunError(
                    f"Refusing to use {rel}: {current} is a symbolic link (to {os.readlink(current)}), and p2c "
                    "never reads or writes generated files through links. Remove the link and run again."
                )
        root = self.root.resolve()
        target = (root / rel).resolve()
        if target != root and root not in target.parents:
            raise RunError(f"Refusing to use {rel}: it resolves outside the run folder {self.root}.")
        return self.root / rel

    # --- derived status -------------------------------------------------------------------------
    def refresh(self, order: list[str], persist: bool = True) -> list[str]:
        """Detect user edits and propagate staleness along `order` (dependencies first).

        Returns messages about what changed, for the caller to emit as notices.
        """
        with self._lock:
            notes, self._notes = self._notes, []
            artifacts: dict[str, dict[str, Any]] = self._data["artifacts"]
            current: dict[str, str] = {}
            before = json.dumps(artifacts, sort_keys=True)
            for name, raw in list(artifacts.items()):
                try:
                    digest = self._digest(raw["path"])
                except FileNotFoundError:
                    notes.append(f"{raw['path']} is missing; {name} will be generated again.")
                    del artifacts[name]
                    continue
                if digest != raw["sha256"]:
                    raw["sha256"] = digest
                    raw["status"] = "edited"
                    raw["updated"] = now()
                    notes.append(f"{name} was edited; everything that depends on it is now stale.")
                current[name] = digest
            stale: set[str] = set()
            for name in order + [a for a in artifacts if a not in order]:
                record = artifacts.get(name)
                if record is None:
                    continue
                raw = record
                changed = any(current.get(dep) != digest or dep in stale for dep, digest in raw["inputs"].items())
                if raw["status"] == "edited":
                    raw["inputs_changed"] = changed
                    continue
                if changed or raw["status"] == "stale":  # stale stays stale until regenerated
                    stale.add(name)
                    raw["status"] = "stale"
            if persist and json.dumps(artifacts, sort_keys=True) != before:
                self._flush()
        return notes

    def _remove_temp_files(self) -> int:
        """Half-written temp files of a killed writer are never artifacts: remove them."""
        removed = 0
        for leftover in self.root.rglob(".*.tmp"):
            with contextlib.suppress(OSError):
                leftover.unlink()
                removed += 1
        return removed

    def _recover_pending(self) -> list[str]:
        """Adopt files that a killed writer finished writing but did not get to record (see `save`).

        A file that is there but is not what the writer meant to write stays pending: it is the writer's unfinished
        work, so it is neither recorded nor taken for a file the user wrote (see `Pipeline._adopt`), and the step
        that writes it runs again.
        """
        pending: dict[str, dict[str, Any]] = self._data.pop("pending", None) or {}
        adopted, unfinished = [], {}
        for artifact, raw in pending.items():
            try:
                digest = sha256(read_regular(self.root, raw["path"]))
            except (OSError, RunError):
                continue
            if digest == raw["sha256"]:
                self._data["artifacts"][artifact] = raw
                adopted.append(artifact)
            else:
                unfinished[artifact] = raw
        if unfinished:
            self._data["pending"] = unfinished
        if pending != unfinished:
            self._flush()
        return adopted

    def _check_links(self) -> None:
        """The run folder's own folders and bookkeeping files must be what they seem: no links, pipes, devices.

        A FIFO as the lock or log would block the run forever; a link would send writes elsewhere.
        """
        for name in (*FOLDERS, MANIFEST, LOG, LOCK):
            path = self.root / name
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise RunError(f"Cannot use {path}: {os_error_advice(exc)}") from None
            wanted = stat.S_ISDIR(mode) if name in FOLDERS else stat.S_ISREG(mode)
            if stat.S_ISLNK(mode):
                raise RunError(
                    f"{path} is a symbolic link (to {os.readlink(path)}); p2c writes only inside the run folder "
                    "and never through links. Replace the link with a folder (or remove it) and run again."
                )
            if not wanted:
                expected = "a folder" if name in FOLDERS else "a regular file"
                raise RunError(
                    f"{path} is {_kind(mode)}, where p2c keeps {expected}. Move it out of the run folder and run again."
                )

    @staticmethod
    def _owner(record: str) -> str:
        """Who holds the lock, from the lock file's `pid N on HOST since TIME` line."""
        match = re.fullmatch(r"pid (\d+) on (\S+) since (\S+)", record)
        if not match:
            return "another process"
        pid, host, since = int(match.group(1)), match.group(2), match.group(3)
        if pid == os.getpid() and host == socket.gethostname():
            return (
                f"another pipeline in this same process (pid {pid}, since {since}): a second walkthrough or "
                "Pipeline on the same folder; wait for its run to finish or close it"
            )
        return f"process {pid} on {host} (since {since})"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold an exclusive lock on the run folder; a second writer gets a clear error.

        The kernel drops the lock when the process dies, so a killed run leaves no stale lock: its owner
        line is still in the file, which is how the next writer knows to report a recovery.
        """
        lock_path = self.root / LOCK
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunError(f"Cannot create the run folder {self.root}: {os_error_advice(exc)}") from None
        self._check_links()
        try:
            flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
            fd = os.open(lock_path, flags, 0o644)
        except OSError as exc:
            raise RunError(
                f"Cannot open the lock file {lock_path}: {os_error_advice(exc)} If it is a link, remove it."
            ) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise RunError(f"{lock_path} is not a regular file. Remove it and run again.")
        handle = os.fdopen(fd, "r+", encoding="utf-8")
        acquired = False
        try:
            try:
                import fcntl

                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except ImportError:  # pragma: no cover - Windows: best effort, no lock
                pass
            except OSError:
                owner = self._owner(handle.read().strip())
                raise RunError(
                    f"The run {self.root} is in use by {owner}. Only one process or notebook can write a run "
                    "folder at a time: wait for the other run to finish or stop it, then run again."
                ) from None
            acquired = True
            previous = handle.read().strip()
            try:
                handle.seek(0)
                handle.truncate()
                handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {now()}\n")
                handle.flush()
            except OSError as exc:
                raise RunError(f"Cannot write the lock file {lock_path}: {os_error_advice(exc)}") from None
            with self._lock:
                self.reload()
                adopted = self._recover_pending()
            removed = self._remove_temp_files()
            parts = [f"the run that held it ({previous}) stopped without finishing"] if previous else []
            if removed:
                parts.append(f"removed {removed} half-written temporary file(s)")
            if adopted:
                parts.append(f"kept {', '.join(adopted)}, fully written just before that run stopped")
            if parts:
                self._notes.append("Recovered the run folder: " + "; ".join(parts) + ".")
            self._held += 1
            try:
                yield
            finally:
                self._held -= 1
        finally:
            if acquired:  # a clean exit leaves an empty lock file: nothing to recover next time
                with contextlib.suppress(OSError):
                    handle.seek(0)
                    handle.truncate()
            handle.close()
