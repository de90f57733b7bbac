"""FETCH data items: parse the attribute list (RFC 3501 §6.4.5, RFC 9051 §6.4.5, RFC 3516 BINARY,
RFC 7162 MODSEQ) and render the items that are computed from the message itself.

Items whose values live in the store (UID, FLAGS, INTERNALDATE, RFC822.SIZE, MODSEQ) are parsed
here but rendered by the session.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

from . import encode
from .message import Known, Message
from .syntax import Atom, PList, Token

SIMPLE = {"UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY", "BODYSTRUCTURE",
          "RFC822", "RFC822.HEADER", "RFC822.TEXT", "MODSEQ"}
MACROS = {  # RFC 3501 §6.4.5: only valid on their own, never inside a list
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
_TEXTS = {"HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"}
_SECTIONED = re.compile(r"(BODY|BODY\.PEEK|BINARY|BINARY\.PEEK|BINARY\.SIZE)\[(.*)\](?:<([0-9]+)\.([0-9]+)>)?",
                        re.I | re.S)
_FIELD = re.compile(r'"((?:[^"\\]|\\.)*)"|([^\s"()]+)')
_ATOM = re.compile(r"[!#$&'+\-./0-9;<=>?@A-Z^_`a-z|}~]+")  # header field names that need no quotes


@dataclass(frozen=True)
class FetchItem:
    """One data item. Sectioned ones are named "BODY[]", "BINARY[]" or "BINARY.SIZE[]" whatever
    their section; `text` is None, HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT or MIME;
    `fields` are upper-cased header names; `partial` is (origin, count)."""

    name: str
    part: tuple[int, ...] = ()
    text: str | None = None
    fields: tuple[str, ...] = ()
    partial: tuple[int, int] | None = None
    peek: bool = False

    @property
    def sets_seen(self) -> bool:
        """Fetching these marks the message \\Seen (RFC 3501 §6.4.5; RFC 3516 for BINARY)."""
        return self.name in ("RFC822", "RFC822.TEXT") or (self.name in ("BODY[]", "BINARY[]") and not self.peek)

    @property
    def header_only(self) -> bool:
        """Answered from the message's header alone (the store then reads only its start)."""
        return self.name in ("ENVELOPE", "RFC822.HEADER") or (
            self.name == "BODY[]" and not self.part and (self.text or "").startswith("HEADER"))

    @property
    def known_from(self) -> str | None:
        """The message.Facts field this item is rendered from, None when it needs the message."""
        if self.name in ("ENVELOPE", "BODY", "BODYSTRUCTURE"):
            return self.name.lower()
        return "header" if self.header_only else None

    @lru_cache(maxsize=256)  # noqa: B019 - items are few and frozen: once per item, not per message
    def response_label(self) -> bytes:
        """The name the response carries: PEEK dropped, only the origin octet of a partial
        (RFC 3501 §7.4.2: BODY[section]<origin>)."""
        if not self.name.endswith("[]"):
            return self.name.encode()
        section = ".".join(str(n) for n in self.part)
        if self.text:
            section += ("." if section else "") + self.text
        if self.fields:
            section += " (" + " ".join(f if _ATOM.fullmatch(f) else '"' + f.replace("\\", "\\\\")
                                       .replace('"', '\\"') + '"' for f in self.fields) + ")"
        label = f"{self.name[:-2]}[{section}]"
        if self.partial is not None:
            label += f"<{self.partial[0]}>"
        return label.encode()


