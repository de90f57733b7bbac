"""SMTP submission end to end: smtplib over real sockets against a running server."""
from __future__ import annotations

import contextlib
import email
import email.policy
import smtplib
import socket
import ssl
import time
from email.message import EmailMessage

import pytest
from sqlalchemy import event, func, select, update
from sqlalchemy.engine import Engine

from certs import pki
from mailserver.smtp import SmtpLimits
from certs.tokens import DevIssuer
from store.schema import audit, bodies, deliveries, envelopes, folder_messages, folders, mailboxes

GP = "jean.dupont@msante.test"  # Dr Jean Dupont, nominative box
GP_IDNAT = "810001045367"
URGENTIST = "claire.leroy@msante.test"  # delegate of the emergency department's box
URGENCES = "urgences.ch-saint-paul@msante.test"
NURSE = "sophie.hoarau@msante.test"
PHARMACIST = "marie.grondin@msante.test"


def connect(server, listener: str = "submission", *, cert: tuple | None = None) -> smtplib.SMTP:
    host, port = server.listeners[listener].rsplit(":", 1)
    context = server.client_tls()
    if cert:
        context.load_cert_chain(*cert)
    if listener == "submissions":
        client = smtplib.SMTP_SSL("localhost", int(port), context=context, timeout=15)
        client.ehlo("client.test")
        return client
    client = smtplib.SMTP("localhost", int(port), timeout=15)
    client.ehlo("client.test")
    client.starttls(context=context)
    client.ehlo("client.test")
    return client


def token(server, idnat: str = GP_IDNAT, **kwargs) -> str:
    return DevIssuer.load(server.data_dir, server.settings.public_url).issue_access_token(
        idnat=idnat, given_name="Jean", family_name="Dupont", **kwargs)


def xoauth2(user: str, bearer: str):
    return lambda challenge=None: f"user={user}\x01auth=Bearer {bearer}\x01\x01" if challenge is None else ""


def login(server, address: str = GP, idnat: str = GP_IDNAT, listener: str = "submission") -> smtplib.SMTP:
    client = connect(server, listener)
    client.auth("XOAUTH2", xoauth2(address, token(server, idnat)))
    return client


def message(sender: str, to: list[str], subject: str = "Compte rendu", body: str = "Bonjour,\n") -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, ", ".join(to), subject
    msg["Message-ID"] = email.utils.make_msgid(domain="msante.test")
    msg.set_content(body)
    return msg.as_bytes(policy=email.policy.SMTP)


def inbox(server, address: str) -> list[bytes]:
    query = (select(bodies.c.data).select_from(folder_messages.join(folders).join(mailboxes)
                                               .join(bodies, bodies.c.id == folder_messages.c.body_id))
             .where(mailboxes.c.address == address, folders.c.name == "INBOX").order_by(folder_messages.c.uid))
    return [row["data"] for row in server.rows(query)]


def test_starttls_comes_before_auth_and_mail(server):
    host, port = server.listeners["submission"].rsplit(":", 1)
    client = smtplib.SMTP("localhost", int(port), timeout=10)
    code, text = client.ehlo("client.test")
    assert code == 250 and b"STARTTLS" in text and b"AUTH" not in text
    assert client.docmd("AUTH", "PLAIN AGpvaG4AcGFzcw==")[0] == 530
    code, text = client.docmd("MAIL", "FROM:<jean.dupont@msante.test>")
    assert code == 530 and text.startswith(b"5.7.0")
    client.starttls(context=server.client_tls())
    code, text = client.ehlo("client.test")
    for extension in (b"PIPELINING", b"ENHANCEDSTATUSCODES", b"DSN", b"8BITMIME", b"SMTPUTF8", b"SIZE 26214400"):
        assert extension in text
    assert b"AUTH OAUTHBEARER XOAUTH2 PLAIN LOGIN" in text
    code, text = client.docmd("MAIL", "FROM:<jean.dupont@msante.test>")
    assert code == 530  # authentication required
    client.quit()


