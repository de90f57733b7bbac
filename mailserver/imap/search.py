"""SEARCH criteria: parse them (RFC 3501 §6.4.4, RFC 9051 §6.4.4, RFC 7162 §3.1.5 MODSEQ,
RFC 4731 ESEARCH RETURN, RFC 5182 SEARCHRES's SAVE and `$`, RFC 5032 WITHIN's OLDER and YOUNGER)
and evaluate them against one message; a query on flags and SUBJECT alone is also handed to the
store as a FlagTerm, answered by one SQL query instead of a test per message.

Matching rules, chosen where the RFCs leave room:
- strings match as case-insensitive substrings (str.casefold) of decoded text: RFC 2047 words in
  headers, transfer encoding and charset in bodies; an empty string matches any message that has
  the header field at all;
- BEFORE/ON/SINCE compare the INTERNALDATE's date in UTC (the server's time zone);
  SENTBEFORE/SENTON/SENTSINCE compare the Date: header's date in the sender's own zone, and a
  message without a usable Date: matches none of them;
- MODSEQ's optional entry name and type are accepted and ignored: a message has one mod-sequence
  for all its flags (RFC 7162 §3.1.5 allows it).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from functools import lru_cache
from typing import AbstractSet, Any, Callable, Iterator, Sequence

from .message import Known, Message, known_field
from .syntax import Atom, PList, String, Token, text

CHARSETS = ("US-ASCII", "UTF-8")
RETURN_OPTIONS = ("MIN", "MAX", "ALL", "COUNT", "SAVE")
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True), "DELETED": ("\\Deleted", True), "DRAFT": ("\\Draft", True),
    "FLAGGED": ("\\Flagged", True), "RECENT": ("\\Recent", True), "SEEN": ("\\Seen", True),
    "UNANSWERED": ("\\Answered", False), "UNDELETED": ("\\Deleted", False), "UNDRAFT": ("\\Draft", False),
    "UNFLAGGED": ("\\Flagged", False), "UNSEEN": ("\\Seen", False), "OLD": ("\\Recent", False),
}
_ADDRESS_KEYS = {"BCC", "CC", "FROM", "TO"}
# NOT, OR and parentheses around one key. Parsing and matching recurse once per level, so a
# client could reach Python's recursion limit (1,000) with `NOT NOT … ALL`; no client query
# needs more than a handful, and the command parser caps parentheses at the same depth.
MAX_NESTING = 64
MAX_INTERVAL = 2**32 - 1  # RFC 5032 interval: an nz-number, 32 bits (136 years)
_DATE_KEYS = {"BEFORE": "<", "ON": "=", "SINCE": ">=", "SENTBEFORE": "<", "SENTON": "=", "SENTSINCE": ">="}


class BadCharset(ValueError):
    """CHARSET we do not search in: the reply is NO [BADCHARSET (US-ASCII UTF-8)]."""


@dataclass
class MessageFacts:
    """What the session knows about one message of the selected folder; the body is loaded
    only if a key needs it."""

    seq: int
    uid: int
    flags: frozenset[str]
    internaldate: datetime
    size: int
    modseq: int
    loader: Callable[[], Message | Known]

    def message(self) -> Message | Known:
        return self.loader()


@lru_cache(maxsize=1024)
def _folded(flags: frozenset[str]) -> frozenset[str]:
    """Flag sets are shared between messages (folders.flag_set): fold each distinct one once."""
    return frozenset(f.casefold() for f in flags)


class _Context:
    """One evaluation: the message is loaded at most once, and only if a key needs it."""

    def __init__(self, facts: MessageFacts, largest_seq: int, largest_uid: int) -> None:
        self.facts, self.largest_seq, self.largest_uid = facts, largest_seq, largest_uid
        self.flags = _folded(facts.flags)
        self._message: Message | Known | None = None
        self._body: str | None = None

    @property
    def message(self) -> Message | Known:
        if self._message is None:
            self._message = self.facts.message()
        return self._message

    @property
    def body(self) -> str:
        if self._body is None:
            self._body = self.message.body_text().casefold()
        return self._body


class Key:
    """A search key. `needs_message`: evaluating it reads the message body or header."""

    needs_message = False
    needs_body = False  # beyond the header

    def matches(self, ctx: _Context) -> bool:
        raise NotImplementedError

    def children(self) -> tuple["Key", ...]:
        return ()


@dataclass(frozen=True)
class All(Key):
    def matches(self, ctx: _Context) -> bool:
        return True


@dataclass(frozen=True)
class Flag(Key):
    """A system flag or keyword, present or absent (flags compare case-insensitively)."""

    flag: str
    present: bool

    def matches(self, ctx: _Context) -> bool:
        return (self.flag.casefold() in ctx.flags) == self.present


@dataclass(frozen=True)
class And(Key):
    keys: tuple[Key, ...]

    def children(self) -> tuple[Key, ...]:
        return self.keys

    def matches(self, ctx: _Context) -> bool:
        return all(k.matches(ctx) for k in self.keys)


@dataclass(frozen=True)
class Or(Key):
    left: Key
    right: Key

    def children(self) -> tuple[Key, ...]:
        return (self.left, self.right)

    def matches(self, ctx: _Context) -> bool:
        return self.left.matches(ctx) or self.right.matches(ctx)


@dataclass(frozen=True)
class Not(Key):
    key: Key

    def children(self) -> tuple[Key, ...]:
        return (self.key,)

    def matches(self, ctx: _Context) -> bool:
        return not self.key.matches(ctx)


@dataclass(frozen=True)
class Numbers(Key):
    """A sequence set of message sequence numbers, or of UIDs (`UID 1:*`)."""

    spec: str
    uid: bool
    numbers: Any = field(compare=False, repr=False)  # seqset.SequenceSet

    def matches(self, ctx: _Context) -> bool:
        if self.uid:
            return self.numbers.contains(ctx.facts.uid, ctx.largest_uid)
        return self.numbers.contains(ctx.facts.seq, ctx.largest_seq)


def _compare(op: str, left: date, right: date) -> bool:
    return left < right if op == "<" else left == right if op == "=" else left >= right


@dataclass(frozen=True)
class InternalDate(Key):
    op: str  # "<", "=", ">="
    day: date

    def matches(self, ctx: _Context) -> bool:
        when = ctx.facts.internaldate
        if when.tzinfo is not None:
            when = when.astimezone(timezone.utc)
        return _compare(self.op, when.date(), self.day)


@dataclass(frozen=True)
class SentDate(Key):
    op: str
    day: date
    needs_message = True

    def matches(self, ctx: _Context) -> bool:
        sent = ctx.message.sent_date()
        return sent is not None and _compare(self.op, sent, self.day)


@dataclass(frozen=True)
class Size(Key):
    larger: bool
    n: int

    def matches(self, ctx: _Context) -> bool:
        return ctx.facts.size > self.n if self.larger else ctx.facts.size < self.n


@dataclass(frozen=True)
class Header(Key):
    name: str
    value: str
    needs_message = True

    def matches(self, ctx: _Context) -> bool:
        needle = self.value.casefold()
        return any(needle in v.casefold() for v in ctx.message.header_values(self.name))


@dataclass(frozen=True)
class Address(Key):
    """FROM, TO, CC, BCC: a substring of one of the field's addresses as ENVELOPE shows them."""

    name: str
    value: str
    needs_message = True

    def matches(self, ctx: _Context) -> bool:
        needle = self.value.casefold()
        return any(needle in a.casefold() for a in ctx.message.addresses(self.name))


