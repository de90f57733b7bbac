"""The durable jobs on several nodes (tests/nodes.py, one PostgreSQL, one Redis): every node
runs the outbound queue and the hospital dispatch, each row leased to one (store/lease.py).
Mail is counted where it arrives, at a real receiving operator; hospital events by their
notices. A node SIGKILLed while it holds rows leaves them to another once the lease ends."""
from __future__ import annotations

import asyncio
import json
import socket
import time
from types import SimpleNamespace

import asyncpg
import pytest

from hospital.client import Hl7Client, client_context
from tests.nodes import Node, cluster_environment, start_node
from tests.operators import Operator, wait_for
from tests.test_hospital_crash import SAMPLE
from tests.test_smtp import login as smtp_login
from tests.test_smtp import message
from tests.imap_client import GP

pytestmark = pytest.mark.slow
REMOTE = "karim.payet@autre-operateur.test"  # at the peer operator
PEER = "autre-operateur.test"
LEASE = 2  # [server] job_lease, seconds


def query(url: str, sql: str, *args: object) -> list:
    async def run() -> list:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()
    return asyncio.run(run())


def holder_pid(leased_by: str | None) -> int | None:
    """The process a `leased_by` names (host:pid:random)."""
    return int(leased_by.split(":")[1]) if leased_by else None


def stop_all(*nodes: Node) -> None:
    for node in nodes:
        node.stop()
        assert node.process.returncode == 0, node.log.read_text(errors="replace")[-3000:]


def test_outbound_queue_on_two_nodes_sends_each_message_once_and_takes_over_a_killed_nodes(
        tmp_path, postgresql_url, redis_server):
    """Mail submitted through both nodes, both running the queue, reaches the peer once. Then
    node C, whose route to the peer is a server that never answers (its client waits for the
    greeting, as with a slow peer), holds a message it is delivering: its lease is renewed, so
    B, started meanwhile, sends the mail queued after it but leaves that one alone; C is
    SIGKILLed, and B sends it once, after the lease ends."""
    env = cluster_environment(tmp_path / "var", postgresql_url, redis_server.url)
    peer = Operator(tmp_path, "peer", PEER, ca_from=SimpleNamespace(data_dir=tmp_path / "var"))
    tarpit = socket.create_server(("127.0.0.1", 0), backlog=64)  # accepts (the kernel does), never speaks
    env.update(MSANTE_RELAY__ROUTES=json.dumps({PEER: f"127.0.0.1:{peer.ports['smtp']}"}),
               MSANTE_RELAY__RETRY_BASE="1", MSANTE_RELAY__RETRY_MAX="2", MSANTE_SERVER__JOB_LEASE=str(LEASE))
    nodes: list[Node] = []

    def send(node: Node, subject: str) -> None:
        client = smtp_login(node)
        client.sendmail(GP, [REMOTE], message(GP, [REMOTE], subject))
        client.quit()

    def arrived(subject: str) -> int:
        return sum(subject.encode() in m for m in peer.inbox(REMOTE))

    try:
        nodes += [start_node("a", env), start_node("b", env)]
        a, b = nodes
        peer.set_routes({"msante.test": int(a.listeners["smtp"].rsplit(":", 1)[1])})
        peer.start()
        both = [f"Par les deux noeuds {i:02d}" for i in range(20)]
        for i, subject in enumerate(both):  # each submission wakes both queues (through Redis)
            send(nodes[i % 2], subject)
        for subject in both:
            wait_for(lambda s=subject: arrived(s), timeout=60, what=subject)
        stop_all(b, a)
        nodes.clear()

        c = start_node("c", env, MSANTE_RELAY__ROUTES=json.dumps({PEER: "127.0.0.1:%d" % tarpit.getsockname()[1]}))
        nodes.append(c)
        held, after = "Tenu par C", [f"Apres C {i}" for i in range(2)]
        send(c, held)

        def leased() -> list:
            return query(postgresql_url, "SELECT leased_by FROM deliveries WHERE status = 'queued'")
        wait_for(lambda: [holder_pid(r["leased_by"]) for r in leased()] == [c.process.pid], timeout=30,
                 what="C leases the delivery")
        for subject in after:  # queued while C's queue waits on the peer: nobody holds them
            send(c, subject)
        b = start_node("b2", env)
        nodes.append(b)
        for subject in after:  # B sends what C does not hold
            wait_for(lambda s=subject: arrived(s), timeout=30, what=subject)
        time.sleep(LEASE * 1.5)  # C renews its lease: B leaves its delivery alone
        assert arrived(held) == 0
        assert [holder_pid(r["leased_by"]) for r in leased()] == [c.process.pid]
        c.process.kill()  # C dies with the delivery leased
        c.process.wait()
        killed = time.monotonic()
        wait_for(lambda: arrived(held), timeout=30, what=held)
        assert time.monotonic() - killed <= LEASE + 10
        time.sleep(3)  # retries would have come by now (retry_max 2 s)
        assert [arrived(s) for s in [*both, held, *after]] == [1] * (len(both) + 3)
        assert query(postgresql_url, "SELECT count(*) AS n FROM deliveries WHERE leased_by IS NOT NULL")[0]["n"] == 0
        nodes.remove(c)
        stop_all(b)
        nodes.clear()
    finally:
        for node in nodes:
            node.stop()
        peer.stop()
        tarpit.close()


