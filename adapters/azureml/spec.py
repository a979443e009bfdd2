"""The federation spec: one YAML file naming the orchestrator, each silo, the task, the
strategy and its run config. Both backends (AzureML and local) consume exactly this spec.

Example (see ``examples/federation.yaml`` for a full one)::

    name: fedsilo-digits
    orchestrator:
      subscription_id: 00000000-0000-0000-0000-000000000000
      resource_group: rg-fedsilo
      workspace: mlw-fedsilo
      compute: cpu-orchestrator
    silos:
      - {name: hospital-a, compute: cpu-silo-a, data: {datastore: hospital_a, path: digits/}}
      - {name: hospital-b, compute: cpu-silo-b, data: {url: "https://acct.blob.core.windows.net/digits/"}}
    task: digits
    strategy: fedavg
    run_config: {num-server-rounds: 5}
    network: {mode: azureml-job}

:func:`load_spec` validates it (pydantic, unknown keys rejected) and raises
:class:`SpecError` whose message has one line per problem, naming the field path (e.g.
``silos[1].compute``) and the fix. ``run_config`` is checked with the app's own
:class:`fl_app.config.RunConfig`, so a bad key fails at spec load with the same message a
``flwr run`` would print.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

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

from fl_app.config import ConfigError, RunConfig

__all__ = [
    "DEFAULT_IMAGE",
    "AttachedCompute",
    "EnvironmentSpec",
    "ExistingNetwork",
    "FederationSpec",
    "JobNetwork",
    "KeyVaultSecret",
    "OrchestratorSpec",
    "ProvisionSpec",
    "SiloData",
    "SiloSpec",
    "SpecError",
    "SuperNodeSpec",
    "load_spec",
    "parse_secret_ref",
]

#: AzureML's curated CPU base image (Ubuntu, conda); the conda file adds Python and the app.
DEFAULT_IMAGE = "mcr.microsoft.com/azureml/openmpi5.0-ubuntu24.04:latest"

_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
_SILO_RE = re.compile(r"^[a-z][a-z0-9-]{0,29}$")
_AZ_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")
_KV_SECRET_RE = re.compile(
    r"^https://(?P<vault>[A-Za-z0-9-]{3,24})\.vault\.(?P<suffix>[a-z0-9.]+)/secrets/"
    r"(?P<name>[A-Za-z0-9-]{1,127})(?:/(?P<version>[A-Za-z0-9]+))?/?$"
)
_CODE_ASSET_RE = re.compile(r"^azureml:(?P<name>[A-Za-z0-9_.-]+):(?P<version>[A-Za-z0-9_.-]+)$")
_ARM_CODE_RE = re.compile(
    r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.MachineLearningServices/"
    r"workspaces/[^/]+/codes/[^/]+/versions/[^/]+$",
    re.IGNORECASE,
)
_NODE_CONFIG_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


class SpecError(ValueError):
    """The federation spec is missing, unreadable or invalid (message names field and fix)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- secrets


class KeyVaultSecret(_Strict):
    """A secret in Azure Key Vault, named by its identifier URL
    ``https://<vault>.vault.azure.net/secrets/<name>[/<version>]``; fetched at job start
    with the job's managed identity (which needs the *Key Vault Secrets User* role)."""

    url: str

    @property
    def vault_url(self) -> str:
        """``https://<vault>.vault.<suffix>`` (no trailing slash)."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def name(self) -> str:
        """The secret's name."""
        match = _KV_SECRET_RE.match(self.url)
        assert match  # checked by parse_secret_ref
        return match["name"]


def parse_secret_ref(value: str) -> KeyVaultSecret | str:
    """A Key Vault secret identifier URL becomes :class:`KeyVaultSecret`; anything else is
    taken as a file path (kept as written; relative paths are resolved against the spec)."""
    if value.startswith("https://"):
        if not _KV_SECRET_RE.match(value):
            raise ValueError(
                f"'{value}' is not a Key Vault secret identifier; write "
                "https://<vault>.vault.azure.net/secrets/<name>[/<version>] or a file path"
            )
        return KeyVaultSecret(url=value)
    if not value.strip():
        raise ValueError("empty path; give a file path or a Key Vault secret identifier URL")
    return value


SecretRef = Annotated[str, Field(description="File path or Key Vault secret identifier URL.")]


# --------------------------------------------------------------------------- orchestrator


