"""Turn a federation spec into real ``azure-ai-ml`` objects, and render them as YAML.

One submission of a federation is:

* an :class:`~azure.ai.ml.entities.Environment`: the spec's base image plus a conda file
  generated from the project's ``[project].dependencies`` (registered once per workspace, or
  in a registry, under a content-hash version);
* in network mode ``azureml-job``, a **SuperLink** ``command()`` job on the orchestrator
  compute, which publishes its ``<ip>:<port>`` as the MLflow tag :data:`ADDRESS_TAG` on its
  own run and stops after the federation's run has finished;
* one **SuperNode** ``command()`` job per silo on the silo's compute (and workspace), with
  the silo's data as an ``Input`` (``uri_folder`` / ``uri_file`` on its datastore or Blob
  URL), its node config on the command line and its managed identity;
* the **ServerApp submission**: a ``command()`` job running ``flwr run . fedsilo --stream``
  against the SuperLink, which fails when the Flower run fails.

Every command goes through :mod:`adapters.azureml.runtime`, a small wrapper that resolves
``{superlink}`` (the address) and ``{<secret>}`` (Key Vault secrets written to files) in the
Flower command after ``--``, then runs it.

:func:`render` writes each job's YAML with the SDK's own serialiser; ``az ml job create
--file`` and :func:`azure.ai.ml.load_job` read them back.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shlex
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from azure.ai.ml import Input, command
from azure.ai.ml.entities import Command, Environment, ManagedIdentityConfiguration

from adapters.azureml.spec import (
    ExistingNetwork,
    FederationSpec,
    JobNetwork,
    KeyVaultSecret,
    SiloSpec,
    SpecError,
    parse_secret_ref,
)
from adapters.federation.flower import (
    FLWR_CONNECTION,
    flower_run_config,
    node_config_arg,
    run_config_arg,
)
from fl_app.local_run import PROJECT_DIR

__all__ = [
    "ADDRESS_TAG",
    "RUN_STATUS_TAG",
    "FederationJobs",
    "JobScope",
    "build_environment",
    "build_jobs",
    "conda_environment",
    "environment_ref",
    "new_submission_id",
    "render",
    "supernode_job_command",
]

#: MLflow tag on the SuperLink job's run holding ``<ip>:<port>``.
ADDRESS_TAG = "fedsilo.superlink.address"
#: MLflow tag on the SuperLink job's run holding the Flower run's final status.
RUN_STATUS_TAG = "fedsilo.run.status"
#: Environment variables of every job.
BASE_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PYTHONUNBUFFERED": "1",
}
_RUNTIME = ["python", "-m", "adapters.azureml.runtime"]
_SUPERNODE_MAX_WAIT_S = 120  # a SuperNode gives up this long after losing its SuperLink


@dataclass(frozen=True)
class JobScope:
    """The workspace a job is submitted to."""

    subscription_id: str
    resource_group: str
    workspace: str


@dataclass
class FederationJobs:
    """The AzureML objects of one submission of a federation."""

    spec: FederationSpec
    submission_id: str
    environment: Environment
    superlink: Command | None
    silos: dict[str, Command]
    serverapp: Command
    scopes: dict[str, JobScope] = field(default_factory=dict)  # job name -> workspace

    def all(self) -> list[Command]:
        """Every job in submission order: SuperLink, SuperNodes, ServerApp submission."""
        head = [self.superlink] if self.superlink is not None else []
        return [*head, *self.silos.values(), self.serverapp]

    def roles(self) -> Iterator[tuple[str, Command]]:
        """``(role, job)`` pairs: ``superlink``, ``silo:<name>``, ``serverapp``."""
        if self.superlink is not None:
            yield "superlink", self.superlink
        for name, job in self.silos.items():
            yield f"silo:{name}", job
        yield "serverapp", self.serverapp

    def scope_of(self, job: Command) -> JobScope:
        """The workspace ``job`` goes to."""
        return self.scopes[str(job.name)]


def new_submission_id(now: datetime | None = None) -> str:
    """``<UTC yyyymmdd-hhmmss>-<4 hex>``: unique per submission, sortable."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{secrets.token_hex(2)}"


# --------------------------------------------------------------------------- environment


def conda_environment(spec: FederationSpec) -> dict[str, Any]:
    """The conda file: the spec's own, or Python + pip with the project's dependencies."""
    env = spec.orchestrator.environment
    if env.conda_file:
        path = spec.resolve_path(env.conda_file)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise SpecError(
                f"orchestrator.environment.conda_file: cannot read {path}: {exc}"
            ) from None
        if not isinstance(data, dict):
            raise SpecError(f"orchestrator.environment.conda_file: {path} is not a conda YAML")
        return data
    pyproject = (spec.project_dir() or PROJECT_DIR) / "pyproject.toml"
    try:
        project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise SpecError(
            f"orchestrator.code: cannot read the dependencies from {pyproject} ({exc}); point "
            "'code' at the project directory or set orchestrator.environment.conda_file"
        ) from None
    pip = [*project.get("dependencies", []), *env.extra_pip]
    return {
        "name": env.name,
        "channels": ["conda-forge"],
        "dependencies": [f"python={env.python}", "pip", {"pip": pip}],
    }


