"""The static checks of a run folder: run on each code reply before it is saved, recorded in `checks.json`.

`checks.json` holds one entry per generated file (its violations and the sha256 of the code they were found in:
an entry is stale once the file changes), the violations of the repository as a whole, and whether they come
from a whole-repository check (`complete`) or from the in-loop checks of files written so far.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from p2c_notebook.errors import RunError
from p2c_notebook.run.store import RunStore, artifact_file, atomic_write, sha256
from p2c_notebook.stages.artifacts import ArchitectureDesign, LogicDesign
from p2c_notebook.stages.checks import CheckReport, Violation, check_file, check_repository, repair_request
from p2c_notebook.stages.context import Review

CHECKS_JSON = "checks.json"
_WRITING = threading.Lock()  # code files are saved from several threads: one read-modify-write at a time


def review(path: str, violations: list[Violation]) -> Review:
    """The repair re-ask for one file's errors (warnings are shown, never worth a call)."""
    errors = [v for v in violations if v.severity == "error" and v.file == path]
    if not errors:
        return Review()
    return Review(repair_request(path, errors), len(errors), f"The static checks found {len(errors)} problem(s)")


def written_so_far(store: RunStore, logic: LogicDesign, path: str) -> dict[str, str]:
    """The saved code of the files `path` depends on, directly or through others: what exists for certain when
    it is written (files coded alongside it may or may not be saved yet, so they are left out)."""
    sources: dict[str, str] = {}
    frontier = list(logic.dependencies(path)) if path in logic.order else []
    while frontier:
        dep = frontier.pop(0)
        if dep in sources or dep == path or store.entry(f"code/{dep}") is None:
            continue
        text = store.read_path(artifact_file(f"code/{dep}"))
        if text is None:
            continue
        sources[dep] = text
        frontier.extend(logic.dependencies(dep) if dep in logic.order else [])
    return sources


def check_reply(
    store: RunStore, design: ArchitectureDesign, logic: LogicDesign, path: str, code: str
) -> list[Violation]:
    """The in-loop check of one generated file, against the files written so far and the planning config."""
    if not path.endswith(".py"):
        return []
    sources = {**written_so_far(store, logic, path), path: code}
    config = store.read("config") if store.entry("config") is not None else None
    return check_file(path, sources, design, logic, config)


def record_file(
    store: RunStore, path: str, code: str, violations: list[Violation], first: list[Violation], re_asked: bool = False
) -> None:
    """Record one saved file's violations (and, when it was re-asked, those of the first reply: kept even when
    the re-ask changed nothing, so that `repair_effect` counts every file that cost a re-ask)."""
    if not path.endswith(".py"):
        return  # only Python is checked
    with _WRITING:
        data = _read(store) or _empty()
        entry: dict[str, Any] = {"sha256": sha256(code), "violations": [v.to_json() for v in violations]}
        if re_asked or first != violations:
            entry["before_repair"] = [v.to_json() for v in first]
        data["files"][path] = entry
        data["complete"] = False  # another file may import this one: only a whole check is current for all
        _write(store.root, data)


def record_repository(store: RunStore) -> CheckReport:
    """Check the whole repository (entry point, duplicates across files, missing files) and rewrite the record;
    what was found in a file's first reply before its repair re-ask is kept while the file is unchanged."""
    report = _check_run(store)
    with _WRITING:
        old = _read(store) or _empty()
        data = _report_json(report)
        for path, entry in data["files"].items():
            before = old["files"].get(path, {})
            if before.get("sha256") == entry["sha256"] and "before_repair" in before:
                entry["before_repair"] = before["before_repair"]
        _write(store.root, data)
    return report


def current(run_dir: Path | str, write: bool = True) -> dict[str, Any]:
    """The run's checks as `checks.json` holds them, recomputed first when stale (a file changed or was written
    since, or the record holds only in-loop checks of a repository now complete); with `write`, it is saved."""
    store = RunStore(run_dir)
    data = _read(store)
    # The in-loop record of a run under way is current for what it has written; once every planned file is
    # there (a run stopped and resumed, a file regenerated), only a whole-repository check is.
    if data is not None and not _stale(store, data) and (data.get("complete") or _unwritten(store)):
        return data
    if write:  # a derived file, replaced atomically: no need to hold the run folder's lock
        record_repository(store)
        return _read(store) or _empty()
    return _report_json(_check_run(store))


def checks_for(run_dir: Path | str, write: bool = False) -> dict[str, list[Violation]]:
    """Violations per repository file, up to date (the widget's badge per file); "" holds the repository's."""
    return violations_of(current(run_dir, write))


