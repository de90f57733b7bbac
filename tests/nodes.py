"""Several `msante serve` processes on one store and one Redis, as an operator runs nodes
behind a load balancer: one data directory (certificates, keys, the dev issuer), one
PostgreSQL database, one `[bus] url`, listeners on ports of their own. Used by
tests/test_nodes.py and bench/nodes.py."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import config
from tests.conftest import RunningServer, free_port

REPO = Path(__file__).resolve().parents[1]
LISTENERS = ("smtp", "submission", "submissions", "imap", "imaps", "https", "hl7")
START_SECONDS = 60.0


@dataclass
class Node(RunningServer):
    """A running node: what tests use of a RunningServer (listeners, TLS, tokens) and its process."""

    process: subprocess.Popen | None = None
    log: Path | None = None

    def stop(self) -> None:
        """SIGTERM, as systemd stops it; SIGKILL if it has not ended in time."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def cluster_environment(data_dir: Path, database_url: str, bus_url: str) -> dict[str, str]:
    """What every node shares, initialised once with `msante init --demo`; the public URL (the
    dev issuer's name in tokens) is the first node's, as a load balancer's would be."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(config.settings.ENV_PREFIX)}
    env.update(MSANTE_SERVER__DATA_DIR=str(data_dir), MSANTE_DATABASE__URL=database_url, MSANTE_BUS__URL=bus_url,
               MSANTE_SERVER__PUBLIC_URL=f"https://localhost:{free_port()}", PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-m", "msante", "init", "--demo"], env=env, cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)
    return env


def start_node(name: str, env: dict[str, str], *options: str, **extra: str) -> Node:
    """`msante serve` (with `options`) with listeners on free loopback ports (and `extra`
    MSANTE_* settings), returned once every listener accepts connections."""
    listeners = {listener: f"127.0.0.1:{free_port()}" for listener in LISTENERS}
    env = {**env, **{f"MSANTE_LISTEN__{k.upper()}": v for k, v in listeners.items()}, **extra}
    data_dir = Path(env["MSANTE_SERVER__DATA_DIR"])
    log = data_dir / f"node-{name}.log"
    with open(log, "ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "msante", "serve", *options], env=env, cwd=REPO, stdout=out,
                                   stderr=subprocess.STDOUT)
    node = Node(config.load(data_dir=str(data_dir), environ=env), data_dir, listeners, process, log)
    deadline = time.monotonic() + START_SECONDS
    waiting = set(listeners.values())
    while waiting:
        if process.poll() is not None or time.monotonic() > deadline:
            node.stop()
            raise RuntimeError(f"node {name} did not start:\n{log.read_text(errors='replace')[-3000:]}")
        waiting = {address for address in waiting if not _accepts(address)}
        time.sleep(0.05)
    return node


def _accepts(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=0.5).close()
        return True
    except OSError:
        return False
