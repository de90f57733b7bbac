"""The HL7 listener: MLLP inside mutual TLS, one hospital system per connection.

The TLS handshake requires a client certificate chaining to a trusted CA (the listener's
context); `Authenticator.by_certificate` then checks it again with revocation, audits the
login and maps it to an active local applicative box. Its structure (and that structure's
FINESS) is who the connection speaks for. Anything else (a personal card, an unknown box,
a box of no structure) is cut after the handshake: MLLP has no way to say why, the audit
trail does.

Messages on one connection are answered in order, one at a time, as MLLP senders expect
(they wait for each ACK before sending the next). Framing errors (bytes outside a frame, a
frame beyond [hl7] max_frame: hospital/mllp.py) close the connection with a log line and an
audit row.
"""
from __future__ import annotations

import asyncio
import logging
import time

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from certs.tls import peer_certificate
from directory.authn import Authenticator, AuthError
from store.audit import AuditTrail
from store.schema import mailboxes, organisations
from web.metrics import HL7_ACK_SECONDS

from . import ack, mllp
from .feed import Feed, Sender

log = logging.getLogger("msante.hl7")
READ_SIZE = 256 * 1024
IDLE_TIMEOUT = 3600.0  # seconds without a byte: interface engines keep connections open for hours, not days


def connection_handler(engine: AsyncEngine, authenticator: Authenticator, audit: AuditTrail, feed: Feed, *,  # noqa: ANN201
                       max_frame: int):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        source = peer[0] if isinstance(peer, tuple) else str(peer or "")
        sender = await _sender(engine, authenticator, audit, writer, source)
        if sender is None:
            return
        frames = mllp.FrameReader(max_frame)
        while True:
            try:
                data = await asyncio.wait_for(reader.read(READ_SIZE), IDLE_TIMEOUT)
            except asyncio.TimeoutError:
                return
            if not data:
                if frames.pending:
                    log.warning("hl7: %s (%s) closed in the middle of a frame", sender.mailbox, source)
                return
            try:
                messages = frames.feed(data)
            except mllp.FramingError as exc:
                log.warning("hl7: %s (%s): %s; connection closed", sender.mailbox, source, exc)
                await audit.record(sender.actor, "hl7.framing", outcome="denied", source=source, reason=str(exc))
                return
            for message in messages:
                started = time.perf_counter()
                answer = await feed.receive(message, sender, source=source)
                writer.write(mllp.frame(answer))
                await writer.drain()
                HL7_ACK_SECONDS.labels(code=ack.code(answer)).observe(time.perf_counter() - started)
    return handle


async def _sender(engine: AsyncEngine, authenticator: Authenticator, audit: AuditTrail,
                  writer: asyncio.StreamWriter, source: str) -> Sender | None:
    ssl_object = writer.get_extra_info("ssl_object")
    cert = peer_certificate(ssl_object) if ssl_object is not None else None
    if cert is None:
        log.warning("hl7: %s presented no certificate", source)
        return None
    try:
        principal = await authenticator.by_certificate(cert, source=source, protocol="hl7")
    except AuthError as exc:  # audited by the authenticator
        log.warning("hl7: %s: %s", source, exc)
        return None
    if principal.kind != "application":
        log.warning("hl7: %s: %s is not an applicative certificate", source, principal.id)
        await audit.record(principal.actor, "hl7.refuse", outcome="denied", source=source,
                           reason="not an applicative certificate")
        return None
    async with engine.connect() as conn:
        row = (await conn.execute(
            select(mailboxes.c.organisation_id, organisations.c.finess)
            .select_from(mailboxes.join(organisations, organisations.c.id == mailboxes.c.organisation_id))
            .where(and_(mailboxes.c.address == principal.id, organisations.c.retired_at.is_(None))))).first()
    if row is None or not row.finess:
        log.warning("hl7: %s: the box %s belongs to no structure with a FINESS", source, principal.id)
        await audit.record(principal.actor, "hl7.refuse", outcome="denied", source=source,
                           reason="the box belongs to no structure with a FINESS")
        return None
    return Sender(principal.id, row.organisation_id, row.finess)
