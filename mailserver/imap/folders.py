"""The store behind IMAP sessions: folders, their messages and flags, subscriptions, ACL, quota.

Every write runs through `store.db.committed` (shielded: a session cut at shutdown must not leave
SQLite's write lock on a pooled connection) and begins with an UPDATE of the folder rows it
touches, in id order. That first write takes SQLite's database lock before anything is read (a
read-then-write transaction could otherwise work from a stale view) and PostgreSQL's row lock
(no deadlock between two transactions locking the same pair), so writers on one folder run one
after the other. The same UPDATE claims the MODSEQ (RFC 7162 §3.1.1) that every row the
transaction changes is stamped with; UIDs (RFC 3501 §2.3.1.1) come from `uidnext` by UPDATE ...
RETURNING, as in mailserver/mailstore.py, so two appends never share one. A write that turns out
to change nothing rolls back, giving its MODSEQ back. After the commit, sessions watching the box
(IDLE) hear a `folder_changed` event and re-read the store, and sessions under NOTIFY hear
`folder_named` (CREATE, DELETE, RENAME) and `subscription` events too; an ACL change goes on the
RIGHTS channel, for the sessions of the person whose rights changed.

A body (one per message, however many folders hold it) is freed when the last folder row goes
and no queued delivery still has to relay it; the envelope stays, with no body.
"""
from __future__ import annotations

import asyncio
import bisect
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from itertools import chain
from typing import Any, Awaitable, Callable, Iterable, Iterator, NamedTuple, Sequence, TypeVar

from sqlalchemy import (String, and_, bindparam, case, cast, delete, func, insert, literal, not_, null, or_, select,
                        true, type_coerce, union_all, update)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from hospital import receipts
from mailserver.bodies import facts, facts_of, insert_bodies, subject_contains
from mailserver.mailstore import DEFAULT_FOLDERS, channel_of, ensure_folders, free_bodies, mailbox_channel
from store.db import OneRead, committed, dialect_insert, utc
from store.events import RIGHTS, EventBus, rights_event
from store.group_commit import GroupCommit
from store.schema import (bodies, deliveries, folder_messages, folder_subscriptions, folder_vanished, folders,
                          mailbox_acl, mailboxes)

from .message import Facts
from .names import normalise

