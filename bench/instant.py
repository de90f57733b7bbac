"""Instant benchmark: N authenticated websocket connections in care circles of 20 over
`msante serve --workers W`, the server's memory per idle connection, and the delivery latency
from a post to every member at increasing post rates.

    .venv/bin/python bench/instant.py [--connections 10000] [--workers 2] [--clients 2]
        [--rates 100,200,400,600,800,1000] [--seconds 10] [--pg postgresql+asyncpg://postgres@127.0.0.1:5432/postgres]
    .venv/bin/python bench/instant.py --sqlite --workers 1 --connections 2000   # the embedded default

The server: `msante serve --workers W` on loopback, on a PostgreSQL database of its own (created
from --pg, dropped at the end) and a private redis-server (the bus between workers); with
--sqlite, one process on SQLite and no Redis. N fictional professionals and N/20 circles are
written straight into the store. The client: --clients processes (one event loop each), each
owning whole circles, so a post and its 20 receipts are timed with one clock in one process.
Each connection is one professional over TLS (the `websockets` client, a dev-issuer token),
subscribed to its circle; the kernel spreads them over the workers (SO_REUSEPORT), so most
circles span both and their posts cross Redis.

Memory: the RSS of every worker process summed, once half the connections are open and idle and
once all are: the difference over N/2 is the cost of one idle connection (the first half pays
for what grows once: arenas, pools, the TLS session cache), as bench/imap_prelogin.py does.

Rates: each step posts for --seconds from random members of the client's circles (the clients
share the rate); every member's receipt is timed. The rate "held" is the highest whose every
delivery arrived, with p99 under 100 ms. The CPU columns (share of one core) say who ran out
first: the server's workers, the client processes, PostgreSQL and Redis; the machine's cores
are shared by all of them, and by whatever else runs. Prints figures, asserts nothing.
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import re
import resource
import signal
import ssl
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)  # the repository, not bench/, first on the path

import asyncpg  # noqa: E402
import websockets  # noqa: E402
from sqlalchemy import insert  # noqa: E402

import config  # noqa: E402
from bench.procs import Fatal, run_bench, tree_cpu  # noqa: E402
from certs.tokens import DevIssuer  # noqa: E402
from directory.identifiers import luhn_valid  # noqa: E402
from instant.patient import Patient, ins_key  # noqa: E402
from instant.storage import SqlStore  # noqa: E402
from store import db  # noqa: E402
from store.schema import professionals  # noqa: E402
from tests.conftest import RedisServer, free_port  # noqa: E402
from tests.test_workers import workers_of  # noqa: E402

TARGET_P99 = 0.100  # s: the rate "held" is the highest whose p99 delivery latency stays under this
DRAIN_SECONDS = 5.0  # after each step, how long stragglers may still arrive
TICKS_PER_SECOND = 200  # the poster's pacing granularity
SETTLE_SECONDS = 3.0  # idle time before RSS is read: presence announcements and catch-ups finish
CLIENT_ID = re.compile(r'"client_id":"([^"]*)"')


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
        await db.upgrade(engine)
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


def start_server(data_dir: Path, env: dict[str, str], workers: int, log: Path) -> subprocess.Popen:
    """`msante serve --workers W`, its output to `log`; returned once every worker runs."""
    with log.open("w") as out:
        child = subprocess.Popen([sys.executable, "-m", "msante", "serve", "--data-dir", str(data_dir),
                                  "--workers", str(workers)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                 text=True)
    give_up = time.monotonic() + 60
    while "Stop with Ctrl-C" not in log.read_text() or len(server_pids(child.pid, workers)) < workers:
        if child.poll() is not None or time.monotonic() > give_up:
            raise Fatal(f"msante serve did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.1)
    time.sleep(2.0)  # the other workers' listeners and pools
    return child


def server_pids(root: int, workers: int) -> list[int]:
    """The processes that serve: the workers under the supervisor, or `root` itself."""
    return [root] if workers == 1 else sorted(workers_of(root))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def named_pids(name: str) -> list[int]:
    """Every process whose command is `name` (PostgreSQL's backends, redis-server): for the CPU
    they use, read only."""
    pids = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip().startswith(name):
                pids.append(int(comm.parent.name))
        except OSError:
            continue
    return pids


# --- the client processes -----------------------------------------------------------------------------


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


class Client:
    """One client process's members and what they receive; driven by commands on a pipe."""

    def __init__(self, url: str, cafile: str, issuer: DevIssuer, placed: list[tuple[str, int]],
                 circle_size: int, concurrency: int) -> None:
        self.url, self.issuer, self.placed = url, issuer, placed
        self.tls = ssl.create_default_context(cafile=cafile)
        self.circle_size = circle_size
        self.gate = asyncio.Semaphore(concurrency)
        self.members: list[tuple[websockets.ClientConnection, int]] = []
        self.steps = [Step()]
        self.tasks: list[asyncio.Task] = []
        self.rnd = random.Random(os.getpid())

    async def open(self, placed: list[tuple[str, int]]) -> int:
        opened = await asyncio.gather(*(self._open_one(idnat, circle) for idnat, circle in placed))
        self.members += opened
        self.tasks += [asyncio.create_task(self._receive(ws)) for ws, _ in opened]
        return len(opened)

    async def _open_one(self, idnat: str, circle: int) -> tuple[websockets.ClientConnection, int]:
        token = self.issuer.issue_access_token(idnat=idnat, given_name="TEST", family_name="BANC", ttl=3600)
        async with self.gate:
            ws = await websockets.connect(self.url, ssl=self.tls, subprotocols=["msante.v1"], ping_interval=None,
                                          compression=None, open_timeout=120, max_queue=None)
            await ws.send(f'{{"type":"auth","v":1,"token":"{token}"}}')
            if '"welcome"' not in await ws.recv():
                raise Fatal(f"{idnat} not welcome")
            await ws.send(f'{{"type":"subscribe","circle":{circle}}}')
            while '"subscribed"' not in (await ws.recv())[:40]:
                pass  # the presence of members subscribing at the same time
            return ws, circle

    async def _receive(self, ws: websockets.ClientConnection) -> None:
        """Time every message against its post; count errors. The current step is the last one."""
        async for raw in ws:
            head = raw[:30]
            if '"type":"message"' in head:
                now = time.monotonic()
                step = self.steps[-1]
                post = step.posts.get(CLIENT_ID.search(raw)[1])
                if post is not None:
                    step.latencies.append(now - post.sent)
                    post.waiting -= 1
                    if post.waiting == 0:
                        step.complete.append(now - post.sent)
            elif '"type":"error"' in head:
                self.steps[-1].errors += 1

    async def step(self, rate: float, seconds: float) -> dict:
        step = Step()
        self.steps.append(step)
        tag = uuid.uuid4().hex[:8]
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        started, sent = time.monotonic(), 0
        while (elapsed := time.monotonic() - started) < seconds:
            for _ in range(int(elapsed * rate) - sent):
                ws, circle = self.rnd.choice(self.members)
                client_id = f"{tag}-{sent}"
                step.posts[client_id] = Post(time.monotonic(), self.circle_size)
                await ws.send(f'{{"type":"post","circle":{circle},"client_id":"{client_id}",'
                              f'"text":"Message de banc d\'essai n° {sent}"}}')
                sent += 1
            await asyncio.sleep(1 / TICKS_PER_SECOND)
        after = resource.getrusage(resource.RUSAGE_SELF)
        busy = time.monotonic() - started
        give_up = time.monotonic() + DRAIN_SECONDS
        while len(step.latencies) < sent * self.circle_size and time.monotonic() < give_up:
            await asyncio.sleep(0.05)
        return {"sent": sent, "latencies": step.latencies, "complete": step.complete, "errors": step.errors,
                "cpu": after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime, "wall": busy}

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*(ws.close() for ws, _ in self.members), return_exceptions=True)


