"""ONNX export and int8 edge models of every task: parity, size cut and metric change.

For each task, a short in-process federation (3 silos, ``--rounds`` rounds of 1 local
epoch, the task's offline data) runs with ``export.onnx = true`` and ``export.quantize =
dynamic+static``; the run's own ``onnx/parity.json`` and ``onnx/edge.json`` give the
figures: the exporter used, the largest absolute output difference between PyTorch and
onnxruntime on the server's test set, and for each int8 variant its file size, the size cut
against the float ONNX model and the change of the task's main metric. A vertical run is
shown refused, with the reason. Prints the table; writes it between the markers of
docs/operations.md ("ONNX and edge models") and the raw figures to docs/onnx-export.json.

    python -m benchmarks.onnx_export            # all tasks, writes the doc
    python -m benchmarks.onnx_export --quick    # 1 round, prints only
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.provenance import PROJECT_ROOT

DOC = PROJECT_ROOT / "docs" / "operations.md"
MARK_START, MARK_END = "<!-- onnx-export:begin -->", "<!-- onnx-export:end -->"
VERTICAL_TASK = "bank-marketing"


def run_task(task: str, rounds: int, seed: int, root: Path) -> dict[str, Any]:
    """One short federation of ``task`` with the ONNX export and both int8 variants."""
    from fl_app.client_app import app as client_app
    from fl_app.config import RunConfig
    from fl_app.federation import run_federation
    from fl_app.inprocess import InProcessGrid
    from tasks import get_task

    cfg = RunConfig(
        task=task,
        seed=seed,
        num_server_rounds=rounds,
        training={"local-epochs": 1},
        output={"run-dir": str(root)},
        export={"onnx": True, "quantize": "dynamic+static"},
    )
    clock = harness.Stopwatch()
    result, run_dir = run_federation(InProcessGrid(client_app, cfg.to_flower(), 3), cfg)
    onnx_dir = run_dir / "onnx"
    if (onnx_dir / "refused.json").is_file():
        return {"task": task, "refused": json.loads((onnx_dir / "refused.json").read_text())}
    parity = json.loads((onnx_dir / "parity.json").read_text())
    edge = json.loads((onnx_dir / "edge.json").read_text())
    metric = edge["main-metric"]
    return {
        "task": task,
        "parameters": sum(p.numel() for p in get_task(task).build_model().parameters()),
        "seconds": clock.seconds,
        "metric": metric,
        "server": result.evaluate_metrics_serverapp[rounds][metric],
        "parity": parity,
        "edge": edge,
    }


def vertical_refusal() -> str:
    """What a vertical run with ``export.onnx = true`` is told before round 1."""
    from fl_app.config import ConfigError, RunConfig

    try:
        RunConfig(task=VERTICAL_TASK, mode="vertical", export={"onnx": True})
    except ConfigError as exc:
        return str(exc)
    raise AssertionError("a vertical run with export.onnx = true was accepted")


def table(rows: list[dict[str, Any]]) -> harness.Table:
    out = harness.Table(
        [
            "task", "exporter", "metric", "float", "float KiB", "max abs diff",
            "dynamic KiB", "dynamic cut", "dynamic Δ", "static KiB", "static cut", "static Δ",
        ],
        left=3,
    )  # fmt: skip
    for row in rows:
        if "refused" in row:
            continue
        edge, kib = row["edge"], 1024
        cells = [
            row["task"],
            row["parity"]["exporter"],
            row["metric"],
            f"{edge['float']['metrics'][row['metric']]:.4f}",
            f"{edge['float']['bytes'] / kib:.1f}",
            f"{row['parity']['max-abs-diff']:.1e}",
        ]
        for kind in ("dynamic", "static"):
            variant = edge[kind]
            cells += [
                f"{variant['bytes'] / kib:.1f}",
                f"{variant['size-cut-percent']:.1f} %",
                f"{variant['metric-change'][row['metric']]:+.4f}",
            ]
        out.add(*cells)
    return out


def render(report: dict[str, Any]) -> str:
    rows = report["rows"]
    done = [r for r in rows if "refused" not in r]
    cuts = [r["edge"][k]["size-cut-percent"] for r in done for k in ("dynamic", "static")]
    sizes = sorted(r["parameters"] for r in done)
    largest = max(done, key=lambda r: r["parameters"])["task"]
    worst = min(
        (r["edge"][k]["metric-change"][r["metric"]], r["task"], k)
        for r in done
        for k in ("dynamic", "static")
    )
    lines = [
        MARK_START,
        f"{report['header']}; {report['seconds']:.0f} s wall on {report['machine']}. Raw "
        "numbers: [onnx-export.json](onnx-export.json).",
        "",
        f"Each task: 3 silos, {report['rounds']} rounds of 1 local epoch, seed "
        f"{report['seed']}, offline data; `export.onnx = true`, `export.quantize = "
        "dynamic+static` (static calibration: 256 rows of the server's root data). *float*: "
        "the float ONNX model's main metric on the server's test set (equal to the server's "
        "PyTorch figure: every row passed parity); *max abs diff*: PyTorch against "
        "onnxruntime on that test set (limit 1e-4, predictions identical); *cut*: file size "
        "saved against the float ONNX model; *Δ*: the int8 variant's main metric minus the "
        "float model's.",
        "",
        table(rows).markdown(),
        "",
        f"Size cut: {min(cuts):.0f}–{max(cuts):.0f} % (the seed's figure for edge compression "
        "is 70–95 % less memory). Int8 weights take a quarter of float32's bytes, but these "
        f"models are small ({sizes[0]:,}–{sizes[-1]:,} parameters): the graph, the scales "
        "and zero points and, for static quantisation, the added QuantizeLinear / "
        "DequantizeLinear nodes take a larger share of the file, so the larger the model, "
        f"the nearer the cut comes to 75 % ({largest}, the largest, comes closest). "
        f"Largest metric change for the worse: {worst[0]:+.4f} ({worst[1]}, {worst[2]}).",
        "",
        f"Refused: {VERTICAL_TASK} in mode vertical — {report['vertical-refusal']}",
        MARK_END,
    ]
    return "\n".join(lines)


def write_doc(text: str, path: Path) -> None:
    harness.write_between_markers(path, text, MARK_START, MARK_END, "Operations")


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(
        __doc__,
        quick="1 round; writes nothing unless --out",
        rounds=harness.opt(3, "federated rounds per task (default 3)"),
        seed=harness.opt(1, "seed (default 1)"),
        out=harness.opt(None, "the doc to write (default docs/operations.md)"),
        render_only="rebuild the doc section from its saved JSON (nothing is run)",
    )
    args = parser.parse_args(argv)
    out = harness.resolve_out(args, DOC, parser)
    json_path = (out or DOC).with_name("onnx-export.json")
    if args.render_only:
        report = json.loads(json_path.read_text())
        write_doc(render(report), out or DOC)
        return
    if args.quick:
        args.rounds = 1
    session = harness.start(
        "onnx_export", argv, [out, json_path] if out else None, allow_dirty=args.allow_dirty
    )
    harness.log_to_console()
    harness.quiet("flwr", "fl_app", "mlflow")
    from tasks import available_tasks

    rows = []
    with tempfile.TemporaryDirectory() as root:
        for task in available_tasks():
            row = run_task(task, args.rounds, args.seed, Path(root))
            logging.info("%s: %s", task, "refused" if "refused" in row else "exported")
            rows.append(row)
    report = harness.json_safe({
        "header": session.header(),
        "code": session.code.to_json(),
        "machine": harness.machine(),
        "seconds": session.seconds,
        "rounds": args.rounds,
        "seed": args.seed,
        "rows": rows,
        "vertical-refusal": vertical_refusal(),
        "versions": harness.versions("torch", "onnx", "onnxruntime", "onnxscript"),
    })  # fmt: skip
    print(table(rows).text())
    if out is not None:
        json_path.write_text(json.dumps(report, indent=1) + "\n")
        write_doc(render(report), out)
        print(f"wrote {out} and {json_path}")


if __name__ == "__main__":
    main()
