"""What every benchmark shares, in one place: command line, process setup, probes, child
processes, tables and provenance.

* **Command line** — :func:`parser` / :func:`common_parser`: the options benchmarks share
  (``--quick``, ``--rounds``, ``--seed``/``--seeds``, ``--reps``, ``--repeats``,
  ``--workers``, ``--out``, ``--json``, ``--no-write``, ``--merge``, ``--resume``,
  ``--allow-dirty``) with each benchmark's own defaults and help; :func:`resolve_out` (a
  quick run writes nothing unless ``--out``) and :func:`command_line` (the command a doc
  names).
* **Process setup** — :func:`log_to_console`, :func:`quiet`, :func:`torch_threads`,
  :func:`limit_threads`, :func:`prepare_worker` (a pool worker: one torch thread, the app
  imported and warmed up) and :func:`child_env` (what a child benchmark process runs with).
* **Probes** — :class:`Stopwatch` (wall and CPU seconds), :func:`repeat` (per-repeat
  seconds of a call after a warm-up), :func:`peak_rss` (high-water mark of this process and
  of its children), :class:`PeakMemory` (how far one block raised it), :func:`load_average`
  and :func:`load_averages`, :func:`cpu_count`, :func:`machine`, :func:`versions`,
  :func:`utc_now` and :func:`probe_grid` (the silos' own update norms in an in-process
  federation).
* **Child processes** — :func:`child` (a process whose whole tree is stopped when the block
  ends), :func:`run_json_child` (a ``python -m`` child that prints a JSON line) and
  :func:`run_workers` (calls in a pool of spawned workers, or inline).
* **Tables** — :class:`Table`: rows under a header as Markdown, aligned text or a rich table,
  with :class:`Versus` columns (a value ÷ or − its baseline: another column of the row, or
  the baseline row of its group) and ``mean ± std`` cells for values over seeds;
  :func:`mean_std`; :func:`json_safe` for the JSON next to a report.
* **Provenance** — :func:`start` opens a :class:`Session` (the command, the code version
  after :func:`~benchmarks.provenance.guard_docs_write`, the clock and load average at the
  start); :func:`code_label`. The commit and dirty-tree rules themselves are
  :mod:`benchmarks.provenance`'s, re-exported here.

``benchmarks/overhead_worker.py`` does not import this module on purpose: it runs inside
older checkouts (``benchmarks.overhead --before REV``) that have no harness.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from benchmarks.provenance import (
    CODE_PATHS,
    PROJECT_ROOT,
    CodeVersion,
    add_allow_dirty_flag,
    code_version,
    guard_docs_write,
)
from fl_app.legacy import LEGACY_KEYS
from fl_core.progress import Progress

__all__ = [
    "BENCH_ENV",
    "CODE_PATHS",
    "LOG_FORMAT",
    "PROJECT_ROOT",
    "CodeVersion",
    "PeakMemory",
    "PeakRSS",
    "Session",
    "Stopwatch",
    "Table",
    "Timing",
    "Versus",
    "add_allow_dirty_flag",
    "child",
    "child_env",
    "code_label",
    "code_version",
    "command_line",
    "common_parser",
    "cpu_count",
    "dotted_run_config",
    "guard_docs_write",
    "json_safe",
    "limit_threads",
    "load_average",
    "load_averages",
    "log_to_console",
    "machine",
    "mean_std",
    "memory_gib",
    "parser",
    "peak_rss",
    "prepare_worker",
    "probe_grid",
    "processes_with",
    "quiet",
    "repeat",
    "rerender_note",
    "resolve_out",
    "rss",
    "run_json_child",
    "run_workers",
    "start",
    "stop_tree",
    "torch_threads",
    "utc_now",
    "versions",
]

LOG = logging.getLogger(__name__)


# =============================================================================== CLI
class _Off:
    """Marks an option a benchmark does not have (``None`` is a real default)."""

    def __repr__(self) -> str:
        return "OFF"


OFF: Any = _Off()


@dataclass(frozen=True)
class Opt:
    """An option's default with its help text and any other ``add_argument`` keywords."""

    default: Any
    help: str | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)


def opt(default: Any, help: str | None = None, **kwargs: Any) -> Opt:
    """``rounds=opt(None, "default 8")``: a default with help (and e.g. ``required=True``)."""
    return Opt(default, help, kwargs)


