"""The HL7 acknowledgment (ACK, original mode, HL7 v2.5 §2.9.2): what the sender reads once
msante has stored its message (MSA-1 AA, as SMTP's 250) or refused it: AE when the content
is wrong (the sender must fix and resend), AR when the message is not one this receiver takes
(type, version, processing id, or a facility the certificate does not speak for). A refusal
carries an ERR segment: ERR-2 the location (segment^sequence^field), ERR-3 the condition code
(table 0357), ERR-4 the severity (E), ERR-8 the text a person reads.
"""
from __future__ import annotations

from datetime import datetime, timezone

from .message import Header, Hl7Error

RECEIVING_APPLICATION = "MSANTE"
FALLBACK = Header("", ("",), "", "", "", "", "P", "2.5")  # for a message without a readable MSH


def _escape(text: str) -> str:
    """HL7 escapes (§2.7.4) for free text in a field: the delimiters, then CR/LF out."""
    out = text.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\").replace("&", "\\T\\")
    return out.replace("~", "\\R\\").replace("\r", " ").replace("\n", " ")


def build(header: Header | None, code: str, control_id: str, *, error: Hl7Error | None = None,
          facility: str = "", now: datetime | None = None) -> bytes:
    """The ACK to `header`'s message; `control_id` is the ACK's own MSH-10."""
    h = header or FALLBACK
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d%H%M%S+0000")
    trigger = h.message_type.partition("^")[2]
    msh = ["MSH", "^~\\&", RECEIVING_APPLICATION, _escape(facility), _escape(h.sending_application),
           _escape("^".join(h.sending_facility)), stamp, "", f"ACK^{trigger}^ACK" if trigger else "ACK",
           _escape(control_id), h.processing_id or "P", h.version or "2.5"]
    if h.charset:
        msh += [""] * 5 + [_escape(h.charset)]
    segments = ["|".join(msh), "|".join(["MSA", code, _escape(h.control_id)])]
    if error is not None:
        location = f"{error.segment}^{error.sequence}^{error.field}" if error.segment else ""
        segments.append("|".join(["ERR", "", location, f"{error.condition}^{_condition(error.condition)}^HL70357",
                                  "E", "", "", "", _escape(error.text[:250])]))
    return ("\r".join(segments) + "\r").encode(h.encoding or "utf-8", "replace")


def _condition(code: int) -> str:
    return {100: "Segment sequence error", 101: "Required field missing", 102: "Data type error",
            103: "Table value not found", 200: "Unsupported message type", 201: "Unsupported event code",
            202: "Unsupported processing id", 203: "Unsupported version id", 204: "Unknown key identifier",
            205: "Duplicate key identifier", 206: "Application record locked",
            207: "Application internal error"}.get(code, "Error")


def code(answer: bytes) -> str:
    """MSA-1 of an ACK `build` wrote (its field separator is always |), as a metric's label."""
    start = answer.find(b"\rMSA|")
    found = answer[start + 5:start + 7].decode("ascii", "replace") if start >= 0 else ""
    return found if found in ("AA", "AE", "AR") else "other"
