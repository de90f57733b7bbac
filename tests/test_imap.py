"""IMAP end to end: imaplib, aioimaplib and a line-level client over real sockets and TLS
against a running server with the demo directory."""
from __future__ import annotations

import asyncio
import imaplib
import re
import time
from email.message import EmailMessage

import aioimaplib
import pytest
from sqlalchemy import func, select

from store.schema import audit, bodies

from .imap_client import (GP, GP_IDNAT, NURSE, URGENCES, URGENTIST, URGENTIST_IDNAT, RawImap, token, untagged,
                          xoauth2)
from .test_smtp import login as smtp_login
from .test_smtp import message


def deliver(server, to: list[str], subject: str = "Compte rendu", body: str = "Bonjour,\n", raw: bytes | None = None):
    client = smtp_login(server)
    client.sendmail(GP, to, raw or message(GP, to, subject, body))
    client.quit()


def imaplib_client(server, address: str = GP, idnat: str = GP_IDNAT) -> imaplib.IMAP4_SSL:
    host, port = server.listeners["imaps"].rsplit(":", 1)
    client = imaplib.IMAP4_SSL("localhost", int(port), ssl_context=server.client_tls(), timeout=15)
    bearer = token(server, idnat)
    client.authenticate("XOAUTH2", lambda _: f"user={address}\x01auth=Bearer {bearer}\x01\x01".encode())
    return client


def app_password(server, capsys, address: str = GP, rpps: str = "10001045367") -> str:
    assert server.cli("mailbox", "app-password", "create", address, "--rpps", rpps, "--label", "mutt") == 0
    return capsys.readouterr().out.strip().splitlines()[-1].split()[-1]


def multipart() -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = GP, NURSE, "Résultats de biologie"
    msg["Message-ID"] = "<bio-1@msante.test>"
    msg.set_content("Kaliémie à 5,9 mmol/l : à contrôler.\n")
    msg.add_alternative("<p>Kali&eacute;mie &agrave; 5,9 mmol/l</p>", subtype="html")
    msg.add_attachment(b"%PDF-1.4 fake\n\x00\x01", maintype="application", subtype="pdf", filename="bio.pdf")
    return msg.as_bytes()


# -- connection, TLS, login ------------------------------------------------------------------


def test_starttls_logindisabled_and_injected_commands_dropped(server):
    client = RawImap(server, listener="imap")
    assert b"STARTTLS" in client.greeting and b"LOGINDISABLED" in client.greeting and b"AUTH=" not in client.greeting
    tag, lines = client.command("LOGIN jean secret")
    assert lines[-1].startswith(f"{tag} NO [PRIVACYREQUIRED]".encode())
    # STARTTLS with a command pipelined behind it in the same packet: the server must drop it
    client.send(b"s1 STARTTLS\r\ninjected CAPABILITY\r\n")
    assert client.line().startswith(b"s1 OK")
    client.sock = client.context.wrap_socket(client.sock, server_hostname="localhost")
    client.buffer = b""
    lines = client.ok("CAPABILITY")
    assert b"LOGINDISABLED" not in lines[0] and b"AUTH=XOAUTH2" in lines[0] and b"AUTH=PLAIN" in lines[0]
    tag, rest = client.command("NOOP")
    assert not any(b"injected" in ln for ln in rest), rest
    client.login_token(server)
    caps = client.ok("CAPABILITY")[0]
    for cap in (b"IMAP4rev2", b"IDLE", b"UIDPLUS", b"MOVE", b"UNSELECT", b"NAMESPACE", b"ID", b"ENABLE", b"SASL-IR",
                b"SPECIAL-USE", b"CONDSTORE", b"QRESYNC", b"ESEARCH", b"LIST-EXTENDED", b"LIST-STATUS", b"QUOTA",
                b"ACL", b"LITERAL+", b"BINARY"):
        assert cap in caps.split(), cap
    client.close()


