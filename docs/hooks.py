"""MkDocs hooks: the reference pages are generated from the code at build time.

``mkdocs build`` (and ``mkdocs serve``) call these hooks (``hooks:`` in ``mkdocs.yml``):

* ``reference/run-config.md`` from :func:`fl_app.config.reference_table` (the typed
  :class:`~fl_app.config.RunConfig`, the same table as the README's),
* ``reference/federation-spec.md`` from the JSON schema of
  :class:`adapters.azureml.spec.FederationSpec` (pydantic),
* ``strategies.md`` from the strategy registry (``strategies/registry.py``): every
  registered name with its factory's docstring, the run-config keys it reads and the full
  references of the papers it cites,
* ``tasks.md`` from the task registry (``tasks/__init__.py``): every task's module docstring.

Two more things keep ``mkdocs build --strict`` honest while the tree grows:

* optional pages are added to the navigation only when they exist (``security.md``, any
  benchmark page written by ``python -m benchmarks.<name>``, any other top-level page), so a
  page that is not written yet never breaks the build and a new one is never orphaned;
* a relative link from a page to a file of the repository outside ``docs/`` (e.g.
  ``../examples/federation.yaml``) is served from ``repo/<path>`` inside the site, so it
  resolves; a link to a file that does not exist still fails the strict build.

The page generators are plain functions (tested in ``tests/docs``).
"""

from __future__ import annotations

import copy
import inspect
import json
import posixpath
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

DOCS_DIR = Path(__file__).resolve().parent
REPO_ROOT = DOCS_DIR.parent
if str(REPO_ROOT) not in sys.path:  # `mkdocs build` from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

#: Site path of the copies of repository files linked from the docs.
REPO_PREFIX = "repo"

GENERATED_NOTE = (
    "<!-- Generated at build time by docs/hooks.py from {source}; edit the source, not this "
    "page. -->"
)

