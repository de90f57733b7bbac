"""A real IMAP client against the imaps listener: mbsync (Debian's isync) keeps a local Maildir in
step with a mailbox, both ways, logged in with an application password.

Scenario: a nurse sends three messages to Dr Dupont by SMTP submission; mbsync pulls his mailbox
into an empty Maildir (the files must be the messages, and the server must not mark them \\Seen:
mbsync reads with BODY.PEEK); then the doctor files a message in a local Sent folder and reads one
message locally; mbsync pushes both (APPEND with \\Seen, UID STORE +FLAGS), which imaplib then
checks on the server; a last run must change nothing on either side (stable UIDs/UIDVALIDITY).

mbsync is installed on first use (`apt-get install -y isync`, root only); the test is skipped,
saying why, only when that is impossible.
"""
from __future__ import annotations

import email
import email.policy
import imaplib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_smtp import GP, NURSE, login, message

pytestmark = pytest.mark.slow

GP_RPPS = "10001045367"
NURSE_IDNAT = "810002000023"
SUBJECTS = ["Compte rendu 1", "Compte rendu 2", "Compte rendu 3"]
SEEN_LOCALLY = "Compte rendu 2"
SENT_MESSAGE_ID = "<mbsync-sent-1@msante.test>"
SENT = (b"From: " + GP.encode() + b"\r\nTo: " + NURSE.encode() + b"\r\nSubject: Reponse depuis mbsync\r\n"
        b"Message-ID: " + SENT_MESSAGE_ID.encode() + b"\r\nDate: Mon, 23 Nov 2026 10:00:00 +0400\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nBien recu, merci.\r\n")


