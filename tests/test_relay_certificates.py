"""Operator certificates over real sockets: one in-process server (msante.test), two other
operators' certificates from its dev PKI, the relay listener taking mail from them and the
outbound queue delivering to an aiosmtpd peer that presents one or the other; what the
white list says of them, and what the CRL says."""
from __future__ import annotations

import json
import smtplib
import time

import pytest
from aiosmtpd.controller import Controller
from cryptography import x509
from sqlalchemy import select

from certs import pki, tls
from mailserver import trust
from store.schema import audit, deliveries
from tests.conftest import free_port
from tests.test_smtp import GP, inbox, login, message
from tests.test_trust import write

PEER_PORT = free_port()  # chu-exemple.test's relay, as the outbound queue is routed to it
CHU, AUTRE = "dr.house@chu-exemple.test", "karim.payet@autre-operateur.test"


@pytest.fixture(autouse=True)
def routed_to_the_peer(monkeypatch):
    """Set before `server` starts (autouse fixtures come first)."""
    monkeypatch.setenv("MSANTE_RELAY__ROUTES", json.dumps({"chu-exemple.test": f"127.0.0.1:{PEER_PORT}"}))
    monkeypatch.setenv("MSANTE_RELAY__RETRY_BASE", "1")
    monkeypatch.setenv("MSANTE_RELAY__RETRY_MAX", "1")
    monkeypatch.setenv("MSANTE_TLS__CRL_REFRESH", "1")
    monkeypatch.setattr(trust, "RELOAD_SECONDS", 0)  # the list imported below applies at once


@pytest.fixture
def operators(server, tmp_path):
    """(chu-exemple.test's certificate, autre-operateur.test's), the list naming each, one in
    OpenSSL's order and spacing."""
    ca = pki.load_ca(server.settings.ca_dir)
    chu = pki.issue_server(ca, ["mx.chu-exemple.test", "127.0.0.1"], tmp_path, stem="chu")
    autre = pki.issue_server(ca, ["mx.autre-operateur.test", "127.0.0.1"], tmp_path, stem="autre")
    listed = write(tmp_path, ["msante.test", ("chu-exemple.test", "C=FR, CN=mx.chu-exemple.test"),
                              ("autre-operateur.test", "CN=mx.autre-operateur.test,C=FR")])
    assert server.cli("trust", "import", str(listed)) == 0
    return chu, autre


def relay(server, cert) -> smtplib.SMTP:
    _, port = server.listeners["smtp"].rsplit(":", 1)
    context = server.client_tls()
    context.load_cert_chain(*cert)
    client = smtplib.SMTP("127.0.0.1", int(port), timeout=15)
    client.starttls(context=context)
    client.ehlo("mx.test")
    return client


def test_relay_takes_a_domain_only_from_its_listed_operator(server, operators):
    chu, autre = operators
    with relay(server, chu) as client:
        client.sendmail(CHU, [GP], message(CHU, [GP], "Du CHU"))
    assert b"Du CHU" in inbox(server, GP)[-1]

    with relay(server, autre) as client:  # valid, same CA, but another operator's certificate
        code, text = client.mail(CHU)
        assert (code, text[:5]) == (550, b"5.7.1") and b"white list" in text
        client.rset()
        client.sendmail(AUTRE, [GP], message(AUTRE, [GP], "De l'autre"))  # its own domain: fine
    refusals = server.rows(select(audit.c.target, audit.c.outcome, audit.c.detail).where(
        audit.c.action == "relay.refuse"))
    assert [(r["target"], r["outcome"]) for r in refusals] == [(CHU, "denied")]
    assert "mx.autre-operateur.test" in json.loads(refusals[0]["detail"])["certificate"]


class _Peer:
    def __init__(self) -> None:
        self.received: list[bytes] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: ANN001, ANN201
        self.received.append(envelope.content)
        return "250 2.0.0 OK"


def peer(cert) -> tuple[Controller, _Peer]:
    handler = _Peer()
    controller = Controller(handler, hostname="127.0.0.1", port=PEER_PORT, require_starttls=True,
                            tls_context=tls.server_context(*cert))
    controller.start()
    return controller, handler


def wait_for(condition, what: str, timeout: float = 20.0):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return result


def test_outbound_delivers_only_to_a_listed_operator(server, operators):
    chu, autre = operators
    def delivery() -> list[dict]:  # noqa: E306
        return server.rows(select(deliveries.c.status, deliveries.c.attempts, deliveries.c.last_error)
                           .where(deliveries.c.recipient == CHU))

    controller, impostor = peer(autre)  # what DNS or a route pointing elsewhere would give
    try:
        client = login(server)
        client.sendmail(GP, [CHU], message(GP, [CHU], "Pour le CHU"))
        client.quit()
        row = wait_for(lambda: [r for r in delivery() if r["attempts"] >= 1], "a refused attempt")[0]
        assert row["status"] == "queued" and row["last_error"].startswith("4.7.5")
        assert "CN=mx.autre-operateur.test" in row["last_error"]
        assert impostor.received == []
    finally:
        controller.stop()
    sent = server.rows(select(audit.c.outcome, audit.c.detail).where(audit.c.action == "relay.send"))
    assert sent[0]["outcome"] == "failed" and "white list" in json.loads(sent[0]["detail"])["answer"]

    controller, listed = peer(chu)
    try:
        wait_for(lambda: listed.received, "the retry to the listed operator")
        assert b"Pour le CHU" in listed.received[0]
        wait_for(lambda: delivery()[0]["status"] == "relayed", "the delivery to be marked relayed")
    finally:
        controller.stop()


def test_a_revoked_operator_certificate_is_refused_both_ways(server, operators):
    chu, _ = operators
    with relay(server, chu) as client:
        client.sendmail(CHU, [GP], message(CHU, [GP], "Avant revocation"))
    serial = x509.load_pem_x509_certificate(chu[0].read_bytes()).serial_number
    assert server.cli("certs", "revoke", f"{serial:x}", "--reason", "cessationOfOperation") == 0
    started = time.monotonic()

    def refusal() -> bytes | None:
        with relay(server, chu) as client:  # the handshake completes; the EHLO after it is refused
            return None if client.does_esmtp else client.ehlo_resp
    text = wait_for(refusal, "the relay to refuse the revoked certificate")
    print(f"revoked operator certificate refused {time.monotonic() - started:.2f} s after `msante certs revoke`")
    assert text.startswith(b"4.7.1") and b"revoked" in text
    rows = server.rows(select(audit.c.detail).where(audit.c.action == "relay.refuse"))
    assert "cessationOfOperation" in json.loads(rows[-1]["detail"])["error"]

    controller, revoked = peer(chu)  # the listed operator, but revoked: nothing goes to it
    try:
        client = login(server)
        client.sendmail(GP, [CHU], message(GP, [CHU], "Pour un CHU revoque"))
        client.quit()
        row = wait_for(lambda: [r for r in server.rows(select(deliveries.c.status, deliveries.c.last_error).where(
            deliveries.c.recipient == CHU)) if r["last_error"]], "a refused attempt")[0]
        assert row["status"] == "queued" and row["last_error"].startswith("4.7.5") and "revoked" in row["last_error"]
        assert revoked.received == []
    finally:
        controller.stop()
