"""Checkpoints in Azure Blob that are never half-written (the local directory store is
:class:`fl_app.stores.LocalCheckpointStore`; both are chosen by URI scheme through
:data:`fl_app.stores.CHECKPOINT_STORES`, where this module registers Blob URLs).

Blob: the bytes are staged as uncommitted blocks and become the blob only when the block
list is committed, with their sha256 in the blob's metadata; a failure anywhere before the
commit (a crash, a dropped connection, an exception while producing the bytes) leaves the
previous checkpoint as it was. Reads verify the checksum.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Iterable

from adapters.blob.store import BlobError, BlobStore, parse_blob_uri
from fl_app import stores
from fl_app.stores import CheckpointStore, LocalCheckpointStore, chunks


class ChecksumError(BlobError, stores.ChecksumError):
    """A Blob checkpoint's content does not match its recorded sha256."""


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
            for chunk in chunks(data):
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


def open_blob_checkpoint_store(uri: str) -> BlobCheckpointStore:
    """The Blob store for a Blob URL ``…/<container>/<prefix>`` (registered for
    :data:`adapters.app.BLOB_SCHEMES` in :data:`fl_app.stores.CHECKPOINT_STORES`)."""
    location = parse_blob_uri(uri, require_blob=False)
    return BlobCheckpointStore(BlobStore.from_uri(uri), location.blob_path)


__all__ = [
    "BlobCheckpointStore",
    "CheckpointStore",
    "ChecksumError",
    "LocalCheckpointStore",
    "open_blob_checkpoint_store",
]
