"""Prompt polling for Flower's SuperNode loop, applied from outside Flower.

Flower 1.42's ``start_client_internal`` sleeps a fixed **3 s** whenever the SuperLink had no
message for the node, and polls its own state every **0.5 s** while the ClientApp works
(``_push_messages``). Both are literals in ``flwr/supernode/start_client_internal.py``;
:func:`install` replaces that module's ``time`` with :class:`PromptClock`, whose ``sleep``
turns each into a back-off: after a message the node polls again within tens of
milliseconds, at most every 0.25 s for a minute (the run's next phase), then the interval
grows back to Flower's own 3 s. An idle SuperNode therefore loads the SuperLink as
Flower's does; a busy one polls at most 4 times a second.

:func:`install` also wraps the loop's ``_pull_and_store_message`` so that every stored
message resets the back-off and calls ``on_message`` (the warm SuperNode wakes its
SuperExec with it). If Flower's loop no longer has these sleeps (another Flower version),
nothing is changed and a warning says so: the SuperNode is then as slow as Flower's, never
wrong.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

__all__ = ["PromptClock", "install", "prompt_object_pulls"]

logger = logging.getLogger(__name__)

#: The sleeps of Flower's SuperNode loop that :class:`PromptClock` paces (seconds).
IDLE_SLEEP = 3
REPLY_SLEEP = 0.5


class _Backoff:
    """Intervals from ``first`` growing by ``factor``: at most ``busy_cap`` for ``busy_for``
    seconds after the last :meth:`reset` (a run in progress: its next phase comes soon),
    then up to ``cap``."""

    def __init__(
        self, first: float, factor: float, cap: float, busy_cap: float, busy_for: float
    ) -> None:
        self.first, self.factor, self.cap = first, factor, cap
        self.busy_cap, self.busy_for = min(busy_cap, cap), busy_for
        self.next = first
        self.since = time.monotonic()

    def take(self, ceiling: float) -> float:
        busy = time.monotonic() - self.since < self.busy_for
        interval = min(self.next, ceiling, self.busy_cap if busy else self.cap)
        self.next = min(self.cap, self.next * self.factor)
        return interval

    def reset(self) -> None:
        self.next = self.first
        self.since = time.monotonic()


class PromptClock:
    """A stand-in for the ``time`` module whose ``sleep`` paces Flower's polling loops.

    ``sleep(s)`` for ``s >= IDLE_SLEEP`` (the loop found no message) sleeps the next
    interval of an idle back-off: ``idle_first`` growing by ``factor``, at most
    ``busy_interval`` for ``busy_for`` seconds after the last message (the run's next phase
    is coming; its silos finish at different times), then up to Flower's ``s``. Shorter
    sleeps (waiting for the ClientApp's reply or an object, in the SuperNode's own memory)
    use a second back-off from ``reply_first`` up to ``reply_cap`` (Flower: 0.5 s).
    :meth:`activity` resets both. Every other attribute is the real ``time`` module's.
    """

    def __init__(
        self,
        idle_first: float = 0.05,
        reply_first: float = 0.01,
        factor: float = 1.5,
        busy_interval: float = 0.25,
        busy_for: float = 60.0,
        reply_cap: float = 0.05,
    ) -> None:
        intervals = (idle_first, reply_first, busy_interval, reply_cap)
        if min(intervals) <= 0 or factor < 1 or busy_for < 0:
            raise ValueError(
                "PromptClock needs positive intervals, factor >= 1 and busy_for >= 0; got "
                f"idle_first={idle_first}, reply_first={reply_first}, factor={factor}, "
                f"busy_interval={busy_interval}, busy_for={busy_for}, reply_cap={reply_cap}"
            )
        self._idle = _Backoff(idle_first, factor, IDLE_SLEEP, busy_interval, busy_for)
        # The reply wait checks the SuperNode's own in-memory state, not the network.
        self._reply = _Backoff(reply_first, factor, min(reply_cap, REPLY_SLEEP), REPLY_SLEEP, 0.0)
        self._lock = threading.Lock()

    def sleep(self, seconds: float) -> None:
        """Sleep the next back-off interval, never longer than ``seconds``."""
        with self._lock:
            backoff = self._idle if seconds >= IDLE_SLEEP else self._reply
            interval = backoff.take(seconds)
        time.sleep(interval)

    def activity(self) -> None:
        """Something happened (a message was stored): poll promptly again."""
        with self._lock:
            self._idle.reset()
            self._reply.reset()

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def prompt_object_pulls(initial: float = 0.02, cap: float = 1.0) -> bool:
    """Retry an object that is not there yet after ``initial`` seconds (doubling up to
    ``cap``) instead of Flower's 1 s (up to 10 s), in this process.

    A message becomes visible before its objects (the sender pushes the message, then its
    object contents): a SuperNode that polls promptly, or a ClientApp forked the moment its
    task exists, asks for objects that arrive milliseconds later and would then sleep a whole
    second. Flower's ``pull_objects`` and ``pull_and_inflate_object_from_tree`` take these as
    keyword defaults; returns False (and changes nothing) if this Flower's do not."""
    from flwr.supercore.inflatable import inflatable_utils

    functions = (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree)
    defaults = [getattr(fn, "__kwdefaults__", None) or {} for fn in functions]
    if not all({"initial_backoff", "backoff_cap"} <= d.keys() for d in defaults):
        logger.warning("this Flower's pull_objects has no back-off defaults; left unchanged")
        return False
    for d in defaults:
        d["initial_backoff"] = initial
        d["backoff_cap"] = cap
    return True


def _paceable(module: ModuleType) -> bool:
    try:
        loop = inspect.getsource(module.start_client_internal)
        push = inspect.getsource(module._push_messages)
    except (AttributeError, OSError, TypeError):
        return False
    return f"time.sleep({IDLE_SLEEP})" in loop and f"time.sleep({REPLY_SLEEP})" in push


def install(
    clock: PromptClock | None = None,
    on_message: Callable[[], None] | None = None,
    module: ModuleType | None = None,
) -> PromptClock | None:
    """Pace Flower's SuperNode loop with ``clock`` (default: a new :class:`PromptClock`);
    call ``on_message`` after each message the loop stores. Returns the clock, or None
    when this Flower's loop is not the one this was written for (nothing changed)."""
    if module is None:
        from flwr.supernode import start_client_internal as module
    if not _paceable(module):
        logger.warning(
            "this Flower's SuperNode loop (%s) has no 3 s / 0.5 s polling sleeps to pace; "
            "running it unchanged (messages may wait up to Flower's poll interval)",
            getattr(module, "__file__", module),
        )
        return None
    clock = clock or PromptClock()
    pull, push = module._pull_and_store_message, module._push_messages

    def pull_and_store_message(*args: Any, **kwargs: Any) -> int | None:
        run_id = pull(*args, **kwargs)
        if run_id is not None:
            logger.debug("message stored")
            clock.activity()
            if on_message is not None:
                on_message()
        return run_id

    def push_messages(*args: Any, **kwargs: Any) -> None:
        push(*args, **kwargs)
        logger.debug("reply sent")

    module.time = clock
    module._pull_and_store_message = pull_and_store_message
    module._push_messages = push_messages
    return clock
