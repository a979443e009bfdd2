"""Tests of adapters.blob against a real Azurite (see conftest.py), plus pure URI parsing."""

from __future__ import annotations

import logging
import os
import random
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from azure.identity import ManagedIdentityCredential
from azure.storage.blob import ContainerClient

from adapters.blob import (
    BlobAuthError,
    BlobConfigError,
    BlobError,
    BlobExistsError,
    BlobLocation,
    BlobNotFoundError,
    BlobStore,
    BlobUnavailableError,
    fetch_to_cache,
    is_blob_uri,
    parse_blob_uri,
)
from adapters.blob import store as blob_store

if TYPE_CHECKING:  # the fixtures' type; conftest is not imported at run time
    from conftest import Azurite

AZURITE_DEV_CONNECTION_STRING = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey="
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
)

AZURE_ENV_PREFIXES = ("AZURE_", "IDENTITY_", "MSI_", "AZUREML_")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No Azure-related variables in the environment."""
    for name in list(os.environ):
        if name.startswith(AZURE_ENV_PREFIXES) or name == "DEFAULT_IDENTITY_CLIENT_ID":
            monkeypatch.delenv(name)
    return monkeypatch


def _free_port() -> int:
    """A loopback port that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- URI parsing


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        (
            "https://myacct.blob.core.windows.net/data/folder/train.csv",
            BlobLocation("https://myacct.blob.core.windows.net", "data", "folder/train.csv"),
        ),
        (
            "https://MyAcct.blob.core.windows.net/data/my%20file%C3%A9.csv",
            BlobLocation("https://myacct.blob.core.windows.net", "data", "my fileé.csv"),
        ),
        (
            "https://gov1.blob.core.usgovcloudapi.net/c-1/x.csv",
            BlobLocation("https://gov1.blob.core.usgovcloudapi.net", "c-1", "x.csv"),
        ),
        (
            "http://127.0.0.1:10000/devstoreaccount1/data/a/b.csv",
            BlobLocation("http://127.0.0.1:10000/devstoreaccount1", "data", "a/b.csv"),
        ),
        (
            "http://localhost:10000/devstoreaccount1/data/b.csv",
            BlobLocation("http://localhost:10000/devstoreaccount1", "data", "b.csv"),
        ),
        (
            "http://azurite:10000/devstoreaccount1/$root/b.csv",
            BlobLocation("http://azurite:10000/devstoreaccount1", "$root", "b.csv"),
        ),
    ],
)
def test_parse_http_forms(uri: str, expected: BlobLocation) -> None:
    assert parse_blob_uri(uri) == expected
    assert is_blob_uri(uri)


def test_location_is_frozen_and_builds_url() -> None:
    loc = parse_blob_uri("https://myacct.blob.core.windows.net/data/my%20file.csv")
    assert loc.url == "https://myacct.blob.core.windows.net/data/my%20file.csv"
    assert parse_blob_uri(loc.url) == loc
    with pytest.raises(AttributeError):
        loc.container = "other"  # type: ignore[misc]


def test_parse_container_uri_when_blob_not_required() -> None:
    loc = parse_blob_uri("http://127.0.0.1:10000/devstoreaccount1/data", require_blob=False)
    assert loc == BlobLocation("http://127.0.0.1:10000/devstoreaccount1", "data", "")


