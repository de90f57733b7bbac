"""The hospital feed end to end: real MLLP over mutual TLS against a running server, the
GP's mail read back over IMAP, and what was not notified kept with its reason."""
from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import io
import socket
import ssl
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from xml.etree import ElementTree

import pytest
from sqlalchemy import select, update

from certs import pki
from hospital.client import Hl7Client, client_context
from hospital.mllp import frame as mllp_frame
from store.schema import alerts, audit, hl7_messages, hospital_events, hospital_notices, mailboxes
from tests.imap_client import GP_IDNAT
from tests.test_imap import imaplib_client

SAMPLES = Path(__file__).resolve().parents[1] / "hospital" / "samples"
GP = "jean.dupont@msante.test"


def hospital(server) -> Hl7Client:
    host, port = server.listeners["hl7"].rsplit(":", 1)
    cert = server.data_dir / "demo" / "hospital.crt"
    return Hl7Client(host, int(port), client_context(server.ca_file, cert, cert.with_suffix(".key")),
                     server_hostname="localhost")


def sample(name: str, control_id: str | None = None, **replace: str) -> bytes:
    data = (SAMPLES / name).read_text()
    if control_id:
        original = data.split("\n", 1)[0].split("|")[9]
        data = data.replace(f"|{original}|", f"|{control_id}|", 1)
    for old, new in replace.items():
        data = data.replace(old, new)
    return data.encode()


def msa(ack: bytes) -> list[str]:
    return next(seg for seg in ack.decode().split("\r") if seg.startswith("MSA|")).split("|")


def inbox_messages(server, address: str = GP, idnat: str = GP_IDNAT) -> list[email.message.EmailMessage]:
    """A box's INBOX over IMAP, each message parsed, without setting \\Seen."""
    imap = imaplib_client(server, address, idnat)
    imap.select("INBOX")
    _, ids = imap.search(None, "ALL")
    found = []
    for number in ids[0].split():
        _, data = imap.fetch(number, "(BODY.PEEK[])")
        found.append(email.message_from_bytes(data[0][1], policy=email.policy.default))
    imap.logout()
    return found


def wait_for(server, query, count: int = 1, timeout: float = 15) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = server.rows(query)
        if len(rows) >= count:
            return rows
        time.sleep(0.1)
    raise AssertionError(f"expected {count} rows, got {server.rows(query)}")


def test_ed_visit_is_acked_after_storing_and_the_gp_reads_the_mail(server):
    with hospital(server) as client:
        ack = client.send(sample("adt_a04_ed_visit.hl7"))
        # AA means stored: the row is there the moment the ACK is read
        assert msa(ack)[1:3] == ["AA", "CHSP-A04-0001"]
        stored = server.rows(select(hl7_messages.c.ack, hl7_messages.c.message_type))
        assert stored[0]["message_type"] == "ADT^A04" and stored[0]["ack"].encode() == ack
        # a resend gets the same ACK byte for byte and stores nothing
        assert client.send(sample("adt_a04_ed_visit.hl7")) == ack
    assert len(server.rows(select(hospital_events.c.id))) == 1
    notice = wait_for(server, select(hospital_notices))[0]
    assert (notice["recipient"], notice["role"], notice["status"]) == (GP, "gp", "delivered")
    time.sleep(0.5)  # a second dispatch would have happened by now
    assert len(server.rows(select(hospital_notices))) == 1

    imap = imaplib_client(server)
    imap.select("INBOX")
    _, ids = imap.search(None, "ALL")
    assert len(ids[0].split()) == 1
    _, data = imap.fetch(ids[0].split()[0], "(RFC822)")
    mail = email.message_from_bytes(data[0][1], policy=email.policy.default)
    imap.logout()
    assert mail["From"].addresses[0].addr_spec == "dpi.ch-saint-paul@msante.test"
    assert mail["Subject"].startswith("Passage aux urgences : TECHER Josette")
    assert mail["Disposition-Notification-To"] == "dpi.ch-saint-paul@msante.test" and mail["X-MSS-INS"] == "N"
    body = mail.get_content()
    assert "248039741512358" in body and "06/12/2026 à 08:12" in body and "URGENCES ADULTES" in body
    assert "urgences.ch-saint-paul@msante.test" in body and "ADM" in body
    # the patient's care circle (demo: Dupont, Leroy, Hoarau, and Payet who coordinates) hears of it
    raised = server.rows(select(alerts.c.audience).where(alerts.c.kind == "patient"))
    assert sorted(r["audience"] for r in raised) == ["person:810001045367", "person:810002000015",
                                                     "person:810002000023", "person:810002000031"]
    assert server.rows(select(audit.c.id).where(audit.c.action == "hl7.resend"))


