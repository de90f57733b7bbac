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

import binascii
import codecs
import re
from dataclasses import dataclass, field
from datetime import date
from email.header import decode_header, make_header
from email.utils import parsedate_to_datetime
from functools import cached_property

from . import encode

MAX_DEPTH = 50
_COMPOSITE_CTE = {"", "7bit", "8bit", "binary"}


class UnknownCTE(Exception):
    """BINARY on a part whose Content-Transfer-Encoding we cannot decode (RFC 3516 §4.3: NO [UNKNOWN-CTE])."""


# Local stand-ins for encode.quoted_or_literal / encode.nstring (written in parallel by part A);
# the lead will de-duplicate.
def _nstring(value: bytes | str | None) -> bytes:
    """Header text keeps its 8-bit octets (surrogateescape), as the message has them."""
    return encode.nstring(value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value)


def _unfold(raw: bytes) -> str:
    """A header field's value (after the colon), folding removed, as text that encodes back to
    the same octets (surrogateescape keeps 8-bit header bytes intact)."""
    value = raw.split(b":", 1)[1] if b":" in raw else b""
    value = re.sub(rb"\r?\n(?=[ \t])", b"", value).strip(b" \t\r\n")
    return value.decode("utf-8", "surrogateescape")


def _split_entity(data: bytes) -> tuple[bytes, bytes]:
    """Header block (its terminating blank line included, as BODY[HEADER] returns it) and body."""
    for blank in (b"\r\n", b"\n"):
        if data.startswith(blank):
            return blank, data[len(blank):]
    m = re.search(rb"\n\r?\n", data)
    if m is None:
        return data, b""
    return data[: m.end()], data[m.end():]


def _fields(header: bytes) -> list[tuple[str, bytes]]:
    """(lower-case name, raw field with continuation lines and line ends) in order."""
    out: list[tuple[str, bytes]] = []
    for line in header.splitlines(keepends=True):
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t"):
            if out:
                out[-1] = (out[-1][0], out[-1][1] + line)
        elif b":" in line:
            name = line.split(b":", 1)[0].strip().decode("ascii", "replace").lower()
            out.append((name, line))
    return out


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
    header: bytes
    body: bytes
    fields: list[tuple[str, bytes]]
    maintype: str = "text"
    subtype: str = "plain"
    params: list[tuple[str, str]] = field(default_factory=lambda: [("charset", "us-ascii")])
    children: list["_Part"] | None = None  # multipart
    inner: "_Part | None" = None  # message/rfc822, message/global: the encapsulated message

    def get(self, name: str) -> str | None:
        for n, raw in self.fields:
            if n == name:
                return _unfold(raw)
        return None

    def param(self, name: str) -> str | None:
        return next((v for n, v in self.params if n.lower() == name), None)

    @property
    def cte(self) -> str:
        return (self.get("content-transfer-encoding") or "").lower()


def _parse(data: bytes, depth: int, digest: bool = False) -> _Part:
    header, body = _split_entity(data)
    part = _Part(header, body, _fields(header))
    ctype = part.get("content-type")
    m = _TYPE.match(ctype) if ctype else None
    if m:
        part.maintype, part.subtype = m.group(1), m.group(2)
        part.params = _params(ctype[m.end():])
    elif digest:  # RFC 2046 §5.1.5: the default in a digest
        part.maintype, part.subtype, part.params = "message", "rfc822", []
    kind = part.maintype.lower()
    if kind == "multipart" or (kind == "message" and part.subtype.lower() in ("rfc822", "global")):
        if depth >= MAX_DEPTH:
            part.maintype, part.subtype, part.params = "application", "octet-stream", []
        elif kind == "message":
            part.inner = _parse(body, depth + 1)
        elif part.param("boundary"):
            boundary = part.param("boundary").encode("utf-8", "surrogateescape")
            is_digest = part.subtype.lower() == "digest"
            part.children = [_parse(p, depth + 1, is_digest) for p in _split_multipart(body, boundary)]
        else:
            part.maintype, part.subtype, part.params = "text", "plain", [("charset", "us-ascii")]
    return part


def _split_multipart(body: bytes, boundary: bytes) -> list[bytes]:
    """Body parts between delimiter lines (RFC 2046 §5.1.1): the CRLF before a delimiter belongs
    to it; preamble and epilogue are dropped; an unterminated last part runs to the end."""
    delim = re.compile(b"--" + re.escape(boundary) + rb"(--)?[ \t]*(?:\r?\n|\Z)")
    parts: list[bytes] = []
    start: int | None = None
    for m in delim.finditer(body):
        if m.start() and body[m.start() - 1] != 0x0A:
            continue  # not at the beginning of a line
        if start is not None:
            end = m.start()
            if body[start:end].endswith(b"\n"):
                end -= 2 if body[start:end].endswith(b"\r\n") else 1
            parts.append(body[start:end])
        if m.group(1):
            return parts
        start = m.end()
    if start is not None:
        parts.append(body[start:])
    return parts


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
        return binascii.a2b_qp(body)
    raise UnknownCTE(cte)


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


