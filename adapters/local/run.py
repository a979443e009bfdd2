"""Run a federation spec as local processes on loopback (the ``local`` backend's engine).

Any federation spec (the neutral one, or an AzureML spec, whose Azure sections are not used)
becomes one ``flower-superlink`` and one
``flower-supernode`` per silo (with the silo's node config), each on free 127.0.0.1 ports,
then ``flwr run <project> fedsilo --stream --run-config <spec's overrides + run-dir>``
against that SuperLink. Everything runs in the installed environment with Flower's runtime
dependency installation off, under a private ``FLWR_HOME``; every process started here is
stopped at the end, also on errors and Ctrl-C.

Each silo's SuperNode runs as the spec's ``supernode.executor`` says: ``warm`` (default;
:mod:`adapters.supernode`: ClientApps forked from a pre-imported process, prompt polling,
and ``sampling.reply-poll-interval`` for the ServerApp) or ``subprocess`` (Flower's default).

A silo whose SuperNode exits before the run raises :class:`SiloFailedError` naming the
silo, with the end of its log. During the run the SuperNodes are supervised
(``supernode.restart``, default on): one that exits is restarted after 1, 2, 4 … s (at
most ``supernode.restart_max_delay``), each restart logged and counted in
:attr:`LocalRun.restarts`; the federation goes on as long as ``sampling.min-train-nodes`` holds
(the ServerApp decides: it stops, naming the missing silos, only when the quorum is lost
beyond ``sampling.round-retries``), and the restarted silo joins the next round. With
``restart: false`` a SuperNode that exits during the run raises :class:`SiloFailedError`.

With ``security=LocalSecurity(pki_dir)`` the federation runs with TLS and SuperNode
authentication: :func:`adapters.pki.make_pki` creates (or reuses) a CA, the SuperLink's
certificate and one EC key pair per silo in ``pki_dir``; the SuperLink starts with
``--ssl-*`` and ``--enable-supernode-auth``; each silo's public key is registered with
``flwr supernode register`` before its SuperNode starts with
``--root-certificates`` and ``--auth-supernode-private-key``; ``flwr`` talks to the
SuperLink over TLS, verifying it against the CA. Silos listed in ``unregistered`` start
with a key the SuperLink was never told about: they must be refused (their exit codes are
in :attr:`LocalRun.refused`).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

from adapters.backends import BackendError
from adapters.federation.flower import (
    FLWR_CONNECTION,
    flower_run_config,
    node_config_arg,
    run_config_arg,
    wait_http_ok,
    write_flower_config,
)
from adapters.federation.spec import FederationSpec, SiloSpec
from adapters.supernode import RestartPolicy, supernode_command
from fl_app.local_run import (
    PROJECT_DIR,
    SimulationRun,
    _free_port,
    _last_run_status,
    stop_process_tree,
)
from fl_core.progress import Update

__all__ = ["LocalFederationError", "LocalRun", "LocalSecurity", "SiloFailedError", "run_local"]

logger = logging.getLogger(__name__)


class LocalFederationError(BackendError):
    """The local federation could not be started or run."""


class SiloFailedError(LocalFederationError):
    """A silo's SuperNode failed to start or died; ``silo`` names it."""

    def __init__(self, silo: str, message: str) -> None:
        super().__init__(message)
        self.silo = silo


@dataclass
class LocalRun(SimulationRun):
    """Outcome of a local-backend run: ``flwr run`` output, status, run dir, metrics, and
    the logs of the SuperLink and of each silo's SuperNode."""

    superlink_log: str = ""
    silo_logs: dict[str, str] = field(default_factory=dict)
    #: Exit codes of the ``unregistered`` silos' SuperNodes (None = still running).
    refused: dict[str, int | None] = field(default_factory=dict)
    #: Per silo, the SuperNode exits that were followed by a restart during the run:
    #: ``{"code": exit code, "after": seconds into the run}``.
    restarts: dict[str, list[dict[str, float]]] = field(default_factory=dict)