@pytest.mark.parametrize("listener", ["submission", "submissions"])
def test_xoauth2_login_and_delivery(server, listener):
    client = login(server, listener=listener)
    client.sendmail(GP, [URGENTIST], message(GP, [URGENTIST]))
    client.quit()
    (stored,) = inbox(server, URGENTIST)
    received = stored.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[0:4]
    assert received[0].startswith(b"Received: from client.test ([127.0.0.1])")
    assert b"TLSv1.3" in b"".join(received) and b"authenticated as person 810001045367" in b"".join(received)


def test_oauthbearer_login(server):
    client = connect(server)
    host, port = server.listeners["submission"].rsplit(":", 1)
    bearer = token(server)
    code, _ = client.auth("OAUTHBEARER", lambda challenge=None: (
        f"n,a={GP},\x01host=localhost\x01port={port}\x01auth=Bearer {bearer}\x01\x01" if challenge is None else "\x01"))
    assert code == 235
    client.quit()


@pytest.mark.parametrize("kwargs", [{"ttl": -300}, {"audience": "another-service"}, {"acr": ""}])
def test_bad_tokens_refused(server, kwargs):
    client = connect(server)
    with pytest.raises(smtplib.SMTPAuthenticationError) as err:
        client.auth("XOAUTH2", xoauth2(GP, token(server, **kwargs)))
    assert err.value.smtp_code == 535
    client.close()


def test_forged_token_refused(server):
    genuine = token(server)
    header, claims, signature = genuine.split(".")
    forged = ".".join([header, claims, signature[:-4] + ("AAAA" if signature[-4:] != "AAAA" else "BBBB")])
    client = connect(server)
    with pytest.raises(smtplib.SMTPAuthenticationError):
        client.auth("XOAUTH2", xoauth2(GP, forged))
    client.close()


def test_token_for_a_box_you_do_not_own(server):
    client = connect(server)
    with pytest.raises(smtplib.SMTPAuthenticationError) as err:
        client.auth("XOAUTH2", xoauth2(URGENTIST, token(server)))  # the GP naming the urgentist's box
    assert b"may not use" in err.value.smtp_error
    client.close()


def test_external_with_cps_and_application_certificates(server, tmp_path):
    assert server.cli("certs", "issue", "--kind", "cps", "--rpps", "10002000015", "--out", str(tmp_path)) == 0
    client = connect(server, cert=(tmp_path / "cps-10002000015.crt", tmp_path / "cps-10002000015.key"))
    assert client.auth("EXTERNAL", lambda challenge=None: "")[0] == 235
    client.sendmail(URGENCES, [GP], message(URGENCES, [GP], "Passage aux urgences"))  # as the delegated box
    client.quit()
    assert b"Passage aux urgences" in inbox(server, GP)[-1]

    assert server.cli("certs", "issue", "--kind", "app", "--mailbox", "dpi.ch-saint-paul@msante.test",
                      "--out", str(tmp_path)) == 0
    client = connect(server, "submissions", cert=(tmp_path / "app-dpi.ch-saint-paul.crt",
                                                  tmp_path / "app-dpi.ch-saint-paul.key"))
    assert client.auth("EXTERNAL", lambda challenge=None: "")[0] == 235
    app_box = "dpi.ch-saint-paul@msante.test"
    client.sendmail(app_box, [GP], message(app_box, [GP], "Admission aux urgences de votre patient"))
    with pytest.raises(smtplib.SMTPSenderRefused) as err:
        client.sendmail(GP, [NURSE], message(GP, [NURSE]))
    assert err.value.smtp_code == 550
    client.quit()


def test_certificate_from_unknown_ca_refused(server, tmp_path):
    rogue = pki.create_ca(tmp_path / "rogue")
    pki.issue_cps(rogue, idnat=GP_IDNAT, given_name="Jean", family_name="Dupont", out_dir=tmp_path, stem="rogue")
    with pytest.raises((ssl.SSLError, smtplib.SMTPException, ConnectionError)):
        client = connect(server, cert=(tmp_path / "rogue.crt", tmp_path / "rogue.key"))
        client.auth("EXTERNAL", lambda challenge=None: "")


