"""message.py (ENVELOPE, BODYSTRUCTURE, sections, BINARY, search helpers) and fetchitems.py,
on representative messages; the expected outputs follow RFC 3501 §7.4.2 and Dovecot's habits
(types as written, text lines = LF count, RFC 2047 words left encoded)."""
from __future__ import annotations

from datetime import date

import pytest

from mailserver.imap.fetchitems import FetchItem, parse_fetch, render
from mailserver.imap.message import MAX_DEPTH, Message, UnknownCTE, parse_addresses
from mailserver.imap.syntax import Atom, PList, String

PLAIN = (
    b'From: "Doe, \\"JD\\" John" <john.doe@example.com>\r\n'
    b"To: alice@example.org, =?utf-8?q?Bj=C3=B6rn?= <bjorn@example.net>\r\n"
    b"Cc: Team: carol@example.com, dave@example.com (Dave D.);\r\n"
    b"Subject: =?utf-8?q?R=C3=A9union?=\r\n"
    b"  du lundi\r\n"
    b"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\n"
    b"Message-ID: <B27397-0100000@example.com>\r\n"
    b"In-Reply-To: <parent@example.com>\r\n"
    b"\r\n"
    b"Hello Alice,\r\n"
    b"see you Monday.\r\n"
)

MIXED = (
    b"From: sender@example.com\r\n"
    b"To: rcpt@example.com\r\n"
    b"Subject: report\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="outer"\r\n'
    b"\r\n"
    b"This is a MIME message.\r\n"
    b"--outer\r\n"
    b"Content-Type: multipart/alternative; boundary=inner\r\n"
    b"\r\n"
    b"--inner\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"R=C3=A9sultats d'analyse =\r\n"
    b"joints.\r\n"
    b"--inner\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"\r\n"
    b"<p>R\xc3\xa9sultats</p>\r\n"
    b"--inner--\r\n"
    b"--outer\r\n"
    b'Content-Type: application/pdf; name="resultats.pdf"\r\n'
    b"Content-Transfer-Encoding: base64\r\n"
    b'Content-Disposition: attachment; filename="resultats.pdf"\r\n'
    b"Content-ID: <pdf1@example.com>\r\n"
    b"Content-Description: lab results\r\n"
    b"Content-Language: fr, en\r\n"
    b"\r\n"
    b"JVBERi0xLjQK\r\n"
    b"AAEC/w==\r\n"
    b"--outer--\r\n"
    b"epilogue\r\n"
)

FORWARD = (
    b"From: a@example.com\r\n"
    b"To: b@example.com\r\n"
    b"Subject: Fwd: hi\r\n"
    b'Content-Type: multipart/mixed; boundary="b1"\r\n'
    b"\r\n"
    b"--b1\r\n"
    b"\r\n"
    b"See below.\r\n"
    b"--b1\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b"From: Carol <carol@example.com>\r\n"
    b"Subject: hi\r\n"
    b"Date: Tue, 1 Mar 2022 10:00:00 +0100\r\n"
    b'Content-Type: multipart/alternative; boundary="b2"\r\n'
    b"\r\n"
    b"--b2\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"hi there\r\n"
    b"--b2\r\n"
    b"Content-Type: text/html\r\n"
    b"\r\n"
    b"<b>hi</b>\r\n"
    b"--b2--\r\n"
    b"\r\n"
    b"--b1--\r\n"
)

EIGHTBIT = (
    b"From: =?iso-8859-1?q?Ren=E9?= <rene@example.fr>\r\n"
    b"To: undisclosed-recipients:;\r\n"
    b"Subject: \xc3\xa9t\xc3\xa9 2024\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Cet \xc3\xa9t\xc3\xa9, la CLINIQUE ferme.\r\n"
)

LATIN1 = (
    b"From: x@example.com\r\n"
    b"Subject: =?ISO-8859-1?Q?caf=E9_cr=E8me?=\r\n"
    b"Content-Type: text/plain; charset=ISO-8859-1\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Un caf=E9 cr=E8me, s'il vous pla=EEt.\r\n"
)


# ---------------------------------------------------------------- ENVELOPE

