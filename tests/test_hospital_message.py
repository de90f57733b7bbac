"""HL7 v2 reading (hospital/message.py), MLLP framing (hospital/mllp.py) and ACKs (hospital/ack.py), without a network."""
from __future__ import annotations

import email
import email.policy
import io
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import hl7
import pytest

from hospital import ack, mllp, notice
from hospital.message import Document, Hl7Error, parse, read_header

SAMPLES = Path(__file__).resolve().parents[1] / "hospital" / "samples"


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def replace_segment(data: bytes, segment: str, new: str | None) -> bytes:
    lines = [line for line in data.decode().splitlines()]
    out = [new if line.startswith(segment + "|") else line for line in lines]
    return "\r".join(line for line in out if line is not None).encode()


def test_ed_visit_reads_patient_gp_unit_and_time():
    msg = parse(sample("adt_a04_ed_visit.hl7"))
    assert (msg.kind, msg.trigger, msg.patient_class) == ("URG", "A04", "E")
    assert msg.patient.ins == "248039741512358" and msg.patient.ins_oid == "1.2.250.1.213.1.4.11"
    assert (msg.patient.family_name, msg.patient.given_name, msg.patient.birth_date) == ("TECHER", "JOSETTE",
                                                                                         "1948-03-12")
    assert msg.gp is not None and (msg.gp.rpps, msg.gp.source) == ("10001045367", "ROL")
    assert msg.unit == "URGENCES ADULTES" and msg.movement_action == "INSERT"
    assert msg.occurred_at.isoformat() == "2026-12-06T08:12:00+04:00"
    assert msg.header.sending_facility[1] == "970002002" and msg.header.control_id == "CHSP-A04-0001"


def test_every_sample_reads():
    kinds = {path.name: parse(path.read_bytes()).kind for path in SAMPLES.glob("*.hl7")}
    assert kinds == {"adt_a01_admission.hl7": "ADM", "adt_a04_ed_visit.hl7": "URG", "adt_a03_discharge.hl7": "SOR",
                     "adt_a08_update.hl7": "UPD", "adt_a11_cancel_admission.hl7": "ANN",
                     "mdm_t02_ed_report.hl7": "DOC"}


def test_document_is_decoded():
    doc = parse(sample("mdm_t02_ed_report.hl7")).document
    assert doc is not None and doc.type_code == "15507-7" and doc.media_type == "application/pdf"
    assert doc.data.startswith(b"%PDF-")


def test_gp_from_pd1_when_no_rol_and_bad_check_digit_kept_as_a_problem():
    data = replace_segment(sample("adt_a04_ed_visit.hl7"), "ROL", None)
    data = replace_segment(data, "PD1", "PD1||||10001045367^DUPONT^JEAN^^^^^^ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO^L^^^RPPS")
    assert parse(data).gp.rpps == "10001045367" and parse(data).gp.source == "PD1"
    bad = replace_segment(data, "PD1", "PD1||||10001045368^DUPONT^JEAN^^^^^^^^^^RPPS")
    gp = parse(bad).gp
    assert gp.rpps == "" and "check digit" in gp.problem and gp.family_name == "DUPONT"
    assert parse(replace_segment(data, "PD1", None)).gp is None


def test_unknown_segments_are_ignored():
    data = sample("adt_a01_admission.hl7") + b"\rZFU|whatever|x\rZZZ|1"
    assert parse(data).kind == "ADM"


@pytest.mark.parametrize("name", sorted(p.name for p in SAMPLES.glob("*.hl7")))
def test_what_the_reader_does_not_read_changes_nothing(name):
    """The library is handed only the fields read (message.READ_FIELDS): segments and fields
    past them, however odd (separators, escapes, repetitions), leave the reading as it was."""
    data = sample(name).replace(b"\r\n", b"\r").replace(b"\n", b"\r").rstrip(b"\r")
    junk = "|x^y~z&w|\\E\\|" + "|" * 40 + "^^~~"
    fat = "\r".join(line + (junk if not line.startswith("MSH") else "") for line in data.decode("latin-1").split("\r"))
    fat += "\rNK1|1|GRONDIN^MARIE|FAM\rAL1|1||^PENICILLINE\rOBX|1|TX|x||texte"  # an MDM's document is its first OBX
    assert parse(fat.encode("latin-1")) == parse(data)


