"""Crash consistency of submission: `msante serve` in a child process, a client sending without
pause, SIGKILL at random moments, several times over. After a last restart (migrations and any
recovery run) the store must hold every message that got `250` after DATA in each recipient's
INBOX exactly once, and nothing the client was not told was stored, except the messages of the
classic duplicate window (RFC 1047: the whole message sent, the server gone before its reply
arrived), which may or may not be there but never twice.

The random moments come from a seeded generator (MSANTE_CRASH_SEED overrides the seed); what
the server is doing when the kill lands still depends on timing, so the summary line printed at
the end says what each run actually exercised.
"""
from __future__ import annotations

import os
import random
import re
import signal
import smtplib
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[1]
GP_RPPS = "10001045367"
GP = "jean.dupont@msante.test"
RECIPIENTS = ("sophie.hoarau@msante.test", "marie.grondin@msante.test")
ROUNDS = 6
KILL_DELAY = (0.3, 1.5)  # seconds after the round's first 250
MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(<[^>\r\n]+>)", re.IGNORECASE | re.MULTILINE)

# What the client knows about each message it tried.
ACKED = "acked"          # DATA answered 250: must be stored, once per recipient
AMBIGUOUS = "ambiguous"  # the whole message and its final dot sent, no reply: stored once or not at all
ABORTED = "aborted"      # connection lost while the message was being sent: must not be stored
UNSENT = "unsent"        # lost before DATA's 354: must not be stored
REFUSED = "refused"      # DATA answered, not with 250: must not be stored


@dataclass
class Ledger:
    """Shared by the client threads of every round; one writer at a time (rounds do not overlap)."""

    states: dict[str, str] = field(default_factory=dict)
    replies: dict[str, str] = field(default_factory=dict)  # REFUSED: the reply the client got
    connects: int = 0
    connect_failures: int = 0

    def of(self, state: str) -> set[str]:
        return {mid for mid, s in self.states.items() if s == state}


def xoauth2(user: str, bearer: str):
    return lambda challenge=None: f"user={user}\x01auth=Bearer {bearer}\x01\x01" if challenge is None else ""


def compose(message_id: str, subject: str, rng: random.Random) -> bytes:
    """A message in wire form, CRLF line ends, no line starting with a dot (nothing to quote).
    Sizes vary so kills land before, inside and after the DATA transfer."""
    lines = [f"From: {GP}", f"To: {', '.join(RECIPIENTS)}", f"Subject: {subject}", f"Message-ID: {message_id}",
             "MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8", "", "Bonjour,", ""]
    lines += ["Compte rendu " + "x" * 60] * rng.choice((1, 10, 100, 1000))
    return ("\r\n".join(lines) + "\r\n").encode()


class Client(threading.Thread):
    """Sends messages one after another on one connection, reconnecting on any error, until
    `stop`; records in the ledger what the server said about each."""

    def __init__(self, round_no: int, port: int, context: ssl.SSLContext, token: str, ledger: Ledger,
                 seed: int) -> None:
        super().__init__(name=f"crash-client-{round_no}", daemon=True)
        self.round_no, self.port, self.context, self.token, self.ledger = round_no, port, context, token, ledger
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.first_ack = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def _connect(self) -> smtplib.SMTP | None:
        client = None
        try:
            client = smtplib.SMTP("localhost", self.port, timeout=15)
            client.ehlo("crash.client.test")
            client.starttls(context=self.context)
            client.ehlo("crash.client.test")
            code, text = client.auth("XOAUTH2", xoauth2(GP, self.token))
            assert code == 235, (code, text)
            self.ledger.connects += 1
            return client
        except (OSError, smtplib.SMTPException):
            self.ledger.connect_failures += 1
            if client is not None:
                client.close()
            return None

    def _loop(self) -> None:
        client: smtplib.SMTP | None = None
        seq = 0
        while not self.stop.is_set():
            if client is None:
                client = self._connect()
                if client is None:
                    time.sleep(0.02)
                    continue
            seq += 1
            tag = f"r{self.round_no}.n{seq}.{uuid.uuid4().hex[:12]}"
            message_id = f"<crash.{tag}@msante.test>"
            payload = compose(message_id, f"Crash test {tag}", self.rng)
            self.ledger.states[message_id] = UNSENT
            try:
                code, text = client.mail(GP)
                assert code == 250, (code, text)
                for rcpt in RECIPIENTS:
                    code, text = client.rcpt(rcpt)
                    assert code == 250, (code, text)
                client.putcmd("data")
                code, text = client.getreply()
                assert code == 354, (code, text)
                self.ledger.states[message_id] = ABORTED
                client.send(payload + b".\r\n")
                self.ledger.states[message_id] = AMBIGUOUS
                code, text = client.getreply()
            except (OSError, smtplib.SMTPException):
                client.close()
                client = None
                continue
            if code == 250:
                self.ledger.states[message_id] = ACKED
                self.first_ack.set()
            else:
                self.ledger.states[message_id] = REFUSED
                self.ledger.replies[message_id] = f"{code} {text.decode(errors='replace')}"
        if client is not None:
            client.close()


