"""Azure Blob Storage adapter: URIs, a small blob store and a local download cache.

Three URI forms name a blob (or, without a path, a container):

* ``https://<account>.blob.core.windows.net/<container>/<path>`` (Azure, any cloud suffix);
* ``http://127.0.0.1:10000/<account>/<container>/<path>`` (path-style: Azurite or another
  emulator on an IP address, ``localhost`` or a dot-less host name such as ``azurite``);
* ``az://<container>/<path>``, whose account URL comes from ``AZURE_STORAGE_ACCOUNT_URL``,
  else from the connection string in ``AZURE_STORAGE_CONNECTION_STRING``.

Credentials are resolved in this order:

1. ``AZURE_STORAGE_CONNECTION_STRING``, when it is for the URI's account (account key, SAS
   or the Azurite development account);
2. ``DefaultAzureCredential`` (azure-identity) for ``https`` accounts: environment service
   principal, workload identity, ``az login``, azd, PowerShell, VS Code. Managed identity is
   only tried when the environment hints at it (see :data:`MANAGED_IDENTITY_HINT_ENV_VARS`),
   so a laptop or CI runner without credentials fails at once instead of probing the
   instance-metadata endpoint. On a VM whose identity leaves no such hint, set
   ``AZURE_TOKEN_CREDENTIALS=ManagedIdentityCredential``.

Clients use a short retry policy and connection timeout, so an unreachable endpoint fails in
about ten seconds rather than minutes. Failures surface as :class:`BlobError` subclasses:
:class:`BlobConfigError` (also a ``ValueError``), :class:`BlobAuthError`,
:class:`BlobUnavailableError` and :class:`BlobNotFoundError` (also a ``FileNotFoundError``).

Example::

    from adapters.blob import fetch_to_cache

    csv_path = fetch_to_cache("az://datasets/fraud/train.csv")
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import os
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from azure.core.credentials import TokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobServiceClient, ContainerClient, LinearRetry

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

logger = logging.getLogger(__name__)

ACCOUNT_URL_ENV = "AZURE_STORAGE_ACCOUNT_URL"
"""Account URL used by ``az://`` URIs, e.g. ``https://myaccount.blob.core.windows.net``."""

CONNECTION_STRING_ENV = "AZURE_STORAGE_CONNECTION_STRING"
"""Connection string (account key, SAS or Azurite); tried before DefaultAzureCredential."""

MANAGED_IDENTITY_HINT_ENV_VARS = (
    "AZURE_TOKEN_CREDENTIALS",  # explicit azure-identity choice ("prod", a credential name)
    "IDENTITY_ENDPOINT",  # App Service, Functions, Container Apps, Arc, AzureML
    "MSI_ENDPOINT",  # AzureML compute instances, Cloud Shell, older App Service
    "AZURE_CLIENT_ID",  # user-assigned identity or workload identity
    "DEFAULT_IDENTITY_CLIENT_ID",  # AzureML compute clusters with a user-assigned identity
    "AZUREML_RUN_ID",  # running inside an AzureML job
)
"""If none of these is set, DefaultAzureCredential is built without managed identity."""

_CONNECTION_TIMEOUT_S = 5
_READ_TIMEOUT_S = 30
_RETRY_TOTAL = 1
_DOWNLOAD_TMP_SUFFIX = ".part"

_ACCEPTED_FORMS = (
    "Accepted forms:\n"
    "  https://<account>.blob.core.windows.net/<container>/<path>\n"
    "  http://127.0.0.1:10000/<account>/<container>/<path>   (Azurite / path-style)\n"
    f"  az://<container>/<path>   (account from {ACCOUNT_URL_ENV} or {CONNECTION_STRING_ENV})"
)
_ACCOUNT_RE = re.compile(r"^[a-z0-9]{3,24}$")
_CONTAINER_RE = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_SPECIAL_CONTAINERS = frozenset({"$root", "$web", "$logs"})
_VIRTUAL_HOST_RE = re.compile(r"^(?P<account>[^.]+)\.blob\.[a-z0-9.-]+$")
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


# --------------------------------------------------------------------------- errors


class BlobError(Exception):
    """Base class of every error raised by the Blob adapter."""


class BlobConfigError(BlobError, ValueError):
    """A Blob URI, account URL or connection string is malformed or missing."""


