"""Hospital feed benchmark: HL7 ADT messages over MLLP in mutual TLS, ACK latency and events/s,
then how long the dispatcher takes from the ACK to the GP's mail being committed.

    .venv/bin/python bench/hl7.py [--messages 10000] [--connections 4] [--db postgresql+asyncpg://…]
                                  [--workers N --bus redis://…]

`msante serve` runs as a child process on loopback with `msante init --demo` data (SQLite in
a temporary data directory, unless --db names an empty database; `--workers N` processes need
PostgreSQL and a Redis --bus: the kernel spreads the connections over them, every one dispatches,
and the alert reaches the watcher's worker through Redis). --connections clients,
each presenting the demo hospital's applicative certificate, send ADT^A01 messages (the
sample, each with its own MSH-10) one at a time, each waiting for its ACK, as interface
engines do. Latency is from the frame's first byte sent to the ACK's last byte read, one
clock (this process). Every message names the demo GP, whose patient has a care circle: each
event becomes one mail in the GP's INBOX and four circle alerts. The dispatch delay is read
from the store afterwards (dispatched_at − created_at, both stamped by the server). A member of
that circle (the demo GP) keeps a websocket open throughout: the delay from each ACK read to
that event's `patient` alert arriving on it is measured on this process's clock, the event
matched to its MSH-10 through the store afterwards (`alert_watcher`, `alert_delays`). Prints
figures, asserts nothing; client and server share the machine (and the senders and the
websocket share this process's event loop, which can only lengthen the alert delay).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)

import websockets  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

import config  # noqa: E402
from certs.tokens import DevIssuer  # noqa: E402
from bench.procs import tree_cpu  # noqa: E402
from hospital import mllp  # noqa: E402
from hospital.client import client_context, to_segments  # noqa: E402
from store import db  # noqa: E402
from store.db import utc  # noqa: E402
from store.schema import hl7_messages, hospital_events  # noqa: E402
from tests.conftest import free_port  # noqa: E402

SAMPLE = (REPO / "hospital" / "samples" / "adt_a01_admission.hl7").read_bytes()
ORIGINAL_ID = b"|CHSP-A01-0002|"
WATCHER = "810001045367"  # Dr Dupont, the demo GP, a member of the demo patient's circle


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def connection(n: int, count: int, port: int, context: ssl.SSLContext, latencies: list[float],
                     acked: dict[str, float]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost")
    frames = mllp.FrameReader()
    errors = 0
    for i in range(count):
        message = to_segments(SAMPLE.replace(ORIGINAL_ID, f"|BENCH-{n}-{i}|".encode()))
        started = time.perf_counter()
        writer.write(mllp.frame(message))
        acks: list[bytes] = []
        while not acks:
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            acks = frames.feed(data)
        latencies.append(time.perf_counter() - started)
        acked[f"BENCH-{n}-{i}"] = time.perf_counter()
        errors += b"MSA|AA|" not in acks[0]
    writer.close()
    return errors


def cpu_seconds() -> float:
    """This process's CPU seconds (the senders and the watcher)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def dispatch_delays(url: str, timeout: float) -> tuple[list[float], int]:
    engine = db.create_engine(url)
    try:
        deadline = time.monotonic() + timeout
        while True:
            async with engine.connect() as conn:
                pending = (await conn.execute(select(func.count()).where(hospital_events.c.status == "pending"))).scalar()
            if not pending or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        async with engine.connect() as conn:
            rows = (await conn.execute(select(hospital_events.c.created_at, hospital_events.c.dispatched_at)
                                       .where(hospital_events.c.dispatched_at.is_not(None)))).all()
        return [(utc(done) - utc(created)).total_seconds() for created, done in rows], pending
    finally:
        await engine.dispose()


async def alert_watcher(url: str, tls: ssl.SSLContext, token: str, arrivals: dict[int, float],
                        ready: asyncio.Event) -> None:
    """A circle member's websocket: when each `patient` alert arrives, by event id (cancelled
    when the run is over)."""
    async with websockets.connect(url, ssl=tls, subprotocols=["msante.v1"], ping_interval=None,
                                  compression=None, max_queue=None) as ws:
        await ws.send(json.dumps({"type": "auth", "v": 1, "token": token}))
        assert json.loads(await ws.recv())["type"] == "welcome"
        ready.set()
        async for raw in ws:
            now = time.perf_counter()
            if '"patient"' in raw:  # only alerts of hospital events are parsed
                frame = json.loads(raw)
                if frame.get("type") == "alert" and frame["alert"]["kind"] == "patient":
                    arrivals.setdefault(frame["alert"]["data"]["event"], now)


async def alert_delays(url: str, acked: dict[str, float], arrivals: dict[int, float]) -> tuple[list[float], int]:
    """From each ACK read to its event's alert on the websocket; how many events had none."""
    engine = db.create_engine(url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(hospital_events.c.id, hl7_messages.c.control_id).join(
                hl7_messages, hl7_messages.c.id == hospital_events.c.message_id))).all()
    finally:
        await engine.dispose()
    delays = [arrivals[event] - acked[control] for event, control in rows if event in arrivals and control in acked]
    return delays, len(rows) - len(delays)


