"""fl_app.transport: every multi-array ArrayRecord travels as one packed Array, and both
ends restore the exact Arrays (keys, order, dtype, shape, stype, bytes)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from fl_app.client_app import app as client_app
from fl_app.config import RunConfig
from fl_app.federation import run_federation
from fl_app.inprocess import InProcessGrid
from fl_app.messages import offline_identity
from fl_app.transport import (
    PACKED_KEY,
    PACKED_STYPE,
    PackingGrid,
    pack_content,
    packing_mod,
    unpack_content,
)


@pytest.fixture(autouse=True)
def _identity():
    offline_identity(1)  # Messages built outside a run need a run id, as InProcessGrid sets


def _model() -> ArrayRecord:
    g = np.random.default_rng(0)
    return ArrayRecord(
        {
            "conv.weight": Array(g.standard_normal((4, 1, 3, 3)).astype(np.float32)),
            "conv.bias": Array(g.standard_normal(4).astype(np.float32)),
            "bn.num_batches_tracked": Array(np.array(7, dtype=np.int64)),  # 0-d
            "empty": Array(np.zeros((0, 3), dtype=np.float64)),
            "codes": Array(g.integers(0, 255, 37).astype(np.uint8)),  # a compressed payload
            "fc.weight": Array(torch.randn(3, 5)),  # from a torch tensor
        }
    )


def _fingerprint(content: RecordDict) -> list:
    out = []
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            out.append(
                (name, [(k, a.dtype, tuple(a.shape), a.stype, a.data) for k, a in record.items()])
            )
        else:
            out.append((name, type(record).__name__, dict(record)))
    return out


def test_round_trip_restores_every_array_exactly_in_order():
    content = RecordDict(
        {
            "arrays": _model(),
            "config": ConfigRecord({"lr": 0.1, "note": "x"}),
            "metrics": MetricRecord({"num-examples": 12}),
            "single": ArrayRecord({"only": Array(np.arange(3, dtype=np.float32))}),
        }
    )
    packed = pack_content(content)
    assert PACKED_KEY in packed
    (array,) = packed["arrays"].values()
    assert array.stype == PACKED_STYPE
    assert len(array.data) == sum(len(a.data) for a in content["arrays"].values())
    assert packed["single"] is content["single"]  # one Array: nothing to gain
    restored = unpack_content(packed)
    assert _fingerprint(restored) == _fingerprint(content)
    assert list(restored.keys()) == list(content.keys())
    np.testing.assert_array_equal(
        restored["arrays"]["conv.weight"].numpy(), content["arrays"]["conv.weight"].numpy()
    )


def test_content_without_multi_array_records_is_left_alone():
    content = RecordDict({"config": ConfigRecord({"a": 1})})
    assert pack_content(content) is content
    assert unpack_content(content) is content


def test_packing_cuts_the_objects_a_message_is_made_of():
    content = RecordDict({"arrays": _model(), "config": ConfigRecord({"lr": 0.1})})
    plain = Message(content, dst_node_id=1, message_type="train")
    packed = Message(pack_content(content), dst_node_id=1, message_type="train")
    n_plain = len(get_all_nested_objects(plain))
    n_packed = len(get_all_nested_objects(packed))
    # message, RecordDict, 2 records, 6 Arrays and their chunks (the empty one has none)
    # → message, RecordDict, 3 records (one the layout), 1 Array, 1 chunk.
    assert n_packed == 7
    assert n_plain - n_packed >= 8


def test_messages_sharing_a_model_share_one_packed_record():
    model = _model()
    cache: dict = {}
    a = pack_content(RecordDict({"arrays": model}), cache)
    b = pack_content(RecordDict({"arrays": model}), cache)
    assert a["arrays"] is b["arrays"]


@pytest.mark.parametrize(
    "tamper",
    [
        lambda c: c["arrays"].__setitem__(
            "packed", Array(dtype="uint8", shape=(3,), stype=PACKED_STYPE, data=b"abc")
        ),  # truncated payload
        lambda c: c.__setitem__("arrays", _model()),  # listed as packed, is not
        lambda c: c[PACKED_KEY].__setitem__("arrays", "not json"),
        lambda c: c.__delitem__("arrays"),
    ],
    ids=["truncated", "not-packed", "bad-layout", "missing-record"],
)
def test_a_packed_message_that_does_not_match_its_layout_is_refused_by_name(tamper):
    packed = pack_content(RecordDict({"arrays": _model()}))
    tamper(packed)
    with pytest.raises(ValueError, match=r"arrays|records"):
        unpack_content(packed)


def test_packing_twice_is_refused():
    with pytest.raises(ValueError, match="packed twice"):
        pack_content(pack_content(RecordDict({"arrays": _model()})))


def test_client_mod_answers_packed_with_packed_and_plain_with_plain():
    seen = []

    def handler(msg, context):
        seen.append(_fingerprint(msg.content))
        return Message(RecordDict({"arrays": msg.content["arrays"]}), reply_to=msg)

    content = RecordDict({"arrays": _model()})
    plain = Message(content, dst_node_id=1, message_type="train")
    packed = Message(pack_content(content), dst_node_id=1, message_type="train")
    reply_plain = packing_mod(plain, None, handler)
    reply_packed = packing_mod(packed, None, handler)
    assert seen[0] == seen[1] == _fingerprint(content)  # the handler never sees packing
    assert PACKED_KEY not in reply_plain.content
    assert PACKED_KEY in reply_packed.content
    assert _fingerprint(unpack_content(reply_packed.content)) == _fingerprint(content)


class WireGrid(InProcessGrid):
    """Delivers what was pushed, as a transport would: a new Message with the content the
    Grid was handed at push time (packed, under PackingGrid), not the caller's object."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.packed_instructions = 0
        self.packed_replies = 0

    def push_messages(self, messages):
        wire = []
        for msg in messages:
            copy = Message(
                msg.content, dst_node_id=msg.metadata.dst_node_id,
                message_type=msg.metadata.message_type,
            )  # fmt: skip
            self.packed_instructions += PACKED_KEY in msg.content
            wire.append((msg, copy))
        ids = super().push_messages([copy for _, copy in wire])
        for (msg, _), key in zip(wire, ids, strict=True):
            msg.metadata.__dict__["_message_id"] = key
        return ids

    def _deliver(self, msg):
        reply = super()._deliver(msg)
        if reply.has_content():
            self.packed_replies += PACKED_KEY in reply.content
        return reply


def _digest(result) -> str:
    arrays = result.arrays if hasattr(result, "arrays") else result
    h = hashlib.sha256()
    for k, a in arrays.items():
        h.update(k.encode() + a.data)
    return h.hexdigest()


def test_a_federation_through_packing_trains_the_same_model_bit_for_bit(tmp_path, one_torch_thread):
    def run(packing: bool, sub: str):
        cfg = RunConfig.from_flower(
            {
                **RunConfig().to_flower(),
                "output.run-dir": str(tmp_path / sub),
                "num-server-rounds": 2,
                "training.local-epochs": 1,
            }
        )
        grid = WireGrid(client_app, cfg.to_flower(), 3)
        result, run_dir = run_federation(PackingGrid(grid) if packing else grid, cfg)
        return grid, result, run_dir

    plain_grid, plain, _ = run(False, "plain")
    packed_grid, packed, _ = run(True, "packed")
    assert plain_grid.packed_instructions == 0 and plain_grid.packed_replies == 0
    # Every train and evaluate instruction of 2 rounds × 3 silos carried the packed model;
    # every train reply came back packed.
    assert packed_grid.packed_instructions >= 12
    assert packed_grid.packed_replies >= 6
    assert _digest(packed) == _digest(plain)
