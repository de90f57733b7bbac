"""Import of generated extracts (directory/importer.py).

Runs on a SQLite file under tmp_path, and on PostgreSQL too when MSANTE_TEST_DATABASE_URL names
a server (the shared `database_url` fixture of conftest.py gives each test a database of its own
there). Migrations are applied with store.db.upgrade, as in production.
"""
import asyncio
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, select
from tests.test_extract import expected_rejections

from directory.importer import ImportRefused, import_file
from directory.synthetic import OTHER_DOMAIN, Extracts, write_extracts
from msante import cli
from store.db import create_engine, upgrade
from store.schema import activities, audit, imports, mailbox_delegates, mailboxes, organisations, professionals

DOMAIN = "msante.test"
STAMP, NEWER, OLDER = "202611230600", "202611240600", "202611220600"
TABLES = (organisations, professionals, activities, mailboxes, mailbox_delegates, imports)


@pytest.fixture
async def engine(database_url):
    engine = create_engine(database_url)
    await upgrade(engine)
    yield engine
    await engine.dispose()


def generate(outdir: Path, *, people: int = 200, bad: int = 5, stamp: str = STAMP, seed: int = 1) -> Extracts:
    """Synthetic extracts (directory/synthetic.py) and what they hold."""
    return write_extracts(outdir, people=people, bad=bad, stamp=stamp, seed=seed, domain=DOMAIN)


def rewrite(source: Path, stamp: str, keep=lambda fields: True, change=lambda fields: fields) -> Path:
    """A copy of an extract under another stamp, with some data lines dropped or changed."""
    header, *lines = source.read_text(encoding="utf-8").splitlines()
    kept = [header] + ["|".join(change(line.split("|"))) for line in lines if keep(line.split("|"))]
    target = source.with_name(source.name.replace(source.stem[-12:], stamp))
    target.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return target


def data_lines(path: Path, extracts: Extracts | None = None) -> list[list[str]]:
    """The fields of each data line; with `extracts`, of the good ones only."""
    bad = extracts.defects_in(path) if extracts else {}
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    return [line.split("|") for n, line in enumerate(lines, start=2) if n not in bad]


async def dump(engine, tables=TABLES) -> dict[str, list[tuple]]:
    """Every row of the tables, in primary-key order."""
    async with engine.connect() as conn:
        return {t.name: [tuple(row) for row in await conn.execute(select(t).order_by(*t.primary_key.columns))]
                for t in tables}


async def rows(engine, table, *where) -> list:
    async with engine.connect() as conn:
        return (await conn.execute(select(table).where(*where))).all()


async def count(engine, table, *where) -> int:
    async with engine.connect() as conn:
        return await conn.scalar(select(func.count()).select_from(table).where(*where))


async def import_both(engine, ps: Path, mss: Path, **options):
    return (await import_file(engine, ps, local_domains=(DOMAIN,), **options),
            await import_file(engine, mss, local_domains=(DOMAIN,), **options))


