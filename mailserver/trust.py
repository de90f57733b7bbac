"""The trust space: the domains that may exchange mail with ours (the national white list).

The list is an XML file (`//n:Domaine/n:Nom`, namespace https://listeblanche.mssante.fr/schema);
names are compared in A-label form because some are internationalised. Loaded with
`msante trust import FILE` into the store; `TrustSpace` keeps it in memory and re-reads it
when the import changed it, so a new list applies without a restart.
"""
from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from store.schema import trusted_domains

NAMESPACE = "https://listeblanche.mssante.fr/schema"
MAX_FILE_BYTES = 64 * 1024 * 1024  # the national list is a few MB
RELOAD_SECONDS = 30.0  # how stale the in-memory copy may get


class TrustListError(Exception):
    """The file is not a usable white list; nothing was changed."""


def a_label(domain: str) -> str:
    try:
        return domain.strip().rstrip(".").lower().encode("idna").decode("ascii")
    except UnicodeError:
        raise TrustListError(f"{domain!r} is not a valid domain name") from None


def parse_list(path: Path) -> list[str]:
    if path.stat().st_size > MAX_FILE_BYTES:
        raise TrustListError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
    try:
        root = ET.parse(path).getroot()  # stdlib expat: no external entities, no network
    except ET.ParseError as exc:
        raise TrustListError(f"{path}: not well-formed XML: {exc}") from None
    names = [el.text or "" for el in root.iterfind(f".//{{{NAMESPACE}}}Domaine/{{{NAMESPACE}}}Nom")]
    if not names:
        raise TrustListError(f"{path}: no //Domaine/Nom in namespace {NAMESPACE}")
    return sorted({a_label(n) for n in names if n.strip()})


async def import_list(engine: AsyncEngine, path: Path) -> tuple[int, int]:
    """Replace the trust space with the file's domains; returns (added, removed)."""
    domains = set(parse_list(path))
    now = datetime.now(timezone.utc)
    async with engine.begin() as conn:
        current = {r.domain for r in await conn.execute(select(trusted_domains.c.domain))}
        added, removed = domains - current, current - domains
        if removed:
            await conn.execute(delete(trusted_domains).where(trusted_domains.c.domain.in_(removed)))
        if added:
            await conn.execute(insert(trusted_domains), [{"domain": d, "added_at": now} for d in sorted(added)])
    return len(added), len(removed)


class TrustSpace:
    def __init__(self, engine: AsyncEngine, local_domains: tuple[str, ...]) -> None:
        self._engine = engine
        self._local = frozenset(local_domains)
        self._domains: frozenset[str] = frozenset()
        self._signature: tuple | None = None
        self._checked = 0.0

    async def contains(self, domain: str) -> bool:
        domain = a_label(domain)
        if domain in self._local:
            return True
        if time.monotonic() - self._checked > RELOAD_SECONDS:
            await self.reload()
        return domain in self._domains

    async def reload(self) -> None:
        async with self._engine.connect() as conn:
            signature = tuple((await conn.execute(
                select(func.count(), func.max(trusted_domains.c.added_at)))).one())
            if signature != self._signature:
                self._domains = frozenset(r.domain for r in await conn.execute(select(trusted_domains.c.domain)))
                self._signature = signature
        self._checked = time.monotonic()
