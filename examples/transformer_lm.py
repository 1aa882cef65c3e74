"""Lightning's own ``demos.transformer.LightningTransformer``, unmodified, pruned and explained on synthetic tokens.

The language model (embedding, ``nn.Transformer`` with ``nn.MultiheadAttention``, decoder) learns to continue
arithmetic token sequences (``t, t+s, t+2s, ...`` mod the vocabulary). ``StructuredPruning`` removes half of
the feed-forward channels of every encoder/decoder layer through Torch-Pruning (the model width stays: the
demo's positional encoding caches a tensor of that width, so ``ignore=["model.embedding"]``), and
``AttributionMonitor`` attributes the next-token prediction to the input tokens (over the token embedding,
with a ``forward_fn`` adapter because the demo's forward takes ``(inputs, target)``), while
``KnowledgeDistillation`` distils the same demo, trained first, into it token by token.

Only one method of the demo is replaced, on the instance: ``prepare_data`` (it downloads WikiText-2); the
data come from our own DataLoaders given to ``trainer.fit``.

    python examples/transformer_lm.py --max-epochs 2 --out-dir nas_runs/transformer
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.demos.transformer import LightningTransformer
from torch.utils.data import DataLoader, TensorDataset

from lightning_nas.callbacks import AttributionMonitor, KnowledgeDistillation, StructuredPruning

VOCAB, LENGTH = 24, 12


def synthetic_tokens(n: int, seed: int) -> TensorDataset:
    """``n`` arithmetic sequences mod ``VOCAB``: inputs ``x[:-1]``, next-token targets ``x[1:]``."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, VOCAB, (n, 1), generator=g)
    step = torch.randint(1, 4, (n, 1), generator=g)
    seq = (start + step * torch.arange(LENGTH + 1)) % VOCAB
    return TensorDataset(seq[:, :-1], seq[:, 1:])


def last_token_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Adapter for the demo's ``forward(inputs, target)``: the output at the last position.

    The demo feeds ``target`` to its decoder under a causal mask that still includes the current position, so
    the model can copy the target token it is asked for; with ``target=x`` its output explains that copying.
    """
    return model(x, x).view(x.shape[0], x.shape[1], -1)[:, -1]


def main(
    max_epochs: int = 2, out_dir: str | Path = "nas_runs/transformer", limit_train_batches: int | float = 1.0
) -> dict[str, Any]:
    out = Path(out_dir)
    L.seed_everything(0)
    kw = dict(
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
        default_root_dir=str(out),
        limit_train_batches=limit_train_batches,
    )
    train = DataLoader(synthetic_tokens(512, 0), batch_size=16, shuffle=True)
    val = DataLoader(synthetic_tokens(64, 1), batch_size=16)
    teacher = LightningTransformer(vocab_size=VOCAB)  # the same demo, trained first, is the teacher
    teacher.prepare_data = lambda: None
    L.Trainer(max_epochs=max_epochs, **kw).fit(teacher, train_dataloaders=train)

    model = LightningTransformer(vocab_size=VOCAB)
    model.prepare_data = lambda: None  # data hook only: it would download WikiText-2
    n0 = sum(p.numel() for p in model.parameters())
    prune = StructuredPruning(
        amount=0.5, importance="l1", start_epoch=max(0, max_epochs - 1), ignore=["model.embedding"]
    )
    attr = AttributionMonitor(
        method="integrated_gradients", target="pred", n_samples=6, n_steps=4, forward_fn=last_token_logits
    )
    # its forward returns log-probabilities over the vocabulary, one row per token: KD compares them per token
    kd = KnowledgeDistillation(teacher.model, temperature=2.0, alpha=0.5)
    trainer = L.Trainer(max_epochs=max_epochs, callbacks=[kd, prune, attr], **kw)
    trainer.fit(model, train_dataloaders=train, val_dataloaders=val)

    n1 = sum(p.numel() for p in model.parameters())
    ff = {n: m.out_features for n, m in model.named_modules() if n.endswith("linear1")}
    print(f"parameters {n0} -> {n1}; feed-forward widths {sorted(set(ff.values()))}")
    files = out / "nas_files"
    scalars = [json.loads(line) for line in (files / "scalars.jsonl").read_text().splitlines()]
    print(
        "attribution:",
        {k.rsplit("/", 1)[1]: round(v, 3) for k, v in scalars[-1].items() if k.startswith("explain/attribution/")},
    )
    print("KD teacher-student agreement per epoch:", [round(h["distill/agreement"], 3) for h in kd.history])
    return {
        "model": model,
        "kd": kd,
        "params_before": n0,
        "params_after": n1,
        "prune": prune,
        "attribution": attr,
        "files": files,
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-epochs", type=int, default=2)
    p.add_argument("--out-dir", default="nas_runs/transformer")
    a = p.parse_args()
    main(a.max_epochs, a.out_dir)
