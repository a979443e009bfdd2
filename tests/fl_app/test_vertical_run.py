"""Vertical mode through the real ServerApp body and ClientApp handlers (in-process grid):
equivalence with centralised training, determinism, and bad input (no intersection,
schema mismatch, a party that drops, bad config) failing fast with the fix."""

import json

import numpy as np
import pytest
import torch
from flwr.app import Message

from benchmarks.vertical import aligned_arrays, run_vertical_inprocess, vertical_config
from fl_app.client_app import app
from fl_app.config import ConfigError, RunConfig
from fl_app.inprocess import InProcessGrid
from fl_app.vertical import VerticalError
from fl_app.vertical.server import run_vertical
from strategies.vertical.split import build_split_model, train_centralised
from tasks.bank_marketing import generate_bank_frame
from tasks.fraud import generate_fraud_frame
from tasks.vertical import VerticalDataError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


FAST = {"num-server-rounds": 2, "vertical.batch-size": 512, "training.learning-rate": 0.2}


@pytest.fixture(scope="module")
def bank_csv(tmp_path_factory):
    """A small bank-marketing CSV (3 000 generated customers) keeps PSI and training quick."""
    path = tmp_path_factory.mktemp("bank") / "bank.csv"
    generate_bank_frame(n_rows=3000, seed=0).to_csv(path, sep=";", index=False)
    return str(path)


@pytest.fixture(scope="module")
def fraud_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("fraud") / "fraud.csv"
    generate_fraud_frame(n_rows=4000, positive_rate=0.05, seed=0).to_csv(path, index=False)
    return str(path)


def _cfg(task, tmp_path, source, **over):
    return vertical_config(task, str(tmp_path), **{**FAST, "data.source": source, **over})


def test_vertical_run_equals_centralised_training_of_the_same_split_model(tmp_path, bank_csv):
    cfg = _cfg("bank-marketing", tmp_path, bank_csv)
    grid = InProcessGrid(app, cfg.to_flower(), 3)  # partition-id 2: no feature group, idle
    result = run_vertical(grid, cfg)

    # Partial overlap: the aligned set is smaller than every party's records.
    assert result.aligned < min(result.label_records, *result.party_records.values())
    assert result.train_size + result.test_size == result.aligned
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert [r["round"] for r in metrics] == [0, 1, 2]
    assert metrics[-1]["roc-auc"] > metrics[0]["roc-auc"] + 0.2
    assert metrics[-1]["embedding-bytes"] > 0 and metrics[-1]["gradient-bytes"] > 0

    # Centralised: the same split model, same init, batches and optimizer, all columns of
    # the aligned records in one place.
    xs, y = aligned_arrays(cfg, result.label_rows)
    central = build_split_model([x.shape[1] for x in xs], cfg.vertical.embedding_dim, cfg.seed)
    train_centralised(
        central, xs, y, torch.as_tensor(result.train_ids), epochs=2, batch_size=512,
        learning_rate=0.2, momentum=cfg.training.momentum, seed=cfg.seed,
    )  # fmt: skip
    saved = torch.load(result.run_dir / "model.pt")
    for name, value in saved["top"].items():
        torch.testing.assert_close(value, central.top.state_dict()[name], rtol=1e-4, atol=1e-6)
    for name, value in saved["bottom-0"].items():
        torch.testing.assert_close(value, central.bottoms[0].state_dict()[name],
                                   rtol=1e-4, atol=1e-6)  # fmt: skip
    # The feature parties' bottoms (in their node state) match the centralised bottoms.
    nodes = sorted(grid.contexts)
    assert "vertical-bottom" not in grid.contexts[nodes[2]].state  # the idle SuperNode
    for party, node in enumerate(nodes[:2], start=1):
        state = grid.contexts[node].state["vertical-bottom"].to_torch_state_dict()
        for name, value in state.items():
            torch.testing.assert_close(value, central.bottoms[party].state_dict()[name],
                                       rtol=1e-4, atol=1e-6)  # fmt: skip


def _bank_csv(path, ids, columns):
    frame = generate_bank_frame(n_rows=400, seed=1)
    frame["id"] = ids
    frame[["id", *columns]].to_csv(path, index=False)
    return str(path)


def test_a_party_without_common_ids_stops_the_run_naming_it(tmp_path, bank_csv):
    cfg = _cfg("bank-marketing", tmp_path, bank_csv)
    own = _bank_csv(tmp_path / "p2.csv", [f"other-{i}" for i in range(400)],
                    ["pdays", "previous", "poutcome"])  # fmt: skip
    grid = InProcessGrid(app, cfg.to_flower(), 2, node_configs=[{}, {"data-source": own}])
    with pytest.raises(VerticalDataError, match=r"party 2 .* shares no record ids"):
        run_vertical(grid, cfg)


