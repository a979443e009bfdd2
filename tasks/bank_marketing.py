"""Bank marketing: will a customer subscribe a term deposit after a phone campaign?

Real data: the UCI "Bank Marketing" CSV (``bank-full.csv``, 45 211 rows, 11.7 % ``y = yes``;
columns ``age, job, marital, education, default, balance, housing, loan, contact, day,
month, duration, campaign, pdays, previous, poutcome, y``; UCI ships it ``;``-separated,
a ``,``-separated copy works too) from a local path or an Azure Blob URL. An optional
``id`` column names the customer (vertical mode aligns parties on it); without one the
row number is the id.

Offline default: :func:`generate_bank_frame`, deterministic generated customers with the
same columns, value sets and a realistic signal (call duration and a previous campaign's
success dominate, as in the real data; housing/personal loans, May calls and unknown
contact channels lower the rate; students and retirees subscribe more), 15 000 rows,
~11.5 % positives.

Features are encoded with fixed category lists (one-hot) and fixed numeric transforms
(:func:`encode_bank_columns`), so any party encodes its own columns without seeing
anyone else's data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from torch import nn

if TYPE_CHECKING:
    import pandas as pd

from tasks.base import ArrayDataset, Task
from tasks.models import MLP, signed_log1p
from tasks.registry import TASKS
from tasks.sources import resolve_local_path
from tasks.vertical import VERTICAL_SPECS, VerticalSpec

ID = "id"
LABEL = "y"
CATEGORIES: dict[str, list[str]] = {
    "job": [
        "admin.", "blue-collar", "entrepreneur", "housemaid", "management", "retired",
        "self-employed", "services", "student", "technician", "unemployed", "unknown",
    ],
    "marital": ["married", "single", "divorced"],
    "education": ["primary", "secondary", "tertiary", "unknown"],
    "default": ["no", "yes"],
    "housing": ["no", "yes"],
    "loan": ["no", "yes"],
    "contact": ["cellular", "telephone", "unknown"],
    "month": ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
    "poutcome": ["success", "failure", "other", "unknown"],
}  # fmt: skip
NUMERIC = ["age", "balance", "day", "duration", "campaign", "pdays", "previous"]
FEATURES = [
    "age", "job", "marital", "education", "default", "balance", "housing", "loan",
    "contact", "day", "month", "duration", "campaign", "pdays", "previous", "poutcome",
]  # fmt: skip


def _pick(rng: np.random.Generator, values: list[str], probs: list[float], n: int) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    return rng.choice(np.asarray(values, dtype=object), size=n, p=p / p.sum())


def generate_bank_frame(
    n_rows: int = 15_000, positive_rate: float = 0.115, seed: int = 0
) -> pd.DataFrame:
    """A deterministic frame in the UCI bank-marketing layout (plus an ``id`` column)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    n = n_rows
    job = _pick(rng, CATEGORIES["job"],
                [11.4, 21.5, 3.3, 2.7, 20.9, 5.0, 3.5, 9.2, 2.1, 16.8, 2.9, 0.7], n)  # fmt: skip
    age = np.where(
        job == "retired", rng.normal(64, 7, n),
        np.where(job == "student", rng.normal(25, 4, n), rng.normal(40, 9.5, n)),
    ).clip(18, 95).round().astype(np.int64)  # fmt: skip
    marital = np.where(
        age < 30,
        _pick(rng, CATEGORIES["marital"], [0.3, 0.65, 0.05], n),
        _pick(rng, CATEGORIES["marital"], [0.64, 0.23, 0.13], n),
    )
    education = _pick(rng, CATEGORIES["education"], [15.1, 51.3, 29.4, 4.1], n)
    education = np.where(
        np.isin(job, ["management", "entrepreneur"]) & (rng.random(n) < 0.6), "tertiary", education
    )
    default = _pick(rng, CATEGORIES["default"], [98.2, 1.8], n)
    balance = np.round(rng.lognormal(6.5, 1.4, n) - 300 + 15 * (age - 40)).astype(np.int64)
    housing = np.where(
        (age > 60) | (job == "student"),
        _pick(rng, CATEGORIES["housing"], [0.8, 0.2], n),
        _pick(rng, CATEGORIES["housing"], [0.42, 0.58], n),
    )
    loan = _pick(rng, CATEGORIES["loan"], [84.0, 16.0], n)
    month = _pick(rng, CATEGORIES["month"],
                  [3.1, 5.9, 1.1, 6.5, 30.4, 11.8, 15.3, 13.8, 1.3, 1.6, 8.8, 0.5], n)  # fmt: skip
    contact = np.where(
        np.isin(month, ["may", "jun"]) & (rng.random(n) < 0.55),
        "unknown",
        _pick(rng, CATEGORIES["contact"], [0.9, 0.1, 0.0001], n),
    )
    day = rng.integers(1, 32, n)
    duration = np.round(rng.lognormal(5.2, 0.8, n)).clip(0, 4918).astype(np.int64)
    campaign = 1 + rng.geometric(0.4, n) - 1 + (rng.random(n) < 0.1) * rng.integers(0, 10, n)
    contacted = rng.random(n) < 0.18
    pdays = np.where(contacted, rng.integers(1, 400, n), -1)
    previous = np.where(contacted, 1 + rng.poisson(1.5, n), 0)
    poutcome = np.where(
        contacted, _pick(rng, ["success", "failure", "other"], [0.19, 0.61, 0.2], n), "unknown"
    )

    score = (
        1.7 * (np.log(duration + 1) - 5.2) / 0.8
        + np.select([poutcome == "success", poutcome == "failure"], [2.3, -0.1], -0.3)
        + 0.35 * contacted
        + np.select([contact == "unknown", contact == "cellular"], [-1.0, 0.25], 0.0)
        + np.where(np.isin(month, ["mar", "sep", "oct", "dec"]), 1.3, 0.0)
        - 0.45 * (month == "may")
        - 0.2 * np.log(campaign)
        - 0.7 * (housing == "yes")
        - 0.5 * (loan == "yes")
        - 0.4 * (default == "yes")
        + np.select([job == "student", job == "retired", job == "blue-collar"], [0.8, 0.6, -0.35])
        + 0.45 * ((age < 25) | (age > 60))
        + 0.25 * signed_log1p(balance.astype(np.float32)) / 4
        + np.select([education == "tertiary", education == "primary"], [0.3, -0.15], 0.0)
        + 0.2 * (marital == "single")
    )
    noise = rng.logistic(0, 1, n)
    # Intercept chosen by bisection so that the positive rate hits `positive_rate`.
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if np.mean(score + mid + noise > 0) > positive_rate:
            hi = mid
        else:
            lo = mid
    y = np.where(score + lo + noise > 0, "yes", "no")
    frame = pd.DataFrame(
        {
            ID: [f"cust-{seed:02d}-{i:06d}" for i in range(n)],
            "age": age, "job": job, "marital": marital, "education": education,
            "default": default, "balance": balance, "housing": housing, "loan": loan,
            "contact": contact, "day": day, "month": month, "duration": duration,
            "campaign": campaign.astype(np.int64), "pdays": pdays.astype(np.int64),
            "previous": previous.astype(np.int64), "poutcome": poutcome, LABEL: y,
        }
    )  # fmt: skip
    return frame


