"""Spec → real azure-ai-ml objects → YAML (the SDK's serialiser) → ``load_job`` again."""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path

import pytest
from azure.ai.ml import load_environment, load_job
from azure.ai.ml.entities import Command, Environment, ManagedIdentityConfiguration
from azureml_testkit import EXAMPLE, REPO_ROOT

from adapters.azureml.jobs import (
    ADDRESS_TAG,
    build_environment,
    build_jobs,
    conda_environment,
    render,
)
from adapters.azureml.runtime import parse_args
from adapters.azureml.spec import SpecError, SuperNodeSpec, load_spec
from adapters.federation.flower import node_config_arg
from fl_core.config import flatten

SUBMISSION = "20260101-000000-abcd"


def _strip_azureml(value: str | None) -> str | None:
    return value.removeprefix("azureml:") if isinstance(value, str) else value


def _inputs(job) -> dict[str, tuple[str, str, str | None]]:
    out = {}
    for name, item in (job.inputs or {}).items():
        data = getattr(item, "_data", item)  # a job node wraps its Input
        out[name] = (data.type, data.path, data.mode)
    return out


def _identity(job):
    identity = job.identity
    if isinstance(identity, dict):
        return identity.get("client_id")
    return getattr(identity, "client_id", None)


def test_build_jobs_for_the_example():
    spec = load_spec(EXAMPLE)
    jobs = build_jobs(spec, SUBMISSION)
    assert isinstance(jobs.environment, Environment)
    assert all(isinstance(job, Command) for job in jobs.all())
    assert [role for role, _ in jobs.roles()] == [
        "superlink", "silo:hospital-a", "silo:hospital-b", "silo:hospital-c", "serverapp"
    ]  # fmt: skip
    assert jobs.superlink.compute == "cpu-orchestrator"
    assert jobs.serverapp.compute == "cpu-orchestrator"
    assert [jobs.silos[s.name].compute for s in spec.silos] == [
        "cpu-silo-a", "cpu-silo-b", "cpu-silo-c"
    ]  # fmt: skip
    silo_a = jobs.silos["hospital-a"]
    assert isinstance(silo_a.identity, ManagedIdentityConfiguration)
    assert silo_a.identity.client_id == "11111111-0000-0000-0000-000000000000"
    assert _inputs(silo_a) == {
        "silo_data": ("uri_folder", "azureml://datastores/hospital_a/paths/digits/", "ro_mount")
    }
    assert "--node-config 'partition-id=0 num-partitions=3 data-source=\"${{inputs.silo_data}}\"'" \
        in silo_a.command  # fmt: skip
    assert "partition-id=2 num-partitions=3" in jobs.silos["hospital-c"].command
    # Same code and environment everywhere; the code is the project directory.
    assert {job.code for job in jobs.all()} == {str(REPO_ROOT)}
    ref = f"azureml:{jobs.environment.name}:{jobs.environment.version}"
    assert {job.environment for job in jobs.all()} == {ref}
    assert jobs.superlink.name == f"fedsilo-digits-{SUBMISSION}-superlink"
    assert jobs.scope_of(silo_a).workspace == "mlw-fedsilo"


def test_the_commands_parse_with_the_runtime_wrapper():
    jobs = build_jobs(load_spec(EXAMPLE), SUBMISSION)
    for role, job in jobs.roles():
        argv = shlex.split(job.command)
        assert argv[:3] == ["python", "-m", "adapters.azureml.runtime"]
        args, flower = parse_args(argv[3:])
        assert args.role == role.split(":")[0].replace("silo", "supernode")
        if args.role == "supernode":
            # The warm SuperNode (adapters.supernode) around flower-supernode's arguments,
            # supervised by the wrapper (restarted with back-off up to 60 s).
            assert flower[:4] == ["python", "-m", "adapters.supernode", "run"]
            assert flower[flower.index("--app") + 1] == "fl_app.client_app"
            assert args.restart_max_delay == 60.0
            assert args.superlink_job == jobs.superlink.name
            assert flower[flower.index("--superlink") + 1] == "{superlink}"
            assert "--isolation" not in flower  # the warm SuperNode sets it
        else:
            assert flower[0] in ("flower-superlink", "flwr")
    args, flower = parse_args(shlex.split(jobs.serverapp.command)[3:])
    assert flower[:5] == ["flwr", "run", ".", "fedsilo", "--stream"]
    overrides = flatten(
        tomllib.loads("\n".join(flower[flower.index("--run-config") + 1].split(" ")))
    )
    assert overrides == {
        "task": "digits",
        "strategy": "fedavg",
        "num-server-rounds": 5,
        "training.local-epochs": 3,
        "sampling.min-available-nodes": 3,
        "sampling.reply-poll-interval": 0.02,  # the warm runtime's polling
    }


