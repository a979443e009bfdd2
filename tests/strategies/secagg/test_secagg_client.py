"""The silo side refuses requests that would let the server learn an individual update.

The tests run the real silo handlers (key, share, masking mod, unmask) of four silos; the
test plays the server, honest or not. Training is a stand-in that returns a known update
(plus fresh noise per call, as DP-SGD would), so what the server could recover can be
compared with the truth.
"""

import os

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from strategies.secagg import protocol as P
from strategies.secagg.client import (
    CONFIG_KEY,
    KEYS,
    MASKED_KEY,
    SHARES,
    STATE_KEY,
    UNMASK,
    handle_keys,
    handle_shares,
    handle_unmask,
    round_context,
    secagg_mod,
)

NODES = [11, 12, 13, 14]
T = 3  # threshold for 4 nodes (> n/2)
SIZE = 4096
CLIP, BITS = 4.0, 24
SESSION = b"s" * 16
WEIGHTS = {11: 30, 12: 10, 13: 25, 14: 5}


def _ask(handler, kind, context, session=SESSION, server_round=1, **values):
    msg = Message(
        RecordDict({CONFIG_KEY: ConfigRecord({"round": server_round, "session": session,
                                              **values})}),
        dst_node_id=context.node_id,
        message_type=kind,
    )  # fmt: skip
    return handler(msg, context).content[CONFIG_KEY]


class StandInTraining:
    """``call_next`` for the masking mod: returns ``global + update`` with fresh noise per
    call (as DP-SGD's would be), and records each update it produced."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.base = {n: rng.uniform(-1, 1, SIZE) for n in NODES}
        self.produced: dict[int, list[np.ndarray]] = {n: [] for n in NODES}

    def __call__(self, msg: Message, context: Context) -> Message:
        node = context.node_id
        update = self.base[node] + np.random.default_rng().normal(0, 0.1, SIZE)
        self.produced[node].append(update)
        trained = msg.content["arrays"]["w"].numpy() + update
        content = RecordDict(
            {
                "arrays": ArrayRecord({"w": Array(trained)}),
                "metrics": MetricRecord({"num-examples": WEIGHTS[node]}),
            }
        )
        return Message(content, reply_to=msg)


@pytest.fixture
def contexts(flower_identity):
    return {
        n: Context(run_id=1, node_id=n, node_config={}, state=RecordDict(), run_config={})
        for n in NODES
    }


@pytest.fixture
def keyed(contexts):
    keys = {n: _ask(handle_keys, KEYS, c) for n, c in contexts.items()}
    lists = {
        "nodes": [str(n) for n in NODES],
        "c-pk": [bytes(keys[n]["c-pk"]) for n in NODES],
        "s-pk": [bytes(keys[n]["s-pk"]) for n in NODES],
    }
    return contexts, lists


def _share_and_relay(contexts, session=SESSION):
    """Steps 1–2 for all nodes; returns each node's train message and the s-pks."""
    keys = {n: _ask(handle_keys, KEYS, c, session=session) for n, c in contexts.items()}
    lists = {
        "nodes": [str(n) for n in NODES],
        "c-pk": [bytes(keys[n]["c-pk"]) for n in NODES],
        "s-pk": [bytes(keys[n]["s-pk"]) for n in NODES],
    }
    inbox = {n: ([], []) for n in NODES}
    for n, ctx in contexts.items():
        reply = _ask(handle_shares, SHARES, ctx, session=session, threshold=T, **lists)
        for dst, sealed in zip(reply["dst"], reply["sealed"], strict=True):
            inbox[int(dst)][0].append(str(n))
            inbox[int(dst)][1].append(bytes(sealed))
    messages = {}
    for n in NODES:
        record = ConfigRecord(
            {"round": 1, "session": session, "src": inbox[n][0], "sealed": inbox[n][1],
             "clip-range": CLIP, "bits": BITS}
        )  # fmt: skip
        content = RecordDict(
            {"arrays": ArrayRecord({"w": Array(np.zeros(SIZE))}), CONFIG_KEY: record}
        )
        messages[n] = Message(content, dst_node_id=n, message_type="train")
    return messages, {n: bytes(keys[n]["s-pk"]) for n in NODES}


def _mask(contexts, training, messages, nodes=NODES) -> dict[int, np.ndarray]:
    out = {}
    for n in nodes:
        reply = secagg_mod(messages[n], contexts[n], training)
        out[n] = reply.content[MASKED_KEY][MASKED_KEY].numpy()
    return out


def _expected_input(update: np.ndarray, node: int) -> np.ndarray:
    q, _ = P.quantize(update, CLIP, BITS)
    return q * np.uint64(WEIGHTS[node])


