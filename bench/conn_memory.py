"""What an idle connection costs a server process before msante's own objects: the share of
`bench/instant.py`'s memory per websocket that is the event loop's and TLS's, not ours.

    .venv/bin/python bench/conn_memory.py [--connections 1000]

For each layer, a server process on uvloop (as `msante serve`) takes `--connections` loopback
connections through msante's own listener (msante/listeners.py: the admission gate, asyncio's
TLS layer reading into the shared buffer) from a client process; each connection sends one line
and reads it back, then stays open and idle, as an idle websocket does after its subscription:
- `tcp`: asyncio streams (a StreamReader, a StreamWriter, the handler's task), no TLS;
- `tls`: the same over TLS with msante's server context (certs/tls.py, a dev-CA certificate),
  the handshake done and a record each way, as a websocket's upgrade and subscription are.
Printed: the server's RSS per connection between half and all of them open (the first half
warms the allocator's arenas), and the difference between the layers: what TLS holds per idle
connection (OpenSSL's SSL object and its session, asyncio's SSL protocol and memory BIOs).
Figures are printed, never asserted.
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import ssl
import sys
import tempfile
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

import uvloop  # noqa: E402

from certs import pki, tls  # noqa: E402
from msante.admission import Admission  # noqa: E402
from msante.listeners import Listener  # noqa: E402


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def serve(context: ssl.SSLContext | None, port_out, commands) -> None:  # noqa: ANN001 - pipe ends
    """The server process: echoes each connection's first line, then holds it; reports its RSS
    whenever the client asks."""
    held: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readline())
        await writer.drain()
        held.append(writer)
        await reader.read()  # idle until the client closes

    async def main() -> None:
        listener = Listener("bench", "127.0.0.1:0", handle, context, admission=Admission(1_000_000, 1_000_000),
                            refusal=b"")
        await listener.start()
        port_out.send(int(listener.address.rsplit(":", 1)[1]))
        loop = asyncio.get_running_loop()
        while await loop.run_in_executor(None, commands.recv) != "stop":
            commands.send((rss_kib(), len(held)))
        await listener.stop(5.0)

    uvloop.run(main())


def client(port: int, context: ssl.SSLContext | None, count: int, done) -> None:  # noqa: ANN001
    """Opens `count` connections in two halves, telling the parent after each; then waits."""
    async def one(opened: list) -> None:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="localhost" if context else None)
        writer.write(b"subscribe\n")
        await reader.readline()
        opened.append(writer)

    async def main() -> None:
        opened: list = []
        loop = asyncio.get_running_loop()
        for _half in range(2):
            for start in range(0, count // 2, 50):
                await asyncio.gather(*(one(opened) for _ in range(min(50, count // 2 - start))))
            done.send(len(opened))
            await loop.run_in_executor(None, done.recv)
        for writer in opened:
            writer.close()

    uvloop.run(main())


def measure(layer: str, count: int, server_context: ssl.SSLContext | None,
            client_context: ssl.SSLContext | None) -> float:
    fork = multiprocessing.get_context("fork")
    port_in, port_out = fork.Pipe()
    commands, server_end = fork.Pipe()
    server = fork.Process(target=serve, args=(server_context, port_out, server_end))
    server.start()
    port = port_in.recv()
    told, client_end = fork.Pipe()
    opener = fork.Process(target=client, args=(port, client_context, count, client_end))
    opener.start()
    readings = []
    for _half in range(2):
        told.recv()
        commands.send("rss")
        readings.append(commands.recv())
        told.send("go on")
    opener.join()  # its connections closed: the server's handlers end
    commands.send("stop")
    server.join()
    (half_rss, half_n), (full_rss, full_n) = readings
    per = (full_rss - half_rss) / (full_n - half_n)
    print(f"{layer:4} {full_n:6,} connections: {per:5.1f} KiB each ({half_rss / 1024:.0f} MB at {half_n:,}, "
          f"{full_rss / 1024:.0f} MB at {full_n:,})")
    return per


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="msante-conn-memory-") as workdir:
        ca = pki.create_ca(Path(workdir) / "ca")
        cert, key = pki.issue_server(ca, ["localhost", "127.0.0.1"], Path(workdir))
        server_context = tls.server_context(cert, key)
        client_context = tls.client_context(ca.cert_path)
        tcp = measure("tcp", args.connections, None, None)
        over_tls = measure("tls", args.connections, server_context, client_context)
    print(f"TLS's own share of an idle connection: {over_tls - tcp:.1f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
