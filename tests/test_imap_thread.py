"""thread.py: RFC 5256's THREAD algorithms on real messages: REFERENCES with missing and
duplicate Message-IDs, loops in References, dummy parents and subject merging; ORDEREDSUBJECT;
siblings in sent-date order; the THREAD response's nesting."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from mailserver.imap.message import Message
from mailserver.imap.sort import SortFacts, reduce_subject
from mailserver.imap.syntax import Atom
from mailserver.imap.thread import parse_thread, render, thread
from tests.test_imap_search import toks

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)


def facts(seq: int, header: str, minutes: int = 0) -> SortFacts:
    return SortFacts(seq, T0 + timedelta(minutes=minutes), 100, Message(header.encode() + b"\r\n\r\nbody\r\n"))


def threads(algorithm: str, *messages: tuple[str, int] | str) -> str:
    """The THREAD response (sequence numbers) for messages 1, 2, … given as header or (header, minutes)."""
    found = [facts(i, *(m if isinstance(m, tuple) else (m,))) for i, m in enumerate(messages, 1)]
    return render(thread(algorithm, found), lambda f: f.seq).decode().removeprefix("* THREAD").strip()


def test_parse_thread():
    request = parse_thread(toks("references UTF-8 SEEN"))
    assert request.algorithm == "REFERENCES"
    assert request.search == (Atom("CHARSET"), Atom("UTF-8"), Atom("SEEN"))
    for line in ("", "references", "references UTF-8", "bogus UTF-8 ALL", "(references) UTF-8 ALL"):
        with pytest.raises(ValueError):
            parse_thread(toks(line))


@pytest.mark.parametrize("subject, reply", [
    ("hello", False), ("Re: hello", True), ("[list] hello", False), ("hello (fwd)", True), ("[fwd: x]", True),
    ("[list] Fwd: x", True), ("hello  ", False),
])
def test_reply_or_forward(subject, reply):
    assert reduce_subject(subject)[1] is reply


def test_references_parents_and_children():
    assert threads("REFERENCES",
                   "Message-ID: <a@x>", "Message-ID: <b@x>\r\nIn-Reply-To: <a@x>",
                   "Message-ID: <c@x>\r\nReferences: <a@x> <b@x>", "Message-ID: <d@x>\r\nReferences: <a@x>",
                   "Message-ID: <e@x>") == "(1 (2 3)(4))(5)"


def test_missing_and_duplicate_message_ids_stand_alone():
    assert threads("REFERENCES", "Subject: one", "Subject: two") == "(1)(2)"
    assert threads("REFERENCES", "Message-ID: <a@x>", "Message-ID: <a@x>") == "(1)(2)"
    # the second <b@x> counts as none: the reply to <b@x> goes under the first
    assert threads("REFERENCES", "Message-ID: <a@x>", "Message-ID: <b@x>\r\nReferences: <a@x>",
                   "Message-ID: <b@x>\r\nReferences: <a@x>", "Message-ID: <c@x>\r\nReferences: <b@x>") \
        == "(1 (2 4)(3))"


def test_loop_in_references_is_not_made():
    # <b> says <a> <c> (so c is b's parent); <c> then says <b>: that link would close a loop
    assert threads("REFERENCES", ("Message-ID: <a@x>", 30), ("Message-ID: <b@x>\r\nReferences: <a@x> <c@x>", 0),
                   ("Message-ID: <c@x>\r\nReferences: <b@x>", 10)) == "(3 2)(1)"
    assert threads("REFERENCES", "Message-ID: <a@x>\r\nReferences: <a@x>") == "(1)"


def test_dummy_parents():
    # two replies to a message not here: a dummy at the top holds them
    assert threads("REFERENCES", "References: <gone@x>", "References: <gone@x>") == "((1)(2))"
    # one reply to a missing message: no dummy at the top, the reply is the root
    assert threads("REFERENCES", "Message-ID: <b@x>\r\nReferences: <gone@x>") == "(1)"
    # a dummy inside a thread gives its children to its parent
    assert threads("REFERENCES", "Message-ID: <a@x>", "References: <a@x> <gone@x>",
                   "References: <a@x> <gone@x>") == "(1 (2)(3))"


def test_in_reply_to_only_when_references_has_no_id():
    assert threads("REFERENCES", "Message-ID: <a@x>", "Message-ID: <b@x>",
                   "References: junk\r\nIn-Reply-To: <b@x> <a@x>") == "(1)(2 3)"


def test_siblings_and_threads_in_sent_date_order_then_sequence():
    assert threads("REFERENCES",
                   ("Message-ID: <a@x>", 50),
                   ("Message-ID: <b@x>\r\nIn-Reply-To: <a@x>", 40),
                   ("Message-ID: <c@x>\r\nIn-Reply-To: <a@x>\r\nDate: Mon, 2 Mar 2026 09:00:00 +0000", 60),
                   ("Message-ID: <d@x>", 40), ("Message-ID: <e@x>", 40)) == "(4)(5)(1 (3)(2))"


def test_subjects_merge_top_level_threads():
    # a reply whose parent is missing joins the thread of its base subject
    assert threads("REFERENCES", "Message-ID: <a@x>\r\nSubject: foo",
                   "Message-ID: <b@x>\r\nReferences: <c@x>\r\nSubject: Re: foo") == "(1 2)"
    # two originals of one subject: a dummy holds both
    assert threads("REFERENCES", "Subject: foo", "Subject: FOO", "Subject: bar") == "((1)(2))(3)"
    # the original is held over the reply even when the reply comes first
    assert threads("REFERENCES", ("Subject: Re: foo", 0), ("Subject: foo", 10)) == "(2 1)"
    # empty base subjects never merge
    assert threads("REFERENCES", "Subject: Re:", "Subject: ") == "(1)(2)"


def test_ordered_subject():
    assert threads("ORDEREDSUBJECT", ("Subject: b", 5), ("Subject: a", 1), ("Subject: Re: b", 2),
                   ("Subject: A", 0), ("Subject: re: a", 3), ("Subject: c", 9)) \
        == "(4 (2)(5))(3 1)(6)"


def test_deep_chain_and_empty_result():
    chain = ["Message-ID: <m0@x>"] + [f"Message-ID: <m{i}@x>\r\nIn-Reply-To: <m{i - 1}@x>" for i in range(1, 1500)]
    assert threads("REFERENCES", *chain) == "(" + " ".join(str(i) for i in range(1, 1501)) + ")"
    assert render([], lambda f: f.seq) == b"* THREAD\r\n"
