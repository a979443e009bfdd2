"""Adversary tests for central DP's noise, on real in-process runs (the ServerApp body and
ClientApp of ``flwr run``).

The attacker holds everything the public and the server's records hold: ``config.json``,
the params the sinks log (what MLflow receives), the audit log, ``metrics.json`` and the
released model — and, as the worst case, every silo's exact update of every round and the
global model each round started from. It regenerates the noise the way the code used to
seed it, from the public config (``derive_seed(seed, "dp-noise")``), and subtracts it.

With secret noise the regenerated noise is uncorrelated with the true noise and even the
best-scaled subtraction leaves the full σC/m of noise on the mean update. Under
``dp.reproducible-noise`` the attack succeeds, and the test accepts that only because the
run says so: ``dp-private = 0`` in ``metrics.json`` and ``dp-private = false`` in the audit
log.
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, Message

from fl_app import LOG
from fl_app.audit import read_audit_log
from fl_app.checkpointing import saved_layers
from fl_app.client_app import app as client_app
from fl_app.config import RunConfig
from fl_app.federation import run_federation
from fl_app.inprocess import InProcessGrid
from fl_app.sinks import privacy_status
from fl_core.seeding import derive_seed
from strategies.flatten import Layout, flatten, stack
from strategies.privacy.central import clip_updates
from tasks import get_task

SILOS = 5
SIGMA, CLIP = 1.0, 0.5
PUBLIC = {
    "task": "breast-cancer",
    "dp.central": True,
    "robust.max-update-norm-ratio": 0.0,
    "dp.noise-multiplier": SIGMA,
    "dp.clip-norm": CLIP,
    "num-server-rounds": 2,
    "training.local-epochs": 1,
    "sampling.fraction-evaluate": 0.0,
    "sampling.min-evaluate-nodes": 0,
    "seed": 7,
}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


class RecordingGrid(InProcessGrid):
    """The in-process grid, also keeping every train instruction and its reply (the
    server's view of each round)."""

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(client_app, cfg.to_flower(), SILOS)
        self.rounds: dict[int, list[tuple[Message, Message]]] = {}

    def _deliver(self, msg: Message) -> Message:
        reply = super()._deliver(msg)
        if msg.metadata.message_type == "train":
            server_round = int(msg.content["config"]["server-round"])
            self.rounds.setdefault(server_round, []).append((msg, reply))
        return reply


class RecordingSink:
    """Receives what every sink receives (the MLflow sink logs exactly these params)."""

    def __init__(self) -> None:
        self.params: dict = {}

    def log_params(self, params) -> None:
        self.params = dict(params)

    def log_metrics(self, server_round, phase, metrics) -> None:
        pass

    def log_silo_metrics(self, server_round, phase, partition_id, metrics) -> None:
        pass

    def log_artifact(self, path) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class Run:
    """What one run left behind: public artefacts and the server's view."""

    run_dir: Path
    params: dict
    rounds: dict[int, list[tuple[Message, Message]]]
    model: dict[str, torch.Tensor]
    public_text: dict[str, str] = field(default_factory=dict)

    @property
    def config(self) -> dict:
        return json.loads((self.run_dir / "config.json").read_text())

    @property
    def metrics(self) -> list[dict]:
        return json.loads((self.run_dir / "metrics.json").read_text())

    @property
    def audit(self) -> list[dict]:
        return read_audit_log(self.run_dir / "audit.jsonl")


def run(tmp_path: Path, **overrides) -> Run:
    cfg = RunConfig.from_flower({**PUBLIC, "output.run-dir": str(tmp_path), **overrides})
    grid, sink = RecordingGrid(cfg), RecordingSink()
    _, run_dir = run_federation(grid, cfg, extra_sinks=(sink,))
    public = {
        name: (run_dir / name).read_text()
        for name in ("config.json", "metrics.json", "metrics.csv", "audit.jsonl")
    }
    public["params"] = json.dumps(sink.params)
    model = torch.load(run_dir / "model.pt", weights_only=True)
    return Run(run_dir, sink.params, grid.rounds, model, public)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, list[Run]]:
    """Two runs of the same public config with secret noise, two with reproducible noise."""
    out: dict[str, list[Run]] = {"secret": [], "reproducible": []}
    for kind in out:
        for i in range(2):
            tmp = tmp_path_factory.mktemp(f"{kind}-{i}")
            out[kind].append(run(tmp, **{"dp.reproducible-noise": kind == "reproducible"}))
    return out


# ---------------------------------------------------------------------------- the attack
def trained_layout(arrays: ArrayRecord) -> tuple[list[str], Layout]:
    names = {name for name, _ in get_task(PUBLIC["task"]).build_model().named_parameters()}
    keys = [k for k in arrays if k in names]
    return keys, Layout.of(ArrayRecord({k: arrays[k] for k in keys}))


