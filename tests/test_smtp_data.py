"""DATA read in chunks (mailserver/smtp_data.py): the end of data and the transparency dots
wherever the reads split them, bare LFs that end nothing, 8-bit bytes kept, and the limits.
First the reader alone, fed every split of a stream; then a raw client over TLS that sends the
awkward pieces in separate writes, so that the server reads them separately."""
from __future__ import annotations

import select
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailserver.smtp import SmtpLimits
from mailserver.smtp_data import DataReader, Outcome
from tests.test_smtp import GP, NURSE, inbox, login

HEADER = f"From: {GP}\r\nTo: {NURSE}\r\nSubject: dots\r\nMessage-ID: <dots@msante.test>\r\n\r\n".encode()


def read(pieces: list[bytes], *, max_size: int = 10_000, max_line: int = 100) -> tuple[DataReader, bytes | None]:
    """The reader after the pieces, and what followed the end of data (None: not ended)."""
    reader = DataReader(max_size=max_size, max_line=max_line)
    for at, piece in enumerate(pieces):
        rest = reader.feed(piece)
        if rest is not None:
            return reader, rest + b"".join(pieces[at + 1:])
    return reader, None


def splits(stream: bytes):
    """The stream whole, one byte at a time, and cut in two at every position."""
    yield [stream]
    yield [stream[i:i + 1] for i in range(len(stream))]
    for cut in range(1, len(stream)):
        yield [stream[:cut], stream[cut:]]


@pytest.mark.parametrize(("stream", "content", "rest"), [
    (b".\r\n", b"", b""),  # an empty message
    (b"a\r\n.\r\nQUIT\r\n", b"a\r\n", b"QUIT\r\n"),
    (b"..\r\n.\r\n", b".\r\n", b""),  # a line that is just ".." (one stuffed dot) first
    (b"a\r\n..\r\nb\r\n.\r\n", b"a\r\n.\r\nb\r\n", b""),
    (b"a\r\n...\r\n.x\r\n.\r\n", b"a\r\n..\r\nx\r\n", b""),  # any leading dot goes, as in aiosmtpd
    (b"a.\r\nb.\r\n.\r\n", b"a.\r\nb.\r\n", b""),  # a dot that ends a line is data
    (b"a\n.\nb\r\n.\r\n", b"a\n.\nb\r\n", b""),  # bare LFs end nothing (SMTP smuggling)
    (b"a\n.\r\nb\r\n.\n\r\n.\r\n", b"a\n.\r\nb\r\n\n\r\n", b""),
    (b"a\r.\rb\r\n.\r\n", b"a\r.\rb\r\n", b""),  # nor bare CRs
    (b"\xe9t\xe9\r\n.\xff\xfe\r\n\x80.\r\n.\r\n", b"\xe9t\xe9\r\n\xff\xfe\r\n\x80.\r\n", b""),  # 8-bit kept
    (b"a\r\n.\r\n.\r\n", b"a\r\n", b".\r\n"),  # the next command is not data
])
def test_end_of_data_and_dots_at_every_split(stream, content, rest):
    for pieces in splits(stream):
        reader, left = read(pieces)
        assert (reader.outcome, reader.content, left) == (Outcome.OK, content, rest), pieces


def by_lines(stream: bytes) -> tuple[bytes, bytes] | None:
    """aiosmtpd's reading, line by line (CRLF-ended lines; "." alone ends the data; a leading
    dot goes): the content and what followed, or None if the data did not end."""
    lines, at = [], 0
    while (crlf := stream.find(b"\r\n", at)) >= 0:
        line, at = stream[at:crlf + 2], crlf + 2
        if line == b".\r\n":
            return b"".join(lines), stream[at:]
        lines.append(line[1:] if line.startswith(b".") else line)
    return None


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from([b"\r", b"\n", b".", b"a", b"\r\n", b".\r\n", b"..", b"\r\n.\r\n"]),
                max_size=30), st.lists(st.integers(0, 40), max_size=4))
def test_chunked_reading_agrees_with_line_by_line_reading(parts, cuts):
    """Any stream of the awkward pieces, cut anywhere: the same content and rest as line by line."""
    stream = b"".join(parts)
    bounds = sorted({0, len(stream), *(min(c, len(stream)) for c in cuts)})
    reader, left = read([stream[a:b] for a, b in zip(bounds, bounds[1:])])
    expected = by_lines(stream)
    if expected is None:
        assert left is None
    else:
        assert (reader.outcome, reader.content, left) == (Outcome.OK, *expected)


