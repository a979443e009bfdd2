"""The Prometheus exporter (adapters/prometheus/exporter.py): its real HTTP server, read
back with prometheus_client's own text parser; and in a federation on the in-process
grid, where what it serves matches metrics.json and silo_metrics.json and turning it on
changes no result."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from flwr.app import MessageType
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from adapters.app import client_app
from adapters.prometheus.exporter import (
    DOC_END,
    DOC_START,
    METRICS,
    PHASES,
    PREFIX,
    PrometheusSink,
    exposed_names,
    reference_table,
)
from fl_app import VERSION
from fl_app.audit import read_audit_log
from fl_app.config import ConfigError, RunConfig
from fl_app.federation import run_federation
from fl_app.inprocess import InProcessGrid
from fl_app.local_run import PROJECT_DIR, _free_port
from fl_app.sinks import is_runtime_metric, tracking_sinks


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted labels): value}`` of one scrape of ``/metrics``."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


@contextlib.contextmanager
def scraping(port: int):
    """Scrape ``port`` every 0.1 s in a thread (as Prometheus would) while the block runs;
    yields the list of scrapes so far."""
    scrapes, stop = [], threading.Event()

    def prometheus():
        while not stop.is_set():
            with contextlib.suppress(urllib.error.URLError, ConnectionError):
                scrapes.append(scrape(port))
            time.sleep(0.1)

    thread = threading.Thread(target=prometheus)
    thread.start()
    try:
        yield scrapes
    finally:
        stop.set()
        thread.join()


def value(samples, name: str, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def sink():
    made = []

    def make(**kwargs) -> PrometheusSink:
        kwargs.setdefault("final_scrape_wait", 0.0)
        s = PrometheusSink(0, "127.0.0.1", **kwargs)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def _drive(s: PrometheusSink) -> None:
    """Two rounds of 3 silos as the federation reports them: silo 2 asked twice in a row
    and missing, silo 1 retried once and one of its updates rejected."""
    s.log_event({"event": "run-start", "resumed-after-round": 0})
    s.log_metrics(0, "server", {"accuracy": 0.1, "loss": 2.3, "num-examples": 360})
    s.log_event({"event": "checkpoint", "round": 0})
    for rnd in (1, 2):
        for pid in (0, 1, 2):
            s.log_silo_metrics(rnd, "selection", pid, {"selected": 1.0, "selection-score": 0.5})
        for pid in (0, 1):
            s.log_silo_metrics(rnd, "train", pid, {"train-loss": 0.5 + pid, "num-examples": 40,
                                                   "reply-seconds": 0.25 * (pid + 1)})  # fmt: skip
        s.log_event({
            "event": "train", "round": rnd,
            "sampled": [{"node-id": 10 + p, "partition-id": p} for p in (0, 1, 2)],
            "missing": [{"node-id": 12, "partition-id": 2}],
            "updates": [{"node-id": 10 + p, "partition-id": p, "bytes": 1000} for p in (0, 1)],
            "retries": 1, "retried": [{"node-id": 11, "partition-id": 1}],
            "rejected": [{"node-id": 11, "partition-id": 1, "reason": "norm"}] if rnd == 2 else [],
            "clipped": [{"node-id": 10, "partition-id": 0, "reason": "norm"}],
            "oversized": [],
        })  # fmt: skip
        s.log_metrics(rnd, "train", {"train-loss": 1.0, "num-examples": 80, "epsilon": 2.0 * rnd,
                                     "rejected-updates": rnd - 1, "clipped-updates": 1,
                                     "bytes-uploaded": 2000, "bytes-downloaded": 3000,
                                     "train-seconds": 1.5,
                                     "replies": 2, "failures": 1})  # fmt: skip
        s.log_silo_metrics(rnd, "evaluate", 0, {"accuracy": 0.8, "reply-seconds": 0.1})
        s.log_event({"event": "evaluate", "round": rnd, "missing": [], "oversized": []})
        s.log_metrics(rnd, "evaluate", {"accuracy": 0.8, "evaluate-seconds": 0.2, "replies": 1,
                                        "failures": 0, "silo-accuracy-min": 0.8})  # fmt: skip
        for pid in (0, 1):
            s.log_silo_metrics(rnd, "contribution", pid, {"loo": 0.01 * (pid + 1),
                                                          "shapley": -0.02 * rnd})  # fmt: skip
        s.log_metrics(rnd, "server", {"accuracy": 0.5 + 0.1 * rnd, "round-seconds": 2.0 * rnd})
        s.log_event({"event": "checkpoint", "round": rnd})


def test_a_scrape_exposes_every_declared_metric_in_base_units_with_the_runs_figures(sink):
    s = sink(
        info={"task": "digits", "strategy": "fedavg", "config_hash": "abc", "run": "r1",
              "version": "1.0"},
        rounds=2, round_deadline=7200.0, epsilon_budget=10.0,
    )  # fmt: skip
    _drive(s)
    samples = scrape(s.port)
    names = {name for name, _ in samples}
    # Exactly the declared metrics (so METRICS, the docs and the rules' check are complete).
    assert names == exposed_names()
    assert all(n.startswith(PREFIX) for n in names)
    counters = {m.name for m in METRICS if m.kind == "counter"}
    assert all(n.endswith("_total") for n in counters)
    assert value(samples, "fedsilo_run_info", task="digits", strategy="fedavg",
                 config_hash="abc", run="r1", version="1.0") == 1  # fmt: skip
    assert value(samples, "fedsilo_round") == 2 and value(samples, "fedsilo_rounds_planned") == 2
    assert value(samples, "fedsilo_rounds_completed_total") == 2
    assert value(samples, "fedsilo_round_duration_seconds") == 4.0
    assert value(samples, "fedsilo_phase_duration_seconds", phase="train") == 1.5
    assert value(samples, "fedsilo_server_metric", metric="accuracy") == pytest.approx(0.7)
    assert value(samples, "fedsilo_server_main_metric") == pytest.approx(0.7)
    assert ("fedsilo_server_metric", (("metric", "round-seconds"),)) not in samples
    assert value(samples, "fedsilo_client_metric", phase="evaluate", metric="silo-accuracy-min")
    assert value(samples, "fedsilo_dp_epsilon") == 4.0
    assert value(samples, "fedsilo_dp_epsilon_budget") == 10.0
    assert value(samples, "fedsilo_uploaded_bytes_total", phase="train") == 4000
    assert value(samples, "fedsilo_downloaded_bytes_total", phase="train") == 6000
    assert value(samples, "fedsilo_replies_total", phase="train") == 4
    assert value(samples, "fedsilo_failed_replies_total", phase="train") == 2
    assert value(samples, "fedsilo_rejected_updates_total") == 1
    assert value(samples, "fedsilo_clipped_updates_total") == 2
    assert value(samples, "fedsilo_silo_clipped_updates_total", partition="0") == 2
    assert value(samples, "fedsilo_retries_total") == 2
    assert value(samples, "fedsilo_last_checkpoint_round") == 2
    assert {p: value(samples, "fedsilo_phase", phase=p) for p in PHASES} == {
        p: float(p == "idle") for p in PHASES
    }
    # Per silo.
    assert value(samples, "fedsilo_silo_missed_rounds", partition="2") == 2
    assert value(samples, "fedsilo_silo_missed_rounds", partition="1") == 0
    assert value(samples, "fedsilo_silo_failures_total", partition="2", phase="train") == 2
    assert value(samples, "fedsilo_silo_retries_total", partition="1") == 2
    assert value(samples, "fedsilo_silo_rejected_updates_total", partition="1") == 1
    assert value(samples, "fedsilo_silo_uploaded_bytes_total", partition="0") == 2000
    assert value(samples, "fedsilo_silo_reply_seconds", partition="1", phase="train") == 0.5
    assert value(samples, "fedsilo_silo_replies_total", partition="0", phase="train") == 2
    assert ("fedsilo_silo_replies_total", (("partition", "0"), ("phase", "contribution"))) not in (
        samples
    )  # a score is not a reply
    assert value(samples, "fedsilo_silo_contribution", partition="1", method="loo") == 0.02
    assert value(samples, "fedsilo_silo_contribution", partition="0", method="shapley") == -0.04
    assert value(samples, "fedsilo_silo_contribution_sum", partition="0",
                 method="shapley") == pytest.approx(-0.06)  # fmt: skip
    assert value(samples, "fedsilo_silo_last_seen_round", partition="1") == 2
    assert (
        time.time() - value(samples, "fedsilo_silo_last_seen_timestamp_seconds", partition="0") < 60
    )
    assert value(samples, "fedsilo_silo_selections_total", partition="2") == 2
    assert value(samples, "fedsilo_silo_selection_score", partition="2") == 0.5
    assert value(samples, "fedsilo_silo_metric", partition="1", phase="train",
                 metric="train-loss") == 1.5  # fmt: skip
    assert ("fedsilo_silo_metric", (("metric", "reply-seconds"), ("partition", "0"),
            ("phase", "train"))) not in samples  # fmt: skip


def test_the_round_starts_at_selection_and_the_phase_follows_the_reports(sink):
    s = sink()
    assert value(scrape(s.port), "fedsilo_phase", phase="starting") == 1
    before = time.time()
    s.log_silo_metrics(3, "selection", 0, {"selected": 1.0})
    samples = scrape(s.port)
    assert value(samples, "fedsilo_round") == 3
    assert value(samples, "fedsilo_phase", phase="train") == 1
    assert value(samples, "fedsilo_round_start_timestamp_seconds") >= before
    s.log_metrics(3, "train", {"replies": 1})
    assert value(scrape(s.port), "fedsilo_phase", phase="evaluate") == 1
    s.log_metrics(3, "evaluate", {"replies": 1})
    assert value(scrape(s.port), "fedsilo_phase", phase="server") == 1
    s.log_event({"event": "run-aborted", "round": 3})
    assert value(scrape(s.port), "fedsilo_phase", phase="aborted") == 1


def test_the_operations_guide_reference_is_generated_from_the_exporter():
    text = (PROJECT_DIR / "docs" / "operations.md").read_text()
    section = text.split(DOC_START, 1)[1].split(DOC_END, 1)[0]
    assert section.strip() == reference_table().strip(), (
        "docs/operations.md is out of date: run python -m adapters.prometheus.exporter"
    )
    assert all(f"`{m.name}`" in section for m in METRICS)


def test_each_run_has_its_own_registry_not_the_global_one(sink):
    a, b = sink(rounds=3), sink(rounds=7)
    assert value(scrape(a.port), "fedsilo_rounds_planned") == 3
    assert value(scrape(b.port), "fedsilo_rounds_planned") == 7
    assert b"fedsilo_" not in generate_latest(REGISTRY)


def test_a_port_in_use_is_a_config_error_naming_the_key():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=r"'monitoring.prometheus-port' = \d+.*free port"):
            PrometheusSink(port, "127.0.0.1")


def test_close_waits_for_a_scrape_of_the_final_figures_then_stops_the_server():
    s = PrometheusSink(0, "127.0.0.1", final_scrape_wait=30.0)
    s.log_metrics(1, "server", {"accuracy": 0.9})
    seen = []

    def prometheus():  # scrapes once, 0.5 s later
        time.sleep(0.5)
        seen.append(value(scrape(s.port), "fedsilo_server_main_metric"))

    thread = threading.Thread(target=prometheus)
    thread.start()
    start = time.monotonic()
    s.close()
    assert time.monotonic() - start < 10  # returned on the scrape, not after 30 s
    thread.join()
    assert seen == [0.9]  # the scrape close waited for got the final figures
    with pytest.raises(urllib.error.URLError):
        scrape(s.port)
    s.close()  # idempotent


def test_without_a_scrape_close_gives_up_after_the_wait():
    s = PrometheusSink(0, "127.0.0.1", final_scrape_wait=0.6)
    s.log_metrics(1, "server", {"accuracy": 0.9})
    start = time.monotonic()
    s.close()
    assert 0.5 <= time.monotonic() - start < 5
    with pytest.raises(urllib.error.URLError):
        scrape(s.port)


def test_a_crashed_run_stops_the_server():
    s = PrometheusSink(0, "127.0.0.1")
    assert value(scrape(s.port), "fedsilo_round") == 0
    s.log_event({"event": "run-failed", "reason": "RuntimeError: boom"})
    with pytest.raises(urllib.error.URLError):
        scrape(s.port)


def test_the_exporter_is_off_by_default_and_on_with_a_port(tmp_path):
    assert RunConfig().monitoring.prometheus_port == 0
    assert not any(isinstance(s, PrometheusSink) for s in tracking_sinks(RunConfig(), tmp_path))
    port = _free_port()
    cfg = RunConfig(monitoring={"prometheus_port": port, "prometheus_host": "127.0.0.1",
                                "final_scrape_wait": 0.0})  # fmt: skip
    (sink,) = tracking_sinks(cfg, tmp_path / "20260101-digits-fedavg-abc")
    try:
        assert isinstance(sink, PrometheusSink) and sink.port == port
        samples = scrape(port)
        assert value(samples, "fedsilo_rounds_planned") == cfg.num_server_rounds
        assert value(samples, "fedsilo_round_deadline_seconds") == 2 * 3600.0
        assert (
            value(
                samples,
                "fedsilo_run_info",
                task="digits",
                strategy="fedavg",
                config_hash=cfg.fingerprint(),
                run="20260101-digits-fedavg-abc",
                version=VERSION,
            )
            == 1
        )
    finally:  # fmt: skip
        sink.close()


def test_vertical_mode_refuses_the_exporter_naming_the_key():
    with pytest.raises(ConfigError, match=r"'monitoring.prometheus-port' = 9464 is for mode "):
        RunConfig(mode="vertical", task="fraud", monitoring={"prometheus_port": 9464})


def _model_metrics(run_dir):
    rows = json.loads((run_dir / "metrics.json").read_text())
    return [{k: v for k, v in r.items() if not is_runtime_metric(k)} for r in rows]


def test_a_federation_serves_what_metrics_json_holds_and_the_exporter_changes_no_result(
    tmp_path,
):
    """Digits, 3 silos, 2 rounds on the in-process grid, scraped every 0.1 s: the last
    scrape holds the final round, the final server accuracy and each silo's figures as
    metrics.json / silo_metrics.json have them; the same run without the exporter has the
    same model metrics."""
    port = _free_port()
    base = RunConfig(num_server_rounds=2, training={"local_epochs": 1},
                     output={"run_dir": str(tmp_path / "off")})  # fmt: skip
    on = base.replace({"monitoring.prometheus-port": port, "monitoring.prometheus-host":
                       "127.0.0.1", "output.run-dir": str(tmp_path / "on")})  # fmt: skip
    with scraping(port) as scrapes:
        _, run_dir = run_federation(InProcessGrid(client_app, on.to_flower(), 3), on)
    _, plain_dir = run_federation(InProcessGrid(client_app, base.to_flower(), 3), base)
    assert _model_metrics(run_dir) == _model_metrics(plain_dir)

    last = scrapes[-1]
    rows = json.loads((run_dir / "metrics.json").read_text())
    final = [r for r in rows if r["phase"] == "server"][-1]
    assert value(last, "fedsilo_round") == 2
    assert value(last, "fedsilo_phase", phase="done") == 1
    assert value(last, "fedsilo_server_metric", metric="accuracy") == final["accuracy"]
    train = [r for r in rows if r["phase"] == "train"]
    assert value(last, "fedsilo_uploaded_bytes_total", phase="train") == sum(
        r["bytes-uploaded"] for r in train
    )
    silo_rows = json.loads((run_dir / "silo_metrics.json").read_text())
    for pid in (0, 1, 2):
        mine = [r for r in silo_rows if r["partition-id"] == pid and r["phase"] == "train"]
        assert value(last, "fedsilo_silo_metric", partition=str(pid), phase="train",
                     metric="train-loss") == mine[-1]["train-loss"]  # fmt: skip
        assert value(last, "fedsilo_silo_reply_seconds", partition=str(pid),
                     phase="train") == mine[-1]["reply-seconds"]  # fmt: skip
        selected = [r for r in silo_rows if r["partition-id"] == pid and r["phase"] == "selection"]
        assert value(last, "fedsilo_silo_selections_total", partition=str(pid)) == sum(
            r["selected"] for r in selected
        )


class _LinkLost(InProcessGrid):
    """The in-process grid whose connection breaks at the first train instruction."""

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        if any(m.metadata.message_type == MessageType.TRAIN for m in messages):
            raise RuntimeError("link to the SuperLink lost")
        return super().send_and_receive(messages, timeout=timeout)


def test_a_crashed_federation_audits_why_and_its_exporter_stops(tmp_path):
    port = _free_port()
    cfg = RunConfig(
        num_server_rounds=2,
        output={"run_dir": str(tmp_path)},
        monitoring={"prometheus_port": port, "prometheus_host": "127.0.0.1"},
    )
    with pytest.raises(RuntimeError, match="link to the SuperLink lost"):
        run_federation(_LinkLost(client_app, cfg.to_flower(), 3), cfg)
    (audit,) = tmp_path.glob("*/audit.jsonl")
    last = read_audit_log(audit)[-1]
    assert last["event"] == "run-failed"
    assert last["reason"] == "RuntimeError: link to the SuperLink lost"
    with pytest.raises(urllib.error.URLError):
        scrape(port)


def test_contribution_scores_of_a_federation_are_served_per_silo(tmp_path):
    """Breast cancer, 3 silos, 2 rounds, leave-one-out and GTG-Shapley scores: the
    exporter's last figures are silo_metrics.json's contribution rows of the last round."""
    port = _free_port()
    cfg = RunConfig(
        task="breast-cancer",
        num_server_rounds=2,
        contribution={"method": "both"},
        output={"run_dir": str(tmp_path)},
        monitoring={"prometheus_port": port, "prometheus_host": "127.0.0.1"},
    )
    with scraping(port) as scrapes:
        _, run_dir = run_federation(InProcessGrid(client_app, cfg.to_flower(), 3), cfg)
    rows = json.loads((run_dir / "silo_metrics.json").read_text())
    scored = [r for r in rows if r["phase"] == "contribution"]
    assert {r["round"] for r in scored} == {1, 2}
    for row in (r for r in scored if r["round"] == 2):
        pid = str(row["partition-id"])
        methods = {k for k in row if k not in ("round", "phase", "partition-id")}
        assert methods
        for method in methods:
            assert value(scrapes[-1], "fedsilo_silo_contribution", partition=pid,
                         method=method) == row[method]  # fmt: skip
            assert value(scrapes[-1], "fedsilo_silo_contribution_sum", partition=pid,
                         method=method) == pytest.approx(sum(
                             r[method] for r in scored if r["partition-id"] == row["partition-id"]
                         ))  # fmt: skip
