"""Client side of secure aggregation: three query handlers and one train mod.

Message flow of one round (server side: :mod:`strategies.secagg.strategy`):

1. ``query.secagg_keys``   → fresh X25519 key pairs ``c`` (share encryption) and ``s``
   (mask agreement) and a self-mask seed ``b``; reply the two public keys.
2. ``query.secagg_shares`` (everyone's public keys) → Shamir-share ``s_sk`` and ``b`` among
   the round's nodes (threshold t); reply each share sealed for its recipient (AES-GCM
   under ECDH(c_sk, c_pk_v)), to be relayed by the server.
3. ``train`` with a ``secagg`` ConfigRecord (the shares sealed for this node) → the normal
   train handler runs (:func:`secagg_mod` wraps it); its update ``Δ = trained − global`` is
   quantised, multiplied by the node's weight (``num-examples``) and masked with
   ``PRG(b)`` and ``± PRG(agree(s_sk, s_pk_v))`` for every other node v. The reply carries
   only the masked ring vector, never the weights.
4. ``query.secagg_unmask`` (survivors, dropped) → this node's share of ``b_u`` for every
   survivor u and of ``s_sk_v`` for every dropped v — never both for the same node, only
   if at least t nodes survived, and only if this node masked and is listed as a
   survivor. Then the round's secrets are deleted.

Secrets live in the SuperNode's ``context.state`` between the steps of one round, bound to
the round and to the server's per-round ``session`` nonce. The steps must come in order,
each once per session: a second ``train`` (a retried or replayed round) would mask another
update with the same ``b`` and pairwise seeds, so the difference of the two replies would be
the difference of the two updates in the clear; it is refused, as are a replayed key or
share step. A retried round needs a fresh key exchange (new session, new secrets). Unmask
requests are answered once, only by a node that sent its masked input, and only if they
name it a survivor.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from strategies.secagg import protocol as P

STATE_KEY = "secagg-state"
CONFIG_KEY = "secagg"  # ConfigRecord name in secagg messages and replies
MASKED_KEY = "secagg-masked"  # ArrayRecord (and Array) name of the masked vector
KEYS, SHARES, UNMASK = "query.secagg_keys", "query.secagg_shares", "query.secagg_unmask"
#: The protocol's query steps, in order (the train round sits between SHARES and UNMASK).
SECAGG_STEPS = (KEYS, SHARES, UNMASK)


def round_context(session: bytes, server_round: int) -> bytes:
    """Binds agreed keys and sealed shares to one round (``session``: the server's random
    per-round nonce, sent in every step)."""
    return f"round={server_round}/".encode() + bytes(session)


def flatten_delta(trained: ArrayRecord, reference: ArrayRecord) -> np.ndarray:
    """``trained − reference`` over the reference's keys, flattened to float64."""
    parts = []
    for key, ref in reference.items():
        if key not in trained:
            raise P.SecAggError(f"trained model lacks array '{key}'")
        new = trained[key].numpy().astype(np.float64)
        old = ref.numpy().astype(np.float64)
        if new.shape != old.shape:
            raise P.SecAggError(f"array '{key}' has shape {new.shape}, expected {old.shape}")
        parts.append((new - old).ravel())
    return np.concatenate(parts) if parts else np.zeros(0)


#: What each step needs to find in the node's state (the step the previous one left).
_AFTER_KEYS, _AFTER_SHARES, _AFTER_MASKING = "keys", "shares", "masked"
_OUT_OF_ORDER = {
    # (stage found, stage needed): why the request is refused
    (_AFTER_SHARES, _AFTER_KEYS): "already shared its keys",
    (_AFTER_MASKING, _AFTER_KEYS): "already shared its keys",
    (_AFTER_MASKING, _AFTER_SHARES): "already masked an update",
    (_AFTER_KEYS, _AFTER_SHARES): "has no relayed shares yet (the share step was skipped)",
    (_AFTER_KEYS, _AFTER_MASKING): "has not sent a masked update (only survivors unmask)",
    (_AFTER_SHARES, _AFTER_MASKING): "has not sent a masked update (only survivors unmask)",
}


def session_label(session: bytes) -> str:
    """Short hex form of a session nonce, for messages."""
    return bytes(session).hex()[:12]


def _state(context: Context, server_round: int, session: bytes, stage: str) -> ConfigRecord:
    """This node's state for (round, session), which must be at ``stage``."""
    state = context.state.config_records.get(STATE_KEY)
    if state is None or int(state["round"]) != server_round:
        raise P.SecAggError(
            f"no secure-aggregation state for round {server_round} on this node "
            "(a step was skipped, the round was already unmasked, or the node restarted "
            "mid-round)"
        )
    where = f"round {server_round} session {session_label(session)}"
    if bytes(state["session"]) != bytes(session):
        raise P.SecAggError(
            f"{where} is not this node's key exchange (session "
            f"{session_label(state['session'])}); a new session must start with "
            "query.secagg_keys"
        )
    found = str(state["stage"])
    if found != stage:
        reason = _OUT_OF_ORDER.get((found, stage), f"is at step '{found}', not '{stage}'")
        raise P.SecAggError(
            f"node {context.node_id} {reason} for {where}; refusing to repeat or skip a step "
            "(a retried round must start a fresh key exchange)"
        )
    return state


