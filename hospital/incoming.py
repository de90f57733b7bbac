"""A document that arrived by mail (an IHE_XDM.ZIP), told to its patient's care circle.

Two halves, so that no archive is ever opened on the path of a `250`:
- `watch`, a delivery hook of the mail store (registered by msante/app.py): in the delivering
  transaction, a mail whose bytes hold "IHE_XDM" (one plain byte search, nothing parsed: 0.6 ms
  a MB here, where a case-blind regex took six times as long on the writer's path) gets a
  `pending` row in `mail_documents`. Mails the hospital dispatch wrote (source `hl7`) are left
  out: their event already told the circle. Missed, and delivered untold: an archive named
  otherwise than in capitals as the convention writes it, or whose RFC 2231 filename is split
  inside the word.
- `IncomingDocuments`, a durable job like the dispatch: for each pending row it reads the
  message, finds the archive and its METADATA.XML off the event loop (hospital/xdm_reader.py:
  bounded, DTDs refused), and in one transaction marks the row `recorded` (or `refused`, with
  why: the mail stays delivered, a log line and the audit say why it was not recorded), adds a
  `document` item to each circle of the INS (linking to the mail: the boxes, folders and UIDs
  it was delivered to, and its Message-ID), raises a `patient` alert for who follows that
  patient's documents (circle members unless opted out, alert subscribers: hospital/subscriptions.py)
  and writes the audit row. A crash before the commit leaves the row pending; a second worker
  that did the same work finds the row taken and rolls its transaction back.
"""
from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime, timezone

from sqlalchemy import and_, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mailserver.mailstore import Delivered
from store.audit import SERVER, AuditTrail
from store.events import EventBus, run_job
from store.group_commit import GroupCommit
from store.schema import bodies, circles, deliveries, envelopes, folder_messages, folders, mail_documents, mailboxes

from . import subscriptions, timeline
from .dispatch import members_of
from .timeline import ALERT_KIND
from .xdm_reader import XdmDocument, XdmRefused, find_archive, read

log = logging.getLogger("msante.hl7")
CHANNEL = "mail-documents"  # "a mail with an archive was delivered": wakes the job
SNIFF = b"IHE_XDM"
KIND = "document"
ALERT_KEY = "mail-document:"
BATCH = 50
POLL_SECONDS = 30.0


async def watch(conn: AsyncConnection, delivered: Delivered) -> list[str]:
    """The mail store's delivery hook: a job row when the mail seems to carry an XDM archive."""
    if delivered.source == "hl7" or SNIFF not in delivered.message:
        return []
    await conn.execute(insert(mail_documents), {
        "envelope_id": delivered.envelope_id, "status": "pending", "reason": "", "patient_ins": "", "type_code": "",
        "created_at": delivered.at})
    return [CHANNEL]


