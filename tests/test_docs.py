"""The documentation says what the code does: the vocabulary page lists every callback's real arguments."""

import inspect
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_vocabulary_lists_every_callback_argument():
    import lightning_nas.callbacks as C
    from lightning_nas.search import TrialPruningCallback

    text = (ROOT / "docs" / "vocabulary.md").read_text()
    table = text.split("<!-- callback-arguments:start -->")[1].split("<!-- callback-arguments:end -->")[0]
    documented = {}
    for row in table.splitlines():
        m = re.match(r"^\| `(\w+)` \| (.*) \|$", row)
        if m:
            documented[m.group(1)] = re.findall(r"`(\w+)`", m.group(2))
    real = {}
    for name in C.__all__:
        obj = getattr(C, name)
        if inspect.isclass(obj) and name != "LightningNASCallback":
            params = list(inspect.signature(obj.__init__).parameters)[1:]
            real[name] = [p for p in params if p not in ("args", "kwargs")]
    real["TrialPruningCallback"] = list(inspect.signature(TrialPruningCallback.__init__).parameters)[1:]
    assert documented == real


def test_readme_links_to_docs_pages_that_exist():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert links, "README.md links to no docs page"
    missing = [link for link in links if not (ROOT / link).is_file()]
    assert not missing, missing


def _public_callables() -> dict[str, list]:
    """Every public class and function by its name (several where two modules use one name)."""
    import importlib
    import pkgutil

    import lightning_nas

    api = {}
    for info in pkgutil.walk_packages(lightning_nas.__path__, "lightning_nas."):
        if info.name.endswith("__main__"):
            continue
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional extra that is not installed
            continue
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name, None)
            if callable(obj) and getattr(obj, "__module__", "").startswith("lightning_nas"):
                api.setdefault(name, []).append(obj)
    return api


def test_docs_code_calls_public_api_with_real_keyword_arguments():
    """Every ``name(kw=...)`` in the docs' and README's Python (blocks and inline code) whose ``name`` is public in
    lightning_nas uses keyword arguments its signature has: a renamed argument cannot survive in the guides."""
    import ast

    api = _public_callables()
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    wrong, checked = [], 0
    for page in pages:
        text = page.read_text()
        sources = re.findall(r"```python\n(.*?)```", text, re.S) + re.findall(r"`([A-Za-z_][\w.]*\([^`]*\))`", text)
        for src in sources:
            try:
                tree = ast.parse(src)
            except SyntaxError:  # an excerpt, not a statement
                continue
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
                if name not in api:
                    continue
                signatures = [inspect.signature(obj).parameters for obj in api[name]]
                if any(p.kind == p.VAR_KEYWORD for params in signatures for p in params.values()):
                    continue
                checked += 1
                wrong += [
                    f"{page.relative_to(ROOT)}: {name}({kw.arg}=...)"
                    for kw in node.keywords
                    if kw.arg and not any(kw.arg in params for params in signatures)
                ]
    assert checked > 50
    assert not wrong, wrong
