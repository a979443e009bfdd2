"""Small models shared by tasks (CPU-friendly)."""

from __future__ import annotations

import torch
from torch import nn

#: Why Opacus cannot train a model with BatchNorm (``Task.local_dp_unsupported``).
BATCH_NORM_NO_LOCAL_DP = (
    "its model has BatchNorm, which normalises over the batch, so per-example gradients "
    "(DP-SGD) are undefined; use the task without '-bn'"
)


class SmallCNN(nn.Module):
    """Two conv blocks and a linear head; adaptive pooling takes 8×8 (digits) or 28×28
    (MNIST-style) single-channel images alike. ``batch_norm=True`` adds a BatchNorm after
    each convolution (the model FedBN personalises; without it the layers, and so the
    seeded initialisation, are exactly those of the plain model)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, batch_norm: bool = False):
        super().__init__()

        def norm(channels: int) -> list[nn.Module]:
            return [nn.BatchNorm2d(channels)] if batch_norm else []

        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, kernel_size=3, padding=1),
            *norm(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            *norm(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
        )
        self.head = nn.Linear(32 * 4 * 4, num_classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class Standardize(nn.Module):
    """``(x − mean) / std`` with the federation-wide feature moments as buffers.

    The server sets them before round 1 from the silos' summed moments (see
    :func:`tasks.base.pooled_moments`), so every silo and the server scale inputs the
    same way without any silo seeing another's rows. They travel with the weights and,
    being identical in every update, aggregate to themselves.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("std", torch.ones(num_features))

    def forward(self, x):
        return (x - self.mean) / self.std


class MLP(nn.Module):
    """A two-hidden-layer perceptron for tabular features, inputs standardised."""

    def __init__(self, in_features: int, num_classes: int = 2, hidden: int = 64) -> None:
        super().__init__()
        self.standardize = Standardize(in_features)
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden // 2),
            nn.ReLU(),
            nn.Linear(hidden // 2, num_classes),
        )

    def forward(self, x):
        return self.net(self.standardize(x))


def signed_log1p(x):
    """``sign(x)·log(1+|x|)``: a fixed, data-independent squashing of heavy-tailed
    features (applied before the federated standardisation)."""
    import numpy as np

    return (np.sign(x) * np.log1p(np.abs(x))).astype(np.float32)
