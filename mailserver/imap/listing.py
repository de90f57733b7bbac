"""LIST (RFC 3501 §6.3.8 with LIST-EXTENDED, RFC 5258, and LIST-STATUS, RFC 5819), LSUB and
STATUS: what a client learns about folders without selecting them.

Names span every box of the session's namespace (`names.py`); a box appears only where the
person has the "l" right (RFC 4314 §4).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from . import encode
from .names import DELIMITER, Box, expand_rights, pattern_matcher, valid_rights
from .syntax import Atom, PList, Token, text

if TYPE_CHECKING:
    from .session import Session

STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ", "SIZE", "DELETED",
                "APPENDLIMIT")
SELECTION_OPTIONS = {"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"}


@dataclass(frozen=True)
class Entry:
    name: str
    box: Box
    folder: str | None  # None: a \Noselect level above shared boxes
    special_use: str = ""


async def _entries(session: "Session") -> list[Entry]:
    folders = session.ctx.folders
    entries: list[Entry] = []
    for box in session.namespace.boxes:
        if not box.may("l"):
            continue
        for info in await folders.list(box.grant.mailbox_id):
            entries.append(Entry(box.visible_name(info.name), box, info.name, info.special_use))
    shared = [b for b in session.namespace.shared if b.may("l")]
    if shared:
        entries += [Entry(name, shared[0], None) for name in session.namespace.container_names()
                    if name == "Shared" or any(b.prefix == name + DELIMITER for b in shared)]
    return sorted(entries, key=lambda e: (e.name != "INBOX", e.name))


async def _subscribed(session: "Session") -> set[str]:
    names: set[str] = set()
    for box in session.namespace.boxes:
        for folder in await session.ctx.folders.subscriptions(box.grant.mailbox_id, session.login.principal.id):
            names.add(box.visible_name(folder))
    return names


async def list_response(session: "Session", args: list[Token]) -> bytes:
    args = list(args)
    selection: set[str] = set()
    if args and isinstance(args[0], PList):
        selection = {text(t).upper() for t in args.pop(0).items}
        unknown = selection - SELECTION_OPTIONS
        if unknown:
            raise ValueError(f"unknown LIST selection option {sorted(unknown)[0][:30]}")
    returns: set[str] = set()
    status_items: list[str] = []
    if len(args) >= 4 and isinstance(args[-2], Atom) and args[-2].value.upper() == "RETURN":
        options = list(args[-1].items) if isinstance(args[-1], PList) else []
        args = args[:-2]
        while options:
            option = text(options.pop(0)).upper()
            if option == "STATUS" and options and isinstance(options[0], PList):
                status_items = [text(t).upper() for t in options.pop(0).items]
                _check_status_items(status_items)
            elif option in ("SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "MYRIGHTS"):
                returns.add(option)
            else:
                raise ValueError(f"unknown LIST return option {option[:30]}")
    if "RECURSIVEMATCH" in selection and not selection - {"RECURSIVEMATCH", "REMOTE"}:
        raise ValueError("RECURSIVEMATCH needs another selection option (RFC 5258 §3.1)")
    if len(args) != 2:
        raise ValueError("LIST takes a reference and a mailbox pattern")
    reference = session._mailbox_name(args[0])
    tokens = args[1].items if isinstance(args[1], PList) else [args[1]]
    patterns = [p for t in tokens if (p := _pattern(session, t)) is not None]
    if patterns == [""]:  # RFC 3501 §6.3.8: the delimiter and root of the reference
        return b'* LIST (\\Noselect) "/" ""\r\n'
    entries = {e.name: e for e in await _entries(session)}
    subscribed = await _subscribed(session) if "SUBSCRIBED" in selection | returns else set()
    matchers = [pattern_matcher(reference, p) for p in patterns]

    def selected(name: str) -> bool:
        entry = entries.get(name)
        return ("SUBSCRIBED" not in selection or name in subscribed) and \
            ("SPECIAL-USE" not in selection or entry is not None and bool(entry.special_use))

    # (SUBSCRIBED) lists subscribed names whose folder is gone too, as \NonExistent (RFC 5258 §3.1)
    names = set(entries) | (subscribed if "SUBSCRIBED" in selection else set())
    matched = {n for n in names if any(m(n) for m in matchers)}
    childinfo = _childinfo(names, matched, selected, selection) if "RECURSIVEMATCH" in selection else {}
    out: list[bytes] = []
    for name in sorted(matched | set(childinfo), key=lambda n: (n != "INBOX", n)):
        if not selected(name) and name not in childinfo:
            continue
        entry = entries.get(name)
        attributes = []
        if entry is None:
            attributes.append("\\NonExistent")
        elif entry.folder is None:
            attributes.append("\\Noselect")
        has_children = any(n.startswith(name + DELIMITER) for n in entries)
        attributes.append("\\HasChildren" if has_children else "\\HasNoChildren")
        if entry is not None and entry.special_use:
            attributes.append(entry.special_use)
        if name in subscribed:
            attributes.append("\\Subscribed")
        line = b"* LIST (%s) \"/\" %s" % (" ".join(attributes).encode(), session._encode_name(name))
        if name in childinfo and not selected(name):
            line += b' ("CHILDINFO" (%s))' % " ".join(f'"{o}"' for o in childinfo[name]).encode()
        out.append(line + b"\r\n")
        if status_items and entry is not None and entry.folder is not None and entry.box.may("r"):
            folder = await session.ctx.folders.get(entry.box.grant.mailbox_id, entry.folder)
            out.append(await status_line(session, name, folder.id, status_items))
    return b"".join(out)


def _childinfo(names: set[str], matched: set[str], selected: Callable[[str], bool],
               selection: set[str]) -> dict[str, list[str]]:
    """RECURSIVEMATCH (RFC 5258 §3.5): a name the patterns match whose descendant meets the
    selection criteria without being matched itself is listed, with CHILDINFO naming the
    criteria, even when it does not meet them."""
    options = sorted(selection & {"SUBSCRIBED", "SPECIAL-USE"})
    found: dict[str, list[str]] = {}
    for name in names - matched:
        if not selected(name):
            continue
        levels = name.split(DELIMITER)
        for depth in range(1, len(levels)):
            parent = DELIMITER.join(levels[:depth])
            if parent in matched:
                found[parent] = options
    return found


async def lsub_response(session: "Session", args: list[Token]) -> bytes:
    """RFC 3501 §6.3.9 (IMAP4rev1 clients; RFC 9051 replaces it with LIST (SUBSCRIBED)). With
    "%", a subscribed name below the level matched shows its unsubscribed parent as \\Noselect."""
    if len(args) != 2:
        raise ValueError("LSUB takes a reference and a mailbox pattern")
    pattern = _pattern(session, args[1])
    if pattern is None:
        return b""
    match = pattern_matcher(session._mailbox_name(args[0]), pattern)
    subscribed = await _subscribed(session)
    found = {name: b"()" for name in subscribed if match(name)}
    if "%" in pattern:
        for name in subscribed:
            levels = name.split(DELIMITER)
            for depth in range(1, len(levels)):
                parent = DELIMITER.join(levels[:depth])
                if parent not in subscribed and match(parent) and not match(name):
                    found[parent] = b"(\\Noselect)"
    return b"".join(b'* LSUB %s "/" %s\r\n' % (found[name], session._encode_name(name)) for name in sorted(found))


def _pattern(session: "Session", token: Token) -> str | None:
    """A LIST pattern; None when it is ASCII but not modified UTF-7, so it can match no name
    (RFC 3501 §6.3.8: LIST answers what exists; a pattern that matches nothing is no error)."""
    if not session.utf8 and text(token).isascii():
        try:
            encode.utf7_decode(text(token))
        except ValueError:
            return None
    return session._mailbox_name(token)


def _check_status_items(items: list[str]) -> None:
    for item in items:
        if item not in STATUS_ITEMS:
            raise ValueError(f"unknown STATUS item {item[:30]}")


async def status_line(session: "Session", name: str, folder_id: int, items: list[str]) -> bytes:
    """RFC 3501 §6.3.10 plus HIGHESTMODSEQ (RFC 7162), SIZE (RFC 8438), DELETED (RFC 9051),
    APPENDLIMIT (RFC 7889)."""
    _check_status_items(items)
    folders = session.ctx.folders
    if {"MESSAGES", "UNSEEN", "SIZE", "DELETED", "RECENT"} & set(items):
        state, counts = await folders.summary(folder_id, size="SIZE" in items)
    else:
        state, counts = await folders.state(folder_id), {}
    values = {
        **counts,
        "UIDNEXT": state.uidnext,
        "UIDVALIDITY": state.uidvalidity,
        "HIGHESTMODSEQ": state.highestmodseq,
        "APPENDLIMIT": session.ctx.max_message_size,
    }
    body = " ".join(f"{item} {values[item]}" for item in items)
    return b"* STATUS %s (%s)\r\n" % (session._encode_name(name), body.encode())


def apply_rights(current: str, change: str) -> str:
    """SETACL's rights argument (RFC 4314 §3.1): "+xyz" adds, "-xyz" removes, else replaces."""
    mode, letters = (change[0], change[1:]) if change[:1] in ("+", "-") else ("=", change)
    if not valid_rights(letters):
        raise ValueError(f"unknown rights in {change[:30]!r}")
    letters = expand_rights(letters)
    if mode == "+":
        return expand_rights(current + letters)
    if mode == "-":
        return "".join(ch for ch in current if ch not in letters)
    return letters

