"""``benchmarks.overhead --runtime deployment`` without running a federation: the spec both
modes run, the bit-identity check of their models and the docs table. The real runs are
the benchmark itself; tests/e2e/test_warm_supernode_deployment.py compares the modes."""

from __future__ import annotations

import torch

from adapters.azureml.spec import parse_spec
from benchmarks.overhead import main as overhead_main
from benchmarks.overhead_deployment import markdown, models_identical, spec_text


def test_the_modes_run_the_same_spec_but_for_the_supernode_executor():
    flower, warm = (parse_spec(spec_text(mode, rounds=4)) for mode in ("subprocess", "warm"))
    assert flower.supernode.executor == "subprocess" and warm.supernode.executor == "warm"
    assert [s.name for s in flower.silos] == [f"silo-{i}" for i in range(5)]
    assert flower.flower_overrides() == warm.flower_overrides()
    assert flower.flower_overrides()["num-server-rounds"] == 4
    quiet = parse_spec(spec_text("warm-no-telemetry", rounds=4))
    assert (
        quiet.supernode.executor == "warm" and quiet.flower_overrides() == warm.flower_overrides()
    )


def test_models_identical_compares_every_tensor_bit_for_bit(tmp_path):
    a = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.5])}
    paths = []
    for name, state in (
        ("a", a),
        ("same", {k: v.clone() for k, v in a.items()}),
        ("off", {"w": torch.tensor([1.0, 2.0000002]), "b": a["b"]}),
    ):
        paths.append(str(tmp_path / f"{name}.pt"))
        torch.save(state, paths[-1])
    assert models_identical(paths[:2])
    assert not models_identical(paths)


def test_the_table_reports_every_run_and_the_ratio_of_the_modes_means():
    def row(mode, rounds, load):
        return {"mode": mode, "load": load, "total": 1.0, "round": rounds,
                "train": [1.0] * len(rounds), "evaluate": [0.5] * len(rounds),
                "accuracy": 0.9}  # fmt: skip

    result = {
        "rounds": 3, "when": "now", "identical": True,
        "runs": [row("subprocess", [30.0, 24.0, 22.0], 1.5), row("warm", [9.0, 3.0, 2.0], 1.2),
                 row("warm-no-telemetry", [8.0, 2.0, 2.0], 1.0)],
    }  # fmt: skip
    text = markdown(result)
    assert ("subprocess 23.00 s, warm 2.50 s, warm-no-telemetry 2.00 s (warm **9.2×** faster)"
            in text)  # rounds 2…n  # fmt: skip
    assert "| 1 | subprocess | 1.5 | 23.00 |" in text and "| 2 | warm | 1.2 | 2.50 |" in text
    assert "identical (bit for bit)" in text


def test_the_overhead_command_hands_the_deployment_runtime_its_options(monkeypatch):
    seen = []
    monkeypatch.setattr("benchmarks.overhead_deployment.main", lambda argv: seen.append(argv) or 0)
    assert overhead_main(["--runtime", "deployment", "--rounds", "3", "--repeats", "2"]) == 0
    assert seen[0][:4] == ["--rounds", "3", "--repeats", "2"]


def test_processes_are_told_apart_by_their_command_line_and_parent():
    from benchmarks.overhead_deployment import role_of

    py = "/usr/bin/python3.11"
    assert role_of([py, "/bin/flower-superlink", "--insecure"]) == "SuperLink"
    assert role_of([py, "/bin/flower-superexec", "--plugin-type", "serverapp"]) == "SuperLink"
    assert role_of([py, "/bin/flwr-serverapp", "--token", "t"]) == "ServerApp"
    assert role_of([py, "/bin/flower-supernode", "--superlink", "x"]) == "SuperNode"
    assert role_of([py, "-m", "adapters.supernode", "run", "--", "--insecure"]) == "SuperNode"
    assert role_of([py, "-m", "adapters.supernode", "superexec", "--insecure"]) == "SuperExec"
    assert role_of([py, "/bin/flower-superexec", "--plugin-type", "clientapp"]) == "SuperExec"
    zygote = [py, "-m", "adapters.supernode", "zygote", "--fd", "5"]
    assert role_of(zygote) == "ClientApp zygote"
    assert role_of(zygote, parent_role="ClientApp zygote") == "ClientApp tasks"  # a fork
    assert role_of([py, "/bin/flwr-clientapp", "--token", "t"]) == "ClientApp tasks"
    assert role_of([py, "/bin/flwr", "run", ".", "local"]) == "flwr CLI"


def test_cpu_by_role_counts_the_window_and_the_zygotes_reaped_tasks():
    from benchmarks.overhead_deployment import cpu_by_role

    start = {1: ("SuperLink", 10.0, 0.0), 2: ("ClientApp zygote", 3.0, 5.0)}
    end = {
        1: ("SuperLink", 12.5, 0.0),
        2: ("ClientApp zygote", 3.5, 9.0),  # its forks used 4 s, reaped in the window
        3: ("ClientApp tasks", 0.75, 0.0),  # a flwr-clientapp started in the window
    }
    cpu = cpu_by_role(start, end)
    assert cpu["SuperLink"] == 2.5 and cpu["ClientApp zygote"] == 0.5
    assert cpu["ClientApp tasks"] == 4.75 and cpu["SuperNode"] == 0.0
