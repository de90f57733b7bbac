"""HL7 v2 messages from a hospital, read into what msante acts on: sans-IO, over python-hl7.

Why python-hl7 (the `hl7` package) rather than hl7apy: msante needs the message tree
(segments, fields, repetitions, components, escapes) and reads a dozen fields of it; python-hl7
gives exactly that, is small, pure Python, with no dependency of its own, and does not need the
message to match a dictionary. hl7apy builds each message against the HL7 data dictionary of
its version, which is what a conformance tester wants; its strict validation wants the national
Z segments (ZBE, ZFU…) declared to it, and its tolerant mode checks nothing the rules below do
not. The rules that matter here (which segments and fields are required, what they mean) are
PAM-FR's and the CI-SIS's, written below, so the choice of parser does not carry them. No
speed comparison was made.

Sources (IHE France, "PAM National Extension" 2.11, and its published example messages):
- the patient: PID-3 repetitions, the INS one with assigning authority OID 1.2.250.1.213.1.4.x
  and identifier type "INS"; PID-5 names (type L, legal, and D), PID-7 birth date;
- the GP (médecin traitant): a ROL segment whose ROL-3 role is "ODRP", right after PD1, ROL-4
  the doctor as an XCN, one repetition per identifier (published PAM-FR example messages:
  ``ROL||UC|ODRP|<id>^<NAME>^<GIVEN>^…^<authority>&<OID>&ISO^…^<type>``, with ADELI or RPPS
  identifiers). The guide's PDF (Interop'Santé, ihe.iti.pam.fr) was not machine-readable from
  here: ODRP is taken from those examples. The RPPS repetition is the one typed "RPPS" or
  assigned by OID 1.2.250.1.71.4.2.1 (ANS, national identifier of professionals, as FR Core
  uses it); an ADELI-only GP is not looked up. PD1-4 (primary care provider, XCN) is read
  when no ROL names one;
- the movement: ZBE-1 movement id, ZBE-2 its date, ZBE-4 INSERT/UPDATE/CANCEL, ZBE-7 the
  medical unit; a cancellation (A11 cancels an admission, A13 a discharge, or any message whose
  ZBE-4 is CANCEL) names in ZBE-1 the movement it cancels (the published A11 example repeats
  the A01's ZBE-1, with ZBE-4 CANCEL); PV1-2 the patient class (E: emergency), PV1-3 the location;
- documents (MDM^T02, CI-SIS "transmission de documents" profile): TXA-2 the LOINC type code,
  TXA-12 the document's unique id, OBX-5 (type ED) the document in base64.

A message either reads into a `HospitalMessage` or raises `Hl7Error` carrying what the ACK
must say (AE or AR, and the ERR location: segment, sequence, field).
"""
from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import hl7

from directory.identifiers import valid_rpps
from instant.patient import INS_OIDS, valid_ins

MAX_SEGMENTS = 5000  # PAM messages hold tens; an MDM a few hundred OBX lines at most
RPPS_OID = "1.2.250.1.71.4.2.1"  # the national identifier of health professionals (ANS)
GP_ROLE = "ODRP"  # PAM-FR ROL-3: the médecin traitant declared to the Assurance maladie
VERSIONS = ("2.5", "2.5.1", "2.6")  # PAM-FR is 2.5; the CI-SIS document profiles allow 2.6
CHARSETS = {"": "utf-8", "UNICODE UTF-8": "utf-8", "8859/1": "latin-1", "8859/15": "iso8859-15",
            "ASCII": "ascii"}
# What each supported trigger event means for the care team (kind codes stored in hospital_events).
KINDS = {("ADT", "A01"): "ADM", ("ADT", "A04"): "ADM", ("ADT", "A03"): "SOR", ("ADT", "A08"): "UPD",
         ("ADT", "A11"): "ANN", ("ADT", "A13"): "ANN", ("MDM", "T02"): "DOC"}