def read_bank_csv(source: str) -> pd.DataFrame:
    """The CSV at ``source`` (path or Blob URL), ``;`` or ``,`` separated; adds ``id``
    (the row number) when the file has none."""
    import pandas as pd

    path = resolve_local_path(source)
    frame = pd.read_csv(path, sep=None, engine="python")
    frame.columns = [str(c).strip().strip('"') for c in frame.columns]
    if ID not in frame.columns:
        frame.insert(0, ID, [f"row-{i:07d}" for i in range(len(frame))])
    frame[ID] = frame[ID].astype(str)
    return frame


def check_columns(frame: pd.DataFrame, columns: list[str], where: str) -> None:
    """Raise a ValueError naming the missing columns and the expected layout."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{where} lacks columns {missing} (it has {list(frame.columns)}); expected the "
            f"UCI bank-marketing layout: {', '.join(FEATURES)}, {LABEL} (and optionally {ID})"
        )


def column_width(column: str) -> int:
    """Encoded width of one column."""
    if column in CATEGORIES:
        return len(CATEGORIES[column])
    return 2 if column == "pdays" else 1


def encode_bank_columns(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """Fixed, data-independent encoding of ``columns``: one-hot over the UCI category
    lists (an unseen value is an error), log-squashed counts and amounts; pdays becomes
    (was-contacted, log1p(days))."""
    import pandas as pd

    check_columns(frame, columns, "bank-marketing data")
    parts = []
    for column in columns:
        values = frame[column]
        if column in CATEGORIES:
            cats = CATEGORIES[column]
            text = values.astype(str).str.strip().to_numpy()
            unknown = ~np.isin(text, cats)
            if unknown.any():
                bad = sorted(set(text[unknown]))[:5]
                raise ValueError(
                    f"bank-marketing column '{column}' has values {bad} outside {cats}"
                )
            codes = np.searchsorted(np.array(sorted(cats)), text)
            lookup = np.array([cats.index(c) for c in sorted(cats)])
            parts.append(np.eye(len(cats), dtype=np.float32)[lookup[codes]])
            continue
        x = pd.to_numeric(values, errors="raise").to_numpy(dtype=np.float64)
        if column == "pdays":
            parts.append(np.stack([(x >= 0), np.log1p(np.maximum(x, 0))], axis=1))
        elif column in ("balance",):
            parts.append(signed_log1p(x)[:, None])
        elif column in ("duration", "campaign", "previous"):
            parts.append(np.log1p(np.maximum(x, 0))[:, None])
        else:  # age, day
            parts.append(x[:, None] / 10.0)
    if not parts:
        return np.zeros((len(frame), 0), dtype=np.float32)
    return np.concatenate(parts, axis=1).astype(np.float32)


def bank_labels(frame: pd.DataFrame) -> np.ndarray:
    """``y`` as int64 (yes = 1)."""
    check_columns(frame, [LABEL], "bank-marketing data")
    raw = frame[LABEL].astype(str).str.strip().str.lower()
    bad = sorted(set(raw) - {"yes", "no"})
    if bad:
        raise ValueError(f"bank-marketing column '{LABEL}' must be yes/no, found {bad[:5]}")
    return (raw == "yes").to_numpy(dtype=np.int64)


def load_bank_frame(source: str) -> pd.DataFrame:
    """The offline generated frame for ``""``, else the CSV at ``source``."""
    return generate_bank_frame() if not source else read_bank_csv(source)


@VERTICAL_SPECS.register("bank-marketing")
def bank_vertical_spec() -> VerticalSpec:
    """The bank (label party), its call centre and a marketing partner."""
    return VerticalSpec(
        name="bank-marketing",
        features=tuple(FEATURES),
        default_split=(
            # label party: the bank's customer file
            ("age", "job", "marital", "education", "default", "balance", "housing", "loan"),
            # party 1: the call centre's campaign log
            ("contact", "day", "month", "duration", "campaign"),
            # party 2: the marketing partner's history of earlier campaigns
            ("pdays", "previous", "poutcome"),
        ),
        load_frame=load_bank_frame,
        encode=encode_bank_columns,
        labels=bank_labels,
    )


@TASKS.register("bank-marketing", family="tabular")
class BankMarketingTask(Task):
    """Term-deposit subscription from the 16 UCI bank-marketing features (horizontal
    mode; see :mod:`tasks.vertical` for the column-split vertical mode)."""

    name = "bank-marketing"
    num_classes = 2
    num_features = sum(column_width(c) for c in FEATURES)

    def load_data(self, data) -> tuple[ArrayDataset, ArrayDataset | None]:
        frame = load_bank_frame(data.source)
        return ArrayDataset(encode_bank_columns(frame, FEATURES), bank_labels(frame)), None

    def build_model(self) -> nn.Module:
        return MLP(self.num_features, num_classes=2, hidden=64)
