"""Care circles: who is in which, who may change that, and the membership check every read,
post and subscription goes through.

- Members are active professionals of the directory. One who joins on behalf of an
  organisational mailbox must be its delegate, and stays a member only while the delegation
  lasts (checked on each access, by the rule in directory.access).
- The coordinator (or the operator, from the CLI) changes membership; nobody removes the
  coordinator. Every change, and every refusal, goes to the audit trail.
- A removal is announced on the circle's channel at once: the removed member's live
  connections drop the circle before any later message reaches them, because removals and
  messages of one circle are committed and announced in one order (`ordered`). Everyone
  concerned by a change also gets an alert.
"""
from __future__ import annotations

import asyncio
import weakref
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncEngine

from directory.access import grant_for
from directory.authn import Principal
from store.audit import OPERATOR, Actor, AuditTrail
from store.events import EventBus

from .alerts import Alerts
from .errors import Conflict, Forbidden, Invalid, NotFound
from .hub import circle_channel
from .memberships import Memberships
from .patient import Patient
from .storage import CircleExists, InstantStore

MAX_INITIAL_MEMBERS = 100  # a circle around one patient; the national CareTeam has no bound, we do


@dataclass(frozen=True)
class MemberSpec:
    """A professional to add: national identifier or RPPS, and the organisational box they
    represent ("" when they join in their own name)."""

    identifier: str
    on_behalf_of: str = ""


