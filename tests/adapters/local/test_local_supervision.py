"""The local backend's supervision of SuperNodes (adapters/local/run.py) with real
processes: a silo whose process exits is restarted with back-off, its log kept across
restarts, the exits recorded; one that keeps failing at once is given up on. The whole
backend with real SuperNodes SIGKILLed mid-run: test_local_e2e.py."""

from __future__ import annotations

import sys
import time

from adapters.federation.spec import SiloSpec
from adapters.local.run import _Proc, _start, _stop_all, _Supervised, _Supervisor
from adapters.supernode import RestartPolicy


def _command(tmp_path, name: str, exits_first: int):
    """The n-th start prints its number, then exits with 9 for the first ``exits_first``
    starts and stays up afterwards."""
    counter = tmp_path / f"{name}.count"

    def command(port: int) -> list[str]:
        code = (
            "import pathlib, sys, time\n"
            f"p = pathlib.Path({str(counter)!r})\n"
            "n = int(p.read_text()) + 1 if p.exists() else 1\n"
            "p.write_text(str(n))\n"
            f"print('start', n, 'port', {port}, flush=True)\n"
            f"sys.exit(9) if n <= {exits_first} else time.sleep(120)\n"
        )
        return [sys.executable, "-c", code]

    return command


def test_exited_silos_are_restarted_with_back_off_and_hopeless_ones_given_up(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: list[_Proc] = []
    events: list[str] = []

    def start(name: str, cmd: list[str], append: bool = False) -> _Proc:
        procs.append(_start(name, cmd, {}, logs, append=append))
        return procs[-1]

    silos = []
    for name, exits_first in (("steady", 0), ("flaky", 2), ("broken", 99)):
        command = _command(tmp_path, name, exits_first)
        silo = SiloSpec(name=name)
        silos.append(_Supervised(silo, command, start(name, command(1000)), time.monotonic()))
    ports = iter(range(2000, 2100))
    policy = RestartPolicy(initial=0.2, factor=2.0, maximum=0.4, give_up_after=3)
    supervisor = _Supervisor(
        silos, policy, lambda n, c: start(n, c, append=True), lambda: next(ports), events.append
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
            silos[2].given_up and len(silos[1].exits) == 2 and silos[1].restart_at is None
        ):
            supervisor.poll()
            time.sleep(0.05)
        steady, flaky, broken = silos
        while "start 3" not in flaky.proc.log() and time.monotonic() < deadline:
            time.sleep(0.05)  # its third start is up; let it say so
        assert steady.exits == [] and steady.proc.popen.poll() is None
        # flaky: exited twice (code 9), restarted twice, now up on a new port.
        assert [e["code"] for e in flaky.exits] == [9, 9]
        assert flaky.proc.popen.poll() is None
        log = flaky.proc.log()
        assert "start 1 port 1000" in log and "start 3 port 200" in log  # one log, appended
        # broken: restarted until give_up_after quick failures in a row, then left alone.
        assert broken.given_up and len(broken.exits) == 2
        assert any("restart 1 in 0.2s" in e for e in events)
        assert any("'broken'" in e and "not restarting it again" in e for e in events)
        assert sum("SuperNode restarted" in e for e in events) == 4  # flaky 2, broken 2
    finally:
        _stop_all(procs)
