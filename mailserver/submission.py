"""Receiving policy: who may send what, where each recipient goes, and the `250` that means
"stored". The aiosmtpd hooks of the listeners: `SubmissionHandler` for people and hospital
systems (`submission`, `submissions`), `RelayHandler` for other operators (`smtp`).

Both share recipient resolution and the one storing transaction; they differ in who the
sender may be, which recipients they take, and what they check in the message.
Replies say what a person can do about a refusal: these texts end up in bounce windows of
Thunderbird and Outlook in GP practices.
"""
from __future__ import annotations

import asyncio
import email.utils
import logging
import re
import secrets
from datetime import datetime, timezone
from email.header import decode_header, make_header
from typing import Any

from aiosmtpd.smtp import TLSSetupException
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncEngine

from certs.dn import dn_of
from certs.pki import CertificateError
from certs.revocation import Revocations
from certs.tls import peer_certificate, peer_identity
from directory.access import grant_for
from store.audit import Actor, AuditTrail
from store.db import OneRead
from store.schema import mailboxes

from .addresses import Address, parse_addresses
from .bodies import facts_from
from .headers import Header, read as read_header
from .imap.message import MAX_DEPTH, MAX_PARTS, Message
from .mailstore import MailStore, Recipient
from .smtp import MsanteEnvelope, SmtpLimits, peer_address
from .trust import TrustListError, TrustSpace, a_label

log = logging.getLogger("msante.receive")

PARSE_ON_LOOP = 64 * 1024  # messages up to this size are parsed on the event loop (handle_DATA)
MAX_HOPS = 50  # Received: headers before a message is taken for a loop (Postfix's hopcount_limit)
NULL_SENDER = "<>"  # how aiosmtpd hands over MAIL FROM:<> (reports, RFC 3461 §6.2)
# Something that reads as an address inside a display name: `"jean@msante.test" <marie@…>`
# Built once (every RCPT runs it): building a statement cost more CPU than running it on SQLite.
_LOCAL_BOX = OneRead(select(mailboxes.c.id).where(  # every RCPT TO asks
    mailboxes.c.address == bindparam("address"), mailboxes.c.local.is_(True), mailboxes.c.retired_at.is_(None)))
_ADDRESS_LIKE = re.compile(r"[^\s<>\"'(),;:@]+@[^\s<>\"'(),;:@]+\.[^\s<>\"'(),;:@]+")


