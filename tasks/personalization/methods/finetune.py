"""Local fine-tuning: k epochs from the received global model, before evaluation."""

from __future__ import annotations

import copy

from tasks.personalization.base import PERSONALIZATION, PersonalMethod


@PERSONALIZATION.register("finetune", family="fine-tuning")
class FineTune(PersonalMethod):
    """Local fine-tuning (e.g. Wang et al., 2019): the silo's personal model is the global
    model it receives for evaluation, trained ``personalization.finetune-epochs`` more on
    its training split. Kept for nothing and sent to no one: every round starts again from
    the global model."""

    stateful = False
    local_dp_unsupported = (
        "the fine-tuned model is trained on the silo's data outside DP-SGD and its metrics "
        "are reported every round, outside the DP guarantee"
    )

    def personal_model(self, model, personal, local):
        mine = copy.deepcopy(model)
        local.train(mine, local.section.finetune_epochs)
        return mine
