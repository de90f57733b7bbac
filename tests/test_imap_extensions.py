"""IMAP extensions clients ask for (issue 12), over real sockets: IDLE keepalives, SEARCHRES,
WITHIN, MULTIAPPEND, SORT, THREAD, UTF8=ACCEPT, NOTIFY. imaptest's groups for each run in test_imaptest.py."""
from __future__ import annotations

import re
import time

import pytest

from .imap_client import NURSE, NURSE_IDNAT, URGENCES, URGENTIST, URGENTIST_IDNAT, RawImap, untagged
from .test_imap import imaplib_client


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


def fill(client: RawImap, box: str, flags: list[str]) -> None:
    client.ok(f"CREATE {box}")
    for n, flag in enumerate(flags, 1):
        client.ok(f"APPEND {box} ({flag}) \x00", b"Subject: m%d\r\n\r\nbody %d\r\n" % (n, n))
    client.ok(f"SELECT {box}")


def test_searchres_saves_a_result_for_later_commands(server):
    client = RawImap(server)
    client.login_token(server)
    assert b"SEARCHRES" in client.ok("CAPABILITY")[0]
    fill(client, "sr", ["\\Seen", "", "\\Seen", "\\Seen"])
    assert client.ok("SEARCH RETURN (SAVE) SEEN") == []  # SAVE alone: no ESEARCH (RFC 5182 §2.1)
    assert untagged(client.ok("FETCH $ (UID)"), b"FETCH") == [b"* 1 FETCH (UID 1)\r\n", b"* 3 FETCH (UID 3)\r\n",
                                                             b"* 4 FETCH (UID 4)\r\n"]
    assert client.ok("SEARCH $ NOT 1") == [b"* SEARCH 3 4\r\n"]
    client.ok("STORE $ +FLAGS.SILENT (\\Deleted)")
    assert client.ok("SEARCH DELETED") == [b"* SEARCH 1 3 4\r\n"]
    client.ok("STORE 1 -FLAGS.SILENT (\\Deleted)")
    client.ok("EXPUNGE")  # 3 and 4 go: `$` keeps only what is left of it
    assert client.ok("UID SEARCH $") == [b"* SEARCH 1\r\n"]
    # with MIN or MAX alone, only those are saved (§2.4); the ESEARCH omits SAVE
    client.ok("APPEND sr (\\Seen) \x00", b"Subject: m5\r\n\r\nbody 5\r\n")
    client.ok("NOOP")
    lines = client.ok("UID SEARCH RETURN (SAVE MAX) SEEN")
    assert lines[-1].startswith(b"* ESEARCH (TAG ") and lines[-1].endswith(b" UID MAX 5\r\n"), lines
    assert client.ok("UID SEARCH $") == [b"* SEARCH 5\r\n"]
    tag, lines = client.command("FETCH $,1 FLAGS")  # `$` stands alone
    assert lines[-1].startswith(f"{tag} BAD".encode()), lines
    tag, lines = client.command("SEARCH RETURN (SAVE) BOGUS")
    assert lines[-1].startswith(f"{tag} BAD".encode()), lines
    assert client.ok("SEARCH $") == [b"* SEARCH\r\n"]  # a failed SAVE empties it
    client.ok("SEARCH RETURN (SAVE) ALL")
    client.ok("SELECT sr")  # a new selection forgets it
    assert client.ok("SEARCH $") == [b"* SEARCH\r\n"]
    client.close()


def test_within_finds_messages_by_age(server):
    client = RawImap(server)
    client.login_token(server)
    assert b" WITHIN" in client.ok("CAPABILITY")[0]
    client.ok("CREATE within")
    client.ok('APPEND within "01-Jan-2020 10:00:00 +0000" \x00', b"Subject: old\r\n\r\nold\r\n")
    client.ok("APPEND within \x00", b"Subject: new\r\n\r\nnew\r\n")
    client.ok("SELECT within")
    assert client.ok("SEARCH OLDER 3600") == [b"* SEARCH 1\r\n"]
    assert client.ok("SEARCH YOUNGER 3600") == [b"* SEARCH 2\r\n"]
    assert client.ok("UID SEARCH OR OLDER 4000000000 YOUNGER 60") == [b"* SEARCH 2\r\n"]
    tag, lines = client.command("SEARCH OLDER 0")
    assert lines[-1].startswith(f"{tag} BAD".encode()), lines
    client.close()


