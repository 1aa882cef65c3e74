"""Lightning's demo ``LightningTransformer`` (an ``nn.Transformer`` language model), as its author wrote it.

Its ``forward(inputs, target)`` returns per-token log-probabilities ``(B*T, vocab)`` and ``training_step``
computes the NLL itself; it has no validation step. The only change is the data: synthetic token sequences
instead of WikiText-2 (whose ``prepare_data`` downloads), so ``prepare_data`` and ``train_dataloader`` are
overridden, as anyone reusing the demo on their own data would.
"""

from __future__ import annotations

import torch
from lightning.pytorch.demos.transformer import LightningTransformer
from torch.utils.data import DataLoader, TensorDataset

VOCAB = 16
SEQ_LEN = 12


def synthetic_tokens(n: int, seed: int) -> TensorDataset:
    """Counting sequences: start anywhere, step by 1, 2 or 3 modulo VOCAB. ``(inputs, target)`` pairs with
    the target shifted by one token, as in the demo's WikiText2 dataset."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, VOCAB, (n, 1), generator=g)
    step = torch.randint(1, 4, (n, 1), generator=g)
    seq = (start + step * torch.arange(SEQ_LEN + 1)) % VOCAB
    return TensorDataset(seq[:, :-1].contiguous(), seq[:, 1:].contiguous())


class SyntheticTokensLM(LightningTransformer):
    def __init__(self, vocab_size: int = VOCAB) -> None:
        super().__init__(vocab_size=vocab_size)

    def prepare_data(self) -> None:  # nothing to download
        pass

    def train_dataloader(self) -> DataLoader:
        return DataLoader(synthetic_tokens(512, seed=0), batch_size=32, shuffle=True)


def searchable_lm(vocab_size: int = VOCAB) -> SyntheticTokensLM:
    """The author's search: the demo's output layer becomes a choice between a linear and an MLP head."""
    from torch import nn

    from lightning_nas import space

    lm = SyntheticTokensLM(vocab_size)
    d = lm.model.ninp
    lm.model.decoder = space.LayerChoice(
        {
            "linear": nn.Linear(d, vocab_size),
            "mlp": nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, vocab_size)),
        },
        label="lm_head",
    )
    return lm
