"""One round state per wrapper chain (strategies.round_state).

The app's chain (``fl_app.federation.wrap_strategy``) keeps the round's global model,
instructions sent and roster once: every layer reads the same :class:`RoundState`, and
only the outermost layer (ReliableRounds) records into it. A layer built alone owns a
private state and records its rounds itself.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedAvg

from fl_app.client_app import app as client_app
from fl_app.config import RunConfig
from fl_app.federation import central_dp, wrap_strategy
from fl_app.inprocess import InProcessGrid
from fl_app.messages import train_reply
from fl_app.reliability import ReliableRounds
from fl_app.sinks import Sinks
from strategies import build_strategy
from strategies.privacy.central import DPFedAvg
from strategies.robust import coordinate_median
from strategies.robust.simulation import SimulatedAttack, byzantine_partitions
from strategies.robust.strategy import RobustAggregation
from strategies.round_state import RoundState, RoundStateUser
from strategies.secagg import SecureAggregation
from strategies.wrappers import SeededSampling, ValidatedUpdates
from tasks import get_task

NODES = (1001, 1002, 1003, 1004)
ROSTER = {node: pid for pid, node in enumerate(NODES)}
BASE = {"sampling": {"min-train-nodes": 2, "min-available-nodes": 4}}

CHAINS = {
    "cclip + sign-flip": (
        {"strategy": "cclip", "attack": {"kind": "sign-flip"}},
        {SimulatedAttack, RobustAggregation},
    ),
    "central DP": (
        {
            "dp": {"central": True, "reproducible-noise": True},
            "robust": {"max-update-norm-ratio": 0.0},
        },
        {DPFedAvg},
    ),
    "secure aggregation": (
        {"secagg": {"enabled": True}, "robust": {"max-update-norm-ratio": 0.0}},
        {SecureAggregation},
    ),
}


@pytest.fixture(autouse=True)
def _identity(flower_identity):
    yield


def _layers(strategy) -> list:
    out = []
    while strategy is not None:
        out.append(strategy)
        strategy = vars(strategy).get("inner")
    return out


def _chain(cfg: RunConfig):
    task = get_task(cfg.task)
    model = task.build_model()
    strategy = central_dp(build_strategy(cfg), cfg, len(ROSTER), model)
    chain = wrap_strategy(strategy, cfg, dict(ROSTER), Sinks())
    return chain, ArrayRecord(model.state_dict())


def _numpy(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in arrays.items()}


@pytest.mark.parametrize("name", list(CHAINS))
def test_every_layer_of_the_app_chain_reads_one_round_state(name):
    overrides, expected_layers = CHAINS[name]
    cfg = RunConfig(**BASE, **overrides)
    chain, global_model = _chain(cfg)
    layers = _layers(chain)
    users = [layer for layer in layers if isinstance(layer, RoundStateUser)]
    assert expected_layers <= {type(layer) for layer in users}
    assert {ValidatedUpdates, SeededSampling, ReliableRounds} <= {type(x) for x in users}
    state = chain.round
    assert all(layer.round is state for layer in users), [
        type(layer).__name__ for layer in users if layer.round is not state
    ]
    # One writer: the outermost layer.
    assert [type(layer) for layer in users if layer.records_round] == [ReliableRounds]
    assert state.roster == ROSTER and state.partition_of(1003) == 2

    grid = InProcessGrid(client_app, cfg.to_flower(), len(NODES))
    sent = list(chain.configure_train(1, global_model, ConfigRecord(), grid))
    assert (state.server_round, state.phase) == (1, "train")
    assert state.arrays is global_model  # the global model, held once, not copied
    assert state.sent_in(1, "train") == sent and sorted(state.node_ids) == list(NODES)
    assert state.sent_in(1, "evaluate") == [] and state.sent_in(2, "train") == []


def test_inner_layers_read_the_global_model_the_outermost_layer_recorded():
    """Attack simulation and cclip never record the round: they craft and aggregate
    against the global model ReliableRounds recorded."""
    cfg = RunConfig(**BASE, strategy="cclip", attack={"kind": "sign-flip"})
    chain, global_model = _chain(cfg)
    grid = InProcessGrid(client_app, cfg.to_flower(), len(NODES))
    chain.configure_train(1, global_model, ConfigRecord(), grid)
    base = _numpy(global_model)
    models = {
        node: {k: v + 0.01 * (pid + 1) if v.dtype.kind == "f" else v for k, v in base.items()}
        for node, pid in ROSTER.items()
    }
    replies = [train_reply(pid, node, models[node]) for node, pid in ROSTER.items()]
    arrays, metrics = chain.aggregate_train(1, replies)
    assert arrays is not None and metrics["rejected-updates"] == 0
    byzantine = byzantine_partitions(len(ROSTER), cfg.attack.fraction, cfg.seed)
    assert byzantine
    robust = next(x for x in _layers(chain) if isinstance(x, RobustAggregation))
    assert robust._previous is not None  # cclip's own state: its previous aggregate
    key = next(k for k, v in base.items() if v.dtype.kind == "f")
    for msg in replies:
        pid = int(msg.content["meta"]["partition-id"])
        delta = msg.content["arrays"][key].numpy() - base[key]
        if pid in byzantine:  # every honest delta is > 0: sign-flipped around the global
            assert (delta < 0).all()
        else:
            np.testing.assert_allclose(delta, 0.01 * (pid + 1), rtol=1e-3)


def test_a_layer_built_alone_records_its_own_rounds():
    global_model = ArrayRecord({"w": Array(np.zeros(3, np.float32))})
    grid = InProcessGrid(client_app, RunConfig().to_flower(), 3)
    seen = []
    alone = ValidatedUpdates(FedAvg(), max_norm_ratio=0.0, on_reject=lambda r, x: seen.append(x))
    assert alone.records_round and alone.round.arrays is None
    alone.configure_train(1, global_model, ConfigRecord(), grid)
    assert alone.round.arrays is global_model and alone.round.server_round == 1
    replies = [train_reply(i, 1001 + i, {"w": np.full(3, 1.0 + i, np.float32)}) for i in range(2)]
    replies.append(train_reply(2, 1003, {"w": np.zeros(4, np.float32)}))  # wrong shape
    arrays, metrics = alone.aggregate_train(1, replies)
    assert metrics["rejected-updates"] == 1 and [r.partition_id for r in seen] == [2]
    np.testing.assert_allclose(arrays["w"].numpy(), 1.5)

    robust = RobustAggregation(coordinate_median)
    robust.configure_train(1, global_model, ConfigRecord(), grid)
    assert robust.round.arrays is global_model
    replies = [train_reply(i, 1001 + i, {"w": np.full(3, v, np.float32)})
               for i, v in enumerate([1.0, 2.0, 50.0])]  # fmt: skip
    arrays, _ = robust.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["w"].numpy(), 2.0)


def test_a_roster_is_given_once():
    with pytest.raises(ValueError, match="roster"):
        SeededSampling(FedAvg(), 0, ROSTER, round_state=RoundState(ROSTER))
    alone = SeededSampling(FedAvg(), 0, ROSTER)
    assert alone.round.partition_of(1002) == 1 and alone.round.partition_of(9) is None