def test_a_party_whose_file_lacks_its_columns_is_a_schema_error(tmp_path, bank_csv):
    cfg = _cfg("bank-marketing", tmp_path, bank_csv)
    own = _bank_csv(tmp_path / "p1.csv", [f"cust-00-{i:06d}" for i in range(400)],
                    ["contact", "day", "month", "campaign"])  # no 'duration'  # fmt: skip
    grid = InProcessGrid(app, cfg.to_flower(), 2, node_configs=[{"data-source": own}, {}])
    with pytest.raises(
        VerticalError, match=r"node \d+ failed: .*party 1: .*lacks columns \['duration'\]"
    ):
        run_vertical(grid, cfg)


class DroppingGrid(InProcessGrid):
    """Party 2's SuperNode goes silent after its first ``alive`` replies."""

    def __init__(self, *args, alive: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.alive = alive
        self.silent = sorted(self.contexts)[1]
        self.held: dict[str, Message] = {}

    def pull_messages(self, message_ids):
        out = []
        for key in message_ids:
            if key in self.held:
                continue
            msg = self._pending.pop(key)
            if msg.metadata.dst_node_id == self.silent:
                if self.alive <= 0:
                    self.held[key] = msg
                    continue
                self.alive -= 1
            out.append(self._deliver(msg))
        return out


def test_a_party_that_drops_mid_training_stops_the_run_within_the_timeout(tmp_path, bank_csv):
    cfg = _cfg("bank-marketing", tmp_path, bank_csv, **{"vertical.timeout": 0.5})
    grid = DroppingGrid(app, cfg.to_flower(), 2, alive=4)  # PSI, align, eval 0, 1st batch
    with pytest.raises(VerticalError, match=r"epoch 1 batch 1: no reply from party 2 \(node "
                       r"\d+\) within vertical.timeout=0.5s"):  # fmt: skip
        run_vertical(grid, cfg)


def test_vertical_config_errors_name_the_key_and_the_fix(tmp_path):
    base = {**RunConfig().to_flower(), "mode": "vertical", "task": "bank-marketing"}
    with pytest.raises(ConfigError, match="does not support task 'digits'"):
        RunConfig.from_flower({**base, "task": "digits"})
    with pytest.raises(ConfigError, match=r"'vertical.noise-multiplier' > 0 needs "
                       "'vertical.embedding-clip' > 0"):  # fmt: skip
        RunConfig.from_flower({**base, "vertical.noise-multiplier": 1.0})
    with pytest.raises(ConfigError, match="run-config 'mode' = 'diagonal'"):
        RunConfig.from_flower({**base, "mode": "diagonal"})
    cfg = vertical_config(
        "bank-marketing", str(tmp_path), **{"vertical.split": "age,nope;duration"}
    )
    with pytest.raises(VerticalDataError, match="unknown column 'nope'"):
        run_vertical_inprocess(cfg)
    cfg = vertical_config("bank-marketing", str(tmp_path), **{"vertical.split": "age;age"})
    with pytest.raises(VerticalDataError, match="column 'age' is given to parties 0 and 1"):
        run_vertical_inprocess(cfg)


def test_fraud_splits_vertically_with_secret_noise_reproducible_only_on_request(
    tmp_path, fraud_csv
):
    over = {"num-server-rounds": 3, "vertical.batch-size": 256, "training.learning-rate": 0.1,
            "vertical.embedding-clip": 1.0,
            "vertical.noise-multiplier": 0.3, "vertical.gradient-clip": 1.0}  # fmt: skip
    runs = {
        (name, reproducible): run_vertical_inprocess(
            _cfg("fraud", tmp_path / f"{name}-{reproducible}", fraud_csv,
                 **over, **{"dp.reproducible-noise": reproducible})
        )
        for name in ("a", "b") for reproducible in (False, True)
    }  # fmt: skip
    model = {k: torch.load(r.run_dir / "model.pt")["top"] for k, r in runs.items()}
    # Secret noise (the default): the same public config gives two different models …
    secret_a, secret_b = model["a", False], model["b", False]
    assert any(not torch.equal(secret_a[k], secret_b[k]) for k in secret_a)
    # … and identical ones only with the research key.
    for key in model["a", True]:
        assert torch.equal(model["a", True][key], model["b", True][key])
    # Both learn: the seeded runs reach the bar; a secret-noise run's ROC-AUC varies with
    # its noise draw (one draw gave 0.695), so it must clearly beat chance (0.5), not the bar.
    for (_, reproducible), run in runs.items():
        assert run.metrics[-1]["roc-auc"] > (0.7 if reproducible else 0.6)
        assert np.isfinite(run.metrics[-1]["loss"])


def test_too_few_supernodes_is_an_error_naming_the_count(tmp_path, bank_csv):
    cfg = _cfg("bank-marketing", tmp_path, bank_csv, **{"vertical.timeout": 0.5})
    with pytest.raises(VerticalError, match=r"only 1 SuperNodes connected .* names 2 feature"):
        run_vertical(InProcessGrid(app, cfg.to_flower(), 1), cfg)
