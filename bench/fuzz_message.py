"""Coverage-guided fuzzing of the message readers with atheris (libFuzzer for Python): ENVELOPE,
BODYSTRUCTURE, sections, SEARCH text, the header reader and the address reader, which every
stored message and every submitted one goes through.

A crash is an exception, an output out of proportion to the input, or libFuzzer's own limits
(-timeout per input, -rss_limit_mb): each one found becomes a regression test in
tests/test_message_fuzz.py. atheris is an optional tool, not in the lock (it builds against
libFuzzer and its wheels lag new Pythons):

    python3 -m venv /tmp/fuzz && /tmp/fuzz/bin/pip install atheris && /tmp/fuzz/bin/pip install -e .
    mkdir -p /tmp/fuzz-corpus /tmp/fuzz-crashes
    /tmp/fuzz/bin/python bench/fuzz_message.py /tmp/fuzz-corpus -artifact_prefix=/tmp/fuzz-crashes/ \\
        -timeout=10 -rss_limit_mb=2048 -max_len=65536 -max_total_time=3600

Run from the repository root (the seeds are tests/test_imap_message.py's sample messages when
the corpus is empty: pass tests/ -seed_inputs is not needed, the harness adds them itself).
"""
from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from mailserver import addresses, headers
    from mailserver.imap.message import Message

SEEDS = [
    b"From: Jean <jean@msante.test>\r\nCc: a@msante.test)\r\nSubject: x\r\n\r\nbody\r\n",
    b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: message/rfc822\r\n\r\n"
    b"From: (c) \"q\" <@r:x@[1.2.3.4]>\r\nTo: g: a@b, c@d;\r\n\r\nx\r\n--b--\r\n",
]


def _bounded(out: bytes, data: bytes) -> None:
    # Every output octet comes from an input octet, quoted at most (x2 for escapes), plus a
    # fixed cost per part, field and address: far below this.
    if len(out) > 64 * len(data) + 4096:
        raise AssertionError(f"{len(out)} octets out of {len(data)} in")


def test_one(data: bytes) -> None:
    m = Message(data)
    for out in (m.envelope(), m.bodystructure(extended=True), m.bodystructure(extended=False),
                m.section((1,), "MIME"), m.section((1, 1), "HEADER.FIELDS", ("from", "to"), True)):
        _bounded(out, data)
    m.body_text(), m.header_text(), m.header_values("from"), m.sent_date()
    header = headers.read(data)
    for f in header.fields:
        addresses.parse_addresses(f.value)
    _bounded(repr(header.malformed).encode(), data)


def main() -> None:
    atheris.Setup(sys.argv, test_one)
    for seed in SEEDS:
        test_one(seed)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
