"""Compression on Flower records: the client's train reply, the server's decoding, and
the real serialised size of a message.

Client (``fl_app.client_app.train``): :func:`compress_train_content` replaces the reply's
``arrays`` ArrayRecord by a ``compressed`` ArrayRecord: one uint8 ``payload`` Array with
the encoded DELTA of the float tensors w.r.t. the global model the silo received and
its metadata (see :mod:`.codecs`); non-float arrays travel as they are under
``raw/<key>``. With error feedback the part of the update that was not sent is kept in the
node's persistent state (``context.state["compression-residual"]``) and added to the
next update.

Server: :func:`decompress_content` rebuilds the ordinary ``arrays`` record
(global + decoded delta, original keys, shapes and dtypes), so validation, attack
simulation, DP and every strategy downstream see a normal reply.

:func:`message_bytes` is what Flower puts on the wire for a message: since Flower 1.20
a Message travels as a tree of "inflatable" objects (Message → RecordDict → records →
Arrays → ArrayChunks), each pushed as its ``deflate()`` bytes and deduplicated by
object id; we sum exactly those bytes.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from strategies.compression.codecs import (
    CompressionSpec,
    decode,
    encode,
    error_feedback_step,
    pack_payload,
    unpack_payload,
)

COMPRESSED_KEY = "compressed"  # ArrayRecord with the encoded update
PAYLOAD_KEY = "payload"  # its one uint8 Array (codecs.pack_payload)
RESIDUAL_KEY = "compression-residual"  # ArrayRecord in context.state (error feedback)
RAW_PREFIX = "raw/"


def message_bytes(obj: Message | RecordDict) -> int:
    """Bytes Flower serialises for ``obj``: the sum of ``deflate()`` over its unique
    inflatable objects (what a SuperNode pushes to the SuperLink)."""
    return sum(len(o.deflate()) for o in get_all_nested_objects(obj).values())


def _is_float(arr: Array) -> bool:
    return np.issubdtype(np.dtype(arr.dtype), np.floating)


def float_offsets(record: ArrayRecord) -> tuple[list[str], list[int]]:
    """Keys of the float arrays of ``record`` (in order) and their offsets in the flat
    update vector."""
    keys, offsets = [], [0]
    for key, arr in record.items():
        if _is_float(arr):
            keys.append(key)
            offsets.append(offsets[-1] + int(np.prod(arr.shape, dtype=np.int64)))
    return keys, offsets


def _flat(record: ArrayRecord, keys: list[str], size: int) -> torch.Tensor:
    out = torch.empty(size, dtype=torch.float32)
    start = 0
    for key in keys:
        values = np.asarray(record[key].numpy(), dtype=np.float32).reshape(-1)
        out[start : start + values.size] = torch.from_numpy(values)
        start += values.size
    return out


def compress_train_content(
    content: RecordDict,
    received: ArrayRecord,
    spec: CompressionSpec,
    *,
    state: RecordDict | None,
    error_feedback: bool,
    generator: torch.Generator,
    entropy_coding: bool = True,
    arrays_key: str = "arrays",
) -> RecordDict:
    """The train reply ``content`` with its ``arrays_key`` ArrayRecord compressed as the
    delta w.r.t. ``received`` (the global model this silo trained from)."""
    if spec.scheme == "none":
        return content
    trained: ArrayRecord = content[arrays_key]
    keys, offsets = float_offsets(received)
    delta = _flat(trained, keys, offsets[-1]) - _flat(received, keys, offsets[-1])
    if error_feedback and state is not None:
        residual = None
        saved = state.array_records.get(RESIDUAL_KEY)
        if saved is not None and saved["residual"].shape == (offsets[-1],):
            residual = torch.from_numpy(saved["residual"].numpy().copy())
        arrays, meta, left = error_feedback_step(delta, residual, offsets, spec, generator)
        state[RESIDUAL_KEY] = ArrayRecord({"residual": Array(left.numpy())})
    else:
        arrays, meta = encode(delta, offsets, spec, generator)
    payload = np.frombuffer(pack_payload(arrays, meta, entropy_coding=entropy_coding), np.uint8)
    encoded = ArrayRecord({PAYLOAD_KEY: Array(payload)})
    for key, arr in trained.items():
        if not _is_float(arr):
            encoded[RAW_PREFIX + key] = arr
    out = RecordDict()
    for name, record in content.items():
        if name == arrays_key:
            out[COMPRESSED_KEY] = encoded
        else:
            out[name] = record
    return out


def is_compressed(content: RecordDict) -> bool:
    """True when ``content`` carries a compressed update."""
    return COMPRESSED_KEY in content.array_records


def decompress_content(
    content: RecordDict, reference: ArrayRecord, arrays_key: str = "arrays"
) -> RecordDict:
    """Inverse of :func:`compress_train_content` on the server: ``content`` with the
    ``arrays_key`` ArrayRecord rebuilt as ``reference + decoded delta``. Raises
    ``ValueError`` naming what does not fit."""
    encoded = content.array_records[COMPRESSED_KEY]
    if PAYLOAD_KEY not in encoded:
        raise ValueError(f"compressed update lacks its '{PAYLOAD_KEY}' array")
    keys, offsets = float_offsets(reference)
    parts, meta = unpack_payload(encoded[PAYLOAD_KEY].numpy().tobytes())
    try:
        delta = decode(parts, meta, offsets)
    except KeyError as exc:
        raise ValueError(f"compressed update lacks {exc}") from None
    if not torch.isfinite(delta).all():
        raise ValueError("decoded update contains NaN or Inf")
    values = (_flat(reference, keys, offsets[-1]) + delta).numpy()
    rebuilt = ArrayRecord()
    position = dict(zip(keys, offsets[:-1], strict=True))
    for key, ref in reference.items():
        if key in position:
            start = position[key]
            chunk = values[start : start + int(np.prod(ref.shape, dtype=np.int64))]
            rebuilt[key] = Array(chunk.reshape(ref.shape).astype(ref.dtype, copy=False))
        elif RAW_PREFIX + key in encoded:
            rebuilt[key] = encoded[RAW_PREFIX + key]
        else:
            raise ValueError(f"compressed update lacks the non-float array '{key}'")
    out = RecordDict()
    for name, record in content.items():
        if name == COMPRESSED_KEY:
            out[arrays_key] = rebuilt
        else:
            out[name] = record
    return out
