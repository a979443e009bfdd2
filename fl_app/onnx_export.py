"""ONNX export of a run's global model, its parity check and int8 edge variants.

``export.onnx = true`` exports the final global model at the end of a horizontal run;
``fedsilo export RUN_DIR --format onnx`` does the same for a finished run directory. Both
write, under ``<run dir>/onnx/``:

- ``model.onnx``: the task's model with the global weights, input ``input`` and output
  ``logits``, the batch axis dynamic (any number of rows per call);
- ``parity.json``: the model run by onnxruntime against PyTorch on the server's whole
  test set: the maximum absolute difference of the outputs (must be ≤ 1e-4) and whether
  every prediction (argmax over the class axis) is identical; ``passed`` says both hold;
- with ``export.quantize`` (or ``--quantize``): ``model.int8-dynamic.onnx`` and/or
  ``model.int8-static.onnx`` (onnxruntime.quantization; static calibration on
  ``export.calibration-rows`` rows of the server's own root data, never the test set) and
  ``edge.json``: per variant its size cut and the change of every test metric against the
  float model, measured with the task's own :meth:`~tasks.base.Task.evaluate`.

``torch.onnx.export`` is tried with its dynamo exporter first (torch ≥ 2.9's default,
needs ``onnxscript``) and then with the TorchScript exporter: neither covers every model
(the dynamo exporter cannot trace the NER tagger's packed LSTM, the TorchScript one
cannot express pneumonia's adaptive pooling of 7×7 to 4×4). A model neither can express is
refused with both reasons (:class:`OnnxExportRefused`); so is a vertical run, whose model
is split between the parties.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from fl_core.config import Section, transient

if TYPE_CHECKING:
    import onnxruntime

    from fl_app.config import RunConfig
    from tasks import Task
    from tasks.base import ArrayDataset

LOG = logging.getLogger(__name__)

ONNX_DIR = "onnx"
MODEL_FILE = "model.onnx"
PARITY_FILE = "parity.json"
EDGE_FILE = "edge.json"
#: Largest allowed absolute difference between PyTorch's and onnxruntime's outputs.
MAX_ABS_DIFF = 1e-4
OPSET = 18
INPUT, OUTPUT = "input", "logits"
#: ``export.quantize`` value → the int8 variants it makes.
QUANTIZATIONS: dict[str, tuple[str, ...]] = {
    "none": (),
    "dynamic": ("dynamic",),
    "static": ("static",),
    "dynamic+static": ("dynamic", "static"),
}


class ExportSection(Section):
    """ONNX export of the global model at the end of a run (docs/operations.md, "ONNX and
    edge models")."""

    onnx: bool = transient(
        False,
        description="Export the final global model to <run dir>/onnx/model.onnx (dynamic "
        "batch) and check it with onnxruntime on the server's test set (onnx/parity.json); "
        "logged to MLflow when tracking is on.",
    )
    quantize: Literal["none", "dynamic", "static", "dynamic+static"] = transient(
        "none",
        description="With export.onnx: int8 edge variants (onnxruntime.quantization), their "
        "size cut and metric change in onnx/edge.json.",
    )
    calibration_rows: int = transient(
        256,
        ge=1,
        le=100_000,
        description="Static quantisation: rows of the server's root data used to calibrate.",
    )


class OnnxExportRefused(RuntimeError):
    """The model cannot be expressed in ONNX (or the run has no single model); the message
    says why."""


class OnnxParityError(RuntimeError):
    """The exported model's outputs differ from PyTorch's beyond :data:`MAX_ABS_DIFF`."""


def unexportable_mode(mode: str) -> str | None:
    """Why a run of ``mode`` has no model to export (``None``: it has one)."""
    if mode == "horizontal":
        return None
    return (
        f"run-config 'mode' = '{mode}': a vertical model is split between the parties (each "
        "feature party keeps its own bottom model; the run dir holds only the label party's "
        "top and bottom), so there is no whole model to export; export.onnx applies to mode "
        "'horizontal'"
    )


def check_export(cfg: RunConfig) -> None:
    """Refuse, before round 1, export settings the run cannot honour."""
    from fl_core.errors import ConfigError

    why = unexportable_mode(cfg.mode)
    if cfg.export.onnx and why is not None:
        raise ConfigError(f"run-config 'export.onnx' = true is refused: {why}.")
    if cfg.export.quantize != "none" and not cfg.export.onnx:
        raise ConfigError(
            f"run-config 'export.quantize' = '{cfg.export.quantize}' quantises the ONNX "
            "model; set export.onnx = true or export.quantize = 'none'."
        )


# --------------------------------------------------------------------------- export
def _dynamo_export(model: nn.Module, example: torch.Tensor) -> bytes:
    # Quiet: it prints its steps to stdout and logs a warning per absent torchvision op.
    quiet = logging.getLogger("torch.onnx")
    level, quiet.level = quiet.level, logging.ERROR
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return _dynamo_program(model, example)
    finally:
        quiet.setLevel(level)


def _dynamo_program(model: nn.Module, example: torch.Tensor) -> bytes:
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        input_names=[INPUT],
        output_names=[OUTPUT],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        opset_version=OPSET,
        verbose=False,
    )
    program.optimize()
    return program.model_proto.SerializeToString()


