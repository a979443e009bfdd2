"""ArrayRecords ⇄ one stacked (n × d) float32 tensor, in one place.

Every custom aggregation works on the stacked matrix; this module builds it with one
copy per array and turns an aggregated row back into an ArrayRecord with the original keys,
shapes and dtypes.

Decoding reads each Array's ``.npy`` payload in place (:func:`array_values`: the header is
parsed, the values are a read-only view of the received bytes), so an array is copied
exactly once, straight into its row slice. Flower's ``Array.numpy()`` copies twice more
(``np.load`` through a ``BytesIO``).

A round decodes its replies once: :class:`SharedStack` keeps the last matrix, in one
buffer reused from round to round (no page faults for a fresh ``n × d`` allocation after
the first round), keyed by the identity of the Arrays it was built from. The update
validation (:mod:`strategies.validation`) stacks the replies as deltas against the global
model while it checks them, row by row while each row is in cache; the robust strategy then
gets the same matrix without decoding anything again (:func:`stack_deltas`).
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import TypeVar

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, RecordDict
from numpy.lib import format as npy_format

R = TypeVar("R")


def records_of(content: RecordDict, kind: type[R]) -> list[R]:
    """The records of type ``kind`` in ``content``, in order. Flower's
    ``content.array_records`` (and the metric/config variants) builds a new type-checked
    dict on every access; this reads the content's values once."""
    return [record for record in content.values() if isinstance(record, kind)]


@dataclass(frozen=True)
class Layout:
    """Keys, shapes, dtypes and offsets of the arrays in a flattened row."""

    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]
    offsets: tuple[int, ...]  # start of each array in the row; last entry = d

    @property
    def size(self) -> int:
        """Row length d."""
        return self.offsets[-1]

    @classmethod
    def of(cls, record: ArrayRecord) -> Layout:
        """The layout of ``record``."""
        keys, shapes, dtypes, offsets = [], [], [], [0]
        for key, arr in record.items():
            keys.append(key)
            shapes.append(tuple(arr.shape))
            dtypes.append(arr.dtype)
            offsets.append(offsets[-1] + math.prod(arr.shape))
        return cls(tuple(keys), tuple(shapes), tuple(dtypes), tuple(offsets))


