"""Fuzzing the whole server-side reply path with malformed messages.

``tests/strategies/test_robust_strategy.py`` fuzzes the arrays of one reply through
``filter_replies``. Here hypothesis corrupts whole Messages — missing or extra records,
renamed keys, shapes, dtypes, NaN/Inf, bad or missing ``num-examples``, extra metric
keys, oversized records, forged array bytes — and sends them through the app's full
wrapper chain (``fl_app.federation.wrap_strategy``: payload limit, quorum and audit,
reporting, compression decoding, validation, seeded sampling, FedAvg). The round never
crashes, a malformed reply never reaches the aggregate, it is named in the audit log, and
the well-formed replies are aggregated exactly as without it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fl_app.audit import AuditLog, read_audit_log
from fl_app.client_app import app as client_app
from fl_app.config import RunConfig
from fl_app.federation import wrap_strategy
from fl_app.inprocess import InProcessGrid
from fl_app.messages import train_reply
from fl_app.sinks import Sinks
from strategies import build_strategy

GLOBAL = {"w": np.zeros((2, 3), dtype=np.float32), "b": np.zeros(2, dtype=np.float32)}
NODES = (1001, 1002, 1003)
CFG = RunConfig(
    sampling={"min-train-nodes": 2, "min-available-nodes": 2}, robust={"max-update-norm-ratio": 0.0}
)

KINDS = [
    "ok", "no-meta", "drop-arrays", "extra-arrays", "drop-metrics", "extra-metrics",
    "rename-key", "shape", "dtype", "non-finite", "examples", "drop-examples",
    "metric-key", "oversized-record", "forged-bytes",
]  # fmt: skip
WELL_FORMED = {"ok", "no-meta"}


@pytest.fixture(autouse=True)
def _identity(flower_identity):
    yield


def _model(value: float) -> dict[str, np.ndarray]:
    return {k: np.full_like(v, value) for k, v in GLOBAL.items()}


def _corrupt(msg, kind: str, data) -> None:
    content = msg.content
    arrays = content["arrays"]
    if kind == "no-meta":
        del content["meta"]
    elif kind == "drop-arrays":
        del content["arrays"]
    elif kind == "extra-arrays":
        content["arrays-2"] = ArrayRecord({k: Array(v) for k, v in _model(9.0).items()})
    elif kind == "drop-metrics":
        del content["metrics"]
    elif kind == "extra-metrics":
        content["metrics-2"] = MetricRecord({"num-examples": 10})
    elif kind == "rename-key":
        name = data.draw(st.text(min_size=1, max_size=8).filter(lambda s: s not in GLOBAL))
        content["arrays"] = ArrayRecord({name: arrays["w"], "b": arrays["b"]})
    elif kind == "shape":
        shape = data.draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
        if tuple(shape) == (2, 3):
            shape = [3, 2]
        arrays["w"] = Array(np.zeros(shape, dtype=np.float32))
    elif kind == "dtype":
        dtype = data.draw(st.sampled_from([np.float16, np.float64, np.int32, np.int64]))
        arrays["b"] = Array(np.zeros(2, dtype=dtype))
    elif kind == "non-finite":
        bad = arrays["w"].numpy().copy()
        bad.flat[data.draw(st.integers(0, 5))] = data.draw(
            st.sampled_from([np.nan, np.inf, -np.inf])
        )
        arrays["w"] = Array(bad)
    elif kind == "examples":
        value = data.draw(st.sampled_from([-1.0, -1e9, float("nan"), float("inf")]))
        content["metrics"]["num-examples"] = value
    elif kind == "drop-examples":
        content["metrics"] = MetricRecord({"train-loss": 0.5})
    elif kind == "metric-key":
        name = data.draw(st.text(min_size=1, max_size=12).filter(lambda s: s != "num-examples"))
        content["metrics"][name] = 1.0
    elif kind == "oversized-record":  # auto limit: 2 × model bytes (≈ 300) + 1 MiB
        size = data.draw(st.integers((1 << 20) + 1024, 3 << 20))
        content["padding"] = ConfigRecord({"blob": b"\0" * size})
    elif kind == "forged-bytes":  # declared shape (2, 3), other bytes
        size = data.draw(st.sampled_from([0, 7, 24, 5 << 20]))
        arrays["w"] = Array(dtype="float32", shape=(2, 3), stype="numpy.ndarray",
                            data=b"\x7f" * size)  # fmt: skip


@settings(max_examples=45, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_malformed_replies_are_rejected_audited_and_the_round_goes_on(kind, data):
    grid = InProcessGrid(client_app, CFG.to_flower(), len(NODES))
    roster = {node: pid for pid, node in enumerate(NODES)}
    with tempfile.TemporaryDirectory() as tmp:
        audit = AuditLog(Path(tmp) / "audit.jsonl", CFG.fingerprint())
        strategy = wrap_strategy(build_strategy(CFG), CFG, roster, Sinks(), audit)
        global_record = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
        sent = strategy.configure_train(1, global_record, ConfigRecord(), grid)
        assert sorted(m.metadata.dst_node_id for m in sent) == list(NODES)
        replies = [train_reply(pid, node, _model(0.1 * (pid + 1))) for node, pid in
                   roster.items()]  # fmt: skip
        _corrupt(replies[2], kind, data)
        arrays, metrics = strategy.aggregate_train(1, replies)
        (entry,) = [e for e in read_audit_log(audit.path) if e["event"] == "train"]

    expected = 0.2 if kind in WELL_FORMED else 0.15  # mean of 0.1, 0.2, 0.3 or 0.1, 0.2
    for key in GLOBAL:
        np.testing.assert_allclose(arrays[key].numpy(), expected, rtol=1e-6)
    flagged = [*entry["rejected"], *entry["oversized"]]
    if kind in WELL_FORMED:
        assert flagged == [] and metrics["rejected-updates"] == 0
    else:
        assert [f["node-id"] for f in flagged] == [1003], (kind, entry)
        assert flagged[0]["partition-id"] == 2 and flagged[0]["reason"]
    assert entry["outcome"] == "aggregated"
    assert {u["node-id"] for u in entry["updates"]} >= {1001, 1002}
