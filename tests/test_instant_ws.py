"""The instant protocol end to end: a running server, TLS with the dev CA, the `websockets`
client as the peer. The demo care circle (1) has Karim Payet as coordinator and Jean Dupont,
Claire Leroy and Sophie Hoarau as members; Marie Grondin is outside it."""
from __future__ import annotations

import asyncio
import gc
import itertools
import json
import logging
import sys
import time
import uuid
from dataclasses import replace

import pytest
import websockets
import websockets.http11
from sqlalchemy import select
from websockets.frames import Frame, Opcode

import instant.limits
import web.http
from store.schema import audit, circle_messages
from tests import scrape
from tests.test_api import raw_tls, token_for
from tests.test_instant_api import api

GP, URGENTIST, NURSE, COORDINATOR, PHARMACIST = (
    "810001045367", "810002000015", "810002000023", "810002000031", "810002000049")
CIRCLE = 1


class Client:
    """One websocket connection, as a test drives it: frames that arrive while the test waits
    for another one are kept for later `expect` calls."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.inbox: list[dict] = []
        self.welcome: dict = {}
        self._ids = itertools.count(1)

    @classmethod
    async def connect(cls, server, idnat: str | None = None, *, token: str | None = None, auth: bool = True,
                      **options) -> Client:
        port = server.listeners["https"].rsplit(":", 1)[1]
        options.setdefault("subprotocols", ["msante.v1"])
        ws = await websockets.connect(f"wss://localhost:{port}/ws", ssl=server.client_tls(), **options)
        client = cls(ws)
        if auth:
            client.welcome = await client.request(type="auth", v=1, token=token or token_for(server, idnat))
            assert client.welcome["type"] == "welcome", client.welcome
        return client

    async def send(self, **frame) -> None:
        await self.ws.send(json.dumps(frame))

    async def request(self, **frame) -> dict:
        frame["id"] = f"r{next(self._ids)}"
        await self.send(**frame)
        return await self.expect(id=frame["id"])

    async def expect(self, timeout: float = 5.0, where=lambda frame: True, **fields) -> dict:  # noqa: ANN001
        """The first frame received (now or earlier) whose fields have these values and that
        satisfies `where`."""
        for i, frame in enumerate(self.inbox):
            if _matches(frame, fields) and where(frame):
                return self.inbox.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            frame = json.loads(await asyncio.wait_for(self.ws.recv(), max(0.01, deadline - time.monotonic())))
            if _matches(frame, fields) and where(frame):
                return frame
            self.inbox.append(frame)

    async def nothing(self, wait: float = 0.5, where=lambda frame: True, **fields) -> None:  # noqa: ANN001
        """No frame with these fields (satisfying `where`) arrives within `wait` seconds."""
        with pytest.raises(asyncio.TimeoutError):
            frame = await self.expect(timeout=wait, where=where, **fields)
            pytest.fail(f"unexpected frame {frame}")

    async def messages(self, count: int, circle: int = CIRCLE, timeout: float = 5.0) -> list[int]:
        return [(await self.expect(timeout, type="message", circle=circle))["seq"] for _ in range(count)]

    async def close_code(self, timeout: float = 10.0) -> int:
        """Read until the server closes; its close code."""
        with pytest.raises(websockets.ConnectionClosed) as closed:
            async with asyncio.timeout(timeout):
                while True:
                    self.inbox.append(json.loads(await self.ws.recv()))
        assert closed.value.rcvd is not None, "closed without a close frame"
        return closed.value.rcvd.code


def _matches(frame: dict, fields: dict) -> bool:
    return all(frame.get(k) == v for k, v in fields.items())


@pytest.fixture
async def connect(server):
    """Opens clients for the test and closes them before the server stops."""
    opened: list[Client] = []

    async def open_client(idnat: str | None = None, **kwargs) -> Client:
        opened.append(client := await Client.connect(server, idnat, **kwargs))
        return client
    yield open_client
    for client in opened:
        await client.ws.close()


@pytest.fixture
def limits(request, monkeypatch):
    """Tighter limits for the server the test starts (list this fixture before `server`)."""
    monkeypatch.setattr(instant.limits, "DEFAULT", replace(instant.limits.DEFAULT, **request.param))


async def post(client: Client, text: str, circle: int = CIRCLE, client_id: str | None = None) -> dict:
    ack = await client.request(type="post", circle=circle, client_id=client_id or str(uuid.uuid4()), text=text)
    assert ack["type"] == "ack", ack
    return ack


async def audited(server, action: str, outcome: str = "ok") -> list[tuple[str, str]]:
    """(actor, target) of the audit rows for `action` (read in a thread: the helper runs its own loop)."""
    rows = await asyncio.to_thread(server.rows, select(audit.c.actor, audit.c.target).where(
        audit.c.action == action, audit.c.outcome == outcome))
    return [(r["actor"], r["target"]) for r in rows]


async def stored_messages(server) -> int:
    return len(await asyncio.to_thread(server.rows, select(circle_messages.c.id)))


async def cli(server, *args: str) -> int:
    return await asyncio.to_thread(server.cli, *args)


async def test_conversation_every_frame(server, connect):
    gp, nurse = await connect(GP), await connect(NURSE)
    assert gp.welcome["user"] == {"id": GP, "name": "Dr Jean DUPONT"}
    assert [c["id"] for c in gp.welcome["circles"]] == [CIRCLE]
    assert gp.welcome["circles"][0]["patient"]["family_name"] == "TECHER"
    assert gp.welcome["limits"]["max_text_chars"] == 4000
    assert (await gp.expect(type="alert"))["alert"]["data"] == {"circle": CIRCLE, "change": "created"}

    subscribed = await gp.request(type="subscribe", circle=CIRCLE)
    assert (subscribed["type"], subscribed["head"], subscribed["unread"]) == ("subscribed", 0, 0)
    assert {p["user"]["id"]: p["state"] for p in subscribed["present"]} == {GP: "online"}
    await nurse.request(type="subscribe", circle=CIRCLE)
    assert (await gp.expect(type="presence"))["user"]["id"] == NURSE  # presence: the nurse came online

    ack = await post(gp, "Bonjour, Mme Técher sort de l'hôpital demain.")
    assert (ack["seq"], ack["duplicate"]) == (1, False)
    for client in (gp, nurse):
        message = await client.expect(type="message")
        assert (message["seq"], message["author"]) == (1, {"id": GP, "name": "Dr Jean DUPONT"})
        assert message["text"] == "Bonjour, Mme Técher sort de l'hôpital demain."
        assert message["client_id"] == ack["client_id"]

    await nurse.send(type="typing", circle=CIRCLE)
    typing = await gp.expect(type="typing")
    assert typing["user"]["id"] == NURSE
    await nurse.nothing(type="typing")  # nobody hears their own typing
    await nurse.send(type="presence", state="away")
    assert (await gp.expect(type="presence", state="away"))["user"]["id"] == NURSE

    for n in range(2, 8):
        await post(nurse, f"message {n}")
    assert await gp.messages(6) == [2, 3, 4, 5, 6, 7]
    latest = await gp.request(type="history", circle=CIRCLE, limit=3)
    assert ([m["seq"] for m in latest["messages"]], latest["more"]) == ([5, 6, 7], True)
    older = await gp.request(type="history", circle=CIRCLE, before=5, limit=3)
    assert ([m["seq"] for m in older["messages"]], older["more"]) == ([2, 3, 4], True)
    oldest = await gp.request(type="history", circle=CIRCLE, before=2, limit=3)
    assert ([m["seq"] for m in oldest["messages"]], oldest["more"]) == ([1], False)
    forwards = await gp.request(type="history", circle=CIRCLE, after=4, limit=2)
    assert ([m["seq"] for m in forwards["messages"]], forwards["more"]) == ([5, 6], True)

    read = await gp.request(type="read", circle=CIRCLE, seq=5)
    assert (read["type"], read["seq"], read["unread"]) == ("read", 5, 2)  # 6 and 7 are the nurse's, unread
    assert (await gp.request(type="read", circle=CIRCLE, seq=3))["seq"] == 5  # a marker never goes back
    other_device = await connect(GP)
    assert other_device.welcome["circles"][0]["unread"] == 2
    await other_device.request(type="subscribe", circle=CIRCLE)
    await gp.request(type="read", circle=CIRCLE, seq=999)  # clamped to the last message
    assert (await other_device.expect(type="read", seq=7))["unread"] == 0  # the other device hears of it

    await nurse.ws.close()
    assert (await gp.expect(type="presence", state="offline"))["user"]["id"] == NURSE
    unsubscribed = await gp.request(type="unsubscribe", circle=CIRCLE)
    assert unsubscribed == {"v": 1, "type": "unsubscribed", "circle": CIRCLE, "reason": "asked",
                            "id": unsubscribed["id"]}
    await post(other_device, "après le départ")
    await gp.nothing(type="message")
    assert len(await audited(server, "circle.post")) == 8 and (GP, "1") in await audited(server, "circle.subscribe")


async def test_bidirectional_overrides_are_refused(server, connect):
    """U+202E would show "dose 10 mg" as "dose 1gm 0": refused with an error frame, nothing stored."""
    gp = await connect(GP)
    for text in ("dose 1\u202e0 mg", "\u2066isolé\u2069"):
        refused = await gp.request(type="post", circle=CIRCLE, client_id=str(uuid.uuid4()), text=text)
        assert (refused["type"], refused["code"]) == ("error", "bad_frame"), refused
    assert await stored_messages(server) == 0
    await post(gp, "\u200fשלום\u200e, Dr Cohen")  # direction marks reorder nothing: they pass


async def test_token_in_the_handshake(server):
    """Browsers put the token beside the subprotocol; other clients may use Authorization."""
    port = server.listeners["https"].rsplit(":", 1)[1]
    url = f"wss://localhost:{port}/ws"
    offered = ["msante.v1", f"msante.bearer.{token_for(server, GP)}"]
    async with websockets.connect(url, ssl=server.client_tls(), subprotocols=offered) as ws:
        assert ws.subprotocol == "msante.v1"  # the token is never echoed back
        assert json.loads(await ws.recv())["type"] == "welcome"
    headers = {"Authorization": f"Bearer {token_for(server, NURSE)}"}
    async with websockets.connect(url, ssl=server.client_tls(), additional_headers=headers) as ws:
        assert json.loads(await ws.recv())["user"]["id"] == NURSE


async def test_non_member_is_refused_and_audited(server, connect):
    outsider = await connect(PHARMACIST)
    assert outsider.welcome["circles"] == []
    for frame, action in [({"type": "subscribe", "circle": CIRCLE}, "circle.subscribe"),
                          ({"type": "post", "circle": CIRCLE, "client_id": "x1", "text": "?"}, "circle.post"),
                          ({"type": "history", "circle": CIRCLE}, "circle.read"),
                          ({"type": "read", "circle": CIRCLE, "seq": 1}, "circle.mark_read"),
                          ({"type": "subscribe", "circle": 999}, "circle.subscribe")]:
        error = await outsider.request(**frame)
        assert (error["type"], error["code"]) == ("error", "forbidden"), error
        assert (PHARMACIST, str(frame["circle"])) in await audited(server, action, "denied")
    error = await outsider.request(type="typing", circle=CIRCLE)
    assert error["code"] == "not_subscribed"
    assert await stored_messages(server) == 0


async def test_removed_member_is_cut_off_at_once(server, connect):
    nurse, gp = await connect(NURSE), await connect(GP)
    for client in (nurse, gp):
        await client.request(type="subscribe", circle=CIRCLE)
    await post(gp, "avant")
    assert await nurse.messages(1) == [1]
    status, _ = await asyncio.to_thread(api, server, "DELETE", f"/api/circles/{CIRCLE}/members/{NURSE}", COORDINATOR)
    assert status == 204
    assert (await nurse.expect(type="unsubscribed"))["reason"] == "removed"
    await post(gp, "après")
    await nurse.nothing(type="message")
    assert (await nurse.request(type="history", circle=CIRCLE))["code"] == "forbidden"
    assert (await nurse.request(type="subscribe", circle=CIRCLE, after=0))["code"] == "forbidden"
    alert = await nurse.expect(type="alert", where=lambda f: f["alert"]["data"]["change"] == "member.removed")
    assert alert["alert"]["title"] == "Vous avez été retiré(e) du cercle de soins de Josette TECHER"


async def timed_cut(client: Client, change, reason: str) -> float:  # noqa: ANN001 - a coroutine
    """Seconds from the start of `change` to the `unsubscribed` frame telling `reason`."""
    started = time.monotonic()
    await change
    assert (await client.expect(type="unsubscribed", timeout=RIGHTS_BOUND))["reason"] == reason
    return time.monotonic() - started


RIGHTS_BOUND = 2.0  # seconds from a change made by the CLI to live connections; the store is polled every 0.2 s


async def test_an_open_websocket_keeps_no_trace_of_its_upgrade_request(server, connect):
    """Held for the connection's life, the upgrade request (ours, and the one websockets' handshake
    parser kept in its generator's frame) cost every idle websocket 4 KiB (bench/instant.py)."""
    gp = await connect(GP)
    await gp.request(type="subscribe", circle=CIRCLE)
    gc.collect()
    # type(), not isinstance(): isinstance asks a dead weakref.proxy for its __class__ (ReferenceError)
    kept = [o for o in gc.get_objects() if issubclass(type(o), web.http.Request) and o.path == "/ws"
            or issubclass(type(o), websockets.http11.Request) and "upgrade" in dict(o.headers.raw_items())]
    assert kept == []  # the client's own handshake request names its headers in their case: "Upgrade"


