"""notify.py: NOTIFY's command (RFC 5465 §3 and §5) parsed from tokens, and which events each
mailbox is owed. The watching itself runs over sockets in test_imap_extensions.py."""
from __future__ import annotations

import pytest

from mailserver.imap.notify import BadEvent, parse_notify
from mailserver.imap.syntax import text
from tests.test_imap_search import toks


def parse(line: str):
    return parse_notify(toks(line), text)


def test_notify_none_and_set():
    assert parse("NONE") is None
    spec = parse("SET STATUS (SELECTED (MessageNew MessageExpunge flagchange)) (INBOXES (MessageNew)) "
                 "(subtree (Projets \"Shared/x@y\") (MailboxName)) (mailboxes Archive (MessageExpunge)) "
                 "(personal NONE)")
    assert spec.status
    assert spec.selected == {"MessageNew", "MessageExpunge", "FlagChange"}
    assert [(g.kind, g.names, set(g.events)) for g in spec.groups] == [
        ("INBOXES", (), {"MessageNew"}), ("SUBTREE", ("Projets", "Shared/x@y"), {"MailboxName"}),
        ("MAILBOXES", ("Archive",), {"MessageExpunge"})]
    assert not parse("SET (selected-delayed NONE) (subscribed (SubscriptionChange))").status


def test_events_for_first_matching_group():
    spec = parse("SET (mailboxes Projets/a (MessageNew)) (subtree Projets (MailboxName)) (inboxes (MessageExpunge)) "
                 "(subscribed (FlagChange)) (personal (SubscriptionChange))")

    def events(name: str, inbox: bool = False, personal: bool = True, subscribed: bool = False) -> set[str]:
        return set(spec.events_for(name, inbox=inbox, personal=personal, subscribed=subscribed))

    assert events("Projets/a") == {"MessageNew"}
    assert events("Projets/a/b") == events("Projets") == {"MailboxName"}
    assert events("Projetsx") == {"SubscriptionChange"}  # a subtree is Projets and below, not its prefix
    assert events("INBOX", inbox=True) == events("Shared/x@y/INBOX", inbox=True, personal=False) == {"MessageExpunge"}
    assert events("Notes", subscribed=True) == {"FlagChange"}
    assert events("Shared/x@y/Notes", personal=False) == set()


@pytest.mark.parametrize("line", [
    "", "SET", "SET STATUS", "BOGUS", "SET selected", "SET (selected)", "SET (selected (MessageNew))",
    "SET (selected (MessageExpunge FlagChange))", "SET (selected (FlagChange))", "SET (selected NONE) (selected NONE)",
    "SET (inboxes (Bogus))", "SET (inboxes ())", "SET (subtree (MessageNew))", "SET (mailboxes () (MessageNew))",
    "SET (nowhere (MessageNew))", "SET (selected (MessageNew (UID) MessageExpunge))",
])
def test_bad_notify(line):
    with pytest.raises(ValueError):
        parse(line)


def test_events_of_absent_extensions_are_badevent():
    for event in ("AnnotationChange", "MailboxMetadataChange", "ServerMetadataChange"):
        with pytest.raises(BadEvent):
            parse(f"SET (personal (MessageNew {event}))")
