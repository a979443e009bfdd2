"""Config-time refusal of combinations that need individual updates (see docs/security.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from fl_core.config import Section
from fl_core.errors import ConfigError
from strategies.registry import STRATEGIES
from strategies.robust.simulation import model_attacks

if TYPE_CHECKING:
    from strategies.config import StrategyConfig


class SecAggSection(Section):
    """Secure aggregation: the server sees only the sum of the silos' updates."""

    enabled: bool = Field(
        False,
        description="Mask every update (SecAgg: pairwise + self masks, Shamir-shared keys); "
        "FedAvg-family strategies only, see docs/security.md.",
    )
    threshold: float = Field(
        0.6,
        gt=0.5,
        le=1,
        description="Shamir threshold as a fraction of the round's silos (t = ⌈fraction·n⌉, "
        "≥ 2); up to n − t silos may drop out after the key exchange.",
    )
    clip_range: float = Field(
        4.0, gt=0, le=1e6, description="Update values are clipped to ±this before quantisation."
    )
    quantization_bits: int = Field(
        24, ge=8, le=32, description="Fixed-point bits per update value (ring Z_2^64)."
    )


def check_secure_aggregation(cfg: StrategyConfig) -> None:
    """Raise ``ConfigError`` if ``cfg`` combines secure aggregation with something that must
    see (or changes the shape of) each silo's update."""

    def refuse(message: str) -> None:
        raise ConfigError(f"run-config 'secagg.enabled' = true {message}")

    if not STRATEGIES.get(cfg.strategy).supports("secagg"):
        refuse(
            f"cannot run strategy '{cfg.strategy}': robust rules (median, trimming, Krum, "
            "FLTrust, clipping, …) and q-FedAvg need every individual update, which secure "
            "aggregation hides from the server. Use one of: "
            + ", ".join(STRATEGIES.names(compatible="secagg"))
        )
    if cfg.robust.max_update_norm_ratio > 0:
        refuse(
            "needs 'robust.max-update-norm-ratio' = 0.0: the norm filter compares individual "
            "updates, which the server no longer sees (structural checks still run on the "
            "aggregate)."
        )
    if cfg.dp.central:
        refuse(
            "cannot be combined with 'dp.central' = true: DP-FedAvg clips each update on "
            "the server. Use 'dp.local' = true (DP-SGD in each silo) with secure aggregation."
        )
    if cfg.attack.kind in model_attacks():  # simulated on the server, on individual updates
        refuse(
            f"cannot simulate attack '{cfg.attack.kind}': it rewrites individual updates on the "
            "server. Use attack.kind = 'label-flip' (data poisoning in the silo) or 'none'."
        )
    if cfg.compression.method != "none":
        refuse(
            f"cannot be combined with 'compression.method' = '{cfg.compression.method}': masked "
            "updates are uniformly random ring elements and do not compress; set "
            "compression.method = 'none'."
        )
    if cfg.mode != "horizontal":
        refuse("applies to horizontal federations only; set mode = 'horizontal'.")
    if cfg.sampling.min_train_nodes < 2:
        refuse("needs 'sampling.min-train-nodes' ≥ 2: the sum of one silo's update is that update.")
