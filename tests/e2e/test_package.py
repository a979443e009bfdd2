"""Publishable as a package and as a Flower app (#20 item 8).

One copy of the project (its files as git sees them, plus the junk a working copy gathers:
run outputs, caches, keys) is built once per module:

* ``python -m build`` makes a wheel and an sdist. The wheel is installed into a fresh
  venv (``--system-site-packages``: torch and Flower come from this environment, offline),
  and ``fedsilo --help`` and a 2-round ``flwr run`` work from there, in a directory outside
  the checkout, without ``PYTHONPATH``; the modules that ran are the venv's.
* ``flwr build`` makes a FAB; ``flwr install`` unpacks it (checking its hashes) and a
  brand-new SuperLink with two SuperNodes runs it.

Neither artefact carries outputs, caches or keys; both carry the licence."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from importlib.metadata import distribution
from pathlib import Path

import pytest

from fl_app.local_run import PROJECT_DIR

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]

VERSION = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())["project"]["version"]
PACKAGES = ("adapters", "fl_app", "fl_core", "strategies", "tasks")
# What a working copy gathers and no published artefact may carry.
JUNK = [
    "outputs/20260101-000000-digits-fedavg/metrics.json",
    "outputs/20260101-000000-digits-fedavg/model.pt",
    "mlruns/0/meta.yaml",
    "fl_app/__pycache__/config.cpython-311.pyc",
    "fl_app/__pycache__/stale_module.py",
    ".venv/lib/python3.11/site-packages/stray.py",
    ".pytest_cache/README.md",
    ".hypothesis/examples/0.json",
    "dist/old.json",
    "pki/ca.key",
    "pki/superlink.pem",
    "fl_app/silo.key",
    ".env",
]
RUN = {"task": "breast-cancer", "num-server-rounds": 2, "training.local-epochs": 1}


def _is_junk(name: str) -> bool:
    parts = Path(name).parts
    return (
        bool(
            {"outputs", "mlruns", "__pycache__", ".venv", ".pytest_cache", ".hypothesis", "dist"}
            & set(parts)
        )
        or name.endswith((".pem", ".key", ".pyc", "/.env"))
        or name == ".env"
    )


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without anything that points into the checkout."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")
    }
    env.update(MLFLOW_DISABLE_TELEMETRY="true", FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")
    return {**env, **extra}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The project's files (tracked and not ignored, as in a clean checkout) with junk."""
    listed = subprocess.run(
        ["git", "-C", str(PROJECT_DIR), "ls-files", "-co", "--exclude-standard"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    root = tmp_path_factory.mktemp("src") / "fedsilo"
    for name in listed:
        if (PROJECT_DIR / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT_DIR / name, root / name)
    for name in JUNK:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("junk\n")
    return root


@pytest.fixture(scope="module")
def dists(project, tmp_path_factory) -> dict[str, Path]:
    """``python -m build``: the sdist, and the wheel built from it."""
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(project)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = out.glob("fedsilo-*.whl")
    (sdist,) = out.glob("fedsilo-*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


@pytest.fixture(scope="module")
def venv(dists, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed (its dependencies resolved, offline, from this
    environment's site-packages) and Flower's commands, as pip would have written them."""
    root = tmp_path_factory.mktemp("venv")
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(root)],
        check=True, timeout=300,
    )  # fmt: skip
    python = root / "bin" / "python"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index",
         str(dists["wheel"])],
        capture_output=True, text=True, timeout=600, check=False, env=_clean_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # Flower lives in the parent environment; its commands must start the venv's Python,
    # or the SuperLink's ServerApp would import another copy of the app.
    for ep in distribution("flwr").entry_points.select(group="console_scripts"):
        script = root / "bin" / ep.name
        script.write_text(
            f"#!{python}\nimport sys\nfrom {ep.module} import {ep.attr}\nsys.exit({ep.attr}())\n"
        )
        script.chmod(0o755)
    return root


def test_sdist_and_wheel_carry_the_licence_and_no_outputs_caches_or_keys(dists):
    with tarfile.open(dists["sdist"]) as sdist:
        names = [m.name.split("/", 1)[1] for m in sdist.getmembers() if m.isfile()]
        top = f"fedsilo-{VERSION}"
        licence = sdist.extractfile(f"{top}/LICENSE").read()
    assert {"LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml", "PKG-INFO"} <= set(names)
    assert licence == (PROJECT_DIR / "LICENSE").read_bytes()
    assert {f"{p}/__init__.py" for p in PACKAGES} <= set(names)
    assert not [n for n in names if _is_junk(n)], [n for n in names if _is_junk(n)]

    with zipfile.ZipFile(dists["wheel"]) as wheel:
        names = wheel.namelist()
        info = f"fedsilo-{VERSION}.dist-info"
        metadata = wheel.read(f"{info}/METADATA").decode()
        assert wheel.read(f"{info}/licenses/LICENSE") == (PROJECT_DIR / "LICENSE").read_bytes()
    assert {n.split("/")[0] for n in names} == {*PACKAGES, info}
    assert not [n for n in names if _is_junk(n)], [n for n in names if _is_junk(n)]
    assert f"Version: {VERSION}" in metadata and "License-Expression: Apache-2.0" in metadata
    assert (
        "fedsilo = adapters.cli:app"
        in zipfile.ZipFile(dists["wheel"]).read(f"{info}/entry_points.txt").decode()
    )


def test_the_installed_package_runs_fedsilo_and_a_flwr_run(venv, dists, tmp_path):
    env = _clean_env(PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}")
    site = next((venv / "lib").glob("python3*/site-packages"))

    def run(*cmd: str) -> str:
        proc = subprocess.run(
            cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    assert "Usage: fedsilo" in run(str(venv / "bin" / "fedsilo"), "--help")
    assert run(str(venv / "bin" / "fedsilo"), "--version").strip() == f"fedsilo {VERSION}"
    where = json.loads(
        run(str(venv / "bin" / "python"), "-c",
            f"import json, {', '.join(PACKAGES)}; "
            f"print(json.dumps([m.__file__ for m in ({', '.join(PACKAGES)})]))")
    )  # fmt: skip
    assert all(Path(path).is_relative_to(site) for path in where), where

    # The Flower app as a user of the package writes it: the published pyproject.toml (from
    # the sdist) and the licence, no code: the FAB carries no module, so the ServerApp and
    # ClientApps import the venv's. The package's own run helper runs it (it starts and
    # stops the run's SuperLink by pid).
    app = tmp_path / "fedsilo"
    app.mkdir()
    with tarfile.open(dists["sdist"]) as sdist:
        for name in ("pyproject.toml", "LICENSE"):
            (app / name).write_bytes(sdist.extractfile(f"fedsilo-{VERSION}/{name}").read())
    for cache in site.glob("*/__pycache__"):
        shutil.rmtree(cache)
    script = (
        "import json, sys; from pathlib import Path; import fl_app.local_run as lr; "
        f"r = lr.run_simulation({RUN!r}, num_supernodes=2, project_dir=Path(sys.argv[1]), "
        "run_dir=Path(sys.argv[2]), timeout=900); "
        "print(json.dumps({'ok': r.ok, 'status': f'{r.status} {r.status_details}', "
        "'run_dir': str(r.run_dir), "
        "'final': r.final(), 'helper': lr.__file__, 'output': r.output[-3000:]}))"
    )
    result = json.loads(
        run(str(venv / "bin" / "python"), "-c", script, str(app), str(tmp_path / "runs"))
        .strip().splitlines()[-1]
    )  # fmt: skip
    assert result["ok"], result["status"] + "\n" + result["output"]
    assert Path(result["helper"]).is_relative_to(site)
    assert result["final"]["round"] == RUN["num-server-rounds"]
    config = json.loads((Path(result["run_dir"]) / "config.json").read_text())
    assert config["fedsilo-version"] == VERSION
    # The ServerApp and the ClientApps ran the venv's modules: Python cached them there.
    cached = {p.name.split(".")[0] for p in (site / "fl_app" / "__pycache__").glob("*.pyc")}
    assert {"server_app", "client_app", "federation"} <= cached


def test_flwr_build_makes_a_fab_a_brand_new_superlink_installs_and_runs(
    project, deployment, tmp_path
):
    out = tmp_path / "fab"
    out.mkdir()
    proc = subprocess.run(
        ["flwr", "build", "--app", str(project)], cwd=out, env=_clean_env(),
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (fab,) = out.glob("*.fab")
    with zipfile.ZipFile(fab) as archive:
        names = archive.namelist()
        assert archive.read("LICENSE") == (PROJECT_DIR / "LICENSE").read_bytes()
    assert {"pyproject.toml", "LICENSE", ".info/CONTENT", "fl_app/server_app.py"} <= set(names)
    assert {f"{p}/__init__.py" for p in PACKAGES} <= set(names)
    assert not [n for n in names if _is_junk(n)], [n for n in names if _is_junk(n)]

    fed = deployment(2, "subprocess")  # flower-superlink + 2 flower-supernode, new FLWR_HOME
    install = subprocess.run(
        ["flwr", "install", str(fab)], env=fed.env, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    (installed,) = (fed.home / "apps").iterdir()
    flwr = fed.flwr_run({**RUN, "output.run-dir": str(tmp_path / "runs")}, project=installed)
    assert flwr.popen.wait(timeout=1200) == 0, flwr.log()[-3000:]
    runs = subprocess.run(
        ["flwr", "ls", "--format", "json"], env=fed.env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    (entry,) = json.loads(runs.stdout)["runs"]
    assert entry["status"] == "finished:completed", entry
    # The SuperLink ran exactly the FAB flwr build wrote.
    assert hashlib.sha256(fab.read_bytes()).hexdigest().startswith(entry["fab-hash"]), entry
    (run_dir,) = [p.parent for p in (tmp_path / "runs").glob("*/metrics.json")]
    rounds = [
        r for r in json.loads((run_dir / "metrics.json").read_text()) if r["phase"] == "server"
    ]
    assert [r["round"] for r in rounds][-1] == RUN["num-server-rounds"]