LOCAL_TIME = ZoneInfo("Europe/Paris")  # a zone-less HL7 time; overseas hospitals send their offset
SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}")
# The last field `_Reader` reads of each segment. python-hl7 builds objects for every field,
# repetition and component it is given, and a PAM-FR PV1 carries 52 fields of which two are
# read here: the library is handed these segments only, each cut after that field (numbers
# unchanged), and MSH as far as its encoding characters (`read_header` reads MSH). `parse` of
# the ADT samples went from 1.1 to 0.7 ms of CPU; it was a fifth of the server's on the feed.
READ_FIELDS = {"EVN": 6, "PID": 7, "PV1": 3, "ZBE": 7, "ROL": 4, "PD1": 4, "TXA": 12, "OBX": 5}

# HL7 table 0357 (message error condition codes)
SEGMENT_SEQUENCE_ERROR = 100
REQUIRED_FIELD_MISSING = 101
DATA_TYPE_ERROR = 102
UNSUPPORTED_MESSAGE_TYPE = 200
UNSUPPORTED_EVENT_CODE = 201
UNSUPPORTED_PROCESSING_ID = 202
UNSUPPORTED_VERSION = 203


class Hl7Error(Exception):
    """A message msante will not store. `code` is AE (an error in the content: the sender must
    fix it) or AR (rejected: not a message this receiver takes); `condition` from table 0357;
    segment/sequence/field locate it for ERR-2."""

    def __init__(self, code: str, condition: int, text: str, segment: str = "", sequence: int = 1,
                 field_no: int = 0, header: "Header | None" = None) -> None:
        super().__init__(text)
        self.code = code
        self.condition = condition
        self.text = text
        self.segment = segment
        self.sequence = sequence
        self.field = field_no
        self.header = header


@dataclass(frozen=True)
class Header:
    """MSH, what an ACK answers to (and what it needs even when the rest is unreadable)."""

    sending_application: str
    sending_facility: tuple[str, ...]  # MSH-4 components: namespace, universal id, its type
    receiving_application: str
    receiving_facility: str
    message_type: str  # e.g. ADT^A01
    control_id: str
    processing_id: str
    version: str
    encoding: str = "utf-8"
    charset: str = ""  # MSH-18 as given, echoed in the ACK


@dataclass(frozen=True)
class Patient:
    ins: str  # "" when PID-3 carries no valid INS
    ins_oid: str
    family_name: str
    given_name: str
    birth_date: str  # YYYY-MM-DD, "" when absent
    local_id: str  # the hospital's own patient id (PID-3, type PI)


@dataclass(frozen=True)
class Gp:
    rpps: str  # "" when the identifier is not a valid RPPS
    family_name: str
    given_name: str
    source: str  # ROL or PD1
    problem: str = ""  # why the identifier given could not be used


@dataclass(frozen=True)
class Document:
    type_code: str  # TXA-2 (LOINC)
    type_label: str
    unique_id: str  # TXA-12
    media_type: str  # application/pdf, text/xml (CDA)
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class HospitalMessage:
    header: Header
    kind: str  # ADM, URG (an ED visit), SOR, DOC, UPD, ANN
    trigger: str  # A01…, T02
    patient: Patient
    gp: Gp | None
    patient_class: str  # PV1-2: E emergency, I inpatient, O outpatient…
    unit: str  # ZBE-7 or PV1-3's point of care, as the hospital names it
    occurred_at: datetime
    movement_id: str  # ZBE-1
    movement_action: str  # ZBE-4: INSERT, UPDATE, CANCEL
    document: Document | None


