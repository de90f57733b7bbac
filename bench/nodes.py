"""Wake-up latency across nodes: two `msante serve` nodes on one PostgreSQL database and one
private redis-server (tests/nodes.py), an event on node A, the live session it wakes on node B,
and for reference the same session on node A itself.

    .venv/bin/python bench/nodes.py [--n 300] [--pg postgresql+asyncpg://postgres@127.0.0.1:5432/postgres]

The bus alone: two RedisBus objects in this process, 10 x --n events one at a time, from
publish to the other bus's subscriber. IMAP: one submission session on A sends --n messages
to jean.dupont one after another (each waits for the previous one's wake-ups); an IDLE
session on B and one on A, both on his INBOX, time the `* N EXISTS` they get. Latency is counted from MAIL FROM sent (so it includes the
SMTP transaction and the commit, as a user sees it) and, beside it, from the 250 after DATA
(the commit is done and the event published just before that 250 leaves, so this is the push
alone and may be negative). Websockets: a member posts on A; a member following the circle on
B and one on A time the message frame, counted from the post frame sent.

Everything runs on this machine's 2 cores (client, both nodes, PostgreSQL, Redis): the figures
are latencies under no load, one event at a time. Prints figures, asserts nothing.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)  # the repository, not bench/ (whose directory.py would hide the package)

import asyncpg  # noqa: E402

from bench.procs import Fatal, run_bench  # noqa: E402
from store.redis_bus import RedisBus  # noqa: E402
from tests.conftest import RedisServer, free_port  # noqa: E402
from tests.imap_client import GP, GP_IDNAT, token  # noqa: E402
from tests.nodes import Node, cluster_environment, start_node  # noqa: E402
from tests.test_instant_ws import COORDINATOR, NURSE, Client  # noqa: E402
from tests.test_smtp import login as smtp_login  # noqa: E402
from tests.test_smtp import message  # noqa: E402

EXISTS = re.compile(rb"^\* (\d+) EXISTS\r\n$")
WAIT = 10.0  # seconds a wake-up may take before the run is declared broken
POST_INTERVAL = 0.11  # s between posts: one connection may send 10 frames a second (instant/limits.py)


class Idler:
    """An IDLE session (raw lines over TLS) that records when each `* N EXISTS` arrives."""

    def __init__(self, node: Node, verb: str) -> None:
        self.node = node
        self.verb = verb
        self.seen: dict[int, float] = {}  # message count -> arrival (monotonic)
        self.before = 0  # messages in the box when it was selected
        self.changed = asyncio.Event()

    async def start(self) -> None:
        host, port = self.node.listeners["imaps"].rsplit(":", 1)
        self.reader, self.writer = await asyncio.open_connection(host, int(port), ssl=self.node.client_tls(),
                                                                 server_hostname="localhost")
        await self.reader.readline()
        sasl = base64.b64encode(f"user={GP}\x01auth=Bearer {token(self.node, GP_IDNAT)}\x01\x01".encode())
        await self._tagged(b"a AUTHENTICATE XOAUTH2 " + sasl)
        await self._tagged(b"b %s INBOX" % self.verb.encode())
        self.writer.write(b"c IDLE\r\n")
        while not (await self.reader.readline()).startswith(b"+"):
            pass
        self.task = asyncio.create_task(self._read())

    async def _tagged(self, command: bytes) -> None:
        tag = command.split(b" ", 1)[0]
        self.writer.write(command + b"\r\n")
        while True:
            line = await self.reader.readline()
            if match := EXISTS.match(line):
                self.before = int(match[1])
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise Fatal(f"IMAP {command[:30]!r}: {line!r}")
                return

    async def _read(self) -> None:
        while line := await self.reader.readline():
            match = EXISTS.match(line)
            if match:
                self.seen[int(match[1])] = time.monotonic()
                self.changed.set()

    async def arrival(self, count: int) -> float:
        """When the box was announced to hold `count` messages more than at the start."""
        count += self.before
        while count not in self.seen:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), WAIT)
        return self.seen[count]

    async def close(self) -> None:
        self.task.cancel()
        self.writer.close()


class Follower:
    """A websocket following the demo circle, recording when each message frame arrives."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.seen: dict[int, float] = {}
        self.changed = asyncio.Event()

    async def start(self) -> None:
        subscribed = await self.client.request(type="subscribe", circle=1)
        if subscribed.get("type") != "subscribed":
            raise Fatal(f"subscribe: {subscribed}")
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for text in self.client.ws:
            frame = json.loads(text)
            if frame.get("type") == "message":
                self.seen[frame["seq"]] = time.monotonic()
                self.changed.set()

    async def arrival(self, seq: int) -> float:
        while seq not in self.seen:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), WAIT)
        return self.seen[seq]

    async def close(self) -> None:
        self.task.cancel()
        await self.client.ws.close()


