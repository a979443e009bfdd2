"""Keys of the records our messages carry, shared by the ServerApp, ClientApp and strategies."""

from __future__ import annotations

#: ConfigRecord in every reply carrying the silo's "partition-id".
META_KEY = "meta"
