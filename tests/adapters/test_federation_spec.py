"""The backend-neutral federation spec (adapters/federation/spec.py): a local-only spec
validates without any Azure section; errors name the field and the fix; backends pick the
spec model a document needs (adapters.backends.spec_model_for)."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.azureml.spec import FederationSpec as AzureFederationSpec
from adapters.backends import get_backend, spec_model_for
from adapters.federation.spec import FederationSpec, SpecError, load_spec, parse_spec

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "federation-local.yaml"

LOCAL_SPEC = """
name: fed-local
silos:
  - {name: silo-a}
  - {name: silo-b, node_config: {data-dir: /data/b}}
task: breast-cancer
strategy: fedavg
run_config: {num-server-rounds: 3, training.learning-rate: 1}
supernode: {executor: subprocess}
"""

AZURE_SECTIONS = """
orchestrator: {subscription_id: s, resource_group: r, workspace: w, compute: c}
"""


def _error(text: str, model=FederationSpec) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(text, model=model)
    return str(info.value)


def test_a_local_only_spec_validates_without_azure_fields():
    spec = parse_spec(LOCAL_SPEC)
    assert type(spec) is FederationSpec
    assert [s.name for s in spec.silos] == ["silo-a", "silo-b"]
    assert spec.silos[1].node_config == {
        "partition-id": 1, "num-partitions": 2, "data-dir": "/data/b",
    }  # fmt: skip
    assert spec.run_config["training.learning-rate"] == 1.0 and isinstance(
        spec.run_config["training.learning-rate"], float
    )
    assert spec.resolved_run_config().num_server_rounds == 3
    assert spec.project_dir() is None  # the installed project
    assert not any(s.external for s in spec.silos)
    facts, silos = spec.describe()
    assert facts == {"task": "breast-cancer", "strategy": "fedavg", "rounds": "3"}
    assert "partition-id=1" in silos["silo-b"]["node config"]
    assert parse_spec(spec.to_yaml()).model_dump() == spec.model_dump()


def test_azure_keys_in_a_local_spec_are_unknown_keys_naming_the_allowed_ones():
    message = _error(LOCAL_SPEC.replace("{name: silo-a}", "{name: silo-a, compute: c}"))
    assert "silos[0].compute: unknown key." in message
    assert "Allowed keys here: name, node_config." in message
    typo = _error(LOCAL_SPEC + "supernodes: {restart: false}\n")
    assert "supernodes: unknown key. Did you mean 'supernode'?" in typo


def test_neutral_checks_name_the_field_and_the_fix():
    quorum = _error(LOCAL_SPEC.replace("num-server-rounds: 3", "sampling.min-available-nodes: 3"))
    assert "run_config.sampling.min-available-nodes = 3 exceeds the 2 silos" in quorum
    nested = _error(
        LOCAL_SPEC.replace("num-server-rounds: 3", "sampling: {min-available-nodes: 3}")
    )
    assert "run_config.sampling.min-available-nodes = 3 exceeds the 2 silos" in nested
    old = _error(LOCAL_SPEC.replace("num-server-rounds: 3", "min-available-nodes: 3"))
    assert "run-config key 'min-available-nodes' is now 'sampling.min-available-nodes'" in old
    one = _error(LOCAL_SPEC.replace("  - {name: silo-a}\n", ""))
    assert "silos: a federation needs at least 2 silos, got 1" in one
    name = _error(LOCAL_SPEC.replace("name: fed-local", "name: Fed_Local"))
    assert "name: 'Fed_Local' is not a valid federation name" in name
    executor = _error(LOCAL_SPEC.replace("executor: subprocess", "executor: hot"))
    assert "supernode.executor: Input should be 'warm' or 'subprocess'" in executor


def test_each_backend_validates_with_the_model_it_needs():
    local = spec_model_for(get_backend("local").spec_model)
    azure = spec_model_for(get_backend("azureml").spec_model)
    document = {"name": "x", "silos": []}
    assert local(document) is FederationSpec
    assert azure(document) is AzureFederationSpec
    # An AzureML spec given to the local backend is validated as one (sections included) ...
    with_azure = {**document, "orchestrator": {}, "network": {}, "silo": []}
    assert local(with_azure) is AzureFederationSpec
    # ... and the azureml backend needs its sections: the error names the missing one.
    message = _error(LOCAL_SPEC, model=azure)
    assert "orchestrator: required key is missing; add it" in message
    full = parse_spec(
        LOCAL_SPEC.replace("{name: silo-a}", "{name: silo-a, compute: c}").replace(
            "{name: silo-b,", "{name: silo-b, compute: c,"
        )
        + AZURE_SECTIONS,
        model=local,
    )
    assert isinstance(full, AzureFederationSpec) and full.orchestrator.workspace == "w"


def test_the_local_example_is_a_neutral_spec():
    spec = load_spec(EXAMPLE, spec_model_for(get_backend("local").spec_model))
    assert type(spec) is FederationSpec
    assert [s.node_config["partition-id"] for s in spec.silos] == [0, 1, 2]