class BlobAuthError(BlobError):
    """No usable credentials were found, or the service rejected them."""


class BlobUnavailableError(BlobError):
    """The Blob endpoint could not be reached (bad URL, network, emulator not running)."""


class BlobNotFoundError(BlobError, FileNotFoundError):
    """The blob (or its container) does not exist. ``uri`` names what was looked up."""

    def __init__(self, message: str, *, uri: str | None = None) -> None:
        super().__init__(message)
        self.uri = uri


class BlobExistsError(BlobError, FileExistsError):
    """The blob already exists and ``overwrite=False`` was asked."""

    def __init__(self, message: str, *, uri: str | None = None) -> None:
        super().__init__(message)
        self.uri = uri


# --------------------------------------------------------------------------- URIs


@dataclass(frozen=True)
class BlobLocation:
    """Where a blob lives.

    Attributes:
        account_url: Account endpoint without a trailing slash, e.g.
            ``https://acct.blob.core.windows.net`` or ``http://127.0.0.1:10000/devstoreaccount1``.
        container: Container name.
        blob_path: Blob name inside the container (decoded; ``""`` for a container URI).
    """

    account_url: str
    container: str
    blob_path: str

    @property
    def url(self) -> str:
        """The blob's (or container's) full, percent-encoded URL."""
        base = f"{self.account_url}/{self.container}"
        return f"{base}/{quote(self.blob_path, safe='/~')}" if self.blob_path else base


def _redact(value: str) -> str:
    """Drop a query string (it may hold a SAS signature) from a URI shown in a message."""
    head, sep, _ = value.partition("?")
    return f"{head}?<redacted>" if sep else head


def _config_error(uri: str, reason: str) -> BlobConfigError:
    return BlobConfigError(f"Invalid Azure Blob URI {_redact(uri)!r}: {reason}.\n{_ACCEPTED_FORMS}")


def _is_path_style_host(host: str) -> bool:
    """Hosts addressed path-style (``/<account>/<container>``): IPs, localhost, dot-less names."""
    if host == "localhost" or "." not in host:
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _check_container(uri: str, container: str) -> None:
    if not container:
        raise _config_error(uri, "it names no container")
    if container in _SPECIAL_CONTAINERS or _CONTAINER_RE.match(container):
        return
    reason = (
        f"container name {container!r} is invalid (3-63 characters: lowercase letters, digits "
        "and single hyphens, starting and ending with a letter or digit)"
    )
    if "." in container:
        reason += "; az:// URIs name the container first; the account comes from the environment"
    raise _config_error(uri, reason)


def _check_blob_path(uri: str, blob_path: str, require_blob: bool) -> None:
    if not require_blob:
        return
    if not blob_path:
        raise _config_error(uri, "it names a container but no blob path")
    if blob_path.endswith("/"):
        raise _config_error(uri, "it ends with '/', which names a folder, not a blob")


