"""A user's CNN with one searchable block: the second conv is a ``space.LayerChoice`` of three candidates.

Used by ``examples/cli/search.yaml`` (``DifferentiableNAS`` needs a choice in the model); the first conv and
the head are as in ``DigitsCNN``.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_nas import space


class SearchableCNN(nn.Module):
    """``Conv(1->w) -> LayerChoice{conv3x3, conv5x5, sepconv3x3}(w->2w) -> pool -> Linear``."""

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(1, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU())
        self.block = space.LayerChoice(
            {
                "conv3x3": nn.Sequential(nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU()),
                "conv5x5": nn.Sequential(nn.Conv2d(w, 2 * w, 5, padding=2), nn.BatchNorm2d(2 * w), nn.ReLU()),
                "sepconv3x3": nn.Sequential(
                    nn.Conv2d(w, w, 3, padding=1, groups=w), nn.Conv2d(w, 2 * w, 1), nn.BatchNorm2d(2 * w), nn.ReLU()
                ),
            },
            label="block",
        )
        self.pool = nn.Sequential(nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Linear(2 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.block(self.stem(x))), 1))