def test_envelope_plain():
    assert Message(PLAIN).envelope() == (
        b'("Mon, 7 Feb 1994 21:52:25 -0800" "=?utf-8?q?R=C3=A9union?=  du lundi"'
        b' (("Doe, \\"JD\\" John" NIL "john.doe" "example.com"))'
        b' (("Doe, \\"JD\\" John" NIL "john.doe" "example.com"))'
        b' (("Doe, \\"JD\\" John" NIL "john.doe" "example.com"))'
        b' ((NIL NIL "alice" "example.org")("=?utf-8?q?Bj=C3=B6rn?=" NIL "bjorn" "example.net"))'
        b' ((NIL NIL "Team" NIL)(NIL NIL "carol" "example.com")("Dave D." NIL "dave" "example.com")(NIL NIL NIL NIL))'
        b' NIL "<parent@example.com>" "<B27397-0100000@example.com>")')


def test_envelope_8bit_subject_is_a_literal_and_group_is_empty():
    assert Message(EIGHTBIT).envelope() == (
        b'(NIL {10}\r\n\xc3\xa9t\xc3\xa9 2024'
        b' (("=?iso-8859-1?q?Ren=E9?=" NIL "rene" "example.fr"))'
        b' (("=?iso-8859-1?q?Ren=E9?=" NIL "rene" "example.fr"))'
        b' (("=?iso-8859-1?q?Ren=E9?=" NIL "rene" "example.fr"))'
        b' ((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL)) NIL NIL NIL NIL)')


def test_envelope_sender_and_reply_to_own_values_and_absent_fields():
    raw = (b"From: a@x.org\r\nSender: Sec <sec@x.org>\r\nReply-To:\r\nSubject:\r\n"
           b"Bcc: <@relay1,@relay2:hidden@y.org>\r\n\r\n")
    assert Message(raw).envelope() == (
        b'(NIL "" ((NIL NIL "a" "x.org")) (("Sec" NIL "sec" "x.org")) ((NIL NIL "a" "x.org"))'
        b' NIL NIL ((NIL "@relay1,@relay2" "hidden" "y.org")) NIL NIL)')
    assert Message(b"\r\nno header at all").envelope() == b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"


def test_parse_addresses_edge_cases():
    assert parse_addresses('root, "a b"@x.org, <>, John Q. Public <jqp@x.org>') == [
        (None, None, "root", "MISSING_DOMAIN"),
        (None, None, '"a b"', "x.org"),
        ("John Q. Public", None, "jqp", "x.org"),
    ]
    assert parse_addresses("Empty:;, z@[10.0.0.1] (z)") == [
        (None, None, "Empty", None), (None, None, None, None), ("z", None, "z", "[10.0.0.1]")]
    assert parse_addresses('"unterminated <a@b') == [(None, None, '"unterminated <a@b"', "MISSING_DOMAIN")]


# ---------------------------------------------------------------- BODY / BODYSTRUCTURE

def test_bodystructure_plain():
    m = Message(PLAIN)
    assert m.size == len(PLAIN) == 369
    assert m.bodystructure(extended=False) == b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 31 2)'
    assert m.bodystructure(extended=True) == (
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 31 2 NIL NIL NIL NIL)')


def test_bodystructure_alternative_inside_mixed_with_attachment():
    m = Message(MIXED)
    assert m.bodystructure(extended=False) == (
        b'((("text" "plain" ("charset" "utf-8") NIL NIL "quoted-printable" 35 1)'
        b'("text" "html" ("charset" "utf-8") NIL NIL "7bit" 17 0) "alternative")'
        b'("application" "pdf" ("name" "resultats.pdf") "<pdf1@example.com>" "lab results" "base64" 22)'
        b' "mixed")')
    assert m.bodystructure(extended=True) == (
        b'((("text" "plain" ("charset" "utf-8") NIL NIL "quoted-printable" 35 1 NIL NIL NIL NIL)'
        b'("text" "html" ("charset" "utf-8") NIL NIL "7bit" 17 0 NIL NIL NIL NIL)'
        b' "alternative" ("boundary" "inner") NIL NIL NIL)'
        b'("application" "pdf" ("name" "resultats.pdf") "<pdf1@example.com>" "lab results" "base64" 22'
        b' NIL ("attachment" ("filename" "resultats.pdf")) ("fr" "en") NIL)'
        b' "mixed" ("boundary" "outer") NIL NIL NIL)')


