"""The trust space: the domains that may exchange mail with ours (the national white list).

The list is an XML file (`//n:Domaine/n:Nom`, namespace https://listeblanche.mssante.fr/schema);
names are compared in A-label form because some are internationalised. Each `Domaine` also
names the certificate of the operator that hosts it (`n:DNCertificatOperateur`, its subject
DN); a domain moving between operators, or served by two, is listed once per certificate.
The relay accepts a domain's mail only from a peer presenting one of its certificates, and
sends it only to one (`certs.dn` compares the names). A domain listed without any DN is
checked by host name only, as before the list carried them.

Loaded with `msante trust import FILE` into the store; `TrustSpace` keeps it in memory and
re-reads it when the import changed it, so a new list applies without a restart.
"""
from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import delete, func, insert, select, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine

from certs.dn import Dn, DnError, parse_dn
from store.schema import trusted_domains, trusted_operators

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


def parse_list(path: Path) -> dict[str, frozenset[str]]:
    """Each domain (A-label) with the operator certificate DNs listed for it, as written."""
    if path.stat().st_size > MAX_FILE_BYTES:
        raise TrustListError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
    try:
        root = ET.parse(path).getroot()  # stdlib expat: no external entities, no network
    except ET.ParseError as exc:
        raise TrustListError(f"{path}: not well-formed XML: {exc}") from None
    found: dict[str, set[str]] = {}
    for entry in root.iterfind(f".//{{{NAMESPACE}}}Domaine"):
        names = [(el.text or "").strip() for el in entry.iterfind(f"{{{NAMESPACE}}}Nom")]
        for name in filter(None, names):
            dns = found.setdefault(a_label(name), set())
            for el in entry.iterfind(f"{{{NAMESPACE}}}DNCertificatOperateur"):
                dn = " ".join((el.text or "").split())
                if not dn:
                    continue
                try:
                    parse_dn(dn)
                except DnError as exc:
                    raise TrustListError(f"{path}: {name}: DNCertificatOperateur {dn!r}: {exc}") from None
                dns.add(dn)
    if not found:
        raise TrustListError(f"{path}: no //Domaine/Nom in namespace {NAMESPACE}")
    return {domain: frozenset(dns) for domain, dns in sorted(found.items())}


async def import_list(engine: AsyncEngine, path: Path) -> tuple[int, int]:
    """Replace the trust space with the file's domains and their operator certificates;
    returns (domains added, domains removed)."""
    listed = parse_list(path)
    domains = set(listed)
    pairs = {(domain, dn) for domain, dns in listed.items() for dn in dns}
    now = datetime.now(timezone.utc)
    async with engine.begin() as conn:
        current = {r.domain for r in await conn.execute(select(trusted_domains.c.domain))}
        added, removed = domains - current, current - domains
        if removed:
            await conn.execute(delete(trusted_domains).where(trusted_domains.c.domain.in_(removed)))
        if added:
            await conn.execute(insert(trusted_domains), [{"domain": d, "added_at": now} for d in sorted(added)])
        current_pairs = {tuple(r) for r in await conn.execute(
            select(trusted_operators.c.domain, trusted_operators.c.dn))}
        gone = current_pairs - pairs
        if gone:
            await conn.execute(delete(trusted_operators).where(
                tuple_(trusted_operators.c.domain, trusted_operators.c.dn).in_(sorted(gone))))
        if pairs - current_pairs:
            await conn.execute(insert(trusted_operators), [{"domain": d, "dn": dn, "added_at": now}
                                                           for d, dn in sorted(pairs - current_pairs)])
    return len(added), len(removed)


class TrustSpace:
    def __init__(self, engine: AsyncEngine, local_domains: tuple[str, ...]) -> None:
        self._engine = engine
        self._local = frozenset(local_domains)
        self._domains: frozenset[str] = frozenset()
        self._operators: dict[str, frozenset[Dn]] = {}
        self._signature: tuple | None = None
        self._checked = 0.0

    async def contains(self, domain: str) -> bool:
        domain = a_label(domain)
        if domain in self._local:
            return True
        await self._fresh()
        return domain in self._domains

    async def operators(self, domain: str) -> frozenset[Dn]:
        """The subject DNs of the operator certificates the list gives for `domain`; empty
        when it gives none (or the domain is not listed)."""
        await self._fresh()
        return self._operators.get(a_label(domain), frozenset())

    async def _fresh(self) -> None:
        if time.monotonic() - self._checked > RELOAD_SECONDS:
            await self.reload()

    async def reload(self) -> None:
        async with self._engine.connect() as conn:
            signature = (*(await conn.execute(select(func.count(), func.max(trusted_domains.c.added_at)))).one(),
                         *(await conn.execute(select(func.count(), func.max(trusted_operators.c.added_at)))).one())
            if signature != self._signature:
                self._domains = frozenset(r.domain for r in await conn.execute(select(trusted_domains.c.domain)))
                operators: dict[str, set[Dn]] = {}
                for row in await conn.execute(select(trusted_operators.c.domain, trusted_operators.c.dn)):
                    operators.setdefault(row.domain, set()).add(parse_dn(row.dn))
                self._operators = {domain: frozenset(dns) for domain, dns in operators.items()}
                self._signature = signature
        self._checked = time.monotonic()
