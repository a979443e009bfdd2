"""The typed run config in sections: defaults, pyproject agreement (nested TOML tables as
Flower flattens them), dotted keys, errors that name the fix, old flat keys, transient
keys, and the same checks for a config built in Python."""

import tomllib
from pathlib import Path

import pytest
from flwr.common.config import flatten_dict, parse_config_args

from fl_app.config import (
    KEYS,
    LEGACY_KEYS,
    TRANSIENT_KEYS,
    ConfigError,
    RunConfig,
    legacy_settings,
    reference_table,
)
from fl_core.config import Section, is_transient, iter_fields
from strategies import available_strategies
from strategies.privacy.config import DPSection

ROOT = Path(__file__).resolve().parents[2]


def pyproject_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def test_pyproject_defaults_are_exactly_the_typed_defaults():
    """Flower's own flattening of the nested ``[tool.flwr.app.config]`` tables is the
    typed defaults, key for key, in the same order."""
    flat = flatten_dict(pyproject_config())
    typed = RunConfig().to_flower()
    assert set(flat) == set(typed), set(flat) ^ set(typed)
    for key, value in flat.items():
        assert typed[key] == value and type(typed[key]) is type(value), key
    assert list(flat) == list(typed)
    assert RunConfig.from_flower(flat) == RunConfig()


def test_every_section_is_a_sub_table_of_the_pyproject_config():
    toml = pyproject_config()
    for name, field in RunConfig.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, Section):
            assert isinstance(toml[name], dict), name
            assert field.annotation.__doc__, name  # the README's sentence about it


def test_dotted_keys_from_flower_reach_their_section():
    cfg = RunConfig.from_flower(
        {"dp.central": True, "dp.noise-multiplier": 1.5, "dp.clip-norm": 0.5,
         "robust.max-update-norm-ratio": 0.0, "training.local-epochs": 1, "seed": 3}
    )  # fmt: skip
    assert cfg.dp.central and cfg.dp.noise_multiplier == 1.5 and cfg.dp.clip_norm == 0.5
    assert cfg.robust.clip_norm == 1.0  # the norm-clip bound is a key of its own
    assert cfg.training.local_epochs == 1 and cfg.seed == 3
    assert cfg.to_flower()["dp.noise-multiplier"] == 1.5
    assert RunConfig.from_flower(cfg.to_flower()) == cfg


def test_flwr_run_config_overrides_parse_to_the_same_dotted_keys():
    """What ``flwr run --run-config "dp.noise-multiplier=1.2 …"`` hands the app."""
    overrides = parse_config_args(["dp.noise-multiplier=1.2 sampling.min-train-nodes=3 seed=7"])
    assert overrides == {"dp.noise-multiplier": 1.2, "sampling.min-train-nodes": 3, "seed": 7}
    cfg = RunConfig.from_flower(
        {**RunConfig().to_flower(), **overrides, "sampling.min-available-nodes": 3}
    )
    assert (cfg.dp.noise_multiplier, cfg.sampling.min_train_nodes, cfg.seed) == (1.2, 3, 7)


def test_nested_mappings_and_python_sections_are_the_same_config():
    flat = RunConfig.from_flower({"dp.noise-multiplier": 2.0, "strategy": "fedprox"})
    nested = RunConfig.from_flower({"dp": {"noise-multiplier": 2.0}, "strategy": "fedprox"})
    python = RunConfig(dp={"noise_multiplier": 2.0}, strategy="fedprox")
    sections = RunConfig(dp=DPSection(noise_multiplier=2.0), strategy="fedprox")
    assert flat == nested == python == sections


def test_replace_derives_a_validated_config_from_dotted_keys():
    cfg = RunConfig().replace({"dp.noise-multiplier": 2.0, "seed": 1})
    assert cfg.dp.noise_multiplier == 2.0 and cfg.seed == 1
    assert cfg.replace({"seed": 42}).fingerprint() != RunConfig().fingerprint()
    with pytest.raises(ConfigError, match=r"'dp.central' = true needs 'robust.max-update-norm"):
        RunConfig().replace({"dp.central": True})
    with pytest.raises(ConfigError, match=r"unknown run-config key 'dp.noise'"):
        RunConfig().replace({"dp.noise": 2.0})


