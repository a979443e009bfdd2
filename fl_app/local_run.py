"""Run the app with ``flwr run`` in local simulation, isolated, and clean up after.

Used by the end-to-end tests and the benchmarks: each call gets its own ``FLWR_HOME``
and SuperLink ports, disables Flower's per-run dependency installation (the app's
dependencies are already installed; otherwise Flower would ``uv sync`` torch & co.
into a fresh venv per run), and stops the local SuperLink that ``flwr run`` leaves
behind, with every process under it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

PROJECT_DIR = Path(__file__).resolve().parent.parent


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "'" + value.replace("'", "") + "'"
    return repr(value)


def run_config_arg(overrides: dict[str, Any]) -> str:
    """``--run-config`` string for ``overrides`` (dotted keys, e.g. ``dp.central``)."""
    return " ".join(f"{k}={_toml_value(v)}" for k, v in overrides.items())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class SimulationRun:
    """Outcome of one ``flwr run``."""

    returncode: int
    output: str
    run_dir: Path | None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    #: The SuperLink's verdict (``flwr ls``), e.g. ``finished:completed`` or
    #: ``finished:failed``; ``flwr run --stream`` itself may exit 0 on a failed run.
    status: str = "unknown"
    status_details: str = ""
    #: The run's own (temporary, already removed) FLWR_HOME: it names the SuperLink this
    #: run started, so a caller can check that one is gone (:func:`superlinks_of`).
    flwr_home: Path | None = None

    @property
    def ok(self) -> bool:
        """True when the run completed."""
        return self.returncode == 0 and self.status == "finished:completed"

    def final(self, phase: str = "server") -> dict[str, Any]:
        """Metrics of the last round for ``phase`` (``server``, ``train``, ``evaluate``)."""
        rows = [r for r in self.metrics if r["phase"] == phase]
        return rows[-1] if rows else {}


def stop_process_tree(proc: psutil.Process, timeout: float = 10.0) -> None:
    """SIGTERM a process and its descendants, wait, then SIGKILL what is left."""
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=timeout)


def superlinks_of(flwr_home: Path) -> list[psutil.Process]:
    marker = str(flwr_home)
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if any("flower-superlink" in c for c in cmd[:2]) and any(marker in c for c in cmd):
            found.append(proc)
    return found


def run_simulation(
    overrides: dict[str, Any],
    *,
    num_supernodes: int = 10,
    run_dir: Path | None = None,
    timeout: float = 900.0,
    project_dir: Path = PROJECT_DIR,
    federation_config: dict[str, Any] | None = None,
    shell_command: str | None = None,
) -> SimulationRun:
    """``flwr run <project> --stream`` with ``overrides``; returns output and metrics.

    The run writes under ``run_dir`` (a temporary directory by default); its single
    sub-directory is the run directory. ``federation_config`` adds simulation settings
    to ``num-supernodes`` (e.g. ``{"client-resources-num-cpus": 1}``; see Flower's
    ``SimulationConfig``).

    ``shell_command`` runs that command line verbatim instead (in ``project_dir``, with
    ``bash -c``; e.g. README's command 1), under the same brand-new ``FLWR_HOME`` and
    free ports; it writes where its run config says (by default ``outputs/`` of
    ``project_dir``), and the newest run directory there is the one returned.
    """
    with tempfile.TemporaryDirectory(prefix="fedsilo-flwr-") as home:
        flwr_home = Path(home)
        if shell_command is not None:
            out_root = Path(run_dir) if run_dir else project_dir / "outputs"
        else:
            out_root = Path(run_dir) if run_dir else flwr_home / "runs"
        config = {**overrides, "output.run-dir": str(out_root)}
        env = {
            **os.environ,
            "FLWR_HOME": str(flwr_home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(_free_port()),
            "FLWR_LOCAL_CONTROL_API_PORT": str(_free_port()),
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        # `flwr ls --format json` colours its JSON when FORCE_COLOR is set (Jupyter sets it).
        for var in ("FORCE_COLOR", "CLICOLOR_FORCE"):
            env.pop(var, None)
        cmd = [
            "flwr", "run", str(project_dir), "--stream",
            "--run-config", run_config_arg(config),
            "--federation-config", run_config_arg(
                {"num-supernodes": num_supernodes, **(federation_config or {})}
            ),
        ]  # fmt: skip
        if shell_command is not None:
            cmd = ["bash", "-c", shell_command]
        before = set(out_root.glob("*/metrics.json")) if out_root.exists() else set()
        status: dict[str, Any] = {}
        try:
            _prestart_superlink(env)
            proc = subprocess.run(
                cmd,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                cwd=project_dir,
            )
            output, code = proc.stdout + proc.stderr, proc.returncode
            status = _last_run_status(env)
        except subprocess.TimeoutExpired as exc:
            output = f"{exc.stdout or ''}{exc.stderr or ''}\n[timeout after {timeout}s]"
            code = -1
        finally:
            for superlink in superlinks_of(flwr_home):
                stop_process_tree(superlink)
        runs = sorted(set(out_root.glob("*/metrics.json")) - before) if out_root.exists() else []
        metrics = json.loads(runs[-1].read_text()) if runs else []
        return SimulationRun(
            code,
            output,
            runs[-1].parent if runs else None,
            metrics,
            status=status.get("status", "unknown"),
            status_details=status.get("status-details", ""),
            flwr_home=flwr_home,
        )


#: Seconds the local SuperLink may take to start (flwr run itself allows 15 s, which a
#: busy machine can miss: its import alone can take longer).
SUPERLINK_START_TIMEOUT = 180.0
_PRESTART = (
    "import sys, flwr.cli.local_superlink as m; "
    "m.LOCAL_SUPERLINK_STARTUP_TIMEOUT = float(sys.argv[1]); m._start_local_superlink()"
)


def _prestart_superlink(env: dict[str, str]) -> None:
    """Start the run's local SuperLink the way ``flwr run`` would (same command, ports and
    FLWR_HOME, detached), but wait up to :data:`SUPERLINK_START_TIMEOUT` for it; ``flwr
    run`` then finds it running. On failure ``flwr run`` starts one itself as usual."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            [sys.executable, "-c", _PRESTART, str(SUPERLINK_START_TIMEOUT)],
            env=env, capture_output=True, text=True, check=False,
            timeout=SUPERLINK_START_TIMEOUT + 60,
        )  # fmt: skip


def _last_run_status(env: dict[str, str]) -> dict[str, Any]:
    """The newest run's entry of ``flwr ls --format json`` on the local SuperLink."""
    proc = subprocess.run(
        ["flwr", "ls", "--format", "json"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    try:
        runs = json.loads(proc.stdout).get("runs", [])
    except json.JSONDecodeError:
        return {}
    return max(runs, key=lambda r: r.get("pending-at", ""), default={})
