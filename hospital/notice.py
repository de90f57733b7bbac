"""The notification mail a hospital event becomes, in French, from the hospital's applicative box.

It says who (the patient, with the INS), what (the event, with its national type code from
TRE_R254-TypeEvenement, OID 1.2.250.1.213.1.1.4.337: ADM admission, SOR discharge, DOC
document deposited; an ED visit is an ADM whose unit says "urgences"), where (the unit), when
(in the hospital's own time, as the message gave it) and whom to call. A read receipt is
asked (Disposition-Notification-To); for another operator's box the dispatcher asks a DSN
(NOTIFY=SUCCESS,FAILURE). A document event carries the document twice, as the national convention wants:
the PDF (or CDA) itself and an IHE_XDM.ZIP, under a subject starting "XDM/1.0/DDM+".
"""
from __future__ import annotations

import base64
import binascii
import email.utils
import uuid
from dataclasses import dataclass
from datetime import datetime

from mailserver import dsn
from store.db import utc

from . import xdm
from .message import Document

# TRE_R254-TypeEvenement (ANS nomenclature, "Notification d'événements" model)
EVENT_CODES = {"ADM": "ADM", "URG": "ADM", "SOR": "SOR", "DOC": "DOC"}
EVENT_LABELS = {"ADM": "Admission d'un patient dans un établissement de santé",
                "SOR": "Sortie d'un patient de l'établissement de santé",
                "DOC": "Dépôt de document pour un patient"}
WHAT = {"ADM": "a été admis(e) à", "URG": "s'est présenté(e) aux urgences de", "SOR": "est sorti(e) de",
        "DOC": "a un nouveau document de"}
SUBJECT = {"ADM": "Admission", "URG": "Passage aux urgences", "SOR": "Sortie", "DOC": "Document"}
TITLES = {"ADM": "Admission", "URG": "Passage aux urgences", "SOR": "Sortie d'hospitalisation",
          "DOC": "Nouveau document"}
# Another operator's box: a DSN tells the hospital's box when the mail is delivered or fails. Ours:
# the transaction that stores the mail in the GP's INBOX is the delivery, recorded on the notice
# as it commits, so no report is written to the hospital's box (it doubled the work per event).
NOTIFY_REMOTE = dsn.RcptDsn(notify=frozenset({"SUCCESS", "FAILURE"}))
NOTIFY_LOCAL = dsn.RcptDsn(notify=frozenset({"NEVER"}))


@dataclass(frozen=True)
class Notice:
    kind: str
    patient: dict  # family_name, given_name, birth_date, ins, ins_oid
    occurred: datetime  # with the hospital's offset
    unit: str
    hospital: str  # the structure's name
    sender: str  # its applicative box
    contact: str  # a box to write to (the hospital's organisational one), or the sender
    recipient: str
    recipient_name: str  # "Dr Jean DUPONT", or the box's service
    event_id: int
    document: Document | None = None


def build(notice: Notice, *, hostname: str) -> bytes:
    p = notice.patient
    who, born = patient_name(p), _date(p.get("birth_date", ""))
    code = EVENT_CODES[notice.kind]
    lines = [f"Bonjour {notice.recipient_name},", "",
             f"Votre patient(e) {who}" + (f", né(e) le {born}" if born else "")
             + (f" (INS {p['ins']})" if p.get("ins") else "")
             + f", {WHAT[notice.kind]} {notice.hospital}"
             + f" le {notice.occurred:%d/%m/%Y à %H:%M}" + (f" (unité : {notice.unit})" if notice.unit else "") + ".",
             ""]
    if notice.document is not None:
        lines += [f"Document joint : {notice.document.type_label or notice.document.type_code} "
                  f"(LOINC {notice.document.type_code}), en PDF/CDA et dans l'archive IHE_XDM.ZIP.", ""]
    lines += [f"Pour joindre le service : {notice.contact}", "",
              f"Type d'événement : {code} ({EVENT_LABELS[code]}, TRE_R254-TypeEvenement).",
              "Message automatique envoyé par la messagerie sécurisée de santé de l'établissement.", ""]
    header = _header(notice, _subject(notice), hostname)
    doc = notice.document
    if doc is None:
        return _mail(header, _TEXT, _text(lines))
    if doc.media_type == "text/xml":
        header.append(f"X-MSS-CODECDA: {doc.type_code}")
    archive = xdm.build(doc, ins=p.get("ins", ""), ins_oid=p.get("ins_oid", ""), author=notice.hospital,
                        hospital=notice.hospital, submitted_at=notice.occurred,
                        set_id=f"2.25.{uuid.uuid4().int}")  # a UUID as an OID (ITU-T X.667)
    boundary = f"=_{uuid.uuid4().hex}"  # "=_" cannot occur in quoted-printable or base64 text
    parts = ["\r\n".join([*_TEXT, "", ""]).encode() + _text(lines),
             _attachment(doc.media_type, "DOC0001.PDF" if doc.media_type.endswith("/pdf") else "DOC0001.XML",
                         doc.data),
             _attachment("application/zip", "IHE_XDM.ZIP", archive)]
    delimiter = f"\r\n--{boundary}\r\n".encode()
    return _mail(header, [f'Content-Type: multipart/mixed; boundary="{boundary}"'],
                 delimiter[2:] + delimiter.join(parts) + f"\r\n--{boundary}--\r\n".encode())


