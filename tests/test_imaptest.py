"""Dovecot's imaptest against a running server (issue 12): its scripted compliance groups, each
command checked against the answer the RFCs call for, and its state-tracking stress runs, where
ten sessions change one box at once and every answer is checked against what the others did.
The tester and its scripts live in ../shared/imaptest (built from source: in no registry)."""
from __future__ import annotations

import os
import re
import subprocess

import pytest

from .conftest import SHARED
from .imap_client import GP, RawImap
from .test_imap import app_password

# On SQLite only: the PostgreSQL store is held to the same views by the rest of the IMAP tests,
# and a run of imaptest costs minutes (make test must stay near 15 minutes).
pytestmark = [pytest.mark.slow, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]

IMAPTEST = SHARED / "imaptest"
# Groups run (not skipped for a capability msante lacks) when issue 12's Correctness list was
# done: fewer means a capability went missing or a group stopped running.
GROUPS_RUN = 59  # 41, then MULTIAPPEND, SORT (sort-addresses, -arrival, -date, -size, -subject), ESORT,
# THREAD (thread, thread2 to thread8, thread-orderedsubject, -orderedsubject2) and NOTIFY (notify)


@pytest.fixture(scope="module")
def imaptest_binary() -> str:
    if not (IMAPTEST / "build.sh").is_file():
        pytest.skip(f"imaptest is not at {IMAPTEST} (../shared beside the repository)")
    built = subprocess.run([str(IMAPTEST / "build.sh")], capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, built.stderr[-2000:]
    return built.stdout.strip().splitlines()[-1]


def run(server, capsys, binary: str, out, *args: str) -> str:
    """run.sh with an application password over the server's imaps, as a user would run it."""
    env = {**os.environ, "IMAP_USER": GP, "IMAP_PASS": app_password(server, capsys),
           "PORT": server.listeners["imaps"].rsplit(":", 1)[1], "IMAPTEST": binary, "OUT": str(out)}
    done = subprocess.run([str(IMAPTEST / "run.sh"), *args], env=env, capture_output=True, text=True, timeout=1200)
    return done.stdout


def test_compliance(server, capsys, imaptest_binary, tmp_path):
    summary = run(server, capsys, imaptest_binary, tmp_path, "compliance")
    groups = [line.split() for line in (tmp_path / "groups.tsv").read_text().splitlines()]
    failed = sorted(g[0] for g in groups if g[1] != "passed" and g[1] != "skipped")
    details = "\n".join(summary.splitlines()[-2:]) + "".join(
        f"\n--- {name}\n" + (tmp_path / f"{name}.txt").read_text()[-3000:] for name in failed)
    assert failed == [], details
    assert sum(g[1] == "passed" for g in groups) >= GROUPS_RUN, summary


@pytest.mark.parametrize("extra", [[], ["checkpoint=2"]], ids=["plain", "checkpoint"])
def test_stress(server, capsys, imaptest_binary, tmp_path, extra):
    client = RawImap(server)
    client.login_token(server)
    client.ok("CREATE imaptest-stress")
    client.close()
    run(server, capsys, imaptest_binary, tmp_path, "stress", *extra)
    output = (tmp_path / "stress.txt").read_text()
    before_panic = output.split("Panic:")[0]  # this imaptest version panics at exit after checkpoints
    errors = [line for line in before_panic.splitlines() if "Error:" in line]
    assert errors == [], "\n".join(errors[:40])
    assert re.search(r"^\s*\d+\s+\d+", before_panic, re.M), output[-2000:]  # it did run commands
