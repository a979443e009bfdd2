"""Fewer objects per message: every multi-array ArrayRecord travels as one packed Array.

Flower 1.42 moves a message as a tree of content-addressed objects (the message, its
RecordDict, each record, each Array and each Array's chunks), and its transport pushes and
pulls every object with its own request on every hop (ServerApp ↔ SuperLink ↔ SuperNode ↔
ClientApp). A model of *k* tensors is therefore ``2k + 2`` objects per ArrayRecord; on the
deployment runtime those requests, not the training, were most of a small round's CPU
(docs/efficiency.md, "Deployment round cost").

:func:`pack_content` replaces each ArrayRecord of two or more Arrays with an ArrayRecord
holding **one** Array: the Arrays' serialised bytes, concatenated as they are (no
re-encoding), and records where each came from in one ConfigRecord (``PACKED_KEY``).
:func:`unpack_content` rebuilds the exact Arrays (same keys in the same order, dtype,
shape, stype and bytes), so everything above the transport sees what it would have seen
without packing, bit for bit. Content without ArrayRecords of several Arrays is returned
as it is.

Both ends of the app use it:

- the ServerApp wraps its Grid in :class:`PackingGrid` (instructions packed on push, replies
  unpacked on pull);
- the ClientApp's :func:`packing_mod` unpacks an instruction that arrived packed and packs
  its reply the same way; an instruction that arrived unpacked (a ServerApp without
  packing) gets an unpacked reply, so either side works with a peer that does not pack.

It is a transport concern only: no strategy, task or wrapper knows about it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid

from fl_app import LOG
from fl_app.polling import DelegatingGrid

__all__ = [
    "PACKED_KEY",
    "PACKED_STYPE",
    "PackingGrid",
    "pack_content",
    "packing_mod",
    "unpack_content",
]

#: The ConfigRecord that marks packed content: record name → JSON list of
#: ``[key, dtype, shape, stype, nbytes]`` of the Arrays packed into that record.
PACKED_KEY = "fedsilo.packed"

#: ``stype`` of a packed Array (raw concatenated bytes, not an ``.npy`` payload).
PACKED_STYPE = "fedsilo.packed/1"

#: The key of the one Array of a packed ArrayRecord.
_ARRAY = "packed"


def _pack_record(record: ArrayRecord) -> tuple[ArrayRecord, str]:
    layout = [[k, a.dtype, list(a.shape), a.stype, len(a.data)] for k, a in record.items()]
    data = b"".join(a.data for a in record.values())
    packed = Array(dtype="uint8", shape=(len(data),), stype=PACKED_STYPE, data=data)
    return ArrayRecord({_ARRAY: packed}), json.dumps(layout, separators=(",", ":"))


def pack_content(
    content: RecordDict, cache: dict[int, tuple[ArrayRecord, ArrayRecord, str]] | None = None
) -> RecordDict:
    """``content`` with each ArrayRecord of two or more Arrays packed into one Array (see
    the module doc); ``content`` itself if there is nothing to pack. ``cache`` (keyed by
    the record's ``id``, holding the record so the id stays its own) lets messages that share
    one ArrayRecord, such as a round's instructions sharing the global model, share one
    packed record too."""
    if PACKED_KEY in content:
        raise ValueError(f"content already has a '{PACKED_KEY}' record: packed twice?")
    layouts: dict[str, str] = {}
    out: dict = {}
    for name, record in content.items():
        if isinstance(record, ArrayRecord) and len(record) > 1:
            hit = None if cache is None else cache.get(id(record))
            if hit is None or hit[0] is not record:
                packed, layout = _pack_record(record)
                if cache is not None:
                    cache[id(record)] = (record, packed, layout)
            else:
                _, packed, layout = hit
            out[name], layouts[name] = packed, layout
        else:
            out[name] = record
    if not layouts:
        return content
    out[PACKED_KEY] = ConfigRecord(layouts)
    return RecordDict(out)


def unpack_content(content: RecordDict) -> RecordDict:
    """The original content of packed ``content`` (:func:`pack_content`); ``content``
    itself when it is not packed. A packed record that does not match its layout (a
    truncated or tampered payload) raises ``ValueError`` naming the record."""
    if PACKED_KEY not in content:
        return content
    layouts = content[PACKED_KEY]
    if not isinstance(layouts, ConfigRecord):
        raise ValueError(f"'{PACKED_KEY}' must be a ConfigRecord, got {type(layouts).__name__}")
    out: dict = {}
    for name, record in content.items():
        if name == PACKED_KEY:
            continue
        if name not in layouts:
            out[name] = record
            continue
        out[name] = _unpack_record(name, record, layouts[name])
    missing = set(layouts) - set(out)
    if missing:
        raise ValueError(f"packed content lacks the records {sorted(missing)} its layout names")
    return RecordDict(out)


def _unpack_record(name: str, record: object, layout_json: object) -> ArrayRecord:
    if (
        not isinstance(record, ArrayRecord)
        or list(record.keys()) != [_ARRAY]
        or record[_ARRAY].stype != PACKED_STYPE
    ):
        raise ValueError(f"record '{name}' is listed as packed but is not a packed ArrayRecord")
    try:
        layout = json.loads(str(layout_json))
        data = record[_ARRAY].data
        if sum(int(entry[4]) for entry in layout) != len(data):
            raise ValueError("sizes do not add up to the payload")
        arrays: dict[str, Array] = {}
        start = 0
        for key, dtype, shape, stype, nbytes in layout:
            end = start + int(nbytes)
            arrays[str(key)] = Array(
                dtype=str(dtype), shape=tuple(int(s) for s in shape), stype=str(stype),
                data=data[start:end],
            )  # fmt: skip
            start = end
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"packed record '{name}' does not match its layout: {exc}") from exc
    return ArrayRecord(arrays)


def _with_content(msg: Message, content: RecordDict) -> None:
    if content is not msg.content:
        msg.content = content


class PackingGrid(DelegatingGrid):
    """The ServerApp's ``grid``, with instructions packed on the way out and replies
    unpacked on the way in (see the module doc). The caller's messages keep their own
    content; each gets the message id of what was pushed, so replies match as before."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self._told: set[str] = set()

    def _once(self, what: str, text: str) -> None:
        if what not in self._told:
            self._told.add(what)
            LOG.info("[fedsilo] transport: %s", text)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        cache: dict[int, tuple[ArrayRecord, ArrayRecord, str]] = {}
        # What is pushed is a packed copy: an in-memory Grid (the simulation's) hands the
        # pushed object itself to the ClientApp, so the caller's message must not change.
        wire = []
        for msg in messages:
            content = pack_content(msg.content, cache) if msg.has_content() else None
            if content is None or content is msg.content:
                wire.append(msg)
                continue
            md = msg.metadata
            wire.append(
                Message(
                    content,
                    dst_node_id=md.dst_node_id,
                    message_type=md.message_type,
                    ttl=md.ttl,
                    group_id=md.group_id,
                )
            )
        for record, _packed, _ in cache.values():
            self._once("push", f"instructions carry {len(record)} arrays as 1 packed array")
        ids = list(self.grid.push_messages(wire))
        for msg, sent in zip(messages, wire, strict=True):
            if sent is not msg:  # the caller matches replies by its message's id
                msg.metadata.__dict__["_message_id"] = sent.metadata.message_id
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self.grid.pull_messages(message_ids))
        for reply in replies:
            if reply.has_content() and PACKED_KEY in reply.content:
                _with_content(reply, unpack_content(reply.content))
                self._once("pull", "replies arrive packed and are unpacked")
        return replies

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Flower's own loop (``HttpGrid.send_and_receive``: pull at once, then every 3 s)
        through this Grid's packing push and unpacking pull."""
        pending = {i for i in self.push_messages(messages) if i is not None}
        end = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending:
            pulled = list(self.pull_messages(pending))
            replies.extend(pulled)
            pending.difference_update(m.metadata.reply_to_message_id for m in pulled)
            if not pending or (end is not None and time.monotonic() >= end):
                break
            time.sleep(3 if end is None else max(0.0, min(3.0, end - time.monotonic())))
        return replies


def packing_mod(msg: Message, context: Context, call_next: Callable) -> Message:
    """ClientApp mod: unpack a packed instruction before any handler or other mod sees it,
    and pack the reply of a packed instruction (see the module doc)."""
    if not msg.has_content() or PACKED_KEY not in msg.content:
        return call_next(msg, context)
    msg.content = unpack_content(msg.content)
    reply = call_next(msg, context)
    if reply.has_content():
        _with_content(reply, pack_content(reply.content))
    return reply