def test_flowers_default_supernode_and_no_supervision_on_request():
    spec = load_spec(EXAMPLE).model_copy(
        update={"supernode": SuperNodeSpec(executor="subprocess", restart=False)}
    )
    jobs = build_jobs(spec, SUBMISSION)
    for job in jobs.silos.values():
        args, flower = parse_args(shlex.split(job.command)[3:])
        assert flower[0] == "flower-supernode" and args.restart_max_delay is None
    _, flower = parse_args(shlex.split(jobs.serverapp.command)[3:])
    assert "reply-poll-interval" not in flower[flower.index("--run-config") + 1]


def test_render_writes_yaml_that_load_job_reads_back_identically(tmp_path):
    spec = load_spec(EXAMPLE)
    jobs = build_jobs(spec, SUBMISSION)
    paths = render(spec, tmp_path / "out", SUBMISSION)
    names = [p.name for p in paths]
    assert names == [
        "environment.yml", "superlink.yml", "silo-hospital-a.yml", "silo-hospital-b.yml",
        "silo-hospital-c.yml", "serverapp.yml", "federation.resolved.yaml", "submit.sh",
    ]  # fmt: skip
    by_name = {p.name: p for p in paths}

    for role, built in jobs.roles():
        loaded = load_job(by_name[role.replace("silo:", "silo-") + ".yml"])
        assert loaded.name == built.name
        assert loaded.command == built.command
        assert loaded.compute == built.compute
        assert _strip_azureml(loaded.environment) == _strip_azureml(built.environment)
        assert loaded.environment_variables == built.environment_variables
        assert _inputs(loaded) == _inputs(built)
        assert _identity(loaded) == _identity(built)
        assert loaded.experiment_name == built.experiment_name
        assert loaded.tags == built.tags
        # The code path is written relative to the YAML and still names the project.
        assert (by_name["superlink.yml"].parent / loaded.code).resolve() == REPO_ROOT

    env = load_environment(by_name["environment.yml"])
    assert (env.name, env.version, env.image) == (
        jobs.environment.name, jobs.environment.version, jobs.environment.image
    )  # fmt: skip
    assert env.conda_file == jobs.environment.conda_file

    script = by_name["submit.sh"].read_text()
    assert script.count("az ml job create --file") == 5
    assert (
        script.index("superlink.yml")
        < script.index("silo-hospital-a.yml")
        < script.index("serverapp.yml")
    )
    resolved = load_spec(by_name["federation.resolved.yaml"])
    skip = {"base_dir", "orchestrator"}  # the code path is relative to a different file
    assert resolved.model_dump(exclude=skip) == spec.model_dump(exclude=skip)


def test_the_conda_file_comes_from_the_projects_dependencies():
    spec = load_spec(EXAMPLE)
    conda = conda_environment(spec)
    deps = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert conda["dependencies"][0] == "python=3.11"
    assert conda["dependencies"][2]["pip"] == [*deps, "azureml-mlflow"]
    env = build_environment(spec)
    assert env.version == build_environment(spec).version  # content hash: stable
    assert env.image == spec.orchestrator.environment.image


def test_an_own_conda_file_and_a_pinned_version(write_spec, tmp_path):
    (tmp_path / "conda.yml").write_text("name: mine\ndependencies: [python=3.12]\n")
    spec = load_spec(
        write_spec(
            orchestrator=(
                "orchestrator:\n  subscription_id: s\n  resource_group: r\n  workspace: w\n"
                f"  compute: c\n  code: {REPO_ROOT}\n"
                "  environment: {conda_file: conda.yml, version: '7', name: fed-env}\n"
            )
        )
    )
    env = build_environment(spec)
    assert (env.name, env.version) == ("fed-env", "7")
    assert env.conda_file == {"name": "mine", "dependencies": ["python=3.12"]}


