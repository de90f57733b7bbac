"""`msante subscription add|list|remove`, `msante notification list` and `msante indicators` and
`msante hl7 purge`: the hospital feed's subscriptions, receipts, coordinators' figures and raw
message retention from the command line, over the same services as HTTPS and `serve`.

A subscription is made as a professional (`--rpps`), on the operator's authority: the same
rule as over HTTPS decides (only someone in the patient's care may subscribe), and the same
audit rows are written.
"""
from __future__ import annotations

import argparse
from datetime import datetime, timezone

from sqlalchemy import select

from config import Settings
from directory.authn import Principal
from hospital import indicators, receipts, retention
from hospital.subscriptions import Request, SubscriptionError, Subscriptions
from store.audit import OPERATOR, AuditTrail
from store.schema import hospital_events

from .commands import CommandError, _opened, _print_json, _professional


async def _as_person(settings: Settings, rpps: str, work):  # noqa: ANN001, ANN202
    """Run `work(Subscriptions, Principal)` as the professional."""
    person = await _professional(settings, rpps)
    principal = Principal("person", person["idnat"], f"{person['given_name']} {person['family_name']}", "cli")
    async with _opened(settings) as engine:
        try:
            return await work(Subscriptions(engine, AuditTrail(engine)), principal)
        except SubscriptionError as exc:
            raise CommandError(exc.message) from None


def _moment(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(f"{option}: an ISO 8601 date or date-time, got {text!r}") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


async def subscription_add_command(settings: Settings, args: argparse.Namespace) -> int:
    wanted = Request(args.patient, **({"kinds": tuple(dict.fromkeys(args.kind))} if args.kind else {}),
                     medium=args.medium, valid_from=_moment(args.since, "--from"),
                     valid_until=_moment(args.until, "--until"), box=(args.box or "").strip().lower())
    row, created = await _as_person(settings, args.rpps, lambda subs, principal: subs.subscribe(
        principal, wanted, source="cli"))
    print(f"{'subscribed' if created else 'subscription replaced'}: {_line(row)}")
    return 0


async def subscription_list_command(settings: Settings, args: argparse.Namespace) -> int:
    rows = await _as_person(settings, args.rpps, lambda subs, principal: subs.list(principal, source="cli"))
    if args.json:
        _print_json(rows)
        return 0
    for row in rows:
        print(_line(row))
    return 0


async def subscription_remove_command(settings: Settings, args: argparse.Namespace) -> int:
    await _as_person(settings, args.rpps, lambda subs, principal: subs.remove(principal, args.id, source="cli"))
    print(f"subscription {args.id} removed")
    return 0


def _line(row: dict) -> str:
    until = f" until {row['valid_until']}" if row["valid_until"] else ""
    return (f"{row['id']:>6}  {row['subscriber']:<45} INS {row['patient']}  {','.join(row['kinds']):<15} "
            f"{row['medium']:<5} from {row['valid_from']}{until}")


async def indicators_command(settings: Settings, args: argparse.Namespace) -> int:
    try:
        start, end = indicators.period(args.since, args.until, datetime.now(timezone.utc).date())
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    structure = (args.structure or "").strip().upper()
    async with _opened(settings) as engine:
        items = await indicators.monthly(engine, start, end, structure)
        await AuditTrail(engine).record(OPERATOR, "indicators.read", target=structure, source="cli",
                                        start=start.date().isoformat(), end=end.date().isoformat(), rows=len(items))
    if args.json:
        _print_json(items)
        return 0
    kinds = sorted({kind for item in items for kind in item["events"]})
    reasons = list(indicators.REASONS)
    header = ["FINESS", "month", *kinds, "ED", "GP told", "share", *reasons, "median min", "delivered", "read"]
    table = [header] + [[item["finess"], item["month"], *(str(item["events"].get(k, 0)) for k in kinds),
                         str(item["ed_visits"]), str(item["ed_gp_notified"]),
                         "-" if item["ed_gp_notified_share"] is None else f"{item['ed_gp_notified_share']:.0%}",
                         *(str(item["ed_not_notified"][r]) for r in reasons),
                         "-" if item["median_minutes_to_notice"] is None else f"{item['median_minutes_to_notice']:g}",
                         *("-" if item[k] is None else f"{item[k]:.0%}" for k in ("gp_delivered_share", "gp_read_share"))]
                        for item in items]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.rjust(width) if i > 1 else cell.ljust(width)
                        for i, (cell, width) in enumerate(zip(row, widths))).rstrip())
    if not items:
        print("no hospital events in this period")
    return 0


