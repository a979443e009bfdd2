"""The Flower app: ServerApp, ClientApp and the typed run configuration.

`flwr run .` loads :mod:`fl_app.server_app` and :mod:`fl_app.client_app` (see
``[tool.flwr.app.components]`` in pyproject.toml).
"""

import logging

#: Logger for the app's own progress lines. A child of Flower's ``flwr`` logger so that
#: INFO lines appear in ``flwr run --stream`` output with Flower's formatting.
LOG = logging.getLogger("flwr").getChild("fedsilo")
