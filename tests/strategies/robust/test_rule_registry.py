"""The aggregation-rule registry: the built-in rules with their metadata, rules added from
outside the repository, and module boundaries (no private name imported across modules)."""

from __future__ import annotations

import ast
import inspect
import json
import os
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import strategies.robust.rules as rules_package
from strategies.robust import AGGREGATORS, RULES

ROOT = Path(__file__).resolve().parents[3]
ROBUST = {"central-dp": False, "secagg": False, "topk": False}

#: name → (function, family, compatible, params, extra metadata beyond ``params``).
EXPECTED = {
    "mean": ("weighted_mean", "mean-based", dict.fromkeys(ROBUST, True), (), {"strategy": False}),
    "robust-median": ("coordinate_median", "robust", ROBUST, (), {}),
    "robust-trimmed-mean": ("trimmed_mean", "robust", ROBUST, ("beta",), {}),
    "robust-krum": ("krum", "robust", ROBUST, ("num_byzantine",), {}),
    "robust-multikrum": (
        "multi_krum",
        "robust",
        ROBUST,
        ("num_byzantine", "num_selected"),
        {},
    ),
    "robust-bulyan": ("bulyan", "robust", ROBUST, ("num_byzantine",), {}),
    "geomed": ("geometric_median", "robust", ROBUST, (), {}),
    "cclip": ("centered_clipping", "robust", ROBUST, ("tau",), {"uses_previous": True}),
    "norm-clip": ("norm_clipping", "robust", ROBUST, ("max_norm",), {}),
    "fltrust": ("fltrust", "robust", ROBUST, (), {"needs_server_update": True}),
}


def test_registry_holds_exactly_the_rules_with_their_metadata() -> None:
    assert sorted(RULES) == sorted(EXPECTED)
    for name, (function, family, compatible, params, extra) in EXPECTED.items():
        entry = RULES.get(name)
        assert entry.obj.__name__ == function, name
        assert entry.origin == "builtin", name
        assert entry.family == family, name
        assert dict(entry.compatible) == compatible, name
        assert dict(entry.extra) == {"params": params, **extra}, name
        assert entry.doc, name  # the first line of the rule's docstring
    assert RULES.names(family="mean-based") == ["mean"]
    assert sorted(RULES.names(compatible="secagg")) == ["mean"]
    assert set(RULES.names(incompatible="central-dp")) == set(EXPECTED) - {"mean"}


def test_params_are_keyword_parameters_of_the_rule() -> None:
    for entry in RULES.entries():
        signature = inspect.signature(entry.obj)
        for param in entry.extra["params"]:
            assert signature.parameters[param].kind is inspect.Parameter.KEYWORD_ONLY, entry.name
        if entry.extra.get("uses_previous"):
            assert "center" in signature.parameters, entry.name
        if entry.extra.get("needs_server_update"):
            assert "server_update" in signature.parameters, entry.name


def test_aggregators_is_a_read_only_view_of_the_registry() -> None:
    assert dict(AGGREGATORS) == {name: RULES[name] for name in RULES}
    with pytest.raises(TypeError):
        AGGREGATORS["mine"] = len  # type: ignore[index]


def test_every_module_of_the_rules_folder_registers_its_rules() -> None:
    """A rule is one file: the registry imports every module of the folder (no list), and
    every registered built-in comes from there."""
    folder = {m.name for m in pkgutil.iter_modules(rules_package.__path__)}
    registered = {RULES[name].__module__.rsplit(".", 1)[-1] for name in RULES}
    assert registered == folder
    assert all(RULES[n].__module__.startswith("strategies.robust.rules.") for n in RULES)


def _run(code: str, tmp_path: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_rule_added_from_outside_is_found_by_family(tmp_path: Path) -> None:
    """In a fresh interpreter (the registry is process-wide): a rule added by ``RULES.add``,
    one decorated in a module of its own, and one an installed package declares under the
    entry-point group ``fedsilo.rules``, all listed with the robust family."""
    (tmp_path / "my_rules.py").write_text(
        textwrap.dedent(
            """
            from fl_core.registry import describe
            from strategies.robust.checks import check_updates
            from strategies.robust.registry import RULES

            @RULES.register("decorated-max", family="robust", params=())
            def coordinate_max(updates, weights=None):
                return check_updates(updates).max(dim=0).values

            @describe(family="robust", compatible={"secagg": False}, params=())
            def plugin_min(updates, weights=None):
                return check_updates(updates).min(dim=0).values
            """
        )
    )
    dist = tmp_path / "my_rules-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-rules\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[fedsilo.rules]\nplugin-min = my_rules:plugin_min\n")
    out = _run(
        """
        import json
        import torch
        from strategies.robust import AGGREGATORS, RULES
        import my_rules

        RULES.add("added-first", lambda updates, weights=None: updates[0], family="robust")
        x = torch.tensor([[1.0, 5.0], [3.0, 2.0]])
        print(json.dumps({
            "robust": RULES.names(family="robust"),
            "origins": {n: RULES.get(n).origin for n in ("decorated-max", "plugin-min")},
            "max": AGGREGATORS["decorated-max"](x).tolist(),
            "min": RULES["plugin-min"](x).tolist(),
            "first": RULES["added-first"](x).tolist(),
        }))
        """,
        tmp_path,
    )
    assert {"decorated-max", "plugin-min", "added-first"} <= set(out["robust"])
    assert set(EXPECTED) - {"mean"} <= set(out["robust"])
    assert out["origins"] == {"decorated-max": "add", "plugin-min": "entry-point:my-rules"}
    assert (out["max"], out["min"], out["first"]) == ([3.0, 5.0], [1.0, 2.0], [1.0, 5.0])


# ------------------------------------------------------------------------ module boundaries

#: The project's top-level packages (``tests`` is scanned but not imported from).
PROJECT = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()} - {"tests"}


def _private_imports(source: str, where: str) -> list[str]:
    """``from X import _name`` in ``source`` where ``X`` is a module of this project (absolute
    or relative); dunder names are not private."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ImportFrom):
            continue
        module = node.module or ""
        if node.level == 0 and module.split(".")[0] not in PROJECT:
            continue
        for alias in node.names:
            if alias.name.startswith("_") and not alias.name.startswith("__"):
                found.append(
                    f"{where}:{node.lineno}: from {'.' * node.level}{module} import {alias.name}"
                )
    return found


def _scan(folder: Path) -> list[str]:
    return [
        hit
        for path in sorted(folder.rglob("*.py"))
        for hit in _private_imports(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    ]


def test_the_private_import_check_catches_them() -> None:
    assert {"adapters", "benchmarks", "fl_app", "fl_core", "strategies", "tasks"} <= PROJECT
    source = (
        "from strategies.robust.kernels import _gram, column_blocks\n"
        "from .checks import _helper\n"
        "from numpy import _core\n"
        "from strategies import __doc__\n"
    )
    assert [hit.split(": ", 1)[1] for hit in _private_imports(source, "x.py")] == [
        "from strategies.robust.kernels import _gram",
        "from .checks import _helper",
    ]


def test_no_module_under_strategies_imports_a_private_name() -> None:
    assert _scan(ROOT / "strategies") == []


def test_no_module_anywhere_imports_a_private_name_of_strategies() -> None:
    """Tests and benchmarks included: they use the public names of checks and kernels."""
    folders = [ROOT / name for name in sorted(PROJECT | {"tests"})]
    hits = [hit for folder in folders for hit in _scan(folder)]
    assert [hit for hit in hits if " from strategies" in hit] == []