def test_every_login_mechanism(server, capsys, tmp_path):
    password = app_password(server, capsys)
    # XOAUTH2 (imaplib), OAUTHBEARER with SASL-IR, PLAIN and LOGIN with the application password
    imaplib_client(server).logout()
    client = RawImap(server)
    bearer = token(server)
    ir = __import__("base64").b64encode(f"n,a={GP},\x01auth=Bearer {bearer}\x01\x01".encode()).decode()
    client.ok(f"AUTHENTICATE OAUTHBEARER {ir}")
    client.close()
    host, port = server.listeners["imaps"].rsplit(":", 1)
    plain = imaplib.IMAP4_SSL("localhost", int(port), ssl_context=server.client_tls())
    plain.authenticate("PLAIN", lambda _: f"\0{GP}\0{password}".encode())
    plain.logout()
    with imaplib.IMAP4("localhost", int(server.listeners["imap"].rsplit(":", 1)[1])) as starttls:
        starttls.starttls(ssl_context=server.client_tls())
        assert starttls.login(GP, password)[0] == "OK"
    # EXTERNAL with a CPS-style certificate: the urgentist, acting for the emergency box
    assert server.cli("certs", "issue", "--kind", "cps", "--rpps", "10002000015", "--out", str(tmp_path)) == 0
    client = RawImap(server, cert=(tmp_path / "cps-10002000015.crt", tmp_path / "cps-10002000015.key"))
    assert b"AUTH=EXTERNAL" in client.ok("CAPABILITY")[0]
    client.ok("AUTHENTICATE EXTERNAL =")
    assert b"Shared/urgences.ch-saint-paul@msante.test/INBOX" in b"".join(client.ok('LIST "" "*"'))
    client.close()
    # refusals: wrong password, expired token (with the RFC 7628 error challenge), someone else's box
    with pytest.raises(imaplib.IMAP4.error):
        with imaplib.IMAP4_SSL("localhost", int(port), ssl_context=server.client_tls()) as bad:
            bad.login(GP, password + "x")
    client = RawImap(server)
    client.send(f"a1 AUTHENTICATE XOAUTH2 {xoauth2(GP, token(server, ttl=-300))}\r\n".encode())
    assert client.line().startswith(b"+ ")  # {"status":"401",...}
    client.send(b"\r\n")
    assert client.line().startswith(b"a1 NO [AUTHENTICATIONFAILED]")
    client.send(f"a2 AUTHENTICATE XOAUTH2 {xoauth2(URGENTIST, token(server))}\r\n".encode())
    assert client.line().startswith(b"+ ")
    client.send(b"\r\n")
    assert client.line().startswith(b"a2 NO")
    client.close()
    failed = server.rows(select(audit).where(audit.c.outcome.in_(("failed", "denied")),
                                             audit.c.detail.like('%"imap"%')))
    assert len(failed) >= 2


# -- folders ---------------------------------------------------------------------------------


