"""End to end on the real deployment runtime (flower-superlink + flower-supernodes + flwr
run on loopback) with TLS, SuperNode authentication and secure aggregation: a SuperNode
whose key was never registered is refused; the registered silos train over TLS, their
updates masked (the server only unmasks their sum)."""

from __future__ import annotations

import re

import psutil
import pytest

from adapters.federation.spec import parse_spec
from adapters.local.run import LocalSecurity, run_local

pytestmark = pytest.mark.e2e

SPEC = """
name: secure-e2e
silos:
  - {name: silo-a}
  - {name: silo-b}
  - {name: silo-c}
  - {name: intruder}
task: breast-cancer
strategy: fedavg
run_config:
  num-server-rounds: 1
  training.local-epochs: 1
  sampling.fraction-evaluate: 0.0
  sampling.min-available-nodes: 3
  sampling.min-train-nodes: 3
  robust.max-update-norm-ratio: 0.0
  secagg.enabled: true
"""


def test_tls_node_auth_refuses_an_unknown_supernode_and_trains_with_secure_aggregation(
    tmp_path,
):
    spec = parse_spec(SPEC)
    events: list[str] = []
    run = run_local(
        spec,
        run_dir=tmp_path / "runs",
        timeout=900,
        on_event=events.append,
        security=LocalSecurity(tmp_path / "pki", unregistered=("intruder",)),
    )
    assert run.ok, run.output[-3000:] + run.superlink_log[-3000:]
    assert any("(TLS)" in e for e in events)

    # The unknown SuperNode was refused by the SuperLink and gave up.
    assert run.refused["intruder"] not in (None, 0), run.silo_logs["intruder"][-2000:]
    assert "could not establish a connection" in run.silo_logs["intruder"]
    assert "No SuperNode found with the given public key" in run.superlink_log
    # The three registered silos trained, under secure aggregation.
    train = [r for r in run.metrics if r["phase"] == "train"]
    assert [r["round"] for r in train] == [1]
    assert all(r["secagg-survivors"] == 3 and r["replies"] == 3 for r in train)
    server = [r for r in run.metrics if r["phase"] == "server"]
    assert server[-1]["roc-auc"] > server[0]["roc-auc"] + 0.3  # the masked round learned
    activated = set(
        re.findall(r"\[Fleet.ActivateNode\] Activated node_id=(\d+)", run.superlink_log)
    )
    assert len(activated) == 3  # only the registered silos were ever admitted
    # Everything the run started is gone.
    assert not [
        p for p in psutil.process_iter(["cmdline"])
        if any(str(tmp_path / "pki") in c for c in (p.info.get("cmdline") or []))
    ]  # fmt: skip
