"""Privacy attacks: what an attacker learns from the released model and from what the server
sees of one silo, with and without the project's defences.

Two attacks on the ``digits`` task (8×8 images, the task's own ``SmallCNN``):

* **Membership inference** on the released global model of a federation run on the
  in-process grid (the real ServerApp body and ClientApp, as ``benchmarks.privacy``):
  members are the silos' training rows, non-members the server's held-out rows. Two
  settings (:data:`MEMBERSHIP_SETTINGS`): ``docs``, the recipe of ``benchmarks.privacy``
  (100 silos, 10 rounds × 5 local epochs, ``data.test-fraction = 0.5``), which barely overfits;
  and ``leaky``, a small consortium (5 silos of ≈ 40 rows, 20 rounds × 20 full-batch
  epochs) whose undefended model fits its members perfectly. Two attacks score every row:
  the **loss threshold** (Yeom et al., CSF 2018: lower loss → member) and the **offline
  likelihood-ratio attack** (LiRA, Carlini et al., IEEE S&P 2022, §VI-C "offline"): shadow
  federations trained with the setting's own recipe on other seeded splits; for each row, the
  logit-scaled confidence ``φ = log(p_y / (1 − p_y))`` of the target model is compared with
  its distribution under the shadows that did *not* train on it (Gaussian, per-row mean,
  one pooled variance — the paper's fixed-variance variant for few shadows). Compared:
  non-private FedAvg, central DP (client-level DP-FedAvg calibrated by the project's
  accountant to ε ∈ {1, 4, 8}) and local DP (DP-SGD in every silo, ε = 8), each with the
  production mechanism's secret noise. Reported: ROC-AUC and TPR at 1 % FPR.
* **Gradient inversion** ("Inverting Gradients", Geiping et al., NeurIPS 2020: cosine
  gradient matching + total variation, Adam, pixels kept in [0, 1]; labels from the last
  layer's bias gradient, the iDLG rule of Zhao et al. 2020) against what the server sees of
  one silo after one local step on a batch of B ∈ {1, 8} records (FedSGD; the attacker
  matches the gradient −update / lr — matching the update itself, whose sign is opposite,
  drives the reconstruction away from the image): the plain
  update, its int8 and top-k encodings (``strategies.compression.codecs``; the attacker
  matches top-k on the transmitted coordinates only), the secure-aggregation aggregate (the
  sum of ``SECAGG_SILOS`` silos' updates, all secagg reveals), and a local-DP update
  (per-record clipping and Gaussian noise with the σ the project's accountant calibrates for
  the local-DP run above). Reported: PSNR and SSIM of the best-matched reconstruction of each
  of the silo's images, and the label-recovery rate; the PSNR of the data set's mean image
  is the "learned nothing" baseline.

Usage::

    python -m benchmarks.privacy_attacks            # → docs/privacy-attacks.{md,json}
    python -m benchmarks.privacy_attacks --quick    # smoke: 10 silos, 2 rounds, 2 shadows,
                                                    # small inversion; writes only with --out
    python -m benchmarks.privacy_attacks --parts inversion --merge   # redo one part
    python -m benchmarks.privacy_attacks --parts membership --settings leaky --merge

Everything is seeded (partitions, initialisation, training, the inversion's simulated noise
and restarts) except the federations' DP noise: it is the production mechanism's secret noise
(``benchmarks.privacy`` turns on the research key ``dp.reproducible-noise`` for identical
reruns; an attack benchmark attacks what is deployed, so it is off here), so the DP rows of
the membership tables vary a little between runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import harness
from benchmarks import privacy as dp_bench
from benchmarks.harness import Table

LOG = logging.getLogger(__name__)

DEFAULT_OUT = Path("docs/privacy-attacks.md")
PARTS = ("membership", "inversion")
TASK = "digits"
SEED = 42
DELTA = dp_bench.DELTA
CENTRAL_EPSILONS = (1.0, 4.0, 8.0)
LOCAL_EPSILONS = (8.0,)


@dataclass(frozen=True)
class MembershipSetting:
    """One federation recipe whose released models are attacked; its shadows are trained
    with the same recipe (other seeds: another hold-out, partition and initialisation)."""

    key: str
    title: str
    settings: dp_bench.Settings
    #: Share of the data the server holds out: the non-members; the rest are the members.
    test_fraction: float
    shadows: int
    why: str


#: The two settings. ``docs`` is ``benchmarks.privacy``'s (docs/privacy.md): 100 silos of
#: 9 rows, 10 rounds × 5 epochs — it barely overfits, so it shows what MI gets from the
#: recipe the project documents (4 shadows: its attacks are at chance anyway).
#: ``leaky`` is deliberately overfitting but realistic: 5 silos of ≈ 40 rows (a small
#: consortium), full-batch steps for 20 rounds × 20 epochs, so the non-private model fits its
#: members perfectly and there is something for DP to stop. (10 silos of ≈ 20 rows leaked
#: the same — LiRA AUC 0.59, TPR 3.6 % — at twice the cost.)
MEMBERSHIP_SETTINGS = (
    MembershipSetting(
        "docs", "the recipe of docs/privacy.md", dp_bench.SETTINGS[TASK], 0.5, 4,
        "The federation settings of `benchmarks.privacy`",
    ),
    MembershipSetting(
        "leaky", "a deliberately overfitting federation",
        replace(dp_bench.SETTINGS[TASK], num_silos=5, rounds=20, local_epochs=20,
                batch_size=64),
        0.89, 8,
        "A small consortium with few rows per silo (the server holds out most of the data) "
        "and many full-batch local epochs, so that the undefended model fits its members",
    ),
)  # fmt: skip
#: Inversion: batch sizes, trials per cell, optimiser steps, silos summed by secure
#: aggregation.
BATCH_SIZES = (1, 8)
TRIALS = 3
ITERATIONS = 200
#: Random restarts per inversion; the attacker keeps the one whose gradient matches best.
RESTARTS = 2
SECAGG_SILOS = 4
#: Local step of the silo whose update is inverted (FedSGD: one step on its batch).
INVERSION_LR = 0.1
TV_WEIGHT = 1e-2
#: An attack "learned nothing" when it does no better than these (see the doc).
MIA_CHANCE_AUC = 0.55
#: 3× the FPR: with ≈ 200 members one member is 0.5 % of TPR, so 2 % is within noise.
MIA_CHANCE_TPR = 0.03
PSNR_MARGIN_DB = 1.0
#: A released model at or below this test accuracy is useless (twice chance on 10 classes):
#: a defence that "stops" membership inference there does so by destroying the model.
USELESS_ACCURACY = 0.2
#: A reconstructed image counts as recovered at this SSIM to its original or above.
RECOVERED_SSIM = 0.8

_QUICK_SETTINGS = replace(
    dp_bench.SETTINGS[TASK], num_silos=10, rounds=2, local_epochs=1,
    batch_size=dp_bench.QUICK_BATCH,
)  # fmt: skip
QUICK = {
    "membership": (
        replace(MEMBERSHIP_SETTINGS[0], settings=_QUICK_SETTINGS, shadows=2),
        replace(MEMBERSHIP_SETTINGS[1], settings=replace(_QUICK_SETTINGS, num_silos=3), shadows=2),
    ),
    "central": (4.0,),
    "local": (8.0,),
    "trials": 1,
    "iterations": 100,
    "batch_sizes": (1, 2),
}


# =========================================================================== metrics
def roc_auc(scores: np.ndarray, is_member: np.ndarray) -> float:
    """ROC-AUC of ``scores`` (higher = member) against the true membership."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.asarray(is_member, bool), np.asarray(scores, float)))


