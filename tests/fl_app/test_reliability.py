"""Dropouts, retries, quorum, checkpoint/resume and the audit log, on the in-process grid
(the real ServerApp body and ClientApp; see fl_app.inprocess). A SIGKILLed server is a
real subprocess killed with SIGKILL mid-round."""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from fl_app.audit import read_audit_log, verify_audit_log
from fl_app.checkpointing import find_resume_point
from fl_app.client_app import app as client_app
from fl_app.config import LEGACY_KEYS, ConfigError, RunConfig
from fl_app.federation import run_federation
from fl_app.inprocess import InProcessGrid
from fl_app.reliability import QuorumError, RollCallError, StragglerGrid
from fl_app.stores import open_checkpoint_store
from tasks import get_task

ROOT = Path(__file__).resolve().parents[2]
SILOS = 4

BASE = {
    "task": "breast-cancer",
    "strategy": "fedavgm",
    "num-server-rounds": 3,
    "training.local-epochs": 1,
    "seed": 11,
    "sampling.fraction-evaluate": 0.0,
    "sampling.min-evaluate-nodes": 0,
    "sampling.min-train-nodes": 3,
    "sampling.min-available-nodes": 3,
}


def config(tmp: Path, **overrides) -> RunConfig:
    return RunConfig.from_flower({**BASE, "output.run-dir": str(tmp), **overrides})


def _round_of(msg: Message) -> int:
    config_record = msg.content.config_records.get("config")
    return int(config_record.get("server-round", 0)) if config_record is not None else 0


class FaultyGrid(InProcessGrid):
    """In-process grid with faults: ``dead[round]`` = partitions whose messages of that
    round never get a reply (a dead or stalled silo: send_and_receive times out on them);
    ``fail[(round, partition)]`` = times that silo's ClientApp raises before it works."""

    def __init__(self, cfg: RunConfig, dead=None, fail=None) -> None:
        self.dead = dead or {}
        self.fail = dict(fail or {})
        super().__init__(self._client, cfg.to_flower(), SILOS)

    def _pid(self, msg: Message) -> int:
        return int(self.contexts[msg.metadata.dst_node_id].node_config["partition-id"])

    def _client(self, msg, context):
        key = (_round_of(msg), int(context.node_config["partition-id"]))
        if msg.metadata.message_type == "train" and self.fail.get(key, 0) > 0:
            self.fail[key] -= 1
            raise RuntimeError("silo crashed")
        return client_app(msg, context)

    def send_and_receive(self, messages, *, timeout=None):
        alive = [m for m in messages if self._pid(m) not in self.dead.get(_round_of(m), ())]
        return super().send_and_receive(alive, timeout=timeout)


def _model(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "model.pt", weights_only=True)


def assert_same_model(a: Path, b: Path) -> None:
    ma, mb = _model(a), _model(b)
    assert ma.keys() == mb.keys()
    for key in ma:
        assert torch.equal(ma[key], mb[key]), key


def _trains(run_dir: Path) -> dict[int, dict]:
    return {e["round"]: e for e in read_audit_log(run_dir / "audit.jsonl") if e["event"] == "train"}


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory) -> Path:
    """The reference: the same federation without faults."""
    tmp = tmp_path_factory.mktemp("clean")
    cfg = config(tmp)
    _, run_dir = run_federation(FaultyGrid(cfg), cfg)
    return run_dir