class EnvironmentSpec(_Strict):
    """The AzureML environment every job runs in: a base image plus a conda file generated
    from the project's ``[project].dependencies`` (or your own conda file)."""

    name: str = Field("fedsilo", description="Environment asset name.")
    image: str = Field(DEFAULT_IMAGE, description="Base Docker image.")
    conda_file: str | None = Field(
        None,
        description="Path to a conda YAML (relative to the spec); default: generated from "
        "pyproject.toml's dependencies.",
    )
    python: str = Field("3.11", description="Python version of the generated conda file.")
    extra_pip: list[str] = Field(
        default_factory=lambda: ["azureml-mlflow"],
        description="Extra pip requirements added to the generated conda file.",
    )
    version: str | None = Field(
        None, description="Asset version; default: a hash of image and conda file."
    )

    @field_validator("name")
    @classmethod
    def _asset_name(cls, value: str) -> str:
        if not _AZ_NAME_RE.match(value):
            raise ValueError(
                f"'{value}' is not a valid asset name; use letters, digits, '-', '_' or '.'"
            )
        return value

    @field_validator("python")
    @classmethod
    def _python_version(cls, value: str) -> str:
        if not re.fullmatch(r"3\.\d{1,2}", value):
            raise ValueError(f"'{value}' is not a Python version like '3.11'")
        return value


class OrchestratorSpec(_Strict):
    """Where the SuperLink and the ServerApp submission run."""

    subscription_id: str = Field(description="Azure subscription id of the workspace.")
    resource_group: str = Field(description="Resource group of the workspace.")
    workspace: str = Field(description="AzureML workspace name.")
    compute: str = Field(
        description="AzureML compute cluster for the SuperLink and the ServerApp submission."
    )
    environment: EnvironmentSpec = Field(default_factory=EnvironmentSpec)
    code: str = Field(
        ".",
        description="The project directory uploaded as the jobs' code (relative to the "
        "spec file), or a registered code asset 'azureml:<name>:<version>' / its ARM id.",
    )
    identity_client_id: str | None = Field(
        None, description="Client id of a user-assigned managed identity for these jobs."
    )
    experiment: str | None = Field(
        None, description="AzureML experiment name; default: the federation name."
    )

    @field_validator("subscription_id", "resource_group", "workspace", "compute")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    @field_validator("code")
    @classmethod
    def _code(cls, value: str) -> str:
        if value.startswith("azureml:") and not _CODE_ASSET_RE.match(value):
            raise ValueError(
                f"'{value}' is not a code asset reference; write azureml:<name>:<version> "
                "or a directory path"
            )
        return value

    @property
    def code_is_asset(self) -> bool:
        """True when ``code`` names a registered code asset instead of a directory."""
        return bool(_CODE_ASSET_RE.match(self.code) or _ARM_CODE_RE.match(self.code))


# --------------------------------------------------------------------------- silos


class SiloData(_Strict):
    """A silo's data, mounted into its SuperNode job: an AzureML datastore + path prefix,
    or a Blob URL (``https://<account>.blob.core.windows.net/<container>/<prefix>``) or any
    ``azureml://`` / ``wasbs://`` / ``abfss://`` URI."""

    datastore: str | None = Field(None, description="AzureML datastore name.")
    path: str = Field("", description="Path prefix inside the datastore.")
    url: str | None = Field(None, description="Blob URL or azureml:// URI (instead of datastore).")
    type: Literal["uri_folder", "uri_file"] = Field(
        "uri_folder", description="uri_folder (a prefix) or uri_file (one blob)."
    )
    mode: Literal["ro_mount", "download"] = Field(
        "ro_mount", description="How AzureML makes the data available to the job."
    )

    @model_validator(mode="after")
    def _one_source(self) -> SiloData:
        if (self.datastore is None) == (self.url is None):
            raise ValueError(
                "give exactly one of 'datastore' (with 'path') or 'url' "
                "(e.g. url: https://<account>.blob.core.windows.net/<container>/<prefix>)"
            )
        if self.url is not None:
            if self.path:
                raise ValueError("'path' goes with 'datastore'; put the prefix into 'url'")
            scheme = urlsplit(self.url).scheme.lower()
            if scheme not in ("https", "azureml", "wasbs", "abfss"):
                raise ValueError(
                    f"url '{self.url}' is not a Blob URL; use "
                    "https://<account>.blob.core.windows.net/<container>/<prefix> or an "
                    "azureml://datastores/<datastore>/paths/<prefix> URI"
                )
            if scheme == "https" and ".blob." not in (urlsplit(self.url).hostname or ""):
                raise ValueError(
                    f"url '{self.url}' is not on a Blob endpoint "
                    "(https://<account>.blob.core.windows.net/...)"
                )
        if self.datastore is not None and not _AZ_NAME_RE.match(self.datastore):
            raise ValueError(f"datastore '{self.datastore}' is not a valid datastore name")
        return self

    @property
    def uri(self) -> str:
        """The AzureML input path: the URL, or ``azureml://datastores/<ds>/paths/<prefix>``."""
        if self.url is not None:
            return self.url
        prefix = str(PurePosixPath(self.path.strip("/"))) if self.path.strip("/") else ""
        suffix = "/" if self.type == "uri_folder" and prefix else ""
        return f"azureml://datastores/{self.datastore}/paths/{prefix}{suffix}"