def test_existing_network_has_no_superlink_job_and_fetches_secrets(write_spec, tmp_path):
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "b.key").write_text("-----BEGIN PRIVATE KEY-----\n")
    spec = load_spec(
        write_spec(
            network=(
                "network:\n  mode: existing\n  address: superlink.example.org:9091\n"
                "  root_certificates: https://kv-fed.vault.azure.net/secrets/superlink-ca\n"
                "  supernode_auth_keys:\n"
                "    hospital-a: https://kv-fed.vault.azure.net/secrets/hospital-a-key\n"
                "    hospital-b: keys/b.key\n"
            )
        )
    )
    jobs = build_jobs(spec, SUBMISSION)
    assert jobs.superlink is None
    assert next(role for role, _ in jobs.roles()) == "silo:hospital-a"
    a = shlex.split(jobs.silos["hospital-a"].command)
    args, flower = parse_args(a[3:])
    assert args.superlink_job is None
    assert args.secret == [
        "root-certificates=https://kv-fed.vault.azure.net/secrets/superlink-ca",
        "auth-key=https://kv-fed.vault.azure.net/secrets/hospital-a-key",
    ]
    assert flower[flower.index("--superlink") + 1] == "superlink.example.org:9091"
    assert flower[flower.index("--root-certificates") + 1] == "{root-certificates}"
    assert flower[flower.index("--auth-supernode-private-key") + 1] == "{auth-key}"
    assert "--insecure" not in flower
    # A key given as a file travels as a uri_file input of the silo's job.
    b = jobs.silos["hospital-b"]
    assert _inputs(b)["auth_key"] == ("uri_file", str(tmp_path / "keys" / "b.key"), "download")
    assert "--auth-supernode-private-key '${{inputs.auth_key}}'" in b.command
    assert "--auth-supernode-private-key" not in jobs.silos["hospital-c"].command
    serverapp, _ = parse_args(shlex.split(jobs.serverapp.command)[3:])
    assert serverapp.address == "superlink.example.org:9091" and not serverapp.insecure
    assert serverapp.root_certificates == "{root-certificates}"


def test_silos_in_other_workspaces_and_registries(write_spec):
    spec = load_spec(
        write_spec(
            silos=(
                "silos:\n  - {name: a, compute: c}\n"
                "  - {name: b, compute: gpu, workspace: mlw-b, subscription_id: sub-b, "
                "resource_group: rg-b, registry: fed-registry}\n"
            ),
            mlflow_tracking_uri="mlflow_tracking_uri: azureml://eastus.api.azureml.ms/mlflow/v1.0/x",
        )
    )
    jobs = build_jobs(spec, SUBMISSION)
    b = jobs.silos["b"]
    assert jobs.scope_of(b).workspace == "mlw-b" and jobs.scope_of(b).subscription_id == "sub-b"
    env = jobs.environment
    assert b.environment == (
        f"azureml://registries/fed-registry/environments/{env.name}/versions/{env.version}"
    )
    assert jobs.silos["a"].environment == f"azureml:{env.name}:{env.version}"
    assert b.environment_variables["FEDSILO_MLFLOW_TRACKING_URI"].startswith("azureml://eastus")


def test_node_config_values_are_toml():
    assert node_config_arg({"partition-id": 1, "flag": True, "path": 'a "b"', "x": 0.5}) == (
        'partition-id=1 flag=true path="a \\"b\\"" x=0.5'
    )


def test_code_must_be_the_project(write_spec, tmp_path):
    spec = load_spec(
        write_spec(
            orchestrator="orchestrator: {subscription_id: s, resource_group: r, workspace: w, "
            f"compute: c, code: {tmp_path}}}"
        )
    )
    with pytest.raises(SpecError, match=r"orchestrator\.code: .*pyproject\.toml.*point"):
        build_jobs(spec, SUBMISSION)


def test_address_tag_is_shared_with_the_runtime():
    from adapters.azureml import runtime

    assert runtime.ADDRESS_TAG == ADDRESS_TAG
    assert Path(runtime.__file__).parent == Path(render.__code__.co_filename).parent