class _Receiver:
    """What both listeners do: resolve recipients, store, trace, audit."""

    protocol = "ESMTP"  # the `with` of Received: minus the S/A suffixes (RFC 3848)
    audit_prefix = ""  # audit actions are <prefix>.accept and <prefix>.refuse

    def __init__(self, engine: AsyncEngine, store: MailStore, audit: AuditTrail, trust: TrustSpace, *,
                 domains: tuple[str, ...], hostname: str, limits: SmtpLimits) -> None:
        self._engine = engine
        self._store = store
        self._audit = audit
        self._trust = trust
        self._domains = frozenset(domains)
        self._hostname = hostname
        self._limits = limits

    def actor(self, session: Any) -> Actor:
        raise NotImplementedError

    async def handle_exception(self, error: Exception) -> str:
        """A fault of ours (the store unreachable, a bug) is temporary for the client, which will
        retry; the details go to our log, never to the peer."""
        if isinstance(error, TLSSetupException):  # the client's handshake failed: its problem, not a fault
            log.info("STARTTLS failed: %s", error.__cause__ or error)
            return "454 4.7.0 TLS not available: the handshake failed"
        log.error("SMTP session failed: %s: %s", error.__class__.__name__, error, exc_info=error)
        return "451 4.3.0 Temporary server error, please try again later"

    async def remote_recipient(self, session: Any, recipient: str, domain: str) -> str | None:
        """None to queue a remote recipient for relay, or the refusal to send."""
        raise NotImplementedError

    async def check_message(self, session: Any, envelope: MsanteEnvelope, header: Header) -> str | None:
        """None if the message may be stored, else the refusal to send."""
        raise NotImplementedError

    async def check_size(self, session: Any, envelope: MsanteEnvelope, header: Header, beyond_caps: bool) -> str | None:
        """Both listeners: what IMAP could not show whole is refused rather than stored."""
        limits = self._limits
        if header.size > limits.max_header_size or header.truncated:
            reason, refusal = "header too large", (f"552 5.3.4 The message header is too large: at most "
                                                   f"{limits.max_header_size} octets")
        elif len(header.fields) > limits.max_header_fields:
            reason, refusal = "too many header fields", (f"552 5.3.4 The message has too many header fields: at "
                                                         f"most {limits.max_header_fields}")
        elif beyond_caps:
            reason, refusal = "MIME structure too large", (f"554 5.6.0 The message nests MIME parts deeper than "
                                                           f"{MAX_DEPTH} levels or has more than {MAX_PARTS} parts")
        else:
            return None
        await self.refused(session, envelope.mail_from, reason, header_size=header.size, fields=len(header.fields))
        return refusal

    async def handle_RCPT(self, server: Any, session: Any, envelope: MsanteEnvelope, address: str,
                          rcpt_options: list[str]) -> str:
        local_part, _, domain = address.strip().rpartition("@")
        try:
            domain = a_label(domain)
        except TrustListError:
            domain = ""
        if not local_part or not domain:
            return f"501 5.1.3 <{address}> is not a valid address"
        recipient = f"{local_part.lower()}@{domain}"
        if recipient in envelope.rcpt_tos:  # the same box twice gets the message once (RFC 5321 §3.3)
            return "250 2.1.5 Recipient OK (already listed)"
        if len(envelope.rcpt_tos) >= self._limits.max_recipients:
            return f"452 4.5.3 Too many recipients: at most {self._limits.max_recipients} per message"
        mailbox_id: int | None = None
        if domain in self._domains:
            async with self._engine.connect() as conn:
                row = await _LOCAL_BOX.first(conn, {"address": recipient})
            if row is None:
                await self.refused(session, recipient, "unknown local recipient")
                return f"550 5.1.1 <{recipient}>: no such mailbox here; check the address in the directory"
            mailbox_id = row.id
        else:
            refusal = await self.remote_recipient(session, recipient, domain)
            if refusal:
                return refusal
        envelope.rcpt_tos.append(recipient)
        envelope.rcpt_options.extend(rcpt_options)
        envelope.routes.append(mailbox_id)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: MsanteEnvelope) -> str:
        raw: bytes = envelope.original_content
        header = read_header(raw)  # the client's own header: what the policy checks
        added = self.completed(header)
        stored = self._received(session, server, envelope) + added + raw
        # Read once, as stored, by the reader IMAP uses: what is checked here is what clients are
        # shown, and the facts IMAP keeps are learnt here rather than in the write that every
        # session's 250 waits on (the 1 MB profile: a tenth of the loop's time was in that write).
        # Up to 25 MB: parsed off the loop, but not a message of a few KB, whose parse (bounded by
        # MAX_PARTS: ~15 ms for the worst 64 KB) costs less than the trip to a thread.
        message = Message(stored)
        on_loop = len(stored) <= PARSE_ON_LOOP
        beyond_caps = message.beyond_caps if on_loop else await asyncio.to_thread(lambda: message.beyond_caps)
        refusal = (await self.check_size(session, envelope, header, beyond_caps)
                   or await self.check_message(session, envelope, header))
        if refusal:
            return refusal
        facts = facts_from(message) if on_loop else await asyncio.to_thread(facts_from, message)
        message_id = message.header.get("message-id") or ""  # the client's, or the one added
        recipients = [Recipient(address, rcpt_dsn, mailbox_id) for address, rcpt_dsn, mailbox_id
                      in zip(envelope.rcpt_tos, envelope.rcpt_dsn, envelope.routes)]
        sender = "" if envelope.mail_from == NULL_SENDER else envelope.mail_from
        accepted = await self._store.accept(
            message=stored, message_id=message_id, sender=sender, actor=self.actor(session), audit=self._audit,
            audit_action=f"{self.audit_prefix}.accept", source=peer_address(session), mail_dsn=envelope.dsn,
            recipients=recipients, facts=facts)
        return f"250 2.0.0 Stored as {accepted.envelope_id}"

    def completed(self, header: Header) -> bytes:
        """Header fields this listener adds to a message that lacks them; none by default."""
        return b""

    def _received(self, session: Any, server: Any, envelope: MsanteEnvelope) -> bytes:
        """RFC 5321 §4.4 trace header; `with` per RFC 3848 (S: TLS, A: authenticated)."""
        tls = server.ssl_object
        protocol = self.protocol
        if any(ord(ch) > 127 for ch in envelope.mail_from + "".join(envelope.rcpt_tos)):
            protocol = "UTF8" + protocol.removeprefix("E")
        protocol += ("S" if tls else "") + ("A" if session.authenticated else "")
        tls_text = f" ({tls.version()} {tls.cipher()[0]})" if tls else ""
        actor = self.actor(session)
        stamp = email.utils.format_datetime(datetime.now(timezone.utc))
        text = (f"Received: from {session.host_name} ([{peer_address(session)}])\r\n\tby {self._hostname} (msante) with "
                f"{protocol}{tls_text}\r\n\t({'authenticated as' if session.authenticated else 'peer'} "
                f"{actor.kind} {actor.id}) id {secrets.token_hex(8)};\r\n\t{stamp}\r\n")
        return text.encode("utf-8")

    async def refused(self, session: Any, target: str, reason: str, **detail: Any) -> None:
        await self._audit.record(self.actor(session), f"{self.audit_prefix}.refuse", target=target,
                                 outcome="denied", source=peer_address(session), reason=reason, **detail)


