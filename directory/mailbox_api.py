"""A professional's own mailboxes and application passwords over HTTPS (`/api/mailboxes/…`).

Creating a password needs a bearer token (a strong login): a password never begets another.
"""
from __future__ import annotations

from urllib.parse import unquote

from sqlalchemy.ext.asyncio import AsyncEngine

from web.auth import require_bearer
from web.http import HttpError, Request, Response
from web.router import Router

from .access import usable_mailboxes
from .app_passwords import AppPasswordDenied, AppPasswordError, AppPasswords
from .authn import Authenticator


class MailboxApi:
    def __init__(self, engine: AsyncEngine, authenticator: Authenticator, passwords: AppPasswords) -> None:
        self._engine = engine
        self._auth = authenticator
        self._passwords = passwords

    def register(self, router: Router) -> None:
        router.add("GET", "/api/mailboxes", self.mine)
        router.add("GET", "/api/mailboxes/{address}/app-passwords", self.list_passwords)
        router.add("POST", "/api/mailboxes/{address}/app-passwords", self.create_password)
        router.add("DELETE", "/api/mailboxes/{address}/app-passwords/{label}", self.revoke_password)

    async def mine(self, request: Request) -> Response:
        principal = await require_bearer(request, self._auth)
        async with self._engine.connect() as conn:
            grants = await usable_mailboxes(conn, principal)
        return Response.json({"items": [{"address": g.address, "kind": g.kind, "role": g.role} for g in grants]})

    async def list_passwords(self, request: Request) -> Response:
        principal = await require_bearer(request, self._auth)
        rows = await self._passwords.list(principal, unquote(request.params["address"]))
        return Response.json({"items": [{"label": r["label"], "created_at": r["created_at"],
                                         "last_used_at": r["last_used_at"]} for r in rows]})

    async def create_password(self, request: Request) -> Response:
        principal = await require_bearer(request, self._auth)
        body = request.json()
        label = body.get("label") if isinstance(body, dict) else None
        if not isinstance(label, str):
            raise HttpError(400, "bad_label", 'send {"label": "the device, e.g. Thunderbird cabinet"}')
        try:
            created = await self._passwords.create(principal, unquote(request.params["address"]), label,
                                                   source=request.peer)
        except AppPasswordDenied as exc:  # the same answer whether the box exists or not
            raise HttpError(403, "forbidden", str(exc)) from None
        except AppPasswordError as exc:
            raise HttpError(400, "refused", str(exc)) from None
        return Response.json({"label": created.label, "password": created.password}, status=201)

    async def revoke_password(self, request: Request) -> Response:
        principal = await require_bearer(request, self._auth)
        try:
            await self._passwords.revoke(principal, unquote(request.params["address"]),
                                         unquote(request.params["label"]), source=request.peer)
        except AppPasswordError as exc:
            raise HttpError(404, "not_found", str(exc)) from None
        return Response(204)
