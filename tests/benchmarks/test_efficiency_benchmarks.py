"""The efficiency benchmarks' building blocks: the shared doc and one-reply sizes."""

from __future__ import annotations

import json
import subprocess

import pytest

from benchmarks.compression import reply_sizes
from benchmarks.efficiency_doc import write_section
from benchmarks.overhead import PROJECT_DIR, git_worktree, markdown, summarise, table
from benchmarks.overhead_worker import audit_round_seconds


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


def _rows(direct, inprocess):
    return summarise({
        "direct": {"wall": [9.0, *direct], "phases": [8.0, *direct], "total": 30.0},
        "in-process": {"wall": [9.0, *inprocess], "phases": [7.0, *(t - 0.5 for t in inprocess)],
                       "total": 40.0},
    })  # fmt: skip


def test_overhead_table_has_both_revisions_and_their_ratios():
    before, after = _rows([2.0, 2.0], [4.0, 3.0]), _rows([1.0, 1.0], [1.5, 1.5])
    assert before["in-process"]["per_round"] == 3.5  # round 1 (imports) is not averaged
    assert before["in-process"]["phases_per_round"] == 3.0
    lines = {tuple(c.strip() for c in line.split("|")[1:3]): line
             for line in table({"before": before, "after": after}).splitlines()[2:]}  # fmt: skip
    assert len(lines) == 4
    cells = lines[("after", "in-process")].split("|")
    # wall 1.5 s; × direct 1.5 / 1.0; after / before 1.5 / 3.5
    assert [c.strip() for c in cells[3:6]] == ["1.50", "1.50", "0.43"]
    assert lines[("before", "in-process")].split("|")[4].strip() == "1.75"
    assert lines[("before", "direct")].split("|")[5].strip() == "–"
    before["in-process"]["final-accuracy"] = after["in-process"]["final-accuracy"] = 0.875
    text = markdown({"rounds": 3, "load_before": 0.5, "when": "now", "revisions": {
        "before": {"commit": "a" * 40, "rows": before},
        "after": {"commit": "b" * 40, "dirty": True, "rows": after}}})  # fmt: skip
    assert "**before** = `aaaaaaaaaaaa`, **after** = `bbbbbbbbbbbb` + uncommitted" in text
    assert "before / in-process 0.8750; after / in-process 0.8750" in text


def test_before_rev_is_measured_in_a_temporary_worktree_that_is_removed():
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_DIR, capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip
    with git_worktree("HEAD") as (checkout, commit):
        assert commit == head
        assert (checkout / "fl_app" / "federation.py").is_file()
        assert (checkout / "benchmarks" / "overhead_worker.py").exists() == (
            subprocess.run(["git", "cat-file", "-e", f"{head}:benchmarks/overhead_worker.py"],
                           cwd=PROJECT_DIR, check=False).returncode == 0
        )  # fmt: skip  (the checkout is REV's files, not this tree's)
    listed = subprocess.run(["git", "worktree", "list"], cwd=PROJECT_DIR, capture_output=True,
                            text=True, check=True).stdout  # fmt: skip
    assert not checkout.exists() and str(checkout) not in listed
    bad = git_worktree("no-such-rev")
    with pytest.raises(SystemExit, match=r"--before 'no-such-rev' is not a commit"):
        bad.__enter__()


def test_round_wall_times_come_from_the_audit_logs_checkpoint_entries(tmp_path):
    from fl_app.audit import AuditLog

    log = AuditLog(tmp_path / "audit.jsonl", "hash")
    log.record("run-start")
    for rnd in range(3):
        log.record("checkpoint", round=rnd, sha256="x")
    log.record("run-end", round=2)
    entries = [json.loads(line) for line in log.path.read_text().splitlines()]
    # The audit log's own format, with chosen times (a real log's are the write times).
    for entry, stamp in zip(entries, ["00.000", "01.500", "04.000", "04.750", "05.000"],
                            strict=True):  # fmt: skip
        entry["time"] = f"2026-11-26T04:00:{stamp}000+00:00"
    log.path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    assert audit_round_seconds(log.path) == [2.5, 0.75]  # rounds 1 and 2; round 0 = start
