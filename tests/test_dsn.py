"""mailserver.dsn: DSN parameters (RFC 3461) and reports (RFC 3464), read back with `email`."""
import email
import email.policy
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

import pytest

from mailserver import dsn
from mailserver.dsn import DsnError, MailDsn, RcptDsn, RecipientStatus

PARIS = timezone(timedelta(hours=1))
ARRIVAL = datetime(2025, 11, 23, 20, 29, tzinfo=PARIS)
ORIGINAL = (
    b"From: Dr Martin <dr.martin@hopital.mssante.fr>\r\n"
    b"To: dr.durand@cabinet.mssante.fr\r\n"
    b"Subject: XDM/1.0/DDM+Compte rendu\r\n"
    b"Message-ID: <cr-42@hopital.mssante.fr>\r\n"
    b"X-MSS-CODECDA: 11488-4,34133-9\r\n"
    b"X-MSS-INS: O\r\n"
    b"\r\n"
    b"Compte rendu de consultation: body text marker\r\n"
)


# --- parameters ---------------------------------------------------------------------


def test_mail_params_valid():
    assert dsn.parse_mail_params({}) == MailDsn(None, None)
    assert dsn.parse_mail_params({"RET": "full", "ENVID": "QQ314159"}) == MailDsn("FULL", "QQ314159")
    assert dsn.parse_mail_params({"ret": "HDRS", "envid": "a+2Bb+3Dc+20d"}) == MailDsn("HDRS", "a+b=c d")
    # other extensions' parameters are none of this module's business
    assert dsn.parse_mail_params({"SIZE": "1000", "BODY": "8BITMIME", "SMTPUTF8": True}) == MailDsn()


@pytest.mark.parametrize(
    "params",
    [
        {"RET": "BAD"},
        {"RET": True},
        {"RET": ""},
        {"ENVID": "x" * 101},
        {"ENVID": "a+zz"},  # bad hexchar
        {"ENVID": "a=b"},  # "=" is not an xchar
        {"ENVID": "a b"},  # nor is space
        {"ENVID": "a+00b"},  # decodes to a control character
        {"ENVID": "+C3+A9"},  # decodes to non-ASCII
        {"ENVID": True},
        {"RET": "FULL", "ret": "HDRS"},
    ],
)
def test_mail_params_invalid(params):
    with pytest.raises(DsnError) as caught:
        dsn.parse_mail_params(params)
    assert (caught.value.reply_code, caught.value.enhanced_code) == (501, "5.5.4")
    assert str(caught.value).startswith("501 5.5.4 ")


def test_envid_limit_is_100_characters():
    assert dsn.parse_mail_params({"ENVID": "x" * 100}).envid == "x" * 100


def test_rcpt_params_valid():
    assert dsn.parse_rcpt_params({}) == RcptDsn(frozenset({"FAILURE", "DELAY"}), None)
    assert dsn.parse_rcpt_params({"NOTIFY": "SUCCESS,failure"}).notify == {"SUCCESS", "FAILURE"}
    assert dsn.parse_rcpt_params({"NOTIFY": "never"}).notify == {"NEVER"}
    assert dsn.parse_rcpt_params({"NOTIFY": "DELAY,SUCCESS,FAILURE"}).notify == dsn.NOTIFY_EVENTS
    assert dsn.parse_rcpt_params({"ORCPT": "RFC822;dr.durand+2Burgence@cabinet.mssante.fr"}).orcpt == (
        "rfc822",
        "dr.durand+urgence@cabinet.mssante.fr",
    )


@pytest.mark.parametrize(
    "params",
    [
        {"NOTIFY": "NEVER,SUCCESS"},
        {"NOTIFY": "SUCCESS,NEVER"},
        {"NOTIFY": "SUCCESS,,DELAY"},
        {"NOTIFY": "SUCCESS,"},
        {"NOTIFY": "SOMETIMES"},
        {"NOTIFY": True},
        {"ORCPT": "dr.durand@cabinet.mssante.fr"},  # no addr-type
        {"ORCPT": "rfc 822;dr.durand@cabinet.mssante.fr"},  # addr-type not an atom
        {"ORCPT": ";dr.durand@cabinet.mssante.fr"},
        {"ORCPT": "rfc822;"},  # no address
        {"ORCPT": "rfc822;dr.durand+urgence@cabinet.mssante.fr"},  # raw "+" is not xtext
        {"ORCPT": "rfc822;" + "a" * 500},
    ],
)
def test_rcpt_params_invalid(params):
    with pytest.raises(DsnError) as caught:
        dsn.parse_rcpt_params(params)
    assert (caught.value.reply_code, caught.value.enhanced_code) == (501, "5.5.4")