T = TypeVar("T")
VIEWS = 32  # folder views kept for the next SELECT: ~2 MB each at 10,000 messages (tracemalloc)
BATCH = 500  # ids per IN (...) list: far below SQLite's and asyncpg's limits on bound parameters
INBOX = "INBOX"
# RFC 3501 §2.3.2, by their lower-case spelling; in the order a FLAGS response lists them.
SYSTEM_FLAGS = {f.lower(): f for f in ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")}
_DEFAULT_USE = dict(DEFAULT_FOLDERS)
Event = tuple[int | str, dict[str, Any]]  # (mailbox id, or a channel: mailstore.channel_of; event)


class FolderExists(Exception):
    pass


class NoSuchFolder(Exception):
    pass


class OverQuota(Exception):
    pass


@dataclass(frozen=True)
class FolderInfo:
    id: int
    name: str
    special_use: str


class MessageMeta(NamedTuple):
    """One message's flags, MODSEQ, date and size: SELECT builds one per message of the folder,
    so a tuple (a frozen dataclass costs several times more to build)."""

    uid: int
    flags: frozenset[str]
    modseq: int
    internaldate: datetime
    size: int


class FlagGroup(NamedTuple):
    """The messages of a folder that carry one flag list: UIDs, MODSEQs and sizes, pairwise."""

    flags: frozenset[str]
    uids: list[int]
    modseqs: list[int]
    sizes: list[int]


@dataclass(frozen=True)
class FolderState:
    id: int
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    first_recent_uid: int
    keywords: frozenset[str]  # every keyword ever set in the folder


@dataclass(frozen=True)
class Changes:
    state: FolderState
    changed: list[MessageMeta]  # modseq > since, by uid (new messages included)
    vanished: list[int]  # expunged with modseq > since, sorted


@dataclass
class FolderView:
    """A folder's messages as of `state.highestmodseq`: UIDs in order, flags, MODSEQ and size by UID.
    Built once from the rows, then moved on only by the change log (`Folders.view`), as each
    session's own view is; its collections are lent to sessions (`lend`), and whoever changes
    them first, a session or the view, copies them (Selected.own, `apply`)."""

    state: FolderState
    uids: list[int]
    flags: dict[int, frozenset[str]]
    modseqs: dict[int, int]
    sizes: dict[int, int]
    keywords: frozenset[str] = frozenset()  # in use on some message
    first_unseen: int | None = None  # UID
    counts: dict[str, int] = field(default_factory=dict)  # STATUS's UNSEEN, DELETED, SIZE
    lent: bool = False  # uids, flags, modseqs and sizes are in a session's hands too

    def settle(self) -> None:
        """Keywords in use, the first unseen message and STATUS's counts, after a change."""
        per_set = Counter(self.flags.values())  # few keys: flag_set shares them
        distinct = set(per_set)
        self.counts = {"UNSEEN": sum(n for flags, n in per_set.items() if "\\Seen" not in flags),
                       "DELETED": sum(n for flags, n in per_set.items() if "\\Deleted" in flags),
                       "SIZE": sum(self.sizes.values())}
        self.keywords = frozenset(f for flags in distinct for f in flags if not f.startswith("\\"))
        if all("\\Seen" in flags for flags in distinct):
            self.first_unseen = None
        else:
            flags = self.flags
            self.first_unseen = next(u for u in self.uids if "\\Seen" not in flags[u])

    def lend(self) -> tuple[list[int], dict[int, frozenset[str]], dict[int, int], dict[int, int]]:
        """UIDs, flags, MODSEQs and sizes for a session to read: neither changes them in place."""
        self.lent = True
        return self.uids, self.flags, self.modseqs, self.sizes

    def apply(self, changes: Changes) -> None:
        """Move on to `changes.state`: Selected.sync's work, without telling anyone."""
        new, old = changes.state, self.state
        if (new.highestmodseq, new.first_recent_uid) < (old.highestmodseq, old.first_recent_uid):
            return  # a state read before this view moved on
        self.state = new  # its \Recent mark moves without a MODSEQ
        if not changes.changed and not changes.vanished:
            return
        if self.lent:
            self.uids, self.flags, self.modseqs, self.sizes = (
                c.copy() for c in (self.uids, self.flags, self.modseqs, self.sizes))
            self.lent = False
        for uid in changes.vanished:
            if self.flags.pop(uid, None) is not None:
                del self.uids[bisect.bisect_left(self.uids, uid)], self.modseqs[uid], self.sizes[uid]
        for meta in changes.changed:
            if meta.uid not in self.flags:
                bisect.insort(self.uids, meta.uid)  # at the end: UIDs only grow
            self.flags[meta.uid], self.modseqs[meta.uid], self.sizes[meta.uid] = meta.flags, meta.modseq, meta.size
        self.settle()


class _Read:
    """A read of the change log others may join until it has asked the database."""

    started = False


class _Unchanged(Exception):
    """Raised inside a write that changed nothing: the rollback gives back the MODSEQ it claimed."""

    def __init__(self, result: Any) -> None:
        self.result = result


@lru_cache(maxsize=1024)
def flag_set(text: str) -> frozenset[str]:
    """Shared: a folder's messages carry a handful of distinct flag lists, so SELECT builds
    each set once, and whatever walks the sets (keywords, SEARCH) meets few distinct ones."""
    return frozenset(text.split())


def _normalise(flags: Iterable[str]) -> set[str]:
    """System flags in their usual spelling (clients send any case); \\Recent is the server's
    (RFC 3501 §2.3.2) and never stored."""
    return {SYSTEM_FLAGS.get(flag.lower(), flag) for flag in flags if flag.lower() != "\\recent"}


def _flags_text(flags: Iterable[str]) -> str:
    return " ".join(sorted(flags))


def _chunks(values: Sequence[T]) -> Iterator[Sequence[T]]:
    for start in range(0, len(values), BATCH):
        yield values[start:start + BATCH]


def _meta(row: Any) -> MessageMeta:
    return MessageMeta(row.uid, flag_set(row.flags), row.modseq, utc(row.internaldate), row.size)


def _numbers(joined: str) -> list[int]:
    """Numbers joined by commas, parsed by json (C): twice as quick as int() on each piece."""
    return json.loads(f"[{joined}]")


def _instant(value: datetime | str) -> datetime:
    """A DateTime column read as it is stored: SQLite's text parsed by datetime.fromisoformat (C;
    SQLAlchemy's processor is a regular expression, a third of SELECT's time on 10,000
    messages), PostgreSQL's datetime as it comes."""
    if isinstance(value, str):
        return datetime.fromisoformat(value if "+" in value else value + "+00:00")  # stored in UTC
    return utc(value)


def _state(row: Any) -> FolderState:
    return FolderState(row.id, row.uidvalidity, row.uidnext, row.highestmodseq, row.first_recent_uid,
                       flag_set(row.keywords))


def _changed(row: Any) -> Event:
    return row.mailbox_id, {"type": "folder_changed", "folder": row.name, "folder_id": row.id,
                            "highestmodseq": row.highestmodseq}


def _named(mailbox_id: int, name: str, old: str | None = None) -> Event:
    """A folder name came (CREATE), went (DELETE) or replaced `old` (RENAME): NOTIFY MailboxName."""
    return mailbox_id, {"type": "folder_named", "folder": name, "old": old}


_META = (folder_messages.c.uid, folder_messages.c.flags, folder_messages.c.modseq, folder_messages.c.internaldate,
         folder_messages.c.size)
_WITH_BODY = folder_messages.join(bodies, bodies.c.id == folder_messages.c.body_id)
_FOLDER = (folders.c.id, folders.c.mailbox_id, folders.c.name, folders.c.uidvalidity, folders.c.uidnext,
           folders.c.highestmodseq, folders.c.first_recent_uid, folders.c.keywords, folders.c.messages,
           folders.c.octets)
_NAMED = OneRead(select(*_FOLDER, folders.c.special_use).where(
    folders.c.mailbox_id == bindparam("mailbox_id"), folders.c.name == bindparam("name")))

# APPEND's statements, built once: building one cost more CPU than SQLite took to run it
_TAKE_UIDS = (update(folders).where(folders.c.id == bindparam("folder"))
              .values(uidnext=folders.c.uidnext + bindparam("count"), highestmodseq=folders.c.highestmodseq + 1,
                      messages=folders.c.messages + bindparam("count"),
                      octets=folders.c.octets + bindparam("octets"))
              .returning(*_FOLDER))
_USAGE = (select(func.coalesce(func.sum(folders.c.octets), 0), func.coalesce(func.sum(folders.c.messages), 0))
          .where(folders.c.mailbox_id == bindparam("mailbox")))
_NEW_ROW = insert(folder_messages)


class Folders:
    def __init__(self, engine: AsyncEngine, bus: EventBus, *, quota_bytes: int,
                 writes: GroupCommit | None = None) -> None:
        self._engine = engine
        self._bus = bus
        self._writes = writes
        self._quota = quota_bytes
        self._views: dict[int, FolderView] = {}  # by folder id, least recently used first
        self._reads: dict[tuple[int, int], tuple[_Read, asyncio.Future[Changes]]] = {}  # (folder, since)
        self._claimed: dict[int, int] = {}  # folder id -> UID up to which a session here claimed \Recent

    async def _write(self, work: Callable[[AsyncConnection], Awaitable[tuple[T, list[Event]]]], *,
                     grouped: bool = False) -> T:
        """Commit `work` (`grouped`: with other sessions' writes, when Folders has a group
        commit), then announce what it changed."""
        try:
            if grouped and self._writes is not None:
                result, events = await self._writes.run(work)
            else:
                result, events = await committed(self._engine, work)
        except _Unchanged as unchanged:
            return unchanged.result
        for key, event in events:
            await self._bus.publish(channel_of(key), event)
        return result

    # --- folders ----------------------------------------------------------------------------

    async def list(self, mailbox_id: int) -> list[FolderInfo]:
        """The box's folders, INBOX first; the default ones are created on first use."""
        async def work(conn: AsyncConnection) -> tuple[list[FolderInfo], list[Event]]:
            await ensure_folders(conn, mailbox_id)
            rows = await conn.execute(select(folders.c.id, folders.c.name, folders.c.special_use)
                                      .where(folders.c.mailbox_id == mailbox_id)
                                      .order_by((folders.c.name != INBOX), folders.c.name))
            return [FolderInfo(r.id, r.name, r.special_use) for r in rows], []
        return await self._write(work)

    async def get(self, mailbox_id: int, name: str) -> FolderInfo:
        row = await self._named(mailbox_id, name)
        return FolderInfo(row.id, row.name, row.special_use)

    async def state_of(self, mailbox_id: int, name: str) -> FolderState:
        """The folder of that name and its state, in one statement: SELECT's first read."""
        return _state(await self._named(mailbox_id, name))

    async def _named(self, mailbox_id: int, name: str) -> Any:
        """A default folder is created on first use, as `list` would (a client may SELECT
        Drafts before it ever LISTs)."""
        key = normalise(name)
        row = await self._read_named(mailbox_id, key)
        if row is None and key in {n for n, _ in DEFAULT_FOLDERS}:
            await self.list(mailbox_id)
            row = await self._read_named(mailbox_id, key)
        if row is None:
            raise NoSuchFolder(name)
        return row

    async def _read_named(self, mailbox_id: int, name: str) -> Any:
        """The folder's row, read afresh each time: what every SELECT, EXAMINE and STATUS reads
        first, and on a folder whose view is kept all SELECT reads; in one call into SQLite's
        thread (store/db.py `OneRead`)."""
        async with self._engine.connect() as conn:
            return await _NAMED.first(conn, {"mailbox_id": mailbox_id, "name": name})

    async def create(self, mailbox_id: int, name: str, special_use: str = "") -> FolderInfo:
        name = normalise(name)

        async def work(conn: AsyncConnection) -> tuple[FolderInfo, list[Event]]:
            await ensure_folders(conn, mailbox_id)  # "Sent" made by hand would lose its \Sent
            folder_id = await _insert_folder(conn, mailbox_id, name, special_use,
                                             await _uidvalidity(conn, mailbox_id))
            return FolderInfo(folder_id, name, special_use), [_named(mailbox_id, name)]
        try:
            return await self._write(work)
        except IntegrityError:
            raise FolderExists(name) from None

    async def delete(self, mailbox_id: int, name: str) -> None:
        """Delete one folder, its messages (freeing their bodies) and its VANISHED record; the
        folders under it stay (RFC 3501 §6.3.4). A default folder (Sent, Trash...) comes back
        empty at once, as ensure_folders would bring it back at the next LIST, but with a
        greater UIDVALIDITY than the one deleted, which the clock alone cannot promise."""
        name = normalise(name)
        if name == INBOX:
            raise ValueError("INBOX cannot be deleted")

        async def work(conn: AsyncConnection) -> tuple[None, list[Event]]:
            folder = await _lock_name(conn, mailbox_id, name)
            uidvalidity = await _uidvalidity(conn, mailbox_id, above=folder.uidvalidity)
            rows = (await conn.execute(select(folder_messages.c.id, folder_messages.c.body_id)
                                       .where(folder_messages.c.folder_id == folder.id))).all()
            await _remove(conn, rows)
            await conn.execute(delete(folder_vanished).where(folder_vanished.c.folder_id == folder.id))
            await conn.execute(delete(folders).where(folders.c.id == folder.id))
            self._claimed.pop(folder.id, None)  # SQLite may give its id to the next folder
            if name in _DEFAULT_USE:
                await _insert_folder(conn, mailbox_id, name, _DEFAULT_USE[name], uidvalidity)
            return None, [_changed(folder), _named(mailbox_id, name)]
        await self._write(work)

    async def rename(self, mailbox_id: int, old: str, new: str, delimiter: str = "/") -> None:
        """RFC 3501 §6.3.5. The folder and those under it ("old/...") take the new names, and a
        new UIDVALIDITY: a client may have cached an earlier folder of the new name. Renaming
        INBOX moves its messages into a new folder and leaves INBOX empty (its folders below
        stay). A default folder renamed away comes back empty, as in delete()."""
        old, new = normalise(old), normalise(new)
        if old == new:
            raise FolderExists(new)

        async def work(conn: AsyncConnection) -> tuple[None, list[Event]]:
            folder = await _lock_name(conn, mailbox_id, old)
            if old == INBOX:
                return None, [*await _rename_inbox(conn, folder, new), _named(mailbox_id, new)]
            prefix = old + delimiter
            moved = [(r.id, new + r.name[len(old):], r.uidvalidity) for r in await conn.execute(
                select(folders.c.id, folders.c.name, folders.c.uidvalidity).where(folders.c.mailbox_id == mailbox_id))
                if r.name == old or r.name.startswith(prefix)]
            uidvalidity = await _uidvalidity(conn, mailbox_id, above=max(v for _, _, v in moved))
            # deepest first: "a" -> "a/a" must not meet "a/a" before that one became "a/a/a"
            for folder_id, name, _ in sorted(moved, key=lambda m: -len(m[1])):  # a name taken: FolderExists
                await conn.execute(update(folders).where(folders.c.id == folder_id).values(
                    name=name, uidvalidity=uidvalidity))
            if old in _DEFAULT_USE:
                await _insert_folder(conn, mailbox_id, old, _DEFAULT_USE[old],
                                     await _uidvalidity(conn, mailbox_id))
            return None, [_changed(folder), _named(mailbox_id, new, old)]
        try:
            await self._write(work)
        except IntegrityError:
            raise FolderExists(new) from None

    # --- subscriptions, ACL, quota --------------------------------------------------------

    async def subscriptions(self, mailbox_id: int, who: str) -> set[str]:
        async with self._engine.connect() as conn:
            return set((await conn.execute(select(folder_subscriptions.c.name).where(
                folder_subscriptions.c.mailbox_id == mailbox_id, folder_subscriptions.c.who == who))).scalars())

    async def subscribe(self, mailbox_id: int, who: str, name: str) -> None:
        """The name need not exist (RFC 3501 §6.3.6)."""
        row = {"mailbox_id": mailbox_id, "who": who, "name": normalise(name)}
        await committed(self._engine, lambda conn: conn.execute(
            dialect_insert(conn, folder_subscriptions).on_conflict_do_nothing(), row))
        await self._subscription_changed(mailbox_id, who, name)

    async def unsubscribe(self, mailbox_id: int, who: str, name: str) -> None:
        await committed(self._engine, lambda conn: conn.execute(delete(folder_subscriptions).where(
            folder_subscriptions.c.mailbox_id == mailbox_id, folder_subscriptions.c.who == who,
            folder_subscriptions.c.name == normalise(name))))
        await self._subscription_changed(mailbox_id, who, name)

    async def _subscription_changed(self, mailbox_id: int, who: str, name: str) -> None:
        """NOTIFY SubscriptionChange: `who`'s other sessions hear it."""
        await self._bus.publish(mailbox_channel(mailbox_id), {"type": "subscription", "folder": normalise(name),
                                                              "who": who})

    async def acl(self, mailbox_id: int) -> dict[str, str]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(mailbox_acl.c.identifier, mailbox_acl.c.rights)
                                      .where(mailbox_acl.c.mailbox_id == mailbox_id))
            return {r.identifier: r.rights for r in rows}

    async def set_acl(self, mailbox_id: int, identifier: str, rights: str) -> None:
        """Rights stored as sorted letters (RFC 4314 §2.1); no rights at all is no entry."""
        rights = "".join(sorted(set(rights)))
        if not rights:
            await self.delete_acl(mailbox_id, identifier)
            return

        async def work(conn: AsyncConnection) -> None:
            upsert = dialect_insert(conn, mailbox_acl).values(mailbox_id=mailbox_id, identifier=identifier,
                                                              rights=rights)
            await conn.execute(upsert.on_conflict_do_update(
                index_elements=[mailbox_acl.c.mailbox_id, mailbox_acl.c.identifier],
                set_={"rights": upsert.excluded.rights}))
        await committed(self._engine, work)
        await self._bus.publish(RIGHTS, rights_event("acl", mailbox_id, identifier))

    async def delete_acl(self, mailbox_id: int, identifier: str) -> None:
        await committed(self._engine, lambda conn: conn.execute(delete(mailbox_acl).where(
            mailbox_acl.c.mailbox_id == mailbox_id, mailbox_acl.c.identifier == identifier)))
        await self._bus.publish(RIGHTS, rights_event("acl", mailbox_id, identifier))

    async def quota(self, mailbox_id: int) -> tuple[int, int, int]:
        """(bytes used, messages, limit): a message in two folders counts twice, as a client
        that sums its folders expects (RFC 9208 STORAGE)."""
        async with self._engine.connect() as conn:
            used, count = await _usage(conn, mailbox_id)
        return used, count, self._quota

    # --- reading a folder -------------------------------------------------------------------

    async def state(self, folder_id: int) -> FolderState:
        async with self._engine.connect() as conn:
            return _state(await _folder(conn, folder_id))

    async def messages(self, folder_id: int) -> list[MessageMeta]:
        """Every message, by UID, all its columns (tests; SELECT reads `view`)."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(*_META).where(folder_messages.c.folder_id == folder_id)
                                      .order_by(folder_messages.c.uid))
            return [_meta(r) for r in rows.all()]

    async def view(self, folder_id: int, state: FolderState | None = None) -> FolderView:
        """The folder's messages as of its HIGHESTMODSEQ now (SELECT's starting point). Kept
        for the next SELECT of the folder (VIEWS at most, the least recently used dropped),
        which reads only what the change log has after it: on a folder nobody changed, the
        folder's row and nothing else, or not even that if the caller just read it (`state`)."""
        view = self._views.get(folder_id)
        if view is not None:
            since = view.state.highestmodseq
            changes = await self.changes(folder_id, since, state)
            if changes.state.uidvalidity != view.state.uidvalidity:  # renamed, or deleted and its id reused
                view = None
            elif view.state.highestmodseq == since:  # unless another SELECT moved it on meanwhile
                view.apply(changes)
        if view is None:
            state, groups = await self._groups(folder_id)
            view = FolderView(state, sorted(chain.from_iterable(g.uids for g in groups)), {}, {}, {})
            for group in groups:
                view.flags.update(dict.fromkeys(group.uids, group.flags))
                view.modseqs.update(zip(group.uids, group.modseqs))
                view.sizes.update(zip(group.uids, group.sizes))
            view.settle()
        self._views.pop(folder_id, None)
        self._views[folder_id] = view
        while len(self._views) > VIEWS:
            del self._views[next(iter(self._views))]
        return view

    async def _groups(self, folder_id: int) -> tuple[FolderState, list[FlagGroup]]:
        """The folder's state, then its messages' UIDs, MODSEQs and sizes grouped by flag list, each
        group's numbers as one string built by the database. A folder has a handful of
        distinct flag lists, so 10,000 messages come as a few rows, and Python splits strings
        instead of building a row object per message (issue 12: a row per message was most of
        SELECT's time). The state is read first: a change committed between the two reads has a
        MODSEQ above the state's, so the change log gives it again."""
        fm = folder_messages
        async with self._engine.connect() as conn:
            state = _state(await _folder(conn, folder_id))
            rows = (await conn.execute(
                select(fm.c.flags, *(func.aggregate_strings(cast(c, String), ",")
                                     for c in (fm.c.uid, fm.c.modseq, fm.c.size)))
                .where(fm.c.folder_id == folder_id).group_by(fm.c.flags))).all()
        return state, [FlagGroup(flag_set(flags), *map(_numbers, numbers)) for flags, *numbers in rows]

    async def dates(self, folder_id: int, uids: Sequence[int]) -> dict[int, datetime]:
        """INTERNALDATE of `uids`, those still present: it never changes, so SELECT leaves it
        for the FETCH, SEARCH or SORT that needs it. One range query, filtered here (no IN list)."""
        if not uids:
            return {}
        fm, keep = folder_messages, set(uids)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(fm.c.uid, type_coerce(fm.c.internaldate, String)).where(
                fm.c.folder_id == folder_id, fm.c.uid >= min(uids), fm.c.uid <= max(uids)))).all()
        return {uid: _instant(when) for uid, when in rows if uid in keep}

    async def summary(self, folder_id: int, *, size: bool) -> tuple[FolderState, dict[str, int]]:
        """STATUS's figures: MESSAGES, RECENT (not yet claimed by a SELECT), UNSEEN, DELETED, and
        SIZE if `size`. From the folder's view if one is kept (moved on by the change log, as
        for SELECT), else counted by the database per flag list (the index SELECT reads), then
        summed here over those few rows: a LIST-STATUS of many folders keeps no view."""
        if folder_id in self._views:
            view = await self.view(folder_id)
            recent = len(view.uids) - bisect.bisect_left(view.uids, view.state.first_recent_uid)
            return view.state, {"MESSAGES": len(view.uids), "RECENT": recent, **view.counts}
        fm = folder_messages
        async with self._engine.connect() as conn:
            folder = await _folder(conn, folder_id)
            state = _state(folder)
            rows = (await conn.execute(
                select(fm.c.flags, func.count(), func.sum(case((fm.c.uid >= state.first_recent_uid, 1), else_=0)))
                .where(fm.c.folder_id == folder_id).group_by(fm.c.flags))).all()
        groups = [(flag_set(flags), count, int(recent)) for flags, count, recent in rows]
        return state, {"MESSAGES": sum(n for _, n, _ in groups), "RECENT": sum(r for _, _, r in groups),
                       "UNSEEN": sum(n for flags, n, _ in groups if "\\Seen" not in flags),
                       "DELETED": sum(n for flags, n, _ in groups if "\\Deleted" in flags),
                       "SIZE": int(folder.octets) if size else 0}

    async def meta(self, folder_id: int, uid: int) -> MessageMeta | None:
        """One message's flags and size, for a reader outside IMAP (mailserver/webmail.py)."""
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(*_META).where(
                folder_messages.c.folder_id == folder_id, folder_messages.c.uid == uid))).first()
        return _meta(row) if row else None

    async def changes(self, folder_id: int, since_modseq: int, state: FolderState | None = None) -> Changes:
        """What changed after `since_modseq` (CONDSTORE FETCH CHANGEDSINCE, QRESYNC). The state
        is read first (or given, just read) and the rows are bounded by its HIGHESTMODSEQ: writes
        to a folder commit in MODSEQ order, so everything up to it is visible, and what comes
        later is left for the next call (whose `since` is this HIGHESTMODSEQ) instead of being
        half-reported now."""
        if state is not None:
            return await self._changes(folder_id, since_modseq, state, None)
        key = (folder_id, since_modseq)
        shared = self._reads.get(key)
        if shared is None or shared[0].started:
            read = _Read()
            shared = read, asyncio.ensure_future(self._changes(folder_id, since_modseq, None, read))
            self._reads[key] = shared
            shared[1].add_done_callback(lambda _: self._reads.pop(key) if self._reads.get(key) is shared else None)
        return await asyncio.shield(shared[1])

    async def _changes(self, folder_id: int, since_modseq: int, state: FolderState | None,
                       read: _Read | None) -> Changes:
        """changes(); `read` is marked started just before the state is read: until then, a
        session asking the same may join it (IDLE sessions woken by one delivery each ask),
        as the answer will be as fresh as its own read would have been."""
        fm, fv = folder_messages, folder_vanished
        if state is not None and state.highestmodseq <= since_modseq:
            return Changes(state, [], [])
        async with self._engine.connect() as conn:
            if read is not None:
                read.started = True
            state = state or _state(await _folder(conn, folder_id))
            if state.highestmodseq <= since_modseq:  # what a session asks after almost every command
                return Changes(state, [], [])

            def window(modseq: Any) -> Any:
                return and_(modseq > since_modseq, modseq <= state.highestmodseq)
            present = (select(*_META, literal(False).label("gone"))
                       .where(fm.c.folder_id == folder_id, window(fm.c.modseq)))
            expunged = select(fv.c.uid, null(), fv.c.modseq, null(), null(), literal(True)).where(
                fv.c.folder_id == folder_id, window(fv.c.modseq))
            rows = (await conn.execute(union_all(present, expunged).order_by("uid"))).all()
        return Changes(state, [_meta(r) for r in rows if not r.gone], [r.uid for r in rows if r.gone])

    async def uids_with_flags(self, folder_id: int, term: tuple) -> tuple[list[int], int] | None:
        """The UIDs, in order, whose stored flags satisfy `term` (search.FlagTerm), and the
        folder's HIGHESTMODSEQ read after them: while it has not moved past what the caller
        last read, the rows are those the caller's view holds (every write raises it before
        its commit). None when a flag name is not ASCII: SQL's lower() would not fold it as
        SEARCH's casefold does (nor a subject with a line break)."""
        condition = _flag_condition(term)
        if condition is None:
            return None
        async with self._engine.connect() as conn:
            uids = list((await conn.execute(select(folder_messages.c.uid).where(
                folder_messages.c.folder_id == folder_id, condition).order_by(folder_messages.c.uid))).scalars())
            return uids, (await _folder(conn, folder_id)).highestmodseq

    async def bodies(self, folder_id: int, uids: Sequence[int]) -> dict[int, bytes]:
        """The raw messages of `uids` (absent ones left out), BATCH at a time."""
        found: dict[int, bytes] = {}
        async with self._engine.connect() as conn:
            for chunk in _chunks(sorted(set(uids))):
                rows = await conn.execute(select(folder_messages.c.uid, bodies.c.data).select_from(_WITH_BODY).where(
                    folder_messages.c.folder_id == folder_id, folder_messages.c.uid.in_(chunk)))
                found.update((r.uid, bytes(r.data)) for r in rows)
        return found

    async def facts(self, folder_id: int, uids: Sequence[int], columns: Sequence[str]) -> dict[int, Facts]:
        """What was learnt of `uids` when they were stored (bodies.facts), only `columns` read."""
        async with self._engine.connect() as conn:
            return await facts(conn, folder_id, uids, columns)

    # --- writing a folder -------------------------------------------------------------------

    async def claim_recent(self, folder_id: int, upto: int) -> int:
        """Claim for this session the messages not yet \\Recent for another, up to UID `upto`
        (excluded: the session claims only what it has seen, or a message arriving meanwhile
        would be recent for no one). Returns the first UID claimed; `upto` when none (RFC 3501
        §2.3.2: one session sees a message as recent). A session of this process that claimed
        (or is claiming) up to `upto` already took them: no write (20 IDLE sessions on one
        folder made 20 write transactions per delivery, one after the other)."""
        if self._claimed.get(folder_id, 0) >= upto:
            return upto
        self._claimed[folder_id] = upto

        async def work(conn: AsyncConnection) -> tuple[int, list[Event]]:
            folder = (await _lock(conn, {folder_id: 0}))[folder_id]
            if folder.first_recent_uid >= upto:
                raise _Unchanged(upto)
            await conn.execute(update(folders).where(folders.c.id == folder_id).values(first_recent_uid=upto))
            return folder.first_recent_uid, []
        return await self._write(work)

    async def store_flags(self, folder_id: int, uids: Sequence[int], mode: str, flags: set[str], *,
                          unchanged_since: int | None = None) -> tuple[list[MessageMeta], list[int]]:
        """STORE (RFC 3501 §6.4.6) with mode "+", "-" or "=". Returns the messages whose flags
        changed, with their new MODSEQ, and the UIDs refused because they changed after
        `unchanged_since` (RFC 7162 §3.1.3: MODIFIED). Messages left as they were keep their
        MODSEQ; if none changed, nothing is written."""
        if mode not in ("+", "-", "="):
            raise ValueError(f"bad STORE mode {mode!r}")
        wanted = sorted(set(uids))
        flags = _normalise(flags)
        if not wanted:
            return [], []

        async def work(conn: AsyncConnection) -> tuple[tuple[list[MessageMeta], list[int]], list[Event]]:
            folder = (await _lock(conn, {folder_id: 1}))[folder_id]
            keep = set(wanted)
            rows = [r for r in await conn.execute(  # one range query, filtered here: no IN list of 10,000
                select(folder_messages.c.id, *_META).where(
                    folder_messages.c.folder_id == folder_id, folder_messages.c.uid >= wanted[0],
                    folder_messages.c.uid <= wanted[-1]).order_by(folder_messages.c.uid)) if r.uid in keep]
            changed: list[tuple[int, MessageMeta]] = []
            refused: list[int] = []
            for row in rows:
                if unchanged_since is not None and row.modseq > unchanged_since:
                    refused.append(row.uid)
                    continue
                old = flag_set(row.flags)
                new = old | flags if mode == "+" else old - flags if mode == "-" else frozenset(flags)
                if new != old:
                    changed.append((row.id, MessageMeta(row.uid, new, folder.highestmodseq, utc(row.internaldate),
                                                        row.size)))
            if not changed:
                raise _Unchanged(([], refused))
            if mode != "-":
                await _keep_keywords(conn, folder, flags)
            await conn.execute(update(folder_messages).where(folder_messages.c.id == bindparam("row_id")).values(
                flags=bindparam("new_flags"), modseq=folder.highestmodseq), [
                {"row_id": row_id, "new_flags": _flags_text(meta.flags)} for row_id, meta in changed])
            told = []  # a hospital notice read in its box is a receipt, which its patient's circles hear of
            if "\\Seen" in flags and mode != "-":
                told = await receipts.seen(conn, [row_id for row_id, _ in changed], datetime.now(timezone.utc))
            return ([meta for _, meta in changed], refused), [_changed(folder), *told]
        return await self._write(work)

    async def append(self, folder_id: int, data: bytes, flags: set[str], internaldate: datetime) -> tuple[int, int]:
        """One message: (UIDVALIDITY, UID)."""
        uidvalidity, uids = await self.append_all(folder_id, [(data, flags, internaldate)])
        return uidvalidity, uids[0]

    async def append_all(self, folder_id: int, messages: Sequence[tuple[bytes, set[str], datetime]],
                         also: Callable[[AsyncConnection, list[int]], Awaitable[Any]] | None = None,
                         ) -> tuple[int, list[int]]:
        """APPEND (RFC 3501 §6.3.11) and MULTIAPPEND (RFC 3502): every message (data, flags,
        INTERNALDATE) in one transaction, all or none, with consecutive UIDs; (UIDVALIDITY,
        their UIDs) for APPENDUID (RFC 4315). `also(conn, uids)` runs in that transaction (the
        audit rows: kept exactly when the messages are). Through the group commit when there
        is one: concurrent APPENDs then share a commit, as deliveries do."""
        facts_known = [facts_of(data) for data, _, _ in messages]  # parsed before the writer's turn

        async def work(conn: AsyncConnection) -> tuple[tuple[int, list[int]], list[Event]]:
            adding = sum(len(data) for data, _, _ in messages)
            folder = (await conn.execute(_TAKE_UIDS, {"folder": folder_id, "count": len(messages),
                                                      "octets": adding})).first()
            if folder is None:
                raise NoSuchFolder(folder_id)
            await self._check_quota(conn, folder.mailbox_id)
            await _keep_keywords(conn, folder, {f for _, flags, _ in messages for f in _normalise(flags)})
            first = folder.uidnext - len(messages)
            uids = [first + n for n in range(len(messages))]
            body_ids = await insert_bodies(conn, [data for data, _, _ in messages], datetime.now(timezone.utc),
                                           facts_known)
            await conn.execute(_NEW_ROW, [
                {"folder_id": folder_id, "uid": uid, "body_id": body_id, "size": len(data),
                 "flags": _flags_text(_normalise(flags)), "internaldate": internaldate.astimezone(timezone.utc),
                 "modseq": folder.highestmodseq}
                for uid, body_id, (data, flags, internaldate) in zip(uids, body_ids, messages)])
            if also is not None:
                await also(conn, uids)
            return (folder.uidvalidity, uids), [_changed(folder)]
        return await self._write(work, grouped=True)

    async def copy(self, src_folder: int, uids: Sequence[int], dst_folder: int) -> tuple[int, list[tuple[int, int]]]:
        """COPY (RFC 3501 §6.4.7): new rows on the same bodies, flags and INTERNALDATE kept.
        Returns the destination's UIDVALIDITY and (source UID, new UID) pairs for COPYUID."""
        async def work(conn: AsyncConnection) -> tuple[tuple[int, list[tuple[int, int]]], list[Event]]:
            locked = await _lock(conn, {src_folder: 0, dst_folder: 1})
            dst = locked[dst_folder]
            rows = await _rows(conn, src_folder, uids)
            if not rows:
                raise _Unchanged((dst.uidvalidity, []))
            first = await _allocate_uids(conn, dst_folder, rows)
            await self._check_quota(conn, dst.mailbox_id)
            await _keep_keywords(conn, dst, {f for r in rows for f in flag_set(r.flags)})
            await conn.execute(insert(folder_messages), [
                {"folder_id": dst_folder, "uid": first + n, "body_id": r.body_id, "flags": r.flags,
                 "internaldate": r.internaldate, "modseq": dst.highestmodseq, "size": r.size}
                for n, r in enumerate(rows)])
            return (dst.uidvalidity, [(r.uid, first + n) for n, r in enumerate(rows)]), [_changed(dst)]
        return await self._write(work)

    async def move(self, src_folder: int, uids: Sequence[int], dst_folder: int) -> tuple[int, list[tuple[int, int]]]:
        """MOVE (RFC 6851) in one transaction: the rows themselves change folder and UID (so
        deliveries still point at them and no body is freed); the source records them as
        vanished. Moving to the same folder renumbers, as Dovecot does."""
        async def work(conn: AsyncConnection) -> tuple[tuple[int, list[tuple[int, int]]], list[Event]]:
            locked = await _lock(conn, {src_folder: 1, dst_folder: 1})
            src, dst = locked[src_folder], locked[dst_folder]
            rows = await _rows(conn, src_folder, uids)
            if not rows:
                raise _Unchanged((dst.uidvalidity, []))
            first = await _allocate_uids(conn, dst_folder, rows)
            await _uncount(conn, src_folder, rows)
            if dst.mailbox_id != src.mailbox_id:
                await self._check_quota(conn, dst.mailbox_id)
            await _keep_keywords(conn, dst, {f for r in rows for f in flag_set(r.flags)})
            await conn.execute(insert(folder_vanished), [
                {"folder_id": src_folder, "uid": r.uid, "modseq": src.highestmodseq} for r in rows])
            await conn.execute(update(folder_messages).where(folder_messages.c.id == bindparam("row_id")).values(
                folder_id=dst_folder, uid=bindparam("new_uid"), modseq=dst.highestmodseq), [
                {"row_id": r.id, "new_uid": first + n} for n, r in enumerate(rows)])
            events = [_changed(src)] + ([_changed(dst)] if dst_folder != src_folder else [])
            return (dst.uidvalidity, [(r.uid, first + n) for n, r in enumerate(rows)]), events
        return await self._write(work)

    async def expunge(self, folder_id: int, uids: Sequence[int] | None = None) -> list[int]:
        """EXPUNGE, or UID EXPUNGE (RFC 4315) with `uids`: removes the \\Deleted messages,
        records their UIDs for VANISHED, and frees the bodies nothing else needs. Returns the
        expunged UIDs, sorted."""
        only = None if uids is None else set(uids)

        async def work(conn: AsyncConnection) -> tuple[list[int], list[Event]]:
            folder = (await _lock(conn, {folder_id: 1}))[folder_id]
            rows = [r for r in await conn.execute(
                select(folder_messages.c.id, folder_messages.c.uid, folder_messages.c.flags,
                       folder_messages.c.body_id, folder_messages.c.size).where(
                    folder_messages.c.folder_id == folder_id,
                    folder_messages.c.flags.contains("\\Deleted", autoescape=True)))
                    if "\\Deleted" in flag_set(r.flags) and (only is None or r.uid in only)]
            if not rows:
                raise _Unchanged([])
            await conn.execute(insert(folder_vanished), [
                {"folder_id": folder_id, "uid": r.uid, "modseq": folder.highestmodseq} for r in rows])
            await _uncount(conn, folder_id, rows)
            await _remove(conn, rows)
            return sorted(r.uid for r in rows), [_changed(folder)]
        return await self._write(work)

    async def _check_quota(self, conn: AsyncConnection, mailbox_id: int) -> None:
        """Called once the new messages are counted in the box's folders: their transaction
        rolls back if the box is then over quota."""
        used, _count = await _usage(conn, mailbox_id)
        if used > self._quota:
            raise OverQuota(f"{used} bytes > {self._quota}")