def test_hospital_dispatch_of_a_killed_node_is_taken_over_once(tmp_path, postgresql_url, redis_server):
    """Node A dispatches hospital events; one of them it holds in the middle of its transaction
    (the test locks the notices table) when it is SIGKILLed. Node B, running meanwhile, does not
    take it while A lives, then dispatches it once after A's lease ends: one notice per event."""
    env = cluster_environment(tmp_path / "var", postgresql_url, redis_server.url)
    env["MSANTE_SERVER__JOB_LEASE"] = str(LEASE)
    data_dir = tmp_path / "var"
    cert = data_dir / "demo" / "hospital.crt"
    context = client_context(data_dir / "pki" / "ca.crt", cert, cert.with_suffix(".key"))
    nodes: list[Node] = []

    def send(node: Node, control_id: str) -> None:
        host, port = node.listeners["hl7"].rsplit(":", 1)
        client = Hl7Client(host, int(port), context, server_hostname="localhost", timeout=10)
        try:
            ack = client.send(SAMPLE.replace("|CHSP-A04-0001|", f"|{control_id}|").encode())
            assert b"MSA|AA|" + control_id.encode() in ack, ack
        finally:
            client.close()

    def events() -> dict[str, tuple]:
        return {r["control_id"]: (r["status"], r["leased_by"], r["notices"]) for r in query(
            postgresql_url,
            "SELECT m.control_id, e.status, e.leased_by, count(n.id) AS notices FROM hl7_messages m "
            "JOIN hospital_events e ON e.message_id = m.id LEFT JOIN hospital_notices n ON n.event_id = e.id "
            "GROUP BY m.control_id, e.status, e.leased_by")}

    async def held_by_a_then_killed(a: Node) -> None:
        lock = await asyncpg.connect(postgresql_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            async with lock.transaction():  # A's dispatch will wait on its INSERT of the notice
                await lock.execute("LOCK TABLE hospital_notices IN SHARE MODE")
                await asyncio.to_thread(send, a, "HELD")
                await asyncio.to_thread(
                    wait_for, lambda: holder_pid(events().get("HELD", (0, None))[1]) == a.process.pid,
                    timeout=30, what="A leases the event")
                nodes.append(await asyncio.to_thread(start_node, "b", env))
                await asyncio.sleep(LEASE * 1.5)
                status, leased_by, notices = (await asyncio.to_thread(events))["HELD"]
                assert (status, holder_pid(leased_by), notices) == ("pending", a.process.pid, 0)
                a.process.kill()  # dies in the middle of the event's transaction
                a.process.wait()
        finally:
            await lock.close()

    try:
        a = start_node("a", env)
        nodes.append(a)
        for i in range(2):
            send(a, f"BEFORE-{i}")
        wait_for(lambda: [v[0] for v in events().values()] == ["dispatched"] * 2, timeout=30, what="A dispatches")
        asyncio.run(held_by_a_then_killed(a))
        nodes.remove(a)
        wait_for(lambda: events()["HELD"][0] == "dispatched", timeout=LEASE + 30, what="B takes the event over")
        b = nodes[0]
        send(b, "AFTER")
        wait_for(lambda: events().get("AFTER", ("",))[0] == "dispatched", timeout=30, what="B dispatches")
        assert events() == {k: ("dispatched", None, 1) for k in ("BEFORE-0", "BEFORE-1", "HELD", "AFTER")}
        stop_all(b)
        nodes.clear()
    finally:
        for node in nodes:
            node.stop()
