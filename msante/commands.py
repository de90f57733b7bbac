"""What each `msante` subcommand does (argument parsing lives in cli.py).

`init` is the one that creates state: the data directory (mode 0700), the dev CA and the
server certificate, the dev token issuer's key, the database schema and, with --demo, the
demo care network. It never overwrites what exists, so running it twice is harmless.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, TextIO

from cryptography import x509
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

import config
from certs import pki
from certs.tokens import DevIssuer
from config import Settings, split_hostport
from directory import extract, importer, queries
from directory.app_passwords import AppPasswords
from directory.authn import Principal
from directory.mailboxes import MailboxAdmin, normalise_address
from instant.circles import Circles, MemberSpec
from instant.errors import Conflict, InstantError
from instant.patient import PatientError, patient_from
from instant.service import circle_admin
from mailserver import outbound, trust
from mailserver.imap.folders import Folders
from mailserver.imap.names import ALL_RIGHTS, expand_rights, valid_rights
from mailserver.mailstore import MailStore
from store import db
from store.audit import OPERATOR, AuditTrail
from store.events import LocalBus
from store.relay import StoreBus
from store.schema import activities, mailboxes, organisations, professionals

from . import app, demo, workers


class CommandError(Exception):
    """Printed as `msante: <message>`, exit status 2."""


def _print_json(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2, default=str))


@asynccontextmanager
async def _opened(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """The store, migrated to the code's schema, for one command."""
    engine = db.create_engine(settings.database_url)
    try:
        await db.upgrade(engine)
        yield engine
    finally:
        await engine.dispose()


# --- init and serve -------------------------------------------------------------------------

def init_command(settings: Settings, args: argparse.Namespace):  # noqa: ANN201 - coroutine
    data_dir = settings.data_dir
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if args.config is None:
        settings = _write_generated_config(settings, with_demo=args.demo,
                                           dev_issuer=args.demo or args.dev_issuer)
    ca_dir = settings.ca_dir
    ca = pki.load_ca(ca_dir) if (ca_dir / "ca.crt").exists() else pki.create_ca(ca_dir)
    if not ca.crl_path.exists():
        pki.write_crl(ca)
    if not settings.tls_cert.exists():
        hosts = sorted({*settings.domains, "localhost", "127.0.0.1", *_listen_hosts(settings)})
        cert, key = pki.issue_server(ca, hosts, settings.tls_cert.parent, stem=settings.tls_cert.stem)
        if (cert, key) != (settings.tls_cert, settings.tls_key):
            raise CommandError(f"server certificate written to {cert}, but tls.cert/tls.key point elsewhere")
    if not (data_dir / "oidc" / "signing-key.json").exists():
        DevIssuer.create(data_dir, settings.public_url)
    if not any(i.issuer == settings.public_url for i in settings.issuers):
        print(f"note: the dev token issuer is not trusted by {settings.source}; add to [auth]:\n"
              f'  issuers = [{{issuer = "{settings.public_url}", audience = "{app.DEV_AUDIENCE}", '
              f'jwks_file = "{data_dir / "oidc" / "jwks.json"}"}}]')
    return _init_store(settings, args.demo)  # a coroutine: cli.main runs it


async def _init_store(settings: Settings, with_demo: bool) -> int:
    async with _opened(settings) as engine:
        if with_demo:
            await _load_demo(settings, engine)
    print(f"initialised {settings.data_dir} ({settings.database_url.split('://')[0]})")
    return 0


