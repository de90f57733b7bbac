"""The composition root: build the shared services once, plug every front-end into one event loop.

Front-ends (HTTPS now; SMTP, IMAP and the websocket layer as they land) get what they need
from `Services` and register a `Listener`; nothing else in the code base constructs engines,
verifiers or TLS contexts.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import ssl
import threading
from datetime import datetime, timezone
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from cryptography import x509
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from certs import tls
from certs.pki import CertificateError
from certs.revocation import Revocations
from certs.tokens import TokenVerifier
from directory.app_passwords import AppPasswords
from config import ConfigError, Settings
from directory.api import DirectoryApi
from directory.authn import Authenticator, audit_handshake_refusal
from directory.mailbox_api import MailboxApi
from hospital import incoming, retention
from hospital.dispatch import Dispatcher
from hospital.feed import Feed
from hospital.indicators_api import IndicatorsApi
from hospital.notifications_api import NotificationsApi
from hospital.listener import connection_handler as hl7_handler
from hospital.subscriptions import Subscriptions
from hospital.subscriptions_api import SubscriptionsApi
from instant.service import Instant
from mailserver.imap.folders import Folders
from mailserver.imap.server import connection_handler
from mailserver.imap.session import ImapContext
from mailserver.logins import Logins, SharedFailures
from mailserver.mailstore import MailStore
from mailserver.smtp import MsanteSMTP, SmtpLimits
from mailserver.outbound import OutboundQueue
from mailserver.submission import RelayHandler, SubmissionHandler
from mailserver.trust import TrustSpace
from mailserver.webmail import WebMail
from store import db
from store.db import utc
from store.audit import SERVER, AuditTrail
from store.events import EventBus, LocalBus
from store.redis_bus import RedisBus
from store.relay import Relay
from store.schema import deliveries, envelopes, mailboxes, professionals
from web.http import Request, Response, serve_connection
from web.metrics import CONTENT_TYPE, HTTP_REQUESTS, Exposition, gauge, process_exited
from web.oidc import DevSignIn
from web.router import Router
from web.autoconfig import Autoconfig
from web.wellknown import WellKnown

from .admission import Admission
from .listeners import Listener

log = logging.getLogger("msante")
SHUTDOWN_DEADLINE = 20.0  # seconds in-flight work gets after SIGTERM (systemd waits 90 s by default)
DEV_AUDIENCE = "msante"
# What a connection refused by `Admission` reads, in its listener's protocol.
IMAP_REFUSAL = b"* BYE [UNAVAILABLE] too many connections, try again later\r\n"  # RFC 3501 §7.1.5, RFC 5530
SMTP_REFUSAL = b"421 4.7.0 Too many connections, try again later\r\n"  # RFC 5321 §3.8, RFC 3463
HTTP_REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 10\r\n"
                b"content-length: 77\r\nconnection: close\r\n\r\n"
                b'{"error": "unavailable", "message": "too many connections, try again later"}\n')
HL7_REFUSAL = b""  # MLLP has no greeting nor refusal: a connection over the limits is just closed
DESCRIPTORS_SPARE = 256  # descriptors beyond the connections: database, logs, TLS files, outbound relay


@dataclass
class Services:
    settings: Settings
    engine: AsyncEngine
    audit: AuditTrail
    authenticator: Authenticator
    passwords: AppPasswords
    logins: Logins
    bus: EventBus  # this process's subscribers and, with [bus] url, every other process's
    local_bus: LocalBus  # this process's subscribers only: what the store relay feeds
    mailstore: MailStore
    trust: TrustSpace
    revocations: Revocations
    admission: Admission
    metrics: Exposition = field(default_factory=Exposition)
    router: Router = field(default_factory=Router)
    instant: Instant | None = None  # care circles, /ws and the web client: built by https_listener
    imap: ImapContext | None = None  # built by imap_listeners

    @classmethod
    async def open(cls, settings: Settings) -> "Services":
        engine = db.create_engine(settings.database_url)
        await db.upgrade(engine)
        audit = AuditTrail(engine)
        verifier = TokenVerifier(list(settings.issuers), settings.token_leeway)
        if any(i.issuer == settings.public_url for i in settings.issuers):
            log.warning("THE DEV TOKEN ISSUER IS TRUSTED ([auth] issuers names %s): whoever reads %s can sign "
                        "in as any professional. Development only: remove it in production.",
                        settings.public_url, settings.path("oidc"))
        cas = load_client_cas(settings)
        try:
            revocations = Revocations(settings.crls, cas, settings.crl_refresh)
        except CertificateError as exc:
            await engine.dispose()
            raise ConfigError(f"{settings.source}: tls.crls: {exc}") from None
        authenticator = Authenticator(engine, verifier, audit, cas, settings.admins, revocations)
        passwords = AppPasswords(engine, audit)
        local_bus = LocalBus()
        bus: EventBus = local_bus
        shared = None
        if settings.bus_url:  # several processes: events and login failures cross them through Redis
            bus = RedisBus(settings.bus_url, local_bus)
            await bus.start()
            shared = SharedFailures(bus.redis)
        logins = Logins(engine, authenticator, passwords, audit, shared=shared)
        mailstore = MailStore(engine, bus, reporting_mta=settings.hostname)
        mailstore.delivery_hooks.append(incoming.watch)  # an IHE_XDM.ZIP in any box: its patient's circle learns of it
        admission = Admission(settings.limits.connections, settings.limits.connections_per_address)
        return cls(settings, engine, audit, authenticator, passwords, logins, bus, local_bus, mailstore,
                   TrustSpace(engine, settings.domains), revocations, admission)

    async def close(self) -> None:
        await self.mailstore.close()
        if isinstance(self.bus, RedisBus):
            await self.bus.close()
        await db.finish_writes()
        await self.engine.dispose()

    def server_tls(self, *, require_client_cert: bool = False) -> ssl.SSLContext:
        s = self.settings
        return tls.server_context(s.tls_cert, s.tls_key, client_ca=_bundle(s), require_client_cert=require_client_cert)


def load_client_cas(settings: Settings) -> list[x509.Certificate]:
    cas: list[x509.Certificate] = []
    for path in settings.client_cas:
        if path.exists():
            cas += x509.load_pem_x509_certificates(path.read_bytes())
        else:
            log.warning("client CA file %s does not exist: certificates chaining to it will be refused", path)
    return cas


def _bundle(settings: Settings):  # noqa: ANN202 - Path | None
    """One CA file for the TLS stack: the first configured one that exists."""
    existing = [p for p in settings.client_cas if p.exists()]
    return existing[0] if existing else None


def https_listener(services: Services) -> Listener:
    s = services.settings
    m = services.metrics
    m.add(lambda: _store_gauges(services.engine))
    router = services.router
    WellKnown(s).register(router)
    Autoconfig(s).register(router)
    DirectoryApi(services.engine, services.authenticator, services.audit).register(router)
    MailboxApi(services.engine, services.authenticator, services.passwords).register(router)
    WebMail(services.engine, services.authenticator, Folders(services.engine, services.bus, quota_bytes=s.mailbox_quota),
            services.audit).register(router)
    DevSignIn(s, services.engine, services.audit).register(router)
    SubscriptionsApi(Subscriptions(services.engine, services.audit), services.authenticator).register(router)
    IndicatorsApi(services.engine, services.authenticator, services.audit).register(router)
    NotificationsApi(services.engine, services.authenticator, services.audit).register(router)
    services.instant = Instant(services)
    services.instant.register(router)

    async def healthz(_request: Request) -> Response:
        """200 while the store answers. Redis, when several nodes share it, is reported but does
        not fail the check: without it a node still serves (docs/deployment.md), and a load
        balancer that took every node out over Redis would turn its outage into one of msante."""
        async with services.engine.connect() as conn:
            await conn.execute(select(1))
        if isinstance(services.bus, RedisBus):
            return Response.json({"status": "ok", "redis": "ok" if services.bus.subscribed.is_set() else "unreachable"})
        return Response.json({"status": "ok"})

    async def metrics(_request: Request) -> Response:
        return Response(200, await m.render(), CONTENT_TYPE)

    router.add("GET", "/healthz", healthz)
    router.add("GET", "/metrics", metrics)

    async def handle(request: Request) -> Response:
        route = router.route_of(request)
        status = 500
        try:
            response = await router(request)
            status = response.status
            return response
        except Exception as exc:
            status = getattr(exc, "status", 500)
            raise
        finally:
            HTTP_REQUESTS.labels(route=route, status=str(status)).inc()

    return Listener("https", s.listen["https"], lambda r, w: serve_connection(r, w, handle, body_limit=router.body_limit), services.server_tls(),
                    admission=services.admission, refusal=HTTP_REFUSAL,
                    on_tls_failure=_tls_failure_audit(services, "https"))


def smtp_listeners(services: Services) -> list[Listener]:
    """`submission` (STARTTLS before anything else), `submissions` (implicit TLS, RFC 8314) and
    `smtp`, the relay between operators (STARTTLS with a client certificate required)."""
    s = services.settings
    limits = SmtpLimits(max_message_size=s.max_message_size, max_header_size=s.max_header_size,
                         max_header_fields=s.max_header_fields, login_deadline=s.limits.login_deadline,
                         max_refusals=s.limits.smtp_refusals)
    common = dict(domains=s.domains, hostname=s.hostname, limits=limits)
    submission = SubmissionHandler(services.engine, services.mailstore, services.audit, services.trust, **common)
    relay = RelayHandler(services.engine, services.mailstore, services.audit, services.trust,
                         routes=dict(s.relay_routes), revocations=services.revocations, **common)
    plans = (("submission", submission, services.logins, services.server_tls(), False),
             ("submissions", submission, services.logins, services.server_tls(), True),
             ("smtp", relay, None, services.server_tls(require_client_cert=True), False))
    listeners = []
    for name, handler, logins, context, implicit in plans:
        if not s.listen[name]:
            continue

        def factory(handler=handler, logins=logins, context=context, implicit=implicit,  # noqa: ANN001
                    name=name) -> MsanteSMTP:
            return MsanteSMTP(handler, logins=logins, audit=services.audit, limits=limits, hostname=s.hostname,
                              tls_context=context, implicit_tls=implicit, listener=name)
        listeners.append(Listener(name, s.listen[name], ssl_context=context if implicit else None,
                                  protocol_factory=factory, admission=services.admission, refusal=SMTP_REFUSAL,
                                  on_tls_failure=_tls_failure_audit(services, name)))
    return listeners


def imap_listeners(services: Services) -> list[Listener]:
    """`imap` (STARTTLS, LOGINDISABLED before it) and `imaps` (implicit TLS, RFC 8314)."""
    s = services.settings
    ctx = ImapContext(services.engine, Folders(services.engine, services.bus, quota_bytes=s.mailbox_quota,
                                               writes=services.mailstore.writes),
                      services.logins, services.audit, services.bus, s.hostname, s.max_message_size,
                      login_deadline=s.limits.login_deadline, max_refusals=s.limits.imap_refusals,
                      idle_keepalive=s.imap_idle_keepalive)
    services.imap = ctx
    listeners = []
    for name, implicit in (("imap", False), ("imaps", True)):
        if s.listen[name]:
            context = services.server_tls()
            listeners.append(Listener(name, s.listen[name], connection_handler(ctx, context, implicit_tls=implicit),
                                      context if implicit else None, admission=services.admission,
                                      refusal=IMAP_REFUSAL, on_tls_failure=_tls_failure_audit(services, name)))
    return listeners


def _tls_failure_audit(services: Services, listener: str):  # noqa: ANN202 - listeners.TlsFailure
    """What an implicit-TLS listener does with a failed handshake: audit a refused certificate."""
    def report(error: BaseException, address: str) -> Awaitable[None]:
        return audit_handshake_refusal(services.audit, error, source=address, protocol=listener)
    return report


def hl7_listener(services: Services, feed: Feed) -> Listener:
    """`hl7`: hospitals' record systems, MLLP inside TLS with their applicative certificate required."""
    s = services.settings
    handler = hl7_handler(services.engine, services.authenticator, services.audit, feed, max_frame=s.hl7_max_frame)
    return Listener("hl7", s.listen["hl7"], handler, services.server_tls(require_client_cert=True),
                    admission=services.admission, refusal=HL7_REFUSAL,
                    on_tls_failure=_tls_failure_audit(services, "hl7"))


