"""The warm SuperNode (adapters/supernode) against Flower's default SuperNode on the real
deployment runtime: the same federation, bit for bit the same model.

flower-superlink + 3 SuperNodes + ``flwr run`` on loopback (tests/e2e/conftest.py), once
with Flower's ``flower-supernode`` (one ``flwr-clientapp`` process per message, 3 s polls)
and once with the warm one (ClientApps forked from a pre-imported zygote, prompt polling,
``sampling.reply-poll-interval``). Every update the server received has the same sha256 in both
runs, the final models are identical, every metric but wall-clock time agrees, and the
warm run forked every ClientApp from its zygote instead of starting ``flwr-clientapp``.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest
import torch

from fl_app.audit import read_audit_log
from fl_app.sinks import is_runtime_metric

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]

SILOS = 3
ROUNDS = 2  # each round is 2 messages per silo; Flower's mode starts a process for each
SETTINGS = {
    "task": "breast-cancer", "num-server-rounds": ROUNDS, "training.local-epochs": 1, "seed": 17,
    "sampling.min-available-nodes": SILOS, "sampling.min-train-nodes": SILOS,
}  # fmt: skip


def _run(deployment, executor: str, run_dir: Path) -> tuple[Path, str, list[str]]:
    fed = deployment(SILOS, executor)
    flwr = fed.flwr_run({**SETTINGS, "output.run-dir": str(run_dir)})
    code = flwr.popen.wait(timeout=1200)
    assert code == 0, flwr.log()[-3000:]
    (out,) = [p.parent for p in run_dir.glob("*/model.pt")]
    silo_logs = [silo.log() for silo in fed.silos]
    fed.stop()  # one federation at a time on this machine's cores
    return out, flwr.log(), silo_logs


def test_the_warm_supernode_trains_the_bit_identical_model(deployment, tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSILO_SUPERNODE_LOG_LEVEL", "DEBUG")  # trace each forked task
    flower_dir, _, flower_logs = _run(deployment, "subprocess", tmp_path / "flower")
    warm_dir, output, warm_logs = _run(deployment, "warm", tmp_path / "warm")

    got, want = (torch.load(d / "model.pt") for d in (warm_dir, flower_dir))
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key

    def trains(run_dir: Path) -> dict[int, list[str]]:
        entries = read_audit_log(run_dir / "audit.jsonl")
        return {
            e["round"]: [u["sha256"] for u in e["updates"]]
            for e in entries if e["event"] == "train"
        }  # fmt: skip

    hashes = trains(warm_dir)
    assert hashes == trains(flower_dir)
    assert len(hashes) == ROUNDS and all(len(v) == SILOS for v in hashes.values())

    warm_rows, flower_rows = (
        json.loads((d / "metrics.json").read_text()) for d in (warm_dir, flower_dir)
    )
    assert len(warm_rows) == len(flower_rows)
    for ours, theirs in zip(warm_rows, flower_rows, strict=True):
        for key, value in theirs.items():
            if not is_runtime_metric(key):
                assert ours[key] == pytest.approx(value, abs=0), (ours["round"], key)

    # Each silo answered 1 roll call + ROUNDS × (train + evaluate) messages: Flower started
    # a flwr-clientapp process for every one; the warm SuperNode forked every one.
    messages = 1 + 2 * ROUNDS
    for flower_log, warm_log in zip(flower_logs, warm_logs, strict=True):
        assert flower_log.count("Start `flwr-clientapp` process") == messages
        assert "Start `flwr-clientapp` process" not in warm_log
        assert len(re.findall(r"task \d+ forked \(pid \d+\)", warm_log)) == messages
        assert "zygote not ready" not in warm_log  # no cold fallback
    assert "[fedsilo] done" in output
    # Both modes moved the model packed (fl_app.transport): one Array per ArrayRecord.
    assert "transport: replies arrive packed" in output

    def per_round(run_dir: Path) -> float:
        rows = json.loads((run_dir / "metrics.json").read_text())
        seconds = [r["round-seconds"] for r in rows if r["phase"] == "server" and r["round"] > 1]
        return statistics.fmean(seconds)

    # Timing is measured by benchmarks.overhead --runtime deployment, not asserted here.
    print(  # shown with -rP
        f"round-seconds, rounds 2…{ROUNDS}: flower {per_round(flower_dir):.2f}, "
        f"warm {per_round(warm_dir):.2f}"
    )