async def test_removal_from_the_cli_reaches_live_connections_at_once(server, connect):
    nurse, gp = await connect(NURSE), await connect(GP)
    for client in (nurse, gp):
        await client.request(type="subscribe", circle=CIRCLE)
    elapsed = await timed_cut(nurse, cli(server, "circle", "remove", str(CIRCLE), "--rpps", NURSE[1:]), "removed")
    print(f"\nCLI circle remove -> unsubscribed (removed) on the websocket: {elapsed * 1000:.0f} ms")
    assert elapsed < RIGHTS_BOUND
    await post(gp, "après le retrait")
    await nurse.nothing(type="message")
    alert = await nurse.expect(type="alert", where=lambda f: f["alert"]["data"]["change"] == "member.removed")
    assert alert["alert"]["title"].startswith("Vous avez été retiré(e)")  # pushed, not left for the next login
    assert (NURSE, str(CIRCLE)) in await audited(server, "circle.subscribe", "denied")


async def test_revoked_delegation_ends_the_membership_held_for_the_box(server, connect):
    """Marie Grondin sits in the circle for the EHPAD's secretariat; when the operator revokes
    her delegation to that box, her websocket stops receiving the circle at once."""
    box = f"secretariat.ehpad-filaos@{server.settings.domains[0]}"
    assert await cli(server, "circle", "add", str(CIRCLE), "--rpps", PHARMACIST[1:], "--on-behalf-of", box) == 0
    pharmacist, gp = await connect(PHARMACIST), await connect(GP)
    for client in (pharmacist, gp):
        await client.request(type="subscribe", circle=CIRCLE)
    await post(gp, "avant")
    assert await pharmacist.messages(1) == [1]

    revoke = cli(server, "mailbox", "revoke", box, "--rpps", PHARMACIST[1:])
    elapsed = await timed_cut(pharmacist, revoke, "delegation_ended")
    print(f"\nCLI mailbox revoke -> unsubscribed (delegation_ended) on the websocket: {elapsed * 1000:.0f} ms")
    assert elapsed < RIGHTS_BOUND
    await post(gp, "après la révocation")
    await pharmacist.nothing(type="message")
    assert (await pharmacist.request(type="subscribe", circle=CIRCLE))["code"] == "forbidden"
    rows = await asyncio.to_thread(server.rows, select(audit.c.detail).where(
        audit.c.action == "circle.subscribe", audit.c.outcome == "denied", audit.c.actor == PHARMACIST))
    reasons = [json.loads(r["detail"])["reason"] for r in rows]
    assert reasons[0] == "delegation_ended" and reasons[1].startswith("no longer a delegate of"), reasons