def outbound_queue(services: Services) -> OutboundQueue:
    s = services.settings
    client_tls = tls.client_context(_bundle(s), cert_path=s.tls_cert, key_path=s.tls_key)
    return OutboundQueue(services.engine, services.mailstore, services.bus, services.audit, services.trust,
                         services.revocations, hostname=s.hostname,
                         routes=dict(s.relay_routes), client_tls=client_tls, retry_base=s.relay_retry_base,
                         retry_max=s.relay_retry_max, lifetime=s.relay_lifetime, delay_warning=s.relay_delay_warning,
                         connections=s.relay_connections, lease_seconds=s.job_lease)


async def _store_gauges(engine: AsyncEngine) -> list:
    """The directory and the outbound queue as the store holds them, read at each scrape."""
    async with engine.connect() as conn:
        people, boxes = [(await conn.execute(select(func.count()).select_from(table)
                                             .where(table.c.retired_at.is_(None)))).scalar() or 0
                         for table in (professionals, mailboxes)]
        size, oldest = (await conn.execute(
            select(func.count(), func.min(envelopes.c.received_at))
            .select_from(deliveries.join(envelopes, envelopes.c.id == deliveries.c.envelope_id))
            .where(deliveries.c.status == "queued"))).one()
    age = (datetime.now(timezone.utc) - utc(oldest)).total_seconds() if oldest else 0.0
    return [gauge("msante_directory_professionals", "Active professionals in the directory", people),
            gauge("msante_mailboxes", "Active mailboxes in the directory", boxes),
            gauge("msante_queue_size", "Deliveries waiting in the outbound queue", size),
            gauge("msante_queue_oldest_seconds", "Age of the oldest queued delivery", age)]


