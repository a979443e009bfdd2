"""The federation spec: the example loads, defaults are filled in, and every kind of mistake
fails at load time with the field path and the fix."""

from __future__ import annotations

import pytest
from azureml_testkit import EXAMPLE, spec_text

from adapters.azureml.spec import (
    ExistingNetwork,
    JobNetwork,
    KeyVaultSecret,
    SpecError,
    load_spec,
    parse_secret_ref,
    parse_spec,
)
from fl_app.config import ConfigError, RunConfig


def _error(write_spec, text: str | None = None, **overrides: str) -> str:
    with pytest.raises(SpecError) as info:
        load_spec(write_spec(text, **overrides))
    return str(info.value)


def test_the_example_spec_loads_with_defaults_filled_in():
    spec = load_spec(EXAMPLE)
    assert spec.name == "fedsilo-digits"
    assert [s.name for s in spec.silos] == ["hospital-a", "hospital-b", "hospital-c"]
    assert [s.node_config for s in spec.silos] == [
        {"partition-id": i, "num-partitions": 3} for i in range(3)
    ]
    assert isinstance(spec.network, JobNetwork) and spec.network.port == 9091
    assert spec.silos[0].data.uri == "azureml://datastores/hospital_a/paths/digits/"
    assert spec.silos[1].data.uri == "https://sthospitalb.blob.core.windows.net/digits/train/"
    assert spec.silos[1].workspace_scope(spec.orchestrator) == (
        spec.orchestrator.subscription_id, "rg-fedsilo", "mlw-fedsilo"
    )  # fmt: skip
    cfg = spec.resolved_run_config()
    assert isinstance(cfg, RunConfig)
    assert (cfg.task, cfg.num_server_rounds, cfg.sampling.min_available_nodes) == ("digits", 5, 3)
    assert (spec.base_dir / spec.orchestrator.code / "pyproject.toml").is_file()


def test_to_yaml_reads_back_to_the_same_spec(write_spec):
    spec = load_spec(EXAMPLE)
    again = load_spec(write_spec(spec.to_yaml()))
    assert again.model_dump(exclude={"base_dir"}) == spec.model_dump(exclude={"base_dir"})
    assert "base_dir" not in spec.to_yaml()


def test_unknown_keys_name_their_path_and_suggest_the_right_key(write_spec):
    text = spec_text().replace("    compute: cpu-silo-b\n", "    comptue: cpu-silo-b\n")
    text = text.replace("  compute: cpu-orchestrator\n", "  compute: cpu-orchestrator\n  gpu: 1\n")
    message = _error(write_spec, text)
    assert "silos[1].comptue: unknown key. Did you mean 'compute'?" in message
    assert "silos[1].compute: required key is missing; add it (AzureML compute cluster" in message
    assert "orchestrator.gpu: unknown key." in message
    assert "Allowed keys here: subscription_id, resource_group, workspace, compute" in message


def test_bad_values_name_the_field_and_the_fix(write_spec):
    message = _error(
        write_spec,
        name="name: Fed_Test",
        silos="silos:\n  - {name: a, compute: c}\n  - {name: a, compute: c}\n",
    )
    assert "name: 'Fed_Test' is not a valid federation name; use 1-40 lowercase" in message
    assert "silos: silo name 'a' is used twice; names must be unique" in message

    one = _error(write_spec, silos="silos:\n  - {name: a, compute: c}\n")
    assert "silos: a federation needs at least 2 silos, got 1" in one

    typed = _error(write_spec, network="network: {mode: azureml-job, port: high}")
    assert "network.port: Input should be a valid integer" in typed and "'high'" in typed

    mode = _error(write_spec, network="network: {mode: vpn}")
    assert "network.mode must be 'azureml-job'" in mode

    existing = _error(write_spec, network="network: {mode: existing}")
    assert "network.address: required key is missing; add it (SuperLink Fleet API" in existing

    address = _error(write_spec, network="network: {mode: existing, address: 'https://x'}")
    assert "network.address: 'https://x' is not host:port" in address


def test_partitions_are_checked_across_silos(write_spec):
    clash = _error(
        write_spec,
        silos="silos:\n  - {name: a, compute: c}\n"
        "  - {name: b, compute: c, node_config: {partition-id: 0}}\n",
    )
    assert "silos 'a' and 'b' both have partition-id = 0" in clash

    outside = _error(
        write_spec,
        silos="silos:\n  - {name: a, compute: c}\n"
        "  - {name: b, compute: c, node_config: {partition-id: 7}}\n",
    )
    assert "silo 'b': node_config partition-id = 7 is outside 0..1" in outside

    disagree = _error(
        write_spec,
        silos="silos:\n  - {name: a, compute: c, node_config: {num-partitions: 4}}\n"
        "  - {name: b, compute: c}\n",
    )
    assert "silos disagree on node_config num-partitions ([2, 4])" in disagree

    wrong_type = _error(
        write_spec,
        silos="silos:\n  - {name: a, compute: c, node_config: {partition-id: '0'}}\n"
        "  - {name: b, compute: c}\n",
    )
    assert "silos[0].node_config: node_config 'partition-id' = '0' must be an integer" in (
        wrong_type
    )


def test_a_bad_run_config_key_fails_with_run_configs_own_message(write_spec):
    message = _error(write_spec, run_config="run_config: {num-server-round: 3}")
    with pytest.raises(ConfigError) as expected:
        RunConfig.from_flower({"num-server-round": 3})
    assert "run_config: " in message
    assert "unknown run-config key 'num-server-round'. Did you mean 'num-server-rounds'?" in (
        message
    )
    # Exactly RunConfig's explanation (indented under the spec's bullet).
    assert str(expected.value).replace("\n", "\n      ") in message


