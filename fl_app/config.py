"""Typed, validated run configuration.

Flower hands the ServerApp and every ClientApp a flat ``run_config`` dict built from
``[tool.flwr.app.config]`` in pyproject.toml plus ``flwr run --run-config`` overrides.
:class:`RunConfig` is the one typed view of it: every key has a type, a default and a
doc; an unknown key, a wrong type or an out-of-range value raises :class:`ConfigError`
before round 1, naming the key and what is allowed.

``python -m fl_app.config`` prints the reference table (the README's table is this
output).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import sys
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fl_core.errors import ConfigError


def _kebab(name: str) -> str:
    return name.replace("_", "-")


class RunConfig(BaseModel):
    """Every run-config key of the app (keys are written kebab-case in TOML)."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=True,
        allow_inf_nan=False,
        alias_generator=_kebab,
        populate_by_name=True,
    )

    # What to learn and how.
    task: str = Field("digits", description="Task to run (see Tasks).")
    data_source: str = Field(
        "",
        description='"" = offline bundled/generated data; otherwise a Hugging Face dataset id, '
        "a local path, or an Azure Blob URL, as the task documents.",
    )
    strategy: str = Field("fedavg", description="Aggregation strategy (see Strategies).")
    num_server_rounds: int = Field(5, ge=1, le=10_000, description="Federated rounds.")
    seed: int = Field(
        42,
        ge=0,
        le=2**31 - 1,
        description="Seeds partitions, client sampling, model init and local training.",
    )
    # Data split.
    partitioner: Literal["iid", "dirichlet"] = Field(
        "iid", description="How the training pool is split across silos."
    )
    dirichlet_alpha: float = Field(
        0.5, gt=0, le=1e6, description="Label-skew concentration (smaller = more skewed)."
    )
    test_fraction: float = Field(
        0.2, gt=0, lt=0.9, description="Share of the pooled data held out for the server."
    )
    val_fraction: float = Field(
        0.1, ge=0, lt=0.9, description="Share of each silo's partition kept for its evaluation."
    )
    # Client-side training.
    local_epochs: int = Field(3, ge=1, le=1000, description="Local epochs per round.")
    batch_size: int = Field(16, ge=1, le=1_000_000, description="Local mini-batch size.")
    learning_rate: float = Field(0.05, gt=0, le=10, description="Local SGD learning rate.")
    momentum: float = Field(0.9, ge=0, lt=1, description="Local SGD momentum.")
    # Sampling.
    fraction_train: float = Field(
        1.0, gt=0, le=1, description="Fraction of connected silos sampled for training."
    )
    fraction_evaluate: float = Field(
        1.0, ge=0, le=1, description="Fraction sampled for client-side evaluation (0 = off)."
    )
    min_train_nodes: int = Field(2, ge=1, description="Minimum silos per training round.")
    min_evaluate_nodes: int = Field(2, ge=0, description="Minimum silos per evaluation round.")
    min_available_nodes: int = Field(2, ge=1, description="Silos to wait for before round 1.")
    round_timeout: float = Field(
        3600.0, gt=0, description="Seconds to wait for replies in a round."
    )
    straggler_timeout: float = Field(
        0.0,
        ge=0,
        description="Once a round has `min-train-nodes` (`min-evaluate-nodes`) replies, wait "
        "at most this many more seconds for the rest (0 = wait for all or `round-timeout`).",
    )
    round_retries: int = Field(
        0,
        ge=0,
        le=100,
        description="Times a training round with fewer than `min-train-nodes` replies is "
        "re-sent to the missing silos before the run stops, naming them.",
    )
    # Strategy parameters (each strategy reads the ones it needs).
    proximal_mu: float = Field(0.01, ge=0, description="FedProx proximal term weight μ.")
    server_learning_rate: float = Field(
        0.1, gt=0, description="Server step size η (FedAdam, FedYogi, FedAdagrad, FedAvgM)."
    )
    server_momentum: float = Field(0.9, ge=0, lt=1, description="Server momentum (FedAvgM).")
    beta1: float = Field(0.9, ge=0, lt=1, description="First-moment decay (FedAdam, FedYogi).")
    beta2: float = Field(0.99, ge=0, lt=1, description="Second-moment decay (FedAdam, FedYogi).")
    tau: float = Field(1e-3, gt=0, description="Adaptivity ε (FedAdam, FedYogi, FedAdagrad).")
    trim_beta: float = Field(
        0.2, ge=0, lt=0.5, description="Fraction trimmed at each end (FedTrimmedAvg)."
    )
    num_byzantine: int = Field(
        0, ge=0, description="Assumed Byzantine silos f (Krum, MultiKrum, Bulyan)."
    )
    num_selected: int = Field(0, ge=0, description="Updates MultiKrum averages (0 = n - f).")
    pre_aggregator: Literal["none", "nnm", "bucketing", "nnm+bucketing"] = Field(
        "none", description="Pre-aggregation in front of our robust rules (NNM, bucketing)."
    )
    bucket_size: int = Field(2, ge=1, description="Updates averaged per bucket (bucketing).")
    robust_weights: Literal["uniform", "capped"] = Field(
        "uniform",
        description="Weights of the robust rules. A silo's `num-examples` is a claim a "
        "Byzantine silo can inflate (one silo claiming 1 000× the examples *is* a weighted "
        "median), so `uniform` (as Flower's FedMedian, Krum, Bulyan) ignores it; `capped` "
        "weights by the claims, each capped at the cohort's median claim.",
    )
    cclip_tau: float = Field(
        0.0,
        ge=0,
        description="Clipping radius τ of centred clipping; 0 = per round, the median distance "
        "of the updates from the previous aggregate (adapts to the update scale).",
    )
    clip_norm: float = Field(1.0, gt=0, description="Update-norm bound C (norm-clip; DP clipping).")
    fltrust_root_size: int = Field(
        100, ge=1, description="Rows of the server's root data set (FLTrust)."
    )
    max_update_norm_ratio: float = Field(
        10.0,
        ge=0,
        description="Reject an update whose norm exceeds this × the cohort median (0 = off).",
    )
    max_update_bytes: int = Field(
        0,
        ge=0,
        description="Reject a reply whose payload exceeds this many bytes (0 = twice the "
        "global model's size + 1 MiB).",
    )
    # Attack simulation (a threat-model tool: simulated Byzantine silos).
    attack: Literal[
        "none",
        "sign-flip",
        "gaussian",
        "scaling",
        "label-flip",
        "alie",
        "ipm",
        "weight-inflation",
        "min-max",
        "min-sum",
        "rop",
        "mimic",
    ] = Field("none", description="Simulated Byzantine behaviour of `attack-fraction` silos.")
    attack_fraction: float = Field(
        0.2, ge=0, lt=0.5, description="Fraction of silos that are Byzantine when attacking."
    )
    attack_strength: float = Field(
        0.0,
        description="Attack parameter (0 = its default): scaling factor 10 (negative flips "
        "the direction), noise std 1, IPM ε 0.1, ALIE z from n and f, weight-inflation's "
        "factor on the claimed `num-examples` 1000, min-max/min-sum's first γ 10, ROP's "
        "perturbation norm 1, Mimic's warm-up rounds 1.",
    )
    # Differential privacy (strategies/privacy).
    central_dp: bool = Field(
        False, description="Client-level DP-FedAvg: clip deltas to `clip-norm`, add noise."
    )
    noise_multiplier: float = Field(
        1.0, ge=0, description="Central DP noise σ (noise std = σ·C on the sum)."
    )
    adaptive_clipping: bool = Field(
        False, description="Adapt `clip-norm` towards `target-quantile` (Andrew et al., 2021)."
    )
    target_quantile: float = Field(
        0.5, ge=0, le=1, description="Quantile of update norms adaptive clipping aims for."
    )
    clip_learning_rate: float = Field(0.2, gt=0, description="Adaptive clipping step size.")
    target_epsilon: float = Field(
        0.0, ge=0, description="Central DP budget ε (0 = no budget; ε is still reported)."
    )
    target_delta: float = Field(
        1e-5, gt=0, lt=1, description="δ of (ε, δ)-DP, central and local; must be < 1/records."
    )
    budget_mode: Literal["stop", "calibrate"] = Field(
        "stop",
        description="With a budget: stop before the round that would exceed it, or calibrate "
        "σ up front for the planned rounds.",
    )
    accountant: Literal["rdp", "prv"] = Field(
        "rdp", description="Privacy accountant (Opacus' RDP or PRV)."
    )
    sampling_amplification: bool = Field(
        False,
        description="Central DP only: secret Poisson sampling of silos (each taken with "
        "probability `fraction-train` from OS entropy; noised sum divided by "
        "`fraction-train` × silos), accounted as the Poisson-subsampled Gaussian. Needs "
        "`min-train-nodes` = 1 (the cohort varies, may be empty). false = every round "
        "accounted at rate 1.",
    )
    local_dp: bool = Field(False, description="DP-SGD inside every silo with Opacus.")
    local_noise_multiplier: float = Field(1.0, ge=0, description="Local DP-SGD noise σ.")
    max_grad_norm: float = Field(1.0, gt=0, description="Local DP-SGD per-example clip norm.")
    local_target_epsilon: float = Field(
        0.0,
        ge=0,
        description="Per-silo ε budget over all rounds (0 = use `local-noise-multiplier`).",
    )
    dp_reproducible_noise: bool = Field(
        False,
        description="Research only: seed DP noise and DP sampling (central, local, vertical) "
        "from `seed`, so reruns are identical. Anyone holding the config can then regenerate "
        "and subtract the noise: the run is marked `dp-private = false` and its ε protects "
        "nothing.",
    )
    # Secure aggregation (strategies/secagg): the server sees only the sum of updates.
    secure_aggregation: bool = Field(
        False,
        description="Mask every update (SecAgg: pairwise + self masks, Shamir-shared keys); "
        "FedAvg-family strategies only, see docs/security.md.",
    )
    secagg_threshold: float = Field(
        0.6,
        gt=0.5,
        le=1,
        description="Shamir threshold as a fraction of the round's silos (t = ⌈fraction·n⌉, "
        "≥ 2); up to n − t silos may drop out after the key exchange.",
    )
    secagg_clip_range: float = Field(
        4.0, gt=0, le=1e6, description="Update values are clipped to ±this before quantisation."
    )
    secagg_quantization_bits: int = Field(
        24, ge=8, le=32, description="Fixed-point bits per update value (ring Z_2^64)."
    )
    # Communication (strategies/compression).
    compression: Literal["none", "int8", "int4", "topk", "topk+int8"] = Field(
        "none",
        description="Compress each silo's model delta before upload: stochastic 8/4-bit "
        "quantisation, top-k sparsification, or both.",
    )
    topk_fraction: float = Field(
        0.01, gt=0, le=1, description="Share of the float values top-k keeps per reply."
    )
    topk_scope: Literal["model", "tensor"] = Field(
        "model",
        description="Top-k picks the largest values of the whole update (model) or of "
        "each tensor (tensor).",
    )
    topk_feedback: Literal["ef21", "residual"] = Field(
        "ef21",
        description="Error feedback of top-k: EF21 (silo and server track each silo's "
        "update; top-k of the change is sent) or the classic residual.",
    )
    error_feedback: bool = Field(
        True,
        description="Keep what compression dropped in the silo's state and add it to its "
        "next update.",
    )
    quantization_chunk: int = Field(
        1024, ge=0, description="Values sharing one quantisation scale (0 = one per tensor)."
    )
    # Vertical federated learning (fl_app/vertical): parties hold columns, not rows.
    mode: Literal["horizontal", "vertical"] = Field(
        "horizontal",
        description="horizontal = silos hold rows (FedAvg & co.); vertical = split learning: "
        "the ServerApp is the label party, each SuperNode a feature party (see Vertical).",
    )
    vertical_split: str = Field(
        "",
        description="Columns per party, label party first, parties separated by ';' and "
        'columns by "," ("" = the task default 3-party split).',
    )
    vertical_coverage: float = Field(
        0.9,
        gt=0,
        le=1,
        description="With a shared data source: share of the records each party holds "
        "(seeded, independent per party), so ids overlap partially.",
    )
    vertical_embedding_dim: int = Field(
        8, ge=1, le=1024, description="Width of each party's embedding."
    )
    vertical_batch_size: int = Field(
        512, ge=1, le=1_000_000, description="Aligned records per split-learning step."
    )
    vertical_embedding_clip: float = Field(
        0.0, ge=0, description="Clip each record's embedding to this L2 norm (0 = off)."
    )
    vertical_noise_multiplier: float = Field(
        0.0,
        ge=0,
        description="Gaussian noise σ·`vertical-embedding-clip` on sent embeddings (not "
        "formal DP: unaccounted).",
    )
    vertical_gradient_clip: float = Field(
        0.0, ge=0, description="Clip each record's embedding gradient to this L2 norm (0 = off)."
    )
    vertical_timeout: float = Field(
        120.0, gt=0, description="Seconds to wait for every party's reply to one vertical step."
    )
    reply_poll_interval: float = Field(
        0.0,
        ge=0,
        le=10,
        description="0 = Flower's own reply loop (one pull, then 3 s sleeps); > 0 = poll "
        "after this many seconds, growing ×1.5 to 0.5 s (see docs/efficiency.md: slower "
        "for small, fast rounds on a busy machine).",
    )
    # Tracking.
    mlflow_tracking_uri: str = Field(
        "",
        description='MLflow tracking URI (file path, sqlite:, http(s)://, azureml://); "" = off.',
    )
    mlflow_experiment: str = Field("fedsilo", description="MLflow experiment name.")
    mlflow_register_model: str = Field(
        "", description='Register the final model under this name ("" = do not register).'
    )
    # Outputs.
    checkpoint_uri: str = Field(
        "",
        description="Where the global model is checkpointed after every round: a directory or "
        'a Blob URL (…/<container>/<prefix>); "" = <run directory>/checkpoints.',
    )
    run_dir: str = Field(
        "outputs", description="Directory under which each run writes model, metrics, config."
    )
    resume: bool = Field(
        False,
        description="Continue from the last complete round of the newest run with the same "
        "settings under `run-dir` (or `resume-from`); starts afresh when there is none.",
    )
    resume_from: str = Field(
        "",
        description="Run directory, checkpoint directory, checkpoint file or Blob URL to "
        "resume from (needs `resume` = true).",
    )

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        from tasks import available_tasks

        return _one_of("task", value, available_tasks())

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        from strategies import available_strategies

        return _one_of("strategy", value, available_strategies())

    # ------------------------------------------------------------------ building
    @classmethod
    def from_flower(cls, run_config: Mapping[str, Any]) -> RunConfig:
        """Validate Flower's flat ``context.run_config``; raise :class:`ConfigError`."""
        return _from_items(tuple(sorted(run_config.items())))

    def to_flower(self) -> dict[str, Any]:
        """The config as Flower's flat kebab-case dict (all keys, resolved)."""
        return self.model_dump(by_alias=True)

    def fingerprint(self) -> str:
        """Short sha256 of the resolved config (identifies a run's settings)."""
        blob = json.dumps(self.to_flower(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def dp_mechanisms(self) -> list[str]:
        """Run-config keys of the differential-privacy noise this run adds (``[]`` = none)."""
        if self.mode == "vertical":
            return ["vertical-noise-multiplier"] if self.vertical_noise_multiplier > 0 else []
        switches = {"central-dp": self.central_dp, "local-dp": self.local_dp}
        return [key for key, on in switches.items() if on]

    def check_cross_field(self) -> RunConfig:
        """Checks that involve several keys; returns self."""
        mean_based = {"fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "fedavgm"}
        if self.central_dp and self.strategy not in mean_based:
            raise ConfigError(
                f"run-config 'central-dp' = true is unsound with strategy '{self.strategy}': "
                "robust rules select or order individual updates, so one silo can move the "
                "result by more than clip-norm / n. Use one of: " + ", ".join(sorted(mean_based))
            )
        if self.central_dp and self.max_update_norm_ratio > 0:
            raise ConfigError(
                "run-config 'central-dp' = true needs 'max-update-norm-ratio' = 0.0: the norm "
                "filter compares each update with the others, which breaks the DP guarantee "
                "(clipping already bounds every update)."
            )
        if self.dp_reproducible_noise and not self.dp_mechanisms():
            raise ConfigError(
                "run-config 'dp-reproducible-noise' = true seeds DP noise from `seed`, but no "
                "DP mechanism is on ('central-dp', 'local-dp', or in mode 'vertical' "
                "'vertical-noise-multiplier' > 0). Drop 'dp-reproducible-noise' (it also "
                "marks the run not private), or turn a DP mechanism on."
            )
        if self.sampling_amplification and (not self.central_dp or self.mode == "vertical"):
            raise ConfigError(
                "run-config 'sampling-amplification' = true is secret Poisson sampling of "
                "silos for central DP; it needs 'central-dp' = true (in mode 'horizontal'). "
                "Set central-dp = true or drop sampling-amplification."
            )
        if self.sampling_amplification and self.min_train_nodes != 1:
            raise ConfigError(
                f"run-config 'sampling-amplification' = true needs 'min-train-nodes' = 1 "
                f"(got {self.min_train_nodes}): Poisson sampling takes each silo "
                "independently with probability 'fraction-train', so a round's cohort "
                "varies and may be empty; a larger quorum would abort such rounds or force a "
                "fixed cohort size, which the Poisson accounting does not cover. Set "
                "min-train-nodes = 1."
            )
        if self.local_dp:
            from tasks import TASKS

            reason = TASKS[self.task].local_dp_unsupported
            if reason:
                raise ConfigError(
                    f"run-config 'local-dp' = true is not available for task '{self.task}': "
                    f"{reason}. Use 'central-dp' = true (DP-FedAvg: the server clips and "
                    "noises the aggregate) or set 'local-dp' = false."
                )
        if self.local_dp and self.strategy == "fedprox" and self.proximal_mu > 0:
            raise ConfigError(
                "run-config 'local-dp' = true ignores FedProx's proximal term (Opacus clips "
                "per-example gradients of the loss only); set 'proximal-mu' = 0.0 or use "
                "another strategy."
            )
        if self.attack != "none" and self.attack_fraction == 0:
            raise ConfigError(
                f"run-config 'attack' = '{self.attack}' needs 'attack-fraction' > 0 "
                "(e.g. 0.2), or set attack = 'none'."
            )
        if self.resume_from and not self.resume:
            raise ConfigError(
                f"run-config 'resume-from' = {self.resume_from!r} needs 'resume' = true; "
                "set resume=true or drop resume-from."
            )
        if self.compression.startswith("topk") and self.strategy not in mean_based:
            raise ConfigError(
                f"run-config 'compression' = '{self.compression}' is unsound with strategy "
                f"'{self.strategy}': top-k updates are sparse with different supports, so "
                "coordinate-wise medians/trimming and Krum-style distances judge the "
                "sparsity pattern, not the update. Use 'int8'/'int4' or one of: "
                + ", ".join(sorted(mean_based))
            )
        if self.vertical_noise_multiplier > 0 and self.vertical_embedding_clip == 0:
            raise ConfigError(
                "run-config 'vertical-noise-multiplier' > 0 needs 'vertical-embedding-clip' > 0 "
                "(noise std is σ × clip); set e.g. vertical-embedding-clip = 1.0"
            )
        if self.mode == "vertical":
            from tasks.vertical import VERTICAL_TASKS

            if self.task not in VERTICAL_TASKS:
                raise ConfigError(
                    f"run-config 'mode' = 'vertical' does not support task '{self.task}'; "
                    f"use task = one of {', '.join(VERTICAL_TASKS)}"
                )
        if self.secure_aggregation:
            from strategies.secagg.checks import check_secure_aggregation

            check_secure_aggregation(self, mean_based)
        if self.min_train_nodes > self.min_available_nodes:
            raise ConfigError(
                f"run-config 'min-train-nodes' = {self.min_train_nodes} exceeds "
                f"'min-available-nodes' = {self.min_available_nodes}; raise "
                "'min-available-nodes' or lower 'min-train-nodes'."
            )
        return self


def _one_of(key: str, value: str, allowed: list[str]) -> str:
    if value in allowed:
        return value
    close = difflib.get_close_matches(value, allowed, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ValueError(
        f"'{value}' is not a valid {key}.{hint} Choose one of: {', '.join(allowed)}. "
        f"Example: flwr run . --run-config \"{key}='{allowed[0]}'\""
    )


@lru_cache(maxsize=32)
def _from_items(items: tuple[tuple[str, Any], ...]) -> RunConfig:
    raw = dict(items)
    try:
        return RunConfig.model_validate(raw).check_cross_field()
    except ValidationError as exc:
        raise ConfigError(_explain(exc, raw)) from None


def _explain(exc: ValidationError, raw: Mapping[str, Any]) -> str:
    """Turn pydantic's errors into one line per bad key, naming key, value and fix."""
    fields = RunConfig.model_fields
    known = [_kebab(name) for name in fields]
    lines = []
    for err in exc.errors():
        key = str(err["loc"][0]) if err["loc"] else "?"
        value = raw.get(key)
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            lines.append(f"unknown run-config key '{key}'.{hint} Valid keys: {', '.join(known)}.")
            continue
        field = fields.get(key.replace("-", "_"))
        expected = _type_name(field.annotation) if field else "?"
        default = f"; default {field.default!r}" if field else ""
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"run-config '{key}' = {value!r}: {msg} (expected {expected}{default}).")
    return "Invalid run config:\n  - " + "\n  - ".join(lines)


def _type_name(annotation: Any) -> str:
    if get_origin(annotation) is Literal:
        return "one of " + " | ".join(repr(a) for a in get_args(annotation))
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def reference_table() -> str:
    """Markdown table of every key: name, type, default, allowed values, doc."""
    rows = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for name, field in RunConfig.model_fields.items():
        bounds = []
        for meta in field.metadata:
            for attr, sym in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
                if getattr(meta, attr, None) is not None:
                    bounds.append(f"{sym} {getattr(meta, attr)}")
        allowed = ", ".join(bounds)
        if name == "task":
            from tasks import available_tasks

            allowed = ", ".join(available_tasks())
        elif name == "strategy":
            from strategies import available_strategies

            allowed = ", ".join(available_strategies())
        rows.append(
            f"| `{_kebab(name)}` | {_type_name(field.annotation)} | `{field.default!r}` "
            f"| {allowed} | {field.description} |"
        )
    return "\n".join(rows)


README_START = "<!-- config-table:start (generated: python -m fl_app.config --update-readme) -->"
README_END = "<!-- config-table:end -->"


def update_readme(path: str = "README.md") -> None:
    """Rewrite the config table between the README's markers."""
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{path} lacks the config-table markers; restore them first")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    # Build everything first, then replace atomically: a failure (or a concurrent
    # writer) never leaves a truncated README behind.
    new_text = f"{head}{README_START}\n{reference_table()}\n{README_END}{tail}"
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(new_text)
    os.replace(tmp, path)


if __name__ == "__main__":  # pragma: no cover - exercised through the README
    if "--update-readme" in sys.argv:
        update_readme()
    else:
        sys.stdout.write(reference_table() + "\n")
