"""Launch backends: where ``fedsilo submit`` runs a federation spec, and how its
submissions are watched (``status``), read (``logs``) and stopped (``cancel``).

A backend is one class in its own file, registered by name::

    from adapters.backends import Submission, register_backend
    from adapters.federation.spec import FederationSpec

    @register_backend("my-cluster")
    class MyClusterBackend:
        spec_model = FederationSpec          # or your own subclass with extra sections

        def submit(self, spec, *, wait, run_dir, on_event, poll): ...
        def status(self, spec, submission): ...
        def logs(self, spec, submission, job): ...
        def cancel(self, spec, submission): ...

The built-in ``azureml`` (:mod:`adapters.azureml.backend`) and ``local``
(:mod:`adapters.local.backend`) register themselves this way. A separate package adds one
through the entry-point group ``fedsilo.backends``: the entry point's name is the backend's
name, its value the class (``my_pkg.backend:MyClusterBackend``) or a module whose import
registers it. :func:`get_backend` finds both; an unknown name is an error that lists the
known ones.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from adapters.federation.spec import FederationSpec

__all__ = [
    "ENTRY_POINT_GROUP",
    "Backend",
    "BackendError",
    "Submission",
    "backend_names",
    "find_record",
    "get_backend",
    "register_backend",
    "spec_model_for",
    "state_dir",
]

logger = logging.getLogger(__name__)

#: Entry-point group through which other packages add backends.
ENTRY_POINT_GROUP = "fedsilo.backends"
#: Modules of the backends that ship with fedsilo (imported on first use of the registry;
#: each registers itself with :func:`register_backend`).
_BUILTIN_MODULES = ("adapters.azureml.backend", "adapters.local.backend")


def state_dir() -> Path:
    """Where backends record submissions, one folder per federation
    (``FEDSILO_STATE_DIR``, default ``~/.fedsilo``, then ``submissions/``)."""
    return Path(os.environ.get("FEDSILO_STATE_DIR") or Path.home() / ".fedsilo") / "submissions"


class BackendError(RuntimeError):
    """A backend could not submit, watch, read or cancel; the message names what and why."""


def find_record(
    folder: Path,
    federation: str,
    submission_id: str | None,
    *,
    submit: str = "fedsilo submit SPEC",
    error: type[BackendError] = BackendError,
) -> Path:
    """The JSON record of submission ``submission_id`` in ``folder`` (the latest when no id
    is given; ids sort by time); ``error`` (naming ``submit``, the command that records one)
    when there is none."""
    if submission_id:
        path = folder / f"{submission_id}.json"
        if not path.is_file():
            raise error(f"no submission {submission_id} of '{federation}' in {folder}")
        return path
    found = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not found:
        raise error(
            f"no recorded submission of federation '{federation}' in {folder}; run "
            f"`{submit}` first (or pass --submission ID)"
        )
    return found[-1]


@dataclass
class Submission:
    """What a backend reports about one submission of a federation.

    Attributes:
        backend: The backend's registered name.
        federation: The spec's ``name``.
        submission_id: The id ``status`` / ``logs`` / ``cancel`` take (``--submission``).
        ok: True when the federation's run completed, False when it failed, None while it
            is still running (``--no-wait``) or the backend cannot tell.
        summary: Lines ``fedsilo submit`` prints when the backend returns.
        error: Why the run failed (when ``ok`` is False).
        statuses: ``{job: status}``, from :meth:`Backend.status`.
    """

    backend: str
    federation: str
    submission_id: str
    ok: bool | None = None
    summary: list[str] = field(default_factory=list)
    error: str = ""
    statuses: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """Runs federation specs somewhere. Methods raise :class:`BackendError` (or a subclass)
    with a message naming the problem and the fix; ``submission=None`` means the latest
    submission of ``spec``."""

    #: The spec model this backend needs (:class:`FederationSpec` or a subclass adding the
    #: backend's own sections).
    spec_model: type[FederationSpec]

    def submit(
        self,
        spec: FederationSpec,
        *,
        wait: bool = True,
        run_dir: Path | None = None,
        on_event: Callable[[str], None] | None = None,
        poll: float = 30.0,
    ) -> Submission:
        """Start the federation; with ``wait``, return when its run has ended. ``run_dir``:
        where a backend that writes results on this machine puts the run directory; ``poll``:
        seconds between status checks of a backend that watches remote jobs."""
        ...

    def status(self, spec: FederationSpec, submission: str | None) -> Submission:
        """The submission with ``statuses`` filled: ``{job: status}``."""
        ...

    def logs(self, spec: FederationSpec, submission: str | None, job: str) -> None:
        """Write one job's log to stdout (streaming it while the job runs)."""
        ...

    def cancel(self, spec: FederationSpec, submission: str | None) -> dict[str, str]:
        """Stop what still runs; return ``{job: what was done}``."""
        ...


_B = TypeVar("_B")
_REGISTRY: dict[str, Callable[[], Backend]] = {}
_loaded = False


def register_backend(name: str) -> Callable[[_B], _B]:
    """Class decorator: register a backend (a class whose instances are :class:`Backend`)
    under ``name``."""

    def decorate(factory: _B) -> _B:
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not factory:
            raise ValueError(
                f"backend '{name}' is already registered by {_qualname(existing)}; "
                "choose another name"
            )
        _REGISTRY[name] = factory  # type: ignore[assignment]
        return factory

    return decorate


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', obj)}"


def _load() -> None:
    """Import the built-in backends and the ``fedsilo.backends`` entry points (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = entry.load()
        except Exception as exc:  # a broken plugin must not break the other backends
            logger.warning("backend entry point %s (%s) failed to load: %s", entry.name,
                           entry.value, exc)  # fmt: skip
            continue
        if entry.name not in _REGISTRY and callable(loaded):
            register_backend(entry.name)(loaded)


def backend_names() -> list[str]:
    """Every registered backend's name, sorted."""
    _load()
    return sorted(_REGISTRY)


def get_backend(name: str) -> Backend:
    """A new instance of the backend registered as ``name``."""
    _load()
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise BackendError(
            f"unknown backend '{name}'; known backends: {', '.join(sorted(_REGISTRY))} (a "
            f"package adds one through the '{ENTRY_POINT_GROUP}' entry-point group)"
        ) from None
    return factory()


def spec_model_for(
    base: type[FederationSpec] = FederationSpec,
) -> Callable[[Mapping[str, Any]], type[FederationSpec]]:
    """How a document is validated for a backend whose spec model is ``base``: with ``base``,
    or, when the document has sections ``base`` does not know, with the registered backend
    spec model extending ``base`` that knows the most of them (so the local backend
    validates an AzureML spec as one, Azure sections included, and a typo next to them is
    reported as a typo)."""

    def choose(document: Mapping[str, Any]) -> type[FederationSpec]:
        _load()
        extra = set(document) - set(base.model_fields)
        models = {getattr(factory, "spec_model", None) for factory in _REGISTRY.values()}
        known = [
            (len(extra & set(model.model_fields)), model.__qualname__, model)
            for model in models
            if isinstance(model, type) and issubclass(model, base) and model is not base
        ]
        best = max(known, default=None, key=lambda item: item[:2])
        return best[2] if extra and best is not None and best[0] > 0 else base

    return choose