# --------------------------------------------------------------------------- bibliography
#: Full references of the papers the strategies, pre-aggregators, attacks and DP mechanisms
#: cite, keyed by (first author's surname, year) as the docstrings cite them, e.g.
#: "(Blanchard et al., 2017)" or "(Cao et al., NDSS 2021)"; a letter after the year tells
#: apart two papers of one first author and year ("(Li et al., ICLR 2020b)").
REFERENCES: dict[tuple[str, str], str] = {
    ("McMahan", "2017"): "H. B. McMahan, E. Moore, D. Ramage, S. Hampson, B. Agüera y Arcas. "
    "*Communication-Efficient Learning of Deep Networks from Decentralized Data.* AISTATS 2017. "
    "[arXiv:1602.05629](https://arxiv.org/abs/1602.05629)",
    ("Li", "2020"): "T. Li, A. K. Sahu, M. Zaheer, M. Sanjabi, A. Talwalkar, V. Smith. "
    "*Federated Optimization in Heterogeneous Networks.* MLSys 2020. "
    "[arXiv:1812.06127](https://arxiv.org/abs/1812.06127)",
    ("Li", "2020b"): "T. Li, M. Sanjabi, A. Beirami, V. Smith. *Fair Resource Allocation in "
    "Federated Learning.* ICLR 2020. [arXiv:1905.10497](https://arxiv.org/abs/1905.10497)",
    ("Reddi", "2021"): "S. J. Reddi, Z. Charles, M. Zaheer, Z. Garrett, K. Rush, J. Konečný, "
    "S. Kumar, H. B. McMahan. *Adaptive Federated Optimization.* ICLR 2021. "
    "[arXiv:2003.00295](https://arxiv.org/abs/2003.00295)",
    ("Hsu", "2019"): "T.-M. H. Hsu, H. Qi, M. Brown. *Measuring the Effects of Non-Identical "
    "Data Distribution for Federated Visual Classification.* 2019. "
    "[arXiv:1909.06335](https://arxiv.org/abs/1909.06335)",
    ("Yin", "2018"): "D. Yin, Y. Chen, K. Ramchandran, P. Bartlett. *Byzantine-Robust "
    "Distributed Learning: Towards Optimal Statistical Rates.* ICML 2018. "
    "[arXiv:1803.01498](https://arxiv.org/abs/1803.01498)",
    ("Blanchard", "2017"): "P. Blanchard, E. M. El Mhamdi, R. Guerraoui, J. Stainer. "
    "*Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent.* NeurIPS 2017.",
    ("El Mhamdi", "2018"): "E. M. El Mhamdi, R. Guerraoui, S. Rouault. *The Hidden "
    "Vulnerability of Distributed Learning in Byzantium.* ICML 2018. "
    "[arXiv:1802.07927](https://arxiv.org/abs/1802.07927)",
    ("Pillutla", "2022"): "K. Pillutla, S. M. Kakade, Z. Harchaoui. *Robust Aggregation for "
    "Federated Learning.* IEEE Transactions on Signal Processing, 2022. "
    "[arXiv:1912.13445](https://arxiv.org/abs/1912.13445)",
    ("Karimireddy", "2021"): "S. P. Karimireddy, L. He, M. Jaggi. *Learning from History for "
    "Byzantine Robust Optimization.* ICML 2021. "
    "[arXiv:2012.10333](https://arxiv.org/abs/2012.10333)",
    ("Karimireddy", "2022"): "S. P. Karimireddy, L. He, M. Jaggi. *Byzantine-Robust Learning "
    "on Heterogeneous Datasets via Bucketing.* ICLR 2022. "
    "[arXiv:2006.09365](https://arxiv.org/abs/2006.09365)",
    ("Cao", "2021"): "X. Cao, M. Fang, J. Liu, N. Z. Gong. *FLTrust: Byzantine-robust "
    "Federated Learning via Trust Bootstrapping.* NDSS 2021. "
    "[arXiv:2012.13995](https://arxiv.org/abs/2012.13995)",
    ("Sun", "2019"): "Z. Sun, P. Kairouz, A. T. Suresh, H. B. McMahan. *Can You Really "
    "Backdoor Federated Learning?* 2019. [arXiv:1911.07963](https://arxiv.org/abs/1911.07963)",
    ("Allouah", "2023"): "Y. Allouah, S. Farhadkhani, R. Guerraoui, N. Gupta, R. Pinot, "
    "J. Stephan. *Fixing by Mixing: A Recipe for Optimal Byzantine ML under Heterogeneity.* "
    "AISTATS 2023. [arXiv:2302.01772](https://arxiv.org/abs/2302.01772)",
    ("McMahan", "2018"): "H. B. McMahan, D. Ramage, K. Talwar, L. Zhang. *Learning "
    "Differentially Private Recurrent Language Models.* ICLR 2018. "
    "[arXiv:1710.06963](https://arxiv.org/abs/1710.06963)",
    ("Andrew", "2021"): "G. Andrew, O. Thakkar, H. B. McMahan, S. Ramaswamy. *Differentially "
    "Private Learning with Adaptive Clipping.* NeurIPS 2021. "
    "[arXiv:1905.03871](https://arxiv.org/abs/1905.03871)",
    ("Abadi", "2016"): "M. Abadi, A. Chu, I. Goodfellow, H. B. McMahan, I. Mironov, K. Talwar, "
    "L. Zhang. *Deep Learning with Differential Privacy.* CCS 2016. "
    "[arXiv:1607.00133](https://arxiv.org/abs/1607.00133)",
    ("Baruch", "2019"): "M. Baruch, G. Baruch, Y. Goldberg. *A Little Is Enough: Circumventing "
    "Defenses For Distributed Learning.* NeurIPS 2019. "
    "[arXiv:1902.06156](https://arxiv.org/abs/1902.06156)",
    ("Xie", "2020"): "C. Xie, O. Koyejo, I. Gupta. *Fall of Empires: Breaking "
    "Byzantine-tolerant SGD by Inner Product Manipulation.* UAI 2020. "
    "[arXiv:1903.03936](https://arxiv.org/abs/1903.03936)",
}

#: Papers a strategy rests on that its factory's docstring does not cite by author-year.
EXTRA_CITATIONS: dict[str, list[tuple[str, str]]] = {
    "norm-clip": [("Sun", "2019")],
}

_CITATION_RE = re.compile(
    r"\(((?:El )?[A-Z][A-Za-z'-]+)(?: et al\.| and [A-Z][A-Za-z'-]+)?,?\s+(?:[A-Z][A-Za-z]+\s+)?"
    r"(\d{4}[a-z]?)\)"
)