def _write_generated_config(settings: Settings, *, with_demo: bool, dev_issuer: bool) -> Settings:
    """Write <data_dir>/msante.toml (once): the settings in force; the dev issuer is trusted only
    when asked (`--dev-issuer`, or `--demo`, which adds its admin and the dev sign-in page): a
    production install trusts Pro Santé Connect, configured by hand, and nothing else."""
    path = settings.path(config.settings.GENERATED_NAME)
    if not path.exists():
        data_dir = settings.data_dir.resolve()
        admins = [demo.ADMIN_IDNAT] if with_demo else []
        text = "\n".join([
            "# Written by `msante init`; edit freely. Every key is documented in config/msante.example.toml.",
            "[server]",
            f"domains = {json.dumps(list(settings.domains))}",
            f"data_dir = {json.dumps(str(data_dir))}",
            "",
            "[auth]",
            f"admins = {json.dumps(admins)}",
            f"dev_sign_in = {json.dumps(with_demo)}  # the dev issuer's sign-in page: demos only, loopback only",
            "issuers = [" if dev_issuer else "issuers = [  # Pro Santé Connect: see config/msante.example.toml",
            *([f'  {{issuer = {json.dumps(settings.public_url)}, audience = "{app.DEV_AUDIENCE}", '
               f'jwks_file = {json.dumps(str(data_dir / "oidc" / "jwks.json"))}, acr = "eidas1"}},  '
               "# the dev issuer (`msante token issue`): not for production"] if dev_issuer else []),
            "]",
            "",
            "[tls]",
            "# the dev CA's revocation list (`msante certs revoke SERIAL` adds to it)",
            f"crls = [{json.dumps(str(data_dir / 'pki' / 'ca.crl'))}]",
            "",
        ])
        path.write_text(text, encoding="utf-8")
    return config.load(path)


def _listen_hosts(settings: Settings) -> set[str]:
    return {split_hostport(a)[0] for a in settings.listen.values() if a and split_hostport(a)[0] not in ("", "0.0.0.0", "::")}


async def _load_demo(settings: Settings, engine: AsyncEngine) -> None:
    domain = settings.domains[0]
    files = demo.write_extracts(settings.path("demo"), extract.PS_HEADER, extract.MSS_HEADER, domain)
    for path in files:
        report = await importer.import_file(engine, path, local_domains=settings.domains)
        print(f"demo: {path.name}: {report.accepted} entries, {report.rejected_count} rejected")
    audit = AuditTrail(engine)
    admin = MailboxAdmin(engine, audit, settings.domains, StoreBus(engine))
    existing = {b["address"] for b in await admin.list()}
    for local_part, finess, description in demo.APPLICATIVE:
        if f"{local_part}@{domain}" not in existing:
            await admin.add(f"{local_part}@{domain}", kind="applicative", organisation=finess,
                            description=description, actor=OPERATOR)
    await _demo_hospital_certificate(settings, engine)
    for local_part, rpps in demo.DELEGATES:
        await admin.grant(f"{local_part}@{domain}", rpps, actor=OPERATOR)
    await trust.import_list(engine, demo.write_trust_list(settings.path("demo"), settings.domains))
    try:
        circle = await circle_admin(engine, audit).create(
            None, patient_from(demo.CIRCLE_PATIENT), [MemberSpec(rpps) for rpps in demo.CIRCLE_MEMBERS], "cli",
            coordinator=demo.CIRCLE_COORDINATOR)
        print(f"demo: care circle {circle['id']} with {len(circle['members'])} members")
    except Conflict:
        pass  # init --demo ran before


async def _demo_hospital_certificate(settings: Settings, engine: AsyncEngine) -> None:
    """The demo hospital's applicative certificate, for `msante hl7 send` (once)."""
    out = settings.path("demo")
    if (out / f"{demo.HOSPITAL_CERT}.crt").exists():
        return
    address = f"{demo.APPLICATIVE[0][0]}@{settings.domains[0]}"
    async with engine.connect() as conn:
        box = (await conn.execute(select(mailboxes).where(mailboxes.c.address == address))).one()
    cert, _key = pki.issue_app(pki.load_ca(settings.ca_dir), mailbox=address, organisation_id=box.organisation_id,
                               out_dir=out, stem=demo.HOSPITAL_CERT)
    print(f"demo: hospital certificate for {address}: {cert}")


def serve_command(settings: Settings, args: argparse.Namespace):  # noqa: ANN201 - coroutine
    if not settings.tls_cert.exists():
        raise CommandError(f"no server certificate at {settings.tls_cert}: run `msante init` first "
                           f"(or set [tls] cert/key)")
    if args.worker is not None:  # one of `--workers N`, started by the supervisor; the first says it runs
        ready = (lambda listeners: _banner(settings, listeners)) if args.worker == 0 else None
        return app.serve(settings, on_ready=ready, reuse_port=True)
    n = workers.count(settings.workers if args.workers is None else args.workers)
    try:
        workers.check(settings, n)
    except workers.WorkersRefused as exc:
        raise CommandError(str(exc)) from None
    if n > 1:
        return workers.supervise(settings, n, _worker_command(args))
    return app.serve(settings, on_ready=lambda listeners: _banner(settings, listeners))


