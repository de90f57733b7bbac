"""Rights take effect at once in live IMAP sessions: a delegation revoked or IMAP rights changed
(by the CLI, a separate engine and bus as another process would have, or by a delegate holding
"a") reach sessions already logged in. Each test prints how long the change took to show."""
from __future__ import annotations

import time

from sqlalchemy import select

from store.schema import audit

from .imap_client import NURSE, URGENCES, URGENTIST, URGENTIST_IDNAT, RawImap
from .test_imap import deliver

SHARED = f'"Shared/{URGENCES}/INBOX"'
BOUND = 2.0  # seconds from the change to its effect; a poll of the store takes 0.2 s on SQLite


def delegate_session(server, *, select_shared: bool = True) -> RawImap:
    client = RawImap(server)
    client.login_token(server, URGENTIST, URGENTIST_IDNAT)
    if select_shared:
        client.ok(f"SELECT {SHARED}")
    return client


def idle(client: RawImap) -> None:
    client.send(b"i1 IDLE\r\n")
    assert client.line().startswith(b"+ "), "no IDLE continuation"


def timed_bye(client: RawImap, change) -> float:  # noqa: ANN001 - the change, a callable
    """Seconds from the start of `change` to the `* BYE` the client reads (after any other
    untagged news IDLE pushes)."""
    started = time.monotonic()
    change()
    while not (line := client.line()).startswith(b"* BYE"):
        assert line.startswith(b"* "), line
    elapsed = time.monotonic() - started
    assert line.startswith(b"* BYE") and URGENCES.encode() in line, line
    return elapsed


def denied(server, action: str) -> list[dict]:
    return server.rows(select(audit).where(audit.c.action == action, audit.c.outcome == "denied",
                                           audit.c.actor == URGENTIST_IDNAT))


def test_revoked_delegation_ends_idle_selected_and_listing_sessions(server):
    deliver(server, [URGENCES], "Admission de M. TECHER")
    idling, selected, browsing = delegate_session(server), delegate_session(server), \
        delegate_session(server, select_shared=False)
    assert URGENCES.encode() in b"".join(browsing.ok('LIST "" "*"'))
    idle(idling)

    elapsed = timed_bye(idling, lambda: server.cli("mailbox", "revoke", URGENCES, "--rpps", URGENTIST_IDNAT[1:]))
    print(f"\nCLI revoke -> BYE in the IDLE session on the shared box: {elapsed * 1000:.0f} ms")
    assert elapsed < BOUND

    selected.send(b"n1 NOOP\r\n")  # the next command of a session that has the box selected
    assert selected.line().startswith(b"* BYE")
    assert URGENCES.encode() not in b"".join(browsing.ok('LIST "" "*"'))
    tag, lines = browsing.command(f"SELECT {SHARED}")
    assert lines[-1].startswith(f"{tag} NO [NONEXISTENT]".encode()), lines
    browsing.ok("SELECT INBOX")  # her own box is still hers

    started = time.monotonic()
    assert server.cli("mailbox", "grant", URGENCES, "--rpps", URGENTIST_IDNAT[1:]) == 0  # given back
    while URGENCES.encode() not in b"".join(browsing.ok('LIST "" "*"')):
        assert time.monotonic() - started < BOUND, "the delegation granted again never reached the session"
    elapsed = time.monotonic() - started
    print(f"CLI grant -> the box is back in LIST without logging in again: {elapsed * 1000:.0f} ms")
    browsing.ok(f"SELECT {SHARED}")
    for client in (idling, selected, browsing):
        client.close()
    withdrawn = [r for r in denied(server, "imap.select") if '"rights withdrawn"' in r["detail"]]
    assert len(withdrawn) == 2 and all(r["target"] == URGENCES for r in withdrawn)
    assert any("no such shared box" in r["detail"] for r in denied(server, "imap.select"))


def test_rights_set_by_the_cli_apply_to_the_next_command_and_end_idle(server):
    deliver(server, [URGENCES], "Admission")
    selected, idling = delegate_session(server), delegate_session(server)
    idle(idling)
    started = time.monotonic()
    assert server.cli("mailbox", "grant", URGENCES, "--rpps", URGENTIST_IDNAT[1:], "--rights", "lrs") == 0
    while not selected.ok(f"MYRIGHTS {SHARED}")[0].endswith(b" lrs\r\n"):
        assert time.monotonic() - started < BOUND, "the new rights never reached the session"
    elapsed = time.monotonic() - started
    print(f"\nCLI rights lrs -> the selected session's next commands use them: {elapsed * 1000:.0f} ms")
    tag, lines = selected.command("STORE 1 +FLAGS (\\Deleted)")
    assert lines[-1].startswith(f"{tag} NO [NOPERM]".encode()), lines
    tag, lines = selected.command("EXPUNGE")
    assert lines[-1].startswith(f"{tag} NO [NOPERM]".encode()), lines
    assert [r["target"] for r in denied(server, "imap.expunge")] == [URGENCES]
    selected.ok("STORE 1 +FLAGS (\\Seen)")  # "s" is still granted

    elapsed = timed_bye(idling, lambda: server.cli("mailbox", "grant", URGENCES, "--rpps", URGENTIST_IDNAT[1:],
                                                   "--rights", "l"))
    print(f"\nCLI rights without r -> BYE in the IDLE session: {elapsed * 1000:.0f} ms")
    assert elapsed < BOUND
    selected.send(b"n1 NOOP\r\n")
    assert selected.line().startswith(b"* BYE")
    for client in (selected, idling):
        client.close()


def test_acl_changed_by_an_administering_delegate_reaches_the_other_delegate(server):
    assert server.cli("mailbox", "grant", URGENCES, "--rpps", "10002000023", "--rights", "lrswipkxtea") == 0
    deliver(server, [URGENCES], "Admission")
    admin = RawImap(server)
    admin.login_token(server, NURSE, "810002000023")
    selected, idling = delegate_session(server), delegate_session(server)
    idle(idling)
    admin.ok(f"SETACL {SHARED} {URGENTIST_IDNAT} -i")
    tag, lines = selected.command(f"COPY 1 {SHARED}")
    assert lines[-1].startswith(f"{tag} NO [NOPERM]".encode()), lines

    elapsed = timed_bye(idling, lambda: admin.ok(f"SETACL {SHARED} {URGENTIST_IDNAT} -r"))
    print(f"\nSETACL -r by the administering delegate -> BYE in the IDLE session: {elapsed * 1000:.0f} ms")
    assert elapsed < BOUND
    admin.ok(f"DELETEACL {SHARED} {URGENTIST_IDNAT}")  # back to the delegates' default rights
    selected.ok("NOOP")  # the box was given back before this session's next command
    selected.ok(f"COPY 1 {SHARED}")
    for client in (admin, selected, idling):
        client.close()
