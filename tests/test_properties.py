"""Property-based tests (issue #6): no input crashes the reply parsers, the artifact checks, the path sanitiser
or the paper readers with anything but our own error types, and what they accept keeps its promises."""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
import unicodedata
from functools import cache
from pathlib import Path, PureWindowsPath
from typing import Any

import pymupdf
import pytest
from conftest import DESIGN, EXAMPLE
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from p2c_notebook.errors import PaperError, PlanError, UnsafePathError
from p2c_notebook.paper import Paper, read_paper
from p2c_notebook.paths import safe_relative_path
from p2c_notebook.run.store import RunStore, atomic_write
from p2c_notebook.stages.artifacts import ArchitectureDesign, Config, LogicDesign, check_file_list, parse_config
from p2c_notebook.stages.parsing import ParseError, extract_code, extract_json, extract_markdown, extract_yaml

FEW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SOME = settings(max_examples=150, deadline=None)

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=25,
)
json_objects = st.dictionaries(st.text(max_size=12), json_values, max_size=5)


# --- reply parsers ---------------------------------------------------------------------------------


@SOME
@given(st.text(max_size=400))
def test_reply_parsers_raise_only_parse_errors(text: str) -> None:
    for parse in (extract_json, extract_yaml, lambda t: extract_code(t, "python"), extract_markdown):
        try:
            result = parse(text)
        except ParseError as error:
            assert str(error)
        else:
            assert parse is extract_json or (isinstance(result, str) and result.endswith("\n"))


@SOME
@given(value=json_objects, wrapper=st.sampled_from(["bare", "fence", "content", "prose"]))
def test_a_json_object_is_found_however_the_reply_wraps_it(value: dict[str, Any], wrapper: str) -> None:
    dumped = json.dumps(value, indent=1 if wrapper == "fence" else None)
    assume("content]" not in dumped.lower())
    reply = {
        "bare": dumped,
        "fence": f"Here it is:\n```json\n{dumped}\n```\nAnything else?",
        "content": f"[CONTENT]\n{dumped}\n[/CONTENT]",
        "prose": f"The design is {dumped} as requested.",
    }[wrapper]
    assert extract_json(reply) == value


@pytest.mark.parametrize("opening", ["[", '{"a":'])
def test_deeply_nested_json_is_a_parse_error_not_a_recursion_error(opening: str) -> None:
    with pytest.raises(ParseError, match="nested too deeply"):
        extract_json(opening * 100_000)


code_text = st.text(st.characters(blacklist_characters="`~[\r", blacklist_categories=("Cs",)), max_size=300)


@SOME
@given(code=code_text.filter(str.strip), prose=st.text(st.characters(blacklist_characters="`~["), max_size=80))
def test_code_comes_back_from_its_fence_unchanged(code: str, prose: str) -> None:
    reply = f"{prose}\n```python\n{code}\n```\n{prose}"
    assert extract_code(reply, "python") == code.rstrip() + "\n"


# --- artifacts from arbitrary JSON ---------------------------------------------------------------

path_parts = st.sampled_from(
    ["..", ".", "~", "C:", "c:", "", " ", "CON", "nul", "aux.py", "COM1", "lpt9.txt", "con .py"]
)
path_parts |= st.sampled_from(["a", "b.py", "models", "é.py", "文件.py", "x" * 256, "a<b", "trail.", "\x00", "\ud800"])
path_parts |= st.text(max_size=12)
raw_paths = st.builds(
    lambda parts, separators: "".join(p + s for p, s in zip(parts, separators, strict=False)),
    st.lists(path_parts, min_size=1, max_size=5),
    st.lists(st.sampled_from(["/", "\\", "//", ""]), min_size=5, max_size=5),
)


@SOME
@given(
    file_list=st.lists(raw_paths | st.sampled_from(DESIGN["file_list"]), max_size=6) | json_values,
    classes=st.just(DESIGN["classes"]) | json_values,
    approach=st.text(max_size=50) | json_values,
)
def test_a_design_from_arbitrary_json_validates_or_raises_our_errors(
    file_list: Any, classes: Any, approach: Any
) -> None:
    data = {**DESIGN, "file_list": file_list, "classes": classes, "implementation_approach": approach}
    try:
        design = ArchitectureDesign.model_validate(data)
    except (ValidationError, PlanError):
        return
    assert design.file_list and len({p.casefold() for p in design.file_list}) == len(design.file_list)
    for path in design.file_list:
        assert safe_relative_path(path) == path
    assert isinstance(design.check(), list)


