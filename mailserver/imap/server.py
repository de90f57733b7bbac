"""IMAP over asyncio streams: bytes from the socket into the parser, commands into the session.

The `imap` listener starts in clear and offers STARTTLS (LOGINDISABLED until then, RFC 3501
§6.2.3); `imaps` is TLS from the first byte (RFC 8314). After STARTTLS, whatever the client
sent behind the command in clear is thrown away before the handshake: a man in the middle
cannot inject commands that would run inside the protected session (the bug class of
CVE-2021-33515 in Dovecot and CVE-2024-34083 in aiosmtpd).

A client has `login_deadline` seconds from connecting to log in, however busy it keeps the
session, and a session may earn `max_refusals` NO and BAD: past either, `* BYE` and the
connection closes, audited once (RFC 3501 §7.1.5 lets the server end a session so).
"""
from __future__ import annotations

import asyncio
import logging
import ssl

from directory.authn import audit_handshake_refusal
from store.audit import ANONYMOUS
from web.metrics import IMAP_SESSIONS

from .parser import Bad, CommandParser, Fatal, LiteralPending
from .session import LOGOUT, NOT_AUTHENTICATED, ImapContext, Session

log = logging.getLogger("msante.imap")

READ_SIZE = 64 * 1024
SHUTDOWN_BYE = b"* BYE server shutting down, reconnect in a moment\r\n"
COMMAND_SLACK = 1024 * 1024  # an APPEND's flags, date and name around its message
PRE_AUTH_LITERAL = 64 * 1024  # largest literal before login (LOGIN's password): LITERAL+ cannot make us hold more


class ImapConnection:
    """One client connection; what `Session` calls its `Conn`."""

    def __init__(self, ctx: ImapContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 tls_context: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.reader = reader
        self.writer = writer
        self.tls_context = tls_context
        self.parser = CommandParser(max_literal=PRE_AUTH_LITERAL, max_command=PRE_AUTH_LITERAL + COMMAND_SLACK)
        self.session: Session | None = None
        self.waiting = False  # blocked reading the client: safe to interrupt at shutdown
        self.login_by: float | None = asyncio.get_running_loop().time() + ctx.login_deadline  # None once logged in
        peer = writer.get_extra_info("peername")
        self.source = peer[0] if isinstance(peer, tuple) else str(peer or "")

    @property
    def tls(self) -> bool:
        return self.writer.get_extra_info("ssl_object") is not None

    @property
    def peer_certificate(self) -> bytes | None:
        ssl_object = self.writer.get_extra_info("ssl_object")
        return ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def _remaining(self, timeout: float) -> float:
        """`timeout`, or less if the login deadline comes first."""
        if self.login_by is None:
            return timeout
        return max(0.0, min(timeout, self.login_by - asyncio.get_running_loop().time()))

    @property
    def too_late(self) -> bool:
        return self.login_by is not None and asyncio.get_running_loop().time() >= self.login_by

    async def _goodbye(self, text: str, reason: str) -> None:
        """`* BYE text` and an audit row saying why the server ended the session."""
        await self.send(f"* BYE {text}\r\n".encode())
        session = self.session
        await self.ctx.audit.record(session.actor if session else ANONYMOUS, "imap.disconnect", outcome="denied",
                                    source=self.source, reason=reason, refusals=session.refusals if session else 0)

    async def _too_late(self) -> None:
        await self._goodbye(f"no login within {self.ctx.login_deadline:g} seconds", "login deadline passed")

    async def _fill(self, timeout: float) -> bool:
        """Read more bytes into the parser; False on timeout or end of stream."""
        self.waiting = True
        try:
            data = await asyncio.wait_for(self.reader.read(READ_SIZE), self._remaining(timeout))
        except asyncio.TimeoutError:
            return False
        finally:
            self.waiting = False
        if not data:
            return False
        self.parser.feed(data)
        return True

    async def read_line(self, timeout: float) -> bytes | None:
        while True:
            line = self.parser.next_line()
            if isinstance(line, Fatal):
                await self.send(f"* BYE {line.message}\r\n".encode())
                return None
            if line is not None:
                return line
            if not await self._fill(timeout):
                if self.too_late:  # inside AUTHENTICATE
                    await self._too_late()
                return None

    async def starttls(self) -> None:
        self.parser.discard_buffer()
        # Bytes the transport already delivered to the reader but we have not read yet are
        # cleartext too; StreamReader has no public way to drop them.
        self.reader._buffer.clear()  # noqa: SLF001
        try:
            await self.writer.start_tls(self.tls_context)
        except (ssl.SSLError, ConnectionError) as exc:
            await audit_handshake_refusal(self.ctx.audit, exc, source=self.source, protocol="imap")
            raise

    def interrupt(self) -> None:
        if self.waiting and not self.writer.is_closing():
            self.writer.write(SHUTDOWN_BYE)
            self.writer.close()
            self.reader.feed_eof()  # a TLS close waits for the peer; the pending read must end now

    async def run(self, *, starttls_offered: bool) -> None:
        IMAP_SESSIONS.labels(listener="imap" if starttls_offered else "imaps").inc()
        session = self.session = Session(self.ctx, self, starttls_offered=starttls_offered)
        self.ctx.connections.add(self)
        await self.send(session.greeting())
        try:
            while session.state != LOGOUT:
                if self.ctx.stopping:
                    await self.send(SHUTDOWN_BYE)
                    return
                if self.too_late:
                    await self._too_late()
                    return
                if session.refusals >= self.ctx.max_refusals:
                    await self._goodbye("too many refused commands", "too many refusals")
                    return
                event = self.parser.next_command()
                if event is None:
                    if not await self._fill(session.idle_timeout):
                        if self.too_late:
                            continue  # said above
                        if not self.writer.is_closing():
                            await self.send(b"* BYE autologout: nothing heard for too long\r\n")
                        return
                    continue
                if isinstance(event, LiteralPending):
                    refusal = session.literal_error(event)
                    if refusal is None:
                        self.parser.continue_literal()
                        await self.send(b"+ go ahead\r\n")
                    else:
                        self.parser.refuse_literal()
                        await session.reply(event.tag, *refusal)
                elif isinstance(event, Bad):
                    await session.reply(event.tag or "*", "BAD", event.message)
                elif isinstance(event, Fatal):
                    await self.send(f"* BYE {event.message}\r\n".encode())
                    return
                else:
                    was = session.state
                    await session.handle(event)
                    if was == NOT_AUTHENTICATED and session.state != NOT_AUTHENTICATED:
                        self.login_by = None
                        self.parser.max_literal = self.ctx.max_message_size
                        self.parser.max_command = self.ctx.max_message_size + COMMAND_SLACK
        finally:
            self.ctx.connections.discard(self)
            await session.close()


def connection_handler(ctx: ImapContext, tls_context: ssl.SSLContext, *, implicit_tls: bool):  # noqa: ANN201
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await ImapConnection(ctx, reader, writer, tls_context).run(starttls_offered=not implicit_tls)
    return handle