def test_a_dead_silo_is_left_out_and_the_run_completes(tmp_path, clean_run):
    cfg = config(tmp_path)
    _, run_dir = run_federation(FaultyGrid(cfg, dead={2: {3}, 3: {3}}), cfg)
    trains = _trains(run_dir)
    assert [m["partition-id"] for m in trains[2]["missing"]] == [3]
    assert sorted(u["partition-id"] for u in trains[2]["updates"]) == [0, 1, 2]
    assert trains[3]["outcome"] == "aggregated" and len(trains[3]["updates"]) == 3
    assert not trains[1]["missing"] and len(trains[1]["updates"]) == 4
    assert verify_audit_log(run_dir / "audit.jsonl") > 0
    # Round 1 had everyone, so it matches the clean run; later rounds lack silo 3.
    clean = _trains(clean_run)
    assert [u["sha256"] for u in trains[1]["updates"]] == [u["sha256"] for u in clean[1]["updates"]]
    assert trains[2]["updates"][0]["sha256"] == clean[2]["updates"][0]["sha256"]


def test_when_every_silo_refuses_the_config_the_run_stops_with_their_reason(tmp_path):
    """The silos validate the run config they are handed; when all of them refuse it at
    the roll call (here: a key of the old flat layout), the run stops before round 1 with
    the silos' own reason, not later with "num_clients must be an integer ≥ 1; got 0"."""
    cfg = config(tmp_path)
    refused = {**cfg.to_flower(), "noise-multiplier": 1.0}
    grid = InProcessGrid(client_app, refused, SILOS)
    with pytest.raises(RollCallError) as exc:
        run_federation(grid, cfg)
    msg = str(exc.value)
    assert "every silo that answered (4 of 4) refused" in msg
    assert "nodes 1001, 1002, 1003, 1004: ConfigError:" in msg
    assert "run-config key 'noise-multiplier' is now 'dp.noise-multiplier'" in msg
    assert "num_clients" not in msg
    (run_dir,) = [p.parent for p in tmp_path.glob("*/audit.jsonl")]
    (aborted,) = [e for e in read_audit_log(run_dir / "audit.jsonl") if e["event"] == "run-aborted"]
    assert aborted["round"] == 0 and "dp.noise-multiplier" in aborted["reason"]
    assert verify_audit_log(run_dir / "audit.jsonl") > 0


def test_a_retried_silo_sends_the_update_it_would_have_sent(tmp_path, clean_run):
    cfg = config(tmp_path, **{"sampling.min-train-nodes": 4, "sampling.min-available-nodes": 4,
                              "sampling.round-retries": 2})  # fmt: skip
    _, run_dir = run_federation(FaultyGrid(cfg, fail={(2, 1): 1}), cfg)
    round2 = _trains(run_dir)[2]
    assert round2["retries"] == 1
    assert [s["partition-id"] for s in round2["retried"]] == [1]  # whom the retry went to
    assert _trains(run_dir)[1]["retried"] == []
    assert len(round2["updates"]) == 4 and not round2["missing"]
    # Training is seeded by (seed, partition, round): the retried round, and the model,
    # are bit-identical to the run without the crash.
    assert_same_model(run_dir, clean_run)


def test_below_quorum_the_run_stops_naming_the_missing_silos_then_resumes(tmp_path, clean_run):
    cfg = config(tmp_path, **{"sampling.round-retries": 1})
    with pytest.raises(QuorumError) as failed:
        run_federation(FaultyGrid(cfg, dead={2: {1, 3}}), cfg)
    message = str(failed.value)
    assert "round 2" in message and "sampling.min-train-nodes = 3" in message
    assert "(partition 1)" in message and "(partition 3)" in message
    (run_dir,) = tmp_path.iterdir()
    events = read_audit_log(run_dir / "audit.jsonl")
    assert events[-1]["event"] == "run-aborted"
    assert events[-2]["outcome"] == "quorum-not-reached" and events[-2]["retries"] == 1
    assert not (run_dir / "model.pt").exists()

    # The silos come back: resume = true continues after round 1 in the same run
    # directory and ends with the model of the uninterrupted run (FedAvgM momentum
    # restored from the checkpoint).
    resumed = config(tmp_path, **{"output.resume": True})
    _, same_dir = run_federation(FaultyGrid(resumed), resumed)
    assert same_dir == run_dir
    assert_same_model(run_dir, clean_run)
    starts = [e for e in read_audit_log(run_dir / "audit.jsonl") if e["event"] == "run-start"]
    assert [s["resumed-after-round"] for s in starts] == [0, 1]
    verify_audit_log(run_dir / "audit.jsonl")
    rounds = [r["round"] for r in json.loads((run_dir / "metrics.json").read_text())
              if r["phase"] == "server"]  # fmt: skip
    assert rounds == [0, 1, 2, 3]


