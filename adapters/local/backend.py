"""The ``local`` launch backend: :func:`adapters.local.run.run_local` (a SuperLink and one
SuperNode per silo on loopback, then ``flwr run``), run in the foreground of ``fedsilo
submit``.

Each submission is recorded under ``<state dir>/<federation>/local/<id>.json`` (see
:func:`adapters.backends.state_dir`) with the process running it, its status and its logs
(``<id>/superlink.log``, ``<id>/<silo>.log``, ``<id>/flwr-run.log``), so ``status`` and
``logs`` work during and after the run, and ``cancel`` interrupts a run going on in another
terminal (which then stops every process it started).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil

from adapters.backends import Submission, find_record, register_backend, state_dir
from adapters.federation.spec import FederationSpec
from adapters.local.run import LocalFederationError, LocalRun, run_local

__all__ = ["LocalBackend", "LocalSubmission"]

#: ``fedsilo logs --job`` names that are not silos, and their log files.
_ROLE_LOGS = {"serverapp": "flwr-run", "flwr-run": "flwr-run", "superlink": "superlink"}


@dataclass
class LocalSubmission:
    """The record of one local run: who runs it and how it went."""

    federation: str
    submission_id: str
    pid: int
    pid_started: float
    status: str = "running"
    details: str = ""
    run_dir: str | None = None

    @staticmethod
    def folder(federation: str) -> Path:
        """Where the local submissions of ``federation`` are recorded."""
        return state_dir() / federation / "local"

    @property
    def path(self) -> Path:
        """The record's JSON file."""
        return self.folder(self.federation) / f"{self.submission_id}.json"

    @property
    def log_dir(self) -> Path:
        """The run's logs: ``superlink.log``, ``<silo>.log``, ``flwr-run.log``."""
        return self.folder(self.federation) / self.submission_id

    def save(self) -> None:
        """Write the record."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(asdict(self), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def start(cls, federation: str) -> LocalSubmission:
        """A new record of a run by this process."""
        now = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        me = psutil.Process()
        record = cls(federation, f"{now}-{secrets.token_hex(2)}", me.pid, me.create_time())
        record.save()
        return record

    @classmethod
    def load(cls, federation: str, submission_id: str | None) -> LocalSubmission:
        """A recorded run of ``federation`` (the latest when no id is given)."""
        path = find_record(
            cls.folder(federation), federation, submission_id,
            submit="fedsilo submit SPEC --backend local", error=LocalFederationError,
        )  # fmt: skip
        return cls(**json.loads(path.read_text(encoding="utf-8")))

    def runner(self) -> psutil.Process | None:
        """The ``fedsilo`` process running this submission, if it still runs."""
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.pid_started) < 1.0:
                return proc
        return None

    def current_status(self) -> str:
        """``running``, the run's final status, or ``interrupted`` when the process that ran
        it ended without recording one (killed)."""
        if self.status == "running" and self.runner() is None:
            return "interrupted"
        return self.status


def summary(run: LocalRun) -> list[str]:
    """What ``fedsilo submit`` prints after a local run: the end of ``flwr run``'s output,
    each silo's SuperNode restarts, and the final status with the server's metrics."""
    lines = run.output.splitlines()[-15:]
    for silo, exits in run.restarts.items():
        codes = ", ".join(str(e["code"]) for e in exits)
        lines.append(f"silo '{silo}': SuperNode restarted {len(exits)}× (exit codes {codes})")
    server = run.final("server")
    lines.append(
        f"status={run.status} run_dir={run.run_dir} "
        + " ".join(f"{k}={v:.4f}" for k, v in server.items() if isinstance(v, float))
    )
    return lines


@register_backend("local")
class LocalBackend:
    """SuperLink + SuperNodes as local processes; any federation spec."""

    spec_model = FederationSpec

    def submit(
        self,
        spec: FederationSpec,
        *,
        wait: bool = True,
        run_dir: Path | None = None,
        on_event: Callable[[str], None] | None = None,
        poll: float = 30.0,
    ) -> Submission:
        """Run the federation to its end (``poll`` is not used: the processes are watched
        every second)."""
        if not wait:
            raise LocalFederationError(
                "the local backend runs the federation in the foreground and cannot --no-wait; "
                "drop --no-wait (and run it in another terminal to keep this one free)"
            )
        main = threading.current_thread() is threading.main_thread()
        if main and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            # Started in the background by a shell (`… &`), which ignores SIGINT: `fedsilo
            # cancel` interrupts this process, so it must hear SIGINT as Ctrl-C again (a
            # handler can only be set from the main thread; a caller's thread keeps its own).
            signal.signal(signal.SIGINT, signal.default_int_handler)
        record = LocalSubmission.start(spec.name)
        try:
            run = run_local(spec, run_dir=run_dir, on_event=on_event, log_dir=record.log_dir)
        except BaseException as exc:
            record.status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            record.details = str(exc)
            record.save()
            raise
        record.status = run.status
        record.details = run.status_details
        record.run_dir = str(run.run_dir) if run.run_dir else None
        record.save()
        return Submission(
            "local", spec.name, record.submission_id, ok=run.ok, summary=summary(run),
            error=f"the run did not complete ({run.status}): {run.status_details}",
        )  # fmt: skip

    def status(self, spec: FederationSpec, submission: str | None) -> Submission:
        """The run's status (``running``, ``finished:completed``, ``failed``, ...)."""
        record = LocalSubmission.load(spec.name, submission)
        statuses = {"federation": record.current_status()}
        if record.run_dir:
            statuses["run_dir"] = record.run_dir
        return Submission("local", spec.name, record.submission_id, statuses=statuses)

    def logs(self, spec: FederationSpec, submission: str | None, job: str) -> None:
        """Print a job's log as written so far: ``serverapp`` (``flwr run``), ``superlink``
        or a silo name."""
        record = LocalSubmission.load(spec.name, submission)
        path = record.log_dir / f"{_ROLE_LOGS.get(job, job)}.log"
        if not path.is_file():
            jobs = sorted(p.stem for p in record.log_dir.glob("*.log"))
            raise LocalFederationError(
                f"local run {record.submission_id} has no log of '{job}'; logs: "
                + (", ".join("serverapp" if j == "flwr-run" else j for j in jobs) or "none")
            )
        sys.stdout.write(path.read_text(encoding="utf-8", errors="replace"))
        sys.stdout.flush()

    def cancel(self, spec: FederationSpec, submission: str | None) -> dict[str, str]:
        """Interrupt the ``fedsilo`` process running the submission (it stops every process
        it started, as on Ctrl-C)."""
        record = LocalSubmission.load(spec.name, submission)
        runner = record.runner() if record.status == "running" else None
        if runner is None:
            return {"federation": f"already {record.current_status()}"}
        if runner.pid == os.getpid():
            raise LocalFederationError(
                "this process runs the submission in the foreground; press Ctrl-C to stop it"
            )
        runner.send_signal(signal.SIGINT)
        return {
            "federation": f"interrupt sent to pid {runner.pid}; it stops every process it started"
        }
