"""What the strategies read from the run config, as a structural type.

The run config is composed in :mod:`fl_app.config` from the sections each unit declares;
strategies sit below the app and never import it. They annotate the config they receive
with :class:`StrategyConfig`: the top-level keys and the sections of this layer (and two keys
of the tasks' ``training`` section, for FedProx and the FedOpt family's client learning rate).
``fl_app.config.RunConfig`` satisfies it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from strategies.compression.codecs import CompressionSection
    from strategies.contribution.config import ContributionSection
    from strategies.flower_builtin import ServerSection
    from strategies.privacy.config import DPSection
    from strategies.robust.section import RobustSection
    from strategies.robust.simulation import AttackSection
    from strategies.secagg.checks import SecAggSection
    from strategies.vertical.split import VerticalSection
    from strategies.wrappers import SamplingSection


class TrainingKeys(Protocol):
    """The keys of the tasks' ``training`` section a strategy reads (strategies and tasks
    are independent layers, so the section's class is not imported here)."""

    learning_rate: float
    proximal_mu: float


class StrategyConfig(Protocol):
    """The part of the run config a strategy factory or a strategy check reads."""

    task: str
    strategy: str
    mode: str
    seed: int
    training: TrainingKeys
    sampling: SamplingSection
    server: ServerSection
    robust: RobustSection
    attack: AttackSection
    dp: DPSection
    secagg: SecAggSection
    compression: CompressionSection
    contribution: ContributionSection
    vertical: VerticalSection
