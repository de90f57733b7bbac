"""IMAP extensions clients ask for (issue 12), over real sockets: IDLE keepalives, SEARCHRES,
WITHIN, MULTIAPPEND. imaptest's groups for each run in test_imaptest.py."""
from __future__ import annotations

import time

import pytest

from .imap_client import RawImap, untagged


@pytest.fixture
def keepalive_1s(monkeypatch) -> None:
    """Requested before `server`: a keepalive every second instead of every two minutes."""
    monkeypatch.setenv("MSANTE_IMAP__IDLE_KEEPALIVE", "1")


def test_idle_sends_keepalives_and_still_pushes_news(keepalive_1s, server):
    idler, writer = RawImap(server), RawImap(server)
    for client in (idler, writer):
        client.login_token(server)
    idler.ok("SELECT INBOX")
    idler.send(b"i IDLE\r\n")
    assert idler.line().startswith(b"+ ")
    started = time.monotonic()
    assert idler.line() == b"* OK Still here\r\n"
    assert idler.line() == b"* OK Still here\r\n"
    assert 1.5 < time.monotonic() - started < 5
    writer.ok("APPEND INBOX \x00", b"Subject: after the keepalives\r\n\r\nbody\r\n")
    while b"EXISTS" not in (line := idler.line()):  # a keepalive may come first
        assert line == b"* OK Still here\r\n", line
    idler.send(b"DONE\r\n")
    while not (line := idler.line()).startswith(b"i "):
        assert line.startswith(b"* "), line
    assert line.startswith(b"i OK"), line
    idler.close()
    writer.close()