#: The shared options: name → (flags, add_argument keywords besides default and help).
_OPTIONS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "rounds": (("--rounds",), {"type": int}),
    "seed": (("--seed",), {"type": int}),
    "seeds": (("--seeds",), {"type": int, "nargs": "+"}),
    "reps": (("--reps",), {"type": int}),
    "repeats": (("--repeats",), {"type": int}),
    "workers": (("--workers",), {"type": int}),
    "out": (("--out",), {"type": Path}),
    "json": (("--json",), {"type": Path}),
}
_FLAGS = {
    "quick": "--quick",
    "no_write": "--no-write",
    "merge": "--merge",
    "resume": "--resume",
    "render_only": "--render-only",
}


def common_parser(
    *,
    quick: str | _Off | None = OFF,
    rounds: Any = OFF,
    seed: Any = OFF,
    seeds: Any = OFF,
    reps: Any = OFF,
    repeats: Any = OFF,
    workers: Any = OFF,
    out: Any = OFF,
    json: Any = OFF,
    no_write: str | _Off | None = OFF,
    merge: str | _Off | None = OFF,
    resume: str | _Off | None = OFF,
    render_only: str | _Off | None = OFF,
    allow_dirty: bool = True,
) -> argparse.ArgumentParser:
    """A parent parser (``add_help=False``) with the shared options a benchmark has.

    Valued options (``rounds``, ``seed``, ``seeds``, ``reps``, ``repeats``, ``workers``,
    ``out``, ``json``) take their default, or :func:`opt` with a help text; flags
    (``quick``, ``no_write``, ``merge``, ``resume``, ``render_only``) take their help text
    (``None``: none).
    Left out (the default): the benchmark has no such option. ``--allow-dirty`` is on
    unless ``allow_dirty=False`` (for benchmarks that never write into ``docs/``)."""
    common = argparse.ArgumentParser(add_help=False)
    given = {"rounds": rounds, "seed": seed, "seeds": seeds, "reps": reps, "repeats": repeats,
             "workers": workers, "out": out, "json": json}  # fmt: skip
    flags = {"quick": quick, "no_write": no_write, "merge": merge, "resume": resume,
             "render_only": render_only}  # fmt: skip
    for name, help_text in flags.items():
        if help_text is not OFF:
            common.add_argument(_FLAGS[name], action="store_true", help=help_text)
    for name, value in given.items():
        if value is OFF:
            continue
        spec = value if isinstance(value, Opt) else Opt(value)
        option_flags, kwargs = _OPTIONS[name]
        common.add_argument(
            *option_flags, **{**kwargs, "default": spec.default, "help": spec.help, **spec.kwargs}
        )
    if workers is not OFF:  # runs many federations through run_workers
        common.add_argument(
            "--progress", action="store_true",
            help="Progress bar (done/total, elapsed, ETA) on stderr even when it is not a "
            "terminal (on a terminal it is on anyway; elsewhere one log line per finished run).",
        )  # fmt: skip
    if allow_dirty:
        add_allow_dirty_flag(common)
    return common


def parser(description: str, *, prog: str | None = None, **common: Any) -> argparse.ArgumentParser:
    """A benchmark's parser: ``description`` (a docstring: its first paragraph), ``prog``,
    and the shared options of :func:`common_parser` (``**common``) as its parent."""
    first = description.strip().split("\n\n", 1)[0]
    return argparse.ArgumentParser(prog=prog, description=first, parents=[common_parser(**common)])