def true_noise_and_mean(r: Run) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per round, from the server's view (replies, global models): the noise DP-FedAvg
    added to the clipped sum, and the noiseless clipped mean."""
    noises, means = [], []
    last = max(r.rounds)
    for rnd in sorted(r.rounds):
        pairs = r.rounds[rnd]
        start = pairs[0][0].content["arrays"]
        keys, layout = trained_layout(start)
        before = flatten(ArrayRecord({k: start[k] for k in keys}), layout).double()
        released = r.rounds[rnd + 1][0][0].content["arrays"] if rnd < last else ArrayRecord(r.model)
        after = flatten(ArrayRecord({k: released[k] for k in keys}), layout).double()
        replies = [ArrayRecord({k: rep.content["arrays"][k] for k in keys}) for _, rep in pairs]
        deltas, _ = stack(replies, layout)
        clipped, _ = clip_updates(deltas.double() - before, CLIP)
        m = len(pairs)  # full participation: the fixed denominator is every silo
        noises.append((after - before) * m - clipped.sum(0))
        means.append(clipped.sum(0) / m)
    return noises, means


def attacker_noise(public_config: dict, sizes: list[int]) -> list[torch.Tensor]:
    """The attacker's regeneration of each round's noise from the public config alone,
    exactly as the code seeded it before the noise became secret."""
    sigma, clip = public_config["dp.noise-multiplier"], public_config["dp.clip-norm"]
    generator = torch.Generator().manual_seed(derive_seed(public_config["seed"], "dp-noise"))
    return [torch.randn(d, generator=generator, dtype=torch.float64) * sigma * clip for d in sizes]


def attack(r: Run) -> tuple[float, float, float]:
    """``(correlation of the regenerated with the true noise, std of the attacker's best
    reconstruction error of the noiseless mean, σC/m)`` pooled over rounds."""
    true, means = true_noise_and_mean(r)
    guess = attacker_noise(r.config, [len(n) for n in true])
    m = len(r.rounds[1])
    released = torch.cat([mu + n / m for mu, n in zip(means, true, strict=True)])
    guess_all, true_all, mean_all = torch.cat(guess), torch.cat(true), torch.cat(means)
    correlation = float(torch.corrcoef(torch.stack([guess_all, true_all]))[0, 1])
    # The most generous subtraction: the scale β fitted with knowledge of the truth.
    beta = float((guess_all @ true_all) / (guess_all @ guess_all))
    reconstruction = released - beta * guess_all / m
    residual = float((reconstruction - mean_all).std())
    return correlation, residual, SIGMA * CLIP / m


def marked_private(r: Run) -> bool:
    """What the run's artefacts say; they must all say the same."""
    rows = r.metrics
    (header,) = [row for row in rows if row["phase"] == "privacy"]
    tagged = {row["dp-private"] for row in rows if row["phase"] in ("train", "server")}
    (start,) = [e for e in r.audit if e["event"] == "run-start"]
    assert tagged == {header["dp-private"]} and start["dp-private"] == bool(header["dp-private"])
    assert ("NOT PRIVATE" in header["statement"]) != bool(header["dp-private"])
    return bool(header["dp-private"])


# ---------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("kind", ["secret", "reproducible"])
def test_the_noise_cannot_be_regenerated_unless_the_run_says_it_is_not_private(runs, kind):
    r = runs[kind][0]
    correlation, residual, full = attack(r)
    coordinates = sum(len(n) for n in true_noise_and_mean(r)[0])
    assert coordinates > 3000
    if marked_private(r):
        assert abs(correlation) < 0.1
        assert residual == pytest.approx(full, rel=0.2)  # the full σC/m remains
    else:
        # Reproducible noise: the attacker strips it; acceptable only for a run that
        # declares itself not private in metrics.json and the audit log.
        assert correlation > 0.99 and residual < 0.01 * full
    assert marked_private(r) == (kind == "secret")


def test_the_noise_secret_is_kept_in_the_server_checkpoint_only(runs):
    r = runs["secret"][0]
    ckpt = torch.load(r.run_dir / "checkpoints" / "latest.pt", weights_only=True)
    (dp_state,) = [own for name, own in saved_layers(ckpt["strategy"]) if name == "DPFedAvg"]
    public_seeded = torch.Generator().manual_seed(derive_seed(PUBLIC["seed"], "dp-noise"))
    for name in ("generator", "sampling_generator"):
        state = dp_state[name]
        assert not torch.equal(state, public_seeded.get_state())
        words = state.numpy()[24:].tobytes()  # the MT19937 state words: the secret
        assert len(set(words)) > 200  # drawn from the OS, not a small seed's expansion
        for chunk in (words[:16], words[1000:1016], words[-16:]):
            for text in (chunk.hex(), base64.b64encode(chunk).decode()):
                assert not [n for n, body in r.public_text.items() if text in body]
    assert r.params["seed"] == PUBLIC["seed"]  # what is public is the run seed


