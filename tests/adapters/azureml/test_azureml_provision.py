"""``fedsilo provision`` / ``teardown`` through the real SDKs (``azure-ai-ml``'s ``MLClient``,
``azure-mgmt-resource/-storage/-msi/-authorization``): a fake token credential and a stateful
fake of ARM at the azure-core transport layer (``arm_fake.FakeArm``) stand in for Azure;
request building, serialisation, LRO polling and error mapping are the SDKs' own."""

from __future__ import annotations

import re

import pytest
from arm_fake import Failure, FakeArm
from azureml_testkit import FakeCredential
from typer.testing import CliRunner

from adapters import cli
from adapters.azureml.provision import (
    FEDERATION_TAG,
    SANDBOX_REGIONS,
    STORAGE_BLOB_DATA_CONTRIBUTOR,
    Provisioner,
    ProvisionError,
    build_plan,
    role_assignment_name,
    sandbox_spec,
    silo_storage_account,
)
from adapters.azureml.spec import SpecError, parse_spec

SUB = "11111111-2222-3333-4444-555555555555"
RG = f"/subscriptions/{SUB}/resourceGroups/rg-fedsilo-sandbox"
WS = f"{RG}/providers/Microsoft.MachineLearningServices/workspaces/mlw-fedsilo-sandbox"
ROLE_DEF = f"/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{STORAGE_BLOB_DATA_CONTRIBUTOR}"  # noqa: E501


@pytest.fixture(scope="module")
def spec():
    return sandbox_spec(3, SUB)


@pytest.fixture(scope="module")
def provisioned(spec):
    """One real provisioning run of the 3-silo sandbox against an empty fake ARM."""
    arm = FakeArm()
    outcomes = Provisioner(spec, FakeCredential(), {"transport": arm}).apply()
    return arm, outcomes


def _storage_id(spec, silo_name: str) -> str:
    account, _ = silo_storage_account(spec, spec.silo(silo_name))
    return f"{RG}/providers/Microsoft.Storage/storageAccounts/{account}"


def _expected_puts(spec) -> list[str]:
    ws_storage, vault = [s.name for s in build_plan(spec)[1:3]]
    paths = [
        RG,
        f"{RG}/providers/Microsoft.Storage/storageAccounts/{ws_storage}",
        f"{RG}/providers/Microsoft.KeyVault/vaults/{vault}",
        WS,
        f"{WS}/computes/cpu-orchestrator",
    ]
    for i in (1, 2, 3):
        account = _storage_id(spec, f"silo-{i}")
        paths += [
            account,
            f"{account}/blobServices/default/containers/data",
            f"{RG}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/"
            f"id-fedsilo-sandbox-silo-{i}",
            f"{WS}/computes/cpu-silo-{i}",
            f"{WS}/datastores/silo_{i}",
        ]
    return paths


def test_sandbox_of_3_silos_puts_every_resource_once_in_order(spec, provisioned):
    arm, outcomes = provisioned
    assert {outcome for _, outcome in outcomes} == {"created"}
    puts = arm.puts()
    paths = [p.path for p in puts]
    # The resources in dependency order, then one role assignment per silo.
    assert [p.lower() for p in paths[:20]] == [p.lower() for p in _expected_puts(spec)]
    assert len(paths) == 23
    assert all("/providers/Microsoft.Authorization/roleAssignments/" in p for p in paths[20:])
    # GET before every PUT (idempotency), and every request carries the bearer token to ARM.
    calls = [(r.method, r.path.lower()) for r in arm.requests]
    for put in paths:
        assert calls.index(("GET", put.lower())) < calls.index(("PUT", put.lower()))
    assert all(r.headers["Authorization"] == "Bearer fake-token" for r in arm.requests)
    assert all(r.url.startswith("https://management.azure.com/") for r in arm.requests)

    bodies = {p.path.lower(): p.body for p in puts}
    tag = {FEDERATION_TAG: "fedsilo-sandbox"}
    assert bodies[RG.lower()] == {"location": "westeurope", "tags": tag}
    workspace = bodies[WS.lower()]
    assert workspace["tags"] == tag and workspace["identity"] == {"type": "SystemAssigned"}
    assert workspace["properties"]["storageAccount"].lower() == paths[1].lower()
    assert workspace["properties"]["keyVault"].lower() == paths[2].lower()
    vault = bodies[paths[2].lower()]["properties"]
    assert vault["enableRbacAuthorization"] is True and vault["tenantId"]

    regions = []
    for i in (1, 2, 3):
        account_id = _storage_id(spec, f"silo-{i}")
        account = bodies[account_id.lower()]
        region = account["location"]
        regions.append(region)
        assert account["kind"] == "StorageV2" and account["sku"] == {"name": "Standard_LRS"}
        assert account["properties"]["allowSharedKeyAccess"] is False  # Entra ID only
        assert account["properties"]["allowBlobPublicAccess"] is False
        assert account["tags"] == tag
        identity_id = (
            f"{RG}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/"
            f"id-fedsilo-sandbox-silo-{i}"
        )
        assert bodies[identity_id.lower()] == {"location": region, "tags": tag}
        compute = bodies[f"{WS}/computes/cpu-silo-{i}".lower()]
        assert compute["location"] == region
        assert compute["properties"]["computeType"] == "AmlCompute"
        assert compute["properties"]["properties"]["scaleSettings"]["maxNodeCount"] == 1
        assert compute["identity"]["type"].lower() == "userassigned"
        assert [k.lower() for k in compute["identity"]["userAssignedIdentities"]] == [
            identity_id.lower()
        ]
        assert compute["tags"] == tag
        datastore = bodies[f"{WS}/datastores/silo_{i}".lower()]["properties"]
        assert datastore["datastoreType"] == "AzureBlob"
        assert datastore["accountName"] == account_id.rsplit("/", 1)[-1]
        assert datastore["containerName"] == "data"
        assert datastore["credentials"] == {"credentialsType": "None"}  # identity-based
    # The orchestrator and each silo in a region of its own.
    assert regions == list(SANDBOX_REGIONS[1:4])
    assert len({*regions, "westeurope"}) == 4


