"""One round's state, kept once for a whole wrapper chain.

The app's wrapper chain (``fl_app.federation.wrap_strategy``) has several layers that
need the same facts about the current round: the global model the replies are updates
of (validation, attack simulation, decoding compressed updates, secure aggregation,
central DP, robust rules), the roster ``{node id: partition id}`` (seeded sampling,
quorum and audit) and the instructions sent (quorum, retries, audit). They all read ONE
:class:`RoundState`. Only the chain's outermost layer (``fl_app.reliability.
ReliableRounds``) records each round into it, before handing the round inwards.

A layer built alone (a test, a benchmark, a researcher's own chain) owns a private
:class:`RoundState` and records each round itself (:class:`RoundStateUser`), so it works
standalone as before.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from flwr.app import ArrayRecord, Message


class RoundState:
    """The current round of a run: its number and phase, the global model sent in it,
    the instructions sent, and the run's roster.

    Attributes
    ----------
    roster : dict[int, int]
        ``{node_id: partition_id}`` from the roll call (empty when unknown).
    server_round : int or None
        The round being run (``None`` before the first).
    phase : {"train", "evaluate"} or None
        The phase being run.
    arrays : ArrayRecord or None
        The global model sent in this phase of the round: what train replies are
        updates of.
    messages : list[Message]
        The instructions sent in this phase, as the recording layer handed them on.
    """

    def __init__(self, roster: Mapping[int, int] | None = None) -> None:
        self.roster: dict[int, int] = dict(roster or {})
        self.server_round: int | None = None
        self.phase: str | None = None
        self.arrays: ArrayRecord | None = None
        self.messages: list[Message] = []

    def begin(self, server_round: int, phase: str, arrays: ArrayRecord) -> None:
        """Start ``phase`` of ``server_round`` with global model ``arrays``."""
        self.server_round, self.phase, self.arrays = server_round, phase, arrays
        self.messages = []

    def sent(self, messages: Iterable[Message]) -> list[Message]:
        """Record (and return, as a list) the instructions of the current phase."""
        self.messages = list(messages)
        return self.messages

    def sent_in(self, server_round: int, phase: str) -> list[Message]:
        """The instructions sent in ``phase`` of ``server_round`` (``[]`` if that is not
        the current phase)."""
        return self.messages if (self.server_round, self.phase) == (server_round, phase) else []

    @property
    def node_ids(self) -> list[int]:
        """The nodes the current phase's instructions went to."""
        return [m.metadata.dst_node_id for m in self.messages]

    def partition_of(self, node_id: int, default: int | None = None) -> int | None:
        """The partition id of ``node_id`` (``default`` if it is not on the roster)."""
        return self.roster.get(node_id, default)


class RoundStateUser:
    """A strategy layer that reads the round's state from ``self.round``.

    Given a shared :class:`RoundState` (``round_state=``), the layer only reads it: the
    chain's outermost layer records the rounds. Given none, it owns a private one and
    records each round itself (:meth:`begin_round`), so it also works alone.
    """

    round: RoundState
    records_round: bool

    def init_round_state(
        self,
        round_state: RoundState | None = None,
        *,
        roster: Mapping[int, int] | None = None,
        records: bool | None = None,
    ) -> None:
        """Use ``round_state`` (shared) or a private one with ``roster``; ``records``
        (default: whether the state is private) says whether this layer records rounds."""
        if round_state is not None and roster:
            raise ValueError(
                "pass the roster either to the shared round_state or to this layer, not both"
            )
        self.round = round_state if round_state is not None else RoundState(roster)
        self.records_round = round_state is None if records is None else records

    def use_round_state(self, round_state: RoundState) -> None:
        """Read ``round_state`` from now on (recorded by an outer layer)."""
        self.round = round_state
        self.records_round = False

    def begin_round(self, server_round: int, phase: str, arrays: ArrayRecord) -> None:
        """Record the round's start, if this layer is the one that records."""
        if self.records_round:
            self.round.begin(server_round, phase, arrays)


def share_round_state(strategy: object, round_state: RoundState) -> None:
    """Hand ``round_state`` to every :class:`RoundStateUser` of an already built chain
    (``strategy`` and its ``inner`` layers, inwards): for the strategy (and central DP)
    built before the run's roster and state existed."""
    layer: object | None = strategy
    while layer is not None:
        if isinstance(layer, RoundStateUser):
            layer.use_round_state(round_state)
        layer = vars(layer).get("inner")
