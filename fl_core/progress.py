"""Progress of long work on stderr: the benchmarks' runs (``benchmarks.harness.run_workers``),
``fedsilo provision`` / ``teardown`` steps and ``fedsilo submit --wait``.

A :class:`Progress` draws a tqdm bar (done/total, elapsed, ETA and a status note) when stderr
is a terminal or when asked to (``--progress``); otherwise it emits one plain line per step
or status change (``benchmark runs 3/12, 0:04:10 elapsed, ETA 0:12:30: seed 2``), so CI
logs stay free of carriage returns and redraws.

Code that reports progress through an ``on_event(message)`` callback (the launch backends)
sends an :class:`Update`: a ``str`` (printed as before by callers that know nothing of it)
that also carries ``done`` and ``total`` for a :class:`Progress` to show."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["Progress", "Update", "format_seconds"]


class Update(str):
    """An event message that is also a progress status: ``done`` of ``total`` units
    (``None``: unknown), e.g. ``Update("round 2/5", done=1, total=5)``."""

    done: int | None
    total: int | None

    def __new__(cls, text: str, done: int | None = None, total: int | None = None) -> Update:
        update = super().__new__(cls, text)
        update.done, update.total = done, total
        return update


def format_seconds(seconds: float) -> str:
    """``H:MM:SS``."""
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Progress:
    """``what``: ``done``/``total`` with elapsed time, ETA and a note.

    ``bar``: ``True`` draws a tqdm bar on ``file`` (stderr), ``False`` emits plain lines
    through ``emit`` (default: written to ``file``), ``None`` chooses the bar when ``file``
    is a terminal. ``total`` may be unknown (``None``, no ETA) and set later by
    :meth:`status`. ``clock`` is for tests."""

    def __init__(
        self,
        total: int | None,
        what: str,
        *,
        bar: bool | None = None,
        file: TextIO | None = None,
        emit: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.file = file if file is not None else sys.stderr
        self.bar = _is_tty(self.file) if bar is None else bar
        self.what, self.total, self.done, self.note = what, total, 0, ""
        self._emit = emit or (lambda line: print(line, file=self.file, flush=True))
        self._clock = clock
        self._start = clock()
        self._tqdm: Any = None
        self._last: tuple[int, int | None, str] | None = None

    # ------------------------------------------------------------------ figures
    @property
    def elapsed(self) -> float:
        return self._clock() - self._start

    @property
    def eta(self) -> float | None:
        """Seconds left at the mean pace so far (``None`` before the first unit or
        without a total)."""
        if not self.total or not self.done:
            return None
        return self.elapsed / self.done * max(0, self.total - self.done)

    def line(self) -> str:
        """The plain rendering: ``what done/total, elapsed, ETA: note``."""
        count = f" {self.done}/{self.total}" if self.total else ""
        eta = self.eta
        timing = f"{format_seconds(self.elapsed)} elapsed" + (
            f", ETA {format_seconds(eta)}" if eta is not None else ""
        )
        return f"{self.what}{count}, {timing}" + (f": {self.note}" if self.note else "")

    # ------------------------------------------------------------------ reporting
    def advance(self, note: str = "", n: int = 1) -> None:
        """``n`` more units done; ``note`` says which."""
        self._show(self.done + n, self.total, note, always=True)

    def status(self, note: str, done: int | None = None, total: int | None = None) -> None:
        """The work's status (and its counts when known) without a unit finishing; plain
        mode emits a line only when the status changed."""
        self._show(
            self.done if done is None else done, self.total if total is None else total, note
        )

    def write(self, text: str, file: TextIO | None = None) -> None:
        """A line of ordinary output (default stdout) that leaves the bar intact."""
        out = file if file is not None else sys.stdout
        if self._tqdm is not None:
            self._tqdm.write(text, file=out)
        else:
            print(text, file=out, flush=True)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ rendering
    def _show(self, done: int, total: int | None, note: str, always: bool = False) -> None:
        self.done, self.total, self.note = done, total, note
        if not self.bar:
            if always or self._last != (done, total, note):
                self._emit(self.line())
            self._last = (done, total, note)
            return
        bar = self._bar()
        fmt = _BAR if total else _NO_TOTAL
        if bar.total != total or bar.bar_format != fmt:
            bar.total, bar.bar_format = total, fmt
        bar.n = done
        bar.set_postfix_str(note, refresh=False)
        bar.refresh()

    def _bar(self) -> Any:
        if self._tqdm is None:
            from tqdm import tqdm

            self._tqdm = tqdm(
                total=self.total, desc=self.what, file=self.file, dynamic_ncols=True,
                bar_format=_BAR if self.total else _NO_TOTAL, mininterval=0, leave=True,
            )  # fmt: skip
            self._tqdm.start_t = time.time() - self.elapsed  # the same start as the lines'
        return self._tqdm


# tqdm puts ", " before a non-empty postfix.
_BAR = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]{postfix}"
_NO_TOTAL = "{desc}: [{elapsed}]{postfix}"
