"""The benchmarks' shared harness (benchmarks/harness.py): the table's ratio and mean ± std
arithmetic on given numbers, the shared command line, and probes that measure a known
sleep (on a virtual clock: exact, no wall-clock timing) and a known allocation."""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import harness
from benchmarks.harness import Column, Table, Versus, mean_std


class VirtualTime:
    """Stands in for the ``time`` module the harness reads: ``sleep`` advances the wall
    clock by exactly its argument and uses no CPU, so timings are exact numbers."""

    def __init__(self) -> None:
        self.wall = 100.0
        self.cpu = 7.0

    def perf_counter(self) -> float:
        return self.wall

    def process_time(self) -> float:
        return self.cpu

    def sleep(self, seconds: float) -> None:
        self.wall += seconds


@pytest.fixture
def clock(monkeypatch) -> VirtualTime:
    virtual = VirtualTime()
    monkeypatch.setattr(harness, "time", virtual)
    return virtual


# ------------------------------------------------------------------------------ table
def test_mean_std_is_the_mean_and_the_sample_standard_deviation():
    assert mean_std([1.0, 2.0, 3.0, 4.0]) == (2.5, pytest.approx(math.sqrt(5 / 3)))
    assert mean_std([7]) == (7.0, 0.0)  # one seed: no spread
    with pytest.raises(ValueError):
        mean_std([])


def test_values_over_seeds_read_mean_plus_minus_std_and_a_ratio_to_the_baseline_row():
    table = Table(
        ["run", Column("seconds", ".2f"),
         Column("× plain", versus=Versus("seconds", row="plain", fmt=".1f"))],
    )  # fmt: skip
    table.add("plain", [1.0, 3.0])  # mean 2, sample sd √2
    table.add("secure", [6.0, 10.0])  # mean 8: 4 × plain
    table.add("one seed", [5.0])
    table.add("own cell", 1.0, "n/a")  # a row may give its own cell for a computed column
    assert table.cells() == [
        ["plain", "2.00 ± 1.41", "1.0"],
        ["secure", "8.00 ± 2.83", "4.0"],
        ["one seed", "5.00", "2.5"],
        ["own cell", "1.00", "n/a"],
    ]
    assert table.markdown().splitlines() == [
        "| run | seconds | × plain |",
        "|---|---:|---:|",
        "| plain | 2.00 ± 1.41 | 1.0 |",
        "| secure | 8.00 ± 2.83 | 4.0 |",
        "| one seed | 5.00 | 2.5 |",
        "| own cell | 1.00 | n/a |",
    ]


def test_baselines_per_group_against_a_column_and_as_differences():
    table = Table(
        [
            "revision",
            "mode",
            Column("s", ".2f"),
            Column("× direct", versus=Versus("s", row="direct", label="mode", group="revision")),
            Column("after / before", versus=Versus(
                "s", row="before", label="revision", group="mode", show_baseline=False)),
            Column("flower", ".1f"),
            Column("speed-up", versus=Versus("s", column="flower", invert=True, fmt=".1f")),
            Column("Δ vs direct", versus=Versus(
                "s", row="direct", label="mode", group="revision", diff=True, fmt="+.1f")),
        ],
        left=2,
    )  # fmt: skip
    table.add("before", "direct", 2.0, 4.0)
    table.add("before", "app", 3.0, 12.0)
    table.add("after", "direct", 1.0, None)
    table.add("after", "app", 1.5, 3.0)
    table.add("after", "new", 6.0, 0.0)  # no "before" row of its mode
    assert [c[3:] for c in table.cells()] == [
        ["1.00", "–", "4.0", "2.0", "+0.0"],
        ["1.50", "–", "12.0", "4.0", "+1.0"],
        ["1.00", "0.50", "–", "–", "+0.0"],  # no flower number: no speed-up
        ["1.50", "0.50", "3.0", "2.0", "+0.5"],
        ["6.00", "–", "0.0", "0.0", "+5.0"],
    ]
    assert table.markdown().splitlines()[1] == "|---|---|---:|---:|---:|---:|---:|---:|"


def test_text_is_aligned_and_cells_count_against_the_columns():
    table = Table(["name", Column("n", "d")], title="counts").add("a", 1).add("longer", 100)
    assert table.text().splitlines() == [
        "counts", "name      n", "------  ---", "a         1", "longer  100"
    ]  # fmt: skip
    with pytest.raises(ValueError, match="2 cells for 1 columns"):
        Table(["x"]).add(1, 2)
    with pytest.raises(ValueError, match="one letter per column"):
        Table(["x", "y"], align="l")
    # formats: a spec, a function, text as is, None and NaN as a dash
    row = Table(["a", Column("b", lambda v: f"×{v:.0f}"), "c", "d"]).add(1.5, 12.0, "x", math.nan)
    assert row.cells() == [["1.5", "×12", "x", "–"]]


