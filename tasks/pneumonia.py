"""Medical imaging: pneumonia vs normal on 28×28 grayscale chest X-rays, small CNN.

Real data: **PneumoniaMNIST** (MedMNIST v2: 5 856 paediatric chest X-rays resized to
28×28; label 1 = pneumonia, ~74 % of the training split). ``data.source`` may be

* a ``.npz`` file in the ``medmnist`` package layout (``train_images`` N×28×28 uint8,
  ``train_labels`` N×1, and the same for ``val_`` and ``test_``; what
  ``medmnist.PneumoniaMNIST(download=True)`` stores as ``pneumoniamnist.npz``), given as a
  local path or an Azure Blob URL (fetched through :mod:`tasks.sources`). Train and
  validation form the pool the silos share; the file's test split is the server's
  held-out set;
* a Hugging Face dataset id, optionally ``<id>:<config>`` (e.g.
  ``albertvillanova/medmnist-v2:pneumoniamnist``), or a ``save_to_disk`` directory, with an
  image column (``image``/``img``) and ``label``; images of another size are resized to
  28×28. Downloaded by ``datasets`` on first use (never in the tests).

Offline default (``data.source = ""``): :func:`generate_pneumonia_images`, a deterministic
generated set of 3 000 images of the same shape and class balance: two dark lung fields
beside a bright mediastinum, ribs, varying exposure and noise; a pneumonia image has one
to three consolidations (bright Gaussian opacities) or a diffuse basal haze inside a lung,
some of them faint, while a third of the normal images carry a small benign density. A
small CNN learns it well, but not perfectly.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from torch import nn

from tasks.base import ArrayDataset, Task
from tasks.models import BATCH_NORM_NO_LOCAL_DP, SmallCNN
from tasks.registry import TASKS
from tasks.sources import is_remote, load_hf, resolve_local_path

LOG = logging.getLogger(__name__)

IMAGE_SIZE = 28
#: Keys of the medmnist ``.npz`` layout.
SPLITS = ("train", "val", "test")
#: Share of pneumonia images, as in PneumoniaMNIST's training split (3 494 / 4 708).
PNEUMONIA_RATE = 0.74


def generate_pneumonia_images(
    n_images: int = 3000, pneumonia_rate: float = PNEUMONIA_RATE, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)``: ``n_images`` deterministic 28×28 uint8 "chest X-rays" and
    their labels (int64, 1 = pneumonia, ``round(pneumonia_rate × n)`` of them)."""
    if n_images < 2:
        raise ValueError(f"n_images must be ≥ 2, got {n_images}")
    if not 0 < pneumonia_rate < 1:
        raise ValueError(f"pneumonia_rate must be in (0, 1), got {pneumonia_rate}")
    rng = np.random.default_rng(seed)
    labels = np.zeros(n_images, dtype=np.int64)
    labels[: round(pneumonia_rate * n_images)] = 1
    labels = rng.permutation(labels)
    rows, cols = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float64)
    images = np.empty((n_images, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i] = _render(rng, rows, cols, bool(label))
    return images, labels


def _blob(rows, cols, r, c, sigma):
    return np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * sigma**2))


