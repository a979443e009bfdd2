"""PromptGrid: the ServerApp's reply polling with back-off instead of Flower's fixed 3 s."""

from __future__ import annotations

import time

from flwr.app import Message, MessageType, RecordDict

from fl_app.client_app import app as client_app
from fl_app.config import RunConfig
from fl_app.federation import roll_call
from fl_app.inprocess import InProcessGrid
from fl_app.polling import PromptGrid


class SlowGrid(InProcessGrid):
    """The in-process grid, but a reply becomes available only ``delay`` seconds after
    its message was pushed (and never, for nodes in ``silent``); counts pulls."""

    def __init__(self, *args, delay: float, silent: frozenset[int] = frozenset(), **kw):
        super().__init__(*args, **kw)
        self.delay, self.silent, self.pulls = delay, silent, 0
        self._pushed_at: dict[str, float] = {}

    def push_messages(self, messages):
        ids = list(super().push_messages(messages))
        now = time.monotonic()
        self._pushed_at.update({key: now for key in ids})
        return ids

    def pull_messages(self, message_ids):
        self.pulls += 1
        ready = [
            key
            for key in message_ids
            if key in self._pending
            and time.monotonic() - self._pushed_at[key] >= self.delay
            and self._pending[key].metadata.dst_node_id not in self.silent
        ]
        replies = [self._deliver(self._pending.pop(key)) for key in ready]
        for reply, key in zip(replies, ready, strict=True):
            reply.metadata.__dict__["_reply_to_message_id"] = key
        return replies


def _queries(grid) -> list[Message]:
    return [
        Message(RecordDict({}), dst_node_id=n, message_type=MessageType.QUERY)
        for n in grid.get_node_ids()
    ]


def test_prompt_grid_collects_late_replies_with_few_pulls():
    cfg = RunConfig()
    slow = SlowGrid(client_app, cfg.to_flower(), 3, delay=0.3)
    grid = PromptGrid(slow, first_interval=0.02, max_interval=0.5, factor=1.5)
    replies = list(grid.send_and_receive(_queries(grid), timeout=30))
    assert sorted(r.metadata.src_node_id for r in replies) == sorted(slow.get_node_ids())
    # back-off: 0.02, 0.03, 0.045, … reach 0.3 s within a handful of pulls, not hundreds
    assert 2 <= slow.pulls <= 10


def test_prompt_grid_returns_what_it_has_at_the_timeout():
    cfg = RunConfig()
    slow = SlowGrid(client_app, cfg.to_flower(), 3, delay=0.0, silent=frozenset({1002}))
    grid = PromptGrid(slow, first_interval=0.02)
    replies = list(grid.send_and_receive(_queries(grid), timeout=0.5))
    assert sorted(r.metadata.src_node_id for r in replies) == [1001, 1003]


def test_roll_call_through_prompt_grid_sees_every_silo():
    cfg = RunConfig(sampling={"min-available-nodes": 4})
    grid = PromptGrid(InProcessGrid(client_app, cfg.to_flower(), 4))
    roster, _ = roll_call(grid, cfg)
    assert sorted(roster.values()) == [0, 1, 2, 3]