def test_each_silo_identity_gets_blob_access_to_its_own_storage_account_only(spec, provisioned):
    arm, _ = provisioned
    identities = {
        r["properties"]["principalId"]: r["name"].removeprefix("id-fedsilo-sandbox-")
        for r in arm.stored("userassignedidentities").values()
    }
    assignments = [p for p in arm.puts() if "/roleAssignments/" in p.path]
    assert len(assignments) == 3
    granted: dict[str, list[str]] = {}
    for put in assignments:
        scope, name = put.path.split("/providers/Microsoft.Authorization/roleAssignments/")
        props = put.body["properties"]
        granted.setdefault(props["principalId"], []).append(scope)
        assert props["roleDefinitionId"] == ROLE_DEF
        assert props["principalType"] == "ServicePrincipal"
        # Deterministic name: uuid5(scope, principal, role) (a rerun finds it).
        assert name == role_assignment_name(scope, props["principalId"], ROLE_DEF)
    assert set(granted) == set(identities)
    for principal, scopes in granted.items():
        assert scopes == [_storage_id(spec, identities[principal])]
    # No assignment anywhere else (resource group, workspace, another silo's account).
    stored = arm.stored("roleassignments").values()
    assert sorted(r["properties"]["scope"] for r in stored) == sorted(
        _storage_id(spec, f"silo-{i}") for i in (1, 2, 3)
    )


def test_a_second_run_with_the_same_spec_changes_nothing(spec, provisioned):
    arm, _ = provisioned
    before_requests, before_state = len(arm.requests), repr(arm.resources)
    outcomes = Provisioner(spec, FakeCredential(), {"transport": arm}).apply()
    assert [o for _, o in outcomes] == ["exists"] * 23
    new = arm.requests[before_requests:]
    assert new and {r.method for r in new} == {"GET"}
    assert repr(arm.resources) == before_state


def test_teardown_deletes_what_provision_created_and_keeps_the_rest(spec):
    arm = FakeArm()
    # A resource group that exists already (not ours): provision uses it, teardown keeps it.
    arm.resources[RG.lower()] = {
        "id": RG, "name": "rg-fedsilo-sandbox", "location": "westeurope",
        "type": "Microsoft.Resources/resourceGroups", "tags": {"owner": "platform-team"},
        "properties": {"provisioningState": "Succeeded"},
    }  # fmt: skip
    Provisioner(spec, FakeCredential(), {"transport": arm}).apply()
    assert len(arm.resources) == 1 + 22
    start = len(arm.requests)
    outcomes = Provisioner(spec, FakeCredential(), {"transport": arm}).teardown()
    by_kind = {(s.kind, o) for s, o in outcomes}
    assert ("resource-group", "kept") in by_kind
    assert [o for s, o in outcomes if s.kind != "resource-group"] == ["deleted"] * 22
    assert list(arm.resources) == [RG.lower()]
    deletes = [r.path for r in arm.requests[start:] if r.method == "DELETE"]
    assert len(deletes) == 22
    assert all("/roleAssignments/" in p for p in deletes[:3])  # access goes first
    # Tearing down again finds nothing to delete.
    again = Provisioner(spec, FakeCredential(), {"transport": arm}).teardown()
    assert {o for s, o in again if s.kind != "resource-group"} == {"absent"}


