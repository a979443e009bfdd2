"""adapters.pki: the CA, SuperLink certificate and SuperNode keys Flower's TLS and node
authentication expect (and ``fedsilo certs``, which writes them)."""

import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from typer.testing import CliRunner

from adapters.cli import app
from adapters.pki import make_pki


def test_server_certificate_is_signed_by_the_ca_for_loopback_and_extra_hosts(tmp_path):
    ca, server, _ = make_pki(tmp_path, hosts=["10.1.2.3", "link.example.org"])
    cert = x509.load_pem_x509_certificate(server.cert.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {
        "127.0.0.1",
        "10.1.2.3",
    }
    assert set(sans.get_values_for_type(x509.DNSName)) == {"localhost", "link.example.org"}
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert.read_bytes()))
    # Python's TLS stack accepts the pair as a server identity and the CA as a trust root.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(server.cert, server.key)
    ssl.create_default_context(cafile=str(ca.cert))
    assert server.key.stat().st_mode & 0o077 == 0 and ca.key.stat().st_mode & 0o077 == 0


def test_node_keys_are_openssh_nist_ec_pairs_and_files_are_reused(tmp_path):
    _, _, keys = make_pki(tmp_path, nodes=["silo-a"])
    private = load_ssh_private_key(keys["silo-a"].private.read_bytes(), None)
    public = load_ssh_public_key(keys["silo-a"].public.read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
    assert public.public_numbers() == private.public_key().public_numbers()
    assert keys["silo-a"].private.stat().st_mode & 0o077 == 0
    before = (tmp_path / "ca.crt").read_bytes(), keys["silo-a"].public.read_bytes()
    _, _, more = make_pki(tmp_path, nodes=["silo-a", "silo-b"])  # adding a silo
    assert ((tmp_path / "ca.crt").read_bytes(), more["silo-a"].public.read_bytes()) == before
    assert more["silo-b"].public.is_file()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"nodes": ["x", "x"]}, "must be unique"),
        ({"nodes": ["../evil"]}, "must be unique and match"),
        ({"hosts": ["bad host!"]}, "neither an IP address nor a DNS name"),
    ],
)
def test_bad_names_are_refused_with_the_fix(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_pki(tmp_path, **kwargs)


def test_fedsilo_certs_command(tmp_path):
    out = tmp_path / "pki"
    result = CliRunner().invoke(
        app, ["certs", str(out), "--node", "silo-a", "--node", "silo-b", "--host", "10.0.0.4"]
    )
    assert result.exit_code == 0, result.output
    assert "SANs: 127.0.0.1, localhost, 10.0.0.4" in result.output
    assert sorted(p.name for p in (out / "nodes").iterdir()) == [
        "silo-a",
        "silo-a.pub",
        "silo-b",
        "silo-b.pub",
    ]
    bad = CliRunner().invoke(app, ["certs", str(out), "--node", "a b"])
    assert bad.exit_code == 2 and "must be unique and match" in bad.output
