"""Provision a federation's Azure infrastructure from its spec, in one command.

:func:`build_plan` turns a :class:`~adapters.azureml.spec.FederationSpec` into an ordered
list of :class:`Step` (pure: no Azure call, what ``--dry-run`` prints). :class:`Provisioner`
applies it with the real management SDKs:

=====================  ============================================================
resource group         ``azure-mgmt-resource`` (``resource_groups``)
workspace storage,     ``azure-mgmt-storage`` (``storage_accounts``, ``blob_containers``)
silo storage + box
key vault, workspace   ``azure-mgmt-resource`` generic resources (``*_by_id``): azure-ai-ml's
                       ``workspaces.begin_create`` runs an ARM template deployment through a
                       client of its own (no pipeline options, 5 s polling) that also
                       creates untagged dependencies with random names
silo identity          ``azure-mgmt-msi`` (``user_assigned_identities``)
role assignment        ``azure-mgmt-authorization`` (``role_assignments``)
compute, datastore     ``azure-ai-ml`` (``MLClient.compute`` / ``MLClient.datastores``)
=====================  ============================================================

Every step first GETs its resource and PUTs only when it is missing, so a second run of the
same spec changes nothing. Everything created is tagged ``fedsilo-federation=<name>``
(role assignments cannot carry tags: their names are ``uuid5(scope, principal, role)``, so a
rerun finds them); :meth:`Provisioner.teardown` deletes, in reverse order, only what carries
that tag. Each silo's identity gets *Storage Blob Data Contributor* on its own storage
account (scope: that account's resource id) and nothing else.

Azure errors become :class:`ProvisionError` naming the resource and the fix (quota, a storage
account name taken elsewhere, a missing permission, an unregistered provider, ...).
All clients take ``client_kwargs`` (e.g. ``transport=``) down to azure-core.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from azure.core.credentials import TokenCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
)

from adapters.azureml.spec import FederationSpec, SiloSpec, parse_spec

__all__ = [
    "FEDERATION_TAG",
    "SANDBOX_REGIONS",
    "STORAGE_BLOB_DATA_CONTRIBUTOR",
    "Outcome",
    "ProvisionError",
    "Provisioner",
    "Step",
    "build_plan",
    "format_plan",
    "role_assignment_name",
    "sandbox_spec",
    "silo_storage_account",
]

logger = logging.getLogger(__name__)

#: Tag on everything ``provision`` creates; ``teardown`` deletes only what carries it.
FEDERATION_TAG = "fedsilo-federation"
#: Built-in role: read, write and delete blobs and containers (data plane only).
STORAGE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
#: Regions of the ``--sandbox`` preset: the orchestrator takes the first, silo i the (i+1)-th.
SANDBOX_REGIONS = (
    "westeurope", "northeurope", "francecentral", "swedencentral", "uksouth",
    "germanywestcentral", "switzerlandnorth", "norwayeast", "eastus", "westus2",
)  # fmt: skip
WORKSPACE_API = "2024-10-01"
KEY_VAULT_API = "2023-07-01"
SUBSCRIPTION_API = "2022-12-01"
_ROLE_NAMESPACE = uuid.UUID("8d2b4a6e-5f0c-4f63-9d6e-0c1f3b7a2e91")

Kind = Literal[
    "resource-group", "storage-account", "blob-container", "key-vault", "workspace",
    "identity", "compute", "attached-compute", "datastore", "role-assignment",
]  # fmt: skip
Outcome = Literal["created", "exists", "deleted", "absent", "kept"]


# --------------------------------------------------------------------------- errors


class ProvisionError(RuntimeError):
    """An Azure request of one step failed; the message names the resource and the fix."""

    def __init__(self, message: str, step: Step | None = None, code: str = "") -> None:
        super().__init__(message)
        self.step = step
        self.code = code


def _fix(code: str, step: Step, spec: FederationSpec) -> str:
    """What to do about ARM error ``code`` on ``step``."""
    region = step.location or spec.provision.location
    size = spec.provision.vm_size
    if code in ("StorageAccountAlreadyTaken", "AccountAlreadyTaken", "StorageAccountAlreadyExists"):
        where = f"silos[{step.silo_index}].storage_account" if step.silo else "the spec"
        return (
            f"storage account names are global across Azure and '{step.name}' belongs to "
            f"someone else; set {where} to another 3-24 character name (lowercase letters "
            "and digits)"
        )
    if "Quota" in code or code in ("OperationNotAllowed", "InsufficientQuota"):
        return (
            f"the subscription's vCPU quota for {size} in {region} is too small; request more "
            "(Portal: Subscriptions > Usage + quotas, or `az ml compute list-usage`), or "
            "choose a smaller provision.vm_size / fewer provision.max_nodes / another region"
        )
    if code in ("AuthorizationFailed", "LinkedAuthorizationFailed", "Forbidden"):
        if step.kind == "role-assignment":
            return (
                "creating role assignments needs 'User Access Administrator' or 'Role Based "
                "Access Control Administrator' on the storage account (or its resource "
                "group); ask an owner of the subscription to grant it, then run provision "
                "again"
            )
        return (
            "the signed-in identity may not create this resource; it needs 'Contributor' on "
            f"resource group '{spec.orchestrator.resource_group}' (or the subscription); "
            "check with `az role assignment list --assignee <you> --all`"
        )
    if code == "MissingSubscriptionRegistration":
        namespace = step.resource_id.split("/providers/")[-1].split("/")[0]
        return f"register the resource provider: `az provider register --namespace {namespace}`"
    if code in ("VaultAlreadyExists", "ConflictError") and step.kind == "key-vault":
        return (
            f"a key vault named '{step.name}' exists (possibly soft-deleted after a "
            f"teardown); purge it with `az keyvault purge --name {step.name}`"
        )
    if code in (
        "LocationNotAvailableForResourceType", "InvalidResourceLocation",
        "NoRegisteredProviderFound", "SkuNotAvailable",
    ):  # fmt: skip
        field_name = f"silos[{step.silo_index}].region" if step.silo else "provision.location"
        return f"'{region}' does not offer this resource (or SKU); set {field_name} to another one"
    if code in ("ResourceGroupNotFound", "ResourceNotFound", "ParentResourceNotFound"):
        return "a resource this one depends on is missing; run `fedsilo provision` for the spec"
    if code == "InvalidAuthenticationToken" or code == "ExpiredAuthenticationToken":
        return "sign in again with `az login`"
    return "see Azure's message; fix the spec or the subscription, then run provision again"


def _error_code(exc: HttpResponseError) -> str:
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    if code:
        return str(code)
    match = re.search(r"\(([A-Za-z]+)\)", str(exc))
    return match.group(1) if match else str(exc.status_code or "")


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else text


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Step:
    """One resource (or role assignment) of the plan."""

    kind: Kind
    name: str
    resource_id: str
    location: str | None = None
    silo: str | None = None
    silo_index: int | None = None
    #: Plan details: what the resource is created with (printed by ``--dry-run``).
    details: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def describe(self) -> str:
        """The step as one line of the plan (what ``--dry-run`` prints)."""
        if self.kind == "role-assignment":
            return (
                f"role assignment  {self.name} for {self.details['principal']}"
                f"\n      scope: {self.details['scope']}"
            )
        where = f" in {self.location}" if self.location else ""
        silo = f" [silo {self.silo}]" if self.silo else ""
        shown = {k: v for k, v in self.details.items() if not k.endswith("_id")}
        extra = ", ".join(f"{k}: {v}" for k, v in shown.items() if v not in (None, ""))
        return f"{self.kind:<16} {self.name}{where}{silo}" + (f"\n      {extra}" if extra else "")


def format_plan(steps: list[Step]) -> str:
    """The plan as numbered lines: every resource and every role assignment."""
    width = len(str(len(steps)))
    return "\n".join(f"{i:>{width}}. {step.describe()}" for i, step in enumerate(steps, 1))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _hash(*parts: str, n: int = 8) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:n]


def silo_storage_account(spec: FederationSpec, silo: SiloSpec) -> tuple[str, str]:
    """``(account, container)`` of a silo's data: from its Blob URL, its ``storage_account``,
    or derived (``st<silo><hash>``, globally unique with high probability)."""
    container = "data"
    account = silo.storage_account
    if silo.data is not None and silo.data.url and silo.data.url.startswith("https://"):
        parts = urlsplit(silo.data.url)
        account = account or (parts.hostname or "").split(".")[0]
        container = parts.path.strip("/").split("/")[0] or container
    if account is None:
        sub, rg, _ = silo.workspace_scope(spec.orchestrator)
        account = f"st{_slug(silo.name)[:14]}{_hash(sub, rg, spec.name, silo.name)}"
    return account, container


def _datastore_name(silo: SiloSpec) -> str | None:
    if silo.data is None:
        return silo.name.replace("-", "_")
    return silo.data.datastore  # None when the silo reads a URL directly


def role_assignment_name(scope: str, principal_id: str, role_definition_id: str) -> str:
    """Deterministic role assignment name (a GUID): rerunning finds the same assignment."""
    key = f"{scope.lower()}|{principal_id.lower()}|{role_definition_id.lower()}"
    return str(uuid.uuid5(_ROLE_NAMESPACE, key))


def _rg_id(sub: str, rg: str) -> str:
    return f"/subscriptions/{sub}/resourceGroups/{rg}"


def _ws_id(sub: str, rg: str, ws: str) -> str:
    return f"{_rg_id(sub, rg)}/providers/Microsoft.MachineLearningServices/workspaces/{ws}"


def role_definition_id(sub: str, role: str = STORAGE_BLOB_DATA_CONTRIBUTOR) -> str:
    """Full id of a built-in role definition in subscription ``sub``."""
    return f"/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/{role}"


def build_plan(spec: FederationSpec) -> list[Step]:
    """Every resource and role assignment ``provision`` makes for ``spec``, in order."""
    orch, prov = spec.orchestrator, spec.provision
    sub, rg, ws = orch.subscription_id, orch.resource_group, orch.workspace
    loc = prov.location
    base = f"{_slug(spec.name)[:11]}{_hash(sub, rg, spec.name, n=6)}"
    ws_storage = f"stws{base}"[:24]
    vault = f"kv-{_slug(spec.name)[:12]}-{_hash(sub, rg, spec.name, 'kv', n=6)}"
    storage_props = {
        "sku": prov.storage_sku,
        "public network": "on" if prov.public_network_access else "off",
    }
    steps = [
        Step("resource-group", rg, _rg_id(sub, rg), loc),
        Step(
            "storage-account", ws_storage,
            f"{_rg_id(sub, rg)}/providers/Microsoft.Storage/storageAccounts/{ws_storage}", loc,
            details={"purpose": "workspace default storage", **storage_props},
        ),
        Step(
            "key-vault", vault, f"{_rg_id(sub, rg)}/providers/Microsoft.KeyVault/vaults/{vault}",
            loc, details={"purpose": "workspace secrets", "authorization": "RBAC"},
        ),
        Step(
            "workspace", ws, _ws_id(sub, rg, ws), loc,
            details={"storage": ws_storage, "key vault": vault, "identity": "system-assigned"},
        ),
        Step(
            "compute", orch.compute, f"{_ws_id(sub, rg, ws)}/computes/{orch.compute}", loc,
            details={"purpose": "SuperLink + ServerApp", "size": prov.vm_size,
                     "nodes": f"0-{prov.max_nodes}"},
        ),
    ]  # fmt: skip
    roles = []
    for index, silo in enumerate(spec.silos):
        if silo.kind == "external":
            continue  # runs outside Azure: `fedsilo silo-kit` writes what its owner runs
        s_sub, s_rg, s_ws = silo.workspace_scope(orch)
        region = silo.region or loc
        account, container = silo_storage_account(spec, silo)
        account_id = f"{_rg_id(s_sub, s_rg)}/providers/Microsoft.Storage/storageAccounts/{account}"
        identity = f"id-{spec.name}-{silo.name}"[:128]
        identity_id = (
            f"{_rg_id(s_sub, s_rg)}/providers/Microsoft.ManagedIdentity/"
            f"userAssignedIdentities/{identity}"
        )
        common = {"silo": silo.name, "silo_index": index}
        steps.append(Step(
            "storage-account", account, account_id, region,
            details={"purpose": f"data of silo {silo.name}", **storage_props,
                     "shared keys": "off"}, **common,
        ))  # fmt: skip
        steps.append(Step(
            "blob-container", container,
            f"{account_id}/blobServices/default/containers/{container}", region,
            details={"public access": "none"}, **common,
        ))  # fmt: skip
        steps.append(Step(
            "identity", identity, identity_id, region,
            details={"type": "user-assigned"}, **common,
        ))  # fmt: skip
        assert silo.compute is not None  # checked by the spec for non-external silos
        compute_id = f"{_ws_id(s_sub, s_rg, s_ws)}/computes/{silo.compute}"
        if silo.kind == "attached":
            assert silo.attach is not None
            steps.append(Step(
                "attached-compute", silo.compute, compute_id, region,
                details={"cluster": silo.attach.resource_id, "namespace": silo.attach.namespace,
                         "runs as": identity, "identity_id": identity_id}, **common,
            ))  # fmt: skip
        else:
            steps.append(Step(
                "compute", silo.compute, compute_id, region,
                details={"size": prov.vm_size, "nodes": f"0-{prov.max_nodes}",
                         "runs as": identity, "identity_id": identity_id}, **common,
            ))  # fmt: skip
        datastore = _datastore_name(silo)
        if datastore is not None:
            steps.append(Step(
                "datastore", datastore, f"{_ws_id(s_sub, s_rg, s_ws)}/datastores/{datastore}",
                details={"account": account, "container": container,
                         "credentials": "identity-based (none stored)"}, **common,
            ))  # fmt: skip
        roles.append(Step(
            "role-assignment", "Storage Blob Data Contributor",
            f"{account_id}/providers/Microsoft.Authorization/roleAssignments/"
            f"<uuid5(scope, principal of {identity}, role)>",
            details={"scope": account_id, "principal": f"principal of {identity}",
                     "identity_id": identity_id,
                     "role_definition_id": role_definition_id(s_sub)}, **common,
        ))  # fmt: skip
    return steps + roles


# --------------------------------------------------------------------------- sandbox


def sandbox_spec(
    num_silos: int,
    subscription_id: str,
    *,
    name: str = "fedsilo-sandbox",
    regions: tuple[str, ...] = SANDBOX_REGIONS,
    task: str = "digits",
) -> FederationSpec:
    """The ``--sandbox N`` preset: an orchestrator and ``num_silos`` AzureML silos, each in
    its own region (``regions[0]`` for the orchestrator, ``regions[i + 1]`` for silo i)."""
    if not 2 <= num_silos < len(regions):
        raise ValueError(
            f"--sandbox {num_silos}: a sandbox has 2 to {len(regions) - 1} silos (one region "
            "each); write a spec for more"
        )
    silos = "\n".join(
        f"  - {{name: silo-{i}, compute: cpu-silo-{i}, region: {regions[i]}, "
        f"data: {{datastore: silo_{i}, path: ''}}}}"
        for i in range(1, num_silos + 1)
    )
    text = (
        f"name: {name}\n"
        "orchestrator:\n"
        f"  subscription_id: '{subscription_id}'\n"
        f"  resource_group: rg-{name}\n"
        f"  workspace: mlw-{name}\n"
        "  compute: cpu-orchestrator\n"
        f"silos:\n{silos}\n"
        f"task: {task}\n"
        f"run_config: {{sampling.min-available-nodes: {num_silos}}}\n"
        f"provision: {{location: {regions[0]}}}\n"
    )
    return parse_spec(text, source="--sandbox")


# --------------------------------------------------------------------------- apply


@dataclass
class Provisioner:
    """Apply (or tear down) a plan with the real Azure SDKs.

    ``credential`` defaults to ``DefaultAzureCredential``; ``client_kwargs`` (e.g.
    ``transport=``) reach every client's azure-core pipeline.
    """

    spec: FederationSpec
    credential: TokenCredential | None = None
    client_kwargs: dict[str, Any] = field(default_factory=dict)
    _clients: dict[Any, Any] = field(default_factory=dict, repr=False)
    _principals: dict[str, str] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ clients
    def _credential(self) -> TokenCredential:
        if self.credential is None:
            from adapters.azureml.client import default_credential

            self.credential = default_credential()
        return self.credential

    def _client(self, kind: str, subscription: str) -> Any:
        key = (kind, subscription)
        if key not in self._clients:
            cred, kw = self._credential(), self.client_kwargs
            if kind == "resource":
                from azure.mgmt.resource.resources import ResourceManagementClient

                self._clients[key] = ResourceManagementClient(cred, subscription, **kw)
            elif kind == "storage":
                from azure.mgmt.storage import StorageManagementClient

                self._clients[key] = StorageManagementClient(cred, subscription, **kw)
            elif kind == "msi":
                from azure.mgmt.msi import ManagedServiceIdentityClient

                self._clients[key] = ManagedServiceIdentityClient(cred, subscription, **kw)
            elif kind == "authorization":
                from azure.mgmt.authorization import AuthorizationManagementClient

                self._clients[key] = AuthorizationManagementClient(cred, subscription, **kw)
        return self._clients[key]

    def _ml(self, step: Step) -> Any:
        sub, rg, ws = _parse_ws(step.resource_id)
        key = ("ml", sub, rg, ws)
        if key not in self._clients:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                from azure.ai.ml import MLClient
            kw = {"enable_telemetry": False, "show_progress": False, **self.client_kwargs}
            self._clients[key] = MLClient(self._credential(), sub, rg, ws, **kw)
        return self._clients[key]

    @property
    def tags(self) -> dict[str, str]:
        return {FEDERATION_TAG: self.spec.name}

    # ------------------------------------------------------------------ public
    def apply(
        self,
        plan: list[Step] | None = None,
        on_step: Callable[[Step, Outcome], None] | None = None,
    ) -> list[tuple[Step, Outcome]]:
        """Create every missing resource of ``plan`` (default: :func:`build_plan`)."""
        done = []
        for step in build_plan(self.spec) if plan is None else plan:
            with self._azure(step):
                outcome: Outcome = "exists" if self._get(step) is not None else "created"
                if outcome == "created":
                    self._create(step)
            logger.info("%s %s: %s", step.kind, step.name, outcome)
            done.append((step, outcome))
            if on_step is not None:
                on_step(step, outcome)
        return done

    def teardown(
        self,
        plan: list[Step] | None = None,
        on_step: Callable[[Step, Outcome], None] | None = None,
    ) -> list[tuple[Step, Outcome]]:
        """Delete, in reverse order, what ``apply`` created (only resources tagged
        ``fedsilo-federation=<name>``; role assignments by their deterministic names)."""
        done = []
        for step in reversed(build_plan(self.spec) if plan is None else plan):
            with self._azure(step):
                found = self._get(step)
                if found is None:
                    outcome: Outcome = "absent"
                elif not self._owned(step, found):
                    outcome = "kept"  # not ours: never delete what provision did not create
                else:
                    self._delete(step)
                    outcome = "deleted"
            logger.info("%s %s: %s", step.kind, step.name, outcome)
            done.append((step, outcome))
            if on_step is not None:
                on_step(step, outcome)
        return done

    def _owned(self, step: Step, found: Any) -> bool:
        """Did provision create it? Tagged resources by their tag; a container by its
        account's; a role assignment by its deterministic name (found = ours)."""
        if step.kind == "role-assignment":
            return True
        if step.kind == "blob-container":
            account = step.resource_id.split("/blobServices/")[0]
            parent = Step("storage-account", account.rsplit("/", 1)[-1], account)
            found = self._get(parent)
            if found is None:
                return False
        return _tags(found).get(FEDERATION_TAG) == self.spec.name

    # ------------------------------------------------------------------ errors
    def _azure(self, step: Step) -> Any:
        provisioner = self

        class _Guard:
            def __enter__(self) -> None:
                return None

            def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
                if exc is None or isinstance(exc, ProvisionError):
                    return False
                what = f"{step.kind} '{step.name}' ({step.resource_id})"
                if isinstance(exc, ClientAuthenticationError):
                    from adapters.azureml.client import NO_CREDENTIALS_HINT

                    raise ProvisionError(
                        f"{what}: Azure rejected the credentials ({_first_line(str(exc))}). "
                        f"{NO_CREDENTIALS_HINT}", step, "ClientAuthenticationError",
                    ) from None  # fmt: skip
                if isinstance(exc, HttpResponseError):
                    code = _error_code(exc)
                    message = _first_line(getattr(exc, "message", None) or str(exc))
                    fix = _fix(code, step, provisioner.spec)
                    raise ProvisionError(
                        f"{what}: Azure answered HTTP {exc.status_code} {code}: {message}\n"
                        f"  fix: {fix}", step, code,
                    ) from None  # fmt: skip
                if isinstance(exc, ServiceRequestError):
                    raise ProvisionError(
                        f"{what}: cannot reach Azure ({_first_line(str(exc))}); check the "
                        "network / proxy", step, "ServiceRequestError",
                    ) from None  # fmt: skip
                return False

        return _Guard()

    # ------------------------------------------------------------------ per kind
    def _sub(self, step: Step) -> str:
        return step.resource_id.split("/")[2]

    def _rg(self, step: Step) -> str:
        return step.resource_id.split("/")[4]

    def _get(self, step: Step) -> Any | None:
        """The resource, or None when it does not exist."""
        sub, kind = self._sub(step), step.kind
        try:
            if kind == "resource-group":
                return self._client("resource", sub).resource_groups.get(step.name)
            if kind == "storage-account":
                return self._client("storage", sub).storage_accounts.get_properties(
                    self._rg(step), step.name
                )
            if kind == "blob-container":
                account = step.resource_id.split("/storageAccounts/")[1].split("/")[0]
                return self._client("storage", sub).blob_containers.get(
                    self._rg(step), account, step.name
                )
            if kind == "key-vault":
                return self._client("resource", sub).resources.get_by_id(
                    step.resource_id, api_version=KEY_VAULT_API
                )
            if kind == "workspace":
                return self._client("resource", sub).resources.get_by_id(
                    step.resource_id, api_version=WORKSPACE_API
                )
            if kind == "identity":
                found = self._client("msi", sub).user_assigned_identities.get(
                    self._rg(step), step.name
                )
                self._principals[step.resource_id.lower()] = found.principal_id
                return found
            if kind in ("compute", "attached-compute"):
                return self._ml(step).compute.get(step.name)
            if kind == "datastore":
                return self._ml(step).datastores.get(step.name)
            if kind == "role-assignment":
                scope, name = self._assignment(step)
                if name is None:
                    return None
                return self._client("authorization", sub).role_assignments.get(scope, name)
        except ResourceNotFoundError:
            return None
        except HttpResponseError as exc:
            if exc.status_code == 404:
                return None
            raise
        raise ValueError(f"unknown step kind {kind}")

    def _assignment(self, step: Step) -> tuple[str, str | None]:
        scope, identity_id = step.details["scope"], step.details["identity_id"]
        principal = self._principals.get(identity_id.lower())
        if principal is None:  # teardown visits assignments before identities: look it up
            parts = identity_id.split("/")
            try:
                found = self._client("msi", parts[2]).user_assigned_identities.get(
                    parts[4], parts[-1]
                )
            except ResourceNotFoundError:
                return scope, None  # no identity, so no assignment for it
            principal = self._principals[identity_id.lower()] = found.principal_id
        return scope, role_assignment_name(scope, principal, step.details["role_definition_id"])

    def _tenant(self, sub: str) -> str:
        if self.spec.provision.tenant_id:
            return self.spec.provision.tenant_id
        from azure.core.rest import HttpRequest

        request = HttpRequest("GET", f"/subscriptions/{sub}?api-version={SUBSCRIPTION_API}")
        response = self._client("resource", sub).send_request(request)
        response.raise_for_status()
        return response.json()["tenantId"]

    def _create(self, step: Step) -> None:
        sub, rg, kind, prov = self._sub(step), self._rg(step), step.kind, self.spec.provision
        public = "Enabled" if prov.public_network_access else "Disabled"
        if kind == "resource-group":
            self._client("resource", sub).resource_groups.create_or_update(
                step.name, {"location": step.location, "tags": self.tags}
            )
        elif kind == "storage-account":
            silo_data = step.silo is not None
            properties: dict[str, Any] = {
                "minimumTlsVersion": "TLS1_2",
                "allowBlobPublicAccess": False,
                "supportsHttpsTrafficOnly": True,
                "publicNetworkAccess": public,
            }
            if silo_data:  # silo data: Entra ID (the silo's identity) only, no account keys
                properties["allowSharedKeyAccess"] = False
            self._client("storage", sub).storage_accounts.begin_create(
                rg, step.name,
                {"sku": {"name": prov.storage_sku}, "kind": "StorageV2",
                 "location": step.location, "tags": self.tags, "properties": properties},
            ).result()  # fmt: skip
        elif kind == "blob-container":
            account = step.resource_id.split("/storageAccounts/")[1].split("/")[0]
            self._client("storage", sub).blob_containers.create(
                rg, account, step.name, {"properties": {"publicAccess": "None"}}
            )
        elif kind == "key-vault":
            body = {
                "location": step.location,
                "tags": self.tags,
                "properties": {
                    "tenantId": self._tenant(sub),
                    "sku": {"family": "A", "name": "standard"},
                    "enableRbacAuthorization": True,
                    "enableSoftDelete": True,
                    "softDeleteRetentionInDays": 7,
                    "publicNetworkAccess": public,
                },
            }
            self._client("resource", sub).resources.begin_create_or_update_by_id(
                step.resource_id, api_version=KEY_VAULT_API, parameters=body
            ).result()
        elif kind == "workspace":
            plan = {s.name: s for s in build_plan(self.spec) if s.silo is None}
            body = {
                "location": step.location,
                "tags": self.tags,
                "identity": {"type": "SystemAssigned"},
                "sku": {"name": "Basic", "tier": "Basic"},
                "properties": {
                    "friendlyName": step.name,
                    "storageAccount": plan[step.details["storage"]].resource_id,
                    "keyVault": plan[step.details["key vault"]].resource_id,
                    "publicNetworkAccess": public,
                    "v1LegacyMode": False,
                },
            }
            self._client("resource", sub).resources.begin_create_or_update_by_id(
                step.resource_id, api_version=WORKSPACE_API, parameters=body
            ).result()
        elif kind == "identity":
            found = self._client("msi", sub).user_assigned_identities.create_or_update(
                rg, step.name, {"location": step.location, "tags": self.tags}
            )
            self._principals[step.resource_id.lower()] = found.principal_id
        elif kind in ("compute", "attached-compute"):
            self._create_compute(step)
        elif kind == "datastore":
            from azure.ai.ml.entities import AzureBlobDatastore

            self._ml(step).datastores.create_or_update(
                AzureBlobDatastore(
                    name=step.name,
                    account_name=step.details["account"],
                    container_name=step.details["container"],
                    description=f"data of silo {step.silo} (identity-based access)",
                    tags=self.tags,
                )
            )
        elif kind == "role-assignment":
            scope, name = self._assignment(step)
            if name is None:
                raise ProvisionError(
                    f"role assignment on {scope}: the principal of "
                    f"{step.details['identity_id']} is unknown; its identity step must run "
                    "first (run provision without a partial plan)",
                    step,
                )
            principal = self._principals[step.details["identity_id"].lower()]
            try:
                self._client("authorization", sub).role_assignments.create(
                    scope, name,
                    {"properties": {"roleDefinitionId": step.details["role_definition_id"],
                                    "principalId": principal,
                                    "principalType": "ServicePrincipal"}},
                )  # fmt: skip
            except HttpResponseError as exc:
                if _error_code(exc) != "RoleAssignmentExists":
                    raise  # (an equal assignment under another name is as good as ours)

    def _create_compute(self, step: Step) -> None:
        from azure.ai.ml.entities import (
            AmlCompute,
            IdentityConfiguration,
            KubernetesCompute,
            ManagedIdentityConfiguration,
        )

        prov, ml = self.spec.provision, self._ml(step)
        identity = None
        if "identity_id" in step.details:
            identity = IdentityConfiguration(
                type="user_assigned",
                user_assigned_identities=[
                    ManagedIdentityConfiguration(resource_id=step.details["identity_id"])
                ],
            )
        if step.kind == "attached-compute":
            compute = KubernetesCompute(
                name=step.name,
                resource_id=step.details["cluster"],
                namespace=step.details["namespace"],
                identity=identity,
                tags=self.tags,
            )
            ml.compute.begin_attach(compute).result()
            return
        compute = AmlCompute(
            name=step.name,
            size=prov.vm_size,
            min_instances=0,
            max_instances=prov.max_nodes,
            idle_time_before_scale_down=1800,
            location=step.location,
            identity=identity,
            tags=self.tags,
        )
        ml.compute.begin_create_or_update(compute).result()

    def _delete(self, step: Step) -> None:
        sub, rg, kind = self._sub(step), self._rg(step), step.kind
        if kind == "resource-group":
            self._client("resource", sub).resource_groups.begin_delete(step.name).result()
        elif kind == "storage-account":
            self._client("storage", sub).storage_accounts.delete(rg, step.name)
        elif kind == "blob-container":
            account = step.resource_id.split("/storageAccounts/")[1].split("/")[0]
            self._client("storage", sub).blob_containers.delete(rg, account, step.name)
        elif kind in ("key-vault", "workspace"):
            api = KEY_VAULT_API if kind == "key-vault" else WORKSPACE_API
            self._client("resource", sub).resources.begin_delete_by_id(
                step.resource_id, api_version=api
            ).result()
        elif kind == "identity":
            self._client("msi", sub).user_assigned_identities.delete(rg, step.name)
        elif kind == "compute":
            self._ml(step).compute.begin_delete(step.name).result()
        elif kind == "attached-compute":
            self._ml(step).compute.begin_delete(step.name, action="Detach").result()
        elif kind == "datastore":
            self._ml(step).datastores.delete(step.name)
        elif kind == "role-assignment":
            scope, name = self._assignment(step)
            self._client("authorization", sub).role_assignments.delete(scope, name)


def _parse_ws(resource_id: str) -> tuple[str, str, str]:
    parts = resource_id.split("/")
    return parts[2], parts[4], parts[8]


def _tags(resource: Any) -> dict[str, str]:
    tags = getattr(resource, "tags", None)
    return dict(tags or {})
