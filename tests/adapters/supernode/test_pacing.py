"""Prompt polling of Flower's SuperNode loop (adapters/supernode/pacing.py)."""

from __future__ import annotations

import importlib.util
import time
import types

import pytest

from adapters.supernode import pacing
from adapters.supernode.pacing import PromptClock


@pytest.fixture
def slept(monkeypatch) -> list[float]:
    """The intervals PromptClock asks the real ``time.sleep`` for (without sleeping)."""
    asked: list[float] = []
    monkeypatch.setattr(time, "sleep", asked.append)
    return asked


def test_idle_polls_start_fast_stay_busy_then_return_to_flowers_3_s(slept, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    clock = PromptClock(idle_first=0.05, factor=1.5, busy_interval=0.25, busy_for=60.0)
    clock.activity()  # a message was stored at t = 1000
    for _ in range(8):
        clock.sleep(3)
    assert slept[:4] == pytest.approx([0.05, 0.075, 0.1125, 0.16875])
    assert slept[4:] == [0.25] * 4  # busy: at most 4 polls a second while a run goes on
    now[0] += 61.0  # a minute without messages: back to Flower's own interval
    slept.clear()
    for _ in range(12):
        clock.sleep(3)
    assert slept[-1] == 3 and max(slept) == 3
    clock.activity()
    slept.clear()
    clock.sleep(3)
    assert slept == [0.05]


def test_reply_waits_back_off_to_a_short_cap(slept):
    clock = PromptClock(reply_first=0.01, factor=2.0, reply_cap=0.05)
    for _ in range(5):
        clock.sleep(0.5)  # Flower's wait for the ClientApp's reply, in its own memory
    assert slept == pytest.approx([0.01, 0.02, 0.04, 0.05, 0.05])
    assert PromptClock(reply_cap=2.0)._reply.cap == 0.5  # never longer than Flower's
    assert clock.monotonic() > 0  # every other attribute is the time module's


@pytest.mark.parametrize(
    "kwargs",
    [{"idle_first": 0}, {"factor": 0.5}, {"busy_interval": -1}, {"busy_for": -1}, {"reply_cap": 0}],
)
def test_bad_intervals_are_refused(kwargs):
    with pytest.raises(ValueError, match="PromptClock needs"):
        PromptClock(**kwargs)


def test_the_installed_flower_has_the_loop_this_paces():
    """If a Flower upgrade changes the SuperNode loop, this fails (and install() would
    leave the loop unchanged, with a warning, rather than break it)."""
    from flwr.supernode import start_client_internal

    assert pacing._paceable(start_client_internal)


_FAKE_LOOP = """
import time

calls = []


def start_client_internal():
    while True:
        run_id = _pull_and_store_message()
        if run_id is None:
            time.sleep(3)
            continue
        _push_messages()


def _pull_and_store_message():
    calls.append("pull")
    return 7 if len(calls) == 3 else None


def _push_messages():
    calls.append("push")
    time.sleep(0.5)
"""


def test_install_paces_the_loop_and_reports_each_stored_message(tmp_path, slept):
    """On a module with the shape of flwr.supernode.start_client_internal (same sleeps)."""
    path = tmp_path / "fake_supernode_loop.py"
    path.write_text(_FAKE_LOOP)
    spec = importlib.util.spec_from_file_location("fake_supernode_loop", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    woken: list[int] = []
    clock = pacing.install(on_message=lambda: woken.append(1), module=module)
    assert isinstance(clock, PromptClock) and module.time is clock
    assert module._pull_and_store_message() is None  # pull 1: nothing, no wake-up
    module.time.sleep(3)
    assert module._pull_and_store_message() is None
    module.time.sleep(3)
    assert module._pull_and_store_message() == 7  # pull 3: a message, the SuperExec woken
    assert woken == [1]
    module._push_messages()
    assert module.calls == ["pull", "pull", "pull", "push"]
    # Flower asked for 3 s, 3 s and 0.5 s; the node polled after 0.05 s and 0.075 s, and
    # checked the reply after 0.01 s (back-offs reset by the stored message).
    assert slept == pytest.approx([0.05, 0.075, 0.01])


def test_install_leaves_another_flower_loop_unchanged(caplog):
    module = types.ModuleType("other")
    module.start_client_internal = lambda: None
    module._push_messages = lambda: None
    module._pull_and_store_message = lambda: None
    module.time = time
    assert pacing.install(module=module) is None
    assert module.time is time
    assert "running it unchanged" in caplog.text