def test_print_falls_back_to_text(capsys):
    Table(["k", "v"]).add("a", 2).print(rich=False)
    assert capsys.readouterr().out.splitlines()[-1] == "a  2"


# ---------------------------------------------------------------------------- the CLI
def test_the_parent_parser_has_only_the_options_asked_for_with_their_defaults():
    parser = harness.parser(
        "First paragraph,\nsecond line.\n\nMore.", prog="python -m benchmarks.x",
        quick="smoke test", rounds=harness.opt(20, "rounds"), seeds=[42, 43], out=Path("docs/x.md"),
        json=Path("docs/x.json"),
    )  # fmt: skip
    assert parser.description == "First paragraph,\nsecond line."
    args = parser.parse_args([])
    assert vars(args) == {"quick": False, "rounds": 20, "seeds": [42, 43],
                          "out": Path("docs/x.md"), "json": Path("docs/x.json"),
                          "allow_dirty": False}  # fmt: skip
    args = parser.parse_args(["--quick", "--rounds", "2", "--seeds", "1", "2", "3",
                              "--out", "/tmp/o.md", "--allow-dirty"])  # fmt: skip
    assert (args.quick, args.rounds, args.seeds, args.out, args.allow_dirty) == (
        True,
        2,
        [1, 2, 3],
        Path("/tmp/o.md"),
        True,
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["--workers", "2"])  # not one of this benchmark's options
    bare = harness.parser("x", allow_dirty=False, reps=harness.opt(None, required=True))
    assert vars(bare.parse_args(["--reps", "3"])) == {"reps": 3}


def test_a_quick_run_writes_only_with_out_and_merge_needs_a_report(capsys):
    parser = harness.parser("x", quick=None, out=None, merge=None)
    default = Path("docs/report.md")
    assert harness.resolve_out(parser.parse_args([]), default, parser) == default
    assert harness.resolve_out(parser.parse_args(["--quick"]), default, parser) is None
    given = parser.parse_args(["--quick", "--out", "o.md"])
    assert harness.resolve_out(given, default, parser) == Path("o.md")
    with pytest.raises(SystemExit):
        harness.resolve_out(parser.parse_args(["--quick", "--merge"]), default, parser)
    assert "--merge needs a report" in capsys.readouterr().err
    assert harness.command_line("robust", ["--quick"]) == "python -m benchmarks.robust --quick"
    assert harness.command_line("robust", []) == "python -m benchmarks.robust"


def test_a_session_refuses_to_write_docs_from_dirty_code_unless_asked(monkeypatch, clock):
    dirty = harness.CodeVersion("abc", ("fl_app/x.py",))
    monkeypatch.setattr(harness, "code_version", lambda allow=False: dirty)
    with pytest.raises(SystemExit):
        harness.start("x", [], [harness.PROJECT_ROOT / "docs" / "x.md"])
    session = harness.start("x", ["--out", "/tmp/x.md"], [Path("/tmp/x.md")])
    assert session.command == "python -m benchmarks.x --out /tmp/x.md"
    assert session.header().startswith("Generated by `python -m benchmarks.x --out /tmp/x.md` ")
    clock.sleep(1.5)
    assert session.seconds == pytest.approx(1.5)  # its clock started with the session
    assert harness.code_label(None, "nothing") == "nothing"
    assert harness.code_label(harness.CodeVersion("abc", ()).to_json()) == "commit `abc`"


# ----------------------------------------------------------------------------- probes
def test_repeat_returns_one_time_per_repetition_of_a_known_sleep(clock):
    calls = []
    timing = harness.repeat(lambda arg: calls.append(arg) or clock.sleep(0.02) or arg, 3,
                            prepare=lambda: len(calls))  # fmt: skip
    assert len(timing.seconds) == 3 and calls == [0, 1, 2, 3]  # 1 warm-up + 3 timed
    assert timing.seconds == pytest.approx([0.02] * 3)  # each timed call, not the prepare
    assert timing.warmup == pytest.approx(0.02)
    assert timing.result == 3 and timing.median == pytest.approx(0.02)
    slow = harness.repeat(lambda: clock.sleep(0.03), 5, slow=0.01)
    assert len(slow.seconds) == 1  # a slow warm-up leaves one timed call


def test_stopwatch_counts_a_sleep_as_wall_time_and_not_as_cpu_time(clock):
    with harness.Stopwatch() as watch:
        clock.sleep(0.05)
        clock.cpu += 0.01
    assert watch.seconds == pytest.approx(0.05)
    assert watch.cpu_seconds == pytest.approx(0.01)
    clock.sleep(0.01)
    assert watch.seconds == pytest.approx(0.05)  # stopped when the block ended


def test_peak_memory_of_a_200_mb_allocation_grows_by_at_least_150_mb():
    with harness.PeakMemory() as small:
        blob = bytearray(1024)
    with harness.PeakMemory() as big:
        blob = bytearray(b"\x01") * (200 * 2**20)  # written, so resident
        del blob
    assert big.mib >= 150 and big.mib > small.mib + 100
    assert harness.peak_rss().self >= big.peak  # the process-wide mark is at least as high