def test_bodystructure_message_rfc822():
    inner_env = (b'("Tue, 1 Mar 2022 10:00:00 +0100" "hi" (("Carol" NIL "carol" "example.com"))'
                 b' (("Carol" NIL "carol" "example.com")) (("Carol" NIL "carol" "example.com"))'
                 b' NIL NIL NIL NIL NIL)')
    assert Message(FORWARD).bodystructure(extended=True) == (
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 10 0 NIL NIL NIL NIL)'
        b'("message" "rfc822" NIL NIL NIL "7bit" 234 ' + inner_env +
        b' (("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 8 0 NIL NIL NIL NIL)'
        b'("text" "html" ("charset" "us-ascii") NIL NIL "7bit" 9 0 NIL NIL NIL NIL)'
        b' "alternative" ("boundary" "b2") NIL NIL NIL) 14 NIL NIL NIL NIL)'
        b' "mixed" ("boundary" "b1") NIL NIL NIL)')
    assert Message(FORWARD).bodystructure(extended=False) == (
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 10 0)'
        b'("message" "rfc822" NIL NIL NIL "7bit" 234 ' + inner_env +
        b' (("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 8 0)'
        b'("text" "html" ("charset" "us-ascii") NIL NIL "7bit" 9 0) "alternative") 14) "mixed")')


def test_bodystructure_8bit_and_latin1():
    assert Message(EIGHTBIT).bodystructure(extended=False) == (
        b'("text" "plain" ("charset" "utf-8") NIL NIL "8bit" 31 1)')
    assert Message(LATIN1).bodystructure(extended=True) == (
        b'("text" "plain" ("charset" "ISO-8859-1") NIL NIL "quoted-printable" 39 1 NIL NIL NIL NIL)')


def test_digest_parts_default_to_message_rfc822():
    raw = (b'Content-Type: multipart/digest; boundary="d"\r\n\r\n--d\r\n\r\n'
           b"Subject: one\r\n\r\nfirst\r\n--d--\r\n")
    assert Message(raw).bodystructure(extended=False) == (
        b'(("message" "rfc822" NIL NIL NIL "7bit" 21 (NIL "one" NIL NIL NIL NIL NIL NIL NIL NIL)'
        b' ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 5 0) 2) "digest")')


@pytest.mark.parametrize("raw, expected", [
    # multipart without a boundary: shown as text
    (b"Content-Type: multipart/mixed\r\n\r\nhello\r\n",
     b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 7 1)'),
    # no delimiter at all: a multipart needs one part, an empty text/plain
    (b"Content-Type: multipart/mixed; boundary=zz\r\n\r\nno parts here\r\n",
     b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0) "mixed")'),
    # unterminated last part runs to the end; garbage Content-Type falls back to text/plain
    (b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\nContent-Type: ???\r\n\r\nabc\r\n",
     b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 5 1) "mixed")'),
    # no header/body separator: all header
    (b"Subject: only a header", b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0)'),
    (b"", b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0)'),
])
def test_malformed_mime_never_raises(raw, expected):
    m = Message(raw)
    assert m.bodystructure(extended=False) == expected
    m.envelope(), m.section((1, 2, 3), "MIME"), m.body_text(), m.sent_date()


def test_pathological_nesting_is_cut_off():
    depth = 80
    raw = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i) for i in range(depth))
    raw += b"Content-Type: text/plain\r\n\r\ndeep\r\n"
    structure = Message(raw).bodystructure(extended=False)
    assert structure.count(b'"mixed"') == MAX_DEPTH
    assert b'("application" "octet-stream" NIL NIL NIL "7bit" ' in structure
    assert Message(raw).body_text() == ""


# ---------------------------------------------------------------- BODY[section]

