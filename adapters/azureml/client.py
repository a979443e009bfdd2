"""Submit, watch and cancel a federation on AzureML with ``azure-ai-ml``'s ``MLClient``.

Credentials come from ``DefaultAzureCredential`` (``az login``, a service principal in
``AZURE_CLIENT_ID`` / ``AZURE_TENANT_ID`` / ``AZURE_CLIENT_SECRET``, workload identity, or a
managed identity on Azure); they are checked once before the first request, so missing ones
fail with :class:`AzureMLAuthError` naming the fixes instead of a traceback deep in the SDK.

A submission registers the environment in every workspace (and registry) the jobs use, then
creates the jobs in order: SuperLink, one SuperNode per silo, ServerApp submission. Its job
names are recorded under ``~/.fedsilo/submissions/<federation>/`` (``FEDSILO_STATE_DIR``)
so ``status``, ``logs`` and ``cancel`` find them later.

Every ``MLClient`` keyword (e.g. ``transport=``, ``enable_telemetry=False``) passed to
:class:`AzureMLClient` reaches the SDK's azure-core pipelines.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from azure.ai.ml import MLClient
from azure.core.credentials import TokenCredential
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError

from adapters.azureml.jobs import FederationJobs, JobScope, build_jobs
from adapters.azureml.spec import FederationSpec
from adapters.backends import BackendError, find_record, state_dir

__all__ = [
    "ARM_SCOPE",
    "NO_CREDENTIALS_HINT",
    "TERMINAL_STATUSES",
    "AzureMLAuthError",
    "AzureMLClient",
    "AzureMLError",
    "Submission",
    "default_credential",
    "load_submission",
    "state_dir",
]

logger = logging.getLogger(__name__)

ARM_SCOPE = "https://management.azure.com/.default"
TERMINAL_STATUSES = frozenset({"Completed", "Failed", "Canceled", "NotResponding"})
NO_CREDENTIALS_HINT = (
    "Sign in with `az login` (then `az account set --subscription <id>`), or set "
    "AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_CLIENT_SECRET for a service principal "
    "(AZURE_FEDERATED_TOKEN_FILE for workload identity); on an Azure VM with a managed "
    "identity set AZURE_TOKEN_CREDENTIALS=ManagedIdentityCredential."
)


class AzureMLError(BackendError):
    """An AzureML request failed; the message names what and why."""


class AzureMLAuthError(AzureMLError):
    """No usable Azure credentials."""


def default_credential() -> TokenCredential:
    """``DefaultAzureCredential``, skipping managed identity unless the environment hints at
    it (off Azure, probing the metadata endpoint only slows the failure down)."""
    from azure.identity import DefaultAzureCredential

    from adapters.blob import MANAGED_IDENTITY_HINT_ENV_VARS

    kwargs: dict[str, Any] = {}
    if not any(os.environ.get(name) for name in MANAGED_IDENTITY_HINT_ENV_VARS):
        kwargs["exclude_managed_identity_credential"] = True
    try:
        return DefaultAzureCredential(**kwargs)
    except ValueError as exc:
        raise AzureMLAuthError(f"Azure credentials could not be set up: {exc}") from None


def _status(job: Any) -> str:
    """A job's status as AzureML spells it (``Running``), whether the SDK gives a str or an
    enum."""
    status = getattr(job, "status", None)
    return str(getattr(status, "value", status))


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


@contextlib.contextmanager
def _azure_call(what: str) -> Iterator[None]:
    """Turn SDK / HTTP failures into :class:`AzureMLError` naming ``what``."""
    try:
        yield
    except ClientAuthenticationError as exc:
        raise AzureMLAuthError(
            f"{what}: Azure rejected the credentials ({_first_line(exc)}). {NO_CREDENTIALS_HINT}"
        ) from None
    except HttpResponseError as exc:
        status = exc.status_code
        hint = {
            401: NO_CREDENTIALS_HINT,
            403: "Your identity needs the 'AzureML Data Scientist' role (or Contributor) on "
            "the workspace.",
            404: "Check subscription_id, resource_group, workspace and compute in the spec "
            "(`az ml workspace show`, `az ml compute list`).",
        }.get(status or 0, "")
        message = getattr(exc, "message", None) or _first_line(exc)
        raise AzureMLError(f"{what}: HTTP {status}: {message} {hint}".rstrip()) from None
    except ServiceRequestError as exc:
        raise AzureMLError(
            f"{what}: cannot reach Azure ({_first_line(exc)}); check the network / proxy"
        ) from None


# --------------------------------------------------------------------------- submissions


@dataclass
class SubmittedJob:
    """One job of a submission."""

    role: str
    name: str
    subscription_id: str
    resource_group: str
    workspace: str
    studio_url: str | None = None

    @property
    def scope(self) -> JobScope:
        """The job's workspace."""
        return JobScope(self.subscription_id, self.resource_group, self.workspace)


