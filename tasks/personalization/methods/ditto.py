"""Ditto (Li et al., 2021): a personal model pulled towards the global one by λ."""

from __future__ import annotations

import copy

from tasks.personalization.base import PERSONALIZATION, PersonalMethod, kept, overwrite


@PERSONALIZATION.register("ditto", family="personal-model")
class Ditto(PersonalMethod):
    """Ditto (Li et al., 2021): the silo trains the global model as usual for its reply,
    and its own model v for ``personalization.personal-epochs`` on
    F_k(v) + λ/2·‖v − w‖², w the global model it received (λ =
    ``personalization.ditto-lambda``; v starts as the first global model the silo
    receives). v never leaves the silo."""

    local_dp_unsupported = (
        "the personal model is trained on the silo's data outside DP-SGD and its metrics "
        "are reported every round, outside the DP guarantee"
    )

    def update(self, model, received, personal, local):
        mine = copy.deepcopy(model)
        mine.load_state_dict(received)
        overwrite(mine, personal)
        anchor = [received[name].detach().clone() for name, _ in mine.named_parameters()]
        section = local.section
        local.train(
            mine, section.personal_epochs, proximal_mu=section.ditto_lambda, proximal_anchor=anchor
        )
        return kept(mine, list(mine.state_dict()))

    def personal_model(self, model, personal, local):
        mine = copy.deepcopy(model)
        overwrite(mine, personal)  # none yet (never trained): the global model
        return mine