CHILD = """
import json, os, signal, sys
from fl_app.client_app import app
from fl_app.config import RunConfig
from fl_app.federation import run_federation
from fl_app.inprocess import InProcessGrid

cfg = RunConfig.from_flower(json.loads(sys.argv[1]))
kill_round = int(sys.argv[2])
silos = int(sys.argv[3])

def client(msg, context):
    record = msg.content.config_records.get("config")
    if msg.metadata.message_type == "train" and record and record["server-round"] == kill_round:
        os.kill(os.getpid(), signal.SIGKILL)  # the server process dies mid-round
    return app(msg, context)

run_federation(InProcessGrid(client, cfg.to_flower(), silos), cfg)
"""


def _sigkill_and_resume(tmp_path: Path, settings: dict, silos: int = 4):
    """The uninterrupted run, then the same run SIGKILLed in round 3 and resumed:
    ``(reference run dir, resumed run dir, the resumed run's Result)``; the models equal."""
    reference = config(tmp_path / "reference", **settings)
    grid = InProcessGrid(client_app, reference.to_flower(), silos)
    _, reference_dir = run_federation(grid, reference)

    killed = config(tmp_path / "killed", **settings)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_DISABLE_TELEMETRY": "true"}
    child = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(killed.to_flower()), "3", str(silos)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert child.returncode == -9, child.stderr[-3000:]
    (run_dir,) = (tmp_path / "killed").iterdir()
    assert not (run_dir / "model.pt").exists()

    resumed = config(tmp_path / "killed", **{"output.resume": True}, **settings)
    point = find_resume_point(resumed)
    assert point is not None and point.round == 2 and point.run_dir == run_dir
    grid = InProcessGrid(client_app, resumed.to_flower(), silos)
    result, same_dir = run_federation(grid, resumed)
    assert same_dir == run_dir
    assert_same_model(run_dir, reference_dir)
    assert sorted(result.train_metrics_clientapp) == [3]
    return reference_dir, run_dir, result


def test_a_sigkilled_run_resumes_to_the_bit_identical_model(tmp_path):
    """FedAdam moments, DP-FedAvg's accountant, adaptive clip norm and noise generator,
    seeded sampling of 3 of 4 silos: all restored from the checkpoint."""
    settings = {
        "strategy": "fedadam",
        "dp.central": True,
        "dp.adaptive-clipping": True,
        "dp.noise-multiplier": 0.1,
        "robust.max-update-norm-ratio": 0.0,
        "sampling.fraction-train": 0.75,
        "sampling.min-train-nodes": 2,
        "sampling.min-available-nodes": 2,
        # Compared with a separate reference run: only reproducible DP noise can match (a
        # resume with secret noise: tests/fl_app/test_privacy_runs.py).
        "dp.reproducible-noise": True,
    }
    reference_dir, run_dir, _ = _sigkill_and_resume(tmp_path, settings)
    # FedAdam's float64 arithmetic does not change the model's dtypes (else every
    # float32 update after round 1 would be rejected and training would stop).
    assert all(not e["rejected"] and e["outcome"] == "aggregated"
               for e in _trains(reference_dir).values())  # fmt: skip
    # ε is the accountant's over all 3 rounds, as in the uninterrupted run.
    eps = [_trains(d)[3]["epsilon"] for d in (reference_dir, run_dir)]
    assert eps[0] == eps[1] and eps[0] > 0
    server = [
        [r for r in json.loads((d / "metrics.json").read_text()) if r["phase"] == "server"]
        for d in (reference_dir, run_dir)
    ]
    assert [r["round"] for r in server[1]] == [0, 1, 2, 3]
    assert [r["loss"] for r in server[0]] == [r["loss"] for r in server[1]]


