"""A mail carrying an IHE_XDM.ZIP, read on arrival: the reader's bounds and its refusal of DTDs
(sans-IO), then end to end: a professional submits such a mail over SMTP to a box of ours, and
the patient's circle gets a `document` item linking to the mail and its members a `patient`
alert on their websockets; a hostile archive is delivered all the same, and the audit and the
log say why it was not recorded."""
from __future__ import annotations

import asyncio
import io
import logging
import zipfile
from datetime import datetime, timezone
from email.message import EmailMessage
import email.policy
import email.utils

import pytest
from sqlalchemy import select

from hospital import xdm
from hospital.message import Document
from hospital.xdm_reader import MAX_ENTRIES, XdmRefused, find_archive, read
from store.schema import audit, circle_messages, mail_documents
from tests.test_hospital_feed import inbox_messages, wait_for
from tests.test_hospital_subscriptions import INS
from tests.operators import wait_for as relay_wait
from tests.test_instant_ws import CIRCLE, NURSE, PHARMACIST, connect  # noqa: F401 - fixture
from tests.test_relay import GP_RPPS, REMOTE, operators  # noqa: F401 - fixture
from tests.test_smtp import GP, inbox, login

INS_OID = "1.2.250.1.213.1.4.11"
NURSE_BOX = "sophie.hoarau@msante.test"
LETTER = Document("11490-0", "Lettre de liaison de sortie", "1.2.250.1.999.1.7.42", "application/pdf",
                  b"%PDF-1.4 lettre de liaison\n")


def archive(ins: str = INS) -> bytes:
    return xdm.build(LETTER, ins=ins, ins_oid=INS_OID, author="CH SAINT-PAUL", hospital="CH SAINT-PAUL",
                     submitted_at=datetime(2026, 12, 6, 9, 30, tzinfo=timezone.utc), set_id="2.25.42")