def test_default_folders_namespace_list_status_and_subscriptions(server):
    client = RawImap(server)
    client.login_token(server)
    lines = client.ok('LIST "" "*"')
    names = {re.search(rb'"/" (.+)\r\n', ln)[1].strip(b'"'): ln for ln in untagged(lines, b"LIST")}
    assert set(names) >= {b"INBOX", b"Sent", b"Drafts", b"Trash", b"Junk", b"Archive"}
    for name, use in ((b"Sent", b"\\Sent"), (b"Trash", b"\\Trash"), (b"Junk", b"\\Junk"), (b"Drafts", b"\\Drafts")):
        assert use in names[name]
    assert client.ok("NAMESPACE")[0] == b'* NAMESPACE (("" "/")) NIL NIL\r\n'
    client.ok('CREATE "Patients/TECHER Josette"')  # superiors are created too
    client.ok('CREATE "Patients/&AMk-lise Payet"')  # modified UTF-7, as IMAP4rev1 clients send "Élise"
    tag, lines = client.command('CREATE "Patients/Élise"')  # raw UTF-8 is IMAP4rev2's (see below)
    assert lines[-1].startswith(f"{tag} BAD".encode())
    lines = client.ok('LIST "" "Patients/%"')
    assert any(b"Patients/&AMk-lise Payet" in ln for ln in lines), lines
    assert b"\\HasChildren" in client.ok('LIST "" "Patients"')[0]
    client.ok('RENAME "Patients/&AMk-lise Payet" "Patients/Elise Payet"')
    client.ok('SUBSCRIBE "Patients/Elise Payet"')
    assert client.ok('LSUB "" "*"') == [b'* LSUB () "/" "Patients/Elise Payet"\r\n']
    lines = client.ok('LIST (SUBSCRIBED) "" "*" RETURN (STATUS (MESSAGES UIDNEXT UNSEEN SIZE))')
    assert b"\\Subscribed" in lines[0]
    assert re.match(rb'\* STATUS "Patients/Elise Payet" \(MESSAGES 0 UIDNEXT 1 UNSEEN 0 SIZE 0\)', lines[1]), lines
    assert untagged(client.ok('LIST (SPECIAL-USE) "" "*"'), b"LIST").__len__() == 5
    client.ok('DELETE "Patients/Elise Payet"')
    tag, lines = client.command("DELETE INBOX")
    assert b"NO" in lines[-1]
    tag, lines = client.command("SELECT Nowhere")
    assert lines[-1].startswith(f"{tag} NO [NONEXISTENT]".encode())
    client.close()


# -- FETCH -----------------------------------------------------------------------------------


def test_fetch_every_data_item(server):
    deliver(server, [NURSE], raw=multipart())
    client = RawImap(server)
    client.login_token(server, NURSE, "810002000023")
    lines = client.ok("EXAMINE INBOX")
    assert b"* 1 EXISTS\r\n" in lines and any(b"[UIDVALIDITY " in ln for ln in lines)
    assert any(b"[HIGHESTMODSEQ " in ln for ln in lines)
    lines = client.ok("FETCH 1 (UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODYSTRUCTURE MODSEQ)")
    fetched = b"".join(lines)
    assert b"UID 1 " in fetched and b"FLAGS (\\Recent)" in fetched and b"MODSEQ (" in fetched  # EXAMINE shows, never claims
    assert b'"R\xc3\xa9sultats de biologie"' in fetched or b"=?utf-8?" in fetched.lower()
    assert b'(("Jean Dupont" NIL "jean.dupont" "msante.test"))' in fetched or b'((NIL NIL "jean.dupont"' in fetched
    assert b'"mixed"' in fetched.lower() and b'"alternative"' in fetched.lower() and b'"pdf"' in fetched.lower()
    assert b'("name" "bio.pdf")' in fetched.lower() or b'"filename" "bio.pdf"' in fetched.lower()
    full = b"".join(client.ok("FETCH 1 BODY.PEEK[]"))
    raw = server.rows(select(bodies.c.data))[-1]["data"]
    assert raw in full
    header = b"".join(client.ok("FETCH 1 (BODY.PEEK[HEADER.FIELDS (Subject Message-ID)])"))
    assert b"Message-ID: <bio-1@msante.test>" in header and b"From:" not in header
    partial = b"".join(client.ok("FETCH 1 (BODY.PEEK[]<0.20>)"))
    assert b"BODY[]<0> {20}\r\n" + raw[:20] in partial
    text_part = b"".join(client.ok("FETCH 1 (BODY.PEEK[1.1] BINARY.PEEK[1.1] BINARY.SIZE[1.1] BODY.PEEK[1.1.MIME])"))
    assert "Kaliémie".encode() in text_part  # BINARY decodes the transfer encoding
    assert b"BINARY.SIZE[1.1] " in text_part and b"Content-Type: text/plain" in text_part
    pdf = b"".join(client.ok("FETCH 1 (BINARY.PEEK[2])"))
    assert b"%PDF-1.4 fake\n\x00\x01" in pdf and b"~{" in pdf  # NUL: a literal8
    legacy = b"".join(client.ok("UID FETCH 1 (RFC822.HEADER RFC822.TEXT BODY)"))
    assert b"RFC822.HEADER {" in legacy and b"RFC822.TEXT {" in legacy and b"BODY (" in legacy
    client.ok("UNSELECT")
    client.ok("SELECT INBOX")
    lines = client.ok("FETCH 1 (BODY[TEXT])")  # not PEEK: sets \Seen, and says so
    assert b"\\Seen" in b"".join(lines)
    tag, lines = client.command("FETCH 2 FLAGS")
    assert lines[-1].startswith(f"{tag} BAD".encode())
    client.close()