def _worker_command(args: argparse.Namespace) -> list[str]:
    """This `msante serve`, as a worker: the same settings (file, data directory, environment)."""
    command = [sys.executable, "-m", "msante"]
    for option, value in (("--config", args.config), ("--data-dir", args.data_dir)):
        if value:
            command += [option, str(Path(value).resolve())]
    return command + (["-v"] if args.verbose else []) + ["serve"]


def _banner(settings: Settings, listeners: list) -> None:  # noqa: ANN001
    lines = ["", "msante is running:"]
    lines += [f"  {lst.name:<12} {lst.address}" for lst in listeners]
    lines += [
        f"  web          {settings.public_url}/  (CA: {settings.ca_dir / 'ca.crt'})",
        "Try it:",
        f"  TOKEN=$(.venv/bin/msante token issue --rpps {demo.LOGIN_RPPS})",
        f"  curl --cacert {settings.ca_dir / 'ca.crt'} -H \"Authorization: Bearer $TOKEN\" "
        f"'{settings.public_url}/api/directory/search?q=dupont'",
        f"  demo login: {demo.MAILBOXES[0][0]}@{settings.domains[0]} (RPPS {demo.LOGIN_RPPS}), "
        f"audit: .venv/bin/msante audit tail",
        f"  mail client (IMAPS {settings.listen['imaps'] or '-'}, submission {settings.listen['submission'] or '-'}): "
        f".venv/bin/msante mailbox app-password create {demo.MAILBOXES[0][0]}@{settings.domains[0]} "
        f"--rpps {demo.LOGIN_RPPS} --label laptop",
        *([f"  hospital feed (hl7 {settings.listen['hl7']}): .venv/bin/msante hl7 send "
           "hospital/samples/adt_a04_ed_visit.hl7  (an ED visit: the GP's mail, the circle's alert)"]
          if settings.listen["hl7"] else []),
        "Stop with Ctrl-C.", ""]
    print("\n".join(lines), flush=True)


# --- directory --------------------------------------------------------------------------------

async def import_command(settings: Settings, args: argparse.Namespace) -> int:
    """Import each file in turn; a file that cannot be imported does not stop the next ones.

    Exit status (a nightly job acts on it, cli.IMPORT_EPILOG says the same): 0 when every file
    was imported or had been already, rejected lines or not: a few bad lines among two million
    are listed, not a failure. 1 when a file could not be imported at all: unreadable, not an
    extract, refused (older or much shorter than the last one, no line readable). 2, from
    cli.main, for a usage error.
    """
    try:
        sink = open(args.report, "w", encoding="utf-8") if args.report else None
    except OSError as exc:
        raise CommandError(f"--report {args.report}: {exc.strerror or exc}") from None
    status = 0
    try:
        async with _opened(settings) as engine:
            for path in args.files:
                if not await _import_one(engine, settings, path, args.force, _ImportLog(sink, path)):
                    status = 1
    finally:
        if sink is not None:
            sink.close()
    return status


async def _import_one(engine: AsyncEngine, settings: Settings, path: Path, force: bool, log: _ImportLog) -> bool:
    """Import one file, print its summary and rejected lines, audit the outcome; False if refused."""
    progress = _Progress(path.name) if sys.stderr.isatty() else None
    audit = AuditTrail(engine)
    try:
        report = await importer.import_file(engine, path, local_domains=settings.domains, progress=progress,
                                            force=force, on_rejected=log.rejected)
    except (importer.ImportRefused, extract.ExtractError, OSError) as exc:
        if progress:
            progress.done()
        if isinstance(exc, importer.ImportRefused):
            reason, report = str(exc), exc.report
        else:
            reason, report = f"{path}: {exc.strerror if isinstance(exc, OSError) else exc}", None
        if report is not None:
            _print_rejected(report)
        print(f"msante: {reason}", file=sys.stderr)
        await audit.record(OPERATOR, "directory.import", target=path.name, source="cli", outcome="failed",
                           reason=reason)
        log.summary("refused", report, reason)
        return False
    if progress:
        progress.done()
    await audit.record(OPERATOR, "directory.import", target=path.name, source="cli", lines=report.lines,
                       accepted=report.accepted, rejected=report.rejected_count, retired=report.retired,
                       unchanged=report.unchanged)
    print(report.summary())
    _print_rejected(report)
    log.summary("unchanged" if report.unchanged else "imported", report)
    return True


