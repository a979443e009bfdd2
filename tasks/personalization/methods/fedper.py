"""FedPer (Arivazhagan et al., 2019): a shared body, a personal head kept on the silo."""

from __future__ import annotations

from tasks.personalization.base import (
    PERSONALIZATION,
    PersonalMethod,
    head_keys,
    kept,
    overwrite,
)


class KeptLocally(PersonalMethod):
    """Some of the model's tensors stay on the silo: before training, the silo puts its own
    into the received global model; after training it keeps them as trained. The reply
    still carries the whole model, so aggregation, DP, secure aggregation and compression
    are unchanged; the global model's copy of those tensors is the mean of the silos'
    personal ones and only a starting point for a silo that has none yet."""

    def keys(self, model, section) -> list[str]:
        raise NotImplementedError

    def check(self, model, section) -> None:
        self.keys(model, section)

    def prepare(self, model, personal) -> None:
        overwrite(model, personal)

    def update(self, model, received, personal, local):
        return kept(model, self.keys(model, local.section))


@PERSONALIZATION.register("fedper", family="kept-locally")
class FedPer(KeptLocally):
    """FedPer (Arivazhagan et al., 2019): the head (``personalization.head``, by default
    the last Linear layer) is the silo's own; the body is trained with it as usual."""

    def keys(self, model, section) -> list[str]:
        return head_keys(model, section.head)