def read_header(data: bytes) -> Header:
    """MSH alone, without the library: an ACK must be built even for a message it cannot parse."""
    first = data.split(b"\r", 1)[0].split(b"\n", 1)[0]
    if len(first) < 8 or not first.startswith(b"MSH"):
        raise Hl7Error("AR", SEGMENT_SEQUENCE_ERROR, "the message does not start with an MSH segment", "MSH")
    separator = first[3:4]
    fields = first.decode("latin-1").split(separator.decode("latin-1"))
    component = fields[1][:1] if len(fields) > 1 else "^"

    def get(n: int) -> str:  # MSH-n is fields[n-1]: MSH-1 is the separator itself
        return fields[n - 1] if len(fields) > n - 1 else ""
    charset = get(18).split(fields[1][1:2] or "~")[0] if len(fields) > 17 else ""
    header = Header(sending_application=get(3), sending_facility=tuple(get(4).split(component)),
                    receiving_application=get(5), receiving_facility=get(6),
                    message_type=component.join(get(9).split(component)[:2]), control_id=get(10)[:199],
                    processing_id=get(11).split(component)[0], version=get(12).split(component)[0],
                    encoding=CHARSETS.get(charset.upper(), ""), charset=charset)
    if not header.encoding:
        raise Hl7Error("AR", DATA_TYPE_ERROR, f"character set {charset!r} is not supported (MSH-18)", "MSH",
                       field_no=18, header=header)
    for n, value in ((9, header.message_type), (10, header.control_id), (11, header.processing_id),
                     (12, header.version)):
        if not value:
            raise Hl7Error("AR", REQUIRED_FIELD_MISSING, f"MSH-{n} is required", "MSH", field_no=n, header=header)
    if header.version not in VERSIONS:
        raise Hl7Error("AR", UNSUPPORTED_VERSION, f"HL7 version {header.version} is not supported "
                       f"({', '.join(VERSIONS)})", "MSH", field_no=12, header=header)
    if header.processing_id not in ("P", "T", "D"):
        raise Hl7Error("AR", UNSUPPORTED_PROCESSING_ID, f"processing id {header.processing_id!r} is not P, T or D",
                       "MSH", field_no=11, header=header)
    return header


def parse(data: bytes) -> HospitalMessage:
    """Read one message (the bytes of one MLLP frame), or raise Hl7Error."""
    header = read_header(data)
    structure, _, trigger = header.message_type.partition("^")
    if structure not in ("ADT", "MDM"):
        raise Hl7Error("AR", UNSUPPORTED_MESSAGE_TYPE, f"message type {structure} is not taken here (ADT, MDM)",
                       "MSH", field_no=9, header=header)
    if (structure, trigger) not in KINDS:
        raise Hl7Error("AR", UNSUPPORTED_EVENT_CODE, f"event {header.message_type} is not taken here", "MSH",
                       field_no=9, header=header)
    try:
        text = data.decode(header.encoding)
    except UnicodeDecodeError:
        raise Hl7Error("AE", DATA_TYPE_ERROR, f"the message is not valid {header.encoding} (MSH-18)", "MSH",
                       field_no=18, header=header) from None
    text = text.replace("\r\n", "\r").replace("\n", "\r")  # some senders end segments with LF
    lines = [line for line in text.split("\r") if line]
    if len(lines) > MAX_SEGMENTS:
        raise Hl7Error("AE", SEGMENT_SEQUENCE_ERROR, f"more than {MAX_SEGMENTS} segments", header=header)
    for n, line in enumerate(lines, 1):
        if not SEGMENT_ID.fullmatch(line[:3]) or (len(line) > 3 and line[3] != text[3]):
            raise Hl7Error("AE", SEGMENT_SEQUENCE_ERROR, f"segment {n} has no valid segment id", line[:3], n,
                           header=header)
    separator = text[3]
    read = [lines[0][:lines[0].find(separator, 4) + 1] or lines[0]] + [
        separator.join(line.split(separator, READ_FIELDS[line[:3]] + 1)[:READ_FIELDS[line[:3]] + 1])
        for line in lines[1:] if line[:3] in READ_FIELDS]
    try:
        msg = hl7.parse("\r".join(read))
    except Exception as exc:  # the library's errors are not one class; any of them means unreadable
        raise Hl7Error("AE", DATA_TYPE_ERROR, f"unreadable message: {exc}", header=header) from None
    return _Reader(msg, header).read(structure, trigger)


