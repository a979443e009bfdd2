"""The base of every run-config section, and dotted-key helpers.

Flower hands an app its ``[tool.flwr.app.config]`` as one flat dict; a nested TOML table
(``[tool.flwr.app.config.dp]``) and ``--run-config "dp.noise-multiplier=1.2"`` both arrive
as dotted keys (``flwr.common.config.flatten_dict``). Each unit of the code base (a task,
a strategy family, the app's checkpointing, …) declares the keys it reads as a
:class:`Section` in its own file; ``fl_app.config.RunConfig`` composes them.

A key that does not change what a run computes (where it writes, how long it waits, how
it is tracked) is declared with :func:`transient`: a run may be resumed with a different
value of it (:func:`transient_keys`).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.fields import FieldInfo

from fl_core.errors import ConfigError

#: Separator of a section and its key in a dotted run-config key (``dp.noise-multiplier``).
SEP = "."
#: ``json_schema_extra`` flag of a transient field.
TRANSIENT = "transient"


def kebab(name: str) -> str:
    """A Python field name as its run-config key (``noise_multiplier`` → ``noise-multiplier``)."""
    return name.replace("_", "-")


class Section(BaseModel):
    """A group of run-config keys (kebab-case in TOML), typed, bounded and documented.

    Unknown keys, wrong types (no silent coercion: ``"0.1"`` is not a float) and
    non-finite floats are refused; instances are immutable.
    """

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=True,
        allow_inf_nan=False,
        alias_generator=kebab,
        populate_by_name=True,
    )


def transient(default: Any, *, description: str, **constraints: Any) -> Any:
    """A ``Field`` for a key that does not change what a run computes (output location,
    timeouts, tracking): a run may be resumed with a different value of it."""
    return Field(
        default, description=description, json_schema_extra={TRANSIENT: True}, **constraints
    )


def is_transient(field: FieldInfo) -> bool:
    """Whether ``field`` was declared with :func:`transient`."""
    extra = field.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get(TRANSIENT))


def is_section(annotation: Any) -> bool:
    """Whether a field's annotation is a :class:`Section` (a sub-table of keys)."""
    return isinstance(annotation, type) and issubclass(annotation, Section)


def iter_fields(model: type[Section], prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    """``(dotted key, field)`` of every leaf key of ``model``, sections expanded, in
    declaration order."""
    for name, field in model.model_fields.items():
        key = f"{prefix}{kebab(name)}"
        if is_section(field.annotation):
            yield from iter_fields(field.annotation, f"{key}{SEP}")
        else:
            yield key, field


def transient_keys(model: type[Section]) -> frozenset[str]:
    """The dotted keys of ``model`` declared with :func:`transient`."""
    return frozenset(key for key, field in iter_fields(model) if is_transient(field))


def flatten(nested: Mapping[str, Any] | BaseModel, prefix: str = "") -> dict[str, Any]:
    """``{"dp": {"central": True}}`` → ``{"dp.central": True}`` (sections and mappings
    expanded; a section instance contributes all its keys by alias)."""
    if isinstance(nested, BaseModel):
        nested = nested.model_dump(by_alias=True)
    out: dict[str, Any] = {}
    for key, value in nested.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping | BaseModel):
            out.update(flatten(value, f"{dotted}{SEP}"))
        else:
            out[dotted] = value
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"dp.central": True}`` → ``{"dp": {"central": True}}``; raises
    :class:`ConfigError` when a key is given both a value and sub-keys."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(SEP)
        node = out
        for i, part in enumerate(parents):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(
                    f"run-config key '{SEP.join(parents[: i + 1])}' has a value and also "
                    f"sub-keys ('{key}'); give only the sub-keys"
                )
            node = child
        if isinstance(node.get(leaf), dict):
            raise ConfigError(
                f"run-config key '{key}' has a value and also sub-keys; give only the sub-keys"
            )
        node[leaf] = value
    return out


def one_of(key: str, value: str, allowed: list[str]) -> str:
    """``value`` if it is one of ``allowed``; else a ``ValueError`` naming ``key``, the
    closest match and an example (a field validator's message, explained per key)."""
    if value in allowed:
        return value
    close = difflib.get_close_matches(value, allowed, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ValueError(
        f"'{value}' is not a valid {key}.{hint} Choose one of: {', '.join(allowed)}. "
        f"Example: flwr run . --run-config \"{key}='{allowed[0]}'\""
    )