def _print_rejected(report: importer.ImportReport, shown: int = 50) -> None:
    for rejected in report.rejected[:shown]:
        print(f"  line {rejected.line_no}: {rejected.reason}")
    if report.rejected_count > shown:
        print(f"  … and {report.rejected_count - shown} more rejected lines")


class _ImportLog:
    """The machine-readable report of `directory import --report FILE`, one JSON object a line:
    {"type": "rejected", "file", "line", "reason"} for every rejected line (not only the ones
    printed), then {"type": "summary", "file", "status": imported|unchanged|refused, …} per file.
    A file already imported is not read again: its summary gives the figures of that import."""

    def __init__(self, sink: TextIO | None, path: Path) -> None:
        self._sink = sink
        self._file = str(path)

    def rejected(self, lines: list[extract.Rejected]) -> None:
        for line in lines:
            self._write({"type": "rejected", "file": self._file, "line": line.line_no, "reason": line.reason})

    def summary(self, status: str, report: importer.ImportReport | None, error: str = "") -> None:
        summary: dict[str, Any] = {"type": "summary", "file": self._file, "status": status}
        if report is not None:
            summary.update(kind=report.kind, stamp=report.stamp, lines=report.lines, accepted=report.accepted,
                           rejected=report.rejected_count, retired=report.retired, seconds=round(report.seconds, 3))
        if error:
            summary["error"] = error
        self._write(summary)

    def _write(self, entry: dict[str, Any]) -> None:
        if self._sink is not None:
            self._sink.write(json.dumps(entry, ensure_ascii=False) + "\n")


