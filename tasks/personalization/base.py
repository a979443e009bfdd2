"""Personalisation: a personal model per silo next to the global one, as pure torch.

A method (:data:`PERSONALIZATION`, one file each in :mod:`tasks.personalization.methods`,
or a ``fedsilo.personalization`` entry point) says three things, on torch modules only:

* :meth:`PersonalMethod.prepare`: what the silo puts into the received global model
  before it trains it for its reply (FedPer/FedRep: its personal head; FedBN: its
  BatchNorm layers);
* :meth:`PersonalMethod.update`: the silo's new personal state after that training
  (FedPer/FedRep/FedBN: the kept parameters as trained; Ditto: its personal model trained
  with a λ-proximal term towards the received global model; fine-tuning: none);
* :meth:`PersonalMethod.personal_model`: the model the silo evaluates as its own.

The state is a plain ``{state-dict key: tensor}``; the ClientApp keeps it on the silo
(``fl_app.personal_state``), per run lineage, so a resumed run continues from it. The
server aggregates every reply as usual: what it receives is what DP, secure aggregation
and compression act on.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from pydantic import Field, field_validator
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from fl_core.config import Section, one_of
from fl_core.registry import Registry
from tasks.base import ArrayDataset, Task, TrainingSection

#: Prefix of a personal model's metrics in a silo's evaluate reply (``personal-accuracy``).
PERSONAL_PREFIX = "personal-"

PersonalState = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Local:
    """What a method trains with on the silo: the task, the silo's training data, the
    run's ``training`` and ``personalization`` sections, and the seeded generator of this
    step (batch order)."""

    task: Task
    data: ArrayDataset
    training: TrainingSection
    section: PersonalizationSection
    generator: torch.Generator | None = None

    def train(self, model: nn.Module, epochs: int, **kwargs) -> dict[str, float]:
        """``epochs`` of the task's training of ``model`` on the silo's data (``kwargs``:
        the proximal term)."""
        training = self.training.model_copy(update={"local_epochs": epochs})
        return self.task.train(model, self.data, training, generator=self.generator, **kwargs)


class PersonalMethod:
    """A personalisation method (see module doc). Subclasses override what differs."""

    #: Why ``dp.local`` cannot be combined with this method (``None`` = it can).
    local_dp_unsupported: str | None = None
    #: Whether the method keeps a state between rounds (fine-tuning does not).
    stateful: bool = True

    def check(self, model: nn.Module, section: PersonalizationSection) -> None:
        """Raise ``ValueError`` (naming the run-config key and the fix) if the method
        cannot personalise ``model``."""

    def prepare(self, model: nn.Module, personal: PersonalState | None) -> None:
        """Put the silo's personal parts into the received global ``model`` (in place)
        before it trains for its reply."""

    def train(self, model: nn.Module, local: Local, *, proximal_mu: float) -> dict[str, float]:
        """The silo's training for its reply (by default the task's own)."""
        return local.task.train(
            model, local.data, local.training, proximal_mu=proximal_mu, generator=local.generator
        )

    def update(
        self,
        model: nn.Module,
        received: Mapping[str, torch.Tensor],
        personal: PersonalState | None,
        local: Local,
    ) -> PersonalState | None:
        """The new personal state, from the trained ``model`` (the reply), the
        ``received`` global state and the previous ``personal`` one."""
        return None

    def personal_model(
        self, model: nn.Module, personal: PersonalState | None, local: Local
    ) -> nn.Module:
        """The silo's personal model, given the received global ``model`` (not changed)
        and the silo's training data ``local.data``."""
        personalised = copy.deepcopy(model)
        self.prepare(personalised, personal)
        return personalised


#: Method name → :class:`PersonalMethod` subclass ("none" is not registered: no method).
PERSONALIZATION: Registry[type[PersonalMethod]] = Registry(
    "personalization method",
    group="fedsilo.personalization",
    builtins=("tasks.personalization.methods",),
    sort=True,
)


