"""The run folder under hostile conditions: a full disk, links and pipes where artifacts belong, and files the user
wrote by hand. Every case ends in success or one line with exit 6 (or 5 for an invalid file), in bounded time, with
nothing outside the run folder touched and nothing paid for twice.

Commands that could hang or exhaust memory if a guard failed (a FIFO, /dev/zero) run as `p2c` subprocesses with a
time limit, so a regression fails the test instead of hanging it.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CODE, DESIGN, settings_for, small_scenario, subprocess_env

from p2c_notebook.cli import main
from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.run.store import atomic_write, sha256

LIMIT_S = 60  # far above what any case needs; only a hang reaches it


def calls(server: Any) -> Counter[tuple[str, str]]:
    return Counter((r["stage"], r["file"]) for r in server.requests)


def p2c(server: Any, *argv: str) -> subprocess.CompletedProcess[str]:
    """`p2c ARGV` as a subprocess talking to `server`, killed after LIMIT_S."""
    cmd = [sys.executable, "-m", "p2c_notebook.cli", *argv]
    return subprocess.run(cmd, env=subprocess_env(server), capture_output=True, text=True, timeout=LIMIT_S)


def p2c_each(server: Any, *argvs: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """Several `p2c` commands that only read (or refuse) at once, each killed after LIMIT_S."""
    cmd = [sys.executable, "-m", "p2c_notebook.cli"]
    env = subprocess_env(server)
    procs = [
        subprocess.Popen([*cmd, *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for argv in argvs
    ]
    done = []
    for argv, proc in zip(argvs, procs, strict=True):
        try:
            out, err = proc.communicate(timeout=LIMIT_S)
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            raise AssertionError(f"p2c {' '.join(argv)} ran past {LIMIT_S} s") from None
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def one_line_error(stderr: str, *words: str) -> str:
    """The error is the last line, says `words`, and no traceback came with it."""
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("p2c: error: "), stderr
    for word in words:
        assert word in last, last
    return last


def snapshot(folder: Path, skip: Path) -> dict[str, bytes]:
    """Every regular file under `folder` outside `skip`, with its bytes (links as their target)."""
    files = {}
    for path in folder.rglob("*"):
        if skip in path.parents or path == skip:
            continue
        if path.is_symlink():
            files[str(path)] = os.readlink(path).encode()
        elif path.is_file():
            files[str(path)] = path.read_bytes()
    return files


def check_consistent(run: Path) -> dict[str, Any]:
    """The manifest parses, every recorded file matches its hash, and no temp file is left."""
    artifacts: dict[str, Any] = json.loads((run / "manifest.json").read_text())["artifacts"]
    for name, entry in artifacts.items():
        assert sha256((run / entry["path"]).read_bytes()) == entry["sha256"], name
    assert not list(run.rglob("*.tmp"))
    return artifacts


def asked(artifact: str) -> tuple[str, str]:
    stage, _, file = artifact.partition("/")
    return (stage, file) if stage in ("analysis", "code") else (stage, "")


@pytest.fixture
def finished(serve: Any, paper_md: Path, tmp_path: Path) -> tuple[Any, Path]:
    """A scripted server and a run folder the pipeline completed against it."""
    server = serve(small_scenario())
    run = tmp_path / "run"
    with Pipeline.start(paper_md, run, settings=settings_for(server)) as pipeline:
        assert pipeline.run().state == "done"
    return server, run


# --- disk full and other OS errors while saving --------------------------------------------------------------------

FIXES = {
    errno.ENOSPC: "disk is full",
    errno.EDQUOT: "quota",
    errno.EROFS: "read-only",
    errno.EACCES: "permission denied",
    errno.EIO: "input/output error",
    errno.ENAMETOOLONG: "too long",
}


def fail_replace(monkeypatch: pytest.MonkeyPatch, code: int, when: Callable[[str], bool]) -> None:
    """os.replace fails with `code` for the destinations `when` picks, as the kernel would."""
    real = os.replace

    def replace(src: Any, dst: Any, **kwargs: Any) -> None:
        if when(str(dst)):
            raise OSError(code, os.strerror(code), str(dst))
        real(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("code", list(FIXES), ids=[errno.errorcode[c] for c in FIXES])
def test_an_os_error_saving_a_file_is_one_line_exit_6_and_the_rerun_pays_only_for_the_rest(
    code: int,
    monkeypatch: pytest.MonkeyPatch,
    serve: Any,
    paper_md: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = serve(small_scenario())
    for key, value in subprocess_env(server).items():
        monkeypatch.setenv(key, value)
    run = tmp_path / "run"
    outside = snapshot(tmp_path, run)
    argv = ["run", str(paper_md), "--out", str(run), "--concurrency", "1"]
    with monkeypatch.context() as patch:
        fail_replace(patch, code, lambda dst: dst.endswith("repo/models/net.py"))
        assert main(argv) == 6
    line = one_line_error(capsys.readouterr().err, "Cannot save", "repo/models/net.py", FIXES[code])
    assert errno.errorcode[code] in line and "Everything saved before is kept" in line
    saved = check_consistent(run)
    assert "pending" not in json.loads((run / "manifest.json").read_text())
    assert "code/data.py" in saved and "code/models/net.py" not in saved
    assert not (run / "repo/models/net.py").exists(), "nothing half-written"
    before = calls(server)
    assert main(["run", str(run)]) == 0
    again = calls(server) - before
    assert not [a for a in saved if again[asked(a)]], f"saved artifacts asked again: {again}"
    assert again[("code", "models/net.py")] == 1
    assert (run / "repo/models/net.py").read_text() == CODE["models/net.py"]
    assert snapshot(tmp_path, run) == outside


def test_a_name_the_file_system_holds_is_never_too_long_for_its_temporary_file(tmp_path: Path) -> None:
    """The temp file of an atomic write is named from a short prefix, not the whole (up to 255-byte) name."""
    longest = tmp_path / ("n" * 252 + ".py")
    atomic_write(longest, "x = 1\n")
    assert longest.read_text() == "x = 1\n" and [p.name for p in tmp_path.iterdir()] == [longest.name]


def test_a_manifest_that_cannot_be_written_keeps_the_saved_file_and_the_rerun_adopts_it(
    monkeypatch: pytest.MonkeyPatch,
    serve: Any,
    paper_md: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The disk fills between an artifact's file and the manifest line that records it."""
    server = serve(small_scenario())
    for key, value in subprocess_env(server).items():
        monkeypatch.setenv(key, value)
    run = tmp_path / "run"
    argv = ["run", str(paper_md), "--out", str(run), "--concurrency", "1"]
    with monkeypatch.context() as patch:
        fail_replace(patch, errno.ENOSPC, lambda dst: dst.endswith("manifest.json") and (run / "repo/data.py").exists())
        assert main(argv) == 6
    one_line_error(capsys.readouterr().err, "manifest.json", "disk is full")
    assert (run / "repo/data.py").read_text() == CODE["data.py"]
    assert not list(run.rglob("*.tmp"))
    before = calls(server)
    assert main(["run", str(run)]) == 0
    assert (calls(server) - before)[("code", "data.py")] == 0, "the saved file was paid for again"
    assert check_consistent(run)["code/data.py"]["status"] == "generated"