def _torchscript_export(model: nn.Module, example: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        (example,),
        buffer,
        dynamo=False,
        input_names=[INPUT],
        output_names=[OUTPUT],
        dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
        opset_version=OPSET,
    )
    return buffer.getvalue()


#: ``torch.onnx.export``'s exporters, in the order they are tried.
EXPORTERS: dict[str, Callable[[nn.Module, torch.Tensor], bytes]] = {
    "dynamo": _dynamo_export,
    "torchscript": _torchscript_export,
}


def to_onnx(model: nn.Module, example: np.ndarray) -> tuple[bytes, str]:
    """``(serialised ONNX model, exporter used)`` for ``model`` (put in eval mode), traced
    with the rows ``example``; the batch axis is dynamic. Raises
    :class:`OnnxExportRefused` with every exporter's reason when none can express it."""
    model.eval()
    x = torch.from_numpy(np.ascontiguousarray(example))
    reasons = {}
    for name, export in EXPORTERS.items():
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                return export(model, x), name
        except Exception as exc:  # each exporter fails in its own way
            reasons[name] = f"{type(exc).__name__}: {_first_line(exc)}"
    raise OnnxExportRefused(
        f"ONNX cannot express {type(model).__name__}: "
        + "; ".join(f"{name} exporter: {why}" for name, why in reasons.items())
    )


def _first_line(exc: BaseException) -> str:
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).split())  # no terminal colours
    return text[:300] + ("…" if len(text) > 300 else "")


# --------------------------------------------------------------------------- running
def onnx_session(model: bytes | Path | str) -> onnxruntime.InferenceSession:
    """A CPU onnxruntime session of a serialised model or a model file."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    source = str(model) if isinstance(model, Path) else model
    return onnxruntime.InferenceSession(
        source, sess_options=options, providers=["CPUExecutionProvider"]
    )


def run_onnx(session: onnxruntime.InferenceSession, x: np.ndarray) -> np.ndarray:
    """The model's outputs for rows ``x``, in one call (the batch axis is dynamic)."""
    return session.run([OUTPUT], {INPUT: np.ascontiguousarray(x)})[0]


class OnnxModule(nn.Module):
    """An onnxruntime session behind ``nn.Module``'s call, so a task's own
    :meth:`~tasks.base.Task.evaluate` measures an ONNX model exactly as a PyTorch one."""

    def __init__(self, session: onnxruntime.InferenceSession) -> None:
        super().__init__()
        self.session = session

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(run_onnx(self.session, x.numpy()))


def parity(
    model: nn.Module, session: onnxruntime.InferenceSession, test: ArrayDataset
) -> dict[str, Any]:
    """PyTorch against onnxruntime on ``test``: ``max-abs-diff`` of the outputs, the
    ``differing-predictions`` (argmax over the class axis, 1) and ``passed``."""
    model.eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(test.x)).numpy()
    got = run_onnx(session, test.x)
    diff = float(np.abs(expected - got).max()) if expected.size else 0.0
    differing = int((expected.argmax(axis=1) != got.argmax(axis=1)).sum())
    return {
        "rows": len(test),
        "max-abs-diff": diff,
        "tolerance": MAX_ABS_DIFF,
        "differing-predictions": differing,
        "passed": bool(diff <= MAX_ABS_DIFF and differing == 0),
    }


