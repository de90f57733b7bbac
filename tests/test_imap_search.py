"""search.py: every RFC 3501 SEARCH key, MODSEQ (RFC 7162) and RETURN (RFC 4731), parsed from
tokens and evaluated against real messages."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest

from mailserver.imap.message import Message
from mailserver.imap.search import All, And, BadCharset, Flag, Not, Or, parse_search
from mailserver.imap.syntax import Atom, PList, String
from tests.test_imap_message import EIGHTBIT, FORWARD, LATIN1, MIXED, PLAIN


@dataclass
class Facts:
    seq: int
    uid: int
    raw: bytes
    flags: frozenset[str] = frozenset()
    internaldate: datetime = datetime(2024, 3, 10, 23, 30, tzinfo=timezone.utc)
    modseq: int = 1
    loads: int = 0

    @property
    def size(self) -> int:
        return len(self.raw)

    def message(self) -> Message:
        self.loads += 1
        return Message(self.raw)


def toks(line: str) -> list:
    """A tiny tokenizer for test readability: atoms, "quoted" strings, (lists)."""
    out: list = [[]]
    i = 0
    while i < len(line):
        c = line[i]
        if c == " ":
            i += 1
        elif c == "(":
            out.append([])
            i += 1
        elif c == ")":
            items = out.pop()
            out[-1].append(PList(tuple(items)))
            i += 1
        elif c == '"':
            j = line.index('"', i + 1)
            out[-1].append(String(line[i + 1:j].encode()))
            i = j + 1
        else:
            j = i
            while j < len(line) and line[j] not in ' ()"':
                j += 1
            out[-1].append(Atom(line[i:j]))
            i = j
    return out[0]


MAILBOX = [
    Facts(1, 10, PLAIN, frozenset({"\\Seen", "\\Answered", "$Label1"}), modseq=5),
    Facts(2, 20, MIXED, frozenset({"\\Flagged", "\\Recent"}),
          datetime(2024, 3, 11, 0, 30, tzinfo=timezone(timedelta(hours=2)))),
    Facts(3, 30, FORWARD, frozenset({"\\Deleted", "\\Seen"}), datetime(2024, 3, 12, 8, 0), modseq=9),
    Facts(4, 40, EIGHTBIT, frozenset({"\\Draft", "\\Recent", "\\Seen"}), modseq=7),
    Facts(5, 50, LATIN1, frozenset(), modseq=12),
]


def run(line: str, *, utf8: bool = False) -> list[int]:
    query = parse_search(toks(line), utf8_default=utf8)
    return [f.seq for f in MAILBOX if query.matches(f, largest_seq=5, largest_uid=50)]


@pytest.mark.parametrize("line, seqs", [
    ("ALL", [1, 2, 3, 4, 5]),
    ("ANSWERED", [1]), ("UNANSWERED", [2, 3, 4, 5]),
    ("DELETED", [3]), ("UNDELETED", [1, 2, 4, 5]),
    ("DRAFT", [4]), ("UNDRAFT", [1, 2, 3, 5]),
    ("FLAGGED", [2]), ("UNFLAGGED", [1, 3, 4, 5]),
    ("SEEN", [1, 3, 4]), ("UNSEEN", [2, 5]),
    ("RECENT", [2, 4]), ("OLD", [1, 3, 5]), ("NEW", [2]),
    ("KEYWORD $label1", [1]), ("UNKEYWORD $Label1", [2, 3, 4, 5]), ("seen keyword \\answered", [1]),
    ("LARGER 400", [2, 3]), ("SMALLER 208", [4, 5]),
    # sequence sets and UIDs, "*" being the largest
    ("2:3", [2, 3]), ("*", [5]), ("4:*,1", [1, 4, 5]), ("UID 20,40:*", [2, 4, 5]), ("UID 60:*", [5]),
    # boolean structure: implicit AND, NOT, OR, groups
    ("SEEN UNDELETED", [1, 4]), ("NOT SEEN", [2, 5]), ("OR DRAFT FLAGGED", [2, 4]),
    ("OR (SEEN DELETED) 5", [3, 5]), ("NOT (OR 1 2) NOT 5", [3, 4]), ("(ALL)", [1, 2, 3, 4, 5]),
    # INTERNALDATE compared in UTC: message 2 arrived on 2024-03-10 22:30 UTC
    ("ON 10-Mar-2024", [1, 2, 4, 5]), ("SINCE 11-mar-2024", [3]), ("BEFORE \"12-Mar-2024\"", [1, 2, 4, 5]),
    # Date: header compared in the sender's zone
    ("SENTON 7-Feb-1994", [1]), ("SENTBEFORE 8-Feb-1994", [1]), ("SENTSINCE 1-Mar-2022", []),
    ("NOT SENTON 7-Feb-1994", [2, 3, 4, 5]),
    # header keys on decoded text, case-insensitively
    ("FROM doe", [1]), ("FROM \"sender@EXAMPLE\"", [2]), ("TO bjorn", [1]), ("TO BJÖRN", [1]),
    ("CC dave", [1]), ("CC team", [1]), ("BCC x", []), ("SUBJECT réunion", [1]), ("SUBJECT \"ÉTÉ 2024\"", [4]),
    ("SUBJECT \"CAFÉ CRÈME\"", [5]), ("FROM rené", [4]), ("HEADER Message-ID B27397", [1]),
    ("HEADER Content-Transfer-Encoding \"\"", [4, 5]), ("HEADER X-Missing \"\"", []),
    # bodies: transfer encoding and charset undone, encapsulated messages included
    ("BODY résultats", [2]), ("BODY \"d'analyse joints\"", [2]), ("BODY \"HI THERE\"", [3]),
    ("BODY clinique", [4]), ("BODY \"CAFÉ CRÈME\"", [5]), ("BODY \"plaît\"", [5]), ("BODY caf=E9", []),
    ("BODY report", []), ("TEXT report", [2]), ("TEXT monday", [1]), ("TEXT \"fwd: hi\"", [3]),
    # CONDSTORE
    ("MODSEQ 7", [3, 4, 5]), ("MODSEQ \"/flags/\\\\Seen\" all 9", [3, 5]), ("MODSEQ 0", [1, 2, 3, 4, 5]),
])
def test_search_keys(line, seqs):
    assert run(line) == seqs


def test_charset_and_return_options():
    q = parse_search(toks("RETURN (min COUNT min) CHARSET utf-8 SEEN"), utf8_default=False)
    assert (q.returns, q.charset, q.key, q.needs_message, q.uses_modseq) == (
        ("MIN", "COUNT"), "UTF-8", Flag("\\Seen", True), False, False)
    assert parse_search(toks("RETURN () ALL"), utf8_default=True).returns == ("ALL",)
    assert parse_search(toks("ALL"), utf8_default=True).charset == "UTF-8"
    q = parse_search(toks("CHARSET US-ASCII NOT OR 1 2 ALL"), utf8_default=False)
    assert q.returns is None and q.charset == "US-ASCII"
    assert isinstance(q.key, And) and isinstance(q.key.keys[0], Not) and isinstance(q.key.keys[0].key, Or)
    assert q.key.keys[1] == All()
    q = parse_search(toks("OR BODY x MODSEQ 3"), utf8_default=False)
    assert q.needs_message and q.uses_modseq
    with pytest.raises(BadCharset):
        parse_search(toks("CHARSET ISO-8859-1 BODY x"), utf8_default=False)
    assert issubclass(BadCharset, ValueError)


def test_search_strings_as_literals_and_utf8():
    q = parse_search([Atom("BODY"), String("ÉTÉ".encode(), literal=True)], utf8_default=True)
    assert [f.seq for f in MAILBOX if q.matches(f, largest_seq=5, largest_uid=50)] == [4]
    with pytest.raises(ValueError):
        parse_search([Atom("BODY"), String(b"\xff\xfe")], utf8_default=False)


ADDRESSED = [  # imaptest's search-addresses messages
    b"From: user-from@domain.org\r\nTo: user-to@domain.org\r\nCc: user-cc@domain.org\r\n"
    b"Bcc: user-bcc@domain.org\r\n\r\nbody\r\n",
    b"From: RealFrom <user-from@domain.org>\r\nTo: RealTo <user-to@domain.org>\r\n\r\nbody2\r\n",
    b"From: <user-from (comment)@ (comment) domain.org>\r\nTo: <user-to@domain.org>\r\n\r\nbody3\r\n",
    b"From: user-from@domain.org (RealFrom)\r\nTo: user-to@domain.org (RealTo)\r\n\r\nbody4\r\n",
    b"From: user-from1@domain.org, user-from2@domain.org\r\n\r\nbody5\r\n",
    b"From: =?utf-8?q?Ren=C3=A9?= <rene@domain.org>\r\nTo: groupname: groupuser1@domain.org, "
    b"groupuser2@domain.org;,\r\n  groupname2: groupuser3@domain.org;\r\n\r\nbody6\r\n",
]


@pytest.mark.parametrize("line, seqs", [
    ("FROM user-from@domain.org", [1, 2, 3, 4]),  # message 3 spells it with comments inside
    ("FROM realfrom", [2, 4]), ("TO realto", [2, 4]), ("FROM ser-fro", [1, 2, 3, 4, 5]),
    ("FROM \"<user-from@domain.org>\"", [1, 2, 3, 4]), ("FROM comment", []),
    ("FROM user-from2", [5]), ("FROM rené", [6]), ("FROM utf-8", []),
    ("TO groupname", [6]), ("TO groupname2", [6]), ("TO groupuser3", [6]), ("TO groupuser4", []),
])
def test_address_keys_match_the_parsed_addresses(line, seqs):
    """Issue 12 item 9: FROM/TO/CC/BCC look at the addresses as ENVELOPE shows them (display
    name decoded, comments and spacing gone, group names), not at the raw header text."""
    query = parse_search(toks(line), utf8_default=True)
    assert [n for n, raw in enumerate(ADDRESSED, 1)
            if query.matches(Facts(n, n, raw), largest_seq=6, largest_uid=6)] == seqs


def test_body_search_looks_inside_delivery_status_parts():
    """A DSN's Original-Envelope-Id (message/delivery-status, RFC 3464) must be findable."""
    dsn = (b"From: MAILER-DAEMON@msante.test\r\nContent-Type: multipart/report; report-type=delivery-status; "
           b"boundary=r\r\n\r\n--r\r\nContent-Type: text/plain\r\n\r\nNot delivered.\r\n"
           b"--r\r\nContent-Type: message/delivery-status\r\n\r\nOriginal-Envelope-Id: env-4242\r\n"
           b"Reporting-MTA: dns; msante.test\r\n\r\nFinal-Recipient: rfc822; x@y.test\r\nAction: failed\r\n"
           b"--r\r\nContent-Type: application/pdf\r\n\r\nenv-4242 in a binary part\r\n--r--\r\n")
    for line, found in (("BODY env-4242", True), ("TEXT \"action: failed\"", True), ("BODY \"not delivered\"", True)):
        assert parse_search(toks(line), utf8_default=True).matches(Facts(1, 1, dsn), largest_seq=1, largest_uid=1) \
            is found, line
    pdf_only = dsn.replace(b"Original-Envelope-Id: env-4242", b"Original-Envelope-Id: other")
    assert not parse_search(toks("BODY env-4242"), utf8_default=True).matches(
        Facts(1, 1, pdf_only), largest_seq=1, largest_uid=1)  # application/* is not text


