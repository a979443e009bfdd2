"""Azure Blob Storage adapter: Blob URIs, :class:`BlobStore` and :func:`fetch_to_cache`.

See :mod:`adapters.blob.store` for the URI forms, the credential order and the errors.
"""

from adapters.blob import store as _store
from adapters.blob.store import *  # noqa: F403  (the public names listed in store.__all__)

__all__ = list(_store.__all__)

from adapters.blob.checkpoints import (
    BlobCheckpointStore,
    CheckpointStore,
    ChecksumError,
    LocalCheckpointStore,
    open_blob_checkpoint_store,
)

__all__ += ["BlobCheckpointStore", "CheckpointStore", "ChecksumError", "LocalCheckpointStore",
            "open_blob_checkpoint_store"]  # fmt: skip
