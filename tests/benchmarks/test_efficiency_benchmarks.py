"""The efficiency benchmarks' building blocks: the shared doc and one-reply sizes."""

from __future__ import annotations

from benchmarks.compression import reply_sizes
from benchmarks.efficiency_doc import write_section


def test_sections_are_rewritten_independently(tmp_path):
    doc = tmp_path / "efficiency.md"
    write_section("scale", "## Scale\nfirst", doc)
    write_section("overhead", "## Overhead\nkept", doc)
    write_section("scale", "## Scale\nsecond", doc)
    text = doc.read_text()
    assert "second" in text and "first" not in text and "kept" in text
    assert text.index("<!-- compression:start -->") < text.index("<!-- scale:start -->")


def test_one_real_reply_shrinks_per_codec():
    rows = {r["scheme"]: r for r in reply_sizes(0.01)}
    dense = rows["none"]["plain"]
    assert dense > 4 * 9_930  # the SmallCNN's float32 weights are really in it
    assert rows["int8"]["zlib"] <= rows["int8"]["plain"] < 0.3 * dense
    assert rows["int4"]["zlib"] < rows["int8"]["zlib"]
    assert rows["topk"]["plain"] < 0.05 * dense
