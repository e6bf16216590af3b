"""Planned file names from a hostile model (issue #11): tool folders such as `.git/`, non-ASCII names, invisible
and look-alike characters, and a name used as a file and as a folder.

Each class is driven over real HTTP (the scripted server), most through the `p2c` command in a subprocess:
exit code, one-line message, nothing outside the run folder changed, and no saved artifact paid for twice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, cast

import pytest
from conftest import DESIGN, LOGIC, settings_for, small_scenario, subprocess_env

from p2c_notebook.errors import P2CError, PlanError, ReplyError, UnsafePathError
from p2c_notebook.paths import ALLOWED_DOT_FILES, safe_relative_path
from p2c_notebook.run.pipeline import Pipeline
from p2c_notebook.stages.artifacts import ArchitectureDesign, LogicDesign, check_file_list

SLOW = pytest.mark.slow  # the cases `via` "cli" start the `p2c` command in a subprocess


def p2c_run(server: Any, paper: Path, run: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "p2c_notebook.cli", "run", str(paper), "--out", str(run), "--concurrency", "1"]
    return subprocess.run(cmd, env=subprocess_env(server), capture_output=True, text=True, timeout=120)


def attempt(server: Any, paper: Path, run: Path, via: str) -> tuple[int, str]:
    """Run (or resume) through the `p2c` command or the library: the exit code and the one-line error."""
    if via == "cli":
        done = p2c_run(server, paper, run)
        return done.returncode, error_line(done) if done.returncode else ""
    settings = settings_for(server)
    try:
        with (
            Pipeline.open(run, settings=settings)
            if run.exists()
            else Pipeline.start(paper, run, settings=settings) as pipe
        ):
            pipe.run()
    except P2CError as error:
        assert "\n" not in str(error)
        return error.exit_code, str(error)
    return 0, ""


def snapshot(folder: Path, skip: Path) -> dict[str, bytes]:
    """Every file under `folder` except those under `skip` (the run folder)."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and skip not in p.parents
    }


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one-line error the command ends with; never a traceback."""
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("p2c: error: "), done.stderr
    return last


def design_with(files: list[str]) -> dict[str, Any]:
    return {**DESIGN, "file_list": [*DESIGN["file_list"], *files]}


FSMONITOR = "[core]\n\trepositoryformatversion = 0\n\tfsmonitor = \"touch '{marker}'; false\"\n"


def git_status(folder: Path, ceiling: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(ceiling), "HOME": str(ceiling)}
    return subprocess.run(["git", "status"], cwd=folder, env=env, capture_output=True, text=True, timeout=60)


def test_the_fsmonitor_payload_runs_when_it_is_in_a_git_config(tmp_path: Path) -> None:
    """The control for the test below: the payload is live, so its marker missing there means something."""
    marker = tmp_path / "executed"
    control = tmp_path / "control"
    (control / ".git").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(control)], check=True, timeout=60)
    (control / ".git/config").write_text(FSMONITOR.format(marker=marker))
    git_status(control, tmp_path)
    assert marker.exists()


@pytest.mark.parametrize(
    ("planned", "via"),
    [pytest.param(".git/config", "cli", marks=SLOW), ("src/.git/config", "library"), (".GIT/config", "library")]
    + [("git~1/config", "library"), (".Git", "library")],
)
def test_a_design_planning_a_git_config_is_refused_and_git_status_runs_nothing(
    serve: Any, paper_md: Path, tmp_path: Path, planned: str, via: str
) -> None:
    marker = tmp_path / "executed"
    scenario = small_scenario(design=design_with([planned]))
    scenario["responses"] += [
        {"stage": "analysis", "file": planned, "content": "## config\n\nThe repository settings."},
        {"stage": "code", "file": planned, "content": FSMONITOR.format(marker=marker)},
    ]
    server = serve(scenario)
    run = tmp_path / "run"
    before = snapshot(tmp_path, run)
    code, message = attempt(server, paper_md, run, via)
    assert code == 5, message
    assert "design" in message and ("dot-folders" in message or "short name" in message), message
    assert snapshot(tmp_path, run) == before, "nothing outside the run folder changed"
    assert not [p for p in run.rglob("*") if p.name.casefold() in (".git", "config", "git~1")]
    assert not any(r["stage"] in ("analysis", "code") for r in server.requests), "no file was asked for"
    (run / "repo").mkdir(exist_ok=True)  # as a user would make it to look into the repository
    git_status(run / "repo", tmp_path)
    assert not marker.exists(), "git status in repo/ executed the planned config"

    assert attempt(server, paper_md, run, via) == (code, message)
    assert Counter(r["stage"] for r in server.requests)["plan"] == 1, "the saved plan was not paid for again"
    assert not marker.exists()


@pytest.mark.parametrize(
    ("planned", "why", "via"),
    [
        pytest.param([".envrc"], "dot-files", "cli", marks=SLOW),
        ([".vscode/settings.json"], "dot-folders", "library"),
        ([".idea/workspace.xml"], "dot-folders", "library"),
        ([".hg/hgrc"], "dot-folders", "library"),
        ([".svn/entries"], "dot-folders", "library"),
        (["tools/.direnv/x"], "dot-folders", "library"),
        ([".python-version"], "dot-files", "library"),
        ([".github/hooks.yml"], "dot-folders", "library"),
        pytest.param(["\uff0egit/config"], "look-alike character", "cli", marks=SLOW),  # a fullwidth full stop
        (["tr\u200bain.py"], "invisible character U+200B", "library"),
        (["evil\u202eyp.exe"], "bidirectional control U+202E", "library"),
        pytest.param(["m\u043edel.py"], "mixes scripts (Cyrillic, Latin)", "cli", marks=SLOW),  # a Cyrillic o
        pytest.param(["Main.py"], "the same file on many file systems", "cli", marks=SLOW),
        (["\u0441\u043e\u0440.py", "cop.py"], "names that look alike", "library"),  # Cyrillic сор beside Latin cop
        pytest.param(["models"], "both as a file and as the folder", "cli", marks=SLOW),  # DESIGN plans models/net.py
        (["data.py.md/notes.py"], "notes on 'data.py'", "library"),
        (["Models/extra.py"], "spells one folder two ways", "library"),
        (["config.yaml/x.py"], "both as a file and as the folder", "library"),  # repo/config.yaml is p2c's own
    ],
)
def test_a_design_with_a_refused_name_exits_5_before_any_file_call(
    serve: Any, paper_md: Path, tmp_path: Path, planned: list[str], why: str, via: str
) -> None:
    server = serve(small_scenario(design=design_with(planned)))
    run = tmp_path / "run"
    before = snapshot(tmp_path, run)
    code, message = attempt(server, paper_md, run, via)
    assert code == 5 and why in message, message
    assert snapshot(tmp_path, run) == before
    assert [r["attempt"] for r in server.requests if r["stage"] == "design"] == [1, 2], "re-asked once"
    assert not any(r["stage"] in ("logic", "analysis", "code") for r in server.requests)
    assert not [p for p in run.glob("repo/**/*") if p.is_file()], "no file was written into repo/"

    assert attempt(server, paper_md, run, via) == (code, message)
    assert Counter(r["stage"] for r in server.requests)["plan"] == 1, "the saved plan was not paid for again"


NON_ASCII = {
    "données.py": "def charger():\n    return [1.0, 2.0]\n",
    "modèles/réseau.py": "class Réseau:\n    pass\n",
    "模型.py": "x = 1\n",
    "модель_v2.py": "y = 2\n",
}


def non_ascii_scenario() -> dict[str, Any]:
    design = {**DESIGN, "file_list": list(NON_ASCII), "classes": [], "relations": [], "sequence": {}}
    # The logic names one file in decomposed form (e + combining acute): the same file after NFC.
    logic_paths = [p.replace("é", "e\u0301") for p in NON_ASCII]
    logic = {**LOGIC, "files": [{"path": p, "role": "r", "depends_on": []} for p in logic_paths]}
    scenario = small_scenario(design=design, logic=logic)
    scenario["responses"] = [r for r in scenario["responses"] if r["stage"] not in ("analysis", "code")]
    for path, code in NON_ASCII.items():
        scenario["responses"].append({"stage": "analysis", "file": path, "content": f"## {path}\n\nAs designed."})
        scenario["responses"].append({"stage": "code", "file": path, "content": f"```python\n{code}```"})
    return scenario


@pytest.mark.slow
def test_non_ascii_file_names_are_generated_under_their_nfc_names(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    server = serve(non_ascii_scenario())
    run = tmp_path / "run"
    before = snapshot(tmp_path, run)
    done = p2c_run(server, paper_md, run)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    for path, code in NON_ASCII.items():
        assert (run / "repo" / path).read_text(encoding="utf-8") == code
    written = {str(p.relative_to(run / "repo")) for p in (run / "repo").rglob("*") if p.is_file()}
    assert written == {*NON_ASCII, "config.yaml"}
    asked = Counter((r["stage"], r["file"]) for r in server.requests if r["stage"] in ("analysis", "code"))
    assert asked == Counter({(stage, path): 1 for path in NON_ASCII for stage in ("analysis", "code")})
    assert snapshot(tmp_path, run) == before

    calls = len(server.requests)
    again = p2c_run(server, paper_md, run)
    assert again.returncode == 0, again.stderr
    assert len(server.requests) == calls, "a resume pays for nothing already saved"


def test_a_file_listed_twice_is_kept_once_and_asked_for_once(serve: Any, paper_md: Path, tmp_path: Path) -> None:
    server = serve(small_scenario(design=design_with(["data.py", "./main.py"])))
    warnings: list[str] = []
    with Pipeline.start(paper_md, tmp_path / "run", settings=settings_for(server)) as pipeline:
        pipeline.bus.subscribe(lambda e: warnings.append(str(getattr(e, "message", ""))))
        assert pipeline.run().state == "done"
    assert any("'data.py' was listed more than once" in w for w in warnings), warnings
    asked = Counter((r["stage"], r["file"]) for r in server.requests if r["stage"] == "code")
    assert asked == Counter({("code", p): 1 for p in DESIGN["file_list"]})
    design = json.loads((tmp_path / "run/planning/design.json").read_text())
    assert design["file_list"] == DESIGN["file_list"]


# --- the rules themselves --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ALLOWED_DOT_FILES))
def test_the_allowed_dot_files_are_accepted_at_any_depth(name: str) -> None:
    assert safe_relative_path(name) == name
    assert safe_relative_path(f"src/{name}") == f"src/{name}"


@pytest.mark.parametrize("name", [".github/workflows/ci.yml", ".github/workflows/test.yaml"])
def test_workflows_are_accepted_only_at_the_top_as_yaml(name: str) -> None:
    assert safe_relative_path(name) == name
    for bad in (f"sub/{name}", name + ".sh", ".github/workflows/.x.yml", ".github/workflows/a/b.yml"):
        with pytest.raises(UnsafePathError):
            safe_relative_path(bad)


@pytest.mark.parametrize(
    "raw",
    [".git", ".git/", "a/.git", "a/.git/hooks/pre-commit", ".GIT/config", ".gIt", ".git /config", "git~1/config"]
    + ["GIT~12", "VSCODE~1/settings.json", ".gitmodules", ".env", ".envrc", ".direnv/x", ".pre-commit-config.yaml"]
    + [".devcontainer/devcontainer.json", ".pylintrc", ".tool-versions", ".GITIGNORE", ".gitignore/x", "x/.svn"]
    + ["\uff0egit/config", ".\u0261it/config", ".g\u200cit/config", ".git\u200d/config", ". git/x", "a/ .git"],
)
def test_tool_folders_and_their_disguises_are_refused(raw: str) -> None:
    with pytest.raises(UnsafePathError):
        safe_relative_path(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("donne\u0301es.py", "données.py"),
        ("données.py", "données.py"),
        ("模型/训练.py", "模型/训练.py"),
        ("モデル_v2.py", "モデル_v2.py"),
        ("모델loop.py", "모델loop.py"),
        ("модель.py", "модель.py"),
        ("β_vae.py", "β_vae.py"),
        ("नमूना.py", "नमूना.py"),
        ("x.gitignore", "x.gitignore"),
        ("\u212b.py", "\u00c5.py"),  # the angstrom sign is Å after NFC
    ],
)
def test_real_non_ascii_names_are_accepted_in_nfc(raw: str, expected: str) -> None:
    assert safe_relative_path(raw) == expected


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("a\u200b.py", "invisible"),
        ("a\u2060.py", "invisible"),
        ("a\ufeff.py", "invisible"),
        ("a\u00ad.py", "invisible"),
        ("a\u3164.py", "invisible"),
        ("a\ufe0f.py", "invisible"),
        ("a\u00a0b.py", "invisible"),
        ("a\u2028b.py", "invisible"),
        ("a\u202eb.py", "bidirectional"),
        ("a\u2066b.py", "bidirectional"),
        ("a\u200fb.py", "bidirectional"),
        ("a\ue000.py", "private-use"),
        ("\uff4dain.py", "look-alike character"),
        ("\ufb01le.py", "look-alike character"),
        ("p\u0430th.py", "mixes scripts"),
        ("\u03bfpen.py", "mixes scripts"),
        ("\u0585pen.py", "mixes scripts"),
        ("m\u0301\u043edel.py", "mixes scripts"),
    ],
)
def test_invisible_bidi_and_look_alike_characters_are_refused(raw: str, why: str) -> None:
    with pytest.raises(UnsafePathError, match=why):
        safe_relative_path(raw)


@pytest.mark.parametrize(
    "files",
    [
        ["model", "model/x.py"],
        ["model/x.py", "model"],
        ["a/b/c.py", "a/b"],
        ["Model", "model/x.py"],
        ["net.py", "net.py.md/x.py"],
        ["models/a.py", "Models/b.py"],
        ["config.yaml/x.py"],
        ["données.py", "DONNÉES.py"],
        ["donne\u0301es.py", "Données.py"],
        ["\u0441\u0430t.py", "cat.py"],
    ],
)
def test_names_that_clash_or_collide_are_plan_errors(files: list[str]) -> None:
    with pytest.raises(PlanError):
        check_file_list(files)
    with pytest.raises(PlanError):
        ArchitectureDesign.model_validate({**DESIGN, "file_list": files})


def test_exact_duplicates_are_kept_once_in_the_design_and_the_logic() -> None:
    design = ArchitectureDesign.model_validate(design_with(["data.py", "donne\u0301es.py", "données.py"]))
    assert design.file_list == [*DESIGN["file_list"], "données.py"]
    assert [w for w in design.check() if "more than once" in w] == [
        "'data.py' was listed more than once; kept once",
        "'données.py' was listed more than once; kept once",
    ]
    again = {"path": "./data.py", "role": "again", "depends_on": ["main.py"]}
    logic = LogicDesign.model_validate({"files": [*cast(list[Any], LOGIC["files"]), again]})
    fixed, warnings = logic.check_against(ArchitectureDesign.model_validate(DESIGN))
    assert [f.role for f in fixed.files if f.path == "data.py"] == ["makes the data"]
    assert any("data.py more than once" in w for w in warnings)


def test_the_file_header_is_percent_encoded_and_the_scripted_server_decodes_it(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    """A name with `%`, a space and non-ASCII letters reaches the server as the very same name."""
    name = "résumé 100%.py"
    scenario = small_scenario(design={**DESIGN, "file_list": [name], "classes": []})
    scenario["responses"] = [r for r in scenario["responses"] if r["stage"] not in ("logic", "analysis", "code")]
    scenario["responses"] += [
        {"stage": "logic", "content": json.dumps({**LOGIC, "files": [{"path": name, "role": "r"}]})},
        {"stage": "analysis", "file": name, "content": "## notes\n\nThe only file."},
        {"stage": "code", "file": name, "content": "```python\nx = 1\n```"},
    ]
    server = serve(scenario)
    with Pipeline.start(paper_md, tmp_path / "run", settings=settings_for(server)) as pipeline:
        assert pipeline.run().state == "done"
    assert {r["file"] for r in server.requests if r["stage"] == "code"} == {name}
    assert (tmp_path / "run/repo" / name).read_text() == "x = 1\n"


def test_a_refused_name_in_process_is_a_reply_error_with_exit_code_5(
    serve: Any, paper_md: Path, tmp_path: Path
) -> None:
    server = serve(small_scenario(design=design_with([".git/hooks/post-checkout"])))
    pipeline = Pipeline.start(paper_md, tmp_path / "run", settings=settings_for(server))
    with pipeline, pytest.raises(ReplyError) as caught:
        pipeline.run()
    assert caught.value.exit_code == 5 and "\n" not in str(caught.value)
