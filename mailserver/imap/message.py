"""One stored message seen through IMAP: ENVELOPE, BODYSTRUCTURE, BODY[section], BINARY, and the
decoded text SEARCH looks at.

The MIME tree is cut out of the raw bytes by hand (header/body split, boundary lines) rather than
re-serialised by `email`: BODY[1.2] and the sizes and line counts in BODYSTRUCTURE must be the
stored octets exactly (RFC 3501 §6.4.5, §7.4.2). The stdlib `email` package is used where decoding
is the point: RFC 2047 words and Date: parsing for SEARCH. Output follows Dovecot's habits: header
values as written (RFC 2047 words left encoded), media types and parameters in their own case,
text lines counted as LF octets. Nothing here raises on malformed MIME: a part that cannot be
understood is shown as text/plain, and nesting deeper than MAX_DEPTH is left opaque.
"""
from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from email.header import decode_header, make_header
from email.utils import parsedate_to_datetime
from functools import cached_property, lru_cache
from typing import Callable, Iterator

from .. import headers
from ..addresses import Address, parse_addresses
from . import encode

# Composite parts opened (RFC 3501 puts no limit on nesting). Real mail nests a handful of
# levels (a forwarded message in a signed one in a reply); 20 leaves room, and bounds work and
# output, which grow with the depth: deeper composite parts are shown as opaque octets.
MAX_DEPTH = 20
# Entities opened per message: 100,000 parts once blocked the IMAP loop for 3 s. Clinical mail
# with many attachments has tens; parts past this one are left out of BODYSTRUCTURE.
MAX_PARTS = 1000
_COMPOSITE_CTE = {"", "7bit", "8bit", "binary"}


# Top-level header fields learnt when a message is stored (Facts), with every X-MSS-* field:
# what SEARCH FROM/TO/CC/BCC/SUBJECT/SENT*, SORT and THREAD read.
FACT_FIELDS = ("from", "to", "cc", "bcc", "subject", "date", "message-id", "in-reply-to", "references")
ADDRESS_FIELDS = ("from", "to", "cc", "bcc")
SORT_ADDRESS_FIELDS = ("from", "to", "cc")


def known_field(name: str) -> bool:
    """Whether Facts keep this (lower-case) header field's values."""
    return name in FACT_FIELDS or name.startswith("x-mss-")


class UnknownCTE(Exception):
    """BINARY on a part whose Content-Transfer-Encoding we cannot decode (RFC 3516 §4.3: NO [UNKNOWN-CTE])."""


# Local stand-ins for encode.quoted_or_literal / encode.nstring (written in parallel by part A);
# the lead will de-duplicate.
def _nstring(value: bytes | str | None) -> bytes:
    """Header text keeps its 8-bit octets (surrogateescape), as the message has them."""
    return encode.nstring(value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value)


_TOKEN = r'[^\s()<>@,;:\\"/\[\]?=]+'
_TYPE = re.compile(rf"\s*({_TOKEN})\s*/\s*({_TOKEN})", re.S)
_DISP = re.compile(rf"\s*({_TOKEN})", re.S)
_PARAM = re.compile(rf';\s*({_TOKEN})\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)', re.S)


def _params(text: str) -> list[tuple[str, str]]:
    """Parameters as written (RFC 2231 ones left raw, as Dovecot does); quoted values unquoted."""
    out = []
    for m in _PARAM.finditer(text):
        value = m.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1], flags=re.S)
        out.append((m.group(1), value))
    return out


