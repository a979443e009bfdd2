"""A stateful fake of Azure Resource Manager at the azure-core transport layer, for the
provisioning tests (imported by name: unique basename, no package).

Every request the real SDKs send (``azure-ai-ml``'s ``MLClient`` and the ``azure-mgmt-*``
clients, through their real serialisation and azure-core pipelines) is recorded and answered
the way ARM answers: a PUT stores the resource and returns it with ``provisioningState:
Succeeded`` (201 when new, 200 when replaced), so every long-running-operation poller
finishes at once; a GET returns what is stored or 404 ``ResourceNotFound``; a DELETE removes
the resource and everything under it. ``fail`` makes matching requests answer with an ARM
error body (e.g. 409 ``StorageAccountAlreadyTaken``)."""

from __future__ import annotations

import copy
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from azure.core.pipeline.transport import HttpTransport
from azureml_testkit import Recorded, RecordingTransport

TENANT = "72f988bf-0000-0000-0000-000000000000"

_TYPES = {
    "resourcegroups": "Microsoft.Resources/resourceGroups",
    "storageaccounts": "Microsoft.Storage/storageAccounts",
    "containers": "Microsoft.Storage/storageAccounts/blobServices/containers",
    "userassignedidentities": "Microsoft.ManagedIdentity/userAssignedIdentities",
    "vaults": "Microsoft.KeyVault/vaults",
    "workspaces": "Microsoft.MachineLearningServices/workspaces",
    "computes": "Microsoft.MachineLearningServices/workspaces/computes",
    "datastores": "Microsoft.MachineLearningServices/workspaces/datastores",
    "roleassignments": "Microsoft.Authorization/roleAssignments",
}


_ALWAYS_200 = {"storageaccounts"}


@dataclass
class Failure:
    """Answer requests whose method matches and whose path matches ``path`` (regex)."""

    method: str
    path: str
    status: int
    code: str
    message: str


@dataclass
class FakeArm(HttpTransport):
    """Answers ARM requests from an in-memory resource store, recording every request."""

    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    fail: list[Failure] = field(default_factory=list)

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> FakeArm:
        return self

    def __exit__(self, *args: Any) -> None:
        pass

    # ------------------------------------------------------------------ views
    def calls(self, *methods: str) -> list[tuple[str, str]]:
        """``(method, path)`` of the recorded requests (only ``methods`` when given)."""
        return [(r.method, r.path) for r in self.requests if not methods or r.method in methods]

    def puts(self) -> list[Recorded]:
        return [r for r in self.requests if r.method == "PUT"]

    def stored(self, kind: str) -> dict[str, dict[str, Any]]:
        """Stored resources of one ARM type, by path."""
        return {p: r for p, r in self.resources.items() if r.get("type") == _TYPES[kind]}

    # ------------------------------------------------------------------ transport
    def send(self, request: Any, **kwargs: Any) -> Any:
        raw = request.content if hasattr(request, "content") else request.data
        if isinstance(raw, bytes | bytearray):
            raw = raw.decode()
        body = json.loads(raw) if isinstance(raw, str) and raw else raw
        record = Recorded(request.method, request.url, dict(request.headers), body)
        self.requests.append(record)
        status, payload = self._answer(record)
        return RecordingTransport._response(request, status, payload)

    def _answer(self, rec: Recorded) -> tuple[int, Any]:
        path = rec.path.rstrip("/")
        key = path.lower()
        for failure in self.fail:
            if failure.method == rec.method and re.search(failure.path, path):
                return failure.status, {"error": {"code": failure.code, "message": failure.message}}
        if rec.method == "PUT":
            return self._put(path, rec.body or {})
        if rec.method == "PATCH":
            if key not in self.resources:
                return _not_found(path)
            merged = self.resources[key]
            for name, value in (rec.body or {}).items():
                if isinstance(value, dict) and isinstance(merged.get(name), dict):
                    merged[name].update(value)
                else:
                    merged[name] = value
            return 200, copy.deepcopy(merged)
        if rec.method == "HEAD":
            return (204 if key in self.resources else 404), None
        if rec.method == "GET":
            if key in self.resources:
                return 200, copy.deepcopy(self.resources[key])
            if re.fullmatch(r"/subscriptions/[^/]+", key):
                sub = path.split("/")[2]
                return 200, {"id": path, "subscriptionId": sub, "tenantId": TENANT}
            if key.endswith("/operations") or key.endswith("/providers"):
                return 200, {"value": []}
            return _not_found(path)
        if rec.method == "DELETE":
            if key not in self.resources:
                return 204, None
            for stored in [k for k in self.resources if k == key or k.startswith(key + "/")]:
                del self.resources[stored]
            return 200, None
        if rec.method == "POST" and key.endswith("/checknameavailability"):
            return 200, {"nameAvailable": True}
        return 404, {"error": {"code": "NotFound", "message": f"no fake for {rec.method} {path}"}}

    def _put(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        key = path.lower()
        segments = path.strip("/").split("/")
        kind = segments[-2].lower()
        resource = copy.deepcopy(body)
        resource.update(id=path, name=segments[-1], type=_TYPES.get(kind, segments[-2]))
        props = resource.setdefault("properties", {})
        props["provisioningState"] = "Succeeded"
        if kind == "userassignedidentities":
            props.update(
                principalId=str(uuid.uuid5(uuid.NAMESPACE_URL, "principal:" + key)),
                clientId=str(uuid.uuid5(uuid.NAMESPACE_URL, "client:" + key)),
                tenantId=TENANT,
            )
        if kind == "storageaccounts":
            props["primaryEndpoints"] = {"blob": f"https://{segments[-1]}.blob.core.windows.net/"}
        if kind == "roleassignments":
            props["scope"] = path.split("/providers/Microsoft.Authorization/")[0]
        if kind == "resourcegroups":
            resource.pop("properties")
            resource["properties"] = {"provisioningState": "Succeeded"}
        # ARM's documented codes: storage account creation answers 200 (or 202), the rest
        # 201 Created for a new resource and 200 OK for a replaced one.
        status = 200 if key in self.resources or kind in _ALWAYS_200 else 201
        self.resources[key] = resource
        return status, copy.deepcopy(resource)


def _not_found(path: str) -> tuple[int, Any]:
    return 404, {
        "error": {"code": "ResourceNotFound", "message": f"The resource '{path}' was not found."}
    }
