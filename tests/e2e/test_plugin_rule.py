"""End-to-end: a researcher's own package adds an aggregation rule, and `flwr run` uses it.

The package is written to a temp dir (one module and its pyproject.toml), built and
installed with pip into a target directory that joins the test's ``PYTHONPATH``, and
registers the rule through the entry-point group ``fedsilo.rules``. The rule declares a
section of its own (one parameter, in the rule's file); its value travels in
``robust.rule-params``, the one key for it in this app's pyproject (the SuperLink refuses
others). Nothing in this repository is edited: the rule is selected with
``--run-config "strategy='…' robust.rule-params='…'"`` and the real simulation (own
FLWR_HOME and SuperLink ports) must learn with it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from fl_app.local_run import run_simulation

pytestmark = pytest.mark.e2e

RULE = "mean-around-median"

PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "fedsilo-meanmed"
version = "0.1.0"

[project.entry-points."fedsilo.rules"]
mean-around-median = "fedsilo_meanmed:mean_around_median"
"""

MODULE = '''\
"""Mean around the median (Xie et al., 2018): per coordinate, the mean of the
ceil(keep-fraction × n) values closest to the coordinate-wise median."""

import math

import torch
from pydantic import Field

from fl_core.config import Section
from fl_core.registry import describe


class MeanAroundMedianSection(Section):
    """The parameters of mean-around-median (set with robust.rule-params)."""

    keep_fraction: float = Field(
        0.5, gt=0, le=1, description="Share of the values closest to the median averaged."
    )


@describe(
    family="robust",
    section=MeanAroundMedianSection,
    compatible={"central-dp": False, "secagg": False, "topk": False},
)
def mean_around_median(updates: torch.Tensor, weights=None, *, keep_fraction: float):
    """Rows of ``updates`` (n, d) are the silos' updates; returns the (d,) aggregate."""
    n = updates.shape[0]
    median = updates.median(dim=0).values
    keep = max(1, math.ceil(keep_fraction * n))
    idx = (updates - median).abs().topk(keep, dim=0, largest=False).indices
    return updates.gather(0, idx).mean(dim=0)
'''


@pytest.fixture
def plugin_on_path(tmp_path, monkeypatch):
    """Build and install the throwaway package into ``tmp_path/site``; put it on the
    ``PYTHONPATH`` of this process and of every process the run starts."""
    src = tmp_path / "fedsilo-meanmed"
    (src / "fedsilo_meanmed").mkdir(parents=True)
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "fedsilo_meanmed" / "__init__.py").write_text(MODULE)
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--no-build-isolation", "--no-index", "--target", str(site), str(src)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    assert (site / "fedsilo_meanmed").is_dir()
    assert list(site.glob("fedsilo_meanmed-0.1.0.dist-info/entry_points.txt"))
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    monkeypatch.setenv("PYTHONPATH", path)
    return site


def test_the_installed_package_registers_its_rule_as_a_strategy(plugin_on_path):
    """In a fresh interpreter (the entry points of the test's environment): the rule is in
    the rule registry with its metadata and section, is a selectable strategy that reads
    ``robust.rule-params``, the config checks read its declared incompatibilities and its
    section, and its parameter changes what it computes."""
    code = textwrap.dedent(
        f"""
        import torch
        from strategies.registry import STRATEGIES
        from strategies.robust.registry import RULES
        from fl_app.config import ConfigError, RunConfig
        rule = RULES.get("{RULE}")
        print("origin", rule.origin, rule.family, rule.section.__name__)
        strategy = STRATEGIES.get("{RULE}")
        print("strategy", "{RULE}" in STRATEGIES, strategy.family, strategy.extra["config_keys"])
        RunConfig(strategy="{RULE}")  # accepted
        try:
            RunConfig(strategy="{RULE}", secagg={{"enabled": True}},
                      robust={{"max-update-norm-ratio": 0.0}})
        except ConfigError as exc:
            print("refused", "secure" in str(exc))
        try:
            RunConfig(strategy="{RULE}", robust={{"rule-params": "keep=0.5"}})
        except ConfigError as exc:
            print("unknown:", exc)
        x = torch.tensor([[0.0], [1.0], [2.0], [9.0]])
        for keep in ("0.25", "1.0"):
            cfg = RunConfig(strategy="{RULE}", robust={{"rule-params": "keep-fraction=" + keep}})
            s = strategy.obj(cfg)
            print("keep", keep, s.rule_params, s.aggregate(x, None, **s.rule_params).tolist())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "origin entry-point:fedsilo-meanmed robust MeanAroundMedianSection" in out
    assert "strategy True robust ('robust.rule-params',)" in out
    assert "refused True" in out
    assert (
        "unknown: run-config 'robust.rule-params' = 'keep=0.5': aggregation rule "
        f"'{RULE}' has no parameter 'keep'. Did you mean 'keep-fraction'? Its parameters: "
        "keep-fraction (float, default 0.5): Share of the values closest to the median "
        "averaged." in out
    )
    # torch's median of [0, 1, 2, 9] is 1: one value kept → 1.0; all kept → the mean 3.0
    assert "keep 0.25 {'keep_fraction': 0.25} [1.0]" in out
    assert "keep 1.0 {'keep_fraction': 1.0} [3.0]" in out


def test_flwr_run_selects_the_plugin_rule_and_learns(plugin_on_path, tmp_path):
    run = run_simulation(
        {"strategy": RULE, "num-server-rounds": 3, "robust.rule-params": "keep-fraction=0.75"},
        num_supernodes=4,
        run_dir=tmp_path / "runs",
    )
    assert run.ok, run.output[-3000:]
    config = json.loads((run.run_dir / "config.json").read_text())
    assert (config["strategy"], config["robust.rule-params"]) == (RULE, "keep-fraction=0.75")
    # the strategy's summary: the parameters every round passes to the rule (it has no
    # default for keep_fraction, so a round without it would fail)
    assert "mean_around_median {'keep_fraction': 0.75}" in run.output, run.output[-3000:]
    server = [r for r in run.metrics if r["phase"] == "server"]
    assert [r["round"] for r in server] == [0, 1, 2, 3]
    assert server[0]["accuracy"] < 0.3
    assert server[-1]["accuracy"] >= 0.85, server[-1]