def tpr_at_fpr(scores: np.ndarray, is_member: np.ndarray, fpr: float = 0.01) -> float:
    """The largest true-positive rate at a false-positive rate ≤ ``fpr`` (Carlini et al.'s
    low-FPR figure; with N non-members the smallest non-zero FPR is 1/N)."""
    from sklearn.metrics import roc_curve

    fprs, tprs, _ = roc_curve(np.asarray(is_member, bool), np.asarray(scores, float))
    ok = fprs <= fpr
    return float(tprs[ok].max()) if ok.any() else 0.0


def psnr(reference: torch.Tensor, image: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB for pixels in [0, 1] (``inf`` if identical)."""
    mse = float(((reference.double() - image.double()) ** 2).mean())
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def ssim(reference: torch.Tensor, image: torch.Tensor, window: int = 3) -> float:
    """Mean structural similarity of two single-channel images in [0, 1] over all
    ``window × window`` patches (uniform window; Wang et al. 2004 constants)."""
    a = reference.double().reshape(1, 1, *reference.shape[-2:])
    b = image.double().reshape(1, 1, *image.shape[-2:])
    c1, c2 = 0.01**2, 0.03**2
    pool = lambda t: F.avg_pool2d(t, window, stride=1)  # noqa: E731
    mu_a, mu_b = pool(a), pool(b)
    var_a = pool(a * a) - mu_a**2
    var_b = pool(b * b) - mu_b**2
    cov = pool(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return float((num / den).mean())


# ================================================================ membership inference
def logit_confidence(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """``φ = log p_y − log(1 − p_y)`` per row (LiRA's logit scaling), computed stably."""
    model.eval()
    with torch.no_grad():
        logits = model(x).double()
    true = logits.gather(1, y.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, y.view(-1, 1), -math.inf)
    return (true - torch.logsumexp(others, dim=1)).numpy()


def per_example_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return F.cross_entropy(model(x).double(), y, reduction="none").numpy()


def lira_offline_scores(
    target_phi: np.ndarray, shadow_phi: np.ndarray, shadow_in: np.ndarray
) -> np.ndarray:
    """Offline LiRA scores (higher = member).

    ``shadow_phi`` and ``shadow_in`` are ``(K, N)``: each shadow's φ on every row and whether
    that shadow trained on it. For row ``i`` the OUT distribution is ``N(μᵢ, σ²)`` with
    ``μᵢ`` the mean φ of the shadows that did not train on it and ``σ`` the standard
    deviation of all OUT φ around their rows' means (pooled); the score is the one-sided
    ``Φ((φᵢ − μᵢ) / σ)``, returned as its z-value (same ranking). A row no shadow left out
    gets the mean of all OUT φ.
    """
    phi = np.asarray(shadow_phi, float)
    out = ~np.asarray(shadow_in, bool)
    if phi.shape != out.shape or phi.shape[1] != len(target_phi):
        raise ValueError(
            f"shadow_phi {phi.shape} / shadow_in {out.shape} do not fit {len(target_phi)} rows"
        )
    counts = out.sum(axis=0)
    fallback = phi[out].mean() if out.any() else 0.0
    mu = np.where(counts > 0, (phi * out).sum(axis=0) / np.maximum(counts, 1), fallback)
    resid = (phi - mu[None, :])[out]
    sigma = float(resid.std()) if resid.size > 1 else 1.0
    sigma = sigma if sigma > 0 else 1.0
    return (np.asarray(target_phi, float) - mu) / sigma


def attack_figures(scores: np.ndarray, is_member: np.ndarray) -> dict[str, float]:
    return {"auc": roc_auc(scores, is_member), "tpr_at_1pct_fpr": tpr_at_fpr(scores, is_member)}


@dataclass(frozen=True)
class Target:
    """One released model of the comparison."""

    label: str
    mode: str  # "none" | "central" | "local"
    epsilon: float  # math.inf without DP

    def overrides(self, setting: MembershipSetting, seed: int) -> dict[str, Any]:
        """The federation's run config. DP noise is the production mechanism's secret noise:
        ``benchmarks.privacy`` seeds it (``dp.reproducible-noise``, a research key that
        marks the run not private) so that its reruns are identical; an attack benchmark
        must attack what is deployed, so the key is dropped here."""
        mode = "central" if self.mode == "none" else self.mode
        o = dp_bench.cell_overrides(TASK, mode, self.epsilon, setting.settings)
        o.pop("dp.reproducible-noise", None)
        return {**o, "seed": seed, "data.test-fraction": setting.test_fraction}


def targets(central: Sequence[float], local: Sequence[float]) -> list[Target]:
    out = [Target("non-private FedAvg", "none", math.inf)]
    out += [Target(f"central DP ε = {e:g}", "central", float(e)) for e in central]
    out += [Target(f"local DP ε = {e:g}", "local", float(e)) for e in local]
    return out


def train_federation(overrides: Mapping[str, Any], num_silos: int) -> tuple[nn.Module, dict]:
    """Run one federation on the in-process grid; the released model and its metrics."""
    from fl_app.client_app import app as client_app
    from fl_app.config import RunConfig
    from fl_app.federation import run_federation
    from fl_app.inprocess import InProcessGrid
    from tasks import get_task

    with tempfile.TemporaryDirectory(prefix="fedsilo-mia-") as tmp:
        cfg = RunConfig.from_flower({**overrides, "output.run-dir": tmp})
        grid = InProcessGrid(client_app, cfg.to_flower(), num_silos)
        result, _ = run_federation(grid, cfg)
    model = get_task(cfg.task).build_model()
    model.load_state_dict(result.arrays.to_torch_state_dict())
    final = result.evaluate_metrics_serverapp.get(cfg.num_server_rounds, {})
    train = result.train_metrics_clientapp
    eps = [float(m["epsilon"]) for m in train.values() if "epsilon" in m]
    return model, {
        "test_accuracy": dp_bench._number(final.get("accuracy")),
        "epsilon_reported": max(eps) if eps else None,
    }


def membership_of(seed: int, test_fraction: float) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Every row of the task's data ``(x, y)`` and whether a federation seeded ``seed``
    trains on it (the server's seeded stratified hold-out, as ``Task.split``)."""
    from fl_app.config import RunConfig
    from tasks import get_task
    from tasks.partitioning import stratified_split

    task = get_task(TASK)
    data, _ = task.load_data(RunConfig(task=TASK, seed=seed).data)
    train_idx, _ = stratified_split(task.strata(data), test_fraction, seed=seed)
    member = np.zeros(len(data), bool)
    member[train_idx] = True
    return torch.from_numpy(data.x), torch.from_numpy(data.y), member


def run_membership(
    setting: MembershipSetting,
    target_list: Sequence[Target],
    num_shadows: int | None = None,
    seed: int = SEED,
) -> list[dict[str, Any]]:
    """Shadow federations (non-private, trained like the targets), then every target: one
    row per target."""
    num_shadows = setting.shadows if num_shadows is None else num_shadows
    silos, tf = setting.settings.num_silos, setting.test_fraction
    x, y, member = membership_of(seed, tf)
    shadow_phi, shadow_in = [], []
    for k in range(1, num_shadows + 1):
        started = time.perf_counter()
        shadow = Target("shadow", "none", math.inf)
        model, _ = train_federation(shadow.overrides(setting, seed + k), silos)
        shadow_phi.append(logit_confidence(model, x, y))
        shadow_in.append(membership_of(seed + k, tf)[2])
        LOG.info("%s shadow %d/%d: %.1f s", setting.key, k, num_shadows,
                 time.perf_counter() - started)  # fmt: skip
    shadow_phi_arr, shadow_in_arr = np.stack(shadow_phi), np.stack(shadow_in)
    rows = []
    for target in target_list:
        started = time.perf_counter()
        model, info = train_federation(target.overrides(setting, seed), silos)
        loss = per_example_loss(model, x, y)
        phi = logit_confidence(model, x, y)
        with torch.no_grad():
            pred = model(x).argmax(1).numpy()
        loss_fig = attack_figures(-loss, member)
        lira_fig = attack_figures(lira_offline_scores(phi, shadow_phi_arr, shadow_in_arr), member)
        rows.append({
            "setting": setting.key, "target": target.label, "mode": target.mode,
            "epsilon": None if math.isinf(target.epsilon) else target.epsilon,
            "epsilon_reported": info["epsilon_reported"],
            "train_accuracy": float((pred[member] == y.numpy()[member]).mean()),
            "test_accuracy": float((pred[~member] == y.numpy()[~member]).mean()),
            "loss_auc": loss_fig["auc"], "loss_tpr": loss_fig["tpr_at_1pct_fpr"],
            "lira_auc": lira_fig["auc"], "lira_tpr": lira_fig["tpr_at_1pct_fpr"],
            "members": int(member.sum()), "non_members": int((~member).sum()),
            "shadows": num_shadows, "seconds": round(time.perf_counter() - started, 1),
        })  # fmt: skip
        LOG.info("%s: %s", target.label, rows[-1])
    return rows


# ==================================================================== gradient inversion
def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def batch_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, create_graph=False):
    """The gradient of the mean cross-entropy of ``(x, y)``, one tensor per parameter."""
    loss = F.cross_entropy(model(x), y)
    return torch.autograd.grad(loss, _params(model), create_graph=create_graph)


def flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def per_example_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(B, d)`` flattened per-record gradients."""
    return torch.stack([flat(batch_gradient(model, x[i : i + 1], y[i : i + 1])) for i in
                        range(len(x))])  # fmt: skip


def infer_labels(bias_gradient: torch.Tensor, count: int) -> torch.Tensor:
    """Labels of a batch of ``count`` records from the gradient of the last layer's bias
    (mean cross-entropy: ``mean_i (softmax_i − onehot_i)``).

    ``count = 1``: the one negative entry (iDLG, Zhao et al. 2020). Larger batches: every
    class with a negative entry is present; the remaining labels repeat the most negative
    classes in order (each repeat lowers the entry by 1/count) — the sign rule of iDLG
    extended as in Wainakh et al., "User-level label leakage from gradients" (PETS 2022).
    """
    g = bias_gradient.detach().double().clone()
    labels = []
    present = torch.nonzero(g < 0).flatten().tolist()
    present.sort(key=lambda c: float(g[c]))
    for c in present[:count]:
        labels.append(c)
        g[c] += 1.0 / count
    while len(labels) < count:
        c = int(torch.argmin(g))
        labels.append(c)
        g[c] += 1.0 / count
    return torch.tensor(sorted(labels), dtype=torch.int64)


def label_recovery(true: torch.Tensor, guessed: torch.Tensor) -> float:
    """Fraction of the true labels recovered (multiset intersection / batch size)."""
    size = int(max(true.max(), guessed.max())) + 1
    t, g = np.bincount(true.numpy(), minlength=size), np.bincount(guessed.numpy(), minlength=size)
    return float(np.minimum(t, g).sum() / len(true))


def _tv(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (
        x[..., :, 1:] - x[..., :, :-1]
    ).abs().mean()


def invert_gradients(
    model: nn.Module,
    observed: torch.Tensor,
    labels: torch.Tensor,
    *,
    shape: tuple[int, ...] = (1, 8, 8),
    mask: torch.Tensor | None = None,
    iterations: int = ITERATIONS,
    lr: float = 0.1,
    tv_weight: float = TV_WEIGHT,
    generator: torch.Generator | None = None,
    restarts: int = 1,
) -> torch.Tensor:
    """Reconstruct ``len(labels)`` inputs whose gradient is most cosine-similar to the
    flattened ``observed`` (on the coordinates of ``mask`` if given), plus ``tv_weight`` ×
    total variation; Adam from uniform noise, step decay at 60 % / 85 %, pixels projected to
    [0, 1] (Geiping et al. 2020). With ``restarts > 1`` the attacker keeps the run whose
    final matching loss is lowest (it needs nothing but the observed update for that).
    Returns ``(len(labels), *shape)``."""
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    best, best_loss = None, math.inf
    for _ in range(max(1, restarts)):
        x, loss = _invert_once(model, observed, labels, shape, mask, iterations, lr,
                               tv_weight, gen)  # fmt: skip
        if loss < best_loss or best is None:
            best, best_loss = x, loss
    return best


def _matching_loss(model, x, labels, target, mask, tv_weight) -> torch.Tensor:
    g = flat(batch_gradient(model, x, labels, create_graph=True))
    if mask is not None:
        g = g[mask]
    return 1 - F.cosine_similarity(g, target, dim=0) + tv_weight * _tv(x)


def _invert_once(model, observed, labels, shape, mask, iterations, lr, tv_weight, gen):
    x = torch.rand(len(labels), *shape, generator=gen).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(
        opt, [int(iterations * 0.6), int(iterations * 0.85)], gamma=0.1
    )
    target = observed.detach().reshape(-1)
    if mask is not None:
        target = target[mask]
    for _ in range(iterations):
        opt.zero_grad()
        loss = _matching_loss(model, x, labels, target, mask, tv_weight)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            x.clamp_(0.0, 1.0)
    final = float(_matching_loss(model, x, labels, target, mask, tv_weight).detach())
    return x.detach(), final


def match_quality(true: torch.Tensor, recon: torch.Tensor) -> dict[str, float]:
    """Each true image paired with a distinct reconstruction minimising the total MSE
    (Hungarian); mean PSNR, SSIM and MSE over the true images."""
    from scipy.optimize import linear_sum_assignment

    cost = ((true.reshape(len(true), 1, -1) - recon.reshape(1, len(recon), -1)) ** 2).mean(-1)
    rows, cols = linear_sum_assignment(cost.numpy())
    pairs = list(zip(rows, cols, strict=True))
    psnrs = [min(psnr(true[i], recon[j]), 99.0) for i, j in pairs]
    ssims = [ssim(true[i][0], recon[j][0]) for i, j in pairs]
    return {
        "psnr": float(np.mean(psnrs)),
        "ssim": float(np.mean(ssims)),
        "mse": float(np.mean([float(cost[i, j]) for i, j in pairs])),
        "recovered": float(np.mean([v >= RECOVERED_SSIM for v in ssims])),
    }


@dataclass(frozen=True)
class View:
    """What the server sees of the target silo."""

    name: str
    describe: str


VIEWS = (
    View("plain", "the silo's update (float32)"),
    View("int8", "its int8 encoding (stochastic rounding, 1 024-value chunks)"),
    View("top-k", "its top-k encoding"),
    View("secagg", f"the secure-aggregation sum of {SECAGG_SILOS} silos' updates"),
    View("local-dp", "its local-DP update (DP-SGD step)"),
)


def server_view(
    view: str,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    others: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    offsets: Sequence[int],
    topk_fraction: float,
    sigma: float,
    clip: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """``(observed update, mask, number of records behind it)`` for ``view``. The silo's
    update is one SGD step, ``-INVERSION_LR × gradient``."""
    from strategies.compression.codecs import CompressionSpec, decode, encode
    from strategies.privacy import clip_updates, gaussian_noise_sum

    def update(xb, yb):
        return -INVERSION_LR * flat(batch_gradient(model, xb, yb))

    if view == "plain":
        return update(x, y), None, len(y)
    if view in ("int8", "top-k"):
        spec = CompressionSpec("int8") if view == "int8" else CompressionSpec(
            "topk", topk_fraction=topk_fraction
        )  # fmt: skip
        arrays, meta = encode(update(x, y), offsets, spec, generator)
        seen = decode(arrays, meta, offsets)
        return seen, (seen != 0) if view == "top-k" else None, len(y)
    if view == "secagg":
        total = update(x, y)
        for xo, yo in others:
            total = total + update(xo, yo)
        return total, None, len(y) * (1 + len(others))
    if view == "local-dp":
        clipped, _ = clip_updates(per_example_gradients(model, x, y), clip)
        noised = gaussian_noise_sum(clipped, sigma, clip, generator) / len(y)
        return -INVERSION_LR * noised, None, len(y)
    raise ValueError(f"unknown view {view!r}; use one of {[v.name for v in VIEWS]}")


def observed_gradient(update: torch.Tensor) -> torch.Tensor:
    """The (summed, compressed or noised) gradient behind an observed update: the attacker
    knows the silo takes one SGD step, ``update = −INVERSION_LR × gradient``.

    The sign matters: cosine matching against the update itself rewards reconstructions
    whose gradient points the *opposite* way (the first version of this benchmark did that,
    and its "undefended" reconstructions were worse than the mean image)."""
    return update / -INVERSION_LR


def local_dp_sigma(settings: dp_bench.Settings, epsilon: float) -> float:
    """The σ of the local-DP federation's silos: the project's accountant for
    ``rounds × local_epochs`` full-batch steps (sample rate 1) at ``epsilon``."""
    from strategies.privacy import calibrate_noise_multiplier

    return calibrate_noise_multiplier(
        epsilon, DELTA, 1.0, settings.rounds, steps_per_round=settings.local_epochs
    )


def run_inversion(
    *,
    batch_sizes: Sequence[int],
    trials: int,
    iterations: int,
    sigma: float,
    clip: float,
    restarts: int = RESTARTS,
    seed: int = SEED,
) -> list[dict[str, Any]]:
    """Every (view, batch size): mean reconstruction quality over ``trials`` batches."""
    from fl_app.config import RunConfig
    from tasks import get_task

    task = get_task(TASK)
    data, _ = task.load_data(RunConfig(task=TASK, seed=seed).data)
    xs, ys = torch.from_numpy(data.x), torch.from_numpy(data.y)
    mean_image = xs.mean(dim=0, keepdim=True)
    topk_fraction = float(RunConfig().compression.topk_fraction)
    rows = []
    for batch in batch_sizes:
        for view in VIEWS:
            started = time.perf_counter()
            figures: dict[str, list[float]] = {k: [] for k in ("psnr", "ssim", "mse", "recovered",
                                                               "labels", "baseline")}  # fmt: skip
            for trial in range(trials):
                gen = torch.Generator().manual_seed(seed * 1000 + 97 * batch + trial)
                torch.manual_seed(seed + trial)
                model = task.build_model()  # the round-1 global model (fresh init)
                offsets = np.cumsum([0] + [p.numel() for p in _params(model)]).tolist()
                pick = torch.randperm(len(xs), generator=gen)[: batch * SECAGG_SILOS]
                x, y = xs[pick[:batch]], ys[pick[:batch]]
                others = [(xs[pick[batch * k : batch * (k + 1)]], ys[pick[batch * k :
                           batch * (k + 1)]]) for k in range(1, SECAGG_SILOS)]  # fmt: skip
                observed, mask, count = server_view(
                    view.name, model, x, y, others, offsets=offsets,
                    topk_fraction=topk_fraction, sigma=sigma, clip=clip, generator=gen,
                )  # fmt: skip
                gradient = observed_gradient(observed)
                labels = infer_labels(gradient[offsets[-2] : offsets[-1]], count)
                recon = invert_gradients(model, gradient, labels, mask=mask, restarts=restarts,
                                         iterations=iterations, generator=gen)  # fmt: skip
                quality = match_quality(x, recon)
                for k in ("psnr", "ssim", "mse", "recovered"):
                    figures[k].append(quality[k])
                figures["labels"].append(label_recovery(y, labels))
                figures["baseline"].append(match_quality(x, mean_image.expand_as(x))["psnr"])
            rows.append({
                "view": view.name, "batch": batch, "records_behind": count,
                **{k: float(np.mean(v)) for k, v in figures.items()},
                "trials": trials, "seconds": round(time.perf_counter() - started, 1),
            })  # fmt: skip
            LOG.info("inversion %s B=%d: %s", view.name, batch, rows[-1])
    return rows


# ============================================================================== report
def _n(count: Any, singular: str, plural: str | None = None) -> str:
    """``"1 round"``, ``"3 rounds"``."""
    return f"{count} {singular if count == 1 else (plural or singular + 's')}"


def _f(value: float | None, spec: str = ".3f") -> str:
    return "–" if value is None or not math.isfinite(value) else format(value, spec)


def _mia_near_chance(r: Mapping[str, Any]) -> bool:
    return (
        r["lira_auc"] <= MIA_CHANCE_AUC
        and r["lira_tpr"] <= MIA_CHANCE_TPR
        and r["loss_auc"] <= MIA_CHANCE_AUC
    )


def mia_verdicts(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """One plain sentence per released model of one setting: did membership inference work,
    and did the defence stop it? "Stopped" needs an undefended attack that worked."""
    base = next((r for r in rows if r["mode"] == "none"), None)
    base_leaks = base is not None and not _mia_near_chance(base)
    out = []
    for r in rows:
        figures = (
            f"LiRA AUC {r['lira_auc']:.3f}, TPR {r['lira_tpr']:.1%} at 1 % FPR; loss "
            f"attack AUC {r['loss_auc']:.3f}; test accuracy {r['test_accuracy']:.3f}"
        )
        if r["mode"] == "none":
            verdict = ("**No defence:** membership leaks" if base_leaks else
                       "**No defence:** the attacks do no better than chance here")  # fmt: skip
            out.append(f"{verdict} ({figures}).")
            continue
        cost = ""
        if base is not None:
            drop = 100 * (r["test_accuracy"] - base["test_accuracy"])
            cost = f"; test accuracy {drop:+.1f} points vs the non-private model"
        if not base_leaks:
            out.append(
                f"**{r['target']}:** this setting shows nothing about it: the attacks are "
                f"already at chance without a defence ({figures}{cost})."
            )
        elif _mia_near_chance(r) and r["test_accuracy"] <= USELESS_ACCURACY:
            out.append(
                f"**{r['target']} stopped membership inference only by destroying the model** "
                f"({figures}{cost}): this setting shows nothing about it at a useful accuracy."
            )
        elif _mia_near_chance(r):
            out.append(f"**{r['target']} stopped membership inference** ({figures}{cost}).")
        elif r["lira_auc"] - 0.5 <= 0.5 * (base["lira_auc"] - 0.5):
            out.append(f"**{r['target']} reduced membership inference but did not stop it** "
                       f"({figures}{cost}).")  # fmt: skip
        else:
            out.append(f"**{r['target']} did not stop membership inference** ({figures}{cost}).")
    return out


def _inversion_learned(r: Mapping[str, Any]) -> bool:
    return r["psnr"] > r["baseline"] + PSNR_MARGIN_DB


def inversion_verdicts(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """One sentence per (batch size, view); a defence "stopped" reconstruction only if the
    same attack on the plain update of the same batches did better than the mean image."""
    out = []
    for batch in sorted({r["batch"] for r in rows}):
        cell = [r for r in rows if r["batch"] == batch]
        plain = next((r for r in cell if r["view"] == "plain"), None)
        plain_works = plain is not None and _inversion_learned(plain)
        for r in cell:
            images = (f"{r['psnr']:.1f} dB PSNR / SSIM {r['ssim']:.2f}, "
                      f"{r['recovered']:.0%} of the images at SSIM ≥ {RECOVERED_SSIM:g}, vs "
                      f"{r['baseline']:.1f} dB for the data set's mean image; labels "
                      f"recovered {r['labels']:.0%}")  # fmt: skip
            head = f"B = {batch}, **{r['view']}**"
            if r["view"] == "plain":
                what = ("the attack reconstructs the silo's images" if plain_works else
                        "the attack fails even without a defence, so this batch size shows "
                        "nothing about the defences")  # fmt: skip
                out.append(f"{head} (no defence): {what} ({images}).")
            elif not plain_works:
                out.append(f"{head}: shows nothing (the undefended attack already fails; "
                           f"{images}).")  # fmt: skip
            elif not _inversion_learned(r):
                out.append(f"{head}: stopped image reconstruction ({images}).")
            elif r["psnr"] < plain["psnr"] - 5.0:
                out.append(f"{head}: degraded image reconstruction but did not stop it "
                           f"({images}).")  # fmt: skip
            else:
                out.append(f"{head}: did not stop image reconstruction ({images}).")
    return out


def _mia_section(meta: Mapping[str, Any], setting: Mapping[str, Any],
                 rows: Sequence[Mapping]) -> list[str]:  # fmt: skip
    s = setting["settings"]
    tf = setting["test_fraction"]
    first = rows[0] if rows else {}
    lines = [
        f"### Setting `{setting['key']}`: {setting['title']}",
        "",
        f"{setting['why']}. Task `{TASK}`, {s['num_silos']} IID silos "
        f"(≈ {first.get('members', 0) / s['num_silos']:.0f} training rows each), "
        f"{_n(s['rounds'], 'round')} × {_n(s['local_epochs'], 'local epoch')} (batch "
        f"{s['batch_size']}, lr "
        f"{s['learning_rate']}), FedAvg; central DP clips each silo's update to C = "
        f"{s['clip_norm']}, local DP each record's gradient to {s['max_grad_norm']}; "
        f"δ = {DELTA:g}. Members: the silos' training rows ({first.get('members', '–')}); "
        f"non-members: the server's held-out rows ({tf:.0%}, {first.get('non_members', '–')}). "
        f"LiRA (offline) uses {_n(setting['shadows'], 'non-private shadow federation')} trained "
        "with this same recipe, each on another seeded split of the data.",
        "",
    ]
    table = Table([
        "released model", "ε reported", "train acc.", "test acc.", "loss attack AUC",
        "loss TPR @ 1 % FPR", "LiRA AUC", "LiRA TPR @ 1 % FPR",
    ])  # fmt: skip
    for r in rows:
        eps = r.get("epsilon_reported")
        eps_text = "∞" if r["mode"] == "none" else (_f(eps) if eps is not None else
                                                     f"≤ {r['epsilon']:g}")  # fmt: skip
        table.add(
            r["target"], eps_text, _f(r["train_accuracy"]), _f(r["test_accuracy"]),
            _f(r["loss_auc"]), _f(r["loss_tpr"]), _f(r["lira_auc"]), _f(r["lira_tpr"]),
        )  # fmt: skip
    return [*lines, table.markdown(), ""]


def _settings_of(meta: Mapping[str, Any], mia: Sequence[Mapping]) -> list[Mapping[str, Any]]:
    """The membership settings the rows were run with (from ``meta``), in row order."""
    known = {m["key"]: m for m in meta.get("membership_settings", [])}
    keys = list(dict.fromkeys(r.get("setting", "docs") for r in mia))
    return [known[k] for k in keys if k in known]


def render_markdown(
    meta: Mapping[str, Any], mia: Sequence[Mapping], inv: Sequence[Mapping], rendered: str = ""
) -> str:
    """The report (``rendered``: the note of a ``--render-only`` run)."""
    settings = _settings_of(meta, mia)
    lines = [
        "# Privacy attacks: what DP, secure aggregation and compression really protect",
        "",
        "<!-- Generated by `python -m benchmarks.privacy_attacks`; do not edit by hand. -->",
        "",
        f"Generated by `{meta.get('command')}` on {meta.get('machine')} ("
        f"{meta.get('code-label') or meta.get('git') or 'unknown code'}; "
        f"flwr {meta.get('flwr')}, torch {meta.get('torch')}; "
        f"{meta.get('seconds', 0):.0f} s wall; 1-minute load average "
        f"{_f(meta.get('load-start'), '.1f')} at the start and {_f(meta.get('load-end'), '.1f')} "
        "at the end — other jobs may have shared the cores). Raw numbers: the `.json` next to "
        "this file. Method: the docstring of `benchmarks/privacy_attacks.py`."
        + (f" {rendered}" if rendered else ""),
        "",
        "## Membership inference on the released global model",
        "",
        "Two settings: the recipe of docs/privacy.md, and a small consortium whose "
        "undefended model overfits, so that there is something for DP to stop. An AUC of "
        "0.5 and a TPR equal to the FPR (1 %) are chance. DP noise is the production "
        "mechanism's secret noise (`dp.reproducible-noise` off), so the DP rows differ "
        "from one run to the next; the partitions, initialisations and training are seeded.",
        "",
    ]
    for setting in settings:
        lines += _mia_section(meta, setting, [r for r in mia if r.get("setting", "docs") ==
                                              setting["key"]])  # fmt: skip
    lines += [
        "Local DP's ε is per record and holds against the server too; central DP's is per "
        "silo (client-level) and trusts the server; both bound membership inference on the "
        "released model (a record's silo is a superset of the record).",
        "",
        "## Gradient inversion against what the server sees of one silo",
        "",
        f"The silo takes one SGD step (lr {INVERSION_LR}) on a batch of B records with the "
        f"task's `SmallCNN` at its seeded initialisation; the attacker knows the model, the "
        f"learning rate and B, turns the update into the gradient (−update / lr), infers the "
        f"labels from the last layer's bias gradient, and runs {meta.get('iterations')} Adam "
        f"steps (lr 0.1, decayed ×0.1 at 60 % and 85 %) of cosine gradient matching "
        f"(+ {TV_WEIGHT:g} × total variation, pixels kept in [0, 1]) from "
        f"{_n(meta.get('restarts'), 'random start')}, keeping the best-matching one. Means "
        f"over {_n(meta.get('trials'), 'batch', 'batches')} per cell. Top-k keeps "
        f"{meta.get('topk_fraction') or 0:.0%} of the coordinates (the config's "
        f"`compression.topk-fraction`); secure aggregation reveals the sum over {SECAGG_SILOS} "
        "silos of B records each (the attacker reconstructs all of them and each of the "
        "target's images "
        "is paired with its best match); local DP clips each record's gradient to "
        f"{meta.get('local_dp_clip')} and adds N(0, (σC)²) with σ = "
        f"{_f(meta.get('local_dp_sigma'), '.2f')} (ε = {meta.get('local_dp_epsilon'):g} over "
        "the local-DP run of the `docs` setting). Images are compared in the data's own "
        "pixel scale, [0, 1]. Baseline: the PSNR of the data set's mean image, what an "
        'attacker gets without looking at the update. "Recovered": the share of the '
        f"target's images reconstructed at SSIM ≥ {RECOVERED_SSIM:g}.",
        "",
    ]
    table = Table([
        "what the server sees", "B", "records behind it", "PSNR (dB)", "SSIM", "MSE",
        "recovered", "labels recovered", "mean-image PSNR (dB)",
    ])  # fmt: skip
    for r in inv:
        table.add(
            r["view"], r["batch"], r["records_behind"], _f(r["psnr"], ".1f"), _f(r["ssim"], ".2f"),
            _f(r["mse"], ".4f"), f"{r.get('recovered', 0):.0%}", f"{r['labels']:.0%}",
            _f(r["baseline"], ".1f"),
        )  # fmt: skip
    lines += [table.markdown(), "", "## What each defence stopped and what it did not", ""]
    for setting in settings:
        rows = [r for r in mia if r.get("setting", "docs") == setting["key"]]
        lines += [f"Membership inference, setting `{setting['key']}`:", ""]
        lines += [f"* {v}" for v in mia_verdicts(rows)]
        lines += [""]
    if inv:
        lines += ["Gradient inversion:", ""]
        lines += [f"* {v}" for v in inversion_verdicts(inv)]
    lines += [
        "",
        'Reading the verdicts: "stopped" means the undefended attack worked in the same '
        "setting and the defended one did no better than its baseline (membership: AUC ≤ "
        f"{MIA_CHANCE_AUC} and TPR ≤ {MIA_CHANCE_TPR:.0%} at 1 % FPR; inversion: PSNR within "
        f"{PSNR_MARGIN_DB:g} dB of the mean image); where the undefended attack itself fails, "
        "the setting shows nothing about the defence; a defence whose model is at "
        f"test accuracy ≤ {USELESS_ACCURACY:g} stopped it only by destroying the model. "
        "How the mechanisms act on these "
        "attacks: int8 keeps every coordinate up to rounding noise and top-k keeps the "
        "largest ones (neither is meant to protect privacy); secure aggregation replaces one "
        "silo's gradient by the gradient of the union of the summed silos' batches (a larger "
        "batch, the labels of the union still in its last layer); DP bounds what *any* "
        "attack can learn about a record (local) or a silo (central), at the accuracy cost "
        "in the membership tables.",
        "",
    ]
    return "\n".join(lines)


# ================================================================================= CLI
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = harness.parser(
        __doc__, prog="python -m benchmarks.privacy_attacks",
        quick="smoke test (small federations and inversions); writes only with --out",
        merge="keep the other parts' rows of the existing report (--out's .json)",
        out=harness.opt(None, f"Markdown output, JSON next to it (default {DEFAULT_OUT})"),
        render_only="rewrite the Markdown from the JSON next to --out (no federations)",
    )  # fmt: skip
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument(
        "--shadows",
        type=int,
        default=None,
        help="LiRA shadows per membership setting (default: "
        + ", ".join(f"{m.key} {m.shadows}" for m in MEMBERSHIP_SETTINGS)
        + ")",
    )
    p.add_argument(
        "--settings",
        nargs="+",
        choices=[m.key for m in MEMBERSHIP_SETTINGS],
        default=[m.key for m in MEMBERSHIP_SETTINGS],
        help="membership-inference settings to run (default: all)",
    )
    args = p.parse_args(argv)
    harness.resolve_out(args, DEFAULT_OUT, p)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    harness.log_to_console()
    args = parse_args(argv)
    if args.render_only:
        out = args.out or DEFAULT_OUT
        data = json.loads(out.with_suffix(".json").read_text())
        note = harness.rerender_note("privacy_attacks")
        out.write_text(render_markdown(data["meta"], data["membership"], data["inversion"], note))
        print(f"wrote {out} from {out.with_suffix('.json')}")
        return 0
    session = harness.start("privacy_attacks", argv, args.out, allow_dirty=args.allow_dirty)
    command, code = session.command, session.code
    dp_bench.prepare_process()
    session.restart()  # the clock and the load average start after the warm-up
    q = args.quick
    all_settings = QUICK["membership"] if q else MEMBERSHIP_SETTINGS
    if args.shadows:
        all_settings = tuple(replace(m, shadows=args.shadows) for m in all_settings)
    mia_settings = [m for m in all_settings if m.key in args.settings]
    settings = all_settings[0].settings  # the local-DP σ of the inversion: the docs setting
    local_eps = QUICK["local"] if q else LOCAL_EPSILONS
    sigma = local_dp_sigma(settings, local_eps[0])
    meta: dict[str, Any] = {
        "command": command.strip(), "git": code.short, "code": code.to_json(),
        "code-label": code.label(), **harness.versions("flwr"),
        "torch": torch.__version__, "python": platform.python_version(),
        "machine": harness.machine(),
        "membership_settings": [{
            "key": m.key, "title": m.title, "why": m.why, "test_fraction": m.test_fraction,
            "shadows": m.shadows,
            "settings": {k: getattr(m.settings, k) for k in m.settings.__dataclass_fields__},
        } for m in all_settings],
        "trials": QUICK["trials"] if q else TRIALS,
        "iterations": QUICK["iterations"] if q else ITERATIONS,
        "restarts": 1 if q else RESTARTS,
        "topk_fraction": None, "local_dp_sigma": sigma, "local_dp_clip": settings.max_grad_norm,
        "local_dp_epsilon": local_eps[0], "quick": q,
    }  # fmt: skip
    from fl_app.config import RunConfig

    meta["topk_fraction"] = float(RunConfig().compression.topk_fraction)
    mia: list[dict] = []
    inv: list[dict] = []
    if "membership" in args.parts:
        target_list = targets(QUICK["central"] if q else CENTRAL_EPSILONS, local_eps)
        for m in mia_settings:
            mia += run_membership(m, target_list)
    if "inversion" in args.parts:
        inv = run_inversion(
            batch_sizes=QUICK["batch_sizes"] if q else BATCH_SIZES, trials=meta["trials"],
            iterations=meta["iterations"], sigma=sigma, clip=settings.max_grad_norm,
            restarts=1 if q else RESTARTS,
        )  # fmt: skip
    meta["seconds"] = round(session.seconds, 1)
    meta["load-start"], meta["load-end"] = session.load_start, harness.load_average()
    if args.merge and args.out is not None:
        previous = args.out.with_suffix(".json")
        if not previous.is_file():
            print(f"error: --merge: no report {previous} to merge into", file=sys.stderr)
            return 2
        old = json.loads(previous.read_text())
        ran = {r["setting"] for r in mia}
        mia = mia + [r for r in old.get("membership", []) if r.get("setting", "docs") not in ran]
        order = [m.key for m in all_settings]
        mia.sort(key=lambda r: order.index(r.get("setting", "docs")) if r.get("setting", "docs")
                 in order else len(order))  # fmt: skip
        inv = inv or old.get("inversion", [])
    doc = render_markdown(meta, mia, inv)
    print(doc)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(doc)
        payload = {"meta": meta, "membership": mia, "inversion": inv}
        args.out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