def test_sections_of_a_plain_message():
    m = Message(PLAIN)
    header, body = PLAIN.split(b"\r\n\r\n", 1)
    assert m.section((), None) == PLAIN
    assert m.section((), "HEADER") == header + b"\r\n\r\n"
    assert m.section((), "TEXT") == body == m.section((1,), None)
    assert m.section((1,), "MIME") == header + b"\r\n\r\n"  # part 1 of a single-part message is itself
    assert m.section((2,), None) == m.section((1, 1), None) == m.section((1,), "HEADER") == b""
    assert m.section((), "HEADER.FIELDS", ("SUBJECT", "from")) == (
        b'From: "Doe, \\"JD\\" John" <john.doe@example.com>\r\n'
        b"Subject: =?utf-8?q?R=C3=A9union?=\r\n  du lundi\r\n\r\n")
    assert m.section((), "HEADER.FIELDS", ("to", "cc", "from", "subject", "date"), True) == (
        b"Message-ID: <B27397-0100000@example.com>\r\nIn-Reply-To: <parent@example.com>\r\n\r\n")
    assert m.section((), "HEADER.FIELDS", ("X-Absent",)) == b"\r\n"


def test_sections_of_nested_multiparts():
    m = Message(MIXED)
    assert m.section((1, 1), None) == b"R=C3=A9sultats d'analyse =\r\njoints."
    assert m.section((1, 2), None) == b"<p>R\xc3\xa9sultats</p>"
    assert m.section((1, 2), "MIME") == b"Content-Type: text/html; charset=utf-8\r\n\r\n"
    assert m.section((2,), None) == b"JVBERi0xLjQK\r\nAAEC/w=="
    assert m.section((1,), None).startswith(b"--inner\r\n") and m.section((1,), None).endswith(b"--inner--")
    assert m.section((3,), None) == m.section((0,), None) == m.section((1,), "TEXT") == b""


def test_sections_of_an_encapsulated_message():
    m = Message(FORWARD)
    inner_header = (b"From: Carol <carol@example.com>\r\nSubject: hi\r\nDate: Tue, 1 Mar 2022 10:00:00 +0100\r\n"
                    b'Content-Type: multipart/alternative; boundary="b2"\r\n\r\n')
    assert m.section((1,), None) == b"See below."
    assert m.section((1,), "MIME") == b"\r\n"
    assert m.section((2,), "MIME") == b"Content-Type: message/rfc822\r\n\r\n"
    assert m.section((2,), "HEADER") == inner_header
    assert m.section((2,), None) == inner_header + m.section((2,), "TEXT")
    assert m.section((2,), "TEXT").endswith(b"<b>hi</b>\r\n--b2--\r\n")
    assert m.section((2,), "HEADER.FIELDS", ("SUBJECT",)) == b"Subject: hi\r\n\r\n"
    assert m.section((2, 1), None) == b"hi there"
    assert m.section((2, 2), "MIME") == b"Content-Type: text/html\r\n\r\n"
    assert m.section((2, 3), None) == m.section((2, 1, 1), None) == b""


# ---------------------------------------------------------------- BINARY

def test_binary_decodes_transfer_encodings():
    m = Message(MIXED)
    assert m.binary((1, 1)) == "Résultats d'analyse joints.".encode()
    assert m.binary((2,)) == b"%PDF-1.4\n\x00\x01\x02\xff"
    assert m.binary((1,)) == m.section((1,), None)  # a multipart has no encoding of its own
    assert m.binary(()) == MIXED
    assert m.binary((9,)) == b""
    assert Message(LATIN1).binary((1,)) == b"Un caf\xe9 cr\xe8me, s'il vous pla\xeet.\r\n"
    assert Message(EIGHTBIT).binary((1,)) == "Cet été, la CLINIQUE ferme.\r\n".encode()