NodeValue = bool | int | float | str

_REGION_RE = re.compile(r"^[a-z][a-z0-9]{2,39}$")
_STORAGE_ACCOUNT_RE = re.compile(r"^[a-z0-9]{3,24}$")
_ARM_CLUSTER_RE = re.compile(
    r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/"
    r"(Microsoft\.Kubernetes/connectedClusters|Microsoft\.ContainerService/managedClusters)/[^/]+$",
    re.IGNORECASE,
)


def _check_region(value: str | None) -> str | None:
    if value is not None and not _REGION_RE.match(value):
        raise ValueError(
            f"'{value}' is not an Azure region name; write it like 'westeurope' or 'eastus2' "
            "(`az account list-locations --query [].name`)"
        )
    return value


class AttachedCompute(_Strict):
    """A Kubernetes cluster (AKS or Azure Arc-enabled) that ``provision`` attaches to the
    workspace as the silo's compute (the AzureML extension must already be installed)."""

    resource_id: str = Field(
        description="ARM id of the cluster: /subscriptions/<sub>/resourceGroups/<rg>/providers/"
        "Microsoft.Kubernetes/connectedClusters/<name> (Arc) or .../Microsoft.ContainerService/"
        "managedClusters/<name> (AKS)."
    )
    namespace: str = Field("default", description="Kubernetes namespace the jobs run in.")

    @field_validator("resource_id")
    @classmethod
    def _cluster_id(cls, value: str) -> str:
        if not _ARM_CLUSTER_RE.match(value):
            raise ValueError(
                f"'{value}' is not the ARM id of an AKS or Arc-enabled Kubernetes cluster; "
                "see `az connectedk8s show --query id` or `az aks show --query id`"
            )
        return value


class ProvisionSpec(_Strict):
    """What ``fedsilo provision`` creates beyond the names in the spec (see
    docs/provisioning.md)."""

    location: str = Field("westeurope", description="Region of the resource group and workspace.")
    vm_size: str = Field("Standard_DS3_v2", description="VM size of the compute clusters.")
    max_nodes: int = Field(1, ge=1, le=100, description="Nodes per compute cluster.")
    storage_sku: Literal["Standard_LRS", "Standard_ZRS", "Standard_GRS"] = Field(
        "Standard_LRS", description="SKU of the storage accounts."
    )
    public_network_access: bool = Field(
        True,
        description="false: storage accounts and workspace refuse public traffic (reach them "
        "through private endpoints / peered virtual networks you add).",
    )
    tenant_id: str | None = Field(
        None, description="Entra tenant of the key vault; default: the subscription's."
    )

    @field_validator("location")
    @classmethod
    def _location(cls, value: str) -> str:
        return _check_region(value) or value