@pytest.mark.parametrize("change, code, condition, where", [
    (("PID", None), "AE", 100, ("PID", 0)),  # a required segment missing
    (("EVN", None), "AE", 100, ("EVN", 0)),
    (("PID", "PID|1||||||19480312|F"), "AE", 101, ("PID", 3)),  # no patient identifier
    (("EVN", "EVN||2026-12-06"), "AE", 102, ("EVN", 2)),  # not an HL7 time
    (("MSH", "MSH|^~\\&|A|CHSP^970002002^FINESS|B|C|20261206||ORU^R01|X1|P|2.5"), "AR", 200, ("MSH", 9)),
    (("MSH", "MSH|^~\\&|A|CHSP^970002002^FINESS|B|C|20261206||ADT^A40|X1|P|2.5"), "AR", 201, ("MSH", 9)),
    (("MSH", "MSH|^~\\&|A|CHSP^970002002^FINESS|B|C|20261206||ADT^A01|X1|P|2.3"), "AR", 203, ("MSH", 12)),
    (("MSH", "MSH|^~\\&|A|CHSP^970002002^FINESS|B|C|20261206||ADT^A01||P|2.5"), "AR", 101, ("MSH", 10)),
    (("MSH", "MSH|^~\\&|A|CHSP^970002002^FINESS|B|C|20261206||ADT^A01|X1|P|2.5|||||FRA|EBCDIC"), "AR", 102,
     ("MSH", 18)),
])
def test_malformed_messages_get_ae_or_ar_with_their_location(change, code, condition, where):
    data = replace_segment(sample("adt_a04_ed_visit.hl7"), *change)
    with pytest.raises(Hl7Error) as caught:
        parse(data)
    error = caught.value
    assert (error.code, error.condition, (error.segment, error.field)) == (code, condition, where)
    answer = hl7.parse(ack.build(error.header, error.code, "ACK1", error=error).decode())
    assert str(answer.segment("MSA")(1)) == code
    err = answer.segment("ERR")
    assert err.extract_field(1, 2, 1, 1) == where[0] and err.extract_field(1, 3, 1, 1) == str(condition)
    if where[1]:
        assert err.extract_field(1, 2, 1, 3) == str(where[1])


def test_not_hl7_at_all_is_rejected_and_still_answered():
    with pytest.raises(Hl7Error) as caught:
        read_header(b"GET / HTTP/1.1\r\n")
    answer = ack.build(caught.value.header, "AR", "ACK2", error=caught.value)
    assert b"MSA|AR|" in answer and b"ERR|" in answer


def test_document_errors():
    data = sample("mdm_t02_ed_report.hl7").replace(b"^Base64^JVBER", b"^Base64^!!!!")
    with pytest.raises(Hl7Error) as caught:
        parse(data)
    assert (caught.value.code, caught.value.segment, caught.value.field) == ("AE", "OBX", 5)


def test_ack_echoes_control_id_and_escapes_text():
    header = read_header(sample("adt_a04_ed_visit.hl7"))
    answer = hl7.parse(ack.build(header, "AA", "ACK-9", facility="MSANTE").decode())
    assert str(answer.segment("MSA")(2)) == "CHSP-A04-0001" and str(answer.segment("MSH")(10)) == "ACK-9"
    error = Hl7Error("AE", 101, "a|b^c", "PID", field_no=3, header=header)
    text = hl7.parse(ack.build(header, "AE", "ACK-10", error=error).decode()).segment("ERR").extract_field(1, 8)
    assert text == "a|b^c"


def test_mllp_frames_split_anywhere_and_bounded():
    one, two = mllp.frame(b"MSH|1"), mllp.frame(b"MSH|2")
    stream = one + b"\n" + two
    for cut in range(len(stream) + 1):
        reader = mllp.FrameReader(max_frame=64)
        assert reader.feed(stream[:cut]) + reader.feed(stream[cut:]) == [b"MSH|1", b"MSH|2"]
    with pytest.raises(mllp.FramingError):
        mllp.FrameReader(max_frame=64).feed(b"\x0b" + b"x" * 100)
    with pytest.raises(mllp.FramingError):
        mllp.FrameReader().feed(b"MSH|no start byte")
    reader = mllp.FrameReader()
    assert reader.feed(b"\x0bMSH|half") == [] and reader.pending