def _mount_tmpfs(where: Path, size: str) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 48 KiB file system (tmpfs): room for about a dozen files. Needs root; skipped otherwise."""
    where = tmp_path / "disk"
    if not _mount_tmpfs(where, "48k"):
        pytest.skip("mounting a tmpfs needs root (and a kernel that allows it here)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.mark.slow
def test_a_really_full_disk_stops_with_one_line_and_the_rerun_resumes(
    small_disk: Path, serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    server = serve(small_scenario())
    run = small_disk / "run"
    outside = snapshot(tmp_path, small_disk)
    done = p2c(server, "run", str(paper_md), "--out", str(run), "--concurrency", "1")
    assert done.returncode == 6, done.stderr
    one_line_error(done.stderr, "No space left on device", "disk is full")
    saved = check_consistent(run)
    assert len(saved) < 12, "the disk was meant to fill before the run ended"
    grow = subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], capture_output=True)
    assert grow.returncode == 0, grow.stderr
    before = calls(server)
    done = p2c(server, "run", str(run))
    assert done.returncode == 0, done.stderr
    again = calls(server) - before
    assert not [a for a in saved if again[asked(a)]], f"saved artifacts asked again: {again}"
    for path, code in CODE.items():
        assert (run / "repo" / path).read_text() == code
    check_consistent(run)
    assert snapshot(tmp_path, small_disk) == outside


# --- reads through links, pipes, devices and folders ----------------------------------------------------------------


def plant(kind: str, path: Path, outside: Path) -> str:
    """Put something that is not a regular file where `path` should be; return what the error calls it."""
    path.unlink()
    if kind == "link outside":
        path.symlink_to(outside)
        return "symbolic link"
    if kind == "link to /dev/zero":
        path.symlink_to("/dev/zero")
        return "symbolic link"
    if kind == "fifo":
        os.mkfifo(path)
        return "named pipe"
    if kind == "folder":
        path.mkdir()
        (path / "x.py").write_text("x = 1\n")
        return "folder"
    if kind == "device":
        if os.geteuid() != 0:
            pytest.skip("making a device node needs root")
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 5))  # the same device as /dev/zero
        return "device"
    raise AssertionError(kind)


KINDS = ["link outside", "link to /dev/zero", "fifo", "folder", "device"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.slow
def test_status_show_and_run_refuse_a_non_file_where_an_artifact_is(
    kind: str, finished: tuple[Any, Path], tmp_path: Path
) -> None:
    server, run = finished
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours\n")
    called = plant(kind, run / "repo/main.py", secret)
    outside = snapshot(tmp_path, run)
    manifest = (run / "manifest.json").read_bytes()
    before = len(server.requests)
    for done in p2c_each(server, ["status", str(run)], ["show", str(run), "main.py"], ["run", str(run)]):
        assert done.returncode == 6, (done.args, done.stderr)
        one_line_error(done.stderr, str(run / "repo/main.py"), called, "Remove it (and put the real file there")
    assert len(server.requests) == before, "no call may be made"
    assert (run / "manifest.json").read_bytes() == manifest
    assert snapshot(tmp_path, run) == outside


@pytest.mark.parametrize("kind", ["link outside", "fifo"])
@pytest.mark.slow
def test_a_non_file_where_a_planning_artifact_is_missing_is_refused_not_adopted(
    kind: str, serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    """A failed design followed by a link where design.json should be (to /etc/passwd, say): never an edit."""
    server = serve(small_scenario(faults=[{"stage": "design", "kind": "malformed", "times": 2}]))
    run = tmp_path / "run"
    assert p2c(server, "run", str(paper_md), "--out", str(run)).returncode == 5
    target = run / "planning/design.json"
    target.write_text("{}")
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps(DESIGN))
    called = plant(kind, target, secret)
    before = len(server.requests)
    for done in p2c_each(server, ["status", str(run)], ["run", str(run)]):
        assert done.returncode == 6, (done.args, done.stderr)
        one_line_error(done.stderr, str(target), called)
    assert len(server.requests) == before
    assert "design" not in json.loads((run / "manifest.json").read_text())["artifacts"]


@pytest.mark.slow
def test_a_linked_run_log_or_manifest_is_never_read_through(finished: tuple[Any, Path], tmp_path: Path) -> None:
    server, run = finished
    log = run / "logs/run.log"
    log.unlink()
    os.mkfifo(log)
    done = p2c(server, "status", str(run))  # the last failure is read from the log: a FIFO must not block it
    assert done.returncode == 0, done.stderr
    done = p2c(server, "run", str(run))
    assert done.returncode == 6
    one_line_error(done.stderr, str(log), "named pipe")
    log.unlink()
    manifest = run / "manifest.json"
    real = tmp_path / "elsewhere.json"
    manifest.rename(real)
    manifest.symlink_to(real)
    done = p2c(server, "status", str(run))
    assert done.returncode == 6
    one_line_error(done.stderr, str(manifest), "symbolic link")


# --- repo/config.yaml is tracked like every artifact ----------------------------------------------------------------


@pytest.mark.slow
def test_an_edited_repo_config_is_detected_and_kept_unless_overwrite_edited(finished: tuple[Any, Path]) -> None:
    server, run = finished
    copy = run / "repo/config.yaml"
    assert copy.read_text() == (run / "planning/config.yaml").read_text()
    copy.write_text("lr: 0.5  # mine\nepochs: 3\n")
    status = p2c(server, "status", str(run))
    assert status.returncode == 0, status.stderr
    assert any(line.split()[:2] == ["code/config.yaml", "edited"] for line in status.stdout.splitlines())
    before = len(server.requests)
    done = p2c(server, "run", str(run), "--from", "config")
    assert done.returncode == 6
    one_line_error(done.stderr, "code/config.yaml", "--overwrite-edited")
    assert copy.read_text() == "lr: 0.5  # mine\nepochs: 3\n" and len(server.requests) == before
    assert p2c(server, "run", str(run)).returncode == 0
    assert copy.read_text() == "lr: 0.5  # mine\nepochs: 3\n" and len(server.requests) == before
    (run / "planning/config.yaml").write_text("lr: 0.05\nepochs: 3\n")  # what the copy came from changes
    done = p2c(server, "run", str(run))
    assert done.returncode == 0, done.stderr
    assert "code/config.yaml was edited by you" in done.stderr
    assert copy.read_text() == "lr: 0.5  # mine\nepochs: 3\n"
    done = p2c(server, "run", str(run), "--from", "config", "--overwrite-edited")
    assert done.returncode == 0, done.stderr
    assert copy.read_text() == (run / "planning/config.yaml").read_text()


@pytest.mark.slow
def test_an_untracked_copy_of_the_config_from_an_older_run_is_recorded_as_generated(
    finished: tuple[Any, Path],
) -> None:
    server, run = finished
    manifest = json.loads((run / "manifest.json").read_text())
    del manifest["artifacts"]["code/config.yaml"]
    (run / "manifest.json").write_text(json.dumps(manifest))
    before = len(server.requests)
    assert p2c(server, "run", str(run)).returncode == 0
    assert len(server.requests) == before
    assert check_consistent(run)["code/config.yaml"]["status"] == "generated"


# --- a file the user wrote where an artifact is missing is adopted --------------------------------------------------


@pytest.mark.slow
def test_code_written_by_hand_after_an_unusable_reply_is_adopted_and_never_asked_for(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    server = serve(small_scenario(faults=[{"stage": "code", "file": "models/net.py", "kind": "empty", "times": 2}]))
    run = tmp_path / "run"
    done = p2c(server, "run", str(paper_md), "--out", str(run))
    assert done.returncode == 5
    one_line_error(done.stderr, "write the artifact yourself")
    mine = "class Net:\n    def forward(self, x):\n        return x  # written by hand\n"
    (run / "repo/models").mkdir(exist_ok=True)  # nothing was written into it: net.py was its first file
    (run / "repo/models/net.py").write_text(mine)
    status = p2c(server, "status", str(run))
    assert any(line.split()[:2] == ["code/models/net.py", "edited"] for line in status.stdout.splitlines())
    before = calls(server)
    done = p2c(server, "run", str(run))
    assert done.returncode == 0, done.stderr
    assert "repo/models/net.py was written by you" in done.stderr
    again = calls(server) - before
    assert again[("code", "models/net.py")] == 0, "the adopted file was asked for again"
    assert again[("code", "main.py")] == 1
    assert (run / "repo/models/net.py").read_text() == mine
    prompt = next(r for r in server.requests if r["stage"] == "code" and r["file"] == "main.py")["messages"][-1]
    assert "written by hand" in prompt["content"], "what depends on the adopted file is built on it"
    assert check_consistent(run)["code/models/net.py"]["status"] == "edited"
    count = len(server.requests)
    assert p2c(server, "run", str(run)).returncode == 0
    assert len(server.requests) == count and (run / "repo/models/net.py").read_text() == mine


@pytest.mark.slow
def test_a_design_written_by_hand_is_adopted_with_its_diagrams(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    server = serve(small_scenario(faults=[{"stage": "design", "kind": "malformed", "times": 2}]))
    run = tmp_path / "run"
    assert p2c(server, "run", str(paper_md), "--out", str(run)).returncode == 5
    (run / "planning/design.json").write_text(json.dumps(DESIGN, indent=1))
    before = calls(server)
    done = p2c(server, "run", str(run))
    assert done.returncode == 0, done.stderr
    assert (calls(server) - before)[("design", "")] == 0
    assert json.loads((run / "planning/design.json").read_text()) == DESIGN
    assert (run / "planning/class_diagram.mmd").stat().st_size > 0
    assert check_consistent(run)["design"]["status"] == "edited"


@pytest.mark.slow
def test_an_invalid_file_written_by_hand_is_a_clear_error_not_a_call(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    server = serve(small_scenario(faults=[{"stage": "design", "kind": "malformed", "times": 2}]))
    run = tmp_path / "run"
    assert p2c(server, "run", str(paper_md), "--out", str(run)).returncode == 5
    (run / "planning/design.json").write_text('{"file_list": ["main.py"')
    before = len(server.requests)
    status, done = p2c_each(server, ["status", str(run)], ["run", str(run)])
    assert status.returncode == 0, status.stderr  # an overview: the file is yours, the run checks it
    assert any(line.split()[:2] == ["design", "edited"] for line in status.stdout.splitlines())
    assert done.returncode == 5, done.stderr
    one_line_error(done.stderr, str(run / "planning/design.json"), "written by you", "delete it")
    assert len(server.requests) == before
    assert (run / "planning/design.json").read_text() == '{"file_list": ["main.py"'
