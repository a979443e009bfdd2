"""The backend-neutral federation spec: silos and their node configs, the task, the strategy,
the run config and how SuperNodes run. Every launch backend consumes it; a backend that needs
more (the AzureML workspace, computes, identities, network) extends it with its own sections
(:mod:`adapters.azureml.spec`).

A spec the local backend runs needs nothing else::

    name: digits-on-my-laptop
    silos:
      - {name: hospital-a}
      - {name: hospital-b, node_config: {partition-id: 1}}
    task: digits
    strategy: fedavg
    run_config: {num-server-rounds: 5, training.local-epochs: 1}

``run_config`` takes the dotted keys of ``[tool.flwr.app.config]``
(``dp.noise-multiplier: 1.2``) or their sections as nested mappings
(``dp: {noise-multiplier: 1.2}``); it is kept flat (dotted).

:func:`load_spec` validates it (pydantic, unknown keys rejected) and raises
:class:`SpecError` whose message has one line per problem, naming the field path (e.g.
``silos[1].node_config``) and the fix. ``run_config`` is checked with the app's own
:class:`fl_app.config.RunConfig`, so a bad key fails at spec load with the same message a
``flwr run`` would print.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from fl_app.config import FIELDS, ConfigError, RunConfig
from fl_core.config import flatten

__all__ = [
    "FederationSpec",
    "NodeValue",
    "SiloSpec",
    "SpecError",
    "StrictModel",
    "SuperNodeSpec",
    "explain",
    "load_spec",
    "parse_spec",
]

_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
_SILO_RE = re.compile(r"^[a-z][a-z0-9-]{0,29}$")
_NODE_CONFIG_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")

NodeValue = bool | int | float | str


class SpecError(ValueError):
    """The federation spec is missing, unreadable or invalid (message names field and fix)."""


class StrictModel(BaseModel):
    """Base of every spec section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- silos


class SiloSpec(StrictModel):
    """One data silo: a SuperNode with the silo's node config."""

    name: str = Field(description="Silo name: lowercase letters, digits and '-'.")
    node_config: dict[str, NodeValue] = Field(
        default_factory=dict,
        description="SuperNode node config; partition-id defaults to the silo's index and "
        "num-partitions to the number of silos.",
    )

    @field_validator("name")
    @classmethod
    def _silo_name(cls, value: str) -> str:
        if not _SILO_RE.match(value):
            raise ValueError(
                f"'{value}' is not a valid silo name; use 1-30 lowercase letters, digits and "
                "'-', starting with a letter (it becomes part of process and job names)"
            )
        return value

    @field_validator("node_config")
    @classmethod
    def _node_config_keys(cls, value: dict[str, NodeValue]) -> dict[str, NodeValue]:
        for key, item in value.items():
            if not _NODE_CONFIG_KEY_RE.match(key):
                raise ValueError(
                    f"node_config key '{key}' is not a bare TOML key; use letters, digits, "
                    "'-' and '_'"
                )
            if key in ("partition-id", "num-partitions") and (
                isinstance(item, bool) or not isinstance(item, int)
            ):
                raise ValueError(f"node_config '{key}' = {item!r} must be an integer")
        return value

    @property
    def external(self) -> bool:
        """True when the silo's owner runs its SuperNode (a backend does not start it)."""
        return False


class SuperNodeSpec(StrictModel):
    """How each silo's SuperNode runs, in the local backend, the silo kit's ``start.sh`` and
    the AzureML SuperNode job (see adapters/supernode and docs/efficiency.md)."""

    executor: Literal["warm", "subprocess"] = Field(
        "warm",
        description="warm: ClientApps fork from a pre-imported process and the SuperNode, "
        "its SuperExec and the ServerApp (sampling.reply-poll-interval) poll promptly; subprocess: "
        "Flower's default (one cold flwr-clientapp process per message, 3 s polling).",
    )
    restart: bool = Field(
        True, description="Restart a SuperNode that exits during the run, with back-off."
    )
    restart_max_delay: float = Field(
        60.0, gt=0, le=3600, description="Longest wait (s) between restarts (1 s, doubling)."
    )