async def test_counts_and_rejected_lines(engine, tmp_path):
    extracts = generate(tmp_path)
    ps, mss = extracts.ps, extracts.mss
    ps_report, mss_report = await import_both(engine, ps, mss)

    # Held against what the generator wrote, not against a second reading of the files.
    assert ps_report.kind == "ps" and ps_report.stamp == STAMP and not ps_report.unchanged
    assert ps_report.lines == len(data_lines(ps))
    assert ps_report.accepted == len(extracts.activities) and ps_report.rejected_count == 5
    assert {r.line_no: r.reason for r in ps_report.rejected} == expected_rejections(extracts, ps, 52)
    assert mss_report.lines == len(data_lines(mss))
    assert mss_report.accepted == len(extracts.boxes_by_line) and mss_report.rejected_count == 5
    assert {r.line_no: r.reason for r in mss_report.rejected} == expected_rejections(extracts, mss, 31)

    boxes = extracts.mailboxes.values()
    assert await count(engine, professionals) == len(extracts.people)
    assert await count(engine, professionals, professionals.c.digest == "") == 0  # every owner came from PS
    box_sites = {b.site.id for b in boxes if b.site}
    assert await count(engine, organisations) == len(set(extracts.sites) | box_sites)
    assert await count(engine, organisations, organisations.c.digest == "") == len(box_sites - set(extracts.sites))
    assert await count(engine, activities) == sum(len(p.activities) for p in extracts.people.values())
    assert await count(engine, mailboxes) == len(extracts.mailboxes)
    local = [b for b in boxes if b.address.endswith("@" + DOMAIN)]
    assert 0 < len(local) < len(boxes)
    assert await count(engine, mailboxes, mailboxes.c.local.is_(True), mailboxes.c.published.is_(True)) == len(local)
    stored = {b.address: b for b in await rows(engine, mailboxes)}
    assert all((stored[b.address].owner_idnat, stored[b.address].organisation_id, stored[b.address].service)
               == (b.owner, b.site.id if b.site else None, b.service) for b in boxes)

    expected = next(iter(extracts.people.values()))
    person = (await rows(engine, professionals, professionals.c.idnat == expected.idnat))[0]
    assert (person.family_name, person.given_name, person.rpps) == \
        (expected.family_name, expected.given_name, expected.rpps)
    assert person.source_stamp == STAMP and len(person.digest) == 40
    assert person.search_text.startswith(person.family_name.lower().replace("'", " ").split()[0][:3])
    assert person.updated_at is not None and person.retired_at is None
    corsican = [o for o in await rows(engine, organisations) if o.finess and o.finess[:2] in ("2A", "2B")]
    assert {o.department for o in corsican} == {"2A", "2B"} and all(o.id == "3" + o.finess for o in corsican)
    recorded = await rows(engine, imports)
    assert sorted((r.kind, r.stamp, r.lines, r.accepted, r.rejected) for r in recorded) == sorted([
        ("ps", STAMP, ps_report.lines, ps_report.accepted, ps_report.rejected_count),
        ("mss", STAMP, mss_report.lines, mss_report.accepted, mss_report.rejected_count)])
    assert all(len(r.sha256) == 64 and r.finished_at is not None for r in recorded)


async def test_reimport_changes_nothing(engine, tmp_path):
    extracts = generate(tmp_path)
    ps, mss = extracts.ps, extracts.mss
    await import_both(engine, ps, mss)
    before = await dump(engine)

    again = await import_both(engine, ps, mss)
    assert all(report.unchanged for report in again)
    assert "already imported, nothing changed" in again[0].summary()
    assert again[0].accepted > 0 and again[0].rejected_count > 0  # the figures of the earlier run
    assert await dump(engine) == before

    # Forced, every line is read and upserted again: still not a row changes (the imports log
    # aside, which records the run).
    forced = await import_both(engine, ps, mss, force=True)
    assert not any(report.unchanged for report in forced) and forced[0].retired == forced[1].retired == 0
    data_tables = TABLES[:-1]
    assert await dump(engine, data_tables) == {name: table for name, table in before.items() if name != "imports"}


