"""Kits for external silos: what the owner of an on-premises (or other-cloud) silo runs.

A Flower SuperNode only dials *out* to the SuperLink, so an external silo needs outbound TLS
to the SuperLink's Fleet address and its node-authentication key, nothing else: no inbound
port, no VPN, no Azure account. :func:`write_silo_kit` writes, for one ``kind: external``
silo of a spec::

    <out>/start.sh          the SuperNode (warm: python -m adapters.supernode run -- ...;
                            or flower-supernode) --superlink <address> --root-certificates
                            certs/ca.crt --auth-supernode-private-key keys/<silo> ...,
                            restarted with back-off when it exits
    <out>/runtime/adapters  the warm SuperNode's code (adapters/supernode; needs only flwr)
    <out>/Dockerfile        python:3.11-slim + the app's dependencies + start.sh
    <out>/requirements.txt  the project's [project].dependencies
    <out>/certs/ca.crt      the CA that signed the SuperLink's certificate
    <out>/keys/<silo>       the SuperNode's private key (0600; mounted, never baked in)
    <out>/keys/<silo>.pub   its public key: the federation admin registers it with
                            `flwr supernode register keys/<silo>.pub`
    <out>/README.md         how to run it (bare metal or container) and what to send back

Certificates and keys come from a PKI directory written by ``fedsilo certs``
(:mod:`adapters.pki`; the silo's key pair is created there if missing) or from the spec's
``network.root_certificates`` / ``network.supernode_auth_keys`` files.
"""

from __future__ import annotations

import os
import shutil
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from adapters.azureml.spec import ExistingNetwork, FederationSpec, SpecError, parse_secret_ref
from adapters.federation.flower import node_config_arg
from fl_app.local_run import PROJECT_DIR

__all__ = ["SiloKit", "SiloKitError", "write_silo_kit"]

_PYTHON_IMAGE = "python:3.11-slim"


class SiloKitError(ValueError):
    """The kit cannot be written (wrong silo kind, missing certificate or key, ...)."""


@dataclass(frozen=True)
class SiloKit:
    """Paths of a written kit."""

    directory: Path
    start_script: Path
    dockerfile: Path
    root_cert: Path
    private_key: Path
    public_key: Path
    superlink: str
    node_config: str


def _requirements(spec: FederationSpec) -> list[str]:
    pyproject = (spec.project_dir() or PROJECT_DIR) / "pyproject.toml"
    try:
        project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise SiloKitError(
            f"orchestrator.code: cannot read the app's dependencies from {pyproject} ({exc}); "
            "point 'code' at the Flower project directory"
        ) from None
    return list(project.get("dependencies", []))


def _local_file(ref: str, what: str, spec: FederationSpec) -> Path:
    parsed = parse_secret_ref(ref)
    if not isinstance(parsed, str):
        raise SiloKitError(
            f"{what} is a Key Vault secret ({ref}); download it first (`az keyvault secret "
            f"download --id {ref} --file <file>`) and pass the PKI directory with --pki, or "
            "point the spec at the file"
        )
    path = spec.resolve_path(parsed)
    if not path.is_file():
        raise SiloKitError(f"{what}: {path} does not exist; run `fedsilo certs` or fix the path")
    return path


def _sources(spec: FederationSpec, silo: str, pki_dir: Path | None) -> tuple[Path, Path]:
    """(CA certificate, SuperNode private key) for ``silo``."""
    network = spec.network
    assert isinstance(network, ExistingNetwork)  # the spec requires it for external silos
    if pki_dir is not None:
        from adapters.pki import make_node_keys

        ca = Path(pki_dir) / "ca.crt"
        if not ca.is_file():
            raise SiloKitError(
                f"--pki {pki_dir}: no ca.crt there; create the federation's PKI with "
                f"`fedsilo certs {pki_dir} --host <superlink host>` first"
            )
        keys = make_node_keys(Path(pki_dir) / "nodes", [silo])[silo]
        return ca, keys.private
    if network.root_certificates is None:
        raise SiloKitError(
            "network.root_certificates is not set: external silos verify the SuperLink's TLS "
            "certificate with it; set it (file path) or pass --pki DIR (from `fedsilo certs`)"
        )
    if silo not in network.supernode_auth_keys:
        raise SiloKitError(
            f"network.supernode_auth_keys has no key for silo '{silo}'; add "
            f"'{silo}: <private key file>' or pass --pki DIR (from `fedsilo certs`)"
        )
    return (
        _local_file(network.root_certificates, "network.root_certificates", spec),
        _local_file(network.supernode_auth_keys[silo], f"network.supernode_auth_keys.{silo}", spec),
    )


