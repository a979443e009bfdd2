"""Checkpoint stores, chosen by the URI scheme of ``output.checkpoint-uri``.

A store saves and loads named checkpoints atomically, verified by sha256. The local
directory store (scheme ``file``, and any path without ``scheme://``) is here; other
schemes come from the registry :data:`CHECKPOINT_STORES`: the Azure Blob store registers
``https``, ``http`` (Azurite) and ``az`` from :mod:`adapters.blob.checkpoints` (wired by
the app's composition root, :mod:`adapters.app`), and a separate package adds a scheme
through the entry-point group ``fedsilo.checkpoint_stores``: the entry point's name is
the scheme, its value a callable ``uri -> store``.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

from fl_core.registry import Registry, uri_scheme

BLOCK_SIZE = 4 * 1024 * 1024


class CheckpointStore(Protocol):
    """Saves and loads named checkpoints atomically, verified by sha256."""

    def save(self, name: str, data: bytes | Iterable[bytes]) -> str:
        """Store ``data`` under ``name``; return its sha256."""

    def load(self, name: str) -> bytes:
        """The bytes stored under ``name``, after verifying their sha256; a missing
        checkpoint raises ``FileNotFoundError``."""


class ChecksumError(Exception):
    """A checkpoint's content does not match its recorded sha256."""


#: URI scheme → callable ``uri -> CheckpointStore`` (imported on first use).
CHECKPOINT_STORES: Registry[Callable[[str], CheckpointStore]] = Registry(
    "checkpoint store", group="fedsilo.checkpoint_stores", lazy=True
)


def chunks(data: bytes | Iterable[bytes]) -> Iterable[bytes]:
    """``data`` in pieces of at most :data:`BLOCK_SIZE` bytes (an iterable passes through)."""
    if isinstance(data, bytes | bytearray | memoryview):
        view = memoryview(data)
        for start in range(0, len(view), BLOCK_SIZE):
            yield bytes(view[start : start + BLOCK_SIZE])
    else:
        yield from data


@CHECKPOINT_STORES.register("file")
class LocalCheckpointStore:
    """Checkpoints in a local directory: temp file, fsync, atomic rename, sha256 in a
    sidecar file."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        directory = os.fspath(directory)
        self.directory = Path(directory.removeprefix("file://"))

    def save(self, name: str, data: bytes | Iterable[bytes]) -> str:
        path = self.directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        digest = hashlib.sha256()
        try:
            with tmp.open("xb") as fh:
                for chunk in chunks(data):
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


def store_scheme(uri: str) -> str:
    """``"file"`` for a local path, else the URI's scheme (``https``, ``az``, …)."""
    return uri_scheme(uri) or "file"


def open_checkpoint_store(uri: str, *, key: str = "output.checkpoint-uri") -> CheckpointStore:
    """The store for ``uri``, chosen by its scheme; an unknown scheme is a
    :class:`ConfigError` naming ``key`` and the schemes there are."""
    opener = CHECKPOINT_STORES.for_config(
        store_scheme(uri),
        key=key,
        value=uri,
        hint="Use a local directory, or a Blob URL with the Azure adapter wired by "
        "adapters.app (the app's components in pyproject.toml).",
    )
    return opener(uri)