def test_bad_run_config_values_and_misplaced_keys(write_spec):
    value = _error(
        write_spec, run_config="run_config: {training.learning-rate: -1, data.partitioner: zipf}"
    )
    assert "run-config 'training.learning-rate' = -1.0: Input should be greater than 0" in value
    assert "run-config 'data.partitioner' = 'zipf'" in value

    misplaced = _error(write_spec, run_config="run_config: {task: fraud}")
    assert "run_config: 'task' is a top-level key of the spec; move 'task: fraud'" in misplaced

    task = _error(write_spec, task="task: digitz")
    assert "task: Invalid run config" in task and "Did you mean 'digits'?" in task

    nodes = _error(write_spec, run_config="run_config: {sampling.min-available-nodes: 4}")
    assert "run_config.sampling.min-available-nodes = 4 exceeds the 3 silos" in nodes
    assert "set run_config.sampling.min-available-nodes to at most 3" in nodes


def test_silo_data_forms(write_spec):
    both = _error(
        write_spec,
        silos="silos:\n  - {name: a, compute: c, data: {datastore: d, url: 'https://a.blob.core.windows.net/c'}}\n"
        "  - {name: b, compute: c}\n",
    )
    assert "silos[0].data: give exactly one of 'datastore' (with 'path') or 'url'" in both
    not_blob = _error(
        write_spec,
        silos="silos:\n  - {name: a, compute: c, data: {url: 'https://example.org/x'}}\n"
        "  - {name: b, compute: c}\n",
    )
    assert "silos[0].data: url 'https://example.org/x' is not on a Blob endpoint" in not_blob
    spec = load_spec(
        write_spec(
            silos="silos:\n"
            "  - {name: a, compute: c, data: {datastore: d, path: /x/y.csv, type: uri_file}}\n"
            "  - {name: b, compute: c, data: {url: 'azureml://datastores/d/paths/b/'}}\n",
        )
    )
    assert spec.silos[0].data.uri == "azureml://datastores/d/paths/x/y.csv"
    assert spec.silos[1].data.uri == "azureml://datastores/d/paths/b/"


def test_existing_network_secrets_and_auth_keys(write_spec):
    spec = load_spec(
        write_spec(
            network="network:\n  mode: existing\n  address: superlink.example.org:9091\n"
            "  root_certificates: https://kv-fed.vault.azure.net/secrets/superlink-ca\n"
            "  supernode_auth_keys: {hospital-a: keys/a.key}\n"
        )
    )
    assert isinstance(spec.network, ExistingNetwork)
    assert spec.network.control == "superlink.example.org:9091"
    secret = parse_secret_ref(spec.network.root_certificates)
    assert isinstance(secret, KeyVaultSecret)
    assert (secret.vault_url, secret.name) == ("https://kv-fed.vault.azure.net", "superlink-ca")
    assert parse_secret_ref("keys/a.key") == "keys/a.key"

    unknown = _error(
        write_spec,
        network="network: {mode: existing, address: 'x:1', supernode_auth_keys: {hospital-z: k}}",
    )
    assert "network.supernode_auth_keys names silo 'hospital-z', which is not in silos" in unknown
    bad_kv = _error(
        write_spec,
        network="network: {mode: existing, address: 'x:1', root_certificates: 'https://kv/x'}",
    )
    assert "network.root_certificates: 'https://kv/x' is not a Key Vault secret identifier" in (
        bad_kv
    )
    insecure = _error(
        write_spec,
        network="network: {mode: existing, address: 'x:1', insecure: true, "
        "root_certificates: ca.pem}",
    )
    assert "insecure: true turns TLS off" in insecure


def test_silos_in_other_workspaces_need_the_tracking_uri_for_discovery(write_spec):
    silos = (
        "silos:\n  - {name: a, compute: c}\n"
        "  - {name: b, compute: c, workspace: mlw-other, registry: fed-registry}\n"
    )
    message = _error(write_spec, silos=silos)
    assert "silos b run in other workspaces" in message and "set mlflow_tracking_uri" in message
    spec = load_spec(
        write_spec(silos=silos, mlflow_tracking_uri="mlflow_tracking_uri: azureml://x/mlflow")
    )
    assert spec.silos[1].workspace_scope(spec.orchestrator)[2] == "mlw-other"


def test_unreadable_specs(tmp_path, write_spec):
    with pytest.raises(SpecError, match=r"does not exist; start from examples/federation\.yaml"):
        load_spec(tmp_path / "missing.yaml")
    with pytest.raises(SpecError, match="not valid YAML at line 2"):
        load_spec(write_spec("name: x\n  bad: [\n"))
    with pytest.raises(SpecError, match="is a YAML mapping"):
        parse_spec("- a\n- b\n")


@pytest.mark.parametrize(
    "example",
    # federation-local.yaml is a local-only spec (no Azure part): tests/adapters/local.
    sorted(p for p in EXAMPLE.parent.glob("federation*.yaml") if p.name != "federation-local.yaml"),
    ids=lambda p: p.name,
)
def test_every_example_spec_validates_and_builds_its_jobs(example):
    from adapters.azureml.jobs import build_jobs

    spec = load_spec(example)
    jobs = build_jobs(spec, "20260101-000000-0000")
    assert len(jobs.silos) == len(spec.silos) == 3
    if isinstance(spec.network, ExistingNetwork):
        assert jobs.superlink is None
        assert jobs.scope_of(jobs.silos["hospital-b"]).workspace == "mlw-hospital-b"
