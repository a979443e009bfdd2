"""Azure Blob Storage adapter: Blob URIs, :class:`BlobStore` and :func:`fetch_to_cache`.

See :mod:`adapters.blob.store` for the URI forms, the credential order and the errors.
"""

from adapters.blob.store import (
    ACCOUNT_URL_ENV,
    CONNECTION_STRING_ENV,
    MANAGED_IDENTITY_HINT_ENV_VARS,
    BlobAuthError,
    BlobConfigError,
    BlobError,
    BlobExistsError,
    BlobLocation,
    BlobNotFoundError,
    BlobStore,
    BlobUnavailableError,
    default_cache_dir,
    fetch_to_cache,
    is_blob_uri,
    parse_blob_uri,
)

__all__ = [
    "ACCOUNT_URL_ENV",
    "CONNECTION_STRING_ENV",
    "MANAGED_IDENTITY_HINT_ENV_VARS",
    "BlobAuthError",
    "BlobConfigError",
    "BlobError",
    "BlobExistsError",
    "BlobLocation",
    "BlobNotFoundError",
    "BlobStore",
    "BlobUnavailableError",
    "default_cache_dir",
    "fetch_to_cache",
    "is_blob_uri",
    "parse_blob_uri",
]

from adapters.blob.checkpoints import (
    BlobCheckpointStore,
    CheckpointStore,
    ChecksumError,
    LocalCheckpointStore,
    open_checkpoint_store,
)

__all__ += [
    "BlobCheckpointStore",
    "CheckpointStore",
    "ChecksumError",
    "LocalCheckpointStore",
    "open_checkpoint_store",
]
