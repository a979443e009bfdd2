"""The efficiency benchmarks' building blocks: the shared doc and one-reply sizes."""

from __future__ import annotations

import json
import subprocess

import pytest

from benchmarks.compression import Run, _variant_table, reply_sizes
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


def test_variant_table_pairs_each_variant_with_none_by_seed():
    def run(scheme, seed, acc, nbytes):
        return Run(scheme, seed, 1.0, accuracy=[acc], bytes_uploaded=[nbytes])

    runs = [
        run("none", 1, 0.90, 1000.0), run("none", 2, 0.80, 1000.0),
        run("topk", 1, 0.89, 50.0), run("topk", 2, 0.82, 30.0),
        run("topk-noef", 2, 0.70, 40.0),
    ]  # fmt: skip
    lines = _variant_table(runs, ("topk", "topk-noef", "topk-classic")).splitlines()
    topk = next(line for line in lines if "`topk`" in line)
    # seed 1 −1 pt, seed 2 +2 pt → mean +0.5 pt; bytes 40 a round, cut 1 − (0.05 + 0.03)/2
    assert "| 0.8900 | 0.8200 | +0.50 pt (2 seeds) | 40 | 96.0 % |" in topk
    assert topk.startswith("| **")  # a row held to the top-k target stands out
    noef = next(line for line in lines if "`topk-noef`" in line)
    assert "| – | 0.7000 | -10.00 pt (1 seed) | 40 | 96.0 % |" in noef
    assert not any("topk-classic" in line for line in lines)  # did not run: no row


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
            subprocess.run(
                ["git", "cat-file", "-e", f"{head}:benchmarks/overhead_worker.py"],
                cwd=PROJECT_DIR,
                check=False,
            ).returncode
            == 0
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


def test_feature_timers_count_exclusive_time_per_round():
    """A timed call's time minus the timed calls nested in it, cut per round; on a clock
    that advances 1 per reading, so the figures are exact."""
    from benchmarks.feature_costs import Timers, per_round

    ticks = iter(range(1000))
    timers = Timers(clock=lambda: float(next(ticks)))
    inner = timers.wrap("inner", lambda: None)  # 2 ticks: start, end
    outer = timers.wrap("outer", lambda: [inner(), inner()])
    timers.snapshot()  # round 0 ends
    for _ in range(3):  # rounds 1..3
        outer()
        timers.snapshot()
    # outer: start, 2 × (inner start, inner end), end = 5 ticks; inner's 2 × 1 excluded
    assert timers.totals == {"inner": 6.0, "outer": 9.0}
    assert timers.calls == {"inner": 6, "outer": 3}
    assert per_round(timers) == {"inner": 2.0, "outer": 3.0}  # rounds 2..3


def test_feature_costs_time_the_real_functions_of_a_federation_and_restore_them():
    """Every timed target still exists (a rename would silently drop a row), the real
    in-process federation runs under the timers, each feature's code is called every
    round, and the original functions are back afterwards."""
    import fl_app.audit
    import fl_app.config
    import strategies.wrappers
    from benchmarks.feature_costs import FEATURES, measure_features

    originals = (fl_app.audit.AuditLog.record, fl_app.config.RunConfig.__dict__["from_flower"],
                 strategies.wrappers.ValidatedUpdates.aggregate_train)  # fmt: skip
    costs = measure_features(3, 3)
    assert costs["missing"] == []
    assert set(costs["per_round"]) == set(FEATURES)
    assert all(costs["calls"].get(feature, 0) > 0 for feature in FEATURES)  # each one ran
    # per round: a checkpoint, and one validation, reporting and FedAvg call per phase
    assert costs["calls"]["checkpoint"] >= 2 * 4  # bytes + save, rounds 0..3
    assert costs["calls"]["update validation"] >= 3
    assert costs["calls"]["run config per message"] >= 3 * 3 * 2  # 3 silos × 2 phases
    assert (fl_app.audit.AuditLog.record, fl_app.config.RunConfig.__dict__["from_flower"],
            strategies.wrappers.ValidatedUpdates.aggregate_train) == originals  # fmt: skip


def test_overhead_doc_sets_ours_against_plain_flower_with_feature_costs():
    from benchmarks.overhead import plain_flower_section, plain_ratios

    rows = _rows([1.0, 1.0], [1.2, 1.2])
    rows["simulation / flower-defaults"] = summarise(
        {"x": {"wall": [9.0, 1.5, 1.7], "phases": [8.0, 1.2, 1.4], "total": 20.0}}
    )["x"]
    rows["plain Flower / flower-defaults"] = summarise(
        {"x": {"wall": [9.0, 1.4, 1.4], "phases": [8.0, 1.3, 1.3], "total": 20.0, "repeats": 2}}
    )["x"]
    assert [v for v, _, _ in plain_ratios(rows)] == ["flower-defaults"]
    features = {"per_round": {"checkpoint": 0.05, "byte counting": 0.1,
                              "FedAvg aggregation (Flower's, in both apps)": 0.02}}  # fmt: skip
    text = plain_flower_section({"rounds": 3, "features": features,
                                 "revisions": {"this tree": {"rows": rows}}})  # fmt: skip
    line = next(x for x in text.splitlines() if x.startswith("| flower-defaults"))
    # plain 1.40, ours 1.60: 1.14×, +0.20 s; phases 1.30 / 1.30
    assert [c.strip() for c in line.split("|")[2:7]] == ["1.40", "1.60", "**1.14×**", "+0.20",
                                                         "1.30 / 1.30"]  # fmt: skip
    assert "of 2 runs per app, alternating" in text
    assert "| checkpoint |" in text and "| 50.0 | 25% |" in text  # 0.05 s of 0.20 s
    assert "| **our features, summed** | | **150.0** | **75%** |" in text  # FedAvg not ours
    assert plain_flower_section({"rounds": 3, "revisions": {"t": {"rows": _rows([1], [1])}}}) == ""


def test_scale_names_processes_by_program_not_interpreter(tmp_path):
    import sys

    import psutil

    from benchmarks.scale import process_name

    script = tmp_path / "flwr-simulation"
    script.write_text("import time\ntime.sleep(30)\n")
    proc = subprocess.Popen([sys.executable, str(script), "--runtime-api-address", "x"])
    try:
        assert process_name(psutil.Process(proc.pid)) == "flwr-simulation"
    finally:
        proc.kill()
        proc.wait()


def test_flower_engine_sweep_grows_with_the_instructions_in_flight():
    """The scale benchmark's account of 10 000-client rounds: on Flower's own in-memory
    state, asking for one node's next instruction scans every stored instruction."""
    from benchmarks.scale import engine_sweep_seconds

    idle = engine_sweep_seconds(300, 0, sample=100)
    busy = engine_sweep_seconds(300, 150, sample=100)
    assert busy > 5 * idle
