"""The self-contained benchmarks still run, on a few messages: a benchmark is run by hand, rarely,
and one broke unseen when the code under it changed (bench/smtp_data.py built MsanteSMTP without
the listener name it had come to need). Their figures are not checked, only that they print them."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_bench(*args: str, timeout: float = 120) -> str:
    done = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def test_smtp_data_bench_reads_with_both_readers():
    out = run_bench("bench/smtp_data.py", "--size", "10k", "--messages", "20", "--runs", "1")
    for reader in ("aiosmtpd", "chunks"):
        assert re.search(rf"^10k\s+{reader}\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+$", out, re.M), out


def test_conn_memory_bench_measures_both_layers():
    out = run_bench("bench/conn_memory.py", "--connections", "40")
    assert re.search(r"^tcp\s+40 connections: +-?[\d.]+ KiB each", out, re.M), out
    assert re.search(r"^tls\s+40 connections: +-?[\d.]+ KiB each", out, re.M), out
    assert "TLS's own share of an idle connection" in out


def test_hl7_bench_sends_acknowledges_and_dispatches():
    out = run_bench("bench/hl7.py", "--messages", "40", "--drain", "60")
    assert re.search(r"40 ADT\^A01 on 4 connections", out), out
    assert re.search(r"errors 0$", out, re.M), out
    assert re.search(r"over 40 events; still pending after 60 s: 0$", out, re.M), out