def _count_lines(body: bytes) -> int:
    return body.count(b"\n")


# ---------------------------------------------------------------- addresses (ENVELOPE)

_SPECIALS = "<>@,;:."


@dataclass
class _Tok:
    kind: str  # "a" atom, "q" quoted string (unquoted), "d" domain literal, "c" comment, "s" special
    text: str
    space: bool  # whitespace or a comment before it


def _tokens(s: str) -> list[_Tok]:
    out: list[_Tok] = []
    i, n, space = 0, len(s), False
    while i < n:
        c = s[i]
        if c in " \t\r\n":
            space, i = True, i + 1
        elif c in "(\"[":
            close = {"(": ")", '"': '"', "[": "]"}[c]
            depth, j, buf = 1, i + 1, []
            while j < n and depth:
                if s[j] == "\\" and c != "[" and j + 1 < n:
                    buf.append(s[j + 1])
                    j += 2
                    continue
                if s[j] == close:
                    depth -= 1
                elif c == "(" and s[j] == "(":
                    depth += 1
                if depth:
                    buf.append(s[j])
                j += 1
            text = "".join(buf)
            kind = {"(": "c", '"': "q", "[": "d"}[c]
            out.append(_Tok(kind, f"[{text}]" if kind == "d" else text, space))
            space, i = kind == "c", j
        elif c in _SPECIALS:
            out.append(_Tok("s", c, space))
            space, i = False, i + 1
        else:
            j = i
            while j < n and s[j] not in " \t\r\n()\"[" + _SPECIALS:
                j += 1
            out.append(_Tok("a", s[i:j], space))
            space, i = False, j
    return out


def _phrase(toks: list[_Tok]) -> str | None:
    words = ""
    for t in toks:
        if t.kind != "c":
            words += (" " if t.space and words else "") + t.text
    return words or None


def _word(t: _Tok) -> str:
    if t.kind == "q":
        return '"' + t.text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return t.text


Address = tuple[str | None, str | None, str | None, str | None]  # name, adl, mailbox, host


def _addr_spec(toks: list[_Tok]) -> tuple[str, str] | None:
    toks = [t for t in toks if t.kind != "c"]
    if not toks:
        return None
    at = max((i for i, t in enumerate(toks) if t.kind == "s" and t.text == "@"), default=-1)
    if at < 0:  # no domain: Dovecot's placeholder, a NIL host would mean a group
        return "".join(_word(t) for t in toks), "MISSING_DOMAIN"
    local = "".join(_word(t) for t in toks[:at]) or "MISSING_MAILBOX"
    return local, "".join(t.text for t in toks[at + 1:]) or "MISSING_DOMAIN"


def parse_addresses(value: str) -> list[Address]:
    """An address-list as ENVELOPE wants it (RFC 3501 §7.4.2): groups become a start marker
    (NIL NIL name NIL) and an end marker (NIL NIL NIL NIL); the display name is the phrase with
    quotes removed and encoded words kept, else a trailing comment; `<@a,@b:x@y>` keeps its route."""
    toks = _tokens(value)
    out: list[Address] = []
    in_group, i = False, 0

    def stop(k: int, chars: str) -> int:
        while k < len(toks) and not (toks[k].kind == "s" and toks[k].text in chars):
            k += 1
        return k

    while i < len(toks):
        j = stop(i, "<:,;")
        run, end = toks[i:j], toks[j].text if j < len(toks) else ""
        if end == ":" and not in_group:
            out.append((None, None, _phrase(run) or "", None))
            in_group, i = True, j + 1
            continue
        if end == "<":
            k = stop(j + 1, ">")
            inner = [t for t in toks[j + 1:k] if t.kind != "c"]
            colon = next((x for x, t in enumerate(inner) if t.kind == "s" and t.text == ":"), -1)
            adl = "".join(t.text for t in inner[:colon]) or None if colon >= 0 else None
            spec = _addr_spec(inner[colon + 1:])
            if spec:
                out.append((_phrase(run), adl, spec[0], spec[1]))
            j = stop(k, ",;")
            end = toks[j].text if j < len(toks) else ""
        else:
            spec = _addr_spec(run)
            if spec:
                comments = [t.text for t in run if t.kind == "c" and t.text.strip()]
                out.append((comments[-1].strip() if comments else None, None, spec[0], spec[1]))
        if end == ";" and in_group:
            out.append((None, None, None, None))
            in_group = False
        i = j + 1
    if in_group:
        out.append((None, None, None, None))
    return out


