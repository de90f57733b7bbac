"""Delivery Status Notifications: the SMTP DSN parameters (RFC 3461) and the report
message (RFC 3464), sans I/O.

In MSSanté a delivery receipt ("accusé de réception") is a DSN, so professionals read
these reports: the human part is in French. The SMTP front-end validates the MAIL and RCPT
parameters with parse_mail_params() and parse_rcpt_params() and keeps the result with the
message; once a recipient's fate is known, the queue calls build_report() and sends the
bytes with an empty envelope sender.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from email.generator import BytesGenerator
from email.headerregistry import Address
from email.message import EmailMessage, MIMEPart
from email.policy import SMTP
from email.utils import format_datetime, make_msgid
from io import BytesIO
from typing import Literal, Mapping

# RFC 3461 §4.4: an ENVID is at most 100 characters; checked as sent, in xtext.
ENVID_MAX = 100
# An RFC 5321 path is at most 256 octets (§4.5.3.1.3); 500 leaves room for xtext escapes.
ORCPT_MAX = 500
# A remote reply is one 512-octet line (RFC 5321 §4.5.3.1.5), but multi-line replies are
# joined; longer ones are cut so that the unfolded Diagnostic-Code stays under 998 octets.
DIAGNOSTIC_MAX = 900
# Beyond this size a failure report returns the original's headers only, so that the report
# does not itself exceed the sender's size limit (Exim's bounce_return_size_limit
# default is 100K; Postfix's bounce_size_limit is 50 000 bytes).
RETURN_LIMIT = 100 * 1024

NOTIFY_EVENTS = frozenset({"SUCCESS", "FAILURE", "DELAY"})
# Without NOTIFY, RFC 3461 §4.1 has failures reported and delays at the MTA's discretion.
DEFAULT_NOTIFY = frozenset({"FAILURE", "DELAY"})
ACTIONS = ("failed", "delayed", "delivered", "relayed", "expanded")  # RFC 3464 §2.3.3
# Our consistency rule between Action and the class of Status (RFC 3463 §2): a failure
# may end on a transient code when retries time out (e.g. 4.4.7).
_STATUS_CLASSES = {"failed": "45", "delayed": "4", "delivered": "2", "relayed": "2", "expanded": "2"}

_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-Fa-f]{2})*")  # RFC 3461 §4; lower-case hex tolerated
_HEXCHAR = re.compile(rb"\+([0-9A-Fa-f]{2})")
_PRINTABLE = re.compile(r"[\t -~]+")  # RFC 3461 §4.2, §4.4: printable US-ASCII
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")  # RFC 5322 §3.2.3
_STATUS = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})")  # RFC 3463 §2
_ADDRESS = re.compile(r"[!-~]+")
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


class DsnError(ValueError):
    """A DSN parameter is malformed; carries the SMTP reply to send."""

    def __init__(self, reply_code: int, enhanced_code: str, text: str) -> None:
        super().__init__(f"{reply_code} {enhanced_code} {text}")
        self.reply_code = reply_code
        self.enhanced_code = enhanced_code
        self.text = text


def _syntax(text: str) -> DsnError:
    return DsnError(501, "5.5.4", text)  # RFC 3463 X.5.4: invalid command arguments


@dataclass(frozen=True)
class MailDsn:
    """DSN parameters of MAIL FROM; `envid` is decoded from xtext."""

    ret: Literal["FULL", "HDRS"] | None = None
    envid: str | None = None


@dataclass(frozen=True)
class RcptDsn:
    """DSN parameters of RCPT TO; `orcpt` is (address type, address decoded from xtext)."""

    notify: frozenset[str] = DEFAULT_NOTIFY
    orcpt: tuple[str, str] | None = None


@dataclass(frozen=True)
class RecipientStatus:
    """One recipient's fate, reported in a per-recipient block (RFC 3464 §2.3).

    `diagnostic` is the SMTP reply that decided it ("550 5.1.1 ..."), reported as
    "smtp; ..."; `will_retry_until` belongs to delayed recipients only.
    """

    final_recipient: str
    action: str
    status: str
    diagnostic: str | None = None
    original_recipient: tuple[str, str] | None = None
    last_attempt: datetime | None = None
    will_retry_until: datetime | None = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r}")
        match = _STATUS.fullmatch(self.status)
        if match is None or match[1] not in _STATUS_CLASSES[self.action]:
            raise ValueError(f"status {self.status!r} does not fit action {self.action}")
        if self.will_retry_until is not None and self.action != "delayed":
            raise ValueError("Will-Retry-Until is for delayed recipients only")


def xtext_encode(text: str) -> str:
    """RFC 3461 §4: "+", "=", spaces, controls and non-ASCII (as UTF-8 octets) become +HH."""
    return "".join(
        char if "!" <= char <= "~" and char not in "+=" else "".join(f"+{b:02X}" for b in char.encode())
        for char in text
    )


def xtext_decode(text: str) -> str:
    """Inverse of xtext_encode(); DsnError when `text` is not xtext or not UTF-8."""
    if not _XTEXT.fullmatch(text):
        raise _syntax("malformed xtext")
    try:
        return _HEXCHAR.sub(lambda m: bytes([int(m[1], 16)]), text.encode("ascii")).decode()
    except UnicodeDecodeError:
        raise _syntax("malformed xtext") from None


def parse_mail_params(params: Mapping[str, str | bool]) -> MailDsn:
    """Validate RET and ENVID (RFC 3461 §4.3, §4.4); other parameters are left alone.

    `params` maps keywords to values, True for a keyword without value (aiosmtpd's shape).
    """
    params = _by_keyword(params)
    ret = _value(params, "RET")
    ret = ret.upper() if ret is not None else None
    if ret not in (None, "FULL", "HDRS"):
        raise _syntax("RET must be FULL or HDRS")
    envid = _value(params, "ENVID")
    if envid is not None:
        if len(envid) > ENVID_MAX:
            raise _syntax(f"ENVID longer than {ENVID_MAX} characters")
        envid = xtext_decode(envid)
        if not _PRINTABLE.fullmatch(envid):
            raise _syntax("ENVID must be printable US-ASCII")
    return MailDsn(ret, envid)  # type: ignore[arg-type]  # checked above


def parse_rcpt_params(params: Mapping[str, str | bool]) -> RcptDsn:
    """Validate NOTIFY and ORCPT (RFC 3461 §4.1, §4.2); other parameters are left alone."""
    params = _by_keyword(params)
    notify = DEFAULT_NOTIFY
    value = _value(params, "NOTIFY")
    if value is not None:
        notify = frozenset(value.upper().split(","))
        if not (notify <= NOTIFY_EVENTS or notify == {"NEVER"}):
            raise _syntax("NOTIFY must be NEVER or a list of SUCCESS, FAILURE, DELAY")
    orcpt = None
    value = _value(params, "ORCPT")
    if value is not None:
        if len(value) > ORCPT_MAX:
            raise _syntax(f"ORCPT longer than {ORCPT_MAX} characters")
        addr_type, semicolon, xtext = value.partition(";")
        if not semicolon or not _ATOM.fullmatch(addr_type):
            raise _syntax("ORCPT must be addr-type;xtext")
        address = xtext_decode(xtext)
        if not _PRINTABLE.fullmatch(address):
            raise _syntax("ORCPT address must be printable US-ASCII")
        orcpt = (addr_type.lower(), address)
    return RcptDsn(notify, orcpt)


def _by_keyword(params: Mapping[str, str | bool]) -> dict[str, str | bool]:
    upper = {key.upper(): value for key, value in params.items()}
    if len(upper) != len(params):
        raise _syntax("duplicate parameter")
    return upper


def _value(params: Mapping[str, str | bool], keyword: str) -> str | None:
    value = params.get(keyword)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise _syntax(f"{keyword} needs a value")
    return value


def build_report(
    *,
    reporting_mta: str,
    original_envelope_id: str | None,
    arrival_date: datetime,
    recipients: list[RecipientStatus],
    original_message: bytes,
    ret: Literal["FULL", "HDRS"] | None,
    from_addr: str,
    to_addr: str,
    subject_hint: str | None,
    date: datetime | None = None,
    return_limit: int = RETURN_LIMIT,
) -> bytes:
    """The DSN for `recipients` of one message, as a complete RFC 5322 message.

    Send it with an empty envelope sender, MAIL FROM:<> (RFC 3464 §2, RFC 5321 §4.5.5),
    so that a report is never answered by another report; and never build one for a
    message whose own envelope sender was empty (`to_addr` is that sender). When the
    returned original holds 8-bit data, so does the report: send it with BODY=8BITMIME.

    Layout (RFC 3464 §2, RFC 6522): multipart/report; report-type=delivery-status with
    a text/plain part in French, the message/delivery-status part, then the original.
    The original is returned whole (message/rfc822) only when a recipient failed and
    RET is not HDRS; otherwise, and when it exceeds `return_limit`, its header section
    goes as text/rfc822-headers. RFC 3461 §4.3: RET applies to failure reports; reports
    without failure return headers only.

    `from_addr` is the operator's postmaster or mailer-daemon address; `subject_hint`
    the original subject; `date` the report's Date (default: now). Datetimes must be
    timezone-aware.
    """
    if not recipients:
        raise ValueError("a report needs at least one recipient")
    if not _ADDRESS.fullmatch(to_addr) or to_addr == "<>":
        raise ValueError("a report goes to the original, non-empty, envelope sender")
    if not _HOSTNAME.fullmatch(reporting_mta):
        raise ValueError("reporting_mta must be a host name")
    date = date or datetime.now(timezone.utc)
    actions = {rcpt.action for rcpt in recipients}
    outcome = "failed" if "failed" in actions else "delayed" if "delayed" in actions else "delivered"
    original = _crlf(original_message)
    wanted = outcome == "failed" and ret != "HDRS"
    whole = wanted and len(original) <= return_limit

    report = EmailMessage(policy=SMTP)
    report["From"] = Address("Messagerie sécurisée de santé", addr_spec=from_addr)
    report["To"] = to_addr
    subject = " ".join((subject_hint or "").split())[:200]
    report["Subject"] = f"{_SUBJECTS[outcome]} : {subject}" if subject else _SUBJECTS[outcome]
    report["Date"] = format_datetime(_aware(date))
    report["Message-ID"] = make_msgid(domain=reporting_mta)
    report["Auto-Submitted"] = "auto-replied"  # RFC 3834 §5
    report["MIME-Version"] = "1.0"
    report["Content-Type"] = "multipart/report; report-type=delivery-status"

    human = MIMEPart(policy=SMTP)
    if whole:
        returned = "Le message d'origine est joint en entier."
    elif wanted:
        returned = "Le message d'origine, trop volumineux, n'est joint que par ses en-têtes."
    else:
        returned = "Les en-têtes du message d'origine sont joints."
    human.set_content(
        _human_text(reporting_mta, arrival_date, recipients, subject, returned),
        charset="utf-8", cte="quoted-printable",
    )
    report.attach(human)
    report.attach(_delivery_status(reporting_mta, original_envelope_id, arrival_date, recipients))
    report.attach(_returned(original, whole))

    out = BytesIO()
    _ReportGenerator(out, policy=SMTP).flatten(report)
    return out.getvalue()


class _ReportGenerator(BytesGenerator):
    """BytesGenerator with two corrections for reports.

    A str payload holding the original's raw bytes (decoded with surrogateescape) goes
    out as those bytes: the stdlib encodes a message/rfc822 str payload as strict ASCII,
    and re-serialising a parsed copy would refold the original's headers.

    Delivery-status fields are not folded (as the stdlib does for multipart/signed): its
    folder breaks right after "Diagnostic-Code:", which reads back with a leading space.
    Our fields are bounded (see DIAGNOSTIC_MAX), so lines stay within RFC 5322 §2.1.1.
    """

    def _encode(self, s: str) -> bytes:
        return s.encode("ascii", "surrogateescape")

    def _handle_message_delivery_status(self, msg: MIMEPart) -> None:
        policy = self.policy
        self.policy = policy.clone(max_line_length=0)
        try:
            super()._handle_message_delivery_status(msg)
        finally:
            self.policy = policy


def _delivery_status(
    reporting_mta: str, envid: str | None, arrival: datetime, recipients: list[RecipientStatus]
) -> MIMEPart:
    """RFC 3464 §2.1: per-message fields, then one block per recipient, blank-line
    separated. The stdlib writes a message/delivery-status whose payload is a list of
    header-only parts exactly so, and parses it back the same way."""
    if envid is not None and not _PRINTABLE.fullmatch(envid):
        raise ValueError("original_envelope_id must be printable US-ASCII")
    per_message = [
        ("Reporting-MTA", f"dns; {reporting_mta}"),
        ("Arrival-Date", format_datetime(_aware(arrival))),
    ]
    if envid is not None:
        per_message.insert(0, ("Original-Envelope-Id", envid))  # §2.2: first when present
    blocks = [_fields(per_message)]
    for rcpt in recipients:
        fields = []
        if rcpt.original_recipient is not None:
            addr_type, address = rcpt.original_recipient
            fields.append(("Original-Recipient", f"{_checked(addr_type)};{_checked(address)}"))
        fields += [
            ("Final-Recipient", f"rfc822; {_checked(rcpt.final_recipient)}"),
            ("Action", rcpt.action),
            ("Status", rcpt.status),
        ]
        if rcpt.diagnostic:
            fields.append(("Diagnostic-Code", f"smtp; {_ascii_line(rcpt.diagnostic)}"))
        if rcpt.last_attempt is not None:
            fields.append(("Last-Attempt-Date", format_datetime(_aware(rcpt.last_attempt))))
        if rcpt.will_retry_until is not None:
            fields.append(("Will-Retry-Until", format_datetime(_aware(rcpt.will_retry_until))))
        blocks.append(_fields(fields))
    part = MIMEPart(policy=SMTP)
    part["Content-Type"] = "message/delivery-status"
    part.set_payload(blocks)
    return part


def _fields(fields: list[tuple[str, str]]) -> MIMEPart:
    block = MIMEPart(policy=SMTP)
    for name, value in fields:
        block[name] = value
    return block


def _returned(original: bytes, whole: bool) -> MIMEPart:
    """The original, as message/rfc822 or as text/rfc822-headers (RFC 6522 §4)."""
    part = MIMEPart(policy=SMTP)
    if whole:
        part["Content-Type"] = "message/rfc822"
        content = original
    else:
        part["Content-Type"] = "text/rfc822-headers"
        end = original.find(b"\r\n\r\n")
        content = original if end < 0 else original[: end + 2]
    # RFC 2046 §5.2.1: message/rfc822 is 7bit, 8bit or binary, never encoded.
    part["Content-Transfer-Encoding"] = "7bit" if content.isascii() else "8bit"
    part.set_payload(content.decode("ascii", "surrogateescape"))
    return part


def _human_text(
    reporting_mta: str, arrival: datetime, recipients: list[RecipientStatus], subject: str, returned: str
) -> str:
    about = f"votre message « {subject} »" if subject else "votre message"
    lines = [
        f"Ceci est un avis automatique du serveur {reporting_mta} concernant {about},",
        f"reçu le {_french_date(arrival)}.",
        "This is an automatic delivery status notification: the details per recipient",
        "are below in French and in the attached machine-readable report.",
        "",
    ]
    for rcpt in recipients:
        lines.append(f"- {rcpt.final_recipient} : {_french_outcome(rcpt)}")
        if rcpt.diagnostic:
            lines.append(f"  Réponse du serveur : {_ascii_line(rcpt.diagnostic)}")
    lines += [
        "",
        returned,
        "Ce message est envoyé automatiquement, merci de ne pas y répondre.",
    ]
    return "\n".join(lines) + "\n"


_SUBJECTS = {"failed": "Échec de remise", "delayed": "Remise retardée", "delivered": "Accusé de réception"}

# RFC 3463 §3 subject.detail codes that professionals meet, in their words.
_REASONS = {
    "1.1": "adresse du destinataire inconnue",
    "1.2": "domaine du destinataire inconnu",
    "1.10": "le domaine du destinataire n'accepte pas de courrier",  # RFC 7505
    "2.1": "boîte aux lettres désactivée",
    "2.2": "boîte aux lettres pleine",
    "2.3": "message trop volumineux pour cette boîte",
    "3.4": "message trop volumineux",
    "4.1": "le serveur du destinataire ne répond pas",
    "4.4": "serveur du destinataire introuvable",
    "4.7": "délai de remise dépassé",
    "7.1": "remise refusée par le domaine du destinataire",
}


def _french_outcome(rcpt: RecipientStatus) -> str:
    if rcpt.action == "delivered":
        return "remis."
    if rcpt.action == "relayed":
        return "transmis à un serveur qui ne confirmera pas la remise (pas d'accusé de réception)."
    if rcpt.action == "expanded":
        return "remis, puis redistribué aux destinataires de la liste."
    klass, subject, detail = rcpt.status.split(".")
    fallback = "erreur définitive" if klass == "5" else "erreur temporaire"
    reason = _REASONS.get(f"{subject}.{detail}", fallback)
    if rcpt.action == "failed":
        return f"ÉCHEC, le message n'a pas pu être remis ({reason})."
    until = rcpt.will_retry_until
    retry = f"jusqu'au {_french_date(until)}" if until else "en cours"
    return f"remise retardée ({reason}) ; nouvelles tentatives {retry}."


def _french_date(moment: datetime) -> str:
    offset = _aware(moment).strftime("%z")
    return f"{moment:%d/%m/%Y} à {moment:%H:%M} (UTC{offset[:3]}:{offset[3:]})"


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("datetimes in a report must be timezone-aware")
    return moment


def _checked(value: str) -> str:
    """Addresses go into header fields verbatim: printable US-ASCII only (RFC 3464 §2.1;
    SMTPUTF8 addresses would need message/global-delivery-status, RFC 6533)."""
    if not _PRINTABLE.fullmatch(value):
        raise ValueError("addresses in a report must be printable US-ASCII")
    return value


def _ascii_line(text: str) -> str:
    """A remote server's reply, made fit for one header field: one line of US-ASCII."""
    return " ".join(text.split())[:DIAGNOSTIC_MAX].encode("ascii", "replace").decode()


def _crlf(message: bytes) -> bytes:
    """SMTP line endings (RFC 5321 §2.3.8), whatever the store kept, and a final CRLF."""
    message = message.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    return message if message.endswith(b"\r\n") else message + b"\r\n"