def _ids(values) -> list[int]:
    return [int(v) for v in values]


def handle_keys(msg: Message, context: Context) -> Message:
    """Step 1: fresh key pairs and self-mask seed for this round's session; reply the
    public keys. A new session discards any earlier one's secrets; the same session twice
    is refused."""
    cfg = msg.content[CONFIG_KEY]
    server_round, session = int(cfg["round"]), bytes(cfg["session"])
    old = context.state.config_records.get(STATE_KEY)
    if old is not None and int(old["round"]) == server_round and bytes(old["session"]) == session:
        raise P.SecAggError(
            f"node {context.node_id} already ran the key exchange for round {server_round} "
            f"session {session_label(session)}; a retried round needs a fresh session"
        )
    c_sk, c_pk = P.new_keypair()
    s_sk, s_pk = P.new_keypair()
    context.state[STATE_KEY] = ConfigRecord(
        {
            "round": server_round, "session": session, "stage": _AFTER_KEYS,
            "c-sk": c_sk, "s-sk": s_sk, "b": P.new_seed(), "c-pk": c_pk, "s-pk": s_pk,
        }
    )  # fmt: skip
    reply = ConfigRecord({"c-pk": c_pk, "s-pk": s_pk})
    return Message(RecordDict({CONFIG_KEY: reply}), reply_to=msg)


def handle_shares(msg: Message, context: Context) -> Message:
    """Step 2: Shamir-share ``s_sk`` and ``b``; seal each node's shares for it."""
    cfg = msg.content[CONFIG_KEY]
    server_round = int(cfg["round"])
    state = _state(context, server_round, cfg["session"], _AFTER_KEYS)
    nodes = _ids(cfg["nodes"])
    c_pks, s_pks = list(cfg["c-pk"]), list(cfg["s-pk"])
    threshold = int(cfg["threshold"])
    me = context.node_id
    if me not in nodes or len(set(nodes)) != len(nodes):
        raise P.SecAggError(f"node {me} is not (exactly once) in the round's node list")
    if len(c_pks) != len(nodes) or len(s_pks) != len(nodes):
        raise P.SecAggError("public key lists do not match the node list")
    if len(set(c_pks)) != len(c_pks) or len(set(s_pks)) != len(s_pks):
        raise P.SecAggError("duplicate public keys in the round (refusing to share)")
    index = nodes.index(me)
    if (bytes(c_pks[index]), bytes(s_pks[index])) != (bytes(state["c-pk"]), bytes(state["s-pk"])):
        raise P.SecAggError("the server relayed different public keys for this node")
    if not 2 <= threshold <= len(nodes) or 2 * threshold <= len(nodes):
        raise P.SecAggError(
            f"threshold {threshold} for {len(nodes)} nodes: need n/2 < t ≤ n and t ≥ 2"
        )
    context_bytes = round_context(cfg["session"], server_round)
    sk_shares = P.shamir_split(bytes(state["s-sk"]), len(nodes), threshold)
    b_shares = P.shamir_split(bytes(state["b"]), len(nodes), threshold)
    dst, sealed = [], []
    for j, node in enumerate(nodes):
        payload = P.pack_shares(me, node, sk_shares[j][1], b_shares[j][1])
        if node == me:
            own = payload
            continue
        key = P.agree(bytes(state["c-sk"]), bytes(c_pks[j]), context_bytes + b"/enc")
        dst.append(str(node))
        sealed.append(P.seal(key, payload, context_bytes))
    state["nodes"] = [str(n) for n in nodes]
    state["c-pks"] = [bytes(k) for k in c_pks]
    state["s-pks"] = [bytes(k) for k in s_pks]
    state["threshold"] = threshold
    state["held"] = [own]  # shares this node holds: its own, then those relayed to it
    state["stage"] = _AFTER_SHARES
    context.state[STATE_KEY] = state
    return Message(
        RecordDict({CONFIG_KEY: ConfigRecord({"dst": dst, "sealed": sealed})}), reply_to=msg
    )