@dataclass(frozen=True)
class LocalSecurity:
    """TLS + SuperNode authentication for :func:`run_local`.

    Args:
        pki_dir: Where the CA, SuperLink certificate and node keys are (created if missing,
            see :mod:`adapters.pki`; the command line is ``fedsilo certs``).
        node_auth: Start the SuperLink with ``--enable-supernode-auth`` and register each
            silo's public key (TLS only if False).
        unregistered: Silos whose keys are deliberately not registered: their SuperNodes
            must be refused; they are neither waited for nor counted.
    """

    pki_dir: Path
    node_auth: bool = True
    unregistered: tuple[str, ...] = ()


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path
    log_file: IO[str]

    def log(self, tail: int | None = None) -> str:
        if not self.log_file.closed:
            self.log_file.flush()
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-tail:]) if tail else text


_ROUND_LINE = re.compile(r"\[ROUND (\d+)/(\d+)\]")


class _RoundWatch:
    """The round the ServerApp is in, from Flower's ``[ROUND k/N]`` lines in the streamed
    log of ``flwr run`` (reading only what was written since the last look)."""

    def __init__(self, log_path: Path) -> None:
        self.log_path, self.offset = log_path, 0
        self.current: tuple[int, int] | None = None

    def poll(self) -> tuple[int, int] | None:
        """The newest ``(k, N)`` seen so far, or ``None``."""
        with self.log_path.open("rb") as log:
            log.seek(self.offset)
            chunk = log.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits
        self.offset += len(complete)
        for match in _ROUND_LINE.finditer(complete.decode("utf-8", errors="replace")):
            self.current = (int(match.group(1)), int(match.group(2)))
        return self.current


