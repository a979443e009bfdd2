"""Bank-marketing data: generated frame in the UCI layout, the real CSV loader, the fixed
encoding, and the vertical views (coverage, split parsing)."""

import numpy as np
import pytest

from tasks.bank_marketing import (
    FEATURES,
    LABEL,
    bank_labels,
    column_width,
    encode_bank_columns,
    generate_bank_frame,
    read_bank_csv,
)
from tasks.vertical import VerticalDataError, parse_split, party_data, vertical_spec


def test_generated_frame_has_the_uci_layout_and_a_realistic_positive_rate():
    frame = generate_bank_frame()
    assert list(frame.columns) == ["id", *FEATURES, LABEL]
    assert 10_000 <= len(frame) <= 20_000
    assert frame[LABEL].eq("yes").mean() == pytest.approx(0.115, abs=0.01)
    assert frame.equals(generate_bank_frame())  # deterministic
    # The signal sits where it does in the real data: long calls, earlier successes.
    y = bank_labels(frame)
    long_calls = frame["duration"] > frame["duration"].median()
    assert y[long_calls].mean() > 2 * y[~long_calls].mean()
    assert y[frame["poutcome"] == "success"].mean() > 0.4
    x = encode_bank_columns(frame, FEATURES)
    assert x.shape == (len(frame), sum(column_width(c) for c in FEATURES))
    assert x.dtype == np.float32 and np.isfinite(x).all()


def test_uci_csv_with_semicolons_and_no_id_column_loads(tmp_path):
    frame = generate_bank_frame(n_rows=50, seed=3).drop(columns="id")
    path = tmp_path / "bank-full.csv"
    frame.to_csv(path, sep=";", index=False)
    loaded = read_bank_csv(str(path))
    assert loaded["id"].tolist()[:2] == ["row-0000000", "row-0000001"]
    assert np.array_equal(
        encode_bank_columns(loaded, FEATURES), encode_bank_columns(frame, FEATURES)
    )


def test_unknown_category_and_missing_column_name_the_problem():
    frame = generate_bank_frame(n_rows=20, seed=1)
    frame.loc[3, "job"] = "astronaut"
    with pytest.raises(ValueError, match=r"column 'job' has values \['astronaut'\]"):
        encode_bank_columns(frame, ["job"])
    with pytest.raises(ValueError, match=r"lacks columns \['poutcome'\]"):
        encode_bank_columns(frame.drop(columns="poutcome"), ["poutcome"])


def test_parties_hold_partially_overlapping_records_of_their_own_columns():
    spec = vertical_spec("bank-marketing")
    groups = parse_split("", spec)
    assert len(groups) == 3 and sorted(c for g in groups for c in g) == sorted(FEATURES)
    views = [
        party_data(
            "bank-marketing", "", tuple(g), party=p, coverage=0.9, seed=42, with_labels=p == 0
        )
        for p, g in enumerate(groups)
    ]
    sets = [set(v.ids) for v in views]
    common = set.intersection(*sets)
    for s in sets:
        assert 0.85 < len(s) / 15_000 < 0.95 and len(common) < len(s)
    assert views[0].y is not None and views[1].y is None
    assert views[1].x.shape[1] == sum(column_width(c) for c in groups[1])
    assert np.allclose(views[1].x.mean(axis=0), 0, atol=1e-4)  # standardised locally


def test_vertical_tasks_refuse_other_tasks_with_the_choices():
    with pytest.raises(VerticalDataError, match="use task = one of bank-marketing, fraud"):
        vertical_spec("digits")
    with pytest.raises(VerticalDataError, match="names one party"):
        parse_split("age,job", vertical_spec("bank-marketing"))