def client_process(pipe, url: str, cafile: str, data_dir: str, public_url: str,  # noqa: ANN001 - a Connection
                   placed: list[tuple[str, int]], circle_size: int, concurrency: int) -> None:
    """A client process: opens its members in halves, runs steps, as the pipe commands."""
    async def serve() -> None:
        loop = asyncio.get_running_loop()
        client = Client(url, cafile, DevIssuer.load(Path(data_dir), public_url), placed, circle_size, concurrency)
        halves = [placed[:len(placed) // 2], placed[len(placed) // 2:]]
        try:
            while True:
                command, *arguments = await loop.run_in_executor(None, pipe.recv)
                if command == "open":
                    pipe.send(await client.open(halves[arguments[0]]))
                elif command == "step":
                    pipe.send(await client.step(*arguments))
                else:
                    break
        except Exception as exc:  # told to the coordinator, which stops the run
            pipe.send(exc)
        finally:
            await client.close()
    try:
        import uvloop  # the server runs on it; the client must, or it is the bottleneck
        uvloop.run(serve())
    except ImportError:
        asyncio.run(serve())


def ask(pipes: list, *command) -> list:  # noqa: ANN001
    for pipe in pipes:
        pipe.send(command)
    answers = [pipe.recv() for pipe in pipes]
    for answer in answers:
        if isinstance(answer, Exception):
            raise Fatal(f"a client process failed: {answer!r}")
    return answers


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


# --- the run ----------------------------------------------------------------------------------------

def bench(args: argparse.Namespace, workdir: Path) -> int:
    port = free_port()
    data_dir = workdir / "var"
    per_worker = args.connections + 100  # the kernel's spread is uneven: let any worker take them all
    env = {k: v for k, v in os.environ.items() if not k.startswith(config.settings.ENV_PREFIX)}
    env.update({"MSANTE_LISTEN__HTTPS": f"127.0.0.1:{port}", "MSANTE_SERVER__PUBLIC_URL": f"https://localhost:{port}",
                # every connection comes from 127.0.0.1: the per-address cap must let them in
                "MSANTE_LIMITS__CONNECTIONS_PER_ADDRESS": str(per_worker),
                "MSANTE_LIMITS__CONNECTIONS": str(per_worker)})
    for name in ("smtp", "submission", "submissions", "imap", "imaps", "hl7"):
        env[f"MSANTE_LISTEN__{name.upper()}"] = ""
    redis, database, admin = None, None, args.pg.replace("postgresql+asyncpg://", "postgresql://")
    clients: list[multiprocessing.Process] = []
    server = None
    try:
        if not args.sqlite:
            redis = RedisServer(free_port(), workdir)
            redis.start()
            database = f"msante_bench_instant_{uuid.uuid4().hex[:8]}"
            asyncio.run(_pg(admin, f'CREATE DATABASE "{database}"'))
            env["MSANTE_DATABASE__URL"] = args.pg.rsplit("/", 1)[0] + f"/{database}"
            env["MSANTE_BUS__URL"] = redis.url
        subprocess.run([sys.executable, "-m", "msante", "init", "--dev-issuer", "--data-dir", str(data_dir)], env=env,
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        settings = config.load(data_dir=str(data_dir), environ=env)
        started = time.perf_counter()
        placed = asyncio.run(seed(settings, args.connections, args.circle_size))
        print(f"seeded {len(placed):,} professionals in {len(placed) // args.circle_size} circles of "
              f"{args.circle_size} in {time.perf_counter() - started:.1f} s "
              f"({'SQLite' if args.sqlite else 'PostgreSQL + redis-server'})")

        # whole circles per client process, so each times its own posts' deliveries
        shares: list[list[tuple[str, int]]] = [[] for _ in range(args.clients)]
        for first in range(0, len(placed), args.circle_size):
            shares[first // args.circle_size % args.clients] += placed[first:first + args.circle_size]
        pipes = []
        fork = multiprocessing.get_context("fork")
        for share in shares:
            ours, theirs = fork.Pipe()
            process = fork.Process(target=client_process, daemon=True, args=(
                theirs, f"wss://localhost:{port}/ws", str(settings.ca_dir / "ca.crt"), str(data_dir),
                settings.public_url, share, args.circle_size, max(1, args.open_concurrency // args.clients)))
            process.start()
            clients.append(process)
            pipes.append(ours)

        server = start_server(data_dir, env, args.workers, workdir / "server.log")
        pids = server_pids(server.pid, args.workers)
        plateaus = [sum(rss_kib(p) for p in pids)]
        for half in (0, 1):
            started = time.perf_counter()
            opened = sum(ask(pipes, "open", half))
            took = time.perf_counter() - started
            time.sleep(SETTLE_SECONDS)
            plateaus.append(sum(rss_kib(p) for p in pids))
            print(f"opened {opened:,} more connections (TLS, token, subscription) in {took:.1f} s "
                  f"({opened / took:.0f}/s); workers' RSS {plateaus[-1] / 1024:.0f} MB "
                  f"({', '.join(f'{rss_kib(p) / 1024:.0f}' for p in pids)})")
        half = args.connections // 2
        print(f"server memory per idle connection: {(plateaus[2] - plateaus[1]) / (args.connections - half):.1f} KiB "
              f"(RSS of {args.workers} worker(s) from {half:,} to {args.connections:,} connections); "
              f"{(plateaus[2] - plateaus[0]) / args.connections:.1f} KiB from none (baseline "
              f"{plateaus[0] / 1024:.0f} MB)")

        print(f"\n{'posts/s':>8} {'sent':>6} {'deliveries':>15} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
              f"{'all-members p99':>16} {'errors':>6} {'workers CPU':>11} {'clients':>8} {'postgres':>8} "
              f"{'redis':>6}")
        held = None
        for rate in args.rates:
            roots = {"server": [server.pid], "postgres": named_pids("postgres"),
                     "redis": [redis.process.pid] if redis else []}
            before, wall = {name: tree_cpu(r) for name, r in roots.items()}, time.monotonic()
            answers = ask(pipes, "step", rate / args.clients, args.seconds)
            busy = max(a["wall"] for a in answers)
            # the server's CPU is read after the drain too: what it did for this step's posts
            share = {name: (tree_cpu(r) - before[name]) / (time.monotonic() - wall) for name, r in roots.items()}
            sent = sum(a["sent"] for a in answers)
            latencies = [x for a in answers for x in a["latencies"]]
            complete = [x for a in answers for x in a["complete"]]
            expected = sent * args.circle_size
            p99 = quantile(latencies, 0.99)
            print(f"{rate:>8g} {sent:>6} {len(latencies):>7}/{expected:<7} {quantile(latencies, 0.5) * 1e3:>7.1f} "
                  f"{p99 * 1e3:>7.1f} {max(latencies, default=0) * 1e3:>7.1f} "
                  f"{quantile(complete, 0.99) * 1e3:>13.1f} ms {sum(a['errors'] for a in answers):>6} "
                  f"{share['server']:>10.0%} {sum(a['cpu'] for a in answers) / busy:>8.0%} "
                  f"{share['postgres']:>8.0%} {share['redis']:>6.0%}")
            if len(latencies) == expected and p99 < TARGET_P99:
                held = rate
            elif p99 > 10 * TARGET_P99 or len(latencies) < 0.99 * expected:
                break  # far past what the server holds: stop before queues swamp the figures
        print(f"\nhighest rate held with p99 under {TARGET_P99 * 1e3:.0f} ms: "
              f"{f'{held:g} posts/s = {held * args.circle_size:g} deliveries/s' if held else 'none of those tried'}")
        print(f"workers' RSS at the end: {sum(rss_kib(p) for p in pids) / 1024:.0f} MB; load average (1 min): "
              f"{os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs shared by {args.clients} client process(es), "
              f"{args.workers} worker(s), PostgreSQL, Redis and whatever else runs")
        for pipe in pipes:
            pipe.send(("stop",))
        return 0
    finally:
        for process in clients:
            process.join(30)
            if process.is_alive():
                process.kill()
        if server is not None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
        if redis is not None:
            redis.kill()
        if database is not None:
            asyncio.run(_pg(admin, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


async def _pg(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--circle-size", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2, help="msante serve --workers (default 2)")
    parser.add_argument("--clients", type=int, default=2, help="client processes (default 2)")
    parser.add_argument("--rates", type=lambda text: [float(r) for r in text.split(",")],
                        default=[100, 200, 400, 600, 800, 1000], help="posts per second, comma-separated, increasing")
    parser.add_argument("--open-concurrency", type=int, default=32,
                        help="connections being opened at once, over all clients (default 32: more, on a loaded machine, outlast the 10 s a connection has to authenticate)")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each rate")
    parser.add_argument("--pg", default="postgresql+asyncpg://postgres@127.0.0.1:5432/postgres",
                        help="a PostgreSQL URL whose user may create the benchmark's database")
    parser.add_argument("--sqlite", action="store_true", help="one process on SQLite, no Redis (needs --workers 1)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (server log)")
    args = parser.parse_args()
    if args.connections % (2 * args.circle_size * args.clients):
        parser.error("--connections must be a multiple of 2 x --circle-size x --clients")
    if args.sqlite and args.workers != 1:
        parser.error("--sqlite runs one process: --workers 1")
    # 10,000 sockets in the client processes (the limit is inherited by the server too)
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    return run_bench("instant.py", bench, args, prefix="msante-instant-")


if __name__ == "__main__":
    sys.exit(main())
