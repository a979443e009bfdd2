"""Update compression on digits: bytes uploaded per round and final accuracy per codec.

Runs the real ServerApp body and ClientApp (``fl_app.inprocess.InProcessGrid``, the same
code ``flwr run`` executes, minus the transport) once per codec and seed, with identical
settings otherwise. Bytes are the real serialised train replies as Flower pushes them
(``bytes-uploaded``: the sum of ``deflate()`` over each reply's inflatable objects, see
``strategies.compression.records.message_bytes``), logged by the app every round.

Usage::

    python -m benchmarks.compression                  # 20 rounds, seeds 42 43; docs/efficiency.md
    python -m benchmarks.compression --quick          # 2 rounds, 3 silos; writes nothing
    python -m benchmarks.compression --rounds 10 --seeds 1 --schemes none int8
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.efficiency_doc import DOC, write_section

SCHEMES = ("none", "int8", "int4", "topk", "topk+int8")
LABELS = {
    "none": "none (float32)",
    "int8": "int8 stochastic",
    "int4": "int4 stochastic",
    "topk": "top-k 1 % + EF",
    "topk+int8": "top-k 1 % + int8 + EF",
}


@dataclass
class Run:
    """One federation's outcome."""

    scheme: str
    seed: int
    seconds: float
    accuracy: list[float] = field(default_factory=list)
    bytes_uploaded: list[float] = field(default_factory=list)
    bytes_dense: list[float] = field(default_factory=list)
    replies: list[float] = field(default_factory=list)

    @property
    def final_accuracy(self) -> float:
        return self.accuracy[-1]

    @property
    def mean_bytes(self) -> float:
        return statistics.fmean(self.bytes_uploaded)


def run_one(scheme: str, seed: int, rounds: int, silos: int, topk_fraction: float) -> Run:
    """One in-process federation with ``compression = scheme``."""
    from fl_app.client_app import app
    from fl_app.config import RunConfig
    from fl_app.federation import run_federation
    from fl_app.inprocess import InProcessGrid

    with tempfile.TemporaryDirectory(prefix="fedsilo-compression-") as tmp:
        cfg = RunConfig(
            task="digits",
            compression=scheme,
            topk_fraction=topk_fraction,
            error_feedback=True,
            num_server_rounds=rounds,
            seed=seed,
            fraction_evaluate=0.0,
            min_evaluate_nodes=0,
            min_available_nodes=silos,
            run_dir=tmp,
        )
        start = time.perf_counter()
        result, _ = run_federation(InProcessGrid(app, cfg.to_flower(), silos), cfg)
        seconds = time.perf_counter() - start
    train = result.train_metrics_clientapp
    server = result.evaluate_metrics_serverapp
    return Run(
        scheme,
        seed,
        seconds,
        accuracy=[float(server[r]["accuracy"]) for r in range(1, rounds + 1)],
        bytes_uploaded=[float(train[r]["bytes-uploaded"]) for r in range(1, rounds + 1)],
        bytes_dense=[float(train[r]["bytes-uploaded-dense"]) for r in range(1, rounds + 1)],
    )


def summarise(runs: list[Run]) -> list[dict]:
    """One row per scheme: mean over seeds of bytes/round, cut vs none, accuracy and its
    difference to none (paired by seed)."""
    base = {r.seed: r for r in runs if r.scheme == "none"}
    rows = []
    for scheme in dict.fromkeys(r.scheme for r in runs):
        mine = [r for r in runs if r.scheme == scheme]
        row = {
            "scheme": scheme,
            "seeds": [r.seed for r in mine],
            "bytes_per_round": statistics.fmean(r.mean_bytes for r in mine),
            "final_accuracy": statistics.fmean(r.final_accuracy for r in mine),
            "accuracies": [r.final_accuracy for r in mine],
            "seconds": statistics.fmean(r.seconds for r in mine),
        }
        paired = [r for r in mine if r.seed in base]
        if paired:
            row["cut"] = 1 - statistics.fmean(
                r.mean_bytes / base[r.seed].mean_bytes for r in paired
            )
            row["accuracy_delta_pt"] = 100 * statistics.fmean(
                r.final_accuracy - base[r.seed].final_accuracy for r in paired
            )
        rows.append(row)
    return rows


