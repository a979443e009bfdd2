"""End-to-end vertical FL: the real `flwr run . --stream` (local simulation) with three
parties — the ServerApp as label party and two SuperNodes as feature parties — PSI
alignment over partially overlapping ids, then split learning that beats the label
party alone."""

import json

import numpy as np
import pytest
import torch

from benchmarks.vertical import label_party_alone, plaintext_alignment, vertical_config
from fl_app.local_run import run_simulation
from tasks.bank_marketing import generate_bank_frame

pytestmark = pytest.mark.e2e

TRAINING = {"num-server-rounds": 2, "vertical.batch-size": 256, "training.learning-rate": 0.2}


def test_three_party_vertical_run_aligns_privately_and_beats_the_label_party_alone(tmp_path):
    # 4 000 generated customers in the UCI layout, read by every party from one CSV
    # (each holds a seeded 90 % of them): a real loader path, and a quick PSI.
    source = tmp_path / "bank.csv"
    generate_bank_frame(n_rows=4000, seed=0).to_csv(source, sep=";", index=False)
    overrides = {"mode": "vertical", "task": "bank-marketing", "data.source": str(source),
                 **TRAINING}  # fmt: skip
    run = run_simulation(overrides, num_supernodes=2, run_dir=tmp_path / "runs", timeout=600)
    assert run.ok, run.output[-3000:]
    assert "vertical PSI: party 1 shares" in run.output
    assert "vertical PSI: party 2 shares" in run.output

    # PSI found exactly the records all three parties hold — fewer than any party has.
    cfg = vertical_config(
        "bank-marketing", str(tmp_path), **{"data.source": str(source), **TRAINING}
    )
    rows, _, test_ids = plaintext_alignment(cfg)
    alignment = json.loads((run.run_dir / "alignment.json").read_text())
    assert alignment["aligned"] == len(rows)
    assert alignment["aligned"] < min(alignment["label-records"],
                                      *alignment["party-records"].values())  # fmt: skip
    assert alignment["held-out"] == len(test_ids)

    server = [r for r in run.metrics if r["phase"] == "server"]
    assert [r["round"] for r in server] == [0, 1, 2]
    final = server[-1]
    assert final["embedding-bytes"] > 0 and final["gradient-bytes"] == final["embedding-bytes"]

    # The label party alone (its own columns, same widths, epochs and batches), on the
    # same held-out records.
    alone = label_party_alone(cfg, rows, test_ids)[-1]
    assert final["roc-auc"] > alone["roc-auc"] + 0.1, (final, alone)
    assert final["roc-auc"] > server[0]["roc-auc"] + 0.2
    assert np.isfinite(final["loss"])
    model = torch.load(run.run_dir / "model.pt")
    assert set(model) == {"top", "bottom-0", "columns"}