class Circles:
    def __init__(self, engine: AsyncEngine, store: InstantStore, alerts: Alerts, audit: AuditTrail,
                 bus: EventBus, memberships: Memberships | None = None) -> None:
        self._engine = engine
        self._memberships = memberships  # None (the CLI): the store is read each time
        self._store = store
        self._alerts = alerts
        self._audit = audit
        self._bus = bus
        self._order: weakref.WeakValueDictionary[int, asyncio.Lock] = weakref.WeakValueDictionary()

    @asynccontextmanager
    async def ordered(self, circle_id: int) -> AsyncIterator[None]:
        """Hold while committing a change to one circle and announcing it: announcements then
        leave this process in commit order."""
        lock = self._order.get(circle_id)
        if lock is None:
            lock = self._order[circle_id] = asyncio.Lock()
        async with lock:
            yield

    # --- reading --------------------------------------------------------------------------------

    async def require_member(self, principal: Principal, circle_id: int, action: str, source: str) -> dict:
        """The caller's membership, or Forbidden (audited as `action`, denied). The same answer
        for a circle that does not exist: circle ids reveal nothing to outsiders."""
        membership = None
        if principal.kind == "person":
            membership = await (self._memberships.of(circle_id, principal.id) if self._memberships
                                else self._store.membership(circle_id, principal.id))
        reason = "not a member"
        if membership and await self._delegation_lapsed(principal, membership["on_behalf_of"]):
            membership, reason = None, f"no longer a delegate of {membership['on_behalf_of']}"
        if membership is None:
            await self._audit.record(principal.actor, action, target=str(circle_id), outcome="denied",
                                     source=source, reason=reason)
            raise Forbidden(f"you are not a member of care circle {circle_id}")
        return membership

    async def _delegation_lapsed(self, principal: Principal, on_behalf_of: str) -> bool:
        if not on_behalf_of:
            return False
        async with self._engine.connect() as conn:
            grant = await grant_for(conn, principal, on_behalf_of)
        return grant is None or grant.role != "delegate"

    async def list_for(self, principal: Principal, source: str) -> list[dict]:
        found = await self._store.circles_of(principal.id)
        await self._audit.record(principal.actor, "circle.list", source=source, results=len(found))
        return found

    async def list_all(self, source: str) -> list[dict]:
        """Every circle, for the operator."""
        found = await self._store.all_circles()
        await self._audit.record(OPERATOR, "circle.list", source=source, results=len(found))
        return found

    async def detail(self, principal: Principal, circle_id: int, source: str) -> dict:
        await self.require_member(principal, circle_id, "circle.read", source)
        circle = await self._store.circle(circle_id)
        assert circle is not None  # members exist only in existing circles
        marker, _head, unread = await self._store.read_state(circle_id, principal.id)
        await self._audit.record(principal.actor, "circle.read", target=str(circle_id), source=source)
        return {**circle, "members": await self._store.members(circle_id), "read": marker, "unread": unread}

    async def ended(self, principal: Principal, circle_ids: list[int]) -> dict[int, str]:
        """Which of the circles a live connection follows it may no longer follow, and why
        (`removed`, `delegation_ended`: the box it represented there is no longer theirs)."""
        kept = await self._store.followed_still(principal.id, circle_ids)
        ended = {}
        for circle_id in circle_ids:
            if circle_id not in kept:
                ended[circle_id] = "removed"
            elif await self._delegation_lapsed(principal, kept[circle_id]):
                ended[circle_id] = "delegation_ended"
        return ended

    # --- changing -------------------------------------------------------------------------------

    async def create(self, by: Principal | None, patient: Patient, members: list[MemberSpec], source: str,
                     coordinator: str | None = None) -> dict:
        """A new circle. Through the API the caller coordinates it; the operator (`by` None)
        names the coordinator."""
        actor = by.actor if by else OPERATOR
        if by is not None:
            coordinator = by.id
        if len(members) > MAX_INITIAL_MEMBERS:
            raise Invalid(f"at most {MAX_INITIAL_MEMBERS} members at creation")
        lead = await self._professional(coordinator or "")
        resolved = [(await self._resolve(spec)) for spec in members]
        try:
            circle_id = await self._store.create_circle(patient, lead["id"], [(p["id"], b) for p, b in resolved],
                                                        actor.id, _now())
        except CircleExists as exc:
            await self._audit.record(actor, "circle.create", outcome="failed", source=source, reason="exists")
            raise Conflict(str(exc)) from None
        await self._audit.record(actor, "circle.create", target=str(circle_id), source=source,
                                 coordinator=lead["id"], members=sorted(p["id"] for p, _ in resolved))
        everyone = {lead["id"], *(p["id"] for p, _ in resolved)} - {actor.id}
        await self._alerts.raise_for_people(sorted(everyone), "circle", f"Nouveau cercle de soins : {_who(patient)}",
                                            {"circle": circle_id, "change": "created"})
        circle = await self._store.circle(circle_id)
        assert circle is not None
        return {**circle, "members": await self._store.members(circle_id)}

    async def add_member(self, by: Principal | None, circle_id: int, spec: MemberSpec, source: str) -> dict:
        actor = await self._require_coordinator(by, circle_id, "circle.member.add", source)
        person, on_behalf_of = await self._resolve(spec)
        added = await self._store.add_member(circle_id, person["id"], on_behalf_of, actor.id, _now())
        await self._audit.record(actor, "circle.member.add", target=str(circle_id), source=source,
                                 member=person["id"], on_behalf_of=on_behalf_of, already=not added)
        if added:
            await self._announce(circle_id, actor, person, "member.added")
        return {**person, "on_behalf_of": on_behalf_of, "added": added}

    async def remove_member(self, by: Principal | None, circle_id: int, identifier: str, source: str) -> dict:
        """The coordinator (or the operator) removes anyone but the coordinator; any other
        member may remove themselves (leave)."""
        if by is not None and identifier.strip() == by.id:
            await self.require_member(by, circle_id, "circle.member.remove", source)
            actor = by.actor
        else:
            actor = await self._require_coordinator(by, circle_id, "circle.member.remove", source)
        person = await self._professional(identifier)
        circle = await self._store.circle(circle_id)
        assert circle is not None
        if person["id"] == circle["coordinator"]:
            raise Invalid("the coordinator cannot be removed from their circle", "coordinator")
        async with self.ordered(circle_id):
            removed = await self._store.remove_member(circle_id, person["id"], _now())
            if removed:  # live connections of the removed member drop the circle on this event
                await self._bus.publish(circle_channel(circle_id), {
                    "type": "member.removed", "circle": circle_id, "idnat": person["id"]})
        await self._audit.record(actor, "circle.member.remove", target=str(circle_id), source=source,
                                 member=person["id"], outcome="ok" if removed else "failed")
        if not removed:
            raise NotFound(f"{person['id']} is not a member of care circle {circle_id}")
        await self._announce(circle_id, actor, person, "member.removed")
        return person

    async def _require_coordinator(self, by: Principal | None, circle_id: int, action: str, source: str) -> Actor:
        if by is None:  # the operator, at the console of the server
            if await self._store.circle(circle_id) is None:
                raise NotFound(f"no care circle {circle_id}")
            return OPERATOR
        membership = await self.require_member(by, circle_id, action, source)
        if not membership["coordinator"]:
            await self._audit.record(by.actor, action, target=str(circle_id), outcome="denied", source=source,
                                     reason="not the coordinator")
            raise Forbidden("only the circle's coordinator changes its members")
        return by.actor

    async def _professional(self, identifier: str) -> dict:
        person = await self._store.professional(identifier.strip()) if identifier.strip().isdigit() else None
        if person is None:
            raise Invalid(f"no active professional {identifier[:24]!r} in the directory", "unknown_professional")
        return person

    async def _resolve(self, spec: MemberSpec) -> tuple[dict, str]:
        person = await self._professional(spec.identifier)
        box = spec.on_behalf_of.strip().lower()
        if box:
            async with self._engine.connect() as conn:
                grant = await grant_for(conn, Principal("person", person["id"], person["name"], "directory"), box)
            if grant is None or grant.role != "delegate":
                raise Invalid(f"{person['name']} is not a delegate of the organisational mailbox {box}",
                              "not_a_delegate")
        return person, box

    async def _announce(self, circle_id: int, actor: Actor, person: dict, change: str) -> None:
        """Alerts about a membership change: to the person concerned and to the other members."""
        circle = await self._store.circle(circle_id)
        assert circle is not None
        patient = circle["patient"]
        name = f"{patient['given_name'].title()} {patient['family_name']}"
        if change == "member.added":
            own = f"Vous avez été ajouté(e) au cercle de soins de {name}"
            others = f"{person['name']} a rejoint le cercle de soins de {name}"
        else:
            own = f"Vous avez été retiré(e) du cercle de soins de {name}"
            others = f"{person['name']} a été retiré(e) du cercle de soins de {name}"
        data = {"circle": circle_id, "change": change, "member": person["id"]}
        await self._alerts.raise_for_people([person["id"]], "circle", own, data)
        members = [m["id"] for m in await self._store.members(circle_id)]
        await self._alerts.raise_for_people([m for m in members if m not in (person["id"], actor.id)], "circle",
                                            others, data)


def _who(patient: Patient) -> str:
    return f"{patient.given_name.title()} {patient.family_name} (né(e) le {patient.birth_date:%d/%m/%Y})"


def _now() -> datetime:
    return datetime.now(timezone.utc)
