"""The outbound queue: mail for other operators of the trust space, delivered over mutual TLS.

Queued rows are `deliveries` with status `queued`, written in the same transaction as the
`250` that accepted them, so the queue survives crashes by construction. One connection per
destination carries every due message for it, or, when a backlog allows, up to
`[relay] connections_per_destination` connections share them (one connection sends its messages
one after another, each waiting for the peer's commit: a backlog would drain at one peer fsync
per message, where parallel connections let the peer commit several at once). Each remote answer is committed as soon as it
is known: a message whose DATA got `250` is marked `relayed` before the next one is sent, so
a crash can at worst re-send the one message whose `250` was in flight (the RFC 1047 window),
and never drops one. Temporary failures (4xx, refused connection, TLS failure) back off
exponentially until `relay.lifetime`; so does a peer whose certificate is revoked or not one
the white list gives for the destination domain (`_check_peer`, 4.7.5: a wrong certificate is
more often a configuration being changed than a lost cause, and the mail must not go there
meanwhile). Permanent ones (5xx) and expiry produce a failure report (RFC 3464),
`NOTIFY=DELAY` a delay report once, and a remote without DSN a `relayed` report when success
was asked for (RFC 3461 §5.2.2).

Every node runs the queue: a pass claims a batch of due deliveries with a lease (store/lease.py),
renewed while it sends, and each outcome commits clearing it; a dead node's deliveries are taken
over when their lease ends. Mail to another operator is therefore at-least-once, as SMTP is:
a node killed after the remote's `250` to DATA and before the commit of `relayed` (milliseconds:
the transaction of that message's rows, audit and receipts, before anything else is sent) leaves
the delivery queued, and the node that takes it over after its lease sends it again. Nothing
else is sent twice: a message is sent only while its lease surely runs (`Lease.holds`), and an
outcome is written only on rows still leased here.

The SMTP client is the standard library's, run in the queue's own threads, one per open
connection: it is blocking, but it is the most exercised client there is. The threads are the
queue's own because asyncio's default pool has only cores + 4 of them, shared with the rest.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import smtplib
import socket
import ssl
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import and_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from certs.dn import Dn, dn_of
from certs.pki import CertificateError
from certs.revocation import Revocations
from certs.tls import peer_certificate
from hospital import receipts
from store.audit import Actor, AuditTrail
from store.db import utc
from store.events import EventBus, run_job
from store.lease import LEASE_SECONDS, Lease
from store.schema import bodies, deliveries, envelopes
from web.metrics import DELIVERIES

from . import dsn
from .mailstore import QUEUE_CHANNEL, MailStore, free_bodies
from .trust import TrustSpace

log = logging.getLogger("msante.outbound")

BATCH = 500  # due deliveries read per pass
PER_CONNECTION = 100  # messages before a fresh connection: receivers cap a session (msante: 200 MAIL)
CONNECTIONS_AT_ONCE = 50  # open at once, all destinations together (Postfix: default_process_limit 100)
IDLE_POLL = 30.0  # seconds between passes when nothing wakes the queue
CONNECT_TIMEOUT = 30.0  # seconds; RFC 5321 §4.5.3.2 suggests 5 minutes per command, connections fail faster


@dataclass
class _Recipient:
    delivery_id: int
    address: str
    notify: frozenset[str]
    orcpt: tuple[str, str] | None
    attempts: int
    delay_reported: bool


@dataclass
class _Message:
    envelope_id: int
    body_id: int
    sender: str
    envid: str | None
    ret: str | None
    received_at: datetime
    recipients: list[_Recipient]


@dataclass(frozen=True)
class _Answer:
    code: int
    text: str
    lost: bool = False  # the connection is gone: the next message needs a new one

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600

    @property
    def accepted(self) -> bool:
        return 200 <= self.code < 300


class PeerRefused(Exception):
    """The peer's TLS certificate is not one mail for the domain may go to."""