async def test_newer_file_updates_changed_rows_and_retires_missing_ones(engine, tmp_path):
    extracts = generate(tmp_path)
    ps, mss = extracts.ps, extracts.mss
    await import_both(engine, ps, mss)
    people = list(extracts.people.values())
    # `gone` works in an individual cabinet (no FINESS nor SIRET: a technical id), which leaves with them
    gone, cabinet = next((p.idnat, a.site) for p in people for a in p.activities
                         if a.site and a.site.kind == "cabinet" and not a.site.siret)
    box_owners = {b.owner for b in extracts.mailboxes.values() if b.type == "PER"}
    renamed, untouched = [p.idnat for p in people if p.idnat != gone and p.idnat in box_owners][:2]
    before = {r.idnat: r for r in await rows(engine, professionals)}
    orgs_before = {r.id: r for r in await rows(engine, organisations)}
    boxes_before = {b.address: b for b in await rows(engine, mailboxes)}
    box_gone = next(b.address for b in extracts.mailboxes.values() if b.owner == untouched)
    box_changed = next(b.address for b in extracts.mailboxes.values() if b.type == "ORG")
    async with engine.begin() as conn:  # a box this operator created: not from any file
        await conn.execute(mailboxes.insert().values(
            address=f"local.only@{DOMAIN}", kind="nominative", owner_idnat=untouched, service="", description="",
            published=True, local=True, created_at=datetime.now(timezone.utc), updated_at=datetime.now(timezone.utc)))

    newer_ps = rewrite(ps, NEWER, keep=lambda f: f[2] != gone,
                       change=lambda f: f[:7] + ["RENOMMÉ"] + f[8:] if f[2] == renamed else f)
    newer_mss = rewrite(mss, NEWER, keep=lambda f: f[1] != box_gone,
                        change=lambda f: f[:7] + ["Accueil"] + f[8:] if f[1] == box_changed else f)
    ps_report, mss_report = await import_both(engine, newer_ps, newer_mss)

    after = {r.idnat: r for r in await rows(engine, professionals)}
    assert after[gone].retired_at is not None and before[gone].retired_at is None
    assert after[gone].updated_at != before[gone].updated_at
    assert await count(engine, activities, activities.c.idnat == gone, activities.c.retired_at.is_(None)) == 0
    assert after[renamed].family_name == "RENOMMÉ" and after[renamed].search_text.startswith("renomme ")
    assert after[renamed].updated_at != before[renamed].updated_at and after[renamed].retired_at is None
    # listed again unchanged: the new stamp, but updated_at stays
    assert after[untouched].updated_at == before[untouched].updated_at
    assert after[untouched].source_stamp == NEWER and after[untouched].digest == before[untouched].digest
    unchanged_rows = [i for i in after if i not in (gone, renamed)]
    assert all(after[i].updated_at == before[i].updated_at and after[i].retired_at is None for i in unchanged_rows)

    orgs_after = {r.id: r for r in await rows(engine, organisations)}
    assert orgs_after[cabinet.id].retired_at is not None and orgs_before[cabinet.id].retired_at is None
    assert all(o.retired_at is None for o in orgs_after.values() if o.finess)  # all still listed

    boxes = {b.address: b for b in await rows(engine, mailboxes)}
    assert boxes[box_gone].retired_at is not None
    assert boxes[box_changed].service == "Accueil" and boxes[box_changed].retired_at is None
    assert boxes[box_changed].updated_at != boxes_before[box_changed].updated_at
    assert all(boxes[a].updated_at == b.updated_at and boxes[a].source_stamp == NEWER
               for a, b in boxes_before.items() if a not in (box_gone, box_changed))
    assert boxes[f"local.only@{DOMAIN}"].retired_at is None and boxes[f"local.only@{DOMAIN}"].source_stamp == ""
    assert mss_report.retired == 1
    retired_ps = (await count(engine, professionals, professionals.c.retired_at.is_not(None))
                  + await count(engine, activities, activities.c.retired_at.is_not(None))
                  + await count(engine, organisations, organisations.c.retired_at.is_not(None)))
    assert ps_report.retired == retired_ps > 1
    assert len(orgs_after) == len(orgs_before)  # retired, never deleted


async def test_older_file_is_refused_unless_forced(engine, tmp_path):
    extracts = generate(tmp_path)
    await import_both(engine, extracts.ps, extracts.mss)
    old = generate(tmp_path / "old", stamp=OLDER, seed=2)
    before = await dump(engine)
    with pytest.raises(ImportRefused, match="older than the last ps file imported"):
        await import_file(engine, old.ps, local_domains=(DOMAIN,))
    with pytest.raises(ImportRefused, match="older than the last mss file imported"):
        await import_file(engine, old.mss, local_domains=(DOMAIN,))
    assert await dump(engine) == before

    report = await import_file(engine, old.ps, local_domains=(DOMAIN,), force=True)
    assert report.accepted > 0 and report.stamp == OLDER
    assert await count(engine, professionals, professionals.c.source_stamp == OLDER) > 0


async def test_truncated_file_is_refused_unless_forced(engine, tmp_path):
    ps = generate(tmp_path).ps
    await import_file(engine, ps, local_domains=(DOMAIN,))
    first_people = {f[2] for f in data_lines(ps)[:40]}
    short = rewrite(ps, NEWER, keep=lambda f: f[2] in first_people)
    with pytest.raises(ImportRefused, match="looks truncated"):
        await import_file(engine, short, local_domains=(DOMAIN,))
    assert await count(engine, professionals, professionals.c.retired_at.is_not(None)) == 0
    report = await import_file(engine, short, local_domains=(DOMAIN,), force=True)
    assert report.retired > 0