@pytest.mark.parametrize(
    "text", ["plain", "a+b=c d", "tab\there", "+", "=", "dr.durand@cabinet.mssante.fr", "été", ""]
)
def test_xtext_round_trip(text):
    encoded = dsn.xtext_encode(text)
    assert all("!" <= c <= "~" and c != "=" for c in encoded)
    assert dsn.xtext_decode(encoded) == text


def test_xtext_encoding_is_exact():
    assert dsn.xtext_encode("a+b=c d") == "a+2Bb+3Dc+20d"
    assert dsn.xtext_encode("é") == "+C3+A9"
    assert dsn.xtext_decode("a+2bb") == "a+b"  # lower-case hex tolerated


# --- reports ------------------------------------------------------------------------


def build(recipients, ret=None, original=ORIGINAL, **overrides):
    arguments = dict(
        reporting_mta="mx.hopital.mssante.fr",
        original_envelope_id="QQ314159",
        arrival_date=ARRIVAL,
        recipients=recipients,
        original_message=original,
        ret=ret,
        from_addr="mailer-daemon@hopital.mssante.fr",
        to_addr="dr.martin@hopital.mssante.fr",
        subject_hint="XDM/1.0/DDM+Compte rendu",
        date=datetime(2025, 11, 23, 20, 31, tzinfo=PARIS),
    )
    arguments.update(overrides)
    raw = dsn.build_report(**arguments)
    return raw, email.message_from_bytes(raw, policy=email.policy.default)


def parts(report):
    human, status, returned = report.iter_parts()
    return human, status.get_payload(), returned


FAILED = RecipientStatus(
    final_recipient="dr.durand@cabinet.mssante.fr",
    action="failed",
    status="5.1.1",
    diagnostic="550 5.1.1 <dr.durand@cabinet.mssante.fr>: Recipient address rejected",
    original_recipient=("rfc822", "Dr.Durand@cabinet.mssante.fr"),
    last_attempt=datetime(2025, 11, 23, 20, 30, tzinfo=PARIS),
)
DELIVERED = RecipientStatus("dr.petit@cabinet.mssante.fr", "delivered", "2.0.0")
DELAYED = RecipientStatus(
    "secretariat@ehpad.mssante.fr",
    "delayed",
    "4.4.1",
    diagnostic="421 4.4.1 connection timed out",
    last_attempt=datetime(2025, 11, 23, 21, 0, tzinfo=PARIS),
    will_retry_until=datetime(2025, 11, 28, 20, 29, tzinfo=PARIS),
)


def test_failure_report_structure_and_fields():
    raw, report = build([FAILED, DELIVERED])
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    assert [p.get_content_type() for p in report.iter_parts()] == [
        "text/plain",
        "message/delivery-status",
        "message/rfc822",
    ]
    assert report["Subject"] == "Échec de remise : XDM/1.0/DDM+Compte rendu"
    assert report["Auto-Submitted"] == "auto-replied"
    assert report["To"].addresses[0].addr_spec == "dr.martin@hopital.mssante.fr"
    assert report["From"].addresses[0].addr_spec == "mailer-daemon@hopital.mssante.fr"
    assert report["Message-ID"].endswith("@mx.hopital.mssante.fr>")
    assert report["Date"].datetime == datetime(2025, 11, 23, 20, 31, tzinfo=PARIS)
    assert report["MIME-Version"] == "1.0"

    _, blocks, _ = parts(report)
    assert len(blocks) == 3
    per_message, failed, delivered = blocks
    assert per_message["Reporting-MTA"] == "dns; mx.hopital.mssante.fr"
    assert per_message["Original-Envelope-Id"] == "QQ314159"
    assert parsedate_to_datetime(per_message["Arrival-Date"]) == ARRIVAL
    assert failed["Original-Recipient"] == "rfc822;Dr.Durand@cabinet.mssante.fr"
    assert failed["Final-Recipient"] == "rfc822; dr.durand@cabinet.mssante.fr"
    assert failed["Action"] == "failed"
    assert failed["Status"] == "5.1.1"
    assert failed["Diagnostic-Code"] == (
        "smtp; 550 5.1.1 <dr.durand@cabinet.mssante.fr>: Recipient address rejected"
    )
    assert parsedate_to_datetime(failed["Last-Attempt-Date"]) == FAILED.last_attempt
    assert failed["Will-Retry-Until"] is None
    assert (delivered["Action"], delivered["Status"]) == ("delivered", "2.0.0")
    assert delivered["Original-Recipient"] is None and delivered["Diagnostic-Code"] is None


