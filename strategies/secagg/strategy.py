"""Server side of secure aggregation: a strategy wrapper around any FedAvg-family strategy.

:class:`SecureAggregation` runs the protocol of :mod:`strategies.secagg.client` inside the
Strategy API, with Flower's own ``Grid`` (no fork of the round loop):

* ``configure_train`` lets the wrapped strategy sample the round's nodes and build its
  train messages, then runs the key advertisement and share relay steps with
  ``grid.send_and_receive`` and attaches each node's relayed, sealed shares to its train
  message. Nodes that fail a step are left out of the round.
* ``aggregate_train`` receives masked ring vectors only. It asks the survivors for their
  shares (self-mask seeds of survivors, mask-agreement keys of nodes that dropped after
  the share step), removes the masks, dequantises the weighted sum into the weighted
  mean update and hands the wrapped strategy ONE reply — ``global + mean update`` with
  the cohort's total ``num-examples`` and the silos' plain metrics combined as without
  secure aggregation (:func:`strategies.metrics.combine_silo_metrics`: example-weighted
  means over finite values, ``dp-epsilon`` the maximum over silos) — so FedAvg, FedProx,
  FedAvgM, FedAdam, FedYogi and FedAdagrad aggregate exactly as without secure
  aggregation (up to quantisation error ≤ clip-range / (2^bits − 1) per coordinate).
  A malformed masked reply is treated as a dropout; a round whose survivors' weights sum
  to 0 is skipped before any share is revealed.

The server learns the sum of the survivors' updates, each survivor's ``num-examples`` and
training metrics, and which nodes dropped — not any individual update, as long as it
follows the protocol (honest-but-curious) and fewer than t nodes collude with it.
"""

from __future__ import annotations

import os
from logging import INFO, WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from fl_core.records import META_KEY
from strategies.metrics import combine_silo_metrics
from strategies.round_state import RoundState
from strategies.secagg import protocol as P
from strategies.secagg.client import CONFIG_KEY, KEYS, MASKED_KEY, SHARES, UNMASK, round_context
from strategies.wrappers import StrategyWrapper


def _ids(values) -> list[int]:
    return [int(v) for v in values]


def _ok(replies) -> list[Message]:
    return [r for r in replies if not r.has_error() and CONFIG_KEY in r.content.config_records]