def _public_key(private_key: Path, silo: str) -> bytes:
    try:
        key = serialization.load_ssh_private_key(private_key.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise SiloKitError(
            f"{private_key} is not an OpenSSH private key ({exc}); make one with "
            f"`fedsilo certs DIR --node {silo}`"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SiloKitError(
            f"{private_key} is not an elliptic-curve key, which Flower's node authentication "
            f"needs; make one with `fedsilo certs DIR --node {silo}`"
        )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return public + f" {silo}\n".encode()


_START = """#!/usr/bin/env bash
# SuperNode of silo '{silo}' in federation '{federation}' (written by `fedsilo silo-kit`).
# It dials OUT to the SuperLink over TLS and signs every request with this silo's node key;
# it opens no inbound port (the Runtime API below listens on loopback only).
# A SuperNode that exits with an error is restarted after 1, 2, 4 ... s (at most
# FEDSILO_RESTART_MAX_DELAY); each restart is logged; after 10 quick failures in a row the
# script gives up. SIGTERM / Ctrl-C stop it (and the SuperNode).
# Every default can be overridden from the environment:
#   FEDSILO_SUPERLINK    SuperLink Fleet API address host:port
#   FEDSILO_ROOT_CERT    CA certificate (PEM) that signed the SuperLink's certificate
#   FEDSILO_NODE_KEY     this silo's private key (OpenSSH, EC)
#   FEDSILO_NODE_CONFIG  node config (partition-id, num-partitions, ...)
#   FEDSILO_DATA         the silo's data (a path or URL), passed as node config data-source
#   FEDSILO_PORT         port of the SuperNode's local Runtime API (loopback)
#   FEDSILO_SUPERNODE_EXECUTOR  warm (ClientApps forked from a pre-imported process) or
#                        subprocess (Flower's default: one process per message)
#   FEDSILO_RESTART      1 = restart the SuperNode when it exits with an error, 0 = do not
#   FEDSILO_RESTART_MAX_DELAY  longest wait between restarts, in seconds
set -euo pipefail
KIT_DIR="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
SUPERLINK="${{FEDSILO_SUPERLINK:-{superlink}}}"
ROOT_CERT="${{FEDSILO_ROOT_CERT:-$KIT_DIR/certs/ca.crt}}"
NODE_KEY="${{FEDSILO_NODE_KEY:-$KIT_DIR/keys/{silo}}}"
NODE_CONFIG="${{FEDSILO_NODE_CONFIG:-{node_config}}}"
if [ -n "${{FEDSILO_DATA:-}}" ]; then
  NODE_CONFIG="$NODE_CONFIG data-source=\\"$FEDSILO_DATA\\""
fi
for file in "$ROOT_CERT" "$NODE_KEY"; do
  if [ ! -r "$file" ]; then
    echo "fedsilo silo-kit: cannot read $file (set FEDSILO_ROOT_CERT / FEDSILO_NODE_KEY)" >&2
    exit 2
  fi
done
ARGS=(--superlink "$SUPERLINK" --root-certificates "$ROOT_CERT"
      --auth-supernode-private-key "$NODE_KEY" --node-config "$NODE_CONFIG"
      --host 127.0.0.1 --port "${{FEDSILO_PORT:-9094}}")
EXECUTOR="${{FEDSILO_SUPERNODE_EXECUTOR:-{executor}}}"
case "$EXECUTOR" in
  warm)
    export PYTHONPATH="$KIT_DIR/runtime${{PYTHONPATH:+:$PYTHONPATH}}"
    CMD=(python -m adapters.supernode run -- "${{ARGS[@]}}") ;;
  subprocess) CMD=(flower-supernode "${{ARGS[@]}}") ;;
  *) echo "fedsilo silo-kit: FEDSILO_SUPERNODE_EXECUTOR must be warm or subprocess" >&2
     exit 2 ;;
esac
RESTART="${{FEDSILO_RESTART:-{restart}}}"
MAX_DELAY="${{FEDSILO_RESTART_MAX_DELAY:-{max_delay}}}"
log() {{ echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) silo '{silo}': $*" >&2; }}
child=""
stopping=0
trap 'stopping=1; if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null || true; fi' TERM INT
log "dialing $SUPERLINK (TLS, node authentication), $EXECUTOR SuperNode, node config: $NODE_CONFIG"
failures=0
restarts=0
while :; do
  started=$SECONDS
  "${{CMD[@]}}" &
  child=$!
  code=0
  wait "$child" || code=$?
  if [ "$stopping" = 1 ]; then
    code=0
    wait "$child" || code=$?
    exit "$code"
  fi
  if [ "$code" = 0 ] || [ "$RESTART" != 1 ]; then
    exit "$code"
  fi
  if [ $((SECONDS - started)) -ge 60 ]; then failures=0; fi
  failures=$((failures + 1))
  if [ "$failures" -ge 10 ]; then
    log "SuperNode exited with code $code $failures times in a row; giving up"
    exit "$code"
  fi
  delay=$((1 << (failures - 1)))
  if [ "$delay" -gt "$MAX_DELAY" ]; then delay=$MAX_DELAY; fi
  restarts=$((restarts + 1))
  ran=$((SECONDS - started))
  log "SuperNode exited with code $code after ${{ran}}s; restart $restarts in ${{delay}}s"
  sleep "$delay" &
  child=$!
  wait "$child" || true
  if [ "$stopping" = 1 ]; then exit "$code"; fi
done
"""

_DOCKERFILE = """# SuperNode image of silo '{silo}', federation '{federation}' (`fedsilo silo-kit`).
#   docker build -t fedsilo-{silo} .
#   docker run --rm -v "$PWD/keys:/kit/keys:ro" -v /path/to/data:/data:ro \\
#     -e FEDSILO_DATA=/data fedsilo-{silo}
# The private key is mounted at run time, never copied into the image.
FROM {image}
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 \\
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 MLFLOW_DISABLE_TELEMETRY=true
COPY requirements.txt /kit/requirements.txt
RUN pip install -r /kit/requirements.txt \\
 && useradd --create-home --uid 10001 supernode
COPY --chmod=0755 start.sh /kit/start.sh
COPY runtime /kit/runtime
COPY certs/ca.crt /kit/certs/ca.crt
USER supernode
WORKDIR /home/supernode
ENTRYPOINT ["/kit/start.sh"]
"""

_README = """# Silo kit: `{silo}` in federation `{federation}`

This directory is everything the owner of silo `{silo}` needs to join the federation. The
SuperNode dials **out** to the SuperLink at `{superlink}` over TLS and authenticates with this
silo's key: open outbound TCP to that address; nothing inbound.

1. Send `keys/{silo}.pub` (the public key, not secret) to the federation's administrator,
   who registers it: `flwr supernode register keys/{silo}.pub <federation connection>`.
   The SuperLink refuses SuperNodes whose key is not registered.
2. Run the SuperNode, either
   - on a machine with Python 3.11: `pip install -r requirements.txt && ./start.sh`, or
   - in a container: `docker build -t fedsilo-{silo} .` then
     `docker run --rm -v "$PWD/keys:/kit/keys:ro" -v /path/to/data:/data:ro \\
      -e FEDSILO_DATA=/data fedsilo-{silo}`.
3. Leave it running: it trains whenever the federation runs, and reconnects on its own;
   `start.sh` restarts a SuperNode that dies (after 1, 2, 4 … s, each restart logged).

`keys/{silo}` is this silo's private key: keep it on this machine (mode 0600), never send it.
Node config: `{node_config}` (override with `FEDSILO_NODE_CONFIG`); see the top of `start.sh`
for the other variables.
"""


def _write(path: Path, text: str | bytes, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode() if isinstance(text, str) else text
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, mode)
    return path


def _copy_runtime(dest: Path) -> None:
    """The warm SuperNode's code (``adapters/supernode``, which imports only Flower and the
    standard library) into ``dest``, importable as ``adapters.supernode``."""
    import adapters.supernode

    source = Path(adapters.supernode.__file__).parent
    target = dest / "adapters"
    shutil.rmtree(target, ignore_errors=True)
    (target / "supernode").mkdir(parents=True)
    _write(target / "__init__.py", '"""The warm SuperNode of a fedsilo silo kit."""\n')
    for path in sorted(source.glob("*.py")):
        shutil.copyfile(path, target / "supernode" / path.name)


def write_silo_kit(
    spec: FederationSpec, silo_name: str, out: str | Path, *, pki_dir: str | Path | None = None
) -> SiloKit:
    """Write the kit of external silo ``silo_name`` into ``out`` (see the module docstring).

    Raises:
        SiloKitError: the silo is unknown or not external, or its certificate / key is missing.
    """
    try:
        silo = spec.silo(silo_name)
    except KeyError as exc:
        raise SiloKitError(str(exc.args[0])) from None
    if silo.kind != "external":
        raise SiloKitError(
            f"silo '{silo_name}' is kind '{silo.kind}': AzureML runs its SuperNode. Kits are "
            "for silos outside Azure; set kind: external for it in the spec"
        )
    network = spec.network
    if not isinstance(network, ExistingNetwork):  # the spec validation guarantees it
        raise SpecError("external silos need network mode 'existing'")
    ca, key = _sources(spec, silo_name, Path(pki_dir) if pki_dir is not None else None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    node_config = node_config_arg(silo.node_config)
    fields = {
        "silo": silo_name,
        "federation": spec.name,
        "superlink": network.address,
        "node_config": node_config,
        "image": _PYTHON_IMAGE,
        "executor": spec.supernode.executor,
        "restart": int(spec.supernode.restart),
        "max_delay": max(1, int(spec.supernode.restart_max_delay)),
    }
    root_cert = out / "certs" / "ca.crt"
    root_cert.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ca, root_cert)
    private_key = _write(out / "keys" / silo_name, key.read_bytes(), 0o600)
    public_key = _write(out / "keys" / f"{silo_name}.pub", _public_key(key, silo_name))
    _copy_runtime(out / "runtime")
    start = _write(out / "start.sh", _START.format(**fields), 0o755)
    start.chmod(start.stat().st_mode | stat.S_IXUSR)
    dockerfile = _write(out / "Dockerfile", _DOCKERFILE.format(**fields))
    _write(out / "requirements.txt", "\n".join(_requirements(spec)) + "\n")
    _write(out / "README.md", _README.format(**fields))
    return SiloKit(
        out, start, dockerfile, root_cert, private_key, public_key, network.address, node_config
    )
