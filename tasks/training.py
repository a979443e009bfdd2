"""Local training and evaluation shared by every classification task."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score
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
) -> dict[str, float]:
    """Mini-batch SGD with cross-entropy; FedProx's proximal term when ``proximal_mu > 0``.

    Shuffling uses ``generator`` only, so a seeded generator gives the same model.
    """
    if len(y) == 0:
        return {"train-loss": float("nan")}
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
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
    """``loss`` and ``accuracy``; binary tasks add ``roc-auc``, ``pr-auc`` and ``f1``
    (positive class 1); multi-class tasks add ``f1-macro``. An empty set gives the same
    keys with NaN values (so every silo's reply has the same metrics)."""
    if len(y) == 0:
        keys = [
            "loss",
            "accuracy",
            *(["roc-auc", "pr-auc", "f1"] if num_classes == 2 else ["f1-macro"]),
        ]
        return dict.fromkeys(keys, float("nan"))
    proba = predict_proba(model, x)
    eps = 1e-12
    loss = float(-np.log(proba[np.arange(len(y)), y] + eps).mean())
    pred = proba.argmax(axis=1)
    metrics = {"loss": loss, "accuracy": float((pred == y).mean())}
    if num_classes == 2:
        both = len(np.unique(y)) == 2
        metrics["roc-auc"] = float(roc_auc_score(y, proba[:, 1])) if both else float("nan")
        metrics["pr-auc"] = float(average_precision_score(y, proba[:, 1])) if both else float("nan")
        metrics["f1"] = float(f1_score(y, pred, zero_division=0))
    else:
        metrics["f1-macro"] = float(
            f1_score(y, pred, average="macro", labels=np.arange(num_classes), zero_division=0)
        )
    return metrics