class OutboundQueue:
    def __init__(self, engine: AsyncEngine, store: MailStore, bus: EventBus, audit: AuditTrail, trust: TrustSpace,
                 revocations: Revocations, *, hostname: str, routes: dict[str, str], client_tls: ssl.SSLContext, retry_base: int,
                 retry_max: int, lifetime: int, delay_warning: int, connections: int = 10,
                 lease_seconds: float = LEASE_SECONDS) -> None:
        self._engine = engine
        self._lease = Lease(engine, deliveries, seconds=lease_seconds, writes=store.writes)
        self._store = store
        self._bus = bus
        self._audit = audit
        self._trust = trust
        self._revocations = revocations
        self._hostname = hostname
        self._routes = routes
        self._tls = client_tls
        self._retry_base = retry_base
        self._retry_max = retry_max
        self._lifetime = timedelta(seconds=lifetime)
        self._delay_warning = timedelta(seconds=delay_warning)
        self._actor = Actor(hostname, "server")
        self._per_destination = connections
        self._threads = ThreadPoolExecutor(CONNECTIONS_AT_ONCE, thread_name_prefix="relay")

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver what is due, then sleep until something is queued, a retry falls due, or stop."""
        await self._lease.recover(deliveries.c.status == "queued")
        try:
            await run_job(self._bus, QUEUE_CHANNEL, stop, self.run_once, self._seconds_to_next_due, "outbound queue")
        finally:
            self._threads.shutdown(wait=False)

    async def _blocking(self, function, *args):  # noqa: ANN001, ANN202
        return await asyncio.get_running_loop().run_in_executor(self._threads, functools.partial(function, *args))

    async def run_once(self) -> None:
        """Claim a batch of due deliveries, send them, and give back what was not decided."""
        async with self._lease.working():
            await self._deliver(await self._due())

    async def _deliver(self, due: list[_Message]) -> None:
        by_domain: dict[str, list[_Message]] = defaultdict(list)
        for message in due:
            domains = {r.address.rpartition("@")[2] for r in message.recipients}
            for domain in domains:
                part = [r for r in message.recipients if r.address.rpartition("@")[2] == domain]
                by_domain[domain].append(_Message(**{**message.__dict__, "recipients": part}))
        limit = asyncio.Semaphore(CONNECTIONS_AT_ONCE)

        async def one(domain: str, messages: list[_Message]) -> None:
            async with limit:
                await self._deliver_domain(domain, messages)
        await asyncio.gather(*(one(d, part) for d, m in by_domain.items()
                               for part in _shares(m, self._per_destination)))

    async def _due(self) -> list[_Message]:
        now = datetime.now(timezone.utc)
        ids = await self._lease.claim(and_(deliveries.c.status == "queued", deliveries.c.next_attempt_at <= now),
                                      [deliveries.c.next_attempt_at, deliveries.c.id], BATCH)
        if not ids:
            return []
        query = (select(deliveries.c.id, deliveries.c.recipient, deliveries.c.notify, deliveries.c.orcpt,
                        deliveries.c.attempts, deliveries.c.delay_reported, envelopes.c.id.label("envelope_id"),
                        envelopes.c.body_id, envelopes.c.sender, envelopes.c.envid, envelopes.c.ret,
                        envelopes.c.received_at)
                 .join(envelopes, envelopes.c.id == deliveries.c.envelope_id)
                 .where(deliveries.c.id.in_(ids), deliveries.c.status == "queued")
                 .order_by(deliveries.c.next_attempt_at, deliveries.c.id))
        messages: dict[int, _Message] = {}
        async with self._engine.connect() as conn:
            for row in await conn.execute(query):
                message = messages.get(row.envelope_id)
                if message is None:
                    message = messages[row.envelope_id] = _Message(
                        row.envelope_id, row.body_id, row.sender, row.envid or None, row.ret or None,
                        utc(row.received_at), [])
                orcpt = tuple(row.orcpt.split(";", 1)) if row.orcpt else None
                message.recipients.append(_Recipient(row.id, row.recipient, frozenset(filter(None, row.notify.split(","))),
                                                     orcpt, row.attempts, row.delay_reported))
        return list(messages.values())

    async def _seconds_to_next_due(self) -> float:
        """Until a retry falls due, or another node's lease on a delivery ends (it may be dead)."""
        soonest = await self._lease.next_claimable(deliveries.c.status == "queued", deliveries.c.next_attempt_at)
        if soonest is None:
            return IDLE_POLL
        return max(0.05, min(IDLE_POLL, (soonest - datetime.now(timezone.utc)).total_seconds()))

    def _route(self, domain: str) -> tuple[str, int]:
        """The configured route, else the domain itself on port 25 (RFC 5321 §5.1 implicit MX)."""
        target = self._routes.get(domain, f"{domain}:25")
        host, _, port = target.rpartition(":")
        return host, int(port)

    async def _deliver_domain(self, domain: str, messages: list[_Message]) -> None:
        """`messages` over one connection at a time, up to PER_CONNECTION each; a connection that
        drops is replaced for the messages after the one it dropped on."""
        host, port = self._route(domain)
        operators = await self._trust.operators(domain)
        pending = list(messages)
        while pending:
            try:
                client = await self._blocking(self._connect, host, port, domain, operators)
            except (OSError, smtplib.SMTPException, ssl.SSLError, PeerRefused) as exc:
                answer = (_Answer(421, f"4.7.5 {host}:{port}: {exc}"[:500]) if isinstance(exc, PeerRefused) else
                          _Answer(421, f"cannot reach {host}:{port}: {exc.__class__.__name__}: {exc}"[:500]))
                log.warning("relay to %s: %s", domain, answer.text)
                for message in pending:
                    await self._record(message, {r.address: answer for r in message.recipients}, dsn_remote=False)
                return
            try:
                dsn_remote = client.has_extn("dsn")
                sent = 0
                while pending and sent < PER_CONNECTION:
                    if not self._lease.holds():  # another node may take these over: leave them to it
                        log.warning("relay to %s: leases not renewed in time; %d messages left for another pass",
                                    domain, len(pending))
                        return
                    message = pending.pop(0)
                    sent += 1
                    async with self._engine.connect() as conn:
                        data = (await conn.execute(
                            select(bodies.c.data).where(bodies.c.id == message.body_id))).scalar_one()
                    answers = await self._blocking(_send, client, message, data, dsn_remote)
                    await self._record(message, answers, dsn_remote=dsn_remote)
                    if any(answer.lost for answer in answers.values()):
                        break
            finally:
                await self._blocking(_quit, client)

    def _connect(self, host: str, port: int, domain: str, operators: frozenset[Dn]) -> smtplib.SMTP:
        client = smtplib.SMTP(host, port, local_hostname=self._hostname, timeout=CONNECT_TIMEOUT)
        try:
            client.ehlo()
            if not client.has_extn("starttls"):
                raise smtplib.SMTPException(f"{host} offers no STARTTLS: mail is never relayed in clear")
            client.starttls(context=self._tls)
            self._check_peer(client, domain, operators)
            client.ehlo()
        except BaseException:
            client.close()
            raise
        return client

    def _check_peer(self, client: smtplib.SMTP, domain: str, operators: frozenset[Dn]) -> None:
        """The handshake checked the chain and the host name; here the CRLs, and which operator
        certificates the white list gives for `domain` (none listed: the host name suffices)."""
        cert = peer_certificate(client.sock)
        if cert is None:  # cannot happen with CERT_REQUIRED; refuse rather than assume
            raise PeerRefused("no server certificate")
        try:
            self._revocations.check(cert)
        except CertificateError as exc:
            raise PeerRefused(f"{cert.subject.rfc4514_string()}: {exc}") from None
        if operators and dn_of(cert.subject) not in operators:
            raise PeerRefused(f"certificate {cert.subject.rfc4514_string()} is not one the MSSanté white list "
                              f"gives for {domain}")

    async def _record(self, message: _Message, answers: dict[str, _Answer], *, dsn_remote: bool) -> None:
        """Commit what the remote said, for each recipient, before anything else is sent. On the
        mail store's group commit: the outcomes of parallel connections share a transaction, and
        on SQLite none of them waits out the busy backoff of a write lock taken by another."""
        now = datetime.now(timezone.utc)
        expires = message.received_at + self._lifetime

        async def write(conn: AsyncConnection) -> tuple[list[str], list]:
            reports: list[dsn.RecipientStatus] = []
            outcomes: list[str] = []
            events: list = []  # published once committed: reports to boxes, receipts to care circles
            for rcpt in message.recipients:
                answer = answers[rcpt.address]
                diagnostic = f"{answer.code} {answer.text}"  # the reply; dsn.py writes the "smtp;" type
                values: dict[str, Any] = {"attempts": rcpt.attempts + 1, "last_error": "", "updated_at": now}
                report = None
                if answer.accepted:
                    values["status"] = outcome = "relayed"
                    if "SUCCESS" in rcpt.notify and not dsn_remote:
                        report = self._status(rcpt, "relayed", "2.0.0", None, now)
                elif answer.permanent or now >= expires:
                    values.update(status="failed", last_error=answer.text)
                    outcome = "failed"
                    status = _enhanced(answer) if answer.permanent else "4.4.7"
                    if "FAILURE" in rcpt.notify:
                        report = self._status(rcpt, "failed", status, diagnostic, now)
                else:
                    wait = min(self._retry_base * 2 ** rcpt.attempts, self._retry_max)
                    values.update(next_attempt_at=now + timedelta(seconds=wait), last_error=answer.text)
                    outcome = "deferred"
                    if ("DELAY" in rcpt.notify and not rcpt.delay_reported
                            and now - message.received_at >= self._delay_warning):
                        values["delay_reported"] = True
                        report = self._status(rcpt, "delayed", _enhanced(answer, "4.4.1"), diagnostic, now,
                                              will_retry_until=expires)
                written = await conn.execute(update(deliveries).where(
                    deliveries.c.id == rcpt.delivery_id, self._lease.mine()).values(**values, **self._lease.cleared()))
                if written.rowcount != 1:  # taken over by another node, which decides it (and may send it again)
                    log.warning("delivery %d to %s: lease lost before its outcome (%d) was recorded",
                                rcpt.delivery_id, rcpt.address, answer.code)
                    continue
                outcomes.append(outcome)
                reports += [report] if report else []
                if values.get("status"):  # a hospital notice's receipt, if this mail is one
                    events += await receipts.relayed(conn, message.envelope_id, rcpt.address,
                                                     "sent" if answer.accepted else "failed", values["last_error"],
                                                     now)
                await self._audit.record(self._actor, "relay.send", target=rcpt.address, conn=conn,
                                         outcome="ok" if answer.accepted else "failed",
                                         envelope=message.envelope_id, answer=f"{answer.code} {answer.text}"[:300])
            if reports:
                body = (await conn.execute(select(bodies.c.data).where(bodies.c.id == message.body_id))).scalar_one()
                events += await self._store.report(conn, sender=message.sender, envid=message.envid, ret=message.ret,
                                                  arrival=message.received_at, statuses=reports, original=body)
            await free_bodies(conn, [message.body_id])  # kept while a delivery or a folder needs it
            return outcomes, events
        outcomes, events = await self._store.writes.run(write)
        for outcome in outcomes:  # once committed: a rolled-back attempt is made again
            DELIVERIES.labels(outcome=outcome).inc()
        await self._store.publish(events)

    @staticmethod
    def _status(rcpt: _Recipient, action: str, status: str, diagnostic: str | None, now: datetime,
                will_retry_until: datetime | None = None) -> dsn.RecipientStatus:
        return dsn.RecipientStatus(final_recipient=rcpt.address, action=action, status=status,
                                   diagnostic=diagnostic, original_recipient=rcpt.orcpt, last_attempt=now,
                                   will_retry_until=will_retry_until)


