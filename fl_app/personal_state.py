"""A silo's personal state (its head, BatchNorm layers or Ditto model), kept on the silo.

During a Flower run the state lives in the node's ``context.state``; after every answered
training round it is also written, atomically (:func:`fl_app.silo_state.write_atomic`),
to ``<lineage>-p<partition-id>-personal.pt`` in the silo-state directory
(:func:`fl_app.silo_state.state_dir`), next to the silo's secret DP state. A resumed run
(same lineage, new Flower run, empty ``context.state``) reads it back.

Unlike the DP state, this state is not secret randomness: it is a deterministic function
of the seed, the partition and the global models received. To make a resumed run
bit-identical it is kept **per round**: a silo asked to train round r starts from its
state after the last round before r it trained in, and evaluates round r with its state
after the last round up to r. A server that crashed after the silos trained round r, but
before it checkpointed that round, replays round r from round r − 1's checkpoint, and the
silo answers exactly as the first time. The :data:`KEEP` newest states are kept; a replay
from further back is refused (the state it needs is gone) rather than answered wrongly.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from torch import nn

from fl_app.silo_state import check_lineage, silo_lineage, state_dir, write_atomic
from fl_core.seeding import derive_seed
from tasks.personalization import Local, PersonalState, get_method

__all__ = ["KEEP", "PersonalHistory", "SiloPersonalization", "load_personal", "save_personal"]

#: Personal states kept per silo (the newest rounds it trained in).
KEEP = 3
FORMAT = 1
#: context.state keys of the cached history.
_ARRAYS_KEY = "personal-state"
_META_KEY = "personal-state-meta"


@dataclass
class PersonalHistory:
    """One silo's personal states for one lineage, by the round that produced them."""

    lineage: str
    silo: str
    method: str
    rounds: dict[int, PersonalState] = field(default_factory=dict)
    #: The newest round whose state was dropped (0 = none dropped).
    dropped: int = 0

    def _newest(self, server_round: int, inclusive: bool) -> PersonalState | None:
        def counts(r: int) -> bool:
            return r < server_round or (inclusive and r == server_round)

        found = [r for r in self.rounds if counts(r)]
        # States are dropped oldest first: if none is left before the round but one was
        # dropped, the state this round needs is gone.
        if not found and self.dropped and counts(self.dropped):
            raise ValueError(
                f"silo {self.silo}: the personal state needed for round {server_round} was "
                f"dropped (only the {KEEP} newest are kept: rounds {sorted(self.rounds)}). "
                "Resume from a later checkpoint or start a new run."
            )
        return self.rounds[max(found)] if found else None

    def before(self, server_round: int) -> PersonalState | None:
        """The state to train round ``server_round`` from (``None``: none yet)."""
        return self._newest(server_round, inclusive=False)

    def at(self, server_round: int) -> PersonalState | None:
        """The state to evaluate round ``server_round`` with (``None``: none yet)."""
        return self._newest(server_round, inclusive=True)

    def record(self, server_round: int, state: PersonalState) -> None:
        """Keep ``state`` as the result of ``server_round`` (dropping the oldest)."""
        self.rounds[server_round] = state
        for old in sorted(self.rounds)[:-KEEP]:
            del self.rounds[old]
            self.dropped = max(self.dropped, old)


def _path(context: Context, lineage: str, silo: str) -> Path:
    return state_dir(context.node_config) / f"{check_lineage(lineage)}-{silo}-personal.pt"


def _to_context(context: Context, history: PersonalHistory) -> None:
    arrays = {f"{r}/{k}": v for r, state in history.rounds.items() for k, v in state.items()}
    context.state[_ARRAYS_KEY] = ArrayRecord(arrays)
    context.state[_META_KEY] = ConfigRecord(
        {"lineage": history.lineage, "silo": history.silo, "method": history.method,
         "dropped": history.dropped, "rounds": sorted(history.rounds)}
    )  # fmt: skip


def _from_context(context: Context) -> PersonalHistory | None:
    meta = context.state.config_records.get(_META_KEY)
    if meta is None:
        return None
    rounds: dict[int, PersonalState] = {int(r): {} for r in meta["rounds"]}
    for name, array in context.state.array_records[_ARRAYS_KEY].items():
        r, _, key = name.partition("/")
        rounds[int(r)][key] = torch.from_numpy(array.numpy().copy())
    return PersonalHistory(
        str(meta["lineage"]), str(meta["silo"]), str(meta["method"]), rounds, int(meta["dropped"])
    )


