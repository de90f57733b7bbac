"""The instant protocol's frames, version 1: what a client may send, checked field by field,
and the frames the server sends, built in one place. No I/O here, so every rule can be tested
by feeding text in. `docs/instant-protocol.md` shows an example of each frame.

Every frame is one JSON object in one websocket text message. Client frames carry `type`,
optionally `id` (echoed in the reply, so a client can match answers to requests) and `v`
(required on `auth`, where the version is settled for the connection). Server frames always
carry `type` and `v`. Fields a frame does not define are ignored, so a later 1.x may add some.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from certs.tokens import MAX_TOKEN_CHARS

from .limits import Limits

VERSION = 1
MAX_ID_CHARS = 64  # request ids and client message ids: a UUID is 36
MAX_SEQ = 2**53 - 1  # the largest integer a JavaScript client reads exactly
CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# C0 controls other than tab, newline, carriage return: they corrupt displays and logs, and
# PostgreSQL refuses NUL in text. Bidirectional embeddings, overrides and isolates (U+202A-202E,
# U+2066-2069) reorder what follows them on screen ("Trojan Source", CVE-2021-42574): a message
# could show one dose and hold another. The marks U+200E/200F/061C stay: they reorder nothing
# beyond the neutral characters beside them, and names in Arabic or Hebrew script need them.
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u202a-\u202e\u2066-\u2069]")
PRESENCE_STATES = ("online", "away")


class Close(IntEnum):
    """Close codes (RFC 6455 §7.4; 4000-4999 are the application's own)."""

    GOING_AWAY = 1001  # the server is shutting down: reconnect elsewhere or later
    UNSUPPORTED_DATA = 1003  # a binary frame: this protocol is JSON text
    INVALID_DATA = 1007  # a text message that is not UTF-8
    POLICY = 1008  # kept sending refused frames
    TOO_BIG = 1009  # a frame over max_frame_bytes (sent by the websockets layer itself)
    INTERNAL = 1011  # a server fault, or no pong within ping_timeout (as websockets does)
    TOKEN_EXPIRED = 4001  # reconnect with a fresh token and resubscribe with `after`: nothing is lost
    UNAUTHORIZED = 4003  # token refused, identity changed, or no authentication in time
    RESYNC = 4008  # this connection fell too far behind: reconnect and resubscribe with `after`
    TOO_MANY_CONNECTIONS = 4029  # connections_per_person reached


class FrameError(Exception):
    """A client frame that cannot be served; becomes an `error` frame with this code."""

    def __init__(self, code: str, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


@dataclass(frozen=True)
class Auth:
    token: str
    id: str | None = None


@dataclass(frozen=True)
class Subscribe:
    circle: int
    after: int | None  # the last seq the client holds; None: only what comes from now on
    id: str | None = None


@dataclass(frozen=True)
class Unsubscribe:
    circle: int
    id: str | None = None


@dataclass(frozen=True)
class Post:
    circle: int
    client_id: str  # the client's own id: a retry with the same one stores nothing twice
    text: str
    reply_to: int | None = None  # the seq of the message of the same circle this one answers
    id: str | None = None
    attachments: tuple[int, ...] = ()  # ids of documents the poster uploaded to this circle, not yet posted


@dataclass(frozen=True)
class History:
    circle: int
    before: int | None  # page backwards from this seq (exclusive); both None: the latest page
    after: int | None  # page forwards from this seq (exclusive)
    limit: int
    id: str | None = None


@dataclass(frozen=True)
class Search:
    circle: int
    q: str  # matched anywhere in a message's text, case-insensitively
    before: int | None  # the next page: results before this seq; None: from the latest
    id: str | None = None


@dataclass(frozen=True)
class Read:
    circle: int
    seq: int  # everything up to and including seq has been read
    id: str | None = None


@dataclass(frozen=True)
class Typing:
    circle: int
    id: str | None = None


@dataclass(frozen=True)
class Presence:
    state: str
    id: str | None = None


@dataclass(frozen=True)
class AlertAck:
    alert: int
    id: str | None = None


ClientFrame = Auth | Subscribe | Unsubscribe | Post | History | Search | Read | Typing | Presence | AlertAck


def parse(text: str, limits: Limits) -> ClientFrame:
    """One client frame from a websocket text message, or FrameError saying what is wrong."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise FrameError("bad_frame", "a frame is one JSON object") from None
    if not isinstance(data, dict):
        raise FrameError("bad_frame", "a frame is one JSON object")
    request_id = _request_id(data)
    kind = data.get("type")
    version = data.get("v", VERSION if kind != "auth" else None)
    if version != VERSION or isinstance(version, bool):
        raise FrameError("unsupported_version", f"this server speaks version {VERSION}", request_id)
    reader = _READERS.get(kind) if isinstance(kind, str) else None
    if reader is None:
        raise FrameError("unknown_type", f"unknown frame type {str(kind)[:40]!r}", request_id)
    try:
        return reader(_Fields(data, request_id), limits)
    except FrameError as exc:
        exc.request_id = request_id
        raise


class _Fields:
    """Typed access to one frame's fields; every failure names the field."""

    def __init__(self, data: dict[str, Any], request_id: str | None) -> None:
        self.data = data
        self.id = request_id

    def integer(self, name: str, *, required: bool = True, low: int = 0, high: int = MAX_SEQ) -> Any:
        value = self.data.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise FrameError("bad_frame", f"{name} must be an integer from {low} to {high}")
        return value

    def text(self, name: str, max_chars: int) -> str:
        value = self.data.get(name)
        if not isinstance(value, str) or not value.strip():
            raise FrameError("bad_frame", f"{name} must be a non-empty string")
        if len(value) > max_chars:
            raise FrameError("too_long", f"{name} is limited to {max_chars} characters")
        _check_characters(name, value)
        return value


def _request_id(data: dict[str, Any]) -> str | None:
    value = data.get("id")
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_CHARS:
        raise FrameError("bad_frame", f"id must be a string of 1 to {MAX_ID_CHARS} characters")
    _check_characters("id", value)
    return value


def _check_characters(name: str, value: str) -> None:
    if CONTROL.search(value):
        raise FrameError("bad_frame", f"{name} holds control or bidirectional override characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\ud800") is valid JSON but not text
        raise FrameError("bad_frame", f"{name} is not valid Unicode text") from None


def _auth(f: _Fields, _limits: Limits) -> Auth:
    return Auth(f.text("token", MAX_TOKEN_CHARS).strip(), f.id)


def _subscribe(f: _Fields, _limits: Limits) -> Subscribe:
    return Subscribe(f.integer("circle", low=1), f.integer("after", required=False), f.id)


def _unsubscribe(f: _Fields, _limits: Limits) -> Unsubscribe:
    return Unsubscribe(f.integer("circle", low=1), f.id)


def _post(f: _Fields, limits: Limits) -> Post:
    client_id = f.data.get("client_id")
    if not isinstance(client_id, str) or not CLIENT_ID.fullmatch(client_id):
        raise FrameError("bad_frame", "client_id must be 1 to 64 of A-Z a-z 0-9 . _ : - (a UUID will do)")
    attachments = f.data.get("attachments", [])
    if not isinstance(attachments, list) or len(attachments) > limits.max_attachments_per_message or not all(
            isinstance(a, int) and not isinstance(a, bool) and 1 <= a <= MAX_SEQ for a in attachments):
        raise FrameError("bad_frame", f"attachments must be a list of at most {limits.max_attachments_per_message} "
                                      f"attachment ids")
    if len(set(attachments)) != len(attachments):
        raise FrameError("bad_frame", "attachments names the same attachment twice")
    return Post(f.integer("circle", low=1), client_id, f.text("text", limits.max_text_chars),
                f.integer("reply_to", required=False, low=1), f.id, tuple(attachments))


def _history(f: _Fields, limits: Limits) -> History:
    before, after = f.integer("before", required=False, low=1), f.integer("after", required=False)
    if before is not None and after is not None:
        raise FrameError("bad_frame", "give before (page backwards) or after (page forwards), not both")
    limit = f.integer("limit", required=False, low=1, high=limits.max_history_page)
    return History(f.integer("circle", low=1), before, after, limit or limits.history_page, f.id)


def _search(f: _Fields, limits: Limits) -> Search:
    q = f.text("q", limits.max_search_chars).strip()
    if len(q) < 2:
        raise FrameError("bad_frame", "q must hold at least 2 characters")
    return Search(f.integer("circle", low=1), q, f.integer("before", required=False, low=1), f.id)


def _read(f: _Fields, _limits: Limits) -> Read:
    return Read(f.integer("circle", low=1), f.integer("seq"), f.id)


def _typing(f: _Fields, _limits: Limits) -> Typing:
    return Typing(f.integer("circle", low=1), f.id)


def _presence(f: _Fields, _limits: Limits) -> Presence:
    state = f.data.get("state")
    if state not in PRESENCE_STATES:
        raise FrameError("bad_frame", f"state must be one of {', '.join(PRESENCE_STATES)}")
    return Presence(state, f.id)


def _alert_ack(f: _Fields, _limits: Limits) -> AlertAck:
    return AlertAck(f.integer("alert", low=1), f.id)


_READERS = {"auth": _auth, "subscribe": _subscribe, "unsubscribe": _unsubscribe, "post": _post,
            "history": _history, "search": _search, "read": _read, "typing": _typing, "presence": _presence,
            "alert.ack": _alert_ack}


# --- server frames ----------------------------------------------------------------------------

def encode(frame: dict[str, Any]) -> str:
    """A server frame as the text of one websocket message (`v` first, compact UTF-8)."""
    return json.dumps({"v": VERSION, **frame}, ensure_ascii=False, separators=(",", ":"), default=str)


def reply(request_id: str | None, frame: dict[str, Any]) -> dict[str, Any]:
    """`frame` answering a request: it carries the request's id when the client gave one."""
    return {**frame, "id": request_id} if request_id is not None else frame


def error(code: str, message: str, request_id: str | None = None, **extra: Any) -> dict[str, Any]:
    return reply(request_id, {"type": "error", "code": code, "message": message, **extra})


def message(circle: int, seq: int, author: dict[str, str], client_id: str, text: str, at: str,
            reply_to: dict[str, Any] | None, attachments: list[dict[str, Any]] | None = None, kind: str = "text",
            event: dict[str, Any] | None = None) -> dict[str, Any]:
    """An item of a circle's timeline. `reply_to`: the quoted message ({seq, author, text: its
    start}), or None; `attachments`: the documents it carries ({id, name, type, size}), fetched
    from /api/circles/{circle}/attachments/{id}. `kind` "event": a hospital event, told in
    `text`, described in `event`, its author the hospital (not a member); "document": an
    IHE_XDM document that came by mail (hospital/incoming.py), `event` naming it and the mail."""
    frame = {"type": "message", "circle": circle, "seq": seq, "kind": kind, "author": author, "client_id": client_id,
             "text": text, "at": at, "reply_to": reply_to, "attachments": attachments or []}
    if event is not None:
        frame["event"] = event
    return frame
