"""mailserver.imap.encode and mailserver.imap.seqset."""
import random
from datetime import date, datetime, timedelta, timezone

import pytest

from mailserver.imap.encode import (
    NulOctet,
    astring,
    date_time,
    literal,
    mailbox_name,
    nstring,
    parse_date,
    parse_date_time,
    plist,
    quoted_or_literal,
    utf7_decode,
    utf7_encode,
)
from mailserver.imap.parser import CommandParser
from mailserver.imap.seqset import SequenceSet, compress


def test_quoted_when_safe():
    assert quoted_or_literal("Hello") == b'"Hello"'
    assert quoted_or_literal(b'say "hi" \\o/') == b'"say \\"hi\\" \\\\o/"'
    assert quoted_or_literal("") == b'""'


@pytest.mark.parametrize("value, utf8", [
    (b"two\r\nlines", False), ("été".encode(), False), (b"x" * 1025, True)])
def test_literal_otherwise(value, utf8):
    assert quoted_or_literal(value, utf8=utf8) == b"{%d}\r\n" % len(value) + value


def test_nul_goes_only_in_a_literal8():
    """Issue 12 item 5: never a NUL in a quoted string or a plain literal."""
    with pytest.raises(NulOctet):
        quoted_or_literal(b"nul\x00", utf8=True)
    with pytest.raises(NulOctet):
        literal(b"nul\x00")
    assert literal(b"nul\x00", binary=True) == b"~{4}\r\nnul\x00"
    assert literal(b"no nul", binary=True) == b"{6}\r\nno nul"


def test_utf8_may_be_quoted_once_enabled():
    assert quoted_or_literal("été", utf8=True) == '"été"'.encode()


def test_encoded_strings_parse_back():
    """What the server sends as strings is what the client parser would read."""
    for value in [b'a"b\\c', b"x" * 2000, b"\r\n", b"plain"]:
        encoded = quoted_or_literal(value)
        parser = CommandParser()
        parser.feed(b"t X " + encoded.replace(b"}\r\n", b"+}\r\n", 1) + b"\r\n")
        assert parser.next_command().args[0].value == value


def test_nstring():
    assert nstring(None) == b"NIL"
    assert nstring("NIL") == b'"NIL"'
    assert nstring(b"") == b'""'


@pytest.mark.parametrize("value, encoded", [
    ("INBOX", b"INBOX"), ("a]b", b"a]b"), ("Sent Items", b'"Sent Items"'), ("", b'""'),
    ("nil", b'"nil"'), ("a*", b'"a*"'), ("a%", b'"a%"'), ("(x)", b'"(x)"'), ("a\\b", b'"a\\\\b"'),
])
def test_astring(value, encoded):
    assert astring(value) == encoded


def test_plist():
    assert plist([b"\\Seen", b"$Junk"]) == b"(\\Seen $Junk)"
    assert plist([]) == b"()"


def test_mailbox_name():
    assert mailbox_name("Boîte de réception", utf8=False) == b'"Bo&AO4-te de r&AOk-ception"'
    assert mailbox_name("Boîte de réception", utf8=True) == '"Boîte de réception"'.encode()
    assert mailbox_name("Archives", utf8=False) == b"Archives"


def test_utf7_rfc3501_example():
    assert utf7_encode("~peter/mail/台北/日本語") == "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
    assert utf7_decode("~peter/mail/&U,BTFw-/&ZeVnLIqe-") == "~peter/mail/台北/日本語"


def test_utf7_roundtrip():
    for name in ["A&B", "&", "&-", "Été 2024", "😀 emoji", "tab\there", "a/b.c", "ü&ü"]:
        assert utf7_decode(utf7_encode(name)) == name
    assert utf7_encode("A&B") == "A&-B"
    assert utf7_encode("😀") == "&2D3eAA-"  # a surrogate pair in UTF-16


@pytest.mark.parametrize("bad", [
    "été",  # 8-bit
    "a&b",  # unterminated shift
    "&Jjo!",  # not base64
    "&AGE-",  # encodes "a", which must stand for itself
    "&AO4-&AOk-",  # two adjacent shifts instead of one
    "&AO5-",  # non-zero padding bits
    "&AA-",  # one byte: half a UTF-16 unit
    "&2D0-",  # lone surrogate
    "&A-",  # impossible base64 length
    "a\x00b",
])
def test_utf7_decode_rejects(bad):
    with pytest.raises(ValueError):
        utf7_decode(bad)