def test_parse_az_uses_account_url_env(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("AZURE_STORAGE_ACCOUNT_URL", "https://myacct.blob.core.windows.net/")
    # The account URL wins over a connection string for another account.
    clean_env.setenv(
        "AZURE_STORAGE_CONNECTION_STRING",
        "DefaultEndpointsProtocol=https;AccountName=other;AccountKey=a2V5;"
        "EndpointSuffix=core.windows.net",
    )
    assert parse_blob_uri("az://data/folder/train.csv") == BlobLocation(
        "https://myacct.blob.core.windows.net", "data", "folder/train.csv"
    )


@pytest.mark.parametrize(
    ("connection_string", "account_url"),
    [
        (AZURITE_DEV_CONNECTION_STRING, "http://127.0.0.1:10000/devstoreaccount1"),
        ("UseDevelopmentStorage=true", "http://127.0.0.1:10000/devstoreaccount1"),
        (
            "DefaultEndpointsProtocol=https;AccountName=myacct;AccountKey=a2V5;"
            "EndpointSuffix=core.windows.net",
            "https://myacct.blob.core.windows.net",
        ),
    ],
)
def test_parse_az_uses_connection_string(
    clean_env: pytest.MonkeyPatch, connection_string: str, account_url: str
) -> None:
    clean_env.setenv("AZURE_STORAGE_CONNECTION_STRING", connection_string)
    assert parse_blob_uri("az://data/x.csv") == BlobLocation(account_url, "data", "x.csv")


def test_parse_az_without_account_names_both_env_vars(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(BlobConfigError) as info:
        parse_blob_uri("az://data/x.csv")
    message = str(info.value)
    assert "az://data/x.csv" in message
    assert "AZURE_STORAGE_ACCOUNT_URL" in message
    assert "AZURE_STORAGE_CONNECTION_STRING" in message
    assert is_blob_uri("az://data/x.csv")  # syntax only: no environment needed


def test_malformed_connection_string_is_not_echoed(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("AZURE_STORAGE_CONNECTION_STRING", "AccountKey=s3cr3t-value;garbage")
    with pytest.raises(BlobConfigError) as info:
        parse_blob_uri("az://data/x.csv")
    assert "AZURE_STORAGE_CONNECTION_STRING" in str(info.value)
    assert "s3cr3t" not in str(info.value)


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("", "empty"),
        ("data/train.csv", "scheme"),
        ("s3://bucket/train.csv", "scheme"),
        ("https://example.com/data/train.csv", "neither"),
        ("https://myacct.dfs.core.windows.net/data/x.csv", ".dfs."),
        ("https://myacct.blob.core.windows.net/", "no container"),
        ("https://myacct.blob.core.windows.net/data", "no blob path"),
        ("https://myacct.blob.core.windows.net/data/folder/", "folder"),
        ("https://myacct.blob.core.windows.net/Bad_Container/x.csv", "container name"),
        ("https://my-acct.blob.core.windows.net/data/x.csv", "account name"),
        ("http://127.0.0.1:10000/devstoreaccount1", "no container"),
        ("http://127.0.0.1:10000/", "account"),
        ("az://myacct.blob.core.windows.net/data/x.csv", "container first"),
        ("az:///x.csv", "no container"),
        ("https://myacct.blob.core.windows.net/data/x.csv#frag", "fragment"),
        ("https://u:p@myacct.blob.core.windows.net/data/x.csv", "password"),
    ],
)
def test_malformed_uris_raise_helpful_error(uri: str, reason: str) -> None:
    with pytest.raises(BlobConfigError) as info:
        parse_blob_uri(uri)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, BlobError)
    assert repr(uri) in message  # names the bad value
    assert reason in message
    for form in (
        "https://<account>.blob.core.windows.net/<container>/<path>",
        "http://127.0.0.1:10000/<account>/<container>/<path>",
        "az://<container>/<path>",
    ):
        assert form in message


def test_sas_token_is_refused_and_redacted() -> None:
    uri = "https://myacct.blob.core.windows.net/data/x.csv?sv=2024-01-01&sig=TOPSECRET"
    assert is_blob_uri(uri)
    with pytest.raises(BlobConfigError) as info:
        parse_blob_uri(uri)
    message = str(info.value)
    assert "TOPSECRET" not in message
    assert "https://myacct.blob.core.windows.net/data/x.csv?<redacted>" in message
    assert "SharedAccessSignature" in message


@pytest.mark.parametrize(
    "value",
    [
        "data/train.csv",
        "/tmp/train.csv",
        "C:\\data\\train.csv",
        "ylecun/mnist",
        "",
        "https://example.com/train.csv",
        "https://huggingface.co/datasets/x",
        "s3://bucket/key",
        None,
    ],
)
def test_is_blob_uri_rejects_other_sources(value: object) -> None:
    assert not is_blob_uri(value)