class SubmissionHandler(_Receiver):
    """People and hospital systems, authenticated: they send as a box they may use, to local
    boxes or to trust-space domains (queued for relay)."""

    audit_prefix = "smtp"

    def actor(self, session: Any) -> Actor:
        return session.auth_data.principal.actor

    async def handle_MAIL(self, server: Any, session: Any, envelope: MsanteEnvelope, address: str,
                          mail_options: list[str]) -> str:
        principal = session.auth_data.principal
        sender = address.strip().lower()
        async with self._engine.connect() as conn:
            grant = await grant_for(conn, principal, sender)
        if grant is None:
            await self.refused(session, sender, "sender not allowed")
            return (f"550 5.7.1 {principal.display} may not send as <{sender}>: use your own mailbox or "
                    f"an organisational mailbox you are delegated to")
        envelope.mail_from = sender
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Sender OK"

    def completed(self, header: Header) -> bytes:
        """RFC 6409 §8.2-8.3: a submission server adds the Date: and Message-ID: a client left
        out (RFC 5322 §3.6 requires the one, strongly advises the other; threading, IMAP
        ENVELOPE and duplicate detection at the recipient's end rely on them). The relay
        listener never does: another operator's mail is not ours to change."""
        added = b""
        if header.get("date") is None:
            added += f"Date: {email.utils.format_datetime(datetime.now(timezone.utc))}\r\n".encode()
        if header.get("message-id") is None:
            added += f"Message-ID: <{secrets.token_hex(16)}@{self._hostname}>\r\n".encode()
        return added

    async def remote_recipient(self, session: Any, recipient: str, domain: str) -> str | None:
        if await self._trust.contains(domain):
            return None
        await self.refused(session, recipient, "domain outside the trust space")
        return (f"550 5.7.1 <{recipient}>: the domain {domain} is outside the MSSanté trust space; "
                f"secure messaging only reaches trust-space domains")

    async def check_message(self, session: Any, envelope: MsanteEnvelope, header: Header) -> str | None:
        """The From: is the mailbox of MAIL FROM, alone, under a name that names no other
        address; a Sender: is a mailbox the sender may use. Field names must be well formed
        (RFC 5322 §3.6.8), since readers that disagree on them disagree on who sent the mail."""
        sender = envelope.mail_from
        malformed = header.malformed
        if malformed:
            name = malformed[0].raw.split(b"\n", 1)[0].split(b":", 1)[0][:60].decode("ascii", "replace")
            await self.refused(session, sender, "malformed header field name", field=name)
            return (f"554 5.6.0 Malformed header field {name!r}: a field name is printable characters "
                    f"followed directly by a colon")
        froms = header.all("from")
        if len(froms) > 1:
            await self.refused(session, sender, "more than one From header", count=len(froms))
            return f"554 5.6.0 The message has {len(froms)} From: fields; it must have exactly one"
        from_addresses = parse_addresses(froms[0].value) if froms else []
        found = [_mailbox(a) for a in from_addresses]
        if found != [sender]:
            await self.refused(session, sender, "From header does not match the sender", from_header=found)
            return (f"550 5.7.1 The From: header must be exactly <{sender}>, the mailbox you send as "
                    f"(found {', '.join(a or 'a group' for a in found) or 'none'})")
        senders = header.all("sender")
        sender_addresses = parse_addresses(senders[0].value) if len(senders) == 1 else []
        if senders and (len(senders) > 1 or len(sender_addresses) != 1 or not await self._may_use(
                session, _mailbox(sender_addresses[0]))):
            shown = ", ".join(_mailbox(a) or "a group" for a in sender_addresses) or "several"
            await self.refused(session, sender, "Sender header not allowed", sender_header=shown)
            return (f"550 5.7.1 The Sender: header must be one mailbox you may send as (found {shown})")
        for address in from_addresses + sender_addresses:
            named = _address_in_name(address)
            if named:
                await self.refused(session, sender, "display name holds another address", name=named)
                return (f"550 5.7.1 The display name names another address ({named}) than the mailbox "
                        f"<{_mailbox(address)}>: readers would take it for the sender")
        return None

    async def _may_use(self, session: Any, address: str | None) -> bool:
        if not address:
            return False
        async with self._engine.connect() as conn:
            return await grant_for(conn, session.auth_data.principal, address) is not None