def _shares(messages: list[_Message], connections: int) -> list[list[_Message]]:
    """A destination's messages dealt round-robin over up to `connections` connections, so each
    starts with the oldest it has; one message, one connection."""
    count = min(connections, len(messages))
    return [messages[i::count] for i in range(count)]


def _send(client: smtplib.SMTP, message: _Message, data: bytes, dsn_remote: bool) -> dict[str, _Answer]:
    """One transaction on an open connection; every recipient gets the answer that decides it."""
    mail_options = []
    if client.has_extn("8bitmime") and any(b > 127 for b in data):
        mail_options.append("BODY=8BITMIME")
    if any(ord(ch) > 127 for ch in message.sender + "".join(r.address for r in message.recipients)):
        mail_options.append("SMTPUTF8")
    if dsn_remote:
        mail_options += [f"RET={message.ret}"] if message.ret else []
        mail_options += [f"ENVID={dsn.xtext_encode(message.envid)}"] if message.envid else []
    try:
        code, text = client.mail(message.sender, mail_options)
        if code != 250:
            client.rset()
            return {r.address: _Answer(code, _text(text)) for r in message.recipients}
        answers: dict[str, _Answer] = {}
        accepted = []
        for rcpt in message.recipients:
            options = []
            if dsn_remote:
                options.append("NOTIFY=" + (",".join(sorted(rcpt.notify)) or "FAILURE,DELAY"))
                if rcpt.orcpt:
                    options.append(f"ORCPT={rcpt.orcpt[0]};{dsn.xtext_encode(rcpt.orcpt[1])}")
            code, text = client.rcpt(rcpt.address, options)
            answers[rcpt.address] = _Answer(code, _text(text))
            if code in (250, 251):
                accepted.append(rcpt.address)
        if not accepted:
            client.rset()
            return answers
        code, text = client.data(data)
        for address in accepted:
            answers[address] = _Answer(code, _text(text))
        return answers
    except smtplib.SMTPServerDisconnected as exc:
        return {r.address: _Answer(421, f"connection lost: {exc}", lost=True) for r in message.recipients}
    except smtplib.SMTPResponseException as exc:
        return {r.address: _Answer(exc.smtp_code, _text(exc.smtp_error)) for r in message.recipients}
    except (OSError, socket.timeout) as exc:
        return {r.address: _Answer(421, f"{exc.__class__.__name__}: {exc}", lost=True) for r in message.recipients}


