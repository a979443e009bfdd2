"""``fedsilo silo-kit``: what the owner of an external silo runs. Unit tests of the kit's
files, and one end-to-end run: two kits' start scripts join a local SuperLink that requires
TLS and node authentication, and train one round."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from azureml_testkit import REPO_ROOT
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from adapters.azureml.silo_kit import SiloKitError, write_silo_kit
from adapters.azureml.spec import load_spec
from adapters.cli import app
from adapters.local.run import LocalSecurity, run_local
from adapters.pki import make_pki

SPEC = """
name: kit-test
orchestrator: {{subscription_id: s, resource_group: r, workspace: w, compute: c, code: {code}}}
silos:
  - {{name: silo-a, kind: external}}
  - {{name: silo-b, kind: external}}
{third}task: breast-cancer
run_config: {{num-server-rounds: 1, training.local-epochs: 1, sampling.fraction-evaluate: 0.0,
              sampling.min-available-nodes: 2, sampling.min-train-nodes: 2,
              sampling.min-evaluate-nodes: 0}}
network:
  mode: existing
  address: {address}
  root_certificates: {root}
  supernode_auth_keys: {{silo-a: pki/nodes/silo-a{extra_keys}}}
"""


def _spec_file(tmp_path: Path, address: str = "superlink.example.org:9092", **kw: str) -> Path:
    fields = {
        "code": REPO_ROOT, "address": address, "root": "pki/ca.crt", "extra_keys": "",
        "third": "  - {name: silo-c, compute: cpu-c}\n",
    }  # fmt: skip
    fields.update(kw)
    path = tmp_path / "federation.yaml"
    path.write_text(SPEC.format(**fields))
    return path


def _ssh_public(private_key: Path) -> bytes:
    key = serialization.load_ssh_private_key(private_key.read_bytes(), password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )


def test_kit_from_the_spec_files(tmp_path):
    make_pki(tmp_path / "pki", nodes=["silo-a"])
    spec = load_spec(_spec_file(tmp_path))
    kit = write_silo_kit(spec, "silo-a", tmp_path / "kit")

    assert kit.root_cert.read_bytes() == (tmp_path / "pki" / "ca.crt").read_bytes()
    assert kit.private_key.read_bytes() == (tmp_path / "pki" / "nodes" / "silo-a").read_bytes()
    assert stat.S_IMODE(kit.private_key.stat().st_mode) == 0o600
    # The public key to register is the private key's.
    assert kit.public_key.read_bytes().split()[:2] == _ssh_public(kit.private_key).split()[:2]
    assert os.access(kit.start_script, os.X_OK)
    assert subprocess.run(["bash", "-n", str(kit.start_script)], check=False).returncode == 0
    script = kit.start_script.read_text()
    assert 'SUPERLINK="${FEDSILO_SUPERLINK:-superlink.example.org:9092}"' in script
    assert "--root-certificates" in script and "--auth-supernode-private-key" in script
    assert "--insecure" not in script
    assert 'NODE_CONFIG="${FEDSILO_NODE_CONFIG:-partition-id=0 num-partitions=3}"' in script
    dockerfile = kit.dockerfile.read_text()
    assert 'ENTRYPOINT ["/kit/start.sh"]' in dockerfile and "COPY certs/ca.crt" in dockerfile
    assert "COPY keys" not in dockerfile  # the private key is mounted, never baked in
    requirements = (kit.directory / "requirements.txt").read_text().splitlines()
    assert any(line.startswith("flwr") for line in requirements)
    assert "flwr supernode register keys/silo-a.pub" in (kit.directory / "README.md").read_text()


def test_start_script_names_a_missing_key(tmp_path):
    make_pki(tmp_path / "pki", nodes=["silo-a"])
    kit = write_silo_kit(load_spec(_spec_file(tmp_path)), "silo-a", tmp_path / "kit")
    env = {**os.environ, "FEDSILO_NODE_KEY": str(tmp_path / "nowhere")}
    proc = subprocess.run(
        ["bash", str(kit.start_script)], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2
    assert f"cannot read {tmp_path / 'nowhere'}" in proc.stderr


def test_start_script_restarts_a_supernode_that_exits_with_back_off(tmp_path):
    """The kit's supervision: a SuperNode (here a stand-in ``flower-supernode`` on PATH,
    the kit in Flower's default executor mode) that exits with an error is restarted after
    1 s, then 2 s, each restart logged; it stops when the SuperNode ends cleanly."""
    make_pki(tmp_path / "pki", nodes=["silo-a"])
    kit = write_silo_kit(load_spec(_spec_file(tmp_path)), "silo-a", tmp_path / "kit")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    runs = tmp_path / "runs"
    fake = bin_dir / "flower-supernode"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$@" >> {runs}\n'
        f'n=$(wc -l < {runs}); [ "$n" -ge 3 ] && exit 0; exit 137\n'
    )
    fake.chmod(0o755)
    env = {
        **os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FEDSILO_SUPERNODE_EXECUTOR": "subprocess",
    }  # fmt: skip
    started = time.monotonic()
    proc = subprocess.run(
        ["bash", str(kit.start_script)], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started >= 3.0  # waited 1 s, then 2 s
    calls = runs.read_text().splitlines()
    assert len(calls) == 3 and "--auth-supernode-private-key" in calls[0]
    assert "restart 1 in 1s" in proc.stderr and "restart 2 in 2s" in proc.stderr
    assert proc.stderr.count("SuperNode exited with code 137") == 2


def test_start_script_runs_the_warm_supernode_from_the_kit(tmp_path):
    """The default executor: the kit carries the warm SuperNode's code (runtime/adapters),
    which needs nothing but Flower, and start.sh runs it."""
    make_pki(tmp_path / "pki", nodes=["silo-a"])
    kit = write_silo_kit(load_spec(_spec_file(tmp_path)), "silo-a", tmp_path / "kit")
    script = kit.start_script.read_text()
    assert 'EXECUTOR="${FEDSILO_SUPERNODE_EXECUTOR:-warm}"' in script
    assert "python -m adapters.supernode run --" in script
    runtime = kit.directory / "runtime"
    assert (runtime / "adapters" / "supernode" / "executor.py").is_file()
    assert "COPY runtime /kit/runtime" in kit.dockerfile.read_text()
    # Importable from the kit alone (not from this checkout), with Flower only.
    proc = subprocess.run(
        [sys.executable, "-I", "-c",
         f"import sys; sys.path.insert(0, {str(runtime)!r}); import adapters.supernode.executor "
         "as e; print(e.__file__)"],
        capture_output=True, text=True, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith(str(runtime))


def test_cli_kit_from_a_pki_dir_makes_the_missing_node_key(tmp_path):
    make_pki(tmp_path / "pki", nodes=["silo-a"])
    spec_path = _spec_file(tmp_path)
    out = tmp_path / "kit-b"
    result = CliRunner().invoke(
        app,
        ["silo-kit", str(spec_path), "--silo", "silo-b", "--out", str(out),
         "--pki", str(tmp_path / "pki")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    made = tmp_path / "pki" / "nodes" / "silo-b"
    assert made.is_file()  # adapters.pki made the key pair, in the federation's PKI
    assert (out / "keys" / "silo-b").read_bytes() == made.read_bytes()
    assert "flwr supernode register" in result.output


@pytest.mark.parametrize(
    ("silo", "kw", "message"),
    [
        ("silo-c", {}, "silo 'silo-c' is kind 'azureml'"),
        ("silo-z", {}, "no silo 'silo-z'"),
        ("silo-b", {}, "network.supernode_auth_keys has no key for silo 'silo-b'"),
        ("silo-a", {"root": "https://kv-fed.vault.azure.net/secrets/ca"},
         "network.root_certificates is a Key Vault secret"),
        ("silo-a", {"root": "missing/ca.crt"}, "missing/ca.crt does not exist"),
    ],
)  # fmt: skip
def test_kit_errors_name_the_problem(tmp_path, silo, kw, message):
    make_pki(tmp_path / "pki", nodes=["silo-a"])
    spec = load_spec(_spec_file(tmp_path, **kw))
    with pytest.raises(SiloKitError) as info:
        write_silo_kit(spec, silo, tmp_path / "kit")
    assert message in str(info.value)
    result = CliRunner().invoke(
        app, ["silo-kit", str(_spec_file(tmp_path, **kw)), "--silo", silo, "--out", "x"]
    )
    assert result.exit_code == 2 and message.split("'")[0] in result.output


# --------------------------------------------------------------------------- end to end


@pytest.mark.e2e
def test_silo_kits_join_the_local_backend_over_tls_with_node_auth_and_train(tmp_path):
    """The local backend with TLS + SuperNode authentication (``LocalSecurity``): it starts
    the SuperLink and registers each silo's public key; the two external silos run nothing
    but their kits' ``start.sh``, dialing in with the CA certificate and their keys; one
    round of training."""
    pki = tmp_path / "pki"
    make_pki(pki, nodes=["silo-a", "silo-b"])
    # Two external silos; the spec's address is what a kit dials unless told otherwise (the
    # local backend hands its loopback SuperLink to the start script).
    spec = load_spec(
        _spec_file(tmp_path, address="127.0.0.1:9092", extra_keys=", silo-b: pki/nodes/silo-b",
                   third="")
    )  # fmt: skip
    kits = {s.name: write_silo_kit(spec, s.name, tmp_path / f"kit-{s.name}") for s in spec.silos}
    started: list[str] = []

    def start_kit(silo, superlink: str, port: int) -> list[str]:
        started.append(silo.name)
        return [
            "env", f"FEDSILO_SUPERLINK={superlink}", f"FEDSILO_PORT={port}",
            "bash", str(kits[silo.name].start_script),
        ]  # fmt: skip

    run = run_local(
        spec,
        run_dir=tmp_path / "runs",
        security=LocalSecurity(pki),
        external=start_kit,
        startup_timeout=600,
    )
    assert run.ok, run.output[-3000:] + run.superlink_log[-2000:]
    assert started == ["silo-a", "silo-b"]
    train = [r for r in run.metrics if r["phase"] == "train"]
    server = [r for r in run.metrics if r["phase"] == "server"]
    assert [r["replies"] for r in train] == [2]  # both kits trained
    assert [r["round"] for r in server] == [0, 1]
    assert 0.0 <= server[-1]["accuracy"] <= 1.0
    for name in ("silo-a", "silo-b"):  # each SuperNode ran from its kit, over TLS, with its key
        log = run.silo_logs[name]
        assert "(TLS, node authentication)" in log and "Receiving: train message" in log
    assert "https://127.0.0.1:" in run.superlink_log
    assert run.superlink_log.count("[Fleet.ActivateNode] Activated node_id=") == 2
    # Nothing the backend started (the kits' SuperNodes included) is left running.
    left = [
        p for p in psutil.Process().children(recursive=True)
        if any("flower" in part or "flwr" in part or "start.sh" in part for part in p.cmdline())
    ]  # fmt: skip
    assert not left, [p.cmdline() for p in left]
