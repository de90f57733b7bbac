"""Real handshakes on loopback: the national suites pass, everything else is refused by the server."""
from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass

import pytest

from certs.pki import CertIdentity, create_ca, issue_cps, issue_server
from certs.tls import TLS12_CIPHERS, client_context, peer_identity, server_context
from tests.imap_client import RawImap

IDNAT = "810001045367"
NATIONAL_SUITES = TLS12_CIPHERS.split(":")


@dataclass
class Outcome:
    version: str | None = None
    cipher: str | None = None
    identity: CertIdentity | None = None
    error: Exception | None = None


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls")
    ca = create_ca(directory / "ca")
    other = create_ca(directory / "other", name="AC ETRANGERE")
    return {
        "ca": ca.cert_path,
        "server": issue_server(ca, ["localhost", "127.0.0.1"], directory),
        "cps": issue_cps(ca, idnat=IDNAT, given_name="Jeanne", family_name="Martin", out_dir=directory),
        "foreign_cps": issue_cps(other, idnat=IDNAT, given_name="Jeanne", family_name="Martin",
                                 out_dir=directory, stem="foreign-cps"),
        "foreign_server": issue_server(other, ["localhost"], directory, stem="foreign-server"),
    }


def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> tuple[Outcome, Outcome]:
    """One connection on loopback; each side reports what it negotiated or why it failed."""
    listener = socket.create_server(("127.0.0.1", 0))
    served = Outcome()

    def serve() -> None:
        conn, _ = listener.accept()
        conn.settimeout(5)
        try:
            with server.wrap_socket(conn, server_side=True) as tls:
                served.version, served.cipher = tls.version(), tls.cipher()[0]
                served.identity = peer_identity(tls)
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            served.error = exc
            conn.close()

    thread = threading.Thread(target=serve)
    thread.start()
    got = Outcome()
    try:
        with socket.create_connection(listener.getsockname(), timeout=5) as raw, \
                client.wrap_socket(raw, server_hostname="localhost") as tls:
            got.version, got.cipher = tls.version(), tls.cipher()[0]
            # TLS 1.3 servers judge the client's certificate after the client thinks it is done
            if tls.recv(2) != b"ok":
                raise ConnectionError("server closed without answering")
    except (ssl.SSLError, OSError) as exc:
        got.error = exc
    finally:
        thread.join(10)
        listener.close()
    return served, got


def permissive_client(*, version: ssl.TLSVersion, ciphers: str = "DEFAULT") -> ssl.SSLContext:
    """A client that would accept anything the server offered, so any refusal is the server's."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = context.maximum_version = version
    context.set_ciphers(f"{ciphers}:@SECLEVEL=0")
    return context


@pytest.mark.parametrize("suite", NATIONAL_SUITES)
def test_each_national_suite_negotiates_in_tls12(pki, suite):
    client = client_context(pki["ca"])
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    client.set_ciphers(suite)
    served, got = handshake(server_context(*pki["server"]), client)
    assert got.error is None and served.error is None
    assert (got.version, got.cipher) == ("TLSv1.2", suite)
    assert (served.version, served.cipher) == ("TLSv1.2", suite)


def test_tls13_is_offered(pki):
    client = client_context(pki["ca"])
    client.minimum_version = ssl.TLSVersion.TLSv1_3
    served, got = handshake(server_context(*pki["server"]), client)
    assert got.error is None and served.error is None
    assert got.version == served.version == "TLSv1.3"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1], ids=["TLSv1.0", "TLSv1.1"])
def test_old_protocol_versions_are_refused(pki, version):
    served, got = handshake(server_context(*pki["server"]), permissive_client(version=version))
    assert served.error is not None and "UNSUPPORTED_PROTOCOL" in str(served.error)
    assert got.error is not None and got.version is None


@pytest.mark.parametrize("suite", ["AES256-SHA", "ECDHE-RSA-CHACHA20-POLY1305", "ECDHE-RSA-AES128-SHA",
                                   "DHE-RSA-AES256-GCM-SHA384"])
def test_tls12_suites_outside_the_national_list_are_refused(pki, suite):
    served, got = handshake(server_context(*pki["server"]),
                            permissive_client(version=ssl.TLSVersion.TLSv1_2, ciphers=suite))
    assert served.error is not None and "NO_SHARED_CIPHER" in str(served.error)
    assert got.error is not None and got.version is None


def test_the_same_permissive_client_gets_in_with_a_national_suite(pki):
    """Control for the refusals above: the permissive client itself is not what fails."""
    served, got = handshake(server_context(*pki["server"]),
                            permissive_client(version=ssl.TLSVersion.TLSv1_2, ciphers=NATIONAL_SUITES[0]))
    assert served.error is None and got.cipher == NATIONAL_SUITES[0]


@pytest.mark.parametrize("max_version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_client_certificate_gives_the_professional(pki, max_version):
    client = client_context(pki["ca"], cert_path=pki["cps"][0], key_path=pki["cps"][1])
    client.maximum_version = max_version
    served, got = handshake(server_context(*pki["server"], client_ca=pki["ca"]), client)
    assert got.error is None and served.error is None
    assert served.identity is not None
    assert (served.identity.kind, served.identity.idnat) == ("person", IDNAT)


def test_client_certificate_is_optional_when_not_required(pki):
    served, got = handshake(server_context(*pki["server"], client_ca=pki["ca"]), client_context(pki["ca"]))
    assert got.error is None and served.error is None
    assert served.identity is None


def test_optional_client_certificate_is_still_verified(pki):
    client = client_context(pki["ca"], cert_path=pki["foreign_cps"][0], key_path=pki["foreign_cps"][1])
    served, got = handshake(server_context(*pki["server"], client_ca=pki["ca"]), client)
    assert served.error is not None and "CERTIFICATE_VERIFY_FAILED" in str(served.error)
    assert served.identity is None and got.error is not None


@pytest.mark.parametrize("max_version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_required_client_certificate_missing_fails(pki, max_version):
    client = client_context(pki["ca"])
    client.maximum_version = max_version
    served, got = handshake(server_context(*pki["server"], client_ca=pki["ca"], require_client_cert=True), client)
    assert served.error is not None and "PEER_DID_NOT_RETURN_A_CERTIFICATE" in str(served.error)
    assert got.error is not None


def test_requiring_client_certificates_needs_a_ca(pki):
    with pytest.raises(ValueError, match="client_ca"):
        server_context(*pki["server"], require_client_cert=True)


def test_client_refuses_a_server_from_another_ca(pki):
    served, got = handshake(server_context(*pki["foreign_server"]), client_context(pki["ca"]))
    assert got.error is not None and "CERTIFICATE_VERIFY_FAILED" in str(got.error)


def test_the_server_closes_after_logout_without_waiting_for_the_clients_close_notify(server):
    """A client that waits for the server to close after LOGOUT (imaptest, Dovecot's TLS layer)
    sees the close at once: the server no longer waits up to 30 s for the client's close_notify."""
    client = RawImap(server)
    client.login_token(server)
    client.ok("LOGOUT")
    started = time.monotonic()
    assert client.sock.recv(100) == b""  # the server's close_notify: it always came at once
    tcp = socket.socket(fileno=os.dup(client.sock.fileno()))  # under TLS: the connection itself
    tcp.settimeout(5)
    try:
        assert tcp.recv(100) == b""  # the server closed it (it waited 30 s for our close_notify)
    finally:
        tcp.close()
        client.close()
    assert time.monotonic() - started < 2