def _collect(replies, survivors, dropped):
    """The server's view of unmask replies: shares of b (survivors) and s_sk (dropped)."""
    b = {n: [] for n in survivors}
    sk = {n: [] for n in dropped}
    for c in replies:
        for node, share in zip(c["b-ids"], c["b-shares"], strict=True):
            b[int(node)].append((int(c["x"]), bytes(share)))
        for node, share in zip(c["sk-ids"], c["sk-shares"], strict=True):
            sk[int(node)].append((int(c["x"]), bytes(share)))
    return b, sk


def _as_signed(ring: np.ndarray) -> np.ndarray:
    return ring.view(np.int64).astype(np.float64)


def test_share_step_seals_one_share_per_peer(keyed):
    contexts, lists = keyed
    reply = _ask(handle_shares, SHARES, contexts[11], threshold=3, **lists)
    assert list(reply["dst"]) == ["12", "13", "14"]
    assert all(len(bytes(c)) > 100 for c in reply["sealed"])  # ciphertexts, not shares


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ("low-threshold", "threshold"),  # t ≤ n/2: a minority could reconstruct
        ("not-a-member", "not .exactly once"),
        ("duplicate-key", "duplicate public keys"),
        ("swapped-keys", "different public keys"),
        ("other-session", "not this node's key exchange"),
    ],
)
def test_share_step_refuses_unsafe_requests(keyed, change, match):
    contexts, lists = keyed
    values = {"threshold": 3, **lists}
    c_pk, s_pk = values["c-pk"], values["s-pk"]
    session = SESSION
    if change == "low-threshold":
        values["threshold"] = 2
    elif change == "not-a-member":
        values["nodes"] = ["12", "13", "14", "15"]
    elif change == "duplicate-key":
        values["s-pk"] = [s_pk[1], *s_pk[1:]]
    elif change == "swapped-keys":
        values["c-pk"] = [c_pk[1], c_pk[0], *c_pk[2:]]
    else:
        session = b"x" * 16
    with pytest.raises(P.SecAggError, match=match):
        _ask(handle_shares, SHARES, contexts[11], session=session, **values)


def test_an_honest_round_unmasks_exactly_the_sum(contexts):
    training = StandInTraining(np.random.default_rng(0))
    messages, s_pks = _share_and_relay(contexts)
    masked = _mask(contexts, training, messages)
    dropped, survivors = [14], [11, 12, 13]  # 14 masked, its reply was lost
    request = {"survivors": [str(n) for n in survivors], "dropped": ["14"]}
    replies = [_ask(handle_unmask, UNMASK, contexts[n], **request) for n in survivors]
    b, sk = _collect(replies, survivors, dropped)
    seeds = [P.shamir_reconstruct(b[n], T) for n in survivors]
    key_14 = P.shamir_reconstruct(sk[14], T)
    ctx = round_context(SESSION, 1)
    pairs = [(P.agree(key_14, s_pks[u], ctx), P.pair_sign(u, 14)) for u in survivors]
    total = P.unmask_sum([masked[u] for u in survivors], seeds, pairs)
    expected = sum(_expected_input(training.produced[u][0], u) for u in survivors)
    assert np.array_equal(total, expected)


def test_a_replayed_masking_step_is_refused_and_a_fresh_session_masks_anew(contexts):
    """Adversary: the server sends the same masking step twice (a retried round). A second
    masked input under the same masks would give it y₁ − y₂ = n·(q₁ − q₂), the difference
    of two updates (here, of two fresh DP-SGD noise draws) in the clear."""
    training = StandInTraining(np.random.default_rng(1))
    messages, _ = _share_and_relay(contexts)
    first = _mask(contexts, training, messages)
    for replay in (messages[12], Message(messages[12].content, dst_node_id=12,
                                         message_type="train")):  # fmt: skip
        with pytest.raises(P.SecAggError, match="already masked an update for round 1 session"):
            secagg_mod(replay, contexts[12], training)
    assert len(training.produced[12]) == 1  # refused before training: no second update
    # Replays of the earlier steps of the same session are refused as well.
    with pytest.raises(P.SecAggError, match="already ran the key exchange"):
        _ask(handle_keys, KEYS, contexts[12])
    with pytest.raises(P.SecAggError, match="already shared its keys"):
        _ask(handle_shares, SHARES, contexts[12], threshold=T, nodes=[str(n) for n in NODES])

    # The sound retry: a fresh key exchange, i.e. new keys and a new self-mask seed.
    fresh, _ = _share_and_relay(contexts, session=os.urandom(16))
    second = _mask(contexts, training, fresh, nodes=[12])[12]
    leak = _expected_input(training.produced[12][0], 12) - _expected_input(
        training.produced[12][1], 12
    )
    difference = first[12] - second
    assert not np.array_equal(difference, leak)
    assert abs(np.corrcoef(_as_signed(difference), _as_signed(leak))[0, 1]) < 0.1
    assert np.abs(_as_signed(difference)).mean() > 2.0**60  # spread over the ring


