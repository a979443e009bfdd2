"""The typed run config: defaults, pyproject agreement, and errors that name the fix."""

import tomllib
from pathlib import Path

import pytest

from fl_app.config import ConfigError, RunConfig, reference_table
from strategies import available_strategies

ROOT = Path(__file__).resolve().parents[2]


def pyproject_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def test_pyproject_defaults_are_exactly_the_typed_defaults():
    toml = pyproject_config()
    typed = RunConfig().to_flower()
    assert set(toml) == set(typed), set(toml) ^ set(typed)
    for key, value in toml.items():
        assert typed[key] == value, key
    assert RunConfig.from_flower(toml) == RunConfig()


def test_every_key_has_a_doc_and_appears_in_the_reference_table():
    table = reference_table()
    for name, field in RunConfig.model_fields.items():
        assert field.description, name
        assert f"`{name.replace('_', '-')}`" in table


def test_readme_config_table_is_the_generated_one():
    assert reference_table() in (ROOT / "README.md").read_text()


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(ConfigError) as exc:
        RunConfig.from_flower({"lerning-rate": 0.1})
    msg = str(exc.value)
    assert "unknown run-config key 'lerning-rate'" in msg
    assert "Did you mean 'learning-rate'?" in msg


def test_bad_strategy_lists_every_valid_strategy():
    with pytest.raises(ConfigError) as exc:
        RunConfig.from_flower({"strategy": "nope"})
    msg = str(exc.value)
    assert "'strategy'" in msg and "'nope'" in msg
    for name in available_strategies():
        assert name in msg


def test_close_strategy_name_gets_a_suggestion():
    with pytest.raises(ConfigError, match="Did you mean 'fedprox'"):
        RunConfig.from_flower({"strategy": "fedprx"})


def test_bad_task_lists_tasks():
    with pytest.raises(ConfigError, match="bank-marketing, breast-cancer, digits, fraud"):
        RunConfig.from_flower({"task": "mnist"})


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("learning-rate", "0.1", "valid number"),  # a string is not silently coerced
        ("learning-rate", -1.0, "greater than 0"),
        ("num-server-rounds", 0, "greater than or equal to 1"),
        ("num-server-rounds", 2.5, "valid integer"),
        ("partitioner", "shards", "'iid' or 'dirichlet'"),
        ("fraction-train", 1.5, "less than or equal to 1"),
        ("trim-beta", 0.5, "less than 0.5"),
    ],
)
def test_wrong_type_or_range_names_key_value_and_expectation(key, value, fragment):
    with pytest.raises(ConfigError) as exc:
        RunConfig.from_flower({key: value})
    msg = str(exc.value)
    assert f"'{key}'" in msg and repr(value) in msg and fragment in msg
    assert "default" in msg


def test_several_errors_are_reported_together():
    with pytest.raises(ConfigError) as exc:
        RunConfig.from_flower({"seed": -1, "batch-size": 0})
    assert "'seed'" in str(exc.value) and "'batch-size'" in str(exc.value)


def test_cross_field_check():
    with pytest.raises(ConfigError, match="min-available-nodes"):
        RunConfig.from_flower({"min-train-nodes": 5, "min-available-nodes": 2})


def test_int_is_accepted_for_float_and_fingerprint_is_stable():
    a = RunConfig.from_flower({"learning-rate": 1, "strategy": "fedprox"})
    b = RunConfig.from_flower({"strategy": "fedprox", "learning-rate": 1.0})
    assert a.learning_rate == 1.0
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != RunConfig().fingerprint()
