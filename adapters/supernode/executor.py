"""Warm ClientApp execution behind Flower's SuperExec executor seam.

Flower's ``SubprocessExecutor`` starts ``flwr-clientapp --token …`` for every message: a
new interpreter that imports Flower, PyTorch and the app, and extracts the FAB again,
before it trains for a fraction of a second. (Flower 1.42's "warm executor" pools are
Kubernetes Pods for agent/model/connector tasks that start idle and run one task each;
they do not import the app.)

:class:`ForkExecutor` keeps one **zygote**: a single-threaded process that imports the
environment once — the app's ClientApp module (``app``) and any ``preload`` modules — and
then forgets the app's own modules (:func:`forget_app_modules`), keeping the third-party
ones. For each ClientApp task it forks a child that resets the per-process random state a
fresh interpreter would have (:func:`fresh_process_state`) and runs Flower's
``run_clientapp``: the very function behind ``flwr-clientapp``, which pulls the message,
installs the FAB, imports the app **from the FAB** and runs it. The zygote learns from its
tasks (:class:`_Zygote`): the third-party modules they imported lazily, and the FAB they
ran, whose ClientApp it then imports from Flower's installed directory so that later tasks
of the same FAB (same sha256) find it loaded; a task of another FAB imports its own. A
task stays one process, isolated and gone when the message is answered, as in Flower.

The task's token travels over a private socket pair, never on a command line. Task types
other than ClientApp go to Flower's ``SubprocessExecutor``. If the zygote is not ready or
died, a task falls back to a cold ``flwr-clientapp`` process; :meth:`ForkExecutor.reconcile`
restarts the zygote.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from flwr.supercore.constant import TaskType
from flwr.supercore.superexec.executor import ExecutionSpec, LaunchResult
from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor

from adapters.supernode.pacing import prompt_object_pulls

__all__ = [
    "ForkExecutor",
    "Pacer",
    "forget_app_modules",
    "fresh_process_state",
    "run_zygote",
]

logger = logging.getLogger(__name__)

_READY_TIMEOUT_S = 120.0  # preloading on a loaded machine; a cold start costs the same
_ACK_TIMEOUT_S = 30.0


# --------------------------------------------------------------------------- zygote side


def _site_dirs() -> list[str]:
    paths = sysconfig.get_paths()
    dirs = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    return sorted(os.path.realpath(d) + os.sep for d in dirs)


def _distribution_packages(top_levels: Iterable[str]) -> set[str]:
    """Every top-level package shipped by the distributions that ship ``top_levels``."""
    owners = importlib.metadata.packages_distributions()
    dists = {d for name in top_levels for d in owners.get(name, [])}
    return {name for name, ds in owners.items() if dists.intersection(ds)} | set(top_levels)


def _third_party(module: Any, site: tuple[str, ...]) -> bool:
    path = getattr(module, "__file__", None)
    return bool(path) and os.path.isabs(path) and os.path.realpath(path).startswith(site)


def _outside(module: Any, site: tuple[str, ...]) -> bool:
    path = getattr(module, "__file__", None)
    return bool(path) and os.path.isabs(path) and not os.path.realpath(path).startswith(site)


def forget_app_modules(app_modules: Iterable[str], before: Iterable[str]) -> list[str]:
    """Remove the app's own modules from ``sys.modules``: those imported since ``before``
    that belong to the same distribution as ``app_modules`` (e.g. fl_app, strategies, tasks,
    adapters of ``fedsilo``) or live outside the interpreter's installation (an app run from
    its source tree). The next import of the app reads it again — from the FAB's directory,
    which Flower puts first on ``sys.path`` — while its third-party imports stay loaded.
    Returns the names removed."""
    known = set(before)
    own = _distribution_packages({m.split(".")[0] for m in app_modules})
    site = tuple(_site_dirs())
    removed = []
    for name, module in list(sys.modules.items()):
        if name in known or module is None:
            continue
        if name.split(".")[0] in own or _outside(module, site):
            del sys.modules[name]
            removed.append(name)
    return removed


def fresh_process_state() -> None:
    """Give a forked task the per-process random state of a fresh interpreter, in which
    NumPy's global generator and PyTorch's default generator start from OS entropy: both are
    reseeded so (forked tasks would otherwise all continue the zygote's streams). Python's
    ``random`` is reseeded by CPython itself at fork."""
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "seed"):
        torch.seed()


def _send(sock: socket.socket, payload: dict[str, Any]) -> None:
    sock.sendall(json.dumps(payload).encode() + b"\n")


class _Zygote:
    """The zygote's state and what it learns from its tasks.

    Each finished task reports, on a datagram socket: the third-party modules it had to
    import itself (lazy imports of the first data load or training step), and the FAB it
    ran (its sha256 and where Flower installed it). While idle the zygote imports those
    modules, and the app's ClientApp module *from that installed FAB* — the very files the
    task imported, in the same place on ``sys.path`` — so later tasks of the same FAB find
    everything loaded. A task of another FAB (a new ``flwr run`` with changed code) forgets
    the app modules the zygote holds and imports its own from its FAB, as Flower does.
    Flower extracts the FAB again for every message; a task whose FAB this zygote has seen
    installed reuses the installed directory (same sha256).
    """

    def __init__(self, control: socket.socket, app: str | None) -> None:
        self.control = control
        self.own = _distribution_packages({app.split(".")[0]}) if app else set()
        self.site = tuple(_site_dirs())
        self.learn_in, self.learn_out = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.keep = set(sys.modules)  # the environment: never forgotten
        self.learned = 0
        self.fabs: dict[str, str] = {}  # sha256 of a FAB -> its installed directory
        self.warm_fab: str | None = None  # the FAB whose app modules are loaded here
        self.installed: tuple[str, str] | None = None  # in a task: (sha256, directory)

    # -- in a task ----------------------------------------------------------------------
    def app_modules(self) -> list[str]:
        """The app's own modules now loaded (its distribution's, or from outside the
        interpreter's installation), the environment's excepted."""
        return [
            name for name, module in list(sys.modules.items())
            if module is not None and name not in self.keep
            and (name.split(".")[0] in self.own or _outside(module, self.site))
        ]  # fmt: skip

    def prepare(self, fab_hash: str | None) -> None:
        """Before the task runs: drop app modules of another FAB than the task's, and
        install :meth:`install_once` in place of Flower's per-message FAB install."""
        if fab_hash is None or fab_hash != self.warm_fab:
            for name in self.app_modules():
                del sys.modules[name]
            stale = self.fabs.get(self.warm_fab or "")
            if stale in sys.path:
                sys.path.remove(stale)
        from flwr.supernode.runtime import run_clientapp as flower

        prompt_object_pulls()  # forked at once, the task may ask before the objects are in
        install = flower.install_from_fab

        def install_once(fab_file: Any, install_dir: Any = None, skip_prompt: bool = False):
            digest = hashlib.sha256(fab_file).hexdigest() if isinstance(fab_file, bytes) else None
            known = self.fabs.get(digest or "")
            if install_dir is None and known and os.path.isdir(known):
                path = Path(known)
            else:
                path = install(fab_file, install_dir=install_dir, skip_prompt=skip_prompt)
            if digest:
                self.installed = (digest, str(path))
            return path

        flower.install_from_fab = install_once

    def report(self, known: set[str]) -> None:
        """Before the task exits: send the third-party modules it imported and its FAB."""
        names = [
            name for name, module in list(sys.modules.items())
            if name not in known and module is not None
            and name.split(".")[0] not in self.own and _third_party(module, self.site)
        ]  # fmt: skip
        payload: dict[str, Any] = {"modules": names}
        if self.installed is not None:
            payload["fab"] = list(self.installed)
        with contextlib.suppress(OSError):
            self.learn_out.send(json.dumps(payload).encode())

    # -- in the zygote ------------------------------------------------------------------
    def learn(self) -> None:
        """Import what a task reported: its third-party modules (in the task's order), then
        the ClientApp of its FAB from the installed directory."""
        try:
            payload = json.loads(self.learn_in.recv(1 << 20))
        except (OSError, ValueError):
            return
        for name in payload.get("modules", []):
            if name in sys.modules or name.split(".")[0] in self.own:
                continue
            try:
                importlib.import_module(name)
                self.learned += 1
            except Exception:  # a module that imports only in its task's context: skip
                continue
        if payload.get("fab"):
            self._warm_app(*payload["fab"])
        if threading.active_count() > 1:
            logger.warning(
                "warm SuperNode: an import started a thread in the zygote; tasks still "
                "fork from it, but only its main thread is copied"
            )

    def _warm_app(self, digest: str, directory: str) -> None:
        self.fabs[digest] = directory
        if digest == self.warm_fab:
            return
        try:
            config = tomllib.loads((Path(directory) / "pyproject.toml").read_text())
            module = config["tool"]["flwr"]["app"]["components"]["clientapp"].split(":")[0]
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return
        for name in self.app_modules():
            del sys.modules[name]
        if directory not in sys.path:
            sys.path.insert(0, directory)  # where Flower's load_app puts it
        try:
            importlib.import_module(module)
        except Exception as exc:  # the task imports it itself, as in Flower
            logger.warning("warm SuperNode: could not import %s from %s (%s)",
                           module, directory, exc)  # fmt: skip
            for name in self.app_modules():
                del sys.modules[name]
            self.warm_fab = None
            return
        self.warm_fab = digest
        logger.info("warm SuperNode: ClientApp %s of FAB %s loaded", module, digest[:12])

    def fork_task(self, request: dict[str, Any]) -> int:
        known = set(sys.modules)
        pid = os.fork()
        if pid:
            return pid
        code = 1
        try:
            self.control.close()
            self.learn_in.close()
            self.prepare(request.get("fab_hash"))
            code = _run_task(request)
            self.report(known)
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)