def test_message_is_loaded_only_when_needed_and_once():
    facts = Facts(1, 1, PLAIN, frozenset({"\\Seen"}))
    parse_search(toks("SEEN LARGER 10 UID 1"), utf8_default=False).matches(facts, largest_seq=1, largest_uid=1)
    assert facts.loads == 0
    parse_search(toks("BODY alice TEXT alice FROM doe SENTON 7-Feb-1994"), utf8_default=False).matches(
        facts, largest_seq=1, largest_uid=1)
    assert facts.loads == 1
    parse_search(toks("DELETED BODY alice"), utf8_default=False).matches(facts, largest_seq=1, largest_uid=1)
    assert facts.loads == 1  # DELETED is false: the body is not read


def test_searchres_save_and_dollar():
    """RFC 5182: RETURN (SAVE) is an option like the others; `$` is the saved UIDs, usable
    anywhere a key is (an empty set matches nothing)."""
    assert parse_search(toks("RETURN (SAVE) ALL"), utf8_default=False).returns == ("SAVE",)
    assert parse_search(toks("RETURN (save MIN) ALL"), utf8_default=False).returns == ("SAVE", "MIN")
    saved = frozenset({20, 30, 50})

    def seqs(line: str, uids: frozenset[int]) -> list[int]:
        query = parse_search(toks(line), utf8_default=False, saved=uids)
        return [f.seq for f in MAILBOX if query.matches(f, largest_seq=5, largest_uid=50)]

    assert seqs("$", saved) == [2, 3, 5]
    assert seqs("SEEN $", saved) == [3]
    assert seqs("OR $ 1", saved) == [1, 2, 3, 5]
    assert seqs("NOT ($)", saved) == [1, 4]
    assert seqs("$", frozenset()) == []


