"""TCP listeners that know their in-flight connections, so shutdown can finish them.

asyncio.Server.close() stops accepting but (before Python 3.12.1) does not wait for the
connections it already handed out; SIGTERM must let a message in DATA finish, up to a
deadline, then cut what remains.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import weakref
from typing import Any, Awaitable, Callable

from config import split_hostport

log = logging.getLogger("msante.listen")

ConnectionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
TLS_HANDSHAKE_TIMEOUT = 15.0  # seconds; a peer that never finishes the handshake holds a slot


class Listener:
    """Either a stream handler (our own protocols) or an asyncio protocol factory (aiosmtpd)."""

    def __init__(self, name: str, address: str, handler: ConnectionHandler | None = None,
                 ssl_context: ssl.SSLContext | None = None, *, protocol_factory: Callable[[], Any] | None = None,
                 limit: int = 64 * 1024) -> None:
        if (handler is None) == (protocol_factory is None):
            raise ValueError("give a handler or a protocol factory")
        self.name = name
        self.address = address
        self._handler = handler
        self._factory = protocol_factory
        self._ssl = ssl_context
        self._limit = limit
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._protocols: weakref.WeakSet = weakref.WeakSet()

    async def start(self) -> None:
        host, port = split_hostport(self.address)
        timeout = TLS_HANDSHAKE_TIMEOUT if self._ssl else None
        if self._handler is not None:
            self._server = await asyncio.start_server(self._run, host, port, ssl=self._ssl, limit=self._limit,
                                                      ssl_handshake_timeout=timeout)
        else:
            loop = asyncio.get_running_loop()
            self._server = await loop.create_server(self._protocol, host, port, ssl=self._ssl,
                                                    ssl_handshake_timeout=timeout)
        bound = self._server.sockets[0].getsockname()
        self.address = f"{bound[0]}:{bound[1]}"  # port 0 in tests becomes the real port

    def _protocol(self) -> Any:
        protocol = self._factory()
        self._protocols.add(protocol)
        return protocol

    def _in_flight(self) -> set[asyncio.Task]:
        # aiosmtpd runs each session in `_handler_coroutine`; waiting for it lets a DATA finish.
        sessions = {getattr(p, "_handler_coroutine", None) for p in list(self._protocols)}
        return self._tasks | {t for t in sessions if t is not None and not t.done()}

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