def resolve_out(
    args: argparse.Namespace, default: Path | None, parser: argparse.ArgumentParser | None = None
) -> Path | None:
    """``--out`` as given, else ``default`` unless ``--quick`` (a quick run writes nothing
    unless asked). With a ``--merge`` flag and no output, ``parser.error``."""
    if args.out is None and not getattr(args, "quick", False):
        args.out = default
    if getattr(args, "merge", False) and args.out is None and parser is not None:
        parser.error("--merge needs a report to merge into: give --out (or drop --quick)")
    return args.out


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
    """``python -m benchmarks.<module> <arguments>`` as run (``argv``, else ``sys.argv``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join([f"python -m benchmarks.{module}", *args]).strip()


def dotted_run_config(command: str, *, section: str | None = None) -> str:
    """``command`` with each flat run-config key of earlier versions inside its
    ``--run-config "..."`` renamed to its dotted key (:data:`fl_app.legacy.LEGACY_KEYS`), so a
    command stored in an older benchmark JSON is rendered as today's app takes it (same
    settings). A flat key that became several (``clip-norm``: ``dp.clip-norm`` and
    ``robust.clip-norm``) takes the one in ``section``."""

    def rename(match: re.Match) -> str:
        new = LEGACY_KEYS.get(match.group(2), (match.group(2),))
        chosen = [k for k in new if k.split(".", 1)[0] == section] or list(new)
        return match.group(1) + " ".join(f"{k}={match.group(3)}" for k in chosen)

    def body(match: re.Match) -> str:
        inner = re.sub(r"(^|\s)([a-z][a-z0-9-]*)=(\S+)", rename, match.group(2))
        return f"--run-config {match.group(1)}{inner}{match.group(1)}"

    return re.sub(r"""--run-config (["'])(.*?)\1""", body, command)


def rerender_note(module: str) -> str:
    """The sentence a doc re-rendered from its saved JSON (``--render-only``) carries: the
    figures stay those measured at the commits the doc names, the text is this code's."""
    return (
        f"The text was re-rendered from the same JSON by `python -m benchmarks.{module} "
        f"--render-only` at {code_version().label()}: no federation was rerun, every figure "
        "is the JSON's."
    )


# ===================================================================== process setup
#: What every benchmark process and its children run with: no MLflow telemetry, and no
#: dependency installation by Flower at run time (the environment is fixed).
BENCH_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}
#: Console log format of the benchmarks that log progress.
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"
#: Environment variables that size native thread pools (OpenMP, OpenBLAS, MKL).
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def log_to_console(fmt: str = LOG_FORMAT, level: int = logging.INFO) -> None:
    """Progress on stderr (``logging.basicConfig``)."""
    logging.basicConfig(level=level, format=fmt)


def quiet(*names: str, level: int = logging.WARNING) -> None:
    """Loggers ``names`` (default ``flwr``) at ``level``."""
    for name in names or ("flwr",):
        logging.getLogger(name).setLevel(level)


def child_env(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The environment of a child process: ``base`` (default ``os.environ``), then
    :data:`BENCH_ENV`, then ``extra``."""
    return {**(os.environ if base is None else base), **BENCH_ENV, **extra}


@contextlib.contextmanager
def environ(**values: str) -> Iterator[None]:
    """``os.environ`` with ``values`` set for the block (what child processes started in it
    inherit); every variable is restored afterwards."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def torch_threads(threads: int = 1) -> Iterator[None]:
    """torch's intra-op thread count for the block (restored afterwards)."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def limit_threads(threads: int, *, native: bool = True) -> None:
    """Run torch on ``threads`` threads; with ``native``, numpy's BLAS too (threadpoolctl)
    and every child process (:data:`THREAD_VARS`)."""
    import torch

    torch.set_num_threads(threads)
    if not native:
        return
    for var in THREAD_VARS:
        os.environ[var] = str(threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except ImportError:
        logging.warning("threadpoolctl missing: numpy's BLAS keeps its default threads")


def prepare_worker(
    *,
    imports: Iterable[str] = ("fl_app.client_app", "fl_app.federation"),
    silence: Callable[[], Any] | None = None,
    freeze_gc: bool = False,
) -> None:
    """Initialiser of a benchmark's worker process: one torch thread (each process trains
    one silo at a time), ``imports`` imported once, ``silence`` called (loggers), torch's
    optimiser machinery imported (the first optimiser imports ``torch._dynamo``: seconds,
    once per process); with ``freeze_gc`` the heap is then frozen for the garbage
    collector, whose full collections then skip torch's import-time objects."""
    import importlib

    import torch

    for module in imports:
        importlib.import_module(module)
    torch.set_num_threads(1)
    if silence is not None:
        silence()
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    if freeze_gc:
        gc.collect()
        gc.freeze()


# ============================================================================ probes
class Stopwatch:
    """Wall-clock (``perf_counter``) and CPU (``process_time``) seconds since it started;
    as a context manager, frozen when the block ends."""

    def __init__(self) -> None:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        self._stopped: tuple[float, float] | None = None

    @property
    def seconds(self) -> float:
        if self._stopped is not None:
            return self._stopped[0]
        return time.perf_counter() - self._wall

    @property
    def cpu_seconds(self) -> float:
        if self._stopped is not None:
            return self._stopped[1]
        return time.process_time() - self._cpu

    def stop(self) -> float:
        """Freeze the readings; the wall seconds."""
        self._stopped = (self.seconds, self.cpu_seconds)
        return self._stopped[0]

    def __enter__(self) -> Stopwatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Timing:
    """Per-repeat seconds of a timed call and its last result."""

    seconds: list[float]
    result: Any = None
    warmup: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.seconds)


