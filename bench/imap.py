"""IMAP benchmark: msante against the reference Dovecot, alternating, in one sitting.

    .venv/bin/python bench/imap.py [--count 10000] [--size 10k] [--runs 3] [--idle-count 100] [--idle-watchers 1]
                                   [--only msante|dovecot] [--starttls] [--msante-auth xoauth2|app-password]
                                   [--db URL] [--mailbench PATH] [--keep]

msante is started as bench/smtp.py starts it (a fresh data directory in a temporary directory,
`msante init --demo`, `python -m msante serve` on free loopback ports, SQLite there or --db);
Dovecot (with its Postfix) comes from ../shared/bench/peers/start.sh --fresh (root only). With the
shared load harness (../shared/bench/mailbench.py), on each server:

1. fill: APPEND --count messages of --size (default 10,000 x 10 KB; 2/3 \\Seen, every 10th \\Flagged,
   every 100th with "needle" in Subject and body) into a mailbox "bench10k" (`mailbench fill --reset`),
   timed, once per server;
2. imap: `mailbench imap` on that mailbox, --runs times per server, alternating msante, Dovecot,
   msante, ...: one fresh connection per run, login, then ms per command: SELECT, FETCH 1:* (FLAGS UID
   RFC822.SIZE ENVELOPE), FETCH 1:* BODY.PEEK[] (all bodies), SEARCH SUBJECT "needle" (header),
   SEARCH BODY "needle" (body), SEARCH UNSEEN FLAGGED, UID SEARCH ALL, then Thunderbird's first sync
   (UID FETCH 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Subject Date ...)]),
   bench/mailbench_sync.py);
3. idle: `mailbench idle`, alternating likewise: --idle-watchers IDLE connections (default 1) on the
   recipient's INBOX, then --idle-count messages sent one at a time by SMTP submission (STARTTLS);
   latency = the submission's 250 after DATA -> each watcher's `* n EXISTS` push (p50/p99 per run).
   Dovecot's side goes through Postfix (submission 2587 -> queue -> LMTP), whose 250 means "queued";
   msante answers 250 once stored.

Both servers over TLS (implicit TLS by default: msante `imaps`, Dovecot 1993; --starttls: msante `imap`,
Dovecot 1143). msante: everything as Dr Jean Dupont (jean.dupont@msante.test), who also sends the IDLE
messages to himself; IMAP login AUTHENTICATE XOAUTH2 with a dev-issuer token (`msante token issue`,
issued once and handed over as `--imap-token-cmd "cat FILE" --token-cache 3000`, as bench/smtp.py
does), or --msante-auth app-password: LOGIN with an application password
(`msante mailbox app-password create`). Dovecot: user1@bench.local / benchpass with LOGIN; IDLE
messages from user9@bench.local (AUTH PLAIN on Postfix submission).

Prints each run, then per figure: median [min..max] per server and the ratio msante/Dovecot
(< 1: msante quicker). Figures are printed, never asserted. Read them with
../shared/bench/README.md's advice: 15-35 % run-to-run noise on a shared machine, and Dovecot delays
IDLE notifications by design (its IDLE figure is a floor it chose).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from procs import Fatal, port_open, run_bench, tree_cpu
from smtp import GP, GP_RPPS, PEER_PASSWORD, PEER_SUBMIT_PORT, Msante, Peers

REPO = Path(__file__).resolve().parents[1]
MAILBOX = "bench10k"
PEER_IMAP_USER = "user1@bench.local"
PEER_SENDER = "user9@bench.local"
PEER_IMAP_PORTS = {"tls": 1993, "starttls": 1143}
# (mailbench key, label) in the order printed; "_ms" figures are lower-is-better.
IMAP_FIGURES = [("exists", "messages"), ("login_ms", "login ms"), ("select_ms", "SELECT ms"),
                ("fetch_meta_ms", "FETCH 1:* (FLAGS UID RFC822.SIZE ENVELOPE) ms"),
                ("fetch_bodies_ms", "FETCH 1:* BODY.PEEK[] ms"), ("fetch_bodies_MB_per_s", "  bodies MB/s"),
                ("search_subject_ms", "SEARCH SUBJECT ms"), ("search_subject_hits", "  hits"),
                ("search_body_ms", "SEARCH BODY ms"), ("search_body_hits", "  hits"),
                ("search_flags_ms", "SEARCH UNSEEN FLAGGED ms"), ("uid_search_all_ms", "UID SEARCH ALL ms"),
                ("fetch_tb_sync_ms", "UID FETCH 1:* Thunderbird first sync ms")]
IDLE_FIGURES = [("p50_ms", "IDLE push p50 ms (from SMTP 250)"), ("p99_ms", "IDLE push p99 ms"),
                ("max_ms", "IDLE push max ms"), ("pushes", "pushes"), ("missed", "missed"),
                ("from_mailfrom_p50_ms", "IDLE push p50 ms (from MAIL FROM)")]


def imap_options(target: dict, tls: str) -> list[str]:
    return ["--imap-port", str(target["imap_port"]), "--imap-starttls" if tls == "starttls" else "--imap-tls",
            "--imap-cafile", str(target["cafile"]), "--imap-tls-server-name", "localhost",
            "--imap-user", target["user"], *target["imap_login"]]


def mailbench(cmd: list[str], env: dict, timeout: int = 3600) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise Fatal(f"{' '.join(shlex.quote(w) for w in cmd[1:4])} ... exited {done.returncode}:\n"
                    f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done


def last_record(json_out: Path) -> dict:
    return json.loads(json_out.read_text().strip().splitlines()[-1])["runs"][0]


def fill(args: argparse.Namespace, name: str, target: dict) -> dict:
    cmd = [sys.executable, str(args.mailbench), "fill", *imap_options(target, args.tls), "--mailbox", MAILBOX,
           "--count", str(args.count), "--size", args.size, "-c", str(args.fill_concurrency), "--reset",
           "--timeout", "600"]
    shown = ["***" if i and cmd[i - 1] == "--imap-password" else shlex.quote(w) for i, w in enumerate(cmd)]
    print(f"  {name} fill: " + " ".join(shown[1:]), flush=True)
    cpu = tree_cpu(target["pids"]())
    started = time.monotonic()
    done = mailbench(cmd, target["env"], timeout=7200)
    wall = time.monotonic() - started
    found = re.search(r"appended (\d+) .* in ([\d.]+)s \((\d+) msg/s\)", done.stdout)
    result = {"appended": int(found.group(1)) if found else math.nan,
              "append_s": float(found.group(2)) if found else wall,
              "msgs_per_s": float(found.group(3)) if found else math.nan,
              "server_cpu_s": tree_cpu(target["pids"]()) - cpu}
    print(f"  {name:<8} {done.stdout.strip()}  (server CPU {result['server_cpu_s']:.1f} s)", flush=True)
    return result


def imap_run(args: argparse.Namespace, target: dict, json_out: Path) -> dict:
    cmd = [sys.executable, str(REPO / "bench" / "mailbench_sync.py"), str(args.mailbench), "imap",
           *imap_options(target, args.tls), "--mailbox", MAILBOX,
           "--ops", args.ops, "--runs", "1", "--pause", "0", "--timeout", "600", "--json-out", str(json_out)]
    mailbench(cmd, target["env"])
    return last_record(json_out)


def idle_run(args: argparse.Namespace, target: dict, json_out: Path) -> dict:
    cmd = [sys.executable, str(args.mailbench), "idle", *target["smtp"], "--mail-from", target["sender"],
           "--rcpt", target["user"], *imap_options(target, args.tls), "--mailbox", "INBOX",
           "--count", str(args.idle_count), "--watchers", str(args.idle_watchers), "--runs", "1", "--pause", "0",
           "--json-out", str(json_out)]
    mailbench(cmd, target["env"])
    return last_record(json_out)


def describe(result: dict, figures: list[tuple[str, str]]) -> str:
    def show(value) -> str:  # noqa: ANN001
        return f"{value:.1f}" if isinstance(value, float) else str(value)
    return "  ".join(f"{key}={show(result[key])}" for key, _ in figures if key in result)


def med(runs: list[dict], key: str) -> tuple[float, float, float]:
    values = [r[key] for r in runs if isinstance(r.get(key), (int, float)) and not math.isnan(r[key])]
    if not values:
        return math.nan, math.nan, math.nan
    return statistics.median(values), min(values), max(values)


def table(results: dict, servers: list[str], figures: list[tuple[str, str]], family: str) -> list[str]:
    out = [f"{'':<46}" + "".join(f"{s + ' median [min..max]':>30}" for s in servers)
           + ("   msante/dovecot" if len(servers) == 2 else "")]
    for key, label in figures:
        cells, medians = [], []
        for server in servers:
            m, low, high = med(results.get((server, family), []), key)
            medians.append(m)
            cells.append(f"{m:.1f} [{low:.1f}..{high:.1f}]" if not math.isnan(m) else "-")
        if all(c == "-" for c in cells):
            continue
        ratio = ""
        if len(servers) == 2 and not math.isnan(medians[0]) and medians[1] and not math.isnan(medians[1]) \
                and not label.strip().startswith(("hits", "messages", "pushes", "missed")):
            ratio = f"   x{medians[0] / medians[1]:.2f}"
        out.append(f"{label:<46}" + "".join(f"{c:>30}" for c in cells) + ratio)
    return out


def msante_target(args: argparse.Namespace, server: Msante, workdir: Path) -> dict:
    cafile = server.data / "pki" / "ca.crt"
    imap_port = server.ports["imaps" if args.tls == "tls" else "imap"]
    token_file = workdir / "token"
    token_file.touch(mode=0o600)
    token, token_s = server.issue_token(3600)
    token_file.write_text(token)
    token_cmd = f"cat {shlex.quote(str(token_file))}"
    print(f"msante token issue: {token_s:.2f} s (issued outside the runs)")
    if args.msante_auth == "xoauth2":
        imap_login = ["--imap-auth", "xoauth2", "--imap-token-cmd", token_cmd, "--token-cache", "3000"]
    else:
        done = subprocess.run(server.command("mailbox", "app-password", "create", GP, "--rpps", GP_RPPS,
                                             "--label", "bench/imap.py"),
                              env=server.env, cwd=REPO, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise Fatal(f"msante mailbox app-password create failed:\n{done.stderr[-2000:]}")
        imap_login = ["--imap-auth", "login", "--imap-password", done.stdout.strip().splitlines()[-1].split()[-1]]
    return {"imap_port": imap_port, "cafile": cafile, "user": GP, "sender": GP, "env": server.env,
            "imap_login": imap_login, "pids": server.pids,
            "smtp": ["--port", str(server.ports["submission"]), "--starttls", "--cafile", str(cafile),
                     "--tls-server-name", "localhost", "--auth", "xoauth2", "--user", GP,
                     "--token-cmd", token_cmd, "--token-cache", "3000"],
            "token_file": token_file, "token_issued": time.monotonic()}


def dovecot_target(args: argparse.Namespace, peers: Peers) -> dict:
    return {"imap_port": PEER_IMAP_PORTS[args.tls], "cafile": peers.ca, "user": PEER_IMAP_USER,
            "sender": PEER_SENDER, "env": dict(os.environ), "pids": peers.pids,
            "imap_login": ["--imap-auth", "login", "--imap-password", PEER_PASSWORD],
            "smtp": ["--port", str(PEER_SUBMIT_PORT), "--starttls", "--cafile", str(peers.ca),
                     "--tls-server-name", "localhost", "--auth", "plain", "--user", PEER_SENDER,
                     "--password", PEER_PASSWORD, "--between", str(peers.dir / "wait-drain.sh")]}


def bench(args: argparse.Namespace, workdir: Path) -> int:
    t0 = time.monotonic()
    servers = ["msante", "dovecot"] if not args.only else [args.only]
    server = Msante(workdir, args.db) if "msante" in servers else None
    peers = Peers(args.mailbench.parent)
    json_out = workdir / "mailbench.jsonl"
    targets: dict[str, dict] = {}
    try:
        if server is not None:
            init_s, start_s = server.init(), server.start()
            print(f"msante: init --demo {init_s:.1f} s, serve ready in {start_s:.1f} s "
                  f"(imap 127.0.0.1:{server.ports['imap']}, imaps 127.0.0.1:{server.ports['imaps']}, "
                  f"submission 127.0.0.1:{server.ports['submission']}, "
                  f"database {args.db or 'SQLite in ' + str(server.data)})")
            targets["msante"] = msante_target(args, server, workdir)
            port = targets["msante"]["imap_port"]
            if not port_open(port):
                raise Fatal(f"msante serve is up but nothing listens on its IMAP port 127.0.0.1:{port} "
                            f"([listen] {'imaps' if args.tls == 'tls' else 'imap'}): is the IMAP server "
                            f"(mailserver/imap/) built and started by `msante serve`?\nserve log:\n"
                            + "\n".join(server.log.read_text(errors="replace").splitlines()[-15:]))
        if "dovecot" in servers:
            why = peers.start()
            if why is not None:
                raise Fatal(f"the Dovecot/Postfix peers did not start: {why}")
            print("peers: " + peers.banner.replace("\n", "\n       "))
            targets["dovecot"] = dovecot_target(args, peers)

        print(f"\n== fill: {args.count} x {args.size} into {MAILBOX!r} (-c {args.fill_concurrency})")
        fills = {name: fill(args, name, targets[name]) for name in servers}

        results: dict[tuple[str, str], list[dict]] = {}
        print(f"\n== imap: {', '.join(servers)} alternating, {args.runs} run(s) each, ops {args.ops}")
        for i in range(1, args.runs + 1):
            for name in servers:
                r = imap_run(args, targets[name], json_out)
                results.setdefault((name, "imap"), []).append(r)
                print(f"  run {i} {name:<8}{describe(r, IMAP_FIGURES)}", flush=True)

        print(f"\n== idle: {args.idle_count} messages per run, {args.idle_watchers} watcher(s) on one INBOX, "
              f"{', '.join(servers)} alternating")
        for i in range(1, args.runs + 1 if args.idle_count else 1):
            for name in servers:
                target = targets[name]
                if name == "msante" and time.monotonic() - target["token_issued"] > 1800:
                    target["token_file"].write_text(server.issue_token(3600)[0])
                    target["token_issued"] = time.monotonic()
                r = idle_run(args, target, json_out)
                if name == "dovecot":
                    peers.drain()
                results.setdefault((name, "idle"), []).append(r)
                print(f"  run {i} {name:<8}{describe(r, IDLE_FIGURES)}", flush=True)

        print(f"\n== Summary (one sitting, {time.strftime('%Y-%m-%d %H:%M:%S')}, {os.cpu_count()} CPUs, "
              f"load {' '.join(open('/proc/loadavg').read().split()[:3])}, IMAP over "
              f"{'STARTTLS' if args.tls == 'starttls' else 'implicit TLS'})")
        print("fill (APPEND, once per server): " + "; ".join(
            f"{name} {f['appended']} msgs in {f['append_s']:.1f} s = {f['msgs_per_s']:.0f} msg/s, "
            f"server CPU {f['server_cpu_s']:.0f} s" for name, f in fills.items()))
        print("\n".join(table(results, servers, IMAP_FIGURES, "imap")))
        print("\n".join(table(results, servers, IDLE_FIGURES, "idle")))
        if len(servers) == 2:
            print("ratio = msante median / Dovecot median: < 1 means msante quicker (for MB/s, > 1 means faster)")
    finally:
        peers.stop()
        if server is not None:
            server.stop_and_report()
        print(f"total time {time.monotonic() - t0:.0f} s")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=10000, help="messages in the benchmark mailbox (10000)")
    parser.add_argument("--size", default="10k", help="size of each message (mailbench syntax, default 10k)")
    parser.add_argument("--fill-concurrency", type=int, default=4, help="APPEND connections for the fill (4)")
    parser.add_argument("--runs", type=int, default=3, help="imap and idle runs per server (default 3)")
    parser.add_argument("--idle-count", type=int, default=100,
                        help="messages per IDLE run (default 100; 0: no IDLE runs)")
    parser.add_argument("--idle-watchers", type=int, default=1,
                        help="IDLE connections on the recipient's INBOX, each timed (default 1; issue 12: 20)")
    parser.add_argument("--ops", default="select,fetch_meta,fetch_bodies,search_subject,search_body,search_flags,"
                                         "uid_search_all,fetch_tb_sync",
                        help="mailbench imap --ops (fetch_tb_sync: bench/mailbench_sync.py's Thunderbird first sync)")
    parser.add_argument("--only", choices=["msante", "dovecot"], help="one server only (no comparison)")
    parser.add_argument("--starttls", dest="tls", action="store_const", const="starttls", default="tls",
                        help="IMAP over STARTTLS (msante `imap`, Dovecot 1143) instead of implicit TLS")
    parser.add_argument("--msante-auth", choices=["xoauth2", "app-password"], default="xoauth2",
                        help="msante IMAP login: AUTHENTICATE XOAUTH2 with a token (default) or LOGIN with an "
                             "application password")
    parser.add_argument("--db", help="database URL for msante (default: SQLite in the temporary data dir); "
                                     "the database should be empty")
    parser.add_argument("--mailbench", type=Path, default=REPO.parent / "shared" / "bench" / "mailbench.py")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (data dir, logs, JSON)")
    args = parser.parse_args()
    if not args.mailbench.exists():
        parser.error(f"mailbench not found at {args.mailbench}: give --mailbench PATH")
    args.mailbench = args.mailbench.resolve()

    return run_bench("bench/imap.py", bench, args, prefix="msante-imap-bench-")


if __name__ == "__main__":
    sys.exit(main())