def test_app_password_plain_and_login(server, capsys):
    assert server.cli("mailbox", "app-password", "create", GP, "--rpps", "10001045367",
                      "--label", "Thunderbird cabinet") == 0
    password = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    for mechanism in ("PLAIN", "LOGIN"):
        client = connect(server)
        client.user, client.password = GP, password
        assert client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"))[0] == 235
        client.quit()
    client = connect(server)
    client.user, client.password = GP, password[:-1] + ("a" if password[-1] != "a" else "b")
    with pytest.raises(smtplib.SMTPAuthenticationError):
        client.auth("PLAIN", client.auth_plain)
    client.close()
    assert server.cli("mailbox", "app-password", "revoke", GP, "--rpps", "10001045367",
                      "--label", "Thunderbird cabinet") == 0
    client = connect(server)
    client.user, client.password = GP, password
    with pytest.raises(smtplib.SMTPAuthenticationError):
        client.auth("PLAIN", client.auth_plain)
    client.close()


def test_failed_logins_are_slowed_and_audited(server):
    started = time.monotonic()
    for _ in range(5):
        client = connect(server)
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.auth("XOAUTH2", xoauth2(GP, "not-a-token"))
        client.close()
    assert time.monotonic() - started >= 0.5 + 1.0  # the 4th and 5th failures waited
    rows = server.rows(select(audit).where(audit.c.action == "auth.token", audit.c.outcome == "failed"))
    assert len(rows) >= 5 and rows[-1]["detail"]


def test_sender_must_be_allowed_and_from_must_agree(server):
    client = login(server)
    with pytest.raises(smtplib.SMTPSenderRefused) as err:
        client.sendmail(URGENCES, [NURSE], message(URGENCES, [NURSE]))  # not delegated to the GP
    assert err.value.smtp_code == 550 and b"5.7.1" in err.value.smtp_error
    with pytest.raises(smtplib.SMTPDataError) as err:
        client.sendmail(GP, [NURSE], message(URGENTIST, [NURSE]))  # From: another person
    assert err.value.smtp_code == 550 and b"From:" in err.value.smtp_error
    client.quit()
    assert inbox(server, NURSE) == []


def test_recipients_unknown_outside_and_remote(server):
    client = login(server)
    client.mail(GP)
    code, text = client.rcpt("nobody@msante.test")
    assert (code, text[:5]) == (550, b"5.1.1")
    code, text = client.rcpt("someone@gmail.com")
    assert code == 550 and b"outside the MSSant" in text
    code, text = client.rcpt("dr.house@chu-exemple.test")  # in the trust space: queued for relay
    assert code == 250
    code, text = client.rcpt(NURSE)
    assert code == 250
    code, text = client.data(message(GP, ["dr.house@chu-exemple.test", NURSE]))
    assert code == 250
    client.quit()
    queued = server.rows(select(deliveries.c.recipient, deliveries.c.status))
    assert {"recipient": "dr.house@chu-exemple.test", "status": "queued"} in queued


def test_size_limit_declared_and_undeclared(server, monkeypatch):
    client = login(server)
    code, text = client.mail(GP, ["SIZE=999999999"])
    assert code == 552 and text.startswith(b"5.3.4")
    client.rset()
    big = message(GP, [NURSE], body="x" * 70 + "\n") + b"y" * 76 + b"\r\n"
    big += (b"z" * 998 + b"\r\n") * (26 * 1024)  # ~26 MB, over the 25 MB limit, SIZE not declared
    client.mail(GP)
    client.rcpt(NURSE)
    code, text = client.data(big)
    assert code == 552
    client.quit()
    assert inbox(server, NURSE) == []


