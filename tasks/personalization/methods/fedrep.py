"""FedRep (Collins et al., 2021): a personal head trained first, then the shared body."""

from __future__ import annotations

from tasks.personalization.base import PERSONALIZATION, head_keys
from tasks.personalization.methods.fedper import FedPer


@PERSONALIZATION.register("fedrep", family="kept-locally")
class FedRep(FedPer):
    """FedRep (Collins et al., 2021): each round the silo trains its personal head for
    ``personalization.head-epochs`` with the body frozen, then the body for
    ``training.local-epochs`` with the head frozen."""

    local_dp_unsupported = (
        "FedRep trains the head in epochs of its own, outside DP-SGD, and the reply carries "
        "the head as trained; use 'fedper' (one DP-SGD training of the whole model)"
    )

    def train(self, model, local, *, proximal_mu):
        head = set(head_keys(model, local.section.head))
        params = dict(model.named_parameters())
        phases = (
            (head, local.section.head_epochs),
            (set(params) - head, local.training.local_epochs),
        )
        try:
            for trained, epochs in phases:
                for name, p in params.items():
                    p.requires_grad_(name in trained)
                metrics = local.train(model, epochs, proximal_mu=proximal_mu)
        finally:
            for p in params.values():
                p.requires_grad_(True)
        return metrics  # the body's phase (the last)
