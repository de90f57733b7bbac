"""Reading an IHE_XDM.ZIP that arrived by mail: which patient, which documents. Sans-IO.

The archive is whatever a sender put in it, so everything here is bounded before it is read:
the archive's size, its number of entries, METADATA.XML's declared and actual size and its
compression ratio (a zip bomb stops at the first limit), the number of subsets and documents.
METADATA.XML is parsed by the standard library's expat with any DTD refused (no entity can be
declared, hence none expanded, and no external one fetched): that is what defusedxml would do,
without a new dependency. A refusal is an `XdmRefused` whose text says why, for a log line.

What is read (IHE ITI TF-3 §4.2 and the CI-SIS annex "Transformation des métadonnées XDS dans
la syntaxe ebRIM-ebRS", ASIP Santé 1.3.0, as hospital/xdm.py writes them): each
`IHE_XDM/SUBSETnn/METADATA.XML` is an lcm:SubmitObjectsRequest; each rim:ExtrinsicObject of
type XDSDocumentEntry is a document: the patient from the XDSDocumentEntry.patientId external
identifier (CX `<matricule>^^^&<OID>&ISO^NH`; sourcePatientId as a fallback), kept as an INS
only with an INS OID and a valid key; the type code (LOINC) and its label from the typeCode
classification; the author from the author classification's authorPerson (XCN) or
authorInstitution (XON); creationTime and the submission set's submissionTime.
"""
from __future__ import annotations

import email.policy
import io
import re
import zipfile
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from email.parser import BytesParser
from xml.etree import ElementTree
from xml.parsers import expat

from instant.patient import INS_OIDS, valid_ins

from .xdm import SUBSET_UNIQUE_ID, XDS_AUTHOR, XDS_DOC_ENTRY, XDS_PATIENT_ID, XDS_TYPE_CODE, XDS_UNIQUE_ID

ARCHIVE_NAME = "IHE_XDM.ZIP"
MAX_ARCHIVE = 30 * 1024 * 1024  # bytes: above any mail the SMTP SIZE limit lets in
MAX_ENTRIES = 1000  # an XDM holds a few files per subset
MAX_METADATA = 1024 * 1024  # METADATA.XML, uncompressed: a few kB per document
MAX_RATIO = 100  # uncompressed/compressed: XML compresses ~10:1, a bomb 1000:1 and more
MAX_SUBSETS = 10
MAX_DOCUMENTS = 50
MAX_TEXT = 200  # characters kept of any value
METADATA = re.compile(r"IHE_XDM/[^/]{1,64}/METADATA\.XML", re.IGNORECASE)
RIM = "{urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0}"
XDS_SUBMISSION_TIME = "submissionTime"


class XdmRefused(Exception):
    """The archive or its metadata is not one msante reads; the text says why."""


@dataclass(frozen=True)
class XdmDocument:
    ins: str  # "" when the patient id is not a valid INS
    ins_oid: str
    patient_id: str  # as given (CX), for a log line when it is not an INS
    type_code: str  # LOINC
    type_label: str
    author: str
    created: str  # ISO 8601 (UTC), "" when absent or unreadable
    submitted: str
    unique_id: str

    def as_dict(self) -> dict:
        return {"ins": self.ins, "ins_oid": self.ins_oid, "type_code": self.type_code, "type_label": self.type_label,
                "author": self.author, "created": self.created, "submitted": self.submitted,
                "unique_id": self.unique_id}


def find_archive(message: bytes) -> bytes | None:
    """The first IHE_XDM.ZIP attached to a mail, decoded; None when there is none. A delivery or
    read report (multipart/report) returning a mail that carried one is no document of its own."""
    parsed = BytesParser(policy=email.policy.default).parsebytes(message)
    if parsed.get_content_type() == "multipart/report":
        return None
    for part in parsed.walk():
        if part.is_multipart():
            continue
        name = part.get_filename() or ""
        if name.strip().upper() == ARCHIVE_NAME:
            payload = part.get_payload(decode=True)
            return payload if isinstance(payload, bytes) else None
    return None


def read(archive: bytes) -> list[XdmDocument]:
    """Every document the archive's metadata describes, or XdmRefused."""
    if len(archive) > MAX_ARCHIVE:
        raise XdmRefused(f"archive of {len(archive)} bytes (at most {MAX_ARCHIVE})")
    try:
        with zipfile.ZipFile(io.BytesIO(archive)) as zf:
            entries = zf.infolist()
            if len(entries) > MAX_ENTRIES:
                raise XdmRefused(f"{len(entries)} entries in the archive (at most {MAX_ENTRIES})")
            subsets = [e for e in entries if METADATA.fullmatch(e.filename)]
            if not subsets:
                raise XdmRefused("no IHE_XDM/SUBSETnn/METADATA.XML in the archive")
            documents: list[XdmDocument] = []
            for entry in sorted(subsets, key=lambda e: e.filename)[:MAX_SUBSETS]:
                documents += _documents(_parse(_bounded(zf, entry)))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, EOFError, ValueError,
            zlib.error) as exc:  # RuntimeError: an encrypted entry
        raise XdmRefused(f"unreadable archive: {exc}"[:300]) from None
    if not documents:
        raise XdmRefused("METADATA.XML describes no XDSDocumentEntry")
    return documents[:MAX_DOCUMENTS]