class RelayHandler(_Receiver):
    """Other operators of the trust space, identified by their TLS certificate: mail from
    their domains (or reports, with the null sender) to our own boxes only."""

    audit_prefix = "relay"

    def __init__(self, *args: Any, routes: dict[str, str], revocations: Revocations, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._route_hosts = {domain: hostport.rpartition(":")[0] for domain, hostport in routes.items()}
        self._revocations = revocations

    def actor(self, session: Any) -> Actor:
        identity = getattr(session, "peer_identity", None)
        return Actor(identity.hosts[0] if identity and identity.hosts else "-", "server")

    async def check_tls_peer(self, server: Any, session: Any) -> str | None:
        """Right after STARTTLS: the handshake verified the chain, here the CRL."""
        cert = peer_certificate(server.ssl_object)
        if cert is None:
            return None  # handle_MAIL answers 530
        try:
            self._revocations.check(cert)
        except CertificateError as exc:
            await self.refused(session, cert.subject.rfc4514_string()[:320], "certificate revoked", error=str(exc))
            return f"421 4.7.1 Your certificate is refused: {exc}"
        return None

    async def handle_MAIL(self, server: Any, session: Any, envelope: MsanteEnvelope, address: str,
                          mail_options: list[str]) -> str:
        identity = peer_identity(server.ssl_object) if server.ssl_object else None
        session.peer_identity = identity
        if identity is None:
            return "530 5.7.0 Relay needs TLS with an operator certificate of the trust space"
        sender = address.strip().lower()
        if sender != NULL_SENDER:
            domain = a_label(sender.rpartition("@")[2]) if "@" in sender else ""
            if not domain or not await self._trust.contains(domain) or domain in self._domains:
                await self.refused(session, sender, "sender domain outside the trust space")
                return f"550 5.7.1 <{sender}>: the sending domain is not a domain of the MSSanté trust space"
            operators = await self._trust.operators(domain)
            if operators:
                if dn_of(peer_certificate(server.ssl_object).subject) not in operators:
                    await self.refused(session, sender, "certificate is not an operator of the domain in the "
                                       "white list", certificate=identity.subject)
                    return (f"550 5.7.1 Your certificate ({identity.subject}) is not one the MSSanté white list "
                            f"gives for {domain}")
            elif not {domain, self._route_hosts.get(domain, domain)} & {h.lower() for h in identity.hosts}:
                await self.refused(session, sender, "certificate does not match the sending operator",
                                   certificate=list(identity.hosts))
                return (f"550 5.7.1 Your certificate ({', '.join(identity.hosts)}) is not the operator of "
                        f"{domain}")
        envelope.mail_from = sender
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Sender OK"

    async def remote_recipient(self, session: Any, recipient: str, domain: str) -> str | None:
        await self.refused(session, recipient, "relaying denied")
        return f"550 5.7.1 <{recipient}>: relaying denied, this server only takes mail for its own domains"

    async def check_message(self, session: Any, envelope: MsanteEnvelope, header: Header) -> str | None:
        hops = len(header.all("received"))
        if hops < MAX_HOPS:
            return None
        await self.refused(session, envelope.mail_from, "mail loop", hops=hops)
        return f"554 5.4.6 Too many hops ({hops} Received: headers): mail loop"


def _mailbox(address: Address) -> str | None:
    """local@domain, lower-cased, as MAIL FROM is compared; None for a group marker."""
    _, _, local, domain = address
    return f"{local}@{domain}".lower() if local is not None and domain is not None else None


def _address_in_name(address: Address) -> str | None:
    """An address other than the mailbox's own written in its display name (RFC 2047 words
    decoded first: that is what a mail client shows)."""
    name = address[0]
    if not name:
        return None
    try:
        name = str(make_header(decode_header(name)))
    except Exception:  # broken encoded words: look at the text as written
        pass
    own = _mailbox(address)
    return next((m.group() for m in _ADDRESS_LIKE.finditer(name) if m.group().lower() != own), None)

