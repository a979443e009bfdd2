"""A prompter ``send_and_receive`` for the ServerApp's Grid.

Flower's ``HttpGrid.send_and_receive`` (the Grid a ServerApp gets from ``flwr run``, in
simulation and deployment alike) pushes the messages, pulls once, and then sleeps a fixed
**3 s** between pulls: replies that miss the first pull wait up to 3 s more. Opt-in
(``sampling.reply-poll-interval > 0``): measured on a busy 2-core machine with small, fast rounds it
was *slower* than Flower's loop (each extra pull is an HTTP request and a SuperLink query
competing for the same cores, and those replies usually made the first pull anyway; see
docs/efficiency.md); it helps when rounds end between Flower's 3 s pulls.

:class:`PromptGrid` delegates everything to the Grid it wraps and only replaces the wait
loop: the first pull after ``first_interval`` seconds, then intervals growing by
``factor`` up to ``max_interval``, so fast rounds are picked up within tens of
milliseconds and slow, real-world rounds still poll the SuperLink at most every
``max_interval`` seconds. Messages, timeouts and results are exactly Flower's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from flwr.app import Message
from flwr.serverapp import Grid


def prompt_object_pulls(initial: float = 0.02, cap: float = 1.0) -> None:
    """Make this process retry a reply object that is not there yet after ``initial``
    seconds (doubling up to ``cap``) instead of Flower's 1 s (up to 10 s).

    A SuperNode pushes its reply message, then the reply's objects; the SuperLink hands the
    message out at once. A prompt pull therefore often asks for objects that arrive
    milliseconds later, and Flower's ``pull_objects`` would sleep a whole second (with
    Flower's own 3 s reply loop the objects are usually in by then). Flower takes these
    as keyword defaults of ``pull_objects`` and ``pull_and_inflate_object_from_tree``."""
    from flwr.supercore.inflatable import inflatable_utils

    for fn in (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree):
        defaults = getattr(fn, "__kwdefaults__", None) or {}
        if {"initial_backoff", "backoff_cap"} <= defaults.keys():
            defaults["initial_backoff"] = initial
            defaults["backoff_cap"] = cap


def poll_replies(
    grid: Grid,
    messages: Iterable[Message],
    *,
    timeout: float | None,
    first_interval: float = 0.02,
    max_interval: float = 0.5,
    factor: float = 1.5,
    cut_after: Callable[[list[Message]], float | None] | None = None,
) -> tuple[list[Message], set[str]]:
    """Push ``messages``, then pull their replies with back-off (``first_interval``,
    growing by ``factor`` up to ``max_interval``) until all arrived or ``timeout`` seconds
    passed (``None`` = wait for all). ``cut_after(replies)``, asked after every pull, may
    return seconds after which to stop waiting for the rest (once; e.g. a straggler grace
    once a quorum is in). Returns the replies and the ids of the messages still pending.
    The one reply loop of the app: PromptGrid, StragglerGrid, vertical exchanges."""
    prompt_object_pulls()  # else a prompt pull waits 1 s for objects a moment behind
    pending = set(grid.push_messages(messages))
    now = time.monotonic()
    ends = [] if timeout is None else [now + timeout]
    interval = first_interval
    replies: list[Message] = []
    while pending:
        if ends:
            interval = max(0.0, min(interval, min(ends) - time.monotonic()))
        time.sleep(interval)
        pulled = list(grid.pull_messages(pending))
        replies.extend(pulled)
        pending.difference_update(m.metadata.reply_to_message_id for m in pulled)
        now = time.monotonic()
        if pending and cut_after is not None and (grace := cut_after(replies)) is not None:
            ends.append(now + grace)
            cut_after = None  # once
        if ends and now >= min(ends):
            break
        interval = min(max_interval, max(interval, first_interval) * factor)
    return replies, pending


class DelegatingGrid(Grid):
    """A Grid that forwards everything to ``self.grid``; subclasses override
    ``send_and_receive`` only."""

    grid: Grid

    def set_run(self, run) -> None:
        self.grid.set_run(run)

    @property
    def run(self):
        return self.grid.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def __getattr__(self, name: str):
        return getattr(self.__dict__["grid"], name)


class PromptGrid(DelegatingGrid):
    """``grid`` with a back-off polling ``send_and_receive`` (see module doc)."""

    def __init__(
        self,
        grid: Grid,
        first_interval: float = 0.02,
        max_interval: float = 0.5,
        factor: float = 1.5,
    ) -> None:
        if first_interval <= 0 or max_interval < first_interval or factor < 1:
            raise ValueError(
                "PromptGrid needs 0 < first_interval ≤ max_interval and factor ≥ 1, got "
                f"{first_interval}, {max_interval}, {factor}"
            )
        self.grid = grid
        self.first_interval = first_interval
        self.max_interval = max_interval
        self.factor = factor

    # --- the one change -------------------------------------------------------------
    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push ``messages`` and pull their replies until all arrived or ``timeout``
        seconds passed (``None`` = wait for all), polling with back-off."""
        replies, _ = poll_replies(
            self.grid, messages, timeout=timeout, first_interval=self.first_interval,
            max_interval=self.max_interval, factor=self.factor,
        )  # fmt: skip
        return replies
