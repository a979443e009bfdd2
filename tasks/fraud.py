"""Credit-card fraud: heavily imbalanced tabular binary classification.

Real data: the public credit-card-fraud CSV layout (columns ``Time, V1..V28, Amount,
Class``; 284 807 transactions, 0.17 % fraud) from a local path or an Azure Blob URL.
Offline default: :func:`generate_fraud_frame`, a deterministic generated data set with
the same columns and 1.5 % positives. Reports ROC-AUC and PR-AUC (accuracy alone is
meaningless at this imbalance); the loss up-weights the rare class by
``sqrt(#neg/#pos)`` of the silo's own data, except under local DP, which trains
unweighted (those counts are not covered by the DP guarantee).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    import pandas as pd

from tasks.base import ArrayDataset, Task
from tasks.models import MLP, signed_log1p
from tasks.registry import TASKS
from tasks.sources import resolve_local_path

FEATURES = ["Time", *[f"V{i}" for i in range(1, 29)], "Amount"]
LABEL = "Class"
SECONDS_PER_DAY = 86_400.0


def generate_fraud_frame(
    n_rows: int = 30_000, positive_rate: float = 0.015, seed: int = 0
) -> pd.DataFrame:
    """A deterministic data frame in the public fraud CSV layout.

    V1..V28 come from ``make_classification`` (8 informative directions, so the fraud
    signal is real but not trivial); Time spans two days; Amount is log-normal and a
    little larger for fraud.
    """
    import pandas as pd
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=n_rows,
        n_features=28,
        n_informative=8,
        n_redundant=6,
        n_clusters_per_class=3,
        weights=[1 - positive_rate],
        class_sep=1.0,
        flip_y=0.0,
        random_state=seed,
    )
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(x.astype(np.float32), columns=FEATURES[1:29])
    frame.insert(0, "Time", np.sort(rng.uniform(0, 2 * SECONDS_PER_DAY, n_rows)).round())
    frame["Amount"] = np.round(rng.lognormal(3.0 + 0.5 * y, 1.2), 2)
    frame[LABEL] = y.astype(np.int64)
    return frame


def frame_to_dataset(frame: pd.DataFrame) -> ArrayDataset:
    """Features (Time in days, log-squashed Amount, V1..V28) and the Class label."""
    missing = [c for c in [*FEATURES, LABEL] if c not in frame.columns]
    if missing:
        raise ValueError(
            f"fraud data lacks columns {missing}; expected the credit-card-fraud layout "
            f"{FEATURES[0]}, V1..V28, Amount, {LABEL}"
        )
    x = frame[FEATURES].to_numpy(dtype=np.float32).copy()
    x[:, 0] = x[:, 0] / SECONDS_PER_DAY
    x[:, -1] = signed_log1p(x[:, -1])
    return ArrayDataset(x, frame[LABEL].to_numpy(dtype=np.int64))


@TASKS.register("fraud", family="tabular")
class FraudTask(Task):
    """Fraud / not-fraud from 30 transaction features."""

    name = "fraud"
    num_classes = 2

    def load_data(self, data) -> tuple[ArrayDataset, ArrayDataset | None]:
        import pandas as pd

        if not data.source:
            return frame_to_dataset(generate_fraud_frame()), None
        path = resolve_local_path(data.source)
        return frame_to_dataset(pd.read_csv(path)), None

    def build_model(self) -> nn.Module:
        return MLP(len(FEATURES), num_classes=2, hidden=64)

    def class_weights(self, train: ArrayDataset) -> torch.Tensor | None:
        pos = int(train.y.sum())
        neg = len(train.y) - pos
        ratio = np.sqrt(neg / pos) if pos else 1.0
        return torch.tensor([1.0, float(ratio)], dtype=torch.float32)