async def test_a_command_in_another_process_reaches_live_connections(server, connect):
    """The same as `server.cli`, from a separate `python -m msante` process."""
    nurse = await connect(NURSE)
    await nurse.request(type="subscribe", circle=CIRCLE)
    started = time.monotonic()
    command = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "msante", "circle", "remove", str(CIRCLE), "--rpps", NURSE[1:],
        "--data-dir", str(server.data_dir), stdout=asyncio.subprocess.DEVNULL)
    assert await command.wait() == 0
    exited = time.monotonic()
    assert (await nurse.expect(type="unsubscribed", timeout=RIGHTS_BOUND))["reason"] == "removed"
    now = time.monotonic()
    print(f"\nmsante circle remove in another process -> unsubscribed: {(now - started) * 1000:.0f} ms from its "
          f"start (Python's own start included), {(now - exited) * 1000:.0f} ms after it exited")


async def test_expired_token_closes_4001_and_resuming_loses_nothing(server, connect):
    gp = await connect(GP)
    await gp.request(type="subscribe", circle=CIRCLE)
    nurse = await connect(NURSE, token=token_for(server, NURSE, ttl=2))
    await nurse.request(type="subscribe", circle=CIRCLE)
    await post(gp, "un")
    assert await nurse.messages(1) == [1]
    assert await nurse.close_code() == 4001
    for text in ("deux", "trois", "quatre"):
        await post(gp, text)
    again = await connect(NURSE)
    await again.request(type="subscribe", circle=CIRCLE, after=1)
    assert [(await again.expect(type="message"))["text"] for _ in range(3)] == ["deux", "trois", "quatre"]
    await again.nothing(type="message")