def repeat(
    fn: Callable[..., Any],
    reps: int,
    *,
    prepare: Callable[[], Any] | None = None,
    warmup: int = 1,
    slow: float | None = None,
    settle: float = 0.0,
    collect: bool = False,
    around: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
) -> Timing:
    """Time ``reps`` calls of ``fn`` after ``warmup`` untimed ones; the seconds of each.

    ``prepare()`` builds a fresh argument for each call, untimed (``fn(prepare())``; without
    it ``fn()``). Before each timed call, untimed: ``gc.collect()`` with ``collect`` and a
    ``settle``-second pause (idle OpenMP/BLAS workers of the last call stop spinning).
    ``around()`` is entered just around each timed call (e.g. a probe). A warm-up slower
    than ``slow`` seconds leaves one timed call."""

    def call() -> Any:
        return fn() if prepare is None else fn(prepare())

    first = None
    result = None
    for _ in range(warmup):
        clock = time.perf_counter()
        result = call()
        first = time.perf_counter() - clock if first is None else first
    if slow is not None and first is not None and first > slow:
        reps = 1
    seconds = []
    for _ in range(reps):
        arg = None if prepare is None else prepare()
        if collect:
            gc.collect()
        if settle:
            time.sleep(settle)
        with around() if around is not None else contextlib.nullcontext():
            clock = time.perf_counter()
            result = fn() if prepare is None else fn(arg)
            seconds.append(time.perf_counter() - clock)
        del arg
    return Timing(seconds, result, first)


@dataclass(frozen=True)
class PeakRSS:
    """Resident-set high-water marks in bytes: this process's, and the largest of its
    terminated, waited-for children (and theirs), as the kernel keeps them."""

    self: int
    children: int

    @property
    def self_mib(self) -> float:
        return self.self / 2**20

    @property
    def children_mib(self) -> float:
        return self.children / 2**20


def peak_rss() -> PeakRSS:
    """:class:`PeakRSS` now (``getrusage``; ``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    unit = 1 if sys.platform == "darwin" else 1024
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return PeakRSS(own * unit, kids * unit)


def _status_bytes(field_name: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def rss() -> int:
    """This process's resident set size now (bytes)."""
    import psutil

    return psutil.Process().memory_info().rss


class PeakMemory:
    """How far a block raises this process's resident-memory high-water mark above the
    resident memory at its start (Linux): the kernel's mark is reset on entry
    (``/proc/self/clear_refs`` = 5) and ``VmHWM`` read on exit, so torch and numpy
    allocations count alike (``tracemalloc`` would miss torch's). ``bytes`` / ``mib``."""

    def __enter__(self) -> PeakMemory:
        self.before = rss()
        with open("/proc/self/clear_refs", "w") as clear:  # VmHWM := current RSS
            clear.write("5")
        self.peak = self.before
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak = _status_bytes("VmHWM")

    @property
    def bytes(self) -> int:
        return max(0, self.peak - self.before)

    @property
    def mib(self) -> float:
        return self.bytes / 2**20


def load_average(ndigits: int | None = 2) -> float | None:
    """The machine's 1-minute load average (timings on a busy machine are inflated),
    rounded to ``ndigits`` (``None``: as the kernel reports it); ``None`` if unknown."""
    loads = load_averages(ndigits)
    return None if loads is None else loads[0]


def load_averages(ndigits: int | None = 2) -> tuple[float, float, float] | None:
    """The 1, 5 and 15-minute load averages (see :func:`load_average`)."""
    try:
        loads = os.getloadavg()
    except (AttributeError, OSError):
        return None
    if ndigits is None:
        return loads
    return tuple(round(v, ndigits) for v in loads)  # type: ignore[return-value]


def cpu_count() -> int:
    """The CPUs this process may run on (the figures' machine)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def machine(*, system: bool = True, unit: str = "CPUs") -> str:
    """``Linux x86_64, 2 CPUs`` (``system=False``: without the OS name)."""
    name = f"{platform.system()} {platform.machine()}" if system else platform.machine()
    return f"{name}, {cpu_count()} {unit}"


def memory_gib() -> float:
    """The machine's physical memory in GiB."""
    import psutil

    return psutil.virtual_memory().total / 2**30


