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


def test_new_messages_come_with_recent_and_examine_reports_recent_like_status(server):
    """Item 2: EXISTS for new mail comes with RECENT; EXAMINE claims no \\Recent (RFC 3501
    §6.3.2) but reports it as STATUS does."""
    a = session(server)
    deliver(server, [GP], "one")
    lines = a.ok("NOOP")
    assert lines.index(b"* 1 EXISTS\r\n") < lines.index(b"* 1 RECENT\r\n"), lines
    assert flags_of(a.ok("FETCH 1 FLAGS"), 1) == b"\\Recent"
    a.ok("UNSELECT")
    deliver(server, [GP], "two")
    deliver(server, [GP], "three")
    lines = a.ok("EXAMINE INBOX")
    assert b"* 2 RECENT\r\n" in lines, lines
    assert [flags_of(a.ok(f"FETCH {n} FLAGS"), n) for n in (1, 2, 3)] == [b"", b"\\Recent", b"\\Recent"]
    assert b"RECENT 2" in a.ok("STATUS INBOX (RECENT)")[0]
    b = session(server, "EXAMINE INBOX")
    deliver(server, [GP], "four")
    lines = b.ok("NOOP")
    assert b"* 4 EXISTS\r\n" in lines and b"* 3 RECENT\r\n" in lines, lines
    lines = a.ok("SELECT INBOX")  # the examining sessions took none: this one has them all
    assert b"* 3 RECENT\r\n" in lines, lines
    assert b"RECENT 0" in b.ok("STATUS INBOX (RECENT)")[0]
    a.close()
    b.close()


def test_recent_belongs_to_one_session_even_when_mail_arrives_meanwhile(server):
    """Every new message is \\Recent in exactly one SELECTed session."""
    sessions = [session(server) for _ in range(3)]
    for n in range(6):
        deliver(server, [GP], f"m{n}")
        sessions[n % 3].ok("NOOP")
    recent = 0
    for client in sessions:
        found = [ln for ln in client.ok("SEARCH RECENT") if ln.startswith(b"* SEARCH")]
        recent += len(found[0].split()) - 2
        client.close()
    assert recent == 6


def test_new_keywords_are_announced_before_a_fetch_shows_them(server):
    """Item 3: FLAGS and PERMANENTFLAGS tell a keyword before any FETCH shows it."""
    deliver(server, [GP], "one")
    a, b = session(server), session(server)
    b.ok("STORE 1 +FLAGS.SILENT ($Important)")
    lines = a.ok("NOOP")
    flags = [i for i, ln in enumerate(lines) if ln.startswith(b"* FLAGS ") and b"$Important" in ln]
    permanent = [i for i, ln in enumerate(lines) if b"[PERMANENTFLAGS" in ln and b"$Important" in ln]
    fetch = [i for i, ln in enumerate(lines) if b"FETCH" in ln and b"$Important" in ln]
    assert flags and permanent and fetch and flags[0] < fetch[0] and permanent[0] < fetch[0], lines
    lines = a.ok("STORE 1 +FLAGS (Urgent)")  # our own new keyword too
    assert lines[0].startswith(b"* FLAGS ") and b"Urgent" in lines[0], lines
    assert not any(ln.startswith(b"* FLAGS ") for ln in a.ok("STORE 1 -FLAGS (Urgent)") + a.ok("NOOP"))
    a.close()
    b.close()


def test_recent_count_is_told_again_when_recent_messages_are_expunged(server):
    """The number of \\Recent messages is told whenever it changes, an expunge included: a
    client keeps the last RECENT it was told (imaptest's stress checks their sum)."""
    a = session(server)
    deliver(server, [GP], "one")
    deliver(server, [GP], "two")
    assert b"* 2 RECENT\r\n" in a.ok("NOOP")
    b = session(server)
    b.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    b.ok("EXPUNGE")
    lines = a.ok("NOOP")
    assert lines == [b"* 1 EXPUNGE\r\n", b"* 1 RECENT\r\n"], lines
    deliver(server, [GP], "three")  # recent for b, who looks first: a's count does not change
    assert b"* 1 RECENT\r\n" in b.ok("NOOP")
    assert a.ok("NOOP") == [b"* 2 EXISTS\r\n"]
    a.close()
    b.close()


def test_a_keyword_stays_in_flags_after_its_last_message_is_expunged(server):
    """A keyword, once used in a folder, is one of its FLAGS for every session (as Dovecot keeps
    it), even one that never saw a message carrying it: imaptest's checkpoint compares them."""
    deliver(server, [GP], "one")
    deliver(server, [GP], "two")
    a, b = session(server), session(server)
    b.ok("STORE 2 +FLAGS.SILENT ($Gone \\Deleted)")
    b.ok("EXPUNGE")
    lines = a.ok("NOOP")
    assert any(ln.startswith(b"* FLAGS (") and b"$Gone" in ln for ln in lines), lines
    c = session(server, "EXAMINE INBOX")
    assert b"$Gone" in next(ln for ln in c.ok("NOOP") + c.ok("EXAMINE INBOX") if ln.startswith(b"* FLAGS"))
    for client in (a, b, c):
        client.close()


