"""The silo side refuses requests that would let the server learn an individual update."""

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from strategies.secagg import protocol as P
from strategies.secagg.client import (
    CONFIG_KEY,
    KEYS,
    SHARES,
    UNMASK,
    handle_keys,
    handle_shares,
    handle_unmask,
)

NODES = [11, 12, 13, 14]
SESSION = b"s" * 16


def _ask(handler, kind, context, **values):
    msg = Message(
        RecordDict({CONFIG_KEY: ConfigRecord({"round": 1, "session": SESSION, **values})}),
        dst_node_id=context.node_id,
        message_type=kind,
    )
    return handler(msg, context).content[CONFIG_KEY]


@pytest.fixture
def keyed(flower_identity):
    contexts = {
        n: Context(run_id=1, node_id=n, node_config={}, state=RecordDict(), run_config={})
        for n in NODES
    }
    keys = {n: _ask(handle_keys, KEYS, c) for n, c in contexts.items()}
    lists = {
        "nodes": [str(n) for n in NODES],
        "c-pk": [bytes(keys[n]["c-pk"]) for n in NODES],
        "s-pk": [bytes(keys[n]["s-pk"]) for n in NODES],
    }
    return contexts, lists


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
    ],
)
def test_share_step_refuses_unsafe_requests(keyed, change, match):
    contexts, lists = keyed
    values = {"threshold": 3, **lists}
    c_pk, s_pk = values["c-pk"], values["s-pk"]
    if change == "low-threshold":
        values["threshold"] = 2
    elif change == "not-a-member":
        values["nodes"] = ["12", "13", "14", "15"]
    elif change == "duplicate-key":
        values["s-pk"] = [s_pk[1], *s_pk[1:]]
    else:
        values["c-pk"] = [c_pk[1], c_pk[0], *c_pk[2:]]
    with pytest.raises(P.SecAggError, match=match):
        _ask(handle_shares, SHARES, contexts[11], **values)


def test_unmask_refuses_too_few_survivors_and_overlaps(keyed):
    contexts, lists = keyed
    ctx = contexts[11]
    _ask(handle_shares, SHARES, ctx, threshold=3, **lists)
    state = ctx.state.config_records["secagg-state"]
    state["members"] = [str(n) for n in NODES]
    ctx.state["secagg-state"] = state
    with pytest.raises(P.SecAggError, match="fewer than the threshold"):
        _ask(handle_unmask, UNMASK, ctx, survivors=["11", "12"], dropped=["13", "14"])
    with pytest.raises(P.SecAggError, match="survivor and dropped"):
        _ask(handle_unmask, UNMASK, ctx, survivors=["11", "12", "13"], dropped=["13"])
    reply = _ask(handle_unmask, UNMASK, ctx, survivors=["11", "12", "13"], dropped=["14"])
    assert list(reply["b-ids"]) == ["11"] and list(reply["sk-ids"]) == []  # holds own share only
    with pytest.raises(P.SecAggError, match="no secure-aggregation state"):  # secrets deleted
        _ask(handle_unmask, UNMASK, ctx, survivors=["11", "12", "13"], dropped=["14"])