class SiloSpec(_Strict):
    """One data silo: a SuperNode job on the silo's own compute (``kind: azureml``), on a
    Kubernetes cluster attached to the workspace (``attached``), or a SuperNode its owner runs
    outside Azure (``external``, see ``fedsilo silo-kit``)."""

    name: str = Field(description="Silo name: lowercase letters, digits and '-'.")
    kind: Literal["azureml", "attached", "external"] = Field(
        "azureml",
        description="azureml (compute cluster in the federation's subscription), attached "
        "(Kubernetes / Arc compute attached to the workspace) or external (on-premises or "
        "another cloud; dials out to the SuperLink).",
    )
    compute: str | None = Field(
        None,
        description="AzureML compute cluster (or attached Kubernetes compute) that runs this "
        "silo's SuperNode; required unless kind is external.",
    )
    region: str | None = Field(
        None,
        description="Region of the silo's storage, identity and compute (provision); "
        "default: provision.location.",
    )
    storage_account: str | None = Field(
        None,
        description="Name of the silo's storage account (provision); default: derived from "
        "the federation and silo names.",
    )
    attach: AttachedCompute | None = Field(
        None, description="kind attached: the Kubernetes cluster to attach as 'compute'."
    )
    workspace: str | None = Field(
        None, description="The silo's AzureML workspace; default: the orchestrator's."
    )
    subscription_id: str | None = Field(
        None, description="Subscription of the silo's workspace; default: the orchestrator's."
    )
    resource_group: str | None = Field(
        None, description="Resource group of the silo's workspace; default: the orchestrator's."
    )
    registry: str | None = Field(
        None,
        description="AzureML registry the silo's workspace takes the environment from "
        "(for workspaces in other subscriptions or tenants).",
    )
    data: SiloData | None = Field(None, description="The silo's data (mounted into its job).")
    identity_client_id: str | None = Field(
        None, description="Client id of the user-assigned managed identity the job runs as."
    )
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
                "'-', starting with a letter (it becomes part of AzureML job names)"
            )
        return value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        return _check_region(value)

    @field_validator("storage_account")
    @classmethod
    def _storage_account(cls, value: str | None) -> str | None:
        if value is not None and not _STORAGE_ACCOUNT_RE.match(value):
            raise ValueError(
                f"'{value}' is not a storage account name; use 3-24 lowercase letters and "
                "digits (globally unique)"
            )
        return value

    @model_validator(mode="wrap")
    @classmethod
    def _compute_missing(cls, data: Any, handler: Any) -> SiloSpec:
        """With other errors in the silo the 'needs compute' check below does not run; report
        a missing compute with them (as when compute was required)."""
        try:
            return handler(data)
        except ValidationError as exc:
            if (
                not isinstance(data, dict)
                or "compute" in data
                or data.get("kind", "azureml") == "external"
                or any(not e["loc"] for e in exc.errors())  # the check below said it
            ):
                raise
            errors: list[Any] = [
                {k: v for k, v in e.items() if k in ("type", "loc", "input", "ctx")}
                for e in exc.errors(include_url=False)
            ]
            errors.append({"type": "missing", "loc": ("compute",), "input": data})
            raise ValidationError.from_exception_data(exc.title, errors) from None

    @model_validator(mode="after")
    def _kind(self) -> SiloSpec:
        if self.kind == "external":
            if self.compute is not None or self.attach is not None:
                raise ValueError(
                    f"silo '{self.name}' is external (its owner runs the SuperNode): drop "
                    "'compute' and 'attach', or set kind: azureml"
                )
            return self
        if self.compute is None:
            raise ValueError(
                f"silo '{self.name}' (kind {self.kind}) needs 'compute': the AzureML compute "
                "that runs its SuperNode (or set kind: external)"
            )
        if (self.kind == "attached") != (self.attach is not None):
            raise ValueError(
                f"silo '{self.name}': 'attach' (the Kubernetes cluster) goes with kind: "
                "attached, and kind: attached needs it"
            )
        return self

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

    def workspace_scope(self, orchestrator: OrchestratorSpec) -> tuple[str, str, str]:
        """``(subscription_id, resource_group, workspace)`` of this silo's jobs."""
        return (
            self.subscription_id or orchestrator.subscription_id,
            self.resource_group or orchestrator.resource_group,
            self.workspace or orchestrator.workspace,
        )


# --------------------------------------------------------------------------- network


class JobNetwork(_Strict):
    """The SuperLink runs as an AzureML job on the orchestrator compute and publishes its
    ``<private ip>:<port>`` as an MLflow tag on its job's run; the silo jobs and the ServerApp
    submission read it from there. Silo computes must reach that address (same or peered
    virtual network); traffic is unencrypted inside it (TLS needs a fixed name: use
    ``existing``)."""

    mode: Literal["azureml-job"] = "azureml-job"
    port: int = Field(9091, ge=1024, le=65535, description="SuperLink port (Fleet + Control).")
    discovery_timeout: float = Field(
        1800.0, gt=0, description="Seconds a silo job waits for the SuperLink's address."
    )


