"""msante instances as separate processes, each with its own domain, data dir and ports: the
operators of a small trust space on loopback, for relay tests that stop and kill them."""
from __future__ import annotations

import json
import os
import shutil
import signal
import smtplib
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tests.conftest import free_port

LISTENERS = ("smtp", "submission", "submissions", "imap", "imaps", "https", "hl7")


class Operator:
    def __init__(self, root: Path, name: str, domain: str, *, ca_from: "Operator | None" = None,
                 routes: dict[str, "Operator"] | None = None) -> None:
        self.name, self.domain = name, domain
        self.data_dir = root / name
        self.ports = {listener: free_port() for listener in LISTENERS}
        self.env = {**os.environ, "MSANTE_SERVER__DATA_DIR": str(self.data_dir),
                    "MSANTE_SERVER__DOMAINS": json.dumps([domain]),
                    "MSANTE_SERVER__PUBLIC_URL": f"https://localhost:{self.ports['https']}",
                    "MSANTE_RELAY__RETRY_BASE": "1", "MSANTE_RELAY__RETRY_MAX": "2",
                    "MSANTE_RELAY__DELAY_WARNING": "3"}
        self.env.update({f"MSANTE_LISTEN__{k.upper()}": f"127.0.0.1:{port}" for k, port in self.ports.items()})
        self.set_routes(routes or {})
        self.process: subprocess.Popen | None = None
        if ca_from is not None:  # one dev CA for the trust space: init keeps a CA it finds
            shutil.copytree(ca_from.data_dir / "pki", self.data_dir / "pki")
        self.cli("init", "--demo")

    def set_routes(self, routes: dict[str, "Operator | int"]) -> None:
        """Where each domain's mail goes: another operator's relay listener, or a port."""
        self.env["MSANTE_RELAY__ROUTES"] = json.dumps(
            {domain: f"127.0.0.1:{op if isinstance(op, int) else op.ports['smtp']}" for domain, op in routes.items()})

    def cli(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "msante", *args], env=self.env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, f"{self.name}: msante {' '.join(args)}: {done.stderr}"
        return done.stdout

    def start(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "msante", "serve"], env=self.env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"{self.name} exited with {self.process.returncode}"
            try:
                socket.create_connection(("127.0.0.1", self.ports["smtp"]), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"{self.name} did not start")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            assert self.process.wait(60) == 0
        self.process = None

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self.process = None

    @contextmanager
    def submission(self, sender: str, rpps: str) -> Iterator[smtplib.SMTP]:
        """A session logged in over STARTTLS + XOAUTH2, as a mail client of this operator's."""
        token = self.cli("token", "issue", "--rpps", rpps).strip()
        context = ssl.create_default_context(cafile=str(self.data_dir / "pki" / "ca.crt"))
        with smtplib.SMTP("localhost", self.ports["submission"], timeout=15) as client:
            client.starttls(context=context)
            client.ehlo()
            client.auth("XOAUTH2", lambda challenge=None: f"user={sender}\x01auth=Bearer {token}\x01\x01"
                        if challenge is None else "")
            yield client

    def send(self, sender: str, rpps: str, recipients: list[str], subject: str, *,
             mail_options: tuple = (), rcpt_options: tuple = ()) -> None:
        with self.submission(sender, rpps) as client:
            message = (f"From: {sender}\r\nTo: {', '.join(recipients)}\r\nSubject: {subject}\r\n"
                       f"Message-ID: <{subject.replace(' ', '-')}@{self.domain}>\r\n\r\nBonjour.\r\n").encode()
            client.sendmail(sender, recipients, message, mail_options=list(mail_options),
                             rcpt_options=list(rcpt_options))

    def query(self, sql: str, *params) -> list[tuple]:
        with sqlite3.connect(self.data_dir / "msante.db", timeout=30) as db:
            return db.execute(sql, params).fetchall()

    def inbox(self, address: str) -> list[bytes]:
        return [row[0] for row in self.query(
            "SELECT b.data FROM folder_messages fm JOIN folders f ON f.id = fm.folder_id "
            "JOIN mailboxes m ON m.id = f.mailbox_id JOIN bodies b ON b.id = fm.body_id "
            "WHERE m.address = ? AND f.name = 'INBOX' ORDER BY fm.uid", address)]

    def deliveries(self, recipient: str) -> list[tuple[str, str]]:
        return self.query("SELECT status, last_error FROM deliveries WHERE recipient = ? ORDER BY id", recipient)


def wait_for(condition, timeout: float = 30.0, what: str = "condition"):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
