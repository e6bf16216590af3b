"""Which keys of config.yaml generated code reads, and which of those config.yaml lacks.

Conservative on purpose: only literal keys (`cfg["training"]["lr"]`, `cfg.get("lr")`, `cfg.training.lr`) read
from a value that came from loading the YAML, from a read of such a value, or from a name a configuration goes
by (`config`, `cfg`, `hparams`, `*_cfg`, `self.config`). A value whose origin is unknown (a parameter) may be any
section: its keys only need to exist under some section of config.yaml.
"""

from __future__ import annotations

import ast
import difflib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

#: Names a configuration mapping commonly goes by in generated code. `params` is left out on purpose: in ML code
#: it is at least as often the model's parameter dict (`self.params["W1"]`).
CONFIG_NAMES = frozenset({"config", "cfg", "conf", "configuration", "hparams", "hyperparams", "hyper_params"})
_CONFIG_SUFFIXES = ("_cfg", "_config", "_conf")
_DICT_METHODS = frozenset(
    {"get", "items", "keys", "values", "update", "pop", "setdefault", "copy", "clear", "popitem", "fromkeys"}
)
_YAML_LOADERS = frozenset({"safe_load", "load", "full_load", "unsafe_load"})
_CONFIG_LOADER = re.compile(r"(load|read|get|parse|open)_?(config|cfg|conf|yaml|hparams)", re.IGNORECASE)


@dataclass(frozen=True)
class ConfigRead:
    """A read of a key config.yaml does not define: where, the code, the missing dotted key, a hint."""

    line: int
    code: str
    missing: tuple[str, ...]
    hint: str
    has_default: bool

    @property
    def dotted(self) -> str:
        return ".".join(self.missing)


def missing_config_reads(tree: ast.Module, data: dict[str, Any]) -> list[ConfigRead]:
    """Reads of keys `data` (the parsed config.yaml) lacks, one per line and missing key, in line order."""
    found: dict[tuple[int, tuple[str, ...]], ConfigRead] = {}
    for scope, env in _config_scopes(tree, data):
        for node in _scope_nodes(scope):
            if isinstance(node, ast.Name) or (isinstance(node, ast.Attribute) and _is_self(node.value)):
                continue  # the value itself, not a read of a key (judged where it was read)
            read = _config_read(node, env, data)
            if read is None or not read[1]:
                continue
            problem = _missing_key(data, read[1], read[0])
            if problem is None:
                continue
            line = getattr(node, "lineno", 0)
            shown = ast.unparse(node)
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            found.setdefault((line, problem[0]), ConfigRead(line, shown, problem[0], problem[1], read[2]))
    return sorted(found.values(), key=lambda r: (r.line, r.missing))


def assigned_names(target: ast.expr) -> Iterator[str]:
    """Names an assignment target binds (`a, (b, *c) = ...` binds a, b and c)."""
    if isinstance(target, ast.Name):
        yield target.id
    elif isinstance(target, (ast.Tuple, ast.List)):
        for element in target.elts:
            yield from assigned_names(element)
    elif isinstance(target, ast.Starred):
        yield from assigned_names(target.value)


_Anchor = Literal["root", "anywhere"]
_Env = dict[str, tuple[_Anchor, tuple[str, ...]]]  # name -> (anchor, keys read so far)
_MENTIONS_CONFIG = re.compile(r"config|cfg|conf\b|hparam|hyperparam|settings", re.IGNORECASE)


def _config_scopes(tree: ast.Module, data: dict[str, Any]) -> Iterator[tuple[ast.AST, _Env]]:
    """Each scope (module, function) with the names in it that hold configuration, and where they point."""
    module_env = _scope_env(tree, {}, [], data)
    yield tree, module_env
    yield from _inner_scopes(tree, module_env, data)


def _inner_scopes(scope: ast.AST, env: _Env, data: dict[str, Any]) -> Iterator[tuple[ast.AST, _Env]]:
    """The functions defined in a scope, each seeing what its enclosing scope holds (a closure reading the
    `config` its enclosing function loaded is judged like the enclosing function itself)."""
    for node in _scope_nodes(scope):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            a = node.args
            params = [p.arg for p in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg] if p is not None]
            inner = _scope_env(node, env, params, data)
            yield node, inner
            yield from _inner_scopes(node, inner, data)


def _scope_nodes(scope: ast.AST) -> Iterator[ast.AST]:
    """Nodes of a scope, not descending into nested functions (they are scopes of their own)."""
    stack = list(ast.iter_child_nodes(scope))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            stack.extend(ast.iter_child_nodes(node))
        else:  # what a def evaluates in the enclosing scope
            stack.extend(getattr(node, "decorator_list", []))
            stack.extend(node.args.defaults)


def _scope_env(scope: ast.AST, outer: _Env, params: list[str], data: dict[str, Any]) -> _Env:
    env: _Env = {}
    opened: dict[str, str] = {}  # `with open(X) as f`: f -> the text of X
    local: set[str] = set(params)
    for name in params:
        if _config_named(name):
            env[name] = ("anywhere", ())
    assigns: list[tuple[str, ast.expr]] = []
    for node in _scope_nodes(scope):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    assigns.append((target.id, node.value))
                else:
                    local.update(assigned_names(target))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            assigns.append((node.target.id, node.value))
        elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
            local.update(assigned_names(node.target))
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                if item.optional_vars is not None:
                    local.update(assigned_names(item.optional_vars))
                    if isinstance(item.optional_vars, ast.Name):
                        opened[item.optional_vars.id] = ast.unparse(item.context_expr)
    local.update(name for name, _ in assigns)
    visible = {k: v for k, v in outer.items() if k not in local}
    visible.update(env)
    for _ in range(4):  # aliases of aliases, in any order: cfg = load(); train = cfg["training"]; t = train["x"]
        for name, value in assigns:
            source = _config_source(value, visible, name, opened, data)
            if source is not None:
                visible[name] = source if visible.get(name, source) == source else ("anywhere", ())
    for name, value in assigns:  # a name also assigned something else is not judged
        if name in visible and _config_source(value, visible, name, opened, data) is None:
            visible.pop(name)
    return visible


