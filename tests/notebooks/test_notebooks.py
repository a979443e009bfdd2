"""The notebooks run top to bottom on the offline defaults, and are stored without outputs.

Each notebook is executed by nbmake's runner (the same as ``pytest --nbmake notebooks/``) in
a fresh Jupyter kernel with the notebook's directory as working directory; a cell that
raises (every notebook asserts what it shows) fails the test with that cell's traceback.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import nbformat
import pytest
from nbmake.nb_run import NotebookRun

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
#: Notebooks that start real Flower processes (SuperLink, SuperNodes) on loopback.
E2E = {"04-azureml-launch.ipynb"}
#: Notebooks that print their results without plotting.
TEXT_ONLY = {"04-azureml-launch.ipynb"}
#: Seconds one notebook may take (on a busy 2-core machine; ~10-30 s when idle).
TIMEOUT = 600


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _params():
    for path in NOTEBOOKS:
        marks = [pytest.mark.e2e] if path.name in E2E else []
        yield pytest.param(path, id=path.stem, marks=marks)


def test_the_notebooks_exist():
    names = {p.name for p in NOTEBOOKS}
    assert {
        "01-quickstart.ipynb",
        "02-robust-aggregation.ipynb",
        "03-differential-privacy.ipynb",
        "04-azureml-launch.ipynb",
        "05-vertical-fl.ipynb",
        "06-personalization.ipynb",
    } <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_clean(path):
    """No outputs, no execution counts, a Python 3 kernel, markdown explaining the code."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{path.name} has no code"
    dirty = [
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and (c.outputs or c.execution_count)
    ]
    assert not dirty, (
        f"{path.name}: cells {dirty} carry outputs; clear them before committing "
        "(Jupyter: Clear Outputs of All Cells, or "
        f"jupyter nbconvert --clear-output --inplace {path.relative_to(ROOT)})"
    )
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    assert sum(c.cell_type == "markdown" for c in nb.cells) >= 3


@pytest.mark.parametrize("path", list(_params()))
def test_notebook_runs_top_to_bottom(path):
    started, cpu_started = time.perf_counter(), _children_cpu()
    result = NotebookRun(path, default_timeout=TIMEOUT, kernel="python3").execute()
    seconds, cpu = time.perf_counter() - started, _children_cpu() - cpu_started
    if result.error is not None:
        pytest.fail(
            f"{path.name}, cell {result.error.failing_cell_index}: {result.error.summary}\n"
            f"{result.error.trace}",
            pytrace=False,
        )
    code = [c for c in result.nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "not every code cell ran"
    # Every notebook shows its results: printed output, and a figure where it plots one.
    outputs = [o for c in code for o in c.outputs]
    kinds = {k for o in outputs for k in o.get("data", {})}
    assert any(o.get("output_type") == "stream" for o in outputs), f"{path.name} printed nothing"
    if path.name not in TEXT_ONLY:
        assert "image/png" in kinds, f"{path.name} displayed no figure"
    # Wall-clock and the CPU time of the kernel (and what it started): on a busy machine the
    # CPU seconds say what the notebook costs on an idle one.
    print(json.dumps({"notebook": path.name, "seconds": round(seconds, 1), "cpu": round(cpu, 1)}))
