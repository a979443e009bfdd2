"""Errors shared by every layer."""

from __future__ import annotations


class ConfigError(ValueError):
    """A run-config value is unknown, of the wrong type or out of range."""
