"""Files from elsewhere (checkpoints, bundles, run folders) are data, never code: no unpickling of arbitrary
objects, no path that escapes its folder (issue 15)."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import lightning as L
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "lightning_nas"


class _RunsCode:
    """Unpickling this object creates a folder: the proof that loading a file ran code from it."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


# --------------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def compressed_checkpoints(tmp_path_factory):
    """A real fit with StructuredPruning + KnowledgeDistillation + QuantizationAware + ModelCheckpoint.

    ``epoch=0.ckpt``: pruned, distilled, QAT not started yet; ``last.ckpt``: after the QAT epoch."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_nas.callbacks import KnowledgeDistillation, QuantizationAware, StructuredPruning
    from lightning_nas.data import DigitsDataModule
    from lightning_nas.models import Classifier, DigitsCNN

    out = tmp_path_factory.mktemp("ckpt")
    L.seed_everything(0, verbose=False)
    teacher = DigitsCNN(16)
    cbs = [
        StructuredPruning(amount=0.5, start_epoch=0, explain=False),
        KnowledgeDistillation(teacher, temperature=2.0, alpha=0.5, explain=False),
        QuantizationAware(start_epoch=1, freeze_observers_after=1, measure=False, explain=False),
        ModelCheckpoint(dirpath=out, filename="{epoch}", save_last=True, save_top_k=-1),
    ]
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(out),
        callbacks=cbs,
        limit_train_batches=3,
        limit_val_batches=1,
        num_sanity_val_steps=0,
    )
    trainer.fit(Classifier(DigitsCNN(8)), datamodule=DigitsDataModule(batch_size=64))
    return out


def test_real_compressed_checkpoint_loads_with_weights_only(compressed_checkpoints):
    from lightning_nas.deploy import load_compressed
    from lightning_nas.models import Classifier, DigitsCNN

    last = torch.load(compressed_checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert {"StructuredPruning", "QuantizationAware"} <= {k.split("{")[0] for k in last["callbacks"]}
    model = load_compressed(Classifier(DigitsCNN(8)), str(compressed_checkpoints / "epoch=0.ckpt"))
    assert model.net.features[0].out_channels == 4  # the pruning was replayed, then the weights loaded


def test_load_compressed_refuses_a_checkpoint_that_runs_code(tmp_path):
    from lightning_nas.deploy import load_compressed
    from lightning_nas.models import Classifier, DigitsCNN

    marker = tmp_path / "code-ran"
    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "callbacks": {"StructuredPruning{}": _RunsCode(marker)}}, bad)
    with pytest.raises(ValueError, match="weights_only=True") as err:
        load_compressed(Classifier(DigitsCNN(8)), str(bad))
    assert not marker.exists(), "loading the checkpoint ran code from it"
    assert "\n" not in str(err.value)
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="cannot be loaded"):
        load_compressed(Classifier(DigitsCNN(8)), str(bad))


# --------------------------------------------------------------------------------------------- the grep
def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = (
                f"{f.value.id}.{f.attr}"
                if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)
                else f.attr
                if isinstance(f, ast.Attribute)
                else f.id
                if isinstance(f, ast.Name)
                else ""
            )
            yield name, node


def test_nothing_in_the_package_unpickles_arbitrary_objects():
    """Every ``torch.load`` passes ``weights_only=True``; no pickle/marshal/dill loads, no ``allow_pickle``,
    no ``yaml.load`` without the safe loader."""
    assert "weights_only=False" not in "".join(p.read_text() for p in PACKAGE.rglob("*.py"))
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())

        def where(n: ast.AST, path: Path = path) -> str:
            return f"{path.relative_to(ROOT)}:{n.lineno}"

        for name, node in _calls(tree):
            kw = {k.arg: k.value for k in node.keywords}
            if name == "torch.load":
                v = kw.get("weights_only")
                if not (isinstance(v, ast.Constant) and v.value is True):
                    bad.append(f"{where(node)}: torch.load without weights_only=True")
            elif name in (
                "pickle.load",
                "pickle.loads",
                "marshal.load",
                "marshal.loads",
                "dill.load",
                "dill.loads",
                "cloudpickle.load",
                "cloudpickle.loads",
                "joblib.load",
                "Unpickler",
            ):
                bad.append(f"{where(node)}: {name}")
            elif name == "yaml.load" and not any(
                isinstance(v, ast.Attribute) and v.attr.startswith("Safe") for v in kw.values()
            ):
                bad.append(f"{where(node)}: yaml.load without SafeLoader")
            elif "allow_pickle" in kw and not (
                isinstance(kw["allow_pickle"], ast.Constant) and kw["allow_pickle"].value is False
            ):
                bad.append(f"{where(node)}: allow_pickle")
    assert not bad, bad


# --------------------------------------------------------------------------------------------- path joins
_PATH_METHODS = {"resolve", "absolute", "expanduser", "with_name", "with_suffix", "with_stem"}
_PATH_ATTRS = {"parent", "files_dir", "path"}
MARKER = "trusted-path:"


def _constant(e: ast.AST) -> bool:
    """A string literal or an UPPER_CASE constant: a name the code itself chose."""
    return (
        (isinstance(e, ast.Constant) and isinstance(e.value, str))
        or (isinstance(e, ast.Name) and e.id.isupper())
        or (isinstance(e, ast.Attribute) and e.attr.isupper())
    )


class _PathJoins(ast.NodeVisitor):
    """Finds ``path / x``, ``path.joinpath(x)`` and ``os.path.join(p, x)`` with a non-constant ``x``, where
    ``path`` is known to be a Path (``Path(...)``, a parameter annotated ``Path``, a name assigned from one,
    ``.parent``/``.resolve()`` of one, or another join)."""

    def __init__(self) -> None:
        self.found: list[ast.AST] = []
        self.scopes: list[set[str]] = [set()]

    def is_path(self, e: ast.AST) -> bool:
        if isinstance(e, ast.Call):
            f = e.func
            return (
                (isinstance(f, ast.Name) and f.id == "Path")
                or (isinstance(f, ast.Attribute) and f.attr == "Path")
                or (isinstance(f, ast.Attribute) and f.attr in _PATH_METHODS and self.is_path(f.value))
            )
        if isinstance(e, ast.Name):
            return any(e.id in s for s in self.scopes)
        if isinstance(e, ast.Attribute):
            return e.attr in _PATH_ATTRS and (
                (isinstance(e.value, ast.Name) and e.value.id == "self") or self.is_path(e.value)
            )
        return isinstance(e, ast.BinOp) and isinstance(e.op, ast.Div) and self.is_path(e.left)

    def visit_FunctionDef(self, node):
        args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
        self.scopes.append({a.arg for a in args if a.annotation is not None and "Path" in ast.unparse(a.annotation)})
        self.generic_visit(node)
        self.scopes.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Assign(self, node):
        if self.is_path(node.value):
            self.scopes[-1].update(t.id for t in node.targets if isinstance(t, ast.Name))
        self.generic_visit(node)

    def visit_AnnAssign(self, node):
        if isinstance(node.target, ast.Name) and (
            "Path" in ast.unparse(node.annotation) or (node.value is not None and self.is_path(node.value))
        ):
            self.scopes[-1].add(node.target.id)
        self.generic_visit(node)

    def visit_BinOp(self, node):
        if isinstance(node.op, ast.Div) and self.is_path(node.left) and not _constant(node.right):
            self.found.append(node)
        self.generic_visit(node)

    def visit_Call(self, node):
        f = node.func
        if isinstance(f, ast.Attribute) and f.attr == "joinpath" and not all(map(_constant, node.args)):
            self.found.append(node)
        elif ast.unparse(f) == "os.path.join" and not all(map(_constant, node.args[1:])):
            self.found.append(node)
        self.generic_visit(node)


def _unchecked_joins(root: Path) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "_trust.py":  # inside() itself: the one checked join
            continue
        src = path.read_text()
        lines = src.splitlines()
        finder = _PathJoins()
        finder.visit(ast.parse(src))
        for node in finder.found:
            span = lines[node.lineno - 1 : node.end_lineno]
            if not any(MARKER in line for line in span):
                bad.append(f"{path.relative_to(root.parent)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    return bad


def test_no_unchecked_path_join_in_the_package():
    """A name read from a file (a card, an index, a W&B history) is joined onto its folder only through
    ``_trust.inside``; any other join with a non-constant name says why it is safe (``# trusted-path: why``)."""
    assert not _unchecked_joins(PACKAGE), "\n".join(_unchecked_joins(PACKAGE))


def test_the_path_join_check_finds_what_it_should(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "m.py").write_text(
        "import os\nfrom pathlib import Path\n\n"
        "def read(sink: Path, entry: dict):\n    return (sink / entry['file']).read_bytes()\n\n"
        "def read2(run):\n    files = Path(run) / 'files'\n    return files / run.name\n\n"
        "def ok(d: Path, n: str):\n    return d / 'card.json', d / n  # trusted-path: a test\n\n"
        "def read3(p: Path, n):\n    return os.path.join(p, n), p.joinpath(n)\n"
    )
    found = _unchecked_joins(pkg)
    assert [f.split(":")[1] for f in found] == ["5", "9", "15", "15"], found