def _address_list(addresses: list[Address]) -> bytes:
    if not addresses:
        return b"NIL"
    return b"(" + b"".join(b"(" + b" ".join(_nstring(x) for x in a) + b")" for a in addresses) + b")"


# ---------------------------------------------------------------- the message


class Message:
    """One stored message, parsed on first use."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.size = len(raw)

    @cached_property
    def _root(self) -> _Part:
        try:
            return _parse(self.raw, 0)
        except Exception:  # never fail a FETCH on a broken message: show it as plain text
            header, body = _split_entity(self.raw)
            return _Part(header, body, [])

    def envelope(self) -> bytes:
        return _envelope(self._root)

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
        if text == "HEADER":
            return msg.header
        if text == "TEXT":
            return msg.body
        if text == "HEADER.FIELDS":
            wanted = {f.lower() for f in fields}
            lines = b"".join(raw for name, raw in msg.fields if (name in wanted) != not_)
            if lines and not lines.endswith(b"\n"):
                lines += b"\r\n"
            return lines + b"\r\n"  # the blank line that ends a header is part of it
        return b""

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

    def header_values(self, name: str) -> list[str]:
        """Every value of a top-level header field, RFC 2047 words decoded (SEARCH HEADER, FROM...)."""
        name = name.lower()
        return [_decode_words(_decode_text(_unfold(raw).encode("utf-8", "surrogateescape")))
                for n, raw in self._root.fields if n == name]

    def header_text(self) -> str:
        """The whole top-level header, decoded, one field per line (SEARCH TEXT)."""
        return "\n".join(
            _decode_words(_decode_text(raw.split(b":", 1)[0] + b": " +
                                       _unfold(raw).encode("utf-8", "surrogateescape")))
            for _, raw in self._root.fields)

    def body_text(self) -> str:
        """The text/* parts, transfer encoding and charset undone, encapsulated messages included."""
        out: list[str] = []
        stack = [self._root]
        while stack:
            p = stack.pop(0)
            if p.children is not None:
                stack[:0] = p.children
            elif p.inner is not None:
                stack.insert(0, p.inner)
            elif p.maintype.lower() == "text":
                try:
                    data = _decode_cte(p.body, p.cte)
                except (UnknownCTE, binascii.Error):
                    data = p.body
                out.append(_decode_charset(data, p.param("charset")))
        return "\n".join(out)

    def sent_date(self) -> date | None:
        """The Date: header's date as written, in the sender's own time zone (SENTON & co)."""
        value = self._root.get("date")
        if not value:
            return None
        try:
            return parsedate_to_datetime(value).date()
        except Exception:  # unparsable dates never match
            return None


def _decode_charset(data: bytes, charset: str | None) -> str:
    name = (charset or "").strip().lower()
    if name in ("", "us-ascii", "ascii", "utf-8", "utf8"):
        return data.decode("utf-8", "replace")
    try:
        return codecs.decode(data, codecs.lookup(name).name, "replace")
    except LookupError:
        return data.decode("utf-8", "replace")


def _envelope(msg: _Part) -> bytes:
    """(date subject from sender reply-to to cc bcc in-reply-to message-id), RFC 3501 §7.4.2:
    sender and reply-to fall back to from when absent or empty."""
    def addrs(name: str) -> list[Address]:
        value = msg.get(name)
        return parse_addresses(value) if value else []

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
        kids = part.children or [_Part(b"", b"", [])]  # a multipart needs a part: an empty text/plain
        out = b"".join(_structure(k, extended) for k in kids) + b" " + _nstring(part.subtype)
        if extended:
            out += b" " + _plist(part.params) + b" " + _extension(part)
        return b"(" + out + b")"
    is_text = part.maintype.lower() == "text"
    params = part.params or ([("charset", "us-ascii")] if is_text else [])  # RFC 2045 §5.2 default
    fields = [_nstring(part.maintype), _nstring(part.subtype), _plist(params),
              _nstring(part.get("content-id")), _nstring(part.get("content-description")),
              _nstring(part.get("content-transfer-encoding") or "7bit"), b"%d" % len(part.body)]
    if part.inner is not None:
        fields += [_envelope(part.inner), _structure(part.inner, extended), b"%d" % _count_lines(part.body)]
    elif is_text:
        fields.append(b"%d" % _count_lines(part.body))
    if extended:
        fields += [_nstring(part.get("content-md5")), _extension(part)]
    return b"(" + b" ".join(fields) + b")"