def build_environment(spec: FederationSpec) -> Environment:
    """The jobs' environment; its version is a hash of image and conda file unless given."""
    env = spec.orchestrator.environment
    conda = conda_environment(spec)
    version = (
        env.version
        or hashlib.sha256(
            (env.image + "\n" + yaml.safe_dump(conda, sort_keys=True)).encode()
        ).hexdigest()[:12]
    )
    return Environment(
        name=env.name,
        version=version,
        image=env.image,
        conda_file=conda,
        description=f"fedsilo federation '{spec.name}': Flower app and its dependencies",
        tags={"fedsilo.federation": spec.name},
    )


def environment_ref(environment: Environment, silo: SiloSpec | None = None) -> str:
    """How a job names the environment: ``azureml:<name>:<version>`` in its workspace, or
    ``azureml://registries/<registry>/environments/<name>/versions/<version>``."""
    if silo is not None and silo.registry:
        return (
            f"azureml://registries/{silo.registry}/environments/"
            f"{environment.name}/versions/{environment.version}"
        )
    return f"azureml:{environment.name}:{environment.version}"


# --------------------------------------------------------------------------- commands


def supernode_job_command(spec: FederationSpec, flower_args: list[str]) -> list[str]:
    """The SuperNode command of a silo: ``flower-supernode`` with ``flower_args``, or the
    warm SuperNode (:mod:`adapters.supernode`) around it (``spec.supernode.executor``)."""
    from adapters.supernode import supernode_command

    return supernode_command(flower_args, spec.supernode.executor, python="python")


def _shell(args: list[str]) -> str:
    """Join for the job's shell, leaving ``${{inputs.x}}`` for AzureML to substitute."""
    return shlex.join(args)


def _secret_arg(
    name: str, ref: str, spec: FederationSpec, inputs: dict[str, Input], wrapper: list[str]
) -> str:
    """Command-line value for a secret file: a Key Vault secret the wrapper fetches into a
    file (``{name}``), or a local file uploaded as a ``uri_file`` input."""
    parsed = parse_secret_ref(ref)
    if isinstance(parsed, KeyVaultSecret):
        wrapper += ["--secret", f"{name}={parsed.url}"]
        return "{" + name + "}"
    key = name.replace("-", "_")
    inputs[key] = Input(type="uri_file", path=str(spec.resolve_path(parsed)), mode="download")
    return "${{inputs." + key + "}}"


def _tls_args(
    network: ExistingNetwork, spec: FederationSpec, inputs: dict[str, Input], wrapper: list[str]
) -> list[str]:
    """How a job reaches an existing SuperLink: ``--insecure``, or ``--root-certificates``
    with the CA file (a secret, see :func:`_secret_arg`; the spec allows one or the other)."""
    args = ["--insecure"] if network.insecure else []
    if network.root_certificates:
        cert = _secret_arg("root-certificates", network.root_certificates, spec, inputs, wrapper)
        args += ["--root-certificates", cert]
    return args


def _superlink_job(
    spec: FederationSpec, network: JobNetwork, names: dict[str, str], common: dict[str, Any]
) -> Command:
    flower = [
        "flower-superlink", "--insecure", "--disable-runtime-dependency-installation",
        "--host", "0.0.0.0", "--port", str(network.port),
    ]  # fmt: skip
    wrapper = [
        *_RUNTIME, "superlink", "--port", str(network.port), "--stop-after-run",
        "--idle-timeout", str(int(2 * network.discovery_timeout)),
    ]  # fmt: skip
    return command(
        name=names["superlink"],
        display_name=f"{spec.name} · SuperLink",
        command=_shell([*wrapper, "--", *flower]),
        compute=spec.orchestrator.compute,
        identity=_identity(spec.orchestrator.identity_client_id),
        tags={**common["tags"], "fedsilo.role": "superlink"},
        **{k: v for k, v in common.items() if k != "tags"},
    )


