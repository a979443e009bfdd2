"""benchmarks.personalization: its plan of cells, and the report it renders from runs."""

from __future__ import annotations

from benchmarks import personalization as bench


def test_plan_covers_every_method_and_leaves_fedbn_out_without_a_batch_norm_model():
    items = bench.cells(bench.TASKS, bench.ALPHAS, list(bench.METHODS), [1, 2, 3], 20)
    per_task = {t: {m for t2, _, m, _, _ in items if t2 == t} for t in bench.TASKS}
    assert per_task["digits"] == set(bench.METHODS)
    assert per_task["fraud"] == per_task["ner"] == set(bench.METHODS) - {"fedbn"}
    assert len(items) == (8 + 7 + 7) * 2 * 3


def _run(method: str, seed: int, worst: float, mean: float, model: str) -> dict:
    return {"task": "digits", "alpha": 0.1, "method": method, "seed": seed,
            "metric": "accuracy", "model": model, "mean": mean, "worst": worst,
            "global-mean": 0.5, "global-worst": 0.1}  # fmt: skip


def test_goal_sentence_names_the_best_personal_worst_silo_and_its_gain():
    runs = [
        _run("fedavg", 1, 0.10, 0.60, "global"), _run("fedavg", 2, 0.20, 0.60, "global"),
        _run("ditto", 1, 0.40, 0.70, "personal"), _run("ditto", 2, 0.50, 0.70, "personal"),
        _run("fedper", 1, 0.20, 0.90, "personal"), _run("fedper", 2, 0.20, 0.90, "personal"),
    ]  # fmt: skip
    rows = bench.summary(runs)
    assert [r["method"] for r in rows] == ["fedavg", "fedper", "ditto"]
    sentence = bench.goal(rows, "digits")
    assert "ditto's, +30.0 points" in sentence and "it meets the goal" in sentence
    text = bench.table(rows).markdown()
    assert (
        "| digits α=0.1 (accuracy) | ditto | personal | 0.700 ± 0.000 | 0.450 ± 0.071 | +0.300"
        in text
    )