def test_error_hierarchy() -> None:
    for cls in (BlobAuthError, BlobUnavailableError, BlobNotFoundError, BlobConfigError):
        assert issubclass(cls, BlobError)
    assert issubclass(BlobNotFoundError, FileNotFoundError)
    assert issubclass(BlobExistsError, FileExistsError)
    assert issubclass(BlobConfigError, ValueError)


# --------------------------------------------------------------------------- store on Azurite


@pytest.fixture
def store(azurite_env: Azurite, blob_container: str) -> Iterator[BlobStore]:
    with BlobStore.from_uri(azurite_env.url(blob_container)) as opened:
        yield opened


def test_write_read_exists_list_round_trip(store: BlobStore) -> None:
    assert store.list() == []
    assert not store.exists("a/one.txt")
    url = store.write_bytes("a/one.txt", b"one")
    assert url == store.url_for("a/one.txt")
    store.write_bytes("a/two.bin", bytearray(b"\x00\x01\x02"))
    store.write_bytes("b/three.txt", memoryview(b"three"))
    store.write_bytes("names with spaces/é.csv", b"x,y\n1,2\n")

    assert store.read_bytes("a/one.txt") == b"one"
    assert store.read_bytes("a/two.bin") == b"\x00\x01\x02"
    assert store.read_bytes("names with spaces/é.csv") == b"x,y\n1,2\n"
    assert store.exists("a/one.txt")
    assert not store.exists("a/missing.txt")
    assert store.list("a/") == ["a/one.txt", "a/two.bin"]
    assert store.list() == ["a/one.txt", "a/two.bin", "b/three.txt", "names with spaces/é.csv"]
    assert store.list("zzz") == []


def test_upload_download_file_round_trip(store: BlobStore, tmp_path: Path) -> None:
    payload = random.Random(0).randbytes(3 * 1024 * 1024 + 17)  # several download chunks
    source = tmp_path / "model.pt"
    source.write_bytes(payload)
    store.upload_file(source, "runs/1/model.pt")

    target = tmp_path / "deep" / "er" / "copy.pt"
    assert store.download_file("runs/1/model.pt", target) == target
    assert target.read_bytes() == payload
    assert [p.name for p in target.parent.iterdir()] == ["copy.pt"]  # no temp file left

    # Overwrite in place, with both APIs.
    source.write_bytes(b"v2")
    store.upload_file(str(source), "runs/1/model.pt")
    assert store.read_bytes("runs/1/model.pt") == b"v2"
    store.download_file("runs/1/model.pt", str(target))
    assert target.read_bytes() == b"v2"


def test_overwrite_false_keeps_existing_blob(store: BlobStore, tmp_path: Path) -> None:
    store.write_bytes("x.txt", b"first")
    with pytest.raises(BlobExistsError) as info:
        store.write_bytes("x.txt", b"second", overwrite=False)
    assert isinstance(info.value, FileExistsError)
    assert store.url_for("x.txt") in str(info.value)
    local = tmp_path / "x.txt"
    local.write_bytes(b"third")
    with pytest.raises(FileExistsError):
        store.upload_file(local, "x.txt", overwrite=False)
    assert store.read_bytes("x.txt") == b"first"
    store.write_bytes("new.txt", b"ok", overwrite=False)
    assert store.read_bytes("new.txt") == b"ok"


