"""Values to IMAP response bytes, and the date and mailbox-name formats both ways.

Strings go out quoted when that is safe and short, as literals otherwise (RFC 3501 §4.3):
a quoted string cannot hold CR, LF or NUL, and holds 8-bit text only once the client has
enabled UTF-8 (RFC 9051 §4.3, RFC 6855 §3).
"""
from __future__ import annotations

import base64
import re
from datetime import date, datetime, timedelta, timezone
from typing import Iterable

# Longer strings go out as literals, so clients never buffer huge quoted strings.
MAX_QUOTED = 1024

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH = {name.lower(): number for number, name in enumerate(MONTHS, 1)}

# ASTRING-CHAR (RFC 3501 §9): printable ASCII except atom-specials, "]" allowed.
_ASTRING = re.compile(r'[^\x00-\x20\x7f-\U0010ffff(){%*"\\]+')
_UNSAFE_QUOTED = re.compile(rb"[\x00\r\n]")
_UNSAFE_ASCII = re.compile(rb"[\x00\r\n\x80-\xff]")
# RFC 3501 §9: date-time (without its quotes) and SEARCH's date; the day may be "1", " 1" or "01".
_DATE_TIME = re.compile(r" ?([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})")
_DATE = re.compile(r"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})")
# Modified UTF-7 (RFC 3501 §5.1.3): printable ASCII stands for itself, "&-" for "&",
# "&...-" wraps modified BASE64 (",", not "/", no padding) of UTF-16BE.
_MUTF7 = re.compile(r"(?:[\x20-\x25\x27-\x7e]|&[A-Za-z0-9+,]*-)*")
_SHIFTED = re.compile(r"&([A-Za-z0-9+,]*)-")
_NON_PRINTABLE = re.compile(r"[^\x20-\x7e]+")


class NulOctet(Exception):
    """A string to send holds a NUL octet: no quoted string or plain literal may (RFC 3501 §9:
    CHAR8 excludes it); only BINARY's literal8 (RFC 3516) can carry it."""


def quoted_or_literal(value: bytes | str, *, utf8: bool = False) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    unsafe = _UNSAFE_QUOTED if utf8 else _UNSAFE_ASCII
    if len(data) <= MAX_QUOTED and not unsafe.search(data):
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return literal(data)


def literal(data: bytes, *, binary: bool = False) -> bytes:
    """{n} and the octets; `binary` (BINARY[], RFC 3516 §4.3): a literal8, ~{n}, when they hold a
    NUL. A NUL anywhere else raises NulOctet: the command must be refused, never answered with it."""
    if b"\0" in data:
        if not binary:
            raise NulOctet()
        return b"~{%d}\r\n" % len(data) + data
    return b"{%d}\r\n" % len(data) + data


def nstring(value: bytes | str | None) -> bytes:
    return b"NIL" if value is None else quoted_or_literal(value)


def astring(value: str, *, utf8: bool = False) -> bytes:
    """An atom when possible. "NIL" is quoted: in an nstring position it would mean none."""
    if _ASTRING.fullmatch(value) and value.upper() != "NIL":
        return value.encode()
    return quoted_or_literal(value, utf8=utf8)


def plist(items: Iterable[bytes]) -> bytes:
    return b"(" + b" ".join(items) + b")"


def mailbox_name(name: str, *, utf8: bool) -> bytes:
    """IMAP4rev1 clients see modified UTF-7; IMAP4rev2 and UTF8=ACCEPT clients see UTF-8
    (RFC 9051 §5.1, RFC 6855 §3)."""
    return astring(name, utf8=True) if utf8 else astring(utf7_encode(name))


def utf7_encode(name: str) -> str:
    return _NON_PRINTABLE.sub(_shift, name.replace("&", "&-"))


def utf7_decode(name: str) -> str:
    """Strict: only the canonical encoding is accepted (RFC 3501 §5.1.3: printable ASCII
    MUST stand for itself), so each folder has exactly one modified UTF-7 name."""
    if not _MUTF7.fullmatch(name):
        raise ValueError("not modified UTF-7")
    decoded = _SHIFTED.sub(_unshift, name)  # binascii.Error, UnicodeDecodeError: ValueErrors
    if utf7_encode(decoded) != name:
        raise ValueError("not canonical modified UTF-7")
    return decoded


def _shift(match: re.Match[str]) -> str:
    encoded = base64.b64encode(match[0].encode("utf-16-be")).rstrip(b"=").replace(b"/", b",")
    return "&" + encoded.decode() + "-"


def _unshift(match: re.Match[str]) -> str:
    run = match[1]
    if not run:
        return "&"
    padded = run.replace(",", "/") + "=" * (-len(run) % 4)
    return base64.b64decode(padded, validate=True).decode("utf-16-be")


def date_time(dt: datetime) -> bytes:
    """INTERNALDATE (RFC 3501 §9 date-time): the day space-padded, English month names
    whatever the locale. A naive datetime is taken as UTC."""
    offset = dt.utcoffset() or timedelta(0)
    sign = "-" if offset < timedelta(0) else "+"
    minutes = abs(offset) // timedelta(minutes=1)
    text = (f"{dt.day:2d}-{MONTHS[dt.month - 1]}-{dt.year:04d} {dt:%H:%M:%S} "
            f"{sign}{minutes // 60:02d}{minutes % 60:02d}")
    return f'"{text}"'.encode()


def parse_date_time(text: str) -> datetime:
    """APPEND's date-time, without its quotes; an aware datetime in the given zone."""
    match = _DATE_TIME.fullmatch(text)
    if match is None:
        raise ValueError(f"invalid date-time: {text!r}")
    day, month, year, hour, minute, second, sign, zone_h, zone_m = match.groups()
    if int(zone_m) > 59:
        raise ValueError(f"invalid zone: {text!r}")
    offset = timedelta(hours=int(zone_h), minutes=int(zone_m)) * (-1 if sign == "-" else 1)
    return datetime(int(year), _month(month), int(day), int(hour), int(minute), int(second),
                    tzinfo=timezone(offset))


def parse_date(text: str) -> date:
    """SEARCH's date (RFC 3501 §9), e.g. "1-Feb-1994"."""
    match = _DATE.fullmatch(text)
    if match is None:
        raise ValueError(f"invalid date: {text!r}")
    return date(int(match[3]), _month(match[2]), int(match[1]))


def _month(name: str) -> int:
    try:
        return _MONTH[name.lower()]
    except KeyError:
        raise ValueError(f"invalid month: {name!r}") from None