@dataclass(frozen=True)
class Body(Key):
    """BODY (text parts) or TEXT (header and text parts)."""

    value: str
    with_header: bool
    needs_message = True
    needs_body = True

    def matches(self, ctx: _Context) -> bool:
        needle = self.value.casefold()
        if needle in ctx.body:
            return True
        return self.with_header and needle in ctx.message.header_text().casefold()


@dataclass(frozen=True)
class ModSeq(Key):
    """RFC 7162 §3.1.5: mod-sequence equal to or greater than the value."""

    value: int

    def matches(self, ctx: _Context) -> bool:
        return ctx.facts.modseq >= self.value


@dataclass(frozen=True)
class Saved(Key):
    """RFC 5182 `$`: the UIDs the session's last SEARCH … RETURN (SAVE) found."""

    uids: frozenset[int]

    def matches(self, ctx: _Context) -> bool:
        return ctx.facts.uid in self.uids


@dataclass(frozen=True)
class Age(Key):
    """RFC 5032 WITHIN: OLDER (INTERNALDATE before `cutoff`) or YOUNGER (at or after it), the
    cutoff being the interval's seconds before the command arrived."""

    older: bool
    cutoff: datetime

    def matches(self, ctx: _Context) -> bool:
        when = ctx.facts.internaldate
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return (when < self.cutoff) == self.older


def _walk(key: Key) -> Iterator[Key]:
    yield key
    for child in key.children():
        yield from _walk(child)


def _needs_message(key: Key) -> bool:
    return any(k.needs_message for k in _walk(key))


def _and(keys: list[Key]) -> Key:
    """The implicit AND, keys answered from the store first: often the message need not be read."""
    return keys[0] if len(keys) == 1 else And(tuple(sorted(keys, key=_needs_message)))


