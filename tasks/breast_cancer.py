"""Medical tabular data: breast-cancer diagnosis (Wisconsin diagnostic) with an MLP.

Offline default and only source: scikit-learn's bundled copy (569 patients, 30
features, shipped inside the package). Features are squashed with a fixed signed
log1p, so silos need no shared statistics. Label 1 = malignant.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from tasks.base import ArrayDataset, Task
from tasks.models import MLP, signed_log1p
from tasks.registry import TASKS


@TASKS.register("breast-cancer", family="tabular")
class BreastCancerTask(Task):
    """Binary diagnosis from 30 tabular features."""

    name = "breast-cancer"
    num_classes = 2
    num_features = 30

    def load_data(self, data) -> tuple[ArrayDataset, ArrayDataset | None]:
        if data.source:
            raise ValueError(
                "task 'breast-cancer' reads scikit-learn's bundled data only; set "
                'data.source = ""'
            )
        from sklearn.datasets import load_breast_cancer

        bunch = load_breast_cancer()
        # sklearn codes malignant as 0; make the positive (malignant) class 1.
        y = (bunch.target == 0).astype(np.int64)
        return ArrayDataset(signed_log1p(bunch.data), y), None

    def build_model(self) -> nn.Module:
        return MLP(self.num_features, num_classes=2, hidden=32)
