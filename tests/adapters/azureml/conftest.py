"""Fixtures for the AzureML adapter tests (helpers live in azureml_testkit.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from azureml_testkit import FakeCredential, RecordingTransport, spec_text


@pytest.fixture
def write_spec(tmp_path: Path) -> Callable[..., Path]:
    """Write ``spec_text(**overrides)`` to a file; return its path."""

    def write(text: str | None = None, **overrides: str) -> Path:
        path = tmp_path / f"spec-{len(list(tmp_path.glob('spec-*.yaml')))}.yaml"
        path.write_text(text if text is not None else spec_text(**overrides))
        return path

    return write


@pytest.fixture
def transport() -> RecordingTransport:
    return RecordingTransport()


@pytest.fixture
def credential() -> FakeCredential:
    return FakeCredential()


@pytest.fixture(autouse=True)
def _state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep recorded submissions out of the home directory."""
    state = tmp_path / "fedsilo-state"
    monkeypatch.setenv("FEDSILO_STATE_DIR", str(state))
    return state


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """azure-ai-ml 1.35 triggers hundreds of marshmallow-4 deprecation warnings; hide them
    for these tests only (they are the SDK's, not ours)."""
    if not config.pluginmanager.hasplugin("warnings"):
        return
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(
                pytest.mark.filterwarnings("ignore::marshmallow.warnings.Marshmallow4Warning")
            )