class Server:
    """`python -m msante serve` as a child process, its output in a log file of its own."""

    def __init__(self, name: str, env: dict[str, str], data_dir: Path, log_dir: Path, port: int) -> None:
        self.log = log_dir / f"serve-{name}.log"
        self.port = port
        with self.log.open("wb") as out:
            self.child = subprocess.Popen([sys.executable, "-m", "msante", "serve", "--data-dir", str(data_dir)],
                                          env=env, cwd=log_dir, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def wait_ready(self, timeout: float = 45) -> None:
        """Until the submission port greets (migrations and startup done)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.child.poll() is None, f"serve exited with {self.child.returncode}:\n{self.tail()}"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                    if sock.recv(512).startswith(b"220 "):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"submission port never greeted:\n{self.tail()}")

    def kill(self) -> None:
        if self.child.poll() is None:
            self.child.kill()
        self.child.wait(30)


def run_cli(env: dict[str, str], cwd: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "msante", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
def test_sigkill_during_submission_loses_and_duplicates_nothing(tmp_path, capsys):
    seed = int(os.environ.get("MSANTE_CRASH_SEED", "1047"))
    rng = random.Random(seed)
    data_dir = tmp_path / "var"
    work = tmp_path / "cwd"  # the children's working directory: a stray ./var lands here, not in the tree
    work.mkdir()
    submission = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSANTE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    https = free_port()
    env |= {"MSANTE_LISTEN__HTTPS": f"127.0.0.1:{https}", "MSANTE_SERVER__PUBLIC_URL": f"https://localhost:{https}",
            "MSANTE_LISTEN__SUBMISSION": f"127.0.0.1:{submission}"}
    for name in ("smtp", "submissions", "imap", "imaps", "hl7"):
        env[f"MSANTE_LISTEN__{name.upper()}"] = f"127.0.0.1:{free_port()}"

    run_cli(env, work, "init", "--demo", "--data-dir", str(data_dir))
    db_path = data_dir / "msante.db"
    assert db_path.exists(), "init did not write the data dir it was given"
    token = run_cli(env, work, "token", "issue", "--rpps", GP_RPPS, "--ttl", "3600",
                    "--data-dir", str(data_dir)).strip().splitlines()[-1]
    with sqlite3.connect(db_path) as db:
        baseline = {row[0] for row in db.execute("SELECT id FROM bodies")}
    context = ssl.create_default_context(cafile=str(data_dir / "pki" / "ca.crt"))

    ledger = Ledger()
    started = time.monotonic()
    for round_no in range(1, ROUNDS + 1):
        server = Server(f"round{round_no}", env, data_dir, work, submission)
        client = None
        try:
            server.wait_ready()
            client = Client(round_no, submission, context, token, ledger, rng.randrange(2**32))
            client.start()
            assert client.first_ack.wait(30), f"round {round_no}: no 250 at all\n{server.tail()}"
            time.sleep(rng.uniform(*KILL_DELAY))
        finally:
            server.kill()
            if client is not None:
                client.stop.set()
                client.join(30)
        assert not client.is_alive(), f"round {round_no}: the client did not stop"
        assert client.error is None, f"round {round_no}: client failed: {client.error!r}"
        assert server.child.returncode == -signal.SIGKILL

    # Once more, so migrations and any recovery run; one message proves the store still takes
    # mail after the crashes (and allocates UIDs past the ones already there); then SIGTERM.
    server = Server("final", env, data_dir, work, submission)
    try:
        server.wait_ready()
        after = Client(0, submission, context, token, Ledger(), rng.randrange(2**32))
        probe = after._connect()
        assert probe is not None, server.tail()
        message_id = f"<crash.after.{uuid.uuid4().hex[:12]}@msante.test>"
        refused = probe.sendmail(GP, list(RECIPIENTS), compose(message_id, "After the crashes", rng))
        assert refused == {}
        probe.quit()
        ledger.states[message_id] = ACKED
        server.child.send_signal(signal.SIGTERM)
        assert server.child.wait(30) == 0, server.tail()
    finally:
        server.kill()

    acked, ambiguous = ledger.of(ACKED), ledger.of(AMBIGUOUS)
    never_stored = ledger.of(ABORTED) | ledger.of(UNSENT) | ledger.of(REFUSED)
    stored_ambiguous, unaudited = check_store(db_path, baseline, acked, ambiguous, never_stored)
    elapsed = time.monotonic() - started
    with capsys.disabled():
        print(f"\ncrash test: seed={seed} rounds={ROUNDS} acknowledged={len(acked)} ambiguous={len(ambiguous)} "
              f"ambiguous-stored={stored_ambiguous} aborted-in-data={len(ledger.of(ABORTED))} "
              f"unsent={len(ledger.of(UNSENT))} refused={len(ledger.of(REFUSED))} "
              f"sessions={ledger.connects} stored-unaudited={unaudited} {elapsed:.1f}s")
    assert not ledger.of(REFUSED), f"DATA refused while the server was up: {sorted(ledger.replies.values())[:5]}"
    assert unaudited == 0, "a stored message has no audit row (they commit in one transaction)"


def check_store(db_path: Path, baseline: set[int], acked: set[str], ambiguous: set[str],
                never_stored: set[str]) -> tuple[int, int]:
    """Every invariant, read straight from SQLite. Returns how many ambiguous messages were stored,
    and how many stored messages have no `*.accept` audit row (the server writes that row in the
    message's own transaction, so the caller expects none)."""
    db = sqlite3.connect(db_path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []

        # The messages stored since init, by the Message-ID inside the stored bytes.
        bodies: dict[int, str] = {}
        for body_id, data in db.execute("SELECT id, data FROM bodies"):
            if body_id in baseline:
                continue
            found = MESSAGE_ID.search(data.split(b"\r\n\r\n", 1)[0])
            assert found, f"body {body_id} has no Message-ID: {data[:300]!r}"
            bodies[body_id] = found.group(1).decode()
        per_id = Counter(bodies.values())
        twice = {mid: n for mid, n in per_id.items() if n > 1}
        assert not twice, f"{len(twice)} message(s) stored more than once: {dict(list(twice.items())[:5])}"
        stored = set(per_id)
        strangers = stored - acked - ambiguous
        assert not strangers & never_stored, f"stored though the client never finished sending or was refused: " \
                                             f"{sorted(strangers & never_stored)[:10]}"
        assert not strangers, f"stored messages the client never sent: {sorted(strangers)[:10]}"
        lost = acked - stored
        assert not lost, f"{len(lost)} acknowledged message(s) missing from the store: {sorted(lost)[:10]}"

        # Where each one is: each recipient's INBOX, once, and nowhere else.
        places: dict[str, Counter] = defaultdict(Counter)
        for body_id, address, folder in db.execute(
                "SELECT fm.body_id, m.address, f.name FROM folder_messages fm JOIN folders f ON f.id = fm.folder_id "
                "JOIN mailboxes m ON m.id = f.mailbox_id"):
            if body_id in bodies:
                places[bodies[body_id]][(address, folder)] += 1
        expected = Counter({(rcpt, "INBOX"): 1 for rcpt in RECIPIENTS})
        misplaced = {mid: dict(places[mid]) for mid in stored if places[mid] != expected}
        assert not misplaced, f"messages not exactly once in each recipient's INBOX: {dict(list(misplaced.items())[:5])}"

        # One envelope per stored message, naming it, with one delivered row per recipient that
        # points at that recipient's INBOX entry of that body.
        envelopes = db.execute("SELECT id, body_id, message_id FROM envelopes").fetchall()
        ours = [(env_id, body_id, mid) for env_id, body_id, mid in envelopes if body_id in bodies]
        assert Counter(body_id for _, body_id, _ in ours) == Counter(bodies.keys()), "not one envelope per stored body"
        assert all(mid == bodies[body_id] for _, body_id, mid in ours), "envelope Message-ID differs from its body's"
        deliveries: dict[int, list] = defaultdict(list)
        for row in db.execute(
                "SELECT d.envelope_id, d.recipient, d.status, fm.body_id, m.address, f.name FROM deliveries d "
                "LEFT JOIN folder_messages fm ON fm.id = d.folder_message_id LEFT JOIN folders f ON f.id = fm.folder_id "
                "LEFT JOIN mailboxes m ON m.id = f.mailbox_id"):
            deliveries[row[0]].append(row[1:])
        for env_id, body_id, mid in ours:
            want = sorted((rcpt, "delivered", body_id, rcpt, "INBOX") for rcpt in RECIPIENTS)
            assert sorted(deliveries[env_id]) == want, f"{mid}: deliveries {deliveries[env_id]}"

        # No orphans anywhere (not only among this test's rows).
        unreferenced = db.execute(
            "SELECT id FROM bodies b WHERE NOT EXISTS (SELECT 1 FROM folder_messages fm WHERE fm.body_id = b.id) "
            "AND NOT EXISTS (SELECT 1 FROM envelopes e WHERE e.body_id = b.id)").fetchall()
        assert unreferenced == [], f"bodies nothing refers to: {unreferenced[:10]}"
        bare = db.execute("SELECT id FROM envelopes e WHERE NOT EXISTS "
                          "(SELECT 1 FROM deliveries d WHERE d.envelope_id = e.id)").fetchall()
        assert bare == [], f"envelopes without deliveries: {bare[:10]}"
        dangling = db.execute("SELECT d.id FROM deliveries d WHERE d.folder_message_id IS NOT NULL AND NOT EXISTS "
                              "(SELECT 1 FROM folder_messages fm WHERE fm.id = d.folder_message_id)").fetchall()
        assert dangling == [], f"deliveries pointing at no folder entry: {dangling[:10]}"

        # UIDs: unique per folder and below uidnext; MODSEQs not above highestmodseq.
        for folder_id, uidnext, highest in db.execute("SELECT id, uidnext, highestmodseq FROM folders").fetchall():
            uids = [uid for (uid,) in db.execute("SELECT uid FROM folder_messages WHERE folder_id = ?", (folder_id,))]
            assert len(uids) == len(set(uids)), f"folder {folder_id}: duplicate UIDs"
            assert all(0 < uid < uidnext for uid in uids), f"folder {folder_id}: UIDs {max(uids)} vs uidnext {uidnext}"
            top = db.execute("SELECT MAX(modseq) FROM folder_messages WHERE folder_id = ?", (folder_id,)).fetchone()[0]
            assert top is None or top <= highest, f"folder {folder_id}: modseq {top} above highestmodseq {highest}"
        audited = "\n".join(detail for (detail,) in db.execute("SELECT detail FROM audit WHERE action LIKE '%.accept'"))
        return len(stored & ambiguous), sum(mid not in audited for mid in stored)
    finally:
        db.close()
