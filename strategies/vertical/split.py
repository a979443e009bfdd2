"""Split learning, the pure torch parts: bottom models, top model, one split step.

Every party ``p`` (the label party included) turns its columns ``x_p`` into an embedding
``e_p = bottom_p(x_p)``; the label party's top model maps ``concat(e_0, …, e_k)`` to
logits. One step on a mini-batch:

* parties: ``e_p = clip(bottom_p(x_p))`` (+ Gaussian noise), sent to the label party;
* label party: loss of ``top(concat(e))``; backward gives the top model's gradients and
  ``g_p = ∂loss/∂e_p``; it steps the top (and its own bottom) and sends ``clip(g_p)``
  back;
* party p: backward of ``e_p`` with ``g_p`` (recomputing ``e_p`` from its weights, which
  have not changed since it was sent), then its optimizer steps.

Without clipping and noise this is exactly the gradient of the centralised
:class:`SplitModel` (tested), and since SGD with momentum acts parameter by parameter, a
vertical run and a centralised run of :class:`SplitModel` give the same model.

Embedding clipping bounds each record's embedding to L2 norm C; noise adds N(0, (σC)²)
per coordinate, from the party's secret generator (not derivable from the run config).
Gradient clipping bounds each record's gradient row. This limits how much one embedding
or gradient can reveal, but it is **not** a formal differential privacy guarantee:
nothing here accounts the privacy loss over steps and epochs, labels leak through
gradients, and the same record is embedded every epoch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from pydantic import Field
from torch import nn

from fl_core.config import Section
from fl_core.seeding import derive_seed
from strategies.privacy.randomness import secret_generator


class VerticalSection(Section):
    """Vertical federated learning (split learning, `mode` = "vertical"): parties hold
    columns of the same records, not rows."""

    split: str = Field(
        "",
        description="Columns per party, label party first, parties separated by ';' and "
        'columns by "," ("" = the task default 3-party split).',
    )
    coverage: float = Field(
        0.9,
        gt=0,
        le=1,
        description="With a shared data source: share of the records each party holds "
        "(seeded, independent per party), so ids overlap partially.",
    )
    embedding_dim: int = Field(8, ge=1, le=1024, description="Width of each party's embedding.")
    batch_size: int = Field(
        512, ge=1, le=1_000_000, description="Aligned records per split-learning step."
    )
    embedding_clip: float = Field(
        0.0, ge=0, description="Clip each record's embedding to this L2 norm (0 = off)."
    )
    noise_multiplier: float = Field(
        0.0,
        ge=0,
        description="Gaussian noise σ·`vertical.embedding-clip` on sent embeddings (not "
        "formal DP: unaccounted).",
    )
    gradient_clip: float = Field(
        0.0, ge=0, description="Clip each record's embedding gradient to this L2 norm (0 = off)."
    )
    timeout: float = Field(
        120.0, gt=0, description="Seconds to wait for every party's reply to one vertical step."
    )


class BottomModel(nn.Module):
    """A party's bottom model: two linear layers, ReLU in between."""

    def __init__(self, in_features: int, embedding_dim: int, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, embedding_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TopModel(nn.Module):
    """The label party's top model on the concatenated embeddings."""

    def __init__(self, in_features: int, num_classes: int = 2, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.ReLU(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.net(e)


def build_bottom(in_features: int, embedding_dim: int, seed: int, party: int) -> BottomModel:
    """Party ``party``'s bottom model, initialised from (seed, party) only."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "vertical-bottom", party))
        return BottomModel(in_features, embedding_dim)


def build_top(num_parties: int, embedding_dim: int, seed: int, num_classes: int = 2) -> TopModel:
    """The top model, initialised from the seed only."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "vertical-top"))
        return TopModel(num_parties * embedding_dim, num_classes)


class SplitModel(nn.Module):
    """Bottoms and top in one module: the centralised model of the same capacity."""

    def __init__(self, bottoms: Sequence[nn.Module], top: nn.Module) -> None:
        super().__init__()
        self.bottoms = nn.ModuleList(bottoms)
        self.top = top

    def forward(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.top(torch.cat([b(x) for b, x in zip(self.bottoms, xs, strict=True)], dim=1))


def build_split_model(
    in_features: Sequence[int], embedding_dim: int, seed: int, num_classes: int = 2
) -> SplitModel:
    """The same initial weights as a vertical run with these parties."""
    bottoms = [build_bottom(n, embedding_dim, seed, p) for p, n in enumerate(in_features)]
    return SplitModel(bottoms, build_top(len(in_features), embedding_dim, seed, num_classes))


def clip_rows(t: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Scale each row to L2 norm ≤ ``max_norm`` (0 = no clipping); differentiable."""
    if max_norm <= 0 or t.numel() == 0:
        return t
    norms = t.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return t * (max_norm / norms).clamp(max=1.0)


def party_embedding(bottom: nn.Module, x: torch.Tensor, clip: float = 0.0) -> torch.Tensor:
    """``clip(bottom(x))``, with autograd (for the backward pass)."""
    return clip_rows(bottom(x), clip)


def noisy(
    e: torch.Tensor, clip: float, noise_multiplier: float, generator: torch.Generator | None
) -> torch.Tensor:
    """``e`` plus N(0, (σ·C)²) per coordinate (σ = ``noise_multiplier``, C = ``clip``).

    The noise protects only while ``generator`` is secret from the receiver: pass one from
    :func:`~strategies.privacy.randomness.secret_generator` (``None`` draws a fresh one),
    never one seeded from the run config, except for research reruns.
    """
    if noise_multiplier <= 0:
        return e
    if generator is None:  # not torch's global generator: it is seeded from the run seed
        generator = secret_generator()
    noise = torch.randn(e.shape, generator=generator, dtype=e.dtype)
    return e + noise * (noise_multiplier * clip)


def top_step(
    top: nn.Module,
    embeddings: Sequence[torch.Tensor],
    y: torch.Tensor,
    class_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Loss of the top model on the embeddings and ``∂loss/∂e_p`` for every party.

    Embeddings that require grad (the label party's own bottom output) keep their graph,
    so its bottom gets its gradients too; received ones are treated as leaves. The top
    model's ``.grad`` are accumulated; the caller steps its optimizer.
    """
    leaves = [e if e.requires_grad else e.detach().requires_grad_(True) for e in embeddings]
    for leaf in leaves:
        leaf.retain_grad()
    logits = top(torch.cat(leaves, dim=1))
    loss = nn.functional.cross_entropy(logits, y, weight=class_weights)
    loss.backward()
    return loss.detach(), [leaf.grad.detach() for leaf in leaves]


def bottom_step(embedding: torch.Tensor, gradient: torch.Tensor) -> None:
    """Backward of a party's (recomputed) embedding with the gradient it received."""
    if embedding.shape != gradient.shape:
        raise ValueError(
            f"gradient of shape {tuple(gradient.shape)} does not match the embedding "
            f"{tuple(embedding.shape)}"
        )
    embedding.backward(gradient)


def sgd(model: nn.Module, learning_rate: float, momentum: float) -> torch.optim.SGD:
    """The optimizer every party uses (the same as the centralised baseline)."""
    return torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=momentum)


def momentum_buffers(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimizer's momentum buffers by parameter name (to persist between messages)."""
    out = {}
    for name, p in model.named_parameters():
        buf = optimizer.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            out[name] = buf.detach().clone()
    return out


def restore_momentum(
    model: nn.Module, optimizer: torch.optim.Optimizer, buffers: dict[str, torch.Tensor]
) -> None:
    """Inverse of :func:`momentum_buffers`."""
    for name, p in model.named_parameters():
        if name in buffers:
            optimizer.state[p]["momentum_buffer"] = buffers[name].clone()


def epoch_batches(
    train_ids: torch.Tensor | Sequence[int], batch_size: int, seed: int, epoch: int
) -> list[torch.Tensor]:
    """The mini-batches (aligned indices) of one epoch, in a seeded order shared by the
    vertical run and the centralised baseline."""
    ids = torch.as_tensor(train_ids, dtype=torch.int64)
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(
        derive_seed(seed, "vertical-epoch", epoch)))  # fmt: skip
    shuffled = ids[order]
    return [shuffled[i : i + batch_size] for i in range(0, len(shuffled), batch_size)]


def class_weights_for(y: torch.Tensor) -> torch.Tensor:
    """``[1, sqrt(#neg / #pos)]``: the rare positive class up-weighted (binary tasks)."""
    pos = int(y.sum())
    neg = len(y) - pos
    return torch.tensor([1.0, (neg / pos) ** 0.5 if pos else 1.0], dtype=torch.float32)


def train_centralised(
    model: SplitModel,
    xs: Sequence[torch.Tensor],
    y: torch.Tensor,
    train_ids: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    momentum: float,
    seed: int,
    on_epoch=None,
) -> None:
    """Train all of ``model`` in one place on the same batches as a vertical run.

    ``xs[p][k]`` and ``y[k]`` are aligned record ``k``'s features at party p and label.
    ``on_epoch(epoch)`` is called after every epoch (e.g. to evaluate).
    """
    optimizer = sgd(model, learning_rate, momentum)
    weights = class_weights_for(y[train_ids])
    model.train()
    for epoch in range(1, epochs + 1):
        for ids in epoch_batches(train_ids, batch_size, seed, epoch):
            optimizer.zero_grad()
            logits = model([x[ids] for x in xs])
            nn.functional.cross_entropy(logits, y[ids], weight=weights).backward()
            optimizer.step()
        if on_epoch is not None:
            on_epoch(epoch)


@torch.no_grad()
def split_proba(model: SplitModel, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    """P(class 1) of the centralised split model."""
    model.eval()
    return torch.softmax(model(list(xs)), dim=1)[:, 1]


def binary_metrics(y: torch.Tensor, p1: torch.Tensor) -> dict[str, float]:
    """``loss`` (log-loss), ``accuracy`` (threshold 0.5), ``roc-auc``, ``pr-auc``."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    yn, pn = y.numpy(), p1.double().clamp(1e-12, 1 - 1e-12).numpy()
    both = len(set(yn.tolist())) == 2
    return {
        "loss": float(-(yn * np.log(pn) + (1 - yn) * np.log(1 - pn)).mean()),
        "accuracy": float(((pn >= 0.5) == (yn == 1)).mean()),
        "roc-auc": float(roc_auc_score(yn, pn)) if both else float("nan"),
        "pr-auc": float(average_precision_score(yn, pn)) if both else float("nan"),
    }
