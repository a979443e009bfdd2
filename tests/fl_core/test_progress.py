"""fl_core.progress: what a long task shows on stderr, as plain lines or as a tqdm bar."""

from __future__ import annotations

import io

from fl_core.progress import Progress, Update, format_seconds


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_count_time_and_estimate_what_is_left():
    clock, lines = Clock(), []
    shown = Progress(4, "provision", bar=False, emit=lines.append, clock=clock)
    clock.now += 30
    shown.advance("created resource-group rg-a")
    clock.now += 30
    shown.advance("created workspace mlw-a")
    assert lines == [
        "provision 1/4, 0:00:30 elapsed, ETA 0:01:30: created resource-group rg-a",
        "provision 2/4, 0:01:00 elapsed, ETA 0:01:00: created workspace mlw-a",
    ]


def test_a_status_line_is_emitted_only_when_the_status_changes():
    clock, lines = Clock(), []
    shown = Progress(None, "waiting", bar=False, emit=lines.append, clock=clock)
    shown.status("serverapp=Starting")
    clock.now += 3600
    shown.status("serverapp=Starting")  # a poll with nothing new
    shown.status("serverapp=Running")
    shown.status("round 2/5", done=1, total=5)
    assert lines == [
        "waiting, 0:00:00 elapsed: serverapp=Starting",
        "waiting, 1:00:00 elapsed: serverapp=Running",
        "waiting 1/5, 1:00:00 elapsed, ETA 4:00:00: round 2/5",
    ]


def test_the_bar_shows_counts_and_status_and_switches_to_a_total_once_known():
    out = io.StringIO()
    with Progress(None, "waiting", bar=True, file=out) as shown:
        shown.status("serverapp=Running")
        assert "waiting: [00:00], serverapp=Running" in out.getvalue()
        shown.status("round 3/5", done=2, total=5)
        shown.write("an event line", file=out)  # printed above the bar, not through it
    text = out.getvalue()
    assert "40%" in text and "2/5" in text and "round 3/5" in text
    assert "an event line\n" in text
    assert text.endswith("\n")  # closed: the cursor is below the bar


def test_a_terminal_gets_the_bar_anything_else_plain_lines():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert Progress(3, "x", file=Terminal()).bar is True
    assert Progress(3, "x", file=io.StringIO()).bar is False
    assert Progress(3, "x", file=io.StringIO(), bar=True).bar is True


def test_an_update_is_still_the_message_it_was():
    update = Update("round 2/5", done=1, total=5)
    assert update == "round 2/5" and f"{update}" == "round 2/5"
    assert (update.done, update.total) == (1, 5)
    assert format_seconds(3725.4) == "1:02:05"
