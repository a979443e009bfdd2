"""The documentation site builds with ``mkdocs build --strict`` and its generated reference
pages cover the code: every run-config key, every federation-spec field, every registered
strategy (with a full paper reference) and every task."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_hooks():
    spec = importlib.util.spec_from_file_location("fedsilo_docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = _load_hooks()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built once with --strict (any warning fails the build)."""
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        check=False,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def _text(site: Path, page: str) -> str:
    html = (site / page / "index.html").read_text(encoding="utf-8")
    return re.sub(r"<[^>]+>", " ", html)


def test_the_site_builds_strict_and_offline(site):
    for page in ("quickstart", "concepts", "tasks", "strategies", "notebooks", "azureml",
                 "benchmarks", "robustness", "privacy", "reference/run-config",
                 "reference/federation-spec"):  # fmt: skip
        assert (site / page / "index.html").is_file(), page
    index = (site / "index.html").read_text(encoding="utf-8")
    assert "fonts.googleapis.com" not in index  # nothing fetched when the site is viewed
    # A link from a page to a repository file outside docs/ is served from the site.
    assert (site / "repo" / "examples" / "federation.yaml").is_file()
    assert 'href="../repo/examples/federation.yaml"' in (site / "azureml" / "index.html").read_text(
        encoding="utf-8"
    )


def test_security_page_is_in_the_site_exactly_when_it_exists(site):
    assert (site / "security" / "index.html").is_file() == (ROOT / "docs" / "security.md").is_file()


def test_run_config_page_lists_every_key(site):
    from fl_app.config import RunConfig

    text = _text(site, "reference/run-config")
    missing = [
        f.alias or n for n, f in RunConfig.model_fields.items() if (f.alias or n) not in text
    ]
    assert not missing, missing


def test_federation_spec_page_lists_every_field_of_every_model(site):
    from adapters.azureml.spec import FederationSpec

    text = _text(site, "reference/federation-spec")
    schema = FederationSpec.model_json_schema()
    for name, model in [("FederationSpec", schema), *schema.get("$defs", {}).items()]:
        assert name in text
        for field in model.get("properties", {}):
            assert f"{field}" in text, (name, field)
    assert (site / "reference" / "federation-spec.schema.json").is_file()


def test_strategy_page_lists_every_registered_strategy(site):
    from strategies.registry import STRATEGIES

    text = _text(site, "strategies")
    for name in STRATEGIES:
        assert f"{name}" in text
    assert "arXiv:1602.05629" in text  # FedAvg's full reference


def test_every_strategy_cites_a_paper_with_a_full_reference():
    entries = hooks.strategy_entries()
    uncited = [e["name"] for e in entries if not e["citations"]]
    assert not uncited, (
        f"strategies whose factory docstring cites no (Author et al., year): {uncited}"
    )
    unknown = [(e["name"], c) for e in entries for c in e["citations"] if c not in hooks.REFERENCES]
    assert not unknown, f"add these to REFERENCES in docs/hooks.py: {unknown}"


def test_tasks_page_lists_every_task(site):
    from tasks import TASKS

    text = _text(site, "tasks")
    for name, cls in TASKS.items():
        assert name in text and cls.__name__ in text


def test_citations_are_parsed_from_docstrings():
    text = (
        "Krum (Blanchard et al., 2017); FLTrust (Cao et al., NDSS 2021); (El Mhamdi et al., 2018)"
    )
    assert hooks.citations(text) == [("Blanchard", "2017"), ("Cao", "2021"), ("El Mhamdi", "2018")]
    assert hooks.citations("no paper here (see 2017)") == []


def test_strategy_keys_follow_helpers_of_the_factory_module():
    keys = {e["name"]: e["keys"] for e in hooks.strategy_entries()}
    assert {"server.beta1", "server.beta2", "server.learning-rate", "server.tau"} <= set(
        keys["fedadam"]
    )
    assert keys["fedprox"] == ["training.proximal-mu"]
    assert "robust.pre-aggregator" in keys["geomed"]


def test_strategy_page_carries_the_sweeps_default_and_collapse_warnings():
    """Issue #23: a rule the sweep saw collapse gets a warning in its docs; its section
    also names the pre-aggregator 'auto' gives it."""
    from strategies.robust.collapse import COLLAPSES
    from strategies.robust.defaults import AUTO

    page = hooks.strategies_page()
    sections = {part.split("`", 1)[0]: part for part in page.split("\n## `")[1:]}
    for c in COLLAPSES:
        assert c.condition() in sections[c.strategy], c
    for strategy, evidence in AUTO.items():
        assert f"Default pre-aggregator (`auto`, with `robust.num-byzantine` > 0): " \
               f"**{evidence['choice']}**" in sections[strategy]  # fmt: skip


def test_complete_nav_adds_optional_benchmark_and_other_pages(tmp_path):
    (tmp_path / "index.md").write_text("# Home\n")
    (tmp_path / "listed.md").write_text("# Listed\n")
    (tmp_path / "security.md").write_text("# Security\n")
    (tmp_path / "compression.md").write_text(
        "# Compression\n\nGenerated by `python -m benchmarks.compression`.\n"
    )
    (tmp_path / "notes.md").write_text("# Field notes\n")
    nav = [{"Home": "index.md"}, {"Listed": "listed.md"}, {"Benchmarks": [{"A": "a.md"}]}]
    done = hooks.complete_nav(nav, tmp_path)
    assert {"Security": "security.md"} in done
    assert done[2] == {"Benchmarks": [{"A": "a.md"}, {"Compression": "compression.md"}]}
    assert {"More": [{"Field notes": "notes.md"}]} in done
    assert nav[2] == {"Benchmarks": [{"A": "a.md"}]}  # the given nav is not modified


def test_links_leaving_docs_point_at_copies_of_existing_repo_files():
    md = "[spec](../examples/federation.yaml) [gone](../no/such.file) [in](azureml.md)"
    assert hooks.outside_links("azureml.md", md) == {
        "../examples/federation.yaml": "examples/federation.yaml",
        "../no/such.file": "no/such.file",
    }
    out = hooks.rewrite_outside_links("azureml.md", md)
    assert "[spec](repo/examples/federation.yaml)" in out
    assert "[gone](../no/such.file)" in out  # left alone: --strict reports it
    nested = hooks.rewrite_outside_links("reference/x.md", "[s](../../examples/federation.yaml)")
    assert nested == "[s](../repo/examples/federation.yaml)"