def test_every_key_has_a_doc_and_appears_in_the_reference_table():
    table = reference_table()
    # 101 + contribution (8), selection.quality-aware, robust.norm-outliers, export (3),
    # personalization (6), monitoring (3)
    assert len(KEYS) == 126
    for key, field in iter_fields(RunConfig):
        assert field.description, key
        assert f"| `{key}` |" in table
    for name, field in RunConfig.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, Section):
            assert f"### `{name}`" in table


def test_readme_config_table_is_the_generated_one():
    assert reference_table() in (ROOT / "README.md").read_text()


def test_transient_keys_come_from_the_fields_marked_transient():
    assert {key for key, field in iter_fields(RunConfig) if is_transient(field)} == TRANSIENT_KEYS
    assert {
        "output.resume", "output.resume-from", "output.checkpoint-uri", "output.run-dir",
        "sampling.round-timeout", "sampling.round-retries", "sampling.straggler-timeout",
        "sampling.min-available-nodes", "sampling.reply-poll-interval",
        "tracking.mlflow-uri", "tracking.experiment", "tracking.register-model",
        "tracking.sinks", "export.onnx", "export.quantize", "export.calibration-rows",
        "monitoring.prometheus-port", "monitoring.prometheus-host", "monitoring.final-scrape-wait",
    } == TRANSIENT_KEYS  # fmt: skip
    table = reference_table()
    for key in TRANSIENT_KEYS:
        assert next(row for row in table.splitlines() if f"| `{key}` |" in row).endswith("| yes |")


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(ConfigError) as exc:
        RunConfig.from_flower({"training.lerning-rate": 0.1})
    msg = str(exc.value)
    assert "unknown run-config key 'training.lerning-rate'" in msg
    assert "Did you mean 'training.learning-rate'?" in msg


def test_a_key_without_its_section_gets_every_section_that_has_it():
    with pytest.raises(
        ConfigError, match=r"Did you mean 'training.batch-size' or 'vertical.batch-size'"
    ):
        RunConfig.from_flower({"batch-sise": 8})


@pytest.mark.parametrize("build", ["flower", "python"])
def test_an_old_flat_key_names_its_new_dotted_key(build):
    with pytest.raises(ConfigError) as exc:
        if build == "flower":
            RunConfig.from_flower({"noise-multiplier": 2.0, "attack": "sign-flip"})
        else:
            RunConfig(noise_multiplier=2.0, attack="sign-flip")
    msg = str(exc.value)
    name = "noise-multiplier" if build == "flower" else "noise_multiplier"
    assert f"run-config key '{name}' is now 'dp.noise-multiplier'" in msg
    assert "run-config key 'attack' is now 'attack.kind'" in msg


@pytest.mark.parametrize("build", ["flower", "python"])
def test_old_clip_norm_names_both_of_its_new_keys(build):
    with pytest.raises(ConfigError) as exc:
        if build == "flower":
            RunConfig.from_flower({"clip-norm": 2.0})
        else:
            RunConfig(clip_norm=2.0)
    msg = str(exc.value)
    assert "'dp.clip-norm' (DP clipping)" in msg and "'robust.clip-norm'" in msg


def test_every_old_key_is_refused_and_maps_to_existing_keys():
    assert len(LEGACY_KEYS) == 78
    for old, new in LEGACY_KEYS.items():
        assert all(key in KEYS for key in new), old
        with pytest.raises(ConfigError, match=f"'{old}' is now '{new[0]}'"):
            RunConfig.from_flower({old: RunConfig().to_flower()[new[0]]})


