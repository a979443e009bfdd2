"""The feature party's side of vertical mode: handlers registered on the app's ClientApp.

A feature party is the SuperNode with ``partition-id = p - 1`` for party ``p`` of
``vertical.split``; it holds those columns of its own records (its node config's
``data-source``, or its coverage sample of the run's shared ``data.source``) and a bottom
model. Between messages its state (PSI secret, aligned rows, bottom weights, momentum,
the embedding-noise generator) lives in the node's ``context.state``; nothing but
embeddings, PSI points and counts leaves the party.

The embedding noise is drawn from a generator whose state comes from OS entropy
(:func:`~strategies.privacy.randomness.secret_generator`) and is kept in the party's
context for the run, never rewound: the label party, which receives the embeddings, can
neither regenerate the noise from the run config nor cancel it by asking for the same
batch twice. Only ``dp.reproducible-noise`` seeds it from (seed, party, epoch, batch),
for research reruns.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fl_app.config import RunConfig
from fl_app.vertical import DATA, META, STATE_KEY, STATE_MODEL, STATE_MOMENTUM
from fl_core.seeding import derive_seed
from strategies.privacy.randomness import generator_state, restore_generator, secret_generator
from strategies.vertical.psi import PSIKey, party_respond
from strategies.vertical.split import (
    bottom_step,
    build_bottom,
    momentum_buffers,
    noisy,
    party_embedding,
    restore_momentum,
    sgd,
)
from tasks.vertical import PartyData, parse_split, party_data, vertical_spec


def _party(context: Context) -> tuple[RunConfig, int, list[list[str]]]:
    cfg = RunConfig.from_flower(context.run_config)
    groups = parse_split(cfg.vertical.split, vertical_spec(cfg.task))
    try:
        party = int(context.node_config["partition-id"]) + 1
    except KeyError:
        raise KeyError(
            "SuperNode node config lacks 'partition-id'; start it with "
            '--node-config "partition-id=<i> num-partitions=<n>"'
        ) from None
    return cfg, party, groups


def _data(cfg: RunConfig, party: int, groups: list[list[str]], context: Context) -> PartyData:
    own = context.node_config.get("data-source")
    return party_data(
        cfg.task,
        str(own) if own else cfg.data.source,
        tuple(groups[party]),
        party=party,
        coverage=cfg.vertical.coverage,
        seed=cfg.seed,
        with_labels=False,
        shared=not own,
    )


def _reply(msg: Message, party: int, arrays: dict[str, np.ndarray], **meta) -> Message:
    content = RecordDict(
        {
            META: ConfigRecord({"party": party, **meta}),
            DATA: ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()}),
        }
    )
    return Message(content, reply_to=msg)


def psi(msg: Message, context: Context) -> Message:
    """PSI round 1: re-blind the label party's points, blind this party's own ids."""
    cfg, party, groups = _party(context)
    if party >= len(groups):  # more SuperNodes than feature parties: this one idles
        return _reply(msg, party, {}, idle=True)
    data = _data(cfg, party, groups, context)
    key = PSIKey()
    received = msg.content[DATA]["points"].numpy()
    double, points, order = party_respond(received, data.ids, key)
    context.state[STATE_KEY] = ConfigRecord({"psi-key": key.to_bytes()})
    context.state["vertical-order"] = ArrayRecord({"order": Array(order.astype(np.int64))})
    return _reply(
        msg,
        party,
        {"double": double, "points": points},
        columns=list(data.columns),
        **{"num-features": int(data.x.shape[1]), "num-records": len(data.ids)},
    )


def align(msg: Message, context: Context) -> Message:
    """Keep the aligned records (aligned index → own row) and initialise the bottom."""
    cfg, party, groups = _party(context)
    data = _data(cfg, party, groups, context)
    order = context.state["vertical-order"]["order"].numpy()
    positions = msg.content[DATA]["positions"].numpy()
    if len(positions) and (positions.min() < 0 or positions.max() >= len(order)):
        raise ValueError("alignment names positions outside this party's PSI list")
    rows = order[positions]
    bottom = build_bottom(data.x.shape[1], cfg.vertical.embedding_dim, cfg.seed, party)
    context.state["vertical-rows"] = ArrayRecord({"rows": Array(rows.astype(np.int64))})
    context.state[STATE_MODEL] = ArrayRecord(bottom.state_dict())
    context.state[STATE_MOMENTUM] = ArrayRecord({})
    del context.state["vertical-order"]  # PSI state is no longer needed
    return _reply(msg, party, {}, aligned=len(rows))


def _features(data: PartyData, context: Context, ids: np.ndarray) -> torch.Tensor:
    rows = context.state["vertical-rows"]["rows"].numpy()
    if len(ids) and (ids.min() < 0 or ids.max() >= len(rows)):
        raise ValueError(f"aligned ids outside 0..{len(rows) - 1}")
    return torch.from_numpy(data.x[rows[ids]])


def _load_bottom(cfg: RunConfig, data: PartyData, party: int, context: Context):
    bottom = build_bottom(data.x.shape[1], cfg.vertical.embedding_dim, cfg.seed, party)
    bottom.load_state_dict(context.state[STATE_MODEL].to_torch_state_dict())
    optimizer = sgd(bottom, cfg.training.learning_rate, cfg.training.momentum)
    saved = context.state[STATE_MOMENTUM]
    restore_momentum(bottom, optimizer, saved.to_torch_state_dict() if len(saved) else {})
    return bottom, optimizer


#: context.state key of the party's secret embedding-noise generator state.
STATE_NOISE = "vertical-noise-generator"


def _embed(cfg, bottom, x, party: int, context: Context, *tag) -> np.ndarray:
    with torch.no_grad():
        e = party_embedding(bottom, x, cfg.vertical.embedding_clip)
        if cfg.vertical.noise_multiplier <= 0:
            return e.numpy()
        if cfg.dp.reproducible_noise:  # research only: the label party can regenerate it
            gen = torch.Generator().manual_seed(
                derive_seed(cfg.seed, "vertical-noise", party, *tag)
            )
        else:
            saved = context.state.config_records.get(STATE_NOISE)
            gen = restore_generator(saved["state"]) if saved else secret_generator()
        e = noisy(e, cfg.vertical.embedding_clip, cfg.vertical.noise_multiplier, gen)
        if not cfg.dp.reproducible_noise:
            context.state[STATE_NOISE] = ConfigRecord({"state": generator_state(gen)})
    return e.numpy()


def step(msg: Message, context: Context) -> Message:
    """Apply the gradient of the previous batch (``grad`` for ``grad-ids``), then return
    the embedding of ``ids`` (the next batch)."""
    torch.set_num_threads(1)
    cfg, party, groups = _party(context)
    data = _data(cfg, party, groups, context)
    bottom, optimizer = _load_bottom(cfg, data, party, context)
    arrays = msg.content[DATA]
    meta = msg.content[META]
    if "grad" in arrays:
        grad = torch.from_numpy(arrays["grad"].numpy())
        optimizer.zero_grad()
        x = _features(data, context, arrays["grad-ids"].numpy())
        bottom_step(party_embedding(bottom, x, cfg.vertical.embedding_clip), grad)
        optimizer.step()
        context.state[STATE_MODEL] = ArrayRecord(bottom.state_dict())
        context.state[STATE_MOMENTUM] = ArrayRecord(momentum_buffers(bottom, optimizer))
    out = {}
    if "ids" in arrays:
        ids = arrays["ids"].numpy()
        tag = ("train", int(meta["epoch"]), int(meta["batch"]))
        x = _features(data, context, ids)
        out["embedding"] = _embed(cfg, bottom, x, party, context, *tag)
    return _reply(msg, party, out)


def embed(msg: Message, context: Context) -> Message:
    """Embeddings of held-out aligned records (evaluation; no training)."""
    torch.set_num_threads(1)
    cfg, party, groups = _party(context)
    data = _data(cfg, party, groups, context)
    bottom, _ = _load_bottom(cfg, data, party, context)
    ids = msg.content[DATA]["ids"].numpy()
    tag = ("eval", int(msg.content[META]["epoch"]))
    x = _features(data, context, ids)
    return _reply(msg, party, {"embedding": _embed(cfg, bottom, x, party, context, *tag)})


def register(app: ClientApp) -> None:
    """Add the vertical handlers to ``app`` (message types in :mod:`fl_app.vertical`)."""
    app.query("vertical_psi")(psi)
    app.query("vertical_align")(align)
    app.train("vertical_step")(step)
    app.query("vertical_embed")(embed)
