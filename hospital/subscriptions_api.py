"""Subscriptions over HTTPS: `/api/subscriptions`, JSON, bearer-authenticated (hospital/subscriptions.py
decides and audits).

    GET    /api/subscriptions        the caller's subscriptions (and those they made for a box)
    POST   /api/subscriptions        subscribe to a patient's events: {"patient": INS, "kinds": [...],
                                     "medium": "mail"|"alert"|"both"|"none", "valid_from", "valid_until",
                                     "box": an organisational box the caller acts for}; 201, or 200
                                     when it replaces the subscriber's earlier one for that patient
    DELETE /api/subscriptions/{id}   remove one
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from directory.authn import Authenticator
from web.auth import require_bearer
from web.http import HttpError, Request, Response, decimal
from web.router import Router

from .subscriptions import Request as Subscription
from .subscriptions import SubscriptionError, Subscriptions

MAX_KINDS = 8
MAX_TEXT = 320


class SubscriptionsApi:
    def __init__(self, subscriptions: Subscriptions, authenticator: Authenticator) -> None:
        self._subscriptions = subscriptions
        self._auth = authenticator

    def register(self, router: Router) -> None:
        router.add("GET", "/api/subscriptions", self.list)
        router.add("POST", "/api/subscriptions", self.create)
        router.add("DELETE", "/api/subscriptions/{id}", self.remove)

    async def list(self, request: Request) -> Response:
        principal = await require_bearer(request, self._auth)
        return Response.json({"items": await self._subscriptions.list(principal, source=request.peer)})

    async def create(self, request: Request) -> Response:
        principal = await require_bearer(request, self._auth)
        wanted = subscription_from(request.json())
        try:
            row, created = await self._subscriptions.subscribe(principal, wanted, source=request.peer)
        except SubscriptionError as exc:
            raise HttpError(exc.status, exc.code, exc.message) from None
        return Response.json(row, 201 if created else 200)

    async def remove(self, request: Request) -> Response:
        principal = await require_bearer(request, self._auth)
        subscription_id = decimal(request.params["id"])
        if subscription_id is None:
            raise HttpError(404, "not_found", f"no resource at {request.path}")
        try:
            await self._subscriptions.remove(principal, subscription_id, source=request.peer)
        except SubscriptionError as exc:
            raise HttpError(exc.status, exc.code, exc.message) from None
        return Response(204)


def subscription_from(body: Any) -> Subscription:
    """The request's JSON as a subscription request; 400 for anything misshapen (the values are
    checked, and a refusal audited, by Subscriptions.subscribe)."""
    if not isinstance(body, dict):
        raise HttpError(400, "invalid", "the body must be a JSON object")
    patient, kinds, medium, box = body.get("patient"), body.get("kinds", None), body.get("medium", "both"), \
        body.get("box", "")
    if not isinstance(patient, str) or len(patient) > MAX_TEXT:
        raise HttpError(400, "invalid_patient", "patient is an INS matricule of 15 characters")
    if kinds is not None and (not isinstance(kinds, list) or len(kinds) > MAX_KINDS
                              or not all(isinstance(k, str) for k in kinds)):
        raise HttpError(400, "invalid_kinds", "kinds is a list of event kinds")
    if not isinstance(medium, str) or not isinstance(box, str) or len(box) > MAX_TEXT or len(medium) > MAX_TEXT:
        raise HttpError(400, "invalid", "medium and box are strings")
    return Subscription(patient, **({"kinds": tuple(dict.fromkeys(kinds))} if kinds is not None else {}),
                        medium=medium, valid_from=_moment(body, "valid_from"),
                        valid_until=_moment(body, "valid_until"), box=box.strip().lower())


def _moment(body: dict, name: str) -> datetime | None:
    """An ISO 8601 date or date-time (UTC when no offset is given), stored in UTC."""
    value = body.get(name)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) and len(value) <= 40 else None
    except ValueError:
        moment = None
    if moment is None:
        raise HttpError(400, "invalid_period", f"{name} is an ISO 8601 date or date-time")
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