def _flag_condition(term: tuple) -> Any:
    """SQL for a search.FlagTerm: a flag is a whole word of the space-separated list."""
    kind = term[0]
    if kind == "all":
        return true()
    if kind == "subject":
        return subject_contains(term[1])
    if kind == "flag":
        if not term[1].isascii():
            return None
        words = func.lower(" " + folder_messages.c.flags + " ")
        found = words.contains(f" {term[1].lower()} ", autoescape=True)
        return found if term[2] else not_(found)
    parts = [_flag_condition(t) for t in (term[1] if kind == "and" else term[1:])]
    if any(p is None for p in parts):
        return None
    return and_(*parts) if kind == "and" else or_(*parts) if kind == "or" else not_(parts[0])


# --- inside a transaction ----------------------------------------------------------------------

async def _lock(conn: AsyncConnection, bumps: dict[int, int]) -> dict[int, Any]:
    """Lock the folders (id order) and add to each HIGHESTMODSEQ its bump (0: lock only)."""
    rows = {}
    for folder_id in sorted(bumps):
        row = (await conn.execute(update(folders).where(folders.c.id == folder_id)
                                  .values(highestmodseq=folders.c.highestmodseq + bumps[folder_id])
                                  .returning(*_FOLDER))).first()
        if row is None:
            raise NoSuchFolder(folder_id)
        rows[folder_id] = row
    return rows