class ExistingNetwork(_Strict):
    """A SuperLink you already run (VM, AKS, Container Apps) at a fixed address."""

    mode: Literal["existing"] = "existing"
    address: str = Field(description="SuperLink Fleet API address host:port.")
    control_address: str | None = Field(
        None, description="Control API address host:port; default: 'address'."
    )
    insecure: bool = Field(False, description="Plain HTTP (no TLS); only inside a private network.")
    root_certificates: SecretRef | None = Field(
        None, description="CA certificate (PEM) of the SuperLink: file path or Key Vault secret."
    )
    supernode_auth_keys: dict[str, SecretRef] = Field(
        default_factory=dict,
        description="Per silo name: the SuperNode's private key (file path or Key Vault secret) "
        "for SuperNode authentication.",
    )

    @field_validator("address", "control_address")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(
                f"'{value}' is not host:port (e.g. superlink.example.org:9091); no scheme"
            )
        return value

    @field_validator("root_certificates")
    @classmethod
    def _root_cert(cls, value: str | None) -> str | None:
        if value is not None:
            parse_secret_ref(value)
        return value

    @field_validator("supernode_auth_keys")
    @classmethod
    def _auth_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for ref in value.values():
            parse_secret_ref(ref)
        return value

    @model_validator(mode="after")
    def _tls(self) -> ExistingNetwork:
        if self.insecure and (self.root_certificates or self.supernode_auth_keys):
            raise ValueError(
                "insecure: true turns TLS off, but root_certificates / supernode_auth_keys "
                "need TLS; drop 'insecure' or those keys"
            )
        return self

    @property
    def control(self) -> str:
        """The Control API address ``flwr run`` talks to."""
        return self.control_address or self.address


Network = Annotated[JobNetwork | ExistingNetwork, Field(discriminator="mode")]


class SuperNodeSpec(_Strict):
    """How each silo's SuperNode runs, in the local backend, the silo kit's ``start.sh`` and
    the AzureML SuperNode job (see adapters/supernode and docs/efficiency.md)."""

    executor: Literal["warm", "subprocess"] = Field(
        "warm",
        description="warm: ClientApps fork from a pre-imported process and the SuperNode, "
        "its SuperExec and the ServerApp (reply-poll-interval) poll promptly; subprocess: "
        "Flower's default (one cold flwr-clientapp process per message, 3 s polling).",
    )
    restart: bool = Field(
        True, description="Restart a SuperNode that exits during the run, with back-off."
    )
    restart_max_delay: float = Field(
        60.0, gt=0, le=3600, description="Longest wait (s) between restarts (1 s, doubling)."
    )


# --------------------------------------------------------------------------- federation