@functools.lru_cache(maxsize=64)
def _npy_header(prefix: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype of a ``.npy`` header (cached: a round's replies share
    a handful of headers, and parsing one costs a ``literal_eval``)."""
    stream = BytesIO(prefix)
    version = npy_format.read_magic(stream)
    if version == (1, 0):
        return npy_format.read_array_header_1_0(stream)
    return npy_format.read_array_header_2_0(stream)


def array_values(arr: Array) -> np.ndarray:
    """The values of ``arr`` as a flat, read-only view of its serialised bytes (no copy).

    Raises ``ValueError`` if the payload is not a ``.npy`` array of the declared dtype and
    shape (Flower's ``Array.numpy()`` would trust the payload's own header instead).
    """
    data = arr.data
    if arr.stype != "numpy.ndarray" or data[:6] != b"\x93NUMPY" or data[6:7] not in b"\x01\x02":
        return np.ascontiguousarray(arr.numpy()).reshape(-1)  # raises for undecodable data
    size_bytes = 2 if data[6] == 1 else 4
    start = 8 + size_bytes
    prefix = data[: start + int.from_bytes(data[8:start], "little")]
    shape, fortran, dtype = _npy_header(prefix)
    if dtype.hasobject:
        raise ValueError("object arrays are not allowed")
    if dtype != np.dtype(arr.dtype) or tuple(shape) != tuple(arr.shape):
        raise ValueError(
            f"payload holds {dtype} {tuple(shape)}, the Array declares {arr.dtype} "
            f"{tuple(arr.shape)}"
        )
    count = math.prod(shape)
    values = np.frombuffer(data, dtype=dtype, count=count, offset=len(prefix))
    if fortran and len(shape) > 1:  # column-major payload: row-major order needs a copy
        values = values.reshape(shape[::-1]).T.reshape(-1)
    return values


def _write(
    out: np.ndarray, values: np.ndarray, reference: np.ndarray | None, native32: bool
) -> None:
    """``out = values`` (cast to float32), minus ``reference`` if given: one pass for float32
    payloads; other dtypes are cast to float32 first, then shifted (as ``stack`` then ``-=``)."""
    if reference is None:
        np.copyto(out, values, casting="unsafe")
    elif native32:
        np.subtract(values, reference, out=out)
    else:
        np.copyto(out, values, casting="unsafe")
        out -= reference


def _row_writer(
    layout: Layout, reference: np.ndarray | None
) -> Callable[[ArrayRecord, np.ndarray], None]:
    float32 = np.dtype(np.float32)
    parts = [
        (key, slice(layout.offsets[i], layout.offsets[i + 1])) for i, key in enumerate(layout.keys)
    ]

    def write(record: ArrayRecord, row: np.ndarray) -> None:
        for key, cols in parts:
            values = array_values(record[key])
            ref = None if reference is None else reference[cols]
            _write(row[cols], values, ref, values.dtype == float32)

    return write


def flatten(record: ArrayRecord, layout: Layout, out: torch.Tensor | None = None) -> torch.Tensor:
    """``record`` as one float32 row (written into ``out`` if given)."""
    row = torch.empty(layout.size, dtype=torch.float32) if out is None else out
    _row_writer(layout, None)(record, row.numpy())
    return row


def stack(
    records: Sequence[ArrayRecord],
    layout: Layout | None = None,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Layout]:
    """``(n × d)`` float32 matrix of ``records`` (all of ``layout``) and the layout; written
    into ``out`` (a contiguous float32 ``(n × d)`` tensor) if given."""
    if not records:
        raise ValueError("no ArrayRecords to stack")
    layout = layout or Layout.of(records[0])
    shape = (len(records), layout.size)
    if out is None:
        matrix = torch.empty(shape, dtype=torch.float32)
    elif tuple(out.shape) != shape or out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous float32 tensor of shape {shape}")
    else:
        matrix = out
    write = _row_writer(layout, None)
    rows = matrix.numpy()
    for i, record in enumerate(records):
        write(record, rows[i])
    return matrix, layout


def unflatten(row: torch.Tensor, layout: Layout) -> ArrayRecord:
    """An ArrayRecord from a flattened row, with the layout's keys, shapes and dtypes."""
    values = row.detach().cpu().numpy()
    arrays = {}
    for i, key in enumerate(layout.keys):
        chunk = values[layout.offsets[i] : layout.offsets[i + 1]]
        arrays[key] = Array(chunk.reshape(layout.shapes[i]).astype(layout.dtypes[i], copy=False))
    return ArrayRecord(arrays)


# ------------------------------------------------------------------------ the round's matrix


def _identity(record: ArrayRecord, layout: Layout) -> tuple[tuple[int, int], ...]:
    """Identity of the Arrays (and their byte strings) a row is decoded from."""
    return tuple((id(record[key]), id(record[key].data)) for key in layout.keys)


class SharedStack:
    """One reusable ``(n × d)`` float32 buffer holding the last stacked rows.

    :meth:`rows` writes ``record − reference`` into row ``i`` (``reference`` may be
    ``None``) and remembers which Arrays row ``i`` came from; :meth:`take` returns the
    matrix of a list of records and a reference, decoding only the rows it does not hold
    already. The Arrays of every held row are referenced, so their ids cannot be reused
    while they identify a row. The buffer is reused by the next round: a matrix from
    :meth:`take` is valid until the next call to :meth:`begin`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffer = torch.empty(0, dtype=torch.float32)
        self._key: tuple = ()
        self._rows: list[tuple] = []
        self._pinned: list[object] = []

    def _matrix(self, n: int, d: int) -> torch.Tensor:
        """A contiguous ``(n × d)`` view of the buffer (reallocated if too small, or over
        four times too large)."""
        need = n * d
        if self._buffer.numel() < need or self._buffer.numel() > 4 * need:
            self._buffer = torch.empty(need, dtype=torch.float32)
        return self._buffer[:need].view(n, d)

    def forget(self) -> None:
        """Forget the held rows and the Arrays they came from (the buffer stays for reuse)."""
        with self._lock:
            self._key, self._rows, self._pinned = (), [], []

    def release(self) -> None:
        """Drop the buffer and every held row."""
        with self._lock:
            self._buffer = torch.empty(0, dtype=torch.float32)
            self._key, self._rows, self._pinned = (), [], []

    def begin(
        self, n: int, layout: Layout, reference: ArrayRecord | None
    ) -> tuple[torch.Tensor, Callable[[int, ArrayRecord], torch.Tensor]]:
        """Start a matrix of ``n`` rows of ``layout`` relative to ``reference``: returns the
        matrix and ``put(i, record)``, which decodes ``record − reference`` into row ``i``
        (and returns it). Rows not ``put`` must not be used."""
        ref = None if reference is None else flatten(reference, layout).numpy()
        with self._lock:
            self._key = (layout, None if reference is None else _identity(reference, layout))
            self._pinned = [reference]
            self._rows = [None] * n
            matrix = self._matrix(n, layout.size)
        write = _row_writer(layout, ref)
        rows = matrix.numpy()

        def put(i: int, record: ArrayRecord) -> torch.Tensor:
            self._rows[i] = None  # not valid until written
            write(record, rows[i])
            self._rows[i] = _identity(record, layout)
            self._pinned.append(record)
            return matrix[i]

        return matrix, put

    def take(
        self, records: Sequence[ArrayRecord], layout: Layout, reference: ArrayRecord | None
    ) -> torch.Tensor:
        """The ``(len(records) × d)`` matrix of ``records − reference``. Rows held from the
        last :meth:`begin` for the same layout and reference are reused (moved up in place
        if earlier rows were dropped); the others are decoded. The matrix is the caller's
        to modify; the held rows are forgotten."""
        if not records:
            raise ValueError("no ArrayRecords to stack")
        key = (layout, None if reference is None else _identity(reference, layout))
        with self._lock:
            held = {}
            if key == self._key:
                held = {ident: i for i, ident in enumerate(self._rows) if ident is not None}
            self._key, self._rows = (), []  # the caller may overwrite the buffer now
            sources = [held.get(_identity(r, layout)) for r in records]
            n, d = len(records), layout.size
            top = max([n - 1, *(s for s in sources if s is not None)]) + 1
            if top * d > self._buffer.numel():  # cannot happen for rows from begin()
                sources = [None] * n
            if any(s is not None for s in sources):
                rows = self._buffer[: top * d].view(top, d)
                matrix = rows[:n]
            else:
                matrix = rows = self._matrix(n, d)
            writer: list[Callable[[ArrayRecord, np.ndarray], None]] = []

            def write(record: ArrayRecord, row: np.ndarray) -> None:
                if not writer:  # the reference is flattened only if a row is decoded
                    ref = None if reference is None else flatten(reference, layout).numpy()
                    writer.append(_row_writer(layout, ref))
                writer[0](record, row)

            readers: dict[int, list[int]] = {}
            for k, s in enumerate(sources):
                if s is not None:
                    readers.setdefault(s, []).append(k)
            # Row by row, in order: a held row is copied up into place (or left where it
            # is); before row i is overwritten, later records that would read it decode
            # their own row instead.
            for i, (record, source) in enumerate(zip(records, sources, strict=True)):
                if source == i:
                    continue
                for k in readers.pop(i, ()):
                    if k > i:
                        sources[k] = None
                if source is not None:
                    rows[i].copy_(rows[source])
                else:
                    write(record, rows[i].numpy())
            self._pinned = []
            return matrix


class _ThreadStacks(threading.local):
    def __init__(self) -> None:
        self.stack = SharedStack()


_THREAD_STACKS = _ThreadStacks()


def shared_stack() -> SharedStack:
    """This thread's round matrix: a federation runs its rounds one at a time on one
    thread, and two federations on two threads never share a buffer."""
    return _THREAD_STACKS.stack


def stack_deltas(
    records: Sequence[ArrayRecord], reference: ArrayRecord, layout: Layout | None = None
) -> torch.Tensor:
    """``(n × d)`` float32 matrix of ``records − reference``, reusing the rows the update
    validation already decoded this round (:func:`shared_stack`). The result lives in the
    shared buffer: the caller may modify it, and it is valid until the next round."""
    layout = layout or Layout.of(reference)
    return shared_stack().take(records, layout, reference)