def test_upload_missing_local_file(store: BlobStore, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.csv"):
        store.upload_file(tmp_path / "nope.csv", "nope.csv")


def test_missing_blob_raises_file_not_found_naming_uri(store: BlobStore, tmp_path: Path) -> None:
    url = store.url_for("nope/missing.csv")
    with pytest.raises(FileNotFoundError) as info:
        store.read_bytes("nope/missing.csv")
    assert isinstance(info.value, BlobNotFoundError)
    assert url in str(info.value)
    target = tmp_path / "out" / "missing.csv"
    target.parent.mkdir()
    with pytest.raises(BlobNotFoundError, match=r"missing\.csv"):
        store.download_file("nope/missing.csv", target)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # no partial file


def test_missing_container(azurite_env: Azurite) -> None:
    with BlobStore.from_uri(azurite_env.url("no-such-container")) as store:
        with pytest.raises(BlobNotFoundError, match="container not found"):
            store.read_bytes("x.csv")
        with pytest.raises(FileNotFoundError, match="no-such-container"):
            store.list()
        assert not store.exists("x.csv")


def test_ensure_container_creates_once(azurite_env: Azurite) -> None:
    name = f"ensure-{os.urandom(6).hex()}"
    with BlobStore.from_uri(azurite_env.url(name)) as store:
        try:
            assert store.ensure_container() is True
            assert store.ensure_container() is False
            store.write_bytes("x", b"1")
            assert store.list() == ["x"]
        finally:
            store.container_client.delete_container()


def test_store_from_container_client(azurite: Azurite, blob_container: str) -> None:
    client = ContainerClient.from_connection_string(azurite.connection_string, blob_container)
    with BlobStore(client) as store:
        assert store.container == blob_container
        assert store.account_url == azurite.account_url
        store.write_bytes("k.txt", b"v")
        assert store.read_bytes("k.txt") == b"v"
        assert repr(store) == f"BlobStore({azurite.url(blob_container)!r})"


def test_wrong_account_key_is_auth_error(
    azurite: Azurite, blob_container: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad_key = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ=="
    monkeypatch.setenv(
        "AZURE_STORAGE_CONNECTION_STRING",
        azurite.connection_string_for(azurite.account_url, bad_key),
    )
    with (
        BlobStore.from_uri(azurite.url(blob_container)) as store,
        pytest.raises(BlobAuthError) as info,
    ):
        store.read_bytes("x.csv")
    message = str(info.value)
    assert "AZURE_STORAGE_CONNECTION_STRING" in message
    assert "403" in message
    assert bad_key not in message


def test_connection_string_for_other_account_is_not_used(
    azurite: Azurite, clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    other = azurite.account_url.rsplit("/", 1)[0] + "/otheraccount"
    with pytest.raises(BlobAuthError) as info:
        BlobStore.from_uri(f"{other}/data/x.csv")
    message = str(info.value)
    assert "otheraccount" in message
    assert "not this account" in message


# --------------------------------------------------------------------------- fetch_to_cache


def test_fetch_to_cache_downloads_only_when_blob_changes(
    azurite_env: Azurite,
    blob_container: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = tmp_path / "cache"
    with BlobStore.from_uri(azurite_env.url(blob_container)) as store:
        store.write_bytes("silo/train.csv", b"a,b\n1,2\n")
    uri = f"az://{blob_container}/silo/train.csv"
    downloads = "Downloaded"

    with caplog.at_level(logging.INFO, logger="adapters.blob"):
        first = fetch_to_cache(uri, cache_dir=cache)
    assert first.read_bytes() == b"a,b\n1,2\n"
    assert first.parent == cache
    assert first.name.endswith("-train.csv")
    assert caplog.text.count(downloads) == 1
    stat = first.stat()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="adapters.blob"):
        again = fetch_to_cache(uri, cache_dir=cache)
    assert again == first
    assert (again.stat().st_ino, again.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    assert downloads not in caplog.text

    # The same blob by its full URL shares the cache entry.
    assert fetch_to_cache(azurite_env.url(blob_container, "silo/train.csv"), cache) == first

    with BlobStore.from_uri(azurite_env.url(blob_container)) as store:
        store.write_bytes("silo/train.csv", b"a,b\n3,4\n")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="adapters.blob"):
        changed = fetch_to_cache(uri, cache_dir=cache)
    assert changed != first
    assert changed.read_bytes() == b"a,b\n3,4\n"
    assert caplog.text.count(downloads) == 1
    assert not first.exists()  # the stale version was pruned
    assert sorted(p.name for p in cache.iterdir()) == [changed.name]


def test_fetch_to_cache_default_dir(
    azurite_env: Azurite,
    blob_container: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    with BlobStore.from_uri(azurite_env.url(blob_container)) as store:
        store.write_bytes("d.csv", b"1\n")
    path = fetch_to_cache(azurite_env.url(blob_container, "d.csv"))
    assert path.parent == tmp_path / "xdg" / "fedsilo" / "blob"
    assert path.read_bytes() == b"1\n"


def test_fetch_to_cache_keeps_versions_of_different_blobs(
    azurite_env: Azurite, blob_container: str, tmp_path: Path
) -> None:
    with BlobStore.from_uri(azurite_env.url(blob_container)) as store:
        store.write_bytes("a/data.csv", b"a")
        store.write_bytes("b/data.csv", b"b")
    a = fetch_to_cache(f"az://{blob_container}/a/data.csv", tmp_path)
    b = fetch_to_cache(f"az://{blob_container}/b/data.csv", tmp_path)
    assert a != b
    assert (a.read_bytes(), b.read_bytes()) == (b"a", b"b")


def test_fetch_missing_blob_names_uri(
    azurite_env: Azurite, blob_container: str, tmp_path: Path
) -> None:
    uri = f"az://{blob_container}/nope/missing.csv"
    with pytest.raises(FileNotFoundError) as info:
        fetch_to_cache(uri, cache_dir=tmp_path)
    assert uri in str(info.value)
    assert isinstance(info.value, BlobNotFoundError)
    assert info.value.uri == uri
    assert list(tmp_path.iterdir()) == []

    url = azurite_env.url(blob_container, "nope/missing.csv")
    with pytest.raises(BlobNotFoundError, match=re.escape(url)):
        fetch_to_cache(url, cache_dir=tmp_path)


# --------------------------------------------------------------------------- failures


@pytest.mark.timeout(30)
def test_unreachable_endpoint_fails_fast(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    account_url = f"http://127.0.0.1:{_free_port()}/devstoreaccount1"
    connection_string = AZURITE_DEV_CONNECTION_STRING.replace(
        "http://127.0.0.1:10000/devstoreaccount1", account_url
    )
    clean_env.setenv("AZURE_STORAGE_CONNECTION_STRING", connection_string)
    uri = f"{account_url}/data/train.csv"

    start = time.monotonic()
    with pytest.raises(BlobUnavailableError) as info:
        fetch_to_cache(uri, cache_dir=tmp_path)
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert account_url in message
    assert "Azurite" in message
    assert "network" in message

    with BlobStore.from_uri(uri) as store, pytest.raises(BlobUnavailableError):
        store.write_bytes("train.csv", b"x")


def test_http_account_without_connection_string(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(BlobAuthError, match="AZURE_STORAGE_CONNECTION_STRING"):
        BlobStore.from_uri("http://127.0.0.1:10000/devstoreaccount1/data/x.csv")


@pytest.mark.timeout(60)
def test_https_account_without_credentials_is_auth_error(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # No az/azd/pwsh on PATH and an empty home: no developer credential can be found,
    # and without managed-identity hints DefaultAzureCredential must not probe IMDS.
    clean_env.setenv("HOME", str(tmp_path))
    clean_env.setenv("PATH", str(tmp_path))
    uri = "https://fedsilonoaccount.blob.core.windows.net/data/train.csv"

    start = time.monotonic()
    with pytest.raises(BlobAuthError) as info:
        fetch_to_cache(uri, cache_dir=tmp_path / "cache")
    assert time.monotonic() - start < 15
    message = str(info.value)
    assert "AZURE_STORAGE_CONNECTION_STRING" in message
    assert "az login" in message
    assert "fedsilonoaccount" in message

    with BlobStore.from_uri(uri) as store, pytest.raises(BlobAuthError):
        store.exists("train.csv")


def test_managed_identity_only_with_env_hint(clean_env: pytest.MonkeyPatch) -> None:
    def chain_has_managed_identity() -> bool:
        credential = blob_store._default_credential()
        try:
            return any(isinstance(c, ManagedIdentityCredential) for c in credential.credentials)
        finally:
            credential.close()

    assert not chain_has_managed_identity()
    clean_env.setenv("IDENTITY_ENDPOINT", "http://127.0.0.1:1/msi/token")
    clean_env.setenv("IDENTITY_HEADER", "x")
    assert chain_has_managed_identity()


def test_invalid_token_credentials_setting_is_auth_error(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("AZURE_TOKEN_CREDENTIALS", "nonsense")
    with pytest.raises(BlobAuthError, match="AZURE_TOKEN_CREDENTIALS"):
        BlobStore.from_uri("https://myacct.blob.core.windows.net/data")
