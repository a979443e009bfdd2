"""The task interface: data partition, model, train, evaluate.

A task only says where its data comes from and which model it trains. Splitting the
pooled data into the server's held-out test set and per-silo partitions, training and
evaluation are shared here, so every strategy runs with every task and every task is
split the same, seeded way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from fl_core.config import Section
from tasks.partitioning import LazyPartitions, stratified_split
from tasks.training import evaluate_classifier, train_classifier

#: RecordDict key of the feature moments a silo reports in the roll call.
MOMENTS_KEY = "feature-moments"


class DataSection(Section):
    """Where the data comes from and how it is split into the server's test set and the
    silos' partitions."""

    source: str = Field(
        "",
        description='"" = offline bundled/generated data; otherwise a Hugging Face dataset id, '
        "a local path, or an Azure Blob URL, as the task documents.",
    )
    partitioner: Literal["iid", "dirichlet"] = Field(
        "iid", description="How the training pool is split across silos."
    )
    dirichlet_alpha: float = Field(
        0.5, gt=0, le=1e6, description="Label-skew concentration (smaller = more skewed)."
    )
    test_fraction: float = Field(
        0.2, gt=0, lt=0.9, description="Share of the pooled data held out for the server."
    )
    val_fraction: float = Field(
        0.1, ge=0, lt=0.9, description="Share of each silo's partition kept for its evaluation."
    )


class TrainingSection(Section):
    """Local training in every silo (and FLTrust's server-side training)."""

    local_epochs: int = Field(3, ge=1, le=1000, description="Local epochs per round.")
    batch_size: int = Field(16, ge=1, le=1_000_000, description="Local mini-batch size.")
    learning_rate: float = Field(0.05, gt=0, le=10, description="Local SGD learning rate.")
    momentum: float = Field(0.9, ge=0, lt=1, description="Local SGD momentum.")
    proximal_mu: float = Field(0.01, ge=0, description="FedProx proximal term weight μ.")


@dataclass(frozen=True)
class ArrayDataset:
    """Features ``x`` (N × …; float32, or int64 token ids for text tasks) and integer
    labels ``y`` (int64, N; or N × L per-token tags of a sequence task, padding
    ``-100``). One row is one example (an image, a patient, a sentence)."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} rows but y has {len(self.y)}")

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: np.ndarray) -> ArrayDataset:
        """Rows ``idx`` as a new dataset."""
        return ArrayDataset(self.x[idx], self.y[idx])


@dataclass(frozen=True)
class Partition:
    """One silo's data: what it trains on and what it evaluates the global model on."""

    train: ArrayDataset
    val: ArrayDataset


