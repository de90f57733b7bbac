"""HTTP/1.1 over asyncio streams, on h11's sans-IO connection.

h11 does the RFC 9112 parsing and framing; this module adds what a server needs around it:
limits (header size, body size, idle time, a deadline for each request), keep-alive, one
JSON error shape, and a hand-off point for connections that upgrade (the websocket at /ws).
How many connections a client may hold is the listeners' business, not this module's.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

import h11

log = logging.getLogger("msante.http")

READ_CHUNK = 64 * 1024
DECIMAL = re.compile(r"[0-9]{1,18}")  # ASCII only: str.isdigit() also says yes to "²", which int() refuses


@dataclass(frozen=True)
class HttpLimits:
    """What one request may cost the HTTPS listener. `DEFAULT` is what `msante serve` uses;
    tests replace it to reach a bound in a second rather than a minute."""

    max_header_bytes: int = 16 * 1024  # nginx's large_client_header_buffers default is 8-32 KB
    max_body_bytes: int = 1024 * 1024  # API bodies are small JSON documents
    idle_timeout: float = 30.0  # seconds to wait for the first byte of the next request
    # From a request's first byte to its last, however slowly it trickles in (slowloris): each
    # read waiting idle_timeout alone would let a client hold a connection for hours. Apache's
    # mod_reqtimeout gives the headers 20 s; 1 MiB of body in 20 s is 50 KB/s.
    request_timeout: float = 20.0


DEFAULT = HttpLimits()


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
        """The body as JSON. ValueError covers bad syntax, bytes that are not UTF-8 and integers
        of more than 4,300 digits (Python's int() limit, CVE-2020-10735); RecursionError a body
        nested thousands deep."""
        try:
            return json.loads(self.body or b"null")
        except (ValueError, RecursionError):
            raise HttpError(400, "bad_json", "the request body is not valid JSON") from None


def decimal(value: str) -> int | None:
    """`value` as a non-negative integer when it is 1 to 18 ASCII digits, else None."""
    return int(value) if DECIMAL.fullmatch(value) else None


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
    """A response that takes the connection over (websocket): `run(reader, writer)`. It lasts as
    long as the connection, so it is handed neither the request nor h11's state: a websocket
    held them (4 KiB of headers and parser state) for hours."""

    def __init__(self, run: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]):
        super().__init__(101)
        self.run = run


SECURITY_HEADERS = {
    "strict-transport-security": "max-age=31536000",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


BodyLimit = Callable[[str, str], "int | None"]  # (method, path) -> a route's own body limit, or None


async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler,
                           limits: HttpLimits | None = None, body_limit: BodyLimit | None = None) -> None:
    """Serve requests on one connection until the peer leaves, an error, or a timeout.
    `body_limit` lets a route (an upload) take more, or less, than `limits.max_body_bytes`."""
    limits = limits or DEFAULT  # read for each connection: tests replace it
    peername = writer.get_extra_info("peername")
    peer = peername[0] if isinstance(peername, tuple) else str(peername or "")
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
    try:
        while True:
            request = await _read_request(conn, reader, writer, peer, limits, body_limit)
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
                del conn, request  # not held for the upgraded connection's life
                await response.run(reader, writer)
                return
            await _send(conn, writer, response, head=request.method == "HEAD")
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
                        peer: str, limits: HttpLimits, body_limit: BodyLimit | None) -> Request | None:
    """The next request, or None when the connection is to end. The wait for its first byte
    is bounded by idle_timeout, the whole request by request_timeout from that byte on."""
    head: h11.Request | None = None
    body = bytearray()
    deadline = time.monotonic() + limits.request_timeout if conn.trailing_data[0] else None
    max_body = limits.max_body_bytes
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                await _send(conn, writer, _error(HttpError(status, "bad_request", str(exc) or "malformed request")))
            return None
        if event is h11.NEED_DATA:
            wait = limits.idle_timeout if deadline is None else deadline - time.monotonic()
            try:
                data = await asyncio.wait_for(reader.read(READ_CHUNK), max(0.0, wait))
            except asyncio.TimeoutError:
                if deadline is not None:  # part of a request came: RFC 9110 §15.5.9
                    await _send(conn, writer, _error(HttpError(
                        408, "request_timeout", f"a request must arrive within {limits.request_timeout:g} s")))
                return None
            if deadline is None:
                deadline = time.monotonic() + limits.request_timeout
            conn.receive_data(data)
            if not data:
                if head is None:
                    return None
        elif isinstance(event, h11.Request):
            if _head_size(event) > limits.max_header_bytes:  # h11 checks only a head still incomplete
                await _send(conn, writer, _error(HttpError(
                    431, "headers_too_large", f"request head over {limits.max_header_bytes} bytes")))
                return None
            head = event
            if body_limit is not None:
                path = urlsplit(event.target.decode("latin-1")).path or "/"
                own = body_limit(event.method.decode("ascii", "replace"), path)
                if own is not None and own > max_body and deadline is not None:
                    # an upload gets the same floor rate as any body (max_body_bytes per
                    # request_timeout), not the same time: 10 MB at 50 KB/s is 200 s
                    deadline += limits.request_timeout * (own / max_body - 1)
                max_body = max_body if own is None else own
            declared = _header(event.headers, b"content-length")
            if declared and declared.isdigit() and int(declared) > max_body:
                await _send(conn, writer, _error(HttpError(413, "too_large", f"body over {max_body} bytes")))
                return None
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > max_body:
                await _send(conn, writer, _error(HttpError(413, "too_large", f"body over {max_body} bytes")))
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


def _head_size(request: h11.Request) -> int:
    """The octets of the request line and header fields, as sent less optional whitespace."""
    line = len(request.method) + len(request.target) + len(b"  HTTP/1.1\r\n")
    return line + sum(len(name) + len(value) + 4 for name, value in request.headers) + 2


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def _send(conn: h11.Connection, writer: asyncio.StreamWriter, response: Response, *,
                head: bool = False) -> None:
    """`head`: the answer to HEAD, the GET's fields without its body (RFC 9110 §9.3.2); h11
    refuses a body there, which used to drop the connection."""
    headers = {**SECURITY_HEADERS, **response.headers}
    if response.status != 204:  # RFC 9110 §8.6: no Content-Length on 204
        headers.update({"content-type": response.content_type, "content-length": str(len(response.body))})
    data = conn.send(h11.Response(status_code=response.status, headers=list(headers.items())))
    data += conn.send(h11.Data(data=response.body)) if response.body and not head else b""
    data += conn.send(h11.EndOfMessage())
    writer.write(data)
    await writer.drain()


def _error(exc: HttpError) -> Response:
    return Response.json({"error": exc.code, "message": exc.message}, exc.status, exc.headers)
