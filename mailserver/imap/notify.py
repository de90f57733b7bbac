"""NOTIFY (RFC 5465): what a session asked to hear of, and which events a mailbox gets. Pure:
the session parses the command with `parse_notify`, holds the result, hears the store's
announcements on the bus and asks `events_for` what each changed mailbox is owed.

Choices where the RFC leaves room: INBOXES are the INBOX of every box the person may use (their
own and the shared boxes: the point of one connection watching them all); a mailbox matched by
several groups gets the first group's events (§6); MessageNew with FETCH attributes is refused
(BAD), as are the ANNOTATE and METADATA events (NO [BADEVENT]: no such extension here).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from .names import DELIMITER
from .syntax import Atom, PList, Token, text

EVENTS = ("MessageNew", "MessageExpunge", "FlagChange", "MailboxName", "SubscriptionChange")
_ALL_EVENTS = {e.upper(): e for e in (*EVENTS, "AnnotationChange", "MailboxMetadataChange", "ServerMetadataChange")}
MESSAGE_EVENTS = frozenset({"MessageNew", "MessageExpunge", "FlagChange"})
FILTERS = ("INBOXES", "PERSONAL", "SUBSCRIBED", "SUBTREE", "MAILBOXES")


class BadEvent(ValueError):
    """An event this server cannot report: NO [BADEVENT (…what it can…)]."""


@dataclass(frozen=True)
class Group:
    kind: str  # one of FILTERS
    names: tuple[str, ...]  # SUBTREE's and MAILBOXES' mailboxes, as the session names them
    events: frozenset[str]


@dataclass(frozen=True)
class Notify:
    status: bool  # STATUS: tell each watched mailbox's state now
    selected: frozenset[str]  # events for the selected mailbox, as they happen
    groups: tuple[Group, ...]

    def events_for(self, name: str, *, inbox: bool, personal: bool, subscribed: bool) -> frozenset[str]:
        """The events a mailbox other than the selected one is owed (first matching group)."""
        for group in self.groups:
            if (group.kind == "INBOXES" and inbox or group.kind == "PERSONAL" and personal
                    or group.kind == "SUBSCRIBED" and subscribed or name in group.names
                    or group.kind == "SUBTREE" and any(name.startswith(n + DELIMITER) for n in group.names)):
                return group.events
        return frozenset()


def parse_notify(args: Sequence[Token], mailbox: Callable[[Token], str]) -> Notify | None:
    """NOTIFY NONE (None) or NOTIFY SET [STATUS] (filter events)…; `mailbox` reads a name as
    the session reads any (modified UTF-7 or UTF-8). ValueError (BAD) when malformed."""
    words = [a.value.upper() if isinstance(a, Atom) else "" for a in args[:2]]
    if words == ["NONE"]:
        return None
    if not words or words[0] != "SET":
        raise ValueError("NOTIFY takes SET or NONE")
    rest = list(args[1:])
    status = words[1:] == ["STATUS"]
    if status:
        rest = rest[1:]
    if not rest:
        raise ValueError("NOTIFY SET needs at least one (filter events) group")
    selected: frozenset[str] | None = None
    groups: list[Group] = []
    for group in rest:
        if not isinstance(group, PList) or not group.items or not isinstance(group.items[0], Atom):
            raise ValueError("each NOTIFY group is (filter events)")
        kind, items = group.items[0].value.upper(), list(group.items[1:])
        names: tuple[str, ...] = ()
        if kind in ("SUBTREE", "MAILBOXES"):
            if not items:
                raise ValueError(f"{kind} needs mailboxes")
            listed = items.pop(0)
            names = tuple(mailbox(t) for t in (listed.items if isinstance(listed, PList) else [listed]))
            if not names:
                raise ValueError(f"{kind} needs mailboxes")
        elif kind not in FILTERS and kind not in ("SELECTED", "SELECTED-DELAYED"):
            raise ValueError(f"unknown NOTIFY filter {kind[:30]}")
        events = _events(items)
        if kind.startswith("SELECTED"):
            if selected is not None:
                raise ValueError("one SELECTED filter at most")
            selected = _selected_events(events)
        elif events:
            groups.append(Group(kind, names, events))
    return Notify(status, selected or frozenset(), tuple(groups))


def _events(items: list[Token]) -> frozenset[str]:
    if len(items) == 1 and isinstance(items[0], Atom) and items[0].value.upper() == "NONE":
        return frozenset()
    if len(items) != 1 or not isinstance(items[0], PList) or not items[0].items:
        raise ValueError("events are NONE or a list of event names")
    found = []
    for item in items[0].items:
        if isinstance(item, PList):
            raise ValueError("MessageNew with FETCH attributes is not supported")
        name = _ALL_EVENTS.get(text(item).upper()) if isinstance(item, Atom) else None
        if name is None:
            raise ValueError(f"unknown NOTIFY event {text(item)[:30]}")
        found.append(name)
    if unsupported := [e for e in found if e not in EVENTS]:
        raise BadEvent(f"{' '.join(unsupported)} cannot be reported here")
    return frozenset(found)


def _selected_events(events: frozenset[str]) -> frozenset[str]:
    """RFC 5465 §5.2 to 5.4: for the selected mailbox, MessageNew and MessageExpunge go
    together, and FlagChange needs them."""
    if len(events & {"MessageNew", "MessageExpunge"}) == 1:
        raise ValueError("MessageNew and MessageExpunge go together")
    if "FlagChange" in events and "MessageNew" not in events:
        raise ValueError("FlagChange needs MessageNew and MessageExpunge")
    return events