def test_messages_racing_on_several_connections_are_each_stored_once(server):
    """Messages arriving together share one write (hospital/feed.py): each is stored once, and
    the same MSH-10 sent at once on two connections is stored once, both reading one ACK."""
    control_ids = ["RACE-1", "RACE-2", "RACE-3", "RACE-1", "RACE-4", "RACE-2"]
    clients = [hospital(server) for _ in control_ids]
    try:
        with ThreadPoolExecutor(len(clients)) as pool:
            acks = list(pool.map(lambda c, i: c.send(sample("adt_a01_admission.hl7", i)), clients, control_ids))
    finally:
        for client in clients:
            client.close()
    assert [msa(a)[1:3] for a in acks] == [["AA", i] for i in control_ids]
    assert acks[0] == acks[3] and acks[1] == acks[5]
    stored = server.rows(select(hl7_messages.c.control_id, hl7_messages.c.ack))
    assert sorted(r["control_id"] for r in stored) == ["RACE-1", "RACE-2", "RACE-3", "RACE-4"]
    assert {r["control_id"]: r["ack"].encode() for r in stored}["RACE-1"] == acks[0]
    assert len(server.rows(select(hospital_events.c.id))) == 4
    assert len(server.rows(select(audit.c.id).where(audit.c.action == "hl7.accept"))) == 4
    assert len(server.rows(select(audit.c.id).where(audit.c.action == "hl7.resend"))) == 2
    wait_for(server, select(hospital_notices), 4)
    time.sleep(0.5)  # a second dispatch would have happened by now
    assert len(server.rows(select(hospital_notices))) == 4


def test_document_mail_carries_the_pdf_and_an_xdm_archive(server):
    with hospital(server) as client:
        assert msa(client.send(sample("mdm_t02_ed_report.hl7")))[1] == "AA"
    wait_for(server, select(hospital_notices))
    imap = imaplib_client(server)
    imap.select("INBOX")
    _, data = imap.fetch(b"1", "(RFC822)")
    imap.logout()
    mail = email.message_from_bytes(data[0][1], policy=email.policy.default)
    assert mail["Subject"].startswith("XDM/1.0/DDM+15507-7 ") and mail["X-MSS-INS"] == "O"
    parts = {part.get_filename(): part.get_content() for part in mail.iter_attachments()}
    assert parts["DOC0001.PDF"].startswith(b"%PDF-")
    archive = zipfile.ZipFile(io.BytesIO(parts["IHE_XDM.ZIP"]))
    assert {"IHE_XDM/SUBSET01/METADATA.XML", "IHE_XDM/SUBSET01/DOC0001.PDF", "INDEX.HTM", "README.TXT"} <= set(
        archive.namelist())
    metadata = ElementTree.fromstring(archive.read("IHE_XDM/SUBSET01/METADATA.XML"))
    values = {v.text for v in metadata.iter("{urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0}Value")}
    assert "248039741512358^^^&1.2.250.1.213.1.4.11&ISO^NH" in values


def test_reasons_kept_when_nobody_can_be_told(server):
    no_rol = sample("adt_a01_admission.hl7", "NOGP-1")
    no_rol = b"\n".join(line for line in no_rol.split(b"\n") if not line.startswith(b"ROL|"))
    # a known professional (the home nurse) whose box is retired and whose practice has no box
    nurse = sample("adt_a01_admission.hl7", "NOBOX-1", **{"10001045367^DUPONT^JEAN": "10002000023^HOARAU^SOPHIE"})
    unknown = sample("adt_a01_admission.hl7", "UNK-1", **{"10001045367^DUPONT^JEAN": "10000000991^INCONNU^X"})
    server.execute(update(mailboxes).where(mailboxes.c.address == "sophie.hoarau@msante.test")
                   .values(retired_at=datetime.now(timezone.utc)))
    with hospital(server) as client:
        for message in (no_rol, nurse, unknown):
            assert msa(client.send(message))[1] == "AA"
    rows = wait_for(server, select(hospital_notices.c.status, hospital_notices.c.reason), 3)
    assert {(r["status"], r["reason"]) for r in rows} == {
        ("not_notified", "no GP given"), ("not_notified", "GP has no MSSanté box"),
        ("not_notified", "GP unknown to the directory (RPPS 10000000991)")}


def test_wrong_facility_is_refused_and_audited(server):
    foreign = sample("adt_a04_ed_visit.hl7", "FOREIGN-1", **{"CHSP^970002002^FINESS": "CHU^750712184^FINESS"})
    with hospital(server) as client:
        ack = client.send(foreign)
        assert msa(ack)[1] == "AR" and "ERR||MSH^1^4|204^" in ack.decode()
        assert msa(client.send(b"MSH|^~\\&|X|CHSP^970002002|Y|Z|20261206||ADT^A01|BAD-1|P|2.5\rPID|1"))[1] == "AE"
    refused = server.rows(select(audit.c.outcome, audit.c.target).where(audit.c.action == "hl7.refuse"))
    assert ("denied", "FOREIGN-1") in {(r["outcome"], r["target"]) for r in refused}
    assert ("failed", "BAD-1") in {(r["outcome"], r["target"]) for r in refused}
    assert server.rows(select(hl7_messages.c.id)) == []