async def test_file_with_no_readable_line_is_refused(engine, tmp_path):
    """Every line rejected (a changed format, say): importing it would retire the whole directory."""
    extracts = generate(tmp_path)
    await import_both(engine, extracts.ps, extracts.mss)
    before = await dump(engine, TABLES[:-1])
    broken = rewrite(extracts.ps, NEWER, change=lambda f: f[:-2] + f[-1:])  # one column short on every line
    with pytest.raises(ImportRefused, match="no data line could be imported") as refused:
        await import_file(engine, broken, local_domains=(DOMAIN,), force=True)
    assert refused.value.report.rejected_count == refused.value.report.lines == len(data_lines(broken)) > 0
    assert all(r.reason.startswith("expected 52 columns, found ") for r in refused.value.report.rejected)
    assert await dump(engine, TABLES[:-1]) == before


async def test_mailboxes_before_professionals(engine, tmp_path):
    """A PER box whose owner is not in the directory yet gets a placeholder, completed later."""
    extracts = generate(tmp_path)
    mss_report = await import_file(engine, extracts.mss, local_domains=(DOMAIN,))
    assert mss_report.accepted > 0
    owners = {b.owner for b in extracts.mailboxes.values() if b.type == "PER"}
    placeholders = await rows(engine, professionals)
    assert {p.idnat for p in placeholders} == owners and all(p.digest == "" for p in placeholders)
    assert all(p.search_text and p.family_name for p in placeholders)
    box_sites = {b.site.id for b in extracts.mailboxes.values() if b.site}
    assert {o.id for o in await rows(engine, organisations, organisations.c.digest == "")} == box_sites

    await import_file(engine, extracts.ps, local_domains=(DOMAIN,))
    completed = {p.idnat: p for p in await rows(engine, professionals)}
    assert all(completed[i].digest != "" and completed[i].retired_at is None for i in owners)
    assert all(completed[i].civility in ("Monsieur", "Madame") for i in owners)
    # completed, but for the structures only a mailbox names (nobody listed works there)
    assert {o.id for o in await rows(engine, organisations, organisations.c.digest == "")} == \
        box_sites - set(extracts.sites)


async def test_local_boxes_are_never_rewritten_and_local_follows_the_domains(engine, tmp_path):
    extracts = generate(tmp_path)
    await import_file(engine, extracts.ps, local_domains=(DOMAIN,))
    listed = next(b for b in extracts.mailboxes.values() if b.type == "PER" and b.address.endswith("@" + DOMAIN))
    now = datetime.now(timezone.utc)
    async with engine.begin() as conn:
        await conn.execute(mailboxes.insert().values(
            address=listed.address, kind="nominative", owner_idnat=listed.owner, service="Mine", description="",
            published=False, local=True, created_at=now, updated_at=now))
    await import_file(engine, extracts.mss, local_domains=("ailleurs.test",))
    mine = (await rows(engine, mailboxes, mailboxes.c.address == listed.address))[0]
    assert (mine.service, mine.published, mine.source_stamp) == ("Mine", False, "")
    assert await count(engine, mailboxes, mailboxes.c.local.is_(True)) == 1  # only the one created here

    # the same file once the operator serves the domain: the flag follows, nothing else moves
    report = await import_file(engine, extracts.mss, local_domains=(DOMAIN.upper(),), force=True)
    elsewhere = [b for b in extracts.mailboxes.values() if b.address.endswith("@" + OTHER_DOMAIN)]
    assert elsewhere and await count(engine, mailboxes, mailboxes.c.local.is_(False)) == len(elsewhere)
    assert report.retired == 0