# -- SEARCH ----------------------------------------------------------------------------------


def test_search_keys_charset_and_esearch(server):
    deliver(server, [NURSE], "Passage aux urgences", "Patient vu pour une chute.\n")
    deliver(server, [NURSE], "Ordonnance", "Pansement à refaire tous les deux jours, œdème.\n")
    deliver(server, [NURSE], "Compte rendu", "RAS.\n")
    client = RawImap(server)
    client.login_token(server, NURSE, "810002000023")
    client.ok("SELECT INBOX")
    client.ok("STORE 3 +FLAGS.SILENT (\\Flagged $Important)")

    def search(criteria: str, *literals: bytes) -> bytes:
        lines = client.ok(criteria, *literals)
        return untagged(lines, b"SEARCH")[0] if untagged(lines, b"SEARCH") else untagged(lines, b"ESEARCH")[0]

    assert search("SEARCH ALL") == b"* SEARCH 1 2 3\r\n"
    assert search('SEARCH SUBJECT "urgences"') == b"* SEARCH 1\r\n"
    assert search("SEARCH CHARSET UTF-8 BODY \x00", "œdème".encode()) == b"* SEARCH 2\r\n"
    assert search("SEARCH FLAGGED KEYWORD $Important") == b"* SEARCH 3\r\n"
    assert search("SEARCH OR SUBJECT ordonnance UNFLAGGED NOT 1") == b"* SEARCH 2\r\n"
    assert search("SEARCH FROM jean.dupont TO sophie SINCE 1-Jan-2020 LARGER 10") == b"* SEARCH 1 2 3\r\n"
    assert search("SEARCH HEADER Message-ID msante.test 2:*") == b"* SEARCH 2 3\r\n"
    assert search("UID SEARCH UID 2:3 TEXT RAS") == b"* SEARCH 3\r\n"
    assert search("SEARCH RETURN (MIN MAX COUNT) ALL").endswith(b"MIN 1 MAX 3 COUNT 3\r\n")
    assert search("UID SEARCH RETURN () NOT DELETED").endswith(b"UID ALL 1:3\r\n")
    tag, lines = client.command("SEARCH CHARSET KOI8-R ALL")
    assert b"[BADCHARSET" in lines[-1]
    tag, lines = client.command("SEARCH FROBNICATE")
    assert lines[-1].startswith(f"{tag} BAD".encode())
    client.close()


def test_search_on_flags_whole_words_any_case_as_the_session_was_told(server):
    """Flag-only searches are answered by the store: a keyword matches as a whole word in any
    case (not `$Importantish` for `$Important`, no LIKE wildcard in `a_b`), and while another
    session's change has not been told, the answer is still the session's view."""
    for subject in ("one", "two", "three"):
        deliver(server, [NURSE], subject, "text\n")
    client, other = RawImap(server), RawImap(server)
    for c in (client, other):
        c.login_token(server, NURSE, "810002000023")
        c.ok("SELECT INBOX")
    client.ok("STORE 1 FLAGS.SILENT (\\Seen $Importantish)")
    client.ok("STORE 2 FLAGS.SILENT (\\Flagged $important)")
    client.ok("STORE 3 FLAGS.SILENT (axb)")

    def search(criteria: str) -> list[bytes]:
        return [line for line in client.ok(criteria) if not line.startswith(b"* OK")]

    assert search("SEARCH KEYWORD $Important") == [b"* SEARCH 2\r\n"]
    assert search("SEARCH KEYWORD a_b") == [b"* SEARCH\r\n"]
    assert search("SEARCH UNSEEN FLAGGED") == [b"* SEARCH 2\r\n"]
    assert search("SEARCH OR SEEN NOT UNKEYWORD $IMPORTANT") == [b"* SEARCH 1 2\r\n"]
    assert search("SEARCH UNKEYWORD $importantish UNSEEN") == [b"* SEARCH 2 3\r\n"]
    assert search("UID SEARCH NOT ALL") == [b"* SEARCH\r\n"]
    other.ok("STORE 3 +FLAGS.SILENT (\\Flagged)")
    lines = search("SEARCH FLAGGED")
    assert lines[0] == b"* SEARCH 2\r\n" and re.match(rb"\* 3 FETCH \(.*\\Flagged", lines[1]), lines
    assert search("SEARCH FLAGGED") == [b"* SEARCH 2 3\r\n"]
    client.close()
    other.close()


