"""Load the national directory extracts into the store: streamed, idempotent, resumable.

Why it is shaped this way:
- The PS file has about two million lines. It is read line by line in a worker thread and
  written in batches of BATCH_LINES, each its own transaction: memory stays flat, and the SQLite
  write lock is released between batches so the mail server can keep writing meanwhile.
- Every row is upserted with INSERT … ON CONFLICT DO UPDATE … WHERE something differs, so
  importing the same data again writes nothing and a daily file only rewrites what changed.
  Rows a file lists carry its stamp (`source_stamp`); once the whole file is in, the rows of
  that kind still carrying an older stamp were not listed, and are retired (never deleted: mail
  and audit rows keep pointing at them). A file that dies half-way leaves no retirement behind
  and is simply imported again.
- The file the store already reflects (same sha256 as the last import of its kind) is recognised
  and skipped. A file older than the last one of its kind is refused unless forced, and so is
  one much shorter than the last: either would retire entries the national directory still lists.
"""
from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

from sqlalchemy import and_, case, exists, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from directory.extract import PS, ExtractParser, MailboxLine, Organisation, Professional, PsLine, Rejected
from directory.identifiers import fold
from store.db import dialect_insert
from store.schema import activities, imports, mailboxes, organisations, professionals

BATCH_LINES = 5000  # rows per transaction: large enough to amortise a commit, small enough to stay flat
REJECTED_SAMPLES = 1000  # rejected lines kept in the report; all of them are counted
SHRINK_GUARD = 0.5  # a file with fewer lines than this share of the last one looks truncated
# Structures already written by the running import are not sent again for each of their activity
# lines (a hospital has thousands); the set is emptied when full, which only costs some rewrites.
STRUCTURES_REMEMBERED = 100_000
KEYS_PER_PROBE = 500  # keys looked up per query when checking which mailbox owners exist

Progress = Callable[[int, int, int], None]  # (lines done, bytes done, total bytes)


