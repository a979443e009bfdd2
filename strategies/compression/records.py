"""Compression on Flower records: the client's train reply, the server's decoding, and
the real serialised size of a message.

Client (``fl_app.client_app.train``): :func:`compress_train_content` replaces the reply's
``arrays`` ArrayRecord by a ``compressed`` ArrayRecord: one uint8 ``payload`` Array with
the encoded DELTA of the float tensors w.r.t. the global model the silo received and
its metadata (see :mod:`.codecs`); non-float arrays travel as they are under
``raw/<key>``. Error feedback, kept in the node's persistent state:

* quantisation (``int8``/``int4``): the classic residual — the part of the update that
  was not sent (``context.state["compression-residual"]``) is added to the next update;
* top-k (``topk``/``topk+int8``, ``compression.topk-feedback = "ef21"``, the default): EF21 — the
  silo and the server both keep the silo's running ESTIMATE of its update
  (``context.state["compression-estimate"]`` / :class:`EstimateStore`), the silo sends
  the top-k of ``update − estimate`` and both add what was sent to the estimate, which
  the server then aggregates as the silo's update (see :func:`.codecs.ef21_step`).
  The two copies are kept in step by a counter: the server tells each silo the step
  it holds (train config ``compression-estimate-step``), a silo whose own step differs
  (a lost reply, a server restart) restarts from a zero estimate and says so in the
  payload (``ef21-base = 0``), so a lost message costs accuracy for a round, never a
  silently wrong model. ``compression.topk-feedback = "residual"`` keeps the classic residual.

Server: :func:`decompress_content` rebuilds the ordinary ``arrays`` record
(global + decoded delta, original keys, shapes and dtypes), so validation, attack
simulation, DP and every strategy downstream see a normal reply.

What a message weighs on the wire is measured apart from all this, in every run, by
:mod:`strategies.traffic`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from logging import INFO
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from flwr.supercore import log

from strategies.compression.codecs import (
    CompressionSpec,
    advance_estimate,
    decode,
    ef21_step,
    encode,
    error_feedback_step,
    pack_payload,
    unpack_payload,
)

COMPRESSED_KEY = "compressed"  # ArrayRecord with the encoded update
PAYLOAD_KEY = "payload"  # its one uint8 Array (codecs.pack_payload)
RESIDUAL_KEY = "compression-residual"  # ArrayRecord in context.state (error feedback)
ESTIMATE_KEY = "compression-estimate"  # ArrayRecord + ConfigRecord in context.state (EF21)
ESTIMATE_STEP_KEY = "compression-estimate-step"  # ConfigRecord in state; train-config key
EF21_BASE = "ef21-base"  # payload meta: the estimate step the update builds on (0 = none)
RAW_PREFIX = "raw/"
FEEDBACKS = ("ef21", "residual")


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
    feedback: str = "ef21",
    server_step: int | None = None,
) -> RecordDict:
    """The train reply ``content`` with its ``arrays_key`` ArrayRecord compressed as the
    delta w.r.t. ``received`` (the global model this silo trained from).

    ``feedback`` picks the error feedback of the top-k schemes (``"ef21"`` or
    ``"residual"``; quantisation always uses the residual); ``server_step`` is the EF21
    estimate step the server holds for this silo (from the train config; ``None`` =
    none)."""
    if spec.scheme == "none":
        return content
    if feedback not in FEEDBACKS:
        raise ValueError(
            f"compression.topk-feedback '{feedback}' is not one of: {', '.join(FEEDBACKS)}"
        )
    trained: ArrayRecord = content[arrays_key]
    keys, offsets = float_offsets(received)
    delta = _flat(trained, keys, offsets[-1]) - _flat(received, keys, offsets[-1])
    if error_feedback and state is not None and spec.sparse and feedback == "ef21":
        estimate, base = _saved_estimate(state, offsets[-1], server_step)
        arrays, meta, estimate = ef21_step(delta, estimate, offsets, spec, generator)
        meta[EF21_BASE] = base
        state[ESTIMATE_KEY] = ArrayRecord({"estimate": Array(estimate.numpy())})
        state[ESTIMATE_STEP_KEY] = ConfigRecord({"step": base + 1})
    elif error_feedback and state is not None:
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


def _saved_estimate(
    state: RecordDict, size: int, server_step: int | None
) -> tuple[torch.Tensor | None, int]:
    """The silo's EF21 estimate and its step, if the server holds the same step;
    otherwise ``(None, 0)``: start again from a zero estimate."""
    saved = state.array_records.get(ESTIMATE_KEY)
    steps = state.config_records.get(ESTIMATE_STEP_KEY)
    if saved is None or steps is None or server_step is None:
        return None, 0
    step = int(steps["step"])
    if step != int(server_step) or step <= 0 or saved["estimate"].shape != (size,):
        return None, 0
    return torch.from_numpy(saved["estimate"].numpy().copy()), step


#: Bytes of EF21 estimates the server keeps in RAM; beyond, they move to a memory-mapped
#: temporary file (see :class:`EstimateStore`).
RESIDENT_LIMIT_BYTES = 256 * 2**20


class EstimateStore:
    """The server's copy of every silo's EF21 estimate (one float32 vector of the
    model's size per silo, keyed by node id) and its step.

    The vectors are rows of one (silos × model size) float32 buffer, grown as silos
    send their first top-k update. Up to ``resident_limit`` bytes the buffer lives in
    RAM; beyond, it is a memory-mapped temporary file in ``spill_dir`` (default: the
    system's temp directory), unlinked at creation so nothing outlives the store: at
    10 000 silos a 1 M-parameter model needs 40 GB of estimates, more than the server's
    RAM, while a round touches only its cohort's rows, which the OS pages in and out.
    Either way the values are the same float32 numbers (bit-identical).
    """

    def __init__(
        self, resident_limit: int = RESIDENT_LIMIT_BYTES, spill_dir: str | None = None
    ) -> None:
        self.resident_limit = resident_limit
        self.spill_dir = spill_dir
        self._steps: dict[int, int] = {}
        self._rows: dict[int, int] = {}
        self._buffer: np.ndarray | None = None  # (capacity, model size) float32
        self._file = None  # the spill file once the buffer is memory-mapped

    def __bool__(self) -> bool:
        return bool(self._steps)

    @property
    def memory_mapped(self) -> bool:
        """True once the estimates live in the memory-mapped spill file."""
        return self._file is not None

    def step(self, node_id: int) -> int:
        """The step held for ``node_id`` (0 = no estimate)."""
        return self._steps.get(node_id, 0)

    def estimate(self, node_id: int) -> torch.Tensor | None:
        """A copy of the estimate held for ``node_id`` (``None`` = none)."""
        if node_id not in self._steps or self._buffer is None:
            return None
        return torch.from_numpy(np.array(self._buffer[self._rows[node_id]]))

    def advance(self, node_id: int, base: int, sent: torch.Tensor) -> torch.Tensor:
        """The silo's new estimate (what the server aggregates as its update): its
        estimate at step ``base`` (0 = zeros) plus the decoded ``sent``. Raises
        ``ValueError`` when the server does not hold step ``base``."""
        if base == 0:
            estimate = torch.zeros_like(sent, dtype=torch.float32)
        else:
            step, estimate = self.step(node_id), self.estimate(node_id)
            if step != base or estimate is None or estimate.shape != sent.shape:
                raise ValueError(
                    f"EF21 update of node {node_id} builds on estimate step {base}, the "
                    f"server holds step {step}"
                )
        new = advance_estimate(estimate, sent)
        self._row_for(node_id, new.numel())[:] = new.numpy()
        self._steps[node_id] = base + 1
        return new

    def _row_for(self, node_id: int, size: int) -> np.ndarray:
        """The buffer row of ``node_id`` (assigned, and the buffer grown, on first use)."""
        if self._buffer is not None and self._buffer.shape[1] != size:
            # Another model size (a new model): estimates of the old one are meaningless.
            self.close()
            self._steps.clear()
            self._rows.clear()
        row = self._rows.get(node_id)
        if row is None:
            row = self._rows[node_id] = len(self._rows)
            capacity = 0 if self._buffer is None else self._buffer.shape[0]
            if row >= capacity:
                self._grow(max(16, 2 * capacity), size)
        assert self._buffer is not None
        return self._buffer[row]

    def _grow(self, capacity: int, size: int) -> None:
        used = len(self._rows) - 1  # rows holding estimates (the new one is not written)
        nbytes = capacity * size * 4
        if self._file is None and nbytes <= self.resident_limit:
            grown = np.zeros((capacity, size), dtype=np.float32)
            if self._buffer is not None:
                grown[:used] = self._buffer[:used]
            self._buffer = grown
            return
        if self._file is None:
            # Open for the store's lifetime; unlinked at once, so it cannot outlive it.
            self._file = tempfile.TemporaryFile(dir=self.spill_dir)  # noqa: SIM115
            log(
                INFO,
                "EF21 estimates of %d silos need %.0f MiB, over the %.0f MiB kept in RAM: "
                "kept in a memory-mapped temporary file in %s from now on",
                capacity, nbytes / 2**20, self.resident_limit / 2**20,
                self.spill_dir or tempfile.gettempdir(),
            )  # fmt: skip
        old = self._buffer
        self._file.truncate(nbytes)  # sparse: disk blocks only for rows written
        mapped = np.memmap(self._file, dtype=np.float32, mode="r+", shape=(capacity, size))
        if old is not None and not isinstance(old, np.memmap):
            mapped[:used] = old[:used]
        self._buffer = mapped

    def state_dict(self) -> dict[str, Any]:
        """Every silo's estimate and step, for a checkpoint: ``nodes`` (node ids, in row
        order), their ``steps`` and ``rows``, one float32 tensor (silos × model size; a
        copy in RAM, also of a memory-mapped buffer), ``None`` when empty."""
        nodes = sorted(self._rows, key=self._rows.__getitem__)
        rows = None
        if nodes and self._buffer is not None:
            rows = torch.from_numpy(np.array(self._buffer[: len(nodes)], dtype=np.float32))
        return {"nodes": nodes, "steps": [self._steps[n] for n in nodes], "rows": rows}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (into RAM or, beyond ``resident_limit``, the
        memory-mapped spill file, as if the silos' updates had arrived here)."""
        self.close()
        self._steps.clear()
        self._rows.clear()
        nodes, steps, rows = list(state["nodes"]), list(state["steps"]), state["rows"]
        if len(steps) != len(nodes) or (nodes and (rows is None or len(rows) != len(nodes))):
            raise ValueError("EF21 estimate state: nodes, steps and rows do not match")
        for index, (node, step) in enumerate(zip(nodes, steps, strict=True)):
            values = np.asarray(rows[index], dtype=np.float32)
            self._row_for(int(node), values.size)[:] = values
            self._steps[int(node)] = int(step)

    def close(self) -> None:
        """Drop the estimates' buffer (and the spill file, if any)."""
        self._buffer = None
        if self._file is not None:
            self._file.close()
            self._file = None


def is_compressed(content: RecordDict) -> bool:
    """True when ``content`` carries a compressed update."""
    return COMPRESSED_KEY in content.array_records


def decompress_content(
    content: RecordDict,
    reference: ArrayRecord,
    arrays_key: str = "arrays",
    estimates: EstimateStore | None = None,
    node_id: int = 0,
) -> RecordDict:
    """Inverse of :func:`compress_train_content` on the server: ``content`` with the
    ``arrays_key`` ArrayRecord rebuilt as ``reference + decoded delta`` (for an EF21
    update: ``reference +`` node ``node_id``'s advanced estimate in ``estimates``).
    Raises ``ValueError`` naming what does not fit."""
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
    if EF21_BASE in meta:
        if estimates is None:
            raise ValueError("EF21 update but the server keeps no estimates")
        delta = estimates.advance(node_id, int(meta[EF21_BASE]), delta)
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
