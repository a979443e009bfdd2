"""Adversary tests for the silo-side privacy mechanisms: local DP-SGD and vertical noise.

The attacker is the server (for vertical: the label party). It holds everything the
public and the server hold: the run config (so the seed), the partition ids, the rounds,
the lineage, the global model it sent and every reply. It regenerates the silo's noise
and Poisson batches the way the code used to seed them (``derive_seed(seed, "train",
partition, round)``; vertical: ``derive_seed(seed, "vertical-noise", party, *tag)``) and
subtracts its estimate.

The oracle is the test itself: it records, inside the silo, the noise Opacus adds
(``opacus.optimizers.optimizer._generate_noise``) and the batches its sampler draws. The
silo runs the real ClientApp train path (in-process grid, real Opacus, real data).

With secret noise the attacker's estimate is uncorrelated with the true noise and what
it cannot remove keeps the full σ·C scale; with ``dp.reproducible-noise`` the same attack
recovers the noise exactly, and the test passes only because the run says it is not
private.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.serde import message_to_proto
from opacus.optimizers import optimizer as opacus_optimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler

from fl_app.client_app import app as client_app
from fl_app.client_app import silo_data
from fl_app.config import RunConfig
from fl_app.inprocess import InProcessGrid
from fl_app.silo_state import LINEAGE_KEY, SiloStateStore, new_lineage
from fl_core.seeding import derive_seed, seed_everything
from strategies.privacy.randomness import generator_state, restore_generator, secret_generator
from tasks import get_task

SIGMA, CLIP, LR, BATCH = 1.0, 1.0, 0.05, 16
FIRST_NODE = 1001
BASE = {
    "task": "breast-cancer", "strategy": "fedavg", "dp.local": True,
    "dp.local-noise-multiplier": SIGMA, "dp.max-grad-norm": CLIP, "training.learning-rate": LR,
    "training.momentum": 0.0, "training.local-epochs": 1, "training.batch-size": BATCH, "seed": 7,
}  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def config(**overrides) -> RunConfig:
    return RunConfig.from_flower({**RunConfig().to_flower(), **BASE, **overrides})


class Oracle:
    """Records, inside the silo, the noise Opacus adds (one flat tensor per parameter and
    step) and the row indices of every Poisson batch."""

    def __init__(self, monkeypatch) -> None:
        self.noise: list[torch.Tensor] = []
        self.batches: list[list[int]] = []
        real_noise = opacus_optimizer._generate_noise
        real_iter = UniformWithReplacementSampler.__iter__

        def noise(*args, **kwargs):
            out = real_noise(*args, **kwargs)
            self.noise.append(out.detach().clone().flatten())
            return out

        def batches(sampler):
            for indices in real_iter(sampler):
                self.batches.append(list(indices))
                yield indices

        monkeypatch.setattr(opacus_optimizer, "_generate_noise", noise)
        monkeypatch.setattr(UniformWithReplacementSampler, "__iter__", batches)

    def take(self) -> tuple[list[torch.Tensor], list[list[int]]]:
        out = (self.noise, self.batches)
        self.noise, self.batches = [], []
        return out


class Federation:
    """The silos (real ClientApp on an in-process grid, each with its own state dir) and
    what the server sends them."""

    def __init__(self, cfg: RunConfig, state_root: Path, num_silos: int = 2) -> None:
        self.cfg = cfg
        self.state_dirs = [state_root / f"silo-{i}" for i in range(num_silos)]
        self.grid = InProcessGrid(
            client_app, cfg.to_flower(), num_silos,
            node_configs=[{"silo-state-dir": str(d)} for d in self.state_dirs],
        )  # fmt: skip

    def global_model(self, pid: int = 0) -> ArrayRecord:
        task = get_task(self.cfg.task)
        seed_everything(derive_seed(self.cfg.seed, "init"))
        model = task.build_model()
        data = silo_data(task, self.cfg, self.grid.contexts[FIRST_NODE + pid])
        task.set_input_scaling(model, [task.feature_moments(data.train)])
        return ArrayRecord(model.state_dict())

    def train(self, pid: int, arrays: ArrayRecord, server_round: int, lineage: str) -> Message:
        reply = self.send(pid, arrays, server_round, lineage)
        assert not reply.has_error(), reply.error.reason
        return reply

    def send(self, pid: int, arrays: ArrayRecord, server_round: int, lineage: str) -> Message:
        config_record = ConfigRecord(
            {"server-round": server_round, "training.learning-rate": LR, LINEAGE_KEY: lineage}
        )
        message = Message(
            RecordDict({"arrays": arrays, "config": config_record}),
            dst_node_id=FIRST_NODE + pid, message_type="train",
        )  # fmt: skip
        (reply,) = self.grid.send_and_receive([message])
        return reply


def trained_shapes(arrays: ArrayRecord) -> list[tuple[str, torch.Size]]:
    """The trainable parameters (Opacus noises exactly these, in this order)."""
    model = get_task(BASE["task"]).build_model()
    model.load_state_dict(arrays.to_torch_state_dict())
    return [(name, p.shape) for name, p in model.named_parameters() if p.requires_grad]


def attacker_regenerates(cfg: RunConfig, pid: int, server_round: int, n_rows: int, shapes):
    """The server's reconstruction of a silo's batches and noise from public knowledge, as
    the code used to seed them: (seed, partition, round) → sampling generator → noise seed."""
    sampling = torch.Generator().manual_seed(derive_seed(cfg.seed, "train", pid, server_round))
    noise_gen = torch.Generator().manual_seed(
        int(torch.randint(0, 2**62, (1,), generator=sampling))
    )
    steps = math.ceil(n_rows / cfg.training.batch_size)
    std = cfg.dp.local_noise_multiplier * cfg.dp.max_grad_norm
    batches, noise = [], []
    for _ in range(cfg.training.local_epochs):
        # torch's DataLoader iterator first draws its base seed from the loader's generator.
        torch.empty((), dtype=torch.int64).random_(generator=sampling)
        for _ in range(steps):
            mask = torch.rand(n_rows, generator=sampling) < 1.0 / steps
            batches.append(mask.nonzero().flatten().tolist())
            for _, shape in shapes:
                noise.append(torch.normal(0.0, std, size=shape, generator=noise_gen).flatten())
    return batches, noise


def model_noise(step_noise: list[torch.Tensor], num_params: int, n_rows: int, steps: int):
    """The noise's contribution to the returned model (plain SGD, no momentum):
    −lr/B · Σ_t n_t per parameter, B = Opacus' expected batch size."""
    expected_batch = int(n_rows * (1.0 / steps))
    per_param = [
        sum(step_noise[t * num_params + i] for t in range(len(step_noise) // num_params))
        for i in range(num_params)
    ]
    return -LR / expected_batch * torch.cat(per_param).double()


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def best_residual_std(truth: torch.Tensor, estimate: torch.Tensor) -> float:
    """Std of ``truth − β·estimate`` with the least-squares β: the attacker's best linear
    use of its estimate (the optimal β is even handed to it by the oracle)."""
    truth, estimate = truth.double().flatten(), estimate.double().flatten()
    beta = float(truth @ estimate / (estimate @ estimate))
    return float((truth - beta * estimate).std())


def recall(true_batches: list[list[int]], guessed: list[list[int]]) -> float:
    hits = sum(len(set(t) & set(g)) for t, g in zip(true_batches, guessed, strict=True))
    return hits / max(1, sum(len(t) for t in true_batches))


# ----------------------------------------------------------------------------- local DP
@pytest.mark.parametrize("reproducible", [False, True], ids=["secret", "reproducible"])
def test_the_server_cannot_regenerate_and_subtract_local_dp_noise(
    tmp_path, monkeypatch, reproducible
):
    cfg = config(**{"dp.reproducible-noise": reproducible})
    federation = Federation(cfg, tmp_path)
    oracle = Oracle(monkeypatch)
    lineage = new_lineage()
    sent = federation.global_model()
    pid, server_round = 1, 3
    reply = federation.train(pid, sent, server_round, lineage)
    true_noise, true_batches = oracle.take()

    metrics = reply.content["metrics"]
    n_rows = int(metrics["num-examples"])
    shapes = trained_shapes(sent)
    steps = math.ceil(n_rows / BATCH)
    assert len(true_noise) == steps * len(shapes)  # one draw per parameter and step
    truth = torch.cat(true_noise)
    # The oracle sees what the mechanism promises: N(0, (σC)²) per coordinate.
    assert float(truth.std()) == pytest.approx(SIGMA * CLIP, rel=0.05)

    guessed_batches, guessed_noise = attacker_regenerates(cfg, pid, server_round, n_rows, shapes)
    estimate = torch.cat(guessed_noise)
    r_step = correlation(truth, estimate)
    # The same at the level of the model the server received.
    true_model = model_noise(true_noise, len(shapes), n_rows, steps)
    guess_model = model_noise(guessed_noise, len(shapes), n_rows, steps)
    r_model = correlation(true_model, guess_model)
    model_scale = LR * SIGMA * CLIP * math.sqrt(steps) / int(n_rows / steps)

    if not reproducible:
        assert metrics["dp-private"] == 1.0
        assert abs(r_step) < 0.1 and abs(r_model) < 0.1, (r_step, r_model)
        assert best_residual_std(truth, estimate) == pytest.approx(SIGMA * CLIP, rel=0.25)
        assert best_residual_std(true_model, guess_model) == pytest.approx(model_scale, rel=0.25)
        # The batches are secret too: the guess finds a batch's rows at chance rate q.
        assert recall(true_batches, guessed_batches) < 3.0 / steps
    else:
        # Research mode: the attack recovers the noise and the batches exactly …
        assert r_step > 0.99 and r_model > 0.99
        assert torch.equal(truth, estimate)
        assert true_batches == guessed_batches
        # … and the test passes only because the silo says its noise is not private.
        assert metrics["dp-private"] == 0.0
        assert cfg.dp.reproducible_noise


@pytest.mark.parametrize("reproducible", [False, True], ids=["secret", "reproducible"])
def test_replaying_a_round_does_not_cancel_the_noise(tmp_path, monkeypatch, reproducible):
    """The server asks the same round twice, same lineage, the second time with a slightly
    different global model, and differences the replies: with a rewound or re-seeded
    generator the noise would cancel and the difference would expose the gradients."""
    cfg = config(**{"dp.reproducible-noise": reproducible})
    federation = Federation(cfg, tmp_path)
    oracle = Oracle(monkeypatch)
    lineage = new_lineage()
    first = federation.global_model()
    state = first.to_torch_state_dict()
    gen = torch.Generator().manual_seed(0)
    second = ArrayRecord({k: v + 1e-3 * torch.randn(v.shape, generator=gen)
                          if v.is_floating_point() else v for k, v in state.items()})  # fmt: skip
    pid, server_round = 0, 2
    reply1 = federation.train(pid, first, server_round, lineage)
    noise1, batches1 = oracle.take()
    reply2 = federation.train(pid, second, server_round, lineage)
    noise2, batches2 = oracle.take()

    m1, m2 = reply1.content["metrics"], reply2.content["metrics"]
    n_rows = int(m1["num-examples"])
    shapes = trained_shapes(first)
    steps = math.ceil(n_rows / BATCH)
    n1 = model_noise(noise1, len(shapes), n_rows, steps)
    n2 = model_noise(noise2, len(shapes), n_rows, steps)
    # Each answered round is a release: the replay is accounted again.
    assert m2["dp-steps"] == 2 * m1["dp-steps"] and m2["dp-epsilon"] > m1["dp-epsilon"]
    if not reproducible:
        model_scale = LR * SIGMA * CLIP * math.sqrt(steps) / int(n_rows / steps)
        assert abs(correlation(n1, n2)) < 0.1
        # The noise left in the difference of the replies: √2 × one reply's, not 0.
        assert float((n1 - n2).std()) == pytest.approx(math.sqrt(2) * model_scale, rel=0.25)
        assert batches1 != batches2
    else:
        assert torch.equal(n1, n2) and batches1 == batches2  # it cancels exactly
        assert m1["dp-private"] == m2["dp-private"] == 0.0


# ----------------------------------------------------------------- state and resume
def test_silo_secret_state_survives_a_resume_and_a_new_lineage_starts_a_new_stream(
    tmp_path, monkeypatch
):
    cfg = config()
    oracle = Oracle(monkeypatch)
    lineage = new_lineage()
    # An uninterrupted silo answers rounds 1 and 2.
    steady = Federation(cfg, tmp_path / "steady")
    sent = steady.global_model()
    steady.train(0, sent, 1, lineage)
    oracle.take()
    # Its twin is restarted after round 1 (a resumed run: a new Flower run, an empty
    # context, the same state directory and lineage).
    restarted = Federation(cfg, tmp_path / "restarted")
    restarted.train(0, sent, 1, lineage)
    oracle.take()
    state_dir = restarted.state_dirs[0]
    (state_file,) = state_dir.iterdir()
    saved = json.loads(state_file.read_text())
    assert saved["lineage"] == lineage and saved["rounds"] == [1]
    assert oct(state_file.stat().st_mode & 0o777) == "0o600"
    twin_state = steady.state_dirs[0] / state_file.name
    twin_state.write_bytes(state_file.read_bytes())  # same secret: the stream must continue

    fresh_node = Federation(cfg, tmp_path / "restarted")  # new contexts, same directory
    reply_resumed = fresh_node.train(0, sent, 2, lineage)
    noise_resumed, _ = oracle.take()
    reply_steady = steady.train(0, sent, 2, lineage)
    noise_steady, _ = oracle.take()
    assert all(torch.equal(a, b) for a, b in zip(noise_resumed, noise_steady, strict=True))
    arrays_resumed = reply_resumed.content["arrays"].to_torch_state_dict()
    for key, value in reply_steady.content["arrays"].to_torch_state_dict().items():
        assert torch.equal(value, arrays_resumed[key]), key
    # The accountant history survived the restart: ε is cumulative over both rounds.
    m_resumed, m_steady = reply_resumed.content["metrics"], reply_steady.content["metrics"]
    assert m_resumed["dp-epsilon"] == m_steady["dp-epsilon"]
    assert m_resumed["dp-steps"] == 2 * math.ceil(m_resumed["num-examples"] / BATCH)

    # A fresh run (new lineage, so a new Flower run with a new context) on the same silo:
    # a new secret, and accounting from zero.
    reply_new = Federation(cfg, tmp_path / "restarted").train(0, sent, 2, new_lineage())
    noise_new, _ = oracle.take()
    assert abs(correlation(torch.cat(noise_new), torch.cat(noise_resumed))) < 0.1
    assert reply_new.content["metrics"]["dp-steps"] == m_resumed["dp-steps"] / 2
    assert len(list(state_dir.iterdir())) == 2

    # Nothing of the secret leaves the silo: the serialised replies do not contain the
    # generator states (raw, base64 or hex), nor does anything under the server's view.
    secret = SiloStateStore(state_dir).load(lineage, "p0")
    blobs = [generator_state(secret.sampling), generator_state(secret.noise),
             base64.b64decode(saved["generators"]["noise"])]  # fmt: skip
    for reply in (reply_resumed, reply_steady, reply_new):
        wire = message_to_proto(reply).SerializeToString()
        for blob in blobs:
            words = blob[24:5016]  # the MT19937 words
            for start in range(0, len(words) - 32, 512):
                chunk = words[start : start + 32]
                assert chunk not in wire
                assert chunk.hex().encode() not in wire
                assert base64.b64encode(chunk)[:40] not in wire


def test_a_lineage_switch_within_a_run_and_a_malformed_lineage_are_refused(tmp_path):
    federation = Federation(config(), tmp_path)
    sent = federation.global_model()
    federation.train(0, sent, 1, new_lineage())
    switched = federation.send(0, sent, 2, new_lineage())
    assert switched.has_error()
    assert "'lineage' changed within this run" in switched.error.reason
    traversal = federation.send(1, sent, 1, "../../etc")
    assert traversal.has_error()
    assert "'lineage' = '../../etc' is not a lineage id" in traversal.error.reason
    assert [p.name for p in tmp_path.iterdir()] == ["silo-0"]  # silo 1 wrote nothing


def test_secret_generators_use_the_whole_mersenne_twister_state():
    """torch keeps only 32 bits of a seed (so a seeded generator is brute-forceable);
    secret generators fill all 624 state words, each of which changes the stream."""
    assert torch.equal(
        torch.randn(8, generator=torch.Generator().manual_seed(5)),
        torch.randn(8, generator=torch.Generator().manual_seed(5 + 2**32)),
    )
    a, b = secret_generator(), secret_generator()
    assert a.initial_seed() == 0
    assert not torch.equal(torch.randn(64, generator=a), torch.randn(64, generator=b))
    # Flip one bit in the last state word: the stream changes within one twist.
    base = bytearray(generator_state(secret_generator()))
    flipped = bytearray(base)
    flipped[24 + 8 * 623] ^= 1
    draws = [torch.randint(0, 2**31, (700,), generator=restore_generator(bytes(s)))
             for s in (base, flipped)]  # fmt: skip
    assert not torch.equal(*draws)
    # Restoring continues the same stream.
    c = secret_generator()
    d = restore_generator(generator_state(c))
    assert torch.equal(torch.randn(100, generator=c), torch.randn(100, generator=d))


# ----------------------------------------------------------------------------- vertical
@pytest.fixture(scope="module")
def bank_csv(tmp_path_factory):
    from tasks.bank_marketing import generate_bank_frame

    path = tmp_path_factory.mktemp("bank") / "bank.csv"
    generate_bank_frame(n_rows=3000, seed=0).to_csv(path, sep=";", index=False)
    return str(path)


@pytest.mark.parametrize("reproducible", [False, True], ids=["secret", "reproducible"])
def test_the_label_party_cannot_regenerate_the_embedding_noise(
    tmp_path, monkeypatch, bank_csv, reproducible
):
    from benchmarks.vertical import run_vertical_inprocess, vertical_config
    from fl_app.vertical import client as vertical_client
    from strategies.vertical.split import party_embedding

    noise_multiplier, clip = 0.5, 1.0
    cfg = vertical_config(
        "bank-marketing", str(tmp_path),
        **{"data.source": bank_csv, "num-server-rounds": 1, "vertical.batch-size": 512,
           "vertical.embedding-clip": clip, "vertical.noise-multiplier": noise_multiplier,
           "dp.reproducible-noise": reproducible},
    )  # fmt: skip
    recorded = []  # (party, tag, true noise) of every embedding a party sent
    real_embed = vertical_client._embed

    def embed(cfg_, bottom, x, party, context, *tag):
        sent = real_embed(cfg_, bottom, x, party, context, *tag)
        with torch.no_grad():
            clean = party_embedding(bottom, x, cfg_.vertical.embedding_clip).numpy()
        recorded.append((party, tag, torch.from_numpy(sent - clean)))
        return sent

    monkeypatch.setattr(vertical_client, "_embed", embed)
    result = run_vertical_inprocess(cfg)

    truth, guess = [], []
    for party, tag, noise in recorded:
        gen = torch.Generator().manual_seed(
            derive_seed(cfg.seed, "vertical-noise", party, *tag)
        )  # the label party knows the seed, the party numbers and the tags it sent
        guess.append(torch.randn(noise.shape, generator=gen) * (noise_multiplier * clip))
        truth.append(noise)
    truth_t, guess_t = (
        torch.cat([t.flatten() for t in truth]),
        torch.cat([g.flatten() for g in guess]),
    )
    assert truth_t.numel() > 10_000
    r = correlation(truth_t, guess_t)
    if not reproducible:
        assert abs(r) < 0.1
        assert best_residual_std(truth_t, guess_t) == pytest.approx(
            noise_multiplier * clip, rel=0.25
        )
    else:
        assert r > 0.99
        torch.testing.assert_close(truth_t, guess_t, atol=1e-5, rtol=0)
        rows = json.loads((result.run_dir / "metrics.json").read_text())
        assert cfg.dp.reproducible_noise and cfg.dp_mechanisms() == ["vertical.noise-multiplier"]
        flags = [row["dp-private"] for row in rows if "dp-private" in row]
        assert not flags or set(flags) == {0.0}


class DeadInRound(InProcessGrid):
    """Silos in ``dead`` never answer round ``dead_round``'s training (a stalled silo)."""

    def __init__(self, cfg: RunConfig, state_root: Path, dead_round: int = 0, dead=()) -> None:
        self.dead_round, self.dead = dead_round, set(dead)
        super().__init__(
            client_app, cfg.to_flower(), 3,
            node_configs=[{"silo-state-dir": str(state_root / f"silo-{i}")} for i in range(3)],
        )  # fmt: skip

    def send_and_receive(self, messages, *, timeout=None):
        def dead(m: Message) -> bool:
            record = m.content.config_records.get("config")
            pid = int(self.contexts[m.metadata.dst_node_id].node_config["partition-id"])
            return (m.metadata.message_type == "train" and record is not None
                    and record["server-round"] == self.dead_round and pid in self.dead)  # fmt: skip

        return super().send_and_receive([m for m in messages if not dead(m)], timeout=timeout)


def test_a_resumed_run_keeps_its_lineage_and_every_silo_its_accounting(tmp_path):
    """Round 2 misses its quorum (silo 1 stalls) after silos 0 and 2 answered it; the
    resumed run sends the checkpoint's lineage, so silo 1 continues its secret state and
    history, and silos 0 and 2 answer round 2 again with fresh noise, accounted again."""
    from fl_app.audit import read_audit_log
    from fl_app.federation import run_federation
    from fl_app.reliability import QuorumError

    settings = {
        "num-server-rounds": 2,
        "sampling.min-train-nodes": 3,
        "sampling.min-available-nodes": 3,
        "sampling.fraction-evaluate": 0.0,
        "sampling.min-evaluate-nodes": 0,
        "sampling.round-retries": 0,
        "output.run-dir": str(tmp_path / "runs"),
    }
    cfg = config(**settings)
    with pytest.raises(QuorumError):
        run_federation(DeadInRound(cfg, tmp_path, dead_round=2, dead={1}), cfg)
    resumed = config(**settings, **{"output.resume": True})
    result, run_dir = run_federation(DeadInRound(resumed, tmp_path), resumed)

    starts = [e for e in read_audit_log(run_dir / "audit.jsonl") if e["event"] == "run-start"]
    assert len(starts) == 2 and starts[0]["lineage"] == starts[1]["lineage"]
    lineage = starts[0]["lineage"]
    files = {pid: json.loads((tmp_path / f"silo-{pid}" / f"{lineage}-p{pid}.json").read_text())
             for pid in range(3)}  # fmt: skip
    assert files[1]["rounds"] == [1, 2]
    assert files[0]["rounds"] == files[2]["rounds"] == [1, 2, 2]
    steps = {pid: sum(f["accountant"]["steps"]) for pid, f in files.items()}
    per_round = steps[1] // 2
    assert steps[0] == steps[2] == 3 * per_round  # the replayed round is a new release
    # The round reports the weakest silo: its cumulative steps survived the resume.
    assert result.train_metrics_clientapp[2]["dp-steps"] == 3 * per_round

    # A fresh run of the same config: a new lineage, so new secrets and new accounting.
    again = config(**settings)
    run_federation(DeadInRound(again, tmp_path), again)
    lineages = {p.name.split("-")[0] for p in (tmp_path / "silo-0").iterdir()}
    assert len(lineages) == 2 and lineage in lineages
    # The server's artefacts hold the public lineage only, never a silo's secret.
    secret = files[1]["generators"]["noise"][200:264]  # inside the MT19937 words
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_the_checkpoint_carries_the_lineage_and_older_checkpoints_still_load(tmp_path):
    from fl_app.checkpointing import checkpoint_bytes, load_checkpoint

    cfg = config(**{"output.run-dir": str(tmp_path)})
    arrays = Federation(cfg, tmp_path).global_model()
    lineage = new_lineage()
    point = load_checkpoint(checkpoint_bytes(2, arrays, cfg, None, lineage), cfg, "x", None)
    assert point.round == 2 and point.lineage == lineage
    older = load_checkpoint(checkpoint_bytes(2, arrays, cfg), cfg, "x", None)
    assert older.lineage is None  # resuming it starts a new lineage (silos start afresh)


def test_the_state_file_is_private_atomic_and_a_corrupt_one_is_refused(tmp_path):
    store = SiloStateStore(tmp_path / "state")
    lineage = new_lineage()
    fresh = store.load(lineage, "p0")
    torch.randn(10, generator=fresh.noise)
    path = store.save(fresh)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
    again = store.load(lineage, "p0")
    assert torch.equal(torch.randn(5, generator=again.noise), torch.randn(5, generator=fresh.noise))
    path.write_text("{not json")
    with pytest.raises(ValueError, match=rf"silo state file {path} is unreadable"):
        store.load(lineage, "p0")
