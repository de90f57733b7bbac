"""Two operators of one trust space on loopback (msante.test and autre-operateur.test, one dev CA)
exchange mail over mutual TLS; strangers are refused; the queue survives a stopped peer and
a SIGKILL."""
from __future__ import annotations

import email
import email.policy
import ssl

import pytest

from tests import scrape
from tests.conftest import free_port
from tests.operators import Operator, wait_for

pytestmark = pytest.mark.slow

GP, GP_RPPS = "jean.dupont@msante.test", "10001045367"
REMOTE = "karim.payet@autre-operateur.test"
COORDINATOR_RPPS = "10002000031"


NO_DSN_PORT = free_port()  # chu-exemple.test: a peer of the trust space whose SMTP has no DSN


@pytest.fixture(scope="module")
def operators(tmp_path_factory):
    root = tmp_path_factory.mktemp("operators")
    a = Operator(root, "a", "msante.test")
    b = Operator(root, "b", "autre-operateur.test", ca_from=a, routes={"msante.test": a})
    a.set_routes({"autre-operateur.test": b, "chu-exemple.test": NO_DSN_PORT})
    a.start()
    b.start()
    yield a, b
    for op in (a, b):
        op.stop()


def report_of(raw: bytes) -> tuple[email.message.EmailMessage, list]:
    report = email.message_from_bytes(raw, policy=email.policy.default)
    assert report.get_content_type() == "multipart/report"
    status = next(p for p in report.walk() if p.get_content_type() == "message/delivery-status")
    return report, status.get_payload()[1:]


def test_mail_both_ways_with_delivery_reports(operators):
    a, b = operators
    a.send(GP, GP_RPPS, [REMOTE], "Sortie d'hospitalisation", mail_options=["ENVID=sortie-1"],
           rcpt_options=["NOTIFY=SUCCESS,FAILURE"])
    wait_for(lambda: any(b"Sortie d'hospitalisation" in m for m in b.inbox(REMOTE)), what="A -> B")
    stored = [m for m in b.inbox(REMOTE) if b"Sortie d'hospitalisation" in m][0]
    assert stored.count(b"Received: from") == 2  # A's submission, then B's relay listener
    assert b"peer server" in stored.split(b"Received: from")[1]
    # A records the relay once B's 250 is read: B may show the mail a moment before
    wait_for(lambda: a.deliveries(REMOTE)[-1][0] == "relayed", what="A to record the relay")
    # relayed and held in no folder of A's: A keeps the envelope, not the body
    assert a.query("SELECT e.body_id FROM envelopes e JOIN deliveries d ON d.envelope_id = e.id "
                   "WHERE d.recipient = ? ORDER BY e.id DESC LIMIT 1", REMOTE) == [(None,)]
    # B supports DSN: the success report comes from B, over the relay, to A's sender
    raw = wait_for(lambda: [m for m in a.inbox(GP) if b"sortie-1" in m], what="B's success report")[0]
    report, recipients = report_of(raw)
    assert recipients[0]["Action"] == "delivered" and REMOTE in recipients[0]["Final-Recipient"]

    b.send(REMOTE, COORDINATOR_RPPS, [GP], "Réponse du DAC")
    wait_for(lambda: any(b"R\xc3\xa9ponse du DAC" in m or b"DAC" in m for m in a.inbox(GP)), what="B -> A")


def test_permanent_refusal_gives_a_failure_report(operators):
    a, b = operators
    a.send(GP, GP_RPPS, ["nobody@autre-operateur.test"], "Destinataire inconnu")
    wait_for(lambda: a.deliveries("nobody@autre-operateur.test")
             and a.deliveries("nobody@autre-operateur.test")[-1][0] == "failed", what="refusal")
    raw = wait_for(lambda: [m for m in a.inbox(GP) if b"nobody@autre-operateur.test" in m
                            and b"multipart/report" in m], what="failure report")[-1]
    _, recipients = report_of(raw)
    assert recipients[0]["Action"] == "failed" and recipients[0]["Status"] == "5.1.1"
    assert "550" in recipients[0]["Diagnostic-Code"]