async def test_progress_is_reported_per_batch(engine, tmp_path, monkeypatch):
    import directory.importer as importer

    monkeypatch.setattr(importer, "BATCH_LINES", 25)
    extracts = generate(tmp_path)
    calls = []
    report = await import_file(engine, extracts.ps, local_domains=(DOMAIN,), progress=lambda *a: calls.append(a))
    size = extracts.ps.stat().st_size
    assert len(calls) > 10
    assert [c[1] for c in calls] == sorted(c[1] for c in calls) and calls[-1] == (report.lines, size, size)
    # small batches give the same directory as the default ones
    assert await count(engine, professionals) == len(extracts.people)
    assert await count(engine, activities) == sum(len(p.activities) for p in extracts.people.values())


async def test_file_without_stamp_or_unknown_header_is_refused(engine, tmp_path):
    unstamped = tmp_path / "PS_LibreAcces_Personne_activite.txt"
    unstamped.write_bytes(generate(tmp_path / "extracts", people=10).ps.read_bytes())
    with pytest.raises(ImportRefused, match="no _AAAAMMJJhhmm stamp"):
        await import_file(engine, unstamped, local_domains=(DOMAIN,))
    stranger = tmp_path / f"Annuaire_{STAMP}.txt"
    stranger.write_text("Nom|Prénom|\nDUPONT|JEAN|\n", encoding="utf-8")
    with pytest.raises(ValueError, match="unknown header"):
        await import_file(engine, stranger, local_domains=(DOMAIN,))
    assert await count(engine, imports) == 0


async def test_retired_entries_come_back_when_listed_again(engine, tmp_path):
    extracts = generate(tmp_path)
    ps = extracts.ps
    await import_both(engine, ps, extracts.mss)
    person = next(iter(extracts.people))
    await import_file(engine, rewrite(ps, NEWER, keep=lambda f: f[2] != person), local_domains=(DOMAIN,))
    assert (await rows(engine, professionals, professionals.c.idnat == person))[0].retired_at is not None
    later = "202611250600"
    await import_file(engine, rewrite(ps, later), local_domains=(DOMAIN,))
    back = (await rows(engine, professionals, professionals.c.idnat == person))[0]
    assert back.retired_at is None and back.source_stamp == later
    assert await count(engine, activities, activities.c.idnat == person, activities.c.retired_at.is_(None)) > 0
    assert await count(engine, professionals, professionals.c.retired_at.is_not(None)) == 0


# --- `msante directory import`, through the command's entry point ----------------------------
# These tests are plain functions: cli.main runs its own event loop, as from a shell.

@pytest.fixture
def import_command(tmp_path, monkeypatch, database_url):
    """Runs `msante directory import ARGS…` on a data directory of its own; returns the exit status."""
    monkeypatch.setenv("MSANTE_DATABASE__URL", database_url)
    data_dir = tmp_path / "var"
    return lambda *args: cli.main(["directory", "import", *map(str, args), "--data-dir", str(data_dir)])


def on_store(database_url: str, work):
    """`await work(engine)` on an engine of its own, from a test that has no event loop running."""
    async def run():
        engine = create_engine(database_url)
        try:
            return await work(engine)
        finally:
            await engine.dispose()
    return asyncio.run(run())


def report_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


async def import_audit(engine) -> list[tuple[str, str]]:
    async with engine.connect() as conn:
        return (await conn.execute(select(audit.c.outcome, audit.c.target).where(
            audit.c.action == "directory.import").order_by(audit.c.id))).all()