class FederationSpec(_Strict):
    """A whole federation: orchestrator, silos, task, strategy, run config, network."""

    name: str = Field(description="Federation name: lowercase letters, digits and '-'.")
    orchestrator: OrchestratorSpec
    silos: list[SiloSpec] = Field(description="At least two silos, uniquely named.")
    task: str = Field("digits", description="Task to run (see the README's Tasks).")
    strategy: str = Field("fedavg", description="Aggregation strategy.")
    run_config: dict[str, bool | int | float | str] = Field(
        default_factory=dict,
        description="Run-config overrides (kebab-case keys of [tool.flwr.app.config]).",
    )
    mlflow_tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI of the orchestrator workspace; needed when silos "
        "run in other workspaces (they look the SuperLink's address up there).",
    )
    network: Network = Field(default_factory=JobNetwork)
    supernode: SuperNodeSpec = Field(default_factory=SuperNodeSpec)
    provision: ProvisionSpec = Field(
        default_factory=ProvisionSpec, description="Settings of `fedsilo provision`."
    )

    #: Directory the spec was loaded from (relative paths in the spec are resolved there).
    base_dir: Path = Field(default_factory=Path.cwd, exclude=True, repr=False)

    @field_validator("name")
    @classmethod
    def _federation_name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(
                f"'{value}' is not a valid federation name; use 1-40 lowercase letters, "
                "digits and '-', starting with a letter (it prefixes AzureML job names)"
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
        fields = RunConfig.model_fields
        typed: dict[str, Any] = {}
        for key, item in value.items():
            field = fields.get(key.replace("-", "_"))
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
    def _federation(self) -> FederationSpec:
        cfg = self.resolved_run_config()
        n = len(self.silos)
        for key in ("min-available-nodes", "min-train-nodes", "min-evaluate-nodes"):
            wanted = cfg.to_flower()[key]
            if wanted > n:
                raise ValueError(
                    f"run_config.{key} = {wanted} exceeds the {n} silos of the federation, "
                    f"which would wait forever; set run_config.{key} to at most {n}"
                )
        if isinstance(self.network, ExistingNetwork):
            names = {s.name for s in self.silos}
            for silo_name in self.network.supernode_auth_keys:
                if silo_name not in names:
                    close = difflib.get_close_matches(silo_name, sorted(names), n=1)
                    hint = f" Did you mean '{close[0]}'?" if close else ""
                    raise ValueError(
                        f"network.supernode_auth_keys names silo '{silo_name}', which is not "
                        f"in silos.{hint} Silos: {', '.join(sorted(names))}"
                    )
        external = [s.name for s in self.silos if s.kind == "external"]
        if external and (not isinstance(self.network, ExistingNetwork) or self.network.insecure):
            raise ValueError(
                f"external silos ({', '.join(external)}) dial out to the SuperLink over the "
                "internet: set network mode 'existing' with its public address, TLS "
                "(root_certificates) and supernode_auth_keys, not insecure"
            )
        if isinstance(self.network, JobNetwork) and not self.mlflow_tracking_uri:
            orch = self.orchestrator
            home = (orch.subscription_id, orch.resource_group, orch.workspace)
            foreign = [
                s.name
                for s in self.silos
                if s.workspace_scope(orch) != home and s.kind != "external"
            ]
            if foreign:
                raise ValueError(
                    f"silos {', '.join(foreign)} run in other workspaces and find the SuperLink "
                    "through the orchestrator workspace's MLflow; set mlflow_tracking_uri (see "
                    "`az ml workspace show --query mlflow_tracking_uri`) or use network mode "
                    "'existing'"
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


def load_spec(path: str | Path) -> FederationSpec:
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
    return parse_spec(text, base_dir=source.resolve().parent, source=str(source))


def parse_spec(
    text: str, *, base_dir: Path | None = None, source: str = "<spec>"
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
            f"{source}: a federation spec is a YAML mapping with name, orchestrator, silos, ...; "
            f"got {type(data).__name__}"
        )
    if "base_dir" in data:
        raise SpecError(f"{source}: base_dir: unknown key (paths are relative to the spec file).")
    try:
        return FederationSpec.model_validate({**data, "base_dir": base_dir or Path.cwd()})
    except ValidationError as exc:
        raise SpecError(explain(exc, source)) from None


def _location(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("azureml-job", "existing"):  # discriminated-union tag
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(spec)"


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model whose field the location's last part is (for key suggestions)."""
    model: Any = FederationSpec
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if part == "azureml-job":
            model = JobNetwork
            continue
        if part == "existing":
            model = ExistingNetwork
            continue
        field = model.model_fields.get(part) if isinstance(model, type) else None
        if field is None:
            return None
        annotation = field.annotation
        for candidate in (
            OrchestratorSpec, EnvironmentSpec, SiloSpec, SiloData, JobNetwork, ExistingNetwork,
            ProvisionSpec, AttachedCompute,
        ):  # fmt: skip
            if annotation is candidate or candidate in getattr(annotation, "__args__", ()):
                model = candidate
                break
        else:
            return None
    return model if isinstance(model, type) else None


def explain(exc: ValidationError, source: str = "<spec>") -> str:
    """One line per error: ``<field path>: <problem>; <fix>``."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        where = _location(loc)
        msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        kind = err["type"]
        if kind == "extra_forbidden":
            model = _model_at(loc)
            known = [k for k in model.model_fields if k != "base_dir"] if model else []
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            allowed = f" Allowed keys here: {', '.join(known)}." if known else ""
            lines.append(f"{where}: unknown key.{hint}{allowed}")
        elif kind == "missing":
            model = _model_at(loc)
            field = model.model_fields.get(str(loc[-1])) if model else None
            about = (
                f" ({field.description.rstrip('.')})"
                if field is not None and field.description
                else ""
            )
            lines.append(f"{where}: required key is missing; add it{about}.")
        elif kind == "union_tag_invalid" or kind == "union_tag_not_found":
            lines.append(
                f"{where}: network.mode must be 'azureml-job' (SuperLink as an AzureML job) or "
                "'existing' (a SuperLink you run, with address)."
            )
        elif kind.endswith("_type") or kind.endswith("_parsing"):
            got = err.get("input")
            lines.append(f"{where}: {msg} (got {got!r}).")
        elif not loc:  # a check across fields: the message names its fields
            lines.append(msg)
        else:
            lines.append(f"{where}: {msg}")
    body = "\n  - ".join(line.replace("\n", "\n      ") for line in lines)
    return f"Invalid federation spec {source}:\n  - {body}"
