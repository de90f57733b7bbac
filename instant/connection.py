"""One websocket connection: `websockets`' sans-IO protocol over the streams the HTTP server
handed over, a Session for the rules, the handlers for the work. Three tasks:

- the reader feeds bytes to the protocol and serves client frames one at a time, in order,
  and reads on only once the socket has drained what it wrote (the protocol's pongs);
- the writer empties the outbox: replies as they are, live messages through the circle's
  cursor (so a catch-up and the live stream never show a seq twice or skip one), catch-ups
  page by page from the store, waiting for the socket to drain after each write. A post of
  this connection whose ack is not written yet holds its circle's messages at that seq (a
  catch-up may find it in the store before the ack goes out); the ack releases them, so the
  author always reads the ack first;
- the timer pings, gives up on a missing pong, re-reads memberships, ends an expired token.

Memberships end at once when the hub tells of it (a `member.removed` on the circle's channel,
a `rights` event on the person's: the delegation a membership rested on may be gone); the
timer's periodic re-read is the floor for a change whose event was lost.

The outbox is bounded (frames and bytes). Hub delivery never waits: when a reader falls so far
behind that the bound is hit, the queue is dropped and the connection closed with 4008, and
the client resumes from its last seq. Memory per connection therefore has a ceiling. Any
other close goes out after the replies already queued, so a client learns why it was closed.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from directory.authn import AuthError
from web.metrics import WEBSOCKET_FRAMES_RECEIVED, WEBSOCKET_FRAMES_SENT

from . import frames
from .errors import Forbidden, InstantError
from .frames import Close, FrameError
from .hub import circle_channel, person_channel
from .session import Ping, Recheck, Session, Shut, Verdict

if TYPE_CHECKING:
    from .service import Instant

log = logging.getLogger("msante.instant")
READ_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Live:
    circle: int
    seq: int
    author: str
    client_id: str
    wire: str


@dataclass(frozen=True)
class Ack:
    """The answer to a post; writing it releases the circle's messages held for it."""

    circle: int
    client_id: str
    wire: str


@dataclass(frozen=True)
class CatchUp:
    circle: int


@dataclass(frozen=True)
class Closing:
    """Last in the outbox: the final frame (if any) and the close, after what was queued."""

    code: Close
    reason: str
    last: dict[str, Any] | None


class Signal:
    """asyncio.Event for one waiter: an Event allocates a deque for its waiters (760 bytes), and
    an idle websocket had two of them."""

    __slots__ = ("_set", "_waiter")

    def __init__(self) -> None:
        self._set = False
        self._waiter: asyncio.Future | None = None

    def set(self) -> None:
        self._set = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        if self._set:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None


class Outbox:
    """Frames waiting for the socket, bounded in number and in bytes. The queue exists only
    while it holds something (an empty deque is 760 bytes, and most websockets idle)."""

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self._items: deque[tuple[Any, int]] | None = None
        self._max_items, self._max_bytes = max_items, max_bytes
        self.bytes = 0
        self._ready = Signal()

    def offer(self, item: str | Live | Ack | CatchUp) -> bool:
        size = len(item) if isinstance(item, str) else len(item.wire) if isinstance(item, (Live, Ack)) else 0
        if (self._items and len(self._items) >= self._max_items) or self.bytes + size > self._max_bytes:
            return False
        self._put(item, size)
        return True

    def close(self, closing: Closing, *, drop_queued: bool) -> None:
        """Queue the close (beyond the bounds: it is the last item), after the rest or instead of it."""
        if drop_queued:
            self._items = None
            self.bytes = 0
        self._put(closing, 0)

    def _put(self, item: Any, size: int) -> None:
        if self._items is None:
            self._items = deque()
        self._items.append((item, size))
        self.bytes += size
        self._ready.set()

    async def get(self) -> str | Live | Ack | CatchUp | Closing:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        item, size = self._items.popleft()
        if not self._items:
            self._items = None
        self.bytes -= size
        return item