# --------------------------------------------------------------------------- int8 variants
def quantize(model_path: Path, kind: str, calibration: np.ndarray | None = None) -> Path:
    """The int8 variant ``kind`` (``dynamic``: weights int8, activations quantised on the
    fly; ``static``: weights and activations int8, activation ranges calibrated on the
    rows ``calibration``) of the ONNX model at ``model_path``, written beside it."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = model_path.with_name(f"{model_path.stem}.int8-{kind}.onnx")
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(model_path), str(prepared), skip_symbolic_shape=True)
        if kind == "dynamic":
            quantize_dynamic(prepared, out, weight_type=QuantType.QInt8)
        elif kind == "static":
            if calibration is None or not len(calibration):
                raise ValueError("static quantisation needs calibration rows")

            class Rows(CalibrationDataReader):
                def __init__(self) -> None:
                    self.batches = iter(np.array_split(calibration, max(1, len(calibration) // 32)))

                def get_next(self):
                    batch = next(self.batches, None)
                    return None if batch is None else {INPUT: np.ascontiguousarray(batch)}

            quantize_static(
                prepared,
                out,
                Rows(),
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
            )
        else:
            raise ValueError(f"unknown quantisation {kind!r}; one of dynamic, static")
    return out


def edge_report(
    task: Task,
    model_path: Path,
    variants: Mapping[str, Path],
    test: ArrayDataset,
) -> dict[str, Any]:
    """Per int8 variant: bytes, size cut (%) against the float model and the change of
    every test metric (variant − float), each measured with ``task.evaluate``."""
    float_metrics = task.evaluate(OnnxModule(onnx_session(model_path)), test)
    float_bytes = model_path.stat().st_size
    report: dict[str, Any] = {
        "float": {"bytes": float_bytes, "metrics": float_metrics},
        "main-metric": task.main_metric,
    }
    for kind, path in variants.items():
        metrics = task.evaluate(OnnxModule(onnx_session(path)), test)
        size = path.stat().st_size
        report[kind] = {
            "file": path.name,
            "bytes": size,
            "size-cut-percent": 100.0 * (1 - size / float_bytes),
            "metrics": metrics,
            "metric-change": {k: metrics[k] - float_metrics[k] for k in float_metrics},
        }
    return report


# --------------------------------------------------------------------------- a run's model
@dataclass
class OnnxExport:
    """What :func:`export_model` wrote."""

    path: Path
    exporter: str
    parity: dict[str, Any]
    variants: dict[str, Path] = field(default_factory=dict)
    edge: dict[str, Any] | None = None

    @property
    def files(self) -> list[Path]:
        """Every file written, for the sinks (the model first)."""
        out = [self.path, self.path.with_name(PARITY_FILE), *self.variants.values()]
        return out + ([self.path.with_name(EDGE_FILE)] if self.edge is not None else [])


def export_model(
    task: Task,
    model: nn.Module,
    cfg: RunConfig,
    run_dir: Path,
    quantize_as: str | None = None,
) -> OnnxExport:
    """Export ``model`` (``task``'s, with the run's global weights) to
    ``run_dir/onnx/model.onnx``, check its parity on the server's test set
    (``parity.json``) and make the int8 variants of ``quantize_as`` (default
    ``export.quantize``). Raises :class:`OnnxExportRefused` when ONNX cannot express the
    model and :class:`OnnxParityError` (after writing ``parity.json``) when parity fails."""
    if (why := unexportable_mode(cfg.mode)) is not None:
        raise OnnxExportRefused(why)
    test = task.load_test(cfg.data, cfg.seed)
    data, exporter = to_onnx(model, test.x[: min(len(test), 7)])
    out = Path(run_dir) / ONNX_DIR
    out.mkdir(parents=True, exist_ok=True)
    path = out / MODEL_FILE
    path.write_bytes(data)
    check = {"exporter": exporter, "opset": OPSET, **parity(model, onnx_session(data), test)}
    (out / PARITY_FILE).write_text(json.dumps(check, indent=2) + "\n")
    if not check["passed"]:
        raise OnnxParityError(
            f"ONNX model {path} differs from PyTorch on the server's test set: max |Δ| = "
            f"{check['max-abs-diff']:.3g} (allowed {MAX_ABS_DIFF:g}), "
            f"{check['differing-predictions']} predictions differ; see {out / PARITY_FILE}"
        )
    result = OnnxExport(path, exporter, check)
    kinds = QUANTIZATIONS[quantize_as or cfg.export.quantize]
    if kinds:
        rows = task.load_root(cfg.data, cfg.seed, cfg.export.calibration_rows).x
        result.variants = {kind: quantize(path, kind, rows) for kind in kinds}
        result.edge = edge_report(task, path, result.variants, test)
        (out / EDGE_FILE).write_text(json.dumps(result.edge, indent=2) + "\n")
    LOG.info(
        "[fedsilo] ONNX model %s (%s exporter): max |Δ| %.2g on %d test rows, %s",
        path, exporter, check["max-abs-diff"], check["rows"],
        "parity passed" if check["passed"] else "PARITY FAILED",
    )  # fmt: skip
    return result


def export_at_end(
    task: Task, state_dict: Mapping[str, torch.Tensor], cfg: RunConfig, run_dir: Path, audit
) -> list[Path]:
    """``export.onnx`` at the end of a run: :func:`export_model` of the global model, the
    outcome in the audit log (``onnx-export``: exporter, parity, sha256 of the file; or
    the reason it was refused). A model ONNX cannot express or whose parity fails does not
    fail the finished run: the reason is logged, audited and written to
    ``onnx/refused.json``. Returns the files to hand to the sinks."""
    if not cfg.export.onnx:
        return []
    import hashlib

    model = task.build_model()
    model.load_state_dict(state_dict)
    try:
        result = export_model(task, model, cfg, run_dir)
    except (OnnxExportRefused, OnnxParityError) as exc:
        LOG.error("[fedsilo] export.onnx: %s", exc)
        refused = Path(run_dir) / ONNX_DIR / "refused.json"
        refused.parent.mkdir(parents=True, exist_ok=True)
        refused.write_text(json.dumps({"reason": str(exc)}, indent=2) + "\n")
        audit.record("onnx-export", exported=False, reason=str(exc))
        return [refused, *refused.parent.glob(PARITY_FILE)]
    audit.record(
        "onnx-export",
        exported=True,
        exporter=result.exporter,
        sha256=hashlib.sha256(result.path.read_bytes()).hexdigest(),
        **{"max-abs-diff": result.parity["max-abs-diff"], "parity-passed": True,
           "variants": sorted(result.variants)},
    )  # fmt: skip
    return result.files


def run_config_of(params: Mapping[str, Any]) -> RunConfig:
    """The :class:`RunConfig` of a run from its logged params (``config.json``)."""
    from fl_app.config import RunConfig

    return RunConfig.from_flower({k: v for k, v in params.items() if k != "config-hash"})


def export_run_dir(run_dir: Path, quantize_as: str | None = None) -> OnnxExport:
    """:func:`export_model` for a finished run directory (its ``config.json`` and
    ``model.pt``): what ``fedsilo export RUN_DIR --format onnx`` runs."""
    from tasks import get_task

    run_dir = Path(run_dir)
    for name in ("config.json", "model.pt"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(
                f"{run_dir} has no {name}: give the directory of a finished run "
                "(output.run-dir/<run>, holding config.json and model.pt)"
            )
    cfg = run_config_of(json.loads((run_dir / "config.json").read_text()))
    if cfg.mode != "horizontal":  # refused before loading the split model's state
        return export_model(get_task(cfg.task), nn.Identity(), cfg, run_dir)
    task = get_task(cfg.task)
    model = task.build_model()
    model.load_state_dict(torch.load(run_dir / "model.pt"))
    return export_model(task, model, cfg, run_dir, quantize_as=quantize_as)
