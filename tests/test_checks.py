"""Static checks of generated repositories: each violation found at its file:line, clean code reported clean."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2c_notebook.errors import PlanError, RunError
from p2c_notebook.stages.artifacts import ArchitectureDesign, LogicDesign
from p2c_notebook.stages.checks import (
    Violation,
    check_file,
    check_repository,
    entry_file,
    fidelity,
    load_repository,
    measure_fidelity,
    repair_request,
)
from p2c_notebook.stages.logiccheck import check_logic_design, fix_logic_design

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mixup"

CONFIG = """\
data:
  n_train: 500
  moons:
    noise: 0.2
training:
  learning_rate: 0.1
  epochs: 3
"""

# A small, correct repository: a package with a relative import and a re-export, a dataclass, a designed class
# with its methods, config reads through aliases and parameters, third-party imports, an entry point.
CLEAN = {
    "config.yaml": CONFIG,
    "utils/__init__.py": '"""Helpers."""\nfrom .metrics import accuracy\n\n__all__ = ["accuracy"]\n',
    "utils/metrics.py": (
        "def accuracy(pred, labels):\n    return sum(p == y for p, y in zip(pred, labels)) / len(labels)\n"
    ),
    "data.py": (
        "from dataclasses import dataclass\n\nimport numpy as np\n\n\n@dataclass\nclass Dataset:\n"
        "    x: np.ndarray\n    y: np.ndarray\n    name: str = 'moons'\n\n\n"
        "def load_dataset(data_cfg, seed):\n    rng = np.random.default_rng(seed)\n"
        "    n = data_cfg['n_train']\n    noise = data_cfg['moons']['noise']\n"
        "    return Dataset(rng.normal(size=(n, 2)) * noise, np.zeros(n))\n"
    ),
    "model.py": (
        "import numpy as np\n\n\nclass Base:\n    def predict(self, x):\n        return self.forward(x)\n\n\n"
        "class MLP(Base):\n    def __init__(self, in_dim, hidden=64):\n"
        "        self.params = {'W1': np.zeros((in_dim, hidden))}\n\n"
        "    def forward(self, x):\n        return x @ self.params['W1']\n"
    ),
    "main.py": (
        '"""Entry point."""\nimport sys\n\nimport yaml\n\nfrom data import load_dataset\nfrom model import MLP\n'
        "from utils import accuracy\n\n\ndef main(path):\n    with open(path) as handle:\n"
        "        config = yaml.safe_load(handle)\n    train_cfg = config['training']\n"
        "    data = load_dataset(config['data'], seed=0)\n    model = MLP(2)\n"
        "    for _ in range(train_cfg.get('epochs', 1)):\n        pred = model.predict(data.x)\n"
        "    print(accuracy(pred, data.y), train_cfg['learning_rate'])\n\n\n"
        'if __name__ == "__main__":\n    main(sys.argv[1] if len(sys.argv) > 1 else "config.yaml")\n'
    ),
}

DESIGN = {
    "implementation_approach": "numpy",
    "file_list": ["utils/__init__.py", "utils/metrics.py", "data.py", "model.py", "main.py"],
    "classes": [
        {"name": "Dataset", "file": "data.py", "methods": [{"name": "__init__", "args": "x, y"}]},
        {
            "name": "MLP",
            "file": "model.py",
            "methods": [
                {"name": "__init__", "args": "in_dim: int"},
                {"name": "forward", "args": "x: np.ndarray"},
                {"name": "predict", "args": "x"},
            ],
        },
    ],
}
LOGIC = {
    "files": [
        {"path": "utils/__init__.py", "role": "package", "depends_on": ["utils/metrics.py"]},
        {"path": "utils/metrics.py", "role": "accuracy", "depends_on": []},
        {"path": "data.py", "role": "data", "depends_on": []},
        {"path": "model.py", "role": "the MLP", "depends_on": []},
        {"path": "main.py", "role": "entry point", "depends_on": ["data.py", "model.py", "utils/metrics.py"]},
    ]
}


def design(**changes: Any) -> ArchitectureDesign:
    return ArchitectureDesign.model_validate({**DESIGN, **changes})


def logic(**changes: Any) -> LogicDesign:
    return LogicDesign.model_validate({**LOGIC, **changes})


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def check(tmp_path: Path, changes: dict[str, str], **kwargs: Any) -> list[Violation]:
    """Check CLEAN with some files replaced (an empty text removes the file)."""
    files = {k: v for k, v in {**CLEAN, **changes}.items() if v}
    report = check_repository(write(tmp_path, files), kwargs.get("design", design()), kwargs.get("logic", logic()))
    return report.violations


def found(violations: list[Violation], check_name: str) -> list[str]:
    return [f"{v.location} {v.message}" for v in violations if v.check == check_name]


def test_a_clean_repository_is_reported_clean(tmp_path: Path) -> None:
    report = check_repository(write(tmp_path, CLEAN), design(), logic())
    assert report.violations == []
    assert report.is_clean
    data = json.loads(json.dumps(report.to_json()))
    assert data["is_clean"] is True and set(data["files"]) == {p for p in CLEAN if p.endswith(".py")}
    assert all(len(entry["sha256"]) == 64 and entry["violations"] == [] for entry in data["files"].values())
    assert set(data["summary"].values()) == {0}
    figures = fidelity(report)
    assert figures.classes_once_where_designed == figures.designed_classes == 2
    assert figures.declared_dependencies == figures.declared_dependencies_imported == 4
    assert figures.dependency_share == 1.0 and figures.entry_point


def test_a_repair_request_names_each_error_of_the_file_with_its_line(tmp_path: Path) -> None:
    main = CLEAN["main.py"].replace("from data import load_dataset\n", "import os\n")
    violations = check(tmp_path, {"main.py": main})
    assert repair_request("main.py", violations) == (
        "The static checks found 1 problem(s) in main.py; fix each and reply with the whole file:\n"
        "- line 15: `load_dataset` is defined in data.py; import it: `from data import load_dataset`"
    )
    assert "'os' imported but unused" in repair_request("main.py", violations, warnings=True)
    assert repair_request("data.py", violations) == ""


def test_a_syntax_error_is_reported_with_its_line(tmp_path: Path) -> None:
    violations = check(tmp_path, {"data.py": "import numpy\n\ndef load(:\n    pass\n"})
    assert found(violations, "syntax") == [
        "data.py:3 does not parse: invalid syntax; fix the syntax so that the whole file is valid Python"
    ]
    bad = check(tmp_path, {"data.py": "x = 1\nreturn x\n"})
    assert [v.location for v in bad if v.check == "syntax"] == ["data.py:2"]


def test_an_undefined_name_defined_elsewhere_names_the_import_that_fixes_it(tmp_path: Path) -> None:
    main = CLEAN["main.py"].replace("from data import load_dataset\n", "")
    violations = check(tmp_path, {"main.py": main})
    assert found(violations, "undefined-name") == [
        "main.py:14 `load_dataset` is defined in data.py; import it: `from data import load_dataset`"
    ]
    report = check_repository(write(tmp_path, {**CLEAN, "main.py": main}), design(), logic())
    assert not report.is_clean and report.summary()["undefined-name"] == 1


def test_each_undefined_name_is_reported_once_with_the_fix_for_its_kind(tmp_path: Path) -> None:
    code = "def f(x: Tuple) -> None:\n    np.zeros(1)\n    np.ones(2)\n    os.getcwd()\n    return train_loader\n"
    messages = found(check(tmp_path, {"utils/metrics.py": CLEAN["utils/metrics.py"] + code}), "undefined-name")
    assert messages == [
        "utils/metrics.py:3 `Tuple` is not defined; import it: `from typing import Tuple`",
        "utils/metrics.py:4 `np` is not defined; import it: `import numpy as np` (also used at line 5)",
        "utils/metrics.py:6 `os` is used without being imported; add `import os` at the top of the file",
        "utils/metrics.py:7 `train_loader` is used but never defined or imported in this file; define it here, "
        "take it as a parameter, or import it from the file that defines it",
    ]


def test_a_star_import_is_an_error_naming_the_names_it_hides(tmp_path: Path) -> None:
    main = CLEAN["main.py"].replace("from model import MLP\n", "from model import *\n")
    assert found(check(tmp_path, {"main.py": main}), "import-star") == [
        "main.py:7 `from model import *` hides where names come from; import them by name: `from model import MLP`"
    ]


def test_a_package_init_may_import_to_re_export(tmp_path: Path) -> None:
    init = '"""Helpers."""\nfrom .metrics import accuracy\n'
    assert found(check(tmp_path, {"utils/__init__.py": init}), "lint") == []


def test_other_pyflakes_findings_are_warnings(tmp_path: Path) -> None:
    report = check_repository(
        write(tmp_path, {**CLEAN, "data.py": "import os\n" + CLEAN["data.py"]}), design(), logic()
    )
    assert found(report.violations, "lint") == ["data.py:1 'os' imported but unused; remove the import"]
    assert report.is_clean


def test_an_import_of_a_missing_module_or_name_is_unresolved(tmp_path: Path) -> None:
    main = (
        CLEAN["main.py"]
        .replace("from data import load_dataset", "from dataset import load_dataset")
        .replace("from model import MLP", "from model import MLP, Trainer")
    )
    messages = found(check(tmp_path, {"main.py": main}), "unresolved-import")
    assert messages[0].startswith("main.py:6 `from dataset import load_dataset`: the repository has no module")
    assert messages[0].endswith("`load_dataset` is defined in data.py; import it: `from data import load_dataset`")
    assert messages[1] == (
        "main.py:7 `from model import MLP, Trainer`: model.py does not define `Trainer`; model.py defines: Base, "
        "MLP; use one of those names, or define `Trainer` there"
    )


def test_modules_packages_and_re_exports_resolve(tmp_path: Path) -> None:
    main = CLEAN["main.py"].replace(
        "from utils import accuracy\n", "from utils import metrics\nimport utils.metrics\naccuracy = metrics.accuracy\n"
    )
    violations = check(tmp_path, {"main.py": main})
    assert found(violations, "unresolved-import") == []
    assert found(violations, "undefined-name") == []
    bad = main.replace("import utils.metrics\n", "import utils.scores\n")
    assert [v.location for v in check(tmp_path, {"main.py": bad}) if v.check == "unresolved-import"] == ["main.py:9"]


def test_a_relative_import_in_a_top_level_file_is_unresolved(tmp_path: Path) -> None:
    main = CLEAN["main.py"].replace("from data import load_dataset", "from .data import load_dataset")
    messages = found(check(tmp_path, {"main.py": main}), "unresolved-import")
    assert len(messages) == 1 and messages[0].startswith("main.py:6 `from .data import load_dataset` is a relative")


def test_a_name_missing_from_a_package_without_init_is_unresolved(tmp_path: Path) -> None:
    files = {"utils/__init__.py": "", "main.py": CLEAN["main.py"]}
    logic_ = logic(files=[f for f in LOGIC["files"] if f["path"] != "utils/__init__.py"])
    design_ = design(file_list=[p for p in DESIGN["file_list"] if p != "utils/__init__.py"])
    messages = found(check(tmp_path, files, logic=logic_, design=design_), "unresolved-import")
    assert messages == [
        "main.py:8 `from utils import accuracy`: utils/ does not define `accuracy`; it is defined in "
        "utils/metrics.py: `from utils.metrics import accuracy`"
    ]


def test_third_party_imports_are_not_judged(tmp_path: Path) -> None:
    extra = "import torch\nfrom torch import nn\nfrom sklearn.metrics import f1_score\n"
    violations = check(tmp_path, {"data.py": extra + CLEAN["data.py"]})
    assert found(violations, "unresolved-import") == [] and found(violations, "undeclared-dependency") == []


def test_a_script_in_a_folder_may_import_its_siblings(tmp_path: Path) -> None:
    tools = {"tools/helpers.py": "def scale(x):\n    return 2 * x\n", "tools/run.py": "from helpers import scale\n"}
    assert found(check(tmp_path, tools), "unresolved-import") == []
    wrong = {**tools, "tools/run.py": "from helpers import shift\n"}
    assert [v.location for v in check(tmp_path, wrong) if v.check == "unresolved-import"] == ["tools/run.py:1"]


def test_a_misspelt_own_module_is_unresolved_when_the_names_exist_elsewhere(tmp_path: Path) -> None:
    main = CLEAN["main.py"].replace("from data import load_dataset", "from data_loader import load_dataset")
    assert found(check(tmp_path, {"main.py": main}), "unresolved-import") == [
        "main.py:6 `from data_loader import load_dataset`: the repository has no module `data_loader` (no "
        "data_loader.py or data_loader/__init__.py), and `load_dataset` is defined in data.py; import it: "
        "`from data import load_dataset`"
    ]


def test_a_third_party_module_is_not_judged_even_when_the_repository_copies_its_names(tmp_path: Path) -> None:
    data = "from torch.utils.data import DataLoader\n\n\nclass Loader(DataLoader):\n    pass\n"
    model = CLEAN["model.py"] + "\n\nclass DataLoader:\n    pass\n"
    violations = check(tmp_path, {"utils/metrics.py": CLEAN["utils/metrics.py"] + data, "model.py": model})
    assert found(violations, "unresolved-import") == []


def test_a_designed_class_missing_from_its_file_is_reported(tmp_path: Path) -> None:
    model = CLEAN["model.py"].replace("class MLP(Base)", "class Network(Base)")
    messages = found(check(tmp_path, {"model.py": model}), "missing-class")
    assert messages == [
        "model.py the design places class `MLP` here; define `class MLP` with its methods: __init__(in_dim: int), "
        "forward(x: np.ndarray), predict(x)"
    ]


def test_a_copy_of_a_designed_class_is_reported_where_the_copy_is(tmp_path: Path) -> None:
    copy = "\n\nclass MLP:\n    def forward(self, x):\n        return x\n"
    violations = check(tmp_path, {"data.py": CLEAN["data.py"] + copy})
    assert found(violations, "duplicated-class") == [
        "data.py:20 the design places class `MLP` in model.py; delete this definition and import it: "
        "`from model import MLP`"
    ]


def test_a_designed_class_defined_only_in_the_wrong_file_is_misplaced(tmp_path: Path) -> None:
    model = CLEAN["model.py"].replace("class MLP(Base)", "class Network(Base)")
    data = CLEAN["data.py"] + "\n\nclass MLP:\n    pass\n"
    violations = check(tmp_path, {"model.py": model, "data.py": data})
    assert [v.location for v in violations if v.check == "misplaced-class"] == ["data.py:20"]
    assert found(violations, "missing-class")[0].startswith(
        "model.py the design places class `MLP` here, but it is defined in data.py:20; move the definition here"
    )


def test_an_undesigned_class_copied_into_a_later_file_is_a_duplicate(tmp_path: Path) -> None:
    helper = "\n\nclass Loader:\n    pass\n"
    violations = check(tmp_path, {"data.py": CLEAN["data.py"] + helper, "model.py": CLEAN["model.py"] + helper})
    assert found(violations, "duplicated-class") == [
        "model.py:17 class `Loader` is already defined in data.py:20; delete this copy and import it: "
        "`from data import Loader`"
    ]
    assert fidelity(check_repository(tmp_path, design(), logic())).duplicated_classes == 1


def test_unrelated_or_private_classes_of_one_name_are_not_copies(tmp_path: Path) -> None:
    entry = "\n\nclass Entry:\n    def {}(self):\n        pass\n\n\nclass _Helper:\n    pass\n"
    files = {"data.py": CLEAN["data.py"] + entry.format("load"), "model.py": CLEAN["model.py"] + entry.format("fit")}
    assert found(check(tmp_path, files), "duplicated-class") == []


def test_a_designed_method_that_is_missing_or_has_another_arity_is_reported(tmp_path: Path) -> None:
    model = CLEAN["model.py"].replace("def forward(self, x):", "def forward(self, x, mask):")
    violations = check(tmp_path, {"model.py": model})
    assert found(violations, "method-arity") == [
        "model.py:13 `MLP.forward` takes 2 parameter(s) besides self, the design gives it 1: "
        "`forward(x: np.ndarray)`; change the signature to match (extra parameters need defaults)"
    ]
    gone = CLEAN["model.py"].replace("    def predict(self, x):\n        return self.forward(x)\n", "    pass\n")
    assert found(check(tmp_path, {"model.py": gone}), "missing-method") == [
        "model.py:8 the design gives `MLP` the method `predict(x)`; define `def predict(self, x)` in class MLP"
    ]


def test_a_method_inherited_from_a_third_party_base_is_only_a_warning(tmp_path: Path) -> None:
    model = "import torch\n\n\nclass MLP(torch.nn.Module):\n    def forward(self, x):\n        return x\n"
    report = check_repository(write(tmp_path, {**CLEAN, "model.py": model}), design(), logic())
    missing = [v for v in report.violations if v.check == "missing-method"]
    assert [(v.location, v.severity) for v in missing] == [("model.py:4", "warning"), ("model.py:4", "warning")]


def test_a_design_that_writes_none_for_no_arguments_means_none(tmp_path: Path) -> None:
    methods = [{"name": "forward", "args": "x"}, {"name": "reset", "args": "None"}]
    model = CLEAN["model.py"] + "\n    def reset(self):\n        self.params = {}\n"
    plan = design(classes=[{"name": "MLP", "file": "model.py", "methods": methods}])
    assert [v.check for v in check(tmp_path, {"model.py": model}, design=plan)] == []


def test_a_dataclass_init_is_checked_against_its_fields(tmp_path: Path) -> None:
    bad = design(classes=[{"name": "Dataset", "file": "data.py", "methods": [{"name": "__init__", "args": "x"}]}])
    assert found(check(tmp_path, {}, design=bad), "method-arity")[0].startswith(
        "data.py:7 `Dataset.__init__` takes 2 to 3 parameter(s) besides self, the design gives it 1"
    )


def test_declared_dependencies_must_be_imported_and_imports_declared(tmp_path: Path) -> None:
    declared = [dict(f) for f in LOGIC["files"]]
    declared[3]["depends_on"] = ["data.py"]  # model.py: declared but not imported
    declared[4]["depends_on"] = ["data.py", "utils/metrics.py"]  # main.py imports model.py undeclared
    report = check_repository(write(tmp_path, CLEAN), design(), logic(files=declared))
    assert found(report.violations, "unused-dependency") == [
        "model.py the logic design says this file depends on data.py, but it imports nothing from it (data.py "
        "defines: Dataset, load_dataset); import what you use from it instead of redefining it"
    ]
    assert [v.location for v in report.violations if v.check == "undeclared-dependency"] == ["main.py:7"]
    assert report.is_clean  # both are warnings: the code still runs
    figures = fidelity(report)
    assert (figures.declared_dependencies, figures.declared_dependencies_imported) == (4, 3)
    assert figures.dependency_share == 0.75


def test_config_keys_the_code_reads_must_exist(tmp_path: Path) -> None:
    main = CLEAN["main.py"].replace("train_cfg['learning_rate']", "train_cfg['lr']")
    messages = found(check(tmp_path, {"main.py": main}), "missing-config-key")
    assert messages == [
        "main.py:19 `train_cfg['lr']` reads `training.lr`, which config.yaml does not define; training has: "
        "learning_rate, epochs"
    ]
    data = CLEAN["data.py"].replace("data_cfg['moons']['noise']", "data_cfg['moons']['sigma']")
    assert found(check(tmp_path, {"data.py": data}), "missing-config-key") == [
        "data.py:16 `data_cfg['moons']['sigma']` reads `moons.sigma`, which config.yaml does not define; "
        "moons has: noise"
    ]


def test_config_reads_through_get_and_attributes_are_checked(tmp_path: Path) -> None:
    code = (
        "def run(cfg):\n    a = cfg.get('optimiser', 'sgd')\n    b = cfg.training.learning_rate\n"
        "    c = cfg.training.momentum\n    d = cfg['data'].get('n_test')\n    return a, b, c, d\n"
    )
    report = check_repository(
        write(tmp_path, {**CLEAN, "utils/metrics.py": CLEAN["utils/metrics.py"] + code}), design(), logic()
    )
    missing = [(v.location, v.severity) for v in report.violations if v.check == "missing-config-key"]
    assert missing == [
        ("utils/metrics.py:4", "warning"),
        ("utils/metrics.py:6", "error"),
        ("utils/metrics.py:7", "error"),
    ]


def test_config_reads_inside_nested_functions_see_the_enclosing_config(tmp_path: Path) -> None:
    code = (
        "import yaml\n\n\ndef run_all(path):\n    settings = yaml.safe_load(open('config.yaml'))\n\n"
        "    def one(seed):\n        return settings['training']['lr'], seed\n\n"
        "    return [one(s) for s in range(3)], (lambda: settings['training']['epochs'])()\n"
    )
    violations = check(tmp_path, {"utils/metrics.py": CLEAN["utils/metrics.py"] + code})
    offset = CLEAN["utils/metrics.py"].count("\n")
    assert found(violations, "missing-config-key") == [
        f"utils/metrics.py:{offset + 8} `settings['training']['lr']` reads `training.lr`, which config.yaml does "
        "not define; training has: learning_rate, epochs"
    ]


def test_config_reads_on_other_values_are_not_judged(tmp_path: Path) -> None:
    code = (
        "def step(params, grads, config=None):\n    params['W9'] = grads['W9']\n    config = make()\n"
        "    return config['anything'], params['W1']\n\n\ndef make():\n    cfg = {}\n    cfg['new'] = 1\n"
        "    return cfg\n"
    )
    violations = check(tmp_path, {"utils/metrics.py": CLEAN["utils/metrics.py"] + code})
    assert found(violations, "missing-config-key") == []


def test_other_yaml_files_and_framework_config_objects_are_not_config_yaml(tmp_path: Path) -> None:
    code = (
        "import yaml\n\n\ndef scenario(path):\n    with open(path) as handle:\n        data = yaml.safe_load(handle)\n"
        "    return data['responses']\n\n\ndef hook(config):\n    return config.stash\n\n\n"
        "def settings():\n    with open('config.yaml') as handle:\n        loaded = yaml.safe_load(handle)\n"
        "    return loaded['optimiser']\n"
    )
    messages = found(check(tmp_path, {"utils/metrics.py": CLEAN["utils/metrics.py"] + code}), "missing-config-key")
    assert [m.split(" ")[0] for m in messages] == ["utils/metrics.py:19"]


def test_the_entry_point_must_run_something(tmp_path: Path) -> None:
    main = CLEAN["main.py"].split('if __name__ == "__main__":')[0]
    assert found(check(tmp_path, {"main.py": main}), "entry-point") == [
        "main.py this file is the entry point that runs the experiment, but running it does nothing; add "
        '`if __name__ == "__main__":` calling the function that runs it'
    ]
    scripted = main + "main('config.yaml')\n"
    assert found(check(tmp_path, {"main.py": scripted}), "entry-point") == []


def test_a_repository_with_no_entry_point_at_all_is_reported(tmp_path: Path) -> None:
    files = {"data.py": CLEAN["data.py"], "model.py": CLEAN["model.py"]}
    report = check_repository(write(tmp_path, files))
    assert entry_file(None, None, sorted(files)) is None
    assert [v.check for v in report.repository] == ["entry-point"]
    assert not report.is_clean


def test_a_planned_file_that_was_not_written_is_missing(tmp_path: Path) -> None:
    files = {k: v for k, v in CLEAN.items() if k != "utils/metrics.py"}
    report = check_repository(write(tmp_path, files), design(), logic())
    assert [(v.check, v.file) for v in report.repository] == [("missing-file", "utils/metrics.py")]


def test_check_file_judges_one_file_against_those_written_so_far() -> None:
    written = {"data.py": CLEAN["data.py"], "config.yaml": CONFIG}
    model = CLEAN["model.py"] + "\n\nclass Dataset:\n    pass\n"
    violations = check_file("model.py", {**written, "model.py": model}, design(), logic(), CONFIG)
    assert [(v.check, v.location) for v in violations] == [("duplicated-class", "model.py:17")]
    main = CLEAN["main.py"]  # utils/ not written yet: names from planned files are not judged
    assert (
        check_file("main.py", {**written, "model.py": CLEAN["model.py"], "main.py": main}, design(), logic(), CONFIG)
        == []
    )
    with pytest.raises(KeyError):
        check_file("nowhere.py", written)


def test_load_repository_reads_python_and_config_but_never_follows_links(tmp_path: Path) -> None:
    write(tmp_path / "repo", {"a.py": "x = 1\n", "config.yaml": CONFIG, "notes.md": "hi", ".hidden/b.py": "y = 2\n"})
    outside = write(tmp_path / "outside", {"secret.py": "KEY = 1\n"})
    (tmp_path / "repo" / "linked.py").symlink_to(outside / "secret.py")
    assert sorted(load_repository(tmp_path / "repo")) == ["a.py", "config.yaml"]
    with pytest.raises(RunError):
        load_repository(tmp_path / "missing")


def _fenced(text: str) -> str:
    match = re.search(r"```[a-z]*\n(.*?)```", text, re.S)
    assert match is not None
    return match.group(1)


def test_the_scripted_example_repository_is_clean() -> None:
    replies = EXAMPLE / "replies"
    files = {
        str(p.relative_to(replies / "code"))[:-3]: _fenced(p.read_text()) for p in (replies / "code").rglob("*.md")
    }
    files["config.yaml"] = _fenced((replies / "config.md").read_text())
    design_ = ArchitectureDesign.model_validate_json((replies / "design.json").read_text())
    logic_ = LogicDesign.model_validate_json((replies / "logic.json").read_text())
    report = check_repository(files, design_, logic_)
    assert report.violations == []
    figures = measure_fidelity(files, design_, logic_)
    assert figures.classes_once_where_designed == figures.designed_classes == 5
    assert figures.dependency_share == 1.0
    assert check_logic_design(design_, logic_) == []


# ------------------------------------------------------------------------------------- the logic design


def test_mechanical_logic_defects_are_fixed_and_a_duplicate_entry_is_dropped_keeping_the_first() -> None:
    raw = LogicDesign.model_validate(
        {
            "files": [
                {"path": "data.py", "role": "data", "depends_on": []},
                {"path": "model.py", "role": "model", "depends_on": ["data.py", "./data.py", "model.py"]},
                {"path": "./data.py", "role": "data again", "depends_on": ["model.py"]},
                {"path": "main.py", "role": "entry point", "depends_on": ["net.py", "torch"]},
                {"path": "models/net.py", "role": "net", "depends_on": []},
            ]
        }
    )
    plan = ArchitectureDesign.model_validate(
        {"implementation_approach": "x", "file_list": ["data.py", "model.py", "main.py", "models/net.py"]}
    )
    with pytest.raises(PlanError):
        raw.check_against(plan)
    fixed, notes = fix_logic_design(raw, plan)
    assert fixed.dependencies("model.py") == ["data.py"]
    assert fixed.dependencies("main.py") == ["models/net.py"]
    assert notes == [
        "model.py listed the dependency ./data.py more than once; kept one.",
        "model.py depended on itself; dropped.",
        "main.py depends on 'net.py'; read as the planned file models/net.py.",
        "main.py depends on 'torch', which is not a planned file; dropped.",
    ]
    # The repeated entry is left to check_against (one mechanism for replies and edits): first entry kept, said so.
    ordered, warnings = fixed.check_against(plan)
    assert [f.path for f in ordered.files].count("data.py") == 1
    assert next(f for f in ordered.files if f.path == "data.py").role == "data"
    assert "The logic design lists data.py more than once; kept its first entry." in warnings
    assert ordered.order.index("models/net.py") < ordered.order.index("main.py")
    assert fix_logic_design(ordered, plan) == (ordered, [])


def test_a_multi_file_logic_design_without_dependencies_is_a_problem() -> None:
    flat = logic(files=[{**f, "depends_on": []} for f in LOGIC["files"]])
    problems = check_logic_design(design(), flat)
    assert problems == [
        "No file depends on another in a design of 4 Python files, so none would import the others and each would "
        "re-implement them; list in each file's depends_on the files whose classes and functions it uses."
    ]


def test_an_entry_point_without_dependencies_and_contradicting_relations_are_problems() -> None:
    files = [dict(f) for f in LOGIC["files"]]
    files[4]["depends_on"] = []
    files[2]["depends_on"] = ["model.py"]
    relations = [{"source": "MLP", "target": "Dataset", "kind": "composes"}]
    problems = check_logic_design(design(relations=relations), logic(files=files))
    assert problems == [
        "main.py runs the experiment but depends on no file; list the files whose classes and functions it uses in "
        "its depends_on.",
        "MLP in model.py composes Dataset from data.py, but model.py does not depend on data.py (the dependency "
        "points the other way: reverse it); add data.py to the depends_on of model.py.",
    ]


def _recorded_first_pass() -> tuple[dict[str, str], ArchitectureDesign, LogicDesign]:
    """The repository the shipped cassette's first pass produced (the recorded 1.5B model's replies)."""
    files: dict[str, str] = {}
    replies: dict[str, str] = {}
    for line in (EXAMPLE / "local.cassette.jsonl").read_text().splitlines():
        entry = json.loads(line)
        stage, path = entry["request"]["stage"], entry["request"]["file"]
        if stage == "code" and path not in files:
            files[path] = _fenced(entry["reply"])
        elif stage in ("design", "logic", "config"):
            replies.setdefault(stage, entry["reply"])
    files["config.yaml"] = _fenced(replies["config"])
    design_ = ArchitectureDesign.model_validate_json(replies["design"])
    return files, design_, LogicDesign.model_validate_json(replies["logic"])


def test_the_recorded_local_model_repository_shows_its_copies_and_missing_imports() -> None:
    """The shipped cassette's first replies (before the in-loop re-asks): what the checks must find in them."""
    files, design_, logic_ = _recorded_first_pass()
    report = check_repository(files, design_, logic_)
    copies = {(v.file, v.message.split("`")[1]) for v in report.violations if v.check == "duplicated-class"}
    assert copies == {("model.py", "ModelSpec")}  # the designed class of models/net.py, copied
    undefined = {(v.file, v.message.split("`")[1]) for v in report.violations if v.check == "undefined-name"}
    assert undefined == {
        ("evaluate.py", "np"),
        ("evaluate.py", "ece_bins"),
        ("train.py", "SGD"),
        ("train.py", "categorical_crossentropy"),
    }
    figures = fidelity(report)
    assert figures.declared_dependencies == 0 and figures.classes_once_where_designed == 0 and figures.entry_point
    # The first logic design declared no dependency at all: the reason the run re-asked it.
    assert check_logic_design(design_, logic_) == [
        "No file depends on another in a design of 5 Python files, so none would import the others and each would "
        "re-implement them; list in each file's depends_on the files whose classes and functions it uses."
    ]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from(["main.py", "a.py", "pkg/__init__.py", "pkg/b.py", "config.yaml"]),
        st.text(alphabet=st.sampled_from(list("abcfgimnoprstxyz_.*()[]{}:=,'\"\n #0123456789\\\t-")), max_size=200),
        max_size=5,
    )
)
def test_any_text_is_checked_without_an_exception(files: dict[str, str]) -> None:
    report = check_repository(files, design(), logic())
    json.dumps(report.to_json())
    assert all(v.check in report.summary() for v in report.violations)
