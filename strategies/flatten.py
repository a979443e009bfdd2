"""ArrayRecords ⇄ one stacked (n × d) float32 tensor, in one place.

Every custom aggregation works on the stacked matrix; this module builds it with one
copy per array (straight from each Array's buffer into its row slice) and turns an
aggregated row back into an ArrayRecord with the original keys, shapes and dtypes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord


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
            offsets.append(offsets[-1] + int(np.prod(arr.shape, dtype=np.int64)))
        return cls(tuple(keys), tuple(shapes), tuple(dtypes), tuple(offsets))


def _array_view(arr: Array) -> np.ndarray:
    return arr.numpy()


def flatten(record: ArrayRecord, layout: Layout, out: torch.Tensor | None = None) -> torch.Tensor:
    """``record`` as one float32 row (written into ``out`` if given)."""
    row = torch.empty(layout.size, dtype=torch.float32) if out is None else out
    for i, key in enumerate(layout.keys):
        values = _array_view(record[key]).reshape(-1)
        row[layout.offsets[i] : layout.offsets[i + 1]] = torch.from_numpy(values)
    return row


def stack(
    records: Sequence[ArrayRecord], layout: Layout | None = None
) -> tuple[torch.Tensor, Layout]:
    """``(n × d)`` float32 matrix of ``records`` (all of ``layout``) and the layout."""
    if not records:
        raise ValueError("no ArrayRecords to stack")
    layout = layout or Layout.of(records[0])
    matrix = torch.empty((len(records), layout.size), dtype=torch.float32)
    for i, record in enumerate(records):
        flatten(record, layout, out=matrix[i])
    return matrix, layout


def unflatten(row: torch.Tensor, layout: Layout) -> ArrayRecord:
    """An ArrayRecord from a flattened row, with the layout's keys, shapes and dtypes."""
    values = row.detach().cpu().numpy()
    arrays = {}
    for i, key in enumerate(layout.keys):
        chunk = values[layout.offsets[i] : layout.offsets[i + 1]]
        arrays[key] = Array(chunk.reshape(layout.shapes[i]).astype(layout.dtypes[i], copy=False))
    return ArrayRecord(arrays)
