"""What reading DATA costs the SMTP server, apart from TLS and the store: aiosmtpd's own DATA
(a `readuntil` per line) against ours (mailserver/smtp_data.py: chunks, `bytes.find`, a
`replace` once a line was dot-stuffed), same session class otherwise.

    .venv/bin/python bench/smtp_data.py                 # ~30 s
    .venv/bin/python bench/smtp_data.py --size 10k --messages 2000

A server process per reader on a free loopback port, plain TCP, a handler that keeps nothing
(answers 250 once the data is read); one client (smtplib, sessions of 500) sends `--messages`
messages of `--size` (text lines of 76 octets, one in ten starting with a dot, so that they
are stuffed). Printed per reader: messages/s and MB/s (wall, client and server on one machine)
and the server's CPU per message and per MB (its getrusage), medians of `--runs`. Figures are
printed, never asserted.
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import resource
import smtplib
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repository, not bench/ (bench/directory.py)

SIZES = {"10k": 10 * 1024, "1m": 1024 * 1024}
PER_SESSION = 500  # messages per session, under SmtpLimits.max_messages (1000)


class Sink:
    """Accepts every recipient and forgets every message."""

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: ANN001
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: ANN001
        return "250 2.0.0 OK"


def serve(reader: str, sock: socket.socket, done) -> None:  # noqa: ANN001
    """The server process: one listener, until told to stop; then sends its CPU time."""
    from aiosmtpd.smtp import SMTP
    from sqlalchemy.ext.asyncio import create_async_engine

    from mailserver.smtp import MsanteSMTP, SmtpLimits
    from store.audit import AuditTrail

    class LineByLine(MsanteSMTP):
        """Ours, with aiosmtpd's DATA back: what msante read DATA with before."""
        smtp_DATA = SMTP.smtp_DATA

    session_class = {"aiosmtpd": LineByLine, "chunks": MsanteSMTP}[reader]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        audit = AuditTrail(create_async_engine("sqlite+aiosqlite://"))  # written only on refusals: none here

        def factory():  # noqa: ANN202
            return session_class(Sink(), logins=None, audit=audit, limits=SmtpLimits(), hostname="bench.test",
                                 tls_context=None, implicit_tls=True, listener="bench")

        server = await loop.create_server(factory, sock=sock)
        start = resource.getrusage(resource.RUSAGE_SELF)
        done.send("ready")
        await loop.run_in_executor(None, done.recv)  # "stop", once the client is done
        end = resource.getrusage(resource.RUSAGE_SELF)
        server.close()
        done.send((end.ru_utime - start.ru_utime) + (end.ru_stime - start.ru_stime))

    asyncio.run(main())


def message(size: int) -> bytes:
    head = b"From: a@bench.test\r\nTo: b@bench.test\r\nSubject: bench\r\n\r\n"
    lines = [(b"." if i % 10 == 0 else b"") + b"%08d " % i + b"x" * 64 + b"\r\n" for i in range(size // 76 + 1)]
    return head + b"".join(lines)[:size - len(head) - 2] + b"\r\n"


def run(reader: str, body: bytes, messages: int) -> tuple[float, float]:
    """(wall seconds, server CPU seconds) for `messages` messages in one session."""
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    parent, child = multiprocessing.Pipe()
    proc = multiprocessing.get_context("fork").Process(target=serve, args=(reader, sock, child))
    proc.start()
    assert parent.recv() == "ready"
    start = time.perf_counter()
    for first in range(0, messages, PER_SESSION):
        client = smtplib.SMTP("127.0.0.1", port, timeout=60)
        client.ehlo("client.bench.test")
        for _ in range(min(PER_SESSION, messages - first)):
            code = client.sendmail("a@bench.test", ["b@bench.test"], body)
            assert code == {}, code
        client.quit()
    wall = time.perf_counter() - start
    parent.send("stop")
    cpu = parent.recv()
    proc.join(10)
    sock.close()
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), action="append", help="10k, 1m (default: both)")
    parser.add_argument("--messages", type=int, help="per run (default: 2000 of 10 KB, 100 of 1 MB)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"{'size':5} {'reader':9} {'msgs/s':>8} {'MB/s':>7} {'server CPU ms/msg':>18} {'ms/MB':>7}")
    for size in args.size or ["10k", "1m"]:
        body = message(SIZES[size])
        messages = args.messages or (2000 if size == "10k" else 100)
        for reader in ("aiosmtpd", "chunks"):
            results = [run(reader, body, messages) for _ in range(args.runs)]
            wall = statistics.median(w for w, _ in results)
            cpu = statistics.median(c for _, c in results)
            mb = len(body) * messages / 1e6
            print(f"{size:5} {reader:9} {messages / wall:8.1f} {mb / wall:7.1f} {1000 * cpu / messages:18.3f} "
                  f"{1000 * cpu / mb:7.2f}", flush=True)


if __name__ == "__main__":
    main()