def test_peer_stopped_then_back_everything_arrives_once(operators):
    a, b = operators
    b.stop()
    subjects = [f"Pendant l'arret {i}" for i in range(5)]
    for subject in subjects:
        a.send(GP, GP_RPPS, [REMOTE], subject)
    wait_for(lambda: a.query("SELECT count(*) FROM deliveries WHERE status = 'queued' AND attempts > 0")[0][0] >= 1,
             what="a failed attempt while B is down")
    b.start()
    for subject in subjects:
        wait_for(lambda s=subject: sum(s.encode() in m for m in b.inbox(REMOTE)) == 1, what=subject)
    assert all(sum(s.encode() in m for m in b.inbox(REMOTE)) == 1 for s in subjects)


def test_sigkill_with_mail_in_the_queue(operators):
    a, b = operators
    b.stop()
    subjects = [f"Avant le crash {i}" for i in range(5)]
    for subject in subjects:
        a.send(GP, GP_RPPS, [REMOTE], subject)
    a.kill()
    assert a.query("SELECT count(*) FROM deliveries WHERE status = 'queued'")[0][0] >= 5
    b.start()
    a.start()
    for subject in subjects:
        wait_for(lambda s=subject: sum(s.encode() in m for m in b.inbox(REMOTE)) == 1, what=subject)
    # B's 250 comes before A commits `relayed` (the window mailserver/outbound.py keeps short);
    # the deliveries the killed A had leased were given back when it started again (store/lease.py)
    wait_for(lambda: a.query("SELECT count(*) FROM deliveries WHERE status = 'queued' OR leased_by IS NOT NULL")[0][0]
             == 0, timeout=5, what="A's queue empty")


def test_strangers_refused(operators, tmp_path):
    a, b = operators
    # Another CA: B refuses during the TLS handshake; the stranger keeps the mail queued.
    rogue = Operator(tmp_path, "rogue", "chu-exemple.test", routes={"autre-operateur.test": b})
    rogue.start()
    try:
        rogue.send("jean.dupont@chu-exemple.test", GP_RPPS, [REMOTE], "Hors PKI")
        error = wait_for(lambda: [e for s, e in rogue.deliveries(REMOTE) if s == "queued" and e], what="TLS refusal")
        assert "SSL" in error[0] or "certificate" in error[0].lower()
    finally:
        rogue.stop()
    assert not any(b"Hors PKI" in m for m in b.inbox(REMOTE))

    # The same CA but a domain outside B's trust space: refused at MAIL with 5.7.1, reported.
    outsider = Operator(tmp_path, "outsider", "hors-espace.test", ca_from=a, routes={"autre-operateur.test": b})
    outsider.start()
    try:
        outsider.send("jean.dupont@hors-espace.test", GP_RPPS, [REMOTE], "Hors espace")
        wait_for(lambda: outsider.deliveries(REMOTE) and outsider.deliveries(REMOTE)[-1][0] == "failed",
                 what="refusal of an outside domain")
        assert "5.7.1" in outsider.deliveries(REMOTE)[-1][1]
    finally:
        outsider.stop()
    assert not any(b"Hors espace" in m for m in b.inbox(REMOTE))
    refusals = b.query("SELECT target FROM audit WHERE action = 'relay.refuse'")
    assert ("jean.dupont@hors-espace.test",) in refusals


def test_relay_requires_a_client_certificate(operators):
    import smtplib

    a, b = operators
    context = ssl.create_default_context(cafile=str(a.data_dir / "pki" / "ca.crt"))  # one CA
    client = smtplib.SMTP("127.0.0.1", b.ports["smtp"], timeout=10)
    with pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError)):
        client.starttls(context=context)
        client.ehlo()
        client.mail(GP)


