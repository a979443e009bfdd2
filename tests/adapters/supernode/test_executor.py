"""The warm executor's parts (adapters/supernode/executor.py): which modules the zygote keeps,
the fresh-process state of a forked task, the zygote's life cycle, its learned imports and
the SuperExec's pacing. A real ClientApp forked from the zygote, against Flower's default,
is tests/e2e/test_warm_supernode_deployment.py."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import time

from adapters.supernode.executor import (
    ForkExecutor,
    Pacer,
    _Zygote,
    forget_app_modules,
    fresh_process_state,
    zygote_pid,
)


def _python(code: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_the_zygote_forgets_the_apps_own_modules_and_keeps_third_party_ones():
    """Importing fedsilo's ClientApp, then forgetting it: every module of the fedsilo
    distribution goes (the task re-imports them from the FAB), Flower and PyTorch stay."""
    out = _python(
        """
        import json, sys
        from adapters.supernode.executor import forget_app_modules
        before = set(sys.modules)
        import fl_app.client_app
        removed = forget_app_modules(["fl_app.client_app"], before)
        left = sorted({m.split(".")[0] for m in sys.modules if m not in before})
        import fl_app.client_app as again  # re-imported from source, app intact
        print(json.dumps({"removed": sorted({m.split(".")[0] for m in removed}),
                          "left": left, "app": type(again.app).__name__}))
        """
    )
    result = json.loads(out)
    assert {"fl_app", "strategies", "tasks"} <= set(result["removed"])
    assert not {"torch", "flwr", "numpy"} & set(result["removed"])
    assert {"torch", "numpy", "opacus", "pydantic"} <= set(result["left"])
    assert not {"fl_app", "strategies", "tasks"} & set(result["left"])
    assert result["app"] == "ClientApp"


def test_modules_from_outside_the_installation_are_forgotten(tmp_path, monkeypatch):
    package = tmp_path / "someapp"
    package.mkdir()
    (package / "__init__.py").write_text("import colorsys\nVALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("colorsys", None)
    before = set(sys.modules)
    import someapp  # noqa: F401

    removed = forget_app_modules([], before)
    assert removed == ["someapp"]  # from tmp_path: the app's code
    assert "colorsys" in sys.modules  # the standard library's: kept


def test_a_forked_task_starts_from_a_fresh_interpreters_random_state():
    """A fresh interpreter seeds NumPy's and PyTorch's global generators from OS entropy;
    so does every task forked from one zygote: no two tasks (nor the zygote) share a
    stream, whatever the zygote drew before."""
    import random

    import numpy as np
    import torch

    seeds = {json.loads(_python("import torch; print(torch.initial_seed())")) for _ in "ab"}
    assert len(seeds) == 2  # this PyTorch's start-up seed is random, not a constant
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    draws = []
    for _ in range(2):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the task
            os.close(read)
            fresh_process_state()
            values = [torch.rand(2).tolist(), float(np.random.rand()), random.random()]
            os.write(write, json.dumps(values).encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            draws.append(json.loads(pipe.read()))
        os.waitpid(pid, 0)
    zygote = [torch.rand(2).tolist(), float(np.random.rand()), random.random()]
    for i in range(3):  # torch, numpy, random: three different streams
        assert len({json.dumps(d[i]) for d in [*draws, zygote]}) == 3, i


def test_the_zygote_reports_ready_and_is_restarted_when_it_dies():
    executor = ForkExecutor(None, ["json"], Pacer(first=0.01, maximum=0.01))
    try:
        assert executor._is_ready(120)
        assert executor.ready["preloaded"] == ["json"] and executor.ready["forgotten"] == 0
        first = zygote_pid(executor)
        os.kill(first, 9)
        executor._proc.wait(timeout=30)
        executor.reconcile()  # between task polls: a dead zygote is replaced
        assert zygote_pid(executor) != first
        assert executor._is_ready(120)
    finally:
        executor.close()
    assert executor._proc.poll() is not None  # closed with the SuperExec


def test_the_zygote_learns_the_third_party_modules_its_tasks_imported():
    left, right = socket.socketpair()
    zygote = _Zygote(left, app="fl_app.client_app")
    try:
        import pydoc_data.topics  # noqa: F401 - a standard-library module the "task" imported

        known = set(sys.modules) - {"pydoc_data", "pydoc_data.topics"}
        zygote.report(known)  # in the task, before it exits
        for name in ("pydoc_data.topics", "pydoc_data"):
            del sys.modules[name]
        zygote.learn()  # in the zygote
        assert "pydoc_data.topics" in sys.modules and zygote.learned == 2
    finally:
        for sock in (left, right, zygote.learn_in, zygote.learn_out):
            sock.close()


def _installed_fab(root, digest: str, value: int):
    """A directory shaped like a FAB Flower installed: pyproject naming the ClientApp."""
    directory = root / digest[:8]
    (directory / "warmapp_pkg").mkdir(parents=True)
    (directory / "pyproject.toml").write_text(
        '[tool.flwr.app.components]\nclientapp = "warmapp_pkg.client:app"\n'
    )
    (directory / "warmapp_pkg" / "__init__.py").write_text("")
    (directory / "warmapp_pkg" / "client.py").write_text(f"app = {value}\n")
    return directory


def test_the_zygote_keeps_the_app_of_the_fab_its_tasks_ran_and_no_other(tmp_path):
    """After a task of FAB a, the zygote imports a's ClientApp from a's installed directory
    (its tasks then find it loaded); a task of FAB b forgets it and imports b's own."""
    left, right = socket.socketpair()
    zygote = _Zygote(left, app="warmapp_pkg.client")
    saved_path = list(sys.path)
    try:
        fab_a = _installed_fab(tmp_path, "a" * 64, 1)
        zygote.installed = ("a" * 64, str(fab_a))
        zygote.report(set(sys.modules))
        zygote.learn()
        assert zygote.warm_fab == "a" * 64
        assert sys.modules["warmapp_pkg.client"].app == 1
        assert sys.modules["warmapp_pkg.client"].__file__.startswith(str(fab_a))
        zygote.prepare("a" * 64)  # a task of the same FAB: the app stays loaded
        assert "warmapp_pkg.client" in sys.modules
        zygote.prepare("b" * 64)  # a task of another FAB: forgotten, a's path gone
        assert "warmapp_pkg.client" not in sys.modules and "warmapp_pkg" not in sys.modules
        assert str(fab_a) not in sys.path
        fab_b = _installed_fab(tmp_path, "b" * 64, 2)
        sys.path.insert(0, str(fab_b))  # what Flower's load_app does for the task
        import warmapp_pkg.client

        assert warmapp_pkg.client.app == 2
    finally:
        sys.path[:] = saved_path
        for name in [n for n in sys.modules if n.startswith("warmapp_pkg")]:
            del sys.modules[name]
        for sock in (left, right, zygote.learn_in, zygote.learn_out):
            sock.close()