class _Progress:
    """A one-line progress indicator on a terminal (stderr), redrawn at most 10 times a second."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._start = self._last = time.monotonic()

    def __call__(self, lines: int, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last < 0.1:
            return
        self._last = now
        rate = lines / max(now - self._start, 1e-6)
        pct = 100 * done / total if total else 0
        sys.stderr.write(f"\r{self._name}: {pct:5.1f}%  {lines:>10,} lines  {rate:>9,.0f} lines/s")
        sys.stderr.flush()

    def done(self) -> None:
        sys.stderr.write("\n")


async def search_command(settings: Settings, args: argparse.Namespace) -> int:
    async with _opened(settings) as engine:
        async with engine.connect() as conn:
            try:
                page = await queries.search(conn, text=args.text, kind=args.kind, per_page=args.limit)
            except ValueError as exc:
                raise CommandError(str(exc)) from None
        await AuditTrail(engine).record(OPERATOR, "directory.search", source="cli", q=args.text,
                                        results=len(page.items))
    for item in page.items:
        print(_one_line(item))
    if not page.items:
        print("no match")
    return 0


def _one_line(item: dict) -> str:
    kind = item.get("type") or item.get("kind", "")
    if "idnat" in item and "family_name" in item:
        return (f"{item['idnat']}  {item.get('family_name', '')} {item.get('given_name', '')}  "
                f"{item.get('profession_label', '')}  {item.get('specialty_label', '')}").rstrip()
    if "address" in item:
        return f"{item['address']}  {kind}  {item.get('description') or item.get('service') or ''}".rstrip()
    return f"{item.get('id', '')}  {item.get('name', '')}  {item.get('city', '')}".rstrip()


async def show_command(settings: Settings, args: argparse.Namespace) -> int:
    async with _opened(settings) as engine:
        async with engine.connect() as conn:
            entry = await queries.get_entry(conn, args.id, include_unpublished=True)
        await AuditTrail(engine).record(OPERATOR, "directory.read", target=args.id, source="cli",
                                        outcome="ok" if entry else "failed")
    if entry is None:
        raise CommandError(f"no directory entry {args.id}")
    _print_json(entry)
    return 0


# --- mailboxes --------------------------------------------------------------------------------

async def _with_admin(settings: Settings, work) -> Any:  # noqa: ANN001
    async with _opened(settings) as engine:
        return await work(MailboxAdmin(engine, AuditTrail(engine), settings.domains, StoreBus(engine)))


async def mailbox_add_command(settings: Settings, args: argparse.Namespace) -> int:
    row = await _with_admin(settings, lambda admin: admin.add(
        args.address, kind=args.kind, owner=args.owner, organisation=args.org, description=args.description,
        service=args.service, published=not args.unpublished, actor=OPERATOR))
    print(f"created {row['address']} ({row['kind']})")
    return 0


async def mailbox_grant_command(settings: Settings, args: argparse.Namespace) -> int:
    rights = expand_rights(args.rights) if args.rights else ""
    if args.rights and not valid_rights(args.rights):
        raise CommandError(f"--rights takes RFC 4314 letters ({ALL_RIGHTS}), got {args.rights!r}")
    await _with_admin(settings, lambda admin: admin.grant(args.address, args.rpps, actor=OPERATOR))
    address = normalise_address(args.address)
    print(f"{args.rpps} may now act on {address}")
    if rights:
        person = await _professional(settings, args.rpps)
        async with _opened(settings) as engine:
            async with engine.connect() as conn:
                mailbox_id = (await conn.execute(select(mailboxes.c.id).where(mailboxes.c.address == address))).scalar()
            await Folders(engine, StoreBus(engine), quota_bytes=settings.mailbox_quota).set_acl(
                mailbox_id, person["idnat"], rights)
            await AuditTrail(engine).record(OPERATOR, "mailbox.rights", target=address, source="cli",
                                            identifier=person["idnat"], rights=rights)
        print(f"IMAP rights of {person['idnat']} on {address}: {rights}")
    return 0


async def mailbox_revoke_command(settings: Settings, args: argparse.Namespace) -> int:
    await _with_admin(settings, lambda admin: admin.revoke(args.address, args.rpps, actor=OPERATOR))
    print(f"{args.rpps} may no longer act on {normalise_address(args.address)}")
    return 0


async def mailbox_list_command(settings: Settings, args: argparse.Namespace) -> int:
    boxes = await _with_admin(settings, lambda admin: admin.list())
    if args.json:
        _print_json(boxes)
        return 0
    for box in boxes:
        who = box["owner_idnat"] or box["organisation_id"] or ""
        flags = ("" if box["published"] else " [liste rouge]") + (" [retired]" if box["retired"] else "")
        delegates = f"  delegates: {', '.join(box['delegates'])}" if box["delegates"] else ""
        print(f"{box['address']:<45} {box['kind']:<15} {who}{flags}{delegates}")
    return 0


async def _for_person(settings: Settings, rpps: str, work) -> Any:  # noqa: ANN001
    """Run `work(AppPasswords, Principal)` as the professional, on the operator's authority."""
    person = await _professional(settings, rpps)
    async with _opened(settings) as engine:
        principal = Principal("person", person["idnat"], f"{person['given_name']} {person['family_name']}", "cli")
        return await work(AppPasswords(engine, AuditTrail(engine)), principal)


async def app_password_create_command(settings: Settings, args: argparse.Namespace) -> int:
    created = await _for_person(settings, args.rpps, lambda passwords, principal: passwords.create(
        principal, args.address, args.label, source="cli"))
    print(f"password for {normalise_address(args.address)} ({created.label}), shown once:")
    print(created.password)
    return 0


async def app_password_list_command(settings: Settings, args: argparse.Namespace) -> int:
    rows = await _for_person(settings, args.rpps, lambda passwords, principal: passwords.list(
        principal, args.address))
    for row in rows:
        used = row["last_used_at"] or "never used"
        print(f"{row['address']:<45} {row['label']:<30} created {row['created_at']}  last used {used}")
    return 0


