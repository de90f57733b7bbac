"""The directory over HTTPS: `/api/directory/…`, JSON, paginated, bearer-authenticated, audited.

Handlers parse and check the query, call `directory.queries`, and record the access; the
OpenAPI description served at `/api/openapi.json` documents the same routes.
"""
from __future__ import annotations

import re

from sqlalchemy.ext.asyncio import AsyncEngine

from store.audit import AuditTrail
from web.auth import require_bearer
from web.http import HttpError, Request, Response, decimal
from web.router import Router

from . import queries
from .authn import Authenticator

MAX_PER_PAGE = 100
MAX_QUERY_CHARS = 200
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
SEARCH_FILTERS = ("q", "identifier", "profession", "city", "organisation")
KINDS = ("professional", "organisation", "mailbox")


class DirectoryApi:
    def __init__(self, engine: AsyncEngine, authenticator: Authenticator, audit: AuditTrail) -> None:
        self._engine = engine
        self._auth = authenticator
        self._audit = audit

    def register(self, router: Router) -> None:
        router.add("GET", "/api/directory/search", self.search)
        router.add("GET", "/api/directory/entries/{id}", self.entry)
        router.add("GET", "/api/directory/professionals/{id}/mailboxes", self.mailboxes)
        router.add("GET", "/api/audit", self.audit_rows)

    async def search(self, request: Request) -> Response:
        principal = await require_bearer(request, self._auth)
        filters = {name: _text_arg(request, name) for name in SEARCH_FILTERS}
        filters = {k: v for k, v in filters.items() if v}
        if not filters:
            raise HttpError(400, "missing_filter", f"give at least one of: {', '.join(SEARCH_FILTERS)}")
        kind = request.arg("kind")
        if kind is not None and kind not in KINDS:
            raise HttpError(400, "bad_kind", f"kind must be one of {', '.join(KINDS)}")
        page = _int_arg(request, "page", 1, 1, 10_000)
        per_page = _int_arg(request, "per_page", 20, 1, MAX_PER_PAGE)
        async with self._engine.connect() as conn:
            try:
                result = await queries.search(
                    conn, text=filters.get("q"), identifier=filters.get("identifier"),
                    profession=filters.get("profession"), city=filters.get("city"),
                    organisation=filters.get("organisation"), kind=kind, page=page, per_page=per_page)
            except ValueError as exc:  # criteria search() refuses: beyond the result window, no letter
                raise HttpError(400, "bad_search", str(exc)) from None
        await self._audit.record(principal.actor, "directory.search", source=request.peer,
                                 filters=filters, kind=kind, page=page, results=len(result.items))
        return Response.json({"items": result.items, "page": result.page, "per_page": result.per_page,
                              "total": result.total, "next": result.next})

    async def entry(self, request: Request) -> Response:
        principal = await require_bearer(request, self._auth)
        entry_id = request.params["id"]
        async with self._engine.connect() as conn:
            found = await queries.get_entry(conn, entry_id)
        await self._audit.record(principal.actor, "directory.read", target=entry_id, source=request.peer,
                                 outcome="ok" if found else "failed")
        if found is None:
            raise HttpError(404, "not_found", f"no directory entry {entry_id}")
        return Response.json(found)

    async def mailboxes(self, request: Request) -> Response:
        principal = await require_bearer(request, self._auth)
        idnat = request.params["id"]
        async with self._engine.connect() as conn:
            boxes = await queries.mailboxes_of(conn, idnat)
        await self._audit.record(principal.actor, "directory.mailboxes", target=idnat, source=request.peer,
                                 results=len(boxes))
        return Response.json({"items": boxes})

    async def audit_rows(self, request: Request) -> Response:
        principal = await require_bearer(request, self._auth)
        if not principal.admin:
            await self._audit.record(principal.actor, "audit.read", outcome="denied", source=request.peer)
            raise HttpError(403, "forbidden", "the audit trail is for administrators ([auth] admins)")
        rows = await self._audit.tail(limit=_int_arg(request, "limit", 100, 1, 1000),
                                      after_id=_int_arg(request, "after", 0, 0, 2**62),
                                      actor=_text_arg(request, "actor"), action=_text_arg(request, "action"))
        await self._audit.record(principal.actor, "audit.read", source=request.peer, results=len(rows))
        return Response.json({"items": rows})


def _text_arg(request: Request, name: str) -> str | None:
    value = request.arg(name)
    if value is None:
        return None
    value = value.strip()
    if len(value) > MAX_QUERY_CHARS:
        raise HttpError(400, "too_long", f"{name} is limited to {MAX_QUERY_CHARS} characters")
    if CONTROL.search(value):  # PostgreSQL refuses NUL in text parameters; no name holds a control
        raise HttpError(400, f"bad_{name}", f"{name} holds control characters")
    return value or None


def _int_arg(request: Request, name: str, default: int, low: int, high: int) -> int:
    value = request.arg(name)
    if value is None or value == "":
        return default
    number = decimal(value)
    if number is None or not low <= number <= high:
        raise HttpError(400, f"bad_{name}", f"{name} must be an integer from {low} to {high}")
    return number