# -- changing mailboxes ------------------------------------------------------------------------


def test_append_copy_move_expunge_keep_one_body(server):
    client = RawImap(server)
    client.login_token(server)
    draft = b"From: jean.dupont@msante.test\r\nSubject: brouillon\r\n\r\nA finir.\r\n"
    tag, lines = client.command('APPEND Drafts (\\Draft) "23-Nov-2026 10:00:00 +0400" \x00', draft)
    assert re.match(rb"t\d+ OK \[APPENDUID (\d+) 1\]", lines[-1]), lines
    tag, lines = client.command("APPEND Nowhere \x00", draft)
    assert b"[TRYCREATE]" in lines[-1]
    bodies_before = server.scalar(select(func.count()).select_from(bodies))
    client.ok("SELECT Drafts")
    lines = client.ok("FETCH 1 (FLAGS INTERNALDATE)")
    assert b"\\Draft" in lines[0] and b'"23-Nov-2026 06:00:00 +0000"' in lines[0]  # the same instant, kept in UTC
    tag, lines = client.command("COPY 1 Archive")
    assert re.search(rb"OK \[COPYUID \d+ 1 1\]", lines[-1])
    tag, lines = client.command("UID MOVE 1 Trash")
    assert any(b"[COPYUID" in ln for ln in lines) and b"* 1 EXPUNGE\r\n" in lines
    assert server.scalar(select(func.count()).select_from(bodies)) == bodies_before  # one body, three places
    client.ok("SELECT Trash")
    client.ok("STORE 1 +FLAGS (\\Deleted)")
    assert client.ok("EXPUNGE") == [b"* 1 EXPUNGE\r\n", b"* 0 RECENT\r\n"]  # it was \Recent here
    assert server.scalar(select(func.count()).select_from(bodies)) == bodies_before  # Archive still holds it
    client.ok("SELECT Archive")
    client.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    client.ok("CLOSE")  # expunges silently
    assert server.scalar(select(func.count()).select_from(bodies)) == bodies_before - 1  # freed
    oversize = b"x" * (server.settings.max_message_size + 1)
    client.send(b"big APPEND INBOX {%d}\r\n" % len(oversize))
    assert client.line().startswith(b"big NO [TOOBIG]")
    client.ok("NOOP")
    client.close()


def test_two_sessions_see_each_others_changes_at_the_right_moments(server):
    deliver(server, [GP], "un")
    deliver(server, [GP], "deux")
    a, b = RawImap(server), RawImap(server)
    a.login_token(server)
    b.login_token(server)
    a.ok("SELECT INBOX")
    b.ok("SELECT INBOX")
    a.ok("STORE 1 +FLAGS.SILENT (\\Seen)")
    assert any(re.match(rb"\* 1 FETCH \(.*FLAGS \(\\Seen\)", ln) for ln in b.ok("NOOP"))
    a.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    a.ok("EXPUNGE")
    lines = b.ok("FETCH 1:* (FLAGS)")  # sequence numbers in use: no EXPUNGE now
    assert not any(b"EXPUNGE" in ln for ln in lines) and len(untagged(lines, b"FETCH")) >= 1
    deliver(server, [GP], "trois")
    lines = b.ok("NOOP")
    assert b"* 1 EXPUNGE\r\n" in lines and any(ln.endswith(b" EXISTS\r\n") for ln in lines)
    assert untagged(b.ok("FETCH 1:* (UID)"), b"FETCH") == [b"* 1 FETCH (UID 2)\r\n", b"* 2 FETCH (UID 3)\r\n"]
    a.close()
    b.close()