def _render(rng: np.random.Generator, rows, cols, pneumonia: bool) -> np.ndarray:
    dr, dc = rng.normal(0, 0.8, 2)  # patient position
    # Body: brighter towards the bottom; a bright mediastinum in the middle.
    img = 0.5 + 0.15 * rows / IMAGE_SIZE
    img = img + 0.3 * np.exp(-((cols - 13.5 - dc) ** 2) / (2 * 2.2**2))
    lung_masks = []
    for side in (-1, 1):
        cr = 13.5 + dr + rng.normal(0, 0.5)
        cc = 13.5 + dc + side * (6.0 + rng.normal(0, 0.4))
        ar, ac = 9.0 + rng.normal(0, 0.6), 4.3 + rng.normal(0, 0.3)
        inside = ((rows - cr) / ar) ** 2 + ((cols - cc) / ac) ** 2
        mask = 1.0 / (1.0 + np.exp((inside - 1.0) * 6.0))  # soft lung edge
        lung_masks.append((mask, cr, cc, ar, ac))
        img = img - 0.4 * mask
    lungs = np.clip(sum(m for m, *_ in lung_masks), 0, 1)
    # Ribs: faint stripes across the lung fields.
    img = img + 0.06 * lungs * np.sin(rows * rng.uniform(1.0, 1.3) + rng.uniform(0, 2 * np.pi))
    if pneumonia:
        if rng.random() < 0.25:  # diffuse basal haze in one or both lungs
            for mask, cr, _, ar, _ in lung_masks:
                if rng.random() < 0.7:
                    low = 1.0 / (1.0 + np.exp(-(rows - cr - 0.2 * ar) / 1.5))
                    img = img + rng.uniform(0.1, 0.3) * mask * low
        else:  # one to three consolidations
            for _ in range(rng.integers(1, 4)):
                _, cr, cc, ar, ac = lung_masks[rng.integers(2)]
                r = cr + rng.uniform(-0.7, 0.8) * ar
                c = cc + rng.uniform(-0.6, 0.6) * ac
                img = img + rng.uniform(0.15, 0.45) * _blob(rows, cols, r, c, rng.uniform(1.3, 3.0))
    elif rng.random() < 0.35:  # a small benign density (vessel, nipple shadow, nodule)
        _, cr, cc, ar, ac = lung_masks[rng.integers(2)]
        r, c = cr + rng.uniform(-0.7, 0.7) * ar, cc + rng.uniform(-0.6, 0.6) * ac
        img = img + rng.uniform(0.08, 0.25) * _blob(rows, cols, r, c, rng.uniform(0.7, 1.4))
    # Exposure (contrast, brightness) and detector noise.
    img = rng.uniform(0.8, 1.15) * img + rng.normal(0, 0.06) + rng.normal(0, 0.04, img.shape)
    return np.clip(img * 255.0, 0, 255).round().astype(np.uint8)


def to_medmnist_npz(
    path: str | Path,
    images: np.ndarray,
    labels: np.ndarray,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> Path:
    """Write ``images``/``labels`` as a medmnist-layout ``.npz`` (``train_/val_/test_``
    ``images`` N×28×28 uint8 and ``labels`` N×1 uint8), split in order by ``fractions``."""
    n = len(labels)
    cut1 = round(fractions[0] * n)
    cut2 = cut1 + round(fractions[1] * n)
    bounds = {"train": (0, cut1), "val": (cut1, cut2), "test": (cut2, n)}
    arrays = {}
    for split, (a, b) in bounds.items():
        arrays[f"{split}_images"] = np.asarray(images[a:b], dtype=np.uint8)
        arrays[f"{split}_labels"] = np.asarray(labels[a:b], dtype=np.uint8).reshape(-1, 1)
    path = Path(path)
    np.savez_compressed(path, **arrays)
    return path


def images_to_dataset(images: np.ndarray, labels: np.ndarray) -> ArrayDataset:
    """uint8 N×28×28 images (or N×28×28×1) and labels (N or N×1) → float32 N×1×28×28 in
    [0, 1] and int64 labels."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(
            f"pneumonia images have shape {images.shape}; expected N×{IMAGE_SIZE}×{IMAGE_SIZE} "
            "grayscale (the 28×28 PneumoniaMNIST release, not the 64/128/224 ones)"
        )
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    if set(np.unique(y)) - {0, 1}:
        raise ValueError(f"pneumonia labels must be 0/1, found {sorted(set(np.unique(y)))}")
    x = (images.astype(np.float32) / 255.0)[:, None, :, :]
    return ArrayDataset(np.ascontiguousarray(x), y)


def load_medmnist_npz(path: str | Path) -> tuple[ArrayDataset, ArrayDataset | None]:
    """``(train + val, test)`` from a medmnist-layout ``.npz`` (``test`` is ``None`` when
    the file has no test split)."""
    with np.load(path) as data:
        keys = set(data.files)
        if "train_images" not in keys or "train_labels" not in keys:
            raise ValueError(
                f"{path} has arrays {sorted(keys)}; expected the medmnist layout "
                "train_images/train_labels (+ val_*, test_*), e.g. pneumoniamnist.npz"
            )
        pool_parts = [
            images_to_dataset(data[f"{s}_images"], data[f"{s}_labels"])
            for s in ("train", "val")
            if f"{s}_images" in keys
        ]
        test = (
            images_to_dataset(data["test_images"], data["test_labels"])
            if "test_images" in keys
            else None
        )
    pool = ArrayDataset(
        np.concatenate([p.x for p in pool_parts]), np.concatenate([p.y for p in pool_parts])
    )
    return pool, test


def _hf_split_to_dataset(ds) -> ArrayDataset:
    from PIL import Image

    column = "image" if "image" in ds.column_names else "img"
    if column not in ds.column_names or "label" not in ds.column_names:
        raise ValueError(
            f"dataset columns {ds.column_names} lack an image column ('image'/'img') or 'label'"
        )
    images = []
    for img in ds[column]:
        img = img.convert("L")
        if img.size != (IMAGE_SIZE, IMAGE_SIZE):
            img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
        images.append(np.asarray(img, dtype=np.uint8))
    return images_to_dataset(np.stack(images), np.asarray(ds["label"]))


def load_hf_pneumonia(source: str) -> tuple[ArrayDataset, ArrayDataset | None]:
    """A Hugging Face id (``<id>`` or ``<id>:<config>``) or ``save_to_disk`` directory:
    ``train`` (+ ``validation``/``val``) is the pool, ``test`` the server's set."""
    import datasets

    loaded = load_hf(source)
    if not isinstance(loaded, datasets.DatasetDict):
        return _hf_split_to_dataset(loaded), None
    if "train" not in loaded:
        raise ValueError(f"dataset {source} has splits {list(loaded)}; expected a 'train' split")
    parts = [_hf_split_to_dataset(loaded[s]) for s in ("train", "validation", "val") if s in loaded]
    pool = ArrayDataset(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))
    test = _hf_split_to_dataset(loaded["test"]) if "test" in loaded else None
    return pool, test


