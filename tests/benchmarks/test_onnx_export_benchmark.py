"""The ONNX section of docs/operations.md is the benchmark's rendering of its JSON, covers
every task, and is rewritten in place without touching the rest of the doc."""

import json

from benchmarks import onnx_export
from benchmarks.provenance import PROJECT_ROOT
from tasks import available_tasks

DOCS = PROJECT_ROOT / "docs"


def test_doc_section_is_the_json_rendered_and_covers_every_task():
    report = json.loads((DOCS / "onnx-export.json").read_text())
    assert onnx_export.render(report) in (DOCS / "operations.md").read_text()
    rows = {row["task"]: row for row in report["rows"]}
    assert set(rows) == set(available_tasks())
    for task, row in rows.items():
        assert row["parity"]["passed"] and row["parity"]["max-abs-diff"] <= 1e-4, task
        for kind in ("dynamic", "static"):
            assert 0 < row["edge"][kind]["size-cut-percent"] < 100, (task, kind)
    assert "no whole model to export" in report["vertical-refusal"]


def test_rewriting_the_section_keeps_the_hand_written_text(tmp_path):
    doc = tmp_path / "operations.md"
    start, end = onnx_export.MARK_START, onnx_export.MARK_END
    doc.write_text(f"# Operations\n\nby hand\n\n{start}\nold\n{end}\n\n## Prometheus\n")
    onnx_export.write_doc(f"{start}\nnew\n{end}", doc)
    assert doc.read_text() == f"# Operations\n\nby hand\n\n{start}\nnew\n{end}\n\n## Prometheus\n"
