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
  the cohort's total ``num-examples`` and example-weighted metrics — so FedAvg, FedProx,
  FedAvgM, FedAdam, FedYogi and FedAdagrad aggregate exactly as without secure
  aggregation (up to quantisation error ≤ clip-range / (2^bits − 1) per coordinate).

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

from strategies.secagg import protocol as P
from strategies.secagg.client import CONFIG_KEY, KEYS, MASKED_KEY, SHARES, UNMASK, round_context
from strategies.wrappers import StrategyWrapper


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
    ) -> None:
        super().__init__(inner)
        self.threshold = threshold
        self.clip_range = clip_range
        self.bits = bits
        self.timeout = timeout
        self._grid: Grid | None = None
        self._global: ArrayRecord | None = None
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
            "round skipped (lower secagg-threshold or raise min-train-nodes)",
            server_round, need, stage, got,
        )  # fmt: skip
        self._round = {}
        return []

    # ------------------------------------------------------------------ train
    def configure_train(self, server_round, arrays, config, grid):
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        self._grid, self._global = grid, arrays
        self._round = {}
        sampled = sorted(m.metadata.dst_node_id for m in messages)
        if not sampled:
            return messages
        t = P.threshold_for(len(sampled), self.threshold)
        # Uploads are 8 bytes per parameter: within the automatic 'max-update-bytes'
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
        if not state or state["round"] != server_round or self._global is None:
            return None, None
        t, members = state["t"], state["members"]
        inputs = {
            r.metadata.src_node_id: r
            for r in replies
            if not r.has_error() and MASKED_KEY in r.content.array_records
            and r.metadata.src_node_id in members
        }  # fmt: skip
        survivors = sorted(inputs)
        dropped = sorted(set(members) - set(survivors))
        self.history[server_round].update(survivors=survivors, dropped=dropped)
        if len(survivors) < t:
            self._abort(server_round, "masked-input", len(survivors), t)
            return None, MetricRecord({"secagg-survivors": len(survivors)})

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
            c = r.content[CONFIG_KEY]
            x = int(c["x"])
            for node, share in zip(c["b-ids"], c["b-shares"], strict=True):
                if int(node) in b_shares:
                    b_shares[int(node)].append((x, bytes(share)))
            for node, share in zip(c["sk-ids"], c["sk-shares"], strict=True):
                if int(node) in sk_shares:
                    sk_shares[int(node)].append((x, bytes(share)))
        try:
            self_seeds = [P.shamir_reconstruct(b_shares[n], t) for n in survivors]
            dropped_keys = {v: P.shamir_reconstruct(sk_shares[v], t) for v in dropped}
        except P.SecAggError as exc:
            log(WARNING, "round %d: cannot unmask (%s); round skipped", server_round, exc)
            return None, MetricRecord({"secagg-survivors": len(survivors)})
        context = round_context(state["session"], server_round)
        dropped_pairs = [
            (P.agree(dropped_keys[v], state["s-pk"][u], context), P.pair_sign(u, v))
            for u in survivors
            for v in dropped
        ]
        masked = [inputs[u].content[MASKED_KEY][MASKED_KEY].numpy() for u in survivors]
        weights = [int(inputs[u].content[CONFIG_KEY]["weight"]) for u in survivors]
        total_weight = sum(weights)
        if total_weight > P.max_weight_sum(self.bits):
            log(WARNING, "round %d: total weight %d overflows the ring at %d bits; skipped",
                server_round, total_weight, self.bits)  # fmt: skip
            return None, MetricRecord({"secagg-survivors": len(survivors)})
        total = P.unmask_sum(masked, self_seeds, dropped_pairs)
        mean = P.dequantize_mean(total, total_weight, self.clip_range, self.bits)

        aggregate = self._apply(mean)
        metrics = _weighted_metrics(
            [next(iter(inputs[u].content.metric_records.values())) for u in survivors], weights
        )
        metrics["num-examples"] = total_weight
        content = RecordDict({"arrays": aggregate, "metrics": MetricRecord(metrics)})
        synthetic = Message(content, dst_node_id=0, message_type="train")
        arrays, agg_metrics = self.inner.aggregate_train(server_round, [synthetic])
        agg_metrics = MetricRecord(dict(agg_metrics.items()) if agg_metrics else {})
        agg_metrics["secagg-survivors"] = len(survivors)
        agg_metrics["secagg-dropouts"] = len(dropped)
        self._round = {}
        return arrays, agg_metrics

    def _apply(self, mean: np.ndarray) -> ArrayRecord:
        """``global + mean`` per array, cast back to each array's dtype."""
        out = ArrayRecord()
        offset = 0
        for key, ref in self._global.items():
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


def _weighted_metrics(records: list[MetricRecord], weights: list[int]) -> dict[str, float]:
    """Example-weighted mean of every numeric metric the replies have in common."""
    total = sum(weights) or 1
    keys = set.intersection(*(set(r.keys()) for r in records)) - {"num-examples"}
    out = {}
    for key in sorted(keys):
        values = [r[key] for r in records]
        if all(isinstance(v, int | float) for v in values):
            out[key] = float(sum(w * v for w, v in zip(weights, values, strict=True)) / total)
    return out
