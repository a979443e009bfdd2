"""Config-time refusal of combinations that need individual updates (see docs/security.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fl_core.errors import ConfigError
from strategies.robust.simulation import model_attacks

if TYPE_CHECKING:
    from fl_app.config import RunConfig


def check_secure_aggregation(cfg: RunConfig, mean_based: set[str]) -> None:
    """Raise ``ConfigError`` if ``cfg`` combines secure aggregation with something that must
    see (or changes the shape of) each silo's update."""

    def refuse(message: str) -> None:
        raise ConfigError(f"run-config 'secure-aggregation' = true {message}")

    if cfg.strategy not in mean_based:
        refuse(
            f"cannot run strategy '{cfg.strategy}': robust rules (median, trimming, Krum, "
            "FLTrust, clipping, …) need every individual update, which secure aggregation "
            "hides from the server. Use one of: " + ", ".join(sorted(mean_based))
        )
    if cfg.max_update_norm_ratio > 0:
        refuse(
            "needs 'max-update-norm-ratio' = 0.0: the norm filter compares individual "
            "updates, which the server no longer sees (structural checks still run on the "
            "aggregate)."
        )
    if cfg.central_dp:
        refuse(
            "cannot be combined with 'central-dp' = true: DP-FedAvg clips each update on "
            "the server. Use 'local-dp' = true (DP-SGD in each silo) with secure aggregation."
        )
    if cfg.attack in model_attacks():  # simulated on the server, on individual updates
        refuse(
            f"cannot simulate attack '{cfg.attack}': it rewrites individual updates on the "
            "server. Use attack = 'label-flip' (data poisoning in the silo) or 'none'."
        )
    if cfg.compression != "none":
        refuse(
            f"cannot be combined with 'compression' = '{cfg.compression}': masked updates "
            "are uniformly random ring elements and do not compress; set compression = 'none'."
        )
    if cfg.mode != "horizontal":
        refuse("applies to horizontal federations only; set mode = 'horizontal'.")
    if cfg.min_train_nodes < 2:
        refuse("needs 'min-train-nodes' ≥ 2: the sum of one silo's update is that update.")
