"""docs/vertical.md's rendering: the noisy row is the mean of its draws, each draw listed."""

from __future__ import annotations

from benchmarks.vertical import PROTECTED, to_markdown


def test_the_noisy_row_is_a_mean_over_draws_and_lists_each_draw():
    def m(auc):
        return {"roc-auc": auc, "pr-auc": 0.5, "accuracy": 0.8}

    draws = [m(0.80), m(0.82), m(0.84)]
    result = {
        "task": "bank-marketing", "split": [["a"], ["b"]], "records": {"train": 10},
        "settings": {"num-server-rounds": 2, "seed": 1},
        "results": {"centralised (same split model)": m(0.86),
                    PROTECTED: {**m(0.82), "draws": draws}},
        "per-epoch communication": {"embedding bytes": 1, "gradient bytes": 1, "round trips": 1},
        "vertical wall seconds (in-process)": 1.0,
        "code": {"commit": "abc123", "uncommitted": [], "allow-dirty": False},
    }  # fmt: skip
    text = to_markdown([result])
    assert f"| {PROTECTED} (mean of 3 noise draws) | 0.8200 |" in text
    assert "-4.00 pt" in text  # against the centralised row
    assert "ROC-AUC per run 0.8000, 0.8200, 0.8400 (sd 0.0200)" in text