def _silo_job(
    spec: FederationSpec,
    silo: SiloSpec,
    names: dict[str, str],
    common: dict[str, Any],
    environment: Environment,
) -> Command:
    inputs: dict[str, Input] = {}
    node_config = dict(silo.node_config)
    if silo.data is not None:
        inputs["silo_data"] = Input(type=silo.data.type, path=silo.data.uri, mode=silo.data.mode)
        node_config.setdefault("data-source", "${{inputs.silo_data}}")
    wrapper = [*_RUNTIME, "supernode"]
    network = spec.network
    if isinstance(network, JobNetwork):
        wrapper += [
            "--superlink-job", names["superlink"],
            "--timeout", str(int(network.discovery_timeout)),
        ]  # fmt: skip
        flower = ["--insecure", "--superlink", "{superlink}"]
    else:
        flower = ["--superlink", network.address, *_tls_args(network, spec, inputs, wrapper)]
        if silo.name in network.supernode_auth_keys:
            key = _secret_arg(
                "auth-key", network.supernode_auth_keys[silo.name], spec, inputs, wrapper
            )
            flower += ["--auth-supernode-private-key", key]
    flower += [
        "--max-wait-time", str(_SUPERNODE_MAX_WAIT_S),
        "--node-config", node_config_arg(node_config),
    ]  # fmt: skip
    if spec.supernode.restart:
        wrapper += ["--restart-max-delay", f"{spec.supernode.restart_max_delay:g}"]
    env = dict(common["environment_variables"])
    env["FEDSILO_SILO"] = silo.name
    return command(
        name=names[f"silo:{silo.name}"],
        display_name=f"{spec.name} · silo {silo.name}",
        command=_shell([*wrapper, "--", *supernode_job_command(spec, flower)]),
        compute=silo.compute,
        inputs=inputs or None,
        identity=_identity(silo.identity_client_id),
        tags={**common["tags"], "fedsilo.role": "supernode", "fedsilo.silo": silo.name},
        environment=environment_ref(environment, silo),
        environment_variables=env,
        **{
            k: v
            for k, v in common.items()
            if k not in ("tags", "environment", "environment_variables")
        },
    )


def _serverapp_job(spec: FederationSpec, names: dict[str, str], common: dict[str, Any]) -> Command:
    inputs: dict[str, Input] = {}
    wrapper = [*_RUNTIME, "serverapp"]
    network = spec.network
    if isinstance(network, JobNetwork):
        wrapper += [
            "--superlink-job", names["superlink"],
            "--timeout", str(int(network.discovery_timeout)),
            "--insecure",
        ]  # fmt: skip
    else:
        wrapper += ["--address", network.control]
        wrapper += _tls_args(network, spec, inputs, wrapper)
    flower = [
        "flwr", "run", ".", FLWR_CONNECTION, "--stream",
        "--run-config", run_config_arg(flower_run_config(spec)),
    ]  # fmt: skip
    return command(
        name=names["serverapp"],
        display_name=f"{spec.name} · ServerApp ({spec.task}, {spec.strategy})",
        command=_shell([*wrapper, "--", *flower]),
        compute=spec.orchestrator.compute,
        inputs=inputs or None,
        identity=_identity(spec.orchestrator.identity_client_id),
        tags={**common["tags"], "fedsilo.role": "serverapp"},
        **{k: v for k, v in common.items() if k != "tags"},
    )


def _identity(client_id: str | None) -> ManagedIdentityConfiguration | None:
    return ManagedIdentityConfiguration(client_id=client_id) if client_id else None


def job_names(spec: FederationSpec, submission_id: str) -> dict[str, str]:
    """Job name per role (``superlink``, ``silo:<name>``, ``serverapp``)."""
    prefix = f"{spec.name}-{submission_id}"
    names = {"superlink": f"{prefix}-superlink", "serverapp": f"{prefix}-serverapp"}
    names.update(
        {f"silo:{s.name}": f"{prefix}-silo-{s.name}" for s in spec.silos if s.kind != "external"}
    )
    return names


def _code(spec: FederationSpec) -> str:
    if spec.orchestrator.code_is_asset:
        return spec.orchestrator.code
    path = spec.resolve_path(spec.orchestrator.code)
    if not (path / "pyproject.toml").is_file():
        raise SpecError(
            f"orchestrator.code: {path} is not the Flower project directory (no "
            "pyproject.toml); point it at the project, relative to the spec file"
        )
    return str(path)