async def run(args: argparse.Namespace, workdir: Path) -> None:
    data_dir = workdir / "var"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    https, port = free_port(), free_port()
    env |= {"MSANTE_LISTEN__HTTPS": f"127.0.0.1:{https}", "MSANTE_SERVER__PUBLIC_URL": f"https://localhost:{https}",
            "MSANTE_LISTEN__HL7": f"127.0.0.1:{port}"}
    for name in ("smtp", "submission", "submissions", "imap", "imaps"):
        env[f"MSANTE_LISTEN__{name.upper()}"] = ""
    if args.db:
        env["MSANTE_DATABASE__URL"] = args.db
    if args.bus:
        env["MSANTE_BUS__URL"] = args.bus
    subprocess.run([sys.executable, "-m", "msante", "init", "--demo", "--data-dir", str(data_dir)], env=env,
                   check=True, stdout=subprocess.DEVNULL, cwd=workdir)
    settings = config.load(data_dir=str(data_dir), environ=env)
    log = (workdir / "server.log").open("wb")
    server = subprocess.Popen([sys.executable, "-m", "msante", "serve", "--data-dir", str(data_dir),
                               "--workers", str(args.workers)], env=env,
                              stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                _r, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit(f"msante serve did not listen on {port}; see {workdir / 'server.log'}")
                await asyncio.sleep(0.1)
        cert = data_dir / "demo" / "hospital.crt"
        context = client_context(settings.ca_dir / "ca.crt", cert, cert.with_suffix(".key"))
        per = args.messages // args.connections
        latencies: list[float] = []
        acked: dict[str, float] = {}
        arrivals: dict[int, float] = {}
        ready = asyncio.Event()
        token = DevIssuer.load(data_dir, settings.public_url).issue_access_token(
            idnat=WATCHER, given_name="JEAN", family_name="DUPONT", ttl=3600)
        tls = ssl.create_default_context(cafile=str(settings.ca_dir / "ca.crt"))
        watcher = asyncio.create_task(alert_watcher(f"wss://localhost:{https}/ws", tls, token, arrivals, ready))
        await asyncio.wait_for(ready.wait(), 30)
        if args.workers > 1:
            await asyncio.sleep(3)  # every worker listening, not only the first
        server_cpu, client_cpu, wall = tree_cpu([server.pid]), cpu_seconds(), time.perf_counter()
        errors = sum(await asyncio.gather(*(connection(n, per, port, context, latencies, acked)
                                            for n in range(args.connections))))
        elapsed = time.perf_counter() - wall
        server_share = (tree_cpu([server.pid]) - server_cpu) / elapsed
        client_share = (cpu_seconds() - client_cpu) / elapsed
        backend = settings.database_url.split(":")[0]
        print(f"hl7 feed, {backend}, {args.workers} worker(s): {len(latencies):,} ADT^A01 on {args.connections} connections (mutual TLS, "
              f"one ACK at a time per connection) in {elapsed:.1f} s")
        print(f"  {len(latencies) / elapsed:,.0f} events/s acknowledged; ACK latency p50 "
              f"{quantile(latencies, 0.5) * 1000:.1f} ms, p99 {quantile(latencies, 0.99) * 1000:.1f} ms, max "
              f"{max(latencies) * 1000:.1f} ms; errors {errors}")
        print(f"  CPU while sending: server {server_share:.0%} of a core, client {client_share:.0%}", flush=True)
        delays, pending = await dispatch_delays(settings.database_url, args.drain)
        print(f"  ACK to GP mail committed (dispatcher, 1 mail + 4 circle alerts per event): p50 "
              f"{quantile(delays, 0.5) * 1000:.0f} ms, p99 {quantile(delays, 0.99) * 1000:.0f} ms, max "
              f"{max(delays, default=0) * 1000:.0f} ms over {len(delays):,} events; still pending after {args.drain:.0f} s: "
              f"{pending}")
        await asyncio.sleep(1)  # the last alerts on their way
        watcher.cancel()
        alerts, missing = await alert_delays(settings.database_url, acked, arrivals)
        print(f"  ACK to the `patient` alert on a circle member's websocket: p50 {quantile(alerts, 0.5) * 1000:.0f} ms, "
              f"p99 {quantile(alerts, 0.99) * 1000:.0f} ms, max {max(alerts, default=0) * 1000:.0f} ms over "
              f"{len(alerts):,} events; without an alert: {missing}")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--db", help="an empty PostgreSQL database (postgresql+asyncpg://…); default SQLite")
    parser.add_argument("--workers", type=int, default=1, help="msante serve --workers N (more than 1 needs --db and --bus)")
    parser.add_argument("--bus", help="msante's [bus] url, e.g. redis://127.0.0.1:6379/5 (for --workers)")
    parser.add_argument("--drain", type=float, default=300, help="seconds to wait for the dispatcher to finish")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (server log, data)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="msante-hl7-bench-"))
    try:
        asyncio.run(run(args, workdir))
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            subprocess.run(["rm", "-rf", str(workdir)], check=False)


if __name__ == "__main__":
    main()
