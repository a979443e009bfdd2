"""End to end: the local backend (adapters/local) runs a 3-silo spec with the real Flower
deployment runtime (flower-superlink + 3 flower-supernode + flwr run on loopback) and gets
exactly what the simulation (``fl_app.local_run.run_simulation``) gets with the same
overrides and 3 nodes."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from adapters.cli import app
from adapters.federation.spec import parse_spec
from adapters.local.run import LocalFederationError, SiloFailedError, run_local
from fl_app.audit import read_audit_log
from fl_app.local_run import _free_port, run_simulation
from fl_app.sinks import is_runtime_metric

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[3]
#: A local-only spec: no Azure section (the project run is the installed one, this repo).
SPEC = """
name: local-e2e
silos:
  - {name: silo-a}
  - {name: silo-b}
  - {name: silo-c}
task: breast-cancer
strategy: fedavg
run_config: {num-server-rounds: 2, seed: 7, training: {local-epochs: 2},
             sampling: {fraction-evaluate: 0.0}}
"""


def _processes_with(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if any(marker in part for part in cmdline):
            found.append(proc)
    return found


class _Ports:
    """Free ports, remembering them (and optionally handing out one that is taken)."""

    def __init__(self, taken_at: int | None = None) -> None:
        self.given: list[int] = []
        self.taken_at = taken_at
        self.blocker: socket.socket | None = None

    def __call__(self) -> int:
        if len(self.given) == self.taken_at:
            self.blocker = socket.socket()
            self.blocker.bind(("127.0.0.1", 0))
            self.blocker.listen()
            port = self.blocker.getsockname()[1]
        else:
            port = _free_port()
        self.given.append(port)
        return port


def _running_children(*words: str) -> list[list[str]]:
    """Command lines of this process's live descendants that mention any of ``words``
    (zombies, which another test may leave until reaped, and processes gone meanwhile
    are not running)."""
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                cmdline = p.cmdline()
                if any(w in part for part in cmdline for w in words):
                    found.append(cmdline)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def test_submit_local_matches_the_simulation(tmp_path):
    """``fedsilo submit SPEC --backend local`` (3 silos, 2 rounds) and the simulation with the
    same overrides and 3 nodes, side by side: every server metric of every round agrees."""
    spec_path = tmp_path / "federation.yaml"
    spec_path.write_text(SPEC)
    spec = parse_spec(SPEC)

    def submit_local():
        out = str(tmp_path / "local")
        return CliRunner().invoke(app, ["submit", str(spec_path), "-b", "local", "--run-dir", out])

    with ThreadPoolExecutor(max_workers=2) as pool:
        local = pool.submit(submit_local)
        simulated = pool.submit(
            run_simulation, spec.flower_overrides(), num_supernodes=3, run_dir=tmp_path / "sim"
        )
        result, sim_run = local.result(), simulated.result()

    assert result.exit_code == 0, result.output[-3000:]
    assert "status=finished:completed" in result.output
    # While it waited, the CLI showed the rounds as the ServerApp went (one line per change
    # when not on a terminal), then the end: 2 of 2 rounds done.
    waiting = [line for line in result.output.splitlines() if re.match(r"waiting \d+/2, ", line)]
    notes = [line.split(": ", 1)[1] for line in waiting]
    assert notes[-1] == "run finished:completed" and waiting[-1].startswith("waiting 2/2, ")
    assert notes[:-1] and set(notes[:-1]) <= {"round 1/2", "round 2/2"}, notes
    assert notes[:-1] == sorted(notes[:-1]) and len(set(notes)) == len(notes)
    assert sim_run.ok, sim_run.output[-3000:]
    (run_dir,) = [p.parent for p in (tmp_path / "local").glob("*/metrics.json")]
    assert (run_dir / "model.pt").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    local_server = [r for r in metrics if r["phase"] == "server"]
    sim_server = [r for r in sim_run.metrics if r["phase"] == "server"]
    print(  # shown with -rP; the issue report quotes these
        f"local backend accuracy={local_server[-1]['accuracy']!r} "
        f"simulation accuracy={sim_server[-1]['accuracy']!r}"
    )
    assert [r["round"] for r in local_server] == [0, 1, 2]
    assert local_server[-1]["accuracy"] == pytest.approx(sim_server[-1]["accuracy"], abs=1e-6)
    for ours, theirs in zip(local_server, sim_server, strict=True):
        for key, value in theirs.items():
            if not is_runtime_metric(key):  # wall-clock seconds differ between runtimes
                assert ours[key] == pytest.approx(value, abs=1e-6), (ours["round"], key)
    train = [r for r in metrics if r["phase"] == "train"]
    assert [r["replies"] for r in train] == [3, 3]
    assert f"accuracy={local_server[-1]['accuracy']:.4f}" in result.output
    # Everything the local backend started (children of this process) is gone.
    left = _running_children("flower", "flwr")
    assert not left, left
    # The submission was recorded: its status and every process's log are there afterwards.
    status = CliRunner().invoke(app, ["status", str(spec_path), "-b", "local"])
    assert status.exit_code == 0 and "finished:completed" in status.output, status.output
    log = CliRunner().invoke(app, ["logs", str(spec_path), "-b", "local", "--job", "silo-b"])
    assert log.exit_code == 0 and log.output.strip(), log.output
    done = CliRunner().invoke(app, ["cancel", str(spec_path), "-b", "local"])
    assert "already finished:completed" in done.output, done.output


def test_a_silo_that_cannot_start_is_named_and_everything_is_stopped(tmp_path):
    spec = parse_spec(SPEC)
    ports = _Ports(taken_at=2)  # 0: SuperLink, 1: silo-a, 2: silo-b's port is already taken
    try:
        with pytest.raises(SiloFailedError) as info:
            run_local(spec, run_dir=tmp_path, free_port=ports, startup_timeout=300)
    finally:
        if ports.blocker is not None:
            ports.blocker.close()
    assert info.value.silo == "silo-b"
    assert str(info.value).startswith("silo 'silo-b': flower-supernode exited with code")
    assert "Last lines of its log" in str(info.value)
    assert not _processes_with(f"127.0.0.1:{ports.given[0]}")


def test_ctrl_c_stops_every_process_started(tmp_path):
    spec = parse_spec(SPEC)
    ports = _Ports()

    def interrupt(message: str) -> None:
        if message.startswith("waiting for"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_local(spec, run_dir=tmp_path, free_port=ports, on_event=interrupt)
    assert len(ports.given) == 4  # the SuperLink and 3 silos were started
    assert not _processes_with(f"127.0.0.1:{ports.given[0]}")


def test_the_superlink_port_in_use_is_a_clear_error(tmp_path):
    spec = parse_spec(SPEC)
    ports = _Ports(taken_at=0)
    try:
        with pytest.raises(LocalFederationError, match="the SuperLink did not start"):
            run_local(spec, run_dir=tmp_path, free_port=ports, startup_timeout=120)
    finally:
        ports.blocker.close()
    assert len(ports.given) == 1  # no silo was started


#: An AzureML spec: the local backend runs it too (its Azure sections are validated, not used).
SPEC_FIVE = f"""
name: local-sigkill
orchestrator: {{subscription_id: s, resource_group: r, workspace: w, compute: c, code: {REPO_ROOT}}}
silos:
{chr(10).join(f"  - {{name: s{i}, compute: c}}" for i in range(5))}
task: breast-cancer
strategy: fedavg
run_config: {{num-server-rounds: 10, seed: 7, training.local-epochs: 1,
             sampling: {{fraction-evaluate: 0.0, min-evaluate-nodes: 0, min-available-nodes: 5,
                         min-train-nodes: 3, straggler-timeout: 10.0, round-timeout: 600.0}}}}