def test_a_sigkilled_oort_run_resumes_to_the_same_selections_and_model(tmp_path):
    """Oort's per-silo history (losses, durations, rounds selected), the fairness guard's
    deadlines and the contribution totals behind the quality weights come back from the
    checkpoint: round 3 selects the same silos, weighs them the same, and the run's
    contribution scores are the uninterrupted run's."""
    settings = {
        "selection.policy": "oort",
        "contribution.method": "gtg-shapley",
        "contribution.quality-weights": True,
        "selection.fairness-rounds": 2,
        "simulation.speed-spread": 10.0,
        "sampling.fraction-train": 0.4,
        "sampling.min-train-nodes": 1,
        "sampling.min-available-nodes": 6,
    }
    reference_dir, run_dir, _ = _sigkill_and_resume(tmp_path, settings, silos=6)
    chosen = [
        {e["round"]: e["partitions"] for e in read_audit_log(d / "audit.jsonl")
         if e["event"] == "selection"}
        for d in (reference_dir, run_dir)
    ]  # fmt: skip
    assert chosen[0] == chosen[1] and len(chosen[0]) == 3
    scores = [(d / "contributions.csv").read_text() for d in (reference_dir, run_dir)]
    assert scores[0] == scores[1] and len(scores[0].splitlines()) == 1 + 6


def test_resume_refuses_other_settings_and_names_them(tmp_path, clean_run):
    cfg = config(tmp_path, **{"output.resume": True, "output.resume-from": str(clean_run),
                                           "training.learning-rate": 0.01})  # fmt: skip
    with pytest.raises(ConfigError, match=r"'training.learning-rate': 0.05 → 0.01"):
        find_resume_point(cfg)
    with pytest.raises(ConfigError, match="no checkpoint there"):
        find_resume_point(
            config(tmp_path, **{"output.resume": True, "output.resume-from": str(tmp_path)})
        )
    with pytest.raises(ConfigError, match=r"'output.resume-from'.*needs 'output.resume' = true"):
        config(tmp_path, **{"output.resume-from": str(clean_run)})
    # Transient keys (timeouts, retries, where to write) may change.
    ok = config(
        tmp_path,
        **{
            "output.resume": True,
            "output.resume-from": str(clean_run / "checkpoints"),
            "sampling.round-timeout": 10.0,
        },
    )
    assert find_resume_point(ok).round == 3


def _flat_layout(settings: dict) -> dict:
    """Settings as versions before the run config had sections stored them (flat keys)."""
    old = {new[0]: key for key, new in LEGACY_KEYS.items()}
    out = {}
    for key, value in settings.items():
        if key in ("dp.clip-norm", "robust.clip-norm"):
            assert out.setdefault("clip-norm", value) == value  # one key for both then
        else:
            out[old.get(key, key)] = value
    return out


def test_a_checkpoint_and_run_dir_of_the_flat_layout_still_resume(tmp_path, clean_run):
    """Checkpoints and run directories written before the run config had sections hold
    flat keys; they are read through LEGACY_KEYS, so the run resumes when values match,
    and a differing value is named by its dotted key."""
    old_run = tmp_path / "runs" / clean_run.name
    shutil.copytree(clean_run, old_run)
    store = open_checkpoint_store(str(old_run / "checkpoints"))
    blob = torch.load(io.BytesIO(store.load("latest.pt")), weights_only=True)
    blob["settings"] = _flat_layout(blob["settings"])
    assert "local-epochs" in blob["settings"] and "training.local-epochs" not in blob["settings"]
    buffer = io.BytesIO()
    torch.save(blob, buffer)
    store.save("latest.pt", buffer.getvalue())
    params = json.loads((old_run / "config.json").read_text())
    (old_run / "config.json").write_text(json.dumps(_flat_layout(params)))

    same = config(tmp_path / "runs", **{"output.resume": True})
    point = find_resume_point(same)  # found among the run dirs by its (flat) config.json
    assert point is not None and point.round == 3 and point.run_dir == old_run
    other = config(tmp_path, **{"output.resume": True, "output.resume-from": str(old_run),
                                "training.learning-rate": 0.01})  # fmt: skip
    with pytest.raises(ConfigError, match=r"'training.learning-rate': 0.05 → 0.01"):
        find_resume_point(other)


