"""TCP listeners that admit connections, know the ones in flight, and finish them at shutdown.

Every accepted connection first meets a gate, before any TLS handshake: `Admission` counts it
or refuses it, and a refused one gets its protocol's answer (`refusal`: IMAP BYE, SMTP 421,
HTTP 503), after a handshake on implicit-TLS listeners since that is the only way a client
reads it. Admitted connections are handed to the listener's protocol, TLS first if implicit.
Refusing costs little: a few refusals in TLS at a time, the rest just closed. A handshake that
fails is told to `on_tls_failure` (the audit of a refused client certificate). The listener
does TLS itself, rather than asyncio's create_server(ssl=…), because asyncio hands over a TLS
connection only once its handshake is done: the ones still handshaking would go uncounted.

asyncio.Server.close() stops accepting but (before Python 3.12.1) does not wait for the
connections it already handed out; SIGTERM must let a message in DATA finish, up to a
deadline, then cut what remains.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import weakref
from asyncio import sslproto
from typing import Any, Awaitable, Callable

from config import split_hostport

from .admission import Admission, Ticket

log = logging.getLogger("msante.listen")

ConnectionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
TlsFailure = Callable[[BaseException, str], Awaitable[None]]  # (the handshake's error, client address)
TLS_HANDSHAKE_TIMEOUT = 15.0  # seconds; a peer that never finishes the handshake holds a slot
REFUSAL_HANDSHAKE_TIMEOUT = 5.0  # seconds a refused client gets to finish its handshake and read why
REFUSALS_IN_TLS = 64  # refused connections handshaking at once to be told why; more are just closed


class _TLSProtocol(sslproto.SSLProtocol):
    """asyncio's TLS layer reading into one 32 KiB buffer per process instead of 256 KiB per
    connection. asyncio allocates (and, once the allocator has raised its mmap threshold, touches)
    the buffer for each connection: at 256 KiB an idle TLS connection held ~290 KiB of RSS
    (bench/imap_prelogin.py), at 32 KiB still 32 of the ~87 KiB an idle websocket cost
    (bench/instant.py). Sharing it is safe: the transport reads into it and calls buffer_updated
    at once, which copies the bytes into the connection's own TLS input (a MemoryBIO) before
    anything else runs on the loop. 32 KiB is two full TLS records, enough that a bulk transfer
    costs no more reads than the records it carries."""

    max_size = 32 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ssl_buffer, self._ssl_buffer_view = _SHARED_READ_BUFFER  # the one above is garbage now
        self._fin_sent = False

    def _do_shutdown(self) -> None:
        """Our close_notify, then our end of the connection closed too (a TCP FIN), without
        waiting for the client's close_notify first. asyncio waits up to 30 s for it with the
        connection open, and clients that themselves wait for the server to close after LOGOUT
        or QUIT (imaptest, Dovecot's own TLS layer) then waited the 30 s: a connection held that
        long per LOGOUT, 90 s of each imaptest run. The read side stays open until the client
        closes (or the 30 s), so what it still sends is read and dropped rather than answered
        with a reset that could destroy our last reply before the client reads it."""
        super()._do_shutdown()
        waiting = self._state is sslproto.SSLProtocolState.SHUTDOWN and self._shutdown_timeout_handle is not None
        if waiting and not self._fin_sent and self._transport.can_write_eof():
            self._fin_sent = True
            self._transport.write_eof()


_SHARED_READ_BUFFER = (buffer := bytearray(_TLSProtocol.max_size), memoryview(buffer))


class Listener:
    """Either a stream handler (our own protocols) or an asyncio protocol factory (aiosmtpd)."""

    def __init__(self, name: str, address: str, handler: ConnectionHandler | None = None,
                 ssl_context: ssl.SSLContext | None = None, *, protocol_factory: Callable[[], Any] | None = None,
                 admission: Admission, refusal: bytes, limit: int = 64 * 1024,
                 on_tls_failure: TlsFailure | None = None) -> None:
        if (handler is None) == (protocol_factory is None):
            raise ValueError("give a handler or a protocol factory")
        self.name = name
        self.address = address
        self.admission = admission
        self.refusal = refusal
        self._handler = handler
        self._factory = protocol_factory
        self._ssl = ssl_context
        self._limit = limit
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._protocols: weakref.WeakSet = weakref.WeakSet()
        self._refusing = 0  # refused connections still in their TLS handshake
        self._on_tls_failure = on_tls_failure
        self._reporting: set[asyncio.Task] = set()  # on_tls_failure calls not finished yet
        self.reuse_port = False  # several workers bind the same address (msante/workers.py)

    async def start(self) -> None:
        host, port = split_hostport(self.address)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Gate(self), host, port, reuse_port=self.reuse_port or None)
        bound = self._server.sockets[0].getsockname()
        self.address = f"{bound[0]}:{bound[1]}"  # port 0 in tests becomes the real port

    # -- after the gate -----------------------------------------------------------------------------

    def _app_protocol(self) -> asyncio.BaseProtocol:
        if self._factory is not None:
            protocol = self._factory()
            self._protocols.add(protocol)
            return protocol
        loop = asyncio.get_running_loop()
        return asyncio.StreamReaderProtocol(asyncio.StreamReader(limit=self._limit, loop=loop), self._run, loop=loop)

    def _open(self, transport: asyncio.Transport, ticket: Ticket, address: str) -> None:
        """An admitted connection: TLS first on an implicit-TLS listener, then the protocol.
        The ticket goes back when the protocol loses its connection, or the handshake fails."""
        protocol = self._app_protocol()
        lost = protocol.connection_lost

        def connection_lost(exc: Exception | None) -> None:
            ticket.release()
            lost(exc)
        protocol.connection_lost = connection_lost  # type: ignore[method-assign]
        if self._ssl is None:
            transport.set_protocol(protocol)
            protocol.connection_made(transport)
            return
        handshake = self._tls(transport, protocol, TLS_HANDSHAKE_TIMEOUT)

        def handshake_done(done: asyncio.Future) -> None:
            if done.cancelled() or done.exception() is None:
                return
            ticket.release()
            if self._on_tls_failure is not None:
                report = asyncio.ensure_future(self._on_tls_failure(done.exception(), address))
                self._reporting.add(report)
                report.add_done_callback(self._reporting.discard)
        handshake.add_done_callback(handshake_done)

    def _refuse(self, transport: asyncio.Transport) -> None:
        if self._ssl is None:
            transport.write(self.refusal)
            transport.close()
        elif self._refusing >= REFUSALS_IN_TLS:
            transport.abort()
        else:
            self._refusing += 1
            handshake = self._tls(transport, _Refusal(self.refusal), REFUSAL_HANDSHAKE_TIMEOUT)
            handshake.add_done_callback(lambda _done: self._refused_one())

    def _refused_one(self) -> None:
        self._refusing -= 1

    def _tls(self, transport: asyncio.Transport, protocol: asyncio.BaseProtocol, timeout: float) -> asyncio.Future:
        """Put TLS between `transport` and `protocol`, now: bytes the client sent already are
        not lost (uvloop reads as soon as the connection is made). This is what
        loop.start_tls does, without its await; aiosmtpd's STARTTLS does the same. The
        future ends with the handshake (an exception if it failed; the protocol then never
        hears of the connection)."""
        loop = asyncio.get_running_loop()
        handshake = loop.create_future()
        tls = _TLSProtocol(loop, protocol, self._ssl, handshake, server_side=True,
                           ssl_handshake_timeout=timeout)
        transport.set_protocol(tls)
        tls.connection_made(transport)
        return handshake

    async def _run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handler(reader, writer)
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("%s: connection handler failed", self.name)
        finally:
            self._tasks.discard(task)
            if not writer.is_closing():
                writer.close()

    # -- shutdown -------------------------------------------------------------------------------------

    def _in_flight(self) -> set[asyncio.Task]:
        # aiosmtpd runs each session in `_handler_coroutine`; waiting for it lets a DATA finish.
        sessions = {getattr(p, "_handler_coroutine", None) for p in list(self._protocols)}
        return self._tasks | {t for t in sessions if t is not None and not t.done()}

    async def stop(self, deadline: float) -> None:
        """Stop accepting, give open connections `deadline` seconds, then cancel them."""
        if self._server is None:
            return
        self._server.close()
        for protocol in list(self._protocols):
            protocol.close_if_idle()
        in_flight = self._in_flight()
        if in_flight:
            _done, pending = await asyncio.wait(in_flight, timeout=deadline)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("%s: %d connection(s) cut at shutdown deadline", self.name, len(pending))
                await asyncio.wait(pending, timeout=1)
        await self._server.wait_closed()


class _Gate(asyncio.Protocol):
    """The first protocol of every accepted connection: asks `Admission`, then hands the
    connection on or refuses it, before any byte is read."""

    def __init__(self, listener: Listener) -> None:
        self._listener = listener

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        peer = transport.get_extra_info("peername")
        address = peer[0] if isinstance(peer, tuple) else str(peer or "")
        listener = self._listener
        ticket = listener.admission.admit(listener.name, address)
        if ticket is None:
            listener._refuse(transport)  # noqa: SLF001
        else:
            listener._open(transport, ticket, address)  # noqa: SLF001


class _Refusal(asyncio.Protocol):
    """What a refused client reads once its TLS handshake is done."""

    def __init__(self, refusal: bytes) -> None:
        self._refusal = refusal

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        transport.write(self._refusal)
        transport.close()
