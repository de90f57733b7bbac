"""The dev PKI issues IGC-Santé-shaped certificates, and identities and chains are read back right."""
from __future__ import annotations

import stat
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs.pki import (LEAF_MAX_DAYS, CertificateError, create_ca, identity_from_certificate, issue_app, issue_cps,
                       issue_server, load_ca, verify_chain)

IDNAT = "810001045367"  # "8" + a valid RPPS


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    ca = create_ca(directory / "ca")
    server = issue_server(ca, ["localhost", "127.0.0.1", "msante.test"], directory)
    cps = issue_cps(ca, idnat=IDNAT, given_name="Jeanne", family_name="Martin", out_dir=directory,
                    profession="Médecin")
    app = issue_app(ca, mailbox="dpi@chu-exemple.msante.test", organisation_id="1330000001", out_dir=directory,
                    organisation_name="CHU EXEMPLE", service="DPI")
    return {"dir": directory, "ca": ca, "server": server, "cps": cps, "app": app}


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory):
    return create_ca(tmp_path_factory.mktemp("other"), name="AC QUI N'EST PAS LA NOTRE")


def test_ca_is_a_ca_with_its_key_private(pki):
    ca, directory = pki["ca"], pki["dir"] / "ca"
    assert mode(directory / "ca.key") == 0o600
    cert = load(directory / "ca.crt")
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    assert cert.public_key().key_size >= 3072
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == \
        "AC IGC-SANTE ELEMENTAIRE ORGANISATIONS DEV"
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days >= 3650
    assert ca.certificate == cert


def test_load_ca_reads_back_what_create_wrote(pki):
    loaded = load_ca(pki["dir"] / "ca")
    assert loaded.certificate == pki["ca"].certificate
    assert loaded.key.private_numbers() == pki["ca"].key.private_numbers()


def test_every_private_key_is_owner_only(pki):
    for name in ("server", "cps", "app"):
        cert_path, key_path = pki[name]
        assert mode(key_path) == 0o600, key_path
        assert mode(cert_path) == 0o644, cert_path


def test_server_certificate_serves_and_relays(pki):
    cert = load(pki["server"][0])
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    key = cert.public_key()
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048
    identity = identity_from_certificate(cert)
    assert identity.kind == "server"
    assert set(identity.hosts) == {"localhost", "127.0.0.1", "msante.test"}
    alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in alt.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    verify_chain(cert, [pki["ca"].certificate])


def test_cps_certificate_carries_the_national_identifier_in_cn(pki):
    cert = load(pki["cps"][0])
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == IDNAT
    assert cert.subject.get_attributes_for_oid(NameOID.SURNAME)[0].value == "Martin"
    assert cert.subject.get_attributes_for_oid(NameOID.GIVEN_NAME)[0].value == "Jeanne"
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == \
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    identity = identity_from_certificate(cert)
    assert (identity.kind, identity.idnat, identity.mailbox) == ("person", IDNAT, None)
    assert identity.subject == f"SN=Martin+GN=Jeanne+CN={IDNAT},title=Médecin,C=FR"
    assert len(identity.fingerprint) == 64
    verify_chain(cert, [pki["ca"].certificate])


def test_app_certificate_carries_mailbox_and_structure(pki):
    cert = load(pki["app"][0])
    identity = identity_from_certificate(cert)
    assert identity.kind == "application"
    assert identity.mailbox == "dpi@chu-exemple.msante.test"
    assert identity.idnat == "1330000001"
    assert identity.subject == "CN=DPI,OU=1330000001,O=CHU EXEMPLE,C=FR"
    verify_chain(cert, [pki["ca"].certificate])


def test_idn_mailbox_domain_is_written_as_a_label(pki, tmp_path):
    cert_path, _ = issue_app(pki["ca"], mailbox="labo@hôpital.msante.test", organisation_id="R10100000123456",
                             out_dir=tmp_path)
    identity = identity_from_certificate(load(cert_path))
    assert identity.mailbox == "labo@xn--hpital-ixa.msante.test"
    assert identity.idnat == "R10100000123456"  # the directory's technical structure id
    assert identity.subject == "CN=labo@xn--hpital-ixa.msante.test,OU=R10100000123456,C=FR"


def test_certificate_from_another_ca_is_refused(pki, other_ca, tmp_path):
    foreign, _ = issue_cps(other_ca, idnat=IDNAT, given_name="Jeanne", family_name="Martin", out_dir=tmp_path)
    with pytest.raises(CertificateError, match="trusted authority"):
        verify_chain(load(foreign), [pki["ca"].certificate])
    verify_chain(load(foreign), [pki["ca"].certificate, other_ca.certificate])  # each CA is an anchor


def test_expired_and_not_yet_valid_certificates_are_refused(pki):
    cert = load(pki["cps"][0])
    with pytest.raises(CertificateError, match="expired"):
        verify_chain(cert, [pki["ca"].certificate], now=cert.not_valid_after_utc + timedelta(seconds=1))
    with pytest.raises(CertificateError, match="not valid before"):
        verify_chain(cert, [pki["ca"].certificate], now=cert.not_valid_before_utc - timedelta(seconds=1))


def test_no_trusted_ca_refuses_everything(pki):
    with pytest.raises(CertificateError, match="no certificate authority"):
        verify_chain(load(pki["cps"][0]), [])


def test_leaf_lifetime_is_bounded(pki, tmp_path):
    cert = load(pki["cps"][0])
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= timedelta(days=LEAF_MAX_DAYS, minutes=5)
    with pytest.raises(ValueError, match="1 to"):
        issue_server(pki["ca"], ["localhost"], tmp_path, days=LEAF_MAX_DAYS + 1)
    short, _ = issue_server(pki["ca"], ["localhost"], tmp_path, stem="short", days=1)
    assert load(short).not_valid_after_utc - load(short).not_valid_before_utc <= timedelta(days=1, minutes=5)


def test_bad_identifiers_are_refused_at_issue(pki, tmp_path):
    with pytest.raises(ValueError, match="national identifier"):
        issue_cps(pki["ca"], idnat="1234", given_name="A", family_name="B", out_dir=tmp_path)
    with pytest.raises(ValueError, match="structure identifier"):
        issue_app(pki["ca"], mailbox="a@b.test", organisation_id="CHU", out_dir=tmp_path)
    with pytest.raises(ValueError, match="mailbox"):
        issue_app(pki["ca"], mailbox="no-at-sign", organisation_id="1330000001", out_dir=tmp_path)
    with pytest.raises(ValueError, match="at least one host"):
        issue_server(pki["ca"], [], tmp_path)


def test_a_certificate_without_a_known_identity_is_refused(pki):
    with pytest.raises(CertificateError, match="neither"):
        identity_from_certificate(pki["ca"].certificate)


def test_a_digits_only_cn_without_a_person_is_not_a_person(pki, tmp_path):
    """A server whose CN happens to look like an IdNat must not pass for a professional."""
    cert_path, _ = issue_server(pki["ca"], ["810001045367"], tmp_path, stem="odd")
    assert identity_from_certificate(load(cert_path)).kind == "server"