def citations(text: str) -> list[tuple[str, str]]:
    """``(surname, year)`` of every author-year citation in ``text``, in order, unique."""
    found: list[tuple[str, str]] = []
    for surname, year in _CITATION_RE.findall(text or ""):
        if (surname, year) not in found:
            found.append((surname, year))
    return found


def escape_html(text: str) -> str:
    """``<`` and ``>`` outside code spans as entities, so ``<name>`` placeholders in
    docstrings and descriptions show as text instead of vanishing as HTML tags."""
    parts = re.split(r"(`+[^`]*`+)", text or "")
    return "".join(
        p if p.startswith("`") else p.replace("<", "&lt;").replace(">", "&gt;") for p in parts
    )


def reference_text(key: tuple[str, str]) -> str:
    """The full reference of ``key``, or ``Surname et al., year`` if it is not listed."""
    return REFERENCES.get(key, f"{key[0]} et al., {key[1]}")


# --------------------------------------------------------------------------- run config
def run_config_page() -> str:
    """The run-config reference: every key of :class:`fl_app.config.RunConfig`."""
    from fl_app.config import reference_table

    return "\n".join(
        [
            "# Run-config reference",
            "",
            GENERATED_NOTE.format(source="fl_app.config.reference_table()"),
            "",
            "Every key of `[tool.flwr.app.config]` in `pyproject.toml`, typed and validated by "
            "`fl_app/config.py` before round 1: a few top-level keys, and one section (a "
            "sub-table, e.g. `[tool.flwr.app.config.dp]`) per unit of the code that reads "
            "it. Flower hands the sections to the app as dotted keys; override any key by its "
            "dotted name on the command line:",
            "",
            "```bash",
            "flwr run . --stream --run-config \"task='fraud' num-server-rounds=10 "
            'training.local-epochs=1 dp.noise-multiplier=1.2"',
            "```",
            "",
            "or in a federation spec's `run_config:` (see the "
            "[federation spec reference](federation-spec.md)). An unknown key, a wrong type or "
            "an out-of-range value stops the run with a message naming the key, the value and "
            "what is allowed; a key of the flat layout of earlier versions names its new "
            "dotted key. *Transient* keys may differ when a run is resumed. "
            "`python -m fl_app.config` prints these tables; the README carries the same ones.",
            "",
            escape_html(reference_table()),
            "",
        ]
    )


# --------------------------------------------------------------------------- federation spec
def _schema_type(prop: dict[str, Any]) -> str:
    if "$ref" in prop:
        name = prop["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"])
    if "const" in prop:
        return f"`{prop['const']}`"
    for union in ("anyOf", "oneOf"):
        if union in prop:
            return " or ".join(_schema_type(p) for p in prop[union])
    kind = prop.get("type", "any")
    if kind == "array":
        return f"list of {_schema_type(prop.get('items', {}))}"
    if kind == "object":
        extra = prop.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            return f"map of {_schema_type(extra)}"
        return "map"
    return str(kind)


def _cell(text: Any) -> str:
    return escape_html(" ".join(str(text).split()).replace("|", "\\|"))


def _model_section(name: str, schema: dict[str, Any]) -> list[str]:
    lines = [f"## {name}", ""]
    description = schema.get("description")
    if description:
        lines += [escape_html(rst_to_markdown(textwrap.dedent(description).strip())), ""]
    props = schema.get("properties", {})
    if not props:
        return lines
    required = set(schema.get("required", []))
    lines += ["| field | type | required | default | meaning |", "|---|---|---|---|---|"]
    for field, prop in props.items():
        if field in required:
            default = ""
        elif "default" in prop:
            default = f"`{json.dumps(prop['default'], ensure_ascii=False)}`"
        else:
            default = "(computed)"
        lines.append(
            f"| `{field}` | {_schema_type(prop)} | {'yes' if field in required else ''} "
            f"| {_cell(default)} | {_cell(prop.get('description', ''))} |"
        )
    lines.append("")
    return lines