def _from_file(path: Path, lineage: str, silo: str, method: str) -> PersonalHistory:
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return PersonalHistory(lineage, silo, method)
    try:
        data: Mapping[str, Any] = torch.load(io.BytesIO(blob), weights_only=True)
        if data.get("format") != FORMAT or data.get("lineage") != lineage:
            raise ValueError(f"format {data.get('format')}, lineage {data.get('lineage')}")
        rounds = {int(r): dict(state) for r, state in data["rounds"].items()}
        return PersonalHistory(lineage, silo, str(data["method"]), rounds, int(data["dropped"]))
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ValueError(
            f"personal state file {path} is unreadable ({exc}); it holds this silo's personal "
            "model for the run. Start a new run (a new lineage) to begin from scratch."
        ) from None


def load_personal(context: Context, lineage: str, silo: str, method: str) -> PersonalHistory:
    """This silo's personal history for ``lineage``: from ``context.state`` if this Flower
    run has it, else from the silo's file (a resumed run), else empty. A history of another
    method is refused (the run config changed under the same lineage)."""
    history = _from_context(context)
    if history is None or history.lineage != lineage or history.silo != silo:
        history = _from_file(_path(context, lineage, silo), lineage, silo, method)
    if history.method != method:
        raise ValueError(
            f"silo {silo}: its personal state for this run was made by "
            f"personalization.method = '{history.method}', not '{method}'; start a new run"
        )
    _to_context(context, history)
    return history


def save_personal(context: Context, history: PersonalHistory) -> Path:
    """Keep ``history`` in ``context.state`` and write it to the silo's file (atomically,
    mode 0600); returns the file's path."""
    _to_context(context, history)
    buffer = io.BytesIO()
    torch.save(
        {"format": FORMAT, "lineage": history.lineage, "silo": history.silo,
         "method": history.method, "dropped": history.dropped, "rounds": history.rounds},
        buffer,
    )  # fmt: skip
    path = _path(context, history.lineage, history.silo)
    write_atomic(path, buffer.getvalue())
    return path


class SiloPersonalization:
    """The ClientApp's side of personalisation for one message: which state to start
    from, what to keep, which personal model to evaluate (the methods themselves are pure
    torch, :mod:`tasks.personalization`)."""

    def __init__(self, cfg, task, context: Context, pid: int, config: Mapping[str, Any]):
        self.method = get_method(cfg.personalization.method)
        self.cfg, self.task, self.pid = cfg, task, pid
        self.round = int(config.get("server-round", 0))
        self.history = None
        if self.method is not None and self.method.stateful:
            lineage = silo_lineage(config, context)
            self.history = load_personal(context, lineage, f"p{pid}", cfg.personalization.method)
        self.context = context
        self.received: dict[str, torch.Tensor] | None = None
        self.personal: PersonalState | None = None

    def _local(self, data, purpose: str, generator: torch.Generator | None = None) -> Local:
        """What the method trains with; batch order seeded by (seed, purpose, partition,
        round) unless ``generator`` is given."""
        if generator is None:
            seed = derive_seed(self.cfg.seed, purpose, self.pid, self.round)
            generator = torch.Generator().manual_seed(seed)
        return Local(self.task, data, self.cfg.training, self.cfg.personalization, generator)

    def before_train(self, model: nn.Module) -> None:
        """Remember the received global model, then put the silo's personal parts in."""
        self.received = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.personal = self.history.before(self.round) if self.history is not None else None
        self.method.prepare(model, self.personal)

    def train(self, model, data, *, proximal_mu: float, generator) -> dict[str, float]:
        """The silo's training for its reply, as the method does it."""
        return self.method.train(
            model, self._local(data, "train", generator), proximal_mu=proximal_mu
        )

    def after_train(self, model: nn.Module, data) -> None:
        """Keep the new personal state (in context.state and the silo's file) before the
        reply leaves."""
        new = self.method.update(model, self.received, self.personal, self._local(data, "personal"))
        if self.history is not None and new is not None:
            self.history.record(self.round, new)
            save_personal(self.context, self.history)

    def personal_model(self, model: nn.Module, data) -> nn.Module:
        """The silo's personal model for this round's evaluation (``model``, the received
        global one, is not changed)."""
        personal = self.history.at(self.round) if self.history is not None else None
        return self.method.personal_model(model, personal, self._local(data, "finetune"))
