"""The secure-aggregation benchmark checks its results against the plain mean before it
reports a number (with and without a dropped silo)."""

from benchmarks.secagg import main, run


def test_benchmark_rows_are_checked_and_complete(capsys):
    rows = run(n=4, d=500, reps=1)  # asserts unmask == plain mean within the bound
    assert rows[0][0] == "plain weighted mean (server)"
    assert len(rows) == 5 and all(seconds > 0 for _, seconds in rows)
    main(["--quick", "--reps", "1", "--silos", "3"])
    out = capsys.readouterr().out
    assert "server: unmask, 1 dropped" in out and "upload bytes per silo" in out
