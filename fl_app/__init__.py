"""The Flower app: ServerApp, ClientApp and the typed run configuration.

`flwr run .` loads :mod:`fl_app.server_app` and :mod:`fl_app.client_app` (see
``[tool.flwr.app.components]`` in pyproject.toml).
"""

import importlib.metadata
import logging

try:
    #: The installed fedsilo version (pyproject's ``version``); recorded in every run's
    #: config.json and MLflow params as ``fedsilo-version``.
    VERSION = importlib.metadata.version("fedsilo")
except importlib.metadata.PackageNotFoundError:  # a checkout on sys.path, not installed
    VERSION = "0+unknown"

#: Run-level facts a run's config.json records next to its settings; not settings.
RUN_INFO_KEYS = frozenset({"config-hash", "fedsilo-version"})

#: Logger for the app's own progress lines. A child of Flower's ``flwr`` logger so that
#: INFO lines appear in ``flwr run --stream`` output with Flower's formatting.
LOG = logging.getLogger("flwr").getChild("fedsilo")