def test_idle_is_woken_by_an_smtp_delivery(server):
    async def scenario() -> float:
        host, port = server.listeners["imaps"].rsplit(":", 1)
        client = aioimaplib.IMAP4_SSL("localhost", int(port), ssl_context=server.client_tls(), timeout=15)
        await client.wait_hello_from_server()
        bearer = token(server)
        response = await client.xoauth2(GP, bearer)
        assert response.result == "OK"
        await client.select("INBOX")
        idle = await client.idle_start(timeout=20)
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        await loop.run_in_executor(None, deliver, server, [GP], "Alerte")
        pushed = await client.wait_server_push(timeout=10)
        elapsed = time.monotonic() - started
        client.idle_done()
        await asyncio.wait_for(idle, 10)
        await client.logout()
        assert any(b"EXISTS" in (p if isinstance(p, bytes) else p.encode()) for p in pushed), pushed
        return elapsed

    assert asyncio.run(scenario()) < 5


def test_condstore_and_qresync_resync(server):
    for n in range(4):
        deliver(server, [GP], f"message {n}")
    client = RawImap(server)
    client.login_token(server)
    assert client.ok("ENABLE QRESYNC") == [b"* ENABLED QRESYNC\r\n"]
    lines = client.ok("SELECT INBOX")
    uidvalidity = int(re.search(rb"UIDVALIDITY (\d+)", b"".join(lines))[1])
    modseq = int(re.search(rb"HIGHESTMODSEQ (\d+)", b"".join(lines))[1])
    client.ok("UNSELECT")
    other = RawImap(server)
    other.login_token(server)
    other.ok("SELECT INBOX")
    other.ok("STORE 2 +FLAGS.SILENT (\\Answered)")
    other.ok("STORE 4 +FLAGS.SILENT (\\Deleted)")
    other.ok("EXPUNGE")
    tag, lines = other.command(f"STORE 1 (UNCHANGEDSINCE {modseq - 100 if modseq > 100 else 0}) +FLAGS (\\Seen)")
    assert b"[MODIFIED 1]" in lines[-1]
    other.close()
    lines = client.ok(f"SELECT INBOX (QRESYNC ({uidvalidity} {modseq} 1:4))")
    assert b"* VANISHED (EARLIER) 4\r\n" in lines
    changed = [ln for ln in untagged(lines, b"FETCH")]
    assert len(changed) == 1 and b"UID 2" in changed[0] and b"\\Answered" in changed[0] and b"MODSEQ" in changed[0]
    lines = client.ok(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {modseq} VANISHED)")
    assert b"* VANISHED (EARLIER) 4\r\n" in lines
    client.close()


# -- organisational boxes, ACL, quota ---------------------------------------------------------


def test_delegate_opens_the_shared_box_and_others_are_refused(server):
    deliver(server, [URGENCES], "Admission de M. TECHER")
    delegate = RawImap(server)
    delegate.login_token(server, URGENTIST, URGENTIST_IDNAT)
    assert delegate.ok("NAMESPACE")[0] == b'* NAMESPACE (("" "/")) NIL (("Shared/" "/"))\r\n'
    shared = f'"Shared/{URGENCES}/INBOX"'
    lines = delegate.ok(f"SELECT {shared}")
    assert b"* 1 EXISTS\r\n" in lines
    assert b"Admission" in b"".join(delegate.ok("FETCH 1 BODY.PEEK[HEADER.FIELDS (SUBJECT)]"))
    assert delegate.ok(f"MYRIGHTS {shared}")[0].replace(b'"', b"") == \
        f"* MYRIGHTS Shared/{URGENCES}/INBOX lrswipkxte\r\n".encode()
    tag, lines = delegate.command(f"GETACL {shared}")
    assert b"NO [NOPERM]" in lines[-1]  # administering rights is not a delegate's by default
    delegate.close()
    opened = server.rows(select(audit).where(audit.c.action == "imap.select", audit.c.target == URGENCES))
    assert opened and opened[-1]["actor"] == URGENTIST_IDNAT and opened[-1]["outcome"] == "ok"

    outsider = RawImap(server)
    outsider.login_token(server)  # the GP is not a delegate of the emergency box
    tag, lines = outsider.command(f"SELECT {shared}")
    assert lines[-1].startswith(f"{tag} NO".encode())
    assert b"urgences" not in b"".join(outsider.ok('LIST "" "*"'))
    outsider.close()
    refused = server.rows(select(audit).where(audit.c.action == "imap.select", audit.c.outcome == "denied"))
    assert refused and refused[-1]["actor"] == GP_IDNAT