def _epochs(description: str):
    """A ``Field`` for a number of epochs (1 by default, 1–1000)."""
    return Field(1, ge=1, le=1000, description=description)


class PersonalizationSection(Section):
    """A personal model per silo next to the global one (FedPer, FedRep, FedBN, Ditto,
    local fine-tuning); each silo evaluates both every round (docs/personalization.md)."""

    method: str = Field(
        "none",
        description="The silos' personal models: none, or a method (each silo also evaluates "
        "its personal model; docs/personalization.md).",
    )
    head: str = Field(
        "",
        description="FedPer/FedRep: comma-separated state-dict name prefixes of the personal "
        'head (e.g. "head" or "net.4"); "" = the model\'s last Linear layer.',
    )
    head_epochs: int = _epochs(
        "FedRep: epochs on the head (body frozen) before the body's training.local-epochs "
        "(head frozen)."
    )
    finetune_epochs: int = _epochs(
        "finetune: local epochs from the received global model before evaluation (the "
        "result is not sent)."
    )
    ditto_lambda: float = Field(
        0.1,
        ge=0,
        le=1e6,
        description="Ditto: weight λ of the proximal term λ/2·‖v − w‖² pulling the personal "
        "model v towards the global w.",
    )
    personal_epochs: int = _epochs("Ditto: epochs of the personal model per round the silo trains.")

    @field_validator("method")
    @classmethod
    def _known(cls, value: str) -> str:
        return one_of("personalization.method", value, ["none", *PERSONALIZATION])


def get_method(name: str) -> PersonalMethod | None:
    """The registered method ``name`` (an instance; methods hold no state), or ``None``
    for ``"none"``."""
    return None if name == "none" else PERSONALIZATION[name]()


# ------------------------------------------------------------------ which parameters
def head_keys(model: nn.Module, prefixes: str = "") -> list[str]:
    """State-dict keys of the personal head: those starting with one of the
    comma-separated ``prefixes`` (a whole name component: ``head`` matches ``head.weight``,
    not ``header.weight``), or, with none, the keys of the model's last ``nn.Linear``."""
    keys = list(model.state_dict())
    wanted = [p.strip().rstrip(".") for p in prefixes.split(",") if p.strip()]
    if wanted:
        chosen = [k for k in keys if any(k == p or k.startswith(p + ".") for p in wanted)]
        if not chosen:
            raise ValueError(
                f"run-config 'personalization.head' = {prefixes!r} names none of the model's "
                f"parameters; use prefixes of: {', '.join(keys)}"
            )
    else:
        linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not linear:
            raise ValueError(
                "the model has no nn.Linear layer to keep as the personal head; name the "
                "head's parameters in run-config 'personalization.head'"
            )
        chosen = [k for k in keys if k.rpartition(".")[0] == linear[-1]]
    if len(chosen) == len(keys):
        raise ValueError(
            "run-config 'personalization.head' selects every parameter of the model, so "
            "nothing would be shared; name only the head's parameters"
        )
    return chosen


def batch_norm_keys(model: nn.Module) -> list[str]:
    """State-dict keys of every BatchNorm layer (affine weight and bias, running mean and
    variance, batch count); empty if the model has none."""
    norms = {name for name, m in model.named_modules() if isinstance(m, _BatchNorm)}
    return [k for k in model.state_dict() if k.rpartition(".")[0] in norms]


def kept(model: nn.Module, keys: list[str]) -> PersonalState:
    """Copies of ``model``'s tensors under ``keys``."""
    state = model.state_dict()
    return {k: state[k].detach().clone() for k in keys}


def overwrite(model: nn.Module, personal: Mapping[str, torch.Tensor] | None) -> None:
    """Copy ``personal``'s tensors into ``model`` (same keys, shapes and dtypes)."""
    if not personal:
        return
    state = model.state_dict()
    with torch.no_grad():
        for key, value in personal.items():
            state[key].copy_(value)