def test_failure_report_human_part_is_french_with_an_english_line():
    _, report = build([FAILED, DELIVERED])
    human, _, _ = parts(report)
    assert human.get_content_charset() == "utf-8"
    text = human.get_content()
    assert "dr.durand@cabinet.mssante.fr : ÉCHEC" in text
    assert "adresse du destinataire inconnue" in text
    assert "550 5.1.1" in text
    assert "dr.petit@cabinet.mssante.fr : remis." in text
    assert "« XDM/1.0/DDM+Compte rendu »" in text and "23/11/2025 à 20:29 (UTC+01:00)" in text
    assert "delivery status notification" in text
    assert "joint en entier" in text


def test_failure_report_returns_the_original_byte_for_byte():
    raw, report = build([FAILED])  # RET unspecified: failures return the full content
    _, _, returned = parts(report)
    inner = returned.get_payload()[0]
    assert inner["X-MSS-CODECDA"] == "11488-4,34133-9"
    assert inner["Message-ID"] == "<cr-42@hopital.mssante.fr>"
    assert ORIGINAL in raw
    assert returned["Content-Transfer-Encoding"] == "7bit"


def test_failure_report_with_ret_hdrs_returns_headers_only():
    raw, report = build([FAILED], ret="HDRS")
    _, _, returned = parts(report)
    assert returned.get_content_type() == "text/rfc822-headers"
    assert "X-MSS-INS: O" in returned.get_content()
    assert b"body text marker" not in raw
    assert "Les en-têtes du message d'origine sont joints." in parts(report)[0].get_content()


def test_success_report_returns_headers_only():
    raw, report = build([DELIVERED])
    assert report["Subject"] == "Accusé de réception : XDM/1.0/DDM+Compte rendu"
    human, blocks, returned = parts(report)
    assert returned.get_content_type() == "text/rfc822-headers"
    assert b"body text marker" not in raw
    assert "Subject: XDM/1.0/DDM+Compte rendu" in returned.get_content()
    assert [(b["Action"], b["Status"]) for b in blocks[1:]] == [("delivered", "2.0.0")]


def test_success_report_ignores_ret_full():
    # RFC 3461 §4.3: RET concerns failure reports; others return headers only.
    raw, report = build([DELIVERED], ret="FULL")
    assert parts(report)[2].get_content_type() == "text/rfc822-headers"
    assert b"body text marker" not in raw


def test_delay_report():
    raw, report = build([DELAYED], ret="FULL", original_envelope_id=None)
    assert report["Subject"] == "Remise retardée : XDM/1.0/DDM+Compte rendu"
    human, (per_message, delayed), returned = parts(report)
    assert per_message["Original-Envelope-Id"] is None
    assert (delayed["Action"], delayed["Status"]) == ("delayed", "4.4.1")
    assert parsedate_to_datetime(delayed["Will-Retry-Until"]) == DELAYED.will_retry_until
    assert delayed["Diagnostic-Code"] == "smtp; 421 4.4.1 connection timed out"
    assert returned.get_content_type() == "text/rfc822-headers"
    assert "nouvelles tentatives jusqu'au 28/11/2025 à 20:29" in human.get_content()


def test_mixed_report_is_a_failure_report():
    _, report = build([DELIVERED, DELAYED, FAILED])
    assert report["Subject"].startswith("Échec de remise")
    assert [b["Action"] for b in parts(report)[1][1:]] == ["delivered", "delayed", "failed"]


def test_relayed_and_expanded_actions():
    _, report = build(
        [
            RecipientStatus("ext@autre-operateur.fr", "relayed", "2.0.0"),
            RecipientStatus("liste@chu.mssante.fr", "expanded", "2.0.0"),
        ]
    )
    assert [b["Action"] for b in parts(report)[1][1:]] == ["relayed", "expanded"]
    assert report["Subject"].startswith("Accusé de réception")


