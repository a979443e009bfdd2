"""Image classification: handwritten digits with a small CNN.

Offline default (``data.source = ""``): scikit-learn's bundled 8×8 digits (1 797 images,
shipped inside the package, no download). Real data: a Hugging Face dataset id such as
``ylecun/mnist`` (downloaded via ``datasets`` on first use, then cached), or a directory
written by ``datasets.Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``. Columns:
an image column (``image`` or ``img``) and ``label``.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from tasks.base import ArrayDataset, Task
from tasks.models import BATCH_NORM_NO_LOCAL_DP, SmallCNN
from tasks.registry import TASKS
from tasks.sources import load_hf


@TASKS.register("digits", family="image")
class DigitsTask(Task):
    """Digits / MNIST-style 10-class image classification."""

    name = "digits"
    num_classes = 10

    def load_data(self, data) -> tuple[ArrayDataset, ArrayDataset | None]:
        if not data.source:
            from sklearn.datasets import load_digits

            bunch = load_digits()
            x = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
            return ArrayDataset(x, bunch.target.astype(np.int64)), None
        return _load_hf_images(data.source)

    #: BatchNorm after each convolution (``digits-bn``).
    batch_norm = False

    def build_model(self) -> nn.Module:
        return SmallCNN(num_classes=self.num_classes, batch_norm=self.batch_norm)


@TASKS.register("digits-bn", family="image")
class DigitsBNTask(DigitsTask):
    """Digits with BatchNorm after each convolution (the model FedBN personalises:
    ``personalization.method = 'fedbn'``); data and head as ``digits``."""

    name, batch_norm, local_dp_unsupported = "digits-bn", True, BATCH_NORM_NO_LOCAL_DP


def _images_to_arrays(ds) -> ArrayDataset:
    column = "image" if "image" in ds.column_names else "img"
    if column not in ds.column_names or "label" not in ds.column_names:
        raise ValueError(
            f"dataset columns {ds.column_names} lack an image column ('image'/'img') or 'label'"
        )
    images = np.stack([np.asarray(img.convert("L"), dtype=np.float32) for img in ds[column]])
    x = (images / 255.0)[:, None, :, :].astype(np.float32)
    return ArrayDataset(x, np.asarray(ds["label"], dtype=np.int64))


def _load_hf_images(source: str) -> tuple[ArrayDataset, ArrayDataset | None]:
    import datasets

    loaded = load_hf(source)
    if isinstance(loaded, datasets.DatasetDict):
        test = _images_to_arrays(loaded["test"]) if "test" in loaded else None
        return _images_to_arrays(loaded["train"]), test
    return _images_to_arrays(loaded), None
