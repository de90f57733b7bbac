"""Hostile messages over real sockets (smtplib to submit, imaplib to read): what a black-box
probe found (issue 10: the tokenizer loop, sender spoofing, header and MIME amplification)."""
from __future__ import annotations

import smtplib

import pytest
from sqlalchemy import select

from mailserver.headers import MAX_FIELDS
from mailserver.imap.message import MAX_DEPTH, MAX_PARTS
from store.schema import audit

from .imap_client import NURSE_IDNAT
from .test_imap import imaplib_client
from .test_smtp import GP, NURSE, URGENCES, URGENTIST, inbox, login, message


def with_fields(raw: bytes, *fields: bytes) -> bytes:
    """The message with these header lines put first."""
    return b"".join(f + b"\r\n" for f in fields) + raw


def test_unbalanced_parenthesis_in_cc_is_fetched_and_the_server_lives(server):
    raw = with_fields(message(GP, [NURSE]), b"Cc: a@msante.test)")
    client = login(server)
    client.sendmail(GP, [NURSE], raw)
    client.quit()
    imap = imaplib_client(server, NURSE, NURSE_IDNAT)
    imap.select("INBOX")
    typ, data = imap.fetch("1", "(ENVELOPE BODYSTRUCTURE)")
    assert typ == "OK"
    assert b'((NIL NIL "a" "msante.test"))' in data[0]
    imap.logout()
    again = imaplib_client(server, NURSE, NURSE_IDNAT)  # the server still answers
    assert again.select("INBOX")[0] == "OK"
    again.logout()


def refused(server, raw: bytes, sender: str = GP) -> smtplib.SMTPDataError:
    client = login(server)
    with pytest.raises(smtplib.SMTPDataError) as err:
        client.sendmail(sender, [NURSE], raw)
    client.quit()
    return err.value


def test_space_before_colon_is_refused(server):
    """`From : marie` beside `From: jean`: Python's parser saw only Jean, ENVELOPE showed Marie."""
    raw = with_fields(message(GP, [NURSE]), b"From : Marie Grondin <marie.grondin@msante.test>")
    err = refused(server, raw)
    assert (err.smtp_code, err.smtp_error[:5]) == (554, b"5.6.0") and b"From " in err.smtp_error
    assert inbox(server, NURSE) == []


@pytest.mark.parametrize("field", [b"Fr\x01om: x@msante.test", b"X Bad: y", b"no colon here"])
def test_malformed_field_names_are_refused(server, field):
    err = refused(server, with_fields(message(GP, [NURSE]), field))
    assert (err.smtp_code, err.smtp_error[:5]) == (554, b"5.6.0")


def test_two_from_fields_are_refused(server):
    raw = with_fields(message(GP, [NURSE]), b"From: " + GP.encode())
    err = refused(server, raw)
    assert (err.smtp_code, err.smtp_error[:5]) == (554, b"5.6.0") and b"2 From:" in err.smtp_error


@pytest.mark.parametrize("name", [b'"marie.grondin@msante.test"', b"=?utf-8?q?marie=2Egrondin=40msante=2Etest?=",
                                  b'"Dr Marie (marie.grondin@msante.test)"'])
def test_display_name_holding_another_address_is_refused(server, name):
    raw = message(GP, [NURSE]).replace(b"From: " + GP.encode(), b"From: " + name + b" <" + GP.encode() + b">")
    err = refused(server, raw)
    assert (err.smtp_code, err.smtp_error[:5]) == (550, b"5.7.1") and b"marie.grondin" in err.smtp_error


def test_display_name_with_the_own_address_passes(server):
    raw = message(GP, [NURSE]).replace(b"From: " + GP.encode(), b'From: "' + GP.encode() + b'" <' + GP.encode() + b">")
    client = login(server)
    client.sendmail(GP, [NURSE], raw)
    client.quit()
    assert len(inbox(server, NURSE)) == 1


