"""`GET /api/indicators?from=&to=&structure=`: the coordinators' figures (hospital/indicators.py)
as JSON, for administrators ([auth] admins) and coordinators (whoever coordinates a care
circle); anyone else gets 403. Every request, refused or not, is audited.
"""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncEngine

from directory.authn import Authenticator, Principal
from store.audit import AuditTrail
from store.schema import circles
from web.auth import require_bearer
from web.http import HttpError, Request, Response
from web.router import Router

from . import indicators

FINESS_CHARS = 9


class IndicatorsApi:
    def __init__(self, engine: AsyncEngine, authenticator: Authenticator, audit: AuditTrail) -> None:
        self._engine = engine
        self._auth = authenticator
        self._audit = audit

    def register(self, router: Router) -> None:
        router.add("GET", "/api/indicators", self.read)

    async def read(self, request: Request) -> Response:
        principal = await require_bearer(request, self._auth)
        structure = (request.arg("structure") or "").strip().upper()
        if not await self._may_read(principal):
            await self._audit.record(principal.actor, "indicators.read", target=structure[:FINESS_CHARS],
                                     outcome="denied", source=request.peer)
            raise HttpError(403, "forbidden", "the indicators are for administrators and care-circle coordinators")
        try:
            if structure and not (len(structure) == FINESS_CHARS and structure.isascii() and structure.isalnum()):
                raise ValueError("structure is a FINESS number (9 characters)")
            start, end = indicators.period(request.arg("from") or None, request.arg("to") or None,
                                           datetime.now(timezone.utc).date())
        except ValueError as exc:
            await self._audit.record(principal.actor, "indicators.read", target=structure[:FINESS_CHARS],
                                     outcome="failed", source=request.peer, reason=str(exc))
            raise HttpError(400, "bad_request", str(exc)) from None
        items = await indicators.monthly(self._engine, start, end, structure)
        await self._audit.record(principal.actor, "indicators.read", target=structure, source=request.peer,
                                 start=start.date().isoformat(), end=end.date().isoformat(), rows=len(items))
        return Response.json({"from": start.isoformat(), "to": end.isoformat(), "items": items})

    async def _may_read(self, principal: Principal) -> bool:
        if principal.admin:
            return True
        if principal.kind != "person":
            return False
        async with self._engine.connect() as conn:
            return bool((await conn.execute(select(exists().where(circles.c.coordinator == principal.id)))).scalar())
