"""Header fields of a message (RFC 5322 §2.2), read once, by offsets, in linear time.

One reader for the submission policy (who the From: and Sender: are) and for IMAP (ENVELOPE,
BODY[HEADER.FIELDS], SEARCH): what the policy checked is exactly what a mail client is shown.
Two readers disagreeing was a spoofing hole: `From : marie` beside `From: jean` was invisible
to Python's `email` parser, which the policy used, and shown by ENVELOPE.

Sans-IO and bounded: a field is a slice of the header found by one C-level regex pass (no
per-line string concatenation, which made a 1.9 MB folded header cost 8.8 s), and at most
MAX_HEADER_BYTES and MAX_FIELDS are read. Nothing is rewritten: fields keep their octets.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# The header section read per entity. Exim refuses a header above 1 MiB (header_maxsize), Postfix
# cuts a single field at 100 KiB (header_size_limit); real headers, even after 50 hops, stay
# under 64 KiB. Submission and relay refuse more (smtp.py); IMAP reads no further than this.
MAX_HEADER_BYTES = 256 * 1024
# Fields read per entity: 50 Received: (the hop limit) plus a few dozen others is the most a
# legitimate message carries; each field costs a Python object, so the count is capped too.
MAX_FIELDS = 1000

_FIELD_START = re.compile(rb"^[^ \t\r\n]", re.M)  # a line not starting with WSP opens a field
_FTEXT = re.compile(rb"[\x21-\x39\x3b-\x7e]+")  # RFC 5322 §3.6.8 field-name: printable, no colon
_FOLD = re.compile(rb"\r?\n(?=[ \t])")
_BLANK = re.compile(rb"\n\r?\n")


@dataclass(frozen=True, slots=True)
class Field:
    """One field as written: its octets (name, colon, value, continuation lines, line ends)."""

    raw: bytes
    colon: int  # offset of the colon in raw; -1 when the first line has none
    key: str  # the name, lower-cased, white space around it ignored (how IMAP matches names)

    @property
    def well_formed(self) -> bool:
        """RFC 5322 §3.6.8: a name of printable octets then the colon, nothing between. The
        obsolete `Name : value` (§4.5.1) is refused at submission: it is how two readers differ."""
        return self.colon > 0 and _FTEXT.fullmatch(self.raw, 0, self.colon) is not None

    @property
    def value(self) -> str:
        """After the colon, unfolded and stripped, as text that encodes back to the same octets
        (surrogateescape keeps 8-bit header bytes intact)."""
        if self.colon < 0:
            return ""
        value = _FOLD.sub(b"", self.raw[self.colon + 1:]).strip(b" \t\r\n")
        return value.decode("utf-8", "surrogateescape")


def split(data: bytes, start: int = 0, end: int | None = None) -> tuple[int, int]:
    """For the entity data[start:end]: where its fields end (the last one's line end included)
    and where its body starts (past the blank line; `end` when there is none: all header)."""
    end = len(data) if end is None else end
    for blank in (b"\r\n", b"\n"):
        if data.startswith(blank, start, end):
            return start, start + len(blank)
    m = _BLANK.search(data, start, end)
    return (end, end) if m is None else (m.start() + 1, m.end())


@dataclass(frozen=True, slots=True)
class Header:
    """The fields of one header section, and what is wrong with it."""

    fields: tuple[Field, ...]
    size: int  # octets of the header section, the blank line included
    truncated: bool  # longer than MAX_HEADER_BYTES or more than MAX_FIELDS fields: the rest unread
    first: dict[str, Field]  # the first field of each name: ENVELOPE asks for eleven of them

    def get(self, key: str) -> str | None:
        """The first field of that (lower-case) name: the one ENVELOPE shows."""
        found = self.first.get(key)
        return None if found is None else found.value

    def all(self, key: str) -> list[Field]:
        return [f for f in self.fields if f.key == key]

    @property
    def malformed(self) -> list[Field]:
        return [f for f in self.fields if not f.well_formed]


def read(data: bytes, start: int = 0, end: int | None = None) -> Header:
    """The header of the entity data[start:end]."""
    fields_end, stop = split(data, start, end)
    limit = min(fields_end, start + MAX_HEADER_BYTES)
    starts = []
    for m in _FIELD_START.finditer(data, start, limit):
        if len(starts) > MAX_FIELDS:
            break
        starts.append(m.start())
    truncated = len(starts) > MAX_FIELDS or limit < fields_end
    starts = starts[:MAX_FIELDS]
    fields = []
    for i, s in enumerate(starts):
        e = starts[i + 1] if i + 1 < len(starts) else limit
        line_end = data.find(b"\n", s, e)
        colon = data.find(b":", s, e if line_end < 0 else line_end)
        key = data[s:colon].strip().decode("ascii", "replace").lower() if colon >= 0 else ""
        fields.append(Field(data[s:e], colon - s if colon >= 0 else -1, key))
    first: dict[str, Field] = {}
    for f in fields:
        first.setdefault(f.key, f)
    return Header(tuple(fields), stop - start, truncated, first)