async def test_fresh_token_on_the_same_connection(server, connect):
    nurse = await connect(NURSE, token=token_for(server, NURSE, ttl=2))
    await nurse.request(type="subscribe", circle=CIRCLE)
    assert (await nurse.request(type="auth", v=1, token=token_for(server, NURSE)))["type"] == "welcome"
    await asyncio.sleep(2.5)
    gp = await connect(GP)
    await post(gp, "toujours là ?")
    assert (await nurse.expect(type="message"))["text"] == "toujours là ?"  # still subscribed, same place
    await nurse.send(type="auth", v=1, token=token_for(server, GP))  # one connection, one person
    assert await nurse.close_code() == 4003
    assert any(f.get("code") == "identity_changed" for f in nurse.inbox)


@pytest.mark.parametrize("first, reason", [
    ({"type": "auth", "v": 1, "token": "expired"}, "expired"),
    ({"type": "auth", "v": 1, "token": "not.a.token"}, "malformed"),
    ({"type": "subscribe", "circle": 1}, None),
])
async def test_refused_authentication_closes_4003(server, connect, first, reason):
    if first.get("token") == "expired":
        first = {**first, "token": token_for(server, GP, ttl=-120)}
    client = await connect(auth=False)
    await client.send(**first)
    assert await client.close_code() == 4003
    if reason:
        assert client.inbox[-1]["code"] == "invalid_token" and client.inbox[-1]["reason"] == reason
        assert ("-", "") in await audited(server, "auth.token", "failed")