class SecureAggregation(StrategyWrapper):
    """Secure aggregation (SecAgg with Shamir-shared mask keys) around ``inner``.

    Args:
        inner: a strategy that averages updates weighted by ``num-examples``.
        threshold: fraction of the round's sampled nodes whose shares reconstruct a secret
            (t = max(2, ⌈threshold · n⌉), > n/2); up to n − t nodes may drop out.
        clip_range: updates are clipped to [−clip_range, clip_range] per coordinate.
        bits: fixed-point bits per coordinate.
        timeout: seconds to wait for each protocol step's replies.
    """

    def __init__(
        self,
        inner: Strategy,
        *,
        threshold: float = 0.6,
        clip_range: float = 4.0,
        bits: int = 24,
        timeout: float | None = None,
        round_state: RoundState | None = None,
    ) -> None:
        super().__init__(inner, round_state=round_state)
        self.threshold = threshold
        self.clip_range = clip_range
        self.bits = bits
        self.timeout = timeout
        self._grid: Grid | None = None
        self._round: dict = {}
        #: Per round: sampled, survivors, dropped (for tests and reports).
        self.history: dict[int, dict[str, list[int]]] = {}

    # ------------------------------------------------------------------ helpers
    def _query(self, grid: Grid, nodes: list[int], kind: str, records: dict) -> list[Message]:
        messages = [
            Message(RecordDict({CONFIG_KEY: records[n]}), dst_node_id=n, message_type=kind)
            for n in nodes
        ]
        replies = list(grid.send_and_receive(messages, timeout=self.timeout))
        for r in replies:
            if r.has_error():
                log(WARNING, "secagg %s: node %d failed: %s", kind, r.metadata.src_node_id,
                    r.error.reason)  # fmt: skip
        return _ok(replies)

    def _abort(self, server_round: int, stage: str, got: int, need: int) -> list[Message]:
        log(
            WARNING,
            "round %d: secure aggregation needs %d nodes at the %s step, got %d; "
            "round skipped (lower secagg.threshold or raise sampling.min-train-nodes)",
            server_round, need, stage, got,
        )  # fmt: skip
        self._round = {}
        return []

    # ------------------------------------------------------------------ train
    def configure_train(self, server_round, arrays, config, grid):
        self.begin_round(server_round, "train", arrays)
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        self._grid = grid
        self._round = {}
        sampled = sorted(m.metadata.dst_node_id for m in messages)
        if not sampled:
            return messages
        t = P.threshold_for(len(sampled), self.threshold)
        # Uploads are 8 bytes per parameter: within the automatic 'robust.max-update-bytes'
        # (twice a float32 model + 1 MiB, strategies.validation.default_max_bytes).
        base = {"round": server_round, "session": os.urandom(16)}

        # Step 1: public keys.
        replies = self._query(grid, sampled, KEYS, {n: ConfigRecord(base) for n in sampled})
        keys = {r.metadata.src_node_id: r.content[CONFIG_KEY] for r in replies}
        nodes = sorted(keys)
        if len(nodes) < t:
            return self._abort(server_round, "key", len(nodes), t)

        # Step 2: sealed shares, relayed.
        record = ConfigRecord(
            {
                **base,
                "threshold": t,
                "nodes": [str(n) for n in nodes],
                "c-pk": [bytes(keys[n]["c-pk"]) for n in nodes],
                "s-pk": [bytes(keys[n]["s-pk"]) for n in nodes],
            }
        )
        replies = self._query(grid, nodes, SHARES, {n: record for n in nodes})
        members = sorted(r.metadata.src_node_id for r in replies)
        if len(members) < t:
            return self._abort(server_round, "share", len(members), t)
        inbox: dict[int, tuple[list[str], list[bytes]]] = {n: ([], []) for n in members}
        for r in replies:
            src = r.metadata.src_node_id
            for dst, sealed in zip(r.content[CONFIG_KEY]["dst"], r.content[CONFIG_KEY]["sealed"],
                                   strict=True):  # fmt: skip
                if int(dst) in inbox:
                    inbox[int(dst)][0].append(str(src))
                    inbox[int(dst)][1].append(bytes(sealed))

        # Step 3: the wrapped strategy's train messages, plus each member's shares.
        out = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            if node not in inbox:
                continue
            # The wrapped strategy may share one RecordDict among its messages: copy it.
            content = RecordDict(dict(msg.content.items()))
            content[CONFIG_KEY] = ConfigRecord(
                {
                    **base,
                    "src": inbox[node][0],
                    "sealed": inbox[node][1],
                    "clip-range": float(self.clip_range),
                    "bits": int(self.bits),
                }
            )
            out.append(Message(content, dst_node_id=node, message_type=msg.metadata.message_type))
        self._round = {
            "round": server_round, "t": t, "members": members, "nodes": nodes,
            "session": base["session"],
            "s-pk": {n: bytes(keys[n]["s-pk"]) for n in nodes},
        }  # fmt: skip
        self.history[server_round] = {"sampled": sampled, "members": members}
        log(INFO, "round %d: secure aggregation over %d nodes, threshold %d",
            server_round, len(members), t)  # fmt: skip
        return out

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        state = self._round
        current = self.round.arrays
        if not state or state["round"] != server_round or current is None:
            return None, None
        t, members = state["t"], state["members"]
        size = sum(a.numpy().size for a in current.values())
        inputs, weights_by_node = {}, {}
        for r in replies:
            node = r.metadata.src_node_id
            if r.has_error() or MASKED_KEY not in r.content.array_records or node not in members:
                continue
            weight, problem = _check_masked_reply(r, size)
            if problem is not None:
                # Its input is not used: like a dropout, its pairwise masks are removed via
                # its reconstructed key while its self-mask seed stays secret.
                log(WARNING, "round %d: masked reply of %s is malformed (%s); treated as "
                    "a dropout", server_round, self._label(r), problem)  # fmt: skip
                continue
            inputs[node], weights_by_node[node] = r, weight
        survivors = sorted(inputs)
        dropped = sorted(set(members) - set(survivors))
        self.history[server_round].update(survivors=survivors, dropped=dropped)
        if len(survivors) < t:
            self._abort(server_round, "masked-input", len(survivors), t)
            return None, MetricRecord({"secagg-survivors": len(survivors)})
        total_weight = sum(weights_by_node.values())
        if total_weight <= 0:
            # Checked before the unmask step, so no silo reveals a share for nothing.
            log(WARNING, "round %d: the %d survivors' weights (num-examples) sum to 0; "
                "nothing to average, round skipped", server_round, len(survivors))  # fmt: skip
            return self._skip(len(survivors))
        if total_weight > P.max_weight_sum(self.bits):
            log(WARNING, "round %d: total weight %d overflows the ring at %d bits; skipped",
                server_round, total_weight, self.bits)  # fmt: skip
            return self._skip(len(survivors))

        # Step 4: shares from the survivors.
        record = ConfigRecord(
            {"round": server_round, "session": state["session"],
             "survivors": [str(n) for n in survivors],
             "dropped": [str(n) for n in dropped]}
        )  # fmt: skip
        unmask_replies = self._query(self._grid, survivors, UNMASK,
                                     {n: record for n in survivors})  # fmt: skip
        b_shares: dict[int, list[tuple[int, bytes]]] = {n: [] for n in survivors}
        sk_shares: dict[int, list[tuple[int, bytes]]] = {n: [] for n in dropped}
        for r in unmask_replies:
            try:
                c = r.content[CONFIG_KEY]
                x = int(c["x"])
                b_got = list(zip(_ids(c["b-ids"]), c["b-shares"], strict=True))
                sk_got = list(zip(_ids(c["sk-ids"]), c["sk-shares"], strict=True))
            except (KeyError, TypeError, ValueError) as exc:
                log(WARNING, "round %d: ignoring malformed unmask reply of node %d (%s)",
                    server_round, r.metadata.src_node_id, exc)  # fmt: skip
                continue
            for node, share in b_got:
                if node in b_shares:
                    b_shares[node].append((x, bytes(share)))
            for node, share in sk_got:
                if node in sk_shares:
                    sk_shares[node].append((x, bytes(share)))
        try:
            self_seeds = [P.shamir_reconstruct(b_shares[n], t) for n in survivors]
            dropped_keys = {v: P.shamir_reconstruct(sk_shares[v], t) for v in dropped}
        except P.SecAggError as exc:
            log(WARNING, "round %d: cannot unmask (%s); round skipped", server_round, exc)
            return self._skip(len(survivors))
        context = round_context(state["session"], server_round)
        dropped_pairs = [
            (P.agree(dropped_keys[v], state["s-pk"][u], context), P.pair_sign(u, v))
            for u in survivors
            for v in dropped
        ]
        masked = [inputs[u].content[MASKED_KEY][MASKED_KEY].numpy() for u in survivors]
        try:
            total = P.unmask_sum(masked, self_seeds, dropped_pairs)
            aggregate = self._apply(
                current, P.dequantize_mean(total, total_weight, self.clip_range, self.bits)
            )
        except P.SecAggError as exc:
            log(WARNING, "round %d: cannot unmask (%s); round skipped", server_round, exc)
            return self._skip(len(survivors))

        # Silo metrics travel in the clear beside the masked vector; combined here with
        # the same rules as without secure aggregation (dp-epsilon: max over silos).
        metrics = combine_silo_metrics(
            [(self._label(inputs[u]), _reply_metrics(inputs[u], weights_by_node[u]))
             for u in survivors],
            "num-examples",
        )  # fmt: skip
        metrics["num-examples"] = total_weight
        content = RecordDict({"arrays": aggregate, "metrics": MetricRecord(metrics)})
        synthetic = Message(content, dst_node_id=0, message_type="train")
        arrays, agg_metrics = self.inner.aggregate_train(server_round, [synthetic])
        agg_metrics = MetricRecord(dict(agg_metrics.items()) if agg_metrics else {})
        agg_metrics["secagg-survivors"] = len(survivors)
        agg_metrics["secagg-dropouts"] = len(dropped)
        self._round = {}
        return arrays, agg_metrics

    def _skip(self, survivors: int) -> tuple[None, MetricRecord]:
        """End the round without a model update."""
        self._round = {}
        return None, MetricRecord({"secagg-survivors": survivors})

    def _label(self, reply: Message) -> str:
        """``"node <id> (partition <p>)"`` of a reply, for warnings."""
        meta = reply.content.config_records.get(META_KEY)
        pid = meta.get("partition-id", "?") if meta is not None else "?"
        return f"node {reply.metadata.src_node_id} (partition {pid})"

    @staticmethod
    def _apply(current: ArrayRecord, mean: np.ndarray) -> ArrayRecord:
        """``current + mean`` per array (``current``: the global model), cast back to each
        array's dtype."""
        out = ArrayRecord()
        offset = 0
        for key, ref in current.items():
            old = ref.numpy()
            size = old.size
            new = old.astype(np.float64) + mean[offset : offset + size].reshape(old.shape)
            offset += size
            if np.issubdtype(old.dtype, np.integer):
                new = np.rint(new)
            out[key] = Array(new.astype(old.dtype))
        if offset != mean.size:
            raise P.SecAggError(f"unmasked vector has {mean.size} values, model has {offset}")
        return out