def _quit(client: smtplib.SMTP) -> None:
    try:
        client.quit()
    except (smtplib.SMTPException, OSError):
        client.close()


def _text(text: bytes | str) -> str:
    return (text.decode("utf-8", "replace") if isinstance(text, bytes) else text).replace("\n", " ")[:500]


def _enhanced(answer: _Answer, default: str | None = None) -> str:
    """The enhanced code the remote gave (RFC 3463), else one of the reply's class."""
    first = answer.text.split(" ", 1)[0]
    parts = first.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts) and parts[0] == str(answer.code)[0]:
        return first
    return default or f"{str(answer.code)[0]}.0.0"


async def queued(engine: AsyncEngine) -> list[dict[str, Any]]:
    """The queue as the operator sees it (`msante queue list`)."""
    query = (select(deliveries.c.id, deliveries.c.recipient, deliveries.c.attempts, deliveries.c.next_attempt_at,
                    deliveries.c.last_error, envelopes.c.sender, envelopes.c.received_at, envelopes.c.size)
             .join(envelopes, envelopes.c.id == deliveries.c.envelope_id)
             .where(deliveries.c.status == "queued").order_by(deliveries.c.id))
    async with engine.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(query)]


async def retry_now(engine: AsyncEngine, delivery_id: int) -> bool:
    """Make a queued delivery due at once (the running queue picks it up on its next pass)."""
    async with engine.begin() as conn:
        result = await conn.execute(update(deliveries).where(and_(
            deliveries.c.id == delivery_id, deliveries.c.status == "queued")).values(
            next_attempt_at=datetime.now(timezone.utc)))
    return bool(result.rowcount)


