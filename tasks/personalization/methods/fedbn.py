"""FedBN (Li et al., 2021): BatchNorm statistics and affine parameters stay local."""

from __future__ import annotations

from tasks.personalization.base import PERSONALIZATION, batch_norm_keys
from tasks.personalization.methods.fedper import KeptLocally


@PERSONALIZATION.register("fedbn", family="kept-locally")
class FedBN(KeptLocally):
    """FedBN (Li et al., 2021): every BatchNorm layer's running mean and variance, batch
    count, weight and bias are the silo's own; the rest is shared. Needs a model with
    BatchNorm (tasks ``digits-bn``, ``pneumonia-bn``)."""

    local_dp_unsupported = "BatchNorm has no per-example gradients (DP-SGD)"

    def keys(self, model, section) -> list[str]:
        keys = batch_norm_keys(model)
        if not keys:
            raise ValueError(
                "FedBN needs a model with BatchNorm layers and this task's model has none. "
                "Use a task with '-bn' (e.g. task = 'digits-bn' or 'pneumonia-bn') or "
                "another method"
            )
        return keys