def test_binary_decodes_quoted_printable_as_rfc_2045_says():
    """Issue 12 item 6 (imaptest fetch-binary-mime-qp): trailing white space is dropped, a soft
    line break may be followed by white space, hard line breaks are CRLF."""
    body = (b"hello  \nbar=\n\nfoo\t=\nbar\nfoo\t \t= \n=62\nfoo = \t\nbar\nfoo =\n=62\nfoo  \nbar=\n\n"
            b"foo_bar\n")
    decoded = Message(b"Content-Transfer-Encoding: quoted-printable\n\n" + body).binary((1,))
    assert decoded == b"hello\r\nbar\r\nfoo\tbar\r\nfoo\t \tb\r\nfoo bar\r\nfoo b\r\nfoo\r\nbar\r\nfoo_bar\r\n"
    assert Message(b"Content-Transfer-Encoding: quoted-printable\r\n\r\n=E9t=C3=A9 =ZZ=\r\n").binary((1,)) == \
        b"\xe9t\xc3\xa9 =ZZ"  # a broken escape stays as written


def test_binary_is_lenient_with_base64_and_refuses_unknown_encodings():
    sloppy = b"Content-Transfer-Encoding: BASE64\r\n\r\naGVs\r\nbG8*gd29y\r\nbGQ\r\n"
    assert Message(sloppy).binary((1,)) == b"hello world"
    with pytest.raises(UnknownCTE):
        Message(b"Content-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 x\r\n").binary((1,))


# ---------------------------------------------------------------- search helpers

def test_search_helpers_decode_headers_and_bodies():
    assert Message(PLAIN).header_values("Subject") == ["Réunion  du lundi"]
    assert Message(PLAIN).header_values("X-None") == []
    assert Message(EIGHTBIT).header_values("from") == ["René <rene@example.fr>"]
    assert Message(EIGHTBIT).header_values("subject") == ["été 2024"]
    assert Message(LATIN1).header_values("subject") == ["café crème"]
    assert Message(LATIN1).body_text() == "Un café crème, s'il vous plaît.\r\n"
    assert Message(MIXED).body_text() == "Résultats d'analyse joints.\n<p>Résultats</p>"
    assert Message(FORWARD).body_text() == "See below.\nhi there\n<b>hi</b>"
    assert "Subject: Réunion  du lundi" in Message(PLAIN).header_text()


def test_sent_date_is_the_senders_date():
    assert Message(PLAIN).sent_date() == date(1994, 2, 7)  # 21:52 -0800 is the 8th in UTC
    assert Message(MIXED).sent_date() is None
    assert Message(b"Date: not a date\r\n\r\n").sent_date() is None


# ---------------------------------------------------------------- fetchitems

def test_parse_fetch_macros_and_lists():
    assert parse_fetch([Atom("fast")]) == [FetchItem("FLAGS"), FetchItem("INTERNALDATE"), FetchItem("RFC822.SIZE")]
    assert [i.name for i in parse_fetch([Atom("ALL")])] == ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"]
    assert [i.name for i in parse_fetch([Atom("FULL")])][-1] == "BODY"
    items = parse_fetch([PList((Atom("uid"), Atom("BODY.PEEK[HEADER.FIELDS (From \"To\")]<0.10>"),
                                Atom("BINARY[1.2]"), Atom("BODY[1.2.MIME]"), Atom("BINARY.SIZE[1]"),
                                Atom("BODY[]"), Atom("BODY[2.HEADER.FIELDS.NOT (X-A)]"), Atom("rfc822.text")))])
    assert items == [
        FetchItem("UID"),
        FetchItem("BODY[]", (), "HEADER.FIELDS", ("FROM", "TO"), (0, 10), peek=True),
        FetchItem("BINARY[]", (1, 2)),
        FetchItem("BODY[]", (1, 2), "MIME"),
        FetchItem("BINARY.SIZE[]", (1,)),
        FetchItem("BODY[]"),
        FetchItem("BODY[]", (2,), "HEADER.FIELDS.NOT", ("X-A",)),
        FetchItem("RFC822.TEXT"),
    ]
    assert [i.response_label() for i in items] == [
        b"UID", b"BODY[HEADER.FIELDS (FROM TO)]<0>", b"BINARY[1.2]", b"BODY[1.2.MIME]", b"BINARY.SIZE[1]",
        b"BODY[]", b"BODY[2.HEADER.FIELDS.NOT (X-A)]", b"RFC822.TEXT"]
    assert [i.sets_seen for i in items] == [False, False, True, True, False, True, True, True]
    assert not FetchItem("RFC822.HEADER").sets_seen and FetchItem("RFC822").sets_seen