async def _keep_keywords(conn: AsyncConnection, folder: Any, flags: Iterable[str]) -> None:
    """Add to the folder's keywords (`folder` a locked row) those of `flags` it lacks."""
    new = {f for f in flags if not f.startswith("\\")} - flag_set(folder.keywords)
    if new:
        await conn.execute(update(folders).where(folders.c.id == folder.id).values(
            keywords=_flags_text(flag_set(folder.keywords) | new)))


async def _lock_name(conn: AsyncConnection, mailbox_id: int, name: str) -> Any:
    row = (await conn.execute(update(folders).where(folders.c.mailbox_id == mailbox_id, folders.c.name == name)
                              .values(highestmodseq=folders.c.highestmodseq + 1).returning(*_FOLDER))).first()
    if row is None:
        raise NoSuchFolder(name)
    return row


async def _folder(conn: AsyncConnection, folder_id: int) -> Any:
    row = (await conn.execute(select(*_FOLDER).where(folders.c.id == folder_id))).first()
    if row is None:
        raise NoSuchFolder(folder_id)
    return row


async def _allocate_uids(conn: AsyncConnection, folder_id: int, rows: Sequence[Any]) -> int:
    """The first of consecutive new UIDs for `rows` (each with .size), counted in the folder."""
    uidnext = (await conn.execute(update(folders).where(folders.c.id == folder_id).values(
        uidnext=folders.c.uidnext + len(rows), messages=folders.c.messages + len(rows),
        octets=folders.c.octets + sum(r.size for r in rows)).returning(folders.c.uidnext))).scalar_one()
    return uidnext - len(rows)