def zipped(entries: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return out.getvalue()


def mail(to: str, attachment: bytes, subject: str = "XDM/1.0/DDM+11490-0 Lettre de liaison") -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = GP, to, subject
    msg["Message-ID"] = email.utils.make_msgid(domain="msante.test")
    msg.set_content("Bonjour,\nci-joint la lettre de liaison.\n")
    msg.add_attachment(attachment, maintype="application", subtype="zip", filename="IHE_XDM.ZIP")
    return msg.as_bytes(policy=email.policy.SMTP)


def test_reads_what_msante_writes():
    (document,) = read(archive())
    assert (document.ins, document.ins_oid, document.type_code, document.type_label) == (
        INS, INS_OID, "11490-0", "Lettre de liaison de sortie")
    assert document.author == "CH SAINT-PAUL" and document.unique_id == "1.2.250.1.999.1.7.42"
    assert document.created == document.submitted == "2026-12-06T09:30:00+00:00"
    assert find_archive(mail(NURSE_BOX, archive())) == archive()


def test_a_report_returning_a_document_mail_is_no_document():
    original = mail(NURSE_BOX, archive())
    report = EmailMessage()
    report["From"], report["To"], report["Subject"] = "mailer-daemon@msante.test", GP, "Delivery report"
    report.set_content("delivered")
    report.add_attachment(email.message_from_bytes(original, policy=email.policy.SMTP))
    report.replace_header("Content-Type", 'multipart/report; report-type=delivery-status; boundary="'
                          f'{report.get_boundary()}"')
    raw = report.as_bytes(policy=email.policy.SMTP)
    assert b"IHE_XDM" in raw and find_archive(raw) is None


def test_a_patient_id_that_is_not_an_ins_is_kept_but_not_as_ins():
    (document,) = read(archive(ins="248039741512300"))  # bad key
    assert document.ins == "" and document.patient_id.startswith("248039741512300^^^&")


@pytest.mark.parametrize("xml, why", [
    (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
     b"<a>&lol2;</a>", "DTD"),
    (b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><a>&x;</a>', "DTD"),
    (b'<?xml version="1.0"?><!DOCTYPE a SYSTEM "http://127.0.0.1:9/evil.dtd"><a/>', "DTD"),
    (b"<a><b></a>", "not well-formed"),
    (b'<lcm:SubmitObjectsRequest xmlns:lcm="urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"/>', "no XDSDocumentEntry"),
])
def test_hostile_or_empty_metadata_is_refused(xml, why):
    with pytest.raises(XdmRefused, match=why):
        read(zipped({"IHE_XDM/SUBSET01/METADATA.XML": xml}))


def test_archive_bounds():
    with pytest.raises(XdmRefused, match="declares"):  # 50 MB of nothing, in a few kB
        read(zipped({"IHE_XDM/SUBSET01/METADATA.XML": b"\0" * 50_000_000}))
    with pytest.raises(XdmRefused, match="expands"):  # under the size limit, far over the ratio
        read(zipped({"IHE_XDM/SUBSET01/METADATA.XML": b" " * 1_000_000}))
    with pytest.raises(XdmRefused, match="entries"):
        read(zipped({f"f{i}": b"" for i in range(MAX_ENTRIES + 1)}))
    with pytest.raises(XdmRefused, match="no IHE_XDM"):
        read(zipped({"README.TXT": b"hello"}))
    with pytest.raises(XdmRefused, match="unreadable"):
        read(b"PK\x03\x04 not a zip at all")


async def test_a_document_by_mail_reaches_the_circle(server, connect):
    nurse, outsider = await connect(NURSE), await connect(PHARMACIST)
    await nurse.request(type="subscribe", circle=CIRCLE)
    sent = mail(NURSE_BOX, archive())

    def submit() -> None:
        with login(server) as smtp:
            smtp.sendmail(GP, [NURSE_BOX], sent)
    await asyncio.to_thread(submit)
    item = await nurse.expect(type="message", circle=CIRCLE, timeout=10, where=lambda f: f["kind"] == "document")
    assert item["text"].startswith("Document reçu par messagerie : Lettre de liaison de sortie — CH SAINT-PAUL")
    event = item["event"]
    assert event["mail"]["boxes"] == [{"mailbox": NURSE_BOX, "folder": "INBOX", "uid": 1}]
    assert event["mail"]["message_id"] == email.message_from_bytes(sent)["Message-ID"]
    assert [d["type_code"] for d in event["documents"]] == ["11490-0"] and event["documents"][0]["ins"] == INS
    (linked,) = await asyncio.to_thread(inbox_messages, server, NURSE_BOX, NURSE)  # the link leads to the mail
    assert linked["Message-ID"] == event["mail"]["message_id"]
    alert = await nurse.expect(type="alert", timeout=10, where=lambda f: f["alert"]["kind"] == "patient")
    assert alert["alert"]["title"].startswith("Nouveau document reçu : TECHER Josette")
    await outsider.nothing(type="alert", where=lambda f: f["alert"]["kind"] == "patient")

    # in the history after a reconnect, as the live frame showed it
    history = await nurse.request(type="history", circle=CIRCLE)
    (stored,) = [m for m in history["messages"] if m["kind"] == "document"]
    assert stored["event"] == event
    (row,) = await asyncio.to_thread(server.rows, select(mail_documents))
    assert (row["status"], row["patient_ins"], row["type_code"]) == ("recorded", INS, "11490-0")
    assert await asyncio.to_thread(server.rows, select(audit.c.action).where(audit.c.action == "document.recorded"))


async def test_a_hostile_archive_is_delivered_but_not_recorded(server, connect, caplog):
    caplog.set_level(logging.WARNING, logger="msante.hl7")
    nurse = await connect(NURSE)
    await nurse.request(type="subscribe", circle=CIRCLE)
    bomb = zipped({"IHE_XDM/SUBSET01/METADATA.XML": b"\0" * 50_000_000})
    dtd = zipped({"IHE_XDM/SUBSET01/METADATA.XML": b'<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><a>&x;</a>'})

    def submit() -> None:
        with login(server) as smtp:
            for attachment in (bomb, dtd, b"not a zip"):
                smtp.sendmail(GP, [NURSE_BOX], mail(NURSE_BOX, attachment))
    await asyncio.to_thread(submit)
    rows = await asyncio.to_thread(wait_for, server, select(mail_documents).where(mail_documents.c.status != "pending"), 3)
    assert [r["status"] for r in rows] == ["refused"] * 3
    assert ["declares" in rows[0]["reason"], "DTD" in rows[1]["reason"], "unreadable" in rows[2]["reason"]] == [True] * 3
    assert len(await asyncio.to_thread(inbox, server, NURSE_BOX)) == 3  # delivered all the same
    await nurse.nothing(type="message", where=lambda f: f["kind"] == "document")
    rows = await asyncio.to_thread(server.rows, select(circle_messages).where(circle_messages.c.kind == "document"))
    assert not rows
    refused = await asyncio.to_thread(server.rows, select(audit).where(audit.c.action == "document.refused"))
    assert len(refused) == 3
    assert sum("document not recorded" in r.getMessage() for r in caplog.records) == 3


@pytest.mark.slow
def test_a_document_relayed_from_another_operator_reaches_its_circle(operators):
    """Over the relay (mutual TLS between two operators' processes): B's circle of that INS learns of it."""
    a, b = operators
    with a.submission(GP, GP_RPPS) as smtp:
        smtp.sendmail(GP, [REMOTE], mail(REMOTE, archive(), subject="XDM/1.0/DDM+11490-0 relayed"))
    rows = wait_for_rows(lambda: b.query("SELECT status, patient_ins, type_code FROM mail_documents"))
    assert rows == [("recorded", INS, "11490-0")]
    (data,) = b.query("SELECT data FROM circle_messages WHERE kind = 'document'")[0]
    assert f'"mailbox": "{REMOTE}"' in data and '"folder": "INBOX"' in data
    assert b.query("SELECT count(*) FROM alerts WHERE kind = 'patient'")[0][0] >= 1


def wait_for_rows(query):  # noqa: ANN001, ANN201
    return relay_wait(lambda: [r for r in query() if r[0] != "pending"], what="the document recorded")