# --------------------------------------------------------------------------- federation


class FederationSpec(StrictModel):
    """A whole federation: silos, task, strategy, run config, SuperNode settings."""

    name: str = Field(description="Federation name: lowercase letters, digits and '-'.")
    silos: list[SiloSpec] = Field(description="At least two silos, uniquely named.")
    task: str = Field("digits", description="Task to run (see the README's Tasks).")
    strategy: str = Field("fedavg", description="Aggregation strategy.")
    run_config: dict[str, bool | int | float | str] = Field(
        default_factory=dict,
        description="Run-config overrides: dotted keys of [tool.flwr.app.config] "
        "(`dp.noise-multiplier: 1.2`), or a section as a nested mapping "
        "(`dp: {noise-multiplier: 1.2}`).",
    )
    mlflow_tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI of the orchestrator workspace; needed when silos "
        "run in other workspaces (they look the SuperLink's address up there).",
    )
    supernode: SuperNodeSpec = Field(default_factory=SuperNodeSpec)

    #: Directory the spec was loaded from (relative paths in the spec are resolved there).
    base_dir: Path = Field(default_factory=Path.cwd, exclude=True, repr=False)

    @field_validator("name")
    @classmethod
    def _federation_name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(
                f"'{value}' is not a valid federation name; use 1-40 lowercase letters, "
                "digits and '-', starting with a letter (it prefixes job and run names)"
            )
        return value

    @field_validator("task")
    @classmethod
    def _task(cls, value: str) -> str:
        _run_config({"task": value})
        return value

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, value: str) -> str:
        _run_config({"strategy": value})
        return value

    @field_validator("silos")
    @classmethod
    def _silos(cls, silos: list[SiloSpec]) -> list[SiloSpec]:
        if len(silos) < 2:
            raise ValueError(
                f"a federation needs at least 2 silos, got {len(silos)}; add silos (or use "
                "flwr run's simulation for a single machine)"
            )
        seen: set[str] = set()
        for silo in silos:
            if silo.name in seen:
                raise ValueError(f"silo name '{silo.name}' is used twice; names must be unique")
            seen.add(silo.name)
        # Fill node-config defaults, then check the partitions are consistent.
        filled = [
            silo.model_copy(
                update={
                    "node_config": {
                        "partition-id": index,
                        "num-partitions": len(silos),
                        **silo.node_config,
                    }
                }
            )
            for index, silo in enumerate(silos)
        ]
        counts = {s.node_config["num-partitions"] for s in filled}
        if len(counts) > 1:
            raise ValueError(
                f"silos disagree on node_config num-partitions ({sorted(counts)}); every "
                "silo must split the same data the same way: set one value (or none)"
            )
        (num,) = counts
        owners: dict[int, str] = {}
        for silo in filled:
            pid = silo.node_config["partition-id"]
            if not 0 <= pid < num:
                raise ValueError(
                    f"silo '{silo.name}': node_config partition-id = {pid} is outside "
                    f"0..{num - 1} (num-partitions = {num})"
                )
            if pid in owners:
                raise ValueError(
                    f"silos '{owners[pid]}' and '{silo.name}' both have partition-id = {pid}; "
                    "each silo needs its own partition"
                )
            owners[pid] = silo.name
        return filled

    @field_validator("run_config", mode="before")
    @classmethod
    def _flat_run_config(cls, value: Any) -> Any:
        return flatten(value) if isinstance(value, Mapping) else value

    @field_validator("run_config")
    @classmethod
    def _run_config_keys(
        cls, value: dict[str, Any], info: ValidationInfo
    ) -> dict[str, bool | int | float | str]:
        for key in ("task", "strategy"):
            if key in value:
                raise ValueError(
                    f"'{key}' is a top-level key of the spec; move '{key}: {value[key]}' out of "
                    "run_config"
                )
        typed: dict[str, Any] = {}
        for key, item in value.items():
            field = FIELDS.get(key)
            # YAML writes 1 for 1.0; the app's float keys must reach Flower as floats.
            if (
                field is not None
                and field.annotation is float
                and isinstance(item, int)
                and not isinstance(item, bool)
            ):
                item = float(item)
            typed[key] = item
        context = {k: info.data[k] for k in ("task", "strategy") if k in info.data}
        _run_config({**context, **typed})
        return typed

    @model_validator(mode="after")
    def _quorum(self) -> FederationSpec:
        cfg = self.resolved_run_config()
        n = len(self.silos)
        for key in (
            "sampling.min-available-nodes",
            "sampling.min-train-nodes",
            "sampling.min-evaluate-nodes",
        ):
            wanted = cfg.to_flower()[key]
            if wanted > n:
                raise ValueError(
                    f"run_config.{key} = {wanted} exceeds the {n} silos of the federation, "
                    f"which would wait forever; set run_config.{key} to at most {n}"
                )
        return self

    # ------------------------------------------------------------------ helpers
    def resolved_run_config(self) -> RunConfig:
        """The app's :class:`RunConfig` for this spec (defaults + task, strategy, overrides)."""
        return RunConfig.from_flower(self.flower_overrides())

    def flower_overrides(self) -> dict[str, bool | int | float | str]:
        """The ``--run-config`` overrides: task, strategy and ``run_config``."""
        return {"task": self.task, "strategy": self.strategy, **self.run_config}

    def silo(self, name: str) -> SiloSpec:
        """The silo called ``name``."""
        for silo in self.silos:
            if silo.name == name:
                return silo
        raise KeyError(f"no silo '{name}'; silos: {', '.join(s.name for s in self.silos)}")

    def resolve_path(self, path: str) -> Path:
        """``path`` relative to the spec's directory (absolute paths are kept)."""
        candidate = Path(path).expanduser()
        return candidate if candidate.is_absolute() else (self.base_dir / candidate).resolve()

    def project_dir(self) -> Path | None:
        """The Flower project the federation runs; None: the installed one."""
        return None

    def describe(self) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
        """For ``fedsilo validate``: ``(federation facts, {silo: silo facts})``."""
        cfg = self.resolved_run_config()
        facts = {"task": self.task, "strategy": self.strategy, "rounds": str(cfg.num_server_rounds)}
        silos = {
            s.name: {"node config": " ".join(f"{k}={v}" for k, v in s.node_config.items())}
            for s in self.silos
        }
        return facts, silos

    def to_yaml(self) -> str:
        """The spec as YAML (defaults filled in); :func:`load_spec` reads it back unchanged."""
        data = self.model_dump(mode="json", exclude={"base_dir"})
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _run_config(raw: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig.from_flower(raw)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


# --------------------------------------------------------------------------- loading

#: Which spec model validates a document: a model, or a function of the parsed YAML mapping
#: that picks one (e.g. the model of the backend whose sections the document has).
SpecModel = type[FederationSpec] | Callable[[Mapping[str, Any]], type[FederationSpec]]


def load_spec(path: str | Path, model: SpecModel = FederationSpec) -> FederationSpec:
    """Read and validate a federation spec YAML; raise :class:`SpecError` naming each problem."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(
            f"federation spec {source} does not exist; start from examples/federation.yaml"
        ) from None
    except OSError as exc:
        raise SpecError(f"cannot read federation spec {source}: {exc}") from None
    return parse_spec(text, base_dir=source.resolve().parent, source=str(source), model=model)


def parse_spec(
    text: str,
    *,
    base_dir: Path | None = None,
    source: str = "<spec>",
    model: SpecModel = FederationSpec,
) -> FederationSpec:
    """Validate a federation spec given as YAML text (see :func:`load_spec`)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{source}: not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise SpecError(
            f"{source}: a federation spec is a YAML mapping with name, silos, task, ...; "
            f"got {type(data).__name__}"
        )
    if "base_dir" in data:
        raise SpecError(f"{source}: base_dir: unknown key (paths are relative to the spec file).")
    cls = model if isinstance(model, type) else model(data)
    try:
        return cls.model_validate({**data, "base_dir": base_dir or Path.cwd()})
    except ValidationError as exc:
        raise SpecError(explain(exc, source, cls)) from None


# --------------------------------------------------------------------------- error messages


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds (``X``, ``list[X]``, ``X | None``, ``X | Y``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _models_in(arg)]


def _walk(root: type[BaseModel], loc: tuple[Any, ...]) -> tuple[str, list[type[BaseModel]]]:
    """``(field path as people write it, the models that may hold loc's last part)``: list
    indices become ``[i]``, tags of discriminated unions (``network.existing``) are skipped."""
    path = ""
    models: list[type[BaseModel]] = [root]
    discriminator: str | None = None
    for index, part in enumerate(loc):
        if isinstance(part, int):
            path += f"[{part}]"
            continue
        if discriminator is not None:
            tagged = [m for m in models if _tag(m, discriminator) == part]
            discriminator = None
            if tagged:
                models = tagged
                continue
        path += f".{part}" if path else str(part)
        if index == len(loc) - 1:
            break
        field = models[0].model_fields.get(part) if len(models) == 1 else None
        if field is None:
            return path, []
        models = _models_in(field.annotation)
        discriminator = field.discriminator if isinstance(field.discriminator, str) else None
    return path or "(spec)", models


def _tag(model: type[BaseModel], discriminator: str) -> Any:
    field = model.model_fields.get(discriminator)
    return field.default if field is not None else None


def _union_tags(root: type[BaseModel], loc: tuple[Any, ...]) -> str | None:
    """``'a' (what a is) or 'b' (…)`` for the discriminated union at ``loc``."""
    _, holders = _walk(root, loc)
    field = holders[0].model_fields.get(loc[-1]) if len(holders) == 1 and loc else None
    if field is None or not isinstance(field.discriminator, str):
        return None
    options = []
    for member in _models_in(field.annotation):
        tag_field = member.model_fields[field.discriminator]
        about = f" ({tag_field.description})" if tag_field.description else ""
        options.append(f"'{tag_field.default}'{about}")
    return f"{field.discriminator} must be {' or '.join(options)}"


def explain(
    exc: ValidationError, source: str = "<spec>", model: type[BaseModel] = FederationSpec
) -> str:
    """One line per error: ``<field path>: <problem>; <fix>``."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        where, holders = _walk(model, loc)
        holder = holders[0] if len(holders) == 1 else None
        msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        kind = err["type"]
        if kind == "extra_forbidden":
            known = [k for k in holder.model_fields if k != "base_dir"] if holder else []
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            allowed = f" Allowed keys here: {', '.join(known)}." if known else ""
            lines.append(f"{where}: unknown key.{hint}{allowed}")
        elif kind == "missing":
            field = holder.model_fields.get(str(loc[-1])) if holder else None
            about = (
                f" ({field.description.rstrip('.')})"
                if field is not None and field.description
                else ""
            )
            lines.append(f"{where}: required key is missing; add it{about}.")
        elif kind in ("union_tag_invalid", "union_tag_not_found"):
            tags = _union_tags(model, loc)
            lines.append(f"{where}.{tags}." if tags else f"{where}: {msg}")
        elif kind.endswith("_type") or kind.endswith("_parsing"):
            got = err.get("input")
            lines.append(f"{where}: {msg} (got {got!r}).")
        elif not loc:  # a check across fields: the message names its fields
            lines.append(msg)
        else:
            lines.append(f"{where}: {msg}")
    body = "\n  - ".join(line.replace("\n", "\n      ") for line in lines)
    return f"Invalid federation spec {source}:\n  - {body}"