def versions(*packages: str) -> dict[str, str]:
    """Installed versions of ``packages`` (``python`` is the interpreter's)."""
    out = {}
    for name in packages:
        if name == "python":
            out[name] = platform.python_version()
            continue
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def processes_with(marker: str) -> list[Any]:
    """The running processes (``psutil.Process``) whose command line mentions ``marker``."""
    import psutil

    return [
        proc
        for proc in psutil.process_iter(["cmdline"])
        if any(marker in part for part in proc.info.get("cmdline") or [])
    ]


def utc_now() -> str:
    """``2026-01-31 12:00 UTC``: when a measurement ran."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def probe_grid(
    client_app: Any,
    run_config: Mapping[str, Any],
    num_nodes: int,
    norms: list[float],
    clients: list[int] | None = None,
) -> Any:
    """An :class:`~fl_app.inprocess.InProcessGrid` that also records the L2 norm of every
    silo's own update (reply − sent model, before anything the server does to it) in
    ``norms`` and, with ``clients``, how many silos each training round was sent to."""
    import torch
    from flwr.app import MessageType

    from fl_app.inprocess import InProcessGrid
    from strategies.flatten import Layout, flatten

    class ProbeGrid(InProcessGrid):
        def send_and_receive(self, messages, *, timeout=None):
            messages = list(messages)
            if clients is not None and any(
                m.metadata.message_type == MessageType.TRAIN for m in messages
            ):
                clients.append(len(messages))
            return super().send_and_receive(messages, timeout=timeout)

        def _deliver(self, msg):
            reply = super()._deliver(msg)
            if msg.metadata.message_type == MessageType.TRAIN and not reply.has_error():
                sent = msg.content.array_records.get("arrays")
                got = reply.content.array_records.get("arrays")
                if sent is not None and got is not None:
                    layout = Layout.of(sent)
                    delta = flatten(got, layout) - flatten(sent, layout)
                    norms.append(float(torch.linalg.vector_norm(delta.double())))
            return reply

    return ProbeGrid(client_app, run_config, num_nodes)


# =================================================================== child processes
def stop_tree(proc: Any) -> None:
    """SIGTERM a process (a ``Popen``, a ``psutil.Process`` or a pid) and its descendants,
    then SIGKILL what is left."""
    import psutil

    from fl_app.local_run import stop_process_tree

    with contextlib.suppress(psutil.NoSuchProcess):
        if not isinstance(proc, psutil.Process):
            proc = psutil.Process(proc if isinstance(proc, int) else proc.pid)
        stop_process_tree(proc)


@contextlib.contextmanager
def child(cmd: Sequence[str], **popen: Any) -> Iterator[subprocess.Popen]:
    """``subprocess.Popen(cmd, **popen)`` for the block; whatever of its process tree still
    runs when the block ends (normally, by an error or a timeout) is stopped."""
    proc = subprocess.Popen(list(cmd), **popen)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            stop_tree(proc)


def run_workers(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    *,
    workers: int,
    initializer: Callable[[], Any] | None = None,
    inline: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    on_error: Callable[[Any, BaseException], Any] | None = None,
    progress: bool = False,
    what: str = "runs",
) -> Iterator[tuple[Any, Any]]:
    """``(item, fn(item))`` for every item: with ``workers`` > 1 from a pool of that many
    spawned processes (each set up by ``initializer``, e.g. :func:`prepare_worker`) as the
    calls finish; else in this process, in order, inside the ``inline()`` context.

    Progress (done/total, elapsed, ETA) of ``what`` goes to stderr: a bar when stderr is a
    terminal or ``progress`` (``--progress``) is set, else one log line per finished call.

    The pool is ``concurrent.futures``' rather than ``multiprocessing.Pool``: when a worker
    dies (killed from outside), ``Pool`` replaces it and waits forever for its task; here
    its pending calls fail, and ``on_error(item, exception)`` gives their result (without
    it the exception is raised). When the caller stops early (an exception, ``SIGTERM``
    turned into ``SystemExit``), pending calls are cancelled and the workers terminated."""
    items = list(items)
    calls = _run_calls(fn, items, workers, initializer, inline, on_error)
    with (
        contextlib.closing(calls),  # an early stop reaches the pool at once
        Progress(len(items), what, bar=True if progress else None, emit=logging.info) as shown,
    ):
        for item, result in calls:
            shown.advance(_describe(item))
            yield item, result


def _describe(item: Any) -> str:
    """A short name of a work item for the progress note."""
    key = getattr(item, "key", item)
    text = " ".join(map(str, key)) if isinstance(key, tuple) else str(key)
    return text if len(text) <= 60 else text[:57] + "..."


def _run_calls(
    fn: Callable[[Any], Any],
    items: list[Any],
    workers: int,
    initializer: Callable[[], Any] | None,
    inline: Callable[[], contextlib.AbstractContextManager[Any]] | None,
    on_error: Callable[[Any, BaseException], Any] | None,
) -> Iterator[tuple[Any, Any]]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    if workers <= 1:
        with inline() if inline is not None else contextlib.nullcontext():
            for item in items:
                yield item, fn(item)
        return
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=initializer)
    try:
        futures = {pool.submit(fn, item): item for item in items}
        for future in as_completed(futures):
            item = futures[future]
            try:
                result = future.result()
            except Exception as exc:  # BrokenProcessPool: a worker died
                if on_error is None:
                    raise
                result = on_error(item, exc)
            yield item, result
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            proc.terminate()
        raise
    pool.shutdown()


def run_json_child(
    module: str, *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> Any | None:
    """``python -m <module> <args>`` in a child process; the JSON of the last line it
    prints, or ``None`` (logged) if it failed."""
    cmd = [sys.executable, "-m", module, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, check=False)
    if proc.returncode != 0:
        logging.warning("%s child failed: %s", module, proc.stderr.strip().splitlines()[-1:])
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ============================================================================ tables
def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value) of ``values``."""
    data = [float(v) for v in values]
    if not data:
        raise ValueError("mean_std of no values")
    return statistics.fmean(data), statistics.stdev(data) if len(data) > 1 else 0.0


