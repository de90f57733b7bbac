"""`msante serve --workers N` (msante/workers.py): workers sharing the listeners through
SO_REUSEPORT, events crossing them through a private Redis, a worker that dies started again,
and configurations that cannot have several workers refused at start."""
from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

import config
from msante import cli
from tests.conftest import init_data_dir
from tests.imap_client import GP
from tests.nodes import cluster_environment, start_node
from tests.test_imap import deliver
from tests.test_nodes import exists, idle_on

pytestmark = pytest.mark.slow


def workers_of(supervisor: int) -> set[int]:
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == supervisor:
                children.add(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return children


def connections_by_process(pids: set[int], port: int, state: str = "01") -> dict[int, int]:
    """TCP sockets on local `port` in `state` (01 established, 0A listening), counted per
    process holding them."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
                inodes.add(fields[9])
    counts = {}
    for pid in pids:
        held = 0
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            held += target.startswith("socket:[") and target[8:-1] in inodes
        counts[pid] = held
    return counts


async def test_workers_share_the_listeners_and_hear_each_other(tmp_path, postgresql_url, redis_server):
    env = cluster_environment(tmp_path / "var", postgresql_url, redis_server.url)
    node = start_node("workers", env, "--workers", "2")
    clients = []
    try:
        deadline = time.monotonic() + 30
        while len(workers := workers_of(node.process.pid)) != 2:
            assert time.monotonic() < deadline, workers
            await asyncio.sleep(0.1)
        while "msante is running:" not in node.log.read_text():  # the first worker says it
            assert time.monotonic() < deadline, "no banner"
            await asyncio.sleep(0.1)
        assert node.log.read_text().count("msante is running:") == 1  # once
        imaps = int(node.listeners["imaps"].rsplit(":", 1)[1])
        while not all(connections_by_process(workers, imaps, "0A").values()):  # both workers listen
            assert time.monotonic() < deadline, "a worker does not listen"
            await asyncio.sleep(0.1)
        clients = [await idle_on(node) for _ in range(16)]
        spread = connections_by_process(workers, imaps)
        assert sum(spread.values()) == 16 and all(spread.values()), spread  # the kernel used both
        idles = [await client.idle_start(timeout=30) for client in clients]
        await asyncio.to_thread(deliver, node, [GP], "Pour les deux workers")
        for client in clients:  # sessions on the worker that did not take the mail heard it too
            assert exists(await client.wait_server_push(timeout=10))
            client.idle_done()
        await asyncio.gather(*(asyncio.wait_for(idle, 10) for idle in idles))
        while clients:
            await clients.pop().logout()

        killed = min(workers)
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while (now := workers_of(node.process.pid)) == workers or len(now) != 2:
            assert time.monotonic() < deadline, f"the killed worker was not replaced: {now}"
            await asyncio.sleep(0.1)
        assert killed not in now
        while not all(connections_by_process(now, imaps, "0A").values()):
            assert time.monotonic() < deadline, "the new worker does not listen"
            await asyncio.sleep(0.1)
        for _ in range(6):  # whichever worker the kernel picks answers
            client = await idle_on(node)
            await client.logout()
    finally:
        try:
            for client in clients:
                await asyncio.wait_for(client.logout(), 10)
        finally:
            node.stop()  # even when a client could not log out: no server left behind
    assert node.process.returncode == 0, node.log.read_text(errors="replace")[-3000:]
    assert not workers_of(node.process.pid)


@pytest.mark.parametrize("database", ["sqlite", "postgresql without redis"])
def test_several_workers_are_refused_without_postgresql_and_redis(tmp_path, monkeypatch, capsys, database):
    init_data_dir(tmp_path / "var", monkeypatch)
    if database != "sqlite":  # refused before any connection: nothing listens on port 1
        monkeypatch.setenv("MSANTE_DATABASE__URL", "postgresql+asyncpg://msante@127.0.0.1:1/unused")
    assert cli.main(["serve", "--workers", "2"]) == 2
    refusal = capsys.readouterr().err
    assert ("need the store on PostgreSQL" if database == "sqlite" else "need [bus] url (Redis)") in refusal


def test_workers_setting():
    assert config.load(environ={}).workers == 1
    assert config.load(environ={"MSANTE_SERVER__WORKERS": "0"}).workers == 0
    with pytest.raises(config.ConfigError, match="server.workers must be between 0"):
        config.load(environ={"MSANTE_SERVER__WORKERS": "65"})
