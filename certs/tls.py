"""The TLS settings of every listener and of the relay client, in one place.

The national rules: TLS 1.2 at least, and for TLS 1.2 exactly the four ECDHE-RSA suites
below, which clients of the trust space are required to use (so the server certificate is
RSA). TLS 1.3 is allowed and keeps OpenSSL's own suites, all AEAD. Compression (CRIME) and
renegotiation (a client-driven CPU sink with a history of bugs) are switched off.

Certificate checks follow what Python 3.13 makes default: strict RFC 5280 parsing, and any
configured CA is a trust anchor on its own (partial chain), so an operator may trust the
intermediate "AC IGC-SANTE ELEMENTAIRE ORGANISATIONS" without shipping its root.
"""
from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509

from .pki import CertIdentity, identity_from_certificate

TLS12_CIPHERS = ":".join([
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES256-SHA384",
    "ECDHE-RSA-AES128-SHA256",
])


def server_context(cert_path: Path, key_path: Path, *, client_ca: Path | None = None,
                   require_client_cert: bool = False) -> ssl.SSLContext:
    """A listener's context; with `client_ca`, client certificates chaining to it are verified.

    Submission and IMAP ask for a certificate without requiring one (CERT_OPTIONAL: SASL
    EXTERNAL is one login among others); the relay between operators requires it. A
    certificate that is presented is always verified: a bad one fails the handshake.
    """
    if require_client_cert and client_ca is None:
        raise ValueError("requiring client certificates needs the CA that issues them (client_ca)")
    context = _context(ssl.PROTOCOL_TLS_SERVER)
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    context.load_cert_chain(cert_path, key_path)
    if client_ca is not None:
        context.load_verify_locations(cafile=client_ca)
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


def client_context(ca_path: Path, *, cert_path: Path | None = None,
                   key_path: Path | None = None) -> ssl.SSLContext:
    """A client's context (relay to another operator, tests): the server must chain to `ca_path`
    and match the host name; `cert_path`/`key_path` is the certificate presented for mutual TLS."""
    context = _context(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname by default
    context.load_verify_locations(cafile=ca_path)
    if cert_path is not None:
        context.load_cert_chain(cert_path, key_path)
    return context


def peer_certificate(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> x509.Certificate | None:
    """The certificate the peer presented, or None. asyncio callers pass
    `transport.get_extra_info("ssl_object")`, smtplib ones `client.sock`."""
    der = ssl_object.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der) if der else None


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> CertIdentity | None:
    """The identity in the certificate the peer presented, or None if it presented none.

    The handshake has already verified the chain; this only reads it. Raises
    `CertificateError` for a certificate that carries no identity msante understands.
    """
    cert = peer_certificate(ssl_object)
    return identity_from_certificate(cert) if cert is not None else None


def refused_certificate(error: BaseException | None) -> str | None:
    """Why a server-side handshake refused the client's certificate (untrusted, expired…), or
    None when `error` is another failure (a scanner's garbage, a reset): the first is a login
    attempt with a certificate and is audited as one, the others are not."""
    while error is not None:
        if isinstance(error, ssl.SSLCertVerificationError):
            return error.verify_message or error.reason or "certificate verify failed"
        if isinstance(error, ssl.SSLError) and error.reason and "CERTIFICATE" in error.reason:
            return error.reason.lower().replace("_", " ")
        error = error.__cause__ or error.__context__
    return None


def _context(protocol: int) -> ssl.SSLContext:
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)  # TLS 1.2 and below only; TLS 1.3 suites are separate
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.verify_flags |= ssl.VERIFY_X509_STRICT | ssl.VERIFY_X509_PARTIAL_CHAIN
    return context
