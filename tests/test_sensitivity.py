"""Per-layer sensitivity: accuracy, the shared table format, reuse by another method, and a ranking check."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from lightning_nas.callbacks import StructuredPruning
from lightning_nas.compress.prune import prune_structured
from lightning_nas.explain import sensitivity as S
from lightning_nas.models import Classifier, DigitsCNN
from tests.helpers import fast_trainer


def test_evaluate_accuracy_matches_manual_count_and_restores_mode(digits):
    torch.manual_seed(0)
    model = DigitsCNN(8).train()
    loader = DataLoader(digits.split("val"), batch_size=50)
    x, y = digits.split("val").tensors
    model.eval()
    expected = float((model(x).argmax(1) == y).float().mean())
    model.train()
    assert S.evaluate_accuracy(model, loader) == pytest.approx(expected)
    assert model.training
    with pytest.raises(ValueError, match="no samples"):
        S.evaluate_accuracy(model, [])


def test_sensitivity_table_reusable_with_another_perturbation(digits):
    """The quantization side passes its own per-layer perturbation: the table format is the same."""
    torch.manual_seed(0)
    model = DigitsCNN(8)
    loader = DataLoader(digits.split("val"), batch_size=512)

    def fake_quant(layer, bits):
        def fn(m):
            w = m.get_submodule(layer).weight
            scale = w.detach().abs().max() / (2 ** (bits - 1) - 1)
            with torch.no_grad():
                w.copy_(torch.round(w / scale) * scale)

        return fn

    before = {k: v.clone() for k, v in model.state_dict().items()}
    fns = {(n, "quant_int", float(b)): fake_quant(n, b) for n in ("features.0", "features.3") for b in (2, 8)}
    rows = S.sensitivity_table(model, loader, fns)
    assert S.SENSITIVITY_COLUMNS == ["layer", "method", "level", "accuracy", "drop"]
    assert len(rows) == 4 and all(len(r) == 5 for r in rows)
    base = S.evaluate_accuracy(model, loader)
    for _layer, method, _level, acc, drop in rows:
        assert method == "quant_int" and drop == pytest.approx(base - acc)
    for k, v in model.state_dict().items():  # the model itself is untouched
        torch.testing.assert_close(v, before[k])
    with pytest.raises(ValueError, match="empty"):
        S.sensitivity_table(model, loader, {})


@pytest.mark.slow
def test_sensitivity_ranking_predicts_measured_drop_on_held_out_data(digits):
    """Rank layers by single-layer pruning sensitivity on *validation*; then physically prune each layer at
    50% and measure the drop on the *test* split: the orders agree, and pruning the least sensitive layer
    costs less than pruning the most sensitive."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )
    train = DataLoader(digits.split("train"), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(10):
        for x, y in train:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    val = DataLoader(digits.split("val"), batch_size=512)
    test = DataLoader(digits.split("test"), batch_size=512)
    ex = digits.example_input(4)
    rows = S.sensitivity_table(model, val, S.prune_perturbations(model, ex, levels=(0.3, 0.5, 0.7)))
    ranking = [layer for layer, _ in S.rank_layers(rows)]
    assert len(ranking) == 3
    base = S.evaluate_accuracy(model, test)
    measured = {}
    for layer in ranking:
        import copy

        m = copy.deepcopy(model)
        prune_structured(m, ex, {layer: 0.5})
        measured[layer] = base - S.evaluate_accuracy(m, test)
    assert sorted(measured, key=lambda k: -measured[k]) == ranking
    assert measured[ranking[-1]] < measured[ranking[0]]


def test_structured_pruning_streams_sensitivity(tmp_path, digits):
    train = DataLoader(digits.split("train"), batch_size=64)
    val = DataLoader(digits.split("val"), batch_size=256)
    cb = StructuredPruning(0.5, start_epoch=1, sensitivity_levels=[0.25, 0.75])
    tr = fast_trainer(tmp_path, max_epochs=2, callbacks=[cb], num_sanity_val_steps=0)
    tr.fit(Classifier(DigitsCNN(16)), train, val)
    assert {(r[0], r[2]) for r in cb.sensitivity} == {
        (n, lv) for n in ("net.features.0", "net.features.3") for lv in (0.25, 0.75)
    }
    files = pathlib.Path(tmp_path, "nas_files")
    table = json.loads((files / "tables" / "explain_sensitivity.jsonl").read_text().splitlines()[-1])
    assert table["columns"] == S.SENSITIVITY_COLUMNS and len(table["rows"]) == 4
    series = json.loads((files / "series" / "explain_sensitivity_prune_l1.json").read_text())
    assert series["xs"] == [0.25, 0.75] and set(series["ys"]) == {"net.features.0", "net.features.3"}
    with pytest.raises(ValueError, match="sensitivity_levels"):
        StructuredPruning(sensitivity_levels=[0.0, 0.5])