def _check_descriptors(connections: int) -> None:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and connections + DESCRIPTORS_SPARE > soft:
        log.warning("limits.connections is %d but this process may open only %d descriptors (ulimit -n): "
                    "raise the limit (systemd LimitNOFILE=) or lower limits.connections, or clients will "
                    "fail without an answer once descriptors run out", connections, soft)


async def serve(settings: Settings, *, on_ready: Callable[[list[Listener]], None] | None = None,
                stop: asyncio.Event | None = None, reuse_port: bool = False) -> None:
    """Run every configured listener until SIGTERM/SIGINT (or `stop`), then shut down cleanly.
    `reuse_port`: bind beside the other workers of `msante serve --workers` (msante/workers.py)."""
    services = await Services.open(settings)
    _check_descriptors(settings.limits.connections)
    listeners: list[Listener] = []
    if settings.listen["https"]:
        listeners.append(https_listener(services))
    listeners += smtp_listeners(services)
    listeners += imap_listeners(services)
    feed = None
    if settings.listen["hl7"]:
        feed = Feed(services.engine, services.audit, services.bus, services.mailstore.writes,
                    facility=settings.hostname)
        listeners.append(hl7_listener(services, feed))
    queue_stop = asyncio.Event()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT) if threading.current_thread() is threading.main_thread() else ()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        for listener in listeners:
            listener.reuse_port = reuse_port
            await listener.start()
            log.info("%s listening on %s", listener.name, listener.address)
        # every node and worker runs both jobs, each row leased to one of them (store/lease.py)
        queue = asyncio.create_task(outbound_queue(services).run(queue_stop), name="outbound-queue")
        crl_refresh = asyncio.create_task(services.revocations.run(queue_stop), name="crl-refresh")
        dispatch = None
        if feed is not None:
            dispatcher = Dispatcher(services.engine, services.mailstore, services.audit, services.bus,
                                    domains=settings.domains, lease_seconds=settings.job_lease)
            dispatch = asyncio.create_task(dispatcher.run(queue_stop), name="hospital-dispatch")
        purging = asyncio.create_task(retention.run(services.engine, services.audit, settings.hl7_raw_retention_days,
                                                    queue_stop), name="hl7-retention")
        documents = asyncio.create_task(incoming.IncomingDocuments(
            services.engine, services.mailstore.writes, services.audit, services.bus).run(queue_stop),
            name="incoming-documents")
        if services.instant:
            await services.instant.start()
        if services.imap:
            services.imap.start()
        # What the CLI changes reaches live sessions through the store, on every node: each
        # node's relay feeds its own subscribers only (Redis would hand them the same event twice).
        relay = Relay(services.engine, services.local_bus)
        await relay.start()
        relaying = asyncio.create_task(relay.run(), name="store relay")
        await services.audit.record(SERVER, "server.start",
                                     listeners={lst.name: lst.address for lst in listeners})
        if on_ready:
            on_ready(listeners)
        await stop.wait()
        log.info("shutting down: no new connections, %.0f s for in-flight work", SHUTDOWN_DEADLINE)
        queue_stop.set()
        services.logins.throttle.close()  # logins waiting out a delay end now, refused "try again"
        if services.instant:  # websockets never end by themselves: close them before the listeners wait
            await services.instant.stop(SHUTDOWN_DEADLINE)
        if services.imap:  # IMAP clients idle for hours: BYE them rather than wait
            services.imap.shutdown()
        await asyncio.gather(*(lst.stop(SHUTDOWN_DEADLINE) for lst in listeners))
        await asyncio.wait_for(queue, SHUTDOWN_DEADLINE)
        if dispatch is not None:
            await asyncio.wait_for(dispatch, SHUTDOWN_DEADLINE)
        await asyncio.wait_for(documents, SHUTDOWN_DEADLINE)
        await asyncio.wait_for(purging, SHUTDOWN_DEADLINE)
        await crl_refresh
        relaying.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await relaying
        await services.audit.record(SERVER, "server.stop")
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await services.close()
        process_exited()
