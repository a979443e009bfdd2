"""Checkpoints that are never half-written: in Azure Blob or a local directory.

Blob: the bytes are staged as uncommitted blocks and become the blob only when the block
list is committed, with their sha256 in the blob's metadata; a failure anywhere before the
commit (a crash, a dropped connection, an exception while producing the bytes) leaves the
previous checkpoint as it was. Reads verify the checksum. Local: temp file, fsync, atomic
rename, sha256 in a sidecar file.
"""

from __future__ import annotations

import base64
import hashlib
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from adapters.blob.store import BlobError, BlobStore, is_blob_uri, parse_blob_uri

BLOCK_SIZE = 4 * 1024 * 1024


class ChecksumError(BlobError):
    """A checkpoint's content does not match its recorded sha256."""


class CheckpointStore(Protocol):
    """Saves and loads named checkpoints atomically, verified by sha256."""

    def save(self, name: str, data: bytes | Iterable[bytes]) -> str:
        """Store ``data`` under ``name``; return its sha256."""

    def load(self, name: str) -> bytes:
        """The bytes stored under ``name``, after verifying their sha256."""


def _chunks(data: bytes | Iterable[bytes]) -> Iterable[bytes]:
    if isinstance(data, bytes | bytearray | memoryview):
        view = memoryview(data)
        for start in range(0, len(view), BLOCK_SIZE):
            yield bytes(view[start : start + BLOCK_SIZE])
    else:
        yield from data


class BlobCheckpointStore:
    """Checkpoints under ``prefix`` of a Blob container (see module doc)."""

    def __init__(self, store: BlobStore, prefix: str = "") -> None:
        self.store = store
        self.prefix = prefix.strip("/")

    def _path(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def save(self, name: str, data: bytes | Iterable[bytes]) -> str:
        blob = self.store.container_client.get_blob_client(self._path(name))
        digest = hashlib.sha256()
        blocks = []
        with self.store._translate_errors("save checkpoint", self._path(name)):
            for chunk in _chunks(data):
                block_id = base64.b64encode(uuid.uuid4().hex.encode()).decode()
                blob.stage_block(block_id, chunk)
                digest.update(chunk)
                blocks.append(block_id)
            blob.commit_block_list(blocks, metadata={"sha256": digest.hexdigest()})
        return digest.hexdigest()

    def load(self, name: str) -> bytes:
        blob = self.store.container_client.get_blob_client(self._path(name))
        with self.store._translate_errors("load checkpoint", self._path(name)):
            downloader = blob.download_blob()
            data = downloader.readall()
            expected = (downloader.properties.metadata or {}).get("sha256")
        actual = hashlib.sha256(data).hexdigest()
        if expected != actual:
            raise ChecksumError(
                f"checkpoint {self.store.url_for(self._path(name))} is corrupt: sha256 "
                f"{actual} does not match the recorded {expected}; restore an earlier one"
            )
        return data


class LocalCheckpointStore:
    """Checkpoints in a local directory (see module doc)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def save(self, name: str, data: bytes | Iterable[bytes]) -> str:
        path = self.directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        digest = hashlib.sha256()
        try:
            with tmp.open("xb") as fh:
                for chunk in _chunks(data):
                    fh.write(chunk)
                    digest.update(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            Path(f"{path}.sha256").write_text(digest.hexdigest() + "\n")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return digest.hexdigest()

    def load(self, name: str) -> bytes:
        path = self.directory / name
        data = path.read_bytes()
        expected = Path(f"{path}.sha256").read_text().strip()
        if hashlib.sha256(data).hexdigest() != expected:
            raise ChecksumError(f"checkpoint {path} is corrupt: sha256 mismatch")
        return data


def open_checkpoint_store(uri: str) -> CheckpointStore:
    """A Blob store for a Blob URL (``…/<container>/<prefix>``), else a local directory."""
    if is_blob_uri(uri):
        location = parse_blob_uri(uri, require_blob=False)
        return BlobCheckpointStore(BlobStore.from_uri(uri), location.blob_path)
    return LocalCheckpointStore(uri)