Format = str | Callable[[float], str]


def _format(value: Any, fmt: Format | None) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence):  # values over seeds or repeats: mean ± std
        mean, std = mean_std(value)
        return _format(mean, fmt) + ("" if len(value) < 2 else f" ± {_format(std, fmt)}")
    if isinstance(value, float) and math.isnan(value):
        return "–"
    if fmt is None:
        return f"{value:g}" if isinstance(value, float) else str(value)
    return fmt(value) if callable(fmt) else format(value, fmt)


def _number(value: Any) -> float | None:
    """A cell's number: itself, or the mean of values over seeds; ``None`` for text."""
    if value is None or isinstance(value, str):
        return None
    if isinstance(value, Sequence):
        return mean_std(value)[0] if value else None
    return float(value)


@dataclass(frozen=True)
class Versus:
    """A computed column: column ``of`` against its baseline, as ``value ÷ baseline`` (or
    ``baseline ÷ value`` with ``invert``, a speed-up; ``value − baseline`` with ``diff``).

    The baseline is column ``column`` of the same row, or, with ``row``, column ``of`` of
    the row whose ``label`` column (default: the first) is ``row``, among the rows sharing
    the ``group`` column's value (default: all rows; ``row=None`` with ``group``: the first
    row of the group). Cells with no baseline, and the baseline rows themselves unless
    ``show_baseline``, read ``missing``."""

    of: str
    column: str | None = None
    row: str | None = None
    label: str | None = None
    group: str | None = None
    invert: bool = False
    diff: bool = False
    fmt: Format = ".2f"
    missing: str = "–"
    show_baseline: bool = True

    def compare(self, value: float | None, base: float | None) -> float | None:
        if value is None or base is None:
            return None
        if self.diff:
            return value - base
        num, den = (base, value) if self.invert else (value, base)
        return None if den == 0 else num / den


@dataclass(frozen=True)
class Column:
    """A header cell with how its numbers are formatted (``fmt``: a format spec or a
    function), its alignment (``l``, ``r``, ``c`` or ``""`` for none) and, for a computed
    column, its :class:`Versus`."""

    name: str
    fmt: Format | None = None
    align: str | None = None
    versus: Versus | None = None