async def _uncount(conn: AsyncConnection, folder_id: int, rows: Sequence[Any]) -> None:
    """The folder's counters without `rows` (each with .size), which leave it."""
    await conn.execute(update(folders).where(folders.c.id == folder_id).values(
        messages=folders.c.messages - len(rows), octets=folders.c.octets - sum(r.size for r in rows)))


async def _rows(conn: AsyncConnection, folder_id: int, uids: Sequence[int]) -> list[Any]:
    """The folder's rows among `uids`, by UID."""
    found = []
    for chunk in _chunks(sorted(set(uids))):
        found += await conn.execute(
            select(folder_messages.c.id, folder_messages.c.uid, folder_messages.c.body_id, folder_messages.c.flags,
                   folder_messages.c.internaldate, folder_messages.c.size)
            .where(folder_messages.c.folder_id == folder_id, folder_messages.c.uid.in_(chunk)))
    return sorted(found, key=lambda r: r.uid)


async def _usage(conn: AsyncConnection, mailbox_id: int) -> tuple[int, int]:
    used, count = (await conn.execute(_USAGE, {"mailbox": mailbox_id})).one()
    return int(used), int(count)


async def _uidvalidity(conn: AsyncConnection, mailbox_id: int, *, above: int = 0) -> int:
    """A new UIDVALIDITY for the box: the clock (as ensure_folders uses), but always greater
    than any handed out or retired before, and than `above` (RFC 3501 §2.3.1.1: a folder
    re-created under an earlier name must not be mistaken for it)."""
    floor = max(int(time.time()), above + 1)
    last = mailboxes.c.last_uidvalidity
    return (await conn.execute(update(mailboxes).where(mailboxes.c.id == mailbox_id)
                               .values(last_uidvalidity=case((last + 1 > floor, last + 1), else_=floor))
                               .returning(last))).scalar_one()


