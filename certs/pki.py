"""A development PKI shaped like IGC-Santé, and the reading of identities out of certificates.

Operators, CPS cards and hospital software all authenticate with IGC-Santé certificates;
msante needs the same shapes locally (tests, demos, a dev install) without the national
PKI. The CA here stands in for "AC IGC-SANTE ELEMENTAIRE ORGANISATIONS"; the leaves follow
the published IGC-Santé subject layouts, so the code that reads identities out of them
works unchanged on real certificates.

Subject layouts (RFC 4514 order, most specific first):

* Personal, CPS-style (offer "PS"): ``SN=<family name>+GN=<given name>+CN=<IdNat>,
  title=<profession>,C=FR``. IGC-Santé CPS cards (and the test cards numbered 8997…) put
  the national identifier alone in the CN, in a multi-valued RDN with the surname and
  given name; the profession label is in ``title``. Older card layouts seen in the field
  (name in CN, identifier in serialNumber) are neither produced nor read here. A
  certificate is taken as personal when its CN is an IdNat and the subject names a
  person (SN or GN): a CN of digits alone could be anything.
* Applicative, structure-style (offer "ORG"): ``CN=<service>,OU=<structure identifier>,
  O=<organisation name>,C=FR`` as on IGC-Santé organisation certificates (whose OU is
  the structure's IdNat, e.g. ``OU=499700367909006``), plus the applicative mailbox as an
  rfc822Name in the subjectAltName: the mailbox is what the directory knows the software
  by, the OU the structure answerable for it.
* Server (offer "SERV"): ``CN=<first host>,C=FR`` with every DNS name and IP address in
  the subjectAltName, and both serverAuth and clientAuth, because operators present the
  same certificate when they relay to each other over mutual TLS.

RSA throughout: national clients offer only ECDHE-RSA suites for TLS 1.2.

The CA publishes a CRL (`ca.crl` beside `ca.crt`, PEM), as the IGC-Santé CAs do: `write_crl`
re-signs it, `revoke` adds a serial to it; `certs.revocation` is what reads CRLs and refuses.
"""
from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import Criticality, ExtensionPolicy, PolicyBuilder, Store, VerificationError

from .files import write_private, write_public

if TYPE_CHECKING:
    from .revocation import Revocations

DEV_CA_NAME = "AC IGC-SANTE ELEMENTAIRE ORGANISATIONS DEV"
CA_KEY_BITS = 3072  # 128-bit security for ten years; 4096 (as the national CAs) costs seconds per test run
LEAF_KEY_BITS = 2048  # the IGC-Santé leaf size; every ECDHE-RSA client accepts it
CA_DAYS = 10 * 365
LEAF_MAX_DAYS = 3 * 365  # IGC-Santé issues leaves for three years at most
CRL_DAYS = 30  # nextUpdate of the dev CRL; a dev data dir left alone for weeks still starts quietly
BACKDATE = timedelta(minutes=5)  # accept peers whose clock runs a little behind ours

# IdNat: a type digit (8 RPPS, 0 ADELI, 1/3/5… structures) then the local identifier,
# 9 (ADELI, FINESS, SIREN) to 14 (SIRET) characters; FINESS may hold letters (2A/2B).
IDNAT = re.compile(r"[0-9][0-9A-Z]{9,14}")
# A structure: its IdNat (1+FINESS, 3+SIRET, 4+cabinet…) or the directory's "R"+technical id
# (store.schema allows 24 characters). Letters and digits only, which tells it apart from
# descriptive OUs such as "IGC-SANTE TEST".
STRUCTURE_ID = re.compile(r"[0-9A-Z]{9,24}")
# short names as IGC-Santé documents print them (cryptography would print dotted OIDs)
_NAMES = {NameOID.SURNAME: "SN", NameOID.GIVEN_NAME: "GN", NameOID.TITLE: "title"}


class CertificateError(Exception):
    """A certificate is refused; the message says why, in words an operator can act on."""