@dataclass
class Submission:
    """The jobs of one submission of a federation."""

    federation: str
    submission_id: str
    jobs: list[SubmittedJob] = field(default_factory=list)

    def job(self, role: str) -> SubmittedJob:
        """The job of ``role``: ``superlink``, ``serverapp``, ``silo:<name>`` or ``<name>``."""
        for job in self.jobs:
            if role in (job.role, job.role.removeprefix("silo:"), job.name):
                return job
        roles = ", ".join(j.role.removeprefix("silo:") for j in self.jobs)
        raise AzureMLError(f"submission {self.submission_id} has no job '{role}'; jobs: {roles}")

    def save(self) -> Path:
        """Record this submission under :func:`state_dir`."""
        path = state_dir() / self.federation / f"{self.submission_id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1) + "\n", encoding="utf-8")
        return path


def load_submission(federation: str, submission_id: str | None = None) -> Submission:
    """A recorded submission of ``federation`` (the latest when no id is given)."""
    path = find_record(state_dir() / federation, federation, submission_id, error=AzureMLError)
    data = json.loads(path.read_text(encoding="utf-8"))
    jobs = [SubmittedJob(**job) for job in data.pop("jobs")]
    return Submission(jobs=jobs, **data)


# --------------------------------------------------------------------------- client


def _code_arm_id(code: str, scope: JobScope) -> str:
    """``azureml:<name>:<version>`` → the code asset's ARM id in ``scope``'s workspace (the
    SDK takes only full ids for registered code)."""
    _, name, version = code.split(":")
    return (
        f"/subscriptions/{scope.subscription_id}/resourceGroups/{scope.resource_group}"
        f"/providers/Microsoft.MachineLearningServices/workspaces/{scope.workspace}"
        f"/codes/{name}/versions/{version}"
    )


