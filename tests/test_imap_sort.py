"""sort.py: SORT's criteria (RFC 5256), its base subject (§2.1) and ESORT's RETURN (RFC 5267),
parsed from tokens and applied to real messages."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from mailserver.imap.message import Message
from mailserver.imap.sort import SortFacts, base_subject, parse_sort, sort
from mailserver.imap.syntax import Atom
from tests.test_imap_search import toks


@pytest.mark.parametrize("subject, base", [
    ("Re: hello", "hello"), ("RE:hello", "hello"), ("Fwd: Re: fw: x", "x"), ("hello (fwd)", "hello"),
    ("[foo] Fwd: [bar] Re: fw: b (fWd)  (fwd)", "b"), ("Re: [FWD: c]", "c"), ("[xyz]", "[xyz]"),
    ("re: [fwd: [fwd: re: [fwd: babylon]]]", "babylon"), ("Ad: Re: x", "Ad: Re: x"), ("b (a)", "b (a)"),
    ("  spaced \t  out ", "spaced out"), ("[list] [tag] real", "real"), ("", ""),
])
def test_base_subject(subject, base):
    assert base_subject(subject) == base


def test_parse_sort():
    request = parse_sort(toks("(REVERSE date subject) UTF-8 SEEN"))
    assert request.returns is None
    assert request.criteria == (("DATE", True), ("SUBJECT", False))
    assert request.search == (Atom("CHARSET"), Atom("UTF-8"), Atom("SEEN"))
    assert parse_sort(toks("RETURN () (size) us-ascii ALL")).returns == ("ALL",)
    assert parse_sort(toks("return (min COUNT) (arrival) us-ascii ALL")).returns == ("MIN", "COUNT")


@pytest.mark.parametrize("line", [
    "", "(date)", "(date) UTF-8", "() UTF-8 ALL", "(bogus) UTF-8 ALL", "(reverse) UTF-8 ALL",
    "(reverse reverse date) UTF-8 ALL", "date UTF-8 ALL", "RETURN (SAVE) (date) UTF-8 ALL", "RETURN MIN (date) x ALL",
])
def test_bad_sort(line):
    with pytest.raises(ValueError):
        parse_sort(toks(line))


def test_sort_orders_by_criteria_then_sequence():
    def facts(seq: int, day: int, size: int, header: str) -> SortFacts:
        return SortFacts(seq, datetime(2026, 3, day, tzinfo=timezone.utc), size,
                         Message(header.encode() + b"\r\n\r\nbody\r\n"))

    found = [facts(1, 3, 300, "From: Zoe <zoe@x.test>\r\nSubject: Re: beta\r\nDate: Mon, 2 Mar 2026 10:00:00 +0000"),
             facts(2, 1, 100, "From: anne@x.test\r\nSubject: alpha\r\nDate: Mon, 2 Mar 2026 12:00:00 +0200"),
             facts(3, 2, 300, "From: Bob <BOB@x.test>\r\nSubject: Fwd: Beta"),
             facts(4, 2, 200, "From: team: anne@x.test;\r\nSubject: [list] alpha (fwd)\r\nDate: nonsense")]

    def order(criteria: str) -> list[int]:
        return [f.seq for f in sort(parse_sort(toks(f"({criteria}) UTF-8 ALL")), found)]

    assert order("arrival") == [2, 3, 4, 1]
    assert order("reverse arrival") == [1, 3, 4, 2]  # 3 and 4 arrived together: sequence order
    assert order("size") == [2, 4, 1, 3]
    assert order("reverse size arrival") == [3, 1, 4, 2]
    # 1 and 2 were both sent at 10:00 UTC; 3 and 4 have no usable Date: they sort by arrival (2 Mar)
    assert order("date") == [3, 4, 1, 2]
    assert order("from") == [2, 3, 4, 1]  # mailboxes, case folded: anne, BOB, team (a group), zoe
    assert order("subject reverse arrival") == [4, 2, 1, 3]
    assert order("reverse subject") == [1, 3, 2, 4]
    assert order("cc") == [1, 2, 3, 4]  # all empty: sequence order
