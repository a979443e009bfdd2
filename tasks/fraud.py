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

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    import pandas as pd

from tasks.base import ArrayDataset, Task
from tasks.models import MLP, signed_log1p
from tasks.registry import TASKS
from tasks.sources import resolve_local_path
from tasks.vertical import VERTICAL_SPECS, VerticalDataError, VerticalSpec

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


def scale_fraud_column(column: str, x: np.ndarray) -> np.ndarray:
    """The model's view of one column (in ``x``'s dtype): Time in days, Amount
    log-squashed, V1..V28 as they are."""
    if column == "Time":
        return x / SECONDS_PER_DAY
    if column == "Amount":
        return signed_log1p(x)
    return x


def frame_to_dataset(frame: pd.DataFrame) -> ArrayDataset:
    """Features (Time in days, log-squashed Amount, V1..V28) and the Class label."""
    missing = [c for c in [*FEATURES, LABEL] if c not in frame.columns]
    if missing:
        raise ValueError(
            f"fraud data lacks columns {missing}; expected the credit-card-fraud layout "
            f"{FEATURES[0]}, V1..V28, Amount, {LABEL}"
        )
    x = frame[FEATURES].to_numpy(dtype=np.float32).copy()
    x[:, 0] = scale_fraud_column("Time", x[:, 0])
    x[:, -1] = scale_fraud_column("Amount", x[:, -1])
    return ArrayDataset(x, frame[LABEL].to_numpy(dtype=np.int64))


def load_fraud_frame(source: str) -> pd.DataFrame:
    """The offline generated frame for ``""``, else the CSV at ``source`` (path or Blob
    URL)."""
    import pandas as pd  # pandas loads only when a frame is read

    return generate_fraud_frame() if not source else pd.read_csv(resolve_local_path(source))


# ---------------------------------------------------------------- vertical view
def load_fraud_vertical_frame(source: str) -> pd.DataFrame:
    """:func:`load_fraud_frame` with an ``id`` column (the row number when the file has
    none), on which vertical parties align."""
    frame = load_fraud_frame(source)
    if "id" not in frame.columns:
        frame.insert(0, "id", [f"tx-{i:07d}" for i in range(len(frame))])
    frame["id"] = frame["id"].astype(str)
    return frame


def encode_fraud_columns(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """One party's ``columns``: Time in days, log-squashed Amount, V1..V28 as they are."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise VerticalDataError(
            f"fraud data lacks columns {missing}; expected the credit-card-fraud layout "
            "Time, V1..V28, Amount, Class (and optionally id)"
        )
    parts = []
    for column in columns:
        x = scale_fraud_column(column, frame[column].to_numpy(dtype=np.float64))
        parts.append(np.asarray(x, dtype=np.float32)[:, None])
    return np.concatenate(parts, axis=1) if parts else np.zeros((len(frame), 0), np.float32)


def fraud_labels(frame: pd.DataFrame) -> np.ndarray:
    """``Class`` as int64 (fraud = 1)."""
    if LABEL not in frame.columns:
        raise VerticalDataError(f"fraud data lacks the label column '{LABEL}'")
    return frame[LABEL].to_numpy(dtype=np.int64)


@VERTICAL_SPECS.register("fraud")
def fraud_vertical_spec() -> VerticalSpec:
    """Card issuer (label party), two partners with the other risk scores."""
    return VerticalSpec(
        name="fraud",
        features=tuple(FEATURES),
        default_split=(
            # label party: the card issuer (time, amount, its own risk scores)
            ("Time", "Amount", *[f"V{i}" for i in range(1, 10)]),
            ("V10", "V11", "V12", "V13", "V14", "V15", "V16", "V17", "V18", "V19"),
            ("V20", "V21", "V22", "V23", "V24", "V25", "V26", "V27", "V28"),
        ),
        load_frame=load_fraud_vertical_frame,
        encode=encode_fraud_columns,
        labels=fraud_labels,
    )


@TASKS.register("fraud", family="tabular")
class FraudTask(Task):
    """Fraud / not-fraud from 30 transaction features."""

    name = "fraud"
    num_classes = 2
    #: Accuracy says little at 1.5 % fraud, and a silo under label skew can hold one
    #: class only (no AUC): balanced accuracy is defined there and weighs fraud as much
    #: as the rest.
    main_metric = "balanced-accuracy"
    #: The app's lr 0.05 with momentum 0.9 made centralised training on the pooled rows
    #: (fraud up-weighted in the loss) diverge to a constant output.
    recommended: ClassVar[Mapping[str, Any]] = {"training.learning-rate": 0.01}

    def load_data(self, data) -> tuple[ArrayDataset, ArrayDataset | None]:
        return frame_to_dataset(load_fraud_frame(data.source)), None

    def build_model(self) -> nn.Module:
        return MLP(len(FEATURES), num_classes=2, hidden=64)

    def class_weights(self, train: ArrayDataset) -> torch.Tensor | None:
        pos = int(train.y.sum())
        neg = len(train.y) - pos
        ratio = np.sqrt(neg / pos) if pos else 1.0
        return torch.tensor([1.0, float(ratio)], dtype=torch.float32)
