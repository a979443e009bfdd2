"""``robust.pre-aggregator = "auto"``, the default: the pre-aggregator the robustness sweep
measured best per rule (:mod:`strategies.robust.defaults`), how a run resolves and logs it,
and the refusal of a pre-aggregator with a strategy that takes none."""

from __future__ import annotations

import json
import logging

import pytest

from fl_app import LOG
from fl_app.config import RunConfig
from fl_app.federation import log_pre_aggregator
from fl_core.errors import ConfigError
from strategies import build_strategy
from strategies.robust import collapse
from strategies.robust.defaults import AUTO, resolve_pre_aggregator

TABLE = {"geomed": {"choice": "nnm", "mean_worst": {"none": 0.38, "nnm": 0.5}, "settings": 16},
         "fltrust": {"choice": "none", "mean_worst": {"none": 0.79, "nnm": 0.67},
                     "settings": 16}}  # fmt: skip


def test_auto_is_the_sweeps_choice_with_its_figures():
    choice = resolve_pre_aggregator("geomed", "auto", 3, TABLE)
    assert (choice.value, choice.auto) == ("nnm", True)
    assert "none 0.38, nnm 0.50" in choice.reason and "16" in choice.reason
    assert resolve_pre_aggregator("fltrust", "auto", 3, TABLE).value == "none"


def test_auto_is_none_without_byzantine_silos_or_evidence_and_explicit_values_stay():
    # f = 0: NNM would average every update with all the others.
    zero = resolve_pre_aggregator("geomed", "auto", 0, TABLE)
    assert zero.value == "none" and "robust.num-byzantine" in zero.reason
    unknown = resolve_pre_aggregator("my-rule", "auto", 3, TABLE)
    assert unknown.value == "none" and "not measured" in unknown.reason
    for value in ("none", "nnm", "bucketing", "nnm+bucketing"):
        kept = resolve_pre_aggregator("geomed", value, 0, TABLE)
        assert (kept.value, kept.auto, kept.reason) == (value, False, "")


def test_the_default_config_builds_the_rule_behind_the_sweeps_choice():
    assert RunConfig().robust.pre_aggregator == "auto"
    for strategy, evidence in AUTO.items():
        if strategy == "fltrust":
            continue  # its factory needs the task's root data (covered through the run log)
        built = build_strategy(RunConfig(strategy=strategy, robust={"num-byzantine": 2}))
        name = built.aggregate.__name__
        assert ("nearest_neighbor_mixing" in name) == ("nnm" in evidence["choice"]), strategy
        assert ("bucketing" in name) == ("bucketing" in evidence["choice"]), strategy
        plain = build_strategy(RunConfig(strategy=strategy, robust={"num-byzantine": 0}))
        assert "+" not in plain.aggregate.__name__, strategy


def test_the_run_log_states_the_pre_aggregator_and_why(caplog: pytest.LogCaptureFixture):
    cfg = RunConfig(strategy="robust-median", robust={"num-byzantine": 4})
    # Flower's logger may not propagate to the root (where caplog listens): listen on ours.
    LOG.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger=LOG.name):
            choice = log_pre_aggregator(cfg)
    finally:
        LOG.removeHandler(caplog.handler)
    assert choice is not None and choice.value == AUTO["robust-median"]["choice"]
    assert f"'auto' → '{choice.value}' for robust-median" in caplog.text
    assert "docs/robustness.md" in caplog.text
    assert log_pre_aggregator(RunConfig(strategy="fedavg")) is None


def test_a_pre_aggregator_with_a_strategy_that_takes_none_is_refused():
    with pytest.raises(ConfigError, match=r"'robust.pre-aggregator' = 'nnm'.*'krum'.*robust-krum"):
        RunConfig(strategy="krum", robust={"pre-aggregator": "nnm"})
    # 'none' and 'auto' are fine with any strategy.
    assert RunConfig(strategy="krum", robust={"pre-aggregator": "none"}).strategy == "krum"


def test_sync_from_sweep_writes_the_two_data_files(tmp_path):
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps({"collapse_conditions": [{"strategy": "geomed"}],
                                 "auto_pre_aggregator": TABLE}))  # fmt: skip
    table, auto = tmp_path / "c.json", tmp_path / "a.json"
    assert collapse.sync_from_sweep(sweep, table, auto) == [table, auto]
    assert json.loads(table.read_text()) == [{"strategy": "geomed"}]
    assert json.loads(auto.read_text()) == TABLE
    sweep.write_text(json.dumps({"collapse_conditions": []}))
    with pytest.raises(SystemExit, match=r"auto_pre_aggregator.*--render-only"):
        collapse.sync_from_sweep(sweep, table, auto)