def _is_self(node: ast.AST) -> bool:
    return isinstance(node, ast.Name) and node.id == "self"


def _config_named(name: str) -> bool:
    return name in CONFIG_NAMES or name.endswith(_CONFIG_SUFFIXES)


def _config_source(
    value: ast.expr, env: _Env, target: str, opened: dict[str, str], data: dict[str, Any]
) -> tuple[_Anchor, tuple[str, ...]] | None:
    """Where a value assigned to `target` points in config.yaml: the root for a load of config.yaml (a
    `load_config()`, or a YAML load into a config name or of a file whose name says config), or a read."""
    if isinstance(value, ast.Call):
        func = value.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        base = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
        if _CONFIG_LOADER.fullmatch(name):
            return ("root", ())
        if (base == "yaml" and name in _YAML_LOADERS) or name == "safe_load":
            source = " ".join(opened.get(a.id, a.id) if isinstance(a, ast.Name) else ast.unparse(a) for a in value.args)
            if _config_named(target) or _MENTIONS_CONFIG.search(source):
                return ("root", ())
            return None
    if isinstance(value, ast.BoolOp):  # cfg.get("x") or {}
        return _config_source(value.values[0], env, target, opened, data)
    read = _config_read(value, env, data)
    if read is None:
        return None
    anchored, keys, _ = read
    return anchored, keys


def _config_read(node: ast.AST, env: _Env, data: dict[str, Any]) -> tuple[_Anchor, tuple[str, ...], bool] | None:
    """A chain of literal-key reads on a configuration value: (anchor, keys, has_default) or None.

    Reads are `x["key"]`, `x.get("key"[, default])` and attribute-style `x.key` (not method calls). On a value
    of unknown origin, attribute-style reads count only when the first one names a key config.yaml has
    somewhere: `config.stash` on a framework's own config object is not a read of config.yaml."""
    if isinstance(getattr(node, "ctx", None), (ast.Store, ast.Del)):
        return None
    keys: list[str] = []
    has_default = attribute_first = False
    current: ast.AST = node
    while True:
        if isinstance(current, ast.Subscript):
            key = current.slice
            if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                return None
            keys.append(key.value)
            attribute_first = False
            current = current.value
        elif isinstance(current, ast.Call):
            func = current.func
            if not (isinstance(func, ast.Attribute) and func.attr == "get" and current.args):
                return None
            key = current.args[0]
            if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                return None
            keys.append(key.value)
            attribute_first = False
            has_default = has_default or len(current.args) > 1 or bool(current.keywords)
            current = func.value
        elif isinstance(current, ast.Attribute):
            if _is_self(current.value):
                if not _config_named(current.attr):
                    return None
                anchor: tuple[_Anchor, tuple[str, ...]] = ("anywhere", ())
                break
            if current.attr in _DICT_METHODS or current.attr.startswith("_"):
                return None
            keys.append(current.attr)
            attribute_first = True
            current = current.value
        elif isinstance(current, ast.Name) and current.id in env:
            anchor = env[current.id]
            break
        else:
            return None
    if anchor == ("anywhere", ()) and attribute_first and not any(_has_key(m, keys[-1]) for m in _mappings(data)):
        return None
    return anchor[0], anchor[1] + tuple(reversed(keys)), has_default


def _missing_key(data: dict[str, Any], keys: tuple[str, ...], anchor: _Anchor) -> tuple[tuple[str, ...], str] | None:
    """None when the keys exist; else the missing prefix and a hint naming what exists there."""
    if anchor == "root":
        return _walk(data, keys, ())
    starts = [node for node in _mappings(data) if _has_key(node, keys[0])]
    if not starts:
        close = difflib.get_close_matches(keys[0], sorted({str(k) for m in _mappings(data) for k in m}), n=1)
        hint = f"did you mean `{close[0]}`?" if close else "use a key config.yaml has"
        return (keys[0],), f"no section of config.yaml has `{keys[0]}`; {hint}"
    results = [_walk(node, keys, ()) for node in starts]
    if any(r is None for r in results):
        return None
    return next(r for r in results if r is not None)


def _walk(node: Any, keys: tuple[str, ...], done: tuple[str, ...]) -> tuple[tuple[str, ...], str] | None:
    for i, key in enumerate(keys):
        if not isinstance(node, dict):
            where = ".".join(done + keys[:i])
            return done + keys[: i + 1], f"`{where}` is a value, not a section; read it directly"
        match = [k for k in node if str(k) == key]
        if not match:
            where = ".".join(done + keys[:i]) or "the top level"
            present = [str(k) for k in node]
            close = difflib.get_close_matches(key, present, n=1)
            hint = f"did you mean `{close[0]}`? " if close else ""
            return done + keys[: i + 1], f"{hint}{where} has: {', '.join(present[:12]) or 'nothing'}"
        node = node[match[0]]
    return None


def _mappings(data: Any) -> Iterator[dict[Any, Any]]:
    if isinstance(data, dict):
        yield data
        for value in data.values():
            yield from _mappings(value)
    elif isinstance(data, list):
        for value in data:
            yield from _mappings(value)


def _has_key(node: dict[Any, Any], key: str) -> bool:
    return any(str(k) == key for k in node)
