"""Fixtures for the local backend's tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep recorded submissions out of the home directory."""
    state = tmp_path / "fedsilo-state"
    monkeypatch.setenv("FEDSILO_STATE_DIR", str(state))
    return state
