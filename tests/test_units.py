"""Pure logic: settings precedence, reply parsing, path safety, ordering, diagrams, prices, prompts."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import DESIGN, LOGIC

from p2c_notebook.diagrams.sources import class_diagram_plantuml, diagram_files, sequence_diagram_mermaid
from p2c_notebook.errors import ConfigError, P2CError, PlanError, UnsafePathError
from p2c_notebook.paths import safe_relative_path
from p2c_notebook.prompts.builder import PromptBuilder, interface_of, language_for
from p2c_notebook.run.usage import Usage, cost_of, price_for
from p2c_notebook.settings import load_settings
from p2c_notebook.stages.artifacts import ArchitectureDesign, LogicDesign, parse_config, topological_order
from p2c_notebook.stages.parsing import ParseError, extract_code, extract_json, extract_markdown, extract_yaml


def test_settings_precedence_is_file_then_env_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("model: from-file\nbase_url: http://file\nmax_tokens: 100\n")
    env = {"OPENAI_BASE_URL": "http://openai-env", "P2C_MODEL": "from-env", "OPENAI_API_KEY": "sk-env"}
    settings = load_settings({"model": "from-flag", "base_url": None}, environ=env, file=config)
    assert settings.model == "from-flag"
    assert settings.base_url == "http://openai-env"
    assert settings.max_tokens == 100
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "sk-env"
    assert "sk-env" not in repr(settings) and "sk-env" not in str(settings.public())


def test_p2c_variables_win_over_openai_ones(tmp_path: Path) -> None:
    env = {"OPENAI_BASE_URL": "http://a", "P2C_BASE_URL": "http://b"}
    assert load_settings(environ=env, file=tmp_path / "none.yaml").base_url == "http://b"


def test_invalid_settings_say_what_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_tokens"):
        load_settings({"max_tokens": -1}, environ={}, file=tmp_path / "none.yaml")


def test_missing_key_for_the_official_api_is_a_clear_error(tmp_path: Path) -> None:
    from p2c_notebook.backends import make_backend

    settings = load_settings({"backend": "openai"}, environ={}, file=tmp_path / "none.yaml")
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        make_backend(settings)


def test_reasoning_models_get_max_completion_tokens() -> None:
    from p2c_notebook.backends import ChatRequest, OpenAIBackend

    settings = load_settings({"model": "o3-mini", "api_key": "k", "reasoning_effort": "high", "temperature": 0.2}, {})
    params = OpenAIBackend(settings)._params(ChatRequest([], "plan"))
    assert params["max_completion_tokens"] == settings.max_tokens and "max_tokens" not in params
    assert params["reasoning_effort"] == "high" and "temperature" not in params
    ordinary = OpenAIBackend(load_settings({"model": "gpt-4o", "api_key": "k", "temperature": 0.2}, {}))
    params = ordinary._params(ChatRequest([], "plan"))
    assert params["max_tokens"] and params["temperature"] == 0.2


def test_json_is_found_in_fences_content_tags_and_prose() -> None:
    assert extract_json('{"a": 1}') == {"a": 1}
    assert extract_json('[CONTENT]\n{"a": 2}\n[/CONTENT]') == {"a": 2}
    assert extract_json('Sure!\n```json\n{"a": 3,}\n```\nDone.') == {"a": 3}
    assert extract_json('The design is {"a": 4} as requested.') == {"a": 4}
    with pytest.raises(ParseError, match="not valid JSON"):
        extract_json('{"file_list": [')
    with pytest.raises(ParseError, match="empty"):
        extract_json("   ")


def test_code_yaml_and_markdown_extraction() -> None:
    reply = "Here:\n```text\nnotes\n```\n```python\nx = 1\n```\n"
    assert extract_code(reply, "python") == "x = 1\n"
    assert extract_code("x = 2", "python") == "x = 2\n"
    assert extract_yaml("```yaml\na: 1\n```") == "a: 1\n"
    with pytest.raises(ParseError):
        extract_code("```python\n```", "python")
    with pytest.raises(ParseError, match="too short"):
        extract_markdown("ok")


@pytest.mark.parametrize(
    "raw, expected",
    [("models/net.py", "models/net.py"), ("./a.py", "a.py"), ("a//b.py", "a/b.py"), ("a\\b.py", "a/b.py")],
)
def test_safe_paths_are_normalised(raw: str, expected: str) -> None:
    assert safe_relative_path(raw) == expected


@pytest.mark.parametrize(
    "raw",
    ["../x.py", "/etc/x", "a/../../b.py", "C:\\x.py", "~/x.py", "a\x00.py", "", ".", "con.py", "a/nul", "x:y"]
    + ["CON", "aux.py", "src/Nul.txt", "con .py", "COM1.log", "lpt\u00b9.py", "conin$", "a/b<c>.py", "what?.py"]
    + ["\\\\server\\share\\x.py", "c:x.py", "trailing./x.py", "x" * 256 + ".py", "\ud800.py", "a\x7f.py", "é/" * 600],
)
def test_unsafe_paths_are_rejected(raw: str) -> None:
    with pytest.raises(UnsafePathError):
        safe_relative_path(raw)


def test_logic_is_reordered_dependencies_first() -> None:
    design = ArchitectureDesign.model_validate(DESIGN)
    shuffled = LogicDesign.model_validate({**LOGIC, "files": list(reversed(LOGIC["files"]))})
    fixed, warnings = shuffled.check_against(design)
    assert fixed.order == ["data.py", "models/net.py", "main.py"] and warnings


def test_logic_must_cover_exactly_the_designed_files() -> None:
    design = ArchitectureDesign.model_validate(DESIGN)
    missing = LogicDesign.model_validate({**LOGIC, "files": LOGIC["files"][:2]})
    with pytest.raises(PlanError, match="missing"):
        missing.check_against(design)
    unknown_dep = LogicDesign.model_validate(
        {**LOGIC, "files": [*LOGIC["files"][:2], {"path": "main.py", "role": "m", "depends_on": ["utils.py"]}]}
    )
    with pytest.raises(PlanError, match="not planned"):
        unknown_dep.check_against(design)


def test_cycles_are_named() -> None:
    with pytest.raises(PlanError, match="a.py -> b.py -> a.py"):
        topological_order({"a.py": ["b.py"], "b.py": ["a.py"]}, ["a.py", "b.py"])


def test_config_must_be_a_safe_mapping() -> None:
    assert parse_config("lr: 0.1\n") == {"lr": 0.1}
    with pytest.raises(PlanError):
        parse_config("!!python/object/apply:os.system ['echo hi']")
    with pytest.raises(PlanError):
        parse_config("- a\n- b\n")


def test_diagrams_come_from_the_typed_design_and_cannot_inject_directives() -> None:
    hostile = dict(DESIGN)
    hostile["classes"] = [
        {"name": "X\n!include /etc/passwd", "file": "main.py", "methods": [{"name": "%getenv(HOME)"}]}
    ]
    design = ArchitectureDesign.model_validate(hostile)
    puml = class_diagram_plantuml(design)
    assert "!include" not in puml and "%getenv" not in puml
    assert sequence_diagram_mermaid(ArchitectureDesign.model_validate(DESIGN)).startswith("sequenceDiagram")
    assert set(diagram_files(design)) == {
        "planning/class_diagram.mmd",
        "planning/sequence_diagram.mmd",
        "planning/class_diagram.puml",
        "planning/sequence_diagram.puml",
    }


def test_design_consistency_warnings() -> None:
    design = ArchitectureDesign.model_validate({**DESIGN, "classes": [{"name": "Y", "file": "other.py"}]})
    assert any("other.py" in w for w in design.check())


def test_prices_unknown_model_means_unknown_cost() -> None:
    assert cost_of("some-local-model", 1000, 100, 0) is None
    assert price_for("gpt-4o-mini-2024-07-18") == price_for("gpt-4o-mini")
    assert cost_of("gpt-4o-mini", 1_000_000, 0, 1_000_000) == pytest.approx(0.075)
    total = Usage(10, 5, 0, 1, 0.5) + Usage(1, 1, 0, 1, None)
    assert total.cost is None and total.calls == 2


def test_prompts_share_a_byte_identical_prefix() -> None:
    builder = PromptBuilder("PAPER", {"design": ArchitectureDesign, "logic": LogicDesign})
    design = '{\n  "classes": [],\n  "file_list": ["a.py"]\n}'
    answers = {"plan": "P", "design": design, "logic": "L", "config": "```yaml\na: 1\n```"}
    a = builder.analysis(answers, "a.py", "role", [])
    c = builder.code(answers, "b.py", "role", "spec", {"a.py": "x = 1"}, {})
    _, context = builder.file_prefix(answers)
    assert a[:-1] == c[:-1] and "PAPER" in a[1]["content"]
    assert a[-1]["content"].startswith(context) and c[-1]["content"].startswith(context)
    # The file calls open like every planning call after the plan: system, paper, plan.
    assert builder.planning("design", answers)[:3] == a[:3]
    # Planning instructions and schemas stay out; the designs come in compact JSON.
    assert '"classes":[]' in context and "JSON schema" not in a[-1]["content"]


def test_interfaces_keep_signatures_not_bodies() -> None:
    code = "import os\n\nclass A(B):\n    def f(self, x: int) -> int:\n        return x * 2\n\ndef g():\n    pass\n"
    interface = interface_of("m.py", code)
    assert "def f(self, x: int) -> int: ..." in interface and "return x * 2" not in interface
    assert language_for("run.sh") == "bash" and language_for("config.yaml") == "yaml"


def test_errors_carry_exit_codes() -> None:
    assert issubclass(UnsafePathError, P2CError) and ConfigError("x").exit_code == 2


def test_an_unfenced_file_with_a_lone_closing_fence_loses_the_fence() -> None:
    """A small model asked to revise a file it was shown unfenced answers unfenced but closes a fence it never
    opened: the fence line is not part of the file."""
    from p2c_notebook.stages.parsing import extract_code

    assert extract_code("import os\nprint(os.sep)\n```", "python") == "import os\nprint(os.sep)\n"
    assert extract_code("```python\nx = 1\n", "python") == "x = 1\n"
    assert extract_code("a = '```'\n", "python") == "a = '```'\n"  # a fence inside a line is code


def test_a_file_followed_by_a_closing_fence_and_remarks_keeps_only_the_file() -> None:
    """The 1.5B model wrote a whole train.py unfenced, then a closing fence and a sentence about it, three times in
    a row: the fence line and the remarks are not part of the file (it was re-asked for a syntax error at ```)."""
    from p2c_notebook.stages.parsing import extract_code

    reply = "import os\n\nprint(os.sep)\n```\n\nThis code defines the `train.py` file with its purpose.\n"
    assert extract_code(reply, "python") == "import os\n\nprint(os.sep)\n"
    opened = "Here is the corrected file:\n```\nimport os\n"
    assert extract_code(opened, "python").strip() == "import os"
    assert extract_code("Notes first\n```\nx = (\n", "python") == "Notes first\n"  # neither parses: the side before