def _normalise_account_url(url: str, source: str) -> str:
    """Validate an account URL taken from the environment and strip a trailing slash."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise BlobConfigError(
            f"{source} must be an http(s) account URL such as "
            f"https://<account>.blob.core.windows.net or "
            f"http://127.0.0.1:10000/devstoreaccount1, got {_redact(url)!r}"
        )
    if parts.query or parts.fragment:
        raise BlobConfigError(
            f"{source} must not carry a query string (put a SAS token in "
            f"{CONNECTION_STRING_ENV} instead), got {_redact(url)!r}"
        )
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{parts.path}".rstrip("/")


def _account_url_from_connection_string(conn_str: str) -> str:
    """Blob endpoint of a connection string, parsed by the SDK (no network)."""
    try:
        service = BlobServiceClient.from_connection_string(conn_str)
    except ValueError as exc:
        # Never echo the value: it holds an account key or SAS.
        raise BlobConfigError(
            f"{CONNECTION_STRING_ENV} is malformed (value not shown, it holds secrets): {exc} "
            "Expected e.g. 'DefaultEndpointsProtocol=https;AccountName=<account>;"
            "AccountKey=<key>;EndpointSuffix=core.windows.net', "
            "'BlobEndpoint=<url>;SharedAccessSignature=<sas>' or 'UseDevelopmentStorage=true'."
        ) from exc
    try:
        return service.url.split("?", 1)[0].rstrip("/")
    finally:
        service.close()


def _account_url_from_env(uri: str) -> str:
    account_url = os.environ.get(ACCOUNT_URL_ENV, "").strip()
    if account_url:
        return _normalise_account_url(account_url, ACCOUNT_URL_ENV)
    conn_str = os.environ.get(CONNECTION_STRING_ENV, "").strip()
    if conn_str:
        return _account_url_from_connection_string(conn_str)
    raise _config_error(
        uri,
        f"az:// URIs take the storage account from the environment, but neither "
        f"{ACCOUNT_URL_ENV} (e.g. https://<account>.blob.core.windows.net) nor "
        f"{CONNECTION_STRING_ENV} is set",
    )


def _parse(uri: str, *, require_blob: bool, resolve_account: bool) -> BlobLocation:
    if not isinstance(uri, str) or not uri.strip():
        raise _config_error(str(uri), "it is empty")
    uri = uri.strip()
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme not in ("az", "http", "https"):
        raise _config_error(uri, f"unsupported scheme {parts.scheme or '(none)'!r}")
    if parts.query:
        raise _config_error(
            uri,
            "query strings (such as SAS tokens) are not accepted in Blob URIs; put a SAS in "
            f"{CONNECTION_STRING_ENV} as 'BlobEndpoint=<account url>;SharedAccessSignature=<sas>'",
        )
    if parts.fragment:
        raise _config_error(uri, "it has a '#' fragment")

    if scheme == "az":
        container = parts.netloc
        _check_container(uri, container)
        blob_path = parts.path.lstrip("/")
        _check_blob_path(uri, blob_path, require_blob)
        account_url = _account_url_from_env(uri) if resolve_account else ""
        return BlobLocation(account_url, container, blob_path)

    host = (parts.hostname or "").lower()
    if not host:
        raise _config_error(uri, "it has no host")
    if parts.username or parts.password:
        raise _config_error(uri, "user names or passwords in the URL are not supported")
    try:
        port = parts.port
    except ValueError:
        raise _config_error(uri, "its port is not a number") from None
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc = f"{netloc}:{port}"
    path = parts.path.lstrip("/")

    match = _VIRTUAL_HOST_RE.match(host)
    if match:
        account = match["account"]
        if not _ACCOUNT_RE.match(account):
            raise _config_error(
                uri, f"account name {account!r} is invalid (3-24 lowercase letters or digits)"
            )
        account_url = f"{scheme}://{netloc}"
        container, _, rest = path.partition("/")
    elif _is_path_style_host(host):
        account, _, path = path.partition("/")
        if not account:
            raise _config_error(uri, "a path-style (Azurite) URL must start with /<account>/")
        if not _ACCOUNT_RE.match(account):
            raise _config_error(
                uri, f"account name {account!r} is invalid (3-24 lowercase letters or digits)"
            )
        account_url = f"{scheme}://{netloc}/{account}"
        container, _, rest = path.partition("/")
    else:
        hint = " (use the .blob. endpoint, not .dfs.)" if ".dfs." in host else ""
        raise _config_error(
            uri,
            f"host {host!r} is neither an Azure Blob endpoint (<account>.blob.core.windows.net)"
            f" nor a path-style emulator host (IP address or localhost){hint}",
        )
    _check_container(uri, container)
    blob_path = unquote(rest)
    _check_blob_path(uri, blob_path, require_blob)
    return BlobLocation(account_url, container, blob_path)


def parse_blob_uri(uri: str, *, require_blob: bool = True) -> BlobLocation:
    """Parse a Blob URI into a :class:`BlobLocation`.

    Args:
        uri: One of the forms listed in the module docstring. Percent-escapes in
            ``http(s)`` paths are decoded; ``az://`` paths are taken literally.
        require_blob: When true (the default) the URI must name a blob, not just a
            container or a folder ending in ``/``.

    Returns:
        The account URL (for ``az://``, resolved from the environment), container and blob path.

    Raises:
        BlobConfigError: The URI is malformed, or an ``az://`` URI has no account configured.
            The message names the bad value (without any query string) and the accepted forms.
    """
    return _parse(uri, require_blob=require_blob, resolve_account=True)


def is_blob_uri(s: object) -> bool:
    """Tell whether ``s`` looks like a Blob URI (as opposed to a local path or a dataset id).

    This is a cheap recogniser, deliberately looser than :func:`parse_blob_uri`: any
    ``az://`` string, and any ``http(s)`` URL on a ``*.blob.*`` host or on an IP address /
    ``localhost`` counts, so a malformed one still reaches ``parse_blob_uri`` and its helpful
    error rather than being mistaken for a file path. Nothing is read from the environment.
    """
    if not isinstance(s, str):
        return False
    parts = urlsplit(s.strip())
    scheme = parts.scheme.lower()
    if scheme == "az":
        return True
    if scheme not in ("http", "https"):
        return False
    host = (parts.hostname or "").lower()
    if not host:
        return False
    if _VIRTUAL_HOST_RE.match(host):
        return True
    return _is_path_style_host(host) and parts.path.strip("/") != ""


# --------------------------------------------------------------------------- credentials


def _endpoint_key(url: str) -> tuple[str, str, int | None, str]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if host in _LOOPBACK_NAMES:
        host = "loopback"
    port = parts.port or {"http": 80, "https": 443}.get(scheme)
    return scheme, host, port, parts.path.rstrip("/")


def _same_account(url_a: str, url_b: str) -> bool:
    return _endpoint_key(url_a) == _endpoint_key(url_b)


def _client_kwargs(overrides: dict[str, Any]) -> dict[str, Any]:
    """Short retries and timeouts so an unreachable endpoint fails in seconds."""
    kwargs: dict[str, Any] = {
        # The storage default (ExponentialRetry: 3 retries, 15 s initial back-off) waits
        # minutes on a dead endpoint; one retry after about a second is enough here.
        "retry_policy": LinearRetry(backoff=1, retry_total=_RETRY_TOTAL, random_jitter_range=0.5),
        "retry_total": _RETRY_TOTAL,
        "connection_timeout": _CONNECTION_TIMEOUT_S,
        "read_timeout": _READ_TIMEOUT_S,
    }
    kwargs.update(overrides)
    return kwargs


def _default_credential() -> TokenCredential:
    """A DefaultAzureCredential that skips managed identity unless the environment hints at it."""
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError as exc:  # pragma: no cover - azure-identity is a declared dependency
        raise BlobAuthError(
            f"azure-identity is not installed; install it or set {CONNECTION_STRING_ENV}"
        ) from exc
    kwargs: dict[str, Any] = {}
    if not any(os.environ.get(name) for name in MANAGED_IDENTITY_HINT_ENV_VARS):
        # Without a hint, managed identity would probe the instance-metadata endpoint, which
        # is slow (or hangs) off Azure. Opt in with AZURE_TOKEN_CREDENTIALS.
        kwargs["exclude_managed_identity_credential"] = True
        logger.debug("No managed-identity hint in the environment; not trying managed identity")
    try:
        return DefaultAzureCredential(**kwargs)
    except ValueError as exc:  # e.g. an invalid AZURE_TOKEN_CREDENTIALS value
        raise BlobAuthError(f"DefaultAzureCredential could not be set up: {exc}") from exc


def _no_credentials_hint() -> str:
    return (
        f"Set {CONNECTION_STRING_ENV} (account key or SAS), or sign in with `az login`, or set "
        "AZURE_CLIENT_ID / AZURE_TENANT_ID / AZURE_CLIENT_SECRET for a service principal, or "
        "run on Azure with a managed identity (on a VM with no identity environment variables, "
        "also set AZURE_TOKEN_CREDENTIALS=ManagedIdentityCredential)."
    )


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


# --------------------------------------------------------------------------- store


class BlobStore:
    """Read and write blobs of one container.

    Build it with :meth:`from_uri` (credentials from the environment, see the module
    docstring) or from an existing ``azure.storage.blob.ContainerClient``. Blob paths given to
    the methods are relative to the container. Use it as a context manager, or call
    :meth:`close`, to release the HTTP session.
    """

    def __init__(self, container_client: ContainerClient) -> None:
        """Wrap ``container_client``; its credential and pipeline settings are used as they are."""
        self._client = container_client
        self._container = container_client.container_name
        parts = urlsplit(container_client.url)
        base_path = parts.path.rstrip("/").rsplit("/", 1)[0]  # drop "/<container>"
        self._account_url = f"{parts.scheme}://{parts.netloc}{base_path}"
        self._credential_source = "the ContainerClient given to BlobStore"
        self._owned_credential: Any = None

    @classmethod
    def from_uri(
        cls,
        uri: str,
        *,
        credential: Any = None,
        **client_kwargs: Any,
    ) -> BlobStore:
        """Open the container named by ``uri`` (any blob path in it is ignored).

        Args:
            uri: A Blob URI (see :func:`parse_blob_uri`); a container URI is enough.
            credential: Explicit credential (token credential, account key, SAS); when given,
                the environment is not consulted for credentials.
            **client_kwargs: Extra ``ContainerClient`` keyword arguments; they override the
                short default retry policy and timeouts.

        Raises:
            BlobConfigError: The URI or the connection string is malformed.
            BlobAuthError: No way to authenticate to this account could be set up.
        """
        loc = parse_blob_uri(uri, require_blob=False)
        kwargs = _client_kwargs(client_kwargs)
        owned_credential = None
        if credential is not None:
            client = ContainerClient(
                loc.account_url, loc.container, credential=credential, **kwargs
            )
            source = "the credential given to BlobStore.from_uri"
        else:
            client, source, owned_credential = cls._client_from_env(loc, kwargs)
        store = cls(client)
        store._credential_source = source
        store._owned_credential = owned_credential
        logger.debug("Opened %r with credentials from %s", store, source)
        return store

    @staticmethod
    def _client_from_env(
        loc: BlobLocation, kwargs: dict[str, Any]
    ) -> tuple[ContainerClient, str, Any]:
        mismatch = ""
        conn_str = os.environ.get(CONNECTION_STRING_ENV, "").strip()
        if conn_str:
            conn_url = _account_url_from_connection_string(conn_str)
            if _same_account(conn_url, loc.account_url):
                client = ContainerClient.from_connection_string(conn_str, loc.container, **kwargs)
                return client, CONNECTION_STRING_ENV, None
            mismatch = f" ({CONNECTION_STRING_ENV} is set, but for {conn_url}, not this account)"
            logger.warning(
                "%s is for %s, not %s; not using it",
                CONNECTION_STRING_ENV,
                conn_url,
                loc.account_url,
            )
        if loc.account_url.startswith("https://"):
            credential = _default_credential()
            client = ContainerClient(
                loc.account_url, loc.container, credential=credential, **kwargs
            )
            return client, f"DefaultAzureCredential{mismatch}", credential
        raise BlobAuthError(
            f"No credentials for {loc.account_url}{mismatch}: plain-http endpoints (Azurite or "
            f"another emulator) need {CONNECTION_STRING_ENV}, e.g. 'UseDevelopmentStorage=true' "
            "or 'DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=<key>;"
            f"BlobEndpoint={loc.account_url};'. DefaultAzureCredential needs https."
        )

    # -- properties and lifecycle ------------------------------------------------

    @property
    def account_url(self) -> str:
        """Account endpoint, without a trailing slash and without any SAS."""
        return self._account_url

    @property
    def container(self) -> str:
        """Container name."""
        return self._container

    @property
    def container_client(self) -> ContainerClient:
        """The underlying SDK client, for operations this class does not wrap."""
        return self._client

    def url_for(self, blob_path: str = "") -> str:
        """Full URL of ``blob_path`` in this container (of the container for ``""``)."""
        return BlobLocation(self._account_url, self._container, blob_path).url

    def close(self) -> None:
        """Close the HTTP session (and the credential, if this store created it)."""
        self._client.close()
        if self._owned_credential is not None and hasattr(self._owned_credential, "close"):
            self._owned_credential.close()

    def __enter__(self) -> BlobStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"BlobStore({self.url_for()!r})"

    # -- error translation ---------------------------------------------------------

    @contextlib.contextmanager
    def _translate_errors(self, action: str, blob_path: str | None = None) -> Iterator[None]:
        """Turn azure-core exceptions into BlobError subclasses with actionable messages."""
        target = self.url_for(blob_path or "")
        try:
            yield
        except BlobError:
            raise
        except ResourceNotFoundError as exc:
            if getattr(exc, "error_code", None) == "ContainerNotFound":
                message = (
                    f"Azure Blob container not found: {self.url_for()} (while trying to {action} "
                    f"{target}); check the container name or create it"
                )
            else:
                message = f"Azure Blob not found: {target}"
            raise BlobNotFoundError(message, uri=target) from exc
        except ResourceExistsError as exc:
            raise BlobExistsError(
                f"Azure Blob already exists: {target} (pass overwrite=True to replace it)",
                uri=target,
            ) from exc
        except ClientAuthenticationError as exc:
            if exc.response is None:  # the credential could not produce a token
                raise BlobAuthError(
                    f"No usable Azure credentials to {action} {target} (tried "
                    f"{self._credential_source}). {_no_credentials_hint()} "
                    f"Cause: {_first_line(exc)}"
                ) from exc
            raise self._denied(exc, action, target) from exc
        except (ServiceRequestError, ServiceResponseError) as exc:
            raise BlobUnavailableError(
                f"Cannot reach the Azure Blob endpoint {self._account_url} (while trying to "
                f"{action} {target}): {_first_line(exc)}. Check the URL, your network or proxy, "
                "or that Azurite is running (bash .ci/start-azurite.sh)."
            ) from exc
        except HttpResponseError as exc:
            if exc.status_code in (401, 403):
                raise self._denied(exc, action, target) from exc
            code = getattr(exc, "error_code", None) or exc.reason
            raise BlobError(
                f"Azure Blob request failed while trying to {action} {target}: "
                f"HTTP {exc.status_code} {code}"
            ) from exc
        except AzureError as exc:
            raise BlobError(
                f"Azure Blob error while trying to {action} {target}: {_first_line(exc)}"
            ) from exc

    def _denied(self, exc: HttpResponseError, action: str, target: str) -> BlobAuthError:
        code = getattr(exc, "error_code", None) or exc.reason
        return BlobAuthError(
            f"Azure Blob refused to {action} {target}: HTTP {exc.status_code} {code} with "
            f"credentials from {self._credential_source}. Check the account key or SAS in "
            f"{CONNECTION_STRING_ENV}, or that your identity holds a 'Storage Blob Data "
            "Reader/Contributor' role on the account."
        )

    # -- operations -----------------------------------------------------------------

    def _download(self, blob_path: str, destination: Callable[[str], Path]) -> Path:
        """Stream a blob into ``destination(etag)``, atomically (temp file, then rename)."""
        blob = self._client.get_blob_client(blob_path)
        with self._translate_errors("download", blob_path):
            downloader = blob.download_blob()
            dest = destination(downloader.properties.etag)
            dest.parent.mkdir(parents=True, exist_ok=True)
            # A hidden sibling (same file system, so the rename is atomic; "x" mode respects
            # the umask, unlike mkstemp's 0600).
            tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(6)}{_DOWNLOAD_TMP_SUFFIX}")
            try:
                with tmp.open("xb") as fh:
                    size = downloader.readinto(fh)
                os.replace(tmp, dest)
            except BaseException:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise
        logger.info("Downloaded %s (%d bytes) to %s", self.url_for(blob_path), size, dest)
        return dest

    def download_file(self, blob_path: str, local_path: str | os.PathLike[str]) -> Path:
        """Download a blob to ``local_path`` (parents created; written atomically).

        Raises:
            BlobNotFoundError: The blob or its container does not exist (nothing is written).
        """
        path = Path(local_path)
        return self._download(blob_path, lambda _etag: path)

    def upload_file(
        self, local_path: str | os.PathLike[str], blob_path: str, overwrite: bool = True
    ) -> str:
        """Upload a local file to ``blob_path`` and return the blob's URL.

        Raises:
            FileNotFoundError: ``local_path`` does not exist.
            BlobExistsError: The blob exists and ``overwrite`` is false.
        """
        path = Path(local_path)
        blob = self._client.get_blob_client(blob_path)
        with path.open("rb") as fh, self._translate_errors("upload", blob_path):
            blob.upload_blob(fh, overwrite=overwrite)
        logger.info("Uploaded %s to %s", path, self.url_for(blob_path))
        return self.url_for(blob_path)

    def read_bytes(self, blob_path: str) -> bytes:
        """Return a blob's content.

        Raises:
            BlobNotFoundError: The blob or its container does not exist.
        """
        blob = self._client.get_blob_client(blob_path)
        with self._translate_errors("read", blob_path):
            data = blob.download_blob().readall()
        logger.debug("Read %d bytes from %s", len(data), self.url_for(blob_path))
        return data

    def write_bytes(
        self, blob_path: str, data: bytes | bytearray | memoryview, overwrite: bool = True
    ) -> str:
        """Write ``data`` to ``blob_path`` and return the blob's URL.

        Raises:
            BlobExistsError: The blob exists and ``overwrite`` is false.
        """
        blob = self._client.get_blob_client(blob_path)
        with self._translate_errors("write", blob_path):
            blob.upload_blob(bytes(data), overwrite=overwrite)
        logger.info("Wrote %d bytes to %s", len(data), self.url_for(blob_path))
        return self.url_for(blob_path)

    def exists(self, blob_path: str) -> bool:
        """Tell whether ``blob_path`` exists (false also when the container does not)."""
        blob = self._client.get_blob_client(blob_path)
        with self._translate_errors("check", blob_path):
            return bool(blob.exists())

    def list(self, prefix: str = "") -> list[str]:
        """Names of the blobs whose name starts with ``prefix``, sorted.

        Raises:
            BlobNotFoundError: The container does not exist.
        """
        with self._translate_errors("list", prefix):
            return sorted(self._client.list_blob_names(name_starts_with=prefix or None))

    def ensure_container(self) -> bool:
        """Create the container if it is missing; return whether it was created."""
        with self._translate_errors("create container"):
            try:
                self._client.create_container()
            except ResourceExistsError:
                return False
        logger.info("Created container %s", self.url_for())
        return True

    def _etag(self, blob_path: str) -> str:
        blob = self._client.get_blob_client(blob_path)
        with self._translate_errors("inspect", blob_path):
            return str(blob.get_blob_properties().etag)


# --------------------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/fedsilo/blob``, i.e. ``~/.cache/fedsilo/blob`` by default."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fedsilo" / "blob"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _cache_names(loc: BlobLocation) -> tuple[str, Callable[[str], str]]:
    """(prefix shared by every cached version of the blob, etag -> file name)."""
    uri_key = _sha256(loc.url)[:16]
    base = re.sub(r"[^A-Za-z0-9._-]", "_", loc.blob_path.rsplit("/", 1)[-1])[-100:] or "blob"

    def name(etag: str) -> str:
        version_key = _sha256(f"{loc.url}\n{etag}")[:16]
        return f"{uri_key}-{version_key}-{base}"

    return f"{uri_key}-", name


def fetch_to_cache(uri: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Download the blob at ``uri`` into a local cache and return the cached file's path.

    The file name keeps the blob's base name (so ``.csv`` / ``.csv.gz`` stay recognisable)
    behind a key made of a sha256 of the blob URL and one of the URL plus the blob's etag:
    an unchanged blob is served from the cache after one metadata request, a changed blob
    is downloaded again and older cached versions of it are removed. Downloads go to a
    temporary file that is renamed into place, so concurrent callers never see a partial file.

    Args:
        uri: A Blob URI naming a blob (see :func:`parse_blob_uri`).
        cache_dir: Cache folder; default :func:`default_cache_dir` (``~/.cache/fedsilo/blob``).

    Raises:
        BlobConfigError: ``uri`` is malformed.
        BlobNotFoundError: The blob does not exist (the message names ``uri``).
        BlobAuthError: No credentials, or they were refused.
        BlobUnavailableError: The endpoint could not be reached.
    """
    loc = parse_blob_uri(uri)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    prefix, name_for = _cache_names(loc)
    with BlobStore.from_uri(uri) as store:
        try:
            cached = cache / name_for(store._etag(loc.blob_path))
            if cached.is_file():
                logger.debug("Cache hit for %s: %s", loc.url, cached)
                return cached
            # Named after the etag of the bytes actually downloaded, in case the blob changed
            # since the metadata request.
            path = store._download(loc.blob_path, lambda etag: cache / name_for(etag))
        except BlobNotFoundError as exc:
            if uri.strip() in str(exc):
                raise
            raise BlobNotFoundError(f"{exc} (requested as {uri})", uri=uri) from exc
    for old in cache.glob(f"{prefix}*"):
        if old != path:
            with contextlib.suppress(OSError):  # another process may be reading or removing it
                old.unlink()
                logger.debug("Removed stale cached version %s", old)
    return path