def secagg_mod(msg: Message, context: Context, call_next) -> Message:
    """ClientApp mod on ``train``: with a ``secagg`` record in the message, open the relayed
    shares, train as usual, and reply the masked, quantised, weighted update instead of the
    model. Without it, pass through unchanged."""
    if CONFIG_KEY not in msg.content.config_records:
        return call_next(msg, context)
    cfg = msg.content[CONFIG_KEY]
    server_round = int(cfg["round"])
    state = _state(context, server_round, cfg["session"], _AFTER_SHARES)
    me = context.node_id
    nodes = _ids(state["nodes"])
    context_bytes = round_context(cfg["session"], server_round)
    senders = _ids(cfg["src"])
    held = list(state["held"])
    for src, sealed in zip(senders, cfg["sealed"], strict=True):
        key = P.agree(
            bytes(state["c-sk"]), bytes(state["c-pks"][nodes.index(src)]), context_bytes + b"/enc"
        )
        payload = P.open_sealed(key, bytes(sealed), context_bytes)
        got_src, got_dst, _, _ = P.unpack_shares(payload)
        if (got_src, got_dst) != (src, me):
            raise P.SecAggError(f"share from node {src} was addressed to ({got_src}, {got_dst})")
        held.append(payload)
    members = sorted({me, *senders})  # nodes whose shares reached everyone this round
    if len(members) < int(state["threshold"]):
        # With too few pairwise masks, revealing b at unmask time would expose the update.
        raise P.SecAggError(
            f"only {len(members)} nodes share masks with node {me}, fewer than the "
            f"threshold {state['threshold']}: refusing to send an update"
        )
    global_arrays = next(iter(msg.content.array_records.values()))
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    trained = next(iter(reply.content.array_records.values()))
    metrics = next(iter(reply.content.metric_records.values()))
    weight = int(metrics["num-examples"])
    clip_range, bits = float(cfg["clip-range"]), int(cfg["bits"])
    quantized, clipped = P.quantize(flatten_delta(trained, global_arrays), clip_range, bits)
    weighted = quantized * np.uint64(weight)
    pair_seeds = {
        v: (
            P.agree(bytes(state["s-sk"]), bytes(state["s-pks"][nodes.index(v)]), context_bytes),
            P.pair_sign(me, v),
        )
        for v in members
        if v != me
    }
    masked = P.mask(weighted, bytes(state["b"]), pair_seeds)
    state["held"] = held
    state["members"] = [str(n) for n in members]
    state["stage"] = _AFTER_MASKING  # from here on, this session never masks again
    context.state[STATE_KEY] = state
    content = RecordDict()
    content[MASKED_KEY] = ArrayRecord({MASKED_KEY: Array(masked)})
    out_metrics = MetricRecord(dict(metrics.items()))
    out_metrics["secagg-clipped"] = clipped / max(1, quantized.size)
    content["metrics"] = out_metrics
    for name, record in reply.content.config_records.items():
        content[name] = record
    content[CONFIG_KEY] = ConfigRecord({"weight": weight, "round": server_round})
    return Message(content, reply_to=msg)


def handle_unmask(msg: Message, context: Context) -> Message:
    """Step 4: reveal shares of survivors' ``b`` and dropped nodes' ``s_sk`` (never both for
    one node); then forget the round's secrets.

    Answered once per session, and only by a node that sent its masked input and is named a
    survivor: a request naming this node as dropped (after it masked) would ask for its own
    mask key share beside its masked input, and a node that never masked cannot vouch for
    the round.
    """
    cfg = msg.content[CONFIG_KEY]
    server_round = int(cfg["round"])
    state = _state(context, server_round, cfg["session"], _AFTER_MASKING)
    survivors, dropped = set(_ids(cfg["survivors"])), set(_ids(cfg["dropped"]))
    members = set(_ids(state.get("members", [])))
    threshold = int(state["threshold"])
    me = context.node_id
    if survivors & dropped:
        raise P.SecAggError(f"nodes {sorted(survivors & dropped)} listed as survivor and dropped")
    if me in dropped or me not in survivors:
        raise P.SecAggError(
            f"node {me} sent its masked input in round {server_round} but the unmask request "
            "does not list it as a survivor; refusing to reveal shares"
        )
    if not (survivors | dropped) <= members:
        raise P.SecAggError("unmask request names nodes outside this round")
    if len(survivors) < threshold:
        raise P.SecAggError(
            f"only {len(survivors)} survivors, fewer than the threshold {threshold}: "
            "refusing to reveal shares"
        )
    b_ids, b_shares, sk_ids, sk_shares = [], [], [], []
    for payload in state["held"]:
        src, _, share_sk, share_b = P.unpack_shares(bytes(payload))
        if src in survivors:
            b_ids.append(str(src))
            b_shares.append(share_b)
        elif src in dropped:
            sk_ids.append(str(src))
            sk_shares.append(share_sk)
    x = _ids(state["nodes"]).index(context.node_id) + 1
    del context.state[STATE_KEY]
    reply = ConfigRecord(
        {"x": x, "b-ids": b_ids, "b-shares": b_shares, "sk-ids": sk_ids, "sk-shares": sk_shares}
    )
    return Message(RecordDict({CONFIG_KEY: reply}), reply_to=msg)


def register(app) -> None:
    """Register the secure-aggregation query handlers on a ``ClientApp``."""
    app.query("secagg_keys")(handle_keys)
    app.query("secagg_shares")(handle_shares)
    app.query("secagg_unmask")(handle_unmask)