class Table:
    """Rows under a header, rendered as Markdown (:meth:`markdown`), aligned plain text
    (:meth:`text`) or on a console (:meth:`print`, rich when installed).

    ``columns`` are names or :class:`Column`. Cells are text, numbers (formatted by their
    column's ``fmt``), ``None`` (``–``) or sequences of numbers (values over seeds or
    repeats: ``mean ± std``). :class:`Versus` columns are computed when rendered; give
    them no cell. Alignment: ``align`` (``"llrr"``: one letter per column) or the columns'
    own, else the first ``left`` columns left and the rest right."""

    def __init__(
        self,
        columns: Sequence[str | Column],
        *,
        align: str | None = None,
        left: int = 1,
        title: str | None = None,
    ) -> None:
        self.columns = [c if isinstance(c, Column) else Column(c) for c in columns]
        letters = list(align) if align is not None else [None] * len(self.columns)
        if len(letters) != len(self.columns):
            raise ValueError(f"align {align!r} does not have one letter per column")
        self.align = [
            a if a is not None else (c.align if c.align is not None else ("l" if i < left else "r"))
            for i, (a, c) in enumerate(zip(letters, self.columns, strict=True))
        ]
        self.title = title
        self.rows: list[list[Any]] = []
        self._inputs = [i for i, c in enumerate(self.columns) if c.versus is None]

    @property
    def header(self) -> list[str]:
        return [c.name for c in self.columns]

    def add(self, *cells: Any) -> Table:
        """One row: a cell per column that is not computed, or a cell per column (a row's
        own cell for a computed column replaces the computed one unless it is ``None``)."""
        if len(cells) == len(self.columns):
            self.rows.append(list(cells))
            return self
        if len(cells) != len(self._inputs):
            raise ValueError(f"{len(cells)} cells for {len(self._inputs)} columns")
        row: list[Any] = [None] * len(self.columns)
        for i, cell in zip(self._inputs, cells, strict=True):
            row[i] = cell
        self.rows.append(row)
        return self

    def extend(self, rows: Iterable[Sequence[Any]]) -> Table:
        for cells in rows:
            self.add(*cells)
        return self

    def _index(self, name: str | None, default: int = 0) -> int:
        if name is None:
            return default
        return self.header.index(name)

    def _baseline(self, v: Versus, row: list[Any]) -> tuple[float | None, bool]:
        """The baseline number of ``row`` for ``v`` and whether ``row`` is the baseline."""
        if v.column is not None:
            return _number(row[self._index(v.column)]), False
        of = self._index(v.of)
        peers = self.rows
        if v.group is not None:
            g = self._index(v.group)
            peers = [r for r in self.rows if r[g] == row[g]]
        if v.row is None:
            base = peers[0] if peers else None
        else:
            lab = self._index(v.label)
            base = next((r for r in peers if r[lab] == v.row), None)
        if base is None:
            return None, False
        return _number(base[of]), base is row

    def cells(self) -> list[list[str]]:
        """Every row's cells as text (computed columns included)."""
        out = []
        for row in self.rows:
            cells = []
            for column, value in zip(self.columns, row, strict=True):
                v = column.versus
                if v is None or value is not None:
                    cells.append(_format(value, column.fmt if v is None else v.fmt))
                    continue
                base, is_base = self._baseline(v, row)
                result = v.compare(_number(row[self._index(v.of)]), base)
                if result is None or (is_base and not v.show_baseline):
                    cells.append(v.missing)
                else:
                    cells.append(_format(result, v.fmt))
            out.append(cells)
        return out

    def markdown(self) -> str:
        """A Markdown table (pipes, one alignment row)."""
        rule = {"l": "---", "r": "---:", "c": ":---:", "": "---"}

        def line(cells: Sequence[str]) -> str:
            return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"

        lines = [line(self.header), "|" + "|".join(rule[a] for a in self.align) + "|"]
        lines += [line(cells) for cells in self.cells()]
        return "\n".join(lines)

    def text(self, sep: str = "  ", rule: bool = True) -> str:
        """Aligned plain text: the header, a rule of dashes (``rule``), the rows."""
        body = self.cells()
        widths = [
            max(len(line[i]) for line in [self.header, *body]) for i in range(len(self.header))
        ]

        def line(cells: Sequence[str]) -> str:
            parts = [
                c.rjust(w) if a == "r" else c.center(w) if a == "c" else c.ljust(w)
                for c, w, a in zip(cells, widths, self.align, strict=True)
            ]
            return sep.join(parts).rstrip()

        lines = [line(self.header)]
        if rule:
            lines.append(sep.join("-" * w for w in widths))
        lines += [line(cells) for cells in body]
        return "\n".join(([self.title] if self.title else []) + lines)

    def print(self, *, width: int | None = None, file: Any = None, rich: bool = True) -> None:
        """On the console: a rich table (at least ``width`` columns wide) when rich is
        installed and ``rich``, else :meth:`text`."""
        try:
            if not rich:
                raise ImportError
            from rich.console import Console
            from rich.table import Table as RichTable
        except ImportError:
            print(("\n" if self.title else "") + self.text(), file=file)
            return
        table = RichTable(title=self.title)
        justify = {"l": "left", "r": "right", "c": "center", "": "left"}
        for name, a in zip(self.header, self.align, strict=True):
            table.add_column(name, justify=justify[a])
        for cells in self.cells():
            table.add_row(*cells)
        console = Console(file=file)
        if width is not None:
            console = Console(file=file, width=max(width, console.width))
        console.print(table)


