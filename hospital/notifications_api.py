"""`GET /api/notifications?patient=INS`: each of the patient's hospital events, who was told and
the receipts of each notice (hospital/receipts.py). For administrators and the patient's care
circle members; anyone else gets 403. Every request, refused or not, is audited. (A hospital's
applicative identity cannot call it yet: bearer tokens name persons, and HTTPS takes no client
certificate; the operator's CLI, `msante notification list`, serves it meanwhile.)
"""
from __future__ import annotations

from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from directory.authn import Authenticator, Principal
from store.audit import AuditTrail
from store.schema import circle_members, circles
from web.auth import require_bearer
from web.http import HttpError, Request, Response
from web.router import Router

from . import receipts
from .subscriptions import INS_CHARS


class NotificationsApi:
    def __init__(self, engine: AsyncEngine, authenticator: Authenticator, audit: AuditTrail) -> None:
        self._engine = engine
        self._auth = authenticator
        self._audit = audit

    def register(self, router: Router) -> None:
        router.add("GET", "/api/notifications", self.read)

    async def read(self, request: Request) -> Response:
        principal = await require_bearer(request, self._auth)
        ins = (request.arg("patient") or "").strip()
        if not (len(ins) == INS_CHARS and ins.isascii() and ins.isalnum()):
            await self._audit.record(principal.actor, "notifications.read", target=ins[:INS_CHARS],
                                     outcome="failed", source=request.peer, reason="bad INS")
            raise HttpError(400, "bad_request", "patient is an INS matricule of 15 characters")
        async with self._engine.connect() as conn:
            if not await self._may_read(conn, principal, ins):
                await self._audit.record(principal.actor, "notifications.read", target=ins, outcome="denied",
                                         source=request.peer)
                raise HttpError(403, "forbidden", "notifications are for the patient's care circle and "
                                                  "administrators")
            events = await receipts.history(conn, ins)
        await self._audit.record(principal.actor, "notifications.read", target=ins, source=request.peer,
                                 events=len(events))
        return Response.json({"patient": ins, "events": events})

    async def _may_read(self, conn: AsyncConnection, principal: Principal, ins: str) -> bool:
        if principal.admin:
            return True
        return principal.kind == "person" and bool((await conn.execute(select(exists().where(
            circle_members.c.idnat == principal.id, circle_members.c.circle_id == circles.c.id,
            circles.c.patient_ins == ins)))).scalar())