def build_jobs(spec: FederationSpec, submission_id: str | None = None) -> FederationJobs:
    """The environment and every job of one submission of ``spec``."""
    submission_id = submission_id or new_submission_id()
    environment = build_environment(spec)
    names = job_names(spec, submission_id)
    env_vars = {
        **BASE_ENV,
        "FEDSILO_FEDERATION": spec.name,
        "FEDSILO_SUBMISSION": submission_id,
    }
    if spec.mlflow_tracking_uri:
        env_vars["FEDSILO_MLFLOW_TRACKING_URI"] = spec.mlflow_tracking_uri
    common: dict[str, Any] = {
        "experiment_name": spec.orchestrator.experiment or spec.name,
        "code": _code(spec),
        "environment": environment_ref(environment),
        "environment_variables": env_vars,
        "tags": {"fedsilo.federation": spec.name, "fedsilo.submission": submission_id},
    }
    orch = spec.orchestrator
    home = JobScope(orch.subscription_id, orch.resource_group, orch.workspace)
    superlink = None
    if isinstance(spec.network, JobNetwork):
        superlink = _superlink_job(spec, spec.network, names, common)
    # External silos run their own SuperNode (fedsilo silo-kit) and dial in: no job.
    in_azure = [s for s in spec.silos if s.kind != "external"]
    silos = {s.name: _silo_job(spec, s, names, common, environment) for s in in_azure}
    serverapp = _serverapp_job(spec, names, common)
    scopes = {names["superlink"]: home, names["serverapp"]: home}
    scopes.update({names[f"silo:{s.name}"]: JobScope(*s.workspace_scope(orch)) for s in in_azure})
    return FederationJobs(spec, submission_id, environment, superlink, silos, serverapp, scopes)


# --------------------------------------------------------------------------- render


_URL_SCHEMES = ("https://", "http://", "wasbs://", "wasb://", "abfss://")


def _portable_paths(job_dict: dict[str, Any], out_dir: Path) -> None:
    """Local paths relative to the YAML; URL inputs without the ``azureml:`` prefix that
    azure-ai-ml 1.35's serialiser wrongly adds (``load_job`` would read it back as
    ``azureml:https://...``, and ``az ml`` would look for a data asset of that name)."""
    code = job_dict.get("code")
    if isinstance(code, str) and os.path.isabs(code):
        job_dict["code"] = os.path.relpath(code, out_dir)
    for item in (job_dict.get("inputs") or {}).values():
        path = item.get("path") if isinstance(item, Mapping) else None
        if not isinstance(path, str):
            continue
        if path.startswith("azureml:") and path[len("azureml:") :].startswith(_URL_SCHEMES):
            item["path"] = path[len("azureml:") :]
        elif os.path.isabs(path):
            item["path"] = os.path.relpath(path, out_dir)


def _plain(value: Any) -> Any:
    """OrderedDicts and other mappings → dicts, recursively (for yaml.safe_dump)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _write_yaml(path: Path, data: dict[str, Any], comment: str) -> None:
    body = yaml.safe_dump(_plain(data), sort_keys=False, allow_unicode=True, width=100)
    path.write_text(f"# {comment}\n{body}", encoding="utf-8")


def render(
    spec: FederationSpec, out_dir: str | Path, submission_id: str | None = None
) -> list[Path]:
    """Write the environment and every job as AzureML YAML under ``out_dir``; return the
    paths in submission order (plus ``submit.sh`` with the equivalent ``az ml`` commands)."""
    jobs = build_jobs(spec, submission_id)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    env_path = out / "environment.yml"
    env_dict = jobs.environment._to_dict()
    _write_yaml(env_path, env_dict, "az ml environment create --file environment.yml")
    written.append(env_path)

    files: list[tuple[Path, JobScope]] = []
    for role, job in jobs.roles():
        name = role.replace("silo:", "silo-")
        path = out / f"{name}.yml"
        job_dict = job._to_job()._to_dict()
        _portable_paths(job_dict, out)
        _write_yaml(path, job_dict, f"az ml job create --file {path.name}")
        written.append(path)
        files.append((path, jobs.scope_of(job)))

    spec_path = out / "federation.resolved.yaml"
    spec_path.write_text(spec.to_yaml(), encoding="utf-8")
    written.append(spec_path)

    script = out / "submit.sh"
    script.write_text(_submit_script(jobs, env_path, files), encoding="utf-8")
    script.chmod(0o755)
    written.append(script)
    return written


def _ws_args(scope: JobScope) -> str:
    return (
        f"--subscription {shlex.quote(scope.subscription_id)} "
        f"--resource-group {shlex.quote(scope.resource_group)} "
        f"--workspace-name {shlex.quote(scope.workspace)}"
    )


def _submit_script(jobs: FederationJobs, env_path: Path, files: list[tuple[Path, JobScope]]) -> str:
    spec = jobs.spec
    lines = [
        "#!/usr/bin/env bash",
        f"# Submit federation '{spec.name}' (submission {jobs.submission_id}) with the az CLI",
        "# (`az extension add -n ml`); `fedsilo submit` does the same through the Python SDK.",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
    ]
    scopes = list(dict.fromkeys(scope for _, scope in files))
    for scope in scopes:
        lines.append(f"az ml environment create --file {env_path.name} {_ws_args(scope)}")
    for registry in sorted({s.registry for s in spec.silos if s.registry}):
        lines.append(
            f"az ml environment create --file {env_path.name} --registry-name "
            f"{shlex.quote(registry)}"
        )
    for path, scope in files:
        lines.append(f"az ml job create --file {path.name} {_ws_args(scope)}")
    return "\n".join(lines) + "\n"
