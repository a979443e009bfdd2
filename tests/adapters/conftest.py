"""Fixtures for the adapter tests: a real Azurite blob emulator, no mocks.

``azurite`` (session) connects to Azurite at ``AZURITE_BLOB_URL`` (default
``http://127.0.0.1:10000/devstoreaccount1``) with the well-known development account key.
When nothing answers there it runs ``.ci/start-azurite.sh`` itself (which installs Azurite
with npm on first use) and stops the process it started, by pid, at the end of the session.
It never skips: if Azurite cannot be reached or started, the tests that need it fail with
the reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient

import adapters.app  # noqa: F401  (the app as shipped: Blob and MLflow wired into the registries)

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # let a bare `pytest` import the repo's packages
    sys.path.insert(0, str(REPO_ROOT))

START_SCRIPT = REPO_ROOT / ".ci" / "start-azurite.sh"
DEFAULT_AZURITE_BLOB_URL = "http://127.0.0.1:10000/devstoreaccount1"
# Azurite's documented development key (public, not a secret).
AZURITE_ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
_START_TIMEOUT_S = 600  # the first run installs Azurite with npm
_STOP_TIMEOUT_S = 15


@dataclass(frozen=True)
class Azurite:
    """A running Azurite blob endpoint."""

    account_url: str
    connection_string: str
    started_pid: int | None  # set when this test session started it

    def url(self, container: str, blob_path: str = "") -> str:
        """Path-style URL of a container or blob on this Azurite."""
        return f"{self.account_url}/{container}" + (f"/{blob_path}" if blob_path else "")

    @staticmethod
    def connection_string_for(account_url: str, key: str = AZURITE_ACCOUNT_KEY) -> str:
        """Connection string for the development account behind any ``account_url``."""
        return azurite_connection_string(account_url, key)


def azurite_connection_string(account_url: str, key: str = AZURITE_ACCOUNT_KEY) -> str:
    """Connection string for the development account behind ``account_url``."""
    parts = urlsplit(account_url)
    account = parts.path.strip("/").split("/")[0]
    return (
        f"DefaultEndpointsProtocol={parts.scheme};AccountName={account};AccountKey={key};"
        f"BlobEndpoint={account_url};"
    )


def _port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _pid_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _is_azurite(pid: int) -> bool:
    """Guard against pid reuse: only signal a process whose command line is Azurite's."""
    try:
        return b"azurite" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return sys.platform != "linux"  # no /proc to check with


def _stop(pid: int) -> None:
    if not _pid_running(pid) or not _is_azurite(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        if not _pid_running(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _start(host: str, port: int, state_dir: Path) -> int | None:
    """Run .ci/start-azurite.sh; return the pid it started (None if it found one running)."""
    env = {
        **os.environ,
        "AZURITE_BLOB_HOST": host,
        "AZURITE_BLOB_PORT": str(port),
        "AZURITE_STATE_DIR": str(state_dir),
    }
    try:
        proc = subprocess.run(
            ["bash", str(START_SCRIPT)],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_START_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"Could not run {START_SCRIPT} to start Azurite: {exc}", pytrace=False)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-20:])
        pytest.fail(
            f"Azurite is not running at {host}:{port} and {START_SCRIPT} failed "
            f"(exit {proc.returncode}). It needs node and npm (Azurite is installed into "
            f".ci/node on first use). Its output:\n{tail}",
            pytrace=False,
        )
    pid_file = state_dir / "azurite.pid"
    return int(pid_file.read_text().strip()) if pid_file.is_file() else None


def _check_reachable(account_url: str, connection_string: str) -> None:
    service = BlobServiceClient.from_connection_string(
        connection_string, retry_total=0, connection_timeout=5, read_timeout=10
    )
    try:
        service.get_service_properties()
    except AzureError as exc:
        pytest.fail(
            f"Azurite at {account_url} does not answer blob requests with the development "
            f"account key: {str(exc).splitlines()[0] if str(exc) else exc!r}. Is something "
            "else listening on that port? Set AZURITE_BLOB_URL to another Azurite.",
            pytrace=False,
        )
    finally:
        service.close()


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """Azurite at AZURITE_BLOB_URL, started (and stopped afterwards) if nothing answers."""
    account_url = os.environ.get("AZURITE_BLOB_URL", DEFAULT_AZURITE_BLOB_URL).rstrip("/")
    parts = urlsplit(account_url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    connection_string = azurite_connection_string(account_url)

    pid: int | None = None
    state_dir: Path | None = None
    try:
        if not _port_open(host, port):
            if host not in ("127.0.0.1", "localhost", "::1"):
                pytest.fail(
                    f"Azurite at AZURITE_BLOB_URL={account_url} does not answer, and only a "
                    "local one (127.0.0.1 / localhost) can be started by the tests.",
                    pytrace=False,
                )
            state_dir = Path(tempfile.mkdtemp(prefix="fedsilo-azurite-"))
            pid = _start(host, port, state_dir)
        _check_reachable(account_url, connection_string)
        yield Azurite(account_url, connection_string, pid)
    finally:
        if pid is not None:
            _stop(pid)
        if state_dir is not None:
            shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture
def blob_container(azurite: Azurite) -> Iterator[str]:
    """A fresh, uniquely named container on Azurite, deleted after the test."""
    name = f"test-{uuid.uuid4().hex[:20]}"
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    service.create_container(name)
    try:
        yield name
    finally:
        with contextlib.suppress(ResourceNotFoundError):
            service.delete_container(name)
        service.close()


@pytest.fixture
def azurite_env(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> Azurite:
    """Point AZURE_STORAGE_CONNECTION_STRING at Azurite (and unset AZURE_STORAGE_ACCOUNT_URL)."""
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    monkeypatch.delenv("AZURE_STORAGE_ACCOUNT_URL", raising=False)
    return azurite
