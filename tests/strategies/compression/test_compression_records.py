"""Compression on real Flower records and messages: sizes on the wire, decoding on the
server, error-feedback state, and config-time refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from torch import nn

from fl_app.config import ConfigError, RunConfig
from fl_core.records import META_KEY
from strategies.compression import (
    CompressedUpdates,
    CompressionSpec,
    compress_train_content,
    decompress_content,
)
from strategies.compression.records import (
    COMPRESSED_KEY,
    ESTIMATE_KEY,
    ESTIMATE_STEP_KEY,
    PAYLOAD_KEY,
    RESIDUAL_KEY,
    EstimateStore,
)
from strategies.traffic import TrafficMeter, message_bytes, messages_bytes
from tasks.models import SmallCNN


class WithBatchNorm(nn.Module):
    """A model with a non-float buffer (``num_batches_tracked``, int64)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(30, 20)
        self.bn = nn.BatchNorm1d(20)


def _records(model: nn.Module, seed: int = 0, scale: float = 0.01):
    torch.manual_seed(seed)
    received = ArrayRecord(model.state_dict())
    trained = {}
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            value = value + scale * torch.randn_like(value)
        else:
            value = value + 3
        trained[key] = value
    return received, ArrayRecord(trained)


def _reply(arrays: ArrayRecord, node: int = 7, pid: int = 2) -> tuple[RecordDict, Message]:
    content = RecordDict(
        {
            "arrays": arrays,
            "metrics": MetricRecord({"train-loss": 0.3, "num-examples": 120}),
            META_KEY: ConfigRecord({"partition-id": pid}),
        }
    )
    instruction = Message(RecordDict(), dst_node_id=node, message_type="train")
    return content, instruction


def _compress(
    content, received, scheme, state=None, seed=0, feedback="ef21", server_step=None, **kw
):
    spec = CompressionSpec(scheme, **kw)
    return compress_train_content(
        content,
        received,
        spec,
        state=state,
        error_feedback=state is not None,
        generator=torch.Generator().manual_seed(seed),
        feedback=feedback,
        server_step=server_step,
    )


def test_message_bytes_counts_the_serialised_weights(flower_identity):
    _received, trained = _records(SmallCNN())
    content, instruction = _reply(trained)
    dense = message_bytes(Message(content, reply_to=instruction))
    n_params = sum(int(np.prod(a.shape)) for a in trained.values())
    assert 4 * n_params < dense < 4 * n_params + 5_000  # weights + Flower's object headers
    # the model bytes really are in it: twice the weights, about twice the bytes
    doubled = ArrayRecord({k: Array(np.concatenate([a.numpy()] * 2)) for k, a in trained.items()})
    content2, _ = _reply(doubled)
    assert message_bytes(Message(content2, reply_to=instruction)) - dense > 3.9 * n_params


def test_messages_bytes_deflates_a_shared_model_once_and_counts_it_per_message(
    flower_identity,
):
    """A round's train instructions share one global model: counted once per message (what
    Flower pushes per message), serialised once."""
    _received, trained = _records(SmallCNN())
    content = RecordDict({"arrays": trained, "config": ConfigRecord({"server-round": 1})})
    messages = [Message(content, dst_node_id=n, message_type="train") for n in (1, 2, 3)]
    own = [
        Message(
            RecordDict({"arrays": trained, "config": ConfigRecord({"server-round": n})}),
            dst_node_id=n, message_type="train",
        )
        for n in (1, 2, 3)
    ]  # fmt: skip
    assert messages_bytes(messages) == sum(message_bytes(m) for m in messages)
    assert messages_bytes(own) == sum(message_bytes(m) for m in own)
    assert messages_bytes([]) == 0


@pytest.mark.parametrize(
    "scheme,kwargs,max_ratio",
    [
        ("int8", {}, 0.27),
        ("int4", {}, 0.16),
        ("topk", {"topk_fraction": 0.01}, 0.05),
        ("topk+int8", {"topk_fraction": 0.01}, 0.05),
    ],
)
def test_compressed_reply_is_smaller_on_the_wire(flower_identity, scheme, kwargs, max_ratio):
    received, trained = _records(SmallCNN())
    content, instruction = _reply(trained)
    dense = message_bytes(Message(content, reply_to=instruction))
    packed = _compress(content, received, scheme, **kwargs)
    assert "arrays" not in packed and COMPRESSED_KEY in packed
    assert set(packed.metric_records) == {"metrics"}  # metrics and meta travel unchanged
    small = message_bytes(Message(packed, reply_to=instruction))
    assert small < max_ratio * dense, (scheme, small, dense)