def test_legacy_settings_translate_old_checkpoint_settings():
    old = {"central-dp": True, "clip-norm": 2.0, "seed": 1, "data.source": ""}
    assert legacy_settings(old) == {
        "dp.central": True, "dp.clip-norm": 2.0, "robust.clip-norm": 2.0, "seed": 1,
        "data.source": "",
    }  # fmt: skip


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
    with pytest.raises(
        ConfigError, match="bank-marketing, breast-cancer, digits, digits-bn, fraud"
    ):
        RunConfig.from_flower({"task": "mnist"})


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("training.learning-rate", "0.1", "valid number"),  # a string is not silently coerced
        ("training.learning-rate", -1.0, "greater than 0"),
        ("num-server-rounds", 0, "greater than or equal to 1"),
        ("num-server-rounds", 2.5, "valid integer"),
        ("data.partitioner", "shards", "'iid' or 'dirichlet'"),
        ("sampling.fraction-train", 1.5, "less than or equal to 1"),
        ("robust.trim-beta", 0.5, "less than 0.5"),
    ],
)
def test_wrong_type_or_range_names_key_value_and_expectation(key, value, fragment):
    with pytest.raises(ConfigError) as exc:
        RunConfig.from_flower({key: value})
    msg = str(exc.value)
    assert f"'{key}'" in msg and repr(value) in msg and fragment in msg
    assert "default" in msg


def test_a_section_given_a_value_is_explained():
    with pytest.raises(ConfigError, match=r"'dp' is a section; give its keys as 'dp.<key>'"):
        RunConfig(dp=1.0)
    with pytest.raises(ConfigError, match="'dp' has a value and also sub-keys"):
        RunConfig.from_flower({"dp": 1.0, "dp.central": True})


def test_several_errors_are_reported_together():
    with pytest.raises(ConfigError) as exc:
        RunConfig.from_flower({"seed": -1, "training.batch-size": 0})
    assert "'seed'" in str(exc.value) and "'training.batch-size'" in str(exc.value)


def test_cross_field_check():
    with pytest.raises(ConfigError, match=r"sampling.min-available-nodes"):
        RunConfig.from_flower({"sampling.min-train-nodes": 5, "sampling.min-available-nodes": 2})


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"dp": {"central": True}, "strategy": "fedavg"}, "needs 'robust.max-update-norm-ratio'"),
        ({"sampling": {"min-train-nodes": 5}}, "exceeds 'sampling.min-available-nodes'"),
        ({"output": {"resume-from": "x"}}, "needs 'output.resume' = true"),
        ({"training": {"batch-size": 0}}, "'training.batch-size' = 0"),
        ({"dp": {"bogus": 1}}, "unknown run-config key 'dp.bogus'"),
    ],
)
def test_a_config_built_in_python_gets_the_same_checks_and_a_config_error(kwargs, fragment):
    """Before sections, ``RunConfig(central_dp=True)`` was accepted in Python and refused
    by every silo later; now Python-built configs raise ConfigError like Flower's."""
    with pytest.raises(ConfigError, match=fragment):
        RunConfig(**kwargs)
    with pytest.raises(ConfigError, match=fragment):
        RunConfig.model_validate(kwargs)


def test_int_is_accepted_for_float_and_fingerprint_is_stable():
    a = RunConfig.from_flower({"training.learning-rate": 1, "strategy": "fedprox"})
    b = RunConfig.from_flower({"strategy": "fedprox", "training.learning-rate": 1.0})
    assert a.training.learning_rate == 1.0
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != RunConfig().fingerprint()


def test_task_defaults_fill_keys_left_at_the_app_default_and_lose_to_a_users_value():
    # NER recommends learning rate 0.2 (tasks/ner.py); the app default is 0.05
    assert RunConfig(task="ner").training.learning_rate == 0.2
    assert RunConfig.from_flower({"task": "ner"}).training.learning_rate == 0.2
    # a ClientApp sees Flower's fused dict (every key, defaults included): same resolution
    fused = {**RunConfig().to_flower(), "task": "ner"}
    assert RunConfig.from_flower(fused).fingerprint() == RunConfig(task="ner").fingerprint()
    assert (
        RunConfig.from_flower({**fused, "training.learning-rate": 0.1}).training.learning_rate
        == 0.1
    )
    off = RunConfig.from_flower({**fused, "task-defaults": False})
    assert off.training.learning_rate == RunConfig().training.learning_rate == 0.05
    assert RunConfig(task="digits").training.learning_rate == 0.05  # no recommendation
    vertical = RunConfig(task="fraud", mode="vertical")  # trains the vertical views instead
    assert vertical.training.learning_rate == 0.05
    # the resolved value is what the run records, so replace() and resume keep it
    assert RunConfig(task="ner").replace({"seed": 7}).training.learning_rate == 0.2
