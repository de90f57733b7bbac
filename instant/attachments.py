"""Documents shared in a care circle: uploaded over HTTPS by a member, typed from their bytes
(filetypes.py), stored once, served back to members only. Every upload and download is
audited, refusals included (never the bytes, never more of the name than the store keeps).
A message carries them by id once uploaded (messages.py checks they are the poster's own).
"""
from __future__ import annotations

from datetime import datetime, timezone

from directory.authn import Principal
from store.audit import AuditTrail

from .attachmentstore import AttachmentStore
from .circles import Circles
from .errors import InstantError, NotFound
from .filetypes import EXTENSIONS, clean_name, sniff


class UnsupportedType(InstantError):
    status, code = 415, "unsupported_type"


class Attachments:
    def __init__(self, store: AttachmentStore, circles: Circles, audit: AuditTrail) -> None:
        self._store = store
        self._circles = circles
        self._audit = audit

    async def upload(self, principal: Principal, circle_id: int, name: str, data: bytes, source: str) -> dict:
        await self._circles.require_member(principal, circle_id, "circle.attachment.upload", source)
        content_type = sniff(data)
        if content_type is None:
            await self._audit.record(principal.actor, "circle.attachment.upload", target=str(circle_id),
                                     outcome="denied", source=source, reason="type not accepted", size=len(data))
            raise UnsupportedType(f"only {', '.join(e.upper()[1:] for e in EXTENSIONS.values())} documents are "
                                  f"accepted; the type is read from the file's content")
        attachment = await self._store.add(circle_id, principal.id, clean_name(name, content_type), content_type,
                                           data, datetime.now(timezone.utc))
        await self._audit.record(principal.actor, "circle.attachment.upload", target=str(circle_id), source=source,
                                 attachment=attachment["id"], type=content_type, size=len(data),
                                 sha256=attachment["sha256"])
        return attachment

    async def download(self, principal: Principal, circle_id: int, attachment_id: int,
                       source: str) -> tuple[dict, bytes]:
        """Members only, checked first: an outsider learns nothing of which ids exist."""
        await self._circles.require_member(principal, circle_id, "circle.attachment.download", source)
        found = await self._store.get(circle_id, attachment_id)
        if found is None:
            await self._audit.record(principal.actor, "circle.attachment.download", target=str(circle_id),
                                     outcome="failed", source=source, attachment=attachment_id, reason="no such attachment")
            raise NotFound(f"care circle {circle_id} has no attachment {attachment_id}")
        await self._audit.record(principal.actor, "circle.attachment.download", target=str(circle_id), source=source,
                                 attachment=attachment_id, size=found[0]["size"])
        return found