@dataclass
class _Part:
    """An entity as offsets into the one stored message: nesting copies nothing (a 49-deep
    6 MB message once cost 728 MB as each level sliced its own copy)."""

    raw: bytes  # the whole message, shared by every part
    start: int
    body_start: int
    end: int
    header_fields: headers.Header
    maintype: str = "text"
    subtype: str = "plain"
    params: list[tuple[str, str]] = field(default_factory=lambda: [("charset", "us-ascii")])
    children: list["_Part"] | None = None  # multipart
    inner: "_Part | None" = None  # message/rfc822, message/global: the encapsulated message
    _addresses: dict[str, list[Address]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def header(self) -> bytes:
        return self.raw[self.start:self.body_start]

    @property
    def body(self) -> bytes:
        return self.raw[self.body_start:self.end]

    @property
    def body_size(self) -> int:
        return self.end - self.body_start

    @cached_property
    def lines(self) -> int:
        """The body's lines (BODY and BODYSTRUCTURE both give them: one count of a 1 MB body
        cost 1.1 ms here)."""
        return self.raw.count(b"\n", self.body_start, self.end)

    @property
    def fields(self) -> tuple[headers.Field, ...]:
        return self.header_fields.fields

    def get(self, name: str) -> str | None:
        return self.header_fields.get(name)

    def param(self, name: str) -> str | None:
        return next((v for n, v in self.params if n.lower() == name), None)

    def addresses_in(self, value: str) -> list[Address]:
        """`parse_addresses(value)`, once per value: ENVELOPE, SEARCH's address lists and SORT
        read the same From and To when a message's facts are learnt (a third of that time)."""
        if value not in self._addresses:
            self._addresses[value] = parse_addresses(value)
        return self._addresses[value]

    @property
    def cte(self) -> str:
        return (self.get("content-transfer-encoding") or "").lower()


def _entity(raw: bytes, start: int, end: int) -> _Part:
    header = headers.read(raw, start, end)
    return _Part(raw, start, start + header.size, end, header)


@dataclass
class _Budget:
    """What one message may still cost: parts left to open, and whether a cap was reached."""

    parts: int = MAX_PARTS
    cut: bool = False


def _parse(raw: bytes, start: int, end: int, depth: int, budget: _Budget, digest: bool = False) -> _Part:
    """Composite parts at MAX_DEPTH and multipart children past MAX_PARTS are not opened, and
    the budget says so: RFC 3501 output stays valid, submission refuses such a message."""
    part = _entity(raw, start, end)
    budget.parts -= 1
    ctype = part.get("content-type")
    m = _TYPE.match(ctype) if ctype else None
    if m:
        part.maintype, part.subtype = m.group(1), m.group(2)
        part.params = _params(ctype[m.end():])
    elif digest:  # RFC 2046 §5.1.5: the default in a digest
        part.maintype, part.subtype, part.params = "message", "rfc822", []
    kind = part.maintype.lower()
    if kind == "multipart" or (kind == "message" and part.subtype.lower() in ("rfc822", "global")):
        if depth >= MAX_DEPTH or budget.parts <= 0:
            budget.cut = True
            part.maintype, part.subtype, part.params = "application", "octet-stream", []
        elif kind == "message":
            part.inner = _parse(raw, part.body_start, end, depth + 1, budget)
        elif part.param("boundary"):
            boundary = part.param("boundary").encode("utf-8", "surrogateescape")
            is_digest = part.subtype.lower() == "digest"
            part.children = []
            for s, e in _split_multipart(raw, part.body_start, end, boundary):
                if budget.parts <= 0:
                    budget.cut = True
                    break
                part.children.append(_parse(raw, s, e, depth + 1, budget, is_digest))
        else:
            part.maintype, part.subtype, part.params = "text", "plain", [("charset", "us-ascii")]
    return part


def _split_multipart(raw: bytes, start: int, end: int, boundary: bytes) -> Iterator[tuple[int, int]]:
    """Body parts of raw[start:end] between delimiter lines (RFC 2046 §5.1.1), as offsets: the
    CRLF before a delimiter belongs to it; preamble and epilogue are dropped; an unterminated
    last part runs to the end."""
    delim = re.compile(b"--" + re.escape(boundary) + rb"(--)?[ \t]*(?:\r?\n|\Z)")
    part_start: int | None = None
    for m in delim.finditer(raw, start, end):
        if m.start() > start and raw[m.start() - 1] != 0x0A:
            continue  # not at the beginning of a line
        if part_start is not None:
            part_end = m.start()
            if part_end > part_start and raw[part_end - 1] == 0x0A:
                part_end -= 2 if part_end - 1 > part_start and raw[part_end - 2] == 0x0D else 1
            yield part_start, part_end
        if m.group(1):
            return
        part_start = m.end()
    if part_start is not None:
        yield part_start, end


@lru_cache(maxsize=256)
def _wanted(fields: tuple[str, ...]) -> frozenset[str]:
    return frozenset(f.lower() for f in fields)  # a FETCH asks the same fields of every message


def _header_section(msg: _Part, text: str | None, fields: tuple[str, ...], not_: bool) -> bytes:
    """HEADER and HEADER.FIELDS[.NOT] of an entity; anything else is the empty string."""
    if text == "HEADER":
        return msg.header
    if text == "HEADER.FIELDS":
        wanted = _wanted(fields)
        lines = b"".join(f.raw for f in msg.fields if (f.key in wanted) != not_)
        if lines and not lines.endswith(b"\n"):
            lines += b"\r\n"
        return lines + b"\r\n"  # the blank line that ends a header is part of it
    return b""


def _message_parts(msg: _Part) -> list[_Part]:
    """A message's numbered parts (RFC 3501 §6.4.5): a non-multipart message has only part 1, itself."""
    return msg.children if msg.children is not None else [msg]


def _part_parts(part: _Part) -> list[_Part]:
    if part.children is not None:
        return part.children
    if part.inner is not None:
        return _message_parts(part.inner)
    return []


def _decode_cte(body: bytes, cte: str) -> bytes:
    if cte in _COMPOSITE_CTE:
        return body
    if cte == "base64":
        data = re.sub(rb"[^A-Za-z0-9+/]", b"", body)
        data = data[: len(data) - 1] if len(data) % 4 == 1 else data
        return binascii.a2b_base64(data + b"=" * (-len(data) % 4))
    if cte == "quoted-printable":
        return _decode_qp(body)
    raise UnknownCTE(cte)


def _decode_qp(body: bytes) -> bytes:
    """Quoted-printable per RFC 2045 §6.7: white space at the end of a line is padding, dropped
    (rule 3); "=" ending a line, white space after it or not, is a soft line break (rule 5);
    other line ends are CRLF, the canonical form. A broken "=" escape stays as written."""
    out = []
    lines = body.split(b"\n")
    for n, line in enumerate(lines):
        line = line.rstrip(b" \t\r")
        if line.endswith(b"="):
            out.append(binascii.a2b_qp(line[:-1]))
        else:
            out.append(binascii.a2b_qp(line) + (b"\r\n" if n < len(lines) - 1 else b""))
    return b"".join(out)


def _decode_text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _decode_words(value: str) -> str:
    """RFC 2047 words decoded; the value as it is when they are broken."""
    try:
        return str(make_header(decode_header(value)))
    except Exception:  # unknown charset, bad base64...: search the raw text
        return value


def _address_list(addresses: list[Address]) -> bytes:
    if not addresses:
        return b"NIL"
    return b"(" + b"".join(b"(" + b" ".join(_nstring(x) for x in a) + b")" for a in addresses) + b")"


# ---------------------------------------------------------------- the message


@dataclass(frozen=True)
class Leaf:
    """A single part, as a mail reader lists it."""

    section: tuple[int, ...]
    content_type: str  # lower case, "text/plain"
    charset: str | None
    filename: str | None  # RFC 2047 words decoded
    disposition: str | None  # "inline", "attachment" or None
    size: int  # octets as stored (before the transfer encoding is undone)


class Message:
    """One stored message, parsed on first use."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.size = len(raw)
        self._budget = _Budget()

    @cached_property
    def _root(self) -> _Part:
        try:
            return _parse(self.raw, 0, len(self.raw), 0, self._budget)
        except Exception:  # never fail a FETCH on a broken message: show it as plain text
            return _entity(self.raw, 0, len(self.raw))

    @property
    def header(self) -> headers.Header:
        """The top-level header fields, as ENVELOPE and the submission policy read them."""
        return self._root.header_fields

    @property
    def beyond_caps(self) -> bool:
        """Nested deeper than MAX_DEPTH or more than MAX_PARTS parts: some parts are not shown."""
        return self._root is not None and self._budget.cut

    def envelope(self) -> bytes:
        return _envelope(self._root)

    def facts(self) -> "Facts":
        """What IMAP answers without the message, computed once when it is stored."""
        names = {f.key for f in self._root.fields if known_field(f.key)}
        return Facts(_sendable(self.envelope), _sendable(lambda: self.bodystructure(extended=False)),
                     _sendable(lambda: self.bodystructure(extended=True)),
                     self._root.header, {n: self.header_values(n) for n in sorted(names)},
                     {n: self.addresses(n) for n in ADDRESS_FIELDS if n in names},
                     {n: m for n in SORT_ADDRESS_FIELDS if (m := self.first_mailbox(n))}, self.sent_at())

    def bodystructure(self, *, extended: bool) -> bytes:
        return _structure(self._root, extended)

    def _resolve(self, part: tuple[int, ...]) -> _Part | None:
        parts, cur = _message_parts(self._root), None
        for n in part:
            if not 1 <= n <= len(parts):
                return None
            cur = parts[n - 1]
            parts = _part_parts(cur)
        return cur

    def section(self, part: tuple[int, ...], text: str | None, fields: tuple[str, ...] = (),
                not_: bool = False) -> bytes:
        """BODY[part.text] (RFC 3501 §6.4.5). `text` is None, "HEADER", "HEADER.FIELDS" (with
        `fields`, `not_` for HEADER.FIELDS.NOT), "TEXT" or "MIME". HEADER/TEXT after a part number
        need a message/rfc822 part. Anything that does not exist is the empty string."""
        if not part:
            msg = self._root
            if text is None:
                return self.raw
        else:
            cur = self._resolve(part)
            if cur is None:
                return b""
            if text is None:
                return cur.body
            if text == "MIME":
                return cur.header
            msg = cur.inner
            if msg is None:
                return b""
        if text == "TEXT":
            return msg.body
        return _header_section(msg, text, fields, not_)

    def binary(self, part: tuple[int, ...]) -> bytes:
        """BINARY[part] (RFC 3516): the part's content with its transfer encoding undone. BINARY[]
        and composite parts are returned as stored (they carry no encoding of their own)."""
        if not part:
            return self.raw
        cur = self._resolve(part)
        if cur is None:
            return b""
        if cur.children is not None or cur.inner is not None:
            return cur.body
        return _decode_cte(cur.body, cur.cte)

    def without_nul(self) -> bytes:
        """The message as IMAP can send it in BODY[]: each part whose content holds NUL octets
        (an APPEND of binary content, RFC 3516 §4.4) re-encoded in base64, as Dovecot stores
        such an APPEND. BINARY[] gives the octets back; a NUL elsewhere (a header) stays, and a
        FETCH of it is refused (encode.NulOctet)."""
        if b"\0" not in self.raw:
            return self.raw
        leaves, stack = [], [self._root]
        while stack:
            p = stack.pop()
            if p.children is not None:
                stack += p.children
            elif p.inner is not None:
                stack.append(p.inner)
            elif b"\0" in p.body and p.cte in _COMPOSITE_CTE and not p.header_fields.truncated:
                leaves.append(p)
        out, at = [], 0
        for p in sorted(leaves, key=lambda p: p.start):
            fields = b"".join(f.raw for f in p.fields if f.key != "content-transfer-encoding")
            if fields and not fields.endswith(b"\n"):
                fields += b"\r\n"
            encoded = base64.encodebytes(p.body).replace(b"\n", b"\r\n")
            out += [self.raw[at:p.start], fields, b"Content-Transfer-Encoding: base64\r\n\r\n", encoded]
            at = p.end
        return b"".join(out) + self.raw[at:]

    def leaves(self) -> list[Leaf]:
        """Every single (not composite) part, encapsulated messages' included, in order: what a
        reader shows as the text and the attachments. `section` is what `binary` takes."""
        out: list[Leaf] = []
        stack = [((n,), p) for n, p in enumerate(_message_parts(self._root), 1)][::-1]
        while stack:
            section, part = stack.pop()
            inner = _part_parts(part)
            if inner:
                stack.extend(((*section, n), p) for n, p in reversed(list(enumerate(inner, 1))))
                continue
            disposition = part.get("content-disposition") or ""
            kind = _DISP.match(disposition)
            name = next((v for n, v in _params(disposition) if n.lower() == "filename"), None) or part.param("name")
            out.append(Leaf(section, f"{part.maintype}/{part.subtype}".lower(), part.param("charset"),
                            _decode_words(name) if name else None,
                            kind.group(1).lower() if kind else None, part.body_size))
        return out

    def text_of(self, leaf: Leaf) -> str:
        """A text part's content, transfer encoding and charset undone."""
        try:
            data = self.binary(leaf.section)
        except (UnknownCTE, binascii.Error):
            data = self.section(leaf.section, None)
        return _decode_charset(data, leaf.charset)

    def header_values(self, name: str) -> list[str]:
        """Every value of a top-level header field, RFC 2047 words decoded (SEARCH HEADER, FROM...)."""
        name = name.lower()
        return [_decode_words(_decode_text(f.value.encode("utf-8", "surrogateescape")))
                for f in self._root.fields if f.key == name]

    def addresses(self, name: str) -> list[str]:
        """The addresses of a top-level header field as ENVELOPE reads them (SEARCH FROM, TO, CC,
        BCC), each `Display Name <mailbox@host>`, the name's RFC 2047 words decoded; a group is
        its name. What the raw text holds besides (comments, spacing, encoded words) is not."""
        found = []
        for f in self._root.fields:
            if f.key != name.lower():
                continue
            for display, _adl, mailbox, host in self._root.addresses_in(f.value):
                if mailbox is None:
                    continue  # the end of a group
                address = mailbox if host is None else f"<{mailbox}@{host}>"
                found.append(f"{_decode_words(_decode_text(display.encode('utf-8', 'surrogateescape')))} {address}"
                             if display else address)
        return found

    def header_text(self) -> str:
        """The whole top-level header, decoded, one field per line (SEARCH TEXT)."""
        return "\n".join(
            _decode_words(_decode_text(f.raw.split(b":", 1)[0] + b": " + f.value.encode("utf-8", "surrogateescape")))
            for f in self._root.fields)

    def body_text(self) -> str:
        """The text parts, transfer encoding and charset undone, encapsulated messages included:
        text/*, and the message/* leaves that are text too (a DSN's message/delivery-status,
        RFC 3464; an MDN's message/disposition-notification)."""
        out: list[str] = []
        stack = [self._root]
        while stack:
            p = stack.pop(0)
            if p.children is not None:
                stack[:0] = p.children
            elif p.inner is not None:
                stack.insert(0, p.inner)
            elif p.maintype.lower() in ("text", "message"):
                try:
                    data = _decode_cte(p.body, p.cte)
                except (UnknownCTE, binascii.Error):
                    data = p.body
                out.append(_decode_charset(data, p.param("charset")))
        return "\n".join(out)

    def first_mailbox(self, name: str) -> str:
        """SORT FROM/TO/CC (RFC 5256 §3): the mailbox (local part) of the field's first address
        as ENVELOPE shows it (a group's name for a group), "" when there is none."""
        value = self._root.get(name)
        for _display, _adl, mailbox, _host in self._root.addresses_in(value) if value else ():
            return mailbox or ""
        return ""

    def sent_at(self) -> datetime | None:
        """SORT DATE: the Date: header's instant, None when absent or unparsable."""
        value = self._root.get("date")
        try:
            return parsedate_to_datetime(value) if value else None
        except Exception:  # what sent_date does not match, SORT sorts by arrival
            return None

    def sent_date(self) -> date | None:
        """The Date: header's date as written, in the sender's own time zone (SENTON & co)."""
        value = self._root.get("date")
        if not value:
            return None
        try:
            return parsedate_to_datetime(value).date()
        except Exception:  # unparsable dates never match
            return None


def _sendable(render: Callable[[], bytes]) -> bytes:
    """An item's bytes, or b"" when a NUL octet in a header makes it unsendable (Known
    refuses it, as FETCH of the message itself does: encode.NulOctet)."""
    try:
        return render()
    except encode.NulOctet:
        return b""


@dataclass(frozen=True)
class Facts:
    """A message as FETCH ENVELOPE/BODY/BODYSTRUCTURE/BODY[HEADER…], SEARCH on its header and
    SORT see it, learnt once (Message.facts) and kept by the store. A store may leave out what a
    command does not read (None)."""

    envelope: bytes | None  # ENVELOPE, BODY and BODYSTRUCTURE are b"" when a NUL octet forbids them
    body: bytes | None  # BODY: BODYSTRUCTURE without extension data
    bodystructure: bytes | None
    header: bytes | None  # the top-level header as stored, its blank line included
    fields: dict[str, list[str]] | None  # header_values() of the FACT_FIELDS and X-MSS-* it has
    addresses: dict[str, list[str]] | None  # addresses() of the ADDRESS_FIELDS it has
    first_mailboxes: dict[str, str] | None  # first_mailbox() of the SORT_ADDRESS_FIELDS, when not ""
    sent_at: datetime | None


class Known:
    """A stored message answered from its Facts: the part of Message's interface that FETCH of
    header items, header SEARCH keys and SORT use, without the message's body."""

    def __init__(self, facts: Facts) -> None:
        self.facts = facts

    @cached_property
    def _head(self) -> Message:
        return Message(self.facts.header)

    @cached_property
    def _header(self) -> _Part:
        return _entity(self.facts.header, 0, len(self.facts.header))  # its fields only: no MIME to parse

    def envelope(self) -> bytes:
        return _sent(self.facts.envelope)

    def bodystructure(self, *, extended: bool) -> bytes:
        return _sent(self.facts.bodystructure if extended else self.facts.body)

    def section(self, part: tuple[int, ...], text: str | None, fields: tuple[str, ...] = (),
                not_: bool = False) -> bytes:
        """The top-level header sections only (FetchItem.header_only)."""
        assert not part and (text or "").startswith("HEADER"), "a Known message has no body"
        return _header_section(self._header, text, fields, not_)

    def header_values(self, name: str) -> list[str]:
        name = name.lower()
        if known_field(name):
            return self.facts.fields.get(name, [])
        return self._head.header_values(name)

    def addresses(self, name: str) -> list[str]:
        return self.facts.addresses.get(name.lower(), [])

    def first_mailbox(self, name: str) -> str:
        return self.facts.first_mailboxes.get(name.lower(), "")

    def sent_at(self) -> datetime | None:
        return self.facts.sent_at

    def sent_date(self) -> date | None:
        return self.facts.sent_at.date() if self.facts.sent_at is not None else None


def _sent(item: bytes) -> bytes:
    if not item:
        raise encode.NulOctet()
    return item


def _decode_charset(data: bytes, charset: str | None) -> str:
    name = (charset or "").strip().lower()
    if name in ("", "us-ascii", "ascii", "utf-8", "utf8"):
        return data.decode("utf-8", "replace")
    try:  # bytes.decode takes text encodings only: charset="zlib" or "base64" is no way to inflate a body
        return data.decode(name, "replace")
    except (LookupError, ValueError):  # unknown, or not even text: charset=u\xe9 (found by fuzzing)
        return data.decode("utf-8", "replace")


def _envelope(msg: _Part) -> bytes:
    """(date subject from sender reply-to to cc bcc in-reply-to message-id), RFC 3501 §7.4.2:
    sender and reply-to fall back to from when absent or empty."""
    def addrs(name: str) -> list[Address]:
        value = msg.get(name)
        return msg.addresses_in(value) if value else []

    from_ = addrs("from")
    items = [_nstring(msg.get("date")), _nstring(msg.get("subject")), _address_list(from_),
             _address_list(addrs("sender") or from_), _address_list(addrs("reply-to") or from_),
             _address_list(addrs("to")), _address_list(addrs("cc")), _address_list(addrs("bcc")),
             _nstring(msg.get("in-reply-to")), _nstring(msg.get("message-id"))]
    return b"(" + b" ".join(items) + b")"


def _plist(params: list[tuple[str, str]]) -> bytes:
    if not params:
        return b"NIL"
    return b"(" + b" ".join(_nstring(x) for kv in params for x in kv) + b")"


def _extension(part: _Part) -> bytes:
    """body-fld-dsp, body-fld-lang and body-fld-loc, shared by single and multi parts."""
    disp = part.get("content-disposition")
    m = _DISP.match(disp) if disp else None
    dsp = b"(" + _nstring(m.group(1)) + b" " + _plist(_params(disp[m.end():])) + b")" if m else b"NIL"
    lang = part.get("content-language")
    langs = [x.strip() for x in lang.split(",") if x.strip()] if lang else []
    lng = b"(" + b" ".join(_nstring(x) for x in langs) + b")" if langs else b"NIL"
    return dsp + b" " + lng + b" " + _nstring(part.get("content-location"))


def _structure(part: _Part, extended: bool) -> bytes:
    """BODY / BODYSTRUCTURE (RFC 3501 §7.4.2, RFC 9051 §7.5.2)."""
    if part.children is not None:
        kids = part.children or [_entity(b"", 0, 0)]  # a multipart needs a part: an empty text/plain
        out = b"".join(_structure(k, extended) for k in kids) + b" " + _nstring(part.subtype)
        if extended:
            out += b" " + _plist(part.params) + b" " + _extension(part)
        return b"(" + out + b")"
    is_text = part.maintype.lower() == "text"
    params = part.params or ([("charset", "us-ascii")] if is_text else [])  # RFC 2045 §5.2 default
    fields = [_nstring(part.maintype), _nstring(part.subtype), _plist(params),
              _nstring(part.get("content-id")), _nstring(part.get("content-description")),
              _nstring(part.get("content-transfer-encoding") or "7bit"), b"%d" % part.body_size]
    if part.inner is not None:
        fields += [_envelope(part.inner), _structure(part.inner, extended), b"%d" % part.lines]
    elif is_text:
        fields.append(b"%d" % part.lines)
    if extended:
        fields += [_nstring(part.get("content-md5")), _extension(part)]
    return b"(" + b" ".join(fields) + b")"