def table(rows: list[dict], silos: int) -> str:
    lines = [
        "| codec | bytes uploaded / round | per reply | cut vs none | final accuracy "
        "| Δ accuracy vs none | s / run |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        cut = f"{100 * row['cut']:.1f} %" if "cut" in row else "–"
        delta = f"{row['accuracy_delta_pt']:+.2f} pt" if "accuracy_delta_pt" in row else "–"
        accs = ", ".join(f"{a:.4f}" for a in row["accuracies"])
        lines.append(
            f"| {LABELS.get(row['scheme'], row['scheme'])} | {row['bytes_per_round']:,.0f} "
            f"| {row['bytes_per_round'] / silos:,.0f} | {cut} "
            f"| {row['final_accuracy']:.4f} ({accs}) | {delta} | {row['seconds']:.0f} |"
        )
    return "\n".join(lines)


def markdown(rows: list[dict], args, runs: list[Run]) -> str:
    from importlib.metadata import version

    targets = []
    for row in rows:
        if row["scheme"] == "int8" and "cut" in row:
            ok = row["cut"] >= 0.75 and row["accuracy_delta_pt"] >= -0.5
            targets.append(
                f"- int8: target ≥ 75 % cut at ≤ 0.5 pt accuracy loss → "
                f"{100 * row['cut']:.1f} %, {row['accuracy_delta_pt']:+.2f} pt: "
                f"**{'met' if ok else 'not met'}**."
            )
        if row["scheme"] == "topk" and "cut" in row:
            ok = row["cut"] >= 0.95 and row["accuracy_delta_pt"] >= -2.0
            targets.append(
                f"- top-k 1 % + error feedback: target ≥ 95 % cut at ≤ 2 pt → "
                f"{100 * row['cut']:.1f} %, {row['accuracy_delta_pt']:+.2f} pt: "
                f"**{'met' if ok else 'not met'}**."
            )
    curve_rows = ["| round | " + " | ".join(LABELS.get(r["scheme"], r["scheme"]) for r in rows)
                  + " |", "|---:|" + "---:|" * len(rows)]  # fmt: skip
    dense_reply = rows[0]["bytes_per_round"] / args.silos
    first_seed = runs[0].seed
    by_scheme = {r.scheme: r for r in runs if r.seed == first_seed}
    for i in range(args.rounds):
        cells = [f"{by_scheme[r['scheme']].accuracy[i]:.4f}" for r in rows]
        curve_rows.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    return f"""## Update compression (`python -m benchmarks.compression`)

Digits (bundled 8×8 images, SmallCNN, 9 930 float32 parameters), {args.silos} silos, IID,
FedAvg, {args.rounds} rounds, 3 local epochs, every silo trains every round, seeds
{", ".join(map(str, args.seeds))} (accuracy = server-side test accuracy of the final global
model, 360 images: one image = 0.28 pt). Top-k keeps {100 * args.topk_fraction:g} % of each
tensor's values. Error feedback on. In-process grid (the real ServerApp body and ClientApp,
no transport); flwr {version("flwr")}, torch {version("torch")}.

**Bytes are measured, not estimated**: `bytes-uploaded` is the sum, over the round's train
replies, of the bytes Flower serialises for each reply (every inflatable object of the
message — Message, RecordDict, records, Arrays, ArrayChunks — `deflate()`d, deduplicated by
object id, as a SuperNode pushes them). A dense reply is {dense_reply:,.0f} bytes
for 39 720 bytes of weights: Flower adds ~450 bytes of object headers and ids per Array, ~650
bytes per message. That fixed part is why the compressed codecs travel as one uint8 Array.

{table(rows, args.silos)}

{chr(10).join(targets)}

Server test accuracy per round (seed {first_seed}):

{chr(10).join(curve_rows)}

How the codecs work (`strategies/compression/codecs.py`): the delta w.r.t. the received
global model is quantised per chunk of {args.chunk} values (min–max range, `2^bits` levels,
stochastic rounding: unbiased, error < one level) or sparsified per tensor (top-k by
magnitude, indices as uint16, values float32 or int8); the encoded arrays and a small JSON
header go into one byte string, deflated with zlib when that is smaller (lossless; the
quantised codes of a bell-shaped update carry well under 8 bits of entropy). Error feedback
keeps `(delta + residual) − decoded` in the silo's `context.state` for its next round.
"""


def reply_sizes(topk_fraction: float = 0.01) -> list[dict]:
    """Serialised bytes of ONE real train reply per codec, with and without the lossless
    zlib stage: silo 0 trains the seeded initial model for one round (3 local epochs)."""
    import torch
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

    from fl_app.config import RunConfig
    from fl_app.messages import offline_identity
    from fl_app.seeding import derive_seed, seed_everything
    from strategies.compression import CompressionSpec, compress_train_content, message_bytes
    from tasks import get_task

    offline_identity()
    cfg = RunConfig()
    task = get_task("digits")
    seed_everything(derive_seed(cfg.seed, "init"))
    model = task.build_model()
    received = ArrayRecord(model.state_dict())
    part = task.load_partition(0, 10, cfg)
    task.train(model, part.train, cfg, generator=seed_everything(1))
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({"train-loss": 0.1, "num-examples": len(part.train)}),
            "meta": ConfigRecord({"partition-id": 0}),
        }
    )
    instruction = Message(RecordDict(), dst_node_id=1001, message_type="train")
    dense = message_bytes(Message(content, reply_to=instruction))
    rows = [{"scheme": "none", "plain": dense, "zlib": dense}]
    for scheme in SCHEMES[1:]:
        spec = CompressionSpec(scheme, topk_fraction, RunConfig().quantization_chunk)
        row = {"scheme": scheme}
        for label, entropy in (("plain", False), ("zlib", True)):
            packed = compress_train_content(
                content,
                received,
                spec,
                state=None,
                error_feedback=False,
                generator=torch.Generator().manual_seed(0),
                entropy_coding=entropy,
            )
            row[label] = message_bytes(Message(packed, reply_to=instruction))
        rows.append(row)
    return rows