@pytest.mark.parametrize(
    ("target", "status", "code", "expected"),
    [
        (
            "storageAccounts/{silo2}$", 409, "StorageAccountAlreadyTaken",
            ["storage-account '{silo2}'", "silos[1].storage_account", "another 3-24"],
        ),
        (
            "computes/cpu-silo-1$", 400, "QuotaExceeded",
            ["compute 'cpu-silo-1'", "vCPU quota for Standard_DS3_v2 in northeurope",
             "provision.vm_size"],
        ),
        (
            "roleAssignments/", 403, "AuthorizationFailed",
            ["role-assignment 'Storage Blob Data Contributor'", "User Access Administrator"],
        ),
    ],
)  # fmt: skip
def test_azure_errors_name_the_resource_and_the_fix(spec, target, status, code, expected):
    silo2 = silo_storage_account(spec, spec.silo("silo-2"))[0]
    target = target.format(silo2=silo2)
    arm = FakeArm(fail=[Failure("PUT", target, status, code, f"Azure says {code}.")])
    with pytest.raises(ProvisionError) as info:
        Provisioner(spec, FakeCredential(), {"transport": arm}).apply()
    message = str(info.value)
    assert info.value.code == code
    assert f"HTTP {status} {code}: " in message and f"Azure says {code}." in message
    for phrase in expected:
        assert phrase.format(silo2=silo2) in message, message
    assert info.value.step is not None and info.value.step.resource_id in message
    # It stopped at the failing resource: nothing after it was attempted.
    failed = [r for r in arm.requests if r.method == "PUT" and re.search(target, r.path)]
    assert arm.requests[-1] is failed[-1]


def test_cli_provision_reports_an_azure_error_and_exits_1(spec, tmp_path, monkeypatch):
    arm = FakeArm(fail=[Failure("PUT", "/resourcegroups/", 403, "AuthorizationFailed", "no")])
    monkeypatch.setattr(
        cli, "_provision_kwargs",
        lambda: {"credential": FakeCredential(), "client_kwargs": {"transport": arm}},
    )  # fmt: skip
    path = tmp_path / "sandbox.yaml"
    result = CliRunner().invoke(
        cli.app, ["provision", "--sandbox", "3", "--subscription", SUB, "--write-spec", str(path)]
    )
    assert result.exit_code == 1
    assert "resource-group 'rg-fedsilo-sandbox'" in result.output
    assert "needs 'Contributor' on resource group 'rg-fedsilo-sandbox'" in result.output
    # The written sandbox spec is a valid spec that plans the same resources.
    again = parse_spec(path.read_text())
    assert [s.resource_id for s in build_plan(again)] == [s.resource_id for s in build_plan(spec)]


