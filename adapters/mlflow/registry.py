"""The model lifecycle in the MLflow model registry: champion or not.

At the end of a tracked run the final model is registered (a new version of
``tracking.register-model``; ``auto`` = ``fedsilo-<task>``). The new version takes the
alias ``champion`` only if it beats the current champion **on this run's server test set**:
both models are loaded and evaluated here, on the same rows with the task's own
:meth:`~tasks.base.Task.evaluate`, by the task's main metric (``accuracy``; NER
``entity-f1``; a ``…loss`` metric would be lower-is-better). Stored numbers of earlier runs
are not compared: they may come from another test split or another data version. The first
version of a name becomes champion; a tie keeps the incumbent. A champion that cannot be
evaluated on this test set (another architecture or input shape under the same name) keeps
its alias and the reason is recorded.

The decision goes to the run's audit log (event ``model-registry``), to the parent MLflow
run (tags ``registry.*``, metrics ``registry/candidate-<metric>`` and
``registry/champion-<metric>``) and to the model version's tags.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

CHAMPION = "champion"


@dataclass(frozen=True)
class Decision:
    """The outcome of :func:`promote_if_better`."""

    model: str
    version: str
    metric: str
    candidate: float
    champion_version: str | None  # the champion before this decision
    champion: float | None  # its score on this run's test set
    promoted: bool
    reason: str

    def audit_fields(self) -> dict[str, Any]:
        """Kebab-case fields for the audit log."""
        return {k.replace("_", "-"): v for k, v in asdict(self).items()}


def better(candidate: float, incumbent: float, metric: str) -> bool:
    """Whether ``candidate`` strictly beats ``incumbent`` by ``metric`` (NaN never does)."""
    if not math.isfinite(candidate):
        return False
    if not math.isfinite(incumbent):
        return True
    return candidate < incumbent if metric.endswith("loss") else candidate > incumbent


def promote_if_better(
    client: MlflowClient,
    name: str,
    version: str,
    metric: str,
    candidate: float,
    score_of: Callable[[ModelVersion], float],
) -> Decision:
    """Move alias ``champion`` of registered model ``name`` to ``version`` (scored
    ``candidate`` by ``metric``) if it beats the current champion, scored by
    ``score_of(champion's model version)`` on the same test set; returns the decision."""
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # no champion yet
        current = None
    if current is None:
        client.set_registered_model_alias(name, CHAMPION, version)
        return Decision(
            name, version, metric, candidate, None, None, True,
            f"first champion of '{name}' (no model had the alias '{CHAMPION}')",
        )  # fmt: skip
    try:
        incumbent = float(score_of(current))
    except Exception as exc:  # another architecture / input shape under the same name
        return Decision(
            name, version, metric, candidate, current.version, None, False,
            f"champion version {current.version} cannot be evaluated on this run's server test "
            f"set ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); alias unchanged",
        )  # fmt: skip
    promoted = better(candidate, incumbent, metric)
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    verdict = "beats" if promoted else "does not beat"
    return Decision(
        name, version, metric, candidate, current.version, incumbent, promoted,
        f"version {version} {verdict} champion version {current.version} on this run's "
        f"server test set: {metric} {candidate:.6g} vs {incumbent:.6g}",
    )  # fmt: skip


def record_decision(client: MlflowClient, run_id: str, decision: Decision) -> None:
    """The decision as tags and metrics of the parent run and tags of the model version."""
    tags = {
        "registry.model": decision.model,
        "registry.version": decision.version,
        "registry.decision": "promoted" if decision.promoted else "kept",
        "registry.reason": decision.reason,
        "registry.champion-before": decision.champion_version or "",
    }
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    client.log_metric(run_id, f"registry/candidate-{decision.metric}", decision.candidate)
    if decision.champion is not None:
        client.log_metric(run_id, f"registry/champion-{decision.metric}", decision.champion)
    client.set_model_version_tag(
        decision.model, decision.version, "fedsilo.decision", tags["registry.decision"]
    )
    client.set_model_version_tag(
        decision.model, decision.version, f"fedsilo.{decision.metric}", str(decision.candidate)
    )
