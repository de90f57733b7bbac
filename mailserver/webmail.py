"""A message of an INBOX read in the browser, for the web client's mail alerts: the same rights
as IMAP (the box's owner, or a delegate whose ACL gives `r`; `s` to mark it read), audited as
IMAP reads are, never rendered as HTML.

    GET  /api/mailboxes/{address}/messages/{uid}                  headers, text, attachments
    GET  /api/mailboxes/{address}/messages/{uid}/parts/{section}  one attachment, as a download
    POST /api/mailboxes/{address}/messages/{uid}/seen             \\Seen, which mail clients then show

The text is the first text/plain part; HTML is never sent to the browser, even as an
attachment's preview: an attachment is always served as `application/octet-stream` with
`Content-Disposition: attachment` and a sandboxing CSP. An IHE XDM archive (IHE_XDM.ZIP, the
way DMP documents travel) is listed by its documents, read from the ZIP's directory alone:
nothing is inflated.
"""
from __future__ import annotations

import io
import zipfile
from urllib.parse import quote, unquote

from sqlalchemy.ext.asyncio import AsyncEngine

from directory.access import grant_for
from directory.authn import Authenticator, Principal
from store.audit import AuditTrail
from web.auth import require_bearer
from web.http import HttpError, Request, Response, decimal
from web.router import Router

from .imap.folders import Folders
from .imap.message import Leaf, Message
from .imap.names import ALL_RIGHTS, DELEGATE_RIGHTS, expand_rights

MAX_TEXT_CHARS = 200_000  # a clinical letter is a few thousand; beyond this, a mail client
MAX_LISTED_DOCUMENTS = 200  # entries of an XDM archive listed; a DMP submission set has a handful
MAX_SECTION_CHARS = 64  # "1.2.3…": MIME nesting is cut at 20 levels anyway
DOWNLOAD_CSP = "default-src 'none'; sandbox"


class WebMail:
    def __init__(self, engine: AsyncEngine, authenticator: Authenticator, folders: Folders, audit: AuditTrail) -> None:
        self._engine = engine
        self._auth = authenticator
        self._folders = folders
        self._audit = audit

    def register(self, router: Router) -> None:
        router.add("GET", "/api/mailboxes/{address}/messages/{uid}", self.read)
        router.add("GET", "/api/mailboxes/{address}/messages/{uid}/parts/{section}", self.part)
        router.add("POST", "/api/mailboxes/{address}/messages/{uid}/seen", self.seen)

    async def read(self, request: Request) -> Response:
        principal, address, uid, folder, raw, flags = await self._open(request, "r", "mail.read")
        message = Message(raw)
        leaves = message.leaves()
        body = next((leaf for leaf in leaves if leaf.content_type == "text/plain" and leaf.disposition != "attachment"),
                    None)
        text = message.text_of(body).replace("\r\n", "\n") if body else None
        attachments = [leaf for leaf in leaves if leaf is not body and not _alternative(leaf)]
        await self._audit.record(principal.actor, "mail.read", target=address, source=request.peer, via="web",
                                 folder="INBOX", uid=uid)
        first = lambda name: (message.header_values(name) or [""])[0]  # noqa: E731
        return Response.json({
            "address": address, "uid": uid, "from": first("from"), "to": first("to"), "cc": first("cc"),
            "date": first("date"), "subject": first("subject"), "seen": "\\Seen" in flags,
            "text": text[:MAX_TEXT_CHARS] if text is not None else None,
            "truncated": text is not None and len(text) > MAX_TEXT_CHARS,
            "html_only": body is None and any(leaf.content_type == "text/html" for leaf in leaves),
            "attachments": [{"part": ".".join(map(str, leaf.section)), "filename": leaf.filename,
                             "content_type": leaf.content_type, "size": leaf.size,
                             "documents": _xdm_documents(message, leaf)} for leaf in attachments]})

    async def part(self, request: Request) -> Response:
        text = request.params["section"][:MAX_SECTION_CHARS]
        numbers = [decimal(n) for n in text.split(".")]
        if not numbers or any(n is None or n < 1 for n in numbers):
            raise HttpError(404, "not_found", f"no part {text}")
        principal, address, uid, _folder, raw, _flags = await self._open(request, "r", "mail.read")
        message = Message(raw)
        leaf = next((leaf for leaf in message.leaves() if list(leaf.section) == numbers), None)
        if leaf is None:
            raise HttpError(404, "not_found", f"no part {text} in message {uid}")
        await self._audit.record(principal.actor, "mail.read", target=address, source=request.peer, via="web",
                                 folder="INBOX", uid=uid, part=text)
        name = leaf.filename or f"partie-{text}"
        return Response(200, message.binary(leaf.section), "application/octet-stream", {
            "content-disposition": f"attachment; filename*=UTF-8''{quote(name, safe='')}",
            "content-security-policy": DOWNLOAD_CSP})

    async def seen(self, request: Request) -> Response:
        principal, address, uid, folder, _raw, _flags = await self._open(request, "s", "mail.seen")
        await self._folders.store_flags(folder, [uid], "+", {"\\Seen"})
        await self._audit.record(principal.actor, "mail.seen", target=address, source=request.peer, via="web",
                                 folder="INBOX", uid=uid)
        return Response(204)

    async def _open(self, request: Request, right: str,
                    action: str) -> tuple[Principal, str, int, int, bytes, frozenset[str]]:
        """(principal, address, uid, INBOX's id, the message, its flags) if the caller has `right` on
        the box; 403 otherwise (the same whether the box exists or not), audited."""
        principal = await require_bearer(request, self._auth)
        address = unquote(request.params["address"]).strip().lower()[:320]
        uid = decimal(request.params["uid"])
        async with self._engine.connect() as conn:
            grant = await grant_for(conn, principal, address)
        rights = ALL_RIGHTS
        if grant is not None and grant.role == "delegate":
            rights = expand_rights((await self._folders.acl(grant.mailbox_id)).get(principal.id, DELEGATE_RIGHTS))
        if grant is None or right not in rights:
            await self._audit.record(principal.actor, action, target=address, outcome="denied", source=request.peer,
                                     via="web", needs=right)
            raise HttpError(403, "forbidden", f"{address} is not a mailbox you may read")
        folder = await self._folders.get(grant.mailbox_id, "INBOX")
        meta = await self._folders.meta(folder.id, uid) if uid is not None else None
        found = (await self._folders.bodies(folder.id, [uid])).get(uid) if meta is not None else None
        if meta is None or found is None:
            raise HttpError(404, "not_found", f"no message {request.params['uid'][:20]} in the INBOX of {address}")
        return principal, grant.address, uid, folder.id, found, meta.flags


def _alternative(leaf: Leaf) -> bool:
    """An HTML rendition beside the text (multipart/alternative): not an attachment to list."""
    return leaf.content_type == "text/html" and leaf.disposition != "attachment" and not leaf.filename


def _xdm_documents(message: Message, leaf: Leaf) -> list[dict] | None:
    """The files of an IHE XDM archive (IHE ITI TF-3 §5.4: IHE_XDM/<submission set>/…), from the
    ZIP's central directory; None for any other attachment or a ZIP that cannot be read."""
    if (leaf.filename or "").upper() != "IHE_XDM.ZIP":
        return None
    try:
        with zipfile.ZipFile(io.BytesIO(message.binary(leaf.section))) as archive:
            entries = [e for e in archive.infolist()[:MAX_LISTED_DOCUMENTS] if not e.is_dir()]
    except (zipfile.BadZipFile, ValueError, OSError):
        return None
    return [{"name": e.filename, "size": e.file_size} for e in entries]