def test_a_select_after_others_changes_starts_from_them(server):
    """SELECT starts from the view the last SELECT of the folder left (mailserver/imap/folders.py
    FolderView), moved on by the change log: what others did since (flags, an expunge, a new
    message, a keyword) is all in the next SELECT's answer, and its sequence numbers."""
    for n in range(4):
        deliver(server, [GP], f"message {n}")
    first = session(server)
    first.ok("STORE 1:4 +FLAGS.SILENT (\\Seen)")
    first.close()
    other = session(server)
    other.ok("STORE 2 +FLAGS.SILENT ($Urgent)")
    other.ok("STORE 3 +FLAGS.SILENT (\\Deleted)")
    other.ok("STORE 1 -FLAGS.SILENT (\\Seen)")
    other.ok("EXPUNGE")
    deliver(server, [GP], "new")
    other.close()
    late = RawImap(server)
    late.login_token(server)
    lines = late.ok("SELECT INBOX")
    assert b"* 4 EXISTS\r\n" in lines and b"* OK [UNSEEN 1] first unseen message\r\n" in lines, lines
    assert b"$Urgent" in untagged(lines, b"FLAGS")[0], lines
    fetched = untagged(late.ok("FETCH 1:* (UID FLAGS)"), b"FETCH")
    assert [re.search(rb"UID (\d+) FLAGS \(([^)]*)\)", ln).groups() for ln in fetched] == [
        (b"1", b""), (b"2", b"$Urgent \\Seen"), (b"4", b"\\Seen"), (b"5", b"\\Recent")], fetched
    late.close()


def test_sessions_lent_one_view_are_each_told_what_the_others_changed(server):
    """SELECT lends a session the folder's kept view (no copy of 10,000 UIDs): another session's
    STORE, or a later SELECT moving the view on, must not change what the first was told behind
    its back; it hears of each change, as a session with its own copy did."""
    deliver(server, [GP], "one")
    a, b = session(server), session(server)  # both lent the same view
    b.ok("STORE 1 +FLAGS.SILENT (\\Flagged)")  # b's own change
    deliver(server, [GP], "two")
    c = session(server)  # moves the kept view on: the new message, the flag
    lines = a.ok("NOOP")
    assert b"\\Flagged" in (flags_of(lines, 1) or b""), lines
    assert b"* 2 EXISTS\r\n" in lines, lines
    lines = b.ok("NOOP")
    assert b"* 2 EXISTS\r\n" in lines and not untagged(lines, b"FETCH"), lines  # its own STORE: told already
    assert not untagged(c.ok("NOOP"), b"EXISTS")  # c started from both
    for client in (a, b, c):
        client.close()


async def test_a_selected_session_reads_the_change_log_when_its_folder_is_news():
    """selected.BoxNews: after a command, a session reads the store only if its box's channel
    announced something that may touch its folder, or events may have been lost, or the bus
    does not hear every process (a RedisBus without its subscription)."""
    from mailserver.imap.selected import BoxNews
    from store.events import LocalBus
    from store.redis_bus import RedisBus

    bus = LocalBus()
    news = BoxNews(bus, "mailbox:7", "INBOX")
    assert not news.take()  # nothing since the folder was read
    await bus.publish("mailbox:7", {"type": "new_mail", "folder": "Sent", "uid": 3})
    await bus.publish("mailbox:8", {"type": "folder_changed", "folder": "INBOX", "folder_id": 9})
    assert not news.take()  # another folder, another box
    await bus.publish("mailbox:7", {"type": "folder_changed", "folder": "INBOX", "folder_id": 1})
    assert news.take() and not news.take()  # read once
    await bus.publish("mailbox:7", {"type": "folder_named", "folder": "Archives", "old": "INBOX"})
    assert news.take()  # renamed or deleted under the session: read what it says
    bus.resync()
    assert news.take()  # events were lost on their way
    news.close()
    await bus.publish("mailbox:7", {"type": "new_mail", "folder": "INBOX", "uid": 4})
    assert not news.changed  # no longer heard once the session left the folder
    unsubscribed = RedisBus("redis://127.0.0.1:6379", bus)  # never started: hears no other process
    deaf = BoxNews(unsubscribed, "mailbox:7", "INBOX")
    assert deaf.take() and deaf.take()
    deaf.close()
    await unsubscribed.close()