async def app_password_revoke_command(settings: Settings, args: argparse.Namespace) -> int:
    await _for_person(settings, args.rpps, lambda passwords, principal: passwords.revoke(
        principal, args.address, args.label, source="cli"))
    print(f"revoked {args.label!r} for {normalise_address(args.address)}")
    return 0


async def queue_list_command(settings: Settings, args: argparse.Namespace) -> int:
    async with _opened(settings) as engine:
        rows = await outbound.queued(engine)
    if args.json:
        _print_json(rows)
        return 0
    for row in rows:
        print(f"{row['id']:>8}  {row['sender'] or '<>':<35} -> {row['recipient']:<35} {row['size']:>9} B  "
              f"received {row['received_at']}  attempts {row['attempts']}  next {row['next_attempt_at']}"
              + (f"\n          last error: {row['last_error']}" if row["last_error"] else ""))
    print(f"{len(rows)} queued deliveries")
    return 0


async def queue_retry_command(settings: Settings, args: argparse.Namespace) -> int:
    async with _opened(settings) as engine:
        if not await outbound.retry_now(engine, args.id):
            raise CommandError(f"no queued delivery {args.id} (see `msante queue list`)")
        await AuditTrail(engine).record(OPERATOR, "queue.retry", target=str(args.id), source="cli")
    print(f"delivery {args.id} is due now")
    return 0


async def queue_bounce_command(settings: Settings, args: argparse.Namespace) -> int:
    async with _opened(settings) as engine:
        store = MailStore(engine, LocalBus(), reporting_mta=settings.hostname)
        if not await outbound.bounce(engine, store, args.id, args.reason):
            raise CommandError(f"no queued delivery {args.id} (see `msante queue list`)")
        await AuditTrail(engine).record(OPERATOR, "queue.bounce", target=str(args.id), source="cli",
                                        reason=args.reason)
    print(f"delivery {args.id} returned to its sender")
    return 0


async def trust_import_command(settings: Settings, args: argparse.Namespace) -> int:
    async with _opened(settings) as engine:
        added, removed = await trust.import_list(engine, args.file)
        await AuditTrail(engine).record(OPERATOR, "trust.import", target=args.file.name, source="cli",
                                        added=added, removed=removed)
    print(f"trust space: {added} domain(s) added, {removed} removed (running servers pick it up within "
          f"{trust.RELOAD_SECONDS:.0f} s)")
    return 0


# --- care circles -----------------------------------------------------------------------------

async def _with_circles(settings: Settings, work) -> Any:  # noqa: ANN001
    """Run `work(Circles)` as the operator (the CLI may change any circle's members)."""
    async with _opened(settings) as engine:
        try:
            return await work(circle_admin(engine, AuditTrail(engine)))
        except InstantError as exc:
            raise CommandError(exc.message) from None


async def circle_create_command(settings: Settings, args: argparse.Namespace) -> int:
    try:
        patient = patient_from({"ins": args.ins, "ins_oid": args.ins_oid, "family_name": args.family_name,
                                "given_name": args.given_name, "birth_date": args.birth_date})
    except PatientError as exc:
        raise CommandError(f"--{exc.field.replace('_', '-')}: {exc}") from None

    def create(circles: Circles):  # noqa: ANN202
        return circles.create(None, patient, [MemberSpec(m) for m in args.member], "cli", coordinator=args.coordinator)
    circle = await _with_circles(settings, create)
    print(f"created care circle {circle['id']} for {patient.given_name.title()} {patient.family_name} "
          f"with {len(circle['members'])} members")
    return 0


async def circle_add_command(settings: Settings, args: argparse.Namespace) -> int:
    member = await _with_circles(settings, lambda circles: circles.add_member(
        None, args.circle, MemberSpec(args.rpps, args.on_behalf_of), "cli"))
    print(f"{member['name']} {'added to' if member['added'] else 'was already in'} care circle {args.circle}")
    return 0


async def circle_remove_command(settings: Settings, args: argparse.Namespace) -> int:
    member = await _with_circles(settings, lambda circles: circles.remove_member(None, args.circle, args.rpps, "cli"))
    print(f"{member['name']} removed from care circle {args.circle} (a running server cuts their live connections "
          f"at once)")
    return 0