def test_other_certificates_are_cut_off(server, tmp_path):
    host, port = server.listeners["hl7"].rsplit(":", 1)
    # no certificate: the handshake fails (TLS 1.2), or the server closes at once (TLS 1.3)
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        try:
            with server.client_tls().wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(mllp_frame(sample("adt_a04_ed_visit.hl7")))
                answer = tls.recv(100)
        except (ssl.SSLError, OSError):
            answer = b""
    assert answer == b""
    # a personal card: authenticated, but not a hospital's system
    cert, key = pki.issue_cps(pki.load_ca(server.settings.ca_dir), idnat="810001045367", given_name="JEAN",
                              family_name="DUPONT", out_dir=tmp_path)
    client = Hl7Client(host, int(port), client_context(server.ca_file, cert, key), server_hostname="localhost")
    with pytest.raises((ConnectionError, OSError)):
        client.send(sample("adt_a04_ed_visit.hl7"))
    client.close()
    assert server.rows(select(hl7_messages.c.id)) == []
    refused = server.rows(select(audit.c.actor, audit.c.detail).where(audit.c.action == "hl7.refuse"))
    assert refused[0]["actor"] == "810001045367" and "not an applicative certificate" in refused[0]["detail"]


def test_oversized_frame_closes_the_connection(server):
    with hospital(server) as client:
        client.sock.sendall(b"\x0b" + b"A" * (server.settings.hl7_max_frame + 10))
        with pytest.raises((ConnectionError, OSError)):
            while client.sock.recv(65536):
                pass
            raise ConnectionError("closed")
    framing = server.rows(select(audit.c.actor, audit.c.outcome).where(audit.c.action == "hl7.framing"))
    assert framing == [{"actor": "dpi.ch-saint-paul@msante.test", "outcome": "denied"}]


def test_cli_plays_the_demo_hospital(server, capsys):
    files = [str(SAMPLES / name) for name in ("adt_a04_ed_visit.hl7", "mdm_t02_ed_report.hl7", "adt_a03_discharge.hl7")]
    assert server.cli("hl7", "send", *files) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.rsplit(": ", 1)[1] for line in out] == ["AA", "AA", "AA"]
    bad = server.data_dir / "bad.hl7"
    bad.write_text("MSH|^~\\&|X|CHSP^970002002|Y|Z|20261206||ADT^A01|BAD-2|P|2.5\nPID|1\n")
    assert server.cli("hl7", "send", str(bad)) == 1
    assert capsys.readouterr().out.strip().endswith(": AE segment EVN is required")
    rows = wait_for(server, select(hospital_notices.c.status), 3)
    assert {r["status"] for r in rows} == {"delivered"}


def test_a_large_document_goes_through(server):
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 2048 + b"\n%%EOF\n"  # 512 KiB: parsed and zipped off the loop
    data = sample("mdm_t02_ed_report.hl7", "BIG-1").decode()
    head, _, _ = data.rpartition("^Base64^")
    data = head + "^Base64^" + base64.b64encode(pdf).decode() + "||||||F\n"
    with hospital(server) as client:
        assert msa(client.send(data.encode()))[1] == "AA"
    wait_for(server, select(hospital_notices))
    imap = imaplib_client(server)
    imap.select("INBOX")
    _, fetched = imap.fetch(b"1", "(RFC822)")
    imap.logout()
    mail = email.message_from_bytes(fetched[0][1], policy=email.policy.default)
    assert {p.get_filename(): p.get_content() for p in mail.iter_attachments()}["DOC0001.PDF"] == pdf


async def test_circle_members_get_the_alert_live_and_can_acknowledge_it(server):
    from tests.test_instant_ws import Client

    nurse = await Client.connect(server, "810002000023")
    try:
        def send() -> bytes:
            with hospital(server) as client:
                return client.send(sample("adt_a04_ed_visit.hl7"))
        assert msa(await asyncio.to_thread(send))[1] == "AA"
        frame = await nurse.expect(type="alert", timeout=10, where=lambda f: f["alert"]["kind"] == "patient")
        alert = frame["alert"]
        assert alert["title"] == "Passage aux urgences : TECHER Josette (URGENCES ADULTES)"
        assert alert["data"]["ins"] == "248039741512358" and alert["data"]["kind"] == "URG"
        acked = await nurse.request(type="alert.ack", alert=alert["id"])
        assert acked["alert"]["acknowledged_by"]["id"] == "810002000023"
    finally:
        await nurse.ws.close()