def json_safe(value: Any, *, infinity: bool = False) -> Any:
    """``value`` with NaN (and ±inf, unless ``infinity``) replaced by ``None``, recursively
    through mappings (keys as text), lists and tuples: what ``json.dumps(allow_nan=False)``
    accepts and any JSON reader parses."""
    if isinstance(value, float) and (math.isnan(value) or (math.isinf(value) and not infinity)):
        return None
    if isinstance(value, Mapping):
        return {k if isinstance(k, str) else str(k): json_safe(v, infinity=infinity)
                for k, v in value.items()}  # fmt: skip
    if isinstance(value, list | tuple):
        return [json_safe(v, infinity=infinity) for v in value]
    return value


def write_between_markers(path: Path, text: str, start: str, end: str, title: str) -> None:
    """Put ``text`` (which starts with ``start`` and ends with ``end``) in place of the part
    of ``path`` between those markers; without them, append it (a new file starts with
    ``# title``). The rest of the doc, written by hand or by another benchmark, stays."""
    old = path.read_text() if path.exists() else ""
    if start in old and end in old:
        head, rest = old.split(start, 1)
        path.write_text(head + text + rest.split(end, 1)[1])
    else:
        path.write_text((old + "\n\n" if old else f"# {title}\n\n") + text + "\n")


# ======================================================================== provenance
def code_label(record: Mapping[str, Any] | None, default: str = "unknown") -> str:
    """:meth:`CodeVersion.label` of a recorded :meth:`CodeVersion.to_json` (``default``
    when nothing was recorded)."""
    return CodeVersion.from_json(record).label() if record else default


@dataclass
class Session:
    """One benchmark run: the command that started it, the code measured, and its clock
    and load average from the start (:func:`start`)."""

    command: str
    code: CodeVersion
    clock: Stopwatch = field(default_factory=Stopwatch)
    load_start: float | None = field(default_factory=load_average)

    @property
    def seconds(self) -> float:
        return self.clock.seconds

    def restart(self) -> None:
        """Start the clock and read the load average again (after a warm-up that should
        not count)."""
        self.clock, self.load_start = Stopwatch(), load_average()

    def header(self) -> str:
        """``Generated by `<command>` from commit `…```: the first line of a doc."""
        return f"Generated by `{self.command}` from {self.code.label()}"

    def report(self) -> dict[str, Any]:
        """What every report's JSON starts with: the doc's header, the code, the machine,
        the load average at the start and the seconds so far."""
        return {
            "header": self.header(),
            "code": self.code.to_json(),
            "machine": machine(),
            "load-start": self.load_start,
            "seconds": self.seconds,
        }


def quiet_worker() -> None:
    """Initialiser of a worker that runs in-process federations: :func:`prepare_worker`
    with the app's loggers at WARNING."""

    def silence() -> None:
        quiet("flwr", "fedsilo", "fl_app")
        logging.getLogger().setLevel(logging.WARNING)

    prepare_worker(silence=silence)


def start(
    module: str,
    argv: Sequence[str] | None,
    outputs: Path | Iterable[Path | None] | None = None,
    *,
    allow_dirty: bool = False,
) -> Session:
    """The :class:`Session` of ``python -m benchmarks.<module> <argv>``: refuses (exit 2)
    to write ``outputs`` into ``docs/`` from uncommitted code unless ``allow_dirty``
    (:func:`~benchmarks.provenance.guard_docs_write`), then starts the clock."""
    code = code_version(allow_dirty)
    guard_docs_write(outputs, code)
    return Session(command_line(module, argv), code)
