"""What runs inside the AzureML jobs: ``python -m adapters.azureml.runtime <role> [options]
-- <flower command>``.

The wrapper prepares what the Flower command needs, then runs it (forwarding SIGTERM, which
AzureML sends on cancel):

``superlink --port P [--stop-after-run] [--idle-timeout S]``
    starts ``flower-superlink``, waits for its HTTP API, publishes ``<private ip>:P`` as the
    MLflow tag :data:`~adapters.azureml.jobs.ADDRESS_TAG` on the job's own run (AzureML sets
    ``MLFLOW_RUN_ID``); with ``--stop-after-run`` it watches ``flwr ls`` and, once the
    federation's run has finished, publishes its status
    (:data:`~adapters.azureml.jobs.RUN_STATUS_TAG`) and stops the SuperLink, so the job ends;
    it also stops (exit 1) when no run arrives within ``--idle-timeout`` seconds, so a failed
    submission does not leave a SuperLink job running.
``supernode [--superlink-job NAME] [--secret NAME=URL ...] [--restart-max-delay S]``
    replaces ``{superlink}`` in the command with the address read from the SuperLink job's
    run (the run id of an AzureML job is its name) and ``{NAME}`` with the path of the Key
    Vault secret ``URL`` fetched with the job's managed identity; a SuperNode that exits
    because its SuperLink stopped after a finished run counts as success. With
    ``--restart-max-delay`` it supervises the SuperNode: one that exits while the
    federation's run goes on is restarted after 1, 2, 4 … ``S`` seconds, each restart
    logged (:func:`supervise`); it gives up after ten quick failures in a row, or when the
    SuperLink job has ended.
``serverapp [--superlink-job NAME | --address HOST:PORT] [--insecure] [--root-certificates F]``
    writes a Flower config with the SuperLink connection ``fedsilo``, runs ``flwr run``, and
    exits non-zero unless the SuperLink reports the run ``finished:completed`` (``flwr run
    --stream`` itself may exit 0 on a failed run).

The MLflow tracking URI is ``FEDSILO_MLFLOW_TRACKING_URI`` when set (silos in other
workspaces), else MLflow's default (AzureML points it at the job's workspace).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from adapters.azureml.jobs import ADDRESS_TAG, RUN_STATUS_TAG
from adapters.federation.flower import wait_http_ok, write_flower_config

logger = logging.getLogger("fedsilo.azureml.runtime")

TRACKING_URI_ENV = "FEDSILO_MLFLOW_TRACKING_URI"
_POLL_S = 10.0
_KEY_VAULT_API = "7.4"


# --------------------------------------------------------------------------- Flower config


def substitute(command: Sequence[str], values: Mapping[str, str]) -> list[str]:
    """Replace ``{name}`` in every argument of ``command`` with ``values[name]``."""
    out = []
    for arg in command:
        for name, value in values.items():
            arg = arg.replace("{" + name + "}", value)
        out.append(arg)
    return out


# --------------------------------------------------------------------------- discovery


def private_ip() -> str:
    """This machine's address on its primary network (what other computes connect to)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("10.255.255.255", 1))  # no packet is sent for a UDP connect
            ip = sock.getsockname()[0]
        except OSError:
            ip = "127.0.0.1"
    if ip.startswith("127."):
        with contextlib.suppress(OSError):
            ip = socket.gethostbyname(socket.gethostname())
    return ip