def sizes_markdown(rows: list[dict]) -> str:
    dense = rows[0]["plain"]
    lines = [
        "## One reply on the wire, with and without the lossless stage",
        "",
        "Bytes of one real train reply (silo 0 after one round of 3 local epochs from the "
        "seeded initial model), serialised as Flower sends it; `python -m "
        "benchmarks.compression --sizes-only`.",
        "",
        "| codec | bytes (codes as is) | cut | bytes (zlib-deflated payload) | cut |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {LABELS.get(r['scheme'], r['scheme'])} | {r['plain']:,} "
            f"| {100 * (1 - r['plain'] / dense):.1f} % | {r['zlib']:,} "
            f"| {100 * (1 - r['zlib'] / dense):.1f} % |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--silos", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43])
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES[:4]), choices=SCHEMES)
    parser.add_argument("--topk-fraction", type=float, default=0.01)
    parser.add_argument("--out", type=Path, default=DOC)
    parser.add_argument("--json", type=Path, default=Path("docs/efficiency-compression.json"))
    parser.add_argument("--quick", action="store_true", help="2 rounds, 3 silos, no files")
    parser.add_argument("--sizes-only", action="store_true", help="one reply per codec only")
    args = parser.parse_args(argv)
    sizes = reply_sizes(args.topk_fraction)
    print(sizes_markdown(sizes))
    if args.sizes_only:
        write_section("compression-sizes", sizes_markdown(sizes), args.out)
        return 0
    if args.quick:
        args.rounds, args.silos, args.seeds = 2, 3, [args.seeds[0]]
    from fl_app.config import RunConfig

    args.chunk = RunConfig().quantization_chunk
    logging.getLogger("flwr").setLevel(logging.WARNING)
    logging.getLogger("fedsilo").setLevel(logging.WARNING)
    runs = []
    for seed in args.seeds:
        for scheme in args.schemes:
            run = run_one(scheme, seed, args.rounds, args.silos, args.topk_fraction)
            runs.append(run)
            print(
                f"seed {seed} {scheme:10s} accuracy {run.final_accuracy:.4f} "
                f"bytes/round {run.mean_bytes:,.0f}  ({run.seconds:.0f} s)",
                flush=True,
            )
    rows = summarise(runs)
    print(table(rows, args.silos))
    if not args.quick:
        write_section("compression", markdown(rows, args, runs), args.out)
        write_section("compression-sizes", sizes_markdown(sizes), args.out)
        args.json.write_text(
            json.dumps({"rows": rows, "runs": [asdict(r) for r in runs]}, indent=1)
        )
        print(f"wrote {args.out} and {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
