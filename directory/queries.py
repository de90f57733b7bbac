"""Read side of the directory: search, one entry, the mailboxes of a person.

Used by the HTTPS API and the CLI. Each function takes an AsyncEngine or an AsyncConnection and
returns JSON-able dicts. Retired entries are never returned, nor are unpublished (liste rouge)
mailboxes unless the caller asks for them with include_unpublished=True.

How search stays fast on a million professionals (p99 well under 50 ms on SQLite):
- Names are matched by prefix on folded columns (`search_text`: "family given" for a
  professional, "name city" for a structure), written as a range `col >= 'dup' AND col < 'duq'`.
  A plain b-tree index answers that on SQLite and PostgreSQL alike, in result order, so a page
  stops after per_page rows. No LIKE '%x%', which reads every row. The price: "jean dupont" and
  "fontaine" (for "DE LA FONTAINE") do not find "DUPONT JEAN": a word index was not worth its
  size on the import side for the way the directory is searched (family name first).
- Criteria that live on the activities (town, structure) are first read with a capped query.
  When few activities match, their professionals drive the search (primary-key lookups). When
  many do, the name-ordered index is walked and each row checked for such an activity: with a
  common criterion a page is found after a few dozen rows.
- Totals are counted up to COUNT_LIMIT only; beyond that, or when counting would mean walking
  the whole index, `total` is None ("many"): counting 40,000 Martins costs more than the page.
"""
from __future__ import annotations

import re
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import AsyncIterator

from sqlalchemy import and_, exists, false, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from directory.extract import TECHNICAL_PREFIX
from directory.identifiers import fold, idnat_adeli, idnat_finess, idnat_rpps, idnat_siret
from store.schema import activities, mailbox_delegates, mailboxes, organisations, professionals

KINDS = ("professional", "organisation", "mailbox")
PER_PAGE_MAX = 100
# Deepest result served by paging: each page walks every row before it. Elasticsearch's
# index.max_result_window has the same default for the same reason.
RESULT_WINDOW = 10_000
COUNT_LIMIT = 1000  # exact totals up to this; None above
CANDIDATES_LIMIT = 1000  # a town or structure met by at most this many activities drives the search

_FILTERS = {  # criteria each kind can be searched by
    "professional": {"text", "identifier", "profession", "city", "organisation"},
    "organisation": {"text", "identifier", "city"},
    "mailbox": {"text", "identifier", "organisation"},
}
_IDENTIFIER = re.compile(r"[0-9A-Za-z]*[0-9][0-9A-Za-z]*")  # no space, at least one digit


@dataclass
class Page:
    items: list[dict]
    total: int | None  # None: more than COUNT_LIMIT, or not counted
    page: int
    per_page: int
    next: int | None  # the next page number, None on the last page


@dataclass(frozen=True)
class _Criteria:
    text: str  # folded
    address: str  # the text as a mailbox address prefix (lower case, punctuation kept)
    identifier: str
    profession: str
    city: str  # folded
    organisation: str

    def given(self) -> set[str]:
        named = {"text": self.text, "identifier": self.identifier, "profession": self.profession,
                 "city": self.city, "organisation": self.organisation}
        return {name for name, value in named.items() if value}


@asynccontextmanager
async def _connection(db: AsyncEngine | AsyncConnection) -> AsyncIterator[AsyncConnection]:
    if isinstance(db, AsyncConnection):
        yield db
    else:
        async with db.connect() as conn:
            yield conn