class IncomingDocuments:
    def __init__(self, engine: AsyncEngine, writes: GroupCommit, audit: AuditTrail, bus: EventBus, *,
                 poll_seconds: float = POLL_SECONDS) -> None:
        self._engine = engine
        self._writes = writes  # the mail store's: one writer for SQLite's one write lock
        self._audit = audit
        self._bus = bus
        self._poll = poll_seconds

    async def run(self, stop: asyncio.Event) -> None:
        async def poll() -> float:
            return self._poll
        await run_job(self._bus, CHANNEL, stop, self.run_once, poll, "incoming documents")

    async def run_once(self) -> int:
        done = 0
        while True:
            async with self._engine.connect() as conn:
                rows = (await conn.execute(select(mail_documents.c.id, mail_documents.c.envelope_id)
                                           .where(mail_documents.c.status == "pending")
                                           .order_by(mail_documents.c.id).limit(BATCH))).all()
            for row in rows:
                await self.record(row.id, row.envelope_id)
            done += len(rows)
            if len(rows) < BATCH:
                return done

    async def record(self, job_id: int, envelope_id: int) -> None:
        async with self._engine.connect() as conn:
            mail = (await conn.execute(
                select(envelopes.c.message_id, envelopes.c.sender, bodies.c.data)
                .select_from(envelopes.outerjoin(bodies, bodies.c.id == envelopes.c.body_id))
                .where(envelopes.c.id == envelope_id))).one()
            boxes = [{"mailbox": r.address, "folder": r.name, "uid": r.uid} for r in await conn.execute(
                select(mailboxes.c.address, folders.c.name, folder_messages.c.uid)
                .select_from(deliveries.join(folder_messages, folder_messages.c.id == deliveries.c.folder_message_id)
                             .join(folders, folders.c.id == folder_messages.c.folder_id)
                             .join(mailboxes, mailboxes.c.id == folders.c.mailbox_id))
                .where(deliveries.c.envelope_id == envelope_id).order_by(mailboxes.c.address))]
        try:
            if mail.data is None:
                raise XdmRefused("the message was expunged before it was read")
            documents = await asyncio.to_thread(_documents, mail.data)
        except XdmRefused as exc:
            documents, reason = [], str(exc)
        except Exception as exc:  # a hostile message must not stop the job for everyone else
            documents, reason = [], f"unreadable message: {exc.__class__.__name__}"
        else:
            reason = "" if any(d.ins for d in documents) else "no valid INS in METADATA.XML"
        link = {"message_id": mail.message_id, "from": mail.sender, "boxes": boxes}
        if reason:
            log.warning("mail %s (envelope %d): document not recorded: %s", mail.message_id, envelope_id, reason)
        now = datetime.now(timezone.utc)
        items: list[dict] = []

        async def write(conn: AsyncConnection) -> list[dict]:
            first = next((d for d in documents if d.ins), None)
            marked = await conn.execute(update(mail_documents).where(and_(
                mail_documents.c.id == job_id, mail_documents.c.status == "pending")).values(
                status="refused" if reason else "recorded", reason=reason[:500], done_at=now,
                patient_ins=first.ins if first else "", type_code=first.type_code if first else "",
                data=json.dumps({"documents": [d.as_dict() for d in documents], "mail": link}, ensure_ascii=False)))
            if marked.rowcount != 1:
                raise _AlreadyDone()
            if reason:
                await self._audit.record(SERVER, "document.refused", target=mail.message_id[:200], outcome="failed",
                                         source="mail", conn=conn, envelope=envelope_id, reason=reason[:300])
                return []
            raised: list[dict] = []
            for ins in dict.fromkeys(d.ins for d in documents if d.ins):
                mine = [d for d in documents if d.ins == ins]
                items.extend(await _items(conn, job_id, mine, link, now))
                raised += await timeline.raise_alerts(conn, await _alerts(conn, job_id, ins, mine, link, now), now)
                await self._audit.record(SERVER, "document.recorded", target=mail.message_id[:200], source="mail",
                                         conn=conn, envelope=envelope_id, ins=ins,
                                         types=",".join(d.type_code for d in mine)[:200],
                                         circles=len({i["circle"] for i in items}), alerts=len(raised))
            return raised
        try:
            raised = await self._writes.run(write)
        except _AlreadyDone:
            return
        await timeline.announce(self._bus, items)
        await timeline.publish_alerts(self._bus, raised)


class _AlreadyDone(Exception):
    """Another process recorded this mail first: this transaction rolls back."""


def _documents(message: bytes) -> list[XdmDocument]:
    archive = find_archive(message)
    if archive is None:
        raise XdmRefused("no IHE_XDM.ZIP attachment")
    return read(archive)


def _describe(document: XdmDocument) -> str:
    return document.type_label or (f"LOINC {document.type_code}" if document.type_code else "document")


async def _items(conn: AsyncConnection, job_id: int, documents: list[XdmDocument], link: dict,
                 now: datetime) -> list[dict]:
    """A `document` item in each circle of the INS, as frames show it."""
    ids = (await conn.execute(select(circles.c.id).where(circles.c.patient_ins == documents[0].ins)
                              .order_by(circles.c.id))).scalars().all()
    first = documents[0]
    by = first.author or link["from"]
    when = datetime.fromisoformat(first.created) if first.created else None
    text = (f"Document reçu par messagerie : {', '.join(_describe(d) for d in documents)} — {by}"
            + (f", {when:%d/%m %H:%M}" if when else ""))
    author = {"id": link["from"], "name": by}
    details = {"kind": "DOC", "source": "mail", "occurred": first.created or now.isoformat(), "hospital": by,
               "unit": "", "documents": [d.as_dict() for d in documents], "mail": link}
    return await timeline.add_items(conn, list(ids), author=author, client_id=f"{ALERT_KEY}{job_id}", text=text,
                                    details=details, now=now, kind=KIND)


async def _alerts(conn: AsyncConnection, job_id: int, ins: str, documents: list[XdmDocument], link: dict,
                  now: datetime) -> list[dict]:
    plan = await subscriptions.plan(conn, ins, "DOC", await members_of(conn, ins), now)
    patient = (await conn.execute(select(circles.c.patient_family_name, circles.c.patient_given_name)
                                  .where(circles.c.patient_ins == ins).limit(1))).first()
    who = f"{patient.patient_family_name} {patient.patient_given_name.title()}" if patient else f"INS {ins}"
    data = json.dumps({"document": job_id, "ins": ins, "types": [d.type_code for d in documents],
                       "message_id": link["message_id"], "boxes": link["boxes"]}, ensure_ascii=False, sort_keys=True)
    return [{"audience": audience, "kind": ALERT_KIND, "key": f"{ALERT_KEY}{job_id}",
             "title": f"Nouveau document reçu : {who} ({', '.join(_describe(d) for d in documents)})"[:300],
             "data": data} for audience in plan.alerts]