@dataclass(frozen=True)
class CA:
    certificate: x509.Certificate
    key: rsa.RSAPrivateKey
    cert_path: Path

    @property
    def crl_path(self) -> Path:
        return self.cert_path.with_name("ca.crl")


@dataclass(frozen=True)
class CertIdentity:
    """Who a certificate speaks for.

    `idnat` is the professional's national identifier (person) or the structure's
    identifier from the OU (application); `mailbox` the first rfc822Name of the subjectAltName; `hosts` its DNS
    names and IP addresses; `fingerprint` the SHA-256 of the DER, in lowercase hex.
    """

    kind: Literal["person", "application", "server"]
    idnat: str | None
    mailbox: str | None
    hosts: tuple[str, ...]
    subject: str
    fingerprint: str


def create_ca(directory: Path, *, name: str = DEV_CA_NAME) -> CA:
    """Create a self-signed CA in `directory` (`ca.crt`, and `ca.key` readable by the owner only)."""
    directory = Path(directory)
    key = rsa.generate_private_key(public_exponent=65537, key_size=CA_KEY_BITS)
    subject = x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "MSANTE DEV"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "IGC-SANTE DEV"),
        x509.NameAttribute(NameOID.COMMON_NAME, name),
    ])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "ca.crt"
    write_private(directory / "ca.key", _pem_key(key))
    write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return CA(cert, key, cert_path)


def load_ca(directory: Path) -> CA:
    """Load the CA written by `create_ca`."""
    directory = Path(directory)
    cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
    key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey) or key.public_key() != cert.public_key():
        raise CertificateError(f"{directory}: ca.key is not the private key of ca.crt")
    return CA(cert, key, directory / "ca.crt")


def write_crl(ca: CA, revoked: list[x509.RevokedCertificate] | None = None) -> Path:
    """(Re)sign the CA's CRL with `revoked` (default: the entries it has), a CRL number one
    higher than the last (RFC 5280 §5.2.3), valid CRL_DAYS."""
    previous = _current_crl(ca)
    if revoked is None:
        revoked = list(previous) if previous is not None else []
    number = 1
    if previous is not None:
        number = previous.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number + 1
    now = datetime.now(timezone.utc)
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(ca.certificate.subject)
               .last_update(now - BACKDATE)
               .next_update(now + timedelta(days=CRL_DAYS))
               .add_extension(x509.CRLNumber(number), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False))
    for entry in revoked:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca.key, hashes.SHA256())
    write_public(ca.crl_path, crl.public_bytes(serialization.Encoding.PEM))
    return ca.crl_path


def revoke(ca: CA, serial: int, reason: x509.ReasonFlags | None = None) -> bool:
    """Add `serial` to the CA's CRL; False if it is there already. No reason means
    "unspecified", which RFC 5280 §5.3.1 says to leave out."""
    previous = _current_crl(ca)
    entries = list(previous) if previous is not None else []
    if any(entry.serial_number == serial for entry in entries):
        return False
    entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(datetime.now(timezone.utc))
    if reason is not None:
        entry = entry.add_extension(x509.CRLReason(reason), critical=False)
    write_crl(ca, [*entries, entry.build()])
    return True


def _current_crl(ca: CA) -> x509.CertificateRevocationList | None:
    if not ca.crl_path.exists():
        return None
    try:
        crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    except ValueError as exc:
        raise CertificateError(f"{ca.crl_path} is not a PEM CRL ({exc}); move it away to start a new one") from None
    if not crl.is_signature_valid(ca.key.public_key()):
        raise CertificateError(f"{ca.crl_path} is not signed by {ca.cert_path}")
    return crl


