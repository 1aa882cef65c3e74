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
    cbs = [StructuredPruning(amount=0.5, start_epoch=0, log_importance=False),
           KnowledgeDistillation(teacher, temperature=2.0, alpha=0.5, explain=False),
           QuantizationAware(start_epoch=1, freeze_observers_after=1, measure=False, explain=False),
           ModelCheckpoint(dirpath=out, filename="{epoch}", save_last=True, save_top_k=-1)]
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(out), callbacks=cbs,
                        limit_train_batches=3, limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(Classifier(DigitsCNN(8)), datamodule=DigitsDataModule(batch_size=64))
    return out


def test_real_compressed_checkpoint_loads_with_weights_only(compressed_checkpoints):
    from lightning_nas.callbacks import load_compressed
    from lightning_nas.models import Classifier, DigitsCNN

    last = torch.load(compressed_checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert {"StructuredPruning{}", "QuantizationAware{}"} <= set(last["callbacks"])
    model = load_compressed(Classifier(DigitsCNN(8)), str(compressed_checkpoints / "epoch=0.ckpt"))
    assert model.net.features[0].out_channels == 4  # the pruning was replayed, then the weights loaded


def test_load_compressed_refuses_a_checkpoint_that_runs_code(tmp_path):
    from lightning_nas.callbacks import load_compressed
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
            name = (f"{f.value.id}.{f.attr}" if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)
                    else f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else "")
            yield name, node


def test_nothing_in_the_package_unpickles_arbitrary_objects():
    """Every ``torch.load`` passes ``weights_only=True``; no pickle/marshal/dill loads, no ``allow_pickle``,
    no ``yaml.load`` without the safe loader."""
    assert "weights_only=False" not in "".join(p.read_text() for p in PACKAGE.rglob("*.py"))
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        where = lambda n: f"{path.relative_to(ROOT)}:{n.lineno}"  # noqa: E731
        for name, node in _calls(tree):
            kw = {k.arg: k.value for k in node.keywords}
            if name == "torch.load":
                v = kw.get("weights_only")
                if not (isinstance(v, ast.Constant) and v.value is True):
                    bad.append(f"{where(node)}: torch.load without weights_only=True")
            elif name in ("pickle.load", "pickle.loads", "marshal.load", "marshal.loads", "dill.load",
                          "dill.loads", "cloudpickle.load", "cloudpickle.loads", "joblib.load", "Unpickler"):
                bad.append(f"{where(node)}: {name}")
            elif name == "yaml.load" and not any(isinstance(v, ast.Attribute) and v.attr.startswith("Safe")
                                                 for v in kw.values()):
                bad.append(f"{where(node)}: yaml.load without SafeLoader")
            elif "allow_pickle" in kw and not (isinstance(kw["allow_pickle"], ast.Constant)
                                                and kw["allow_pickle"].value is False):
                bad.append(f"{where(node)}: allow_pickle")
    assert not bad, bad
