"""Crash consistency of the hospital feed: `msante serve` in a child process, a hospital
sending ED visits without pause, SIGKILL at random moments (between ACKs, between an ACK and
its dispatch, in the middle of a dispatch), several times over. After a last start that lets
the dispatcher finish, every message that got AA must be stored once and notified exactly
once (one notice, one mail in the GP's INBOX, one item in the care circle's timeline, whose
seqs keep no hole); a message sent without an answer may be stored or not, but never twice.
"""
from __future__ import annotations

import os
import random
import signal
import sqlite3
import ssl
import threading
import time

import pytest

from hospital.client import Hl7Client, client_context
from tests.conftest import free_port
from tests.test_smtp_crash import REPO, Server, run_cli

SAMPLE = (REPO / "hospital" / "samples" / "adt_a04_ed_visit.hl7").read_text()
ROUNDS = 5
KILL_DELAY = (0.05, 1.0)  # seconds after the round's first AA


class Hospital(threading.Thread):
    def __init__(self, round_no: int, port: int, context: ssl.SSLContext, acked: set, unanswered: set) -> None:
        super().__init__(name=f"hospital-{round_no}", daemon=True)
        self.round_no, self.port, self.context = round_no, port, context
        self.acked, self.unanswered = acked, unanswered
        self.stop = threading.Event()
        self.first_ack = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            seq = 0
            while not self.stop.is_set():
                try:
                    client = Hl7Client("127.0.0.1", self.port, self.context, server_hostname="localhost", timeout=10)
                except OSError:
                    time.sleep(0.02)
                    continue
                try:
                    while not self.stop.is_set():
                        seq += 1
                        control_id = f"CRASH-{self.round_no}-{seq}"
                        self.unanswered.add(control_id)
                        ack = client.send(SAMPLE.replace("|CHSP-A04-0001|", f"|{control_id}|").encode())
                        assert b"MSA|AA|" + control_id.encode() in ack, ack
                        self.unanswered.discard(control_id)
                        self.acked.add(control_id)
                        self.first_ack.set()
                except (OSError, ConnectionError):
                    pass
                finally:
                    client.close()
        except BaseException as exc:
            self.error = exc


@pytest.mark.slow
def test_sigkill_between_ack_and_dispatch_loses_and_duplicates_nothing(tmp_path):
    rng = random.Random(int(os.environ.get("MSANTE_CRASH_SEED", "2575")))
    data_dir, work = tmp_path / "var", tmp_path / "cwd"
    work.mkdir()
    hl7_port, submission = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSANTE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    https = free_port()
    env |= {"MSANTE_LISTEN__HTTPS": f"127.0.0.1:{https}", "MSANTE_SERVER__PUBLIC_URL": f"https://localhost:{https}",
            "MSANTE_LISTEN__SUBMISSION": f"127.0.0.1:{submission}", "MSANTE_LISTEN__HL7": f"127.0.0.1:{hl7_port}"}
    for name in ("smtp", "submissions", "imap", "imaps"):
        env[f"MSANTE_LISTEN__{name.upper()}"] = f"127.0.0.1:{free_port()}"
    run_cli(env, work, "init", "--demo", "--data-dir", str(data_dir))
    cert = data_dir / "demo" / "hospital.crt"
    context = client_context(data_dir / "pki" / "ca.crt", cert, cert.with_suffix(".key"))
    acked: set[str] = set()
    unanswered: set[str] = set()
    kills = 0
    for round_no in range(1, ROUNDS + 1):
        server = Server(f"round{round_no}", env, data_dir, work, submission)
        hospital = None
        try:
            server.wait_ready()
            hospital = Hospital(round_no, hl7_port, context, acked, unanswered)
            hospital.start()
            assert hospital.first_ack.wait(30), f"round {round_no}: no AA\n{server.tail()}"
            time.sleep(rng.uniform(*KILL_DELAY))
        finally:
            server.kill()
            kills += 1
            if hospital is not None:
                hospital.stop.set()
                hospital.join(30)
        assert hospital.error is None, f"round {round_no}: {hospital.error!r}"
        assert server.child.returncode == -signal.SIGKILL

    db = data_dir / "msante.db"
    with sqlite3.connect(db) as conn:
        pending_after_crashes = conn.execute("SELECT count(*) FROM hospital_events WHERE status = 'pending'").fetchone()[0]
    server = Server("final", env, data_dir, work, submission)  # the dispatcher catches up
    try:
        server.wait_ready()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with sqlite3.connect(db) as conn:
                if not conn.execute("SELECT count(*) FROM hospital_events WHERE status = 'pending'").fetchone()[0]:
                    break
            time.sleep(0.2)
        server.child.send_signal(signal.SIGTERM)
        assert server.child.wait(30) == 0, server.tail()
    finally:
        server.kill()

    with sqlite3.connect(db) as conn:
        stored = [row[0] for row in conn.execute("SELECT control_id FROM hl7_messages")]
        per_event = conn.execute(
            "SELECT m.control_id, e.status, count(n.id), count(DISTINCT n.envelope_id) FROM hl7_messages m "
            "JOIN hospital_events e ON e.message_id = m.id LEFT JOIN hospital_notices n ON n.event_id = e.id "
            "GROUP BY m.control_id, e.status").fetchall()
        inbox = conn.execute(
            "SELECT count(*) FROM folder_messages fm JOIN folders f ON f.id = fm.folder_id "
            "JOIN mailboxes b ON b.id = f.mailbox_id WHERE b.address = 'jean.dupont@msante.test' "
            "AND f.name = 'INBOX'").fetchone()[0]
        # the demo circle of the sample's patient: each event in its timeline once, seqs without a hole
        in_timeline = conn.execute(
            "SELECT count(*), count(DISTINCT client_id) FROM circle_messages WHERE kind = 'event'").fetchone()
        seqs = [row[0] for row in conn.execute("SELECT seq FROM circle_messages WHERE circle_id = 1 ORDER BY seq")]
    assert in_timeline == (len(per_event), len(per_event)), (in_timeline, len(per_event))
    assert seqs == list(range(1, len(seqs) + 1))
    assert len(stored) == len(set(stored)), "a message stored twice"
    assert acked <= set(stored), f"ACKed but lost: {sorted(acked - set(stored))[:5]}"
    assert set(stored) <= acked | unanswered, "stored without having been sent"
    assert all(status == "dispatched" and notices == 1 and mails == 1 for _, status, notices, mails in per_event), \
        [row for row in per_event if row[1:] != ("dispatched", 1, 1)][:5]
    assert inbox == len(stored), (inbox, len(stored))
    print(f"\nhospital crash test: {kills} SIGKILLs, {len(acked)} messages ACKed, "
          f"{len(set(stored) - acked)} stored without an ACK read, {pending_after_crashes} events still pending "
          f"after the last kill (dispatched on restart), {inbox} mails in the GP's INBOX, "
          f"{in_timeline[0]} items in the circle's timeline")