def issue_server(ca: CA, hosts: list[str], out_dir: Path, *, stem: str = "server",
                 days: int = LEAF_MAX_DAYS) -> tuple[Path, Path]:
    """Issue a TLS server certificate for `hosts` (DNS names or IP addresses), usable for relay too."""
    if not hosts:
        raise ValueError("a server certificate needs at least one host name or address")
    names = [_host_name(h) for h in hosts]
    subject = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
                         x509.NameAttribute(NameOID.COMMON_NAME, _ascii_host(hosts[0]))])
    return _issue(ca, subject, out_dir, stem, days,
                  x509.SubjectAlternativeName(names),
                  [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
                  _key_usage(digital_signature=True, key_encipherment=True))


def issue_cps(ca: CA, *, idnat: str, given_name: str, family_name: str, out_dir: Path,
              stem: str = "cps", profession: str | None = None, days: int = LEAF_MAX_DAYS) -> tuple[Path, Path]:
    """Issue a CPS-style personal authentication certificate for the professional `idnat`."""
    _check_idnat(idnat)
    person = x509.RelativeDistinguishedName([
        x509.NameAttribute(NameOID.SURNAME, family_name),
        x509.NameAttribute(NameOID.GIVEN_NAME, given_name),
        x509.NameAttribute(NameOID.COMMON_NAME, idnat),
    ])
    rdns = [x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COUNTRY_NAME, "FR")])]
    if profession:
        rdns.append(x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.TITLE, profession)]))
    subject = x509.Name([*rdns, person])
    return _issue(ca, subject, out_dir, stem, days, None, [ExtendedKeyUsageOID.CLIENT_AUTH],
                  _key_usage(digital_signature=True))


def issue_app(ca: CA, *, mailbox: str, organisation_id: str, out_dir: Path, stem: str = "app",
              organisation_name: str | None = None, service: str | None = None,
              days: int = LEAF_MAX_DAYS) -> tuple[Path, Path]:
    """Issue a structure certificate for software acting as the applicative mailbox `mailbox`."""
    if not STRUCTURE_ID.fullmatch(organisation_id):
        raise ValueError(f"{organisation_id!r} is not a structure identifier (9 to 24 letters and digits)")
    address = _ascii_mailbox(mailbox)
    attributes = [x509.NameAttribute(NameOID.COUNTRY_NAME, "FR")]
    if organisation_name:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation_name))
    attributes += [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, organisation_id),
                   x509.NameAttribute(NameOID.COMMON_NAME, service or address)]
    return _issue(ca, x509.Name(attributes), out_dir, stem, days,
                  x509.SubjectAlternativeName([x509.RFC822Name(address)]),
                  [ExtendedKeyUsageOID.CLIENT_AUTH], _key_usage(digital_signature=True))


def identity_from_certificate(cert: x509.Certificate) -> CertIdentity:
    """Say whom `cert` speaks for, following the layouts in the module docstring.

    Only reads: whether the certificate is to be trusted is `verify_chain`'s question.
    """
    mailboxes = _alt_values(cert, x509.RFC822Name)
    hosts = (*_alt_values(cert, x509.DNSName), *map(str, _alt_values(cert, x509.IPAddress)))
    common_names = _values(cert.subject, NameOID.COMMON_NAME)
    units = [ou for ou in _values(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME) if STRUCTURE_ID.fullmatch(ou)]
    names_a_person = _values(cert.subject, NameOID.SURNAME) or _values(cert.subject, NameOID.GIVEN_NAME)

    kind: Literal["person", "application", "server"]
    if common_names and IDNAT.fullmatch(common_names[0]) and names_a_person:
        kind, idnat = "person", common_names[0]
    elif mailboxes and units:
        kind, idnat = "application", units[0]
    elif hosts:
        kind, idnat = "server", None
    else:
        raise CertificateError(f"{_subject(cert)}: neither a personal (CPS), an applicative "
                               "nor a server certificate")
    return CertIdentity(kind, idnat, mailboxes[0] if mailboxes else None, hosts, _subject(cert),
                        hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest())