def test_server_rebuilds_keys_shapes_dtypes_and_non_float_buffers(flower_identity):
    received, trained = _records(WithBatchNorm())
    content, _ = _reply(trained)
    # top-k with fraction 1 sends every float value: decoding is exact up to float rounding
    packed = _compress(content, received, "topk", topk_fraction=1.0)
    assert "raw/bn.num_batches_tracked" in packed[COMPRESSED_KEY]
    rebuilt = decompress_content(packed, received)["arrays"]
    assert list(rebuilt.keys()) == list(trained.keys())
    for key, arr in trained.items():
        assert rebuilt[key].dtype == arr.dtype and rebuilt[key].shape == arr.shape
        np.testing.assert_allclose(rebuilt[key].numpy(), arr.numpy(), atol=1e-6)
    assert rebuilt["bn.num_batches_tracked"].numpy() == trained["bn.num_batches_tracked"].numpy()


def test_error_feedback_residual_lives_in_node_state(flower_identity):
    received, trained = _records(SmallCNN(), scale=0.1)
    state = RecordDict()
    content, _ = _reply(trained)
    first = _compress(
        content, received, "topk", state=state, feedback="residual", topk_fraction=0.01
    )
    assert RESIDUAL_KEY in state.array_records
    residual = state[RESIDUAL_KEY]["residual"].numpy().copy()
    delta1 = decompress_content(first, received)["arrays"]
    flat = lambda rec: np.concatenate([rec[k].numpy().ravel() for k in rec])  # noqa: E731
    sent1 = flat(delta1) - flat(received)
    np.testing.assert_allclose(sent1 + residual, flat(trained) - flat(received), atol=1e-5)
    # next round, the same update again: what is sent now includes last round's leftovers
    second = _compress(
        content, received, "topk", state=state, feedback="residual", topk_fraction=0.01, seed=1
    )
    sent2 = flat(decompress_content(second, received)["arrays"]) - flat(received)
    total = flat(trained) - flat(received)
    np.testing.assert_allclose(
        sent1 + sent2 + state[RESIDUAL_KEY]["residual"].numpy(), 2 * total, atol=1e-5
    )
    assert not np.array_equal(np.nonzero(sent1)[0], np.nonzero(sent2)[0])


def _estimate(state: RecordDict) -> tuple[int, np.ndarray]:
    return int(state[ESTIMATE_STEP_KEY]["step"]), state[ESTIMATE_KEY]["estimate"].numpy()


def test_ef21_estimates_of_silo_and_server_stay_in_step(flower_identity):
    """EF21 on real records: the silo's estimate (its node state) and the server's copy
    are bit-identical every round; a lost reply makes both restart from zero instead of
    silently diverging; an update built on an estimate the server lacks is refused."""
    received = ArrayRecord(SmallCNN().state_dict())
    state, store, node = RecordDict(), EstimateStore(), 7
    flat = lambda rec: np.concatenate([rec[k].numpy().ravel() for k in rec])  # noqa: E731

    def round_trip(seed: int, deliver: bool = True):
        _, trained = _records(SmallCNN(), seed=seed, scale=0.1)
        content, _ = _reply(trained)
        step = store.step(node) if store else None  # what the wrapper's config carries
        packed = _compress(content, received, "topk", state=state, seed=seed, server_step=step)
        if deliver:
            rebuilt = decompress_content(packed, received, estimates=store, node_id=node)
            return packed, flat(rebuilt["arrays"]) - flat(received)
        return packed, None

    for rnd in (1, 2, 3):
        _, applied = round_trip(rnd)
        step, estimate = _estimate(state)
        assert step == store.step(node) == rnd
        assert np.array_equal(store.estimate(node).numpy(), estimate)  # bit-identical
        np.testing.assert_allclose(applied, estimate, atol=1e-6)  # the server applies it
        assert np.count_nonzero(estimate) <= rnd * 100  # ≤ k = ceil(1 % of 9 930) per round
    round_trip(4, deliver=False)  # the reply is lost: silo at step 4, server at 3
    assert _estimate(state)[0] == 4 and store.step(node) == 3
    _, applied = round_trip(5)  # server says 3, silo holds 4: both restart
    assert _estimate(state)[0] == store.step(node) == 1
    assert np.count_nonzero(applied) == 100  # one round's top-k only, from zero
    assert np.array_equal(store.estimate(node).numpy(), _estimate(state)[1])
    # an update built on step 1 when the server holds none for that node: refused
    with pytest.raises(ValueError, match="builds on estimate step 1, the server holds step 0"):
        decompress_content(
            _compress(_reply(received)[0], received, "topk", state=state, server_step=1),
            received,
            estimates=store,
            node_id=8,
        )


