"""A SuperNode whose round cost is work, not process start-up and sleeps; and its supervision.

On Flower's deployment runtime (1.42) every message a SuperNode receives costs, besides the
ClientApp's own work:

* up to **3 s** before the SuperNode sees it: its loop sleeps 3 s whenever the SuperLink had
  nothing for it (``flwr/supernode/start_client_internal.py``), and up to 0.5 s more before
  it notices the ClientApp's reply;
* up to **1 s** before its SuperExec picks the task up (``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``);
* a fresh ``flwr-clientapp --token …`` process (``SubprocessExecutor``), which imports
  Flower, PyTorch, scikit-learn, Opacus and the app again (~4 s on an idle core) and
  extracts the FAB again;
* **1 s** whenever a reader asks for an object a moment before its writer pushed it
  (``pull_objects``' first back-off), which prompt polling makes frequent.

``python -m adapters.supernode run -- <flower-supernode arguments>`` (what the local
backend, the silo kit's ``start.sh`` and the AzureML SuperNode job start; see
:func:`supernode_command`) runs Flower's own SuperNode, with changes made at Flower's
seams, not in a fork of Flower:

* **warm ClientApp execution** (:mod:`adapters.supernode.executor`): the SuperNode runs with
  ``--isolation process`` and this package starts its SuperExec, which is Flower's
  ``run_superexec`` loop with a different executor. A *zygote* process imports the
  environment once (Flower, PyTorch, … the app's third-party imports, then what its tasks
  imported lazily and the app of the FAB they ran); each task is a ``fork()`` of it that
  runs Flower's own ``run_clientapp`` — the same code as ``flwr-clientapp`` — in a fresh
  process per message. The SuperNode registers with the SuperLink only once the zygote is
  ready, so a (re)started silo answers its first round promptly;
* **prompt polling** (:mod:`adapters.supernode.pacing`): the SuperNode's 3 s and 0.5 s
  sleeps become back-off intervals that start at tens of milliseconds after activity and
  grow back to Flower's values when idle, objects are retried after 20 ms, and the SuperNode
  wakes its SuperExec as soon as it has stored a message.

``supernode.executor: subprocess`` in the spec runs Flower's default instead:
``flower-supernode`` exactly as given.

:class:`RestartPolicy` is the exponential back-off with which the local backend and the
AzureML SuperNode job restart a SuperNode that exits (``start.sh`` does the same in bash).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["DEFAULT_APP", "EXECUTORS", "ExecutorMode", "RestartPolicy", "supernode_command"]

#: ``warm``: this package's SuperNode (fork-per-message ClientApps, prompt polling);
#: ``subprocess``: Flower's default ``flower-supernode`` (one cold process per message).
ExecutorMode = Literal["warm", "subprocess"]
EXECUTORS: tuple[str, ...] = ("warm", "subprocess")
#: The ClientApp module a warm SuperNode imports ahead of the first message by default
#: (then forgets, keeping its third-party imports: each task imports it from the FAB).
DEFAULT_APP = "fl_app.client_app"


def supernode_command(
    flower_args: Sequence[str],
    executor: ExecutorMode = "warm",
    *,
    app: str | None = DEFAULT_APP,
    preload: Sequence[str] = (),
    python: str | None = None,
) -> list[str]:
    """The command that starts a SuperNode with ``flower_args`` (the arguments of
    ``flower-supernode``, without the program name) in mode ``executor``. A warm SuperNode
    imports the ClientApp module ``app`` and the modules ``preload`` once, ahead of the
    first message (``python``: the interpreter, default this one).

    Raises:
        ValueError: ``executor`` is not one of :data:`EXECUTORS`, or ``flower_args`` choose
            an ``--isolation`` (the warm mode sets it).
    """
    if executor not in EXECUTORS:
        raise ValueError(
            f"unknown SuperNode executor {executor!r}; use one of {', '.join(EXECUTORS)} "
            "('subprocess' is Flower's default: one flwr-clientapp process per message)"
        )
    if executor == "subprocess":
        return ["flower-supernode", *flower_args]
    if any(a == "--isolation" or a.startswith("--isolation=") for a in flower_args):
        raise ValueError(
            "the warm SuperNode runs Flower's SuperNode with --isolation process and its own "
            "SuperExec; drop --isolation from the flower-supernode arguments, or use "
            "executor 'subprocess'"
        )
    head = [python or sys.executable, "-m", "adapters.supernode", "run"]
    if app:
        head += ["--app", app]
    for module in preload:
        head += ["--preload", module]
    return [*head, "--", *flower_args]


@dataclass(frozen=True)
class RestartPolicy:
    """Exponential back-off between restarts of a process that exits.

    The n-th consecutive restart waits ``initial * factor**(n-1)`` seconds, at most
    ``maximum``; a process that ran ``healthy_after`` seconds or longer before exiting
    counts as healthy again (the next restart waits ``initial``).
    """

    initial: float = 1.0
    factor: float = 2.0
    maximum: float = 60.0
    healthy_after: float = 60.0
    #: Consecutive quick failures after which the supervisor gives up (a SuperNode that
    #: cannot start, e.g. a refused key, is not restarted forever).
    give_up_after: int = 10

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.factor < 1 or self.maximum < self.initial:
            raise ValueError(
                "RestartPolicy needs initial > 0, factor >= 1 and maximum >= initial; got "
                f"initial={self.initial}, factor={self.factor}, maximum={self.maximum}"
            )
        if self.give_up_after < 1:
            raise ValueError(f"RestartPolicy.give_up_after must be ≥ 1, got {self.give_up_after}")

    def consecutive(self, previous: int, ran: float) -> int:
        """The count of consecutive quick failures after a process that ran ``ran`` seconds
        exited, ``previous`` being the count before it started."""
        return 1 if ran >= self.healthy_after else previous + 1

    def delay(self, consecutive: int) -> float:
        """Seconds to wait before restart number ``consecutive`` (1-based) of a run of
        quick failures."""
        return min(self.maximum, self.initial * self.factor ** max(0, consecutive - 1))