def test_unmask_refuses_unsafe_requests_and_answers_once(contexts):
    messages, _ = _share_and_relay(contexts)
    _mask(contexts, StandInTraining(np.random.default_rng(2)), messages)
    ctx = contexts[11]
    refused = [
        (["11", "12"], ["13", "14"], {}, "fewer than the threshold"),
        (["11", "12", "13"], ["13"], {}, "survivor and dropped"),
        (["12", "13", "14"], ["11"], {}, "does not list it as a survivor"),
        (["12", "13", "14"], [], {}, "does not list it as a survivor"),
        (["11", "12", "13"], ["15"], {}, "outside this round"),
        (["11", "12", "13"], ["14"], {"session": b"x" * 16}, "not this node's key exchange"),
        (["11", "12", "13"], ["14"], {"server_round": 2}, "no secure-aggregation state"),
    ]
    for survivors, dropped, extra, match in refused:
        with pytest.raises(P.SecAggError, match=match):
            _ask(handle_unmask, UNMASK, ctx, survivors=survivors, dropped=dropped, **extra)
    assert ctx.state.config_records[STATE_KEY]["stage"] == "masked"  # nothing revealed
    reply = _ask(handle_unmask, UNMASK, ctx, survivors=["11", "12", "13"], dropped=["14"])
    assert sorted(reply["b-ids"]) == ["11", "12", "13"] and list(reply["sk-ids"]) == ["14"]
    with pytest.raises(P.SecAggError, match="no secure-aggregation state"):  # secrets deleted
        _ask(handle_unmask, UNMASK, ctx, survivors=["11", "12", "13", "14"], dropped=[])


def test_a_node_that_did_not_mask_refuses_to_unmask(contexts):
    messages, _ = _share_and_relay(contexts)
    _mask(contexts, StandInTraining(np.random.default_rng(3)), messages, nodes=[11, 12, 13])
    with pytest.raises(P.SecAggError, match="has not sent a masked update"):
        _ask(handle_unmask, UNMASK, contexts[14], survivors=["11", "12", "13", "14"],
             dropped=[])  # fmt: skip


def test_a_server_claiming_a_survivor_dropped_cannot_recover_its_update(contexts):
    """Adversary: the server received every masked input, then claims the victim dropped to
    learn its mask key — to the others consistently, and to the victim itself either as
    dropped (refused) or as a survivor (an inconsistent view that yields one share of b)."""
    training = StandInTraining(np.random.default_rng(4))
    messages, s_pks = _share_and_relay(contexts)
    masked = _mask(contexts, training, messages)
    victim, others = 13, [11, 12, 14]
    true_secret_b = bytes(contexts[victim].state.config_records[STATE_KEY]["b"])
    with pytest.raises(P.SecAggError, match="does not list it as a survivor"):
        _ask(handle_unmask, UNMASK, contexts[victim], survivors=[str(n) for n in others],
             dropped=[str(victim)])  # fmt: skip

    claim = {"survivors": [str(n) for n in others], "dropped": [str(victim)]}
    replies = [_ask(handle_unmask, UNMASK, contexts[n], **claim) for n in others]
    everyone = [str(n) for n in NODES]
    replies.append(_ask(handle_unmask, UNMASK, contexts[victim], survivors=everyone, dropped=[]))
    b, sk = _collect(replies, NODES, [victim])
    assert [n for n in NODES if len(b[n]) >= T] == others  # the victim's b: one share only
    with pytest.raises(P.SecAggError, match="cannot reconstruct"):
        P.shamir_reconstruct(b[victim], T)
    key = P.shamir_reconstruct(sk[victim], T)  # the mask key it did obtain
    ctx = round_context(SESSION, 1)
    pair_masks = {
        v: (P.agree(key, s_pks[v], ctx), P.pair_sign(victim, v)) for v in NODES if v != victim
    }
    # Best reconstruction: the masked input minus every pairwise mask; PRG(b) remains.
    without_pairs = P.unmask_sum([masked[victim]], [], list(pair_masks.values()))
    truth = _expected_input(training.produced[victim][0], victim)
    as_update = P.dequantize_mean(without_pairs, WEIGHTS[victim], CLIP, BITS)
    assert abs(np.corrcoef(as_update, training.produced[victim][0])[0, 1]) < 0.1
    assert not np.array_equal(without_pairs, truth)
    # Control: b is the only secret missing — with it the update would be exposed.
    assert np.array_equal(without_pairs - P.prg(true_secret_b, SIZE), truth)
    # Every node answered once; asking again for the other kind of share is refused.
    for n in NODES:
        with pytest.raises(P.SecAggError, match="no secure-aggregation state"):
            _ask(handle_unmask, UNMASK, contexts[n], survivors=[str(v) for v in NODES],
                 dropped=[])  # fmt: skip