# --- mbsync ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mbsync() -> tuple[str, tuple[int, ...]]:
    """The mbsync binary and its version, installed from Debian if missing."""
    if shutil.which("mbsync") is None:
        if os.geteuid() != 0:
            pytest.skip("mbsync (Debian package isync) is not installed, and installing it needs root")
        try:
            done = subprocess.run(["apt-get", "install", "-y", "-q", "isync"], capture_output=True, text=True,
                                  timeout=300, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
            why = f"exited {done.returncode}: {(done.stdout + done.stderr).strip()[-500:]}"
        except (OSError, subprocess.TimeoutExpired) as exc:
            why = str(exc)
        if shutil.which("mbsync") is None:
            pytest.skip(f"mbsync (Debian package isync) is not installed and `apt-get install -y isync` failed: {why}")
    path = shutil.which("mbsync")
    found = re.search(r"(\d+)\.(\d+)", subprocess.run([path, "--version"], capture_output=True, text=True).stdout)
    return path, tuple(map(int, found.groups())) if found else (0, 0)


def write_config(tmp_path: Path, server, password: str, version: tuple[int, ...]) -> Path:
    """One channel: the personal namespace of GP's box (shared boxes left out) <-> a Maildir."""
    host, port = server.listeners["imaps"].rsplit(":", 1)
    maildir = tmp_path / "Mail"
    maildir.mkdir()
    config = tmp_path / "mbsyncrc"
    # "localhost", not the IP: isync 1.4 checks the certificate's DNS names only.
    config.write_text(f"""\
IMAPAccount msante
Host localhost
Port {port}
User {GP}
Pass "{password}"
{'TLSType' if version >= (1, 5) else 'SSLType'} IMAPS
CertificateFile {server.ca_file}
AuthMechs PLAIN LOGIN
Timeout 30

IMAPStore msante
Account msante

MaildirStore local
Path {maildir}/
Inbox {maildir}/INBOX
SubFolders Verbatim

Channel msante
Far :msante:
Near :local:
Patterns * !Shared*
Create Both
Expunge None
Sync All
SyncState *
""")
    return config


def run_mbsync(binary: str, config: Path) -> str:
    done = subprocess.run([binary, "-V", "-c", str(config), "msante"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HOME": str(config.parent)})
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"mbsync exited {done.returncode}:\n{output}"
    return output


# --- the local Maildir -----------------------------------------------------------------------

def maildir_messages(folder: Path) -> dict[str, tuple[Path, email.message.EmailMessage]]:
    """Subject -> (file, parsed message) for the messages of a Maildir folder (new/ and cur/)."""
    found = {}
    for path in sorted([*folder.glob("new/*"), *folder.glob("cur/*")]):
        parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        found[str(parsed["Subject"])] = (path, parsed)
    return found


def mark_seen(path: Path) -> None:
    """What a mail client does when you read a message: into cur/, with the S flag (Maildir spec)."""
    base, _, flags = path.name.partition(":2,")
    path.rename(path.parent.parent / "cur" / f"{base}:2,{''.join(sorted(set(flags) | {'S'}))}")


# --- the server, seen through imaplib --------------------------------------------------------

def imap(server, password: str) -> imaplib.IMAP4_SSL:
    _, port = server.listeners["imaps"].rsplit(":", 1)
    client = imaplib.IMAP4_SSL("localhost", int(port), ssl_context=server.client_tls(), timeout=15)
    client.login(GP, password)
    return client


def fetch_all(client: imaplib.IMAP4_SSL, folder: str) -> list[tuple[set[str], bytes]]:
    """(flags, full message) of every message in `folder`, opened read-only."""
    status, data = client.select(f'"{folder}"', readonly=True)
    assert status == "OK", (folder, data)
    if int(data[0]) == 0:
        return []
    status, data = client.fetch("1:*", "(FLAGS BODY.PEEK[])")
    assert status == "OK", data
    found = []
    for i, item in enumerate(data):
        if isinstance(item, tuple):  # (b'1 (FLAGS (...) BODY[] {n}', message); FLAGS may follow the literal
            after = data[i + 1] if i + 1 < len(data) and isinstance(data[i + 1], bytes) else b""
            flags = re.search(rb"FLAGS \(([^)]*)\)", item[0] + after)
            assert flags, item[0] + after
            found.append((set(flags.group(1).decode().split()), item[1]))
    return found


def by_subject(messages: list[tuple[set[str], bytes]]) -> dict[str, set[str]]:
    return {str(email.message_from_bytes(raw, policy=email.policy.default)["Subject"]): flags
            for flags, raw in messages}


# --- the test --------------------------------------------------------------------------------

def test_mbsync_pulls_and_pushes_over_imaps(mbsync, server, tmp_path, capsys):
    binary, version = mbsync
    assert "imaps" in server.listeners, f"no imaps listener among {sorted(server.listeners)}"
    assert server.cli("mailbox", "app-password", "create", GP, "--rpps", GP_RPPS, "--label", "mbsync") == 0
    password = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]

    sent = {}
    client = login(server, NURSE, NURSE_IDNAT)
    for n, subject in enumerate(SUBJECTS, 1):
        body = f"Bonjour,\nresultat numero {n}.\n"
        client.sendmail(NURSE, [GP], message(NURSE, [GP], subject, body))
        sent[subject] = body
    client.quit()

    # 1. pull: an empty Maildir receives the three messages, the server keeps them unseen
    config = write_config(tmp_path, server, password, version)
    maildir = config.parent / "Mail"
    run_mbsync(binary, config)
    local = maildir_messages(maildir / "INBOX")
    assert sorted(local) == SUBJECTS
    for subject, (path, parsed) in local.items():
        assert parsed["From"] == NURSE and parsed["To"] == GP
        assert parsed.get_content().replace("\r\n", "\n") == sent[subject]
        assert "S" not in path.name.partition(":2,")[2]
    assert not list((maildir / "INBOX" / "tmp").iterdir())
    remote = imap(server, password)
    try:
        assert by_subject(fetch_all(remote, "INBOX")) == {s: set() for s in SUBJECTS}, "BODY.PEEK set \\Seen"
    finally:
        remote.logout()

    # 2. push: a message filed locally in Sent (already read), and one INBOX message read locally
    for sub in ("cur", "new", "tmp"):
        (maildir / "Sent" / sub).mkdir(parents=True, exist_ok=True)
    (maildir / "Sent" / "cur" / "1795000000.mbsynctest.local:2,S").write_bytes(SENT)
    mark_seen(local[SEEN_LOCALLY][0])
    run_mbsync(binary, config)

    remote = imap(server, password)
    try:
        assert by_subject(fetch_all(remote, "INBOX")) == {s: {"\\Seen"} if s == SEEN_LOCALLY else set()
                                                          for s in SUBJECTS}
        [(flags, raw)] = fetch_all(remote, "Sent")
        stored = email.message_from_bytes(raw, policy=email.policy.default)
        assert stored["Message-ID"] == SENT_MESSAGE_ID and stored["Subject"] == "Reponse depuis mbsync"
        assert stored.get_content().strip() == "Bien recu, merci."
        assert "\\Seen" in flags
    finally:
        remote.logout()

    # 3. nothing left to do: a new run copies nothing either way (UIDs and UIDVALIDITY held)
    run_mbsync(binary, config)
    assert sorted(maildir_messages(maildir / "INBOX")) == SUBJECTS
    assert list(maildir_messages(maildir / "Sent")) == ["Reponse depuis mbsync"]
    remote = imap(server, password)
    try:
        assert len(fetch_all(remote, "INBOX")) == 3 and len(fetch_all(remote, "Sent")) == 1
    finally:
        remote.logout()
