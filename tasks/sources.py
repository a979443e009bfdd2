"""Resolve a task's ``data.source`` (or a silo's node-config ``data-source``) to something
loadable: a local file or directory.

Blob URLs (``https://<account>.blob.core.windows.net/…``, Azurite URLs, ``az://…``) are
fetched through :mod:`adapters.blob` into a local cache; the adapter is imported only
when such a URL is given, so the core runs without Azure.
"""

from __future__ import annotations

from pathlib import Path


def is_blob_url(source: str) -> bool:
    """True when ``source`` names an Azure Blob object."""
    return source.startswith(("az://", "https://", "http://"))


def resolve_local_path(source: str) -> Path:
    """A local path for ``source``: the path itself, or a cached copy of the blob."""
    if is_blob_url(source):
        from adapters.blob import fetch_to_cache

        return fetch_to_cache(source)
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"data source '{source}' does not exist; give an existing file/directory, a Blob "
            'URL, or "" for the offline default data'
        )
    return path


def load_hf(source: str):
    """A Hugging Face dataset: a ``save_to_disk`` directory, or a hub id written ``<id>`` or
    ``<id>:<config>``. Returns what ``datasets`` returns (a ``Dataset`` or ``DatasetDict``)."""
    import datasets

    path = Path(source).expanduser()
    if path.exists():
        return datasets.load_from_disk(str(path))
    name, _, subset = source.partition(":")
    return datasets.load_dataset(name, subset or None)
