"""Import of generated extracts (directory/importer.py).

Runs on a SQLite file under tmp_path, and on PostgreSQL too when MSANTE_TEST_DATABASE_URL names
a server (the shared `database_url` fixture of conftest.py gives each test a database of its own
there). Migrations are applied with store.db.upgrade, as in production.
"""
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, select

from directory.identifiers import valid_rpps
from directory.importer import ImportRefused, import_file
from store.db import create_engine, upgrade
from store.schema import activities, imports, mailbox_delegates, mailboxes, organisations, professionals

DATA = Path(os.environ.get("MSANTE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
GENERATOR = DATA / "generate.py"
DOMAIN = "msante.test"
STAMP, NEWER, OLDER = "202611230600", "202611240600", "202611220600"
TABLES = (organisations, professionals, activities, mailboxes, mailbox_delegates, imports)

needs_generator = pytest.mark.skipif(not GENERATOR.exists(),
                                     reason=f"no generator at {GENERATOR} (set MSANTE_SHARED_DATA)")


@pytest.fixture
async def engine(database_url):
    engine = create_engine(database_url)
    await upgrade(engine)
    yield engine
    await engine.dispose()


def generate(outdir: Path, *, people: int = 200, bad: int = 5, stamp: str = STAMP, seed: int = 1) -> tuple[Path, Path]:
    """Synthetic extracts from the shared generator: (PS file, MSSanté file)."""
    subprocess.run([sys.executable, str(GENERATOR), "--people", str(people), "--bad", str(bad), "--stamp", stamp,
                    "--seed", str(seed), "--domain", DOMAIN, str(outdir)], check=True, stdout=subprocess.DEVNULL)
    return (outdir / f"PS_LibreAcces_Personne_activite_{stamp}.txt",
            outdir / f"Extraction_Correspondance_MSSante_{stamp}.txt")


def rewrite(source: Path, stamp: str, keep=lambda fields: True, change=lambda fields: fields) -> Path:
    """A copy of an extract under another stamp, with some data lines dropped or changed."""
    header, *lines = source.read_text(encoding="utf-8").splitlines()
    kept = [header] + ["|".join(change(line.split("|"))) for line in lines if keep(line.split("|"))]
    target = source.with_name(source.name.replace(source.stem[-12:], stamp))
    target.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return target


def data_lines(path: Path) -> list[list[str]]:
    return [line.split("|") for line in path.read_text(encoding="utf-8").splitlines()[1:]]


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


@needs_generator
async def test_counts_and_rejected_lines(engine, tmp_path):
    ps, mss = generate(tmp_path)
    ps_report, mss_report = await import_both(engine, ps, mss)

    # What the files hold, worked out independently of the parser.
    ps_lines = data_lines(ps)
    ps_bad = {n for n, f in enumerate(ps_lines, start=2) if len(f) != 53 or not valid_rpps(f[1])}
    ps_good = [f for n, f in enumerate(ps_lines, start=2) if n not in ps_bad]
    assert ps_bad, "the generator was asked for bad lines"
    assert ps_report.kind == "ps" and ps_report.stamp == STAMP and not ps_report.unchanged
    assert ps_report.lines == len(ps_lines)
    assert ps_report.accepted == len(ps_good) and ps_report.rejected_count == len(ps_bad)
    assert {r.line_no for r in ps_report.rejected} == ps_bad
    for rejected in ps_report.rejected:
        fields = ps_lines[rejected.line_no - 2]
        expected = ("expected 52 columns, found 20" if len(fields) != 53
                    else f"RPPS '{fields[1]}' has a wrong check digit")
        assert rejected.reason == expected

    mss_lines = data_lines(mss)
    mss_bad = {n for n, f in enumerate(mss_lines, start=2)
               if f[0] == "PER" and (not valid_rpps(f[3]) or not f[9])}
    assert mss_report.accepted == len(mss_lines) - len(mss_bad) and mss_report.rejected_count == len(mss_bad)
    assert {r.line_no for r in mss_report.rejected} == mss_bad
    assert {r.reason.split(" ")[0] for r in mss_report.rejected} <= {"RPPS", "family"}

    assert await count(engine, professionals) == len({f[2] for f in ps_good})
    structures = {("3" + f[21]) if f[21] else ("R" + f[23]) for f in ps_good}
    assert await count(engine, organisations) == len(structures)
    assert await count(engine, activities) == len({(f[2], f[21], f[23], f[17], f[37], f[35]) for f in ps_good})
    good_boxes = [f for n, f in enumerate(mss_lines, start=2) if n not in mss_bad]
    assert await count(engine, mailboxes) == len({f[1] for f in good_boxes})
    assert await count(engine, mailboxes, mailboxes.c.local.is_(True), mailboxes.c.published.is_(True)) == \
        len(good_boxes)
    assert await count(engine, professionals, professionals.c.digest == "") == 0  # every owner came from PS

    person = (await rows(engine, professionals, professionals.c.idnat == ps_good[0][2]))[0]
    assert person.family_name == ps_good[0][7] and person.source_stamp == STAMP and len(person.digest) == 40
    assert person.search_text.startswith(person.family_name.lower().replace("'", " ").split()[0][:3])
    assert person.updated_at is not None and person.retired_at is None
    recorded = await rows(engine, imports)
    assert sorted((r.kind, r.stamp, r.lines, r.accepted, r.rejected) for r in recorded) == sorted([
        ("ps", STAMP, ps_report.lines, ps_report.accepted, ps_report.rejected_count),
        ("mss", STAMP, mss_report.lines, mss_report.accepted, mss_report.rejected_count)])
    assert all(len(r.sha256) == 64 and r.finished_at is not None for r in recorded)


@needs_generator
async def test_reimport_changes_nothing(engine, tmp_path):
    ps, mss = generate(tmp_path)
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


@needs_generator
async def test_newer_file_updates_changed_rows_and_retires_missing_ones(engine, tmp_path):
    ps, mss = generate(tmp_path)
    await import_both(engine, ps, mss)
    ps_lines = [f for f in data_lines(ps) if len(f) == 53 and valid_rpps(f[1])]
    # `gone` works in a liberal cabinet (no FINESS: a technical id) which may leave with them
    gone, cabinet = next((f[2], f[23]) for f in ps_lines if not f[21])
    renamed, untouched = [i for i in dict.fromkeys(f[2] for f in ps_lines) if i != gone][:2]
    cabinet_only_gone = all(f[2] == gone for f in ps_lines if not f[21] and f[23] == cabinet)
    before = {r.idnat: r for r in await rows(engine, professionals)}
    orgs_before = {r.id: r for r in await rows(engine, organisations)}
    boxes_before = {b.address: b for b in await rows(engine, mailboxes)}
    box_gone = next(f[1] for f in data_lines(mss) if f[0] == "PER" and f[4] == untouched)
    box_changed = next(f[1] for f in data_lines(mss) if f[0] == "ORG")
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
    assert (orgs_after["R" + cabinet].retired_at is not None) == cabinet_only_gone
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


@needs_generator
async def test_older_file_is_refused_unless_forced(engine, tmp_path):
    ps, mss = generate(tmp_path)
    await import_both(engine, ps, mss)
    old_ps, old_mss = generate(tmp_path / "old", stamp=OLDER, seed=2)
    before = await dump(engine)
    with pytest.raises(ImportRefused, match="older than the last ps file imported"):
        await import_file(engine, old_ps, local_domains=(DOMAIN,))
    with pytest.raises(ImportRefused, match="older than the last mss file imported"):
        await import_file(engine, old_mss, local_domains=(DOMAIN,))
    assert await dump(engine) == before

    report = await import_file(engine, old_ps, local_domains=(DOMAIN,), force=True)
    assert report.accepted > 0 and report.stamp == OLDER
    assert await count(engine, professionals, professionals.c.source_stamp == OLDER) > 0


@needs_generator
async def test_truncated_file_is_refused_unless_forced(engine, tmp_path):
    ps, _ = generate(tmp_path)
    await import_file(engine, ps, local_domains=(DOMAIN,))
    first_people = {f[2] for f in data_lines(ps)[:40]}
    short = rewrite(ps, NEWER, keep=lambda f: f[2] in first_people)
    with pytest.raises(ImportRefused, match="looks truncated"):
        await import_file(engine, short, local_domains=(DOMAIN,))
    assert await count(engine, professionals, professionals.c.retired_at.is_not(None)) == 0
    report = await import_file(engine, short, local_domains=(DOMAIN,), force=True)
    assert report.retired > 0


@needs_generator
async def test_mailboxes_before_professionals(engine, tmp_path):
    """A PER box whose owner is not in the directory yet gets a placeholder, completed later."""
    ps, mss = generate(tmp_path)
    mss_report = await import_file(engine, mss, local_domains=(DOMAIN,))
    assert mss_report.accepted > 0
    owners = {f[4] for f in data_lines(mss) if f[0] == "PER" and valid_rpps(f[3]) and f[9]}
    placeholders = await rows(engine, professionals)
    assert {p.idnat for p in placeholders} == owners and all(p.digest == "" for p in placeholders)
    assert all(p.search_text and p.family_name for p in placeholders)
    assert await count(engine, organisations, organisations.c.digest == "") > 0  # the ORG boxes' structures

    await import_file(engine, ps, local_domains=(DOMAIN,))
    completed = {p.idnat: p for p in await rows(engine, professionals)}
    assert all(completed[i].digest != "" and completed[i].retired_at is None for i in owners)
    assert all(completed[i].civility in ("Monsieur", "Madame") for i in owners)
    assert await count(engine, organisations, organisations.c.digest == "") == 0


@needs_generator
async def test_local_boxes_are_never_rewritten_and_local_follows_the_domains(engine, tmp_path):
    ps, mss = generate(tmp_path)
    await import_file(engine, ps, local_domains=(DOMAIN,))
    listed = next(f for f in data_lines(mss) if f[0] == "PER" and valid_rpps(f[3]) and f[9])
    now = datetime.now(timezone.utc)
    async with engine.begin() as conn:
        await conn.execute(mailboxes.insert().values(
            address=listed[1], kind="nominative", owner_idnat=listed[4], service="Mine", description="",
            published=False, local=True, created_at=now, updated_at=now))
    await import_file(engine, mss, local_domains=("autre-operateur.test",))
    mine = (await rows(engine, mailboxes, mailboxes.c.address == listed[1]))[0]
    assert (mine.service, mine.published, mine.source_stamp) == ("Mine", False, "")
    assert await count(engine, mailboxes, mailboxes.c.local.is_(True)) == 1  # only the one created here

    # the same file once the operator serves the domain: the flag follows, nothing else moves
    report = await import_file(engine, mss, local_domains=(DOMAIN.upper(),), force=True)
    assert await count(engine, mailboxes, mailboxes.c.local.is_(False)) == 0
    assert report.retired == 0


@needs_generator
async def test_progress_is_reported_per_batch(engine, tmp_path, monkeypatch):
    import directory.importer as importer

    monkeypatch.setattr(importer, "BATCH_LINES", 25)
    ps, mss = generate(tmp_path)
    calls = []
    report = await import_file(engine, ps, local_domains=(DOMAIN,), progress=lambda *a: calls.append(a))
    size = ps.stat().st_size
    assert len(calls) > 10
    assert [c[1] for c in calls] == sorted(c[1] for c in calls) and calls[-1] == (report.lines, size, size)
    # small batches give the same directory as the default ones
    accepted = {f[2] for f in data_lines(ps) if len(f) == 53 and valid_rpps(f[1])}
    assert await count(engine, professionals) == len(accepted)


@needs_generator
async def test_file_without_stamp_or_unknown_header_is_refused(engine, tmp_path):
    unstamped = tmp_path / "PS_LibreAcces_Personne_activite.txt"
    unstamped.write_bytes((DATA / "PS_LibreAcces_Personne_activite_sample.txt").read_bytes())
    with pytest.raises(ImportRefused, match="no _AAAAMMJJhhmm stamp"):
        await import_file(engine, unstamped, local_domains=(DOMAIN,))
    stranger = tmp_path / f"Annuaire_{STAMP}.txt"
    stranger.write_text("Nom|Prénom|\nDUPONT|JEAN|\n", encoding="utf-8")
    with pytest.raises(ValueError, match="unknown header"):
        await import_file(engine, stranger, local_domains=(DOMAIN,))
    assert await count(engine, imports) == 0


@needs_generator
async def test_retired_entries_come_back_when_listed_again(engine, tmp_path):
    ps, mss = generate(tmp_path)
    await import_both(engine, ps, mss)
    person = data_lines(ps)[0][2]
    await import_file(engine, rewrite(ps, NEWER, keep=lambda f: f[2] != person), local_domains=(DOMAIN,))
    assert (await rows(engine, professionals, professionals.c.idnat == person))[0].retired_at is not None
    later = "202611250600"
    await import_file(engine, rewrite(ps, later), local_domains=(DOMAIN,))
    back = (await rows(engine, professionals, professionals.c.idnat == person))[0]
    assert back.retired_at is None and back.source_stamp == later
    assert await count(engine, activities, activities.c.idnat == person, activities.c.retired_at.is_(None)) > 0
    assert await count(engine, professionals, professionals.c.retired_at.is_not(None)) == 0
