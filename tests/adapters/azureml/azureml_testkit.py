"""Helpers for the AzureML adapter tests (imported by name: no package, unique basename):
constants, a spec template, a fake token credential and an azure-core transport that records
every request the real SDK makes and answers with canned JSON (so a real ``MLClient`` runs end
to end without Azure)."""

from __future__ import annotations

import io
import json
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import urllib3
from azure.core.credentials import AccessToken, AccessTokenInfo
from azure.core.pipeline.transport import HttpTransport, RequestsTransportResponse
from azure.core.pipeline.transport._requests_basic import _handle_non_stream_rest_response
from azure.core.rest._requests_basic import RestRequestsTransportResponse
from requests.structures import CaseInsensitiveDict

with warnings.catch_warnings():  # azure-ai-ml 1.35's schemas warn about marshmallow 4 on import
    warnings.simplefilter("ignore", DeprecationWarning)
    import azure.ai.ml
    import azure.ai.ml.entities  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = REPO_ROOT / "examples" / "federation.yaml"

SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
RESOURCE_GROUP = "rg-fedsilo"
WORKSPACE = "mlw-fedsilo"


def orchestrator_block(code: str, *extra: str) -> str:
    """The spec's ``orchestrator`` block in this test workspace with ``code`` (a directory
    or a code asset) and ``extra`` lines (``key: value``)."""
    lines = [
        f"subscription_id: {SUBSCRIPTION}", f"resource_group: {RESOURCE_GROUP}",
        f"workspace: {WORKSPACE}", "compute: cpu-orchestrator", f"code: {code}", *extra,
    ]  # fmt: skip
    return "orchestrator:\n" + "".join(f"  {line}\n" for line in lines)


def spec_text(**overrides: str) -> str:
    """A valid 3-silo spec as YAML; ``overrides`` replace whole top-level blocks."""
    blocks = {
        "name": "name: fed-test",
        "orchestrator": orchestrator_block(str(REPO_ROOT)),
        "silos": (
            "silos:\n"
            "  - name: hospital-a\n"
            "    compute: cpu-silo-a\n"
            "    data: {datastore: hospital_a, path: digits/}\n"
            "    identity_client_id: 11111111-0000-0000-0000-000000000000\n"
            "  - name: hospital-b\n"
            "    compute: cpu-silo-b\n"
            "    data: {url: 'https://sthospitalb.blob.core.windows.net/digits/train/'}\n"
            "  - name: hospital-c\n"
            "    compute: cpu-silo-c\n"
            "    data: {datastore: hospital_c, path: digits/test.csv, type: uri_file}\n"
        ),
        "task": "task: breast-cancer",
        "strategy": "strategy: fedavg",
        "run_config": "run_config:\n  num-server-rounds: 2\n  training.learning-rate: 1\n",
        "network": "network: {mode: azureml-job, port: 9091}",
    }
    blocks.update(overrides)
    return "\n".join(v for v in blocks.values() if v) + "\n"


class FakeCredential:
    """A ``TokenCredential`` that hands out a fixed token and counts the calls."""

    def __init__(self, token: str = "fake-token") -> None:
        self.token = token
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)

    def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        self.scopes.append(scopes)
        return AccessTokenInfo(self.token, int(time.time()) + 3600)


@dataclass
class Recorded:
    """One request the SDK sent."""

    method: str
    url: str
    headers: dict[str, str]
    body: Any

    @property
    def path(self) -> str:
        return self.url.split("?", 1)[0].split("management.azure.com", 1)[-1]


