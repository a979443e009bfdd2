"""deploy/: the Prometheus rules pass ``promtool check rules`` and their unit tests (each
alert shown to fire); every PromQL expression of the rules and of the Grafana dashboard
is valid PromQL (promtool) and names only metrics the exporter exposes (from its
declaration, adapters/prometheus/exporter.py) or recording rules of deploy/prometheus;
the provisioning files point at the dashboard and its datasource."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from adapters.prometheus.exporter import exposed_names

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
RULES = PROM / "fedsilo-rules.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))

#: PromQL words that are not metric names.
KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan", "atan2",
}  # fmt: skip


def promtool(*args: str) -> subprocess.CompletedProcess:
    assert shutil.which("promtool"), "promtool missing: .ci/run installs Debian's prometheus"
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, timeout=120, check=False
    )


def metric_names(expr: str) -> set[str]:
    """The metric (and recording-rule) names a PromQL expression selects: identifiers
    left once strings, label matchers, ranges, label lists (by/on/…) and function calls
    are set aside."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1 ", text)
    names = set()
    # A name followed by "(" or by "by"/"without" (sum by (…) (…)) is a function/aggregation.
    pattern = r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\(|\s+(?:by|without)\b)?"
    for match in re.finditer(pattern, text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in KEYWORDS or re.fullmatch(r"\d+[smhdwy]", name):
            continue
        names.add(name)
    return names


def rule_groups() -> list[dict]:
    return yaml.safe_load(RULES.read_text())["groups"]


def recording_rules() -> set[str]:
    return {r["record"] for g in rule_groups() for r in g["rules"] if "record" in r}


def dashboard_exprs() -> list[tuple[str, str]]:
    out = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                out.append((f"{path.name}: {panel['title']}", target["expr"]))
    return out


def test_metric_names_finds_metrics_not_functions_labels_or_durations():
    expr = (
        'sum by (partition) (rate(fedsilo_a_total{phase="train", x=~"a|b"}[5m] offset 1h)) '
        "/ ignoring (phase) group_left (job) fedsilo:b:ratio > 0.2 and on (instance) "
        "time() - fedsilo_c_seconds"
    )
    assert metric_names(expr) == {"fedsilo_a_total", "fedsilo:b:ratio", "fedsilo_c_seconds"}


def test_promtool_check_rules_passes():
    proc = promtool("check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in rule_groups())} rules found" in proc.stdout


def test_promtool_unit_tests_show_each_alert_firing_and_not_firing():
    tests = sorted((PROM / "tests").glob("*.yml"))
    assert tests
    proc = promtool("test", "rules", *map(str, tests))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout
    alerts = {r["alert"] for g in rule_groups() for r in g["rules"] if "alert" in r}
    assert len(alerts) == 5
    fired, quiet = set(), set()
    for path in tests:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    assert fired == alerts and quiet == alerts


def test_the_prometheus_config_is_valid_and_loads_the_rules():
    proc = promtool("check", "config", str(PROM / "prometheus.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (
        "fedsilo-rules.yml" in yaml.safe_load((PROM / "prometheus.yml").read_text())["rule_files"]
    )


def test_every_promql_expression_is_valid_and_names_only_exported_metrics(tmp_path):
    exported, recorded = exposed_names(), recording_rules()
    exprs = [("rules: " + (r.get("alert") or r["record"]), r["expr"])
             for g in rule_groups() for r in g["rules"]]  # fmt: skip
    exprs += dashboard_exprs()
    assert len(dashboard_exprs()) >= 15
    used = set()
    for where, expr in exprs:
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        unknown = names - exported - recorded
        assert not unknown, f"{where}: {sorted(unknown)} not exposed by the exporter"
        used |= names
    # promtool parses every dashboard expression (as a recording rule).
    check = tmp_path / "dashboard-exprs.yml"
    rules = [{"record": f"dashboard:expr:{i}", "expr": e} for i, (_, e) in enumerate(exprs)]
    check.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = promtool("check", "rules", str(check))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The dashboard and rules cover the run-level figures the issue names.
    for needed in ("fedsilo_round", "fedsilo_dp_epsilon", "fedsilo_rejected_updates_total",
                   "fedsilo_uploaded_bytes_total", "fedsilo_silo_reply_seconds",
                   "fedsilo_silo_last_seen_timestamp_seconds"):  # fmt: skip
        assert needed in used


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_provisioning_points_at_the_dashboard_and_its_datasource(path):
    dashboard = json.loads(path.read_text())
    sources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "fedsilo.yml").read_text())
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus"
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
    assert uids == {source["uid"]}
    provisioning = GRAFANA / "provisioning" / "dashboards" / "fedsilo.yml"
    providers = yaml.safe_load(provisioning.read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"]
