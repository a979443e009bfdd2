"""Certificates and SuperNode keys for a TLS + node-authenticated federation.

Everything is generated with the ``cryptography`` package (no ``openssl`` binary):

* :func:`make_ca` — a self-signed certificate authority (``ca.crt``, ``ca.key``, EC P-384).
* :func:`make_server_cert` — the SuperLink's TLS certificate signed by that CA
  (``server.crt``, ``server.key``), with SANs ``127.0.0.1``, ``localhost`` and any extra
  ``hosts`` (IP addresses or DNS names).
* :func:`make_node_keys` — one EC P-384 key pair per SuperNode in OpenSSH format
  (``<name>`` private, ``<name>.pub`` public), as Flower's node authentication expects:
  the SuperNode signs its requests with ``--auth-supernode-private-key <name>``; the
  federation admin registers ``<name>.pub`` with ``flwr supernode register``; a SuperLink
  started with ``--enable-supernode-auth`` refuses every SuperNode whose key is not
  registered.

Command line (``fedsilo certs``)::

    fedsilo certs DIR --host superlink.example.org --node silo-a --node silo-b

writes ``DIR/ca.crt``, ``DIR/ca.key``, ``DIR/server.crt``, ``DIR/server.key`` and
``DIR/nodes/silo-a{,.pub}``, ``DIR/nodes/silo-b{,.pub}``. Private keys are written with
mode 0600. Existing files are kept (so adding a silo later does not rotate the CA), unless
``overwrite=True``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CertificateAuthority",
    "NodeKeys",
    "ServerCert",
    "make_ca",
    "make_node_keys",
    "make_pki",
    "make_server_cert",
]

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
_CURVE = ec.SECP384R1
_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class CertificateAuthority:
    """Paths of the CA certificate and its private key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class ServerCert:
    """Paths of the SuperLink's certificate and key, and the names it is valid for."""

    cert: Path
    key: Path
    hosts: tuple[str, ...]


@dataclass(frozen=True)
class NodeKeys:
    """A SuperNode's OpenSSH key pair: ``private`` for the SuperNode, ``public`` to register."""

    name: str
    private: Path
    public: Path


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} is not an EC private key; regenerate it with make_ca()")
    return key


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)  # tolerate small clock skew


def make_ca(
    directory: str | Path,
    *,
    common_name: str = "fedsilo federation CA",
    days: int = 3650,
    overwrite: bool = False,
) -> CertificateAuthority:
    """Create (or reuse) a self-signed CA in ``directory``: ``ca.crt`` and ``ca.key``."""
    directory = Path(directory)
    ca = CertificateAuthority(directory / "ca.crt", directory / "ca.key")
    if ca.cert.is_file() and ca.key.is_file() and not overwrite:
        return ca
    if days < 1:
        raise ValueError(f"days = {days}: a certificate must be valid for at least 1 day")
    key = ec.generate_private_key(_CURVE())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA384())
    )
    _write(ca.key, _pem_key(key), private=True)
    _write(ca.cert, cert.public_bytes(serialization.Encoding.PEM))
    return ca


def _san(host: str) -> x509.GeneralName:
    host = host.strip()
    if not host:
        raise ValueError("empty host name in 'hosts'; pass IP addresses or DNS names")
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9*]([A-Za-z0-9.-]*[A-Za-z0-9])?", host):
            raise ValueError(
                f"host {host!r} is neither an IP address nor a DNS name; "
                "pass e.g. '10.0.0.4' or 'superlink.example.org'"
            ) from None
        return x509.DNSName(host)


def make_server_cert(
    directory: str | Path,
    hosts: Iterable[str] = (),
    *,
    days: int = 825,
    overwrite: bool = False,
) -> ServerCert:
    """Create (or reuse) the SuperLink's ``server.crt``/``server.key`` in ``directory``,
    signed by the CA there (created if missing). SANs: 127.0.0.1, localhost and ``hosts``.

    An existing certificate is reused only if it already covers every requested host.
    """
    directory = Path(directory)
    names = tuple(dict.fromkeys([*DEFAULT_HOSTS, *(h.strip() for h in hosts)]))
    sans = [_san(h) for h in names]
    ca = make_ca(directory)
    out = ServerCert(directory / "server.crt", directory / "server.key", names)
    if out.cert.is_file() and out.key.is_file() and not overwrite:
        existing = x509.load_pem_x509_certificate(out.cert.read_bytes())
        covered = existing.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        if all(san in covered for san in sans):
            return out
    ca_key = _load_key(ca.key)
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    key = ec.generate_private_key(_CURVE())
    start = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[-1])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA384())
    )
    _write(out.key, _pem_key(key), private=True)
    _write(out.cert, cert.public_bytes(serialization.Encoding.PEM))
    return out


def make_node_keys(
    directory: str | Path, names: Iterable[str], *, overwrite: bool = False
) -> dict[str, NodeKeys]:
    """Create (or reuse) an EC P-384 OpenSSH key pair per SuperNode name in ``directory``:
    ``<name>`` (private, for ``flower-supernode --auth-supernode-private-key``) and
    ``<name>.pub`` (for ``flwr supernode register``)."""
    directory = Path(directory)
    out: dict[str, NodeKeys] = {}
    for name in names:
        if not _NODE_NAME.match(name) or name in out:
            raise ValueError(
                f"SuperNode name {name!r} must be unique and match {_NODE_NAME.pattern} "
                "(letters, digits, '_', '.', '-'); it names the key files"
            )
        keys = NodeKeys(name, directory / name, directory / f"{name}.pub")
        if not (keys.private.is_file() and keys.public.is_file()) or overwrite:
            key = ec.generate_private_key(_CURVE())
            private = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )
            public = key.public_key().public_bytes(
                serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
            )
            _write(keys.private, private, private=True)
            _write(keys.public, public + f" {name}\n".encode())
        out[name] = keys
    return out


def make_pki(
    directory: str | Path,
    *,
    hosts: Iterable[str] = (),
    nodes: Iterable[str] = (),
    overwrite: bool = False,
) -> tuple[CertificateAuthority, ServerCert, dict[str, NodeKeys]]:
    """CA + SuperLink certificate in ``directory``, node keys in ``directory/nodes``."""
    directory = Path(directory)
    ca = make_ca(directory, overwrite=overwrite)
    server = make_server_cert(directory, hosts, overwrite=overwrite)
    keys = make_node_keys(directory / "nodes", nodes, overwrite=overwrite)
    return ca, server, keys
