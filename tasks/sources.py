"""Resolve a task's ``data.source`` (or a silo's node-config ``data-source``) to something
loadable: a local file or directory.

A source written ``scheme://…`` is fetched into a local cache by the data source
registered for its scheme in :data:`DATA_SOURCES`: the Azure Blob adapter registers
``https``, ``http`` (Azurite) and ``az`` (:func:`adapters.blob.fetch_to_cache`, wired by the
app's composition root :mod:`adapters.app`, imported only when such a URL is given, so
the core runs without Azure); a separate package adds a scheme through the entry-point
group ``fedsilo.data_sources`` (name = scheme, value = a callable ``url -> Path``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fl_core.registry import Registry, uri_scheme

#: URI scheme → callable ``url -> local Path`` (imported on first use).
DATA_SOURCES: Registry[Callable[[str], Path]] = Registry(
    "data source", group="fedsilo.data_sources", lazy=True
)


def is_remote(source: str) -> bool:
    """True when ``source`` is a ``scheme://…`` URL that a data source fetches."""
    return bool(uri_scheme(source))


def resolve_local_path(source: str) -> Path:
    """A local path for ``source``: the path itself, or a cached copy of the remote object."""
    scheme = uri_scheme(source)
    if scheme:
        fetch = DATA_SOURCES.for_config(
            scheme,
            key="data.source",
            value=source,
            hint="Blob URLs need the Azure adapter wired by adapters.app.",
        )
        return fetch(source)
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