def test_date_time():
    paris = timezone(timedelta(hours=2))
    assert date_time(datetime(2024, 7, 1, 9, 5, 3, tzinfo=paris)) == b'" 1-Jul-2024 09:05:03 +0200"'
    newfoundland = timezone(-timedelta(hours=3, minutes=30))
    assert date_time(datetime(1994, 2, 17, 23, 0, 0, tzinfo=newfoundland)) == b'"17-Feb-1994 23:00:00 -0330"'
    assert date_time(datetime(2024, 1, 1)) == b'" 1-Jan-2024 00:00:00 +0000"'


def test_parse_date_time():
    expected = datetime(2024, 7, 1, 9, 5, 3, tzinfo=timezone(timedelta(hours=2)))
    for text in [" 1-Jul-2024 09:05:03 +0200", "01-jul-2024 09:05:03 +0200", "1-JUL-2024 09:05:03 +0200"]:
        parsed = parse_date_time(text)
        assert parsed == expected and parsed.utcoffset() == timedelta(hours=2)
    assert parse_date_time("17-Feb-1994 23:00:00 -0330").utcoffset() == -timedelta(hours=3, minutes=30)
    assert parse_date_time(date_time(expected).decode()[1:-1]) == expected


@pytest.mark.parametrize("bad", [
    "31-Feb-2024 09:05:03 +0200", "1-Foo-2024 09:05:03 +0200", "1-Jul-2024 24:00:00 +0200",
    "1-Jul-2024 09:05:03 +0260", "1-Jul-2024 09:05:03 +2400", "1-Jul-2024 09:05:03", "1-Jul-2024",
    '"1-Jul-2024 09:05:03 +0200"', "1-Jul-2024  09:05:03 +0200",
])
def test_parse_date_time_rejects(bad):
    with pytest.raises(ValueError):
        parse_date_time(bad)


def test_parse_date():
    assert parse_date("1-Feb-1994") == date(1994, 2, 1)
    assert parse_date("01-feb-1994") == date(1994, 2, 1)
    for bad in ["1-Feb-94", "Feb-1-1994", "30-Feb-1994", "1-Feb-1994 ", "", "123-Feb-1994"]:
        with pytest.raises(ValueError):
            parse_date(bad)


# Sequence sets

def test_seqset_parse():
    assert SequenceSet.parse("1:3,5,7:*,9:8").ranges == ((1, 3), (5, 5), (7, None), (9, 8))
    assert SequenceSet.parse("*").ranges == ((None, None),)
    assert SequenceSet.parse("4294967295").ranges == ((4294967295, 4294967295),)


@pytest.mark.parametrize("bad", [
    "", "0", "1:0", "01", "1,", ",1", "1::2", "$", "a", "1 2", "-1", "4294967296", "99999999999", "1:*:2", "１"])
def test_seqset_rejects(bad):
    with pytest.raises(ValueError):
        SequenceSet.parse(bad)


def test_seqset_contains():
    numbers = SequenceSet.parse("2,4:6,10:*")
    assert [n for n in range(1, 13) if numbers.contains(n, largest=11)] == [2, 4, 5, 6, 10, 11]
    assert SequenceSet.parse("*:3").contains(4, largest=5)
    assert not SequenceSet.parse("*").contains(4, largest=5)


def test_seqset_resolve():
    assert SequenceSet.parse("5:3,1,4,*").resolve(10) == [1, 3, 4, 5, 10]
    assert SequenceSet.parse("7:*").resolve(20) == list(range(7, 21))
    assert SequenceSet.parse("3:5").resolve(0) == []  # an empty folder


def test_seqset_resolve_beyond_largest():
    # RFC 3501 §6.4.8: "UID N:*" with N above every UID still means the largest UID.
    assert SequenceSet.parse("50:*").resolve(42) == [42]
    assert SequenceSet.parse("1:4294967295").resolve(3) == [1, 2, 3]
    assert SequenceSet.parse("2:*").resolve(5, limit=3) == [2, 3]
    assert SequenceSet.parse(",".join(["1:*"] * 5000)).resolve(10_000) == list(range(1, 10_001))


def test_compress():
    assert compress([]) == ""
    assert compress([5]) == "5"
    assert compress([7, 1, 2, 3, 5, 3, 8]) == "1:3,5,7:8"


def test_compress_and_resolve_are_inverse():
    rng = random.Random(7888)
    for _ in range(500):
        numbers = sorted(set(rng.sample(range(1, 60), rng.randint(1, 30))))
        text = compress(numbers)
        assert SequenceSet.parse(text).resolve(60) == numbers
        assert len(text.split(",")) == 1 + sum(b - a > 1 for a, b in zip(numbers, numbers[1:]))