class ImportRefused(Exception):
    """The file was not imported, and no entry was changed; the message says why.

    `report` holds the figures when the file was read before being refused (every line rejected);
    the imports log then keeps that run as started and never finished, like a run that died.
    """

    def __init__(self, message: str, report: ImportReport | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class ImportReport:
    kind: str  # "ps" or "mss"
    file: str
    stamp: str
    lines: int = 0  # data lines, the header not counted
    accepted: int = 0
    rejected: list[Rejected] = field(default_factory=list)  # the first REJECTED_SAMPLES of them
    rejected_count: int = 0
    retired: int = 0
    unchanged: bool = False  # the same file was imported before: nothing was read or written
    seconds: float = 0.0

    def summary(self) -> str:
        name = Path(self.file).name
        if self.unchanged:
            return f"{name}: already imported, nothing changed"
        return (f"{name}: {self.lines} lines, {self.accepted} accepted, {self.rejected_count} rejected, "
                f"{self.retired} entries retired, in {self.seconds:.1f} s")


async def import_file(engine: AsyncEngine, path: str | Path, *, local_domains: Iterable[str],
                      progress: Progress | None = None, force: bool = False,
                      on_rejected: Callable[[list[Rejected]], None] | None = None) -> ImportReport:
    """Import one PS_LibreAcces_Personne_activite or Extraction_Correspondance_MSSante extract.

    `local_domains`: this operator's mail domains; imported mailboxes there are flagged `local`.
    `force`: import even a file older or much shorter than the last one of its kind, or one
    already imported. `on_rejected` is given every rejected line, batch by batch (the report
    keeps only the first REJECTED_SAMPLES). Raises ImportRefused (or ExtractError for an unknown
    file, OSError for one that cannot be read) without writing; a file none of whose lines could
    be read is refused too, since retiring every entry it does not list would empty the directory.
    """
    started = time.monotonic()
    path = Path(path)
    domains = frozenset(d.strip().lower().encode("idna").decode("ascii") for d in local_domains)
    sha256, total_bytes, newlines = await asyncio.to_thread(_fingerprint, path)
    reader = await asyncio.to_thread(_Reader, path)
    pending = None
    try:
        parser = reader.parser
        if parser.stamp is None:
            raise ImportRefused(f"{path.name}: the file name carries no _AAAAMMJJhhmm stamp; "
                                "keep the national file's name")
        report = ImportReport(parser.kind, str(path), parser.stamp)
        async with engine.begin() as conn:
            same, last = await _history(conn, parser.kind, sha256)
        if same is not None and last is not None and same.id == last.id and not force:
            report.lines, report.accepted, report.rejected_count = same.lines, same.accepted, same.rejected
            report.unchanged = True
            report.seconds = time.monotonic() - started
            return report
        if last is not None and not force:
            _check_follows(path.name, parser.kind, parser.stamp, max(newlines - 1, 0), last)
        import_id = await _begin(engine, report, sha256, same)
        writer = _PsWriter(parser.stamp) if parser.kind == PS else _MssWriter(parser.stamp, domains)
        # The next batch is parsed in its thread while this one is written: SQLite and asyncpg do
        # their part without holding the GIL, so the two overlap.
        pending = asyncio.ensure_future(asyncio.to_thread(reader.next_batch))
        while (batch := await pending) is not None:
            pending = asyncio.ensure_future(asyncio.to_thread(reader.next_batch))
            if batch.records:
                async with engine.begin() as conn:
                    await writer.write(conn, batch.records, datetime.now(timezone.utc))
            if on_rejected is not None and batch.rejected:
                on_rejected(batch.rejected)
            report.lines = batch.lines
            report.accepted += len(batch.records)
            report.rejected_count += len(batch.rejected)
            report.rejected.extend(batch.rejected[:REJECTED_SAMPLES - len(report.rejected)])
            if progress is not None:
                progress(batch.lines, batch.bytes_done, total_bytes)
        if report.accepted == 0:
            report.seconds = time.monotonic() - started
            raise ImportRefused(f"{path.name}: no data line could be imported ({report.lines} lines, "
                                f"{report.rejected_count} rejected): no entry was changed", report)
        async with engine.begin() as conn:
            report.retired = await writer.retire(conn, datetime.now(timezone.utc))
            await _finish(conn, import_id, report)
        await _refresh_statistics(engine, parser.kind)
    finally:
        if pending is not None and not pending.done():  # never close the file under the reading thread
            await asyncio.gather(pending, return_exceptions=True)
        reader.close()
    report.seconds = time.monotonic() - started
    return report


def _fingerprint(path: Path) -> tuple[str, int, int]:
    """sha256, size and newline count, read once in 1 MiB chunks."""
    digest, size, newlines = hashlib.sha256(), 0, 0
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
            newlines += chunk.count(b"\n")
    return digest.hexdigest(), size, newlines


class _Batch(NamedTuple):
    records: list
    rejected: list[Rejected]
    lines: int  # lines read so far, this batch included
    bytes_done: int


class _Reader:
    """Reads and parses the extract; its methods run in a worker thread, because decoding and
    parsing a batch is CPU work that would otherwise stall a server's event loop."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "rb")
        try:
            header = self._file.readline()
            self.parser = ExtractParser(header, path.name)
        except BaseException:
            self._file.close()
            raise
        self.lines = 0
        self.bytes_done = len(header)
        self._held: PsLine | MailboxLine | Rejected | None = None
        # A batch ends between two entries, never inside one: a professional's activity lines
        # (consecutive in the national file) then meet in one batch, whose "last line wins"
        # decides their row once, and a forced re-import finds every row already as it is.
        self._entry: Callable = (lambda r: r.professional.idnat) if self.parser.kind == PS else (lambda r: r.address)

    def next_batch(self) -> _Batch | None:
        records: list = []
        rejected: list[Rejected] = []
        if self._held is not None:
            (rejected if type(self._held) is Rejected else records).append(self._held)
            self._held = None
        for raw in self._file:
            self.lines += 1
            self.bytes_done += len(raw)
            item = self.parser.feed(raw)
            size = len(records) + len(rejected)
            if size >= BATCH_LINES and (size >= 2 * BATCH_LINES or type(item) is Rejected or not records
                                        or self._entry(item) != self._entry(records[-1])):
                self._held = item
                return _Batch(records, rejected, self.lines - 1, self.bytes_done - len(raw))
            (rejected if type(item) is Rejected else records).append(item)
        return _Batch(records, rejected, self.lines, self.bytes_done) if records or rejected else None

    def close(self) -> None:
        self._file.close()


async def _history(conn: AsyncConnection, kind: str, sha256: str):
    """The earlier import of this very content, if any, and the last finished import of the kind:
    the store reflects the content when both are the same import."""
    same = (await conn.execute(select(imports).where(imports.c.kind == kind, imports.c.sha256 == sha256))).first()
    last = (await conn.execute(
        select(imports.c.id, imports.c.stamp, imports.c.lines, imports.c.file_name)
        .where(imports.c.kind == kind, imports.c.finished_at.is_not(None))
        .order_by(imports.c.stamp.desc(), imports.c.id.desc()).limit(1))).first()
    return same, last


def _check_follows(name: str, kind: str, stamp: str, lines: int, last) -> None:
    if stamp < last.stamp:
        raise ImportRefused(f"{name} ({stamp}) is older than the last {kind} file imported, {last.file_name} "
                            f"({last.stamp}): importing it would bring back stale entries (use force to do it anyway)")
    if lines < last.lines * SHRINK_GUARD:
        raise ImportRefused(f"{name} has {lines} lines, the last {kind} file had {last.lines}: it looks truncated, "
                            "and importing it would retire every entry it lacks (use force to do it anyway)")


async def _begin(engine: AsyncEngine, report: ImportReport, sha256: str, same) -> int:
    """Record the import as started. The log keeps one row per content (sha256): the row of a failed
    run, or of the same content imported before, is reused."""
    now = datetime.now(timezone.utc)
    async with engine.begin() as conn:
        if same is not None:
            await conn.execute(update(imports).where(imports.c.id == same.id).values(
                file_name=Path(report.file).name, stamp=report.stamp, started_at=now, finished_at=None))
            return same.id
        result = await conn.execute(imports.insert().values(
            kind=report.kind, file_name=Path(report.file).name, stamp=report.stamp, sha256=sha256, started_at=now))
        return result.inserted_primary_key[0]


async def _finish(conn: AsyncConnection, import_id: int, report: ImportReport) -> None:
    await conn.execute(update(imports).where(imports.c.id == import_id).values(
        finished_at=datetime.now(timezone.utc), lines=report.lines, accepted=report.accepted,
        rejected=report.rejected_count, retired=report.retired))


def _upsert(conn: AsyncConnection, table, key: str, *, when, keep: tuple[str, ...] = ()):
    """INSERT … ON CONFLICT (key) DO UPDATE every column but `keep` … WHERE `when`.

    `updated_at` moves only when the content changed (another digest) or the row comes back from
    retirement: a row merely listed again gets the new stamp and keeps its updated_at.
    """
    stmt = dialect_insert(conn, table)
    new = stmt.excluded
    values = {c.name: new[c.name] for c in table.columns if c.name not in (key, "updated_at", *keep)}
    values["retired_at"] = None
    changed = or_(table.c.digest != new.digest, table.c.retired_at.is_not(None))
    if "local" in table.c:
        changed = or_(changed, table.c.local != new.local)
    values["updated_at"] = case((changed, new.updated_at), else_=table.c.updated_at)
    return stmt.on_conflict_do_update(index_elements=[key], set_=values, where=when(table.c, new))


async def _missing(conn: AsyncConnection, key, wanted: dict) -> list[str]:
    """Keys of `wanted` with no row to point at: absent, or a retired placeholder.

    Nearly every owner is known already, and reading the batch's keys costs far less than
    sending each row to be ignored by ON CONFLICT. The keys go in chunks of one size, padded:
    the driver prepares and caches one statement per distinct SQL text, and an IN list of every
    length would fill its cache with statements of thousands of parameters.
    """
    table = key.table
    keys = sorted(wanted)
    present: set[str] = set()
    for start in range(0, len(keys), KEYS_PER_PROBE):
        chunk = keys[start:start + KEYS_PER_PROBE]
        chunk += chunk[-1:] * (KEYS_PER_PROBE - len(chunk))
        present.update((await conn.execute(select(key).where(
            key.in_(chunk), or_(table.c.digest != "", table.c.retired_at.is_(None))))).scalars())
    return [k for k in keys if k not in present]


def _placeholder(conn: AsyncConnection, table, key: str):
    """INSERT a partial row (digest "") a mailbox needs for its foreign key; never overwrite a full
    row. A retired placeholder is brought back, since a mailbox lists it again."""
    stmt = dialect_insert(conn, table)
    return stmt.on_conflict_do_update(
        index_elements=[key], set_={"retired_at": None, "updated_at": stmt.excluded.updated_at},
        where=and_(table.c.digest == "", table.c.retired_at.is_not(None)))


class _PsWriter:
    """Writes the structures, professionals and activities of PS lines; retires what is not listed."""

    def __init__(self, stamp: str) -> None:
        self.stamp = stamp
        self._structures_done: set[str] = set()

    async def write(self, conn: AsyncConnection, records: list[PsLine], now: datetime) -> None:
        # Structures repeat on each of their activity lines, and the file does not always agree
        # with itself (the street of a site, the name behind a shared technical id): the first
        # line of an import describes the structure, and the new source_stamp marks it as done.
        # A placeholder left by a mailbox line (digest "") is completed.
        structures = {}
        for record in records:
            if record.organisation is not None and record.organisation.id not in self._structures_done:
                structures.setdefault(record.organisation.id, record.organisation)
        if len(self._structures_done) + len(structures) > STRUCTURES_REMEMBERED:
            self._structures_done.clear()
        self._structures_done.update(structures)
        people = {r.professional.idnat: r.professional for r in records}  # last line wins
        work = {r.activity.key: r.activity for r in records}
        if structures:
            await conn.execute(
                _upsert(conn, organisations, "id",
                        when=lambda t, new: or_(t.source_stamp != new.source_stamp, t.digest == "")),
                [_organisation_row(o, self.stamp, now) for o in structures.values()])
        await conn.execute(
            _upsert(conn, professionals, "idnat", when=lambda t, new: or_(
                t.digest != new.digest, t.source_stamp != new.source_stamp, t.retired_at.is_not(None))),
            [_professional_row(p, self.stamp, now) for p in people.values()])
        stmt = dialect_insert(conn, activities)
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["key"], set_={"source_stamp": stmt.excluded.source_stamp, "retired_at": None},
                where=or_(activities.c.source_stamp != stmt.excluded.source_stamp,
                          activities.c.retired_at.is_not(None))),
            [{**a._asdict(), "city_search": fold(a.city), "source_stamp": self.stamp, "retired_at": None}
             for a in work.values()])

    async def retire(self, conn: AsyncConnection, now: datetime) -> int:
        """Retire the activities, professionals and structures the file no longer lists.

        Placeholders (digest "") came from mailbox lines, not from a PS file, and are left to
        the mailbox import; so is a structure a live mailbox still belongs to.
        """
        retired = (await conn.execute(
            update(activities).where(_not_listed(activities, self.stamp)).values(retired_at=now))).rowcount
        retired += (await conn.execute(
            update(professionals).where(_not_listed(professionals, self.stamp), professionals.c.digest != "")
            .values(retired_at=now, updated_at=now))).rowcount
        has_box = exists().where(mailboxes.c.organisation_id == organisations.c.id, mailboxes.c.retired_at.is_(None))
        retired += (await conn.execute(
            update(organisations).where(_not_listed(organisations, self.stamp), organisations.c.digest != "", ~has_box)
            .values(retired_at=now, updated_at=now))).rowcount
        return retired


class _MssWriter:
    """Writes the mailboxes of MSSanté lines; retires the imported ones that are not listed."""

    def __init__(self, stamp: str, local_domains: frozenset[str]) -> None:
        self.stamp = stamp
        self.local_domains = local_domains

    async def write(self, conn: AsyncConnection, records: list[MailboxLine], now: datetime) -> None:
        # The owner of a PER box may not be in the PS file (yet): a placeholder row from the
        # mailbox line's names keeps the foreign key and makes the box findable by name; a PS
        # import later completes it (its digest differs). Same for the structure of an ORG box.
        owners, structures, boxes = {}, {}, {}
        for record in records:
            boxes.setdefault(record.address, record)  # an address listed twice: its first line wins
            if record.owner is not None:
                owners.setdefault(record.owner.idnat, record.owner)
            if record.organisation is not None:
                structures.setdefault(record.organisation.id, record.organisation)
        for table, key, wanted, row in ((professionals, "idnat", owners, _professional_row),
                                        (organisations, "id", structures, _organisation_row)):
            missing = await _missing(conn, table.c[key], wanted)
            if missing:
                await conn.execute(_placeholder(conn, table, key),
                                   [row(wanted[k], self.stamp, now) for k in missing])
        # Boxes created here (source_stamp "") belong to this operator: the national file never
        # rewrites them, even when it lists them too.
        await conn.execute(
            _upsert(conn, mailboxes, "address", keep=("id", "kind", "created_at"), when=lambda t, new: and_(
                t.source_stamp != "", or_(t.source_stamp != new.source_stamp, t.local != new.local))),
            [{"address": b.address, "kind": b.kind, "owner_idnat": b.owner_idnat,
              "organisation_id": b.organisation_id, "service": b.service, "description": b.description,
              "published": b.published, "local": b.address.rpartition("@")[2] in self.local_domains,
              "created_at": now, "digest": b.digest, "source_stamp": self.stamp, "retired_at": None,
              "updated_at": now} for b in boxes.values()])

    async def retire(self, conn: AsyncConnection, now: datetime) -> int:
        """Retire imported mailboxes the file no longer lists (never a locally created one), then
        the placeholders no live mailbox needs any more."""
        retired = (await conn.execute(update(mailboxes).where(_not_listed(mailboxes, self.stamp))
                                      .values(retired_at=now, updated_at=now))).rowcount
        for table, key, column in ((professionals, professionals.c.idnat, mailboxes.c.owner_idnat),
                                   (organisations, organisations.c.id, mailboxes.c.organisation_id)):
            needed = exists().where(column == key, mailboxes.c.retired_at.is_(None))
            retired += (await conn.execute(
                update(table).where(table.c.digest == "", table.c.source_stamp != "", table.c.retired_at.is_(None),
                                    ~needed).values(retired_at=now, updated_at=now))).rowcount
        return retired


def _professional_row(p: Professional, stamp: str, now: datetime) -> dict:
    return {**p._asdict(), "search_text": f"{fold(p.family_name)} {fold(p.given_name)}".strip(),
            "source_stamp": stamp, "retired_at": None, "updated_at": now}


def _organisation_row(o: Organisation, stamp: str, now: datetime) -> dict:
    city = fold(o.city)
    return {**o._asdict(), "search_text": f"{fold(o.name)} {city}".strip(), "city_search": city,
            "source_stamp": stamp, "retired_at": None, "updated_at": now}


def _not_listed(table, stamp: str):
    """Live rows an import gave an older stamp to: the file at `stamp` no longer lists them."""
    return and_(table.c.retired_at.is_(None), table.c.source_stamp.not_in(("", stamp)))


async def _refresh_statistics(engine: AsyncEngine, kind: str) -> None:
    """Refresh PostgreSQL's planner statistics on the tables just loaded.

    Autovacuum would analyse them too, but only at its next round (autovacuum_naptime, a
    minute), and until then a million fresh rows are planned with the statistics of an empty
    table. SQLite is left alone: its default estimates give the directory queries the same plans
    as statistics would (EXPLAIN QUERY PLAN on a million professionals).
    """
    if engine.dialect.name != "postgresql":
        return
    tables = ("professionals", "activities", "organisations") if kind == PS else ("mailboxes",)
    async with engine.begin() as conn:
        await conn.exec_driver_sql(f"ANALYZE {', '.join(tables)}")