def test_same_public_config_gives_different_models_unless_reproducible(runs):
    def same(a: Run, b: Run) -> bool:
        return all(torch.equal(a.model[k], b.model[k]) for k in a.model)

    def settings(r: Run) -> dict:  # the public config, less where the run wrote to
        return {k: v for k, v in r.config.items() if k not in ("output.run-dir", "config-hash")}

    secret, reproducible = runs["secret"], runs["reproducible"]
    assert settings(secret[0]) == settings(secret[1])
    assert not same(*secret)
    assert all(marked_private(r) for r in secret)
    assert same(*reproducible)
    assert not any(marked_private(r) for r in reproducible)


def test_reproducible_noise_is_announced_at_run_start(caplog):
    LOG.addHandler(caplog.handler)  # Flower's logger does not propagate to the root
    try:
        with caplog.at_level(logging.WARNING, logger=LOG.name):
            status = privacy_status(
                RunConfig.from_flower({**PUBLIC, "dp.reproducible-noise": True})
            )
            assert status is not None and not status.private
            assert "NOT PRIVATE" in caplog.text and "dp.reproducible-noise" in caplog.text
            caplog.clear()
            assert privacy_status(RunConfig.from_flower(PUBLIC)).private
            assert privacy_status(RunConfig.from_flower({"task": "breast-cancer"})) is None
            assert caplog.text == ""
    finally:
        LOG.removeHandler(caplog.handler)


POISSON = {
    **PUBLIC,
    "dp.sampling-amplification": True,
    "sampling.fraction-train": 0.5,
    "sampling.min-train-nodes": 1,
    "num-server-rounds": 4,
    "dp.noise-multiplier": 0.8,
}
POISSON_SILOS = 12


def predicted_cohorts(public_config: dict, rounds: int) -> list[set[int]]:
    """The attacker's prediction of every round's cohort (partition ids) from the public
    config, drawing as the code would with a generator seeded from ``seed``."""
    generator = torch.Generator().manual_seed(derive_seed(public_config["seed"], "dp-sampling"))
    q = public_config["sampling.fraction-train"]
    return [
        set(torch.nonzero(torch.rand(POISSON_SILOS, generator=generator, dtype=torch.float64) < q)
            .flatten().tolist())
        for _ in range(rounds)
    ]  # fmt: skip


@pytest.mark.parametrize("kind", ["secret", "reproducible"])
def test_the_poisson_cohorts_cannot_be_predicted_unless_the_run_says_so(tmp_path, kind):
    cfg = RunConfig.from_flower(
        {
            **POISSON,
            "output.run-dir": str(tmp_path),
            "dp.reproducible-noise": kind == "reproducible",
        }
    )
    _, run_dir = run_federation(InProcessGrid(client_app, cfg.to_flower(), POISSON_SILOS), cfg)
    r = Run(run_dir, {}, {}, {})
    actual = [
        {s["partition-id"] for s in e["sampled"]} for e in r.audit if e["event"] == "train"
    ]  # the server's own record of who was sampled
    assert len(actual) == POISSON["num-server-rounds"]
    predicted = predicted_cohorts(r.config, len(actual))
    hits = sum(
        (p in guess) == (p in truth)
        for guess, truth in zip(predicted, actual, strict=True)
        for p in range(POISSON_SILOS)
    )
    accuracy = hits / (POISSON_SILOS * len(actual))
    if marked_private(r):
        assert accuracy < 0.8  # chance is 0.5; a predictable cohort gives 1.0
    else:
        assert accuracy == 1.0
    assert marked_private(r) == (kind == "secret")


def test_adaptive_clipping_noise_is_secret_too(tmp_path):
    """The clipping norm's trajectory is released; its count noise comes from the same
    secret generator: two runs of one public config follow different trajectories, and
    only the reproducible key (marked not private) makes them equal."""
    adaptive = {**PUBLIC, "dp.adaptive-clipping": True, "dp.noise-multiplier": 0.3,
                "num-server-rounds": 3}  # fmt: skip

    def trajectory(name: str, reproducible: bool) -> tuple[list[float], bool]:
        cfg = RunConfig.from_flower(
            {
                **adaptive,
                "output.run-dir": str(tmp_path / name),
                "dp.reproducible-noise": reproducible,
            }
        )
        _, run_dir = run_federation(InProcessGrid(client_app, cfg.to_flower(), SILOS), cfg)
        r = Run(run_dir, {}, {}, {})
        train = [row for row in r.metrics if row["phase"] == "train"]
        return [row["unclipped-fraction"] for row in train], marked_private(r)

    secret = [trajectory(f"secret-{i}", False) for i in range(2)]
    reproducible = [trajectory(f"reproducible-{i}", True) for i in range(2)]
    assert secret[0][0] != secret[1][0] and secret[0][1] and secret[1][1]
    assert reproducible[0][0] == reproducible[1][0]
    assert not reproducible[0][1] and not reproducible[1][1]