async def bounce(engine: AsyncEngine, store: MailStore, delivery_id: int, reason: str) -> bool:
    """Give up on a queued delivery now: failed, with a failure report if the sender asked."""
    now = datetime.now(timezone.utc)
    async with engine.begin() as conn:
        row = (await conn.execute(
            select(deliveries.c.envelope_id, deliveries.c.recipient, deliveries.c.notify, deliveries.c.orcpt,
                   envelopes.c.sender, envelopes.c.envid, envelopes.c.ret, envelopes.c.received_at, envelopes.c.body_id, bodies.c.data)
            .join(envelopes, envelopes.c.id == deliveries.c.envelope_id)
            .join(bodies, bodies.c.id == envelopes.c.body_id)
            .where(deliveries.c.id == delivery_id, deliveries.c.status == "queued"))).first()
        if row is None:
            return False
        await conn.execute(update(deliveries).where(deliveries.c.id == delivery_id).values(
            status="failed", last_error=reason, updated_at=now, **Lease.cleared()))  # a sender's outcome is refused
        events = await receipts.relayed(conn, row.envelope_id, row.recipient, "failed", reason, now)
        if "FAILURE" in row.notify.split(","):
            status = dsn.RecipientStatus(final_recipient=row.recipient, action="failed", status="5.0.0",
                                         diagnostic=None, last_attempt=now,
                                         original_recipient=tuple(row.orcpt.split(";", 1)) if row.orcpt else None)
            events += await store.report(conn, sender=row.sender, envid=row.envid or None, ret=row.ret or None,
                                        arrival=utc(row.received_at), statuses=[status], original=row.data)
        await free_bodies(conn, [row.body_id])
    await store.publish(events)
    return True