@SOME
@given(
    deps=st.lists(
        st.lists(st.sampled_from([*DESIGN["file_list"], "x.py", "../up.py"]), max_size=3), min_size=3, max_size=4
    ),
    order=st.permutations(DESIGN["file_list"]),
)
def test_a_logic_design_is_ordered_dependencies_first_or_refused(deps: list[list[str]], order: list[str]) -> None:
    design = ArchitectureDesign.model_validate(DESIGN)
    files = [{"path": p, "role": "r", "depends_on": d} for p, d in zip(order + ["extra.py"], deps, strict=False)]
    try:
        fixed, warnings = LogicDesign.model_validate({"files": files}).check_against(design)
    except PlanError as error:  # UnsafePathError included
        assert str(error)
        return
    assert sorted(fixed.order) == sorted(design.file_list)
    for position, item in enumerate(fixed.files):
        assert all(fixed.order.index(dep) < position for dep in item.depends_on)
    assert bool(warnings) == (fixed.order != [f["path"] for f in files])


@SOME
@given(st.text(max_size=300))
def test_config_text_parses_to_a_mapping_or_raises_plan_error(text: str) -> None:
    try:
        data = parse_config(text)
    except PlanError as error:
        assert str(error).startswith("config.yaml")
    else:
        assert isinstance(data, dict) and data


@pytest.mark.parametrize(
    "yaml_text",
    [
        "!!python/object/apply:os.system ['touch {marker}']",
        "run: !!python/object/apply:os.system ['touch {marker}']",
        "run: !!python/object/apply:subprocess.call [['touch', '{marker}']]",
        "run: !!python/object/new:subprocess.Popen [['touch', '{marker}']]",
        "run: !!python/name:os.system",
        "run: !!python/module:os",
        "lr: 0.1\nhook: !!python/object:builtins.object {{}}",
    ],
)
def test_yaml_tags_that_construct_python_objects_are_refused(tmp_path: Path, yaml_text: str) -> None:
    marker = tmp_path / "executed"
    text = yaml_text.format(marker=marker)
    with pytest.raises(PlanError, match="config.yaml does not parse"):
        parse_config(text)
    with pytest.raises(PlanError):
        Config(text=extract_yaml(f"```yaml\n{text}\n```"))
    assert not marker.exists()


@pytest.mark.parametrize("text", ["deadline: 2024-02-30", "month: 2024-13-01", "epochs: !!int ten", "lr: !!float x"])
def test_yaml_values_the_yaml_types_reject_are_plan_errors(text: str) -> None:
    with pytest.raises(PlanError, match="quote it as a string"):
        parse_config(text)


def test_deeply_nested_config_is_a_plan_error() -> None:
    with pytest.raises(PlanError, match="nested too deeply"):
        parse_config("a: " + "[" * 5000)


# --- the path sanitiser ----------------------------------------------------------------------------


@SOME
@given(raw=raw_paths | st.text(max_size=80))
def test_a_sanitised_path_stays_inside_the_folder_on_every_file_system(raw: str) -> None:
    try:
        path = safe_relative_path(raw)
    except UnsafePathError as error:
        assert str(error)
        return
    assert safe_relative_path(path) == path, "sanitising is idempotent"
    assert "\\" not in path and "\x00" not in path and not path.startswith(("/", "~"))
    windows = PureWindowsPath(path)
    assert not windows.drive and not windows.root and ".." not in windows.parts
    with tempfile.TemporaryDirectory() as folder:
        root = os.path.realpath(folder)
        joined = os.path.realpath(os.path.join(root, path))
        assert os.path.commonpath([root, joined]) == root and joined != root
        target = Path(joined)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("x")  # the file system can hold the name
        assert target.read_text() == "x"


# --- planned file lists, written into a repository -------------------------------------------------------

#: Name pieces that have broken or disguised paths: tool folders, Windows short names, NFC/NFD forms, case and
#: script look-alikes, invisible, bidirectional and compatibility characters, the file/folder clash.
name_pieces = st.sampled_from(
    [".git", ".GIT", "git~1", ".envrc", ".vscode", ".gitignore", ".github", "workflows", "ci.yml", "config.yaml"]
    + ["model", "Model", "model.md", "x.py", "données.py", "donne\u0301es.py", "m\u043edel", "\u0441\u043e\u0440.py"]
    + ["cop.py", "文件.py", "모델", "\u200b", "\u202e", "\u00a0", "\uff0e", "\ufb01", "\u0301", "~", "..", ".", " "]
)
wide_names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=10)
plain_names = st.sampled_from(["src", "train.py", "utils", "data", "données", "模型.py", "модель_v2.py", ".gitignore"])
pieces = plain_names | plain_names | name_pieces | wide_names
planned_path = st.builds(
    lambda folders, name: "/".join([*folders, name]),
    st.lists(pieces, max_size=3),
    pieces | pieces.map(lambda name: name + ".py"),
)
#: Lists of mostly valid names (NFC and NFD forms, case variants, `x` beside `x.md`), so that many are accepted.
likely_names = plain_names | st.sampled_from(["donne\u0301es", "Données", "model", "model.md", "Train.py", "x"])
likely_path = st.lists(likely_names, min_size=1, max_size=3).map("/".join)
file_lists = st.lists(planned_path, min_size=1, max_size=6) | st.lists(likely_path, min_size=1, max_size=6)