def figures(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return f"p50 {statistics.median(ms):7.2f} ms  p99 {p99:7.2f} ms  max {ms[-1]:7.2f} ms"


async def bus_hops(url: str, n: int) -> dict[str, list[float]]:
    """The bus alone, in this process: publish on one RedisBus, heard on another's subscriber."""
    a, b = RedisBus(url), RedisBus(url)
    if not (await a.start() and await b.start()):
        raise Fatal("the buses did not subscribe to Redis")
    events = aiter(b.subscribe("bench"))
    hops = []
    try:
        for i in range(n):
            sent = time.monotonic()
            await a.publish("bench", {"type": "bench", "i": i})
            if (await asyncio.wait_for(anext(events), WAIT)).get("i") != i:
                raise Fatal("events arrived out of order")
            hops.append(time.monotonic() - sent)
    finally:
        await a.close()
        await b.close()
    return {"B from publish on A": hops}


async def imap_wakeups(a: Node, b: Node, n: int, verb: str) -> dict[str, list[float]]:
    on_b, on_a = Idler(b, verb), Idler(a, verb)
    await on_b.start()
    await on_a.start()
    smtp = await asyncio.to_thread(smtp_login, a)
    results: dict[str, list[float]] = {"B from MAIL FROM": [], "B from 250": [], "A from MAIL FROM": [],
                                       "A from 250": []}
    try:
        for count in range(1, n + 1):
            raw = message(GP, [GP], f"wake-up {count} {uuid.uuid4().hex}")

            def send() -> tuple[float, float]:
                sent = time.monotonic()
                smtp.sendmail(GP, [GP], raw)
                return sent, time.monotonic()
            sent, accepted = await asyncio.to_thread(send)
            for name, idler in (("B", on_b), ("A", on_a)):
                arrived = await idler.arrival(count)
                results[f"{name} from MAIL FROM"].append(arrived - sent)
                results[f"{name} from 250"].append(arrived - accepted)
    finally:
        await asyncio.to_thread(smtp.quit)
        await on_b.close()
        await on_a.close()
    return results


async def websocket_wakeups(a: Node, b: Node, n: int) -> dict[str, list[float]]:
    poster = await Client.connect(a, "810001045367")
    on_b, on_a = Follower(await Client.connect(b, NURSE)), Follower(await Client.connect(a, COORDINATOR))
    await on_b.start()
    await on_a.start()
    results: dict[str, list[float]] = {"B from post sent": [], "A from post sent": []}
    sent = 0.0
    try:
        for i in range(n):
            await asyncio.sleep(max(0.0, POST_INTERVAL - (time.monotonic() - sent)) if i else 0.0)
            sent = time.monotonic()
            ack = await poster.request(type="post", circle=1, client_id=str(uuid.uuid4()), text=f"wake-up {i}")
            if ack.get("type") != "ack":
                raise Fatal(f"post: {ack}")
            results["B from post sent"].append(await on_b.arrival(ack["seq"]) - sent)
            results["A from post sent"].append(await on_a.arrival(ack["seq"]) - sent)
    finally:
        await poster.ws.close()
        await on_b.close()
        await on_a.close()
    return results


def bench(args: argparse.Namespace, workdir: Path) -> int:
    redis = RedisServer(free_port(), workdir)
    redis.start()
    name = f"msante_bench_nodes_{uuid.uuid4().hex[:8]}"
    admin = args.pg.replace("postgresql+asyncpg://", "postgresql://")
    asyncio.run(_pg(admin, f'CREATE DATABASE "{name}"'))
    nodes: list[Node] = []
    try:
        env = cluster_environment(workdir / "var", args.pg.rsplit("/", 1)[0] + f"/{name}", redis.url)
        nodes += [start_node("a", env), start_node("b", env)]
        a, b = nodes
        version = subprocess.run([redis.process.args[0], "--version"], capture_output=True, text=True).stdout.split()
        print(f"two nodes, one PostgreSQL database, one redis-server ({version[2] if len(version) > 2 else '?'}), "
              f"{args.n} events one at a time, python {sys.version.split()[0]}")
        print("load average before: %.2f %.2f %.2f (2 cores: above 2, the figures include waiting for a CPU)"
              % os.getloadavg())
        for title, run in (
                ("the bus alone: a RedisBus subscriber hears another's publish (two buses in this process)",
                 lambda: bus_hops(redis.url, args.n * 10)),
                ("IMAP IDLE after EXAMINE (read-only): `* N EXISTS` after a submission on A",
                 lambda: imap_wakeups(a, b, args.n, "EXAMINE")),
                ("IMAP IDLE after SELECT: `* N EXISTS` (sent once \\Recent is claimed, a commit) after a submission on A",
                 lambda: imap_wakeups(a, b, args.n, "SELECT")),
                ("websocket message frame after a post on A", lambda: websocket_wakeups(a, b, args.n))):
            results = asyncio.run(run())
            print(f"\n{title}:")
            for label, samples in results.items():
                print(f"  session on {label:<18} {figures(samples)}")
        print("\nload average after: %.2f %.2f %.2f" % os.getloadavg())
    finally:
        for node in reversed(nodes):
            node.stop()
        redis.kill()
        asyncio.run(_pg(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    return 0


async def _pg(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300, help="events of each kind (default 300)")
    parser.add_argument("--pg", default="postgresql+asyncpg://postgres@127.0.0.1:5432/postgres",
                        help="a PostgreSQL URL whose user may create the benchmark's database")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (node logs)")
    return run_bench("nodes.py", bench, parser.parse_args(), prefix="msante-nodes-")


if __name__ == "__main__":
    sys.exit(main())