def test_within_older_and_younger():
    """RFC 5032: intervals in seconds before now, against INTERNALDATE (naive dates are UTC)."""
    now = datetime.now(timezone.utc)
    box = [Facts(1, 1, PLAIN, internaldate=now - timedelta(days=2)),
           Facts(2, 2, PLAIN, internaldate=(now - timedelta(hours=2)).replace(tzinfo=None)),
           Facts(3, 3, PLAIN, internaldate=now - timedelta(seconds=10))]

    def seqs(line: str) -> list[int]:
        query = parse_search(toks(line), utf8_default=False)
        return [f.seq for f in box if query.matches(f, largest_seq=3, largest_uid=3)]

    assert seqs("OLDER 86400") == [1]
    assert seqs("YOUNGER 86400") == [2, 3]
    assert seqs("YOUNGER 3600") == [3]
    assert seqs("OLDER 3600 YOUNGER 86400") == [2]
    assert seqs("NOT OLDER 60") == [3]


@pytest.mark.parametrize("line", [
    "", "BOGUS", "FROM", "OR SEEN", "NOT", "LARGER x", "LARGER -1", "ON 31-Feb-2024", "ON 2024-02-01",
    "SINCE 1-Foo-2024", "UID", "UID abc", "0", "1:0", "$,1", "1,$", "KEYWORD (a)", "RETURN (SAVE ALL",
    "RETURN MIN ALL", "RETURN (MIN)", "CHARSET", "()", "\"string\"", "MODSEQ", "MODSEQ \"/flags/x\" bad 3",
    "MODSEQ x", "HEADER Subject", "OLDER", "OLDER 0", "YOUNGER -5", "YOUNGER 4294967296",
])
def test_bad_syntax(line):
    with pytest.raises(ValueError):
        parse_search(toks(line), utf8_default=False)
