"""SORT (RFC 5256) and its ESORT answers (RFC 5267): parse the command's criteria, reduce a
subject to its base subject, and order messages. Pure: the session finds the messages (with
the SEARCH keys that follow the criteria) and hands over what each criterion reads.

Choices where the RFCs leave room: strings compare with i;ascii-casemap (only a-z fold), as
RFC 5256 §3 requires; a Date: that is absent or unparsable sorts by INTERNALDATE (§3 DATE);
an address field sorts by its first address's mailbox, a group counting by its name (ENVELOPE's
view); equal keys keep message sequence order, whatever REVERSE says (§3).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Sequence

from .message import Known, Message
from .search import RETURN_OPTIONS
from .syntax import Atom, PList, Token

CRITERIA = ("ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO")
_CASEMAP = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
# RFC 5256 §5 subj-blob, subj-refwd, subj-leader and subj-trailer (BLOBCHAR: not "[" or "]")
_BLOB = r"\[[^\[\]]*\][ \t]*"
_LEADER = re.compile(rf"(?:(?:{_BLOB})*(?:re|fwd?)[ \t]*(?:{_BLOB})?:|[ \t]+)", re.I)
_TRAILER = re.compile(r"(?:\(fwd\)|[ \t])$", re.I)
_LEADING_BLOB = re.compile(_BLOB)


@dataclass(frozen=True)
class SortRequest:
    returns: tuple[str, ...] | None  # ESORT RETURN options, None for a plain SORT
    criteria: tuple[tuple[str, bool], ...]  # (criterion, reversed), most significant first
    search: tuple[Token, ...]  # CHARSET name key…, for search.parse_search


def parse_sort(args: Sequence[Token]) -> SortRequest:
    """[RETURN (options)] (criteria) charset key… ; ValueError when malformed."""
    args = list(args)
    returns = None
    if args and isinstance(args[0], Atom) and args[0].value.upper() == "RETURN":
        if len(args) < 2 or not isinstance(args[1], PList) or not all(isinstance(o, Atom) for o in args[1].items):
            raise ValueError("RETURN takes a list of options")
        returns = tuple(dict.fromkeys(o.value.upper() for o in args[1].items)) or ("ALL",)
        if not set(returns) <= set(RETURN_OPTIONS) - {"SAVE"}:
            raise ValueError(f"unsupported RETURN option in {returns}")
        args = args[2:]
    if len(args) < 3 or not isinstance(args[0], PList):
        raise ValueError("SORT takes (criteria), a charset and search keys")
    words = [item.value.upper() if isinstance(item, Atom) else "" for item in args[0].items]
    criteria, reverse = [], False
    for word in words:
        if word == "REVERSE" and not reverse:
            reverse = True
        elif word in CRITERIA:
            criteria.append((word, reverse))
            reverse = False
        else:
            raise ValueError(f"unknown sort criterion {word[:20] or 'in the list'}")
    if reverse or not criteria:
        raise ValueError("SORT needs at least one criterion, REVERSE before one")
    return SortRequest(returns, tuple(criteria), (Atom("CHARSET"), *args[1:]))


def base_subject(subject: str) -> str:
    """RFC 5256 §2.1, from a subject whose encoded words are already decoded: no "Re:",
    "Fwd:", "[list]" leaders, "(fwd)" trailers or "[fwd: …]" wrapping; case kept."""
    return reduce_subject(subject)[0]


def reduce_subject(subject: str) -> tuple[str, bool]:
    """The base subject, and whether the subject was a reply or forward (THREAD §3: a
    subj-refwd, a "(fwd)" trailer or a "[fwd: …]" wrapping was taken away)."""
    subject = re.sub(r"[ \t\r\n]+", " ", subject)
    refwd = False
    while True:
        while (m := _TRAILER.search(subject)) is not None:  # step 2
            refwd |= len(m.group()) > 1  # "(fwd)", not a space
            subject = subject[:m.start()]
        while True:  # steps 3 to 5
            before = subject
            while (m := _LEADER.match(subject)) and m.end():
                refwd |= m.group().endswith(":")
                subject = subject[m.end():]
            m = _LEADING_BLOB.match(subject)
            if m and subject[m.end():]:
                subject = subject[m.end():]
            if subject == before:
                break
        if subject[:5].lower() == "[fwd:" and subject.endswith("]"):  # step 6
            subject = subject[5:-1]
            refwd = True
            continue
        return subject, refwd


@dataclass
class SortFacts:
    seq: int
    internaldate: datetime
    size: int
    message: Message | Known | None  # None when no criterion reads the header


def needs_message(request: SortRequest) -> bool:
    return any(c not in ("ARRIVAL", "SIZE") for c, _ in request.criteria)


def sort_key(criterion: str, facts: SortFacts):  # noqa: ANN202 - a datetime, an int or a str
    """What a criterion compares, read from the facts: the one place SORT and THREAD read
    header values (THREAD's subjects and sent dates are SUBJECT's and DATE's keys)."""
    if criterion == "ARRIVAL":
        return _utc(facts.internaldate)
    if criterion == "SIZE":
        return facts.size
    if criterion == "DATE":
        sent = facts.message.sent_at()
        return _utc(sent if sent is not None else facts.internaldate)
    if criterion == "SUBJECT":
        return base_subject((facts.message.header_values("subject") or [""])[0]).translate(_CASEMAP)
    return facts.message.first_mailbox(criterion.lower()).translate(_CASEMAP)


def _utc(when: datetime) -> datetime:
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)


def sort(request: SortRequest, found: Sequence[SortFacts]) -> list[SortFacts]:
    """Ordered by the criteria, the most significant last applied (sorts are stable)."""
    ordered = sorted(found, key=lambda f: f.seq)
    for criterion, reverse in reversed(request.criteria):
        keys = {f.seq: sort_key(criterion, f) for f in ordered}
        ordered.sort(key=lambda f: keys[f.seq], reverse=reverse)
    return ordered