async def search(db: AsyncEngine | AsyncConnection, *, text: str | None = None, identifier: str | None = None,
                 profession: str | None = None, city: str | None = None, organisation: str | None = None,
                 kind: str | None = None, page: int = 1, per_page: int = 20,
                 include_unpublished: bool = False) -> Page:
    """Search the directory; every criterion given must match.

    text: prefix of a name ("dup", "dupont j"), accents and case ignored; for mailboxes, prefix
    of the address. identifier: RPPS, ADELI, FINESS, SIRET, national identifier or address.
    profession: profession code ("10" médecin). city: town name (whole, accents ignored).
    organisation: a structure's identifier or the prefix of its name (professionals working
    there, or its mailboxes). kind: one of KINDS; None searches every kind that has all the
    criteria given (mailboxes by text only when the text holds an "@").
    Items come in name order (address for mailboxes), each with its "kind".
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)} or None, not {kind!r}")
    if page < 1 or not 1 <= per_page <= PER_PAGE_MAX:
        raise ValueError(f"page must be 1 or more and per_page between 1 and {PER_PAGE_MAX}")
    offset = (page - 1) * per_page
    if offset + per_page > RESULT_WINDOW:
        raise ValueError(f"only the first {RESULT_WINDOW} results are served: narrow the search")
    c = _Criteria(fold(text or ""), (text or "").strip().lower(), (identifier or "").strip(),
                  (profession or "").strip(), fold(city or ""), (organisation or "").strip())
    for name, asked, folded in (("text", text, c.text), ("city", city, c.city)):
        if asked and asked.strip() and not folded:  # "%%%_" folds to "": no criterion, everyone would match
            raise ValueError(f"{name} {asked.strip()[:40]!r} has no letter or digit to search by")
    given = c.given()
    if kind is not None:
        unknown = given - _FILTERS[kind]
        if unknown:
            raise ValueError(f"{kind} search has no {', '.join(sorted(unknown))} criterion")
        kinds = [kind]
    else:
        kinds = [k for k in KINDS if given <= _FILTERS[k] and (k != "mailbox" or "@" in c.address or not c.text)]
    async with _connection(db) as conn:
        if len(kinds) == 1:
            rows, total = await _SEARCHES[kinds[0]](conn, c, offset, per_page + 1, include_unpublished)
        else:  # one page of the merged lists: every kind's first offset + per_page + 1 rows
            rows, total = [], 0
            for each in kinds:
                found, count = await _SEARCHES[each](conn, c, 0, offset + per_page + 1, include_unpublished)
                rows.extend(found)
                total = None if total is None or count is None else total + count
            rows = sorted(rows, key=lambda row: row[0])[offset:]
        items = [item for _, item in rows[:per_page]]
        await _add_addresses(conn, [i for i in items if i["kind"] == "professional"], include_unpublished)
    return Page(items, total, page, per_page, page + 1 if len(rows) > per_page else None)


async def get_entry(db: AsyncEngine | AsyncConnection, id: str, *, include_unpublished: bool = False) -> dict | None:
    """One live entry by mailbox address, national identifier, RPPS, ADELI, FINESS, SIRET or
    structure id: a professional with activities and mailboxes, a structure with its
    mailboxes, or a mailbox with its owner and structure. None when there is none."""
    value = id.strip()
    async with _connection(db) as conn:
        if "@" in value:
            row = (await conn.execute(select(mailboxes).where(
                mailboxes.c.address == value.lower(), *_live_boxes(include_unpublished)))).first()
            return None if row is None else await _mailbox_entry(conn, row)
        row = (await conn.execute(select(professionals).where(
            professionals.c.idnat.in_(_idnat_forms(value)), professionals.c.retired_at.is_(None)))).first()
        if row is not None:
            return await _professional_entry(conn, row, include_unpublished)
        row = (await conn.execute(select(organisations).where(
            organisations.c.id.in_(_structure_forms(value)), organisations.c.retired_at.is_(None)))).first()
        if row is not None:
            entry = _organisation_item(row)
            entry["mailboxes"] = [_mailbox_item(box) for box in (await conn.execute(
                select(mailboxes).where(mailboxes.c.organisation_id == row.id, *_live_boxes(include_unpublished))
                .order_by(mailboxes.c.address))).all()]
            return entry
    return None


async def mailboxes_of(db: AsyncEngine | AsyncConnection, idnat: str, *,
                       include_unpublished: bool = False) -> list[dict]:
    """The live mailboxes a professional owns (nominative) or was delegated (organisational),
    each with its "role": owner or delegate."""
    forms = _idnat_forms(idnat.strip())
    async with _connection(db) as conn:
        owned = (await conn.execute(select(mailboxes).where(
            mailboxes.c.owner_idnat.in_(forms), *_live_boxes(include_unpublished)))).all()
        delegated = (await conn.execute(select(mailboxes).join(
            mailbox_delegates, mailbox_delegates.c.mailbox_id == mailboxes.c.id).where(
            mailbox_delegates.c.idnat.in_(forms), *_live_boxes(include_unpublished)))).all()
    boxes = [{**_mailbox_item(b), "role": "owner"} for b in owned]
    boxes += [{**_mailbox_item(b), "role": "delegate"} for b in delegated]
    return sorted(boxes, key=lambda box: (box["role"] != "owner", box["address"]))


async def _search_professionals(conn: AsyncConnection, c: _Criteria, offset: int, limit: int,
                                _unpublished: bool) -> tuple[list, int | None]:
    p = professionals.c
    where = [p.retired_at.is_(None)]
    if c.text:
        where.append(_prefix(p.search_text, c.text))
    if c.profession:
        where.append(p.profession_code == c.profession)
    if c.identifier:
        where.append(p.idnat.in_(_idnat_forms(c.identifier)))
    countable = True
    conditions = []  # met by one activity of the person
    if c.city:
        conditions.append(activities.c.city_search == c.city)
    if c.organisation:
        conditions.append(activities.c.organisation_id.in_(_structures_named(c.organisation)))
    if conditions:
        where.append(exists().where(activities.c.idnat == p.idnat, activities.c.retired_at.is_(None), *conditions))
        if not c.identifier:  # else the identifier drives the search
            few = await _few_people(conn, conditions)
            if few is not None:
                where.append(p.idnat.in_(few))
            else:
                countable = False  # counting would walk the whole name range
                if not (c.text or c.profession):
                    where.append(p.search_text >= "")  # lets the planner walk the name index
    rows = (await conn.execute(select(professionals).where(*where).order_by(p.search_text, p.idnat)
                               .offset(offset).limit(limit))).all()
    total = await _count(conn, select(p.idnat).where(*where)) if countable else None
    return [((r.search_text, r.idnat), _professional_item(r)) for r in rows], total


async def _search_organisations(conn: AsyncConnection, c: _Criteria, offset: int, limit: int,
                                _unpublished: bool) -> tuple[list, int | None]:
    o = organisations.c
    where = [o.retired_at.is_(None)]
    if c.text:
        where.append(_prefix(o.search_text, c.text))
    if c.identifier:
        where.append(o.id.in_(_structure_forms(c.identifier)))
    if c.city:
        where.append(o.city_search == c.city)
    rows = (await conn.execute(select(organisations).where(*where).order_by(o.search_text, o.id)
                               .offset(offset).limit(limit))).all()
    total = await _count(conn, select(o.id).where(*where))
    return [((r.search_text, r.id), _organisation_item(r)) for r in rows], total


async def _search_mailboxes(conn: AsyncConnection, c: _Criteria, offset: int, limit: int,
                            unpublished: bool) -> tuple[list, int | None]:
    m = mailboxes.c
    where = list(_live_boxes(unpublished))
    if c.address:
        # substr() keeps the match exact should `address` carry a linguistic collation.
        where += [_prefix(m.address, c.address), func.substr(m.address, 1, len(c.address)) == c.address]
    if c.identifier:
        if "@" in c.identifier:
            where.append(m.address == c.identifier.lower())
        else:
            where.append(or_(m.owner_idnat.in_(_idnat_forms(c.identifier)),
                             m.organisation_id.in_(_structure_forms(c.identifier))))
    if c.organisation:
        where.append(m.organisation_id.in_(_structures_named(c.organisation)))
    rows = (await conn.execute(select(mailboxes).where(*where).order_by(m.address)
                               .offset(offset).limit(limit))).all()
    total = await _count(conn, select(m.id).where(*where))
    return [((r.address, ""), _mailbox_item(r)) for r in rows], total


async def _few_people(conn: AsyncConnection, conditions: list) -> list[str] | None:
    """The people with an activity meeting the conditions, when one of the conditions alone is
    met by at most CANDIDATES_LIMIT activities; None when each is met by more.

    Each condition is read alone, so that each read stops within its own index range (together,
    the planner may read a whole town to find a structure's few). Activities rather than people
    are counted: with DISTINCT, SQLite may walk the whole table in idnat order instead.
    """
    few = None
    for condition in conditions:
        found = (await conn.execute(select(activities.c.idnat).where(
            activities.c.retired_at.is_(None), condition).limit(CANDIDATES_LIMIT + 1))).scalars().all()
        if len(found) <= CANDIDATES_LIMIT:  # the read was not cut short: these are all of them
            few = set(found) if few is None else few & set(found)
    return None if few is None else sorted(few)


_SEARCHES = {"professional": _search_professionals, "organisation": _search_organisations,
             "mailbox": _search_mailboxes}


async def _count(conn: AsyncConnection, matching) -> int | None:
    """Number of rows `matching` selects, or None when over COUNT_LIMIT (reads at most that many)."""
    n = await conn.scalar(select(func.count()).select_from(matching.limit(COUNT_LIMIT + 1).subquery()))
    return n if n <= COUNT_LIMIT else None


def _prefix(column, prefix: str):
    """`column` starts with `prefix`, as a range an ordinary b-tree index answers."""
    return and_(column >= prefix, column < prefix[:-1] + chr(ord(prefix[-1]) + 1))


def _idnat_forms(value: str) -> list[str]:
    """National identifiers `value` may stand for: itself, or an RPPS or ADELI number."""
    return [value, idnat_rpps(value), idnat_adeli(value)]


def _structure_forms(value: str) -> list[str]:
    """Structure ids `value` may stand for: itself, or a FINESS, SIRET or technical id."""
    value = value.upper()
    return [value, idnat_finess(value), idnat_siret(value), TECHNICAL_PREFIX + value]


def _structures_named(value: str):
    """Live structures designated by an identifier, or by the prefix of their name."""
    o = organisations.c
    if _IDENTIFIER.fullmatch(value):
        match = o.id.in_(_structure_forms(value))
    elif fold(value):
        match = _prefix(o.search_text, fold(value))
    else:
        match = false()
    return select(o.id).where(o.retired_at.is_(None), match)


def _live_boxes(include_unpublished: bool) -> tuple:
    if include_unpublished:
        return (mailboxes.c.retired_at.is_(None),)
    return mailboxes.c.retired_at.is_(None), mailboxes.c.published.is_(True)


async def _add_addresses(conn: AsyncConnection, items: list[dict], include_unpublished: bool) -> None:
    """Give each professional of a result page the addresses of the mailboxes they own."""
    if not items:
        return
    by_idnat = {item["idnat"]: item for item in items}
    for item in items:
        item["mailboxes"] = []
    rows = await conn.execute(select(mailboxes.c.owner_idnat, mailboxes.c.address).where(
        mailboxes.c.owner_idnat.in_(by_idnat), *_live_boxes(include_unpublished)).order_by(mailboxes.c.address))
    for owner, address in rows:
        by_idnat[owner]["mailboxes"].append(address)


async def _professional_entry(conn: AsyncConnection, row, include_unpublished: bool) -> dict:
    entry = _professional_item(row)
    a, o = activities.c, organisations.c
    rows = await conn.execute(
        select(a.mode_code, a.mode_label, a.city, a.postal_code, o.id, o.name, o.kind, o.finess, o.siret)
        .select_from(activities.outerjoin(organisations, o.id == a.organisation_id))
        .where(a.idnat == row.idnat, a.retired_at.is_(None)).order_by(a.city, o.name, a.key))
    entry["activities"] = [{
        "mode_code": r.mode_code, "mode_label": r.mode_label, "city": r.city, "postal_code": r.postal_code,
        "organisation": None if r.id is None else {"id": r.id, "name": r.name, "type": r.kind, "finess": r.finess,
                                                   "siret": r.siret},
    } for r in rows]
    entry["mailboxes"] = await mailboxes_of(conn, row.idnat, include_unpublished=include_unpublished)
    return entry


async def _mailbox_entry(conn: AsyncConnection, row) -> dict:
    entry = _mailbox_item(row)
    owner = organisation = None
    if row.owner_idnat:
        owner = (await conn.execute(select(professionals).where(professionals.c.idnat == row.owner_idnat))).first()
    if row.organisation_id:
        organisation = (await conn.execute(
            select(organisations).where(organisations.c.id == row.organisation_id))).first()
    entry["owner"] = owner and _columns(owner, ("idnat", "practice_civility", "family_name", "given_name",
                                                "profession_code", "profession_label"))
    entry["organisation"] = organisation and {"id": organisation.id, "name": organisation.name,
                                              "type": organisation.kind}
    return entry


def _professional_item(r) -> dict:
    return {"kind": "professional", **_columns(r, _PROFESSIONAL_FIELDS)}


def _organisation_item(r) -> dict:
    return {"kind": "organisation", "type": r.kind, **_columns(r, _ORGANISATION_FIELDS)}


def _mailbox_item(r) -> dict:
    return {"kind": "mailbox", "type": r.kind, **_columns(r, _MAILBOX_FIELDS)}


_PROFESSIONAL_FIELDS = ("idnat", "rpps", "civility", "practice_civility", "family_name", "given_name",
                        "profession_code", "profession_label", "specialty_code", "specialty_label", "updated_at")
_ORGANISATION_FIELDS = ("id", "finess", "siret", "name", "trade_name", "sector_code", "sector_label", "street",
                        "postal_code", "city", "department", "country", "updated_at")
_MAILBOX_FIELDS = ("address", "owner_idnat", "organisation_id", "service", "description", "published", "local",
                   "updated_at")


def _columns(row, names: tuple[str, ...]) -> dict:
    """The named columns of a row, datetimes as ISO 8601 text."""
    return {name: _iso(row._mapping[name]) if name == "updated_at" else row._mapping[name] for name in names}


def _iso(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC; SQLite hands back naive datetimes, which the store writes in UTC."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat()
