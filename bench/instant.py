"""Instant benchmark: N websocket connections in care circles of 20, the delivery latency from a
post to every member at increasing post rates, and the server's memory per connection.

    .venv/bin/python bench/instant.py [--connections 2000] [--circle-size 20] [--rates 25,50,100,200,400]
                                      [--seconds 10] [--db postgresql+asyncpg://…]

`msante serve` runs as a child process on loopback, with a data directory of its own (SQLite
unless --db names an empty database). N fictional professionals and N/20 circles are written
straight into the store (bench/directory.py measures the directory import). Each connection
is one professional over TLS (the `websockets` client, its own dev-issuer token), subscribed
to its circle. At each rate, posts go out for --seconds from random members; every member's
receipt is timed against the send with one clock (this process). Prints figures, asserts
nothing. Client and server share the machine: the CPU columns show which side ran out first.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)  # the repository, not bench/, first on the path

import websockets  # noqa: E402
from sqlalchemy import insert  # noqa: E402

import config  # noqa: E402
from certs.tokens import DevIssuer  # noqa: E402
from directory.identifiers import luhn_valid  # noqa: E402
from instant.patient import Patient, ins_key  # noqa: E402
from instant.storage import SqlStore  # noqa: E402
from store import db  # noqa: E402
from store.schema import professionals  # noqa: E402
from tests.conftest import free_port  # noqa: E402

TARGET_P99 = 0.100  # s: the rate "held" is the highest whose p99 delivery latency stays under this
DRAIN_SECONDS = 5.0  # after each step, how long stragglers may still arrive
OPEN_CONCURRENCY = 100  # TLS handshakes and authentications in flight while connecting
TICKS_PER_SECOND = 500  # the poster's pacing granularity


@dataclass
class Post:
    sent: float
    waiting: int  # members that have not received it yet


@dataclass
class Step:
    posts: dict[str, Post] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)  # one per (post, member)
    complete: list[float] = field(default_factory=list)  # per post: until its last member had it
    errors: int = 0


class Member:
    def __init__(self, idnat: str, circle: int, ws: websockets.ClientConnection) -> None:
        self.idnat, self.circle, self.ws = idnat, circle, ws


# --- the server and its data ----------------------------------------------------------------------


def rpps(n: int) -> str:
    stem = f"1{n:09d}"
    return next(stem + str(d) for d in range(10) if luhn_valid(stem + str(d)))


async def seed(settings: config.Settings, count: int, circle_size: int) -> list[tuple[str, int]]:
    """N professionals and their circles; (idnat, circle id) for each."""
    now = datetime.now(timezone.utc)
    people = [f"8{rpps(n)}" for n in range(1, count + 1)]
    engine = db.create_engine(settings.database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(professionals), [
                {"idnat": idnat, "rpps": idnat[1:], "family_name": f"BANC{n:05d}", "given_name": "TEST",
                 "profession_code": "10", "profession_label": "Médecin", "updated_at": now}
                for n, idnat in enumerate(people)])
        store, placed = SqlStore(engine), []
        for first in range(0, count, circle_size):
            group = people[first:first + circle_size]
            matricule = f"1{first // circle_size:012d}"
            patient = Patient(f"{matricule}{ins_key(matricule):02d}", "1.2.250.1.213.1.4.10", "BANC", "PATIENT",
                              datetime(1950, 1, 1).date())
            circle = await store.create_circle(patient, group[0], [(p, "") for p in group[1:]], "bench", now)
            placed += [(idnat, circle) for idnat in group]
        return placed
    finally:
        await engine.dispose()


def start_server(data_dir: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """`msante serve`, its output to `log` (a pipe nobody reads fills up and stops the server)."""
    with log.open("w") as out:
        child = subprocess.Popen([sys.executable, "-m", "msante", "serve", "--data-dir", str(data_dir)], env=env,
                                 stdout=out, stderr=subprocess.STDOUT, text=True)
    give_up = time.monotonic() + 60
    while "Stop with Ctrl-C" not in log.read_text():
        if child.poll() is not None or time.monotonic() > give_up:
            raise SystemExit(f"msante serve did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.1)
    return child


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def cpu_seconds(pid: int | None = None) -> float:
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the clients ----------------------------------------------------------------------------------

async def open_members(url: str, tls: ssl.SSLContext, issuer: DevIssuer,
                       placed: list[tuple[str, int]]) -> list[Member]:
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)

    async def open_one(idnat: str, circle: int) -> Member:
        token = issuer.issue_access_token(idnat=idnat, given_name="TEST", family_name="BANC", ttl=3600)
        async with gate:
            ws = await websockets.connect(url, ssl=tls, subprotocols=["msante.v1"], ping_interval=None,
                                          compression=None, open_timeout=60, max_queue=None)
            await ws.send(json.dumps({"type": "auth", "v": 1, "token": token}))
            assert json.loads(await ws.recv())["type"] == "welcome"
            await ws.send(json.dumps({"type": "subscribe", "circle": circle}))
            while json.loads(await ws.recv())["type"] != "subscribed":
                pass  # the presence of members subscribing at the same time
            return Member(idnat, circle, ws)
    return list(await asyncio.gather(*(open_one(idnat, circle) for idnat, circle in placed)))


async def receive(member: Member, steps: list[Step]) -> None:
    """Time every message against its post; count errors. The current step is the last one."""
    async for raw in member.ws:
        if '"type":"message"' in raw[:30]:
            now = time.perf_counter()
            step = steps[-1]
            post = step.posts.get(json.loads(raw)["client_id"])
            if post is not None:
                step.latencies.append(now - post.sent)
                post.waiting -= 1
                if post.waiting == 0:
                    step.complete.append(now - post.sent)
        elif '"type":"error"' in raw[:30]:
            steps[-1].errors += 1


async def post_at(rate: float, seconds: float, members: list[Member], circle_size: int, step: Step,
                  rnd: random.Random) -> int:
    started, sent = time.perf_counter(), 0
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(int(elapsed * rate) - sent):
            member = rnd.choice(members)
            client_id = f"{rate:g}-{sent}"
            step.posts[client_id] = Post(time.perf_counter(), circle_size)
            await member.ws.send(json.dumps({"type": "post", "circle": member.circle, "client_id": client_id,
                                             "text": f"Message de banc d'essai n° {sent}"}))
            sent += 1
        await asyncio.sleep(1 / TICKS_PER_SECOND)
    return sent


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


# --- the run ----------------------------------------------------------------------------------------

async def run(args: argparse.Namespace, workdir: Path) -> None:
    port = free_port()
    data_dir = workdir / "var"
    # Every connection comes from 127.0.0.1: the per-address cap (50 by default) must let them in.
    env = {**os.environ, "MSANTE_LISTEN__HTTPS": f"127.0.0.1:{port}",
           "MSANTE_SERVER__PUBLIC_URL": f"https://localhost:{port}",
           "MSANTE_LIMITS__CONNECTIONS_PER_ADDRESS": str(args.connections + 100),
           "MSANTE_LIMITS__CONNECTIONS": str(max(4000, args.connections + 100))}
    for name in ("smtp", "submission", "submissions", "imap", "imaps", "hl7"):
        env[f"MSANTE_LISTEN__{name.upper()}"] = ""
    if args.db:
        env["MSANTE_DATABASE__URL"] = args.db
    subprocess.run([sys.executable, "-m", "msante", "init", "--dev-issuer", "--data-dir", str(data_dir)], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    settings = config.load(data_dir=str(data_dir), environ=env)
    started = time.perf_counter()
    placed = await seed(settings, args.connections, args.circle_size)
    print(f"seeded {len(placed):,} professionals in {len(placed) // args.circle_size} circles of "
          f"{args.circle_size} in {time.perf_counter() - started:.1f} s ({settings.database_url.split(':')[0]})")

    server = start_server(data_dir, env, workdir / "server.log")
    members: list[Member] = []
    try:
        tls = ssl.create_default_context(cafile=str(settings.ca_dir / "ca.crt"))
        issuer = DevIssuer.load(data_dir, settings.public_url)
        baseline = rss_mb(server.pid)
        started = time.perf_counter()
        members = await open_members(f"wss://localhost:{port}/ws", tls, issuer, placed)
        opened = time.perf_counter() - started
        loaded = rss_mb(server.pid)
        print(f"opened {len(members):,} connections (TLS, authenticated, subscribed) in {opened:.1f} s; server RSS "
              f"{baseline:.0f} MB before, {loaded:.0f} MB after: {(loaded - baseline) * 1024 / len(members):.1f} KiB "
              f"per connection")
        steps: list[Step] = [Step()]
        receivers = [asyncio.create_task(receive(m, steps)) for m in members]
        print(f"\n{'posts/s':>8} {'sent':>6} {'deliveries':>11} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
              f"{'all-members p99':>16} {'errors':>6} {'server CPU':>10} {'client CPU':>10}")
        held, rnd = None, random.Random(7)
        for rate in args.rates:
            step = Step()
            steps.append(step)
            wall, server_cpu, client_cpu = time.perf_counter(), cpu_seconds(server.pid), cpu_seconds()
            sent = await post_at(rate, args.seconds, members, args.circle_size, step, rnd)
            busy = time.perf_counter() - wall
            server_share = (cpu_seconds(server.pid) - server_cpu) / busy
            client_share = (cpu_seconds() - client_cpu) / busy
            give_up = time.perf_counter() + DRAIN_SECONDS
            while len(step.latencies) < sent * args.circle_size and time.perf_counter() < give_up:
                await asyncio.sleep(0.05)
            expected = sent * args.circle_size
            p99 = quantile(step.latencies, 0.99)
            print(f"{rate:>8g} {sent:>6} {len(step.latencies):>5}/{expected:<5} "
                  f"{quantile(step.latencies, 0.5) * 1e3:>7.1f} "
                  f"{p99 * 1e3:>7.1f} {max(step.latencies, default=0) * 1e3:>7.1f} "
                  f"{quantile(step.complete, 0.99) * 1e3:>13.1f} ms {step.errors:>6} {server_share:>9.0%} "
                  f"{client_share:>9.0%}")
            if len(step.latencies) == expected and p99 < TARGET_P99:
                held = rate
            elif p99 > 10 * TARGET_P99 or len(step.latencies) < 0.99 * expected:
                break  # far past what the server holds: stop before queues swamp the figures
        print(f"\nhighest rate held with p99 under {TARGET_P99 * 1e3:.0f} ms: "
              f"{f'{held:g} posts/s = {held * args.circle_size:g} deliveries/s' if held else 'none of those tried'}")
        print(f"server RSS at the end: {rss_mb(server.pid):.0f} MB; load average (1 min): {os.getloadavg()[0]:.2f}; "
              f"{os.cpu_count()} CPUs shared by client and server")
        for task in receivers:
            task.cancel()
    finally:
        await asyncio.gather(*(m.ws.close() for m in members), return_exceptions=True)
        server.send_signal(signal.SIGTERM)
        await asyncio.to_thread(server.wait, 60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--circle-size", type=int, default=20)
    parser.add_argument("--rates", type=lambda text: [float(r) for r in text.split(",")],
                        default=[25, 50, 100, 200, 400, 800], help="posts per second, comma-separated, increasing")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each rate")
    parser.add_argument("--db", help="an empty PostgreSQL database (postgresql+asyncpg://…); default SQLite")
    args = parser.parse_args()
    if args.connections % args.circle_size:
        parser.error("--connections must be a multiple of --circle-size")
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    try:
        import uvloop  # the server runs on it when installed; the client too, or it is the bottleneck
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    with tempfile.TemporaryDirectory(prefix="msante-bench-") as workdir:
        runner(run(args, Path(workdir)))


if __name__ == "__main__":
    main()