def _run_task(request: dict[str, Any]) -> int:
    """Body of a forked task: Flower's ``run_clientapp`` in a fresh-process state."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    if request.get("suppress_output"):
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    os.close(devnull)
    fresh_process_state()
    started = time.perf_counter()
    # Flower names the process (telemetry, exit messages) after argv[0].
    sys.argv = ["flwr-clientapp"]
    from flwr.supercore.tls import validate_and_resolve_root_certificates
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    try:
        run_clientapp(
            runtime_api_address=request["runtime_api_address"],
            token=request["token"],
            insecure=bool(request["insecure"]),
            certificates=validate_and_resolve_root_certificates(
                request.get("root_certificates_path"), bool(request["insecure"])
            ),
            parent_pid=request.get("parent_pid"),
            runtime_dependency_install=bool(request.get("runtime_dependency_install")),
        )
        return 0
    except SystemExit as exc:  # flwr_exit ends every task this way
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # a task must never fall back into the zygote
        logging.getLogger("flwr").exception("warm ClientApp task failed")
        return 1
    finally:
        logger.debug("task process done after %.3fs", time.perf_counter() - started)


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def run_zygote(fd: int, app: str | None, preload: Sequence[str] = ()) -> int:
    """The zygote's main loop (``python -m adapters.supernode zygote``): import ``preload``
    and ``app``, forget the app's own modules, report ready on socket ``fd``, then fork one
    task per request until the socket closes (its SuperExec ended), and import what
    finished tasks report they lacked (:class:`_Zygote`)."""
    control = socket.socket(fileno=fd)
    started = time.perf_counter()
    loaded = []
    for name in preload:
        try:
            importlib.import_module(name)
            loaded.append(name)
        except Exception as exc:  # nothing is lost: the task imports what it needs
            logger.warning("warm SuperNode: could not preload %s (%s)", name, exc)
    before = set(sys.modules)
    apps = []
    if app:
        try:
            importlib.import_module(app)
            apps.append(app)
        except Exception as exc:  # a cold app import still works in the task
            logger.warning("warm SuperNode: could not import the app %s (%s); each task "
                           "imports it from the FAB", app, exc)  # fmt: skip
    forgotten = forget_app_modules(apps, before) if apps else []
    zygote = _Zygote(control, app)
    _send(
        control,
        {
            "ready": True, "pid": os.getpid(), "preloaded": [*loaded, *apps],
            "seconds": round(time.perf_counter() - started, 3),
            "modules": len(sys.modules), "forgotten": len(forgotten),
        },
    )  # fmt: skip
    buffer = b""
    while True:
        readable, _, _ = select.select([control, zygote.learn_in], [], [], 1.0)
        _reap()
        if zygote.learn_in in readable:
            zygote.learn()
        if control not in readable:
            continue
        chunk = control.recv(65536)
        if not chunk:  # the SuperExec is gone
            return 0
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            request = json.loads(line)
            pid = zygote.fork_task(request)
            _send(control, {"task_id": request["task_id"], "pid": pid})


# --------------------------------------------------------------------------- SuperExec side


class Pacer:
    """How long the SuperExec waits between task polls: woken at once through ``wake_fd``
    (the warm SuperNode writes a byte there whenever it stored a message), otherwise with
    back-off from ``first`` up to ``maximum`` seconds after the last task."""

    def __init__(self, wake_fd: int | None = None, first: float = 0.05, maximum: float = 1.0):
        self.wake_fd = wake_fd
        self.first = first
        self.maximum = maximum
        self.interval = first

    def wait(self) -> None:
        """Wait until woken or for the current interval (then grow it)."""
        timeout = self.maximum if self.wake_fd is not None else self.interval
        self.interval = min(self.maximum, self.interval * 1.5)
        if self.wake_fd is None:
            time.sleep(timeout)
            return
        readable, _, _ = select.select([self.wake_fd], [], [], timeout)
        if readable:
            try:
                data = os.read(self.wake_fd, 4096)
            except OSError:
                data = b""
            if not data:  # the SuperNode closed its end: fall back to plain back-off
                os.close(self.wake_fd)
                self.wake_fd = None

    def task_launched(self) -> None:
        """A task was launched: the next may follow soon."""
        self.interval = self.first


class ForkExecutor:
    """A Flower SuperExec ``Executor`` that forks ClientApp tasks from a warm zygote (see
    the module doc). ``app``: the ClientApp module the zygote imports (then forgets, keeping
    its third-party imports); ``preload``: more modules it imports and keeps; ``pacer``:
    paces the SuperExec loop between task polls (its ``reconcile`` step)."""

    def __init__(
        self, app: str | None, preload: Sequence[str] = (), pacer: Pacer | None = None
    ) -> None:
        self.app = app
        self.preload = list(preload)
        self.pacer = pacer or Pacer()
        self._cold = SubprocessExecutor()
        self._proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._buffer = b""
        self.ready: dict[str, Any] | None = None
        self.launched = 0
        self.fallbacks = 0
        self._start_zygote()

    # -- zygote management -------------------------------------------------------------
    def _start_zygote(self) -> None:
        ours, theirs = socket.socketpair()
        cmd = [sys.executable, "-m", "adapters.supernode", "zygote", "--fd", str(theirs.fileno())]
        cmd += ["--app", self.app] if self.app else ["--no-app"]
        cmd += [f"--preload={module}" for module in self.preload]
        self._proc = subprocess.Popen(cmd, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        theirs.close()
        self._sock, self._buffer, self.ready = ours, b"", None
        logger.info("warm SuperNode: zygote started (pid %d), preloading %s",
                    self._proc.pid, ", ".join([*self.preload, *([self.app] if self.app else [])])
                    or "nothing")  # fmt: skip

    def _read(self, timeout: float) -> dict[str, Any] | None:
        assert self._sock is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            readable, _, _ = select.select([self._sock], [], [], left)
            if not readable:
                return None
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionError("the zygote closed its socket")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def _alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _is_ready(self, timeout: float) -> bool:
        if self.ready is None and self._alive():
            try:
                self.ready = self._read(timeout)
            except ConnectionError:
                return False
            if self.ready is not None:
                logger.info(
                    "warm SuperNode: zygote ready in %.1fs (%d modules loaded)",
                    self.ready["seconds"], self.ready["modules"],
                )  # fmt: skip
        return self.ready is not None and self._alive()

    def wait_ready(self, timeout: float = _READY_TIMEOUT_S) -> bool:
        """Wait until the zygote has imported everything (or died, or ``timeout``)."""
        return self._is_ready(timeout)

    def _stop_zygote(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
            if self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()

    # -- Flower's Executor protocol ----------------------------------------------------
    def get_eligible_capacity(
        self,
        supported_task_types: set[TaskType],
        *,
        insecure: bool = False,
        root_certificates_path: str | None = None,
    ) -> tuple[set[TaskType], set[str]]:
        """Every supported task type, like Flower's subprocess executor."""
        return self._cold.get_eligible_capacity(
            supported_task_types, insecure=insecure, root_certificates_path=root_certificates_path
        )

    def wait_for_capacity(self, task_type=None, *, fab_hash=None, insecure=False,
                          root_certificates_path=None) -> None:  # fmt: skip
        """No capacity gate (one task per message, as Flower's subprocess executor)."""

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        """Fork a ClientApp task from the zygote; other task types, or no ready zygote
        within a short wait: a cold process as Flower's subprocess executor starts."""
        if spec.task_type != TaskType.CLIENT_APP or not self._is_ready(_READY_TIMEOUT_S):
            if spec.task_type == TaskType.CLIENT_APP:
                self.fallbacks += 1
                logger.warning("warm SuperNode: zygote not ready; task %d runs cold",
                               spec.task_id)  # fmt: skip
            return self._cold.launch(spec)
        request = {
            "task_id": spec.task_id,
            "fab_hash": spec.fab_hash,
            "runtime_api_address": spec.runtime_api_address,
            "token": spec.token,
            "insecure": spec.insecure,
            "root_certificates_path": spec.root_certificates_path,
            "parent_pid": spec.parent_pid,
            "runtime_dependency_install": spec.runtime_dependency_install,
            "suppress_output": spec.suppress_output,
        }
        try:
            assert self._sock is not None
            _send(self._sock, request)
            ack = self._read(_ACK_TIMEOUT_S)
        except (OSError, ConnectionError) as exc:
            # The request may or may not have reached the zygote: never run it twice.
            return LaunchResult.unknown(f"warm SuperNode zygote failed: {exc}")
        if ack is None or ack.get("task_id") != spec.task_id:
            return LaunchResult.unknown("warm SuperNode zygote did not acknowledge the task")
        self.launched += 1
        logger.debug("task %d forked (pid %s)", spec.task_id, ack.get("pid"))
        self.pacer.task_launched()
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Between task polls: restart a dead zygote, then wait for the next poll."""
        if not self._alive():
            code = self._proc.poll() if self._proc is not None else None
            logger.warning("warm SuperNode: zygote exited (code %s); restarting it", code)
            self._stop_zygote()
            self._start_zygote()
        self.pacer.wait()

    def close(self) -> None:
        """Stop the zygote (running tasks end with their SuperExec, as in Flower)."""
        self._stop_zygote()


def zygote_pid(executor: ForkExecutor) -> int | None:
    """The zygote's process id (tests and diagnostics)."""
    return executor._proc.pid if executor._proc is not None else None