def test_children_peak_rss_sees_a_child_that_allocated_200_mb():
    code = "b = bytearray(b'\\x01') * (200 * 2**20)"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert harness.peak_rss().children_mib >= 150


def test_machine_probes_are_sane():
    assert 1 <= harness.cpu_count() <= (os.cpu_count() or 1)
    one, loads = harness.load_average(), harness.load_averages()
    assert one is None or (one >= 0 and loads is not None and one == loads[0])
    assert harness.machine(system=False, unit="cores").endswith(f", {harness.cpu_count()} cores")
    assert harness.versions("python", "flwr", "no-such-package-xyz")["no-such-package-xyz"] == (
        "not installed"
    )
    env = harness.child_env({"A": "1"}, B="2")
    assert env == {"A": "1", **harness.BENCH_ENV, "B": "2"}


def test_a_child_is_stopped_with_its_tree_and_a_json_child_answers(tmp_path):
    with harness.child([sys.executable, "-c", "import time; time.sleep(60)"]) as proc:
        pass
    assert proc.poll() is not None  # stopped when the block ended
    (tmp_path / "answer.py").write_text("print('noise'); print('{\"x\": 1}')\n")
    assert harness.run_json_child("answer", cwd=tmp_path) == {"x": 1}
    assert harness.run_json_child("no_such_module_xyz", cwd=tmp_path) is None


def test_workers_run_in_a_pool_or_inline_and_a_failed_call_gets_its_error_result():
    import contextlib

    entered = []

    @contextlib.contextmanager
    def inline():
        entered.append(True)
        yield

    inline_run = list(harness.run_workers(math.sqrt, [4, 9], workers=1, inline=inline))
    assert inline_run == [(4, 2.0), (9, 3.0)] and entered == [True]
    pooled = harness.run_workers(
        math.sqrt, [4, -1, 9], workers=2, on_error=lambda item, exc: type(exc).__name__
    )
    assert dict(pooled) == {4: 2.0, -1: "ValueError", 9: 3.0}
    with pytest.raises(ValueError):
        list(harness.run_workers(math.sqrt, [-1], workers=2))
    died = dict(harness.run_workers(os._exit, [3], workers=2, on_error=lambda i, e: repr(e)))
    assert "BrokenProcessPool" in died[3]  # a dead worker fails its call, no hang


def test_json_safe_replaces_nan_and_optionally_infinity():
    value = {"a": [1.0, math.nan, (math.inf, -math.inf)], 2: {"b": math.nan}}
    assert harness.json_safe(value) == {"a": [1.0, None, [None, None]], "2": {"b": None}}
    assert harness.json_safe(value, infinity=True)["a"][2] == [math.inf, -math.inf]


def test_workers_show_their_progress_as_log_lines_or_as_a_bar(capsys, caplog):
    """stderr is not a terminal under pytest: one log line per finished call (done/total,
    elapsed, ETA); ``progress=True`` (``--progress``) draws the bar on stderr instead."""
    with caplog.at_level(logging.INFO):
        done = list(harness.run_workers(math.sqrt, [4, 9, 16], workers=1, what="cells"))
    assert [result for _, result in done] == [2.0, 3.0, 4.0]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("cells ")]
    assert [line.split(",")[0] for line in lines] == ["cells 1/3", "cells 2/3", "cells 3/3"]
    assert all(" elapsed" in line for line in lines)
    assert "ETA 0:00:00: 4" in lines[0] and lines[-1].endswith(": 16")
    assert "\r" not in capsys.readouterr().err  # no bar drawn in a log

    caplog.clear()
    list(harness.run_workers(math.sqrt, [4, 9], workers=1, progress=True, what="cells"))
    err = capsys.readouterr().err
    assert "cells: 100%" in err and "2/2" in err and "\r" in err
    assert not [r for r in caplog.records if r.getMessage().startswith("cells ")]


def test_the_benchmarks_that_run_many_federations_take_progress():
    parser = harness.parser("A benchmark.", workers=harness.opt(2, "workers"))
    assert parser.parse_args(["--progress"]).progress is True
    assert parser.parse_args([]).progress is False
    assert "--progress" not in harness.parser("No pool.").format_help()


def test_environ_sets_variables_for_the_block_and_restores_them(monkeypatch):
    import os

    from benchmarks.harness import environ

    monkeypatch.setenv("FEDSILO_TEST_KEPT", "before")
    monkeypatch.delenv("FEDSILO_TEST_NEW", raising=False)
    with environ(FEDSILO_TEST_KEPT="during", FEDSILO_TEST_NEW="1"):
        assert os.environ["FEDSILO_TEST_KEPT"] == "during" and os.environ["FEDSILO_TEST_NEW"] == "1"
    assert os.environ["FEDSILO_TEST_KEPT"] == "before" and "FEDSILO_TEST_NEW" not in os.environ