def test_a_run_written_before_a_key_existed_resumes_with_that_keys_default(tmp_path, clean_run):
    """A key added later (here robust.rule-params) is absent from an older run's
    checkpoint and config.json; it was at its default then, so the run resumes."""
    old_run = tmp_path / "runs" / clean_run.name
    shutil.copytree(clean_run, old_run)
    store = open_checkpoint_store(str(old_run / "checkpoints"))
    blob = torch.load(io.BytesIO(store.load("latest.pt")), weights_only=True)
    del blob["settings"]["robust.rule-params"]
    buffer = io.BytesIO()
    torch.save(blob, buffer)
    store.save("latest.pt", buffer.getvalue())
    params = json.loads((old_run / "config.json").read_text())
    del params["robust.rule-params"]
    (old_run / "config.json").write_text(json.dumps(params))

    point = find_resume_point(config(tmp_path / "runs", **{"output.resume": True}))
    assert point is not None and point.round == 3 and point.run_dir == old_run
    # The default fills in for the missing key, nothing else does: another value of a
    # key the old run did store is still named.
    other = config(tmp_path, **{"output.resume": True, "output.resume-from": str(old_run),
                                "training.local-epochs": 2})  # fmt: skip
    with pytest.raises(ConfigError, match=r"'training.local-epochs': 1 → 2"):
        find_resume_point(other)


def _format2(layers: list[tuple[str, dict]]) -> list[dict]:
    """Strategy state in checkpoint format 2's layout: a list of layers, outermost first,
    FedAvgM's attributes under "attr:<name>" (tagged values), DP-FedAvg's state dict
    under "state-dict" and generators under "generator:<name>"."""
    out = []
    for name, own in layers:
        state = {}
        for key, value in own.items():
            if isinstance(value, torch.Tensor) and value.dtype == torch.uint8:
                state[f"generator:{key}"] = value
            elif name == "DPFedAvg":
                state.setdefault("state-dict", {"kind": "dict", "value": {}})["value"][key] = value
            else:
                state[f"attr:{key}"] = value
        out.append({"class": name, "state": state})
    return out


def test_a_checkpoint_of_format_2_still_resumes(tmp_path, clean_run):
    """Format 2 held the strategy state as a list of layers keyed by attribute names; it
    is read into today's per-layer state_dict()s and the run resumes bit for bit."""
    cfg = config(tmp_path)
    with pytest.raises(QuorumError):
        run_federation(FaultyGrid(cfg, dead={2: {1, 3}}), cfg)
    (run_dir,) = tmp_path.iterdir()
    store = open_checkpoint_store(str(run_dir / "checkpoints"))
    blob = torch.load(io.BytesIO(store.load("latest.pt")), weights_only=True)
    assert blob["format"] == 3 and blob["round"] == 1
    nested, layers = blob["strategy"], []
    while nested is not None:
        layers.append((nested["class"], nested["state"]))
        nested = nested.get("inner")
    assert layers[-1][0] == "FedAvgM" and "momentum_vector" in layers[-1][1]
    blob["format"], blob["strategy"] = 2, _format2(layers)
    assert "attr:momentum_vector" in blob["strategy"][-1]["state"]
    buffer = io.BytesIO()
    torch.save(blob, buffer)
    store.save("latest.pt", buffer.getvalue())

    resumed = config(tmp_path, **{"output.resume": True})
    _, same_dir = run_federation(FaultyGrid(resumed), resumed)
    assert same_dir == run_dir
    assert_same_model(run_dir, clean_run)