async def _insert_folder(conn: AsyncConnection, mailbox_id: int, name: str, special_use: str, uidvalidity: int,
                         *, uidnext: int = 1, highestmodseq: int = 1) -> int:
    return (await conn.execute(insert(folders).returning(folders.c.id), {
        "mailbox_id": mailbox_id, "name": name, "special_use": special_use, "uidvalidity": uidvalidity,
        "uidnext": uidnext, "highestmodseq": highestmodseq, "first_recent_uid": uidnext,
        "created_at": datetime.now(timezone.utc)})).scalar_one()


async def _rename_inbox(conn: AsyncConnection, inbox: Any, new: str) -> list[Event]:
    """The rows change folder and keep their UIDs (the new folder's UIDVALIDITY makes them new
    to clients); INBOX keeps its UIDNEXT, so no UID there is ever used twice, and records them
    as vanished."""
    folder_id = await _insert_folder(conn, inbox.mailbox_id, new, "", await _uidvalidity(conn, inbox.mailbox_id),
                                     uidnext=inbox.uidnext, highestmodseq=inbox.highestmodseq)
    for moved_to, messages, octets in ((folder_id, inbox.messages, inbox.octets), (inbox.id, 0, 0)):
        await conn.execute(update(folders).where(folders.c.id == moved_to).values(messages=messages, octets=octets))
    fm = folder_messages
    await conn.execute(insert(folder_vanished).from_select(
        ["folder_id", "uid", "modseq"],
        select(fm.c.folder_id, fm.c.uid, literal(inbox.highestmodseq)).where(fm.c.folder_id == inbox.id)))
    await conn.execute(update(fm).where(fm.c.folder_id == inbox.id).values(folder_id=folder_id))
    return [_changed(inbox)]


async def _remove(conn: AsyncConnection, rows: Sequence[Any]) -> None:
    """Delete folder rows (each with .id and .body_id), then free the bodies they leave unused."""
    ids = [r.id for r in rows]
    for chunk in _chunks(ids):
        await conn.execute(update(deliveries).where(deliveries.c.folder_message_id.in_(chunk))
                           .values(folder_message_id=None))
        await conn.execute(delete(folder_messages).where(folder_messages.c.id.in_(chunk)))
    await free_bodies(conn, sorted({r.body_id for r in rows}))
