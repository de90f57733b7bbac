"""Care circles over HTTPS: `/api/circles`, JSON, bearer-authenticated; the handlers check and
audit every access. Messages, read markers and alerts travel on the websocket (`/ws`).

    GET    /api/circles                        the caller's circles, with unread counts
    POST   /api/circles                        create one; the caller coordinates it
    GET    /api/circles/{id}                   one circle with its members (members only)
    POST   /api/circles/{id}/members           add a member (coordinator only)
    DELETE /api/circles/{id}/members/{member}  remove a member (coordinator only), or leave (oneself)
    POST   /api/circles/{id}/attachments?name=  upload a document (the body: its bytes; members only)
    GET    /api/circles/{id}/attachments/{aid}  download it (members only; always as a file, never a page)
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from web.auth import require_bearer
from web.http import HttpError, Request, Response, decimal
from web.router import Router

from .circles import MAX_INITIAL_MEMBERS, MemberSpec
from .errors import InstantError
from .patient import PatientError, patient_from

if TYPE_CHECKING:
    from .service import Instant

MAX_IDENTIFIER_CHARS = 24
MAX_ADDRESS_CHARS = 320
MAX_NAME_ARG_CHARS = 1024  # a file name as sent; filetypes.clean_name keeps at most 255 of it


class InstantApi:
    def __init__(self, instant: Instant) -> None:
        self._instant = instant

    def register(self, router: Router) -> None:
        router.add("GET", "/api/circles", self.list)
        router.add("POST", "/api/circles", self.create)
        router.add("GET", "/api/circles/{id}", self.detail)
        router.add("POST", "/api/circles/{id}/members", self.add_member)
        router.add("DELETE", "/api/circles/{id}/members/{member}", self.remove_member)
        router.add("POST", "/api/circles/{id}/attachments", self.upload, max_body=self._instant.max_attachment)
        router.add("GET", "/api/circles/{id}/attachments/{aid}", self.download)

    async def list(self, request: Request) -> Response:
        principal = await require_bearer(request, self._instant.authenticator)
        return Response.json({"items": await self._instant.circles.list_for(principal, request.peer)})

    async def create(self, request: Request) -> Response:
        principal = await require_bearer(request, self._instant.authenticator)
        body = _object(request.json())
        try:
            patient = patient_from(body.get("patient"))
        except PatientError as exc:
            raise HttpError(400, "invalid_patient", f"{exc.field}: {exc}") from None
        members = body.get("members", [])
        if not isinstance(members, list) or len(members) > MAX_INITIAL_MEMBERS:
            raise HttpError(400, "invalid", f"members must be a list of at most {MAX_INITIAL_MEMBERS}")
        specs = [_member(item) for item in members]
        circle = await _call(self._instant.circles.create(principal, patient, specs, request.peer))
        return Response.json(circle, 201)

    async def detail(self, request: Request) -> Response:
        principal = await require_bearer(request, self._instant.authenticator)
        return Response.json(await _call(self._instant.circles.detail(principal, _circle_id(request), request.peer)))

    async def add_member(self, request: Request) -> Response:
        principal = await require_bearer(request, self._instant.authenticator)
        circle_id = _circle_id(request)
        member = await _call(self._instant.circles.add_member(principal, circle_id, _member(request.json()),
                                                              request.peer))
        return Response.json(member, 201 if member["added"] else 200)

    async def remove_member(self, request: Request) -> Response:
        principal = await require_bearer(request, self._instant.authenticator)
        circle_id = _circle_id(request)
        identifier = request.params["member"][:MAX_IDENTIFIER_CHARS]
        await _call(self._instant.circles.remove_member(principal, circle_id, identifier, request.peer))
        return Response(204)

    async def upload(self, request: Request) -> Response:
        """The body is the file's bytes; its type is read from them, whatever Content-Type says."""
        principal = await require_bearer(request, self._instant.authenticator)
        name = (request.arg("name") or "document")[:MAX_NAME_ARG_CHARS]
        attachment = await _call(self._instant.attachments.upload(principal, _circle_id(request), name, request.body,
                                                                   request.peer))
        return Response.json(attachment, 201)

    async def download(self, request: Request) -> Response:
        """Always a download (Content-Disposition: attachment), with its sniffed type, no sniffing
        by the browser and a policy that lets nothing in it run, should a browser render it."""
        principal = await require_bearer(request, self._instant.authenticator)
        attachment_id = decimal(request.params["aid"])
        if attachment_id is None:
            raise HttpError(404, "not_found", f"no resource at {request.path}")
        described, data = await _call(self._instant.attachments.download(principal, _circle_id(request),
                                                                         attachment_id, request.peer))
        return Response(200, data, described["type"], {
            "content-disposition": _disposition(described["name"]), "x-content-type-options": "nosniff",
            "content-security-policy": "default-src 'none'; sandbox", "cross-origin-resource-policy": "same-origin"})


def _disposition(name: str) -> str:
    """RFC 6266 §4.3: an ASCII fallback name, and the real one in RFC 8187 encoding."""
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\%' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


async def _call(work: Any) -> Any:
    try:
        return await work
    except InstantError as exc:
        raise HttpError(exc.status, exc.code, exc.message) from None


def _circle_id(request: Request) -> int:
    value = decimal(request.params["id"])
    if value is None:
        raise HttpError(404, "not_found", f"no resource at {request.path}")
    return value


def _object(body: Any) -> dict:
    if not isinstance(body, dict):
        raise HttpError(400, "invalid", "the body must be a JSON object")
    return body


def _member(body: Any) -> MemberSpec:
    """{"id": national identifier or RPPS, "on_behalf_of": organisational mailbox (optional)}"""
    body = _object(body)
    identifier, behalf = body.get("id"), body.get("on_behalf_of", "")
    if not isinstance(identifier, str) or not identifier.isascii() or not identifier.isdigit() \
            or len(identifier) > MAX_IDENTIFIER_CHARS:
        raise HttpError(400, "invalid", "a member's id is a national identifier or an RPPS number")
    if not isinstance(behalf, str) or len(behalf) > MAX_ADDRESS_CHARS:
        raise HttpError(400, "invalid", f"on_behalf_of is a mailbox address of at most {MAX_ADDRESS_CHARS} characters")
    return MemberSpec(identifier, behalf)
