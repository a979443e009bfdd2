"""Generated parts of hand-written files (README sections, docs tables) between markers."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["between_markers", "replace_between_markers"]


def between_markers(text: str, start: str, end: str) -> str:
    """The part of ``text`` strictly between the ``start`` and ``end`` marker lines,
    without the newlines that follow ``start`` and precede ``end``."""
    if start not in text or end not in text:
        raise ValueError(f"markers {start!r} … {end!r} not found; restore them first")
    return text.split(start, 1)[1].split(end, 1)[0].strip("\n")


def replace_between_markers(path: str | Path, start: str, end: str, body: str) -> None:
    """Put ``body`` between the ``start`` and ``end`` markers of ``path`` (the markers and
    the rest of the file stay). The new text is written to a temporary file and renamed
    over ``path``, so a failure or a concurrent writer never leaves a truncated file."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    between_markers(text, start, end)  # both markers must be there
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{head}{start}\n{body}\n{end}{tail}", encoding="utf-8")
    os.replace(tmp, path)
