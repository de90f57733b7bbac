"""What an anonymous IMAP connection can make the server hold (issue 10, item 4).

    .venv/bin/python bench/imap_prelogin.py [--connections 200] [--db URL] [--keep]

Starts msante as bench/smtp.py does (fresh data directory, `init --demo`, `serve`; the per-address
connection cap raised to --connections so the loopback client may open them all), reads the server's
RSS, then opens --connections implicit-TLS connections to imaps, each in one of three states:

- idle: TLS up, nothing sent (the floor: what a connection costs at all);
- loaded: `a LOGIN {65000+}` followed by 64,000 bytes of the literal, never finished (LITERAL+
  lets a client send before the server agrees; the most an anonymous client may make it buffer);
- over: the same with a literal of 10 MB announced: the server must refuse it, not read it.

Per state, on a fresh server: the RSS growth per connection between --connections and twice as many
held at once (KiB), and how many of them the server answered with a refusal or closed. Figures are printed, never asserted; RSS includes the allocator's slack, so read the
figure per connection over a few hundred connections, not one.
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import ssl
import sys
import tempfile
import time
from pathlib import Path

from procs import Fatal
from smtp import Msante


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


async def open_state(port: int, tls: ssl.SSLContext, count: int, payload: bytes) -> tuple[list, int]:
    """`count` connections that each sent `payload` after the greeting; returns them and how many the
    server closed (or refused) within a second of the payload."""
    conns, closed = [], 0
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
        await reader.readline()  # the greeting
        if payload:
            writer.write(payload)
            await writer.drain()
        conns.append((reader, writer))
    await asyncio.sleep(1.0)
    for reader, _ in conns:
        try:
            answer = await asyncio.wait_for(reader.read(4096), 0.01)
        except asyncio.TimeoutError:
            continue  # still waiting for the rest of the literal, as the server should before it is too big
        except OSError:
            answer = b""
        closed += not answer or b"BAD" in answer or b"BYE" in answer or b"NO" in answer
    return conns, closed


async def close_all(conns: list) -> None:
    for _, writer in conns:
        writer.close()
    await asyncio.gather(*(w.wait_closed() for _, w in conns), return_exceptions=True)


STATES = {
    "idle": b"",
    "loaded": b"a LOGIN {65000+}\r\n" + b"x" * 64000,
    "over": b"a LOGIN {10485760+}\r\n" + b"x" * 64000,
}


async def measure(server: Msante, count: int, payload: bytes) -> tuple[float, int]:
    """The marginal cost: RSS with 2 x count connections held minus RSS with count held, per connection
    (the first batch pays for the arenas and TLS caches that grow once)."""
    tls = ssl.create_default_context(cafile=str(server.data / "pki" / "ca.crt"))
    tls.check_hostname = False
    port = server.ports["imaps"]
    first, closed_first = await open_state(port, tls, count, payload)
    before = rss_kib(server.proc.pid)
    second, closed_second = await open_state(port, tls, count, payload)
    after = rss_kib(server.proc.pid)
    await close_all(first + second)
    return (after - before) / count, closed_first + closed_second


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--db", help="a database URL (default: SQLite in the temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    rows = []
    for name, payload in STATES.items():  # a fresh server per state: no state reuses another's freed memory
        workdir = Path(tempfile.mkdtemp(prefix=f"msante-prelogin-{name}-"))
        server = Msante(workdir, args.db)
        server.env["MSANTE_LIMITS__CONNECTIONS_PER_ADDRESS"] = str(2 * args.connections + 10)
        try:
            server.init()
            server.start()
            time.sleep(1.0)
            rows.append((name, *asyncio.run(measure(server, args.connections, payload))))
        except Fatal as error:
            print(error, file=sys.stderr)
            return 1
        finally:
            server.stop()
            if not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
    print(f"msante imaps on loopback: RSS growth from {args.connections} to {2 * args.connections} connections held")
    print(f"{'state':8} {'RSS KiB/conn':>13} {'closed by server':>17}")
    for name, per_conn, closed in rows:
        print(f"{name:8} {per_conn:13.1f} {closed:17d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
