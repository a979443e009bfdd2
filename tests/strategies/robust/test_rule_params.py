"""A rule's own section, filled from ``robust.rule-params``: parsing, the errors (each names
the key, the rule and the fix), the checks of a declared section, and a rule registered
with a section that gets its values through the run config (in a fresh interpreter: the
registries are process-wide)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from pydantic import Field

from fl_app.config import ConfigError, RunConfig
from fl_core.config import Section
from fl_core.registry import Entry, RegistryError
from strategies.robust.factories import rule_strategy
from strategies.robust.rule_params import KEY, check_rule_section, parse, section_params

ROOT = Path(__file__).resolve().parents[3]


class ShiftSection(Section):
    """The parameters of :func:`shifted_mean`."""

    shift: float = Field(0.0, ge=-10, le=10, description="Added to every coordinate.")
    repeat: int = Field(1, ge=1, description="Times the shift is added.")
    mode: str = Field("add", description="A word.")


def shifted_mean(updates, weights=None, *, shift: float, repeat: int, mode: str):
    """The mean plus ``shift × repeat`` (``mode`` is not used)."""
    return updates.mean(dim=0) + shift * repeat


RULE = Entry(name="shifted-mean", obj=shifted_mean, family="robust", section=ShiftSection)
FIELDS = "shift (float, default 0.0): Added to every coordinate."


def test_parse_reads_toml_values_bare_words_and_commas_in_quotes() -> None:
    assert parse("") == {}
    assert parse(" a = 1, b-c=0.5 ,d=true,e=word, f='x,y', g=[1, 2],") == {
        "a": 1, "b-c": 0.5, "d": True, "e": "word", "f": "x,y", "g": [1, 2]
    }  # fmt: skip
    with pytest.raises(ValueError, match="'b' is not name=value"):
        parse("a=1,b")
    with pytest.raises(ValueError, match="'a' is given twice"):
        parse("a=1,a=2")


def test_the_section_gives_defaults_and_the_key_overrides_them() -> None:
    assert section_params(RULE, "") == {"shift": 0.0, "repeat": 1, "mode": "add"}
    # kebab or snake names; an int where a float is declared is a float
    assert section_params(RULE, "shift=2, repeat=3, mode=scale") == {
        "shift": 2.0, "repeat": 3, "mode": "scale"
    }  # fmt: skip


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("shift", "'shift' is not name=value; write 'robust.rule-params' as 'name=value,"),
        ("shfit=1", "rule 'shifted-mean' has no parameter 'shfit'. Did you mean 'shift'? Its"),
        ("shift=11", "invalid for aggregation rule 'shifted-mean': shift = 11: Input should be"),
        ("repeat=0.5", "repeat = 0.5: Input should be a valid integer"),
        ("shift=true", "shift = True: Input should be a valid number"),
    ],
)
def test_errors_name_the_key_the_rule_the_field_and_the_accepted_fields(text, says) -> None:
    with pytest.raises(ConfigError) as err:
        section_params(RULE, text)
    message = str(err.value)
    assert message.startswith(f"run-config '{KEY}' = {text!r}")
    assert says in message
    assert FIELDS in message  # the accepted fields, with types, defaults and docs


def test_rule_params_for_a_rule_or_strategy_without_a_section_is_refused() -> None:
    plain = Entry(name="plain", obj=shifted_mean, family="robust")
    assert section_params(plain, "  ") == {}
    with pytest.raises(ConfigError, match=r"rule 'plain', which declares none .* drop"):
        section_params(plain, "shift=1")
    # at config time, before round 1: the built-in strategies declare no section
    assert RunConfig(strategy="robust-median").robust.rule_params == ""
    with pytest.raises(ConfigError, match=f"'{KEY}' = 'shift=1' .*strategy 'robust-median'"):
        RunConfig(strategy="robust-median", robust={"rule-params": "shift=1"})
    with pytest.raises(ConfigError, match="strategy 'fedavg' has none; drop"):
        RunConfig().replace({KEY: "x=1"})


def test_a_declared_section_must_be_a_model_of_the_rules_keyword_parameters() -> None:
    check_rule_section(RULE, ())
    with pytest.raises(RegistryError, match="not a pydantic model"):
        check_rule_section(Entry(name="r", obj=shifted_mean, section=dict), ())
    with pytest.raises(RegistryError, match=r"\['shift'\] both in params="):
        check_rule_section(RULE, ("shift",))
    with pytest.raises(RegistryError, match=r"\['shift', 'repeat', 'mode'\] of its section"):
        check_rule_section(
            Entry(name="r", obj=lambda updates, weights=None: 0, section=ShiftSection), ()
        )
    # a rule taking **params accepts any section
    check_rule_section(Entry(name="r", obj=lambda u, w=None, **p: 0, section=ShiftSection), ())
    with pytest.raises(RegistryError, match=r"declares params \['shift'\] .*section="):
        rule_strategy(Entry(name="r", obj=shifted_mean, extra={"params": ("shift",)}))


def test_the_strategy_of_a_rule_with_a_section_passes_its_values_to_the_rule() -> None:
    factory = rule_strategy(RULE)
    cfg = RunConfig(strategy="robust-median").model_copy(
        update={"robust": RunConfig().robust.model_copy(update={"rule_params": "shift=0.5"})}
    )  # the config check of robust-median would refuse the key; the factory reads it
    strategy = factory(cfg)
    assert strategy.rule_params == {"shift": 0.5, "repeat": 1, "mode": "add"}
    updates = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    out = strategy.aggregate(updates, None, **strategy.rule_params)
    assert out.tolist() == [2.5, 3.5]


def test_a_registered_rule_with_a_section_gets_its_values_from_the_run_config(
    tmp_path: Path,
) -> None:
    """``RULES.register(..., section=…)`` in a module of its own: the generated strategy
    lists ``robust.rule-params`` as a key it reads, a config with valid values builds a
    strategy whose rule gets them, and a bad value fails when the config is made."""
    (tmp_path / "my_rule.py").write_text(
        textwrap.dedent(
            """
            from pydantic import Field
            from fl_core.config import Section
            from strategies.robust.registry import RULES

            class ScaledMeanSection(Section):
                factor: float = Field(1.0, gt=0, description="Multiplies the mean.")

            @RULES.register("scaled-mean", family="robust", section=ScaledMeanSection)
            def scaled_mean(updates, weights=None, *, factor):
                return updates.mean(dim=0) * factor
            """
        )
    )
    code = """
        import json, torch
        import my_rule
        from fl_app.config import ConfigError, RunConfig
        from strategies.registry import STRATEGIES
        cfg = RunConfig(strategy="scaled-mean", robust={"rule-params": "factor=3"})
        strategy = STRATEGIES["scaled-mean"](cfg)
        out = strategy.aggregate(torch.ones(2, 2), None, **strategy.rule_params)
        try:
            RunConfig(strategy="scaled-mean", robust={"rule-params": "factor=-1"})
        except ConfigError as exc:
            error = str(exc)
        print(json.dumps({
            "keys": list(STRATEGIES.get("scaled-mean").extra["config_keys"]),
            "params": strategy.rule_params, "out": out.tolist(), "error": error,
            "default": STRATEGIES["scaled-mean"](RunConfig(strategy="scaled-mean")).rule_params,
        }))
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["keys"] == [KEY]
    assert out["params"] == {"factor": 3.0}
    assert out["out"] == [3.0, 3.0]
    assert out["default"] == {"factor": 1.0}
    assert out["error"] == (
        f"run-config '{KEY}' = 'factor=-1' is invalid for aggregation rule 'scaled-mean': "
        "factor = -1: Input should be greater than 0. Its parameters: factor (float, default "
        "1.0): Multiplies the mean."
    )