def test_command_exit_status_and_report(import_command, database_url, tmp_path, capsys):
    extracts = generate(tmp_path / "extracts", people=60, bad=4)
    report = tmp_path / "rejected.jsonl"
    # Imported with rejected lines: a success for a nightly job, every rejected line in the report.
    assert import_command(extracts.ps, extracts.mss, "--report", report) == 0
    out = capsys.readouterr()
    assert f"{extracts.ps.name}: {len(data_lines(extracts.ps))} lines, {len(extracts.activities)} accepted, " \
           "4 rejected" in out.out and "Traceback" not in out.err
    lines = report_lines(report)
    for path, columns in ((extracts.ps, 52), (extracts.mss, 31)):
        rejected = {e["line"]: e["reason"] for e in lines if e["type"] == "rejected" and e["file"] == str(path)}
        assert rejected == expected_rejections(extracts, path, columns)
        assert f"  line {min(rejected)}: {rejected[min(rejected)]}" in out.out
    summaries = [e for e in lines if e["type"] == "summary"]
    assert [(s["file"], s["status"], s["kind"], s["stamp"], s["rejected"]) for s in summaries] == [
        (str(extracts.ps), "imported", "ps", STAMP, 4), (str(extracts.mss), "imported", "mss", STAMP, 4)]
    assert summaries[0]["accepted"] == len(extracts.activities) and summaries[1]["retired"] == 0
    assert on_store(database_url, lambda e: count(e, professionals)) == len(extracts.people)

    # The same file again: nothing to do, still a success.
    assert import_command(extracts.ps, "--report", report) == 0
    assert [(e["type"], e["status"], e["accepted"]) for e in report_lines(report)] == \
        [("summary", "unchanged", len(extracts.activities))]
    assert on_store(database_url, import_audit) == [
        ("ok", extracts.ps.name), ("ok", extracts.mss.name), ("ok", extracts.ps.name)]


def test_command_refused_and_unusable_files(import_command, database_url, tmp_path, capsys):
    extracts = generate(tmp_path / "extracts", people=60, bad=2)
    assert import_command(extracts.ps) == 0
    people = (professionals, activities, organisations)  # what the PS file fills
    before = on_store(database_url, lambda e: dump(e, people))
    older = generate(tmp_path / "older", people=60, stamp=OLDER)
    stranger = tmp_path / f"Annuaire_{STAMP}.txt"
    stranger.write_text("Nom|Prénom|\nDUPONT|JEAN|\n", encoding="utf-8")
    missing = tmp_path / f"PS_LibreAcces_Personne_activite_{NEWER}.txt"
    broken = rewrite(extracts.ps, "202611250600", change=lambda f: f[:-2] + f[-1:])  # a column short everywhere
    report = tmp_path / "report.jsonl"
    capsys.readouterr()

    # Each refused or unusable file is reported; the MSSanté file after them is still imported.
    assert import_command(older.ps, stranger, missing, tmp_path, broken, extracts.mss, "--report", report) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"msante: {older.ps.name} ({OLDER}) is older than the last ps file imported" in err
    assert f"msante: {stranger}: unknown header starting 'Nom'" in err
    assert f"msante: {missing}: No such file or directory" in err
    assert f"msante: {tmp_path}: Is a directory" in err
    assert f"msante: {broken.name}: no data line could be imported" in err
    entries = report_lines(report)
    summaries = [e for e in entries if e["type"] == "summary"]
    assert [(s["file"], s["status"]) for s in summaries] == [
        (str(older.ps), "refused"), (str(stranger), "refused"), (str(missing), "refused"), (str(tmp_path), "refused"),
        (str(broken), "refused"), (str(extracts.mss), "imported")]
    assert all(s["error"] for s in summaries[:5]) and summaries[4]["accepted"] == 0
    assert sum(e["type"] == "rejected" and e["file"] == str(broken) for e in entries) == summaries[4]["lines"] > 0
    after = on_store(database_url, lambda e: dump(e, people))
    assert after["professionals"] == before["professionals"] and after["activities"] == before["activities"]
    assert set(before["organisations"]) <= set(after["organisations"])  # the MSSanté file adds its structures
    assert on_store(database_url, lambda e: count(e, mailboxes)) == len(extracts.mailboxes)
    refused = [target for outcome, target in on_store(database_url, import_audit) if outcome == "failed"]
    assert refused == [older.ps.name, stranger.name, missing.name, tmp_path.name, broken.name]


def test_command_usage_errors(import_command, tmp_path, capsys):
    with pytest.raises(SystemExit) as helped:
        import_command("--help")
    assert helped.value.code == 0
    assert "exit status:\n  0  every file imported" in capsys.readouterr().out
    with pytest.raises(SystemExit) as no_file:
        import_command()
    assert no_file.value.code == 2
    ps = generate(tmp_path / "extracts", people=5).ps
    assert import_command(ps, "--report", tmp_path / "no" / "such" / "dir" / "r.jsonl") == 2
    assert "msante: --report" in capsys.readouterr().err
