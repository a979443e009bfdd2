"""The README, the docs, the notebooks and the benchmarks' text (docstrings and the
templates of the docs they generate) write run-config keys in their dotted form
(``dp.central``, not the flat ``central-dp`` of earlier versions), and every key they
give a value to exists.

Only tokens that are config keys in their context are checked (a word such as "attack"
or "compression" in prose is not a key):

* every ``key=value`` of a ``--run-config "..."`` string, wherever it appears (also a
  ``["--run-config", "..."]`` argument list in Python): the key must exist;
* an inline code span ``key = value`` or ``key=value`` whose key is a flat key of earlier
  versions (``fl_app.legacy.LEGACY_KEYS``), or a span that is just a hyphenated flat key
  (``central-dp``; a one-word span such as ``tau`` or ``resume`` is as often a parameter or
  a flag) unless its line also names the dotted key it became (a note on the old layout);
* a ``key = value`` line of a TOML block (inside ``[tool.flwr.app.config.<section>]`` a
  bare key is the section's, so ``clip-norm = 1.0`` under ``dp`` is ``dp.clip-norm``);
* in Python code (benchmarks, notebook code cells, ``python`` blocks), a string literal
  that is exactly a flat key no section has a field of that name (``"local-dp"``), or
  that starts with ``flat-key=``.

Every ``python -m benchmarks.<name> --flag …`` command names a benchmark module that has
those flags (its own ``"--flag"``, or a shared one of ``benchmarks.harness`` it turns on).

``data-source`` is also the SuperNode's node-config key (``--node-config "data-source=…"``,
read by ``fl_app/client_app.py``): it is a flat run-config key only inside ``--run-config``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from benchmarks import harness
from fl_app.config import RunConfig
from fl_app.legacy import LEGACY_KEYS
from strategies.registry import MEAN_COMPATIBLE

ROOT = Path(__file__).resolve().parents[2]

#: Every key the app takes, dotted (what ``flwr run --run-config`` accepts).
KEYS = frozenset(RunConfig().to_flower())
SECTIONS = frozenset(k.split(".", 1)[0] for k in KEYS if "." in k)
#: Flat keys that are also a section's field name (``clip-norm`` in ``dp={...}``) or a
#: section's name (``attack``): in Python code a string literal of that name is no proof.
_FIELDS = frozenset(k.split(".", 1)[1] for k in KEYS if "." in k)
_AMBIGUOUS = frozenset(k for k in LEGACY_KEYS if k in SECTIONS or k in _FIELDS)

#: Names that are not run-config keys but share a flat key's name: the SuperNode's node-config
#: key ``data-source`` (``context.node_config``) and the features a strategy declares itself
#: compatible with (``describe(compatible={"central-dp": ...})``).
NODE_CONFIG_KEYS = frozenset({"data-source"})
OTHER_NAMES = NODE_CONFIG_KEYS | frozenset(MEAN_COMPATIBLE)
#: String literals of the benchmarks that name a result, not a config key: robustness.json's
#: ``attack-fraction`` field and privacy_attacks' ``local-dp`` view (what the attacker sees).
RESULT_NAMES = {"robust.py": {"attack-fraction"}, "privacy_attacks.py": {"local-dp"}}

_KEY = r"[a-z][a-z0-9_.\-]*"
_RUN_CONFIG = re.compile(r"""--run-config\s+(?:\\\s*)?(["'])(.*?)\1""", re.S)
_RUN_CONFIG_PY = re.compile(r"""["']--run-config["']\s*,\s*f?(["'])(.*?)\1""", re.S)
_FENCE = re.compile(r"^([ \t]*)```([\w+-]*)[^\n]*\n(.*?)^\1```", re.S | re.M)
_SPAN = re.compile(r"(`+)(?!`)(.+?)(?<!`)\1(?!`)")
_ASSIGN = re.compile(rf"^\s*({_KEY})\s*=")
_TOML_TABLE = re.compile(r"^\s*\[([^\]]+)\]\s*$")
_STRING = re.compile(r"""(?<![\w])[rbfu]*(["'])((?:(?!\1)[^\\\n]|\\.)*)\1""")


def _legacy(key: str) -> str:
    return f"flat key {key!r}: write {' or '.join(LEGACY_KEYS[key])}"


def _check_run_config(text: str, pattern: re.Pattern) -> list[str]:
    problems = []
    for match in pattern.finditer(text):
        body = match.group(2)
        tokens = re.findall(rf"(?:^|\s)({_KEY})=", body)
        unknown = [t for t in tokens if t not in KEYS]
        wrong = [_legacy(t) if t in LEGACY_KEYS else f"unknown {t!r}" for t in unknown]
        if wrong:
            problems.append(f"--run-config {body!r}: " + "; ".join(wrong))
    return problems


def _check_span(span: str, line: str) -> list[str]:
    span = span.strip()
    assign = _ASSIGN.match(span)
    key = assign.group(1) if assign else span
    if key not in LEGACY_KEYS or key in NODE_CONFIG_KEYS:
        return []
    if not assign and ("-" not in key or any(new in line for new in LEGACY_KEYS[key])):
        return []
    return [f"`{span}`: {_legacy(key)}"]


def _check_spans(text: str) -> list[str]:
    problems = []
    for line in text.splitlines():
        for match in _SPAN.finditer(line):
            problems += _check_span(match.group(2), line)
    return problems


def _check_toml(block: str) -> list[str]:
    problems, section = [], None
    for line in block.splitlines():
        table = _TOML_TABLE.match(line)
        if table:
            name = table.group(1).strip()
            prefix = "tool.flwr.app.config"
            section = name[len(prefix) + 1 :] if name.startswith(prefix + ".") else None
            continue
        assign = _ASSIGN.match(line)
        if assign and section is None and assign.group(1) in LEGACY_KEYS:
            problems.append(f"{line.strip()!r}: {_legacy(assign.group(1))}")
    return problems


def _check_python(code: str, allowed: frozenset[str] = OTHER_NAMES) -> list[str]:
    problems = _check_run_config(code, _RUN_CONFIG_PY)
    for match in _STRING.finditer(code):
        value = match.group(2)
        assign = re.match(rf"({_KEY})=", value)
        if value in LEGACY_KEYS and value not in _AMBIGUOUS and value not in allowed:
            problems.append(f"{match.group(0)}: {_legacy(value)}")
        elif assign and assign.group(1) in LEGACY_KEYS:
            problems.append(f"{match.group(0)}: {_legacy(assign.group(1))}")
    return problems


def _check_markdown(text: str) -> list[str]:
    problems = _check_run_config(text, _RUN_CONFIG)
    for match in _FENCE.finditer(text):
        lang, block = match.group(2).lower(), match.group(3)
        if lang in ("toml", "ini"):
            problems += _check_toml(block)
        elif lang in ("python", "py"):
            problems += _check_python(block)
    return problems + _check_spans(_FENCE.sub("", text))


def _check_python_file(path: Path) -> list[str]:
    # Docstrings and doc templates are text too: their code spans (``key`` / `key`).
    text = path.read_text(encoding="utf-8")
    allowed = OTHER_NAMES | RESULT_NAMES.get(path.name, set())
    return _check_python(text, allowed) + _check_run_config(text, _RUN_CONFIG) + _check_spans(text)


def _check_notebook(path: Path) -> list[str]:
    problems = []
    for i, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"]):
        source = "".join(cell["source"])
        found = _check_python(source) if cell["cell_type"] == "code" else _check_markdown(source)
        problems += [f"cell {i}: {p}" for p in found]
    return problems


_BENCH_COMMAND = re.compile(r"python -m benchmarks\.(\w+)([^`\n#\"]*)")
#: The shared options of ``harness.common_parser``: flag → its keyword (``render_only=``).
_SHARED_FLAGS = {flags[0]: name for name, (flags, _) in harness._OPTIONS.items()} | {
    flag: name for name, flag in harness._FLAGS.items()
}


#: A benchmark flag that hands the whole command to another module (``benchmarks.robust
#: --sweep`` runs ``benchmarks.robust_sweep.main``): that module's flags apply.
_HANDED_OVER = {("robust", "--sweep"): "robust_sweep"}


def _check_benchmark_commands(text: str) -> list[str]:
    problems = []
    for match in _BENCH_COMMAND.finditer(text):
        module = ROOT / "benchmarks" / f"{match.group(1)}.py"
        if not module.is_file():
            problems.append(f"{match.group(0).strip()!r}: no benchmarks/{module.name}")
            continue
        source = module.read_text(encoding="utf-8")
        for (name, flag), target in _HANDED_OVER.items():
            if name == match.group(1) and flag in match.group(2).split():
                source += (ROOT / "benchmarks" / f"{target}.py").read_text(encoding="utf-8")
        for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", match.group(2)):
            shared = _SHARED_FLAGS.get(flag)
            if flag == "--allow-dirty" or f'"{flag}"' in source:
                continue
            if shared is None or not re.search(rf"\b{shared}=", source):
                command = match.group(0).strip()
                problems.append(f"{command!r}: benchmarks.{module.stem} has no {flag}")
    return problems


def _sources() -> list[Path]:
    return [
        ROOT / "README.md",
        *sorted((ROOT / "docs").glob("*.md")),
        *sorted((ROOT / "notebooks").glob("*.ipynb")),
        *sorted((ROOT / "benchmarks").glob("*.py")),
    ]


def _problems(path: Path) -> list[str]:
    if path.suffix == ".ipynb":
        return _check_notebook(path)
    if path.suffix == ".py":
        return _check_python_file(path)
    return _check_markdown(path.read_text(encoding="utf-8"))


def test_docs_notebooks_and_benchmarks_write_dotted_keys_that_exist():
    problems = [f"{p.relative_to(ROOT)}: {msg}" for p in _sources() for msg in _problems(p)]
    assert not problems, "\n".join(problems)


def test_every_benchmark_command_in_the_docs_has_its_flags():
    problems = [
        f"{p.relative_to(ROOT)}: {msg}"
        for p in _sources()
        for msg in _check_benchmark_commands(p.read_text(encoding="utf-8"))
    ]
    assert not problems, "\n".join(problems)


def test_the_checker_finds_flat_keys_and_unknown_keys_in_each_context():
    bad = (
        'Run `flwr run . --run-config "central-dp=true dp.nosie=1"`, set `clip-norm = 2`,\n'
        "or `local-dp`.\n\n```toml\n[tool.flwr.app.config]\ntarget-epsilon = 2.0\n```\n"
        '```python\nRunConfig.from_flower({"secure-aggregation": True})\n```\n'
        "`python -m benchmarks.robust --no-such-flag`\n"
    )
    problems = _check_markdown(bad) + _check_benchmark_commands(bad)
    assert len(problems) == 6, problems
    assert "write dp.central; unknown 'dp.nosie'" in problems[0]
    good = (
        'Run `flwr run . --run-config "dp.central=true"`, set `dp.clip-norm = 2` (`tau` is a\n'
        "parameter; the node config `data-source`).\n\n```toml\n[tool.flwr.app.config.dp]\n"
        "target-epsilon = 2.0\n```\n`python -m benchmarks.robust --render-only --workers 2`\n"
    )
    assert _check_markdown(good) + _check_benchmark_commands(good) == []