@dataclass
class SearchQuery:
    returns: tuple[str, ...] | None  # ESEARCH RETURN options, None for a plain SEARCH
    charset: str
    key: Key
    needs_message: bool
    needs_body: bool
    needs_header: bool  # a HEADER key on a field Facts do not keep (message.known_field)
    uses_modseq: bool  # a MODSEQ key: the response carries (MODSEQ n), RFC 7162 §3.1.5
    needs_dates: bool  # INTERNALDATE (BEFORE, SINCE, OLDER...): the session reads it first

    def matches(self, facts: MessageFacts, *, largest_seq: int, largest_uid: int) -> bool:
        return self.key.matches(_Context(facts, largest_seq, largest_uid))

    def on_flags(self) -> FlagTerm | None:
        """The query as a condition on stored flags and subjects alone, for the store to answer
        (SQL), or None when a key needs more: the message, its date, size or number, or
        \\Recent (the session's own)."""
        return _flag_term(self.key)


# A condition on stored flags and on the Subject learnt at delivery: ("all",), ("flag", name,
# present), ("subject", text) (SEARCH SUBJECT), ("and", terms), ("or", a, b), ("not", term).
# Flag names compare case-insensitively.
FlagTerm = tuple


def _flag_term(key: Key) -> FlagTerm | None:
    if isinstance(key, All):
        return ("all",)
    if isinstance(key, Header) and key.name == "subject":
        return ("subject", key.value)
    if isinstance(key, Flag):
        return None if key.flag.casefold() == "\\recent" else ("flag", key.flag, key.present)
    if isinstance(key, Not):
        inner = _flag_term(key.key)
        return None if inner is None else ("not", inner)
    if isinstance(key, Or):
        left, right = _flag_term(key.left), _flag_term(key.right)
        return None if left is None or right is None else ("or", left, right)
    if isinstance(key, And):
        terms = [_flag_term(k) for k in key.keys]
        return None if any(t is None for t in terms) else ("and", tuple(terms))
    return None


def flags_only(term: FlagTerm) -> bool:
    """Whether `term` asks about flags alone (no Subject): `flags_satisfy` answers it."""
    kind = term[0]
    if kind == "subject":
        return False
    return kind in ("all", "flag") or all(flags_only(t) for t in (term[1] if kind == "and" else term[1:]))


def flags_satisfy(term: FlagTerm, flags: AbstractSet[str]) -> bool:
    """Whether a message with `flags` satisfies a `flags_only` term: answered from the session's
    own view, with no store read, about the messages as the session was told of them."""
    kind = term[0]
    if kind == "all":
        return True
    if kind == "flag":
        wanted = term[1].casefold()
        return any(f.casefold() == wanted for f in flags) == term[2]
    if kind == "and":
        return all(flags_satisfy(t, flags) for t in term[1])
    if kind == "or":
        return flags_satisfy(term[1], flags) or flags_satisfy(term[2], flags)
    return not flags_satisfy(term[1], flags)


class _Reader:
    def __init__(self, tokens: Sequence[Token], saved: frozenset[int] = frozenset()) -> None:
        self.tokens, self.i = tuple(tokens), 0
        self.saved = saved  # the UIDs `$` stands for

    def done(self) -> bool:
        return self.i >= len(self.tokens)

    def peek_word(self) -> str | None:
        if not self.done() and isinstance(self.tokens[self.i], Atom):
            return self.tokens[self.i].value.upper()
        return None

    def next(self, what: str) -> Token:
        if self.done():
            raise ValueError(f"missing {what}")
        self.i += 1
        return self.tokens[self.i - 1]

    def string(self, what: str) -> str:
        token = self.next(what)
        try:
            return text(token)
        except UnicodeDecodeError:
            raise ValueError(f"{what} is not UTF-8") from None

    def atom(self, what: str) -> str:
        token = self.next(what)
        if not isinstance(token, Atom):
            raise ValueError(f"expected {what}")
        return token.value

    def number(self, what: str) -> int:
        value = self.string(what)
        if not re.fullmatch(r"[0-9]{1,19}", value) or int(value) >= 2**63:
            raise ValueError(f"bad {what} {value!r}")
        return int(value)

    def date(self, what: str) -> date:
        """RFC 3501 date: 1-Feb-1994, bare or quoted."""
        value = self.string(what)
        m = re.fullmatch(r"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})", value)
        if m is None or m.group(2).lower() not in _MONTHS:
            raise ValueError(f"bad date {value!r}")
        try:
            return date(int(m.group(3)), _MONTHS.index(m.group(2).lower()) + 1, int(m.group(1)))
        except ValueError:
            raise ValueError(f"bad date {value!r}") from None


def _sequence(spec: str, uid: bool) -> Numbers:
    from .seqset import SequenceSet  # written in parallel: imported when first needed

    return Numbers(spec, uid, SequenceSet.parse(spec))


