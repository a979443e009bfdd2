"""The flat run-config layout of earlier versions: which dotted key(s) each old key became.

Used to refuse an old key with its new name (:mod:`fl_app.config`) and to read the
settings that older checkpoints and run directories stored (:mod:`fl_app.checkpointing`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Every key of the flat layout of earlier versions whose name changed → its dotted
#: key(s). ``clip-norm`` meant both bounds; it is now ``dp.clip-norm`` (DP clipping) and
#: ``robust.clip-norm`` (the norm-clip strategy). Used to refuse old keys with the new
#: name and to read the settings stored by older checkpoints and run directories.
LEGACY_KEYS: dict[str, tuple[str, ...]] = {
    "data-source": ("data.source",),
    "partitioner": ("data.partitioner",),
    "dirichlet-alpha": ("data.dirichlet-alpha",),
    "test-fraction": ("data.test-fraction",),
    "val-fraction": ("data.val-fraction",),
    "local-epochs": ("training.local-epochs",),
    "batch-size": ("training.batch-size",),
    "learning-rate": ("training.learning-rate",),
    "momentum": ("training.momentum",),
    "proximal-mu": ("training.proximal-mu",),
    "fraction-train": ("sampling.fraction-train",),
    "fraction-evaluate": ("sampling.fraction-evaluate",),
    "min-train-nodes": ("sampling.min-train-nodes",),
    "min-evaluate-nodes": ("sampling.min-evaluate-nodes",),
    "min-available-nodes": ("sampling.min-available-nodes",),
    "round-timeout": ("sampling.round-timeout",),
    "straggler-timeout": ("sampling.straggler-timeout",),
    "round-retries": ("sampling.round-retries",),
    "reply-poll-interval": ("sampling.reply-poll-interval",),
    "server-learning-rate": ("server.learning-rate",),
    "server-momentum": ("server.momentum",),
    "beta1": ("server.beta1",),
    "beta2": ("server.beta2",),
    "tau": ("server.tau",),
    "trim-beta": ("robust.trim-beta",),
    "num-byzantine": ("robust.num-byzantine",),
    "num-selected": ("robust.num-selected",),
    "pre-aggregator": ("robust.pre-aggregator",),
    "bucket-size": ("robust.bucket-size",),
    "cclip-tau": ("robust.cclip-tau",),
    "fltrust-root-size": ("robust.fltrust-root-size",),
    "max-update-norm-ratio": ("robust.max-update-norm-ratio",),
    "max-update-bytes": ("robust.max-update-bytes",),
    "robust-weights": ("robust.weights",),
    "clip-norm": ("dp.clip-norm", "robust.clip-norm"),
    "attack": ("attack.kind",),
    "attack-fraction": ("attack.fraction",),
    "attack-strength": ("attack.strength",),
    "central-dp": ("dp.central",),
    "noise-multiplier": ("dp.noise-multiplier",),
    "adaptive-clipping": ("dp.adaptive-clipping",),
    "target-quantile": ("dp.target-quantile",),
    "clip-learning-rate": ("dp.clip-learning-rate",),
    "target-epsilon": ("dp.target-epsilon",),
    "target-delta": ("dp.target-delta",),
    "budget-mode": ("dp.budget-mode",),
    "accountant": ("dp.accountant",),
    "sampling-amplification": ("dp.sampling-amplification",),
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
    "topk-fraction": ("compression.topk-fraction",),
    "topk-scope": ("compression.topk-scope",),
    "topk-feedback": ("compression.topk-feedback",),
    "error-feedback": ("compression.error-feedback",),
    "quantization-chunk": ("compression.quantization-chunk",),
    "vertical-split": ("vertical.split",),
    "vertical-coverage": ("vertical.coverage",),
    "vertical-embedding-dim": ("vertical.embedding-dim",),
    "vertical-batch-size": ("vertical.batch-size",),
    "vertical-embedding-clip": ("vertical.embedding-clip",),
    "vertical-noise-multiplier": ("vertical.noise-multiplier",),
    "vertical-gradient-clip": ("vertical.gradient-clip",),
    "vertical-timeout": ("vertical.timeout",),
    "mlflow-tracking-uri": ("tracking.mlflow-uri",),
    "mlflow-experiment": ("tracking.experiment",),
    "mlflow-register-model": ("tracking.register-model",),
    "checkpoint-uri": ("output.checkpoint-uri",),
    "run-dir": ("output.run-dir",),
    "resume": ("output.resume",),
    "resume-from": ("output.resume-from",),
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