class AzureMLClient:
    """The AzureML backend for one federation spec."""

    def __init__(
        self,
        spec: FederationSpec,
        credential: TokenCredential | None = None,
        **client_kwargs: Any,
    ) -> None:
        """``credential`` defaults to :func:`default_credential`; ``client_kwargs`` go to
        every ``MLClient`` (and on to azure-core, e.g. ``transport=``)."""
        self.spec = spec
        self._credential = credential
        self._client_kwargs = client_kwargs
        self._clients: dict[Any, MLClient] = {}
        self._checked = False

    @property
    def credential(self) -> TokenCredential:
        """The credential, created and checked on first use."""
        if self._credential is None:
            self._credential = default_credential()
        if not self._checked:
            try:
                self._credential.get_token(ARM_SCOPE)
            except ClientAuthenticationError as exc:
                raise AzureMLAuthError(
                    f"No usable Azure credentials ({_first_line(exc)}). {NO_CREDENTIALS_HINT}"
                ) from None
            self._checked = True
        return self._credential

    def ml_client(self, scope: JobScope) -> MLClient:
        """``MLClient`` for a workspace (cached)."""
        if scope not in self._clients:
            self._clients[scope] = MLClient(
                self.credential,
                scope.subscription_id,
                scope.resource_group,
                scope.workspace,
                **self._client_kwargs,
            )
        return self._clients[scope]

    def registry_client(self, registry: str) -> MLClient:
        """``MLClient`` for an AzureML registry (cached)."""
        key = ("registry", registry)
        if key not in self._clients:
            with _azure_call(f"registry '{registry}'"):
                self._clients[key] = MLClient(
                    self.credential, registry_name=registry, **self._client_kwargs
                )
        return self._clients[key]

    # ------------------------------------------------------------------ submit
    def submit(
        self,
        submission_id: str | None = None,
        on_event: Callable[[str], None] | None = None,
    ) -> Submission:
        """Register the environment and create every job; record and return the submission."""
        notify = on_event or (lambda message: logger.info("%s", message))
        jobs: FederationJobs = build_jobs(self.spec, submission_id)
        env = jobs.environment
        _ = self.credential  # fail fast, before building clients
        for scope in dict.fromkeys(jobs.scopes.values()):
            notify(f"registering environment {env.name}:{env.version} in {scope.workspace}")
            with _azure_call(f"registering environment {env.name} in workspace {scope.workspace}"):
                self.ml_client(scope).environments.create_or_update(env)
        for registry in dict.fromkeys(s.registry for s in self.spec.silos if s.registry):
            notify(f"registering environment {env.name}:{env.version} in registry {registry}")
            with _azure_call(f"registering environment {env.name} in registry {registry}"):
                self.registry_client(registry).environments.create_or_update(env)

        submission = Submission(self.spec.name, jobs.submission_id)
        code_asset = self.spec.orchestrator.code.startswith("azureml:")
        for role, job in jobs.roles():
            scope = jobs.scope_of(job)
            if code_asset:
                job.code = _code_arm_id(self.spec.orchestrator.code, scope)
            notify(f"creating {role} job {job.name} in {scope.workspace}")
            try:
                with _azure_call(f"creating the {role} job {job.name} in {scope.workspace}"):
                    created = self.ml_client(scope).jobs.create_or_update(job)
            except AzureMLError as exc:
                if submission.jobs:  # do not leave a half-created federation running
                    notify(f"cancelling the {len(submission.jobs)} jobs already created")
                    with contextlib.suppress(AzureMLError):
                        self.cancel(submission)
                    raise type(exc)(
                        f"{exc} (cancelled the jobs already created: "
                        f"{', '.join(j.name for j in submission.jobs)})"
                    ) from None
                raise
            submission.jobs.append(
                SubmittedJob(
                    role, str(created.name or job.name), scope.subscription_id,
                    scope.resource_group, scope.workspace, getattr(created, "studio_url", None),
                )
            )  # fmt: skip
            submission.save()
        return submission

    # ------------------------------------------------------------------ watch
    def status(self, submission: Submission) -> dict[str, str]:
        """``{role: AzureML job status}`` for every job of ``submission``."""
        out = {}
        for job in submission.jobs:
            with _azure_call(f"reading job {job.name}"):
                out[job.role] = _status(self.ml_client(job.scope).jobs.get(job.name))
        return out

    def wait(
        self,
        submission: Submission,
        *,
        poll: float = 30.0,
        timeout: float | None = None,
        on_status: Callable[[dict[str, str]], None] | None = None,
    ) -> dict[str, str]:
        """Poll until the ServerApp submission ends (or a job fails); return the statuses."""
        deadline = time.monotonic() + timeout if timeout else None
        while True:
            statuses = self.status(submission)
            if on_status:
                on_status(statuses)
            failed = [r for r, s in statuses.items() if s in ("Failed", "Canceled")]
            if statuses.get("serverapp") in TERMINAL_STATUSES or failed:
                return statuses
            if deadline is not None and time.monotonic() > deadline:
                return statuses
            time.sleep(poll)

    def logs(self, submission: Submission, role: str) -> None:
        """Stream a job's logs to stdout (until it ends)."""
        job = submission.job(role)
        with _azure_call(f"streaming the logs of {job.name}"):
            self.ml_client(job.scope).jobs.stream(job.name)

    def cancel(self, submission: Submission) -> dict[str, str]:
        """Cancel every job of ``submission`` that has not ended; return what was done."""
        done = {}
        for job in reversed(submission.jobs):
            client = self.ml_client(job.scope)
            with _azure_call(f"cancelling job {job.name}"):
                status = _status(client.jobs.get(job.name))
                if status in TERMINAL_STATUSES:
                    done[job.role] = f"already {status}"
                    continue
                client.jobs.begin_cancel(job.name)
                done[job.role] = "cancel requested"
        return done
