"""The instant layer assembled from the shared services: storage, handlers, the hub, the mail
alert task, and the front-ends it puts on the https listener (`/api/circles`, `/ws`, the web
client at `/`). The composition root builds one, registers it, starts it and stops it.

`/ws` answers with an `Upgrade`: h11 has parsed the request; its path and headers are written
out again for `websockets`' sans-IO ServerProtocol, which checks the handshake and answers it
(and only reads frames after a handshake it parsed), and the connection then belongs to
`connection.Connection`.

A token may come in the upgrade request (`Authorization: Bearer`, or for browsers, which
cannot set that header, a `msante.bearer.<token>` entry in Sec-WebSocket-Protocol beside
`msante.v1`, the subprotocol the server selects) instead of in the first frame.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine
from websockets.datastructures import Headers
from websockets.frames import CloseCode
from websockets.http11 import Request as HandshakeRequest
from websockets.protocol import State
from websockets.server import ServerProtocol

from store.audit import AuditTrail
from store.redis_bus import RedisBus
from store.relay import StoreBus
from web.http import HttpError, Request, Response, Upgrade
from web.metrics import WEBSOCKET_ACCEPTED, WEBSOCKET_CLOSES, WEBSOCKET_CONNECTIONS
from web.router import Router

from .alerts import Alerts
from .alertstore import AlertStore
from .api import InstantApi
from .attachments import Attachments
from .attachmentstore import AttachmentStore
from .circles import Circles
from .connection import Connection
from .frames import Close
from .hub import Hub
from . import limits as configured
from .limits import Limits
from .mailalerts import MailAlerts
from .memberships import Memberships
from .presence import SharedPresence
from .messages import Messages
from .storage import SqlStore
from .webclient import WebClient

if TYPE_CHECKING:
    from msante.app import Services

SUBPROTOCOL = "msante.v1"
TOKEN_SUBPROTOCOL = "msante.bearer."
# A client may close with any code from 1000 to 4999: only the ones RFC 6455 names and ours
# become metric labels, so a client cannot create thousands of series.
KNOWN_CLOSE_CODES = frozenset(int(code) for code in (*CloseCode, *Close))


class Instant:
    def __init__(self, services: Services, limits: Limits | None = None) -> None:
        engine = services.engine
        self.limits = limits or configured.DEFAULT  # read when built: tests and the bench replace it
        self.authenticator = services.authenticator
        self.audit = services.audit
        self.bus = services.bus
        self.store = SqlStore(engine)
        self.alerts = Alerts(engine, AlertStore(engine, services.mailstore.writes), services.audit, services.bus)
        self.memberships = Memberships(self.store, services.bus)
        self.circles = Circles(engine, self.store, self.alerts, services.audit, services.bus, self.memberships)
        self.messages = Messages(self.store, self.circles, services.audit, services.bus)
        self.attachments = Attachments(AttachmentStore(engine), self.circles, services.audit)
        self.max_attachment = services.settings.max_attachment
        shared = None
        if isinstance(services.bus, RedisBus):
            shared = SharedPresence(services.bus.redis, services.bus.node, services.bus.subscribed.is_set)
        self.hub = Hub(services.bus, shared)
        self._mail_alerts = MailAlerts(engine, services.bus, self.alerts)
        self._background: asyncio.Task | None = None
        self._connections: set[Connection] = set()
        self._stopping = False

    def register(self, router: Router) -> None:
        InstantApi(self).register(router)
        WebClient().register(router)
        router.add("GET", "/ws", self.websocket)

    async def start(self) -> None:
        self.hub.start()
        self._background = asyncio.create_task(self._mail_alerts.run(), name="mail alerts")

    async def stop(self, deadline: float) -> None:
        """Close every websocket (1001: clients reconnect elsewhere or later), stop the tasks."""
        self._stopping = True
        for connection in list(self._connections):
            connection.shut(Close.GOING_AWAY, "server shutting down")
        give_up = time.monotonic() + deadline
        while self._connections and time.monotonic() < give_up:
            await asyncio.sleep(0.05)
        if self._background is not None:
            self._background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._background
        self.memberships.close()
        await self.hub.close()

    async def websocket(self, request: Request) -> Response:
        """The handshake is answered here by a protocol of its own, and the connection gets a
        fresh one, open: what it keeps for its life is a frame parser. Otherwise it kept the
        request's headers three times (h11's, ours, and websockets' handshake parser, which
        holds the request in its generator's frame): 4 KiB of each idle websocket."""
        if self._stopping:
            raise HttpError(503, "shutting_down", "the server is shutting down")
        handshake = ServerProtocol(select_subprotocol=_select_subprotocol, max_size=self.limits.max_frame_bytes)
        try:  # the protocol reads frames only once it has parsed the handshake itself: give it the request
            handshake.receive_data(HandshakeRequest(request.target, Headers(request.headers.items())).serialize())
        except UnicodeEncodeError:  # a target h11 let through that is not ASCII: no websocket for it
            return Upgrade(functools.partial(self._accept, [], None, "", None))
        received = handshake.events_received()
        if received:
            handshake.send_response(handshake.accept(received[0]))
        protocol = None
        if handshake.state is State.OPEN:  # no extension is offered: a plain frame parser is all it takes
            protocol = ServerProtocol(state=State.OPEN, max_size=self.limits.max_frame_bytes)
        return Upgrade(functools.partial(self._accept, handshake.data_to_send(), protocol, request.peer,
                                         _handshake_token(request)))

    async def _accept(self, answer: list[bytes], protocol: ServerProtocol | None, peer: str, token: str | None,
                      reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for data in answer:
            writer.write(data)
        await writer.drain()
        if protocol is None:
            return
        connection = Connection(self, protocol, reader, writer, peer, self._closed)
        self._connections.add(connection)
        WEBSOCKET_ACCEPTED.inc()
        WEBSOCKET_CONNECTIONS.inc()
        try:
            await connection.run(token)
        finally:
            self._connections.discard(connection)
            WEBSOCKET_CONNECTIONS.dec()

    def _closed(self, code: int, by: str) -> None:
        WEBSOCKET_CLOSES.labels(code=str(code) if code in KNOWN_CLOSE_CODES else "other", by=by).inc()


def circle_admin(engine: AsyncEngine, audit: AuditTrail) -> Circles:
    """The circle handlers without a running server, for the CLI. They announce through the
    store (store/relay.py): running servers cut a removed member's live connections and push
    the alerts at once."""
    bus = StoreBus(engine)
    return Circles(engine, SqlStore(engine), Alerts(engine, AlertStore(engine), audit, bus), audit, bus)


def _select_subprotocol(_protocol: ServerProtocol, offered: list[str]) -> str | None:
    return SUBPROTOCOL if SUBPROTOCOL in offered else None


def _handshake_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    for offered in request.headers.get("sec-websocket-protocol", "").split(","):
        if offered.strip().startswith(TOKEN_SUBPROTOCOL):
            return offered.strip()[len(TOKEN_SUBPROTOCOL):]
    return None
