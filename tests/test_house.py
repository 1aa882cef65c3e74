"""House rules of the package that a reviewer would otherwise check by hand (issue 16)."""

from __future__ import annotations

import ast
from pathlib import Path

import lightning as L

PACKAGE = Path(__file__).resolve().parent.parent / "lightning_nas"
HOOKS = {n for n in dir(L.Callback) if not n.startswith("__")} - {"state_key", "_legacy_state_key"}


def _modules() -> list[tuple[Path, ast.Module]]:
    return [(p, ast.parse(p.read_text())) for p in sorted(PACKAGE.rglob("*.py"))]


def test_no_private_name_is_imported_across_modules():
    bad = []
    for path, tree in _modules():
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lightning_nas"):
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        bad.append(f"{path.name}:{node.lineno} imports {node.module}.{a.name}")
                    aliases[a.asname or a.name] = a.name
            elif isinstance(node, ast.Import):
                aliases.update({a.asname or a.name: a.name for a in node.names if a.name.startswith("lightning_nas")})
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                bad.append(f"{path.name}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert not bad, "make these public in their module, or move them:\n" + "\n".join(bad)


def test_train_mode_toggles_go_through_eval_mode():
    """``was = m.training; m.eval(); ...; m.train(was)`` is written once, as ``_modules.eval_mode``."""
    bad = [
        f"{path.name}:{node.lineno}"
        for path, tree in _modules()
        if path.name != "_modules.py"
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "training"
        and any(isinstance(n, ast.Attribute) and n.attr == "eval" for n in ast.walk(tree))
        and _restored_by_train(tree, node)
    ]
    assert not bad, f"use `with eval_mode(module):` at {bad}"


def _restored_by_train(tree: ast.Module, assign: ast.Assign) -> bool:
    name = assign.targets[0].id if isinstance(assign.targets[0], ast.Name) else None
    return name is not None and any(
        isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr == "train"
        and any(isinstance(a, ast.Name) and a.id == name for a in n.args)
        and _eval_between(tree, assign, n)
        for n in ast.walk(tree)
    )


def _eval_between(tree: ast.Module, assign: ast.Assign, restore: ast.Call) -> bool:
    return any(
        isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr == "eval"
        and assign.lineno < n.lineno < restore.lineno
        for n in ast.walk(tree)
    )


def test_callback_hooks_are_marked_override():
    missing = []
    for path, tree in _modules():
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            if not _is_callback(cls):
                continue
            for f in cls.body:
                if isinstance(f, ast.FunctionDef) and f.name in HOOKS:
                    if not any(isinstance(d, ast.Name) and d.id == "override" for d in f.decorator_list):
                        missing.append(f"{path.name}:{f.lineno} {cls.name}.{f.name}")
    assert not missing, "add @override (typing_extensions) to: " + ", ".join(missing)


def _is_callback(cls: ast.ClassDef) -> bool:
    names = {b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "") for b in cls.bases}
    return bool(names & {"Callback", "LightningNASCallback", "OneShotCallback"}) or any(
        n.endswith(("Callback", "Monitor", "Pruning", "Aware", "Distillation", "NAS", "Sampling")) for n in names
    )


def test_tests_share_code_through_the_helpers_module():
    """Shared test code lives in ``tests/helpers.py``: not in ``conftest.py`` (fixtures only) or a test module."""
    tests = Path(__file__).resolve().parent
    bad = [
        f"{p.relative_to(tests)}:{n.lineno} from {n.module}"
        for p in sorted(tests.rglob("*.py"))
        for n in ast.walk(ast.parse(p.read_text()))
        if isinstance(n, ast.ImportFrom)
        and (n.module or "").startswith("tests.")
        and (n.module.split(".")[-1] == "conftest" or n.module.split(".")[-1].startswith("test_"))
    ]
    assert not bad, "import shared test code from tests.helpers:\n" + "\n".join(bad)
