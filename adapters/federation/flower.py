"""Flower command lines and client config shared by every launch backend: the
``--node-config`` / ``--run-config`` values of a spec, the ``flwr`` connection file, and
waiting for a SuperLink to answer."""

from __future__ import annotations

import json
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from adapters.federation.spec import FederationSpec

__all__ = [
    "FLWR_CONNECTION",
    "WARM_RUN_CONFIG",
    "flower_run_config",
    "node_config_arg",
    "run_config_arg",
    "wait_http_ok",
    "write_flower_config",
]

#: Name of the SuperLink connection written into the Flower config ``flwr run`` uses.
FLWR_CONNECTION = "fedsilo"
#: Run-config defaults of the warm runtime (``supernode.executor: warm``) unless the spec's
#: ``run_config`` sets them: the ServerApp polls for replies with back-off from 20 ms
#: instead of Flower's fixed 3 s between pulls.
WARM_RUN_CONFIG: dict[str, float] = {"sampling.reply-poll-interval": 0.02}


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def node_config_arg(node_config: Mapping[str, Any]) -> str:
    """``--node-config`` value: space-separated ``key=<TOML value>`` pairs."""
    return " ".join(f"{key}={_toml(value)}" for key, value in node_config.items())


def run_config_arg(overrides: Mapping[str, Any]) -> str:
    """``flwr run --run-config`` value (TOML strings in double quotes, shell-friendly)."""
    return node_config_arg(overrides)


def flower_run_config(spec: FederationSpec) -> dict[str, Any]:
    """The ``flwr run --run-config`` overrides of ``spec``: task, strategy, ``run_config``,
    and with the warm runtime :data:`WARM_RUN_CONFIG` for the keys the spec leaves unset."""
    overrides = spec.flower_overrides()
    if spec.supernode.executor == "warm":
        return {**WARM_RUN_CONFIG, **overrides}
    return overrides


def write_flower_config(
    flwr_home: Path,
    address: str,
    *,
    connection: str = FLWR_CONNECTION,
    insecure: bool = True,
    root_certificates: str | None = None,
) -> Path:
    """Write ``$FLWR_HOME/config.toml`` whose default SuperLink connection is ``connection``
    at ``address`` (the SuperLink's Control API ``host:port``); return its path."""
    lines = [
        "[superlink]",
        f'default = "{connection}"',
        "",
        f"[superlink.{connection}]",
        f'address = "{address}"',
    ]
    if insecure:
        lines.append("insecure = true")
    if root_certificates:
        lines.append(f"root-certificates = {json.dumps(str(root_certificates))}")
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def wait_http_ok(
    url: str, proc: subprocess.Popen, timeout: float = 120.0, *, cafile: Path | None = None
) -> None:
    """Wait until ``url`` answers 2xx (over TLS verified against ``cafile`` if given); fail
    early if ``proc`` exits."""
    context = ssl.create_default_context(cafile=str(cafile)) if cafile is not None else None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with code {proc.returncode} on start")
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:
                if 200 <= response.status < 300:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s")