def test_multiappend_stores_all_or_nothing(server):
    client = RawImap(server)
    client.login_token(server)
    assert b" MULTIAPPEND" in client.ok("CAPABILITY")[0]
    client.ok("CREATE multi")
    tag, lines = client.command('APPEND multi (\\Seen) \x00 (\\Flagged) "02-Mar-2026 10:00:00 +0100" \x00 \x00',
                                b"Subject: one\r\n\r\n1\r\n", b"Subject: two\r\n\r\n2\r\n", b"Subject: 3\r\n\r\n3\r\n")
    assert re.match(rb"t\d+ OK \[APPENDUID \d+ 1:3\]", lines[-1]), lines
    # the second message is refused (empty), so the first is not kept either
    tag, lines = client.command("APPEND multi \x00 \x00", b"Subject: four\r\n\r\n4\r\n", b"")
    assert lines[-1].startswith(f"{tag} NO".encode()), lines
    tag, lines = client.command('APPEND multi \x00 "not a date" \x00', b"Subject: four\r\n\r\n4\r\n", b"x\r\n")
    assert lines[-1].startswith(f"{tag} BAD".encode()), lines
    tag, lines = client.command("APPEND multi \x00 (\\Seen)", b"Subject: four\r\n\r\n4\r\n")  # flags, no message
    assert lines[-1].startswith(f"{tag} BAD".encode()), lines
    client.ok("SELECT multi")
    fetched = untagged(client.ok("FETCH 1:* (UID FLAGS INTERNALDATE BODY.PEEK[HEADER.FIELDS (SUBJECT)])"), b"FETCH")
    assert len(fetched) == 3, fetched
    assert b"FLAGS (\\Seen \\Recent)" in fetched[0] and b"Subject: one" in fetched[0]
    assert b"FLAGS (\\Flagged \\Recent)" in fetched[1] and b"\" 2-Mar-2026 09:00:00 +0000\"" in fetched[1]
    assert b"Subject: 3" in fetched[2]
    client.close()


def test_sort_and_esort(server):
    client = RawImap(server)
    client.login_token(server)
    caps = client.ok("CAPABILITY")[0]
    assert b" SORT" in caps and b" ESORT" in caps
    client.ok("CREATE sorted")
    for subject, size in (("Re: beta", 40), ("alpha", 300), ("[list] Beta (fwd)", 1)):
        client.ok("APPEND sorted (\\Seen) \x00", b"Subject: %s\r\n\r\n%s\r\n" % (subject.encode(), b"x" * size))
    client.ok("SELECT sorted")
    client.ok("STORE 1 -FLAGS (\\Seen)")
    assert client.ok("SORT (SUBJECT) UTF-8 ALL") == [b"* SORT 2 1 3\r\n"]
    assert client.ok("SORT (REVERSE SIZE) US-ASCII SEEN") == [b"* SORT 2 3\r\n"]
    assert client.ok("UID SORT (SIZE) UTF-8 ALL") == [b"* SORT 3 1 2\r\n"]
    lines = client.ok("UID SORT RETURN (MIN MAX COUNT ALL) (SUBJECT) UTF-8 ALL")
    assert lines[-1].endswith(b" UID MIN 2 MAX 3 COUNT 3 ALL 2,1,3\r\n"), lines
    tag, lines = client.command("SORT (SIZE) ISO-8859-1 ALL")
    assert lines[-1].startswith(f"{tag} NO [BADCHARSET".encode()), lines
    tag, lines = client.command("SORT (COLOUR) UTF-8 ALL")
    assert lines[-1].startswith(f"{tag} BAD".encode()), lines
    client.close()


def test_thread_references_and_orderedsubject(server):
    client = RawImap(server)
    client.login_token(server)
    assert b" THREAD=ORDEREDSUBJECT THREAD=REFERENCES " in client.ok("CAPABILITY")[0]
    headers = ("Message-ID: <a@x>\r\nSubject: plan", "Message-ID: <b@x>\r\nIn-Reply-To: <a@x>\r\nSubject: Re: plan",
               "Message-ID: <c@x>\r\nSubject: other", "References: <a@x> <b@x>\r\nSubject: Re: plan",
               "Subject: Re: other")
    client.ok("CREATE threaded")
    client.ok("APPEND threaded" + " \x00" * len(headers), *(h.encode() + b"\r\n\r\nbody\r\n" for h in headers))
    client.ok("SELECT threaded")
    assert client.ok("THREAD REFERENCES UTF-8 ALL") == [b"* THREAD (1 2 4)(3 5)\r\n"]
    assert client.ok("THREAD ORDEREDSUBJECT US-ASCII ALL") == [b"* THREAD (1 (2)(4))(3 5)\r\n"]
    client.ok("STORE 2 +FLAGS (\\Deleted)")
    client.ok("EXPUNGE")
    # <b@x> is gone: 4 (now 3) still goes under <a@x> through its References; UIDs for UID THREAD
    assert client.ok("UID THREAD REFERENCES UTF-8 ALL") == [b"* THREAD (1 4)(3 5)\r\n"]
    assert client.ok("THREAD REFERENCES UTF-8 SUBJECT other") == [b"* THREAD (2 4)\r\n"]
    assert client.ok("THREAD REFERENCES UTF-8 SUBJECT nothing") == [b"* THREAD\r\n"]
    tag, lines = client.command("THREAD REFERENCES ISO-8859-1 ALL")
    assert lines[-1].startswith(f"{tag} NO [BADCHARSET".encode()), lines
    tag, lines = client.command("THREAD JWZ UTF-8 ALL")
    assert lines[-1].startswith(f"{tag} BAD".encode()), lines
    client.close()


