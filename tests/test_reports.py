"""Reading incoming delivery and disposition reports (mailserver/reports.py), sans-IO: DSNs as
our own builder writes them (RFC 3464), an MDN as a mail client writes it (RFC 8098), and
what must read as nothing."""
from __future__ import annotations

from datetime import datetime, timezone

from mailserver import dsn, reports

ORIGINAL = (b"From: dpi@msante.test\r\nTo: gp@other.test\r\nSubject: Admission\r\n"
            b"Message-ID: <123.hospital-event.7@msante.test>\r\n\r\nBonjour\r\n")
NOW = datetime(2026, 12, 6, 8, 0, tzinfo=timezone.utc)


def report(action: str, status: str, diagnostic: str | None = None) -> bytes:
    return dsn.build_report(
        reporting_mta="mx.other.test", original_envelope_id=None, arrival_date=NOW, ret="HDRS",
        recipients=[dsn.RecipientStatus(final_recipient="GP@other.test", action=action, status=status,
                                        diagnostic=diagnostic, last_attempt=NOW)],
        original_message=ORIGINAL, from_addr="mailer-daemon@other.test", to_addr="dpi@msante.test",
        subject_hint="Admission")


def test_dsn_success_and_failure():
    assert reports.read(report("delivered", "2.0.0")) == [
        reports.Report("<123.hospital-event.7@msante.test>", "gp@other.test", "delivered")]
    (failed,) = reports.read(report("failed", "5.1.1", "550 5.1.1 no such user"))
    assert failed.outcome == "failed" and failed.reason == "5.1.1 550 5.1.1 no such user"
    assert reports.read(report("delayed", "4.4.1", "451 later")) == []  # not a fact yet


def test_mdn_displayed_is_read():
    mdn = (b"From: gp@other.test\r\nTo: dpi@msante.test\r\nSubject: Lu\r\nMIME-Version: 1.0\r\n"
           b'Content-Type: multipart/report; report-type=disposition-notification; boundary="b"\r\n\r\n'
           b"--b\r\nContent-Type: text/plain\r\n\r\nLu.\r\n--b\r\nContent-Type: message/disposition-notification\r\n\r\n"
           b"Reporting-UA: client; Thunderbird\r\nFinal-Recipient: rfc822; GP@other.test\r\n"
           b"Original-Message-ID: <123.hospital-event.7@msante.test>\r\n"
           b"Disposition: manual-action/MDN-sent-manually; %s\r\n\r\n--b--\r\n")
    assert reports.read(mdn % b"displayed") == [
        reports.Report("<123.hospital-event.7@msante.test>", "gp@other.test", "read")]
    assert reports.read(mdn % b"deleted") == []


def test_anything_else_reads_as_nothing():
    assert reports.read(ORIGINAL) == []
    big = report("delivered", "2.0.0")
    assert reports.read(big + b" " * reports.MAX_REPORT) == []
    assert reports.read(b"Content-Type: multipart/report; report-type=other; boundary=x\r\n\r\n--x--\r\n") == []
