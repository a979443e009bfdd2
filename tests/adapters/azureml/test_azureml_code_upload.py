"""``orchestrator.code: <directory>``, the path most users take: the real ``azure-ai-ml`` SDK
hashes the project, asks AzureML for an upload location (``startPendingUpload``), uploads the
files to that blob container, registers the code version and submits the jobs with its id.

ARM is the recording transport (azureml_testkit.py); the blob container the SDK uploads to
is a real one on Azurite, reached with a SAS the fake ``startPendingUpload`` hands out. The
assertions read the container back, so they see what the SDK really uploaded."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from azure.storage.blob import ContainerClient, ContainerSasPermissions, generate_container_sas
from azureml_testkit import (
    REPO_ROOT,
    RESOURCE_GROUP,
    SUBSCRIPTION,
    WORKSPACE,
    orchestrator_block,
)

from adapters.azureml.client import AzureMLClient
from adapters.azureml.spec import load_spec

ARM_WS = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}"
    f"/providers/Microsoft.MachineLearningServices/workspaces/{WORKSPACE}"
)
# Files of the project the jobs need (copied from this repository).
PROJECT_FILES = [
    "pyproject.toml", "README.md", "LICENSE", "fl_core/__init__.py", "fl_core/registry.py"
]  # fmt: skip
# What a working copy accumulates and no upload may carry: run outputs, caches, keys.
JUNK = {
    "outputs/fedsilo-20260101/model.pt": b"weights",
    "outputs/fedsilo-20260101/metrics.json": b"{}",
    "mlruns/0/meta.yaml": b"name: x",
    "fl_core/__pycache__/registry.cpython-311.pyc": b"\x00",
    "stray.pyc": b"\x00",
    ".venv/lib/python3.11/site-packages/x.py": b"",
    ".pytest_cache/v/cache/nodeids": b"[]",
    ".ruff_cache/0.6/123": b"",
    ".hypothesis/examples/x": b"",
    "pki/silo-a.key": b"-----BEGIN PRIVATE KEY-----",
    "pki/ca.pem": b"-----BEGIN CERTIFICATE-----",
    "server.key": b"-----BEGIN PRIVATE KEY-----",
    ".env": b"AZURE_CLIENT_SECRET=not-a-real-secret",
    ".env.local": b"AZURE_CLIENT_SECRET=not-a-real-secret",
    "dist/fedsilo-0.1.0.tar.gz": b"",
}


def _patterns(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_amlignore_repeats_every_gitignore_pattern():
    """The SDK reads .amlignore instead of .gitignore when both exist: a pattern only in
    .gitignore would be uploaded."""
    missing = set(_patterns(REPO_ROOT / ".gitignore")) - set(_patterns(REPO_ROOT / ".amlignore"))
    assert not missing, f".amlignore lacks the .gitignore patterns {sorted(missing)}"
    assert ".git" in _patterns(REPO_ROOT / ".amlignore")


@pytest.fixture
def upload_container(azurite, blob_container) -> str:
    """A SAS URL of a fresh Azurite container, as AzureML's startPendingUpload gives one."""
    settings = dict(p.split("=", 1) for p in azurite.connection_string.split(";") if p)
    sas = generate_container_sas(
        settings["AccountName"],
        blob_container,
        account_key=settings["AccountKey"],
        permission=ContainerSasPermissions(read=True, write=True, list=True, create=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    return f"{azurite.url(blob_container)}?{sas}"


def _project(root: Path, ignore_files: list[str]) -> Path:
    """A copy of this project's files and ignore files, plus the junk of a working copy."""
    project = root / "fedsilo-project"
    for name in [*PROJECT_FILES, *ignore_files]:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO_ROOT / name, project / name)
    for name, content in JUNK.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_bytes(content)
    return project


@pytest.mark.parametrize(
    "ignore_files",
    [[".amlignore", ".gitignore"], [".gitignore"]],
    ids=["amlignore", "gitignore-only"],
)
def test_code_directory_is_uploaded_once_without_outputs_caches_or_keys(
    ignore_files, tmp_path, write_spec, credential, transport, upload_container
):
    project = _project(tmp_path, ignore_files)
    if ".amlignore" in ignore_files:  # git's data: only the .amlignore leaves it out
        (project / ".git").write_text("gitdir: /somewhere/else\n")
    spec = load_spec(write_spec(orchestrator=orchestrator_block(str(project))))
    transport.upload_container_sas_url = upload_container
    client = AzureMLClient(
        spec, credential, transport=transport, enable_telemetry=False, show_progress=False
    )
    submission = client.submit(submission_id="20260101-000000-c0de")

    # What is in the container now: <project dir>/<file> (the pending-upload container is
    # the asset's own, so the SDK writes at its root).
    container = ContainerClient.from_container_url(upload_container)
    blobs = [b.name for b in container.list_blobs()]
    assert blobs, "the SDK uploaded nothing"
    assert all(b.startswith("fedsilo-project/") for b in blobs), blobs
    uploaded = {b.removeprefix("fedsilo-project/") for b in blobs}
    assert uploaded == {*PROJECT_FILES, *ignore_files}
    # The real bytes went up, not placeholders.
    blob = "fedsilo-project/pyproject.toml"
    assert container.download_blob(blob).readall() == (REPO_ROOT / "pyproject.toml").read_bytes()

    # ARM saw one upload for the five jobs: the first registers the code version, the
    # others find it by content hash and reuse it.
    calls = [(r.method, r.path) for r in transport.requests]
    uploads = [p for m, p in calls if m == "POST" and p.endswith("/startPendingUpload")]
    code_puts = [p for m, p in calls if m == "PUT" and "/codes/" in p]
    assert len(uploads) == 1 and len(code_puts) == 1
    code_id = code_puts[0]
    assert code_id.startswith(f"{ARM_WS}/codes/")
    registered = transport.codes[code_id]["properties"]
    assert registered["codeUri"].startswith(upload_container.split("?", 1)[0])
    assert registered["codeUri"].endswith("/fedsilo-project")
    first_job = next(i for i, (m, p) in enumerate(calls) if m == "PUT" and "/jobs/" in p)
    assert calls.index(("PUT", code_id)) < first_job

    # Every submitted job runs the uploaded code.
    job_bodies = [r.body["properties"] for r in transport.requests
                  if r.method == "PUT" and "/jobs/" in r.path]  # fmt: skip
    assert len(job_bodies) == len(submission.jobs) == 5
    assert {body["codeId"] for body in job_bodies} == {code_id}


def test_the_repository_itself_uploads_without_junk():
    """What `code: ..` from examples/ would upload of this checkout, by the SDK's own file
    walk and the repository's .amlignore: packages and pyproject, never outputs, caches,
    keys or git's data (whatever this working copy holds)."""
    from azure.ai.ml._utils._asset_utils import get_ignore_file, get_upload_files_from_folder

    ignore = get_ignore_file(REPO_ROOT)
    assert Path(ignore.path) == REPO_ROOT / ".amlignore"
    files = {dest for _, dest in get_upload_files_from_folder(REPO_ROOT, ignore_file=ignore)}
    assert {"pyproject.toml", "fl_app/config.py", "adapters/app.py"} <= files
    parts = {part for name in files for part in Path(name).parts}
    assert not parts & {"outputs", "__pycache__", ".venv", ".pytest_cache", ".git", "node_modules"}
    assert not [n for n in files if n.endswith((".pem", ".key", ".pyc")) or "/.env" in f"/{n}"]