def _start(
    name: str, cmd: list[str], env: dict[str, str], logs: Path, *, append: bool = False
) -> _Proc:
    log_path = logs / f"{name}.log"
    log_file = log_path.open("a" if append else "w", encoding="utf-8")
    popen = subprocess.Popen(
        cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    logger.info("started %s (pid %d): %s", name, popen.pid, " ".join(cmd))
    return _Proc(name, popen, log_path, log_file)


def _orphans_of(pid: int) -> list[psutil.Process]:
    """Processes Flower started for ``pid`` that may have outlived it: a SuperNode passes
    ``--parent-pid <pid>`` to its ``flower-superexec``, which keeps running (re-parented)
    when the SuperNode exits on an error, e.g. when the SuperLink refuses it."""
    found = []
    for candidate in psutil.process_iter(["cmdline"]):
        cmd = candidate.info.get("cmdline") or []
        if any(a == "--parent-pid" and b == str(pid) for a, b in itertools.pairwise(cmd)):
            found.append(candidate)
    return found


def _stop_all(procs: list[_Proc]) -> None:
    """SIGTERM every process tree at once (and what outlived its parent), wait, SIGKILL
    what is left."""

    def stop(proc: _Proc) -> None:
        orphans = _orphans_of(proc.popen.pid)
        with contextlib.suppress(psutil.NoSuchProcess):
            stop_process_tree(psutil.Process(proc.popen.pid))
        for orphan in orphans:
            stop_process_tree(orphan)
        with contextlib.suppress(Exception):
            proc.popen.wait(timeout=5)
        proc.log_file.close()

    if procs:
        with ThreadPoolExecutor(max_workers=len(procs)) as pool:
            list(pool.map(stop, procs))


def _online_nodes(env: dict[str, str]) -> int:
    try:
        proc = subprocess.run(
            ["flwr", "supernode", "list", "--format", "json"],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        stdout = proc.stdout
    except subprocess.TimeoutExpired as exc:  # a loaded machine: use what it printed
        out = exc.stdout or b""
        stdout = out.decode(errors="replace") if isinstance(out, bytes) else out
    try:
        nodes = json.loads(stdout).get("nodes", [])
    except json.JSONDecodeError:
        return 0
    return sum(1 for node in nodes if node.get("status") == "online")


@dataclass
class _Supervised:
    """A silo's SuperNode under supervision: its current process and restart history."""

    silo: SiloSpec
    command: Callable[[int], list[str]]  # free port -> the SuperNode's command
    proc: _Proc
    started: float
    failures: int = 0
    restart_at: float | None = None
    given_up: bool = False
    exits: list[dict[str, float]] = field(default_factory=list)


class _Supervisor:
    """Restarts SuperNodes that exit during the run, with :class:`RestartPolicy` back-off;
    :meth:`poll` is called about once a second by the run loop."""

    def __init__(
        self,
        silos: list[_Supervised],
        policy: RestartPolicy,
        start: Callable[[str, list[str]], _Proc],
        free_port: Callable[[], int],
        notify: Callable[[str], None],
    ) -> None:
        self.silos = silos
        self.policy = policy
        self.start = start
        self.free_port = free_port
        self.notify = notify
        self.t0 = time.monotonic()

    def _say(self, message: str, error: bool = False) -> None:
        logger.log(logging.ERROR if error else logging.WARNING, "%s", message)
        self.notify(message)

    def poll(self) -> None:
        now = time.monotonic()
        for entry in self.silos:
            if entry.given_up:
                continue
            if entry.restart_at is None:
                code = entry.proc.popen.poll()
                if code is None:
                    continue
                self._exited(entry, code, now)
            elif now >= entry.restart_at:
                entry.restart_at = None
                entry.started = now
                entry.proc = self.start(entry.silo.name, entry.command(self.free_port()))
                self._say(f"silo '{entry.silo.name}': SuperNode restarted")

    def _exited(self, entry: _Supervised, code: int, now: float) -> None:
        name = entry.silo.name
        _stop_all([entry.proc])  # what Flower started for it (SuperExec, ClientApp)
        entry.failures = self.policy.consecutive(entry.failures, now - entry.started)
        if entry.failures >= self.policy.give_up_after:
            entry.given_up = True
            self._say(
                f"silo '{name}': flower-supernode exited (code {code}) {entry.failures} times "
                f"in a row; not restarting it again. Last lines of its log "
                f"({entry.proc.log_path}):\n{entry.proc.log(25)}",
                error=True,
            )
            return
        delay = self.policy.delay(entry.failures)
        entry.exits.append({"code": code, "after": round(now - self.t0, 3)})
        entry.restart_at = now + delay
        self._say(
            f"silo '{name}': flower-supernode exited with code {code} during the run; "
            f"restart {len(entry.exits)} in {delay:g}s"
        )


def _check_silos(silos: list[_Proc], when: str) -> None:
    for proc in silos:
        code = proc.popen.poll()
        if code is not None:
            raise SiloFailedError(
                proc.name,
                f"silo '{proc.name}': flower-supernode exited with code {code} {when}. "
                f"Last lines of its log ({proc.log_path}):\n{proc.log(25)}",
            )


@dataclass(frozen=True)
class _TlsArgs:
    """Command-line flags of a TLS (+ node auth) federation, from :class:`LocalSecurity`."""

    ca: Path
    cert: Path
    key: Path
    keys: dict[str, Any]
    node_auth: bool
    unregistered: frozenset[str]

    @classmethod
    def make(cls, security: LocalSecurity | None, silos: list[str]) -> _TlsArgs | None:
        if security is None:
            return None
        unknown = sorted(set(security.unregistered) - set(silos))
        if unknown:
            raise LocalFederationError(
                f"LocalSecurity.unregistered names {unknown}, which are not silos of the "
                f"spec ({', '.join(silos)})"
            )
        from adapters.pki import make_pki

        ca, server, keys = make_pki(security.pki_dir, nodes=silos)
        return cls(
            ca.cert, server.cert, server.key, keys, security.node_auth,
            frozenset(security.unregistered),
        )  # fmt: skip

    @property
    def superlink(self) -> list[str]:
        flags = ["--ssl-certfile", str(self.cert), "--ssl-keyfile", str(self.key),
                 "--ssl-ca-certfile", str(self.ca)]  # fmt: skip
        return [*flags, "--enable-supernode-auth"] if self.node_auth else flags

    def supernode(self, silo: str) -> list[str]:
        flags = ["--root-certificates", str(self.ca)]
        if self.node_auth:
            flags += ["--auth-supernode-private-key", str(self.keys[silo].private)]
        return flags


def _register_node(silo: str, public_key: Path, env: dict[str, str]) -> None:
    """``flwr supernode register <key>.pub`` on the federation's SuperLink."""
    proc = subprocess.run(
        ["flwr", "supernode", "register", str(public_key), "--name", silo, "--format", "json"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if proc.returncode != 0 or '"success": true' not in proc.stdout:
        raise LocalFederationError(
            f"could not register silo '{silo}' (key {public_key}) with the SuperLink: "
            f"{(proc.stdout + proc.stderr).strip()[-800:]}"
        )


def run_local(
    spec: FederationSpec,
    *,
    project_dir: Path | None = None,
    run_dir: Path | None = None,
    timeout: float = 1800.0,
    startup_timeout: float = 180.0,
    free_port: Callable[[], int] = _free_port,
    on_event: Callable[[str], None] | None = None,
    security: LocalSecurity | None = None,
    external: Callable[[SiloSpec, str, int], list[str]] | None = None,
    log_dir: Path | None = None,
) -> LocalRun:
    """Run ``spec`` on loopback; return the outcome (check ``.ok``).

    Args:
        spec: The federation spec (sections of other backends, such as AzureML's network
            and computes, are not used).
        project_dir: The Flower project; default: the spec's own (``spec.project_dir()``,
            e.g. an AzureML spec's ``orchestrator.code`` directory), else the installed one.
        run_dir: Where the run directory goes; default: the spec's ``output.run-dir`` (``outputs``)
            resolved against the current directory.
        timeout: Seconds the whole ``flwr run`` may take.
        startup_timeout: Seconds for the SuperLink to answer and every SuperNode to register.
        free_port: Picks a free 127.0.0.1 port (one per process).
        on_event: Called with a short progress message at each step.
        security: TLS + SuperNode authentication (default: insecure loopback).
        external: For external silos (``silo.external``, e.g. AzureML's ``kind:
            external``): ``(silo, superlink address, free port)`` -> the command that starts
            the silo's own SuperNode (e.g. its ``fedsilo silo-kit`` start script), run
            instead of ``flower-supernode`` (default: like other silos).
        log_dir: Where the SuperLink's, each silo's and ``flwr run``'s logs go (kept);
            default: a temporary directory removed at the end.

    Raises:
        SiloFailedError: a silo's SuperNode exited before the run (or during it, with
            ``supernode.restart: false``; otherwise it is restarted, see the module doc).
        LocalFederationError: the SuperLink did not start, or not every SuperNode registered.
    """
    notify = on_event or (lambda message: logger.info("%s", message))
    project = Path(project_dir or spec.project_dir() or PROJECT_DIR).resolve()
    cfg = spec.resolved_run_config()
    out_root = Path(run_dir or cfg.output.run_dir).expanduser().resolve()
    home = Path(tempfile.mkdtemp(prefix="fedsilo-local-"))
    logs = Path(log_dir) if log_dir is not None else home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    # `flwr … --format json` colours its JSON when FORCE_COLOR is set (Jupyter kernels set
    # it), which would leave the node and run status unreadable.
    for var in ("FORCE_COLOR", "CLICOLOR_FORCE"):
        env.pop(var, None)
    procs: list[_Proc] = []
    superlink: _Proc | None = None
    silos: list[_Proc] = []
    refused: list[_Proc] = []
    tls = _TlsArgs.make(security, [s.name for s in spec.silos])
    try:
        port = free_port()
        write_flower_config(
            home, f"127.0.0.1:{port}", insecure=tls is None,
            root_certificates=str(tls.ca) if tls else None,
        )  # fmt: skip
        notify(f"starting the SuperLink on 127.0.0.1:{port}" + (" (TLS)" if tls else ""))
        superlink = _start(
            "superlink",
            [
                "flower-superlink", *(tls.superlink if tls else ["--insecure"]),
                "--disable-runtime-dependency-installation",
                "--host", "127.0.0.1", "--port", str(port),
            ],
            env, logs,
        )  # fmt: skip
        procs.append(superlink)
        try:
            if tls is None:
                wait_http_ok(f"http://127.0.0.1:{port}/health", superlink.popen, startup_timeout)
            else:
                wait_http_ok(
                    f"https://127.0.0.1:{port}/health", superlink.popen, startup_timeout,
                    cafile=tls.ca,
                )  # fmt: skip
        except (RuntimeError, TimeoutError) as exc:
            raise LocalFederationError(
                f"the SuperLink did not start: {exc}. Its log:\n{superlink.log(25)}"
            ) from None
        if tls is not None and tls.node_auth:
            for silo in spec.silos:
                if silo.name not in tls.unregistered:
                    _register_node(silo.name, tls.keys[silo.name].public, env)

        def silo_command(silo: SiloSpec) -> Callable[[int], list[str]]:
            def command(silo_port: int) -> list[str]:
                if external is not None and silo.external:
                    return external(silo, f"127.0.0.1:{port}", silo_port)
                flower_args = [
                    *(tls.supernode(silo.name) if tls else ["--insecure"]),
                    "--superlink", f"127.0.0.1:{port}",
                    "--host", "127.0.0.1", "--port", str(silo_port),
                    "--node-config", node_config_arg(silo.node_config),
                ]  # fmt: skip
                return supernode_command(flower_args, spec.supernode.executor)

            return command

        def start_silo(name: str, cmd: list[str], append: bool = False) -> _Proc:
            proc = _start(name, cmd, env, logs, append=append)
            procs.append(proc)
            return proc

        supervised: list[_Supervised] = []
        for silo in spec.silos:
            notify(f"starting silo '{silo.name}' ({node_config_arg(silo.node_config)})")
            command = silo_command(silo)
            proc = start_silo(silo.name, command(free_port()))
            if tls and silo.name in tls.unregistered:
                refused.append(proc)
            else:
                silos.append(proc)
                supervised.append(_Supervised(silo, command, proc, time.monotonic()))

        notify(f"waiting for {len(silos)} SuperNodes to register")
        deadline = time.monotonic() + startup_timeout
        while True:
            _check_silos(silos, "on start")
            online = _online_nodes(env)
            if online >= len(silos):
                break
            if time.monotonic() > deadline:
                raise LocalFederationError(
                    f"only {online} of {len(silos)} SuperNodes registered with the SuperLink "
                    f"within {startup_timeout:.0f}s; silo logs are in {logs}"
                )
            time.sleep(1.0)

        before = {p.parent for p in out_root.glob("*/config.json")} if out_root.exists() else set()
        overrides = {**flower_run_config(spec), "output.run-dir": str(out_root)}
        cmd = [
            "flwr", "run", str(project), FLWR_CONNECTION, "--stream",
            "--run-config", run_config_arg(overrides),
        ]  # fmt: skip
        notify(
            f"flwr run {project.name} ({spec.task}, {spec.strategy}, "
            f"{cfg.num_server_rounds} rounds)"
        )
        flwr = _start("flwr-run", cmd, env, logs)
        procs.append(flwr)
        started = time.monotonic()
        supervisor = _Supervisor(
            supervised,
            RestartPolicy(maximum=max(1.0, spec.supernode.restart_max_delay)),
            lambda name, command: start_silo(name, command, append=True),
            free_port,
            on_event or (lambda _message: None),
        )
        rounds, shown = _RoundWatch(flwr.log_path), None
        while flwr.popen.poll() is None:
            if (seen := rounds.poll()) != shown and seen is not None:
                shown = seen  # e.g. "round 2/5": one finished of five
                notify(Update(f"round {seen[0]}/{seen[1]}", done=seen[0] - 1, total=seen[1]))
            if spec.supernode.restart:
                supervisor.poll()
            else:
                _check_silos(silos, "during the run")
            if time.monotonic() - started > timeout:
                raise LocalFederationError(
                    f"flwr run did not finish within {timeout:.0f}s. Its output:\n{flwr.log(40)}"
                )
            time.sleep(1.0)
        output = flwr.log()
        status: dict[str, Any] = _last_run_status(env)
        total = cfg.num_server_rounds
        finished = total if status.get("status") == "finished:completed" else None
        if finished is None and shown is not None:
            finished = shown[0] - 1
        notify(Update(f"run {status.get('status', 'unknown')}", done=finished, total=total))

        created = sorted(
            (p.parent for p in out_root.glob("*/config.json") if p.parent not in before),
            key=lambda p: p.stat().st_mtime,
        ) if out_root.exists() else []  # fmt: skip
        run_path = created[-1] if created else None
        metrics_file = run_path / "metrics.json" if run_path else None
        metrics = (
            json.loads(metrics_file.read_text())
            if metrics_file is not None and metrics_file.is_file()
            else []
        )
        for proc in refused:  # an unregistered SuperNode gives up after its first attempts
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=30)
        return LocalRun(
            flwr.popen.returncode,
            output,
            run_path,
            metrics,
            status=status.get("status", "unknown"),
            status_details=status.get("status-details", ""),
            superlink_log=superlink.log(),
            silo_logs={p.name: p.log() for p in [*(e.proc for e in supervised), *refused]},
            refused={p.name: p.popen.poll() for p in refused},
            restarts={e.silo.name: e.exits for e in supervised if e.exits},
        )
    finally:
        _stop_all(procs)
        shutil.rmtree(home, ignore_errors=True)