def test_the_audit_log_is_a_hash_chain_that_detects_edits(tmp_path, clean_run):
    log = clean_run / "audit.jsonl"
    entries = read_audit_log(log)
    assert verify_audit_log(log) == len(entries)
    assert entries[0]["event"] == "run-start" and entries[-1]["event"] == "run-end"
    params = json.loads((clean_run / "config.json").read_text())
    assert {e["config-hash"] for e in entries} == {params["config-hash"]}
    assert params["fedsilo-version"] == importlib.metadata.version("fedsilo")
    lines = log.read_text().splitlines()
    edited = json.loads(lines[3])
    edited["time"] = "2000-01-01T00:00:00+00:00"
    copy = tmp_path / "audit.jsonl"
    copy.write_text("\n".join([*lines[:3], json.dumps(edited), *lines[4:]]) + "\n")
    with pytest.raises(ValueError, match=r"line 5 .* breaks the hash chain"):
        verify_audit_log(copy)
    copy.write_text("\n".join([*lines[:2], *lines[3:]]) + "\n")  # a line removed
    with pytest.raises(ValueError, match="line 3"):
        verify_audit_log(copy)


def test_oversized_and_malformed_replies_are_rejected_audited_and_the_run_goes_on(tmp_path):
    cfg = config(tmp_path, **{"num-server-rounds": 2, "robust.max-update-bytes": 200_000})

    def client(msg, context):
        reply = client_app(msg, context)
        pid, server_round = int(context.node_config["partition-id"]), _round_of(msg)
        if msg.metadata.message_type != "train":
            return reply
        if (pid, server_round) == (2, 1):  # a 300 kB record: over max-update-bytes
            reply.content["padding"] = ConfigRecord({"x": "x" * 300_000})
        if (pid, server_round) == (0, 2):  # NaN in the weights
            arrays = reply.content["arrays"]
            key = next(iter(arrays.keys()))
            bad = arrays[key].numpy().copy()
            bad.flat[0] = float("nan")
            arrays[key] = type(arrays[key])(bad)
        return reply

    _, run_dir = run_federation(InProcessGrid(client, cfg.to_flower(), SILOS), cfg)
    trains = _trains(run_dir)
    (oversized,) = trains[1]["oversized"]
    assert (
        oversized["partition-id"] == 2
        and "exceeds robust.max-update-bytes = 200000" in (oversized["reason"])
    )
    assert sorted(u["partition-id"] for u in trains[1]["updates"]) == [0, 1, 3]
    (rejected,) = trains[2]["rejected"]
    assert rejected["partition-id"] == 0 and "NaN or Inf" in rejected["reason"]
    assert trains[2]["outcome"] == "aggregated"
    assert (run_dir / "model.pt").is_file()


class SilentGrid(InProcessGrid):
    """Partition 3 never answers (its replies are withheld forever)."""

    def pull_messages(self, message_ids):
        ids = list(message_ids)
        silent = {
            k for k in ids
            if self.contexts[self._pending[k].metadata.dst_node_id].node_config["partition-id"]
            == 3
        }  # fmt: skip
        return super().pull_messages([k for k in ids if k not in silent])