async def circle_list_command(settings: Settings, args: argparse.Namespace) -> int:
    found = await _with_circles(settings, lambda circles: circles.list_all("cli"))
    if args.json:
        _print_json(found)
        return 0
    for circle in found:
        p = circle["patient"]
        print(f"{circle['id']:>6}  {p['family_name']} {p['given_name'].title()} ({p['birth_date']}, INS {p['ins']})  "
              f"coordinator {circle['coordinator']}  members: {', '.join(circle['members'])}")
    return 0


# --- credentials ------------------------------------------------------------------------------

async def _professional(settings: Settings, rpps: str) -> dict:
    async with _opened(settings) as engine:
        async with engine.connect() as conn:
            row = (await conn.execute(select(professionals).where(
                (professionals.c.rpps == rpps) | (professionals.c.idnat == rpps)))).first()
            if row is None or row.retired_at is not None:
                raise CommandError(f"no active professional with RPPS {rpps} in the directory")
            person = dict(row._mapping)
            acts = await conn.execute(
                select(activities.c.mode_code, organisations.c.id, organisations.c.finess, organisations.c.siret,
                       organisations.c.name)
                .join(organisations, organisations.c.id == activities.c.organisation_id, isouter=True)
                .where(activities.c.idnat == person["idnat"], activities.c.retired_at.is_(None)))
            person["activities"] = [dict(a._mapping) for a in acts]
    return person


async def token_issue_command(settings: Settings, args: argparse.Namespace) -> int:
    person = await _professional(settings, args.rpps)
    issuer = DevIssuer.load(settings.data_dir, settings.public_url)
    exercice = {
        "codeProfession": person["profession_code"], "codeCategorieProfessionnelle": "C",
        "codeSavoirFaire": person["specialty_code"], "nomDexercice": person["family_name"],
        "prenomDexercice": person["given_name"],
        "activities": [{"raisonSocialeSite": a["name"] or "", "numeroFinessSite": a["finess"] or "",
                        "numeroSiretSite": a["siret"] or "", "codeModeExercice": a["mode_code"]}
                       for a in person["activities"]],
    }
    print(issuer.issue_access_token(idnat=person["idnat"], given_name=person["given_name"],
                                    family_name=person["family_name"], audience=args.audience, ttl=args.ttl,
                                    acr=args.acr, exercices=[exercice]))
    return 0