async def notification_list_command(settings: Settings, args: argparse.Namespace) -> int:
    ins = (args.patient or "").strip()
    async with _opened(settings) as engine:
        async with engine.connect() as conn:
            if ins:
                events = await receipts.history(conn, ins)
            else:  # every patient's latest events
                patients = [r.patient_ins for r in await conn.execute(
                    select(hospital_events.c.patient_ins).distinct().where(hospital_events.c.patient_ins != "")
                    .limit(receipts.MAX_EVENTS))]
                events = [e for p in patients for e in await receipts.history(conn, p)]
        await AuditTrail(engine).record(OPERATOR, "notifications.read", target=ins, source="cli", events=len(events))
    if args.json:
        _print_json(events)
    else:
        print(receipts.table(events) or "no notifications")
    return 0


async def hl7_purge_command(settings: Settings, args: argparse.Namespace) -> int:
    days = settings.hl7_raw_retention_days if args.days is None else args.days
    if days <= 0:
        raise CommandError("raw messages are kept forever ([hl7] raw_retention_days = 0): give --days N")
    async with _opened(settings) as engine:
        purged = await retention.purge(engine, AuditTrail(engine), days, actor=OPERATOR)
    print(f"{purged} raw messages older than {days} days cut to their MSH segment")
    return 0


def register(sub, command) -> None:  # noqa: ANN001 - cli.py's subparsers and its `command` helper
    s = sub.add_parser("subscription", help="subscriptions to a patient's hospital events").add_subparsers(
        metavar="ACTION")
    c = command(s, "add", subscription_add_command, "subscribe a professional (or a box they act for) to a "
                "patient's events; replaces their earlier one for that patient")
    c.add_argument("--rpps", required=True, help="the professional subscribing (in the patient's care)")
    c.add_argument("--patient", required=True, metavar="INS", help="the patient's INS matricule")
    c.add_argument("--kind", action="append", choices=["ADM", "URG", "SOR", "DOC"],
                   help="repeat for several (default: all)")
    c.add_argument("--medium", default="both", choices=["mail", "alert", "both", "none"],
                   help="none: no alert for a circle member (opt-out)")
    c.add_argument("--box", metavar="ADDRESS", help="an organisational box the professional acts for")
    c.add_argument("--from", dest="since", metavar="DATE", help="start of validity (default: now)")
    c.add_argument("--until", metavar="DATE", help="end of validity (default: until removed)")
    c = command(s, "list", subscription_list_command, "a professional's subscriptions")
    c.add_argument("--rpps", required=True)
    c.add_argument("--json", action="store_true")
    n = sub.add_parser("notification", help="hospital notifications and their receipts").add_subparsers(
        metavar="ACTION")
    c = command(n, "list", notification_list_command, "each event's notices and their receipts "
                "(queued, sent, delivered, read, failed)")
    c.add_argument("--patient", metavar="INS", help="one patient (default: every patient)")
    c.add_argument("--json", action="store_true")
    c = command(s, "remove", subscription_remove_command, "remove one of a professional's subscriptions")
    c.add_argument("id", type=int)
    c.add_argument("--rpps", required=True)

    c = command(sub, "indicators", indicators_command, "the hospital feed's figures per hospital and month: "
                "events by kind, ED patients whose GP was told by MSSanté, why not, median minutes to notice")
    c.add_argument("--from", dest="since", metavar="MONTH|DAY", help="YYYY-MM or YYYY-MM-DD (default: 11 months ago)")
    c.add_argument("--to", dest="until", metavar="MONTH|DAY", help="included (default: this month)")
    c.add_argument("--structure", metavar="FINESS", help="one hospital")
    c.add_argument("--json", action="store_true")