"""
KILLED = (3, 4)


def _supernode_tree(partition: int) -> list[psutil.Process]:
    """This test's SuperNode of ``partition`` with everything it started."""
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            cmd = proc.cmdline()
            if (
                "adapters.supernode" in cmd
                and "run" in cmd
                and any(a.startswith(f"partition-id={partition} ") for a in cmd)
            ):
                return [proc, *proc.children(recursive=True)]
    return []


def test_two_of_five_supernodes_sigkilled_mid_run_come_back_and_the_run_completes(tmp_path):
    """``fedsilo submit -b local``: 5 silos, min-train-nodes = 3. After round 1, the
    SuperNodes of silos s3 and s4 are SIGKILLed with everything they started. The backend
    restarts them (back-off, logged), the federation goes on with the 3 others, and the two
    rejoin a later round; the audit log (referenced by metrics.json's rounds) and
    silo_metrics.json show which rounds they missed."""
    spec_path = tmp_path / "federation.yaml"
    spec_path.write_text(SPEC_FIVE)
    out = tmp_path / "runs"

    def submit():
        return CliRunner().invoke(
            app, ["submit", str(spec_path), "-b", "local", "--run-dir", str(out)]
        )

    def round_done(n: int) -> bool:
        rows = [json.loads(p.read_text()) for p in out.glob("*/metrics.json")]
        return any(r["phase"] == "server" and r["round"] >= n for rs in rows for r in rs)

    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(submit)
        deadline = time.monotonic() + 900
        while not round_done(1):
            assert not future.done(), future.result().output[-3000:]
            assert time.monotonic() < deadline, "round 1 did not complete"
            time.sleep(0.5)
        killed = {p: _supernode_tree(p) for p in KILLED}
        assert all(killed.values()), killed
        for procs in killed.values():
            for proc in procs:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.send_signal(signal.SIGKILL)
        result = future.result()

    assert result.exit_code == 0, result.output[-3000:]
    assert "status=finished:completed" in result.output
    for p in KILLED:  # the backend restarted each killed SuperNode once
        assert f"silo 's{p}': SuperNode restarted 1× (exit codes -9)" in result.output
    (run_dir,) = [p.parent for p in out.glob("*/metrics.json")]
    entries = read_audit_log(run_dir / "audit.jsonl")
    assert entries[-1]["event"] == "run-end"
    trained = {
        e["round"]: {u["partition-id"] for u in e["updates"]}
        for e in entries if e["event"] == "train"
    }  # fmt: skip
    assert sorted(trained) == list(range(1, 11))
    missed = {p: [r for r, parts in trained.items() if p not in parts] for p in range(5)}
    print("rounds missed per partition:", missed)  # shown with -rP
    for p in range(5):
        if p not in KILLED:
            assert missed[p] == [], (p, trained)  # the survivors trained every round
    for p in KILLED:
        assert 1 not in missed[p] and missed[p], (p, trained)  # in round 1, then gone
        back = [r for r in trained if r > max(missed[p])]
        assert back, f"partition {p} never rejoined: {trained}"  # and back afterwards
    assert all(len(parts) >= 3 for parts in trained.values())  # quorum every round
    metrics = json.loads((run_dir / "metrics.json").read_text())
    replies = {r["round"]: r["replies"] for r in metrics if r["phase"] == "train"}
    assert replies == {r: len(parts) for r, parts in trained.items()}
    silo_rows = json.loads((run_dir / "silo_metrics.json").read_text())
    per_silo = {(r["round"], r["partition-id"]) for r in silo_rows if r["phase"] == "train"}
    assert per_silo == {(r, p) for r, parts in trained.items() for p in parts}
    left = _running_children("flower", "flwr", "adapters.supernode")
    assert not left, left
