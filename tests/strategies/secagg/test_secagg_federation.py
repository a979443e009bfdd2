"""Secure aggregation through the whole app on the in-process grid (the same ServerApp
and ClientApp code as ``flwr run``): the server sees masked vectors only, the aggregate
equals the plain weighted mean within quantisation error, also when a silo drops out
after masking, and bad combinations are refused before round 1."""

import numpy as np
import pytest
import torch
from flwr.app import Error, Message

from fl_app.audit import read_audit_log
from fl_app.client_app import app as client_app
from fl_app.config import ConfigError, RunConfig
from fl_app.federation import run_federation
from fl_app.inprocess import InProcessGrid
from fl_app.reliability import QuorumError
from strategies.secagg import protocol as P
from strategies.secagg.client import MASKED_KEY

NODES = 4
FIRST = 1001


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


class RecordingGrid(InProcessGrid):
    """Records what the server receives in train replies; ``drop_after_masking`` nodes
    train and mask, then their reply is lost (the server gets an error). ``lose_once``
    = ``(node, "before" | "after")`` loses that node's first train message before it is
    delivered, or its first reply after it masked; later attempts go through."""

    def __init__(self, *args, drop_after_masking=(), lose_once=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.drop = set(drop_after_masking)
        self.lose_once = lose_once
        self.sent: dict[int, Message] = {}
        self.received: dict[int, Message] = {}
        self.train_replies: dict[int, list[Message]] = {}

    def _deliver(self, msg):
        node = msg.metadata.dst_node_id
        lost = (
            msg.metadata.message_type == "train"
            and self.lose_once is not None
            and (self.lose_once[0] == node)
        )
        if lost and self.lose_once[1] == "before":
            self.lose_once = None
            return Message(Error(1, "instruction lost before delivery"), reply_to=msg)
        reply = super()._deliver(msg)
        if msg.metadata.message_type != "train":
            return reply
        self.sent[node] = msg
        self.train_replies.setdefault(node, []).append(reply)
        if node in self.drop or lost:
            self.lose_once = None
            return Message(Error(1, "silo lost after sending nothing"), reply_to=msg)
        self.received[node] = reply
        return reply


def _run(tmp_path, secure, drop=(), lose_once=None, **overrides):
    cfg = RunConfig.from_flower(
        {
            **RunConfig().to_flower(),
            "task": "breast-cancer",
            "output.run-dir": str(tmp_path),
            "num-server-rounds": 1,
            "training.local-epochs": 1,
            "sampling.fraction-evaluate": 0.0,
            "robust.max-update-norm-ratio": 0.0,
            "secagg.enabled": secure,
            **overrides,
        }
    )
    grid = RecordingGrid(
        client_app, cfg.to_flower(), NODES, drop_after_masking=drop, lose_once=lose_once
    )
    result, _ = run_federation(grid, cfg)
    return cfg, grid, result


def _flat(record) -> np.ndarray:
    return np.concatenate([a.numpy().astype(np.float64).ravel() for a in record.values()])


def _weight(reply) -> int:
    return int(reply.content["metrics"]["num-examples"])


def _check_aggregate(plain_grid, secure_result, survivors, cfg):
    """The secure aggregate vs the example-weighted mean of the plain replies of
    ``survivors`` (identical seeded training in both runs)."""
    weights = [_weight(plain_grid.received[n]) for n in survivors]
    expected = sum(
        w * _flat(plain_grid.received[n].content["arrays"])
        for n, w in zip(survivors, weights, strict=True)
    ) / sum(weights)
    got = _flat(secure_result.arrays)
    bound = P.quantization_error_bound(cfg.secagg.clip_range, cfg.secagg.quantization_bits)
    float32_ulp = np.spacing(np.abs(expected).astype(np.float32)).astype(np.float64)
    err = np.abs(got - expected)
    assert (err <= bound + 2 * float32_ulp).all(), err.max()
    return err.max()


def test_server_sees_masked_values_and_the_aggregate_matches_plain_fedavg(tmp_path):
    _, plain, plain_result = _run(tmp_path / "plain", secure=False)
    cfg, secure, secure_result = _run(tmp_path / "secure", secure=True)
    nodes = list(range(FIRST, FIRST + NODES))

    # What the server received from each silo: one uint64 ring vector, no model arrays.
    for node in nodes:
        reply = secure.received[node]
        assert list(reply.content.array_records) == [MASKED_KEY]
        masked = reply.content[MASKED_KEY][MASKED_KEY].numpy()
        assert masked.dtype == np.uint64
        true_delta = _flat(plain.received[node].content["arrays"]) - _flat(
            plain.sent[node].content["arrays"]
        )
        # Read as if it were that silo's quantised update, it is noise.
        as_update = P.dequantize_mean(
            masked, _weight(reply), cfg.secagg.clip_range, cfg.secagg.quantization_bits
        )
        assert abs(np.corrcoef(as_update, true_delta)[0, 1]) < 0.2
        assert np.abs(as_update - true_delta).mean() > 100 * np.abs(true_delta).mean()
        # Unmasked would have been within quantisation error of the true update.
        q, _ = P.quantize(true_delta, cfg.secagg.clip_range, cfg.secagg.quantization_bits)
        assert not np.array_equal(q * np.uint64(_weight(reply)), masked)

    err = _check_aggregate(plain, secure_result, nodes, cfg)
    plain_err = np.abs(_flat(plain_result.arrays) - _flat(secure_result.arrays)).max()
    assert plain_err <= err + 1e-6  # plain FedAvg's own result agrees too
    metrics = secure_result.train_metrics_clientapp[1]
    assert metrics["secagg-survivors"] == NODES and metrics["secagg-dropouts"] == 0
    assert metrics["num-examples"] == sum(_weight(plain.received[n]) for n in nodes)


def test_a_dropout_after_masking_is_recovered_from_shares(tmp_path):
    dropped = FIRST + 2
    _, plain, plain_result = _run(tmp_path / "plain", secure=False, drop=[dropped])
    cfg, secure, secure_result = _run(tmp_path / "secure", secure=True, drop=[dropped])
    survivors = [n for n in range(FIRST, FIRST + NODES) if n != dropped]
    # The dropped silo did train and mask (its reply was lost), so the survivors' masked
    # inputs contain masks shared with it, removed via its Shamir-shared key.
    assert dropped in secure.sent
    _check_aggregate(plain, secure_result, survivors, cfg)
    metrics = secure_result.train_metrics_clientapp[1]
    assert metrics["secagg-survivors"] == 3 and metrics["secagg-dropouts"] == 1
    assert np.abs(_flat(plain_result.arrays) - _flat(secure_result.arrays)).max() < 1e-5


def test_fewer_survivors_than_the_threshold_leave_the_model_unchanged(tmp_path):
    # 4 silos, threshold ⌈0.6·4⌉ = 3; two lost after masking: nothing can be unmasked.
    _, grid, result = _run(tmp_path, secure=True, drop=[FIRST, FIRST + 1])
    initial = _flat(grid.sent[FIRST].content["arrays"])
    assert np.array_equal(_flat(result.arrays), initial)
    assert result.train_metrics_clientapp[1]["secagg-survivors"] == 2


RETRY = {
    "sampling.round-retries": 1,
    "sampling.min-train-nodes": NODES,
    "sampling.min-available-nodes": NODES,
}


def test_a_retried_round_reaches_a_silo_that_never_got_the_instruction(tmp_path):
    _, plain, _ = _run(tmp_path / "plain", secure=False)
    cfg, secure, result = _run(tmp_path / "secure", True, lose_once=(FIRST + 1, "before"),
                               **RETRY)  # fmt: skip
    assert len(secure.train_replies[FIRST + 1]) == 1  # masked once, on the retry
    _check_aggregate(plain, result, list(range(FIRST, FIRST + NODES)), cfg)
    (entry,) = [e for e in read_audit_log(next(tmp_path.glob("secure/*/audit.jsonl")))
                if e["event"] == "train"]  # fmt: skip
    assert entry["retries"] == 1 and entry["outcome"] == "aggregated"


def test_a_retried_round_cannot_make_a_silo_mask_twice(tmp_path):
    """ReliableRounds re-sends the round's train message (same session) to a silo whose
    masked reply was lost: the silo refuses instead of masking a second update under the
    same masks, and the short round ends as any quorum failure does."""
    victim = FIRST + 2
    with pytest.raises(QuorumError, match=r"sampling.min-train-nodes = 4"):
        _run(tmp_path, True, lose_once=(victim, "after"), **RETRY)
    (entry,) = [e for e in read_audit_log(next(tmp_path.glob("*/audit.jsonl")))
                if e["event"] == "train"]  # fmt: skip
    assert entry["retries"] == 1 and entry["outcome"] == "quorum-not-reached"
    (error,) = entry["errors"]
    assert error["node-id"] == victim and "already masked an update for round 1" in error["reason"]


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"strategy": "krum"}, "robust rules"),
        ({"strategy": "fltrust"}, "robust rules"),
        ({"robust.max-update-norm-ratio": 10.0}, "robust.max-update-norm-ratio"),
        ({"dp.central": True}, "dp.central"),
        ({"attack.kind": "alie"}, "attack 'alie'"),
        ({"attack.kind": "weight-inflation"}, "attack 'weight-inflation'"),
        ({"compression.method": "int8"}, "compression.method"),
        ({"sampling.min-train-nodes": 1}, "sampling.min-train-nodes"),
    ],
)
def test_combinations_needing_individual_updates_are_refused(overrides, match):
    raw = {"secagg.enabled": True, "robust.max-update-norm-ratio": 0.0, **overrides}
    with pytest.raises(ConfigError, match=match):
        RunConfig.from_flower(raw)


def test_sound_combinations_are_accepted():
    for extra in ({"strategy": "fedadam"}, {"dp.local": True}, {"attack.kind": "label-flip"}):
        cfg = RunConfig.from_flower(
            {"secagg.enabled": True, "robust.max-update-norm-ratio": 0.0, **extra}
        )
        assert cfg.secagg.enabled