def test_utf8_accept_names_and_strings(server):
    """RFC 6855: after ENABLE UTF8=ACCEPT, names go both ways as UTF-8 (no modified UTF-7, so
    "&AMk-" is just a name) and quoted strings may hold UTF-8; before it, modified UTF-7."""
    client = imaplib_client(server)
    assert b" UTF8=ACCEPT" in client.capability()[1][0]
    assert client.create("&AMk-tudes")[0] == "OK"  # "Études" in modified UTF-7
    assert b'"/" &AMk-tudes' in b" ".join(client.list()[1])
    assert client.enable("UTF8=ACCEPT")[0] == "OK"
    assert client.untagged_responses.pop("ENABLED") == [b"UTF8=ACCEPT"]
    assert b'"/" "\xc3\x89tudes"' in b" ".join(client.list()[1])
    assert client.create('"Patients/Élise"')[0] == "OK"
    assert client.create("&AMk-")[0] == "OK"  # no longer modified UTF-7: a name of its own
    names = b" ".join(client.list()[1])
    assert b'"Patients/\xc3\x89lise"' in names and b'"/" &AMk-' in names
    assert client.status('"Patients/Élise"', "(MESSAGES)")[0] == "OK"
    message = "Subject: Kaliémie\r\nFrom: Zoé <zoe@msante.test>\r\n\r\nà contrôler\r\n".encode()
    raw = RawImap(server)
    raw.login_token(server)
    raw.ok("ENABLE UTF8=ACCEPT")
    raw.send(b"a1 APPEND \"Patients/\xc3\x89lise\" UTF8 (~{%d}\r\n" % len(message))
    assert raw.line().startswith(b"+")
    raw.send(message + b")\r\n")
    assert re.match(rb"a1 OK \[APPENDUID \d+ 1\]", raw.line())
    raw.ok('SELECT "Patients/Élise"')
    assert untagged(raw.ok('SEARCH SUBJECT "kaliémie"'), b"SEARCH") == [b"* SEARCH 1\r\n"]
    assert raw.ok('UID SORT (SUBJECT) UTF-8 FROM "Zoé"') == [b"* SORT 1\r\n"]
    tag, lines = raw.command('SEARCH CHARSET ISO-8859-1 SUBJECT "x"')  # conflicts with UTF8=ACCEPT
    assert lines[-1].startswith(f"{tag} BAD".encode()), lines
    raw.close()
    other = RawImap(server)  # before ENABLE: no 8-bit names, no UTF8 APPEND data
    other.login_token(server)
    tag, lines = other.command('CREATE "Été"')
    assert lines[-1].startswith(f"{tag} BAD".encode()), lines
    other.send(b"a1 APPEND INBOX UTF8 (~{%d}\r\n" % len(message))
    reply = other.line()
    if reply.startswith(b"+"):
        other.send(message + b")\r\n")
        reply = other.line()
    assert reply.startswith(b"a1 BAD"), reply
    other.close()
    client.logout()


