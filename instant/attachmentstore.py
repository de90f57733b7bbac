"""Documents of care circles in the store: the bytes once per SHA-256 (`attachment_contents`),
one row per upload in its circle (`circle_attachments`). The message side (claiming
attachments for a post, listing a message's) lives with the messages in storage.py.
"""
from __future__ import annotations

import hashlib
from datetime import datetime

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from store.db import dialect_insert
from store.schema import attachment_contents, circle_attachments

from .storage import attachment_view, iso


class AttachmentStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def add(self, circle_id: int, uploader: str, name: str, content_type: str, data: bytes,
                  now: datetime) -> dict:
        """The upload's row; its bytes are stored unless the same bytes were before."""
        digest = hashlib.sha256(data).hexdigest()
        async with self._engine.begin() as conn:
            await conn.execute(dialect_insert(conn, attachment_contents).on_conflict_do_nothing(
                index_elements=[attachment_contents.c.sha256]),
                {"sha256": digest, "size": len(data), "data": data, "created_at": now})
            content_id = (await conn.execute(select(attachment_contents.c.id).where(
                attachment_contents.c.sha256 == digest))).scalar_one()
            attachment_id = (await conn.execute(insert(circle_attachments).returning(circle_attachments.c.id), {
                "circle_id": circle_id, "content_id": content_id, "name": name, "content_type": content_type,
                "size": len(data), "uploader": uploader, "created_at": now})).scalar_one()
        return {"id": attachment_id, "name": name, "type": content_type, "size": len(data), "sha256": digest,
                "uploader": uploader, "created_at": iso(now)}

    async def get(self, circle_id: int, attachment_id: int) -> tuple[dict, bytes] | None:
        """(description, bytes) of an attachment of this circle, or None."""
        query = (select(circle_attachments, attachment_contents.c.data, attachment_contents.c.sha256)
                 .join(attachment_contents, attachment_contents.c.id == circle_attachments.c.content_id)
                 .where(circle_attachments.c.id == attachment_id, circle_attachments.c.circle_id == circle_id))
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return ({**attachment_view(row), "sha256": row.sha256, "seq": row.seq}, row.data) if row else None