def violations_of(data: dict[str, Any]) -> dict[str, list[Violation]]:
    """A `checks.json` record as violations per file ("": the repository's own), in the record's order."""
    found = {path: [_violation(v) for v in entry["violations"]] for path, entry in data["files"].items()}
    if data["repository"]:
        found[""] = [_violation(v) for v in data["repository"]]
    return found


def repair_effect(data: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Violations per check in the replies as first received and in the code as saved (a `checks.json` record):
    what the in-loop repair re-asks changed. A file not re-asked counts the same in both."""
    before = CheckReport(
        files={p: [_violation(v) for v in e.get("before_repair", e["violations"])] for p, e in data["files"].items()},
        repository=[_violation(v) for v in data.get("repository", [])],
    )
    after = CheckReport(files=violations_of(data))  # "" holds the repository's own
    re_asked = sum(1 for e in data["files"].values() if "before_repair" in e)
    return {"before": before.summary(), "after": after.summary(), "files": {"re_asked": re_asked}}


def describe(data: dict[str, Any]) -> str:
    """One line for a run summary: how many problems remain, and where to see them."""
    errors, warnings = data["errors"], data["warnings"]
    files = sum(1 for e in data["files"].values() if any(v["severity"] == "error" for v in e["violations"]))
    if not errors:
        tail = f" ({warnings} warning(s))" if warnings else ""
        return f"Static checks: no problems in {len(data['files'])} file(s){tail}."
    where = f" in {files} file(s)" if files else ""
    return f"Static checks: {errors} problem(s) remain{where}" + (f", {warnings} warning(s)" if warnings else "") + "."


# --------------------------------------------------------------------------------------------------- helpers


def _designs(store: RunStore) -> tuple[ArchitectureDesign | None, LogicDesign | None]:
    """The saved designs; one that is missing or does not validate is left out (its checks are skipped)."""
    found: list[Any] = []
    for artifact, model in (("design", ArchitectureDesign), ("logic", LogicDesign)):
        try:
            found.append(model.model_validate_json(store.read(artifact)) if store.entry(artifact) else None)
        except (ValidationError, RunError):
            found.append(None)
    return found[0], found[1]


def _check_run(store: RunStore) -> CheckReport:
    design, logic = _designs(store)
    sources: dict[str, str] = {}
    for path in _planned(store):
        text = store.read_path(artifact_file(f"code/{path}"))
        if text is not None:
            sources[path] = text
    config = store.read_path(artifact_file("code/config.yaml"))
    if config is None and store.entry("config") is not None:
        config = store.read("config")
    return check_repository(sources, design, logic, config)


def _report_json(report: CheckReport) -> dict[str, Any]:
    data = report.to_json()
    data["complete"] = True
    return data


def _empty() -> dict[str, Any]:
    return {**_report_json(CheckReport()), "complete": False}


def _stale(store: RunStore, data: dict[str, Any]) -> bool:
    """Whether a checked file changed (or went) since, or a planned file was written since."""
    for path, entry in data["files"].items():
        text = store.read_path(artifact_file(f"code/{path}"))
        if text is None or sha256(text) != entry.get("sha256"):
            return True
    unchecked = [p for p in _planned(store) if p not in data["files"]]
    return any(store.read_path(artifact_file(f"code/{p}")) is not None for p in unchecked)


def _planned(store: RunStore) -> list[str]:
    """The planned Python files, in the logic design's order (the design's file list without one)."""
    design, logic = _designs(store)
    planned = logic.order if logic is not None else list(design.file_list) if design is not None else []
    return [p for p in planned if p.endswith(".py")]


def _unwritten(store: RunStore) -> bool:
    return any(store.read_path(artifact_file(f"code/{p}")) is None for p in _planned(store))


def _violation(raw: dict[str, Any]) -> Violation:
    return Violation(raw["check"], raw["file"], int(raw["line"]), raw["message"], raw["severity"])


def _read(store: RunStore) -> dict[str, Any] | None:
    """The recorded checks; None when there are none yet, or the file is not a record we can use (it is
    rewritten then). Read as every run file is: never through a link, never from a pipe."""
    text = store.read_path(CHECKS_JSON)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        return None
    return data


def _write(root: Path, data: dict[str, Any]) -> None:
    """Recount from the entries (an in-loop update changes one file) and replace the file atomically."""
    report = CheckReport(
        files={p: [_violation(v) for v in e["violations"]] for p, e in data["files"].items()},
        repository=[_violation(v) for v in data.get("repository", [])],
        stats=dict(data.get("stats", {})),
    )
    counted = report.to_json()
    for key in ("is_clean", "errors", "warnings", "summary"):
        data[key] = counted[key]
    atomic_write(root / CHECKS_JSON, json.dumps(data, indent=2, ensure_ascii=False) + "\n", durable=False)
