"""ONNX export of the global model: parity on every task's model, dynamic batch, the
end-of-run export with int8 variants, ``fedsilo export`` on a real run dir, refusals."""

import hashlib
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from adapters.cli import app as cli
from fl_app.audit import AuditLog, read_audit_log
from fl_app.client_app import app as client_app
from fl_app.config import ConfigError, RunConfig
from fl_app.federation import run_federation
from fl_app.inprocess import InProcessGrid
from fl_app.onnx_export import (
    MAX_ABS_DIFF,
    OnnxExportRefused,
    export_at_end,
    export_model,
    export_run_dir,
    onnx_session,
    run_onnx,
    to_onnx,
)
from tasks import TASKS, get_task

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_model_exports_with_parity_and_a_dynamic_batch(name, tmp_path):
    task = get_task(name)
    cfg = RunConfig(task=name)
    torch.manual_seed(3)
    model = task.build_model().eval()
    result = export_model(task, model, cfg, tmp_path)

    test = task.load_test(cfg.data, cfg.seed)
    recorded = json.loads((tmp_path / "onnx" / "parity.json").read_text())
    assert recorded == {"exporter": result.exporter, "opset": 18, **result.parity}
    assert recorded["passed"] and recorded["rows"] == len(test)
    assert recorded["max-abs-diff"] <= MAX_ABS_DIFF and recorded["differing-predictions"] == 0

    session = onnx_session(result.path)
    for batch in (1, 7):  # traced with 7 rows; any batch runs
        x = test.x[10 : 10 + batch]
        got = run_onnx(session, x)
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        assert got.shape == expected.shape and got.shape[0] == batch
        np.testing.assert_allclose(got, expected, atol=MAX_ABS_DIFF, rtol=0)


class Eigenvalues(torch.nn.Module):
    """A real op ONNX has no operator for (complex eigenvalues)."""

    def forward(self, x):
        return torch.linalg.eigvals(x @ x.transpose(-1, -2)).real


def test_a_model_onnx_cannot_express_is_refused_with_each_exporters_reason():
    with pytest.raises(OnnxExportRefused) as exc:
        to_onnx(Eigenvalues(), np.ones((7, 4, 4), dtype=np.float32))
    message = str(exc.value)
    assert message.startswith("ONNX cannot express Eigenvalues:")
    assert "dynamo exporter:" in message
    assert "torchscript exporter: UnsupportedOperatorError" in message
    assert "linalg_eigvals" in message and "\x1b" not in message


class UnexportableDigits(type(get_task("digits"))):
    """The digits task with a model ONNX cannot express."""

    def build_model(self):
        return Eigenvalues()


def test_end_of_run_refusal_keeps_the_run_and_records_why(tmp_path):
    audit = AuditLog(tmp_path / "audit.jsonl", "cfg")
    cfg = RunConfig(task="digits", export={"onnx": True})
    files = export_at_end(UnexportableDigits(), {}, cfg, tmp_path, audit)
    refused = tmp_path / "onnx" / "refused.json"
    assert files == [refused]
    reason = json.loads(refused.read_text())["reason"]
    assert reason.startswith("ONNX cannot express Eigenvalues:")
    (event,) = read_audit_log(tmp_path / "audit.jsonl")
    assert event["event"] == "onnx-export" and not event["exported"]
    assert event["reason"] == reason
    assert export_at_end(UnexportableDigits(), {}, RunConfig(), tmp_path, audit) == []


def test_a_vertical_run_is_refused_before_round_1_and_on_export():
    with pytest.raises(ConfigError, match=r"'export.onnx' = true is refused.*split between"):
        RunConfig(task="bank-marketing", mode="vertical", export={"onnx": True})
    with pytest.raises(ConfigError, match=r"'export.quantize' = 'dynamic'.*export.onnx = true"):
        RunConfig(export={"quantize": "dynamic"})
    cfg = RunConfig(task="bank-marketing", mode="vertical")
    with pytest.raises(OnnxExportRefused, match=r"no whole model to export"):
        export_model(get_task("bank-marketing"), torch.nn.Identity(), cfg, ".")


def _run(tmp_path, **extra):
    cfg = RunConfig(
        task="breast-cancer",
        num_server_rounds=2,
        training={"local-epochs": 1},
        output={"run-dir": str(tmp_path)},
        **extra,
    )
    result, run_dir = run_federation(InProcessGrid(client_app, cfg.to_flower(), 3), cfg)
    return cfg, result, run_dir


def test_end_of_run_export_with_int8_variants_is_recorded_and_audited(tmp_path):
    _, result, run_dir = _run(
        tmp_path, export={"onnx": True, "quantize": "dynamic+static", "calibration-rows": 64}
    )
    onnx_dir = run_dir / "onnx"
    names = {p.name for p in onnx_dir.iterdir()}
    assert names == {
        "model.onnx", "parity.json", "model.int8-dynamic.onnx", "model.int8-static.onnx",
        "edge.json",
    }  # fmt: skip
    parity = json.loads((onnx_dir / "parity.json").read_text())
    assert parity["passed"] and parity["max-abs-diff"] <= MAX_ABS_DIFF

    # The float ONNX model scores exactly what the server reported for the final round.
    edge = json.loads((onnx_dir / "edge.json").read_text())
    server = result.evaluate_metrics_serverapp[2]
    assert edge["float"]["metrics"]["accuracy"] == pytest.approx(server["accuracy"])
    for kind in ("dynamic", "static"):
        variant = edge[kind]
        size = (onnx_dir / variant["file"]).stat().st_size
        assert size < (onnx_dir / "model.onnx").stat().st_size
        assert variant["size-cut-percent"] == pytest.approx(
            100 * (1 - size / edge["float"]["bytes"])
        )
        change = variant["metric-change"]["accuracy"]
        assert change == pytest.approx(variant["metrics"]["accuracy"] - server["accuracy"])
        assert abs(change) < 0.1  # int8 costs little on this small MLP

    (event,) = [e for e in read_audit_log(run_dir / "audit.jsonl") if e["event"] == "onnx-export"]
    assert event["exported"] and event["parity-passed"]
    assert event["variants"] == ["dynamic", "static"]
    assert event["sha256"] == hashlib.sha256((onnx_dir / "model.onnx").read_bytes()).hexdigest()


def test_cli_exports_a_finished_run_and_fails_with_one_line_otherwise(tmp_path):
    _, _, run_dir = _run(tmp_path)  # export.onnx off: no onnx/ yet
    assert not (run_dir / "onnx").exists()
    runner = CliRunner()
    done = runner.invoke(cli, ["export", str(run_dir), "--format", "onnx"])
    assert done.exit_code == 0, done.output
    assert "predictions identical" in done.output
    parity = json.loads((run_dir / "onnx" / "parity.json").read_text())
    assert parity["passed"] and parity["rows"] == 114

    # The exported model predicts what the run's saved PyTorch model predicts.
    again = export_run_dir(run_dir)
    assert again.parity == {k: parity[k] for k in again.parity}

    missing = runner.invoke(cli, ["export", str(tmp_path), "--format", "onnx"])
    assert missing.exit_code == 1 and "has no config.json" in missing.output
    wrong = runner.invoke(cli, ["export", str(run_dir), "--format", "tflite"])
    assert wrong.exit_code == 2 and "use --format onnx" in wrong.output