def federation_spec_page() -> str:
    """The federation spec reference from ``FederationSpec.model_json_schema()``."""
    from adapters.azureml.spec import FederationSpec

    schema = FederationSpec.model_json_schema()
    defs = schema.get("$defs", {})
    lines = [
        "# Federation spec reference",
        "",
        GENERATED_NOTE.format(source="adapters.azureml.spec.FederationSpec.model_json_schema()"),
        "",
        "One YAML file describes a federation: the orchestrator (workspace, compute, "
        "environment), one entry per silo (compute, data, identity, node config), the task, "
        "the strategy, the run config and the network mode. `fedsilo validate <spec>` checks "
        "it (unknown keys are rejected; every error names the field path and the fix); "
        "`fedsilo render`, `fedsilo submit` (AzureML) and `fedsilo submit --backend local` "
        "consume exactly this spec. `run_config` takes the keys of the "
        "[run-config reference](run-config.md). A full example: "
        "[`examples/federation.yaml`](../../examples/federation.yaml); the walk-through is "
        "the [AzureML guide](../azureml.md).",
        "",
        "Models (the top level first, then each nested model in alphabetical order):",
        "",
    ]
    names = ["FederationSpec", *sorted(defs)]
    lines += [f"- [{n}](#{n.lower()})" for n in names]
    lines.append("")
    lines += _model_section("FederationSpec", schema)
    for name in sorted(defs):
        lines += _model_section(name, defs[name])
    lines += [
        "## JSON schema",
        "",
        "The machine-readable schema (for editors and CI checks): "
        "[federation-spec.schema.json](federation-spec.schema.json).",
        "",
    ]
    return "\n".join(lines)


