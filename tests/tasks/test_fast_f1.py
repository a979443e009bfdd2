"""The numpy F1 of evaluate_classifier equals scikit-learn's, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score
from torch import nn

from tasks.training import evaluate_classifier, f1_per_class, macro_mean


@pytest.mark.parametrize("num_classes", [2, 3, 10])
def test_f1_matches_sklearn_on_random_labels_with_absent_classes(num_classes):
    rng = np.random.default_rng(num_classes)
    checked_absent = 0
    for trial in range(120):
        n = int(rng.integers(1, 60))
        # Few distinct values per trial, so classes are often absent from y, pred or both.
        present = rng.choice(num_classes, size=int(rng.integers(1, num_classes + 1)), replace=False)
        y = rng.choice(present, size=n)
        pred = rng.choice(present if trial % 3 else np.arange(num_classes), size=n)
        ours = f1_per_class(y, pred, num_classes)
        theirs = f1_score(y, pred, average=None, labels=np.arange(num_classes), zero_division=0)
        assert ours.tobytes() == np.asarray(theirs, dtype=np.float64).tobytes()
        macro = f1_score(y, pred, average="macro", labels=np.arange(num_classes), zero_division=0)
        assert macro_mean(ours) == float(macro)  # exact, not approx
        if num_classes == 2:
            assert float(ours[1]) == float(f1_score(y, pred, zero_division=0))
        checked_absent += len(set(range(num_classes)) - set(y) - set(pred)) > 0
    assert checked_absent > 5  # the zero-division path really ran


def test_all_negative_binary_set_has_f1_zero_like_sklearn():
    y = np.zeros(7, dtype=np.int64)
    assert f1_per_class(y, y, 2)[1] == f1_score(y, y, zero_division=0) == 0.0


class _Fixed(nn.Module):
    """Returns stored logits row by row (a model whose predictions we choose)."""

    def __init__(self, logits: np.ndarray) -> None:
        super().__init__()
        self.logits = torch.from_numpy(logits)

    def forward(self, x):
        return self.logits[x[:, 0].long()]


@pytest.mark.parametrize("num_classes", [2, 10])
def test_evaluate_classifier_reports_sklearns_f1(num_classes):
    rng = np.random.default_rng(0)
    n = 200
    logits = rng.normal(size=(n, num_classes)).astype(np.float32)
    y = rng.integers(0, num_classes - 1, size=n)  # the last class never occurs
    x = np.arange(n, dtype=np.float32)[:, None]
    metrics = evaluate_classifier(_Fixed(logits), x, y, num_classes=num_classes)
    pred = logits.argmax(axis=1)
    if num_classes == 2:
        assert metrics["f1"] == float(f1_score(y, pred, zero_division=0))
    else:
        expected = f1_score(
            y, pred, average="macro", labels=np.arange(num_classes), zero_division=0
        )
        assert metrics["f1-macro"] == float(expected)
