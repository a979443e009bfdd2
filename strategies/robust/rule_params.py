"""A rule's own parameters: the section it declares, filled from ``robust.rule-params``.

A rule may declare ``section=`` (a :class:`fl_core.config.Section`, defined in the rule's
own file) when it registers (``RULES.register(..., section=MySection)`` or, for an entry
point, :func:`fl_core.registry.describe`); the fields of that section are the rule's
keyword parameters. Flower's SuperLink only accepts run-config keys the app's
``pyproject.toml`` declares, which a rule from another package cannot add to, so the values
travel in one generic key of the robust section, ``robust.rule-params``, written
``"name=value,name=value"`` (names in kebab or snake case, values as in TOML: ``0.5``,
``3``, ``true``, ``"text"``; a bare word is a string). The section validates them (types,
bounds) and gives the defaults of the parameters not written; the run config checks them
before round 1 (:func:`check_rule_params`), naming the key, the rule, the field and the
accepted fields.
"""

from __future__ import annotations

import difflib
import inspect
import tomllib
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from fl_core.config import kebab
from fl_core.errors import ConfigError
from fl_core.registry import Entry, RegistryError
from strategies.registry import STRATEGIES
from strategies.robust.registry import RULES

if TYPE_CHECKING:
    from strategies.config import StrategyConfig

__all__ = ["KEY", "check_rule_params", "check_rule_section", "parse", "section_params"]

#: The run-config key that carries the values of a rule's own section.
KEY = "robust.rule-params"


def parse(text: str) -> dict[str, Any]:
    """``"a=1, b-c=0.5, d=true, e=word"`` → ``{"a": 1, "b-c": 0.5, "d": True, "e": "word"}``
    (commas inside quotes or brackets do not split); raises ``ValueError`` naming the bad
    item."""
    out: dict[str, Any] = {}
    for item in _split(text):
        name, eq, raw = item.partition("=")
        name, raw = name.strip(), raw.strip()
        if not eq or not name or not raw:
            raise ValueError(f"'{item.strip()}' is not name=value")
        if name in out:
            raise ValueError(f"'{name}' is given twice")
        out[name] = _value(raw)
    return out


def _split(text: str) -> list[str]:
    items, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item for item in items if item.strip()]


def _value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw  # a bare word is a string


def _fields(section: type[BaseModel]) -> str:
    """``keep-fraction (float, default 0.5): what it is; …`` for an error message."""
    parts = []
    for name, field in section.model_fields.items():
        kind = getattr(field.annotation, "__name__", None) or str(field.annotation)
        doc = f": {field.description}" if field.description else ""
        parts.append(f"{kebab(name)} ({kind}, default {field.default!r}){doc}")
    return "; ".join(parts)


def section_params(rule: Entry, text: str) -> dict[str, Any]:
    """The keyword parameters of ``rule`` from its section and ``text`` (the value of
    ``robust.rule-params``): the section's defaults, overridden by ``text``. Raises
    :class:`ConfigError` naming the key, the rule, the bad field or value and the accepted
    fields; ``text`` for a rule without a section is an error too."""
    section = rule.section
    if section is None:
        if text.strip():
            raise ConfigError(
                f"run-config '{KEY}' = {text!r} sets parameters of aggregation rule "
                f"'{rule.name}', which declares none (no section=); drop '{KEY}'" + _with_sections()
            )
        return {}
    fix = f"write '{KEY}' as 'name=value,name=value' with the fields of rule '{rule.name}': "
    try:
        given = parse(text)
    except ValueError as exc:
        raise ConfigError(
            f"run-config '{KEY}' = {text!r}: {exc}; {fix}{_fields(section)}"
        ) from None
    accepted = {kebab(name): field.alias or name for name, field in section.model_fields.items()}
    values = {}
    for name, value in given.items():
        if kebab(name) not in accepted:
            close = difflib.get_close_matches(kebab(name), list(accepted), n=1) or [
                field for field in accepted if field.startswith(kebab(name))
            ]
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"run-config '{KEY}' = {text!r}: aggregation rule '{rule.name}' has no "
                f"parameter '{name}'.{hint} Its parameters: {_fields(section)}"
            )
        values[accepted[kebab(name)]] = value
    try:
        return section.model_validate(values).model_dump()
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(kebab(str(part)) for part in err["loc"]) or "?"
            lines.append(f"{field} = {err['input']!r}: {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError(
            f"run-config '{KEY}' = {text!r} is invalid for aggregation rule '{rule.name}': "
            + "; ".join(lines)
            + f". Its parameters: {_fields(section)}"
        ) from None


def _with_sections() -> str:
    named = [entry.name for entry in RULES.entries() if entry.section is not None]
    if not named:
        return " (no registered rule declares parameters of its own)."
    return f", or choose a strategy whose rule declares them: {', '.join(named)}."


def check_rule_params(cfg: StrategyConfig) -> None:
    """Refuse a ``robust.rule-params`` the strategy's rule does not accept (before round 1)."""
    rule = STRATEGIES.get(cfg.strategy).extra.get("rule")
    if rule is not None:
        section_params(RULES.get(rule), cfg.robust.rule_params)
    elif cfg.robust.rule_params.strip():
        raise ConfigError(
            f"run-config '{KEY}' = {cfg.robust.rule_params!r} sets parameters of an "
            f"aggregation rule's own section, but strategy '{cfg.strategy}' has none; drop "
            f"'{KEY}'" + _with_sections()
        )


def check_rule_section(rule: Entry, params: tuple[str, ...]) -> None:
    """Refuse a ``section=`` that is not a pydantic model, or whose fields are not keyword
    parameters of the rule or are also read from the robust section (``params``)."""
    section = rule.section
    if section is None:
        return
    if not (isinstance(section, type) and issubclass(section, BaseModel)):
        raise RegistryError(
            f"aggregation rule '{rule.name}' declares section={section!r}, which is not a "
            "pydantic model; declare a fl_core.config.Section subclass next to the rule"
        )
    fields = list(section.model_fields)
    both = [name for name in fields if name in params]
    if both:
        raise RegistryError(
            f"aggregation rule '{rule.name}' declares {both} both in params= (robust section "
            "keys) and in its section; keep each in one place"
        )
    signature = inspect.signature(rule.obj).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.values()):
        return
    missing = [name for name in fields if name not in signature]
    if missing:
        raise RegistryError(
            f"aggregation rule '{rule.name}': the fields {missing} of its section "
            f"{section.__name__} are not keyword parameters of {rule.obj.__name__}; name "
            "the section's fields as the rule's parameters"
        )
