"""Local training and evaluation shared by every classification task."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


def train_classifier(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    momentum: float,
    proximal_mu: float = 0.0,
    class_weights: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    proximal_anchor: Sequence[torch.Tensor] | None = None,
) -> dict[str, float]:
    """Mini-batch SGD with cross-entropy; when ``proximal_mu > 0`` the proximal term
    μ/2·‖w − a‖² towards ``proximal_anchor`` (one tensor per parameter, in
    ``model.parameters()`` order), by default the model's own starting weights (FedProx;
    Ditto anchors its personal model to the global one). Parameters that do not require
    gradients are not trained.

    Shuffling uses ``generator`` only, so a seeded generator gives the same model.
    """
    if len(y) == 0:
        return {"train-loss": float("nan")}
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    if proximal_anchor is not None:
        global_params = [a.detach() for a in proximal_anchor] if proximal_mu else []
    else:
        global_params = [p.detach().clone() for p in model.parameters()] if proximal_mu else []
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=momentum)
    loss_fn = nn.CrossEntropyLoss(weight=class_weights)
    model.train()
    total, seen = 0.0, 0
    for _ in range(epochs):
        order = torch.randperm(len(ys), generator=generator)
        for start in range(0, len(ys), batch_size):
            idx = order[start : start + batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(xs[idx]), ys[idx])
            if proximal_mu:
                prox = sum(
                    (p - g).pow(2).sum()
                    for p, g in zip(model.parameters(), global_params, strict=True)
                )
                loss = loss + 0.5 * proximal_mu * prox
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
            seen += len(idx)
    return {"train-loss": total / seen}


@torch.no_grad()
def predict_proba(model: nn.Module, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Class probabilities, N × C."""
    model.eval()
    xs = torch.from_numpy(x)
    out = [
        torch.softmax(model(xs[i : i + batch_size]), dim=1) for i in range(0, len(xs), batch_size)
    ]
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)


def evaluate_classifier(
    model: nn.Module, x: np.ndarray, y: np.ndarray, *, num_classes: int
) -> dict[str, float]:
    """``loss`` and ``accuracy``; binary tasks add ``roc-auc``, ``pr-auc``, ``f1``
    (positive class 1) and ``balanced-accuracy`` (the mean recall over the classes present:
    defined on a one-class silo, where it is that class's recall, unlike the AUCs);
    multi-class tasks add ``f1-macro``. An empty set gives the same
    keys with NaN values (so every silo's reply has the same metrics)."""
    if len(y) == 0:
        keys = [
            "loss",
            "accuracy",
            *(
                ["roc-auc", "pr-auc", "f1", "balanced-accuracy"]
                if num_classes == 2
                else ["f1-macro"]
            ),
        ]
        return dict.fromkeys(keys, float("nan"))
    proba = predict_proba(model, x)
    eps = 1e-12
    loss = float(-np.log(proba[np.arange(len(y)), y] + eps).mean())
    pred = proba.argmax(axis=1)
    metrics = {"loss": loss, "accuracy": float((pred == y).mean())}
    if num_classes == 2:
        from sklearn.metrics import average_precision_score, roc_auc_score

        both = len(np.unique(y)) == 2
        metrics["roc-auc"] = float(roc_auc_score(y, proba[:, 1])) if both else float("nan")
        metrics["pr-auc"] = float(average_precision_score(y, proba[:, 1])) if both else float("nan")
        metrics["f1"] = float(f1_per_class(y, pred, 2)[1])
        metrics["balanced-accuracy"] = balanced_accuracy(y, pred)
    else:
        metrics["f1-macro"] = float(macro_mean(f1_per_class(y, pred, num_classes)))
    return metrics


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean over the classes present in ``y`` of their recall (scikit-learn's
    ``balanced_accuracy_score`` when both classes are present); NaN for an empty set."""
    present = np.unique(y)
    if len(present) == 0:
        return float("nan")
    return float(np.mean([(pred[y == c] == c).mean() for c in present]))


def f1_per_class(y: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """F1 of every class ``0 … num_classes-1`` (float64), as scikit-learn's ``f1_score``
    with ``zero_division=0`` computes it, bit for bit: ``2·tp / (#true + #predicted)``,
    0 for a class neither present nor predicted. Counting with ``bincount`` instead of
    sklearn's input validation and confusion matrix (~5 ms a call; a silo evaluates
    every round)."""
    y, pred = np.asarray(y, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    true_sum = np.bincount(y, minlength=num_classes)[:num_classes]
    pred_sum = np.bincount(pred, minlength=num_classes)[:num_classes]
    tp = np.bincount(y[y == pred], minlength=num_classes)[:num_classes]
    denom = (true_sum + pred_sum).astype(np.float64)
    f1 = np.zeros(num_classes, dtype=np.float64)
    np.divide(2.0 * tp.astype(np.float64), denom, out=f1, where=denom > 0)
    return f1


def macro_mean(values: np.ndarray) -> float:
    """Unweighted mean, summed as sklearn's macro average sums (NumPy's pairwise sum)."""
    return float(np.sum(values) / len(values))