def _key(r: _Reader, depth: int = 0) -> Key:
    """One search key; `depth` counts the NOT, OR and parentheses around it."""
    if depth > MAX_NESTING:
        raise ValueError(f"search keys nested more than {MAX_NESTING} deep")
    token = r.next("search key")
    if isinstance(token, PList):
        inner = _Reader(token.items, r.saved)
        keys = [_key(inner, depth + 1)]
        while not inner.done():
            keys.append(_key(inner, depth + 1))
        return _and(keys)
    if isinstance(token, String):
        raise ValueError("a string is not a search key")
    word = token.value.upper()
    if word in _FLAG_KEYS:
        return Flag(*_FLAG_KEYS[word])
    if word == "ALL":
        return All()
    if word == "NEW":
        return And((Flag("\\Recent", True), Flag("\\Seen", False)))
    if word in ("KEYWORD", "UNKEYWORD"):
        return Flag(r.atom("keyword"), word == "KEYWORD")
    if word in _ADDRESS_KEYS:
        return Address(word.lower(), r.string("search string"))
    if word == "SUBJECT":
        return Header("subject", r.string("search string"))
    if word == "HEADER":
        return Header(r.string("header field name").lower(), r.string("search string"))
    if word in ("BODY", "TEXT"):
        return Body(r.string("search string"), word == "TEXT")
    if word in _DATE_KEYS:
        kind = SentDate if word.startswith("SENT") else InternalDate
        return kind(_DATE_KEYS[word], r.date("date"))
    if word in ("LARGER", "SMALLER"):
        return Size(word == "LARGER", r.number("size"))
    if word == "NOT":
        return Not(_key(r, depth + 1))
    if word == "OR":
        return Or(_key(r, depth + 1), _key(r, depth + 1))
    if word == "UID":
        return _sequence(r.atom("UID set"), uid=True)
    if word == "MODSEQ":
        if r.peek_word() is None or not r.peek_word().isdigit():
            r.string("entry name")  # "/flags/\\Seen": one mod-sequence per message, see the docstring
            if r.atom("entry type").upper() not in ("PRIV", "SHARED", "ALL"):
                raise ValueError("bad MODSEQ entry type")
        return ModSeq(r.number("mod-sequence"))
    if word == "$":
        return Saved(r.saved)
    if word in ("OLDER", "YOUNGER"):
        seconds = r.number("interval")
        if not 1 <= seconds <= MAX_INTERVAL:
            raise ValueError(f"bad interval {seconds}")
        return Age(word == "OLDER", datetime.now(timezone.utc) - timedelta(seconds=seconds))
    if word[:1].isdigit() or word[:1] in "*$":
        return _sequence(token.value, uid=False)
    raise ValueError(f"unknown search key {token.value!r}")


def parse_search(args: Sequence[Token], *, utf8_default: bool, saved: frozenset[int] = frozenset()) -> SearchQuery:
    """[RETURN (options)] [CHARSET name] key... (implicit AND). The default charset is UTF-8 once
    UTF8=ACCEPT is enabled or under IMAP4rev2, US-ASCII otherwise; either may be named, any other
    raises BadCharset. Other syntax errors raise ValueError. `saved`: the UIDs `$` stands for."""
    r = _Reader(args, saved)
    returns: tuple[str, ...] | None = None
    if r.peek_word() == "RETURN":
        r.next("RETURN")
        options = r.next("RETURN options")
        if not isinstance(options, PList) or not all(isinstance(o, Atom) for o in options.items):
            raise ValueError("RETURN takes a list of options")
        returns = tuple(dict.fromkeys(o.value.upper() for o in options.items)) or ("ALL",)  # RFC 4731 §3
        if not set(returns) <= set(RETURN_OPTIONS):
            raise ValueError(f"unsupported RETURN option in {returns}")
    charset = "UTF-8" if utf8_default else "US-ASCII"
    if r.peek_word() == "CHARSET":
        r.next("CHARSET")
        charset = r.string("charset").upper()
        if charset not in CHARSETS:
            raise BadCharset(f"unsupported charset {charset}")
    keys = [_key(r)]
    while not r.done():
        keys.append(_key(r))
    key = _and(keys)
    nodes = list(_walk(key))
    return SearchQuery(returns, charset, key, needs_message=any(k.needs_message for k in nodes),
                       needs_body=any(k.needs_body for k in nodes),
                       needs_header=any(isinstance(k, Header) and not known_field(k.name) for k in nodes),
                       uses_modseq=any(isinstance(k, ModSeq) for k in nodes),
                       needs_dates=any(isinstance(k, (InternalDate, Age)) for k in nodes))
