"""What one SELECT (or EXAMINE, STATUS) of a large folder costs the server: CPU, statements, rows.

    .venv/bin/python bench/imap_select.py DATA_DIR [--mailbox bench10k] [--runs 20]
                                          [--command SELECT|EXAMINE|STATUS] [--profile N]

DATA_DIR is a data directory holding a filled folder, e.g. the one `bench/imap.py --keep` leaves
(its `var`; SQLite there, or MSANTE_DATABASE__URL). The server runs in this process (its own
thread and event loop, as tests/conftest.py runs it) on free loopback ports; one client logs in
over imaps (XOAUTH2, a dev-issuer token) and sends the command --runs times, each after an
UNSELECT. Printed per command: wall time at the client, the process's CPU time around the
command (time.process_time: the event loop and aiosqlite's thread; the client waits meanwhile),
SQL statements and rows fetched (SQLAlchemy's cursor events, and raw reads on aiosqlite), the
calls into aiosqlite's thread (each a hand-off: queue, future, wake-up), medians and min..max; then, with --profile N, cProfile's top N functions over all runs.
The client shares the machine: read the server CPU column first.
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import socket
import ssl
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)  # not bench/: its directory.py would hide the directory package

from tests.imap_client import GP, GP_IDNAT, xoauth2  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Counter:
    """Statements and rows of the server's engine, while `on`."""

    def __init__(self) -> None:
        self.on = False
        self.statements = 0
        self.rows = 0
        self.calls = 0
        self.seen: list[str] = []

    def install(self) -> None:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine, Result

        @event.listens_for(Engine, "before_cursor_execute")
        def _count(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
            if self.on and not statement.startswith("SELECT bus_events"):  # the bus's poller, not the command
                self.statements += 1
                self.seen.append(" ".join(statement.split())[:110])

        try:  # SQLite: calls into aiosqlite's thread, raw reads (Folders._read_named) included
            import aiosqlite
        except ImportError:
            pass
        else:
            execute = aiosqlite.Connection._execute

            def _execute(connection, fn, *args, **kwargs):  # noqa: ANN001, ANN202
                if self.on:
                    self.calls += 1
                    if getattr(fn, "__name__", "") == "_execute_fetchall":
                        self.statements += 1
                        self.seen.append(" ".join(str(args[0]).split())[:110] + " (raw)")
                return execute(connection, fn, *args, **kwargs)
            aiosqlite.Connection._execute = _execute

        raw = Result.all

        def all_(result):  # noqa: ANN001, ANN202
            rows = raw(result)
            if self.on:
                self.rows += len(rows)
            return rows
        Result.all = all_


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--mailbox", default="bench10k")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--command", default="SELECT", choices=["SELECT", "EXAMINE", "STATUS", "FETCH"],
                        help="FETCH: 1:* (FLAGS UID RFC822.SIZE ENVELOPE), each after a SELECT (not measured)")
    parser.add_argument("--fresh", action="store_true", help="a new connection and login before each run")
    parser.add_argument("--public-url", help="the URL `msante init` gave the data directory (its dev issuer), "
                                             "if not the https listener's")
    parser.add_argument("--profile", type=int, default=0, help="print cProfile's top N functions")
    args = parser.parse_args()

    ports = {name: free_port() for name in ("https", "smtp", "submission", "submissions", "imap", "imaps", "hl7")}
    os.environ["MSANTE_SERVER__DATA_DIR"] = str(args.data_dir.resolve())
    for name, port in ports.items():
        os.environ[f"MSANTE_LISTEN__{name.upper()}"] = f"127.0.0.1:{port}"
    if args.public_url:  # the dev issuer's identity, when the data directory was made with other ports
        os.environ["MSANTE_SERVER__PUBLIC_URL"] = args.public_url

    from certs.tokens import DevIssuer
    from mailserver.imap import session as imap_session
    import config
    from msante import app

    settings = config.load(data_dir=str(args.data_dir.resolve()))
    counter = Counter()
    counter.install()
    profiler = cProfile.Profile() if args.profile else None
    samples: list[tuple[float, int, int, int]] = []
    original = imap_session.Session._dispatch

    async def measured(self, command, name, cmd_args, uid, entry):  # noqa: ANN001, ANN202
        """The whole command: its handler, the sync after it, the tagged answer."""
        if name != args.command:
            return await original(self, command, name, cmd_args, uid, entry)
        counter.on, counter.statements, counter.rows, counter.calls, counter.seen = True, 0, 0, 0, []
        cpu = time.process_time()
        if profiler:
            profiler.enable()
        try:
            return await original(self, command, name, cmd_args, uid, entry)
        finally:
            if profiler:
                profiler.disable()
            samples.append((time.process_time() - cpu, counter.statements, counter.rows, counter.calls))
            counter.on = False
    imap_session.Session._dispatch = measured

    ready, holder = threading.Event(), {}

    def run() -> None:
        loop = asyncio.new_event_loop()
        holder["loop"], holder["stop"] = loop, asyncio.Event()
        loop.run_until_complete(app.serve(settings, on_ready=lambda _: ready.set(), stop=holder["stop"]))
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(60), "server did not start"

    context = ssl.create_default_context(cafile=str(settings.ca_dir / "ca.crt"))
    bearer = DevIssuer.load(settings.data_dir, settings.public_url).issue_access_token(
        idnat=GP_IDNAT, given_name="Bench", family_name="Bench")
    buffer = [b""]
    conn: list[ssl.SSLSocket] = []

    def until(tag: bytes) -> list[bytes]:
        lines = []
        while True:
            while b"\r\n" not in buffer[0]:
                buffer[0] += conn[0].recv(65536)
            line, buffer[0] = buffer[0].split(b"\r\n", 1)
            lines.append(line)
            if line.startswith(tag + b" "):
                assert line.startswith(tag + b" OK"), line
                return lines

    def connect() -> None:
        """A new connection, logged in (--fresh: one a run, as mailbench's imap does)."""
        if conn:
            conn.pop().sendall(b"z LOGOUT\r\n")
        buffer[0] = b""
        conn.append(context.wrap_socket(socket.create_connection(("127.0.0.1", ports["imaps"])),
                                        server_hostname="localhost"))
        until(b"*")  # greeting
        conn[0].sendall(f"a AUTHENTICATE XOAUTH2 {xoauth2(GP, bearer)}\r\n".encode())
        until(b"a")

    connect()
    walls = []
    command = {"SELECT": f'SELECT "{args.mailbox}"', "EXAMINE": f'EXAMINE "{args.mailbox}"',
               "STATUS": f'STATUS "{args.mailbox}" (MESSAGES UIDNEXT UIDVALIDITY UNSEEN HIGHESTMODSEQ RECENT)',
               "FETCH": "FETCH 1:* (FLAGS UID RFC822.SIZE ENVELOPE)"}
    for n in range(args.runs):
        if args.fresh and n:
            connect()
        if args.command == "FETCH":
            conn[0].sendall(b'f%d SELECT "%s"\r\n' % (n, args.mailbox.encode()))
            until(b"f%d" % n)
        tag = b"s%d" % n
        started = time.perf_counter()
        conn[0].sendall(tag + b" " + command[args.command].encode() + b"\r\n")
        lines = until(tag)
        walls.append(time.perf_counter() - started)
        if n == 0:
            print("\n".join(line.decode(errors="replace")[:100] for line in lines[:12]))
        if args.command != "STATUS":
            conn[0].sendall(b"u%d UNSELECT\r\n" % n)
            until(b"u%d" % n)
    conn[0].sendall(b"z LOGOUT\r\n")
    conn[0].close()
    holder["loop"].call_soon_threadsafe(holder["stop"].set)
    thread.join(30)

    def show(values: list[float], unit: float, fmt: str) -> str:
        return f"{fmt % (statistics.median(values) * unit)} [{fmt % (min(values) * unit)}..{fmt % (max(values) * unit)}]"
    print(f"\n{args.command} {args.mailbox!r}, {args.runs} runs, load {' '.join(open('/proc/loadavg').read().split()[:3])}")
    print(f"  wall at the client ms:  {show(walls, 1e3, '%.2f')}")
    print(f"  server CPU ms:          {show([s[0] for s in samples], 1e3, '%.2f')}")
    print(f"  SQL statements:         {show([s[1] for s in samples], 1, '%d')}")
    print(f"  rows fetched (all()):   {show([s[2] for s in samples], 1, '%d')}")
    print(f"  calls to aiosqlite:     {show([s[3] for s in samples], 1, '%d')}")
    print("  last run's statements:\n    " + "\n    ".join(counter.seen))
    if profiler:
        pstats.Stats(profiler).sort_stats(os.environ.get("PROFILE_SORT", "cumulative")).print_stats(args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