@pytest.mark.parametrize("args", [
    [], [Atom("FLAGS"), Atom("UID")], [PList(())], [PList((Atom("ALL"),))], [Atom("BODY[MIME]")],
    [Atom("BODY[0]")], [Atom("BODY[1.]")], [Atom("BODY[HEADER.FIELDS]")], [Atom("BODY[TEXT (A)]")],
    [Atom("BODY[]<0.0>")], [Atom("BINARY[HEADER]")], [Atom("BINARY.SIZE[1]<0.5>")], [Atom("NOPE")],
    [String(b"FLAGS")], [Atom("BODY[HEADER.FIELDS (A]")],
])
def test_parse_fetch_rejects_bad_syntax(args):
    with pytest.raises(ValueError):
        parse_fetch(args)


def test_render_message_items():
    m = Message(MIXED)
    one = lambda spec: render(parse_fetch([Atom(spec)])[0], m)  # noqa: E731
    assert one("ENVELOPE") == m.envelope()
    assert one("BODY") == m.bodystructure(extended=False)
    assert one("BODYSTRUCTURE") == m.bodystructure(extended=True)
    assert one("RFC822") == b"{734}\r\n" + MIXED
    assert one("RFC822.HEADER") == b"{135}\r\n" + MIXED[:135]
    assert one("BODY.PEEK[1.2]") == b"{17}\r\n<p>R\xc3\xa9sultats</p>"
    assert one("BODY[1.2]<3.4>") == b"{4}\r\nR\xc3\xa9s"
    assert one("BODY[1.2]<100.4>") == one("BODY[7]") == b'""'
    assert one("BODY[HEADER.FIELDS.NOT (From To MIME-Version Content-Type)]") == b'{19}\r\nSubject: report\r\n\r\n'
    assert one("BINARY[2]") == b"~{13}\r\n%PDF-1.4\n\x00\x01\x02\xff"  # NUL: literal8 (RFC 3516 §4.3)
    assert one("BINARY[1.1]") == b"{28}\r\nR\xc3\xa9sultats d'analyse joints."
    assert one("BINARY[2]<0.4>") == b"{4}\r\n%PDF"
    assert one("BINARY.SIZE[2]") == b"13"
    with pytest.raises(ValueError):
        one("FLAGS")
    with pytest.raises(UnknownCTE):
        render(FetchItem("BINARY[]", (1,)), Message(b"Content-Transfer-Encoding: x-foo\r\n\r\nx"))


def test_leaves_number_parts_as_body_sections_do():
    """A reader's list of parts (mailserver/webmail.py): single parts only, encapsulated messages
    opened, numbered as BODY[section] and BINARY take them, names decoded."""
    from mailserver.imap.message import Message

    raw = (b"Content-Type: multipart/mixed; boundary=a\r\n\r\n"
           b"--a\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
           b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
           b"Pi=E8ce jointe\r\n"
           b"--a\r\nContent-Type: message/rfc822\r\n\r\n"
           b"Subject: transf\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n"
           b"--b\r\nContent-Type: text/plain\r\n\r\ntexte\r\n"
           b"--b\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n--b--\r\n"
           b"--a\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment;\r\n"
           b" filename=\"=?utf-8?q?compte-rendu_=C3=A9t=C3=A9.pdf?=\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           b"JVBERi0xLjQ=\r\n--a--\r\n")
    message = Message(raw)
    leaves = message.leaves()
    assert [(leaf.section, leaf.content_type) for leaf in leaves] == [
        ((1,), "text/plain"), ((2, 1), "text/plain"), ((2, 2), "text/html"), ((3,), "application/pdf")]
    assert message.text_of(leaves[0]) == "Pièce jointe"
    assert (leaves[3].filename, leaves[3].disposition) == ("compte-rendu été.pdf", "attachment")
    assert message.binary(leaves[3].section) == b"%PDF-1.4"
    assert message.section((2, 2), None) == b"<p>html</p>"
