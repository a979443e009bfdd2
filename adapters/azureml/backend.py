"""The ``azureml`` launch backend: a federation spec becomes AzureML jobs (SuperLink, one
SuperNode per silo, the ServerApp submission), submitted, watched, read and cancelled with
:class:`adapters.azureml.client.AzureMLClient`. The Azure SDK is imported on first use, so
registering this backend costs nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapters.azureml.spec import FederationSpec
from adapters.backends import Submission, register_backend
from fl_core.progress import Update

if TYPE_CHECKING:
    from adapters.azureml.client import AzureMLClient

__all__ = ["AzureMLBackend"]


@register_backend("azureml")
class AzureMLBackend:
    """AzureML jobs: SuperLink, one SuperNode per silo, ServerApp submission.

    Submissions are recorded under :func:`adapters.backends.state_dir`."""

    spec_model = FederationSpec

    def __init__(self, **client_kwargs: Any) -> None:
        """``client_kwargs`` go to :class:`AzureMLClient` (``credential=``, ``transport=``)."""
        self._client_kwargs = client_kwargs

    def client(self, spec: FederationSpec) -> AzureMLClient:
        """The AzureML client of ``spec``."""
        from adapters.azureml.client import AzureMLClient

        return AzureMLClient(spec, **self._client_kwargs)

    def submit(
        self,
        spec: FederationSpec,
        *,
        wait: bool = True,
        run_dir: Path | None = None,
        on_event: Callable[[str], None] | None = None,
        poll: float = 30.0,
    ) -> Submission:
        """Create the jobs (``run_dir`` is not used: results go to the jobs' outputs and
        MLflow); with ``wait``, poll until the ServerApp job ends and cancel what still
        runs when it did not complete (nothing should keep running, and billing)."""
        notify = on_event or (lambda _message: None)
        client = self.client(spec)
        record = client.submit(on_event=notify)
        for job in record.jobs:
            notify(f"{job.role:<24} {job.name}  {job.studio_url or ''}".rstrip())
        notify(f"submission {record.submission_id}")
        result = Submission("azureml", spec.name, record.submission_id)
        if not wait:
            return result
        seen: list[dict[str, str]] = []

        def on_status(statuses: dict[str, str]) -> None:
            if not seen or seen[-1] != statuses:
                seen.append(dict(statuses))
                notify(Update(" ".join(f"{role}={status}" for role, status in statuses.items())))

        result.statuses = client.wait(record, poll=poll, on_status=on_status)
        result.ok = result.statuses.get("serverapp") == "Completed"
        if not result.ok:
            done = client.cancel(record)
            cancelled = [role for role, what in done.items() if what == "cancel requested"]
            result.error = (
                f"the federation did not complete: {result.statuses}"
                + (f"; cancelled {', '.join(cancelled)}" if cancelled else "")
                + ". See `fedsilo logs SPEC --job serverapp`."
            )
        return result

    def status(self, spec: FederationSpec, submission: str | None) -> Submission:
        """Each job's AzureML status (``Running``, ``Completed``, ...)."""
        from adapters.azureml.client import load_submission

        record = load_submission(spec.name, submission)
        statuses = self.client(spec).status(record)
        return Submission("azureml", spec.name, record.submission_id, statuses=statuses)

    def logs(self, spec: FederationSpec, submission: str | None, job: str) -> None:
        """Stream the job's logs (``superlink``, ``serverapp`` or a silo name)."""
        from adapters.azureml.client import load_submission

        self.client(spec).logs(load_submission(spec.name, submission), job)

    def cancel(self, spec: FederationSpec, submission: str | None) -> dict[str, str]:
        """Cancel every job that has not ended."""
        from adapters.azureml.client import load_submission

        return self.client(spec).cancel(load_submission(spec.name, submission))
