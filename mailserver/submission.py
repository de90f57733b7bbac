"""Submission policy: who may send as whom, where each recipient goes, and the `250` that
means "stored". The aiosmtpd hooks of the `submission`/`submissions` listeners.

Replies say what a person can do about a refusal: these texts end up in bounce windows of
Thunderbird and Outlook in GP practices.
"""
from __future__ import annotations

import email.utils
import logging
import secrets
from datetime import datetime, timezone
from email.parser import BytesHeaderParser
from email.policy import SMTP as SMTP_POLICY
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from directory.access import grant_for
from store.audit import AuditTrail
from store.schema import mailboxes

from .logins import Login
from .mailstore import MailStore, Recipient
from .smtp import MsanteEnvelope, SmtpLimits
from .trust import TrustListError, TrustSpace, a_label

log = logging.getLogger("msante.submission")


class SubmissionHandler:
    def __init__(self, engine: AsyncEngine, store: MailStore, audit: AuditTrail, trust: TrustSpace, *,
                 domains: tuple[str, ...], hostname: str, limits: SmtpLimits) -> None:
        self._engine = engine
        self._store = store
        self._audit = audit
        self._trust = trust
        self._domains = frozenset(domains)
        self._hostname = hostname
        self._limits = limits

    async def handle_MAIL(self, server: Any, session: Any, envelope: MsanteEnvelope, address: str,
                          mail_options: list[str]) -> str:
        login: Login = session.auth_data
        sender = address.strip().lower()
        async with self._engine.connect() as conn:
            grant = await grant_for(conn, login.principal, sender)
        if grant is None:
            await self._audit.record(login.principal.actor, "smtp.mail", target=sender, outcome="denied",
                                     source=_peer(session), reason="sender not allowed")
            return (f"550 5.7.1 {login.principal.display} may not send as <{sender}>: use your own mailbox or "
                    f"an organisational mailbox you are delegated to")
        envelope.mail_from = sender
        envelope.mail_options.extend(mail_options)
        envelope.sender_grant = grant
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: MsanteEnvelope, address: str,
                          rcpt_options: list[str]) -> str:
        login: Login = session.auth_data
        if len(envelope.rcpt_tos) >= self._limits.max_recipients:
            return f"452 4.5.3 Too many recipients: at most {self._limits.max_recipients} per message"
        recipient = address.strip()
        local_part, _, domain = recipient.rpartition("@")
        try:
            domain = a_label(domain)
        except TrustListError:
            return f"501 5.1.3 <{recipient}> is not a valid address"
        if not local_part:
            return f"501 5.1.3 <{recipient}> is not a valid address"
        recipient = f"{local_part.lower()}@{domain}"
        if domain in self._domains:
            async with self._engine.connect() as conn:
                row = (await conn.execute(select(mailboxes.c.id).where(and_(
                    mailboxes.c.address == recipient, mailboxes.c.local.is_(True),
                    mailboxes.c.retired_at.is_(None))))).first()
            if row is None:
                await self._refused(login, session, recipient, "unknown local recipient")
                return f"550 5.1.1 <{recipient}>: no such mailbox here; check the address in the directory"
            mailbox_id: int | None = row.id
        elif await self._trust.contains(domain):
            mailbox_id = None  # remote, inside the trust space: the outbound queue takes it
        else:
            await self._refused(login, session, recipient, "domain outside the trust space")
            return (f"550 5.7.1 <{recipient}>: the domain {domain} is outside the MSSanté trust space; "
                    f"secure messaging only reaches trust-space domains")
        envelope.rcpt_tos.append(recipient)
        envelope.rcpt_options.extend(rcpt_options)
        envelope.routes.append(mailbox_id)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: MsanteEnvelope) -> str:
        login: Login = session.auth_data
        raw: bytes = envelope.original_content
        headers = BytesHeaderParser(policy=SMTP_POLICY).parsebytes(raw)
        from_addresses = [a.lower() for _, a in email.utils.getaddresses(headers.get_all("From", []))]
        if from_addresses != [envelope.mail_from]:
            await self._refused(login, session, envelope.mail_from, "From header does not match the sender",
                                from_header=from_addresses)
            return (f"550 5.7.1 The From: header must be exactly <{envelope.mail_from}>, the mailbox you send as "
                    f"(found {', '.join(from_addresses) or 'none'})")
        message_id = str(headers.get("Message-ID", "")).strip()
        stored = self._received(session, server, login, envelope) + raw
        recipients = [Recipient(address, rcpt_dsn, mailbox_id) for address, rcpt_dsn, mailbox_id
                      in zip(envelope.rcpt_tos, envelope.rcpt_dsn, envelope.routes)]
        accepted = await self._store.accept(
            message=stored, message_id=message_id, sender=envelope.mail_from,
            sender_mailbox_id=envelope.sender_grant.mailbox_id, actor=login.principal.actor,
            source=_peer(session), mail_dsn=envelope.dsn, recipients=recipients)
        await self._audit.record(login.principal.actor, "smtp.accept", target=envelope.mail_from,
                                 source=_peer(session), message_id=message_id, envelope=accepted.envelope_id,
                                 delivered=list(accepted.delivered), queued=list(accepted.queued),
                                 failed=list(accepted.failed), size=len(stored))
        return f"250 2.0.0 Stored as {accepted.envelope_id}"

    def _received(self, session: Any, server: Any, login: Login, envelope: MsanteEnvelope) -> bytes:
        """RFC 5321 §4.4 trace header; `with` per RFC 3848 (ESMTPSA: TLS and AUTH)."""
        peer = _peer(session)
        tls = server.ssl_object
        tls_text = f" ({tls.version()} {tls.cipher()[0]})" if tls else ""
        protocol = "ESMTPSA" if tls else "ESMTPA"
        if any(ord(ch) > 127 for ch in envelope.mail_from + "".join(envelope.rcpt_tos)):
            protocol = "UTF8SMTPSA" if tls else "UTF8SMTPA"
        identity = f"{login.principal.kind} {login.principal.id}"
        stamp = email.utils.format_datetime(datetime.now(timezone.utc))
        text = (f"Received: from {session.host_name} ([{peer}])\r\n\tby {self._hostname} (msante) with {protocol}"
                f"{tls_text}\r\n\t(authenticated as {identity}) id {secrets.token_hex(8)};\r\n\t{stamp}\r\n")
        return text.encode("utf-8")

    async def _refused(self, login: Login, session: Any, target: str, reason: str, **detail: Any) -> None:
        await self._audit.record(login.principal.actor, "smtp.refuse", target=target, outcome="denied",
                                 source=_peer(session), reason=reason, **detail)


def _peer(session: Any) -> str:
    return session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