async def test_a_retried_post_is_stored_once(server, connect):
    gp, nurse = await connect(GP), await connect(NURSE)
    await nurse.request(type="subscribe", circle=CIRCLE)
    first = await post(gp, "une seule fois", client_id="retry-1")
    again = await post(gp, "une seule fois", client_id="retry-1")  # the acknowledgement was lost: resend
    assert (again["seq"], again["duplicate"]) == (first["seq"], True)
    assert (await post(nurse, "autre client", client_id="retry-1"))["duplicate"] is False  # ids are per author
    assert await nurse.messages(2) == [1, 2]
    await nurse.nothing(type="message")
    assert await stored_messages(server) == 2


async def test_reconnect_with_last_seq_gets_exactly_what_was_missed(server, connect):
    nurse, gp = await connect(NURSE), await connect(GP)
    await nurse.request(type="subscribe", circle=CIRCLE)
    for n in range(1, 4):
        await post(gp, f"m{n}")
    assert await nurse.messages(3) == [1, 2, 3]
    await nurse.ws.close()
    for n in range(4, 9):
        await post(gp, f"m{n}")

    async def keep_posting() -> None:  # messages keep coming while the catch-up runs
        for n in range(9, 21):
            await post(gp, f"m{n}")
    poster = asyncio.create_task(keep_posting())
    back = await connect(NURSE)
    subscribed = await back.request(type="subscribe", circle=CIRCLE, after=3)
    assert subscribed["head"] >= 8
    await poster
    assert await back.messages(17) == list(range(4, 21))
    await back.nothing(type="message")


@pytest.mark.parametrize("limits", [{"send_queue_bytes": 64 * 1024, "frames_per_second": 1000.0,
                                     "frame_burst": 1000}], indirect=True)
async def test_a_slow_consumer_is_told_to_resync(limits, server, connect, caplog):
    caplog.set_level(logging.INFO, logger="msante.instant")
    slow = await connect(NURSE, max_queue=1)  # the client library stops reading after one frame
    await slow.request(type="subscribe", circle=CIRCLE)
    gp = await connect(GP)
    big = "🩺" * 4000  # 16 KB of UTF-8 per message
    posted = 0
    while not any("too far behind" in r.getMessage() for r in caplog.records):
        await post(gp, big)  # socket buffers fill, then the bounded queue, then the server gives up
        posted += 1
        assert posted < 1000, "the send queue never overflowed"
    assert await slow.close_code(timeout=15) == 4008  # read on: the close comes after what was in flight
    back = await connect(NURSE)  # resuming brings everything, in order
    await back.request(type="subscribe", circle=CIRCLE, after=0)
    assert await back.messages(posted, timeout=15) == list(range(1, posted + 1))


@pytest.mark.parametrize("limits", [{"ping_interval": 0.3, "ping_timeout": 0.5}], indirect=True)
async def test_no_pong_closes_the_connection(limits, server, connect):
    client = await connect(GP, ping_interval=None)
    client.ws.transport.pause_reading()  # the client answers no ping
    await asyncio.sleep(1.5)
    client.ws.transport.resume_reading()
    assert await client.close_code() == 1011


@pytest.mark.parametrize("limits", [{"frame_burst": 5, "frames_per_second": 0.01, "refusals_before_close": 8,
                                     "connections_per_person": 2, "max_text_chars": 100,
                                     "max_frame_bytes": 4096}], indirect=True)
async def test_limits(limits, server, connect):
    before = await asyncio.to_thread(scrape.of, server)
    gp = await connect(GP)  # the auth frame took one of the five tokens
    too_long = await gp.request(type="post", circle=CIRCLE, client_id="long", text="x" * 101)
    assert (too_long["code"], too_long["message"]) == ("too_long", "text is limited to 100 characters")
    answers = [await gp.request(type="history", circle=CIRCLE) for _ in range(5)]
    assert [a["type"] for a in answers] == ["history"] * 4 + ["error"]
    assert answers[4]["code"] == "rate_limited" and answers[4]["retry_after"] > 0
    await connect(GP)
    third = await connect(GP, auth=False)
    await third.send(type="auth", v=1, token=token_for(server, GP))
    assert await third.close_code() == 4029

    big = await connect(NURSE)
    await big.ws.send(json.dumps({"type": "post", "circle": CIRCLE, "client_id": "b", "text": "y" * 5000}))
    assert await big.close_code() == 1009
    binary = await connect(NURSE)
    await binary.ws.send(b"\x00\x01")
    assert await binary.close_code() == 1003
    flood = await connect(COORDINATOR)
    for _ in range(10):
        await flood.ws.send("{not json")
    assert await flood.close_code() == 1008
    assert [f["code"] for f in flood.inbox if f["type"] == "error"] == ["bad_frame"] * 8
    after = await asyncio.to_thread(scrape.of, server)

    def moved(name: str, **labels: str) -> float:
        return scrape.value(after, name, **labels) - scrape.value(before, name, **labels)
    for code in (4029, 1009, 1003, 1008):
        assert moved("msante_websocket_closes_total", by="server", code=str(code)) == 1
    assert moved("msante_websocket_connections") == 2  # gp and its second connection remain