def _check_masked_reply(reply: Message, size: int) -> tuple[int, str | None]:
    """``(weight, None)`` for a well-formed masked reply, else ``(0, reason)``."""
    masked = reply.content[MASKED_KEY]
    if list(masked.keys()) != [MASKED_KEY]:
        return 0, f"masked record holds arrays {sorted(masked.keys())}"
    try:
        vector = masked[MASKED_KEY].numpy()
    except Exception as exc:  # forged bytes that do not decode to the declared array
        return 0, f"masked vector does not decode ({type(exc).__name__})"
    if vector.dtype != np.uint64 or vector.shape != (size,):
        return 0, f"masked vector is {vector.dtype}{list(vector.shape)}, expected uint64[{size}]"
    if CONFIG_KEY not in reply.content.config_records:
        return 0, f"no '{CONFIG_KEY}' record with the weight"
    weight = reply.content[CONFIG_KEY].get("weight")
    if not isinstance(weight, int) or isinstance(weight, bool) or weight < 0:
        return 0, f"weight {weight!r} is not an integer ≥ 0"
    if len(reply.content.metric_records) != 1:
        return 0, f"{len(reply.content.metric_records)} metric records, expected 1"
    return weight, None


def _reply_metrics(reply: Message, weight: int) -> dict:
    """The silo's plain metrics, weighted by the weight its masked vector carries."""
    metrics = dict(next(iter(reply.content.metric_records.values())).items())
    metrics["num-examples"] = weight
    return metrics
