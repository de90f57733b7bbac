"""IMAP over asyncio streams: bytes from the socket into the parser, commands into the session.

The `imap` listener starts in clear and offers STARTTLS (LOGINDISABLED until then, RFC 3501
§6.2.3); `imaps` is TLS from the first byte (RFC 8314). After STARTTLS, whatever the client
sent behind the command in clear is thrown away before the handshake: a man in the middle
cannot inject commands that would run inside the protected session (the bug class of
CVE-2021-33515 in Dovecot and CVE-2024-34083 in aiosmtpd).
"""
from __future__ import annotations

import asyncio
import logging
import ssl

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
        self.waiting = False  # blocked reading the client: safe to interrupt at shutdown
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

    async def _fill(self, timeout: float) -> bool:
        """Read more bytes into the parser; False on timeout or end of stream."""
        self.waiting = True
        try:
            data = await asyncio.wait_for(self.reader.read(READ_SIZE), timeout)
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
                return None

    async def starttls(self) -> None:
        self.parser.discard_buffer()
        # Bytes the transport already delivered to the reader but we have not read yet are
        # cleartext too; StreamReader has no public way to drop them.
        self.reader._buffer.clear()  # noqa: SLF001
        await self.writer.start_tls(self.tls_context)

    def interrupt(self) -> None:
        if self.waiting and not self.writer.is_closing():
            self.writer.write(SHUTDOWN_BYE)
            self.writer.close()
            self.reader.feed_eof()  # a TLS close waits for the peer; the pending read must end now

    async def run(self, *, starttls_offered: bool) -> None:
        session = Session(self.ctx, self, starttls_offered=starttls_offered)
        self.ctx.connections.add(self)
        await self.send(session.greeting())
        try:
            while session.state != LOGOUT:
                if self.ctx.stopping:
                    await self.send(SHUTDOWN_BYE)
                    return
                event = self.parser.next_command()
                if event is None:
                    if not await self._fill(session.idle_timeout):
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
                        await self.send(f"{event.tag} {refusal[0]} {refusal[1]}\r\n".encode())
                elif isinstance(event, Bad):
                    await self.send(f"{event.tag or '*'} BAD {event.message}\r\n".encode())
                elif isinstance(event, Fatal):
                    await self.send(f"* BYE {event.message}\r\n".encode())
                    return
                else:
                    was = session.state
                    await session.handle(event)
                    if was == NOT_AUTHENTICATED and session.state != NOT_AUTHENTICATED:
                        self.parser.max_literal = self.ctx.max_message_size
                        self.parser.max_command = self.ctx.max_message_size + COMMAND_SLACK
        finally:
            self.ctx.connections.discard(self)
            await session.close()


def connection_handler(ctx: ImapContext, tls_context: ssl.SSLContext, *, implicit_tls: bool):  # noqa: ANN201
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await ImapConnection(ctx, reader, writer, tls_context).run(starttls_offered=not implicit_tls)
    return handle