def _section(spec: str) -> tuple[tuple[int, ...], str | None, tuple[str, ...]]:
    fields: tuple[str, ...] = ()
    if "(" in spec:
        spec, _, rest = spec.partition("(")
        if not rest.rstrip().endswith(")"):
            raise ValueError("unbalanced header field list")
        fields = tuple((re.sub(r"\\(.)", r"\1", m.group(1)) if m.group(1) is not None else m.group(2)).upper()
                       for m in _FIELD.finditer(rest.rstrip()[:-1]))
        if not fields:
            raise ValueError("bad header field list")
        spec = spec.rstrip()
    words = spec.split(".") if spec else []
    part: list[int] = []
    while words and re.fullmatch(r"[1-9][0-9]{0,8}", words[0]):
        part.append(int(words.pop(0)))
    text = ".".join(words).upper() or None
    if "" in words or (text is not None and text not in _TEXTS):
        raise ValueError(f"bad section {spec!r}")
    if text == "MIME" and not part:
        raise ValueError("MIME needs a part number")
    if (text or "").startswith("HEADER.FIELDS") != bool(fields):
        raise ValueError("HEADER.FIELDS takes a list of field names")
    return tuple(part), text, fields


def _item(token: Token) -> FetchItem:
    if not isinstance(token, Atom):
        raise ValueError("a FETCH item must be an atom")
    name = token.value.upper()
    if name in SIMPLE:
        return FetchItem(name)
    m = _SECTIONED.fullmatch(token.value)
    if m is None:
        raise ValueError(f"unknown FETCH item {token.value!r}")
    kind = m.group(1).upper()
    part, text, fields = _section(m.group(2))
    partial = None
    if m.group(3) is not None:
        partial = (int(m.group(3)), int(m.group(4)))
        if partial[1] == 0 or kind == "BINARY.SIZE":
            raise ValueError("bad partial")
    if kind.startswith("BINARY") and text is not None:
        raise ValueError("BINARY takes part numbers only")
    base = {"BODY.PEEK": "BODY", "BINARY.PEEK": "BINARY"}.get(kind, kind)
    return FetchItem(base + "[]", part, text, fields, partial, peek=kind.endswith(".PEEK"))


def parse_fetch(args: Sequence[Token]) -> list[FetchItem]:
    """The FETCH attribute list (exactly one token: an item, a macro, or a parenthesised list).
    Raises ValueError with a message for the BAD reply."""
    if len(args) != 1:
        raise ValueError("FETCH takes one data item or a parenthesised list")
    token = args[0]
    if isinstance(token, Atom) and token.value.upper() in MACROS:
        return [FetchItem(n) for n in MACROS[token.value.upper()]]
    items = token.items if isinstance(token, PList) else (token,)
    if not items:
        raise ValueError("empty FETCH list")
    return [_item(t) for t in items]


def _literal(data: bytes, *, binary: bool = False) -> bytes:
    """Section contents go out as literals; RFC 3516 §4.3: literal8 (~{N}) only when there is a NUL."""
    return encode.literal(data, binary=binary) if data else b'""'


def render(item: FetchItem, message: Message | Known) -> bytes:
    """The value of an item computed from the message (ENVELOPE, BODY, BODYSTRUCTURE, BODY[...],
    BINARY[...], BINARY.SIZE[...], RFC822, RFC822.HEADER, RFC822.TEXT). message.UnknownCTE
    propagates for BINARY (the session answers NO [UNKNOWN-CTE]); store items raise ValueError."""
    name = item.name
    if name == "ENVELOPE":
        return message.envelope()
    if name in ("BODY", "BODYSTRUCTURE"):
        return message.bodystructure(extended=name == "BODYSTRUCTURE")
    if name == "RFC822":
        return _literal(message.section((), None))
    if name in ("RFC822.HEADER", "RFC822.TEXT"):
        return _literal(message.section((), name[7:]))
    if name == "BINARY.SIZE[]":
        return b"%d" % len(message.binary(item.part))
    if name == "BODY[]":
        not_ = item.text == "HEADER.FIELDS.NOT"
        data = message.section(item.part, "HEADER.FIELDS" if not_ else item.text, item.fields, not_)
    elif name == "BINARY[]":
        data = message.binary(item.part)
    else:
        raise ValueError(f"{name} comes from the store, not the message")
    if item.partial is not None:
        origin, count = item.partial
        data = data[origin:origin + count]
    return _literal(data, binary=name == "BINARY[]")

