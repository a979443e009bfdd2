"""The app as shipped: Flower's components with the adapters plugged in.

``[tool.flwr.app.components]`` in pyproject.toml points here, not at :mod:`fl_app`
directly. This module is the composition root: the core (:mod:`fl_app`, :mod:`tasks`,
:mod:`strategies`) knows only its registries; here the adapters are registered in them,
lazily, so that Azure and MLflow are imported only by a run that uses them:

* checkpoint stores (:data:`fl_app.stores.CHECKPOINT_STORES`) and data sources
  (:data:`tasks.sources.DATA_SOURCES`) for Blob URLs: schemes ``https``, ``http``
  (Azurite on loopback) and ``az``;
* the ``mlflow`` and ``prometheus`` metrics sinks (:data:`fl_app.sinks.SINKS`).

The wiring is code, not package metadata, because a SuperNode runs the app from its FAB
without installing this project. A separate package plugs in through entry points
instead (groups ``fedsilo.checkpoint_stores``, ``fedsilo.data_sources``,
``fedsilo.sinks``, …; see docs/extending.md). Code that runs the app in Python (tests,
benchmarks, notebooks) imports ``client_app`` and ``server_app`` from here.
"""

from __future__ import annotations

from fl_app.client_app import app as client_app
from fl_app.server_app import app as server_app
from fl_app.sinks import SINKS
from fl_app.stores import CHECKPOINT_STORES
from tasks.sources import DATA_SOURCES

__all__ = ["BLOB_SCHEMES", "client_app", "register_adapters", "server_app"]

#: URI schemes of Azure Blob URLs: Azure (https), Azurite on loopback (http), az://.
BLOB_SCHEMES = ("https", "http", "az")


def register_adapters() -> None:
    """Register the adapters in the core's registries (idempotent)."""
    for scheme in BLOB_SCHEMES:
        CHECKPOINT_STORES.add_lazy(
            scheme, "adapters.blob.checkpoints:open_blob_checkpoint_store", doc="Azure Blob"
        )
        DATA_SOURCES.add_lazy(scheme, "adapters.blob.store:fetch_to_cache", doc="Azure Blob")
    SINKS.add_lazy("mlflow", "adapters.mlflow.sink:sink_from_config", doc="MLflow tracking")
    SINKS.add_lazy(
        "prometheus", "adapters.prometheus.exporter:sink_from_config", doc="Prometheus exporter"
    )


register_adapters()