class PerImageStandardize(nn.Module):
    """``(x − mean(x)) / std(x)`` per image: removes exposure (brightness and contrast),
    has no parameters and needs no data statistics, so every silo and the server
    preprocess alike."""

    def forward(self, x):
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True)
        return (x - mean) / (std + 1e-6)


class PneumoniaCNN(nn.Module):
    """:class:`PerImageStandardize` then :class:`~tasks.models.SmallCNN` (two conv blocks,
    a linear head; ~5 k parameters)."""

    def __init__(self, num_classes: int = 2, batch_norm: bool = False) -> None:
        super().__init__()
        self.normalize = PerImageStandardize()
        self.cnn = SmallCNN(num_classes=num_classes, batch_norm=batch_norm)

    def forward(self, x):
        return self.cnn(self.normalize(x))


@TASKS.register("pneumonia", family="image")
class PneumoniaTask(Task):
    """Pneumonia / normal from a 28×28 chest X-ray."""

    name = "pneumonia"
    num_classes = 2

    def load_data(self, data) -> tuple[ArrayDataset, ArrayDataset | None]:
        source = data.source
        if not source:
            return images_to_dataset(*generate_pneumonia_images()), None
        path = Path(source).expanduser()
        local = path.is_file() or source.endswith(".npz") or source.startswith(("/", ".", "~"))
        if is_remote(source) or (local and not path.is_dir()):
            return load_medmnist_npz(resolve_local_path(source))
        return load_hf_pneumonia(source)

    #: BatchNorm after each convolution (``pneumonia-bn``).
    batch_norm = False

    def build_model(self) -> nn.Module:
        return PneumoniaCNN(num_classes=self.num_classes, batch_norm=self.batch_norm)


@TASKS.register("pneumonia-bn", family="image")
class PneumoniaBNTask(PneumoniaTask):
    """Pneumonia with BatchNorm after each convolution (the model FedBN personalises:
    ``personalization.method = 'fedbn'``); data and head as ``pneumonia``."""

    name, batch_norm, local_dp_unsupported = "pneumonia-bn", True, BATCH_NORM_NO_LOCAL_DP
