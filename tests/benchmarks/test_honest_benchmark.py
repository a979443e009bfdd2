"""benchmarks.honest without federations: its plan, the per-round ratios, the section and
where it is written. The federations themselves are the benchmark's run."""

from __future__ import annotations

import pytest

from benchmarks import robust as matrix
from benchmarks.honest import (
    ATTACKS,
    BOUNDS,
    CLEAN_BOUNDS,
    CODECS,
    MARK_END,
    MARK_START,
    Cell,
    Outcome,
    markdown,
    plan,
    round_ratios,
    run_config,
    write_doc,
)


def test_plan_covers_codecs_bounds_seeds_and_every_attack_under_every_bound():
    cells = plan((1, 2))
    clean = [c for c in cells if c.kind == "clean"]
    attack = [c for c in cells if c.kind == "attack"]
    assert len(clean) == len(CODECS) * len(CLEAN_BOUNDS) * 2
    assert len(attack) == len(matrix.PARTITIONERS) * len(ATTACKS) * len(BOUNDS)
    assert {c.partitioner for c in plan((1,), quick=True) if c.kind == "attack"} == {"iid"}


def test_run_configs_set_the_bound_and_the_attack_strength():
    scaled = run_config(Cell("attack", "clip 3×", 42, attack="scaling ×100"))
    assert scaled["attack.kind"] == "scaling" and scaled["attack.strength"] == 100.0
    assert scaled["robust.norm-outliers"] == "clip" and scaled["robust.max-update-norm-ratio"] == 3
    assert scaled["strategy"] == "fedavg" and scaled["num-server-rounds"] == matrix.ROUNDS
    clean = run_config(Cell("clean", "off", 43, codec="topk"), rounds=2)
    assert clean["compression.method"] == "topk" and clean["seed"] == 43
    assert clean["robust.max-update-norm-ratio"] == 0.0 and clean["num-server-rounds"] == 2


def test_ratios_are_taken_against_each_rounds_own_median():
    # round 1: norms 1, 2, 3 (median 2); round 2: 10, 40 (median 25)
    assert round_ratios([1.0, 2.0, 3.0, 10.0, 40.0], [3, 2]) == pytest.approx(
        [0.5, 1.0, 1.5, 0.4, 1.6]
    )


def test_section_counts_rejections_per_seed_and_marks_the_attack_cells():
    outcomes = [
        Outcome(Cell("clean", "off", 42), 0.97, 200, 0, 0, ratios=[1.0, 12.0]),
        Outcome(Cell("clean", "reject 10×", 42), 0.96, 200, 1, 0),
        Outcome(Cell("clean", "reject 10×", 43), 0.95, 200, 2, 0),
        Outcome(Cell("attack", "clip 3×", 42, attack="scaling ×10"), 0.95, 160, 0, 32),
    ]
    text = markdown(outcomes, {"commit": "abc", "uncommitted": [], "allow-dirty": False}, 60, 1.0)
    assert "per seed: 42 12.0 ×; 1 of 2 updates exceed 3 ×, 1 exceed 10 ×" in text
    assert (
        "| none | reject 10× | 1 rej., 0 clip. | 2 rej., 0 clip. | 400 | 3 | 0 | 0.9550 |" in text
    )
    assert "| scaling ×10 | – | 0.950 (32 clip.) |" in text
    assert "commit `abc`" in text


def test_the_section_replaces_only_its_markers(tmp_path):
    doc = tmp_path / "robustness.md"
    doc.write_text(f"before\n{MARK_START}\nold\n{MARK_END}\nafter\n")
    write_doc("## new", doc)
    text = doc.read_text()
    assert "old" not in text and "## new" in text
    assert text.startswith("before\n") and text.endswith("after\n")
