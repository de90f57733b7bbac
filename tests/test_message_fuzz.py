"""Property-based fuzzing of the message readers (hypothesis): headers.py, addresses.py and the
ENVELOPE/BODYSTRUCTURE/section code of imap/message.py, on messages built from the pieces that
break parsers (stray parentheses and quotes, folding, obsolete names, nested multiparts).

Properties: nothing raises, the work is bounded by the input (tokens, addresses and output
octets grow at most linearly), and the stored octets come back unchanged. Crashes found by the
atheris harness (bench/fuzz_message.py) are kept here as regression cases.
"""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailserver import headers
from mailserver.addresses import _tokens, parse_addresses
from mailserver.imap.message import MAX_DEPTH, Message

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PIECES = ["a", "b@c.d", "<", ">", "(", ")", '"', "\\", "[", "]", ":", ";", ",", "@", ".", " ", "\t", "\r\n ",
          "=?utf-8?q?x?=", "\u00e9", "\udce9", "g:", "<@r:x@y>"]
address_text = st.lists(st.sampled_from(PIECES), max_size=40).map("".join)
NAMES = [b"From", b"From ", b"To", b"Cc", b"Sender", b"Reply-To", b"Subject", b"Content-Type", b"X Bad", b"",
         b"Content-Transfer-Encoding", b"Date", b"Message-ID", b"\xe9"]


@st.composite
def field(draw) -> bytes:
    name = draw(st.sampled_from(NAMES))
    value = draw(address_text).encode("utf-8", "surrogateescape")
    colon = draw(st.sampled_from([b":", b" :", b""]))
    return name + colon + value + draw(st.sampled_from([b"\r\n", b"\n"]))


@st.composite
def entity(draw, depth: int = 0) -> bytes:
    fields = b"".join(draw(st.lists(field(), max_size=6)))
    kind = draw(st.sampled_from(["leaf", "multipart", "rfc822"] if depth < 4 else ["leaf"]))
    if kind == "multipart":
        boundary = draw(st.sampled_from([b"b", b"b b", b"", b'"q"']))
        kids = draw(st.lists(entity(depth + 1), max_size=4))
        body = b"".join(b"--" + boundary + b"\r\n" + k + b"\r\n" for k in kids)
        body += draw(st.sampled_from([b"--" + boundary + b"--\r\n", b""]))
        return fields + b"Content-Type: multipart/mixed; boundary=" + boundary + b"\r\n\r\n" + body
    if kind == "rfc822":
        return fields + b"Content-Type: message/rfc822\r\n\r\n" + draw(entity(depth + 1))
    return fields + draw(st.sampled_from([b"\r\n", b"\n", b""])) + draw(st.binary(max_size=60))


def bounded(out: bytes, raw: bytes) -> None:
    """Every output octet comes from the input, quoted at most, plus a fixed cost per part."""
    assert len(out) <= 64 * len(raw) + 4096


@FUZZ
@given(address_text)
def test_tokenizer_always_advances_and_addresses_are_bounded(value):
    assert len(_tokens(value)) <= len(value)
    assert len(parse_addresses(value)) <= len(value) + 1


@FUZZ
@given(st.one_of(entity(), st.binary(max_size=400)))
def test_message_readers_never_raise_and_stay_bounded(raw):
    m = Message(raw)
    for out in (m.envelope(), m.bodystructure(extended=True), m.bodystructure(extended=False),
                m.section((1,), "MIME"), m.section((1, 1), "HEADER.FIELDS", ("from",), True)):
        bounded(out, raw)
    m.body_text(), m.header_text(), m.header_values("from"), m.sent_date()
    assert m.section((), None) == raw
    assert m.section((), "HEADER") + m.section((), "TEXT") == raw


@FUZZ
@given(st.one_of(entity(), st.binary(max_size=400)))
def test_header_fields_are_slices_of_the_header(raw):
    header = headers.read(raw)
    fields_end, body_start = headers.split(raw)
    joined = b"".join(f.raw for f in header.fields)
    assert raw[:fields_end].endswith(joined) and header.size == body_start
    assert all(f.colon < 0 or f.raw[f.colon] == ord(":") for f in header.fields)


def test_tokenizer_skips_a_stray_closing_parenthesis():
    """The probe's input: `Cc: a@msante.test)` looped forever and grew memory without end."""
    assert parse_addresses("a@msante.test)") == [(None, None, "a", "msante.test")]
    assert parse_addresses(")))") == []


def test_charset_that_is_not_text_or_not_ascii():
    """Found by atheris: charset=u\\xe9 raised UnicodeEncodeError in SEARCH BODY; charset=zlib
    went through codecs.decode and inflated the body."""
    raw = b"Content-Type: text/plain; charset=u\xe9\r\n\r\nabc"
    assert Message(raw).body_text() == "abc"
    bomb = b"Content-Type: text/plain; charset=zlib\r\n\r\nx\x9c\x01\x00\x00\xff\xff"
    assert Message(bomb).body_text() == bomb.split(b"\r\n\r\n")[1].decode("utf-8", "replace")


def test_nesting_far_beyond_the_cap_is_cheap_in_output():
    raw = b"Content-Type: message/rfc822\r\n\r\n" * 5000 + b"Subject: deep\r\n\r\nx"
    structure = Message(raw).bodystructure(extended=True)
    assert structure.count(b'"rfc822"') == MAX_DEPTH
    bounded(structure, raw)
