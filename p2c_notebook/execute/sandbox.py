"""Run a command on a copy of a run's `repo/`, in a sandbox: no network, no secrets, bounded resources.

Generated code is untrusted. The command sees a scratch copy of the repository and nothing it could damage or
leak: with bubblewrap, a fresh root holding only the system folders and the interpreter, read-only; no network,
no home folder, no run folder. With plain `unshare`, the network is cut and the process runs as an unprivileged
user when p2c runs as root, but the file system is the host's (see `ISOLATION_NOTES`). Limits on CPU time,
memory, processes and file size are set in the child; the wall time is kept by the parent. The output streams as
`ExecOutput` events and is saved, with the outcome, in the run folder by the parent, which the sandbox cannot
write.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import resource
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from p2c_notebook.errors import ConfigError, RunError
from p2c_notebook.run.events import Event

#: The user the sandboxed command runs as when p2c runs as root (RLIMIT_NPROC does not bind root).
NOBODY = 65534
#: Where the scratch folder appears inside a bubblewrap sandbox.
INSIDE = "/sandbox"
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
LOG_LIMIT = 20 * 1024 * 1024  # bytes of output kept in exec/attempt-N.log; the rest is counted, not kept
INSTALL_HINT = (
    "Install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`; Fedora: `dnf install bubblewrap`) or make "
    "`unshare` (util-linux) work, or pass --no-sandbox to run the generated code unconfined, at your own risk."
)
ISOLATION_NOTES = {
    "bwrap": "bubblewrap: no network; only system folders and the interpreter visible, read-only; home and run "
    "folder hidden",
    "unshare": "unshare: no network; the host's files stay visible (readable where their permissions allow"
    "{user}); install bubblewrap to hide them",
    "none": "no sandbox (--no-sandbox): network, files and home folder reachable; only the resource limits apply",
}


@dataclass(frozen=True)
class Limits:
    """Resource limits of one run; the defaults suit a smoke run on a laptop."""

    cpu_s: int = 600
    wall_s: float = 900.0
    memory_mb: int = 4096
    processes: int = 256
    file_mb: int = 1024


@dataclass(frozen=True)
class ExecOutput(Event):
    """Output of the sandboxed command, as it arrives (stdout and stderr together)."""

    text: str = ""


@dataclass(frozen=True)
class Outcome:
    """How one run ended; saved as exec/attempt-N.json and in the manifest's `exec` meta."""

    attempt: int
    command: list[str]
    isolation: str
    passed: bool
    exit_code: int | None
    reason: str  # "passed", "exit status 1", "wall time limit (900 s)", "memory limit (4096 MiB): MemoryError"...
    seconds: float
    peak_memory_mb: float
    log: str  # run-folder path of the saved output
    limits: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        verdict = "ran" if self.passed else "failed"
        return (
            f"Attempt {self.attempt} {verdict}: {self.reason} ({self.seconds:.1f} s, peak memory "
            f"{self.peak_memory_mb:.0f} MiB); output in {self.log}"
        )


def isolation(no_sandbox: bool = False) -> str:
    """The best isolation this machine offers: "bwrap", "unshare", or "none" (only when asked for explicitly)."""
    if no_sandbox:
        return "none"
    if bwrap_works():
        return "bwrap"
    if unshare_works():
        return "unshare"
    raise ConfigError(f"This machine offers no sandbox for the generated code. {INSTALL_HINT}")


def bwrap_works() -> bool:
    return _works(["bwrap", "--ro-bind", "/", "/", "--unshare-net", "--dev", "/dev", "true"])


def unshare_works() -> bool:
    return _works(["unshare", "-n", "true"] if os.geteuid() == 0 else ["unshare", "-rn", "true"])


def describe_isolation(kind: str) -> str:
    user = "; it runs as the user 'nobody'" if os.geteuid() == 0 else ", including your home folder"
    return ISOLATION_NOTES[kind].format(user=user)


