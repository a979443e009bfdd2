"""The privacy–utility benchmark of ``benchmarks.privacy``: its plan, three tiny real
federations (breast-cancer, 4 silos, 2 rounds) on the in-process grid, the ε ≤ target
check and the JSON / Markdown / PNG outputs. The full grid is
``python -m benchmarks.privacy``."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.privacy import (
    EPSILONS,
    HAND_WRITTEN,
    MODES,
    SETTINGS,
    TASKS,
    Settings,
    assert_within_budget,
    budget_violations,
    describe,
    flwr_run_command,
    plan,
    render_markdown,
    run_grid,
    write_outputs,
)
from fl_app.config import RunConfig

ROW_KEYS = {
    "task", "mode", "target_epsilon", "epsilon", "sigma", "accuracy", "roc_auc", "utility",
    "clients_per_round", "within_budget", "seconds", "error",
}  # fmt: skip


def test_plan_covers_tasks_modes_and_budgets_with_valid_configs():
    cells = plan()
    assert len(cells) == len(TASKS) * len(MODES) * len(EPSILONS)
    assert len({c.key for c in cells}) == len(cells)
    # ε = ∞ is the same federation for both modes (DP off, everything else equal).
    assert len({c.run_key for c in cells}) == len(cells) - len(TASKS)
    for cell in cells:
        cfg = RunConfig.from_flower(cell.run_config())  # valid, cross-field checks included
        s = SETTINGS[cell.task]
        assert cell.num_silos == s.num_silos >= 50
        assert (cfg.num_server_rounds, cfg.training.learning_rate) == (s.rounds, s.learning_rate)
        assert cfg.sampling.fraction_train == 1.0 and not cfg.dp.sampling_amplification
        assert cfg.robust.max_update_norm_ratio == 0.0
        assert cfg.dp.central == (cell.mode == "central" and cell.private)
        assert cfg.dp.local == (cell.mode == "local" and cell.private)
        # Reruns must be comparable: private cells seed their noise (marked not private).
        assert cfg.dp.reproducible_noise == cell.private
        if cfg.dp.central:
            assert (
                cfg.dp.target_epsilon == cell.target_epsilon and cfg.dp.budget_mode == "calibrate"
            )
            assert cfg.dp.clip_norm == s.clip_norm
        if cfg.dp.local:
            assert cfg.dp.local_target_epsilon == cell.target_epsilon
            assert cfg.dp.max_grad_norm == s.max_grad_norm
    central_2 = next(c for c in cells if c.key == ("digits", "central", 2.0))
    command = flwr_run_command(central_2)
    assert "dp.central=true" in command and "dp.budget-mode='calibrate'" in command
    assert "dp.target-epsilon=2.0" in command and "num-supernodes=100" in command


TINY = {
    # 455 rows / 4 silos ≈ 114 rows each; batch 128 ≥ that: full-batch local steps, so local
    # DP accounts at sample rate 1 (fast).
    "breast-cancer": Settings(
        num_silos=4, rounds=2, local_epochs=1, batch_size=128, learning_rate=0.2,
        clip_norm=0.5, max_grad_norm=1.0,
    )
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_grid(tmp_path_factory):
    """Central ε = 2, local ε = 4 and the shared non-private run: three real federations."""
    cells = [
        c
        for c in plan(tasks=["breast-cancer"], epsilons=[2.0, 4.0, math.inf], settings=TINY)
        if not (c.mode == "central" and c.target_epsilon == 4.0)
        and not (c.mode == "local" and c.target_epsilon == 2.0)
    ]
    seen = []
    rows = run_grid(cells, workers=1, on_row=seen.append)
    meta = describe(cells, workers=1, command="pytest", what_if_rounds=[2])
    meta["complete"], meta["wall-seconds"] = True, sum(r["seconds"] for r in rows)
    return cells, rows, seen, meta, tmp_path_factory.mktemp("privacy")


def test_tiny_cells_report_epsilon_within_target(tiny_grid):
    cells, rows, seen, _, _ = tiny_grid
    assert [(r["mode"], r["target_epsilon"]) for r in rows] == [
        ("central", 2.0), ("central", None), ("local", 4.0), ("local", None),
    ]  # fmt: skip
    assert len(seen) == len(cells)
    central, base_c, local, base_l = rows
    for row in rows:
        assert row.keys() >= ROW_KEYS
        assert row["error"] is None, row["error"]
        assert row["clients_per_round"] == 4 and row["rounds_trained"] == 2
        assert 0.0 <= row["accuracy"] <= 1.0 and 0.0 <= row["roc_auc"] <= 1.0
        assert row["utility"] == row["roc_auc"] and len(row["utility_by_round"]) == 2
    for row, target in ((central, 2.0), (local, 4.0)):
        assert row["within_budget"] and 0 < row["epsilon"] <= target
        assert row["sigma"] > 0
    assert central["epsilon"] > 1.9  # calibrated: the planned rounds spend the budget
    assert central["noise_std_on_mean"] == pytest.approx(central["sigma"] * 0.5 / 4)
    assert 0.0 <= central["clipped_fraction"] <= 1.0
    assert local["sigma_range"][0] <= local["sigma"] <= local["sigma_range"][1]
    assert local["skipped_silo_rounds"] == 0
    # One non-private federation serves both modes.
    assert base_c["shared_run"] and base_l["shared_run"]
    assert base_c["utility"] == base_l["utility"] and base_c["epsilon"] is None
    assert budget_violations(rows) == []
    assert_within_budget(rows)


def test_a_reported_epsilon_above_target_fails_the_check(tiny_grid):
    _, rows, _, _, _ = tiny_grid
    bad = [dict(rows[0], epsilon=2.0001)]
    assert budget_violations(bad) == ["breast-cancer central ε target 2: reported ε = 2.0001"]
    with pytest.raises(AssertionError, match="reported ε above target"):
        assert_within_budget(bad)
    with pytest.raises(AssertionError):
        assert_within_budget([dict(rows[2], epsilon=None)])  # a private run must report ε


def test_json_markdown_and_png(tiny_grid):
    _, rows, _, meta, out_dir = tiny_grid
    out = out_dir / "privacy.md"
    write_outputs(rows, meta, out)

    data = json.loads(out.with_suffix(".json").read_text())
    assert len(data["rows"]) == 4 and data["budget_violations"] == []
    assert all(r.keys() >= ROW_KEYS for r in data["rows"])
    info = data["meta"]["tasks"]["breast-cancer"]
    assert info["num-silos"] == info["clients-per-round"] == 4
    assert info["rows-per-silo"]["total"] == 455 and info["model-parameters"] > 0
    assert data["meta"]["amplification-what-if"][0]["rounds"] == 2
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    doc = out.read_text()
    assert doc == render_markdown(rows, meta)  # rendering is a pure function of the rows
    assert "| task | mode | ε target | ε reported | σ |" in doc
    central_line = next(
        line for line in doc.splitlines() if line.startswith("| breast-cancer | central | 2 |")
    )
    assert (
        f"{rows[0]['epsilon']:.3f}" in central_line and f"{rows[0]['roc_auc']:.3f}" in central_line
    )
    assert "**Clients per round: breast-cancer 4**" in doc
    assert "privacy.png" in doc and "Against the reference point" in doc
    assert "All 2 private runs report ε ≤ target" in doc
    assert "`dp.reproducible-noise = true`" in doc and "`dp-private = false`" in doc

    # A rewrite keeps the hand-written part below the marker, and only that.
    tail = f"{HAND_WRITTEN}\n\n## Sampling amplification\n\nhand-written text\n"
    out.write_text(doc.replace("Against the reference point", "stale") + "\n" + tail)
    write_outputs(rows, meta, out)
    assert out.read_text() == render_markdown(rows, meta) + "\n" + tail