class _Reader:
    def __init__(self, msg: hl7.Message, header: Header) -> None:
        self.msg = msg
        self.header = header

    def segment(self, name: str, *, required: bool) -> hl7.Segment | None:
        try:
            return self.msg.segment(name)
        except KeyError:
            if required:
                raise Hl7Error("AE", SEGMENT_SEQUENCE_ERROR, f"segment {name} is required", name,
                               header=self.header) from None
            return None

    def value(self, seg: hl7.Segment | None, f: int, r: int = 1, c: int = 1, s: int = 1, *,
              required: bool = False) -> str:
        got = ""
        if seg is not None:
            try:
                got = seg.extract_field(1, f, r, c, s).strip()
            except (IndexError, KeyError):
                got = ""
        if required and not got:
            name = str(seg[0][0]) if seg is not None else ""
            raise Hl7Error("AE", REQUIRED_FIELD_MISSING, f"{name}-{f} is required", name, field_no=f,
                           header=self.header)
        return got

    def repetitions(self, seg: hl7.Segment, f: int) -> int:
        if f >= len(seg):
            return 0
        item = seg(f)
        return len(item) if isinstance(item, hl7.Field) and item and isinstance(item[0], hl7.Repetition) else 1

    def read(self, structure: str, trigger: str) -> HospitalMessage:
        evn = self.segment("EVN", required=True)
        pid = self.segment("PID", required=True)
        pv1 = self.segment("PV1", required=structure == "ADT")
        zbe = self.segment("ZBE", required=False)
        patient = self.patient(pid)
        patient_class = self.value(pv1, 2)
        kind = KINDS[(structure, trigger)]
        if kind == "ADM" and patient_class == "E":
            kind = "URG"
        if self.value(zbe, 4).upper() == "CANCEL":  # PAM-FR: ZBE-1 then names the movement cancelled
            kind = "ANN"
        recorded = self.timestamp(self.value(evn, 2, required=True), "EVN", 2)
        if self.value(zbe, 2):
            occurred = self.timestamp(self.value(zbe, 2), "ZBE", 2)
        elif self.value(evn, 6):
            occurred = self.timestamp(self.value(evn, 6), "EVN", 6)
        else:
            occurred = recorded
        unit = self.value(zbe, 7, 1, 1) or self.value(pv1, 3, 1, 1)  # ZBE-7 XON: the unit's name first
        return HospitalMessage(
            header=self.header, kind=kind, trigger=trigger, patient=patient, gp=self.gp(),
            patient_class=patient_class, unit=unit, occurred_at=occurred,
            movement_id=self.value(zbe, 1), movement_action=self.value(zbe, 4),
            document=self.document() if structure == "MDM" else None)

    def patient(self, pid: hl7.Segment) -> Patient:
        ins = oid = local = ""
        for r in range(1, self.repetitions(pid, 3) + 1):
            ident, authority_oid = self.value(pid, 3, r, 1), self.value(pid, 3, r, 4, 2)
            id_type = self.value(pid, 3, r, 5)
            if authority_oid in INS_OIDS and valid_ins(ident) and not ins:
                ins, oid = ident, authority_oid
            elif id_type == "PI" and not local:
                local = ident
        if not ins and not local:
            self.value(pid, 3, 1, 1, required=True)
        legal = next((r for r in range(1, self.repetitions(pid, 5) + 1) if self.value(pid, 5, r, 7) == "L"), 1)
        family = self.value(pid, 5, legal, 1)
        if not family:
            self.value(pid, 5, required=True)
        born = self.value(pid, 7)
        return Patient(ins, oid, family.upper(), self.value(pid, 5, legal, 2).upper(),
                       self.timestamp(born, "PID", 7).date().isoformat() if born else "", local)

    def gp(self) -> Gp | None:
        for rol in (s for s in self.msg if str(s[0][0]) == "ROL"):
            if self.value(rol, 3) == GP_ROLE:
                return self.person(rol, 4, "ROL")
        pd1 = self.segment("PD1", required=False)
        if pd1 is not None and self.value(pd1, 4):
            return self.person(pd1, 4, "PD1")
        return None

    def person(self, seg: hl7.Segment, f: int, source: str) -> Gp:
        """The first repetition of the XCN that carries an RPPS (by type or by its OID)."""
        problem = "no RPPS identifier given"
        for r in range(1, self.repetitions(seg, f) + 1):
            ident, id_type = self.value(seg, f, r, 1), self.value(seg, f, r, 13)
            if id_type != "RPPS" and self.value(seg, f, r, 9, 2) != RPPS_OID:
                continue
            rpps = ident[1:] if len(ident) == 12 and ident.startswith("8") else ident  # idnat form, 8+RPPS
            if valid_rpps(rpps):
                return Gp(rpps, self.value(seg, f, r, 2).upper(), self.value(seg, f, r, 3).upper(), source)
            problem = f"RPPS {ident[:20]!r} has a bad check digit"
        return Gp("", self.value(seg, f, 1, 2).upper(), self.value(seg, f, 1, 3).upper(), source, problem)

    def document(self) -> Document:
        txa = self.segment("TXA", required=True)
        obx = self.segment("OBX", required=True)
        type_code = self.value(txa, 2, required=True)
        data_type = self.value(obx, 2)
        if data_type != "ED":
            raise Hl7Error("AE", DATA_TYPE_ERROR, f"OBX-2 must be ED (encapsulated data), got {data_type!r}", "OBX",
                           field_no=2, header=self.header)
        # ED: source application ^ type of data ^ data subtype ^ encoding ^ data
        subtype, encoding, payload = self.value(obx, 5, 1, 3), self.value(obx, 5, 1, 4), self.value(obx, 5, 1, 5)
        if encoding.upper() != "BASE64" or not payload:
            raise Hl7Error("AE", REQUIRED_FIELD_MISSING, "OBX-5 must carry the document in Base64 (ED)", "OBX",
                           field_no=5, header=self.header)
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise Hl7Error("AE", DATA_TYPE_ERROR, "OBX-5 is not valid Base64", "OBX", field_no=5,
                           header=self.header) from None
        media = {"PDF": "application/pdf", "XML": "text/xml"}.get(subtype.upper())
        if media is None:
            raise Hl7Error("AE", DATA_TYPE_ERROR, f"OBX-5 document subtype {subtype!r} is not PDF or XML (CDA)",
                           "OBX", field_no=5, header=self.header)
        return Document(type_code, self.value(txa, 2, 1, 2), self.value(txa, 12) or self.header.control_id,
                        media, data)

    def timestamp(self, value: str, segment: str, f: int) -> datetime:
        """HL7 TS (YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]). Hospitals' record systems mostly send
        local time without a zone: it is read as LOCAL_TIME (metropolitan France)."""
        match = re.fullmatch(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.\d{1,4})?([+-]\d{4})?", value)
        if not match:
            raise Hl7Error("AE", DATA_TYPE_ERROR, f"{segment}-{f} is not an HL7 date/time: {value[:26]!r}", segment,
                           field_no=f, header=self.header)
        y, mo, d, h, mi, s, zone = match.groups()
        offset: timezone | ZoneInfo = LOCAL_TIME
        if zone:
            minutes = int(zone[1:3]) * 60 + int(zone[3:5])
            offset = timezone(timedelta(minutes=minutes if zone[0] == "+" else -minutes))
        try:
            return datetime(int(y), int(mo or 1), int(d or 1), int(h or 0), int(mi or 0), int(s or 0), tzinfo=offset)
        except ValueError:
            raise Hl7Error("AE", DATA_TYPE_ERROR, f"{segment}-{f} is not a valid date: {value[:26]!r}", segment,
                           field_no=f, header=self.header) from None