def test_notify_one_connection_watches_inbox_and_shared_boxes(server, monkeypatch):
    """RFC 5465: after NOTIFY, news comes between commands, unasked: the selected mailbox's
    EXISTS and FETCH, STATUS of the INBOXes (the person's and the shared box's), LIST for names
    and subscriptions. Here the emergency department's delegate watches both boxes at once."""
    shared_inbox = f"Shared/{URGENCES}/INBOX"
    watcher, other = RawImap(server), RawImap(server)
    for client in (watcher, other):
        client.login_token(server, URGENTIST, URGENTIST_IDNAT)
    assert b" NOTIFY" in watcher.ok("CAPABILITY")[0]
    watcher.ok("CREATE watched")
    watcher.ok("SELECT watched")
    for bad in ("NOTIFY", "NOTIFY SET", "NOTIFY SET (selected (MessageNew))", "NOTIFY SET (bogus (MessageNew))",
                "NOTIFY SET (selected (FlagChange))", "NOTIFY SET (inboxes (MessageNew (UID)))"):
        tag, lines = watcher.command(bad)
        assert lines[-1].startswith(f"{tag} BAD".encode()), (bad, lines)
    tag, lines = watcher.command("NOTIFY SET (personal (AnnotationChange))")
    assert lines[-1].startswith(f"{tag} NO [BADEVENT (MessageNew MessageExpunge FlagChange".encode()), lines
    lines = watcher.ok("NOTIFY SET STATUS (selected (MessageNew MessageExpunge FlagChange)) "
                       "(inboxes (MessageNew MessageExpunge)) (personal (MailboxName SubscriptionChange))")
    statuses = untagged(lines, b"STATUS")
    assert [s.split(b" (")[0] for s in statuses] == [b"* STATUS INBOX", b"* STATUS " + shared_inbox.encode()]
    assert b"MESSAGES 0 " in statuses[1]

    other.ok(f'APPEND "{shared_inbox}" \x00', b"Subject: patient\r\n\r\nbody\r\n")
    assert watcher.line().startswith(b"* STATUS %s (MESSAGES 1 UIDNEXT 2 " % shared_inbox.encode())
    other.ok("APPEND watched \x00", b"Subject: note\r\n\r\nbody\r\n")
    assert watcher.line() == b"* 1 EXISTS\r\n"
    assert watcher.line() == b"* 1 RECENT\r\n"
    other.ok("SELECT watched")
    other.ok("STORE 1 +FLAGS (\\Flagged)")
    assert watcher.line() == b"* 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent))\r\n"
    other.ok("CREATE later")
    assert watcher.line() == b'* LIST () "/" later\r\n'
    other.ok("RENAME later sooner")
    assert watcher.line() == b'* LIST () "/" sooner ("OLDNAME" (later))\r\n'
    other.ok("SUBSCRIBE sooner")
    assert watcher.line() == b'* LIST (\\Subscribed) "/" sooner\r\n'
    other.ok("DELETE sooner")
    assert watcher.line() == b'* LIST (\\NonExistent) "/" sooner\r\n'
    # during IDLE too: the selected mailbox told by IDLE, the others by NOTIFY. The other session
    # leaves "watched": a message is \Recent for one session only, whichever syncs first (RFC 3501
    # §2.3.2), and it must be the watcher's here.
    other.ok("EXAMINE INBOX")
    watcher.send(b"i1 IDLE\r\n")
    assert watcher.line().startswith(b"+ ")
    other.ok("APPEND INBOX \x00", b"Subject: first\r\n\r\nbody\r\n")
    assert watcher.line().startswith(b"* STATUS INBOX (MESSAGES 1 UIDNEXT 2 ")
    other.ok("APPEND watched \x00", b"Subject: second note\r\n\r\nbody\r\n")
    assert [watcher.line(), watcher.line()] == [b"* 2 EXISTS\r\n", b"* 2 RECENT\r\n"]
    watcher.send(b"DONE\r\n")
    assert watcher.line().startswith(b"i1 OK")
    # the delegation revoked, the shared box is heard of no more (its news would come first),
    # even before the server hears of the CLI's change (the bus relay slowed: under load it lagged)
    monkeypatch.setattr("store.relay.POLL_SECONDS", 5.0)
    time.sleep(2 * 0.2)  # the relay's wait under way ends: its next lasts 5 s
    assert server.cli("mailbox", "grant", URGENCES, "--rpps", NURSE_IDNAT[1:]) == 0
    assert server.cli("mailbox", "revoke", URGENCES, "--rpps", URGENTIST_IDNAT[1:]) == 0
    nurse = RawImap(server)
    nurse.login_token(server, NURSE, NURSE_IDNAT)
    nurse.ok(f'APPEND "{shared_inbox}" \x00', b"Subject: private\r\n\r\nbody\r\n")
    other.ok("APPEND INBOX \x00", b"Subject: mine\r\n\r\nbody\r\n")
    assert watcher.line().startswith(b"* STATUS INBOX (MESSAGES 2 ")
    watcher.ok("NOTIFY NONE")
    other.ok("APPEND INBOX \x00", b"Subject: quiet\r\n\r\nbody\r\n")
    assert untagged(watcher.ok("NOOP"), b"STATUS") == []
    for client in (watcher, other, nurse):
        client.close()