def test_cda_document_notice_names_its_type_and_zips_it():
    cda = b'<?xml version="1.0"?><ClinicalDocument xmlns="urn:hl7-org:v3"/>'
    facts = notice.Notice(kind="DOC", patient={"ins": "248039741512358", "ins_oid": "1.2.250.1.213.1.4.11",
                                               "family_name": "TECHER", "given_name": "JOSETTE",
                                               "birth_date": "1948-03-12"},
                          occurred=datetime(2026, 12, 8, 17, 0, tzinfo=timezone(timedelta(hours=4))), unit="",
                          hospital="CH DEMO", sender="dpi@msante.test", contact="urgences@msante.test",
                          recipient="gp@msante.test", recipient_name="Dr Jean DUPONT", event_id=7,
                          document=Document("11490-0", "Lettre de liaison de sortie", "1.2.3", "text/xml", cda))
    mail = email.message_from_bytes(notice.build(facts, hostname="msante.test"), policy=email.policy.default)
    assert mail["X-MSS-CODECDA"] == "11490-0" and mail["X-MSS-INS"] == "O"
    assert mail["Subject"].startswith("XDM/1.0/DDM+11490-0 Document : TECHER Josette")
    assert "08/12/2026 à 17:00" in mail.get_body(("plain",)).get_content()
    parts = {part.get_filename(): part.get_payload(decode=True) for part in mail.iter_attachments()}
    assert parts["DOC0001.XML"] == cda
    archive = zipfile.ZipFile(io.BytesIO(parts["IHE_XDM.ZIP"]))
    assert archive.read("IHE_XDM/SUBSET01/DOC0001.XML") == cda
    assert b'mimeType="text/xml"' in archive.read("IHE_XDM/SUBSET01/METADATA.XML")


def test_notice_is_written_as_wire_mail():
    """The ADT notice and its cancellation, written as bytes without email.message: CRLF lines
    under 78 columns (but for message ids), RFC 2047 words that decode to the French text, a body in quoted-printable."""
    facts = notice.Notice(kind="URG", patient={"ins": "248039741512358", "family_name": "TECHER",
                                               "given_name": "JOSETTE", "birth_date": "1948-03-12"},
                          occurred=datetime(2026, 12, 8, 17, 5, tzinfo=timezone(timedelta(hours=4))),
                          unit="Urgences adultes = SAU", hospital="Centre Hospitalier Sud-Réunion (Saint-Pierre)",
                          sender="dpi@msante.test", contact="urgences@msante.test", recipient="gp@msante.test",
                          recipient_name="Dr Élodie GRONDIN", event_id=7)
    for data in (notice.build(facts, hostname="msante.test"),
                 notice.cancellation(facts, original_id="<n.7@msante.test>", hostname="msante.test")):
        assert data.isascii() and b"\n" not in data.replace(b"\r\n", b"")
        assert [line for line in data.split(b"\r\n") if len(line) > 78
                and not line.startswith((b"Message-ID: ", b"In-Reply-To: ", b"References: "))] == []
        mail = email.message_from_bytes(data, policy=email.policy.default)
        assert not mail.defects and mail.get_content_type() == "text/plain"
        assert mail["From"].addresses[0].display_name == "Centre Hospitalier Sud-Réunion (Saint-Pierre)"
        assert mail["To"].addresses[0].display_name == "Dr Élodie GRONDIN"
        assert mail["Subject"].endswith("Passage aux urgences : TECHER Josette (né(e) le 12/03/1948) - "
                                        "Centre Hospitalier Sud-Réunion (Saint-Pierre)")
        assert mail["Disposition-Notification-To"] == "dpi@msante.test" and mail["X-MSS-INS"] == "N"
        assert mail["MIME-Version"] == "1.0" and mail["Message-ID"].endswith("@msante.test>")
        body = mail.get_content().replace("\r\n", "\n")
        assert "le 08/12/2026 à 17:05 (unité : Urgences adultes = SAU)." in body.replace("\n", " ")
        assert body.startswith("Bonjour Dr Élodie GRONDIN,\n\n")
    assert mail["Subject"].startswith("Annulation : ") and mail["In-Reply-To"] == "<n.7@msante.test>"
