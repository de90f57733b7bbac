"""Each session's view of a selected folder under concurrency (issue 12, Correctness 1-3): a
session that writes must still be told of what others did before and after its write, once,
and of nothing it did itself; \\Recent and new keywords are told as RFC 3501 asks."""
from __future__ import annotations

import re

import pytest

from .imap_client import RawImap, untagged
from .test_imap import deliver, GP


def session(server, select: str = "SELECT INBOX") -> RawImap:
    client = RawImap(server)
    client.login_token(server)
    client.ok(select)
    return client


def flags_of(lines: list[bytes], seq: int) -> bytes | None:
    found = [ln for ln in untagged(lines, b"FETCH") if ln.startswith(b"* %d FETCH" % seq)]
    return re.search(rb"FLAGS \(([^)]*)\)", found[-1])[1] if found else None


@pytest.mark.parametrize("own_write", [
    "STORE 1 +FLAGS (\\Flagged)", "UID STORE 1 +FLAGS.SILENT (\\Flagged)", "FETCH 1 BODY[TEXT]"])
def test_own_write_does_not_hide_the_others_changes(server, own_write):
    """Item 1: another session expunges message 3, flags message 2 and a message arrives; then
    this session writes (STORE, UID STORE, a FETCH that sets \\Seen). Its own write moves the
    folder's MODSEQ past the others' changes: they must still be told, once."""
    for n in range(3):
        deliver(server, [GP], f"message {n}")
    a, b = session(server), session(server)
    b.ok("STORE 3 +FLAGS.SILENT (\\Deleted)")
    b.ok("EXPUNGE")
    b.ok("STORE 2 +FLAGS.SILENT (\\Answered)")
    deliver(server, [GP], "new")
    lines = a.ok(own_write) + a.ok("NOOP")  # after FETCH or STORE, the EXPUNGE may wait for NOOP
    assert b"* 3 EXPUNGE\r\n" in lines, lines
    assert untagged(lines, b"EXISTS"), lines
    assert b"\\Answered" in (flags_of(lines, 2) or b""), lines
    again = a.ok("NOOP")
    assert not untagged(again, b"FETCH") and not untagged(again, b"EXPUNGE"), again  # told once
    uids = untagged(a.ok("FETCH 1:* (UID FLAGS)"), b"FETCH")
    assert [re.search(rb"UID (\d+)", ln)[1] for ln in uids] == [b"1", b"2", b"4"], uids
    a.close()
    b.close()


def test_own_store_is_not_told_again_but_a_later_change_is(server):
    deliver(server, [GP], "one")
    a, b = session(server), session(server)
    lines = a.ok("STORE 1 +FLAGS (\\Flagged)")
    assert len(untagged(lines, b"FETCH")) == 1
    assert untagged(a.ok("NOOP"), b"FETCH") == []  # our own change, already told in the STORE reply
    b.ok("STORE 1 -FLAGS.SILENT (\\Flagged)")
    assert b"\\Flagged" not in flags_of(a.ok("NOOP"), 1)
    a.close()
    b.close()


def test_flag_changes_by_others_during_a_silent_store_are_told(server):
    deliver(server, [GP], "one")
    deliver(server, [GP], "two")
    a, b = session(server), session(server)
    b.ok("STORE 2 +FLAGS.SILENT (\\Flagged)")
    lines = a.ok("STORE 1 +FLAGS.SILENT (\\Seen)")  # STORE may tell flag changes of others (no EXPUNGE)
    lines += a.ok("NOOP")
    assert b"\\Flagged" in (flags_of(lines, 2) or b""), lines
    assert flags_of(lines, 1) is None, lines  # silent: our own change is not told
    a.close()
    b.close()