class Task(ABC):
    """A federated learning use case. Subclasses implement :meth:`load_data` and
    :meth:`build_model`; the rest is shared."""

    #: Registry name, e.g. ``"digits"``.
    name: str
    #: Number of classes of the label.
    num_classes: int
    #: Why ``dp.local`` (Opacus DP-SGD in the silo) cannot train this task's model, or
    #: ``None`` if it can; checked when the run config is validated.
    local_dp_unsupported: str | None = None
    #: The metric (a key of :meth:`evaluate`'s result) that says how good the model is for
    #: a silo: summarised across silos every round (min, p10, median, std, Jain's index;
    #: ``strategies.fairness``). Classification tasks: ``accuracy``.
    main_metric: str = "accuracy"
    #: Run-config overrides (dotted keys) this task is known to need over the app's
    #: defaults, with the reason in a comment where they are declared. The benchmarks run
    #: every task with them (federated and centralised alike); checked against
    #: ``RunConfig`` by the tests.
    recommended: ClassVar[Mapping[str, Any]] = {}

    @abstractmethod
    def load_data(self, data: DataSection) -> tuple[ArrayDataset, ArrayDataset | None]:
        """Return ``(pool, test)``: the pooled training data and, if the source has one,
        its own test split (``None`` = hold out ``data.test-fraction`` of the pool)."""

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A freshly initialised model (seed torch before calling for a seeded init)."""

    def feature_moments(self, data: ArrayDataset) -> dict[str, list[float]] | None:
        """Per-feature ``count``, ``sum`` and ``sumsq`` of a silo's training rows, for
        tasks whose model standardises inputs (``None`` otherwise)."""
        if not self.standardizes_inputs():
            return None
        x = data.x.reshape(len(data), -1).astype(np.float64)
        return {
            "count": [float(len(x))],
            "sum": x.sum(axis=0).tolist(),
            "sumsq": (x**2).sum(axis=0).tolist(),
        }

    def standardizes_inputs(self) -> bool:
        """Whether the model has a ``standardize`` layer (set from the roll call's moments).
        Asked once per task object: building a model to look cost every roll-call reply
        ~2 ms (1 000 silos: 2 s)."""
        known = self.__dict__.get("_standardizes_inputs")
        if known is None:
            known = self.__dict__["_standardizes_inputs"] = hasattr(
                self.build_model(), "standardize"
            )
        return known

    def set_input_scaling(self, model: nn.Module, moments: list[dict[str, list[float]]]) -> None:
        """Set the model's ``standardize`` buffers from silos' summed moments."""
        if not hasattr(model, "standardize") or not moments:
            return
        mean, std = pooled_moments(moments)
        model.standardize.mean.copy_(torch.from_numpy(mean))
        model.standardize.std.copy_(torch.from_numpy(std))

    def class_weights(self, train: ArrayDataset) -> torch.Tensor | None:
        """Loss weights per class (``None`` = unweighted cross-entropy). Not used under
        local DP: weights computed from ``train``'s labels are outside the DP guarantee."""
        return None

    def strata(self, data: ArrayDataset) -> np.ndarray:
        """One integer label per row that stratified splits and label-skewed (Dirichlet)
        partitions use: the label itself; sequence tasks override it (e.g. NER: the
        type of a sentence's first entity)."""
        return data.y

    def concat(self, *parts: ArrayDataset) -> ArrayDataset:
        """The rows of ``parts`` as one dataset (sequence tasks pad to a common length)."""
        return ArrayDataset(
            np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts])
        )

    # ------------------------------------------------------------------ shared
    # The methods below take the run config's ``data`` section (and ``seed``) or its
    # ``training`` section, not the whole config: a task knows nothing of the app.
    def split(self, data: DataSection, seed: int) -> tuple[ArrayDataset, ArrayDataset]:
        """``(train_pool, server_test)``, the same for the same data, seed and fraction."""
        return _split_cached(self, data.source, seed, data.test_fraction)

    def load_test(self, data: DataSection, seed: int) -> ArrayDataset:
        """The server's held-out test set."""
        return self.split(data, seed)[1]

    def load_root(self, data: DataSection, seed: int, size: int) -> ArrayDataset:
        """A small clean data set the server holds (FLTrust's root data): a seeded,
        stratified sample of ``size`` rows of the training pool (these rows may also sit
        in some silo's partition, as in practice)."""
        pool, _ = self.split(data, seed)
        size = min(size, len(pool))
        if size == len(pool):
            return pool
        _, root_idx = stratified_split(self.strata(pool), size / len(pool), seed=seed + 7)
        return pool.subset(root_idx)

    def load_partition(
        self, partition_id: int, num_partitions: int, data: DataSection, seed: int
    ) -> Partition:
        """Silo ``partition_id`` of ``num_partitions``: its train and validation data."""
        if not 0 <= partition_id < num_partitions:
            raise ValueError(
                f"partition-id {partition_id} is outside 0..{num_partitions - 1}; check the "
                'SuperNode\'s --node-config "partition-id=… num-partitions=…"'
            )
        pool, _ = self.split(data, seed)
        parts = _partitions_cached(
            self,
            data.source,
            seed,
            data.test_fraction,
            num_partitions,
            data.partitioner,
            data.dirichlet_alpha,
        )
        mine = pool.subset(parts[partition_id])
        if data.val_fraction == 0 or len(mine) < 4:
            return Partition(train=mine, val=mine.subset(np.arange(0)))
        key = ("val-split", partition_id, data.val_fraction)
        if key not in parts.memo:  # sklearn's split costs ~0.1 s; a silo is served often
            parts.memo[key] = stratified_split(
                self.strata(mine), data.val_fraction, seed=seed + 1 + partition_id
            )
        train_idx, val_idx = parts.memo[key]
        return Partition(train=mine.subset(train_idx), val=mine.subset(val_idx))

    def load_silo(self, source: str, data: DataSection, seed: int) -> Partition:
        """A silo's own data set (a deployment where each silo holds its own file or Blob
        prefix, named in its node config): all of ``source`` is this silo's, split into
        train and validation by ``data.val-fraction``."""
        return _silo_cached(self, source, seed, data.val_fraction)

    def train(
        self,
        model: nn.Module,
        data: ArrayDataset,
        training: TrainingSection,
        *,
        proximal_mu: float = 0.0,
        generator: torch.Generator | None = None,
        proximal_anchor: list[torch.Tensor] | None = None,
    ) -> dict[str, float]:
        """Local training with ``training``'s epochs, batch size, learning rate and
        momentum; returns training metrics (``train-loss``). The proximal term pulls
        towards ``proximal_anchor`` if given, else towards the starting weights."""
        return train_classifier(
            model,
            data.x,
            data.y,
            epochs=training.local_epochs,
            batch_size=training.batch_size,
            learning_rate=training.learning_rate,
            momentum=training.momentum,
            proximal_mu=proximal_mu,
            class_weights=self.class_weights(data),
            generator=generator,
            proximal_anchor=proximal_anchor,
        )

    def evaluate(self, model: nn.Module, data: ArrayDataset) -> dict[str, float]:
        """Loss, accuracy and, for binary tasks, ROC-AUC / PR-AUC / F1."""
        return evaluate_classifier(model, data.x, data.y, num_classes=self.num_classes)


