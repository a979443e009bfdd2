"""A real Prometheus scrapes a live ``flwr run`` on loopback.

flower-superlink + 2 SuperNodes + ``flwr run`` (tests/e2e/conftest.py), the ServerApp's
exporter on a free loopback port (``monitoring.prometheus-port``), and Debian's
``prometheus`` (installed by .ci/run) started here with its own config and storage,
scraping every second. When the run has ended, the test reads the series back from
Prometheus' HTTP API and compares them with the run's metrics.json and
silo_metrics.json. Prometheus is stopped by its pid.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from adapters.federation.flower import wait_http_ok
from fl_app.local_run import _free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

ROUNDS = 3


@pytest.fixture
def prometheus():
    """``start(target_port) -> query(promql)``: a Prometheus scraping 127.0.0.1:target."""
    assert shutil.which("prometheus"), "prometheus missing: .ci/run installs Debian's package"
    home = Path(tempfile.mkdtemp(prefix="fedsilo-prometheus-"))
    procs: list[subprocess.Popen] = []

    def start(target_port: int):
        port = _free_port()
        config = home / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: fedsilo\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]\n"
        )
        log = (home / "prometheus.log").open("w")
        proc = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={home / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        procs.append(proc)
        wait_http_ok(f"http://127.0.0.1:{port}/-/ready", proc, 120)

        def query(promql: str) -> list[dict]:
            url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode(
                {"query": promql}
            )
            with urllib.request.urlopen(url, timeout=30) as resp:
                body = json.loads(resp.read())
            assert body["status"] == "success", body
            return body["data"]["result"]

        query.log = home / "prometheus.log"
        return query

    try:
        yield start
    finally:
        for proc in procs:  # by pid
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        shutil.rmtree(home, ignore_errors=True)


def one(result: list[dict]) -> float:
    assert len(result) == 1, result
    return float(result[0]["value"][1])


def test_prometheus_scrapes_a_live_flwr_run_and_its_series_match_metrics_json(
    deployment, prometheus, tmp_path
):
    exporter = _free_port()
    query = prometheus(exporter)
    fed = deployment(2)
    flwr = fed.flwr_run({
        "task": "breast-cancer",
        "num-server-rounds": ROUNDS,
        "training.local-epochs": 1,
        "sampling.round-timeout": 600.0,
        "monitoring.prometheus-port": exporter,
        "monitoring.prometheus-host": "127.0.0.1",
        "monitoring.final-scrape-wait": 60.0,  # Prometheus scrapes every 1 s
        "output.run-dir": str(tmp_path),
    })  # fmt: skip
    # While the run lasts, Prometheus sees the target up and the round counting.
    fed.wait_for(lambda: query('up{job="fedsilo"} == 1'), "Prometheus to scrape the run", proc=flwr)
    assert one(query("fedsilo_rounds_planned")) == ROUNDS
    code = flwr.popen.wait(timeout=900)
    assert code == 0, flwr.log()[-3000:]
    (run_dir,) = [p.parent for p in tmp_path.glob("*/metrics.json")]
    rows = json.loads((run_dir / "metrics.json").read_text())
    silo_rows = json.loads((run_dir / "silo_metrics.json").read_text())
    time.sleep(3)  # the exporter has stopped: Prometheus marks the target down
    assert one(query('up{job="fedsilo"}')) == 0

    def last(series: str) -> float:  # the last scraped value (the target is gone now)
        return one(query(f"last_over_time({series}[10m])"))

    assert last("fedsilo_round") == ROUNDS
    assert one(query("max_over_time(fedsilo_round[10m])")) == ROUNDS
    assert last('fedsilo_phase{phase="done"}') == 1
    assert last("fedsilo_rounds_completed_total") == ROUNDS
    server = [r for r in rows if r["phase"] == "server"]
    assert last('fedsilo_server_metric{metric="accuracy"}') == pytest.approx(
        server[-1]["accuracy"], rel=1e-12
    )
    info = query("last_over_time(fedsilo_run_info[10m])")
    assert info[0]["metric"]["run"] == run_dir.name
    assert info[0]["metric"]["task"] == "breast-cancer"
    train = [r for r in rows if r["phase"] == "train"]
    assert last('fedsilo_uploaded_bytes_total{phase="train"}') == sum(
        r["bytes-uploaded"] for r in train
    )
    # Per silo: the series of each partition hold silo_metrics.json's figures.
    for pid in (0, 1):
        mine = [r for r in silo_rows if r["partition-id"] == pid]
        trained = [r for r in mine if r["phase"] == "train"]
        labels = f'partition="{pid}"'
        assert (
            last(f'fedsilo_silo_metric{{{labels}, phase="train", metric="num-examples"}}')
            == (trained[-1]["num-examples"])
        )
        assert last(
            f'fedsilo_silo_metric{{{labels}, phase="train", metric="train-loss"}}'
        ) == pytest.approx(trained[-1]["train-loss"], rel=1e-12)
        assert last(f"fedsilo_silo_selections_total{{{labels}}}") == sum(
            r["selected"] for r in mine if r["phase"] == "selection"
        )
        assert last(f"fedsilo_silo_last_seen_round{{{labels}}}") == ROUNDS
        assert last(f'fedsilo_silo_reply_seconds{{{labels}, phase="train"}}') == pytest.approx(
            trained[-1]["reply-seconds"], rel=1e-12
        )
        assert last(f"fedsilo_silo_missed_rounds{{{labels}}}") == 0
