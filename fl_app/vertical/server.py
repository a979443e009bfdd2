"""The label party's side of vertical mode: the body of the ServerApp.

``run_vertical(grid, cfg)``:

1. waits for one SuperNode per feature party (``vertical.split`` minus the label party);
2. private set intersection (X25519 DH-PSI, :mod:`strategies.vertical.psi`) of record ids
   with every party, then tells each party which of its records are aligned;
3. splits the aligned records into training and held-out sets (``data.test-fraction``,
   stratified by label, seeded);
4. per epoch (``num-server-rounds`` epochs) and mini-batch (``vertical.batch-size``):
   one ``train.vertical_step`` round trip carries the gradient of the previous batch's
   embeddings and the ids of the next batch, and brings back that batch's embeddings;
   the top model (and the label party's own bottom) step on the loss;
5. after every epoch evaluates on the held-out aligned records (ROC-AUC, PR-AUC,
   accuracy, log-loss) and logs per-epoch communication: bytes of embeddings and
   gradients as serialised in the messages.

Every exchange has a deadline (``vertical.timeout``); a party that fails, drops or sends
malformed data stops the run with a :class:`~fl_app.vertical.VerticalError` naming the
party, its node and the step — never a hang. (Degraded training without a party's
features would silently change the model, so it is not attempted.)

Per-batch round trips are the price of exact split learning: sending all of an epoch's
batches in one message would let parties embed batch t+1 before applying batch t's
gradient (stale embeddings). Large batches keep the number of round trips small.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fl_app import LOG
from fl_app.config import RunConfig
from fl_app.federation import make_run_dir
from fl_app.polling import poll_replies
from fl_app.sinks import ConsoleSink, RunDirSink, Sinks, privacy_status
from fl_app.vertical import ALIGN, DATA, EMBED, META, PSI, STEP, VerticalError
from strategies.vertical.psi import PSIKey, align, label_match, label_round1
from strategies.vertical.split import (
    binary_metrics,
    build_bottom,
    build_top,
    class_weights_for,
    clip_rows,
    epoch_batches,
    sgd,
    top_step,
)
from tasks.partitioning import stratified_split
from tasks.vertical import VerticalDataError, parse_split, party_data, vertical_spec


@dataclass
class VerticalResult:
    """What a vertical run produced."""

    metrics: list[dict] = field(default_factory=list)
    run_dir: Path | None = None
    aligned: int = 0
    label_records: int = 0
    party_records: dict[int, int] = field(default_factory=dict)
    train_size: int = 0
    test_size: int = 0
    bytes_per_epoch: dict[str, int] = field(default_factory=dict)
    #: Label-party row of every aligned record (aligned index k → row), the test split.
    label_rows: np.ndarray | None = None
    train_ids: np.ndarray | None = None
    test_ids: np.ndarray | None = None


def _who(node: int, parties: dict[int, int]) -> str:
    return f"party {parties[node]} (node {node})" if node in parties else f"node {node}"


def exchange(
    grid: Grid, messages: Sequence[Message], timeout: float, what: str, parties: dict[int, int]
) -> dict[int, Message]:
    """Push ``messages`` (one per node), poll for the replies until ``timeout``; returns
    ``{node_id: reply}``. Raises :class:`VerticalError` for a missing or failed reply.

    Polls with a short, growing interval (5 ms → 200 ms) instead of ``send_and_receive``'s
    fixed 3 s: a vertical epoch is many small round trips.
    """
    pulled, pending = poll_replies(
        grid, messages, timeout=timeout, first_interval=0.005, max_interval=0.2
    )
    if pending:
        answered = {reply.metadata.src_node_id for reply in pulled}
        late = sorted({m.metadata.dst_node_id for m in messages} - answered)
        missing = ", ".join(_who(n, parties) for n in late)
        raise VerticalError(
            f"{what}: no reply from {missing} within vertical.timeout={timeout}s; the "
            "party dropped out or is too slow. Vertical training needs every party's "
            "features, so the run stops; restart the party's SuperNode or raise "
            "vertical.timeout."
        )
    replies = {reply.metadata.src_node_id: reply for reply in pulled}
    for node, reply in replies.items():
        if reply.has_error():
            raise VerticalError(f"{what}: {_who(node, parties)} failed: {reply.error.reason}")
    return replies


def _message(node: int, kind: str, arrays: dict[str, np.ndarray], **meta) -> Message:
    content = RecordDict(
        {
            META: ConfigRecord(meta),
            DATA: ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()}),
        }
    )
    return Message(content, dst_node_id=node, message_type=kind)


def _array_bytes(record: ArrayRecord, keys: Sequence[str]) -> int:
    return sum(len(record[k].data) for k in keys if k in record)


def wait_for_parties(grid: Grid, needed: int, timeout: float) -> list[int]:
    """Node ids once at least ``needed`` SuperNodes are connected (else an error)."""
    deadline = time.monotonic() + timeout
    while len(nodes := sorted(grid.get_node_ids())) < needed:
        if time.monotonic() > deadline:
            raise VerticalError(
                f"only {len(nodes)} SuperNodes connected within vertical.timeout={timeout}s; "
                f"vertical.split names {needed} feature parties (one SuperNode each)"
            )
        time.sleep(0.2)
    return nodes


def private_alignment(
    grid: Grid, cfg: RunConfig, groups: list[list[str]], label_ids: list[str]
) -> tuple[dict[int, int], np.ndarray, dict[int, int]]:
    """PSI with every feature party and alignment. Returns ``({party: node},
    label rows of the aligned records, {party: its record count})``."""
    n_parties = len(groups) - 1
    nodes = wait_for_parties(grid, n_parties, cfg.vertical.timeout)
    key = PSIKey()
    sent, label_order = label_round1(label_ids, key)
    replies = exchange(
        grid, [_message(n, PSI, {"points": sent}) for n in nodes],
        cfg.vertical.timeout, "private set intersection", {},
    )  # fmt: skip
    party_node: dict[int, int] = {}
    for node, reply in replies.items():
        meta = reply.content[META]
        if meta.get("idle", False):
            LOG.info("[fedsilo] vertical: node %d has no feature group (idle)", node)
            continue
        party = int(meta["party"])
        if party in party_node:
            raise VerticalError(
                f"nodes {party_node[party]} and {node} both claim party {party}; give every "
                "SuperNode its own partition-id"
            )
        columns = list(meta["columns"])
        if columns != groups[party]:
            raise VerticalDataError(
                f"schema mismatch: party {party} (node {node}) holds columns {columns} but "
                f"vertical.split assigns it {groups[party]}; use the same run config everywhere"
            )
        party_node[party] = node
    missing = [p for p in range(1, len(groups)) if p not in party_node]
    if missing:
        raise VerticalError(
            f"no SuperNode holds feature part{'ies' if len(missing) > 1 else 'y'} {missing} "
            f"(partition-id {[p - 1 for p in missing]}); start one SuperNode per party"
        )
    matches, counts = [], {}
    for party in range(1, len(groups)):
        reply = replies[party_node[party]]
        arrays = reply.content[DATA]
        counts[party] = int(reply.content[META]["num-records"])
        match = label_match(arrays["double"].numpy(), label_order, arrays["points"].numpy(), key)
        if not match:
            raise VerticalDataError(
                f"party {party} (node {party_node[party]}) shares no record ids with the label "
                f"party ({len(label_ids)} vs {counts[party]} records); check that every party "
                "uses the same id column and id format"
            )
        LOG.info("[fedsilo] vertical PSI: party %d shares %d of %d label records",
                 party, len(match), len(label_ids))  # fmt: skip
        matches.append(match)
    rows, positions = align(matches, cfg.seed)
    if len(rows) < 10:
        raise VerticalDataError(
            f"only {len(rows)} records are held by every party; vertical training needs more"
        )
    nodes_of = {v: k for k, v in party_node.items()}
    acks = exchange(
        grid,
        [_message(party_node[p], ALIGN, {"positions": positions[p - 1]})
         for p in range(1, len(groups))],
        cfg.vertical.timeout, "alignment", nodes_of,
    )  # fmt: skip
    for node, reply in acks.items():
        if int(reply.content[META]["aligned"]) != len(rows):
            raise VerticalError(f"party {nodes_of[node]} aligned a different number of records")
    return party_node, rows, counts


def run_vertical(grid: Grid, cfg: RunConfig, extra_sinks: Sequence = ()) -> VerticalResult:
    """Run vertical federated training as the label party; returns the metrics."""
    torch.set_num_threads(1)
    spec = vertical_spec(cfg.task)
    groups = parse_split(cfg.vertical.split, spec)
    run_dir = make_run_dir(cfg, "vertical")
    privacy = privacy_status(cfg)  # embedding noise: marks the run (not) private
    sink = RunDirSink(run_dir, privacy=privacy)
    sinks = Sinks(ConsoleSink(), sink, *extra_sinks, privacy=privacy)
    sinks.log_params({**cfg.to_flower(), "config-hash": cfg.fingerprint()})
    label = party_data(
        cfg.task, cfg.data.source, tuple(groups[0]), party=0,
        coverage=cfg.vertical.coverage, seed=cfg.seed, with_labels=True,
    )  # fmt: skip
    party_node, rows, counts = private_alignment(grid, cfg, groups, label.ids)
    nodes_of = {v: k for k, v in party_node.items()}
    parties = list(range(1, len(groups)))

    x0 = torch.from_numpy(label.x[rows])
    y = torch.from_numpy(label.y[rows])
    train_idx, test_idx = stratified_split(label.y[rows], cfg.data.test_fraction, seed=cfg.seed)
    train_ids, test_ids = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    result = VerticalResult(
        run_dir=run_dir, aligned=len(rows), label_records=len(label.ids),
        party_records=counts, train_size=len(train_ids), test_size=len(test_ids),
        label_rows=rows, train_ids=train_idx, test_ids=test_idx,
    )  # fmt: skip
    (run_dir / "alignment.json").write_text(json.dumps({
        "label-records": len(label.ids), "party-records": counts, "aligned": len(rows),
        "train": len(train_ids), "held-out": len(test_ids),
    }, indent=1) + "\n")  # fmt: skip
    LOG.info(
        "[fedsilo] vertical: %d aligned records (label party %d, parties %s); train %d, "
        "held-out %d; %d epochs of batch %d",
        len(rows), len(label.ids), counts, len(train_ids), len(test_ids),
        cfg.num_server_rounds, cfg.vertical.batch_size,
    )  # fmt: skip

    emb = cfg.vertical.embedding_dim
    bottom0 = build_bottom(x0.shape[1], emb, cfg.seed, 0)
    top = build_top(len(groups), emb, cfg.seed)
    optimizer = sgd(
        torch.nn.ModuleList([bottom0, top]), cfg.training.learning_rate, cfg.training.momentum
    )
    weights = class_weights_for(y[train_ids])

    def received(replies: dict[int, Message], n: int, what: str) -> list[torch.Tensor]:
        out = []
        for p in parties:
            arrays = replies[party_node[p]].content[DATA]
            if "embedding" not in arrays:
                raise VerticalError(f"{what}: party {p} sent no embedding")
            e = arrays["embedding"].numpy()
            if e.shape != (n, emb) or e.dtype != np.float32 or not np.isfinite(e).all():
                raise VerticalError(
                    f"{what}: party {p} (node {party_node[p]}) sent an embedding of shape "
                    f"{e.shape} {e.dtype} (finite: {bool(np.isfinite(e).all())}); expected "
                    f"({n}, {emb}) float32 — its vertical.embedding-dim or data differ"
                )
            out.append(torch.from_numpy(e))
        return out

    def evaluate(epoch: int) -> dict[str, float]:
        replies = exchange(
            grid,
            [_message(party_node[p], EMBED, {"ids": test_idx}, epoch=epoch) for p in parties],
            cfg.vertical.timeout, f"evaluation after epoch {epoch}", nodes_of,
        )  # fmt: skip
        with torch.no_grad():
            e = [bottom0(x0[test_ids]), *received(replies, len(test_ids), "evaluation")]
            p1 = torch.softmax(top(torch.cat(e, dim=1)), dim=1)[:, 1]
        return binary_metrics(y[test_ids], p1)

    sinks.log_metrics(0, "server", {**evaluate(0), "num-examples": len(test_ids)})
    for epoch in range(1, cfg.num_server_rounds + 1):
        started = time.monotonic()
        batches = epoch_batches(train_ids, cfg.vertical.batch_size, cfg.seed, epoch)
        sent_bytes = recv_bytes = 0
        total_loss = 0.0
        pending: dict[int, np.ndarray] = {}
        prev_ids: np.ndarray | None = None
        for b, ids_t in enumerate([*batches, None]):
            messages = []
            for p in parties:
                arrays: dict[str, np.ndarray] = {}
                if ids_t is not None:
                    arrays["ids"] = ids_t.numpy()
                if prev_ids is not None:
                    arrays["grad"], arrays["grad-ids"] = pending[p], prev_ids
                messages.append(_message(party_node[p], STEP, arrays, epoch=epoch, batch=b))
            sent_bytes += sum(_array_bytes(m.content[DATA], ["grad"]) for m in messages)
            replies = exchange(
                grid, messages, cfg.vertical.timeout, f"epoch {epoch} batch {b}", nodes_of
            )
            if ids_t is None:
                break
            recv_bytes += sum(
                _array_bytes(r.content[DATA], ["embedding"]) for r in replies.values()
            )
            embeddings = [bottom0(x0[ids_t]), *received(replies, len(ids_t), f"batch {b}")]
            optimizer.zero_grad()
            loss, grads = top_step(top, embeddings, y[ids_t], weights)
            optimizer.step()
            total_loss += float(loss) * len(ids_t)
            pending = {
                p: clip_rows(grads[i], cfg.vertical.gradient_clip).numpy()
                for i, p in enumerate(parties, start=1)
            }
            prev_ids = ids_t.numpy()
        metrics = {
            **evaluate(epoch),
            "train-loss": total_loss / len(train_ids),
            "embedding-bytes": float(recv_bytes),
            "gradient-bytes": float(sent_bytes),
            "round-trips": float(len(batches) + 1),
            "epoch-seconds": time.monotonic() - started,
            "num-examples": len(test_ids),
        }
        result.bytes_per_epoch = {"embeddings": recv_bytes, "gradients": sent_bytes}
        sinks.log_metrics(epoch, "server", metrics)

    torch.save(
        {"top": top.state_dict(), "bottom-0": bottom0.state_dict(), "columns": groups},
        run_dir / "model.pt",
    )
    sinks.close()
    result.metrics = list(sink.rows)
    final = result.metrics[-1]
    LOG.info(
        "[fedsilo] vertical done: held-out roc-auc=%.4f pr-auc=%.4f accuracy=%.4f; %s",
        final["roc-auc"], final["pr-auc"], final["accuracy"], run_dir,
    )  # fmt: skip
    return result