@dataclass
class RecordingTransport(HttpTransport):
    """Answers ARM job / environment requests like AzureML would, and records them."""

    job_status: str = "Starting"
    fail: dict[str, tuple[int, str]] = field(default_factory=dict)  # path regex -> (code, msg)
    requests: list[Recorded] = field(default_factory=list)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Code upload (`code: <directory>`): the container URL with a SAS that
    # ``startPendingUpload`` hands out (e.g. a container on Azurite), and the code versions
    # registered so far by ARM path.
    upload_container_sas_url: str | None = None
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> RecordingTransport:
        return self

    def __exit__(self, *args: Any) -> None:
        pass

    def send(self, request: Any, **kwargs: Any) -> Any:
        raw = request.content if hasattr(request, "content") else request.data
        if isinstance(raw, bytes | bytearray):
            raw = raw.decode()
        body = json.loads(raw) if isinstance(raw, str) and raw else raw
        record = Recorded(request.method, request.url, dict(request.headers), body)
        self.requests.append(record)
        status, payload = self._answer(record)
        return self._response(request, status, payload)

    # ------------------------------------------------------------------ canned answers
    def _answer(self, rec: Recorded) -> tuple[int, Any]:
        for pattern, (code, message) in self.fail.items():
            if re.search(pattern, rec.path):
                return code, {"error": {"code": "UserError", "message": message}}
        job = re.search(r"/jobs/([^/]+)$", rec.path)
        if job and rec.method == "PUT":
            name = job.group(1)
            answer = json.loads(json.dumps(rec.body))
            answer.update(id=rec.path, name=name, type="Microsoft.MachineLearningServices/jobs")
            answer["properties"]["status"] = self.job_status
            answer["properties"]["services"] = {
                "Studio": {
                    "endpoint": f"https://ml.azure.com/runs/{name}",
                    "jobServiceType": "Studio",
                }
            }
            self.jobs[name] = answer
            return 201, answer
        if job and rec.method == "GET":
            name = job.group(1)
            if name not in self.jobs:
                return 404, {"error": {"code": "NotFound", "message": f"job {name} not found"}}
            answer = json.loads(json.dumps(self.jobs[name]))
            answer["properties"]["status"] = self.job_status
            return 200, answer
        if re.search(r"/jobs/[^/]+/cancel$", rec.path) and rec.method == "POST":
            return 200, {}
        code = self._answer_code(rec)
        if code is not None:
            return code
        env = re.search(r"/environments/([^/]+)/versions/([^/]+)$", rec.path)
        if env and rec.method == "PUT":
            return 201, self._version(rec, "environments")
        return 404, {"error": {"code": "NotFound", "message": f"no canned answer for {rec.path}"}}

    def _answer_code(self, rec: Recorded) -> tuple[int, Any] | None:
        """The code-asset calls of an upload, as AzureML answers them: list versions by
        content hash, ``startPendingUpload`` (a SAS URL of a blob container to upload to),
        create and get a version."""
        pending = re.search(r"/codes/([^/]+)/versions/([^/]+)/startPendingUpload$", rec.path)
        if pending and rec.method == "POST":
            if self.upload_container_sas_url is None:
                return None
            sas_url = self.upload_container_sas_url
            return 200, {
                "blobReferenceForConsumption": {
                    "blobUri": sas_url.split("?", 1)[0],
                    "credential": {"credentialType": "SAS", "sasUri": sas_url},
                },
                "pendingUploadId": pending.group(2),
                "pendingUploadType": "TemporaryBlobReference",
            }
        if re.search(r"/codes/[^/]+/versions$", rec.path) and rec.method == "GET":
            wanted = dict(p.split("=", 1) for p in rec.url.split("?", 1)[-1].split("&"))
            found = [
                c for c in self.codes.values()
                if c["properties"]["properties"].get("hash_sha256") == wanted.get("hash")
            ]  # fmt: skip
            return 200, {"value": found}
        version = re.search(r"/codes/([^/]+)/versions/([^/]+)$", rec.path)
        if version and rec.method == "PUT":
            self.codes[rec.path] = self._version(rec, "codes")
            return 201, self.codes[rec.path]
        if version and rec.method == "GET":
            if rec.path not in self.codes:
                return 404, {"error": {"code": "NotFound", "message": f"{rec.path} not found"}}
            return 200, self.codes[rec.path]
        return None

    @staticmethod
    def _version(rec: Recorded, kind: str) -> dict[str, Any]:
        """A PUT asset version as ARM returns it: the body with its id, name and type."""
        answer = json.loads(json.dumps(rec.body))
        answer.update(
            id=rec.path,
            name=rec.path.rsplit("/", 1)[-1],
            type=f"Microsoft.MachineLearningServices/workspaces/{kind}/versions",
        )
        return answer

    @staticmethod
    def _response(request: Any, status: int, payload: Any) -> Any:
        content = json.dumps(payload).encode()
        response = requests.Response()
        response.status_code = status
        response.reason = {200: "OK", 201: "Created", 404: "Not Found"}.get(status, "Error")
        response.headers = CaseInsensitiveDict(
            {"Content-Type": "application/json", "Content-Length": str(len(content))}
        )
        response.raw = urllib3.HTTPResponse(
            body=io.BytesIO(content), headers=dict(response.headers), status=status,
            preload_content=False,
        )  # fmt: skip
        response.url = request.url
        response.encoding = "utf-8"
        if hasattr(request, "content"):  # azure.core.rest request
            rest = RestRequestsTransportResponse(
                request=request, internal_response=response, block_size=4096
            )
            _handle_non_stream_rest_response(rest)
            return rest
        return RequestsTransportResponse(request, response, 4096)