def test_stragglers_are_cut_after_the_grace_once_the_quorum_is_in(tmp_path):
    import time

    cfg = config(tmp_path, **{"num-server-rounds": 1, "sampling.straggler-timeout": 0.2})
    grid = StragglerGrid(SilentGrid(client_app, cfg.to_flower(), SILOS), grace=0.2,
                         needed={"train": 3})  # fmt: skip
    arrays = ArrayRecord(get_task("breast-cancer").build_model().state_dict())
    messages = [
        Message(RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1})}),
                dst_node_id=node, message_type="train")
        for node in grid.get_node_ids()
    ]  # fmt: skip
    started = time.monotonic()
    replies = list(grid.send_and_receive(messages, timeout=120.0))
    waited = time.monotonic() - started
    assert sorted(int(r.content["meta"]["partition-id"]) for r in replies) == [0, 1, 2]
    assert waited < 60, waited  # cut by the grace, not by the 120 s timeout
    # With the run-config key: a silo that never answers costs the roll call and each
    # round the grace only. It never answered the roll call, so only its node id is known.
    _, run_dir = run_federation(SilentGrid(client_app, cfg.to_flower(), SILOS), cfg)
    (train,) = _trains(run_dir).values()
    assert train["missing"] == [{"node-id": 1004, "partition-id": None}]
    assert sorted(u["partition-id"] for u in train["updates"]) == [0, 1, 2]


class ServerCrash(BaseException):
    """The server process dies (as under SIGKILL: nothing of the app catches it)."""


class CrashingGrid(FaultyGrid):
    """The server dies as it is about to send round ``crash_round``'s train messages;
    the silos (this grid's node contexts, with their persistent state) live on."""

    def __init__(self, cfg: RunConfig, crash_round: int) -> None:
        super().__init__(cfg)
        self.crash_round = crash_round

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        if any(m.metadata.message_type == "train" and _round_of(m) == self.crash_round
               for m in messages):  # fmt: skip
            self.crash_round = None
            raise ServerCrash
        return super().send_and_receive(messages, timeout=timeout)


@pytest.mark.parametrize(
    "settings",
    [
        # One dense warm-up round, then EF21: the server's estimates of round 2 come back.
        {
            "strategy": "fedavg",
            "compression.method": "topk",
            "compression.topk-feedback": "ef21",
            "compression.topk-warmup-rounds": 1,
        },
        {"strategy": "cclip", "attack.kind": "rop", "attack.fraction": 0.25},
        # Warm-up of 4 rounds: rounds 3 and 4 update the direction estimate; with seed 1
        # a tracker started afresh on resume copies silo 3 there instead of silo 0.
        {
            "strategy": "robust-multikrum",
            "attack.kind": "mimic",
            "attack.fraction": 0.25,
            "attack.strength": 4,
            "seed": 1,
        },
        # Selection policies keep per-silo history (answers, losses, durations, back-off).
        {
            "selection.policy": "oort",
            "sampling.fraction-train": 0.5,
            "sampling.min-train-nodes": 2,
            "simulation.speed-spread": 10.0,
        },
        {
            "selection.policy": "availability",
            "simulation.dropout": 0.4,
            "seed": 2,
            "sampling.min-train-nodes": 1,
            "sampling.fraction-train": 0.5,
        },
    ],
    ids=["topk-ef21", "rop", "mimic", "oort", "availability-dropout"],
)
def test_a_run_resumed_after_round_2_ends_with_the_straight_runs_model(tmp_path, settings):
    """State kept between rounds by wrappers: EF21's per-silo estimates on the server
    (CompressedUpdates; the silos keep theirs), ROP's previous aggregate and Mimic's
    direction tracker (SimulatedAttack) come back from the checkpoint, and so does a
    selection policy's per-silo history (ParticipantSelection)."""
    settings = {**settings, "num-server-rounds": 4}
    straight = config(tmp_path / "straight", **settings)
    _, straight_dir = run_federation(FaultyGrid(straight), straight)

    crashed = config(tmp_path / "crashed", **settings)
    grid = CrashingGrid(crashed, crash_round=3)
    with pytest.raises(ServerCrash):
        run_federation(grid, crashed)
    resumed = config(tmp_path / "crashed", **{"output.resume": True}, **settings)
    assert find_resume_point(resumed).round == 2
    _, run_dir = run_federation(grid, resumed)
    assert_same_model(run_dir, straight_dir)