def test_ef21_estimates_spill_to_a_memory_mapped_file_bit_identically(tmp_path):
    """Past its RAM limit the server's estimate store moves to a memory-mapped, unlinked
    temporary file and keeps growing there; every estimate, step and refusal stays what
    the in-RAM store gives, and nothing is left in the spill directory."""
    # 39.7 kB per silo, rows allocated 16, 32, 64: the first 16 fit in 1 MiB of RAM, the
    # next growth spills (rows copied over), the one after grows the mapped file.
    size, nodes = 9_930, range(100, 140)
    in_ram = EstimateStore()
    spilled = EstimateStore(resident_limit=2**20, spill_dir=str(tmp_path))
    rng = torch.Generator().manual_seed(3)
    for rnd in range(3):
        for i, node in enumerate(nodes):
            sent = torch.randn(size, generator=rng)
            base = in_ram.step(node)
            assert spilled.step(node) == base
            assert torch.equal(in_ram.advance(node, base, sent), spilled.advance(node, base, sent))
            assert spilled.memory_mapped == (rnd > 0 or i >= 16)
    assert not in_ram.memory_mapped
    assert list(tmp_path.iterdir()) == []  # the spill file has no name
    for node in nodes:
        assert spilled.step(node) == 3
        assert torch.equal(spilled.estimate(node), in_ram.estimate(node))
    assert spilled.estimate(99) is None
    with pytest.raises(ValueError, match="builds on estimate step 2, the server holds step 3"):
        spilled.advance(100, 2, torch.zeros(size))
    # A checkpoint's state round-trips either way: spilled → RAM and RAM → spilled.
    to_spill = EstimateStore(resident_limit=2**20, spill_dir=str(tmp_path))
    for source, target in ((spilled, EstimateStore()), (in_ram, to_spill)):
        target.load_state_dict(source.state_dict())
        assert target.memory_mapped == (source is in_ram)
        for node in nodes:
            assert target.step(node) == 3
            assert torch.equal(target.estimate(node), in_ram.estimate(node))
        target.close()
    assert list(tmp_path.iterdir()) == []
    spilled.close()
    assert spilled.estimate(100) is None


def test_wrapper_decodes_and_drops_undecodable_and_meters_count_bytes(flower_identity):
    received, _ = _records(SmallCNN())
    replies, expected = [], []
    for pid in range(3):
        _, trained = _records(SmallCNN(), seed=10 + pid)
        content, instruction = _reply(trained, node=100 + pid, pid=pid)
        packed = _compress(content, received, "int8", seed=pid)
        expected.append(decompress_content(packed, received)["arrays"])
        replies.append(Message(packed, reply_to=instruction))
    # a corrupt payload: not a crash, a dropped reply
    _, trained = _records(SmallCNN(), seed=99)
    content, instruction = _reply(trained, node=200, pid=3)
    bad = _compress(content, received, "int8")
    bad[COMPRESSED_KEY][PAYLOAD_KEY] = Array(np.frombuffer(b"garbage!", np.uint8).copy())
    replies.append(Message(bad, reply_to=instruction))
    sizes = [message_bytes(m) for m in replies]

    dense_meter = TrafficMeter(
        FedAvg(), uploaded_key="bytes-uploaded-dense", downloaded_key=None, timed=False
    )
    decoder = CompressedUpdates(dense_meter)
    decoder.round.begin(1, "train", received)
    arrays, metrics = TrafficMeter(decoder).aggregate_train(1, replies)
    assert metrics["undecodable-updates"] == 1
    assert metrics["bytes-uploaded"] == sum(sizes)
    assert metrics["bytes-uploaded-dense"] > 3.5 * sum(sizes[:3])
    mean = {k: np.mean([e[k].numpy() for e in expected], axis=0) for k in received}
    for key in received:
        np.testing.assert_allclose(arrays[key].numpy(), mean[key], atol=1e-6)


def test_config_refuses_topk_with_robust_rules_and_allows_quantisation():
    with pytest.raises(ConfigError, match=r"'compression.method' = 'topk'.*krum"):
        RunConfig.from_flower({"compression.method": "topk", "strategy": "krum"})
    with pytest.raises(ConfigError, match="compression"):
        RunConfig.from_flower({"compression.method": "topk+int8", "strategy": "robust-median"})
    assert (
        RunConfig.from_flower({"compression.method": "int8", "strategy": "krum"}).compression.method
        == "int8"
    )
    cfg = RunConfig.from_flower({"compression.method": "topk", "strategy": "fedadam"})
    assert cfg.compression.topk_fraction == 0.01 and cfg.compression.error_feedback
    with pytest.raises(ConfigError, match=r"compression.topk-fraction"):
        RunConfig.from_flower({"compression.topk-fraction": 0.0})
    with pytest.raises(ConfigError, match="compression"):
        RunConfig.from_flower({"compression.method": "int2"})
