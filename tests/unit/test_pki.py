from __future__ import annotations

import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from llmops_dev.cluster import pki


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_serving_and_client_certificates_chain_to_the_ca(tmp_path: Path) -> None:
    ca = pki.CertificateAuthority(tmp_path)
    serving = ca.issue("srv", "kube-apiserver", server_names=("kubernetes",), server_ips=("127.0.0.1",))
    client = ca.issue("admin", "llmops-admin", ("system:masters",))
    ca_cert = _load(ca.pair.cert)

    srv = _load(serving.cert)
    srv.verify_directly_issued_by(ca_cert)
    san = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["kubernetes"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert list(srv.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]

    cli = _load(client.cert)
    cli.verify_directly_issued_by(ca_cert)
    assert cli.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "llmops-admin"
    assert cli.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    assert list(cli.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    # Private keys are owner-only.
    assert client.key.stat().st_mode & 0o077 == 0
    assert ca.pair.key.stat().st_mode & 0o077 == 0


def test_service_account_keys_are_a_pair(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    pair = pki.service_account_keys(tmp_path)
    private = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
    public = serialization.load_pem_public_key(pair.cert.read_bytes())
    assert private.public_key().public_numbers() == public.public_numbers()  # type: ignore[union-attr]