def tracking_client(tracking_uri: str | None = None) -> Any:
    """An ``mlflow.MlflowClient`` on ``tracking_uri`` / ``FEDSILO_MLFLOW_TRACKING_URI`` /
    MLflow's default."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri or os.environ.get(TRACKING_URI_ENV) or None)


def publish_tags(client: Any, tags: Mapping[str, str], run_id: str | None = None) -> None:
    """Set ``tags`` on ``run_id`` (default: this AzureML job's run, ``MLFLOW_RUN_ID``)."""
    run_id = run_id or os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        raise RuntimeError(
            "MLFLOW_RUN_ID is not set: the SuperLink must run as an AzureML job (which sets it) "
            "to publish its address; or use network mode 'existing'"
        )
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    logger.info("published %s on run %s", dict(tags), run_id)


def _run_tags(client: Any, run_id: str) -> tuple[dict[str, str], str] | None:
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    return dict(run.data.tags), str(run.info.status)


def wait_for_address(
    client: Any,
    superlink_run: str,
    timeout: float,
    *,
    poll: float = _POLL_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Poll the SuperLink job's run until it carries :data:`ADDRESS_TAG`; return it."""
    deadline = clock() + timeout
    while True:
        found = _run_tags(client, superlink_run)
        if found is not None:
            tags, status = found
            if tags.get(ADDRESS_TAG):
                logger.info("SuperLink of %s is at %s", superlink_run, tags[ADDRESS_TAG])
                return tags[ADDRESS_TAG]
            if status in ("FAILED", "KILLED", "FINISHED"):
                raise RuntimeError(
                    f"SuperLink job {superlink_run} ended ({status}) without publishing its "
                    f"address; see its logs (fedsilo logs SPEC --job superlink)"
                )
        if clock() >= deadline:
            raise TimeoutError(
                f"SuperLink job {superlink_run} did not publish its address ({ADDRESS_TAG}) "
                f"within {timeout:.0f}s; is it queued on its compute? Raise "
                "network.discovery_timeout or check the job"
            )
        sleep(poll)


def run_finished(client: Any, superlink_run: str) -> str | None:
    """The Flower run status the SuperLink job published when the run ended, if any."""
    found = _run_tags(client, superlink_run)
    return found[0].get(RUN_STATUS_TAG) if found else None


def superlink_ended(client: Any, superlink_run: str) -> str | None:
    """Why a SuperNode of this federation need not be restarted: the run finished, or the
    SuperLink job itself ended; None while it runs."""
    found = _run_tags(client, superlink_run)
    if found is None:
        return None
    tags, status = found
    if tags.get(RUN_STATUS_TAG):
        return f"the federation's run ended ({tags[RUN_STATUS_TAG]})"
    if status in ("FAILED", "KILLED", "FINISHED"):
        return f"the SuperLink job {superlink_run} ended ({status})"
    return None


# --------------------------------------------------------------------------- secrets


def fetch_secret(url: str, dest: Path, credential: Any = None) -> Path:
    """Download the Key Vault secret ``url`` into ``dest`` (mode 0600) with the job's managed
    identity (``DEFAULT_IDENTITY_CLIENT_ID``, set by AzureML) or ``credential``."""
    if credential is None:
        from azure.identity import DefaultAzureCredential

        client_id = os.environ.get("DEFAULT_IDENTITY_CLIENT_ID") or os.environ.get(
            "AZURE_CLIENT_ID"
        )
        credential = DefaultAzureCredential(managed_identity_client_id=client_id)
    host = urlsplit(url).hostname or ""
    suffix = host.split(".vault.", 1)[-1]
    token = credential.get_token(f"https://vault.{suffix}/.default").token
    request = urllib.request.Request(
        f"{url.rstrip('/')}?api-version={_KEY_VAULT_API}",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        value = json.load(response)["value"]
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(value)
    logger.info("fetched secret %s into %s", url.split("?")[0], dest)
    return dest


def _fetch_secrets(pairs: Sequence[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    if not pairs:
        return values
    folder = Path(tempfile.mkdtemp(prefix="fedsilo-secrets-"))
    for pair in pairs:
        name, sep, url = pair.partition("=")
        if not sep:
            raise SystemExit(f"--secret wants NAME=URL, got {pair!r}")
        values[name] = str(fetch_secret(url, folder / name))
    return values


# --------------------------------------------------------------------------- processes


def run_child(command: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    """Run ``command``, forwarding SIGTERM/SIGINT to it; return its exit code."""
    logger.info("running: %s", " ".join(command))
    proc = subprocess.Popen(list(command), env=dict(env) if env is not None else None)

    def forward(signum: int, _frame: Any) -> None:
        proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def supervise(
    command: Sequence[str],
    policy: Any,
    *,
    ended: Callable[[], str | None] = lambda: None,
    env: Mapping[str, str] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Run ``command`` and restart it whenever it exits, after ``policy``'s back-off
    (:class:`adapters.supernode.RestartPolicy`), until it exits 0, SIGTERM/SIGINT arrives
    (forwarded, as :func:`run_child`), ``ended()`` names a reason to stop (the federation's
    SuperLink job ended), or ``policy.give_up_after`` quick failures in a row. Returns the
    last exit code."""
    stopping: list[int] = []
    proc: list[subprocess.Popen] = []

    def forward(signum: int, _frame: Any) -> None:
        stopping.append(signum)
        if proc and proc[-1].poll() is None:
            proc[-1].send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    failures = restarts = 0
    try:
        while True:
            started = clock()
            logger.info("running: %s", " ".join(command))
            proc.append(subprocess.Popen(list(command), env=dict(env) if env is not None else None))
            code = proc[-1].wait()
            ran = clock() - started
            if code == 0 or stopping:
                return code
            reason = ended()
            if reason:
                logger.info("SuperNode exited (code %d); not restarted: %s", code, reason)
                return code
            failures = policy.consecutive(failures, ran)
            if failures >= policy.give_up_after:
                logger.error(
                    "SuperNode exited (code %d) %d times in a row within %.0fs of starting; "
                    "giving up (see the log above for why it cannot start)",
                    code, failures, policy.healthy_after,
                )  # fmt: skip
                return code
            restarts += 1
            delay = policy.delay(failures)
            logger.warning(
                "SuperNode exited with code %d after %.1fs; restart %d in %.0fs",
                code, ran, restarts, delay,
            )  # fmt: skip
            sleep(delay)
            if stopping:
                return code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _flwr_env(flwr_home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }


# --------------------------------------------------------------------------- roles


def superlink(args: argparse.Namespace, command: list[str]) -> int:
    """Run the SuperLink, publish its address, optionally stop it after the run."""
    import psutil

    from fl_app.local_run import _last_run_status, stop_process_tree

    client = tracking_client()
    proc = subprocess.Popen(command)

    def stop(signum: int, _frame: Any) -> None:  # AzureML cancels with SIGTERM
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    home = Path(tempfile.mkdtemp(prefix="fedsilo-azureml-flwr-"))
    try:
        wait_http_ok(f"http://127.0.0.1:{args.port}/health", proc)
        publish_tags(client, {ADDRESS_TAG: f"{private_ip()}:{args.port}"})
        if not args.stop_after_run:
            return proc.wait()
        env = _flwr_env(home)
        write_flower_config(home, f"127.0.0.1:{args.port}")
        started = time.monotonic()
        while proc.poll() is None:
            status = _last_run_status(env).get("status", "")
            if not status and time.monotonic() - started > args.idle_timeout:
                logger.error(
                    "no run was submitted within %.0fs; stopping the SuperLink (is the "
                    "ServerApp submission job failing or queued?)", args.idle_timeout,
                )  # fmt: skip
                stop_process_tree(psutil.Process(proc.pid))
                return 1
            if status.startswith("finished"):
                publish_tags(client, {RUN_STATUS_TAG: status})
                logger.info("run %s; stopping the SuperLink", status)
                stop_process_tree(psutil.Process(proc.pid))
                return 0
            time.sleep(args.poll)
        return proc.returncode
    finally:
        if proc.poll() is None:
            stop_process_tree(psutil.Process(proc.pid))
        shutil.rmtree(home, ignore_errors=True)


def supernode(args: argparse.Namespace, command: list[str]) -> int:
    """Resolve the SuperLink address and secrets, then run the SuperNode."""
    values = _fetch_secrets(args.secret)
    client = tracking_client() if args.superlink_job else None
    if args.superlink_job:
        values["superlink"] = wait_for_address(client, args.superlink_job, args.timeout)
    if args.restart_max_delay is None:
        code = run_child(substitute(command, values))
    else:
        from adapters.supernode import RestartPolicy

        policy = RestartPolicy(maximum=max(1.0, args.restart_max_delay))
        ended = (
            (lambda: superlink_ended(client, args.superlink_job))
            if args.superlink_job
            else (lambda: None)
        )
        code = supervise(substitute(command, values), policy, ended=ended)
    if code != 0 and args.superlink_job:
        status = run_finished(client, args.superlink_job)
        if status:
            logger.info("the SuperLink stopped after the run ended (%s); SuperNode done", status)
            return 0
    return code


def serverapp(args: argparse.Namespace, command: list[str]) -> int:
    """Submit the Flower run to the SuperLink and fail unless it completes."""
    from fl_app.local_run import _last_run_status

    values = _fetch_secrets(args.secret)
    if args.address:
        address = args.address
    elif args.superlink_job:
        address = wait_for_address(tracking_client(), args.superlink_job, args.timeout)
    else:
        raise SystemExit("serverapp needs --address or --superlink-job")
    root = substitute([args.root_certificates], values)[0] if args.root_certificates else None
    home = Path(tempfile.mkdtemp(prefix="fedsilo-azureml-flwr-"))
    env = _flwr_env(home)
    write_flower_config(home, address, insecure=args.insecure, root_certificates=root)
    try:
        code = run_child(substitute(command, values), env)
        status = _last_run_status(env)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    logger.info(
        "Flower run status: %s %s", status.get("status", "unknown"),
        status.get("status-details", ""),
    )  # fmt: skip
    if code == 0 and status.get("status") == "finished:completed":
        return 0
    return code or 1


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Split ``argv`` at ``--`` into wrapper options and the Flower command."""
    argv = list(argv)
    if "--" not in argv:
        raise SystemExit("usage: python -m adapters.azureml.runtime ROLE [options] -- COMMAND")
    cut = argv.index("--")
    own, command = argv[:cut], argv[cut + 1 :]
    if not command:
        raise SystemExit("no command after --")
    parser = argparse.ArgumentParser(prog="python -m adapters.azureml.runtime")
    roles = parser.add_subparsers(dest="role", required=True)
    sl = roles.add_parser("superlink")
    sl.add_argument("--port", type=int, required=True)
    sl.add_argument("--stop-after-run", action="store_true")
    sl.add_argument("--poll", type=float, default=15.0)
    sl.add_argument("--idle-timeout", type=float, default=3600.0)
    for name in ("supernode", "serverapp"):
        role = roles.add_parser(name)
        role.add_argument("--superlink-job")
        role.add_argument("--timeout", type=float, default=1800.0)
        role.add_argument("--secret", action="append", default=[], metavar="NAME=URL")
        if name == "supernode":
            role.add_argument("--restart-max-delay", type=float, metavar="SECONDS")
        if name == "serverapp":
            role.add_argument("--address")
            role.add_argument("--insecure", action="store_true")
            role.add_argument("--root-certificates")
    return parser.parse_args(own), command


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m adapters.azureml.runtime``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [fedsilo] %(message)s")
    args, command = parse_args(sys.argv[1:] if argv is None else argv)
    role = {"superlink": superlink, "supernode": supernode, "serverapp": serverapp}[args.role]
    return role(args, command)


if __name__ == "__main__":
    sys.exit(main())
