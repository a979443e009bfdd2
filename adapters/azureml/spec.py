"""The AzureML part of the federation spec: the workspace and compute of the orchestrator,
each silo's compute, workspace, identity and data, the network the SuperLink is reached on,
and what ``fedsilo provision`` creates. It extends the backend-neutral spec
(:mod:`adapters.federation.spec`: silos, task, strategy, run config, SuperNode settings).

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
``silos[1].compute``) and the fix.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator

from adapters.federation import spec as federation
from adapters.federation.spec import SpecError, StrictModel, SuperNodeSpec

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
    "parse_spec",
]

#: AzureML's curated CPU base image (Ubuntu, conda); the conda file adds Python and the app.
DEFAULT_IMAGE = "mcr.microsoft.com/azureml/openmpi5.0-ubuntu24.04:latest"

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


# --------------------------------------------------------------------------- secrets


class KeyVaultSecret(StrictModel):
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


class EnvironmentSpec(StrictModel):
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


class OrchestratorSpec(StrictModel):
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


class SiloData(StrictModel):
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


class AttachedCompute(StrictModel):
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


class ProvisionSpec(StrictModel):
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


class SiloSpec(federation.SiloSpec):
    """One data silo: a SuperNode job on the silo's own compute (``kind: azureml``), on a
    Kubernetes cluster attached to the workspace (``attached``), or a SuperNode its owner runs
    outside Azure (``external``, see ``fedsilo silo-kit``)."""

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

    @property
    def external(self) -> bool:
        """True for ``kind: external``: the silo's owner runs its SuperNode."""
        return self.kind == "external"

    def workspace_scope(self, orchestrator: OrchestratorSpec) -> tuple[str, str, str]:
        """``(subscription_id, resource_group, workspace)`` of this silo's jobs."""
        return (
            self.subscription_id or orchestrator.subscription_id,
            self.resource_group or orchestrator.resource_group,
            self.workspace or orchestrator.workspace,
        )


# --------------------------------------------------------------------------- network


class JobNetwork(StrictModel):
    """The SuperLink runs as an AzureML job on the orchestrator compute and publishes its
    ``<private ip>:<port>`` as an MLflow tag on its job's run; the silo jobs and the ServerApp
    submission read it from there. Silo computes must reach that address (same or peered
    virtual network); traffic is unencrypted inside it (TLS needs a fixed name: use
    ``existing``)."""

    mode: Literal["azureml-job"] = Field(
        "azureml-job", description="the SuperLink runs as an AzureML job"
    )
    port: int = Field(9091, ge=1024, le=65535, description="SuperLink port (Fleet + Control).")
    discovery_timeout: float = Field(
        1800.0, gt=0, description="Seconds a silo job waits for the SuperLink's address."
    )


class ExistingNetwork(StrictModel):
    """A SuperLink you already run (VM, AKS, Container Apps) at a fixed address."""

    mode: Literal["existing"] = Field("existing", description="a SuperLink you run, with address")
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


# --------------------------------------------------------------------------- federation


class FederationSpec(federation.FederationSpec):
    """A federation on AzureML: the neutral spec plus orchestrator, silo computes, network
    and provisioning settings."""

    orchestrator: OrchestratorSpec
    silos: list[SiloSpec] = Field(description="At least two silos, uniquely named.")
    network: Network = Field(default_factory=JobNetwork)
    provision: ProvisionSpec = Field(
        default_factory=ProvisionSpec, description="Settings of `fedsilo provision`."
    )

    @model_validator(mode="after")
    def _azure(self) -> FederationSpec:
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
        external = [s.name for s in self.silos if s.external]
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
                s.name for s in self.silos if s.workspace_scope(orch) != home and not s.external
            ]
            if foreign:
                raise ValueError(
                    f"silos {', '.join(foreign)} run in other workspaces and find the SuperLink "
                    "through the orchestrator workspace's MLflow; set mlflow_tracking_uri (see "
                    "`az ml workspace show --query mlflow_tracking_uri`) or use network mode "
                    "'existing'"
                )
        return self

    def project_dir(self) -> Path | None:
        """``orchestrator.code`` as a directory (None when it names a registered asset)."""
        if self.orchestrator.code_is_asset:
            return None
        return self.resolve_path(self.orchestrator.code)

    def describe(self) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
        """The neutral facts plus network, orchestrator and each silo's workspace, compute
        and data."""
        facts, silos = super().describe()
        orch = self.orchestrator
        facts.update(network=self.network.mode, orchestrator=f"{orch.workspace}/{orch.compute}")
        for silo in self.silos:
            silos[silo.name] = {
                "workspace": "/".join(silo.workspace_scope(orch)[1:]),
                "compute": silo.compute or f"({silo.kind})",
                "data": silo.data.uri if silo.data else "-",
                **silos[silo.name],
            }
        return facts, silos


def load_spec(path: str | Path) -> FederationSpec:
    """Read and validate an AzureML federation spec YAML; raise :class:`SpecError` naming
    each problem."""
    return federation.load_spec(path, FederationSpec)  # type: ignore[return-value]


def parse_spec(
    text: str, *, base_dir: Path | None = None, source: str = "<spec>"
) -> FederationSpec:
    """Validate an AzureML federation spec given as YAML text (see :func:`load_spec`)."""
    return federation.parse_spec(  # type: ignore[return-value]
        text, base_dir=base_dir, source=source, model=FederationSpec
    )
