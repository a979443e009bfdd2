"""Typed, validated run configuration, in sections.

Flower hands the ServerApp and every ClientApp a flat ``run_config`` dict built from
``[tool.flwr.app.config]`` in pyproject.toml plus ``flwr run --run-config`` overrides; the
sub-tables of that table (``[tool.flwr.app.config.dp]``) arrive as dotted keys
(``dp.noise-multiplier``). :class:`RunConfig` is the one typed view of it: a few top-level
keys plus one :class:`~fl_core.config.Section` per unit of the code base, each declared in
the file of the unit that reads it (``DPSection`` in ``strategies/privacy/config.py``, …).
Every key has a type, a default and a doc; an unknown key, a wrong type or an
out-of-range value raises :class:`ConfigError` before round 1, naming the key and what is
allowed; so does a key of the flat layout of earlier versions (:data:`LEGACY_KEYS`),
naming its new dotted key.

``python -m fl_app.config`` prints the reference tables (the README's are this output).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import sys
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo

from fl_app.checkpointing import OutputSection
from fl_app.heterogeneity import SimulationSection
from fl_app.legacy import LEGACY_KEYS, legacy_settings
from fl_app.onnx_export import ExportSection, check_export
from fl_app.sinks import MonitoringSection, TrackingSection
from fl_core.config import (
    Section,
    flatten,
    is_section,
    is_transient,
    iter_fields,
    kebab,
    one_of,
    transient_keys,
    unflatten,
)
from fl_core.errors import ConfigError
from fl_core.markers import replace_between_markers
from strategies.compression.codecs import CompressionSection
from strategies.contribution.config import ContributionSection, check_contribution
from strategies.flower_builtin import ServerSection
from strategies.privacy.config import DPSection
from strategies.registry import STRATEGIES
from strategies.robust.registry import RULES
from strategies.robust.rule_params import check_rule_params
from strategies.robust.section import RobustSection
from strategies.robust.simulation import ATTACKS, AttackSection
from strategies.secagg.checks import SecAggSection, check_secure_aggregation
from strategies.selection import POLICIES, SelectionSection
from strategies.vertical.split import VerticalSection
from strategies.wrappers import SamplingSection
from tasks import TASKS
from tasks.base import DataSection, TrainingSection
from tasks.personalization import PERSONALIZATION, PersonalizationSection, get_method
from tasks.vertical import VERTICAL_SPECS

__all__ = [
    "FIELDS",
    "KEYS",
    "LEGACY_KEYS",
    "TRANSIENT_KEYS",
    "ConfigError",
    "RunConfig",
    "legacy_settings",
    "reference_table",
    "update_readme",
]


#: What each of several new keys of one old key is for (named in the error).
_LEGACY_ROLES = {"dp.clip-norm": "DP clipping", "robust.clip-norm": "the norm-clip strategy"}


class RunConfig(Section):
    """Every run-config key of the app: a few top-level keys and one section per unit.

    Build it from Flower's flat dict (:meth:`from_flower`, dotted keys) or in Python with
    nested dicts or section instances (``RunConfig(dp={"central": True}, ...)``); both
    run the same checks and raise :class:`ConfigError`. Derive a changed config with
    :meth:`replace`.
    """

    task: str = Field("digits", description="Task to run (see Tasks).")
    strategy: str = Field("fedavg", description="Aggregation strategy (see Strategies).")
    mode: Literal["horizontal", "vertical"] = Field(
        "horizontal",
        description="horizontal = silos hold rows (FedAvg & co.); vertical = split learning: "
        "the ServerApp is the label party, each SuperNode a feature party (see Vertical).",
    )
    num_server_rounds: int = Field(5, ge=1, le=10_000, description="Federated rounds.")
    task_defaults: bool = Field(
        True,
        description="Use the task's recommended settings (its `recommended` run config, "
        "e.g. NER's learning rate 0.2) for every key left at the app's default, in "
        "horizontal mode; false = the app's defaults for every task. A key set to the "
        "app's default value cannot be told apart from one left alone (Flower merges "
        "them), so e.g. `strategy='fedavg'` on NER still runs its recommended FedAvgM: "
        "add `task-defaults=false` for that.",
    )
    seed: int = Field(
        42,
        ge=0,
        le=2**31 - 1,
        description="Seeds partitions, client sampling, model init and local training.",
    )
    data: DataSection = DataSection()
    training: TrainingSection = TrainingSection()
    sampling: SamplingSection = SamplingSection()
    selection: SelectionSection = SelectionSection()
    server: ServerSection = ServerSection()
    robust: RobustSection = RobustSection()
    attack: AttackSection = AttackSection()
    simulation: SimulationSection = SimulationSection()
    dp: DPSection = DPSection()
    secagg: SecAggSection = SecAggSection()
    compression: CompressionSection = CompressionSection()
    contribution: ContributionSection = ContributionSection()
    personalization: PersonalizationSection = PersonalizationSection()
    vertical: VerticalSection = VerticalSection()
    tracking: TrackingSection = TrackingSection()
    monitoring: MonitoringSection = MonitoringSection()
    export: ExportSection = ExportSection()
    output: OutputSection = OutputSection()

    def __init__(self, /, **data: Any) -> None:
        _refuse_legacy(data)
        data = _with_task_defaults(data)
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(_explain(exc, _flat_input(data))) from None
        self.check_cross_field()

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        return one_of("task", value, list(TASKS))

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        return one_of("strategy", value, list(STRATEGIES))

    # ------------------------------------------------------------------ building
    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> RunConfig:
        """A mapping (flat dotted keys or nested sections) is validated as by
        :meth:`from_flower`, with the same checks and :class:`ConfigError`."""
        if isinstance(obj, Mapping) and not kwargs:
            return cls.from_flower(obj)
        return super().model_validate(obj, **kwargs)

    @classmethod
    def from_flower(cls, run_config: Mapping[str, Any]) -> RunConfig:
        """Validate Flower's flat ``context.run_config`` (dotted keys; nested mappings are
        flattened first); raise :class:`ConfigError`."""
        return _from_items(tuple(sorted(flatten(run_config).items())))

    def to_flower(self) -> dict[str, Any]:
        """The config as Flower's flat dict (dotted keys, all of them, resolved)."""
        return flatten(self.model_dump(by_alias=True))

    def replace(self, changes: Mapping[str, Any]) -> RunConfig:
        """A copy with ``changes`` (dotted keys, e.g. ``{"dp.noise-multiplier": 2.0}``),
        validated again like any config."""
        return RunConfig.from_flower({**self.to_flower(), **flatten(changes)})

    def fingerprint(self) -> str:
        """Short sha256 of the resolved config (identifies a run's settings)."""
        blob = json.dumps(self.to_flower(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def _check_selection(self) -> None:
        selection = self.selection
        POLICIES.for_config(selection.policy, key="selection.policy", value=selection.policy)
        chosen = selection.policy != "random" or selection.fairness_rounds > 0
        if chosen and self.dp.sampling_amplification:
            raise ConfigError(
                f"run-config 'selection.policy' = '{selection.policy}' (or "
                "'selection.fairness-rounds' > 0) is unsound with 'dp.sampling-amplification' "
                "= true: the privacy amplification rests on secret, uniform Poisson sampling "
                "of the silos, which a selection policy replaces. Set selection.policy = "
                "'random' and selection.fairness-rounds = 0, or drop "
                "dp.sampling-amplification."
            )
        if selection.quality_aware:
            policy = POLICIES[selection.policy]
            if not getattr(policy, "quality_aware", False):
                aware = [n for n in POLICIES if getattr(POLICIES[n], "quality_aware", False)]
                raise ConfigError(
                    f"run-config 'selection.quality-aware' = true scales a loss-based utility, "
                    f"which policy '{selection.policy}' does not rank by. Use selection.policy "
                    f"in {aware}, or set selection.quality-aware = false."
                )
            if self.contribution.method == "none":
                raise ConfigError(
                    "run-config 'selection.quality-aware' = true needs the silos' contribution "
                    "scores, but 'contribution.method' = 'none' computes none; set "
                    "contribution.method = 'loo' (or 'gtg-shapley', 'both')."
                )
        if chosen and self.mode == "vertical":
            raise ConfigError(
                "run-config 'selection.policy' / 'selection.fairness-rounds' choose which "
                "silos train in mode 'horizontal'; in mode 'vertical' every feature party "
                "takes part in every step. Set selection.policy = 'random' and "
                "selection.fairness-rounds = 0."
            )

    def _check_personalization(self) -> None:
        name = self.personalization.method
        method = get_method(name)
        if method is None:
            return
        key = f"run-config 'personalization.method' = '{name}'"
        if self.mode == "vertical":
            raise ConfigError(
                f"{key} personalises a silo's whole model in mode 'horizontal'; in mode "
                "'vertical' a feature party holds only part of one model and no labels. Set "
                "personalization.method = 'none'."
            )
        if self.dp.local and method.local_dp_unsupported:
            raise ConfigError(
                f"{key} is unsound with 'dp.local' = true: {method.local_dp_unsupported}. "
                "Use 'dp.central' = true, another method, or personalization.method = 'none'."
            )
        try:
            method.check(_model_of(self.task), self.personalization)
        except ValueError as exc:
            raise ConfigError(f"{key} with task '{self.task}': {exc}") from None

    def dp_mechanisms(self) -> list[str]:
        """Run-config keys of the differential-privacy noise this run adds (``[]`` = none)."""
        if self.mode == "vertical":
            return ["vertical.noise-multiplier"] if self.vertical.noise_multiplier > 0 else []
        switches = {"dp.central": self.dp.central, "dp.local": self.dp.local}
        return [key for key, on in switches.items() if on]

    def check_cross_field(self) -> RunConfig:
        """Checks that involve several keys; returns self."""
        dp, robust, sampling = self.dp, self.robust, self.sampling
        if dp.central and not STRATEGIES.get(self.strategy).supports("central-dp"):
            raise ConfigError(
                f"run-config 'dp.central' = true is unsound with strategy '{self.strategy}': "
                "robust rules select or order individual updates (q-FedAvg weighs them by their "
                "silo's loss), so one silo can move the result by more than dp.clip-norm / n. "
                "Use one of: " + ", ".join(STRATEGIES.names(compatible="central-dp"))
            )
        if robust.pre_aggregator not in ("auto", "none") and self.strategy not in RULES:
            raise ConfigError(
                f"run-config 'robust.pre-aggregator' = '{robust.pre_aggregator}' does nothing "
                f"with strategy '{self.strategy}': pre-aggregators go in front of our robust "
                f"rules only ({', '.join(sorted(RULES))}). Choose one of them, or set "
                "robust.pre-aggregator = 'auto' (or 'none')."
            )
        if dp.central and robust.max_update_norm_ratio > 0:
            raise ConfigError(
                "run-config 'dp.central' = true needs 'robust.max-update-norm-ratio' = 0.0: the "
                "norm filter compares each update with the others, which breaks the DP "
                "guarantee (clipping already bounds every update)."
            )
        if dp.reproducible_noise and not self.dp_mechanisms():
            raise ConfigError(
                "run-config 'dp.reproducible-noise' = true seeds DP noise from `seed`, but no "
                "DP mechanism is on ('dp.central', 'dp.local', or in mode 'vertical' "
                "'vertical.noise-multiplier' > 0). Drop 'dp.reproducible-noise' (it also "
                "marks the run not private), or turn a DP mechanism on."
            )
        if dp.sampling_amplification and (not dp.central or self.mode == "vertical"):
            raise ConfigError(
                "run-config 'dp.sampling-amplification' = true is secret Poisson sampling of "
                "silos for central DP; it needs 'dp.central' = true (in mode 'horizontal'). "
                "Set dp.central = true or drop dp.sampling-amplification."
            )
        if dp.sampling_amplification and sampling.min_train_nodes != 1:
            raise ConfigError(
                f"run-config 'dp.sampling-amplification' = true needs "
                f"'sampling.min-train-nodes' = 1 (got {sampling.min_train_nodes}): Poisson "
                "sampling takes each silo independently with probability "
                "'sampling.fraction-train', so a round's cohort varies and may be empty; a "
                "larger quorum would abort such rounds or force a fixed cohort size, which "
                "the Poisson accounting does not cover. Set sampling.min-train-nodes = 1."
            )
        if dp.local:
            reason = TASKS[self.task].local_dp_unsupported
            if reason:
                raise ConfigError(
                    f"run-config 'dp.local' = true is not available for task '{self.task}': "
                    f"{reason}. Use 'dp.central' = true (DP-FedAvg: the server clips and "
                    "noises the aggregate) or set 'dp.local' = false."
                )
        if dp.local and STRATEGIES.get(self.strategy).extra.get("needs_loss_before"):
            raise ConfigError(
                f"run-config 'dp.local' = true is not available with strategy "
                f"'{self.strategy}': each silo would report its training loss before "
                "training, outside the local DP guarantee. Use another strategy (e.g. "
                "'fedavg') or set 'dp.local' = false."
            )
        if dp.local and self.strategy == "fedprox" and self.training.proximal_mu > 0:
            raise ConfigError(
                "run-config 'dp.local' = true ignores FedProx's proximal term (Opacus clips "
                "per-example gradients of the loss only); set 'training.proximal-mu' = 0.0 or "
                "use another strategy."
            )
        if self.attack.kind != "none" and self.attack.fraction == 0:
            raise ConfigError(
                f"run-config 'attack.kind' = '{self.attack.kind}' needs 'attack.fraction' > 0 "
                "(e.g. 0.2), or set attack.kind = 'none'."
            )
        if self.output.resume_from and not self.output.resume:
            raise ConfigError(
                f"run-config 'output.resume-from' = {self.output.resume_from!r} needs "
                "'output.resume' = true; set output.resume=true or drop output.resume-from."
            )
        method = self.compression.method
        if method.startswith("topk") and not STRATEGIES.get(self.strategy).supports("topk"):
            raise ConfigError(
                f"run-config 'compression.method' = '{method}' is unsound with strategy "
                f"'{self.strategy}': top-k updates are sparse with different supports, so "
                "coordinate-wise medians/trimming and Krum-style distances judge the "
                "sparsity pattern, not the update. Use 'int8'/'int4' or one of: "
                + ", ".join(STRATEGIES.names(compatible="topk"))
            )
        if self.vertical.noise_multiplier > 0 and self.vertical.embedding_clip == 0:
            raise ConfigError(
                "run-config 'vertical.noise-multiplier' > 0 needs 'vertical.embedding-clip' > 0 "
                "(noise std is σ × clip); set e.g. vertical.embedding-clip = 1.0"
            )
        self._check_selection()
        self._check_personalization()
        if self.mode == "vertical" and self.task not in VERTICAL_SPECS:
            raise ConfigError(
                f"run-config 'mode' = 'vertical' does not support task '{self.task}'; "
                f"use task = one of {', '.join(VERTICAL_SPECS)}"
            )
        if self.mode == "vertical" and self.monitoring.prometheus_port:
            raise ConfigError(
                f"run-config 'monitoring.prometheus-port' = {self.monitoring.prometheus_port} "
                "is for mode 'horizontal': split learning (mode 'vertical') does not serve "
                "Prometheus metrics. Set monitoring.prometheus-port = 0."
            )
        if self.secagg.enabled:
            check_secure_aggregation(self)
        check_rule_params(self)
        check_contribution(self)
        check_export(self)
        if sampling.min_train_nodes > sampling.min_available_nodes:
            raise ConfigError(
                f"run-config 'sampling.min-train-nodes' = {sampling.min_train_nodes} exceeds "
                f"'sampling.min-available-nodes' = {sampling.min_available_nodes}; raise "
                "'sampling.min-available-nodes' or lower 'sampling.min-train-nodes'."
            )
        return self


@lru_cache(maxsize=16)
def _model_of(task: str):
    """A model of ``task`` to check a config against (built without touching the global
    RNG, so validating a config never changes a seeded run)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        return TASKS[task]().build_model()


#: Every dotted key of :class:`RunConfig` and its field, in declaration order.
FIELDS: dict[str, FieldInfo] = dict(iter_fields(RunConfig))
KEYS: tuple[str, ...] = tuple(FIELDS)
#: Keys that may differ between a run and its resumption (declared with
#: :func:`fl_core.config.transient`): where things are written, how long to wait, how to
#: track. Every other key must match.
TRANSIENT_KEYS: frozenset[str] = transient_keys(RunConfig)
_SECTIONS = frozenset(
    kebab(name) for name, field in RunConfig.model_fields.items() if is_section(field.annotation)
)


def _legacy_line(key: str, new: tuple[str, ...]) -> str:
    if len(new) == 1:
        return f"run-config key '{key}' is now '{new[0]}'."
    named = " or ".join(f"'{k}' ({_LEGACY_ROLES.get(k, k)})" for k in new)
    return f"run-config key '{key}' is now {named}."


def _refuse_legacy(data: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` naming the new key of every key of the old flat layout
    (kebab or snake case) in ``data``; ``attack`` and ``compression`` are sections now, so
    they are old keys only with a value that is not a mapping."""
    lines = []
    for key, value in data.items():
        name = kebab(key)
        if name not in LEGACY_KEYS:
            continue
        if name in _SECTIONS and isinstance(value, Mapping | BaseModel):
            continue
        lines.append(_legacy_line(key, LEGACY_KEYS[name]))
    if lines:
        raise ConfigError(
            "Invalid run config (its keys are grouped in sections now):\n  - "
            + "\n  - ".join(lines)
        )


@lru_cache(maxsize=32)
def _from_items(items: tuple[tuple[str, Any], ...]) -> RunConfig:
    flat = dict(items)
    _refuse_legacy({k: v for k, v in flat.items() if "." not in k})
    return RunConfig(**unflatten(flat))


def _with_task_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the task's recommended values (:attr:`tasks.base.Task.recommended`)
    for each of its keys that is absent or at the app's default, in horizontal mode (a
    vertical run trains the task's vertical views, not its model), unless
    ``task-defaults = false``. A value the user sets (other than the default) wins. The
    same rule runs wherever a config is built (ServerApp, every ClientApp, Python), so
    all of them resolve it alike."""
    flat = _flat_input(data)
    task = flat.get("task", RunConfig.model_fields["task"].default)
    horizontal = flat.get("mode", RunConfig.model_fields["mode"].default) == "horizontal"
    on = flat.get("task-defaults", RunConfig.model_fields["task_defaults"].default)
    if on is False or task not in TASKS or not horizontal:  # vertical: its own views
        return data
    recommended = TASKS[task].recommended
    changes = {}
    for key, value in recommended.items():
        field = _field(tuple(key.split(".")))
        if field is None:
            raise ConfigError(
                f"task '{task}' recommends an unknown run-config key '{key}'; fix its "
                "`recommended` (tasks.base.Task)"
            )
        if key not in flat or flat[key] == field.default:
            changes[key] = value
    return unflatten({**flat, **changes}) if changes else data


def _flat_input(data: Mapping[str, Any]) -> dict[str, Any]:
    """The raw input under dotted kebab-case keys (to quote values in errors)."""
    return {".".join(kebab(p) for p in k.split(".")): v for k, v in flatten(data).items()}


def _field(path: tuple[str, ...]):
    """The pydantic field at ``path`` (kebab-case parts), or ``None``."""
    model: Any = RunConfig
    field = None
    for part in path:
        if model is None:
            return None
        field = model.model_fields.get(part.replace("-", "_"))
        if field is None:
            return None
        model = field.annotation if is_section(field.annotation) else None
    return field


def _suggest(key: str) -> str:
    """`` Did you mean …?`` for an unknown key: the keys whose last part is closest to
    its last part (within its section, if that is one), e.g. ``learning-rate`` →
    ``training.learning-rate`` or ``server.learning-rate``."""
    section, _, leaf = key.rpartition(".")
    pool = [k for k in KEYS if k.startswith(f"{section}.")] if section in _SECTIONS else KEYS
    leaves: dict[str, list[str]] = {}
    for known in pool:
        leaves.setdefault(known.rpartition(".")[2], []).append(known)
    match = difflib.get_close_matches(leaf, list(leaves), n=1)
    close = (
        leaves[match[0]] if match else [k for k in pool if k.rpartition(".")[2].startswith(leaf)]
    )
    close = close or difflib.get_close_matches(key, KEYS, n=1)
    return " Did you mean " + " or ".join(f"'{k}'" for k in close[:3]) + "?" if close else ""


def _explain(exc: ValidationError, raw: Mapping[str, Any]) -> str:
    """Turn pydantic's errors into one line per bad key, naming key, value and fix."""
    lines = []
    for err in exc.errors():
        path = tuple(kebab(str(p)) for p in err["loc"])
        key = ".".join(path) or "?"
        value = raw.get(key)
        if err["type"] == "extra_forbidden":
            lines.append(
                f"unknown run-config key '{key}'.{_suggest(key)} Valid keys: {', '.join(KEYS)}."
            )
            continue
        field = _field(path)
        if field is not None and is_section(field.annotation):
            example = kebab(next(iter(field.annotation.model_fields)))
            lines.append(
                f"run-config '{key}' = {value!r}: '{key}' is a section; give its keys as "
                f"'{key}.<key>' (e.g. '{key}.{example}')."
            )
            continue
        expected = _type_name(field.annotation) if field else "?"
        default = f"; default {field.default!r}" if field else ""
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"run-config '{key}' = {value!r}: {msg} (expected {expected}{default}).")
    return "Invalid run config:\n  - " + "\n  - ".join(lines)


def _type_name(annotation: Any) -> str:
    if get_origin(annotation) is Literal:
        return "one of " + " | ".join(repr(a) for a in get_args(annotation))
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


# ------------------------------------------------------------------ reference tables
def _allowed(key: str, field) -> str:
    if key == "task":
        return ", ".join(TASKS)
    if key == "strategy":
        return ", ".join(STRATEGIES)
    if key == "attack.kind":
        return ", ".join(["none", *ATTACKS.names()])
    if key == "personalization.method":
        return ", ".join(["none", *PERSONALIZATION.names()])
    bounds = []
    for meta in field.metadata:
        for attr, sym in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if getattr(meta, attr, None) is not None:
                bounds.append(f"{sym} {getattr(meta, attr)}")
    return ", ".join(bounds)


def _rows(fields: list[tuple[str, Any]]) -> list[str]:
    rows = [
        "| key | type | default | allowed | meaning | transient |",
        "|---|---|---|---|---|---|",
    ]
    for key, field in fields:
        kind = _type_name(field.annotation).replace("|", "\\|")
        rows.append(
            f"| `{key}` | {kind} | `{field.default!r}` | {_allowed(key, field)} "
            f"| {field.description} | {'yes' if is_transient(field) else ''} |"
        )
    return rows


def _doc(model: type[BaseModel]) -> str:
    return " ".join((model.__doc__ or "").split("\n\n")[0].split())


def reference_table() -> str:
    """Markdown: one table per section (top-level keys first), each with a heading and
    the section's doc; every key with its type, default, allowed values, doc, and whether
    it is transient (may differ when a run is resumed)."""
    top = [
        (kebab(name), field)
        for name, field in RunConfig.model_fields.items()
        if not is_section(field.annotation)
    ]
    out = [
        "### Top-level keys",
        "",
        "What to learn, how to aggregate, how long and with which seed. Keys marked "
        "*transient* do not change what a run computes (outputs, waiting, tracking): a run "
        "may be resumed with other values of them.",
        "",
        *_rows(top),
    ]
    for name, field in RunConfig.model_fields.items():
        if not is_section(field.annotation):
            continue
        section = kebab(name)
        out += [
            "",
            f"### `{section}`",
            "",
            _doc(field.annotation),
            "",
            *_rows(list(iter_fields(field.annotation, f"{section}."))),
        ]
    return "\n".join(out)


README_START = "<!-- config-table:start (generated: python -m fl_app.config --update-readme) -->"
README_END = "<!-- config-table:end -->"


def update_readme(path: str = "README.md") -> None:
    """Rewrite the config tables between the README's markers."""
    replace_between_markers(path, README_START, README_END, reference_table())


if __name__ == "__main__":  # pragma: no cover - exercised through the README
    if "--update-readme" in sys.argv:
        update_readme()
    else:
        sys.stdout.write(reference_table() + "\n")
