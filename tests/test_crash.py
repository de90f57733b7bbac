"""A node with two workers killed under load: SMTP submissions from several clients while one
worker is SIGKILLed, then the whole node (supervisor and workers). Restarted, the store holds
every message acknowledged with 250 exactly once, and nothing twice: an acknowledgement is
given only after the commit, and a message not acknowledged may or may not be there (the
client retries it, as RFC 5321 section 4.5.4.1 has it), but never in two copies."""
from __future__ import annotations

import os
import re
import signal
import smtplib
import ssl
import threading
import time
from collections import Counter

import pytest

from tests.imap_client import GP
from tests.nodes import cluster_environment, start_node
from tests.test_imap import imaplib_client
from tests.test_smtp import login, message
from tests.test_workers import workers_of

pytestmark = pytest.mark.slow
CLIENTS = 4
MESSAGE_ID = re.compile(rb"Message-ID:\s*(<[^>]+>)", re.IGNORECASE)


def submit(node, acknowledged: list[bytes], refused: list[bytes], stop: threading.Event) -> None:  # noqa: ANN001
    """Submit messages one after another until `stop`, reconnecting after a failure; each
    message's Message-ID goes to `acknowledged` (250 received) or `refused` (anything else)."""
    client = None
    while not stop.is_set():
        raw = message(GP, [GP], "Sous charge")
        msgid = MESSAGE_ID.search(raw).group(1)
        try:
            client = client or login(node)
            client.sendmail(GP, [GP], raw)
            acknowledged.append(msgid)
        except (smtplib.SMTPException, OSError, ssl.SSLError):
            refused.append(msgid)
            client = None
            time.sleep(0.05)


def test_acknowledged_mail_survives_a_worker_then_the_node_killed(tmp_path, postgresql_url, redis_server):
    env = cluster_environment(tmp_path / "var", postgresql_url, redis_server.url)
    node = start_node("crash", env, "--workers", "2")
    acknowledged: list[bytes] = []
    refused: list[bytes] = []
    stop = threading.Event()
    threads = [threading.Thread(target=submit, args=(node, acknowledged, refused, stop)) for _ in range(CLIENTS)]
    try:
        deadline = time.monotonic() + 30
        while len(workers := workers_of(node.process.pid)) != 2:
            assert time.monotonic() < deadline, workers
            time.sleep(0.1)
        for thread in threads:
            thread.start()
        time.sleep(3)
        os.kill(min(workers), signal.SIGKILL)
        time.sleep(3)
        before_node = len(acknowledged)
        for pid in workers_of(node.process.pid) | {node.process.pid}:  # the whole node, at once
            os.kill(pid, signal.SIGKILL)
        node.process.wait()
        time.sleep(1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        node.stop()
    assert before_node > 0 and refused, (before_node, len(refused))  # load, and both kills were felt

    again = start_node("again", env, "--workers", "2")
    try:
        client = imaplib_client(again)
        client.select("INBOX", readonly=True)
        _, data = client.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        client.logout()
    finally:
        again.stop()
    stored = Counter(MESSAGE_ID.search(part[1]).group(1) for part in data if isinstance(part, tuple))
    lost = [m for m in acknowledged if stored[m] != 1]
    duplicated = [m for m, n in stored.items() if n > 1]
    print(f"\nacknowledged {len(acknowledged)}, not acknowledged {len(refused)}, stored {sum(stored.values())} "
          f"({len(stored)} distinct), acknowledged and stored once {len(acknowledged) - len(lost)}, "
          f"not acknowledged yet stored {len(set(refused) & set(stored))}, duplicated {len(duplicated)}")
    assert not lost and not duplicated, (lost, duplicated)
    assert set(stored) <= set(acknowledged) | set(refused)
