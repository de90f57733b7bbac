"""What crosses the wire in both directions (issue 12, Correctness 4-5): atoms and astrings as
RFC 3501 §9 spells them, and NUL octets, which only a literal8 (RFC 3516) may carry."""
from __future__ import annotations

import re

from .imap_client import RawImap, untagged
from .test_imap import GP, deliver

BINARY_MESSAGE = (b"From: user@msante.test\r\nMime-Version: 1.0\r\n"
                  b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
                  b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
                  b"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n"
                  b"\x00-\xe4\r\n\x00\x00\r\n--b--\r\n")
PART = b"\x00-\xe4\r\n\x00\x00"


def logged_in(server) -> RawImap:
    client = RawImap(server)
    client.login_token(server)
    return client


def append8(client: RawImap, data: bytes) -> list[bytes]:
    """APPEND with a literal8 (~{n}), which RawImap.command does not write."""
    client.send(b"b1 APPEND INBOX ~{%d}\r\n" % len(data))
    assert client.line().startswith(b"+")
    client.send(data + b"\r\n")
    lines = []
    while not (lines := lines + [client.line()])[-1].startswith(b"b1 "):
        pass
    return lines


def test_brackets_in_mailbox_names(server):
    """Item 4: "[" is an ATOM-CHAR and "]" an ASTRING-CHAR: names holding them are names."""
    client = logged_in(server)
    tag, lines = client.command("SELECT foo[bar")
    assert lines[-1].startswith(f"{tag} NO".encode()), lines  # no such folder, not a syntax error
    client.ok("CREATE foo[bar]")
    client.ok("SELECT foo[bar]")
    client.ok("CREATE x]y[z")
    assert b'"/" x]y[z\r\n' in b"".join(client.ok('LIST "" x]y[*'))
    weird = "!#$&'+,-.0123456789:;<=>?@^_`|[}"  # every ATOM-CHAR, and "&'", which is not modified UTF-7
    tag, lines = client.command(f"SELECT {weird}")
    assert lines[-1].startswith(f"{tag} NO".encode()), lines
    assert client.ok(f'LIST "" {weird}%*') == [] and client.ok(f'LSUB "" {weird}%*') == []
    tag, lines = client.command("FETCH 1 BODY[HEADER")
    assert lines[-1].startswith(f"{tag} BAD".encode()), lines  # an atom now, but no FETCH item
    client.close()


def test_binary_appended_part_is_fetched_without_nul_outside_literal8(server):
    """Item 5: a part with NUL octets, APPENDed in a literal8, is kept base64-encoded (as Dovecot
    does): BODY[] never holds a NUL in a plain literal, BINARY[] gives the octets back in a
    literal8."""
    client = logged_in(server)
    assert append8(client, BINARY_MESSAGE)[-1].startswith(b"b1 OK")
    client.ok("SELECT INBOX")
    body = b"".join(client.ok("FETCH 1 (BODY.PEEK[2] BODY.PEEK[2.MIME] BODY.PEEK[])"))
    assert b"\x00" not in body and b"Content-Transfer-Encoding: base64" in body, body
    assert b"hello" in body
    binary = b"".join(client.ok("FETCH 1 (BINARY.SIZE[2] BINARY.PEEK[2])"))
    assert b"BINARY.SIZE[2] %d " % len(PART) in binary and b"BINARY[2] ~{%d}\r\n" % len(PART) + PART in binary
    structure = b"".join(client.ok("FETCH 1 BODYSTRUCTURE"))
    assert b'"base64"' in structure
    client.close()


def test_nul_in_a_plain_literal_is_never_sent(server):
    """A message holding NUL in a plain APPEND literal is stored as a literal8 one is; one that came
    by SMTP with a NUL in its header is refused to FETCH, not sent in a plain literal."""
    client = logged_in(server)
    client.ok("APPEND INBOX \x00", BINARY_MESSAGE)
    deliver(server, [GP], raw=b"From: jean.dupont@msante.test\r\nTo: jean.dupont@msante.test\r\n"
                              b"Subject: a\x00b\r\n\r\nbody\r\n")
    client.ok("SELECT INBOX")
    lines = client.ok("FETCH 1 BODY.PEEK[2]")
    assert b"\x00" not in b"".join(lines) and untagged(lines, b"FETCH")
    tag, lines = client.command("FETCH 2 (BODY.PEEK[HEADER])")
    assert lines[-1].startswith(f"{tag} NO".encode()) and b"\x00" not in b"".join(lines), lines
    tag, lines = client.command("FETCH 2 ENVELOPE")
    assert lines[-1].startswith(f"{tag} NO".encode()) and b"\x00" not in b"".join(lines), lines
    assert re.search(rb"BINARY\[\] ~\{\d+\}", b"".join(client.ok("FETCH 2 BINARY.PEEK[]")))
    client.close()
