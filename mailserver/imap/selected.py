"""The selected folder as one session knows it: message sequence numbers, flags, MODSEQs.

Sequence numbers (RFC 3501 §2.3.1.2) are per session: they move only when this session is
told of an expunge. The store is the truth and its change log the only way the view moves on:
`sync` reads what changed since the highest MODSEQ this session read from the log (new
messages, flag changes, expunges, all stamped by the one folder counter) and turns into
untagged responses whatever differs from what the session holds. The session's own writes
update what it holds, never where it has read the log up to, so they are not told twice and
cannot hide others' earlier changes. Expunges wait while
a command that uses sequence numbers runs (RFC 3501 §7.4.1: no EXPUNGE during FETCH, STORE
or SEARCH) and are told at the next point where they may be.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable

from store.events import EventBus

from . import encode
from .folders import SYSTEM_FLAGS, Changes, Folders, FolderState, MessageMeta
from .names import Box
from .seqset import compress

# INTERNALDATE of a message expunged by another session before this one read it
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class BoxNews:
    """Whether the selected folder may have changed since the session last read its change log.
    Every write to a folder is announced on its box's channel (folder_changed, new_mail, a name
    change) before the writer answers: in its process at once, in the others through the bus.
    A session that heard nothing of its folder needs no read after each command; that read was
    half of a NOOP's time and a third of a SEARCH on flags (bench/imap.py). While the bus does
    not hear every process (`hears_all`), every command reads; lost events (OVERFLOW) are news."""

    def __init__(self, bus: EventBus, channel: str, folder: str) -> None:
        self.changed = False  # made before the folder's state is read: only what comes after counts
        self._bus = bus
        self._folder = folder
        self._tap = bus.tap(channel, self._heard)

    @staticmethod
    def concerns(event: dict, folder: str) -> bool:
        """Whether a box event may change `folder`: news of another folder of the box (a
        delivery, another session's write) does not."""
        return event.get("type") not in ("new_mail", "folder_changed") or event.get("folder") == folder

    def _heard(self, channel: str, event: dict) -> None:
        if self.concerns(event, self._folder):
            self.changed = True

    def take(self) -> bool:
        """Whether to read the change log now; what is heard from here on is news again."""
        changed, self.changed = self.changed or not self._bus.hears_all(), False
        return changed

    def close(self) -> None:
        self._tap.close()


@dataclass
class Selected:
    """Per message, in dicts keyed by UID: flags (few distinct sets, shared), MODSEQ and size.
    INTERNALDATE never changes and is read when a command first needs it (`load_dates`), not
    by SELECT."""

    box: Box
    folder: str
    folder_id: int
    readonly: bool
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    uids: list[int] = field(default_factory=list)  # index + 1 = sequence number
    flags: dict[int, frozenset[str]] = field(default_factory=dict)
    modseqs: dict[int, int] = field(default_factory=dict)
    sizes: dict[int, int] = field(default_factory=dict)
    dates: dict[int, datetime] = field(default_factory=dict)  # INTERNALDATE, as read
    recent: set[int] = field(default_factory=set)
    pending_vanished: set[int] = field(default_factory=set)
    told_keywords: set[str] = field(default_factory=set)  # in the last FLAGS response
    told_recent: int = 0  # in the last RECENT response
    first_unseen: int | None = None  # sequence number, as SELECT found it (its UNSEEN)
    borrowed: bool = False  # uids, flags, modseqs and sizes are still the folder's view's (`own`)
    news: BoxNews | None = None  # None: read the change log after every command

    @classmethod
    async def open(cls, folders: Folders, box: Box, folder: str, state: FolderState, *,
                   readonly: bool, news: BoxNews | None = None) -> "Selected":
        """From the folder's `state`, just read. EXAMINE claims no \\Recent (RFC 3501 §6.3.2: no
        change to the mailbox) but shows those no SELECT has claimed yet, as STATUS counts them."""
        view = await folders.view(state.id, state)
        state = view.state
        selected = cls(box, folder, state.id, readonly, state.uidvalidity, state.uidnext, state.highestmodseq,
                       *view.lend(), borrowed=True, news=news)
        selected.told_keywords = set(state.keywords) | view.keywords  # one arriving meanwhile too
        if view.first_unseen is not None:
            selected.first_unseen = selected.seq_of(view.first_unseen)
        if selected.uids:
            selected.recent = await selected._recent(folders, state, selected.uids)
        return selected

    async def _recent(self, folders: Folders, state: FolderState, new: list[int]) -> set[int]:
        """Which of `new` (UIDs seen for the first time, in order) are \\Recent in this session.
        Nothing to claim (every UID below the folder's mark): no write."""
        if self.readonly or state.first_recent_uid > new[-1]:
            first = state.first_recent_uid
        else:
            first = await folders.claim_recent(self.folder_id, new[-1] + 1)
        return set(new[bisect.bisect_left(new, first):])

    def own(self) -> None:
        """Copy the view's collections before this session first changes them: SELECT lends them
        (copying 10,000 UIDs into three dicts and a list was a third of a warm SELECT's time),
        and most sessions never change them before the next SELECT."""
        if self.borrowed:
            self.uids, self.flags, self.modseqs, self.sizes = (
                c.copy() for c in (self.uids, self.flags, self.modseqs, self.sizes))
            self.borrowed = False

    @property
    def exists(self) -> int:
        return len(self.uids)

    def seq_of(self, uid: int) -> int | None:
        i = bisect.bisect_left(self.uids, uid)
        return i + 1 if i < len(self.uids) and self.uids[i] == uid else None

    def flags_of(self, uid: int) -> list[str]:
        flags = sorted(self.flags[uid])
        return flags + ["\\Recent"] if uid in self.recent else flags

    async def load_dates(self, folders: Folders, uids: list[int]) -> None:
        """INTERNALDATE of `uids` not read yet; a message expunged since (its row gone) stays
        without."""
        missing = [u for u in uids if u not in self.dates]
        if missing:
            self.dates.update(await folders.dates(self.folder_id, missing))

    def flags_response(self) -> bytes:
        """FLAGS and PERMANENTFLAGS: the flags in use, and those the session may set (none when
        read-only; any new keyword: \\*)."""
        keywords = sorted(self.told_keywords)
        flags = encode.plist(f.encode() for f in (*SYSTEM_FLAGS.values(), *keywords))
        permanent = b"()" if self.readonly else \
            encode.plist(f.encode() for f in (*SYSTEM_FLAGS.values(), *keywords, "\\*"))
        return b"* FLAGS %s\r\n* OK [PERMANENTFLAGS %s] flags you can change permanently\r\n" % (flags, permanent)

    def recent_response(self) -> bytes:
        self.told_recent = len(self.recent)
        return b"* %d RECENT\r\n" % self.told_recent

    def tell_keywords(self, flags: Iterable[str]) -> list[bytes]:
        """FLAGS and PERMANENTFLAGS again, to send before any FETCH that shows a keyword the
        session has not been told of (RFC 3501 §7.2.6: FLAGS lists the flags in use; clients
        such as imaptest check each flag they see against it), or when the folder's list of
        keywords grew (one set on a message expunged before this session looked)."""
        new = {f for f in flags if not f.startswith("\\")} - self.told_keywords
        if not new:
            return []
        self.told_keywords |= new
        return [self.flags_response()]

    def fetch_flags(self, uid: int, *, condstore: bool) -> bytes:
        """An untagged FETCH telling a flag change (with UID and MODSEQ, as RFC 7162 §3.2.4 asks)."""
        items = b"UID %d FLAGS %s" % (uid, encode.plist(f.encode() for f in self.flags_of(uid)))
        if condstore:
            items += b" MODSEQ (%d)" % self.modseqs[uid]
        return b"* %d FETCH (%s)\r\n" % (self.seq_of(uid), items)

    def update(self, meta: MessageMeta) -> None:
        """Our own STORE changed a message: remember its new state, so sync, finding the same
        state in the change log, does not tell it again. `highestmodseq` stays where the log was
        last read: our MODSEQ may be above others' changes not yet told (an expunge, a new
        message), which the next sync must still read."""
        if meta.uid in self.flags:
            self.own()
            self.flags[meta.uid], self.modseqs[meta.uid] = meta.flags, meta.modseq

    async def sync(self, folders: Folders, *, expunges: bool, qresync: bool, condstore: bool,
                   rev2: bool) -> list[bytes]:
        """Untagged responses for what changed since we last looked: expunges (when they may
        be told), then new keywords, flag changes, EXISTS and, before IMAP4rev2, RECENT when
        the number of \\Recent messages changed (new ones claimed, or expunged ones gone, as
        Dovecot tells it: a client keeps the last number it was told)."""
        out: list[bytes] = []
        changes = None
        if self.news is None or self.news.take():
            changes = await folders.changes(self.folder_id, self.highestmodseq)
            self.pending_vanished.update(uid for uid in changes.vanished if uid in self.flags)
        if expunges and self.pending_vanished:
            out += self.forget(sorted(self.pending_vanished), qresync=qresync)
        if changes is not None:
            out += await self._moved_on(folders, changes, condstore)
        if not rev2 and len(self.recent) != self.told_recent:
            out.append(self.recent_response())
        return out

    async def _moved_on(self, folders: Folders, changes: Changes, condstore: bool) -> list[bytes]:
        """New keywords, flag changes and EXISTS for what the change log told."""
        out: list[bytes] = []
        fetches: list[bytes] = []
        added: list[int] = []
        if changes.changed:
            self.own()
        for meta in changes.changed:
            if meta.uid in self.pending_vanished:
                continue
            old = self.flags.get(meta.uid)
            if old is None:
                if self.uids and meta.uid < self.uids[-1]:
                    continue  # cannot happen: UIDs only grow; never break the sequence order
                self.uids.append(meta.uid)
                self.sizes[meta.uid], self.dates[meta.uid] = meta.size, meta.internaldate
                added.append(meta.uid)
            old_modseq = self.modseqs.get(meta.uid)
            self.flags[meta.uid], self.modseqs[meta.uid] = meta.flags, meta.modseq
            if old is not None and (old != meta.flags or condstore and old_modseq != meta.modseq):
                fetches.append(self.fetch_flags(meta.uid, condstore=condstore))
        out += self.tell_keywords([*changes.state.keywords, *(f for m in changes.changed for f in m.flags)])
        out += fetches
        if added:
            out.append(b"* %d EXISTS\r\n" % self.exists)
            self.recent |= await self._recent(folders, changes.state, added)
        self.uidnext = max(self.uidnext, changes.state.uidnext)
        self.highestmodseq = max(self.highestmodseq, changes.state.highestmodseq)
        return out

    def forget(self, uids: list[int], *, qresync: bool) -> list[bytes]:
        """Drop expunged messages from the view: EXPUNGE per message, or one VANISHED (RFC 7162
        §3.2.10) once the client enabled QRESYNC."""
        out = []
        present = [u for u in uids if u in self.flags]
        if present:
            self.own()
        for uid in present:
            seq = self.seq_of(uid)
            del self.uids[seq - 1]
            del self.flags[uid], self.modseqs[uid], self.sizes[uid]
            self.dates.pop(uid, None)
            self.recent.discard(uid)
            if not qresync:
                out.append(b"* %d EXPUNGE\r\n" % seq)
        self.pending_vanished.difference_update(uids)
        if qresync and present:
            out.append(b"* VANISHED %s\r\n" % compress(present).encode())
        return out