def pooled_moments(moments: list[dict[str, list[float]]]) -> tuple[np.ndarray, np.ndarray]:
    """Federation-wide feature mean and std (float32) from per-silo sums; a constant
    feature gets std 1."""
    count = sum(m["count"][0] for m in moments)
    if count <= 0:
        raise ValueError("no training rows reported by any silo; cannot scale inputs")
    total = np.sum([m["sum"] for m in moments], axis=0)
    total_sq = np.sum([m["sumsq"] for m in moments], axis=0)
    mean = total / count
    var = np.maximum(total_sq / count - mean**2, 0.0)
    std = np.sqrt(var)
    std[std < 1e-8] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


@lru_cache(maxsize=8)
def _split_cached(
    task: Task, data_source: str, seed: int, test_fraction: float
) -> tuple[ArrayDataset, ArrayDataset]:
    pool, test = task.load_data(DataSection(source=data_source, test_fraction=test_fraction))
    if test is not None:
        return pool, test
    train_idx, test_idx = stratified_split(task.strata(pool), test_fraction, seed=seed)
    return pool.subset(train_idx), pool.subset(test_idx)


@lru_cache(maxsize=8)
def _silo_cached(task: Task, source: str, seed: int, val_fraction: float) -> Partition:
    data, test = task.load_data(DataSection(source=source))
    if test is not None:  # a source with its own test split: the silo keeps both
        data = task.concat(data, test)
    if val_fraction == 0:
        return Partition(train=data, val=data.subset(np.arange(0)))
    train_idx, val_idx = stratified_split(task.strata(data), val_fraction, seed=seed + 1)
    return Partition(train=data.subset(train_idx), val=data.subset(val_idx))


@lru_cache(maxsize=8)
def _partitions_cached(
    task: Task,
    data_source: str,
    seed: int,
    test_fraction: float,
    num_partitions: int,
    partitioner: str,
    alpha: float,
) -> LazyPartitions:
    pool, _ = _split_cached(task, data_source, seed, test_fraction)
    return LazyPartitions(  # each silo's process builds only its own partition
        task.strata(pool), num_partitions, partitioner=partitioner, alpha=alpha, seed=seed
    )
