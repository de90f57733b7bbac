"""HTTP/1.1 over asyncio streams, on h11's sans-IO connection.

h11 does the RFC 9112 parsing and framing; this module adds what a server needs around it:
limits (header size, body size, idle time), keep-alive, one JSON error shape, and a
hand-off point for connections that upgrade (the websocket at /ws).
"""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

import h11

log = logging.getLogger("msante.http")

MAX_HEADER_BYTES = 16 * 1024  # nginx's large_client_header_buffers default is 8-32 KB
MAX_BODY_BYTES = 1024 * 1024  # API bodies are small JSON documents
IDLE_TIMEOUT = 30.0  # seconds to wait for the next request on a kept-alive connection
READ_CHUNK = 64 * 1024


class HttpError(Exception):
    """Raised by handlers: becomes a JSON error response `{"error": code, "message": …}`."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes
    peer: str
    path: str = ""
    query: dict[str, list[str]] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)  # filled by the router

    def __post_init__(self) -> None:
        parts = urlsplit(self.target)
        self.path = parts.path or "/"
        self.query = parse_qs(parts.query, keep_blank_values=True)

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise HttpError(400, "bad_json", "the request body is not valid JSON") from None


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> "Response":
        body = json.dumps(data, ensure_ascii=False, indent=None, default=str).encode()
        return cls(status, body, "application/json", headers or {})

    @classmethod
    def text(cls, text: str, content_type: str = "text/plain; charset=utf-8", status: int = 200) -> "Response":
        return cls(status, text.encode(), content_type)


Handler = Callable[[Request], Awaitable[Response]]


class Upgrade(Response):
    """A response that takes the connection over (websocket): `run(reader, writer, request)`."""

    def __init__(self, run: Callable[[asyncio.StreamReader, asyncio.StreamWriter, Request], Awaitable[None]]):
        super().__init__(101)
        self.run = run


SECURITY_HEADERS = {
    "strict-transport-security": "max-age=31536000",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler) -> None:
    """Serve requests on one connection until the peer leaves, an error, or the idle timeout."""
    peername = writer.get_extra_info("peername")
    peer = peername[0] if isinstance(peername, tuple) else str(peername or "")
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
    try:
        while True:
            request = await _read_request(conn, reader, writer, peer)
            if request is None:
                return
            try:
                response = await handler(request)
            except HttpError as exc:
                response = _error(exc)
            except Exception:  # a bug must not kill the listener; it is logged with its trace
                log.exception("handler failed for %s %s", request.method, request.path)
                response = _error(HttpError(500, "internal", "internal error"))
            if isinstance(response, Upgrade):
                await response.run(reader, writer, request)
                return
            await _send(conn, writer, response)
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()
    except (ConnectionError, asyncio.IncompleteReadError, h11.LocalProtocolError):
        return
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass


async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        peer: str) -> Request | None:
    head: h11.Request | None = None
    body = bytearray()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                await _send(conn, writer, _error(HttpError(status, "bad_request", str(exc) or "malformed request")))
            return None
        if event is h11.NEED_DATA:
            try:
                data = await asyncio.wait_for(reader.read(READ_CHUNK), IDLE_TIMEOUT)
            except asyncio.TimeoutError:
                return None
            conn.receive_data(data)
            if not data:
                if head is None:
                    return None
        elif isinstance(event, h11.Request):
            head = event
            declared = _header(event.headers, b"content-length")
            if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
                await _send(conn, writer, _error(HttpError(413, "too_large", f"body over {MAX_BODY_BYTES} bytes")))
                return None
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY_BYTES:
                await _send(conn, writer, _error(HttpError(413, "too_large", f"body over {MAX_BODY_BYTES} bytes")))
                return None
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            headers: dict[str, str] = {}
            for name, value in head.headers:
                key = name.decode("latin-1").lower()
                text = value.decode("latin-1")
                headers[key] = f"{headers[key]}, {text}" if key in headers else text
            return Request(head.method.decode("ascii"), head.target.decode("latin-1"), headers, bytes(body), peer)
        elif isinstance(event, h11.ConnectionClosed):
            return None


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def _send(conn: h11.Connection, writer: asyncio.StreamWriter, response: Response) -> None:
    headers = {**SECURITY_HEADERS, **response.headers}
    if response.status != 204:  # RFC 9110 §8.6: no Content-Length on 204
        headers.update({"content-type": response.content_type, "content-length": str(len(response.body))})
    data = conn.send(h11.Response(status_code=response.status, headers=list(headers.items())))
    data += conn.send(h11.Data(data=response.body)) if response.body else b""
    data += conn.send(h11.EndOfMessage())
    writer.write(data)
    await writer.drain()


def _error(exc: HttpError) -> Response:
    return Response.json({"error": exc.code, "message": exc.message}, exc.status, exc.headers)