async def test_a_ping_flood_closes_1008_even_before_authentication(server, connect):
    """Pings and pongs take from the frame bucket: 30 in a burst, then 50 refused in a row."""
    flood = await connect(auth=False)
    for _ in range(100):
        await flood.ws.ping()
    assert await flood.close_code() == 1008


def rss_mb() -> float:
    """This process's resident memory (the server runs in a thread of it)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


@pytest.mark.parametrize("limits", [{"frames_per_second": 1e9, "frame_burst": 10**9, "auth_timeout": 60}],
                         indirect=True)
def test_pings_from_a_client_that_reads_nothing_are_not_buffered_without_end(limits, server):
    """The server writes a pong per ping; a client that never reads them used to be served all
    the same, the pongs piling up in the server's write buffer (+85 MB in 10 s). Now the server
    reads no more until its writes drain: the client's sends block after the socket buffers."""
    sock = raw_tls(server)
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    sock.sendall(f"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101 "), head
    ping = Frame(Opcode.PING, b"p" * 125).serialize(mask=True, extensions=[])
    chunk, budget = ping * (64 * 1024 // len(ping)), 64 * 1024 * 1024
    before, sent = rss_mb(), 0
    sock.settimeout(2.0)
    try:
        while sent < budget:
            sock.sendall(chunk)
            sent += len(chunk)
    except TimeoutError:  # the server stopped reading: backpressure
        pass
    grown = rss_mb() - before
    sock.close()
    print(f"ping flood: {sent / 2**20:.1f} MiB taken before the sends blocked (budget {budget / 2**20:.0f} MiB); "
          f"process RSS +{grown:.1f} MB")
    assert sent < budget / 4, "the server kept reading pings it could not answer"
    assert grown < 32


def is_mail(frame: dict) -> bool:
    return frame["alert"]["kind"] == "mail"


async def test_new_mail_raises_an_alert_for_the_boxes_readers(server, connect):
    from tests.test_smtp import login, message

    box = "urgences.ch-saint-paul@msante.test"
    assert await cli(server, "mailbox", "grant", box, "--rpps", COORDINATOR[1:]) == 0  # a second reader
    urgentist, coordinator, gp = await connect(URGENTIST), await connect(COORDINATOR), await connect(GP)
    smtp = login(server)
    await asyncio.to_thread(smtp.sendmail, "jean.dupont@msante.test", [box],
                            message("jean.dupont@msante.test", [box], subject="Patiente Técher : CR de sortie"))
    smtp.quit()
    alert = (await urgentist.expect(type="alert", timeout=10, where=is_mail))["alert"]
    assert alert["kind"] == "mail" and alert["data"]["mailbox"] == box
    assert alert["data"]["subject"] == "Patiente Técher : CR de sortie"
    assert alert["data"]["from"] == "jean.dupont@msante.test" and alert["acknowledged_at"] is None
    assert (await coordinator.expect(type="alert", where=is_mail))["alert"]["id"] == alert["id"]  # one alert, shared
    await gp.nothing(type="alert", where=is_mail)  # the sender does not read the emergency department's box

    acked = await urgentist.request(type="alert.ack", alert=alert["id"])
    assert acked["alert"]["acknowledged_by"] == {"id": URGENTIST, "name": "Dr Claire LEROY"}
    seen = await coordinator.expect(type="alert", where=lambda f: is_mail(f) and f["alert"]["acknowledged_at"])
    assert seen["alert"]["acknowledged_by"]["id"] == URGENTIST and seen["alert"]["acknowledged_at"]
    late = await coordinator.request(type="alert.ack", alert=alert["id"])  # the first acknowledgement stays
    assert late["alert"]["acknowledged_by"]["id"] == URGENTIST
    assert (await gp.request(type="alert.ack", alert=alert["id"]))["code"] == "forbidden"
    later = await connect(URGENTIST)
    await later.nothing(type="alert", where=is_mail)  # acknowledged: no longer pending
    assert (URGENTIST, str(alert["id"])) in await audited(server, "alert.ack")
    assert (GP, str(alert["id"])) in await audited(server, "alert.ack", "denied")


async def test_a_mail_alert_names_the_sender_and_subject_past_a_long_header(server, connect):
    """The alert says From and Subject as the message's stored facts decoded them: here after 24 KB
    of trace fields (the 16 KB read of the body that alerts used to parse stopped short of them),
    the subject in RFC 2047 words and the sender with a display name."""
    import email.policy
    from email.message import EmailMessage

    from tests.test_smtp import login

    box = "urgences.ch-saint-paul@msante.test"
    urgentist = await connect(URGENTIST)
    msg = EmailMessage()
    for n in range(40):  # a relay's trace, before the fields a reader looks for
        msg[f"X-Trace-{n}"] = " ".join(f"hop-{n}-{k}.relais.test" for k in range(30))
    msg["From"], msg["To"] = "Dr Jean DUPONT <jean.dupont@msante.test>", box
    msg["Subject"] = "Patiente Técher : résultats de biologie"  # not ASCII: RFC 2047 words on the wire
    msg.set_content("Bonjour,\n")
    data = msg.as_bytes(policy=email.policy.SMTP)
    assert data.index(b"\r\nSubject: Patiente =?utf-8?") > 24 * 1024
    smtp = login(server)
    await asyncio.to_thread(smtp.sendmail, "jean.dupont@msante.test", [box], data)
    smtp.quit()
    alert = (await urgentist.expect(type="alert", timeout=10, where=is_mail))["alert"]
    assert alert["data"]["subject"] == "Patiente Técher : résultats de biologie"
    assert alert["data"]["from"] == "Dr Jean DUPONT <jean.dupont@msante.test>"


async def test_membership_changes_raise_alerts(server, connect):
    gp, pharmacist = await connect(GP), await connect(PHARMACIST)
    status, body = await asyncio.to_thread(api, server, "POST", f"/api/circles/{CIRCLE}/members", COORDINATOR,
                                           {"id": PHARMACIST})
    assert status == 201 and body["added"] is True
    own = (await pharmacist.expect(type="alert"))["alert"]
    assert own["kind"] == "circle" and own["title"] == "Vous avez été ajouté(e) au cercle de soins de Josette TECHER"
    other = await gp.expect(type="alert", where=lambda f: f["alert"]["data"]["change"] == "member.added")
    assert other["alert"]["title"] == "Marie GRONDIN a rejoint le cercle de soins de Josette TECHER"
    assert (await pharmacist.request(type="subscribe", circle=CIRCLE))["type"] == "subscribed"


async def _frames_until(client: Client, done) -> list[dict]:  # noqa: ANN001
    """Every frame in the order the socket delivered it, until `done(frames)` holds."""
    received: list[dict] = []
    async with asyncio.timeout(10):
        while not done(received):
            received.append(json.loads(await client.ws.recv()))
    return received


def _ack_first(received: list[dict], client_ids: list[str]) -> None:
    order = [(f["type"], f.get("client_id")) for f in received if f["type"] in ("ack", "message")]
    for client_id in client_ids:
        assert order.index(("ack", client_id)) < order.index(("message", client_id)), (client_id, order)


@pytest.mark.parametrize("limits", [{"frames_per_second": 1000.0, "frame_burst": 1000}], indirect=True)
async def test_the_author_hears_the_ack_before_its_own_message(limits, server, connect):
    """The protocol's word (docs/instant-protocol.md, `post`): the ack, then the message, on the author's
    connection, for live posts and for posts that land while the connection catches up from the store."""
    gp = await connect(GP)
    await gp.request(type="subscribe", circle=CIRCLE)
    await gp.expect(type="alert")  # the circle's creation, pending since init
    live = [str(uuid.uuid4()) for _ in range(40)]
    for n, client_id in enumerate(live):
        await gp.send(type="post", circle=CIRCLE, client_id=client_id, text=f"direct {n}")
    received = await _frames_until(gp, lambda got: sum(f["type"] == "message" for f in got) == len(live))
    _ack_first(received, live)

    for attempt in range(10):  # a second device resumes from the start and posts before its catch-up ends
        phone = await connect(GP)
        client_id = str(uuid.uuid4())
        await phone.send(type="subscribe", circle=CIRCLE, after=0, id="s")
        await phone.send(type="post", circle=CIRCLE, client_id=client_id, text=f"pendant le rattrapage {attempt}")
        received = await _frames_until(phone, lambda got, c=client_id: any(
            f["type"] == "message" and f["client_id"] == c for f in got))
        _ack_first(received, [client_id])
        seqs = [f["seq"] for f in received if f["type"] == "message"]
        assert seqs == list(range(1, len(seqs) + 1))  # and still each seq once, in order
        await phone.ws.close()


async def test_a_reply_quotes_a_message_of_its_own_circle(server, connect):
    """`reply_to` names a seq of the same circle: the message and the history carry the quote; a seq
    the circle does not have (or another circle's) is refused, nothing stored."""
    from tests.test_instant_api import PATIENT
    gp, nurse = await connect(GP), await connect(NURSE)
    await nurse.request(type="subscribe", circle=CIRCLE)
    first = await post(gp, "Pouvez-vous refaire le pansement ce soir ?")
    reply = await nurse.request(type="post", circle=CIRCLE, client_id=str(uuid.uuid4()), text="Oui, vers 18 h.",
                                reply_to=first["seq"])
    assert reply["type"] == "ack"
    live = await nurse.expect(type="message", seq=reply["seq"])
    quote = {"seq": first["seq"], "author": {"id": GP, "name": "Dr Jean DUPONT"},
             "text": "Pouvez-vous refaire le pansement ce soir ?"}
    assert live["reply_to"] == quote
    page = await gp.request(type="history", circle=CIRCLE)
    assert [m["reply_to"] for m in page["messages"]] == [None, quote]

    status, other = await asyncio.to_thread(api, server, "POST", "/api/circles", GP,
                                            {"patient": PATIENT, "members": [{"id": NURSE}]})
    assert status == 201
    stored = await stored_messages(server)
    for circle, seq in ((CIRCLE, reply["seq"] + 1), (other["id"], first["seq"])):  # none yet; another circle's
        refused = await gp.request(type="post", circle=circle, client_id=str(uuid.uuid4()), text="?", reply_to=seq)
        assert refused["code"] == "no_such_message", refused
    assert await stored_messages(server) == stored
    long = await post(gp, "x" * 4000)
    quoted = await nurse.request(type="post", circle=CIRCLE, client_id=str(uuid.uuid4()), text="Vu.",
                                 reply_to=long["seq"])
    assert len((await nurse.expect(type="message", seq=quoted["seq"]))["reply_to"]["text"]) == 200


async def test_receipts_and_the_last_message_of_each_circle(server, connect):
    """Who has read up to where (`receipts` on subscribing, a `receipt` as markers move), and each
    circle's last message in `welcome`, for a list ordered by activity."""
    gp = await connect(GP)
    assert gp.welcome["circles"][0]["last_message"] is None
    await gp.request(type="subscribe", circle=CIRCLE)
    first = await post(gp, "Glycémie à jeun : 1,05 g/l.")
    await post(gp, "Prochain contrôle lundi.")
    nurse = await connect(NURSE)
    last = nurse.welcome["circles"][0]["last_message"]
    assert (last["seq"], last["author"]["id"], last["text"]) == (2, GP, "Prochain contrôle lundi.") and last["at"]
    subscribed = await nurse.request(type="subscribe", circle=CIRCLE)
    assert subscribed["receipts"] == []
    await nurse.request(type="read", circle=CIRCLE, seq=first["seq"])
    receipt = await gp.expect(type="receipt")
    assert receipt == {"v": 1, "type": "receipt", "circle": CIRCLE, "user": {"id": NURSE, "name": "Sophie HOARAU"},
                       "seq": first["seq"]}
    later = await connect(URGENTIST)
    assert (await later.request(type="subscribe", circle=CIRCLE))["receipts"] == [
        {"user": {"id": NURSE, "name": "Sophie HOARAU"}, "seq": first["seq"]}]


async def test_search_a_circles_history(server, connect):
    """Words anywhere in a message, any case, newest first, a page at a time; `%` and `_` are
    only characters; members only; audited without the words."""
    gp = await connect(GP)
    texts = ["Pansement refait ce matin.", "Tension 13/8.", "PANSEMENT à refaire demain.", "Glycémie 100 %",
             "Pas de pansement_ici", "pansement ok"]
    for text in texts:
        await post(gp, text)
    found = await gp.request(type="search", circle=CIRCLE, q="pansement")
    assert [m["seq"] for m in found["messages"]] == [6, 5, 3, 1] and found["more"] is False
    assert found["messages"][0]["text"] == "pansement ok" and found["messages"][0]["author"]["id"] == GP
    assert [m["seq"] for m in (await gp.request(type="search", circle=CIRCLE, q="pansement", before=5))["messages"]] \
        == [3, 1]
    assert [m["seq"] for m in (await gp.request(type="search", circle=CIRCLE, q="100 %"))["messages"]] == [4]
    assert (await gp.request(type="search", circle=CIRCLE, q="%%"))["messages"] == []  # not a wildcard
    assert [m["seq"] for m in (await gp.request(type="search", circle=CIRCLE, q="13_8"))["messages"]] == []
    assert [m["seq"] for m in (await gp.request(type="search", circle=CIRCLE, q="t_ici"))["messages"]] == [5]
    assert (await gp.request(type="search", circle=CIRCLE, q=" a "))["code"] == "bad_frame"
    outsider = await connect(PHARMACIST)
    assert (await outsider.request(type="search", circle=CIRCLE, q="pansement"))["code"] == "forbidden"
    rows = await asyncio.to_thread(server.rows, select(audit.c.detail).where(audit.c.action == "circle.read"))
    assert not any("pansement" in str(r["detail"]).lower() for r in rows)
