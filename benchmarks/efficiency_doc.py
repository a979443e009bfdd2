"""``docs/efficiency.md`` is shared by three benchmarks (compression, scale, overhead):
each rewrites only its own section, between ``<!-- <name>:start -->`` and
``<!-- <name>:end -->`` markers, so they can run separately and in any order."""

from __future__ import annotations

from pathlib import Path

from benchmarks.provenance import CodeVersion

DOC = Path("docs/efficiency.md")
SECTIONS = ("compression", "compression-sizes", "scale", "overhead")

_HEADER = """# Communication efficiency and simulation scale

Measured on this machine by the three benchmarks below; each benchmark section (between
its markers) is rewritten by its own command from real runs; the analysis sections quote
those runs and a cProfile of the in-process federation:

```bash
python -m benchmarks.compression   # bytes uploaded per round and accuracy, per codec
python -m benchmarks.scale         # 10 000 simulated clients, peak RSS, seconds per round
python -m benchmarks.overhead      # simulation round time vs plain Flower and one process
```
"""


def write_section(
    name: str, markdown: str, path: Path = DOC, code: CodeVersion | None = None
) -> Path:
    """Replace section ``name`` of ``path`` (created with all sections if missing); with
    ``code``, the section ends by naming the commit it was generated from."""
    if code is not None:
        markdown = f"{markdown.rstrip()}\n\n_Generated from {code.label()}._\n"
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if path.exists():
        text = path.read_text(encoding="utf-8")
    else:
        text = _HEADER + "".join(
            f"\n<!-- {s}:start -->\n_(not run yet: `python -m benchmarks.{s}`)_\n<!-- {s}:end -->\n"
            for s in SECTIONS
        )
    if start not in text:
        text += f"\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{head}{start}\n{markdown.strip()}\n{end}{tail}", encoding="utf-8")
    return path
