"""The run-time warnings of :mod:`strategies.robust.collapse`: which runs meet a collapse
condition of the robustness sweep, and what the warning names."""

from __future__ import annotations

from fl_app.config import RunConfig
from fl_app.federation import warn_if_rule_collapses
from strategies.robust.collapse import DOC_SECTION, Collapse, collapse_warnings

TABLE = (
    Collapse("geomed", "none", 0.2, 0.1, "ipm ε=10"),
    Collapse("robust-krum", "none", 0.3, None, "alie"),
    Collapse("cclip", "nnm", 0.4, 0.3, "min-max"),
)


def matching(strategy, pre, fraction, alpha, *, iid=False, table=TABLE):
    return [c for c in table if c.applies(strategy, pre, fraction, alpha, iid)]


def test_a_condition_is_met_from_its_fraction_up_and_its_alpha_down():
    assert matching("geomed", "none", 0.2, 0.1, table=TABLE) == [TABLE[0]]
    assert matching("geomed", "none", 0.4, 0.05, table=TABLE) == [TABLE[0]]
    assert matching("geomed", "none", 0.1, 0.1, table=TABLE) == []  # fewer Byzantine
    assert matching("geomed", "none", 0.3, 0.3, table=TABLE) == []  # milder skew
    assert matching("geomed", "none", 0.3, None, iid=True, table=TABLE) == []  # IID
    # Unknown skew (no simulation partitioner): the condition may hold.
    assert matching("geomed", "none", 0.3, None, table=TABLE) == [TABLE[0]]
    # Without α the condition holds under IID too.
    assert matching("robust-krum", "none", 0.3, None, iid=True, table=TABLE) == [TABLE[1]]
    # Another pre-aggregator is another rule.
    assert matching("cclip", "none", 0.4, 0.1, table=TABLE) == []
    assert matching("cclip", "nnm", 0.4, 0.1, table=TABLE) == [TABLE[2]]
    assert matching("geomed", "none", 0.0, 0.1, table=TABLE) == []


def test_the_warning_names_the_rule_the_condition_and_the_docs():
    (text,) = collapse_warnings("cclip", "nnm", 0.4, 0.1, table=TABLE)
    assert "'cclip + nnm'" in text
    assert "Byzantine fraction ≥ 40%" in text and "α ≤ 0.3" in text
    assert "min-max" in text and DOC_SECTION in text


def test_a_run_reads_fraction_and_skew_from_its_config():
    cfg = RunConfig.from_flower({**RunConfig().to_flower(), "strategy": "robust-median",
                                 "robust.num-byzantine": 4, "data.partitioner": "dirichlet",
                                 "data.dirichlet-alpha": 0.1})  # fmt: skip
    from strategies.robust import collapse

    # The default pre-aggregator ('auto') is the one the run uses: NNM for the median.
    assert warn_if_rule_collapses(cfg, 20) == collapse_warnings("robust-median", "nnm", 0.2, 0.1)
    plain = cfg.replace({"robust.pre-aggregator": "none"})
    expected = collapse_warnings("robust-median", "none", 0.2, 0.1)
    assert expected and warn_if_rule_collapses(plain, 20) == expected
    assert warn_if_rule_collapses(plain.replace({"robust.num-byzantine": 0}), 20) == []
    assert all(isinstance(c, Collapse) for c in collapse.COLLAPSES)


def test_readme_summary_lists_each_rule_once_weakest_condition_first():
    from strategies.robust.collapse import readme_summary

    table = (*TABLE, Collapse("geomed", "none", 0.4, None, "ipm ε=10"))
    lines = readme_summary(table).splitlines()
    assert lines == [
        "- `cclip` + nnm: ≥ 40 % Byzantine with Dirichlet α ≤ 0.3 (min-max)",
        "- `geomed`: ≥ 20 % Byzantine with Dirichlet α ≤ 0.1 (ipm ε=10); "
        "≥ 40 % Byzantine under IID already (ipm ε=10)",
        "- `robust-krum`: ≥ 30 % Byzantine under IID already (alie)",
    ]


def test_readme_collapse_list_is_the_generated_one(tmp_path):
    """README's Strategies section shows every collapse the run-time warning knows, as
    `python -m strategies.robust.collapse --update-readme` writes it."""
    from pathlib import Path

    from fl_core.markers import between_markers, replace_between_markers
    from strategies.robust.collapse import COLLAPSES, README_END, README_START, readme_summary

    readme = (Path(__file__).parents[3] / "README.md").read_text(encoding="utf-8")
    shown = between_markers(readme, README_START, README_END)
    assert shown == readme_summary(), "run: python -m strategies.robust.collapse --update-readme"
    assert len(shown.splitlines()) == len({(c.strategy, c.pre_aggregator) for c in COLLAPSES})
    # The writer keeps the rest of the file and replaces only the marked part.
    copy = tmp_path / "README.md"
    copy.write_text(readme.replace(shown, "stale"), encoding="utf-8")
    replace_between_markers(copy, README_START, README_END, readme_summary())
    assert copy.read_text(encoding="utf-8") == readme