def test_select_is_recorded_before_the_next_command(server):
    """SELECT's audit record is committed after its OK, but before the session's next command
    runs: whatever that command reads of the box, the access is on record."""
    client = RawImap(server)
    client.login_token(server)
    client.ok("EXAMINE INBOX")
    client.ok("NOOP")
    rows = server.rows(select(audit).where(audit.c.action == "imap.examine", audit.c.actor == GP_IDNAT))
    assert [(r["target"], r["outcome"]) for r in rows] == [(GP, "ok")]
    client.close()


def test_quota_reports_usage(server):
    deliver(server, [GP], "un", "x" * 5000)
    client = RawImap(server)
    client.login_token(server)
    lines = client.ok("GETQUOTAROOT INBOX")
    assert lines[0] == b'* QUOTAROOT INBOX ""\r\n'
    used, limit = map(int, re.search(rb'\* QUOTA "" \(STORAGE (\d+) (\d+)\)', lines[1]).groups())
    assert used >= 5 and limit == server.settings.mailbox_quota // 1024
    client.close()


# -- versions, limits, bad input ----------------------------------------------------------------


def test_imap4rev2_enable_changes_search_and_names(server):
    deliver(server, [GP], "un")
    client = RawImap(server)
    client.login_token(server)
    assert client.ok("ENABLE IMAP4rev2") == [b"* ENABLED IMAP4rev2\r\n"]
    client.ok('CREATE "Dossiers/Élise"')
    assert any("Dossiers/Élise".encode() in ln for ln in client.ok('LIST "" "Dossiers/*"'))
    lines = client.ok("SELECT INBOX")
    assert not any(b"RECENT" in ln for ln in lines)
    assert untagged(client.ok("SEARCH ALL"), b"ESEARCH")[0].endswith(b"ALL 1\r\n")
    client.ok("ID (\"name\" \"pytest\")")
    client.close()


def test_limits_and_bad_input(server):
    client = RawImap(server)
    client.login_token(server)
    tag, lines = client.command("FROBNICATE")
    assert lines[-1].startswith(f"{tag} BAD".encode())
    tag, lines = client.command("FETCH 1 FLAGS")  # not selected
    assert lines[-1].startswith(f"{tag} BAD".encode())
    tag, lines = client.command('SELECT "unterminated')
    assert b"BAD" in lines[-1]
    client.ok("NOOP")  # the session survives all of that
    client.send(b"x NOOP " + b"a" * (128 * 1024) + b"\r\n")
    assert client.line().startswith(b"* BYE")
    client.close()
    # too many connections for one account
    sessions = []
    try:
        for _ in range(20):
            s = RawImap(server)
            s.login_token(server)
            sessions.append(s)
        extra = RawImap(server)
        tag, lines = extra.command(f"AUTHENTICATE XOAUTH2 {xoauth2(GP, token(server))}")
        assert lines[-1].startswith(f"{tag} NO [LIMIT]".encode()), lines
        extra.close()
    finally:
        for s in sessions:
            s.close()


