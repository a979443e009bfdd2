"""``benchmarks.centralized_probe``: one in-process federation or its centralised baseline."""

from benchmarks.centralized_probe import main, probe


def test_probe_runs_a_federation_and_its_baseline_with_overrides():
    fl = probe("breast-cancer", {"num-server-rounds": 4})
    central = probe("breast-cancer", {"num-server-rounds": 4},
                    central=True)  # fmt: skip

    assert fl["side"] == "fl" and central["side"] == "central"
    assert set(fl["metrics"]) == set(central["metrics"]) == {"roc-auc", "pr-auc"}
    assert fl["metrics"]["roc-auc"] > 0.9 and central["metrics"]["roc-auc"] > 0.9
    # Seeded: the same probe gives the same metrics.
    again = probe("breast-cancer", {"num-server-rounds": 4})
    assert again["metrics"] == fl["metrics"]


def test_probe_cli_prints_json(capsys):
    argv = ["breast-cancer", "num-server-rounds=1", "training.local-epochs=1", "--central"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert '"side": "central"' in out and '"num-server-rounds": 1' in out