async def certs_issue_command(settings: Settings, args: argparse.Namespace) -> int:
    ca = pki.load_ca(settings.ca_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.kind == "cps":
        if not args.rpps:
            raise CommandError("--kind cps needs --rpps")
        person = await _professional(settings, args.rpps)
        cert, key = pki.issue_cps(ca, idnat=person["idnat"], given_name=person["given_name"],
                                  family_name=person["family_name"], out_dir=args.out, stem=f"cps-{person['rpps']}")
    elif args.kind == "app":
        if not args.mailbox:
            raise CommandError("--kind app needs --mailbox ADDRESS (an applicative mailbox)")
        address = normalise_address(args.mailbox)
        async with _opened(settings) as engine, engine.connect() as conn:
            box = (await conn.execute(select(mailboxes).where(mailboxes.c.address == address))).first()
        if box is None or box.kind != "applicative":
            raise CommandError(f"{address} is not an applicative mailbox (create it with `msante mailbox add "
                               f"{address} --kind applicative --org FINESS`)")
        cert, key = pki.issue_app(ca, mailbox=address, organisation_id=box.organisation_id, out_dir=args.out,
                                  stem=f"app-{address.split('@')[0]}")
    else:
        if not args.host:
            raise CommandError("--kind server needs --host HOST (repeat for several names)")
        cert, key = pki.issue_server(ca, args.host, args.out, stem=f"server-{args.host[0]}")
    print(f"certificate: {cert}\nprivate key: {key} (mode {oct(os.stat(key).st_mode & 0o777)})")
    return 0


def hl7_send_command(settings: Settings, args: argparse.Namespace) -> int:
    """Each file is one message; exit status 1 if any ACK is not AA."""
    from hospital.client import Hl7Client, ack_code, client_context

    cert = args.cert or settings.path("demo", f"{demo.HOSPITAL_CERT}.crt")
    key = args.key or cert.with_suffix(".key")
    target = args.to or settings.listen["hl7"]
    if not target:
        raise CommandError("the hl7 listener is disabled ([listen] hl7 = \"\"): give --to HOST:PORT")
    if not cert.exists():
        raise CommandError(f"no certificate at {cert}: `msante init --demo` issues the demo hospital's, "
                           "or give --cert/--key (`msante certs issue --kind app`)")
    host, port = split_hostport(target)
    failed = 0
    try:
        with Hl7Client(host, port, client_context(settings.ca_dir / "ca.crt", cert, key),
                       server_hostname="localhost" if host in ("127.0.0.1", "::1") else host) as client:
            for path in args.files:
                answer = ack_code(client.send(path.read_bytes()))
                failed += not answer.startswith("AA")
                print(f"{path}: {answer}")
    except (OSError, ConnectionError) as exc:
        raise CommandError(f"{target}: {exc}") from None
    return 1 if failed else 0


async def certs_revoke_command(settings: Settings, args: argparse.Namespace) -> int:
    serial = _serial(args.serial)
    if not (settings.ca_dir / "ca.crt").exists():
        raise CommandError(f"no dev CA in {settings.ca_dir}: run `msante init` (a national CA revokes its own)")
    ca = pki.load_ca(settings.ca_dir)
    reason = x509.ReasonFlags(args.reason) if args.reason else None
    added = pki.revoke(ca, serial, reason)
    async with _opened(settings) as engine:
        await AuditTrail(engine).record(OPERATOR, "certs.revoke", target=f"{serial:x}", source="cli",
                                        reason=args.reason or "unspecified", already_revoked=not added)
    if not added:
        print(f"serial {serial:x} was already on {ca.crl_path}")
        return 0
    configured = ca.crl_path.resolve() in {p.resolve() for p in settings.crls}
    print(f"revoked serial {serial:x} ({serial}) in {ca.crl_path}; " + (
        f"running servers refuse it within {settings.crl_refresh} s (tls.crl_refresh)" if configured else
        f"note: {ca.crl_path} is not in tls.crls of {settings.source}, so servers do not read it"))
    return 0


def _serial(text: str) -> int:
    """A serial as people copy it: decimal, or hex with 0x, letters or colons (OpenSSL prints
    `serial=4A3B…` and `4a:3b:…`)."""
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "")
    try:
        if text.strip().lower().startswith("0x") or ":" in text or any(c in "abcdef" for c in cleaned):
            serial = int(cleaned, 16)
        else:
            serial = int(cleaned, 10)
    except ValueError:
        raise CommandError(f"{text!r} is not a certificate serial number (decimal or hex)") from None
    if not 0 < serial < 2 ** 160:  # RFC 5280 §4.1.2.2: positive, at most 20 octets
        raise CommandError(f"{text!r} is not a certificate serial number (positive, at most 20 octets)")
    return serial


# --- audit ------------------------------------------------------------------------------------

async def audit_tail_command(settings: Settings, args: argparse.Namespace) -> int:
    async with _opened(settings) as engine:
        audit = AuditTrail(engine)
        rows = await audit.tail(limit=args.lines, actor=args.actor, action=args.action)
        last = rows[-1]["id"] if rows else 0
        while True:
            for row in rows:
                if args.json:
                    print(json.dumps(row, ensure_ascii=False, default=str), flush=True)
                else:
                    detail = " ".join(f"{k}={v}" for k, v in row["detail"].items())
                    print(f"{row['at']} {row['outcome']:<6} {row['actor_kind']}:{row['actor']} {row['action']} "
                          f"{row['target']} [{row['source']}] {detail}".rstrip(), flush=True)
            if not args.follow:
                return 0
            await asyncio.sleep(1)
            rows = await audit.tail(after_id=last, limit=1000, actor=args.actor, action=args.action)
            last = rows[-1]["id"] if rows else last