@FEW
@given(files=file_lists)
def test_a_file_list_is_written_under_its_normalised_names_or_refused_before_any_file(files: list[str]) -> None:
    """Either every planned file lands inside repo/ under its NFC name (notes under analysis/), beside the
    config.yaml p2c writes there, or the list is a PlanError and nothing is written; never another error."""
    with tempfile.TemporaryDirectory() as folder:
        store = RunStore(folder)
        atomic_write(Path(folder) / "repo/config.yaml", "lr: 0.1\n")
        try:
            accepted = check_file_list(files)
        except PlanError as error:  # UnsafePathError included
            assert str(error) and "\n" not in str(error)
            return
        finally:
            before_writes = {str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file()}
            assert before_writes <= {"repo/config.yaml"}, "nothing is written while a list is checked"
        assert accepted == list(dict.fromkeys(safe_relative_path(f) for f in files))
        for path in accepted:
            assert unicodedata.normalize("NFC", path) == path
            store.save(f"analysis/{path}", "notes\n", {})
            store.save(f"code/{path}", path, {})
        repo = Path(folder, "repo")
        written = {str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file()}
        assert written == {*accepted, "config.yaml"}
        for path in accepted:
            assert (repo / path).read_text(encoding="utf-8") == path
            assert Path(folder, "analysis", path + ".md").is_file()
        assert (repo / "config.yaml").read_text() == "lr: 0.1\n"


# --- the paper readers -----------------------------------------------------------------------------


def read_bytes(data: bytes, name: str) -> Paper | None:
    """Read `data` saved as `name`: a Paper, or None for a PaperError with a message; anything else fails."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        try:
            paper = read_paper(path)
        except PaperError as error:
            assert str(error) and "\n" not in str(error)
            return None
        assert isinstance(paper.to_text(), str) and paper.report().summary()
        return paper


suffixes = st.sampled_from(["paper.pdf", "paper.tex", "paper.json", "paper.md", "paper.txt", "src.tgz", "paper"])


@FEW
@given(data=st.binary(max_size=3000), name=suffixes)
def test_arbitrary_bytes_are_a_paper_or_a_paper_error(data: bytes, name: str) -> None:
    read_bytes(data, name)


@FEW
@given(text=st.text(max_size=2000), name=suffixes)
def test_arbitrary_text_is_a_paper_or_a_paper_error(text: str, name: str) -> None:
    read_bytes(text.encode("utf-8", "surrogatepass"), name)


@cache
def seed_pdf() -> bytes:
    with pymupdf.open(EXAMPLE / "paper.pdf") as doc:
        return bytes(doc.tobytes(garbage=0, deflate=False))


@FEW
@given(cut=st.integers(0, 10**7), junk=st.binary(min_size=1, max_size=64))
def test_a_corrupted_pdf_is_a_paper_or_a_paper_error(cut: int, junk: bytes) -> None:
    data = seed_pdf()
    position = cut % len(data)
    read_bytes(data[:position] + junk + data[position + len(junk) :], "paper.pdf")


@FEW
@given(start=st.integers(0, 20_000), length=st.integers(1, 400), junk=st.text(max_size=40))
def test_a_mangled_latex_paper_is_a_paper_or_a_paper_error(start: int, length: int, junk: str) -> None:
    text = (EXAMPLE / "paper.tex").read_text()
    position = start % len(text)
    read_bytes((text[:position] + junk + text[position + length :]).encode(), "paper.tex")


@FEW
@given(body=json_values, title=json_values, entries=json_values)
def test_s2orc_json_of_any_shape_is_a_paper_or_a_paper_error(body: Any, title: Any, entries: Any) -> None:
    document = {"title": title, "pdf_parse": {"body_text": body, "ref_entries": entries, "back_matter": body}}
    read_bytes(json.dumps(document).encode(), "paper.json")


@FEW
@given(files=st.dictionaries(st.sampled_from(["main.tex", "a/b.tex", "../x.tex", "/abs.tex", "c.bib"]), st.text()))
def test_a_latex_bundle_of_any_files_is_a_paper_or_a_paper_error(files: dict[str, str]) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, text in files.items():
            data = text.encode("utf-8", "surrogatepass")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    read_bytes(buffer.getvalue(), "source.tar.gz")
