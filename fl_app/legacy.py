"""The flat run-config layout of earlier versions: which dotted key(s) each old key became.

Used to refuse an old key with its new name (:mod:`fl_app.config`) and to read the
settings that older checkpoints and run directories stored (:mod:`fl_app.checkpointing`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _moved(section: str, *keys: str) -> dict[str, tuple[str, ...]]:
    return {key: (f"{section}.{key}",) for key in keys}

#: Every key of the flat layout of earlier versions whose name changed → its dotted
#: key(s). ``clip-norm`` meant both bounds; it is now ``dp.clip-norm`` (DP clipping) and
#: ``robust.clip-norm`` (the norm-clip strategy). Used to refuse old keys with the new
#: name and to read the settings stored by older checkpoints and run directories.
LEGACY_KEYS: dict[str, tuple[str, ...]] = {
    "data-source": ("data.source",),
    **_moved("data", "partitioner", "dirichlet-alpha", "test-fraction", "val-fraction"),
    **_moved("training", "local-epochs", "batch-size", "learning-rate", "momentum", "proximal-mu"),
    **_moved(
        "sampling",
        "fraction-train",
        "fraction-evaluate",
        "min-train-nodes",
        "min-evaluate-nodes",
        "min-available-nodes",
        "round-timeout",
        "straggler-timeout",
        "round-retries",
        "reply-poll-interval",
    ),  # fmt: skip
    "server-learning-rate": ("server.learning-rate",),
    "server-momentum": ("server.momentum",),
    **_moved("server", "beta1", "beta2", "tau"),
    **_moved(
        "robust",
        "trim-beta",
        "num-byzantine",
        "num-selected",
        "pre-aggregator",
        "bucket-size",
        "cclip-tau",
        "fltrust-root-size",
        "max-update-norm-ratio",
        "max-update-bytes",
    ),  # fmt: skip
    "robust-weights": ("robust.weights",),
    "clip-norm": ("dp.clip-norm", "robust.clip-norm"),
    "attack": ("attack.kind",),
    "attack-fraction": ("attack.fraction",),
    "attack-strength": ("attack.strength",),
    "central-dp": ("dp.central",),
    "noise-multiplier": ("dp.noise-multiplier",),
    **_moved(
        "dp",
        "adaptive-clipping",
        "target-quantile",
        "clip-learning-rate",
        "target-epsilon",
        "target-delta",
        "budget-mode",
        "accountant",
        "sampling-amplification",
    ),  # fmt: skip
    "local-dp": ("dp.local",),
    "local-noise-multiplier": ("dp.local-noise-multiplier",),
    "max-grad-norm": ("dp.max-grad-norm",),
    "local-target-epsilon": ("dp.local-target-epsilon",),
    "dp-reproducible-noise": ("dp.reproducible-noise",),
    "secure-aggregation": ("secagg.enabled",),
    "secagg-threshold": ("secagg.threshold",),
    "secagg-clip-range": ("secagg.clip-range",),
    "secagg-quantization-bits": ("secagg.quantization-bits",),
    "compression": ("compression.method",),
    **_moved(
        "compression",
        "topk-fraction",
        "topk-scope",
        "topk-feedback",
        "error-feedback",
        "quantization-chunk",
    ),  # fmt: skip
    **{
        f"vertical-{key}": (f"vertical.{key}",)
        for key in (
            "split",
            "coverage",
            "embedding-dim",
            "batch-size",
            "embedding-clip",
            "noise-multiplier",
            "gradient-clip",
            "timeout",
        )  # fmt: skip
    },
    "mlflow-tracking-uri": ("tracking.mlflow-uri",),
    "mlflow-experiment": ("tracking.experiment",),
    "mlflow-register-model": ("tracking.register-model",),
    **_moved("output", "checkpoint-uri", "run-dir", "resume", "resume-from"),
}


def legacy_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings stored by an older version (flat keys) under today's dotted keys (an old
    ``clip-norm`` fills both ``dp.clip-norm`` and ``robust.clip-norm``); keys already
    dotted pass through."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        for new in LEGACY_KEYS.get(key, (key,)):
            out[new] = value
    return out