def federation_spec_schema() -> str:
    """``FederationSpec``'s JSON schema, pretty-printed."""
    from adapters.azureml.spec import FederationSpec

    return json.dumps(FederationSpec.model_json_schema(), indent=2, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------- strategies
#: Top-level keys and sections every strategy reads (the sampling section: common_kwargs).
_COMMON_KEYS = {"sampling", "task", "seed", "strategy"}


def _config_keys(factory: Any, _seen: set[str] | None = None) -> list[str]:
    """Run-config keys a factory reads (``cfg.<field>`` or ``cfg.<section>.<field>``, as
    dotted keys), following the helpers of its own module it passes ``cfg`` to (common
    sampling keys left out)."""
    seen = _seen if _seen is not None else set()
    seen.add(getattr(factory, "__qualname__", ""))
    try:
        source = inspect.getsource(factory)
    except (OSError, TypeError):
        return []
    module = sys.modules.get(getattr(factory, "__module__", ""))
    keys: list[str] = []
    for section, name in re.findall(r"\bcfg\.([a-z_0-9]+)(?:\.([a-z_0-9]+))?\b", source):
        key = (f"{section}.{name}" if name else section).replace("_", "-")
        if section not in _COMMON_KEYS and key not in keys:
            keys.append(key)
    for helper_name in re.findall(r"\b([A-Za-z_][A-Za-z_0-9]*)\(cfg\b", source):
        helper = getattr(module, helper_name, None)
        if helper_name in seen or helper_name == "common_kwargs" or not inspect.isfunction(helper):
            continue
        if helper.__module__ != factory.__module__:
            continue
        keys += [k for k in _config_keys(helper, seen) if k not in keys]
    return keys


def _family(factory: Any) -> str:
    module = getattr(factory, "__module__", "") or ""
    if module.endswith("flower_builtin"):
        return "Flower built-in"
    if ".robust." in module or module.endswith(".robust"):
        return "Byzantine-robust (ours)"
    return module or "other"


def strategy_entries() -> list[dict[str, Any]]:
    """One entry per registered strategy: name, family, summary, keys, citations."""
    from strategies.registry import STRATEGIES

    entries = []
    for entry in STRATEGIES.entries():
        name, factory = entry.name, entry.obj
        doc = inspect.getdoc(factory) or ""
        keys = list(entry.extra.get("config_keys", ())) or _config_keys(factory)
        cited = citations(doc)
        cited += [c for c in EXTRA_CITATIONS.get(name, []) if c not in cited]
        entries.append(
            {
                "name": name,
                "family": f"{entry.family}, {_family(factory)}",
                "module": getattr(factory, "__module__", ""),
                "doc": escape_html(rst_to_markdown(doc)),
                "keys": keys,
                "citations": cited,
            }
        )
    return entries


def _sweep_lines(strategy: str) -> list[str]:
    """What the robustness sweep says of ``strategy``: the pre-aggregator ``auto`` gives it
    and where it (behind each pre-aggregator) collapsed to chance."""
    from strategies.robust.collapse import COLLAPSES
    from strategies.robust.defaults import AUTO, describe_means

    lines = []
    if strategy in AUTO:
        e = AUTO[strategy]
        means = describe_means(e)
        lines.append(
            f"- Default pre-aggregator (`auto`, with `robust.num-byzantine` > 0): "
            f"**{e['choice']}** (mean worst-case accuracy over the sweep's {e['settings']} "
            f"settings: {means})"
        )
    found = [c for c in COLLAPSES if c.strategy == strategy]
    if found:
        lines.append("- **Collapsed to chance in the robustness sweep** (a run under such a "
                     "condition logs a warning):")  # fmt: skip
        for c in sorted(found, key=lambda c: (c.pre_aggregator != "none", c.pre_aggregator,
                                               c.min_fraction)):  # fmt: skip
            rule = "plain" if c.pre_aggregator == "none" else f"behind {c.pre_aggregator}"
            lines.append(f"    - {rule}: {c.condition()} ({c.attack})")
    return lines


def strategies_page() -> str:
    """Every registered strategy with its docstring, parameters and paper references."""
    entries = strategy_entries()
    lines = [
        "# Strategies",
        "",
        GENERATED_NOTE.format(source="strategies/registry.py (factory docstrings)"),
        "",
        '`strategy = "<name>"` picks one of these from the registry '
        "(`strategies/registry.py`). Flower's own strategies are configured from the run "
        "config; ours are Byzantine-robust rules on the stacked updates "
        "(`strategies/robust/`, pure torch functions), each of which can run behind a "
        'pre-aggregator (`robust.pre-aggregator = "nnm" | "bucketing" | "nnm+bucketing"`: '
        f"nearest-neighbour mixing, {reference_text(('Allouah', '2023'))}; bucketing, "
        f'{reference_text(("Karimireddy", "2022"))}). The default, `"auto"`, is the one '
        "the robustness sweep measured best for the rule (none while "
        "`robust.num-byzantine = 0`); where the sweep drove a rule to chance accuracy, its "
        "section below lists the conditions, and a run under one of them logs a warning "
        "([Robustness](robustness.md)).",
        "",
        "Every strategy runs inside the same wrappers: update validation (NaN/Inf, shapes, "
        "norm outliers), seeded client sampling, per-round reporting, and optionally central "
        "DP or simulated attacks — see [Concepts](concepts.md). `qfedavg` (family "
        "*fairness*) weighs the silos towards the worse-served ones; every run summarises "
        "how evenly the model serves the silos — see "
        "[Per-silo evaluation and fairness](personalization.md).",
        "",
        "| strategy | family | run-config keys | paper |",
        "|---|---|---|---|",
    ]
    for e in entries:
        keys = ", ".join(f"`{k}`" for k in e["keys"]) or "–"
        papers = "; ".join(f"{s} et al., {y}" for s, y in e["citations"]) or "–"
        anchor = e["name"]
        lines.append(f"| [`{e['name']}`](#{anchor}) | {e['family']} | {keys} | {papers} |")
    lines.append("")
    for e in entries:
        lines += [f"## `{e['name']}` {{#{e['name']}}}", ""]
        lines += [e["doc"] or "(no docstring)", ""]
        lines += [f"- Family: {e['family']} (`{e['module']}`)"]
        if e["keys"]:
            lines.append(
                "- Run-config keys: "
                + ", ".join(f"[`{k}`](reference/run-config.md)" for k in e["keys"])
            )
        if e["citations"]:
            lines.append("- References:")
            lines += [f"    - {reference_text(c)}" for c in e["citations"]]
        lines += _sweep_lines(e["name"])
        lines.append("")
    lines += [
        "## Add a strategy",
        "",
        "A new aggregation rule is one file in `strategies/robust/rules/` (or a function in "
        "your own package, declared under the entry-point group `fedsilo.rules`) registered "
        "with its family and compatibility; it becomes a strategy of the same name. A "
        "strategy with its own Flower logic registers with `@STRATEGIES.register`. See "
        "[Extending](extending.md).",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- tasks
def task_entries() -> list[dict[str, Any]]:
    """One entry per registered task: name, class, module and their docstrings."""
    from tasks import TASKS

    entries = []
    for name, cls in TASKS.items():
        module = sys.modules.get(cls.__module__)
        module_doc = inspect.getdoc(module) if module else ""
        entries.append(
            {
                "name": name,
                "class": cls.__name__,
                "module": cls.__module__,
                "module_doc": escape_html(rst_to_markdown(module_doc)),
                "class_doc": escape_html(rst_to_markdown(inspect.getdoc(cls) or "")),
                "num_classes": getattr(cls, "num_classes", None),
            }
        )
    return entries


def rst_to_markdown(text: str) -> str:
    """Docstring reST → Markdown: roles (:func:`x`, :class:`~a.B`) and ``literals`` become
    code spans."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", text or "")
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def _demote_headings(text: str) -> str:
    return re.sub(r"^(#+) ", r"#\1\1 ", text, flags=re.MULTILINE)


def tasks_page() -> str:
    """Every registered task with its data source, offline default, model and metrics."""
    entries = task_entries()
    lines = [
        "# Tasks",
        "",
        GENERATED_NOTE.format(source="tasks/__init__.py (task module docstrings)"),
        "",
        '`task = "<name>"` picks the use case: where the data comes from, the model, the '
        "metrics. Every task ships an **offline default** (bundled or deterministically "
        'generated data, used when `data.source = ""`), so tests, notebooks and a first '
        "`flwr run` need no download; `data.source` names the real data (a Hugging Face id, a "
        "local path or an Azure Blob URL, as each task documents below).",
        "",
        "Splitting is shared by every task: `data.test-fraction` of the pooled data is held out "
        "(stratified, seeded) for the server's evaluation of the global model after every "
        'round; the rest is partitioned across the silos (`data.partitioner = "iid"` or '
        '`"dirichlet"` with label skew `data.dirichlet-alpha`); each silo keeps '
        "`data.val-fraction` of its partition for client-side evaluation. On a real "
        "federation each silo's "
        "SuperNode gets its own `data-source` as node config and trains on its own data only.",
        "",
        "| task | class | classes | summary |",
        "|---|---|---:|---|",
    ]
    for e in entries:
        summary = (e["module_doc"] or e["class_doc"]).split("\n\n", 1)[0]
        lines.append(
            f"| [`{e['name']}`](#{e['name']}) | `{e['module']}.{e['class']}` "
            f"| {e['num_classes'] if e['num_classes'] is not None else '–'} | {_cell(summary)} |"
        )
    lines.append("")
    for e in entries:
        lines += [f"## `{e['name']}` {{#{e['name']}}}", ""]
        if e["class_doc"]:
            lines += [f"*{_cell(e['class_doc'].splitlines()[0])}* (`{e['module']}`)", ""]
        lines += [_demote_headings(e["module_doc"] or "(no module docstring)"), ""]
    lines += [
        "## Add a task",
        "",
        "Write `tasks/<name>.py` with a subclass of `tasks.base.Task` implementing "
        "`load_data(data) -> (pool, test | None)` (`data`: the run config's `data` section, "
        "its `source`) and `build_model()`, decorated with "
        '`@TASKS.register("<name>")`; describe its real source and offline default in the '
        "module docstring. Nothing else to edit: this page picks it up on the next build. "
        "See [Extending](extending.md).",
        "",
    ]
    return "\n".join(lines)


#: Generated pages: site path → generator.
GENERATED_PAGES = {
    "reference/run-config.md": run_config_page,
    "reference/federation-spec.md": federation_spec_page,
    "reference/federation-spec.schema.json": federation_spec_schema,
    "strategies.md": strategies_page,
    "tasks.md": tasks_page,
}

# --------------------------------------------------------------------------- navigation
#: Optional top-level pages added to the navigation when they exist.
OPTIONAL_TOP_LEVEL = {"security.md": "Security", "provisioning.md": "Azure provisioning"}
#: Benchmark pages name the command that writes them (``python -m benchmarks.<name>``).
BENCHMARK_MARKER = re.compile(r"python -m benchmarks\.")
SECTION_BENCHMARKS = "Benchmarks"
SECTION_MORE = "More"


def _nav_files(nav: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(nav, str):
        found.add(nav)
    elif isinstance(nav, list):
        for item in nav:
            found |= _nav_files(item)
    elif isinstance(nav, dict):
        for value in nav.values():
            found |= _nav_files(value)
    return found


def _title(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return path.stem.replace("-", " ").replace("_", " ").capitalize()


def _section(nav: list, title: str) -> list:
    for item in nav:
        if isinstance(item, dict) and title in item and isinstance(item[title], list):
            return item[title]
    section: list = []
    nav.append({title: section})
    return section


def complete_nav(nav: list, docs_dir: Path) -> list:
    """``nav`` plus every page of ``docs_dir`` it does not list yet: optional pages under
    their title, benchmark pages under *Benchmarks*, anything else under *More*."""
    nav = copy.deepcopy(nav)
    listed = _nav_files(nav) | set(GENERATED_PAGES)
    extra = sorted(
        (p.relative_to(docs_dir).as_posix(), p)
        for p in docs_dir.rglob("*.md")
        if p.relative_to(docs_dir).as_posix() not in listed and p.name != "index.md"
    )
    for name, page in extra:
        if name in OPTIONAL_TOP_LEVEL:
            nav.append({OPTIONAL_TOP_LEVEL[name]: name})
        elif BENCHMARK_MARKER.search(page.read_text(encoding="utf-8")):
            _section(nav, SECTION_BENCHMARKS).append({_title(page): name})
        else:
            _section(nav, SECTION_MORE).append({_title(page): name})
    return nav


# --------------------------------------------------------------------------- repo links
_LINK_RE = re.compile(r"(\]\()(\.\./[^)\s#]+)([^)]*\))")


def outside_links(src_uri: str, markdown: str) -> dict[str, str]:
    """Relative links of page ``src_uri`` that leave ``docs/`` for another file of the
    repository: link → path relative to the repository root."""
    found = {}
    page_dir = posixpath.dirname(src_uri)
    for _, link, _ in _LINK_RE.findall(markdown):
        target = posixpath.normpath(posixpath.join(page_dir, link))
        if target.startswith("../") and not target.startswith("../../"):
            found[link] = target[3:]
    return found


def rewrite_outside_links(src_uri: str, markdown: str) -> str:
    """Point links that leave ``docs/`` at the copies under ``repo/`` (existing files only)."""
    links = outside_links(src_uri, markdown)
    depth = src_uri.count("/")

    def replace(match: re.Match) -> str:
        link = match.group(2)
        repo_path = links.get(link)
        if repo_path is None or not (REPO_ROOT / repo_path).is_file():
            return match.group(0)  # left as is: a missing target fails --strict
        new = "../" * depth + f"{REPO_PREFIX}/{repo_path}"
        return f"{match.group(1)}{new}{match.group(3)}"

    return _LINK_RE.sub(replace, markdown)


# --------------------------------------------------------------------------- hooks
def on_config(config, **kwargs):
    """Complete the navigation with the optional pages that exist."""
    if config.nav is not None:
        config.nav = complete_nav(config.nav, Path(config.docs_dir))
    return config


def on_files(files, config, **kwargs):
    """Add the generated pages and the repository files the pages link to."""
    from mkdocs.structure.files import File

    for src_uri, generate in GENERATED_PAGES.items():
        if files.get_file_from_path(src_uri) is not None:
            raise RuntimeError(f"docs/{src_uri} is generated by docs/hooks.py; delete the file")
        files.append(File.generated(config, src_uri, content=generate()))
    added: set[str] = set()
    for page in list(files.documentation_pages()):
        markdown = page.content_string
        for repo_path in outside_links(page.src_uri, markdown).values():
            source = REPO_ROOT / repo_path
            if source.is_file() and repo_path not in added:
                added.add(repo_path)
                files.append(
                    File.generated(config, f"{REPO_PREFIX}/{repo_path}", abs_src_path=str(source))
                )
    return files


def on_page_markdown(markdown, page, config, files, **kwargs):
    """Point links that leave ``docs/`` at their copies in the site."""
    return rewrite_outside_links(page.file.src_uri, markdown)
