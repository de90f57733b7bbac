"""What the message readers cost on the hostile shapes the black-box probe found (issue 10):
a 1.9 MB folded header (8.8 s of event-loop CPU per FETCH ENVELOPE then), MIME nested 49 deep
in about 6 MB (728 MB of RSS then) and 100,000 parts (3 s then). A plain 10 KB message is the
yardstick. The IMAP session runs these readers on the event loop (mailserver/imap/session.py),
so their time is time every other client of the process waits.

    .venv/bin/python bench/message_parse.py            # ~1 min on one core
    .venv/bin/python bench/message_parse.py --runs 9

Each (message, operation) runs in a child process of its own: `rss +MB` is what one run adds
to the child's peak RSS (the message already built; the peak is reset before the run),
`py peak MB` tracemalloc's peak during one more run, `cpu ms` and `wall ms` medians of `--runs`
runs, each on a fresh `Message` (nothing cached between runs). Every operation here reads the
whole message; a FETCH that needs only headers (ENVELOPE alone) gets the header's octets from
the store, so on the nested and many-part messages it costs what `headers.read` does. CPU time is the figure to read
on a shared machine; wall time is what the event loop would be blocked for here, now. Figures
are printed, never asserted.
"""
from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mailserver import headers  # noqa: E402
from mailserver.imap.message import Message  # noqa: E402

HEAD = b"From: Jean Dupont <jean.dupont@msante.test>\r\nTo: sophie.hoarau@msante.test\r\n" \
       b"Subject: Compte rendu\r\nDate: Sun, 06 Dec 2026 20:00:00 +0000\r\nMessage-ID: <bench@msante.test>\r\n"


def plain() -> bytes:
    return HEAD + b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + b"Bonjour, " * 1100 + b"\r\n"


def folded_header() -> bytes:
    """One field of 1.9 MB in 190,000 continuation lines."""
    return HEAD + b"X-Folded: start\r\n" + b" continued\r\n" * 190_000 + b"\r\nbody\r\n"


def nested() -> bytes:
    """multipart/mixed 49 levels deep, a 120 KB text part at each level: about 6 MB."""
    text = (b"Ligne de compte rendu " * 5 + b"\r\n") * 1100
    inner = b"Content-Type: text/plain\r\n\r\nfin\r\n"
    for level in range(49, 0, -1):
        boundary = b"b%d" % level
        inner = (b"Content-Type: multipart/mixed; boundary=" + boundary + b"\r\n\r\n--" + boundary +
                 b"\r\nContent-Type: text/plain\r\n\r\n" + text + b"--" + boundary + b"\r\n" + inner +
                 b"\r\n--" + boundary + b"--\r\n")
    return HEAD + b"MIME-Version: 1.0\r\n" + inner


def many_parts() -> bytes:
    """multipart/mixed with 100,000 small text parts."""
    part = b"--p\r\nContent-Type: text/plain\r\n\r\nx\r\n"
    return HEAD + b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=p\r\n\r\n" + part * 100_000 + b"--p--\r\n"


MESSAGES = {"plain 10 KB": plain, "folded header 1.9 MB": folded_header, "nested 49 deep": nested,
            "100,000 parts": many_parts}
OPERATIONS = {
    "headers.read": lambda raw: headers.read(raw),
    "FETCH ENVELOPE": lambda raw: Message(raw).envelope(),
    "FETCH BODYSTRUCTURE": lambda raw: Message(raw).bodystructure(extended=True),
    "SEARCH TEXT (body_text)": lambda raw: Message(raw).body_text(),
    "submission MIME caps": lambda raw: Message(raw).beyond_caps,
}


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_rss_delta(run, raw: bytes) -> float:  # noqa: ANN001
    """MB the operation adds to the process's peak RSS. Building the message raised the peak
    already; Linux resets it on request (clear_refs 5), else ru_maxrss is all there is."""
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kb("VmRSS")
        run(raw)
        return (_status_kb("VmHWM") - before) / 1024
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        run(raw)
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


def measure(message: str, operation: str, runs: int) -> dict:
    raw = MESSAGES[message]()
    run = OPERATIONS[operation]
    rss = peak_rss_delta(run, raw)
    cpu, wall = [], []
    for _ in range(runs):
        started, started_cpu = time.perf_counter(), time.process_time()
        run(raw)
        cpu.append(time.process_time() - started_cpu)
        wall.append(time.perf_counter() - started)
    tracemalloc.start()
    run(raw)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"size": len(raw), "cpu_ms": statistics.median(cpu) * 1000, "wall_ms": statistics.median(wall) * 1000,
            "rss_mb": rss, "py_peak_mb": peak / 2 ** 20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--child", nargs=2, metavar=("MESSAGE", "OPERATION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child, args.runs)))
        return
    print(f"python {sys.version.split()[0]}, median of {args.runs} runs, each (message, operation) in its own process")
    print(f"{'message':<22} {'MB':>5}  {'operation':<24} {'cpu ms':>9} {'wall ms':>9} {'rss +MB':>8} {'py peak MB':>10}")
    for message in MESSAGES:
        for operation in OPERATIONS:
            out = subprocess.run([sys.executable, __file__, "--runs", str(args.runs), "--child", message, operation],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout)
            print(f"{message:<22} {r['size'] / 1e6:>5.2f}  {operation:<24} {r['cpu_ms']:>9.2f} {r['wall_ms']:>9.2f} "
                  f"{r['rss_mb']:>8.1f} {r['py_peak_mb']:>10.1f}", flush=True)


if __name__ == "__main__":
    main()
