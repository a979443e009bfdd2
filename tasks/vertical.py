"""Vertical (column-split) views of a task's data: which party holds which columns of
which customers.

A vertical task names its id column, its label, its feature columns, a fixed per-column
encoding and a default split of the columns over the parties. Party 0 is the label party
(the ServerApp in vertical mode: labels + its own columns); party ``p ≥ 1`` is the
ClientApp whose SuperNode has ``partition-id = p - 1``.

Partial overlap: when all parties read one shared data source (simulation, benchmarks),
party ``p`` holds each customer independently with probability ``vertical.coverage``
(seeded per party), so some customers exist only at some parties and private set
intersection has real work to do. A party with its own source (node config
``data-source``) holds exactly the rows of its file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

from fl_core.registry import Registry
from fl_core.seeding import derive_seed


class VerticalDataError(ValueError):
    """A party's data does not fit the configured vertical split (schema mismatch)."""


@dataclass(frozen=True)
class VerticalSpec:
    """What a task looks like when its columns are split over parties."""

    name: str
    features: tuple[str, ...]
    default_split: tuple[tuple[str, ...], ...]
    load_frame: Callable[[str], pd.DataFrame]
    encode: Callable[[pd.DataFrame, list[str]], np.ndarray]
    labels: Callable[[pd.DataFrame], np.ndarray]
    id_column: str = "id"


#: Task name → its vertical view (a callable returning the :class:`VerticalSpec`): the
#: tasks ``mode = 'vertical'`` accepts. The task's own file adds one with
#: ``@VERTICAL_SPECS.register(task)`` (``tasks/bank_marketing.py``, ``tasks/fraud.py``);
#: every module of :mod:`tasks` is imported when the registry is first read, and a separate
#: package adds one through the entry-point group ``fedsilo.vertical_tasks``. Listed
#: alphabetically: specs register on import, whose order depends on who imports first.
VERTICAL_SPECS: Registry[Callable[[], VerticalSpec]] = Registry(
    "vertical task", group="fedsilo.vertical_tasks", builtins=("tasks",), sort=True
)


def vertical_spec(task: str) -> VerticalSpec:
    """The vertical view of ``task``; a clear error for tasks without one."""
    if task not in VERTICAL_SPECS:
        raise VerticalDataError(
            f"task '{task}' has no vertical split; with mode = 'vertical' use task = one of "
            f"{', '.join(VERTICAL_SPECS)}"
        )
    return VERTICAL_SPECS[task]()


def parse_split(split: str, spec: VerticalSpec) -> list[list[str]]:
    """``vertical.split`` (``"a,b;c,d;e"``: parties separated by ``;``, the label party
    first) → column lists; ``""`` = the task's default split. Every feature column must
    belong to exactly one party, unknown and duplicated columns are errors."""
    if not split.strip():
        return [list(group) for group in spec.default_split]
    groups = [[c.strip() for c in part.split(",") if c.strip()] for part in split.split(";")]
    if len(groups) < 2:
        raise VerticalDataError(
            f"run-config 'vertical.split' = {split!r} names one party; give the label party's "
            "columns, then each feature party's, separated by ';' (e.g. 'age,job;duration')"
        )
    seen: dict[str, int] = {}
    for p, group in enumerate(groups):
        if p > 0 and not group:
            raise VerticalDataError(f"run-config 'vertical.split': party {p} has no columns")
        for column in group:
            if column not in spec.features:
                raise VerticalDataError(
                    f"run-config 'vertical.split': unknown column '{column}' for task "
                    f"'{spec.name}'; columns are {', '.join(spec.features)}"
                )
            if column in seen:
                raise VerticalDataError(
                    f"run-config 'vertical.split': column '{column}' is given to parties "
                    f"{seen[column]} and {p}; each column belongs to one party"
                )
            seen[column] = p
    return groups


@dataclass(frozen=True)
class PartyData:
    """One party's rows: record ids, encoded (standardised) features, labels if held."""

    ids: list[str]
    x: np.ndarray
    y: np.ndarray | None
    columns: tuple[str, ...]


def coverage_mask(n_rows: int, party: int, coverage: float, seed: int) -> np.ndarray:
    """Which rows of a shared source party ``party`` holds (seeded, independent)."""
    if coverage >= 1.0:
        return np.ones(n_rows, dtype=bool)
    rng = np.random.default_rng(derive_seed(seed, "vertical-coverage", party))
    return rng.random(n_rows) < coverage


def standardise(x: np.ndarray) -> np.ndarray:
    """Column-wise z-scores over the party's own rows (constant columns → 0)."""
    if len(x) == 0:
        return x
    mean = x.mean(axis=0, dtype=np.float64)
    std = x.std(axis=0, dtype=np.float64)
    std[std < 1e-8] = 1.0
    return ((x - mean) / std).astype(np.float32)


@lru_cache(maxsize=4)
def _frame(task: str, source: str) -> pd.DataFrame:
    return vertical_spec(task).load_frame(source)


@lru_cache(maxsize=16)
def party_data(
    task: str,
    source: str,
    columns: tuple[str, ...],
    *,
    party: int,
    coverage: float,
    seed: int,
    with_labels: bool,
    shared: bool = True,
) -> PartyData:
    """Party ``party``'s view: its columns of the rows it holds (all rows of its own
    ``source`` when ``shared`` is false)."""
    spec = vertical_spec(task)
    frame = _frame(task, source)
    if spec.id_column not in frame.columns:
        raise VerticalDataError(f"{task} data at {source!r} has no id column '{spec.id_column}'")
    try:
        x = spec.encode(frame, list(columns))
        y = spec.labels(frame) if with_labels else None
    except VerticalDataError:
        raise
    except ValueError as exc:
        raise VerticalDataError(f"party {party}: {exc}") from None
    ids = frame[spec.id_column].astype(str).to_numpy()
    if len(set(ids)) != len(ids):
        raise VerticalDataError(f"party {party}: record ids in column '{spec.id_column}' repeat")
    mask = coverage_mask(len(frame), party, coverage, seed) if shared else np.ones(len(ids), bool)
    return PartyData(
        ids=ids[mask].tolist(),
        x=standardise(x[mask]),
        y=None if y is None else y[mask],
        columns=tuple(columns),
    )