def cancellation(notice: Notice, *, original_id: str, hostname: str) -> bytes:
    """The short mail telling a recipient of `notice` that the hospital cancelled its event
    (ADT^A11, A13, ZBE-4 CANCEL): same recipient, subject "Annulation : <the notice's>", an
    answer to the notice (In-Reply-To), the same MSSanté headers."""
    header = _header(notice, f"Annulation : {_subject(notice)}", hostname, cancelled=True)
    if original_id:
        header += [f"In-Reply-To: {original_id}", f"References: {original_id}"]
    p = notice.patient
    lines = [f"Bonjour {notice.recipient_name}," if notice.recipient_name else "Bonjour,", "",
             f"{notice.hospital} annule l'événement qui vous a été signalé : {TITLES[notice.kind].lower()} de "
             f"{patient_name(p)}" + (f" (INS {p['ins']})" if p.get("ins") else "")
             + f" le {notice.occurred:%d/%m/%Y à %H:%M}" + (f" (unité : {notice.unit})" if notice.unit else "") + ".",
             "Merci de ne pas en tenir compte.", "", f"Pour joindre le service : {notice.contact}", "",
             "Message automatique envoyé par la messagerie sécurisée de santé de l'établissement.", ""]
    return _mail(header, _TEXT, _text(lines))


def occurred_of(event, patient: dict) -> datetime:  # noqa: ANN001 - a hospital_events row
    """When the event happened, in the hospital's own time when its message gave it."""
    try:
        return datetime.fromisoformat(patient["occurred"])
    except (KeyError, ValueError):
        return utc(event.occurred_at)


def patient_name(patient: dict) -> str:
    """"TECHER Josette", as notices and alerts name the patient."""
    return f"{patient['family_name']} {patient['given_name'].title()}".strip()


def _subject(notice: Notice) -> str:
    born = _date(notice.patient.get("birth_date", ""))
    subject = (f"{SUBJECT[notice.kind]} : {patient_name(notice.patient)}" + (f" (né(e) le {born})" if born else "")
               + f" - {notice.hospital}")
    return f"XDM/1.0/DDM+{notice.document.type_code} {subject}" if notice.document is not None else subject


def _header(notice: Notice, subject: str, hostname: str, *, cancelled: bool = False) -> list[str]:
    """The header's fields, each as it goes on the wire (RFC 2047 words for non-ASCII text,
    folded under 78 columns). Written out as text rather than through email.message: its
    header objects and generator (quoted-printable a character at a time in Python) took most
    of the CPU an ADT event cost, on the event loop of the feed's ACKs."""
    return [f"From: {_address(notice.hospital, notice.sender, 'From')}",
            f"To: {_address(notice.recipient_name, notice.recipient, 'To')}",
            f"Subject: {_encoded(subject, 'Subject')}",
            f"Date: {email.utils.formatdate(localtime=False)}",
            "Message-ID: " + email.utils.make_msgid(  # ~85 columns, unfolded (RFC 5322 allows 998)
                f"hospital-{'cancel' if cancelled else 'event'}.{notice.event_id}", domain=hostname),
            f"Disposition-Notification-To: {notice.sender}",
            f"X-MSS-INS: {'O' if notice.document is not None and notice.patient.get('ins') else 'N'}"]


# The text part's own fields (also the whole mail's, for a mail without attachments).
_TEXT = ['Content-Type: text/plain; charset="utf-8"', "Content-Transfer-Encoding: quoted-printable"]


def _mail(header: list[str], content: list[str], body: bytes) -> bytes:
    return "\r\n".join([*header, *content, "MIME-Version: 1.0", "", ""]).encode("ascii") + body


def _text(lines: list[str]) -> bytes:
    """The text in quoted-printable (CRLF lines, soft breaks under 76 columns): binascii's C
    encoder, which keeps CRLF line ends as they are."""
    return binascii.b2a_qp("\r\n".join(lines).encode(), istext=True)


def _attachment(media_type: str, filename: str, data: bytes) -> bytes:
    return (f"Content-Type: {media_type}\r\nContent-Transfer-Encoding: base64\r\n"
            f'Content-Disposition: attachment; filename="{filename}"\r\n\r\n').encode() \
        + base64.encodebytes(data).replace(b"\n", b"\r\n")


def _encoded(text: str, field: str) -> str:
    """Unstructured text for a header field, lines under 77 columns: folded at spaces if ASCII,
    else RFC 2047 "Q" words (email.header.Header measured the string again at every character:
    90 % of what a notice took to build)."""
    column = len(field) + 2  # "Subject: "
    if text.isascii():
        lines, line = [], ""
        for word in text.split(" "):
            if line and column + len(line) + 1 + len(word) > 78:
                lines.append(line)
                line, column = word, 1  # a continuation line starts with the space it was folded at
            else:
                line = f"{line} {word}" if line else word
        return "\r\n ".join([*lines, line])
    words, word = [], ""
    for char in text:
        q = char if char in _Q_SAFE else "_" if char == " " else "".join(f"={b:02X}" for b in char.encode())
        if word and column + len(_Q_WORD) + len(word) + len(q) > 76:  # RFC 2047 §2: lines of encoded words
            words.append(word)
            word, column = "", 1
        word += q
    return "\r\n ".join(_Q_WORD.format(w) for w in [*words, word])


# What a "Q" word holds as it is, even in a phrase (RFC 2047 §5 (3)); a space is written "_".
_Q_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")
_Q_WORD = "=?utf-8?q?{}?="


def _address(name: str, address: str, field: str) -> str:
    if name.isascii():
        return email.utils.formataddr((name, address))  # quoted if it holds specials
    words = _encoded(name, field)
    last = words.rsplit("\r\n", 1)[-1] if "\r\n" in words else f"{field}: {words}"
    fold = "\r\n" if len(last) + len(address) + 3 > 78 else ""  # the address on a line of its own
    return f"{words}{fold} <{address}>"


def _date(iso_date: str) -> str:
    return f"{iso_date[8:10]}/{iso_date[5:7]}/{iso_date[:4]}" if len(iso_date) == 10 else ""
