"""Directory benchmark: import rate, memory, search latency and the idempotent re-import.

    .venv/bin/python bench/directory.py [--people 1000000] [--db URL]

Generates synthetic national extracts (directory/synthetic.py) into a temporary directory,
imports them into a fresh SQLite database (or the database at --db, which should be empty),
then runs a mix of searches. Prints figures; asserts nothing. Memory is the process's peak
resident size (ru_maxrss), shown before the imports too: an import that streams keeps it flat
whatever the file size.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Python put this script's folder first on the path, where "directory" would name this very file
# (a module found anywhere shadows the namespace package directory/): the repository goes there.
sys.path[0] = str(REPO)

from sqlalchemy import func, select  # noqa: E402

from directory.importer import import_file  # noqa: E402
from directory.queries import search  # noqa: E402
from directory.synthetic import MSS_NAME, PS_NAME  # noqa: E402
from store.db import create_engine, upgrade  # noqa: E402
from store.schema import activities, mailboxes, organisations, professionals  # noqa: E402

DOMAIN = "msante.test"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def current_rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def show_progress(lines: int, done: int, total: int) -> None:
    if sys.stderr.isatty():
        print(f"\r  {lines:>10,} lines  {100 * done / total:5.1f} %", end="", file=sys.stderr, flush=True)


async def run(args: argparse.Namespace, workdir: Path) -> None:
    started = time.monotonic()
    # In a process of its own: the generator holds every fake person in memory, and the peak RSS
    # printed below must be the import's.
    stamp = "202611230600"
    subprocess.run([sys.executable, "-m", "directory.synthetic", "--people", str(args.people), "--bad", "20",
                    "--seed", str(args.seed), "--stamp", stamp, "--domain", DOMAIN, str(workdir)],
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    ps_file, mss_file = workdir / PS_NAME.format(stamp=stamp), workdir / MSS_NAME.format(stamp=stamp)
    print(f"generated {args.people:,} people in {time.monotonic() - started:.1f} s: "
          f"{ps_file.stat().st_size / 2**20:.0f} MB PS, {mss_file.stat().st_size / 2**20:.0f} MB MSSanté")

    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (other work skews the figures)")
    url = args.db or f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
    engine = create_engine(url)
    await upgrade(engine)
    print(f"database: {engine.url.render_as_string(hide_password=True)}")
    print(f"RSS before import: {current_rss_mb():.0f} MB (peak so far {peak_rss_mb():.0f} MB)")
    for path in (ps_file, mss_file):
        report = await import_file(engine, path, local_domains=(DOMAIN,), progress=show_progress)
        if sys.stderr.isatty():
            print(file=sys.stderr)
        print(f"import {report.kind}: {report.lines:,} lines ({report.accepted:,} accepted, "
              f"{report.rejected_count} rejected) in {report.seconds:.1f} s = {report.lines / report.seconds:,.0f} "
              f"lines/s; peak RSS {peak_rss_mb():.0f} MB")

    await run_searches(engine, args.queries, random.Random(args.seed))

    for path in (ps_file, mss_file):
        report = await import_file(engine, path, local_domains=(DOMAIN,))
        print(f"re-import {report.kind}, same file: {report.seconds:.2f} s ({report.summary()})")
        before = datetime.now(timezone.utc)
        report = await import_file(engine, path, local_domains=(DOMAIN,), force=True)
        changed = await rows_updated_since(engine, before)
        print(f"re-import {report.kind}, forced (every line read and upserted): {report.seconds:.1f} s = "
              f"{report.lines / report.seconds:,.0f} lines/s; rows whose updated_at moved: {changed}")
    print(f"peak RSS at the end: {peak_rss_mb():.0f} MB; load average (1 min): {os.getloadavg()[0]:.2f}")
    if not args.db:
        print(f"database file: {(workdir / 'bench.db').stat().st_size / 2**20:.0f} MB")
    await engine.dispose()


async def rows_updated_since(engine, moment: datetime) -> int:
    async with engine.connect() as conn:
        total = 0
        for table in (professionals, organisations, mailboxes):
            total += await conn.scalar(select(func.count()).where(table.c.updated_at >= moment))
        return total


async def run_searches(engine, count: int, rnd: random.Random) -> None:
    """`count` searches: name prefixes (alone, with a given name, with a profession), profession +
    town, and identifier look-ups (RPPS, national identifier, mailbox address, FINESS)."""
    async with engine.connect() as conn:
        # National identifiers from RPPS (8 + 11 digits) all have 12 digits: their text order is
        # their numeric order, and a random number between the first and the last lands anywhere
        # among them (the few ADELI ones, 0 + 9 characters, sort before).
        first, last = (await conn.execute(select(func.min(professionals.c.idnat), func.max(professionals.c.idnat))
                                          .where(professionals.c.idnat.startswith("8")))).one()
        people = []
        for _ in range(300):
            start = str(rnd.randint(int(first), int(last)))
            people.append((await conn.execute(select(professionals.c.idnat, professionals.c.search_text).where(
                professionals.c.idnat >= start).order_by(professionals.c.idnat).limit(1))).one())
        towns = (await conn.execute(select(activities.c.city_search).distinct())).scalars().all()
        professions = (await conn.execute(select(professionals.c.profession_code).distinct())).scalars().all()
        addresses = (await conn.execute(select(mailboxes.c.address).where(
            mailboxes.c.address >= "m").limit(300))).scalars().all()
        finess = (await conn.execute(select(organisations.c.finess).where(
            organisations.c.finess.is_not(None)).limit(300))).scalars().all()

    def name_prefix() -> str:
        family = rnd.choice(people).search_text
        return family[:rnd.randint(2, min(len(family), 8))]

    mix = [
        ("name prefix", 40, lambda: {"text": name_prefix()}),
        ("family + given name", 10, lambda: {"text": rnd.choice(people).search_text[:-rnd.randint(0, 3) or None]}),
        ("name prefix + profession", 10, lambda: {"text": name_prefix(), "profession": rnd.choice(professions)}),
        ("profession + town", 20, lambda: {"profession": rnd.choice(professions), "city": rnd.choice(towns)}),
        ("RPPS / national id", 10, lambda: {"identifier": rnd.choice(people).idnat[rnd.randint(0, 1):]}),
        ("mailbox address", 5, lambda: {"identifier": rnd.choice(addresses), "kind": "mailbox"}),
        ("FINESS", 5, lambda: {"identifier": rnd.choice(finess), "kind": "organisation"}),
    ]
    labels = [m[0] for m in mix]
    weights = [m[1] for m in mix]
    makers = {m[0]: m[2] for m in mix}
    timings: dict[str, list[float]] = defaultdict(list)
    found = 0
    for _ in range(count):
        label = rnd.choices(labels, weights)[0]
        criteria = makers[label]()
        kind = criteria.pop("kind", "professional")
        started = time.perf_counter()
        page = await search(engine, kind=kind, **criteria)
        timings[label].append((time.perf_counter() - started) * 1000)
        found += bool(page.items)
    every = [t for times in timings.values() for t in times]
    print(f"{count:,} searches ({found:,} with results): p50 {percentile(every, 50):.2f} ms, "
          f"p99 {percentile(every, 99):.2f} ms, max {max(every):.1f} ms")
    for label in labels:
        times = timings[label]
        print(f"  {label:<26} {len(times):>5}  p50 {percentile(times, 50):6.2f} ms  "
              f"p99 {percentile(times, 99):6.2f} ms")


def percentile(values: list[float], pct: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument("--db", help="database URL (default: a fresh SQLite file in the temporary directory)")
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="msante-bench-") as workdir:
        asyncio.run(run(args, Path(workdir)))


if __name__ == "__main__":
    main()
