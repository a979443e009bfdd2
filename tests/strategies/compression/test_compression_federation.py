"""A whole federation with compressed updates (the real ServerApp body and ClientApp on
the in-process grid): it still learns, and the bytes it logs are the smaller ones."""

from __future__ import annotations

import numpy as np

from fl_app.client_app import app as client_app
from fl_app.config import RunConfig
from fl_app.federation import run_federation
from fl_app.inprocess import InProcessGrid
from strategies.compression.records import ESTIMATE_KEY, ESTIMATE_STEP_KEY, RESIDUAL_KEY


def test_int8_federation_learns_and_uploads_a_quarter(tmp_path):
    cfg = RunConfig(
        num_server_rounds=2,
        compression={"method": "int8"},
        training={"local-epochs": 2},
        sampling={"fraction-evaluate": 0.0, "min-evaluate-nodes": 0, "min-available-nodes": 4},
        output={"run-dir": str(tmp_path)},
    )
    grid = InProcessGrid(client_app, cfg.to_flower(), 4)
    result, run_dir = run_federation(grid, cfg)
    server = result.evaluate_metrics_serverapp
    train = result.train_metrics_clientapp
    assert server[0]["accuracy"] < 0.3  # the untrained model
    assert server[2]["accuracy"] > 0.85
    for rnd in (1, 2):
        assert train[rnd]["undecodable-updates"] == 0
        assert train[rnd]["rejected-updates"] == 0
        # measured on the serialised replies: int8 codes + Flower's fixed per-message part
        assert 0.15 < train[rnd]["bytes-uploaded"] / train[rnd]["bytes-uploaded-dense"] < 0.27
        assert train[rnd]["bytes-downloaded"] > 3.5 * train[rnd]["bytes-uploaded"]
        assert train[rnd]["train-seconds"] > 0  # time from instructions sent to replies in
    # error feedback state kept per silo, in the node's persistent context
    assert all(RESIDUAL_KEY in ctx.state.array_records for ctx in grid.contexts.values())
    # and the metric reaches the run directory's per-round log
    assert "bytes-uploaded" in (run_dir / "metrics.csv").read_text()


def test_topk_ef21_federation_keeps_silo_and_server_estimates_in_step(tmp_path):
    """Top-k 1 % with EF21 (the default) through the real ServerApp body and ClientApp,
    after one dense float32 warm-up round: the warm-up reply is the plain dense one (its
    bytes count in full) and leaves no error-feedback state; then the server tells every
    silo the estimate step it holds, so no silo ever restarts (its step equals the number
    of top-k rounds), nothing is undecodable, replies stay tiny."""
    cfg = RunConfig(
        num_server_rounds=3,
        compression={"method": "topk", "topk-warmup-rounds": 1, "topk-warmup-method": "none"},
        training={"local-epochs": 1},
        sampling={"fraction-evaluate": 0.0, "min-evaluate-nodes": 0, "min-available-nodes": 3},
        output={"run-dir": str(tmp_path)},
    )
    assert cfg.compression.topk_feedback == "ef21" and cfg.compression.topk_scope == "model"
    grid = InProcessGrid(client_app, cfg.to_flower(), 3)
    result, _ = run_federation(grid, cfg)
    server = result.evaluate_metrics_serverapp
    train = result.train_metrics_clientapp
    assert train[1]["bytes-uploaded"] == train[1]["bytes-uploaded-dense"]  # the warm-up
    for rnd in (1, 2, 3):
        assert train[rnd]["undecodable-updates"] == 0
    for rnd in (2, 3):
        assert train[rnd]["bytes-uploaded"] < 0.06 * train[rnd]["bytes-uploaded-dense"]
    assert server[3]["accuracy"] > server[0]["accuracy"] + 0.1  # it learns
    for ctx in grid.contexts.values():
        assert RESIDUAL_KEY not in ctx.state.array_records
        assert int(ctx.state[ESTIMATE_STEP_KEY]["step"]) == 2  # in step for both top-k rounds
        estimate = ctx.state[ESTIMATE_KEY]["estimate"].numpy()
        assert 0 < np.count_nonzero(estimate) <= 2 * 100  # ≤ 2 rounds × 1 % of 9 930


def test_topk_warmup_rounds_upload_int4_then_top_k(tmp_path):
    """The default top-k warm-up (int4, dense) costs what an int4 reply costs, keeps no
    residual (error feedback starts with top-k) and the federation then uploads top-k."""
    cfg = RunConfig(
        num_server_rounds=3,
        compression={"method": "topk+int8", "topk-warmup-rounds": 2},
        training={"local-epochs": 1},
        sampling={"fraction-evaluate": 0.0, "min-evaluate-nodes": 0, "min-available-nodes": 3},
        output={"run-dir": str(tmp_path)},
    )
    assert cfg.compression.topk_warmup_method == "int4"
    grid = InProcessGrid(client_app, cfg.to_flower(), 3)
    result, _ = run_federation(grid, cfg)
    train = result.train_metrics_clientapp
    for rnd in (1, 2):  # int4 codes of every value + Flower's fixed part, zlib-deflated
        assert 0.06 < train[rnd]["bytes-uploaded"] / train[rnd]["bytes-uploaded-dense"] < 0.16
    assert train[3]["bytes-uploaded"] < 0.05 * train[3]["bytes-uploaded-dense"]
    assert all(train[rnd]["undecodable-updates"] == 0 for rnd in (1, 2, 3))
    for ctx in grid.contexts.values():
        assert RESIDUAL_KEY not in ctx.state.array_records
        assert int(ctx.state[ESTIMATE_STEP_KEY]["step"]) == 1  # EF21 began in round 3