def test_sender_field_must_be_a_box_the_sender_may_use(server):
    """The urgentist is delegated to the emergency department's box: Sender: her, From: the box
    passes; Sender: someone else's box does not."""
    raw = message(URGENCES, [NURSE])
    client = login(server, URGENTIST, "810002000015")
    client.sendmail(URGENCES, [NURSE], with_fields(raw, b"Sender: " + URGENTIST.encode()))
    for sender in (GP.encode(), b"a@msante.test, b@msante.test", b"g: ;"):
        with pytest.raises(smtplib.SMTPDataError) as err:
            client.sendmail(URGENCES, [NURSE], with_fields(raw, b"Sender: " + sender))
        assert (err.value.smtp_code, err.value.smtp_error[:5]) == (550, b"5.7.1"), sender
    client.quit()
    assert len(inbox(server, NURSE)) == 1
    rows = server.rows(select(audit).where(audit.c.action == "smtp.refuse"))
    assert sum("Sender header not allowed" in r["detail"] for r in rows) == 3


def test_oversized_header_is_refused_with_552(server):
    limit = server.settings.max_header_size
    folded = b"X-Long: a" + b"\r\n b" * (limit // 4)
    err = refused(server, with_fields(message(GP, [NURSE]), folded))
    assert (err.smtp_code, err.smtp_error[:5]) == (552, b"5.3.4")
    many = [b"X-F%d: v" % i for i in range(server.settings.max_header_fields)]
    err = refused(server, with_fields(message(GP, [NURSE]), *many))
    assert (err.smtp_code, err.smtp_error[:5]) == (552, b"5.3.4")
    assert server.settings.max_header_fields < MAX_FIELDS
    assert inbox(server, NURSE) == []


def nested(depth: int) -> bytes:
    raw = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i) for i in range(depth))
    return raw + b"Content-Type: text/plain\r\n\r\ndeep\r\n"


def parts(count: int) -> bytes:
    return (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"--b\r\n\r\nx\r\n" * count + b"--b--\r\n")


@pytest.mark.parametrize("body", [nested(MAX_DEPTH + 1), parts(MAX_PARTS + 1)], ids=["deep", "wide"])
def test_mime_beyond_the_caps_is_refused(server, body):
    head = message(GP, [NURSE]).split(b"\r\n\r\n", 1)[0]
    head = b"\r\n".join(ln for ln in head.split(b"\r\n") if not ln.lower().startswith((b"content-", b"mime-")))
    err = refused(server, head + b"\r\nMIME-Version: 1.0\r\n" + body)
    assert (err.smtp_code, err.smtp_error[:5]) == (554, b"5.6.0")


def test_mime_within_the_caps_is_stored_byte_identical(server):
    head = (b"From: " + GP.encode() + b"\r\nTo: " + NURSE.encode() + b"\r\nSubject: x\r\nMIME-Version: 1.0\r\n")
    raw = head + parts(MAX_PARTS - 1)
    client = login(server)
    client.sendmail(GP, [NURSE], raw)
    client.quit()
    stored = inbox(server, NURSE)[0]
    assert stored.endswith(raw)
    imap = imaplib_client(server, NURSE, NURSE_IDNAT)
    imap.select("INBOX")
    typ, data = imap.fetch("1", "(BODYSTRUCTURE)")
    assert typ == "OK" and data[0].count(b'"plain"') == MAX_PARTS - 1
    imap.logout()


def test_stored_mail_beyond_the_caps_is_still_fetched(server):
    """Mail stored before the caps (or by APPEND) is shown with the rest left opaque."""
    imap = imaplib_client(server, NURSE, NURSE_IDNAT)
    raw = b"Subject: deep\r\n" + nested(MAX_DEPTH + 10)
    assert imap.append("INBOX", None, None, raw)[0] == "OK"
    imap.select("INBOX")
    typ, data = imap.fetch("1", "(BODYSTRUCTURE ENVELOPE)")
    assert typ == "OK" and data[0].count(b'"mixed"') == MAX_DEPTH
    assert imap.fetch("1", "(BODY.PEEK[])")[1][0][1] == raw
    imap.logout()