def test_line_and_size_limits_at_their_boundaries():
    line = b"x" * 98 + b"\r\n"  # exactly max_line (100) octets with its CRLF
    for pieces in splits(line * 3 + b".\r\n"):
        assert read(pieces)[0].outcome is Outcome.OK
    for pieces in splits(b"y\r\n" + b"x" + line + b"y\r\n.\r\n"):  # one octet over, mid-stream
        reader, rest = read(pieces)
        assert (reader.outcome, reader.content, rest) == (Outcome.TOO_LONG, b"", b"")
    long = b"z" * 5000 + b"\r\n.\r\nNOOP\r\n"  # far over: dropped as it arrives, the end still found
    for pieces in ([long], [long[i:i + 7] for i in range(0, len(long), 7)]):
        reader, rest = read(pieces)
        assert (reader.outcome, rest) == (Outcome.TOO_LONG, b"NOOP\r\n")
    body = line * 10  # 1000 octets of data
    assert read([body + b".\r\n"], max_size=1000)[0].outcome is Outcome.OK
    for pieces in splits(body + b"\r\n.\r\nRSET\r\n"):
        reader, rest = read(pieces, max_size=1000)
        assert (reader.outcome, reader.content, rest) == (Outcome.TOO_MUCH, b"", b"RSET\r\n")
    big = [b"w" * 99 + b"\n"] * 1000 + [b"\r\n.\r\n"]  # the limit found before the end of data
    reader = DataReader(max_size=1000, max_line=100_000)
    assert [reader.feed(p) for p in big][-1] == b"" and reader.outcome is Outcome.TOO_MUCH
    assert len(reader._buf) == 0  # noqa: SLF001 (nothing kept once done)


# -- over a real socket -------------------------------------------------------------------------

def session(server):
    client = login(server)
    assert client.mail(GP)[0] == 250 and client.rcpt(NURSE)[0] == 250
    client.putcmd("data")
    assert client.getreply()[0] == 354
    return client


def send_apart(client, pieces: list[bytes]) -> None:
    """Each piece in its own TLS record, the server given time to read it before the next."""
    for piece in pieces:
        client.sock.sendall(piece)
        time.sleep(0.05)


def no_reply_yet(client) -> bool:
    """Nothing arrived from the server within 0.3 s (smtplib has read nothing past the 354)."""
    return not client.sock.pending() and not select.select([client.sock], [], [], 0.3)[0]


def test_end_of_data_split_across_reads_and_stuffed_dots(server):
    client = session(server)
    body = b"first\r\n..\r\n...two\r\n\xe9t\xe9 \xff\x80\r\n"
    send_apart(client, [HEADER + b"first\r\n.", b".\r\n..", b".two\r\n\xe9t\xe9 \xff\x80\r", b"\n", b".", b"\r",
                        b"\n"])
    code, text = client.getreply()
    assert code == 250, (code, text)
    assert inbox(server, NURSE)[-1].endswith(HEADER + body.replace(b"\r\n..", b"\r\n."))
    assert client.noop()[0] == 250
    client.quit()


def test_line_not_ended_by_crlf_before_the_dot_is_data(server):
    """"text." then ".\\n", "\\n.\\n": no end of data; the server waits, then a real end."""
    client = session(server)
    send_apart(client, [HEADER + b"text.", b"\r\n", b"a\n.\nMAIL FROM:<x@y.test>\r\n", b"b\r\n.\n"])
    assert no_reply_yet(client)
    send_apart(client, [b"\r\n.\r\n"])
    code, text = client.getreply()
    assert code == 250, (code, text)
    # ".\n" began a line: its dot goes (as aiosmtpd always did); the bare-LF lines stay data
    assert inbox(server, NURSE)[-1].endswith(HEADER + b"text.\r\na\n.\nMAIL FROM:<x@y.test>\r\nb\r\n\n\r\n")
    client.quit()


def test_pipelined_command_after_data_in_the_same_read(server):
    client = session(server)
    client.sock.sendall(HEADER + b"x\r\n.\r\nNOOP\r\nRSET\r\n")
    assert [client.getreply()[0] for _ in range(3)] == [250, 250, 250]
    client.quit()


def test_too_much_data_drained_then_552_and_the_session_goes_on(server):
    client = session(server)
    chunk = b"y" * 998 + b"\r\n"
    piece = chunk * 1024  # ~1 MB per write
    for _ in range(SmtpLimits().max_message_size // len(piece) + 1):
        client.sock.sendall(piece)
    client.sock.sendall(b".\r\nNOOP\r\n")
    code, text = client.getreply()
    assert code == 552 and text.startswith(b"5.3.4"), (code, text)
    assert client.getreply()[0] == 250
    client.quit()


def test_line_too_long_in_data_500_after_the_end(server):
    client = session(server)
    send_apart(client, [HEADER + b"z" * (2 * SmtpLimits().max_header_size), b"\r\n.\r\n"])
    code, text = client.getreply()
    assert code == 500 and b"too long" in text.lower(), (code, text)
    assert client.noop()[0] == 250
    client.quit()