def test_queue_commands_and_metrics(operators):
    import json

    a, b = operators
    b.stop()
    try:
        a.send(GP, GP_RPPS, [REMOTE], "File d'attente")
        rows = wait_for(lambda: [r for r in json.loads(a.cli("queue", "list", "--json"))
                                 if r["recipient"] == REMOTE and r["attempts"] >= 1], what="a queued delivery")
        context = ssl.create_default_context(cafile=str(a.data_dir / "pki" / "ca.crt"))
        metrics = scrape.samples(scrape.scrape(a.ports["https"], context)[1])
        assert scrape.value(metrics, "msante_queue_size") == 1
        assert scrape.value(metrics, "msante_queue_oldest_seconds") > 0
        assert "is due now" in a.cli("queue", "retry", str(rows[0]["id"]))
        assert "returned to its sender" in a.cli("queue", "bounce", str(rows[0]["id"]))
        assert json.loads(a.cli("queue", "list", "--json")) == []
        reports = [report_of(m)[1][0] for m in a.inbox(GP) if b"multipart/report" in m and b"File d'attente" in m]
        assert any(r["Action"] == "failed" and REMOTE in r["Final-Recipient"] for r in reports)
    finally:
        b.start()


def test_relay_checks_loops_and_sizes(operators):
    import smtplib

    a, b = operators
    context = ssl.create_default_context(cafile=str(a.data_dir / "pki" / "ca.crt"))  # one CA
    context.load_cert_chain(a.data_dir / "tls" / "server.crt", a.data_dir / "tls" / "server.key")
    with smtplib.SMTP("127.0.0.1", b.ports["smtp"], local_hostname="msante.test", timeout=10) as client:
        client.starttls(context=context)
        client.ehlo("msante.test")
        assert b"AUTH" not in client.ehlo_resp  # the certificate is the identity here
        looping = "".join(f"Received: from hop{i}.test by hop{i + 1}.test; Mon, 23 Nov 2026 10:00:00 +0000\r\n"
                          for i in range(50))
        message = f"{looping}From: {GP}\r\nTo: {REMOTE}\r\nSubject: boucle\r\n\r\nx\r\n".encode()
        with pytest.raises(smtplib.SMTPDataError) as err:
            client.sendmail(GP, [REMOTE], message)
        assert err.value.smtp_code == 554 and b"5.4.6" in err.value.smtp_error
        code, text = client.mail(GP, ["SIZE=999999999"])
        assert code == 552
        client.rset()
        client.mail(GP)
        code, text = client.rcpt("someone@chu-exemple.test")  # not ours: no open relay
        assert code == 550 and b"relaying denied" in text


def test_a_backlog_drains_without_losing_connections(operators):
    """230 queued messages for one destination: the queue shares them among parallel
    connections ([relay] connections_per_destination, 10 by default), each of at most
    PER_CONNECTION messages, and none needs a retry once the peer is back."""
    a, b = operators
    b.stop()
    with a.submission(GP, GP_RPPS) as client:
        for i in range(230):
            client.sendmail(GP, [REMOTE], f"From: {GP}\r\nTo: {REMOTE}\r\nSubject: lot {i}\r\n\r\nx\r\n".encode())
    b.start()
    wait_for(lambda: a.query("SELECT count(*) FROM deliveries WHERE recipient = ? AND status = 'queued'",
                             REMOTE)[0][0] == 0, timeout=90, what="the queue to drain")
    lost = a.query("SELECT count(*) FROM audit WHERE action = 'relay.send' AND detail LIKE '%connection lost%'")
    assert lost[0][0] == 0
    # each arrived once: submission gave each its own Message-ID (RFC 6409 §8), which B recorded
    received = b.query("SELECT count(*), count(DISTINCT message_id) FROM envelopes WHERE sender = ? "
                       "AND message_id LIKE '<%@%>'", GP)[0]
    assert received[0] == received[1] >= 230
    context = ssl.create_default_context(cafile=str(a.data_dir / "pki" / "ca.crt"))  # one CA
    sessions = scrape.value(scrape.samples(scrape.scrape(b.ports["https"], context)[1]), "msante_smtp_sessions_total",
                            listener="smtp")
    assert sessions >= 10  # B was restarted: these are the drain's connections (one at a time made 3)