def test_a_task_reuses_the_fab_directory_the_zygote_saw_installed(tmp_path, monkeypatch):
    """Flower extracts the FAB for every message; a task of a FAB whose sha256 the zygote
    has seen installed gets that directory back without extracting it again."""
    from flwr.supernode.runtime import run_clientapp as flower

    extracted: list[bytes] = []

    def flower_install(fab_file, install_dir=None, skip_prompt=False):
        extracted.append(fab_file)
        return tmp_path / "installed"

    monkeypatch.setattr(flower, "install_from_fab", flower_install)
    left, right = socket.socketpair()
    zygote = _Zygote(left, app=None)
    try:
        fab = b"a FAB's bytes"
        zygote.prepare(None)
        assert flower.install_from_fab(fab, skip_prompt=True) == tmp_path / "installed"
        assert extracted == [fab]  # unknown: Flower's install
        digest = hashlib.sha256(fab).hexdigest()
        assert zygote.installed == (digest, str(tmp_path / "installed"))
        (tmp_path / "installed").mkdir()
        zygote.fabs[digest] = str(tmp_path / "installed")  # learned from that task
        monkeypatch.setattr(flower, "install_from_fab", flower_install)
        zygote.prepare(digest)
        assert flower.install_from_fab(fab, skip_prompt=True) == tmp_path / "installed"
        assert extracted == [fab]  # known and present: not extracted again
        assert flower.install_from_fab(b"other bytes", skip_prompt=True)
        assert len(extracted) == 2  # another FAB: Flower's install
    finally:
        for sock in (left, right, zygote.learn_in, zygote.learn_out):
            sock.close()


def test_a_wake_up_ends_the_superexecs_wait_at_once():
    read, write = os.pipe()
    pacer = Pacer(read, first=0.05, maximum=5.0)
    os.write(write, b"m")
    started = time.monotonic()
    pacer.wait()
    assert time.monotonic() - started < 2.0  # not the 5 s maximum
    os.close(write)  # the SuperNode is gone: back to plain back-off
    pacer.wait()
    assert pacer.wake_fd is None
    started = time.monotonic()
    pacer.wait()
    assert time.monotonic() - started < 2.0