def test_pipelined_session(server):
    client = login(server)
    raw = client.sock
    msg = message(GP, [NURSE, PHARMACIST], "Pipelined")
    raw.sendall(f"MAIL FROM:<{GP}>\r\nRCPT TO:<{NURSE}>\r\nRCPT TO:<nobody@msante.test>\r\n"
                f"RCPT TO:<{PHARMACIST}>\r\nDATA\r\n".encode())
    replies = [client.getreply() for _ in range(5)]
    assert [code for code, _ in replies] == [250, 250, 550, 250, 354]
    raw.sendall(msg + b".\r\nNOOP\r\n")
    assert client.getreply()[0] == 250
    assert client.getreply()[0] == 250
    client.quit()
    assert b"Pipelined" in inbox(server, NURSE)[-1] and b"Pipelined" in inbox(server, PHARMACIST)[-1]


def test_smtputf8_address_and_8bit_body_kept(server):
    assert server.cli("mailbox", "add", "élodie.rivière@msante.test", "--kind", "nominative",
                      "--owner", "10002000023") == 0
    client = login(server)
    body = ("From: " + GP + "\r\nTo: élodie.rivière@msante.test\r\nSubject: Résultats\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n").encode() + bytes(range(0x80, 0x100)) + b"\r\nfin\r\n"
    client.sendmail(GP, ["élodie.rivière@msante.test"], body, mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    client.quit()
    (stored,) = inbox(server, "élodie.rivière@msante.test")
    assert stored.endswith(body)  # byte for byte, after our Received header
    assert stored.startswith(b"Received:") and b"UTF8SMTPSA" in stored.split(b"\r\n\r\n")[0]


def test_dsn_success_report(server):
    client = login(server)
    client.sendmail(GP, [NURSE], message(GP, [NURSE], "Avec accusé"),
                    mail_options=["RET=HDRS", "ENVID=Env+2D42"],
                    rcpt_options=["NOTIFY=SUCCESS", "ORCPT=rfc822;Sophie.Hoarau@msante.test"])
    client.quit()
    report = email.message_from_bytes(inbox(server, GP)[-1], policy=email.policy.default)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    status = next(p for p in report.walk() if p.get_content_type() == "message/delivery-status")
    per_message, per_recipient = status.get_payload()
    assert per_message["Original-Envelope-Id"] == "Env-42"
    assert per_recipient["Action"] == "delivered" and per_recipient["Status"] == "2.0.0"
    assert per_recipient["Original-Recipient"] == "rfc822;Sophie.Hoarau@msante.test"
    assert per_recipient["Final-Recipient"].replace(" ", "") == f"rfc822;{NURSE}"
    assert any(p.get_content_type() == "text/rfc822-headers" for p in report.walk())  # RET=HDRS


def test_dsn_failure_report_when_box_disappears_during_the_transaction(server):
    client = login(server)
    client.mail(GP, ["RET=FULL"])
    assert client.rcpt(PHARMACIST)[0] == 250
    assert client.rcpt(NURSE)[0] == 250
    server.execute(update(mailboxes).where(mailboxes.c.address == PHARMACIST).values(retired_at=func.now()))
    assert client.data(message(GP, [PHARMACIST, NURSE], "Échec partiel"))[0] == 250
    client.quit()
    report = email.message_from_bytes(inbox(server, GP)[-1], policy=email.policy.default)
    status = next(p for p in report.walk() if p.get_content_type() == "message/delivery-status")
    recipient = status.get_payload()[1]
    assert recipient["Action"] == "failed" and recipient["Status"] == "5.1.1"
    assert recipient["Final-Recipient"].replace(" ", "") == f"rfc822;{PHARMACIST}"
    assert any(p.get_content_type() == "message/rfc822" for p in report.walk())  # RET=FULL
    assert len(inbox(server, NURSE)) == 1


def test_box_retired_between_rcpt_and_data_after_it_had_mail(server):
    """The folder's UPDATE that takes the UID also checks the box is active: a box with folders
    (it had mail before) retired between RCPT and DATA gets nothing, and its recipient fails."""
    client = login(server)
    client.sendmail(GP, [PHARMACIST], message(GP, [PHARMACIST], "Avant"))
    client.mail(GP)
    assert client.rcpt(PHARMACIST)[0] == 250
    assert client.rcpt(NURSE)[0] == 250
    server.execute(update(mailboxes).where(mailboxes.c.address == PHARMACIST).values(retired_at=func.now()))
    assert client.data(message(GP, [PHARMACIST, NURSE], "Apres"))[0] == 250
    client.quit()
    assert [b"Avant" in m for m in inbox(server, PHARMACIST)] == [True]
    uidnext = server.scalar(select(folders.c.uidnext).join(mailboxes).where(
        mailboxes.c.address == PHARMACIST, folders.c.name == "INBOX"))
    assert uidnext == 2  # no UID taken for the message it did not get
    assert sorted(r["status"] for r in server.rows(select(deliveries.c.status).where(
        deliveries.c.recipient == PHARMACIST))) == ["delivered", "failed"]
    assert b"Apres" in inbox(server, NURSE)[-1]


def test_first_delivery_creates_the_folders_later_ones_read_neither_box_nor_folders(server):
    """A box gets its folders with its first message; from then on a delivery takes its UID in
    one UPDATE that also checks the box, without reading the box or its folder list."""
    box_id = server.scalar(select(mailboxes.c.id).where(mailboxes.c.address == URGENCES))
    assert server.scalar(select(func.count()).select_from(folders).where(folders.c.mailbox_id == box_id)) == 0
    client = login(server)
    client.sendmail(GP, [URGENCES], message(GP, [URGENCES], "Premier"))
    names = {r["name"] for r in server.rows(select(folders.c.name).where(folders.c.mailbox_id == box_id))}
    assert names == {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"}
    statements: list[str] = []
    with _statements(statements):
        client.sendmail(GP, [URGENCES], message(GP, [URGENCES], "Second"))
    client.quit()
    assert [m.count(b"Premier") + 2 * m.count(b"Second") for m in inbox(server, URGENCES)] == [1, 2]
    assert not [s for s in statements if s.startswith(("SELECT folders.name", "SELECT mailboxes.address FROM"))]
    assert len([s for s in statements if s.startswith("UPDATE folders")]) == 1


@contextlib.contextmanager
def _statements(into: list[str]):
    """The SQL every engine of this process runs meanwhile (the server's is in a thread here)."""
    def seen(conn, cursor, statement, *args):  # noqa: ANN001
        into.append(statement)
    event.listen(Engine, "before_cursor_execute", seen)
    try:
        yield
    finally:
        event.remove(Engine, "before_cursor_execute", seen)


def test_three_local_recipients_one_body(server):
    before = server.scalar(select(func.count()).select_from(bodies))
    client = login(server)
    client.sendmail(GP, [NURSE, PHARMACIST, URGENTIST], message(GP, [NURSE, PHARMACIST, URGENTIST], "Trois"))
    client.quit()
    assert server.scalar(select(func.count()).select_from(bodies)) == before + 1
    for box in (NURSE, PHARMACIST, URGENTIST):
        assert b"Trois" in inbox(server, box)[-1]


def test_many_recipients_over_several_messages_in_one_session(server):
    client = login(server)
    for _ in range(3):  # 300 RCPT in one session: the per-command limit is not a per-session cap
        client.mail(GP)
        for i in range(99):
            assert client.rcpt(f"correspondant{i}@chu-exemple.test")[0] == 250
        assert client.rcpt(NURSE)[0] == 250
        assert client.rcpt(NURSE)[0] == 250  # listed twice, delivered once
        assert client.data(message(GP, [NURSE], "Lot"))[0] == 250
    client.quit()
    assert len(inbox(server, NURSE)) == 3


def test_recipient_limit_and_bad_dsn_parameters(server):
    client = login(server)
    client.mail(GP)
    for i in range(100):
        assert client.rcpt(f"correspondant{i}@chu-exemple.test")[0] == 250
    code, text = client.rcpt(NURSE)
    assert (code, text[:5]) == (452, b"4.5.3")
    client.rset()
    code, text = client.mail(GP, ["RET=EVERYTHING"])
    assert code == 501 and text.startswith(b"5.5.4")
    client.mail(GP)
    code, _ = client.rcpt(NURSE, ["NOTIFY=NEVER,SUCCESS"])
    assert code == 501
    client.quit()


def test_connections_per_address_limited(server):
    host, port = server.listeners["submission"].rsplit(":", 1)
    held = []
    try:
        for _ in range(server.settings.limits.connections_per_address):
            sock = socket.create_connection(("127.0.0.1", int(port)), timeout=10)
            held.append(sock)
            assert sock.recv(512).startswith(b"220 ")
        sock = socket.create_connection(("127.0.0.1", int(port)), timeout=10)
        held.append(sock)
        assert sock.recv(512).startswith(b"421 4.7.0")
    finally:
        for sock in held:
            sock.close()


def test_accepted_and_refused_messages_audited(server):
    client = login(server)
    client.sendmail(GP, [NURSE], message(GP, [NURSE], "Audit"))
    client.mail(GP)
    client.rcpt("someone@gmail.com")
    client.quit()
    rows = server.rows(select(audit).where(audit.c.action.in_(["smtp.accept", "smtp.refuse"])))
    accepted = [r for r in rows if r["action"] == "smtp.accept"]
    refused = [r for r in rows if r["action"] == "smtp.refuse"]
    assert accepted[-1]["actor"] == GP_IDNAT and NURSE in accepted[-1]["detail"]
    assert "Audit" not in accepted[-1]["detail"]  # no content in the trail
    assert refused[-1]["target"] == "someone@gmail.com" and refused[-1]["outcome"] == "denied"


def test_command_line_length_and_command_count_limits(server):
    client = login(server)
    code, text = client.docmd("NOOP", "x" * 10_000)  # longer than any command may be
    assert code == 500 and b"too long" in text
    assert client.noop()[0] == 250  # the session goes on
    for _ in range(SmtpLimits().max_commands - 1):
        assert client.noop()[0] == 250
    code, text = client.noop()
    assert code == 421 and text.startswith(b"4.7.0")
    client.close()


def test_submission_adds_date_and_message_id_a_client_left_out(server):
    """RFC 6409 §8: what IMAP shows carries a Date: and a Message-ID: of our host; a message
    that had them keeps them unchanged, with no second one."""
    from .test_imap import imaplib_client
    from .imap_client import NURSE_IDNAT

    bare = f"From: {GP}\r\nTo: {NURSE}\r\nSubject: Sans date\r\n\r\nBonjour.\r\n".encode()
    complete = (f"From: {GP}\r\nTo: {NURSE}\r\nSubject: Avec date\r\nDate: Mon, 23 Nov 2026 10:00:00 +0100\r\n"
                f"Message-ID: <compte-rendu-42@cabinet.test>\r\n\r\nBonjour.\r\n").encode()
    client = login(server)
    client.sendmail(GP, [NURSE], bare)
    client.sendmail(GP, [NURSE], complete)
    client.quit()
    imap = imaplib_client(server, NURSE, NURSE_IDNAT)
    imap.select("INBOX")
    typ, data = imap.fetch("1:2", "(BODY.PEEK[HEADER])")
    assert typ == "OK"
    first, second = (email.message_from_bytes(item[1], policy=email.policy.default)
                     for item in data if isinstance(item, tuple))
    imap.logout()
    assert first["Subject"] == "Sans date"
    assert len(first.get_all("Date")) == 1 and len(first.get_all("Message-ID")) == 1
    sent = email.utils.parsedate_to_datetime(first["Date"])
    assert abs(time.time() - sent.timestamp()) < 120
    local, _, host = first["Message-ID"].strip("<>").partition("@")
    assert host == server.settings.hostname and len(local) >= 32
    assert second.get_all("Date") == ["Mon, 23 Nov 2026 10:00:00 +0100"]
    assert second.get_all("Message-ID") == ["<compte-rendu-42@cabinet.test>"]
    assert inbox(server, NURSE)[1].endswith(complete)
    # the envelope records the Message-ID the stored message carries (DSN reports cite it)
    ids = [row["message_id"] for row in server.rows(select(envelopes.c.message_id).order_by(envelopes.c.id))]
    assert ids[-2:] == [first["Message-ID"], "<compte-rendu-42@cabinet.test>"]
