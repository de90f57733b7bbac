"""CONDSTORE (RFC 7162) as clients meet it (issue 12, Correctness 7): the first command that
turns it on tells the folder's HIGHESTMODSEQ, and ESEARCH's MODSEQ is that of the messages it
returns."""
from __future__ import annotations

import re

import pytest

from .imap_client import RawImap
from .test_imap import GP, deliver


def selected(server) -> RawImap:
    client = RawImap(server)
    client.login_token(server)
    client.ok("SELECT INBOX")
    return client


@pytest.mark.parametrize("enabling", [
    "FETCH 1 MODSEQ", "FETCH 1 FLAGS (CHANGEDSINCE 1)", "SEARCH MODSEQ 1",
    "STORE 1 (UNCHANGEDSINCE 100000) +FLAGS (\\Seen)", "ENABLE CONDSTORE"])
def test_the_first_condstore_enabling_command_tells_highestmodseq(server, enabling):
    deliver(server, [GP], "one")
    client = selected(server)
    status = client.ok("STATUS INBOX (HIGHESTMODSEQ)")[0]
    lines = client.ok(enabling)
    told = [ln for ln in lines if ln.startswith(b"* OK [HIGHESTMODSEQ ")]
    assert len(told) == 1, lines
    highest = int(re.search(rb"HIGHESTMODSEQ (\d+)", told[0])[1])
    assert b"HIGHESTMODSEQ %d" % highest in status
    assert not any(b"[HIGHESTMODSEQ" in ln for ln in client.ok("FETCH 1 MODSEQ"))  # once
    client.close()


def test_esearch_min_max_report_the_modseq_of_what_they_return(server):
    for n in range(4):
        deliver(server, [GP], f"m{n}")
    client = selected(server)
    client.ok("FETCH 1 MODSEQ")  # CONDSTORE on: STORE tells MODSEQs
    modseq = {}
    for n in (1, 3, 2, 4):  # stored out of order: message 2 gets the highest MODSEQ of 1:3
        line = client.ok(f"STORE {n} +FLAGS (\\Seen)")[-1]
        modseq[n] = int(re.search(rb"MODSEQ \((\d+)\)", line)[1])

    def esearch(returns: str, numbers: str = "1:3", since: int = 1) -> bytes:
        lines = client.ok(f'SEARCH RETURN ({returns}) {numbers} MODSEQ "/flags/\\\\seen" all {since}')
        return next(ln for ln in lines if ln.startswith(b"* ESEARCH")).split(b")", 1)[1].strip()

    assert esearch("MIN") == b"MIN 1 MODSEQ %d" % modseq[1]
    assert esearch("MAX") == b"MAX 3 MODSEQ %d" % modseq[3]
    assert esearch("") == b"ALL 1:3 MODSEQ %d" % modseq[2]
    assert esearch("MIN MAX", "2:3") == b"MIN 2 MAX 3 MODSEQ %d" % modseq[2]
    assert esearch("COUNT") == b"COUNT 3 MODSEQ %d" % modseq[2]
    assert esearch("ALL", "2:3", modseq[4]) == b""
    client.close()