def verify_chain(cert: x509.Certificate, ca_certs: list[x509.Certificate], now: datetime | None = None, *,
                 revocations: "Revocations | None" = None) -> None:
    """Check that `cert` is within its dates, chains to one of `ca_certs` as a client credential
    and, given `revocations`, is not on its CA's CRL.

    Each CA given is a trust anchor, so an operator may trust the intermediate "AC IGC-SANTE
    ELEMENTAIRE ORGANISATIONS" without its root. The dates are checked first only to give
    a plain reason; the chain check (signature, CA flags, key usages, the CA's own dates)
    is cryptography's RFC 5280 verifier.
    """
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    if not ca_certs:
        raise CertificateError("no certificate authority is trusted for client certificates")
    if now < cert.not_valid_before_utc:
        raise CertificateError(f"certificate not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    if now > cert.not_valid_after_utc:
        raise CertificateError(f"certificate expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    # web PKI rules, except that a subjectAltName is optional: CPS certificates have none
    leaf_policy = ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
    verifier = (PolicyBuilder().store(Store(ca_certs)).time(now)
                .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=leaf_policy)
                .build_client_verifier())
    try:
        verifier.verify(cert, [])
    except VerificationError as exc:
        raise CertificateError(f"certificate does not chain to a trusted authority: {exc}") from None
    if revocations is not None:
        revocations.check(cert)


def _issue(ca: CA, subject: x509.Name, out_dir: Path, stem: str, days: int,
           alt_names: x509.SubjectAlternativeName | None, usages: list[x509.ObjectIdentifier],
           key_usage: x509.KeyUsage) -> tuple[Path, Path]:
    if not 1 <= days <= LEAF_MAX_DAYS:
        raise ValueError(f"a leaf certificate lasts 1 to {LEAF_MAX_DAYS} days, not {days}")
    key = rsa.generate_private_key(public_exponent=65537, key_size=LEAF_KEY_BITS)
    now = datetime.now(timezone.utc)
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        # a leaf outliving its CA would only fail later, at the far end
        .not_valid_after(min(now + timedelta(days=days), ca.certificate.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
    )
    if alt_names is not None:
        builder = builder.add_extension(alt_names, critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    out_dir = Path(out_dir)
    cert_path, key_path = out_dir / f"{stem}.crt", out_dir / f"{stem}.key"
    write_private(key_path, _pem_key(key))
    write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _key_usage(*, digital_signature: bool = False, key_encipherment: bool = False,
               key_cert_sign: bool = False, crl_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=digital_signature, content_commitment=False,
                         key_encipherment=key_encipherment, data_encipherment=False, key_agreement=False,
                         key_cert_sign=key_cert_sign, crl_sign=crl_sign, encipher_only=False,
                         decipher_only=False)


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _check_idnat(value: str) -> None:
    if not IDNAT.fullmatch(value):
        raise ValueError(f"{value!r} is not a national identifier (a type digit then 9 to 14 characters)")


def _ascii_host(host: str) -> str:
    return host.strip().rstrip(".").lower().encode("idna").decode("ascii")


def _host_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip()))
    except ValueError:
        return x509.DNSName(_ascii_host(host))


def _ascii_mailbox(mailbox: str) -> str:
    """rfc822Name is IA5 (RFC 5280 4.2.1.6): the domain goes to its A-label, the local part must be ASCII."""
    local, at, domain = mailbox.strip().rpartition("@")
    if not at or not local or not domain or not local.isascii():
        raise ValueError(f"{mailbox!r} is not an ASCII mailbox address")
    return f"{local}@{_ascii_host(domain)}"


def _alt_values(cert: x509.Certificate, kind: type[x509.GeneralName]) -> list:
    """The subjectAltName values of one kind; none when the extension is absent (CPS certificates
    have none, and cryptography 45+ refuses to build an empty SubjectAlternativeName)."""
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return alt.get_values_for_type(kind)


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string(_NAMES)


def _values(name: x509.Name, oid: x509.ObjectIdentifier) -> list[str]:
    return [str(attribute.value) for attribute in name.get_attributes_for_oid(oid)]