def test_cli_dry_run_prints_every_resource_and_role_assignment_without_azure(monkeypatch):
    monkeypatch.setattr(cli, "_provision_kwargs", lambda: pytest.fail("dry run called Azure"))
    result = CliRunner().invoke(
        cli.app, ["provision", "--sandbox", "3", "--subscription", SUB, "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    spec = sandbox_spec(3, SUB)
    plan = build_plan(spec)
    assert "(23 steps)" in result.output
    for step in plan:
        if step.kind != "role-assignment":
            assert f"{step.kind:<16} {step.name}" in result.output
    for i in (1, 2, 3):
        assert f"for principal of id-fedsilo-sandbox-silo-{i}" in result.output
        assert f"scope: {_storage_id(spec, f'silo-{i}')}" in result.output
    assert "dry run: nothing was created" in result.output


def test_cli_provision_counts_its_steps_with_time_and_eta(spec, monkeypatch):
    """Not on a terminal (as here, or in CI): one line per step with done/total, the time
    elapsed and an ETA; on a terminal (or with --progress) the same figures in a bar."""
    arm = FakeArm()
    monkeypatch.setattr(
        cli, "_provision_kwargs",
        lambda: {"credential": FakeCredential(), "client_kwargs": {"transport": arm}},
    )  # fmt: skip
    result = CliRunner().invoke(cli.app, ["provision", "--sandbox", "3", "--subscription", SUB])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if re.match(r"provision \d", line)]
    plan = build_plan(spec)
    assert [line.split(",")[0] for line in lines] == [
        f"provision {i}/{len(plan)}" for i in range(1, len(plan) + 1)
    ]
    for line, step in zip(lines, plan, strict=True):
        assert " elapsed, ETA " in line and line.endswith(f": created {step.kind} {step.name}")
    assert "23 created, 0 already there" in result.output


def test_cli_teardown_with_yes(spec, monkeypatch):
    arm = FakeArm()
    Provisioner(spec, FakeCredential(), {"transport": arm}).apply()
    monkeypatch.setattr(
        cli, "_provision_kwargs",
        lambda: {"credential": FakeCredential(), "client_kwargs": {"transport": arm}},
    )  # fmt: skip
    result = CliRunner().invoke(
        cli.app, ["teardown", "--sandbox", "3", "--subscription", SUB, "--yes"]
    )
    assert result.exit_code == 0, result.output
    assert "23 deleted" in result.output
    assert "teardown 23/23, " in result.output
    assert arm.resources == {}


# --------------------------------------------------------------------------- silo kinds

ARC = f"/subscriptions/{SUB}/resourceGroups/rg-b/providers/Microsoft.Kubernetes/connectedClusters/arc-b"  # noqa: E501
MIXED = f"""
name: mixed
orchestrator: {{subscription_id: '{SUB}', resource_group: rg-mixed, workspace: mlw-mixed,
                compute: cpu-orch}}
silos:
  - {{name: bank-a, compute: cpu-bank-a, region: northeurope, storage_account: stbanka}}
  - name: bank-b
    kind: attached
    compute: k8s-bank-b
    attach:
      resource_id: {ARC}
      namespace: fedsilo
  - {{name: bank-c, kind: external}}
network:
  mode: existing
  address: superlink.example.org:9092
  root_certificates: ca.crt
  supernode_auth_keys: {{bank-c: bank-c.key}}
"""


def test_attached_and_external_silos(tmp_path):
    spec = parse_spec(MIXED)
    plan = build_plan(spec)
    assert not [s for s in plan if s.silo == "bank-c"]  # external: nothing in Azure
    arm = FakeArm()
    Provisioner(spec, FakeCredential(), {"transport": arm}).apply(plan)
    ws = (
        f"/subscriptions/{SUB}/resourceGroups/rg-mixed/providers/"
        "Microsoft.MachineLearningServices/workspaces/mlw-mixed"
    )
    attached = arm.resources[f"{ws}/computes/k8s-bank-b".lower()]
    assert attached["properties"]["computeType"] == "Kubernetes"
    assert attached["properties"]["resourceId"].endswith("/connectedClusters/arc-b")
    assert attached["properties"]["properties"]["namespace"] == "fedsilo"
    assert "stbanka" in {r["name"] for r in arm.stored("storageaccounts").values()}
    scopes = {r["properties"]["scope"] for r in arm.stored("roleassignments").values()}
    assert len(scopes) == 2 and all("/storageAccounts/" in s for s in scopes)


@pytest.mark.parametrize(
    ("silos", "network", "message"),
    [
        ("[{name: a, kind: external}, {name: b, compute: c}]", "{mode: azureml-job}",
         "external silos (a) dial out"),
        ("[{name: a, kind: external, compute: c}, {name: b, compute: c}]",
         "{mode: existing, address: 'h:1'}", "drop 'compute' and 'attach'"),
        ("[{name: a}, {name: b, compute: c}]", "{mode: azureml-job}", "needs 'compute'"),
        ("[{name: a, kind: attached, compute: k}, {name: b, compute: c}]", "{mode: azureml-job}",
         "kind: attached needs it"),
        ("[{name: a, compute: c, region: 'West Europe'}, {name: b, compute: c}]",
         "{mode: azureml-job}", "silos[0].region: 'West Europe' is not an Azure region"),
        ("[{name: a, compute: c, storage_account: St-A}, {name: b, compute: c}]",
         "{mode: azureml-job}", "is not a storage account name"),
    ],
)  # fmt: skip
def test_silo_kind_validation(silos, network, message):
    text = (
        "name: f\norchestrator: {subscription_id: s, resource_group: r, workspace: w, "
        f"compute: c}}\nsilos: {silos}\nnetwork: {network}\n"
    )
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    assert message in str(info.value)


def test_sandbox_size_is_checked():
    with pytest.raises(ValueError, match="a sandbox has 2 to 9 silos"):
        sandbox_spec(1, SUB)


def test_the_mixed_example_plans_all_kinds_and_submits_no_job_for_the_external_silo():
    from azureml_testkit import REPO_ROOT

    from adapters.azureml.jobs import build_jobs
    from adapters.azureml.spec import load_spec

    spec = load_spec(REPO_ROOT / "examples" / "provision-mixed.yaml")
    assert [s.kind for s in spec.silos] == ["azureml", "attached", "external"]
    kinds = [(s.kind, s.silo) for s in build_plan(spec) if s.silo]
    assert ("compute", "hospital-a") in kinds and ("attached-compute", "hospital-b") in kinds
    assert not [k for k in kinds if k[1] == "clinic-c"]
    jobs = build_jobs(spec, "20260101-000000-beef")
    assert sorted(jobs.silos) == ["hospital-a", "hospital-b"]  # clinic-c runs its silo kit
    assert jobs.silos["hospital-b"].compute == "k8s-hospital-b"