def _works(argv: list[str]) -> bool:
    if shutil.which(argv[0]) is None:
        return False
    try:
        return subprocess.run(argv, capture_output=True, timeout=20, check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def interpreter(python: Path) -> Path:
    """The interpreter `python` really starts (a pyenv shim or wrapper script names another), asked of it."""
    return Path(_ask(python)[3])


def interpreter_prefixes(python: Path) -> list[str]:
    """The folders an interpreter needs (its prefix, base prefix, the folder of its executable), asked of it."""
    found = _ask(python)
    folders = {*found[:3], str(Path(found[3]).parent), str(python.parent), str(python.resolve().parent)}
    return sorted(f for f in folders if f and not any(_under(f, s) for s in SYSTEM_DIRS))


def _ask(python: Path) -> list[str]:
    if not os.access(python, os.X_OK):
        raise ConfigError(f"--python {python}: no executable there; give the path of a Python interpreter.")
    script = "import json, sys; print(json.dumps([sys.prefix, sys.base_prefix, sys.exec_prefix, sys.executable]))"
    try:
        done = subprocess.run(
            [str(python), "-I", "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env={"PATH": os.defpath, "LANG": "C.UTF-8"},
        )
        found: list[str] = json.loads(done.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise ConfigError(f"--python {python} does not run as a Python interpreter ({exc}).") from None
    return found


def open_to_others(python: Path) -> bool:
    """Whether a user other than its owner can run the interpreter (each folder above it searchable)."""
    folders = {*python.absolute().parents, *python.resolve().parents}
    return all(f.stat().st_mode & 0o001 for f in folders) and python.stat().st_mode & 0o005 == 0o005


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def next_attempt(run_dir: Path) -> int:
    numbers = [int(p.stem.split("-")[1]) for p in (run_dir / "exec").glob("attempt-*.log") if p.stem[8:].isdigit()]
    return max(numbers, default=0) + 1


def run(
    run_dir: Path,
    command: Sequence[str],
    python: Path,
    *,
    limits: Limits = Limits(),
    kind: str = "bwrap",
    sink: Callable[[Event], None] | None = None,
) -> Outcome:
    """Run `command` in a scratch copy of `run_dir/repo` under `kind` isolation; save and return the outcome.

    `python` is what `python`/`python3` mean inside (put first on PATH). The scratch folder is removed after."""
    repo = run_dir / "repo"
    if not repo.is_dir():
        raise RunError(f"{run_dir} has no generated repository (repo/); run `p2c run {run_dir}` first.")
    prefixes = interpreter_prefixes(python)
    if kind != "bwrap" and os.geteuid() == 0 and not open_to_others(python):
        raise ConfigError(
            f"--python {python} is in a folder closed to other users, and without bubblewrap the sandbox runs the "
            "code as the user 'nobody'. Install bubblewrap (`apt-get install bubblewrap`) or use an interpreter "
            "outside your home folder."
        )
    exec_dir = run_dir / "exec"
    exec_dir.mkdir(exist_ok=True)
    attempt = next_attempt(run_dir)
    log_path = exec_dir / f"attempt-{attempt}.log"
    scratch = Path(tempfile.mkdtemp(prefix="p2c-exec-"))
    try:
        _prepare_scratch(scratch, repo, python)
        inside = INSIDE if kind == "bwrap" else str(scratch)
        argv = _wrap(kind, scratch, prefixes, list(command))
        env = {
            "PATH": f"{inside}/bin:/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "HOME": f"{inside}/home",
            "TMPDIR": f"{inside}/tmp",
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "MPLBACKEND": "Agg",
        }
        cwd = scratch / "repo"
        started = time.monotonic()
        code, timed_out, maxrss_kb, cpu_s, tail = _supervise(argv, env, cwd, limits, kind, log_path, sink)
        seconds = time.monotonic() - started
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    reason = classify(code, timed_out, cpu_s, tail, limits)
    outcome = Outcome(
        attempt=attempt,
        command=list(command),
        isolation=kind,
        passed=reason == "passed",
        exit_code=code,
        reason=reason,
        seconds=round(seconds, 2),
        peak_memory_mb=round(maxrss_kb / 1024, 1),
        log=f"exec/{log_path.name}",
        limits=asdict(limits),
    )
    (exec_dir / f"attempt-{attempt}.json").write_text(json.dumps(outcome.to_dict(), indent=2) + "\n")
    return outcome


def _prepare_scratch(scratch: Path, repo: Path, python: Path) -> None:
    shutil.copytree(repo, scratch / "repo", symlinks=True)
    for name in ("home", "tmp", "bin"):
        (scratch / name).mkdir()
    for name in ("python", "python3"):  # a script, not a link: the interpreter must see its own path (venvs)
        wrapper = scratch / "bin" / name
        wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(str(python.absolute()))} "$@"\n')
        wrapper.chmod(0o755)
    scratch.chmod(0o755)
    if os.geteuid() == 0:  # the command runs as nobody: its scratch copy must be its own
        for folder, dirs, files in os.walk(scratch):
            for name in [*dirs, *files]:
                os.lchown(os.path.join(folder, name), NOBODY, NOBODY)
        os.chown(scratch, NOBODY, NOBODY)


def _drop_privileges() -> list[str]:
    """As root, the command runs as nobody (through setpriv), so that the process limit binds and root's files
    stay closed to it."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        raise ConfigError("Running as root, the sandbox needs `setpriv` (util-linux) to drop to an unprivileged user.")
    return [
        "setpriv",
        f"--reuid={NOBODY}",
        f"--regid={NOBODY}",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
    ]


def _wrap(kind: str, scratch: Path, prefixes: list[str], command: list[str]) -> list[str]:
    if kind == "none":
        return _drop_privileges() + command
    if kind == "unshare":
        flags = ["-n", "-p", "-f", "--kill-child", "--mount-proc"]
        return (
            ["unshare", *flags, *_drop_privileges(), *command]
            if os.geteuid() == 0
            else ["unshare", "-r", *flags, *command]
        )
    argv = [
        "bwrap",
        "--die-with-parent",
        "--new-session",
        "--unshare-net",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
    ]
    for folder in SYSTEM_DIRS:
        path = Path(folder)
        if path.is_symlink():
            argv += ["--symlink", os.readlink(path), folder]
        elif path.is_dir():
            argv += ["--ro-bind", folder, folder]
    made: set[str] = set()
    for prefix in prefixes:
        for parent in reversed(Path(prefix).parents):
            text = str(parent)
            if text != "/" and text not in made and not any(_under(text, s) for s in SYSTEM_DIRS):
                argv += ["--perms", "0755", "--dir", text]
                made.add(text)
        argv += ["--ro-bind", prefix, prefix]
    argv += ["--bind", str(scratch), INSIDE, "--chdir", f"{INSIDE}/repo"]
    if os.geteuid() == 0:
        return argv + ["--cap-add", "CAP_SETUID,CAP_SETGID", *_drop_privileges(), *command]
    return argv + ["--unshare-user", *command]


def _limit_child(limits: Limits, processes: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 5))
        memory = limits.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))
        size = limits.file_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def _process_budget(limits: Limits) -> int:
    """RLIMIT_NPROC counts every process of the user: as nobody that is the sandbox's own; otherwise add the
    user's processes already running."""
    if os.geteuid() == 0:
        return limits.processes
    uid = os.getuid()
    running = sum(1 for p in Path("/proc").iterdir() if p.name.isdigit() and _owner(p) == uid)
    return running + limits.processes


def _owner(path: Path) -> int:
    try:
        return path.stat().st_uid
    except OSError:
        return -1


def _supervise(
    argv: list[str],
    env: dict[str, str],
    cwd: Path,
    limits: Limits,
    kind: str,
    log_path: Path,
    sink: Callable[[Event], None] | None,
) -> tuple[int | None, bool, int, float, str]:
    """Start, stream, enforce the wall time; return (exit code, timed out, peak RSS in KiB, CPU seconds, tail)."""
    try:
        proc = subprocess.Popen(  # noqa: S603 - the argv is built above, never through a shell
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_limit_child(limits, _process_budget(limits)),
            start_new_session=True,
        )
    except OSError as exc:
        raise ConfigError(f"Could not start the sandbox ({exc}). {INSTALL_HINT}") from None
    tail: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=_pump, args=(proc.stdout.fileno(), log_path, sink, tail), daemon=True)
    reader.start()
    deadline = time.monotonic() + limits.wall_s
    timed_out = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            timed_out = True
            _kill(proc.pid)
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if kind == "none":
        _kill(proc.pid)  # anything it left behind in its process group
    reader.join(timeout=5)
    proc.stdout.close()
    return proc.returncode, timed_out, usage.ru_maxrss, usage.ru_utime + usage.ru_stime, "".join(tail)[-65536:]


def _kill(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _pump(fd: int, log_path: Path, sink: Callable[[Event], None] | None, tail: list[str]) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    written = dropped = 0
    with log_path.open("w", encoding="utf-8") as log:
        while chunk := os.read(fd, 65536):
            text = decoder.decode(chunk)
            if written < LOG_LIMIT:
                log.write(text)
                log.flush()
                written += len(chunk)
            else:
                dropped += len(chunk)
            tail.append(text)
            if len(tail) > 64:
                del tail[: len(tail) - 32]
            if sink is not None and text:
                sink(ExecOutput(text=text))
        if dropped:
            log.write(f"\n[p2c: {dropped} more bytes of output not kept]\n")


_SIGNS = (
    ("MemoryError", "memory"),
    ("Cannot allocate memory", "memory"),
    ("std::bad_alloc", "memory"),
    ("Cannot fork", "processes"),
    ("Resource temporarily unavailable", "processes"),
    ("can't start new thread", "processes"),
    ("Network is unreachable", "network"),
    ("ConnectionRefusedError", "network"),  # bubblewrap's namespace has its own loopback, with nothing on it
    ("Temporary failure in name resolution", "network"),
    ("Name or service not known", "network"),
)


def classify(code: int | None, timed_out: bool, cpu_s: float, tail: str, limits: Limits) -> str:
    """Why a run ended, in words: "passed", or the limit it hit, or its exit status."""
    if timed_out:
        return f"wall time limit ({limits.wall_s:g} s): stopped"
    signum = -code if code is not None and code < 0 else code - 128 if code is not None and code > 128 else 0
    if signum == signal.SIGXCPU or (code != 0 and cpu_s >= limits.cpu_s):  # unshare reports the signal as 1
        return f"CPU time limit ({limits.cpu_s} s)"
    if signum == signal.SIGXFSZ:
        return f"file size limit ({limits.file_mb} MiB)"
    if code == 0:
        return "passed"
    status = (
        f"killed by signal {signal.Signals(signum).name}"
        if signum in signal.valid_signals() and signum
        else (f"exit status {code}")
    )
    found = {what: sign for sign, what in reversed(_SIGNS) if sign in tail}
    if "memory" in found:
        return f"{status}: memory limit ({limits.memory_mb} MiB) reached ({found['memory']})"
    if "processes" in found:
        return f"{status}: process limit ({limits.processes}) reached ({found['processes']})"
    if "network" in found:
        return f"{status}: it needs the network, which the sandbox cuts ({found['network']})"
    return status