class Connection:
    def __init__(self, instant: Instant, protocol: ServerProtocol, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, peer: str, on_close: Callable[[int, str], None]) -> None:
        self._instant = instant
        self._on_close = on_close  # counts closes by code and side (4008s tell an operator clients lag)
        self._limits = instant.limits
        self._protocol = protocol
        self._reader = reader
        self._writer = writer
        self._peer = peer
        self.session = Session(self._limits, time.monotonic())
        self._outbox = Outbox(self._limits.send_queue_frames, self._limits.send_queue_bytes)
        self._wake = Signal()  # the timer re-reads its deadlines
        self._fragments: list[bytes] = []
        self._closing = False
        self._followed: set[int] = set()  # circles the hub delivers to us (cursors may already be gone)
        self._unacked: set[tuple[int, str]] = set()  # (circle, client_id) of posts whose ack is not written
        self._held: set[int] = set()  # circles whose next message waits for such an ack
        self._tasks: set[asyncio.Task] = set()
        self.me: dict[str, str] = {}  # {id, name} once admitted

    @property
    def _principal(self):  # noqa: ANN202 - Principal, set once authenticated
        assert self.session.principal is not None
        return self.session.principal

    async def run(self, token: str | None) -> None:
        """Serve until the peer leaves or the connection is closed; `token` came in the
        Sec-WebSocket-Protocol header (the first frame must authenticate otherwise)."""
        tasks = [asyncio.create_task(self._write_loop()), asyncio.create_task(self._timer_loop())]
        for task in tasks:
            task.add_done_callback(self._task_ended)
        try:
            if token is not None:
                await self._serve(frames.Auth(token))
            await self._read_loop()
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._leave()

    def _task_ended(self, task: asyncio.Task) -> None:
        """The writer or the timer stopped: unless the connection is ending anyway, that is a
        fault, and a connection without them must not linger."""
        if task.cancelled():
            return
        failure = task.exception()
        if failure is not None and not isinstance(failure, (ConnectionError, OSError)):
            log.error("websocket task failed", exc_info=failure)
            self.shut(Close.INTERNAL, "internal error")

    def shut(self, code: Close, reason: str, last: dict[str, Any] | None = None) -> None:
        """Close the connection: `last`, then the close frame, go out after the frames already
        queued (all of them dropped instead for a resync: the client is too far behind to want
        them). Nothing more is queued or served; the socket is cut if the peer has not
        completed the closing handshake within close_timeout."""
        if self._closing:
            return
        self._closing = True
        self._outbox.close(Closing(code, reason, last), drop_queued=code == Close.RESYNC)
        asyncio.get_running_loop().call_later(self._limits.close_timeout, self._writer.transport.abort)

    # --- reading ------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        while True:
            data = await self._reader.read(READ_CHUNK)
            if data:
                self._protocol.receive_data(data)
            else:
                self._protocol.receive_eof()
            for event in self._protocol.events_received():
                await self._on_frame(event)
            self._flush()  # pongs, the echo of a close
            if not data or self._protocol.state is State.CLOSED:
                return
            # Read no more until the peer has taken what we wrote: pongs are written here, not
            # through the bounded outbox, and a client that pings without reading would
            # otherwise grow the socket's write buffer without end.
            await self._writer.drain()

    async def _on_frame(self, frame: Frame) -> None:
        if frame.opcode in (Opcode.PING, Opcode.PONG):
            close = self.session.control(time.monotonic())
            if close:
                self.shut(close, "too many frames")
            if frame.opcode is Opcode.PONG:
                self.session.pong(bytes(frame.data), time.monotonic())
        elif frame.opcode is Opcode.BINARY:
            self.shut(Close.UNSUPPORTED_DATA, "this protocol is JSON text frames")
        elif frame.opcode in (Opcode.TEXT, Opcode.CONT) and not self._closing:
            self._fragments.append(bytes(frame.data))  # websockets bounds the message at max_frame_bytes
            if frame.fin:
                data, self._fragments = b"".join(self._fragments), []
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError:
                    self.shut(Close.INVALID_DATA, "text frames must be UTF-8")
                    return
                await self._on_text(text)

    async def _on_text(self, text: str) -> None:
        try:
            frame = frames.parse(text, self._limits)
        except FrameError as exc:
            WEBSOCKET_FRAMES_RECEIVED.labels(type="malformed").inc()
            close = self.session.malformed()
            error = frames.error(exc.code, exc.message, exc.request_id)
            if close:
                self.shut(close, "too many refused frames", error)
            else:
                self._send(error)
            return
        WEBSOCKET_FRAMES_RECEIVED.labels(type=type(frame).__name__.lower()).inc()
        refusal = self.session.admit(frame, time.monotonic())
        if refusal is not None:
            extra = {"retry_after": round(refusal.retry_after, 2)} if refusal.retry_after else {}
            error = frames.error(refusal.code, refusal.message, frame.id, **extra)
            if refusal.close:
                self.shut(refusal.close, refusal.message, error)
            else:
                self._send(error)
            return
        await self._serve(frame)

    async def _serve(self, frame: frames.ClientFrame) -> None:
        try:
            await getattr(self, _HANDLERS[type(frame)])(frame)
        except InstantError as exc:
            self._send(frames.error(exc.code, exc.message, frame.id))
        except Exception:
            log.exception("serving %s failed", type(frame).__name__)
            self._send(frames.error("internal", "internal error", frame.id))

    # --- client frames ------------------------------------------------------------------------

    async def _auth(self, frame: frames.Auth) -> None:
        instant = self._instant
        try:
            principal = await instant.authenticator.by_token(frame.token, source=self._peer, protocol="websocket")
        except AuthError as exc:
            self.shut(Close.UNAUTHORIZED, f"token refused: {exc.code}",
                      frames.error("invalid_token", str(exc), frame.id, reason=exc.code))
            return
        expires = principal.expires_at.timestamp() if principal.expires_at else time.time()
        refusal = self.session.authenticated(principal, expires)
        if refusal is not None:
            self.shut(refusal.close or Close.UNAUTHORIZED, refusal.message,
                      frames.error(refusal.code, refusal.message, frame.id))
            return
        self._wake.set()  # a new expiry for the timer
        if not self.me:
            if not await instant.hub.admit(principal.id, self._limits.connections_per_person):
                self.shut(Close.TOO_MANY_CONNECTIONS, "too many connections for this person",
                          frames.error("too_many_connections", "close another connection first", frame.id))
                return
            found = await instant.store.professional(principal.id)
            self.me = {"id": principal.id, "name": found["name"] if found else principal.display}
            instant.hub.attach(person_channel(principal.id), self)
        limits = self._limits
        self._send(frames.reply(frame.id, {
            "type": "welcome", "user": self.me, "admin": principal.admin, "expires_at": int(expires),
            "circles": await instant.circles.list_for(principal, self._peer),
            "limits": {"max_text_chars": limits.max_text_chars, "max_frame_bytes": limits.max_frame_bytes,
                       "frames_per_second": limits.frames_per_second, "history_page": limits.history_page,
                       "max_attachment": instant.max_attachment,
                       "max_attachments_per_message": limits.max_attachments_per_message}}))
        await self._resend_alerts()

    async def _subscribe(self, frame: frames.Subscribe) -> None:
        """Listen first, then check: a removal committed after the check arrives as an event
        (and `_cut` takes the circle back), one committed before is seen by the check."""
        instant, circle = self._instant, frame.circle
        if not self.session.can_follow(circle):
            raise InstantError(f"at most {self._limits.max_subscriptions} circles per connection",
                               "too_many_subscriptions")
        new = circle not in self._followed
        if new:
            self._followed.add(circle)
            instant.hub.attach(circle_channel(circle), self)
        try:
            await instant.circles.require_member(self._principal, circle, "circle.subscribe", self._peer)
        except Forbidden:
            if new:
                self._followed.discard(circle)
                await instant.hub.detach(circle_channel(circle), self)
            raise
        marker, head, unread = await instant.messages.read_state(self._principal, circle)
        if circle not in self._followed:
            raise Forbidden(f"you were removed from care circle {circle}")
        self.session.follow(circle, head if frame.after is None else min(frame.after, head))
        if new:
            await instant.hub.set_presence(circle, self, self.me, self.session.presence)
        await instant.audit.record(self._principal.actor, "circle.subscribe", target=str(circle),
                                   source=self._peer, after=frame.after, head=head)
        self._send(frames.reply(frame.id, {"type": "subscribed", "circle": circle, "head": head, "read": marker,
                                           "unread": unread, "present": await instant.hub.present(circle),
                                           "receipts": await instant.store.receipts(circle)}))
        self._offer(CatchUp(circle))  # what lies between `after` and now, and anything the bus drops

    async def _unsubscribe(self, frame: frames.Unsubscribe) -> None:
        if not self.session.unfollow(frame.circle):
            raise InstantError(f"not subscribed to circle {frame.circle}", "not_subscribed")
        self._followed.discard(frame.circle)
        await self._instant.hub.unfollow(frame.circle, self, self.me)
        self._send(frames.reply(frame.id, {"type": "unsubscribed", "circle": frame.circle, "reason": "asked"}))

    async def _post(self, frame: frames.Post) -> None:
        key = (frame.circle, frame.client_id)
        acked = False

        def acknowledge(message: dict, duplicate: bool) -> None:
            nonlocal acked
            acked = True
            self._offer(Ack(frame.circle, frame.client_id, frames.encode(frames.reply(frame.id, {
                "type": "ack", "circle": frame.circle, "client_id": frame.client_id, "seq": message["seq"],
                "at": message["at"], "duplicate": duplicate}))))

        self._unacked.add(key)
        try:
            await self._instant.messages.post(self._principal, frame.circle, frame.client_id, frame.text,
                                              self._peer, acknowledge, frame.reply_to, frame.attachments,
                                              self.me["name"])
        finally:
            if not acked:  # refused before it was stored: nothing to wait for
                self._unacked.discard(key)

    async def _history(self, frame: frames.History) -> None:
        page, more = await self._instant.messages.history(
            self._principal, frame.circle, before=frame.before, after=frame.after, limit=frame.limit,
            source=self._peer)
        self._send(frames.reply(frame.id, {"type": "history", "circle": frame.circle, "messages": page,
                                           "more": more}))

    async def _search(self, frame: frames.Search) -> None:
        found, more = await self._instant.messages.search(self._principal, frame.circle, frame.q, before=frame.before,
                                                          limit=self._limits.search_page, source=self._peer)
        self._send(frames.reply(frame.id, {"type": "search", "circle": frame.circle, "messages": found,
                                           "more": more}))

    async def _read(self, frame: frames.Read) -> None:
        marker, unread = await self._instant.messages.mark_read(self._principal, frame.circle, frame.seq, self._peer,
                                                                self.me)
        self._send(frames.reply(frame.id, {"type": "read", "circle": frame.circle, "seq": marker,
                                           "unread": unread}))

    async def _typing(self, frame: frames.Typing) -> None:
        if self.session.may_announce_typing(frame.circle, time.monotonic()):
            await self._instant.bus.publish(circle_channel(frame.circle), {
                "type": "typing", "circle": frame.circle, "user": self.me})

    async def _presence(self, frame: frames.Presence) -> None:
        self.session.presence = frame.state
        for circle in list(self.session.cursors):
            await self._instant.hub.set_presence(circle, self, self.me, frame.state)

    async def _alert_ack(self, frame: frames.AlertAck) -> None:
        alert = await self._instant.alerts.acknowledge(self._principal, frame.alert, self._peer)
        self._send(frames.reply(frame.id, {"type": "alert", "alert": alert}))

    # --- what the hub delivers ----------------------------------------------------------------

    def deliver(self, channel: str, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if channel.startswith("person:"):
            if kind == "rights":  # a delegation a membership rests on may have ended
                self._spawn(self._recheck())
            elif kind in ("alert", "read"):
                self._offer(frames.encode({k: v for k, v in event.items() if k != "channel"}))
            elif kind == "overflow":  # alerts were dropped on the way: send the pending ones again
                self._spawn(self._resend_alerts())
            return
        circle = int(channel.partition(":")[2])
        if kind == "member.removed":
            if event["idnat"] == self.me.get("id"):
                self._cut(circle, "removed")
            return
        if circle not in self.session.cursors:
            return
        if kind == "message":
            self._offer(Live(circle, event["seq"], event["author"], event["client_id"], event["wire"]))
        elif kind in ("typing", "presence") and event["user"]["id"] != self.me.get("id"):
            self._offer(frames.encode({k: v for k, v in event.items() if k != "channel"}))
        elif kind in ("receipt", "notice"):  # read markers (the reader's own connections too), hospital receipts
            self._offer(frames.encode({k: v for k, v in event.items() if k != "channel"}))
        elif kind == "overflow":  # the bus lost events of this circle: the store has them
            self._offer(CatchUp(circle))

    def _offer(self, item: str | Live | Ack | CatchUp) -> None:
        if not self._closing and not self._outbox.offer(item):
            log.info("websocket of %s too far behind (%d bytes queued): closing for a resync",
                     self.me.get("id", "?"), self._outbox.bytes)
            self.shut(Close.RESYNC, "too far behind: reconnect and resubscribe with after")

    def _cut(self, circle: int, reason: str) -> None:
        """The person's membership ended (`reason` as in the `unsubscribed` frame): from this
        instant nothing more of the circle is written. Audited as a refused subscription."""
        if circle in self._followed:
            self._followed.discard(circle)
            if self.session.unfollow(circle):
                self._send({"type": "unsubscribed", "circle": circle, "reason": reason})
            self._spawn(self._instant.hub.unfollow(circle, self, self.me))
            self._spawn(self._instant.audit.record(self._principal.actor, "circle.subscribe", target=str(circle),
                                                   outcome="denied", source=self._peer, reason=reason, live=True))

    async def _recheck(self) -> None:
        """Re-read the memberships behind the circles followed; cut those that ended."""
        ended = await self._instant.circles.ended(self._principal, list(self.session.cursors))
        for circle, reason in ended.items():
            self._cut(circle, reason)

    async def _resend_alerts(self) -> None:
        for alert in await self._instant.alerts.pending_for(self._principal):
            self._send({"type": "alert", "alert": alert})

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- writing ------------------------------------------------------------------------------

    def _send(self, frame: dict[str, Any]) -> None:
        self._offer(frames.encode(frame))

    def _flush(self) -> None:
        for data in self._protocol.data_to_send():
            if data:
                self._writer.write(data)
            else:  # the protocol's end of stream: TLS cannot half-close, so close
                self._writer.close()

    def _write_text(self, text: str) -> None:
        if self._protocol.state is State.OPEN:
            self._protocol.send_text(text.encode("utf-8"))
            WEBSOCKET_FRAMES_SENT.inc()
            self._flush()

    async def _write_loop(self) -> None:
        while True:
            item = await self._outbox.get()
            if isinstance(item, str):
                self._write_text(item)
            elif isinstance(item, Closing):
                if item.last is not None:
                    self._write_text(frames.encode(item.last))
                if self._protocol.state is State.OPEN:
                    self._protocol.send_close(item.code, item.reason)
                    self._flush()
                await self._writer.drain()
                return
            elif isinstance(item, Ack):
                self._write_text(item.wire)
                self._unacked.discard((item.circle, item.client_id))
                if item.circle in self._held:
                    self._held.discard(item.circle)
                    await self._catch_up(item.circle)
            elif isinstance(item, Live):
                cursor = self.session.cursors.get(item.circle)
                verdict = cursor.verdict(item.seq) if cursor else Verdict.SEEN
                if verdict is Verdict.NEXT and self._awaits_ack(item.circle, item.author, item.client_id):
                    self._held.add(item.circle)
                elif verdict is Verdict.NEXT:
                    assert cursor is not None
                    cursor.advance(item.seq)
                    self._write_text(item.wire)
                elif verdict is Verdict.GAP:  # an event went missing: the store has the message
                    await self._catch_up(item.circle, item.seq)
            else:
                await self._catch_up(item.circle)
            await self._writer.drain()

    async def _catch_up(self, circle: int, reaching: int | None = None) -> None:
        """Write what the store holds after the cursor; `reaching`: the live message that showed
        a gap (the first page is then shared with the process's other connections)."""
        page_size = self._limits.max_history_page
        while (cursor := self.session.cursors.get(circle)) is not None:
            page = await self._instant.messages.catch_up(circle, cursor.delivered, page_size, reaching=reaching)
            reaching = None
            for message in page:
                if self.session.cursors.get(circle) is not cursor:  # unfollowed meanwhile
                    return
                if self._awaits_ack(circle, message["author"]["id"], message["client_id"]):
                    self._held.add(circle)  # its ack releases it
                    return
                cursor.advance(message["seq"])
                self._write_text(frames.encode(frames.message(**message)))
            await self._writer.drain()
            if len(page) < page_size:
                return

    def _awaits_ack(self, circle: int, author: str, client_id: str) -> bool:
        """A message this connection posted, whose ack is not written yet: it must wait."""
        return author == self.me.get("id") and (circle, client_id) in self._unacked

    # --- timers and the end ---------------------------------------------------------------------

    async def _timer_loop(self) -> None:
        while True:
            now, wall = time.monotonic(), time.time()
            action = self.session.tick(now, wall)
            if isinstance(action, Ping):
                if self._protocol.state is State.OPEN:
                    self._protocol.send_ping(action.payload)
                    self._flush()
            elif isinstance(action, Shut):
                self.shut(action.code, action.reason)
                return
            elif isinstance(action, Recheck):
                await self._recheck()
            else:  # asyncio.timeout, not wait_for: that wraps the wait in a task of its own on 3.11
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.session.next_wakeup(now, wall)):
                        await self._wake.wait()

    async def _leave(self) -> None:
        self._closing = True
        sent, received = self._protocol.close_sent, self._protocol.close_rcvd
        ours = sent is not None and not self._protocol.close_rcvd_then_sent
        close = sent if ours else received
        self._on_close(close.code if close else 1006, "server" if ours else "client")  # 1006: no close frame
        for task in list(self._tasks):
            task.cancel()
        for circle in list(self._followed):
            await self._instant.hub.unfollow(circle, self, self.me)
        if self.me:
            await self._instant.hub.detach(person_channel(self.me["id"]), self)
            await self._instant.hub.leave(self.me["id"])


_HANDLERS = {frames.Auth: "_auth", frames.Subscribe: "_subscribe", frames.Unsubscribe: "_unsubscribe",
             frames.Post: "_post", frames.History: "_history", frames.Search: "_search", frames.Read: "_read",
             frames.Typing: "_typing", frames.Presence: "_presence", frames.AlertAck: "_alert_ack"}
