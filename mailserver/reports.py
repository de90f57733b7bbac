"""Reading the reports other mail systems send back, sans-IO: a delivery status notification
(RFC 3464, multipart/report; report-type=delivery-status) or a message disposition
notification (RFC 8098, report-type=disposition-notification). Each tells, for one recipient
of a message we sent (named by its Message-ID), what became of it: delivered, failed (with
the diagnostic) or read. A report is small (our notices ask RET=HDRS); anything larger than
MAX_REPORT, or not a report, reads as nothing.
"""
from __future__ import annotations

import email
import email.message
from dataclasses import dataclass

from . import headers

MAX_REPORT = 256 * 1024  # bytes: a report with headers returned, with room to spare
MAX_RECIPIENTS = 100  # per-recipient blocks read from one DSN
DSN_OUTCOMES = {"delivered": "delivered", "relayed": "sent", "failed": "failed"}  # delayed, expanded: no fact


@dataclass(frozen=True)
class Report:
    message_id: str  # the original message's, angle brackets included
    recipient: str  # Final-Recipient's address, lower-cased
    outcome: str  # delivered, sent, failed, read
    reason: str = ""


def looks_like_report(message: bytes) -> bool:
    """Cheap enough for every delivery: only the top header is read (bounded, headers.py)."""
    return (headers.read(message).get("content-type") or "").strip().lower().startswith("multipart/report")


def read(message: bytes) -> list[Report]:
    if len(message) > MAX_REPORT or not looks_like_report(message):
        return []
    top = email.message_from_bytes(message)
    if top.get_content_type() != "multipart/report":
        return []
    kind = top.get_param("report-type", "").lower()
    parts = top.get_payload() if top.is_multipart() else []
    if kind == "disposition-notification":
        return _mdn(parts)
    if kind == "delivery-status":
        return _dsn(parts)
    return []


def _mdn(parts: list[email.message.Message]) -> list[Report]:
    """RFC 8098 §3.2: Original-Message-ID and Final-Recipient; "displayed" is read (deleted,
    dispatched, processed say nothing of a reader)."""
    for fields in _blocks(parts, "message/disposition-notification")[:1]:
        disposition = fields.get("disposition", "").rpartition(";")[2].strip().lower()
        message_id = fields.get("original-message-id", "").strip()
        recipient = _address(fields.get("final-recipient", ""))
        if disposition.startswith("displayed") and message_id and recipient:
            return [Report(message_id, recipient, "read")]
    return []


def _dsn(parts: list[email.message.Message]) -> list[Report]:
    """RFC 3464 §2.3: per recipient, Final-Recipient and Action; the original's Message-ID is
    in the returned headers (third part)."""
    blocks = _blocks(parts, "message/delivery-status")
    message_id = _returned_message_id(parts)
    if not message_id:
        return []
    found = []
    for fields in blocks[1:MAX_RECIPIENTS + 1]:  # the first block is per message
        outcome = DSN_OUTCOMES.get(fields.get("action", "").strip().lower())
        recipient = _address(fields.get("final-recipient", ""))
        if outcome and recipient:
            status, diagnostic = fields.get("status", "").strip(), _typed(fields.get("diagnostic-code", ""))
            reason = " ".join(v for v in (status, diagnostic) if v)
            found.append(Report(message_id, recipient, outcome, reason[:300] if outcome == "failed" else ""))
    return found


def _blocks(parts: list[email.message.Message], content_type: str) -> list[dict[str, str]]:
    for part in parts:
        if part.get_content_type() == content_type and isinstance(part.get_payload(), list):
            return [{k.lower(): str(v) for k, v in block.items()} for block in part.get_payload()]
    return []


def _returned_message_id(parts: list[email.message.Message]) -> str:
    for part in parts[2:3]:
        payload = part.get_payload()
        if part.get_content_type() in ("message/rfc822", "message/global") and isinstance(payload, list):
            return str(payload[0].get("message-id", "")).strip()
        if part.get_content_type() in ("text/rfc822-headers", "message/global-headers") and isinstance(payload, str):
            return str(email.message_from_string(payload).get("message-id", "")).strip()
    return ""


def _typed(field: str) -> str:
    """"smtp; 550 …" → "550 …": the value of a typed field (RFC 3464 §2.1.2), its type dropped."""
    return field.partition(";")[2].strip() if ";" in field else field.strip()


def _address(field: str) -> str:
    return _typed(field).lower()