def test_unauthenticated_client_is_logged_out_when_idle(server, monkeypatch):
    from mailserver.imap import session as imap_session

    monkeypatch.setattr(imap_session.Session, "idle_timeout", property(lambda self: 0.5))
    client = RawImap(server)
    time.sleep(1.0)
    assert client.line().startswith(b"* BYE")
    client.close()


def test_acl_administered_by_a_delegate_holding_the_a_right(server):
    assert server.cli("mailbox", "grant", URGENCES, "--rpps", "10002000023", "--rights", "lrswipkxtea") == 0
    shared = f'"Shared/{URGENCES}/INBOX"'
    admin = RawImap(server)
    admin.login_token(server, NURSE, "810002000023")
    acl = admin.ok(f"GETACL {shared}")[0]
    assert f" {URGENTIST_IDNAT} lrswipkxte".encode() in acl and b" 810002000023 lrswipkxtea" in acl
    assert b'"lr" s w i p k x t e a' in admin.ok(f"LISTRIGHTS {shared} {URGENTIST_IDNAT}")[0]
    admin.ok(f"SETACL {shared} {URGENTIST_IDNAT} -i")
    tag, lines = admin.command(f"SETACL {shared} {GP_IDNAT} lr")  # not a delegate: the directory decides that
    assert lines[-1].startswith(f"{tag} NO".encode())
    delegate = RawImap(server)
    delegate.login_token(server, URGENTIST, URGENTIST_IDNAT)
    tag, lines = delegate.command(f"APPEND {shared} \x00", b"Subject: x\r\n\r\ny\r\n")
    assert b"NO [NOPERM]" in lines[-1]
    delegate.close()
    admin.ok(f"DELETEACL {shared} {URGENTIST_IDNAT}")
    assert f" {URGENTIST_IDNAT} lrswipkxte".encode() in admin.ok(f"GETACL {shared}")[0]
    admin.close()
    changes = server.rows(select(audit).where(audit.c.action == "imap.setacl"))
    assert [r["actor"] for r in changes] == ["810002000023", "810002000023"]


def test_uid_store_copy_expunge_and_status(server):
    for n in range(3):
        deliver(server, [GP], f"message {n}")
    client = RawImap(server)
    client.login_token(server)
    assert client.ok("STATUS INBOX (MESSAGES UNSEEN UIDNEXT DELETED)") == \
        [b"* STATUS INBOX (MESSAGES 3 UNSEEN 3 UIDNEXT 4 DELETED 0)\r\n"]
    client.ok("SELECT INBOX")
    lines = client.ok("UID STORE 2:3 +FLAGS (\\Deleted)")
    assert [re.search(rb"UID (\d+)", ln)[1] for ln in untagged(lines, b"FETCH")] == [b"2", b"3"]
    tag, lines = client.command("UID COPY 2 Archive")
    assert re.search(rb"\[COPYUID \d+ 2 1\]", lines[-1])
    assert client.ok("UID EXPUNGE 3") == [b"* 3 EXPUNGE\r\n", b"* 2 RECENT\r\n"]  # only 3, though 2 is \Deleted too
    client.ok("CHECK")
    client.ok("UNSUBSCRIBE INBOX")
    lines = client.ok("LOGOUT")
    assert lines == [b"* BYE logging out\r\n"]
    client.close()


def test_headers_longer_than_the_first_read_are_read_whole(server):
    trace = "".join(f"X-Trace-{n}: {'x' * 70}\r\n" for n in range(150))  # ~12 KB of header
    raw = (f"From: {GP}\r\nTo: {NURSE}\r\n{trace}Subject: Bilan tardif\r\nMessage-ID: <long@msante.test>\r\n\r\n"
           "Corps.\r\n").encode()
    deliver(server, [NURSE], raw=raw)
    client = RawImap(server)
    client.login_token(server, NURSE, "810002000023")
    client.ok("EXAMINE INBOX")
    assert b'"Bilan tardif"' in client.ok("FETCH 1 ENVELOPE")[0]
    assert untagged(client.ok('SEARCH SUBJECT "bilan tardif"'), b"SEARCH") == [b"* SEARCH 1\r\n"]
    client.close()
