"""SMTP submission benchmark: msante against the reference Postfix, alternating, in one sitting.

    .venv/bin/python bench/smtp.py [-c 20] [--n-10k 2000] [--n-1m 200] [--runs 3] [--db URL]
                                   [--workers N --bus redis://…] [--compare | --no-compare] [--mailbench PATH]

Creates a fresh data directory in a temporary directory, runs `msante init --demo` with free
loopback ports, starts `python -m msante serve` (SQLite in that directory, or the database at
--db, which should be empty; `--workers N` processes, which need PostgreSQL and a Redis --bus)
and drives it with the shared load harness (../shared/bench/mailbench.py, `smtp` subcommand):
N concurrent sessions (default 20) send messages of 10 KB, then of 1 MB, over STARTTLS + AUTH
XOAUTH2 as Dr Jean Dupont (jean.dupont@msante.test, the envelope sender and the From: header)
to three demo boxes.

With --compare (the default when the peers can start: root, and Postfix/Dovecot installable),
it also starts the reference Postfix + Dovecot (`peers/start.sh --fresh`) and sends the same
load to Postfix submission (127.0.0.1:2587, STARTTLS + AUTH PLAIN as user9@bench.local), runs
alternating msante, Postfix, msante, Postfix… for each size, as the harness's README asks for
on a shared machine. After every Postfix run its queue is drained (`peers/wait-drain.sh`, timed
and printed), so Postfix's delivery to Dovecot never overlaps a measured run: Postfix answers 250
once a message is queued, msante once it is stored in the mailboxes. The peers are stopped at
the end.

Prints each run as it finishes, then a table per size: msgs/s median [min..max], p50 and p99
latency (medians over the runs; latency = MAIL FROM sent to the 250 after DATA, as mailbench
measures it) and the ratios msante/Postfix. Figures are printed, never asserted.

The bearer token is issued once, with `msante token issue --rpps 10001045367 --ttl 3600`, and
handed to mailbench through `--token-cmd "cat FILE" --token-cache 3000`: mailbench runs a token
command inside each run's wall time, and `msante token issue` takes about a second, so with
20 sessions starting together it would take seconds off every msante run that Postfix's
password login never pays. --token-per-run makes mailbench run `msante token issue` itself
(with --token-cache 3000), as a client would, to see that cost.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from procs import CLOCK_TICK, Fatal, free_port, port_open, run_bench, tail, tree_cpu

REPO = Path(__file__).resolve().parents[1]
GP_RPPS = "10001045367"
GP = "jean.dupont@msante.test"
MSANTE_RCPTS = "sophie.hoarau@msante.test,marie.grondin@msante.test,claire.leroy@msante.test"
PEER_USER = "user9@bench.local"
PEER_PASSWORD = "benchpass"
PEER_RCPTS = "user1@bench.local,user2@bench.local,user3@bench.local"  # as many boxes as on the msante side
# The peers' ports, from the variables peers/start.sh reads (with MAILBENCH_RUN, another pair
# of peers than the one another benchmark on this machine may be running)
PEER_PORTS = tuple(int(os.environ.get(name, default)) for name, default in (
    ("SMTP_PORT", 2525), ("SUBMIT_PORT", 2587), ("SUBMITS_PORT", 2465), ("IMAP_PORT", 1143), ("IMAPS_PORT", 1993)))
PEER_SUBMIT_PORT = PEER_PORTS[1]
# msante's SMTP sessions take at most 200 MAIL commands (aiosmtpd's per-verb call limit).
MSANTE_MAX_MAIL_PER_SESSION = 200
SIZES = {"10k": "10 KB", "1m": "1 MB"}



def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / CLOCK_TICK  # minus idle and iowait



# --- msante ---------------------------------------------------------------------------------

class Msante:
    """A fresh data directory, `init --demo`, and `serve` as a child process."""

    def __init__(self, workdir: Path, db_url: str | None, *, workers: int = 1, bus_url: str | None = None) -> None:
        self.data = workdir / "var"
        self.log = workdir / "serve.log"
        self.ports = {name: free_port() for name in ("https", "smtp", "submission", "submissions", "imap", "imaps", "hl7")}
        # Every msante command (init, serve, token issue, and mailbench's token command) must see the
        # same listeners: the https one is the dev token issuer's identity.
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        for name, port in self.ports.items():
            self.env[f"MSANTE_LISTEN__{name.upper()}"] = f"127.0.0.1:{port}"
        if db_url:
            self.env["MSANTE_DATABASE__URL"] = db_url
        if bus_url:
            self.env["MSANTE_BUS__URL"] = bus_url
        self.workers = workers
        self.proc: subprocess.Popen | None = None
        self._log_fh = None

    def command(self, *words: str) -> list[str]:
        # --data-dir goes after the subcommand: in front of it the subcommand's own default replaces it.
        return [sys.executable, "-m", "msante", *words, "--data-dir", str(self.data)]

    def init(self) -> float:
        started = time.monotonic()
        done = subprocess.run(self.command("init", "--demo"), env=self.env, cwd=REPO, capture_output=True,
                              text=True, timeout=300)
        if done.returncode != 0:
            raise Fatal(f"msante init --demo failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        return time.monotonic() - started

    def start(self) -> float:
        started = time.monotonic()
        self._log_fh = open(self.log, "wb")
        workers = ["--workers", str(self.workers)] if self.workers != 1 else []
        self.proc = subprocess.Popen(self.command("serve", *workers), env=self.env, cwd=REPO, stdout=self._log_fh,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Fatal(f"msante serve exited with {self.proc.returncode}:\n{tail(self.log, 30)}")
            # The banner comes once every listener is bound. No probe connection: the server would count it.
            if "Stop with Ctrl-C" in self.log.read_text(errors="replace"):
                if self.workers != 1:
                    time.sleep(2.0)  # the first worker's banner: give the others time to bind and fill their pools
                return time.monotonic() - started
            time.sleep(0.1)
        raise Fatal(f"msante serve did not open its submission port within 90 s:\n{tail(self.log, 30)}")

    def issue_token(self, ttl: int) -> tuple[str, float]:
        started = time.monotonic()
        done = subprocess.run(self.command("token", "issue", "--rpps", GP_RPPS, "--ttl", str(ttl)), env=self.env,
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        if done.returncode != 0 or not done.stdout.strip():
            raise Fatal(f"msante token issue failed ({done.returncode}):\n{done.stderr[-2000:]}")
        return done.stdout.strip(), time.monotonic() - started

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            if self._log_fh:
                self._log_fh.close()

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc else []

    def stop_and_report(self) -> None:
        """SIGTERM, then say how it ended and what the server logged that someone should read."""
        code = self.stop()
        if self.proc is not None:
            findings = self.log_findings()
            print(f"msante serve exited {code} after SIGTERM; its log had {len(findings)} warning/error line(s)")
            for line in findings[:10]:
                print("  " + line[:300])

    def log_findings(self) -> list[str]:
        """Warnings, errors and tracebacks the server logged."""
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            if any(word in line for word in (" WARNING ", " ERROR ", " CRITICAL ", "Traceback")):
                found.append(line)
        return found

    def db_size(self) -> int | None:
        path = self.data / "msante.db"
        if "MSANTE_DATABASE__URL" in self.env or not path.exists():
            return None
        return sum(p.stat().st_size for p in self.data.glob("msante.db*"))


# --- Postfix / Dovecot peers ----------------------------------------------------------------

class Peers:
    def __init__(self, bench: Path) -> None:
        self.dir = bench / "peers"
        self.run_dir = Path(os.environ.get("MAILBENCH_RUN", "/tmp/mailbench-peers"))
        self.ca = self.run_dir / "tls" / "ca.crt"
        self.started = False
        self.banner = ""

    def start(self) -> str | None:
        """Start the peers; None when they run, else why not."""
        if os.geteuid() != 0:
            return "peers/start.sh needs root (it installs Postfix/Dovecot and runs them as their users)"
        busy = [p for p in PEER_PORTS if port_open(p)]
        if busy:
            return (f"127.0.0.1 ports {', '.join(map(str, busy))} are already in use (peers someone else started?); "
                    f"not restarting them with --fresh")
        try:
            done = subprocess.run([str(self.dir / "start.sh"), "--fresh"], capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            self.started = True  # may be half up: stop.sh at the end
            return "peers/start.sh --fresh did not finish within 15 min"
        self.started = True  # stop.sh is safe to run whatever state start.sh left
        if done.returncode != 0:
            out = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            return f"peers/start.sh --fresh exited {done.returncode}:\n{out}"
        self.banner = "\n".join(line for line in done.stdout.splitlines()
                                if line.startswith(("postfix ", "dovecot ", "users:")))
        if not port_open(PEER_SUBMIT_PORT):
            return f"peers/start.sh ran but nothing listens on 127.0.0.1:{PEER_SUBMIT_PORT}"
        return None

    def pids(self) -> list[int]:
        pids = []
        for path in (self.run_dir / "postfix" / "queue" / "pid" / "master.pid",
                     self.run_dir / "dovecot" / "run" / "master.pid"):
            try:
                pids.append(int(path.read_text().strip()))
            except (OSError, ValueError):
                pass
        return pids

    def drain(self) -> None:
        subprocess.run([str(self.dir / "wait-drain.sh")], check=False, timeout=400)

    def stop(self) -> None:
        if self.started:
            subprocess.run([str(self.dir / "stop.sh")], check=False, timeout=120,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.started = False


# --- load -----------------------------------------------------------------------------------

def mailbench_command(mailbench: Path, target: dict, size: str, messages: int, args: argparse.Namespace,
                      json_out: Path) -> list[str]:
    return [sys.executable, str(mailbench), "smtp", "--port", str(target["port"]), "--starttls",
            "--cafile", str(target["cafile"]), *target["extra"], "--mail-from", target["user"],
            "-c", str(args.concurrency), "-n", str(messages), "--per-conn", str(args.per_conn_effective),
            "--size", size, "--rcpt", target["rcpt"], "--runs", "1", "--pause", "0",
            "--json-out", str(json_out)]


def run_once(cmd: list[str], env: dict, json_out: Path, server_pids: list[int]) -> dict:
    before = json_out.stat().st_size if json_out.exists() else 0
    busy, server_cpu, client = machine_busy(), tree_cpu(server_pids), resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    server_cpu = tree_cpu(server_pids) - server_cpu
    busy = machine_busy() - busy
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = after.ru_utime + after.ru_stime - client.ru_utime - client.ru_stime
    if done.returncode != 0:
        raise Fatal(f"mailbench exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    with open(json_out) as fh:
        fh.seek(before)
        record = json.loads(fh.read().strip().splitlines()[-1])
    result = record["runs"][0]
    # CPU over the whole mailbench process (start-up and the Postfix drain wait included), shown
    # against the measured wall time: an approximation, good to tell a saturated core from an idle one.
    result["server_cpu_pct"] = 100 * server_cpu / result["wall_s"] if result["wall_s"] else math.nan
    result["client_cpu_pct"] = 100 * client_cpu / result["wall_s"] if result["wall_s"] else math.nan
    other = max(0.0, busy - server_cpu - client_cpu)  # everything else on the machine: other people's work
    result["other_cpu_pct"] = 100 * other / result["wall_s"] if result["wall_s"] else math.nan
    if done.stderr.strip():
        result["stderr"] = done.stderr.strip()
    return result


def describe(r: dict) -> str:
    text = (f"{r['msgs_per_s']:8.1f} msgs/s  {r['MB_per_s']:6.1f} MB/s  p50 {r.get('p50_ms', math.nan):7.1f} ms  "
            f"p99 {r.get('p99_ms', math.nan):7.1f} ms  max {r.get('max_ms', math.nan):7.1f} ms  "
            f"({r['accepted']} accepted, {r['errors']} errors, {r['wall_s']:.1f} s, "
            f"connect p50 {r.get('connect_p50_ms', math.nan):.1f} ms, "
            f"CPU % of a core: server {r['server_cpu_pct']:.0f} client {r['client_cpu_pct']:.0f} "
            f"other processes {r['other_cpu_pct']:.0f})")
    if "drain_s" in r:
        text += f"\n{'':16}queue drained (delivered to Dovecot) {r['drain_s']:.1f} s after the run"
    if r.get("first_errors"):
        text += "\n      first errors: " + " | ".join(r["first_errors"])
    return text


def med(runs: list[dict], key: str) -> tuple[float, float, float]:
    values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
    if not values:
        return math.nan, math.nan, math.nan
    return statistics.median(values), min(values), max(values)


def table(results: dict, servers: list[str], sizes: list[str], concurrency: int, messages: dict) -> list[str]:
    out = [f"{'server':<9} {'size':<6} {'runs':>4} {'msgs/s median [min..max]':<28} {'p50 ms':>8} {'p99 ms':>8} "
           f"{'MB/s':>7} {'errors':>6} {'CPU srv/cli %':>13}"]
    for size in sizes:
        for server in servers:
            runs = results.get((server, size), [])
            if not runs:
                continue
            rate, low, high = med(runs, "msgs_per_s")
            errors = sum(r["errors"] for r in runs)
            out.append(f"{server:<9} {SIZES[size]:<6} {len(runs):>4} {f'{rate:.1f} [{low:.1f}..{high:.1f}]':<28} "
                       f"{med(runs, 'p50_ms')[0]:>8.1f} {med(runs, 'p99_ms')[0]:>8.1f} "
                       f"{med(runs, 'MB_per_s')[0]:>7.1f} {errors:>6} "
                       f"{med(runs, 'server_cpu_pct')[0]:>6.0f}/{med(runs, 'client_cpu_pct')[0]:<6.0f}")
    every = [r for runs in results.values() for r in runs]
    out.append(f"CPU columns: % of one core ({os.cpu_count()} here) over each run, medians; other processes on the "
               f"machine used {med(every, 'other_cpu_pct')[0]:.0f} % [{med(every, 'other_cpu_pct')[1]:.0f}.."
               f"{med(every, 'other_cpu_pct')[2]:.0f}] meanwhile")
    if "postfix" in servers:
        out.append("")
        out.append("ratio msante/postfix (medians): msgs/s > 1 = msante faster; p50/p99 < 1 = msante quicker")
        for size in sizes:
            a, b = results.get(("msante", size), []), results.get(("postfix", size), [])
            if not a or not b:
                continue
            ratio = {k: med(a, k)[0] / med(b, k)[0] if med(b, k)[0] else math.nan
                     for k in ("msgs_per_s", "p50_ms", "p99_ms")}
            out.append(f"  {SIZES[size]:<6} msgs/s x{ratio['msgs_per_s']:.2f}   p50 x{ratio['p50_ms']:.2f}   "
                       f"p99 x{ratio['p99_ms']:.2f}")
    out.append(f"(c={concurrency}; messages per run: "
               + ", ".join(f"{SIZES[s]} {messages[s]}" for s in sizes) + ")")
    return out


def bench(args: argparse.Namespace, workdir: Path) -> int:
    t0 = time.monotonic()
    mailbench = args.mailbench.resolve()
    messages = {"10k": args.n_10k, "1m": args.n_1m}
    sizes = [s.strip().lower() for s in args.sizes.split(",") if s.strip()]
    for s in sizes:
        if s not in SIZES:
            raise Fatal(f"--sizes: {s!r} is not one of {', '.join(SIZES)}")
    most_per_session = max(math.ceil(messages[s] / args.concurrency) for s in sizes)
    args.per_conn_effective = args.per_conn
    if not args.per_conn and most_per_session > MSANTE_MAX_MAIL_PER_SESSION - 10:
        args.per_conn_effective = 100
        print(f"note: {most_per_session} messages per session would pass msante's limit of "
              f"{MSANTE_MAX_MAIL_PER_SESSION} MAIL commands per session: --per-conn 100 for both servers")

    server = Msante(workdir, args.db, workers=args.workers, bus_url=args.bus)
    peers = Peers(mailbench.parent)
    json_out = workdir / "mailbench.jsonl"
    try:
        init_s = server.init()
        start_s = server.start()
        token, token_s = server.issue_token(3600)
        print(f"msante: init --demo {init_s:.1f} s, serve ready in {start_s:.1f} s "
              f"(submission 127.0.0.1:{server.ports['submission']}, "
              f"database {args.db or 'SQLite in ' + str(server.data)}, {args.workers} worker(s)"
              f"{', bus ' + args.bus if args.bus else ''})")
        print(f"msante token issue: {token_s:.2f} s per call"
              + ("" if args.token_per_run else " (issued outside the runs, renewed every 30 min)"))
        if args.token_per_run:
            token_cmd = " ".join(shlex.quote(w) for w in server.command(
                "token", "issue", "--rpps", GP_RPPS, "--ttl", "3600")) + " 2>/dev/null"
        else:
            token_file = workdir / "token"
            token_file.touch(mode=0o600)
            token_file.write_text(token)
            token_issued = time.monotonic()
            token_cmd = f"cat {shlex.quote(str(token_file))}"
        targets = {"msante": {
            "port": server.ports["submission"], "cafile": server.data / "pki" / "ca.crt", "user": GP,
            "rcpt": MSANTE_RCPTS, "env": server.env,
            "extra": ["--tls-server-name", "localhost", "--auth", "xoauth2", "--user", GP,
                      "--token-cmd", token_cmd, "--token-cache", "3000"]}}

        servers = ["msante"]
        if args.compare is not False:
            why = peers.start()
            if why is None:
                print("peers: " + peers.banner.replace("\n", "\n       "))
                peers.drain()
                servers.append("postfix")
                targets["postfix"] = {
                    "port": PEER_SUBMIT_PORT, "cafile": peers.ca, "user": PEER_USER, "rcpt": PEER_RCPTS,
                    "env": dict(os.environ),
                    "extra": ["--auth", "plain", "--user", PEER_USER, "--password", PEER_PASSWORD,
                              "--between", str(peers.dir / "wait-drain.sh")]}
            elif args.compare:
                raise Fatal(f"--compare: the Postfix/Dovecot peers did not start: {why}")
            else:
                print(f"no comparison: the Postfix/Dovecot peers did not start: {why}")

        print("mailbench commands (per run; -n and --size per size):")
        for name in servers:
            cmd = mailbench_command(mailbench, targets[name], sizes[0], messages[sizes[0]], args, json_out)
            print(f"  {name}: " + " ".join(shlex.quote(w) for w in cmd))
        print(f"order: {', '.join(servers)} alternating, {args.runs} run(s) each, per size"
              + ("; Postfix queue drained after every Postfix run" if "postfix" in servers else ""))

        results: dict[tuple[str, str], list[dict]] = {}
        for size in sizes:
            print(f"\n== {SIZES[size]}, c={args.concurrency}, n={messages[size]} per run")
            for i in range(1, args.runs + 1):
                for name in servers:
                    if name == "msante" and not args.token_per_run and time.monotonic() - token_issued > 1800:
                        token_file.write_text(server.issue_token(3600)[0])
                        token_issued = time.monotonic()
                    cmd = mailbench_command(mailbench, targets[name], size, messages[size], args, json_out)
                    r = run_once(cmd, targets[name]["env"], json_out, (server if name == "msante" else peers).pids())
                    if name == "postfix":  # its 250 means queued: let delivery finish before the next run
                        started = time.monotonic()
                        peers.drain()
                        r["drain_s"] = time.monotonic() - started
                    results.setdefault((name, size), []).append(r)
                    print(f"  run {i} {name:<8}{describe(r)}", flush=True)

        print(f"\n== Summary (one sitting, {time.strftime('%Y-%m-%d %H:%M:%S')}, "
              f"{os.cpu_count()} CPUs, load {' '.join(open('/proc/loadavg').read().split()[:3])})")
        print("\n".join(table(results, servers, sizes, args.concurrency, messages)))
        db_bytes = server.db_size()
        if db_bytes is not None:
            print(f"msante SQLite database at the end: {db_bytes / 2**20:.0f} MB (msante.db + WAL)")
        if "postfix" in servers:
            maildirs = sum(p.stat().st_size for p in (peers.run_dir / "mail").rglob("*") if p.is_file())
            print(f"Dovecot maildirs at the end: {maildirs / 2**20:.0f} MB")
    finally:
        peers.stop()
        server.stop_and_report()
        print(f"total time {time.monotonic() - t0:.0f} s")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--concurrency", type=int, default=20, help="concurrent SMTP sessions (default 20)")
    parser.add_argument("--n-10k", type=int, default=2000, help="10 KB messages per run (default 2000)")
    parser.add_argument("--n-1m", type=int, default=200, help="1 MB messages per run (default 200)")
    parser.add_argument("--sizes", default="10k,1m", help="comma list of 10k, 1m (default both)")
    parser.add_argument("--runs", type=int, default=3, help="runs per server and size (default 3)")
    parser.add_argument("--per-conn", type=int, default=0,
                        help="messages per connection (default 0: one session per worker, unless that passes "
                             "msante's 200 MAIL per session, then 100)")
    parser.add_argument("--workers", type=int, default=1,
                        help="msante serve --workers N (several need --db on PostgreSQL and --bus; default 1)")
    parser.add_argument("--bus", help="msante's [bus] url, e.g. redis://127.0.0.1:6379/5 (for --workers)")
    parser.add_argument("--db", help="database URL for msante (default: SQLite in the temporary data dir); "
                                     "the database should be empty")
    compare = parser.add_mutually_exclusive_group()
    compare.add_argument("--compare", action="store_true", default=None,
                         help="also run Postfix (peers/start.sh --fresh); fail if it cannot start")
    compare.add_argument("--no-compare", dest="compare", action="store_false", help="msante only")
    parser.add_argument("--mailbench", type=Path, default=REPO.parent / "shared" / "bench" / "mailbench.py")
    parser.add_argument("--token-per-run", action="store_true",
                        help="let mailbench run `msante token issue` as its --token-cmd (cached 3000 s per run)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (data dir, logs, JSON)")
    args = parser.parse_args()
    if not args.mailbench.exists():
        parser.error(f"mailbench not found at {args.mailbench}: give --mailbench PATH")
    if args.concurrency > 20:
        print("note: msante takes at most 20 concurrent sessions per client address; more will be refused")

    return run_bench("bench/smtp.py", bench, args, prefix="msante-smtp-bench-")


if __name__ == "__main__":
    sys.exit(main())