def _bounded(zf: zipfile.ZipFile, entry: zipfile.ZipInfo) -> bytes:
    if entry.file_size > MAX_METADATA:
        raise XdmRefused(f"{entry.filename} declares {entry.file_size} bytes (at most {MAX_METADATA})")
    if entry.file_size > MAX_RATIO * max(entry.compress_size, 1) and entry.file_size > 64 * 1024:
        raise XdmRefused(f"{entry.filename} expands {entry.file_size // max(entry.compress_size, 1)} times")
    with zf.open(entry) as member:  # the declared size may lie: read no more than the limit
        data = member.read(MAX_METADATA + 1)
    if len(data) > MAX_METADATA:
        raise XdmRefused(f"{entry.filename} is larger than {MAX_METADATA} bytes")
    return data


def _parse(data: bytes) -> ElementTree.Element:
    """expat, namespaces resolved, any DTD refused (so no entity is ever declared or expanded)."""
    builder = ElementTree.TreeBuilder()
    parser = expat.ParserCreate(namespace_separator="}")

    def refuse(*_args: object) -> None:
        raise XdmRefused("METADATA.XML has a DTD or entity declaration (refused)")

    def name(qualified: str) -> str:
        return "{" + qualified if "}" in qualified else qualified

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.UnparsedEntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartElementHandler = lambda tag, attrs: builder.start(name(tag), {name(k): v for k, v in attrs.items()})
    parser.EndElementHandler = lambda tag: builder.end(name(tag))
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise XdmRefused(f"METADATA.XML is not well-formed XML: {exc}") from None
    return builder.close()


def _documents(root: ElementTree.Element) -> list[XdmDocument]:
    submitted = ""
    for package in root.iter(f"{RIM}RegistryPackage"):
        if any(e.get("identificationScheme") == SUBSET_UNIQUE_ID for e in package.iter(f"{RIM}ExternalIdentifier")):
            submitted = _time(_slot(package, XDS_SUBMISSION_TIME))
    found = []
    for entry in root.iter(f"{RIM}ExtrinsicObject"):
        if entry.get("objectType") != XDS_DOC_ENTRY:
            continue
        patient = _external(entry, XDS_PATIENT_ID) or _slot(entry, "sourcePatientId")
        ident, _, rest = patient.partition("^")
        authority = rest.split("^")[2] if rest.count("^") >= 2 else ""
        oid = authority.split("&")[1] if authority.count("&") >= 1 else ""
        ins = ident if oid in INS_OIDS and valid_ins(ident) else ""
        type_code = _classification(entry, XDS_TYPE_CODE)
        found.append(XdmDocument(
            ins=ins, ins_oid=oid if ins else "", patient_id=patient[:MAX_TEXT],
            type_code=(type_code.get("nodeRepresentation") or "")[:64] if type_code is not None else "",
            type_label=_label(type_code), author=_author(_classification(entry, XDS_AUTHOR)),
            created=_time(_slot(entry, "creationTime")), submitted=submitted,
            unique_id=_external(entry, XDS_UNIQUE_ID)[:MAX_TEXT]))
        if len(found) >= MAX_DOCUMENTS:
            break
    return found


def _slot(element: ElementTree.Element | None, name: str) -> str:
    if element is None:
        return ""
    for slot in element.findall(f"{RIM}Slot"):
        if slot.get("name") == name:
            value = slot.find(f"{RIM}ValueList/{RIM}Value")
            return (value.text or "").strip()[:MAX_TEXT] if value is not None else ""
    return ""


def _external(element: ElementTree.Element, scheme: str) -> str:
    for ident in element.findall(f"{RIM}ExternalIdentifier"):
        if ident.get("identificationScheme") == scheme:
            return (ident.get("value") or "").strip()
    return ""


def _classification(element: ElementTree.Element, scheme: str) -> ElementTree.Element | None:
    return next((c for c in element.findall(f"{RIM}Classification") if c.get("classificationScheme") == scheme),
                None)


def _label(classification: ElementTree.Element | None) -> str:
    if classification is None:
        return ""
    value = classification.find(f"{RIM}Name/{RIM}LocalizedString")
    return (value.get("value") or "")[:MAX_TEXT] if value is not None else ""


def _author(classification: ElementTree.Element | None) -> str:
    """authorPerson (XCN: id^FAMILY^Given…) as "Given FAMILY", else authorInstitution's name."""
    person = _slot(classification, "authorPerson")
    parts = person.split("^")
    if len(parts) >= 3 and (parts[1] or parts[2]):
        return " ".join(p for p in (parts[2].title(), parts[1]) if p)[:MAX_TEXT]
    if person:
        return parts[0][:MAX_TEXT]
    return _slot(classification, "authorInstitution").split("^")[0]


def _time(value: str) -> str:
    """An XDS DTM (YYYY[MM[DD[hh[mm[ss]]]]], UTC) as ISO 8601; "" when unreadable."""
    digits = value[:14]
    if not digits.isdigit() or len(digits) < 8 or len(digits) % 2:
        return ""
    try:
        stamp = datetime.strptime(digits.ljust(14, "0"), "%Y%m%d%H%M%S")
    except ValueError:
        return ""
    return stamp.replace(tzinfo=timezone.utc).isoformat()