def test_oversized_original_returns_headers_only():
    raw, report = build([FAILED], return_limit=100)
    assert parts(report)[2].get_content_type() == "text/rfc822-headers"
    assert b"body text marker" not in raw
    assert "trop volumineux" in parts(report)[0].get_content()


def test_8bit_original_and_lf_line_endings():
    original = (
        ORIGINAL.replace(b"X-MSS-INS: O\r\n", b"X-MSS-INS: O\r\nContent-Type: text/plain; charset=utf-8\r\n")
        .replace(b"body text", "compte rendu validé".encode())
        .replace(b"\r\n", b"\n")
    )
    raw, report = build([FAILED], original=original)
    returned = parts(report)[2]
    assert returned["Content-Transfer-Encoding"] == "8bit"
    assert original.replace(b"\n", b"\r\n") in raw
    assert returned.get_payload()[0].get_content().startswith("Compte rendu de consultation: compte rendu validé")


def test_report_is_well_formed_for_smtp():
    raw, _ = build([FAILED, DELAYED, DELIVERED])
    lines = raw.split(b"\r\n")
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in lines) <= 998  # RFC 5322 §2.1.1
    status = raw[raw.index(b"Content-Type: message/delivery-status") :]
    assert status.split(b"\r\n--")[0].isascii()


def test_long_diagnostic_is_one_unfolded_line():
    reply = "550-5.7.1 " + "refus par la politique du domaine " * 60
    failed = RecipientStatus("dr.durand@cabinet.mssante.fr", "failed", "5.7.1", diagnostic=reply)
    raw, report = build([failed])
    block = parts(report)[1][1]
    assert block["Diagnostic-Code"] == "smtp; " + " ".join(reply.split())[: dsn.DIAGNOSTIC_MAX]
    (line,) = [line for line in raw.split(b"\r\n") if line.startswith(b"Diagnostic-Code:")]
    assert len(line) <= 998
    assert block["Status"] == "5.7.1"  # the following field is still its own field


def test_hostile_diagnostic_and_subject_stay_on_one_line():
    failed = RecipientStatus(
        "dr.durand@cabinet.mssante.fr", "failed", "5.2.2", diagnostic="552 5.2.2 boîte\r\nBcc: x@y pleine"
    )
    _, report = build([failed], subject_hint="Résultats\r\nBcc: evil@example.org")
    assert report["Bcc"] is None
    assert report["Subject"] == "Échec de remise : Résultats Bcc: evil@example.org"
    block = parts(report)[1][1]
    assert block["Diagnostic-Code"] == "smtp; 552 5.2.2 bo?te Bcc: x@y pleine"
    assert block["Bcc"] is None
    assert "boîte aux lettres pleine" in parts(report)[0].get_content()


def test_subject_without_hint():
    _, report = build([DELIVERED], subject_hint=None)
    assert report["Subject"] == "Accusé de réception"


@pytest.mark.parametrize(
    "fields",
    [
        dict(action="bounced", status="5.0.0"),
        dict(action="delivered", status="5.1.1"),  # status class does not fit the action
        dict(action="delayed", status="5.4.7"),
        dict(action="failed", status="2.0.0"),
        dict(action="failed", status="5.1"),
        dict(action="failed", status="3.1.1"),
        dict(action="failed", status="5.1.1", will_retry_until=ARRIVAL),
    ],
)
def test_recipient_status_validation(fields):
    with pytest.raises(ValueError):
        RecipientStatus("dr.durand@cabinet.mssante.fr", **fields)


def test_failed_may_carry_a_transient_status_after_timeout():
    assert RecipientStatus("a@b.fr", "failed", "4.4.7").status == "4.4.7"


@pytest.mark.parametrize(
    "overrides",
    [
        dict(recipients=[]),
        dict(to_addr="<>"),
        dict(to_addr=""),
        dict(arrival_date=datetime(2025, 11, 23, 20, 29)),  # naive
        dict(reporting_mta="mx hopital"),
        dict(original_envelope_id="bad\r\nid"),
        dict(recipients=[RecipientStatus("dr.dürand@cabinet.mssante.fr", "failed", "5.1.1")]),
    ],
)
def test_build_report_refuses_bad_input(overrides):
    arguments = dict(recipients=[FAILED])
    arguments.update(overrides)
    with pytest.raises(ValueError):
        build(**arguments)