def test_delay_report_while_the_peer_is_down(operators):
    a, b = operators
    b.stop()
    try:
        a.send(GP, GP_RPPS, [REMOTE], "En retard", rcpt_options=["NOTIFY=DELAY,FAILURE"])
        raw = wait_for(lambda: [m for m in a.inbox(GP) if b"En retard" in m and b"multipart/report" in m],
                       timeout=30, what="a delay report")[0]
        _, recipients = report_of(raw)
        assert recipients[0]["Action"] == "delayed" and recipients[0]["Status"].startswith("4.")
        assert recipients[0]["Will-Retry-Until"]
    finally:
        b.start()
    wait_for(lambda: any(b"En retard" in m for m in b.inbox(REMOTE)), what="the late message")


def test_relayed_report_from_a_peer_without_dsn(operators, tmp_path):
    """A trust-space peer that does not offer DSN: success asked for, so A reports `relayed`."""
    from aiosmtpd.controller import Controller

    from certs import pki, tls

    a, _ = operators
    ca = pki.load_ca(a.data_dir / "pki")
    cert, key = pki.issue_server(ca, ["127.0.0.1", "chu-exemple.test"], tmp_path, stem="peer")
    received = []

    class Peer:
        async def handle_DATA(self, server, session, envelope):  # noqa: ANN001, ANN201
            received.append(envelope.content)
            return "250 OK"
    controller = Controller(Peer(), hostname="127.0.0.1", port=NO_DSN_PORT, tls_context=tls.server_context(cert, key),
                            require_starttls=True)
    controller.start()
    try:
        a.send(GP, GP_RPPS, ["dr.house@chu-exemple.test"], "Sans DSN", rcpt_options=["NOTIFY=SUCCESS"])
        wait_for(lambda: received, what="the message at the peer")
        raw = wait_for(lambda: [m for m in a.inbox(GP) if b"Sans DSN" in m and b"multipart/report" in m],
                       what="a relayed report")[0]
        _, recipients = report_of(raw)
        assert recipients[0]["Action"] == "relayed" and "dr.house@chu-exemple.test" in recipients[0]["Final-Recipient"]
    finally:
        controller.stop()


def test_submission_completes_the_header_and_the_relay_listener_does_not(operators):
    """RFC 6409 §8: A's submission adds the Date: and Message-ID: its client left out, and the
    relayed copy carries them; B's relay listener stores another operator's mail as sent."""
    import smtplib

    a, b = operators
    bare = f"From: {GP}\r\nTo: {REMOTE}\r\nSubject: sans en-tetes\r\n\r\nBonjour.\r\n".encode()
    with a.submission(GP, GP_RPPS) as client:
        client.sendmail(GP, [REMOTE], bare)
    relayed = wait_for(lambda: [m for m in b.inbox(REMOTE) if b"sans en-tetes" in m], what="A -> B")[0]
    parsed = email.message_from_bytes(relayed, policy=email.policy.default)
    assert len(parsed.get_all("Date")) == 1
    assert parsed["Message-ID"].endswith("@msante.test>")

    context = ssl.create_default_context(cafile=str(a.data_dir / "pki" / "ca.crt"))  # one CA
    context.load_cert_chain(a.data_dir / "tls" / "server.crt", a.data_dir / "tls" / "server.key")
    direct = bare.replace(b"sans en-tetes", b"tel quel")
    with smtplib.SMTP("127.0.0.1", b.ports["smtp"], local_hostname="msante.test", timeout=10) as client:
        client.starttls(context=context)
        client.ehlo("msante.test")
        client.sendmail(GP, [REMOTE], direct)
    (stored,) = [m for m in b.inbox(REMOTE) if b"tel quel" in m]
    assert stored.endswith(direct) and b"\nDate:" not in stored and b"Message-ID" not in stored
