"""Relay throughput between two operators: msante A -> msante B against Postfix P1 -> Postfix P2.

    .venv/bin/python bench/relay.py [-n 2000] [--runs 3] [-c 10] [--per-conn 100]
                                    [--variants e2e,drain] [--postfix-modes default,reuse]
                                    [--postfix-concurrency K] [--no-compare] [--keep]

Run it from the repository root with the venv's python. One sitting, everything on loopback:

msante: two instances started as tests/operators.py does (tests.operators.Operator): A serves
msante.test, B autre-operateur.test, one dev CA, A routes autre-operateur.test to B's relay
listener (and B msante.test to A). A's outbound queue carries the mail over mutual-TLS
connections reused for the due messages, up to [relay] connections_per_destination (10) at once
when a backlog allows (mailserver/outbound.py).

Postfix: two reference peers from ../shared/bench/peers/start.sh, each with its own
MAILBENCH_RUN and free ports, sharing one throw-away CA (P2's tls/ is copied from P1's before
P2 starts). P1 is then reconfigured with postconf (in its own runtime dir, never /etc) to relay
bench.local to P2 (transport_maps -> smtp:[localhost]:<P2 smtp port>) with
smtp_tls_security_level=verify against the shared CA and P1's client certificate; P2 requires a
client certificate from that CA on its SMTP listener. P2 delivers to its Dovecot (LMTP, maildir).
Postfix keeps its defaults otherwise: up to 20 parallel connections per destination
(--postfix-concurrency changes that), connection caching when there is a backlog, except that
Postfix does not cache TLS connections unless smtp_tls_connection_reuse = yes. So the Postfix
pair runs as two systems (--postfix-modes): "postfix", the bench peers' settings (a new TLS
connection per message, up to 20 at once), and "postfix+reuse", the same with
smtp_tls_connection_reuse = yes (through tlsproxy), the counterpart of msante's reused connection.
P1 is reloaded when the rotation switches between them.

Two variants, each run --runs times per system, alternating msante, postfix, postfix+reuse,
msante, ...:

  e2e    N messages of 10 KB submitted at A (resp. P1) with mailbench `smtp` (STARTTLS;
         XOAUTH2 as jean.dupont@msante.test, resp. AUTH PLAIN as user9@bench.local; -c 10,
         --per-conn 100, 4 recipients round-robin). Relay msgs/s = N / (time from the start of
         the submission to the moment the last message is stored at B, resp. in P2's maildirs).
         The submission-only rate (mailbench's msgs/s) is shown for reference.
  drain  The receiver is stopped, the N messages are submitted and queued at the sender; then
         the receiver is started again and the sender's queue drains into it (msante: A is
         restarted after the fill so that its queue starts from a clean pass instead of being
         mid-way through recording 421s; Postfix: `postqueue -f` on P1). Relay msgs/s =
         (N - 1) / (first stored -> last stored), the pure relay rate with connection reuse.

"Stored" is read from the receiver's own records: B's `deliveries` rows with status
'delivered' (their timestamp is when B began storing the message), P2's maildir files (ctime:
their rename into new/). For msante it also matches every message at A and B by Message-ID and splits the time between
two consecutive messages into B store -> A commit (B's transaction and fsync, the 250, the
thread hop back, A's commit starting) and A commit -> next B store (A's commit and audit row,
the body read, the thread hop, MAIL/RCPT/DATA round trips, B's checks), and counts stalls
(gaps > 250 ms: reconnections, retries). Figures are printed, never asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from procs import Fatal, free_port, port_open, run_bench, tail, tree_cpu

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))

GP, GP_RPPS = "jean.dupont@msante.test", "10001045367"
MSANTE_RCPTS = ("jean.dupont@autre-operateur.test,claire.leroy@autre-operateur.test,"
                "sophie.hoarau@autre-operateur.test,marie.grondin@autre-operateur.test")
PEER_USER, PEER_PASSWORD = "user9@bench.local", "benchpass"
PEER_RCPTS = "user1@bench.local,user2@bench.local,user3@bench.local,user4@bench.local"
POLL = 0.1  # seconds between two looks at the receiver (end times come from its own records)
STALL_GAP = 0.25  # seconds between two consecutive stored messages that count as a stall
MSANTE_MAX_MAIL_PER_SESSION = 200  # aiosmtpd's call limit on msante's listeners



def wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not port_open(port):
        if time.monotonic() > deadline:
            raise Fatal(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")
        time.sleep(0.05)



def epoch(value: str) -> float:
    """A timestamp as msante stores it in SQLite (naive UTC text) -> seconds since the epoch."""
    return datetime.fromisoformat(value).replace(tzinfo=timezone.utc).timestamp()


def fsync_probe(directory: Path, count: int = 50) -> float:
    """Median ms of a 4 KB write + fsync in `directory` (the disk msante's SQLite and Postfix use)."""
    path = directory / "fsync-probe"
    samples = []
    with open(path, "wb") as fh:
        for _ in range(count):
            started = time.perf_counter()
            fh.write(b"x" * 4096)
            fh.flush()
            os.fsync(fh.fileno())
            samples.append(time.perf_counter() - started)
    path.unlink()
    return 1000 * statistics.median(samples)


def mailbench_run(cmd: list[str], json_out: Path, poll=None, expected: int = 0, stall: float = 120.0) -> dict:  # noqa: ANN001
    """Start mailbench; with `poll`, also wait until `expected` messages (or as many as it got
    accepted) are stored at the receiver. Returns its run record, with t0 = the epoch just before
    mailbench started and `stored` = the last count seen."""
    before = json_out.stat().st_size if json_out.exists() else 0
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    record, target, last_count, last_progress = None, expected, -1, time.monotonic()
    try:
        while True:
            count = poll() if poll else 0
            if count != last_count:
                last_count, last_progress = count, time.monotonic()
            if record is None and proc.poll() is not None:
                out, err = proc.communicate()
                if proc.returncode != 0:
                    raise Fatal(f"mailbench exited {proc.returncode}:\n{out[-2000:]}{err[-2000:]}")
                with open(json_out) as fh:
                    fh.seek(before)
                    record = json.loads(fh.read().strip().splitlines()[-1])["runs"][0]
                target = record["accepted"]
                last_progress = time.monotonic()
                if err.strip():
                    record["stderr"] = err.strip()[-500:]
                if poll is None:
                    break
            if record is not None and count >= target:
                break
            if record is not None and time.monotonic() - last_progress > stall:
                record["incomplete"] = f"{count} of {target} stored; no progress for {stall:.0f} s"
                break
            time.sleep(POLL)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    record["t0"] = t0
    record["stored"] = last_count
    return record


def wait_count(poll, target: int, stall: float) -> str | None:  # noqa: ANN001
    """Poll until `target`; None, or why it gave up (no progress for `stall` seconds)."""
    last, progress = -1, time.monotonic()
    while (count := poll()) < target:
        if count != last:
            last, progress = count, time.monotonic()
        if time.monotonic() - progress > stall:
            return f"{count} of {target} stored; no progress for {stall:.0f} s"
        time.sleep(POLL)
    return None


def gaps_summary(times: list[float]) -> dict:
    times = sorted(times)
    gaps = [b - a for a, b in zip(times, times[1:])]
    stalls = [g for g in gaps if g > STALL_GAP]
    return {"gap_p50_ms": 1000 * statistics.median(gaps) if gaps else float("nan"),
            "stalls": len(stalls), "stall_s": sum(stalls), "span_s": times[-1] - times[0] if times else 0.0}


# --- msante -----------------------------------------------------------------------------------

def _operator_class():  # tests.operators imports pytest through tests.conftest: only when needed
    from tests.operators import Operator

    class LoggedOperator(Operator):
        """Operator whose `serve` writes to a log file, and whose stop never asserts."""

        def start(self) -> None:
            """`msante serve`, logging to <root>/<name>.log. Other people edit this tree while it
            runs: a start that fails is tried twice more, and said so."""
            for attempt in range(3):
                try:
                    return self._start()
                except Fatal as exc:
                    if attempt == 2:
                        raise
                    print(f"    note: msante {self.name} failed to start, trying again in 3 s: "
                          f"{str(exc).splitlines()[-1][:200]}", flush=True)
                    self._log.close()
                    time.sleep(3)

        def _start(self) -> None:
            self.log_path = self.data_dir.parent / f"{self.name}.log"
            self._log = open(self.log_path, "ab")
            self.process = subprocess.Popen([sys.executable, "-m", "msante", "serve"], env=self.env,
                                            stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO)
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise Fatal(f"{self.name} exited with {self.process.returncode}:\n{tail(self.log_path)}")
                if port_open(self.ports["smtp"]) and port_open(self.ports["submission"]):
                    return
                time.sleep(0.05)
            raise Fatal(f"{self.name} did not start:\n{tail(self.log_path)}")

        def stop(self) -> int | None:
            if self.process is None:
                return None
            code = self.process.poll()
            if code is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    code = self.process.wait(120)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    code = self.process.wait()
            self.process = None
            self._log.close()
            return code

        def log_findings(self) -> dict[str, int]:
            """Warning/error lines of every run of this operator, counted by text (time, ports blanked)."""
            found: dict[str, int] = {}
            for line in self.log_path.read_text(errors="replace").splitlines():
                if any(w in line for w in (" WARNING ", " ERROR ", " CRITICAL ", "Traceback")):
                    key = re.sub(r"\b\d{4,5}\b", "<n>", re.sub(r"^[\d-]+ [\d:,]+ ", "", line))
                    found[key] = found.get(key, 0) + 1
            return found

    return LoggedOperator


class MsantePair:
    name = "msante"

    def __init__(self, root: Path, args: argparse.Namespace) -> None:
        operator = _operator_class()
        root.mkdir()
        self.a = operator(root, "a", "msante.test")
        self.b = operator(root, "b", "autre-operateur.test", ca_from=self.a, routes={"msante.test": self.a})
        self.a.set_routes({"autre-operateur.test": self.b})
        self.args = args
        self.token_file = root / "token"
        self.token_file.touch(mode=0o600)
        self.renew_token()
        self.json_out = root / "mailbench.jsonl"

    def renew_token(self) -> None:
        self.token_file.write_text(self.a.cli("token", "issue", "--rpps", GP_RPPS, "--ttl", "3600").strip())
        self.token_issued = time.monotonic()

    def start(self) -> None:
        self.a.start()
        self.b.start()

    def stop(self) -> list[str]:
        notes = []
        for op in (self.a, self.b):
            if getattr(op, "_log", None) is None:
                continue
            code = op.stop()
            if code is not None:
                findings = op.log_findings()
                notes.append(f"msante {op.name} ({op.domain}) exited {code}; its log had {sum(findings.values())} "
                             f"warning/error line(s)" + "".join(f"\n    {n:>5} x {text[:220]}" for text, n in
                                                                sorted(findings.items(), key=lambda kv: -kv[1])[:8]))
        return notes

    def describe(self) -> str:
        return (f"A msante.test submission 127.0.0.1:{self.a.ports['submission']} -> relay listener of "
                f"B autre-operateur.test 127.0.0.1:{self.b.ports['smtp']} (mutual TLS, one dev CA; "
                f"SQLite in {self.a.data_dir.parent})")

    def mailbench(self, mailbench: Path, n: int) -> list[str]:
        return [sys.executable, str(mailbench), "smtp", "--port", str(self.a.ports["submission"]), "--starttls",
                "--cafile", str(self.a.data_dir / "pki" / "ca.crt"), "--tls-server-name", "localhost",
                "--auth", "xoauth2", "--user", GP, "--token-cmd", f"cat {shlex.quote(str(self.token_file))}",
                "--token-cache", "3000", "--mail-from", GP, "-c", str(self.args.concurrency), "-n", str(n),
                "--per-conn", str(self.args.per_conn), "--size", "10k", "--rcpt", MSANTE_RCPTS,
                "--runs", "1", "--pause", "0", "--json-out", str(self.json_out)]

    def warm_up(self) -> None:
        """One message A -> B before measuring: checks the path, warms both processes."""
        base = self._last_id(self.b)
        self.a.send(GP, GP_RPPS, ["claire.leroy@autre-operateur.test"], "Essai de relais")
        deadline = time.monotonic() + 30
        while self._delivered(base) < 1:
            if time.monotonic() > deadline:
                raise Fatal("msante warm-up: A -> B did not arrive within 30 s:\n"
                            + str(self.a.query("SELECT status, last_error FROM deliveries ORDER BY id DESC LIMIT 3")))
            time.sleep(0.1)

    @staticmethod
    def _last_id(op, table: str = "deliveries") -> int:  # noqa: ANN001
        return op.query(f"SELECT coalesce(max(id), 0) FROM {table}")[0][0]

    def _delivered(self, base: int) -> int:
        return self.b.query("SELECT count(*) FROM deliveries WHERE id > ? AND status = 'delivered'", base)[0][0]

    def _bases(self) -> dict:
        return {"a": self._last_id(self.a), "b": self._last_id(self.b), "audit": self._last_id(self.a, "audit")}

    def _pids(self, op) -> list[int]:  # noqa: ANN001
        return [op.process.pid] if op.process else []

    def run(self, variant: str, mailbench: Path, n: int) -> dict:
        if time.monotonic() - self.token_issued > 1800:
            self.renew_token()
        bases = self._bases()
        cmd = self.mailbench(mailbench, n)
        if variant == "e2e":
            cpu = (tree_cpu(self._pids(self.a)), tree_cpu(self._pids(self.b)))
            r = mailbench_run(cmd, self.json_out, lambda: self._delivered(bases["b"]), n, self.args.stall)
            window = time.time() - r["t0"]
            r["cpu"] = {"A": 100 * (tree_cpu(self._pids(self.a)) - cpu[0]) / window,
                        "B": 100 * (tree_cpu(self._pids(self.b)) - cpu[1]) / window}
        else:
            self.b.stop()
            r = mailbench_run(cmd, self.json_out)  # the fill
            queued = lambda: self.a.query(  # noqa: E731
                "SELECT count(*) FROM deliveries WHERE id > ? AND status = 'queued'", bases["a"])[0][0]
            if why := wait_count(queued, r["accepted"], self.args.stall):
                raise Fatal(f"msante drain: A did not queue the fill: {why}")
            self.a.stop()  # see the module docstring: the drain starts from a fresh queue pass
            due = self.a.query("SELECT max(next_attempt_at) FROM deliveries WHERE status = 'queued'")[0][0]
            if due:  # every row due when A comes back, so that its first pass takes them all
                time.sleep(max(0.0, epoch(due) - time.time() + 0.1))
            bases["audit"] = self._last_id(self.a, "audit")  # the fill's refused connections are expected
            self.b.start()
            cpu_b = tree_cpu(self._pids(self.b))
            r["t_restart"] = time.time()
            self.a.start()
            cpu_a = tree_cpu(self._pids(self.a))
            if why := wait_count(lambda: self._delivered(bases["b"]), r["accepted"], self.args.stall):
                r["incomplete"] = why
            window = time.time() - r["t_restart"]
            r["stored"] = self._delivered(bases["b"])
            r["cpu"] = {"A": 100 * (tree_cpu(self._pids(self.a)) - cpu_a) / window,
                        "B": 100 * (tree_cpu(self._pids(self.b)) - cpu_b) / window}
        self._analyse(r, bases)
        return r

    def _analyse(self, r: dict, bases: dict) -> None:
        b_rows = self.b.query("SELECT d.updated_at, e.message_id FROM deliveries d JOIN envelopes e ON "
                              "e.id = d.envelope_id WHERE d.id > ? AND d.status = 'delivered' ORDER BY d.id",
                              bases["b"])
        a_rows = self.a.query("SELECT d.updated_at, e.message_id, d.attempts, d.status FROM deliveries d JOIN "
                              "envelopes e ON e.id = d.envelope_id WHERE d.id > ?", bases["a"])
        stored = sorted((epoch(t), mid) for t, mid in b_rows)
        r["stored_times"] = [t for t, _ in stored]
        r.update(gaps_summary(r["stored_times"]))
        relayed_at = {mid: epoch(t) for t, mid, _, status in a_rows if status == "relayed"}
        r["attempts_extra"] = sum(max(0, attempts - 1) for _, _, attempts, status in a_rows if status == "relayed")
        r["retried_msgs"] = sum(1 for _, _, attempts, status in a_rows if status == "relayed" and attempts > 1)
        r["not_relayed"] = sum(1 for *_, status in a_rows if status != "relayed")
        to_a, to_b = [], []
        for (t_b, mid), (t_next, _) in zip(stored, stored[1:]):
            t_a = relayed_at.get(mid)
            if t_a is None:
                continue
            gap_ab, gap_bb = t_a - t_b, t_next - t_a
            if 0 <= gap_ab < STALL_GAP and 0 <= gap_bb < STALL_GAP:  # steady state only
                to_a.append(gap_ab)
                to_b.append(gap_bb)
        r["b_store_to_a_commit_ms"] = 1000 * statistics.median(to_a) if to_a else float("nan")
        r["a_commit_to_next_b_ms"] = 1000 * statistics.median(to_b) if to_b else float("nan")
        failures = self.a.query("SELECT detail FROM audit WHERE id > ? AND action = 'relay.send' AND outcome = "
                                "'failed'", bases["audit"])
        answers: dict[str, int] = {}
        for (detail,) in failures:
            answer = json.loads(detail).get("answer", "?") if detail else "?"
            answer = re.sub(r"\d+\.\d+\.\d+\.\d+:\d+", "<peer>", answer)[:90]
            answers[answer] = answers.get(answer, 0) + 1
        r["failed_attempts"] = answers


# --- Postfix ----------------------------------------------------------------------------------

class PostfixPair:
    name = "postfix"

    def __init__(self, root: Path, peers: Path, args: argparse.Namespace) -> None:
        self.peers = peers
        self.args = args
        self.runs = {"p1": root / "pf1", "p2": root / "pf2"}
        self.ports = {k: {p: free_port() for p in ("SMTP_PORT", "SUBMIT_PORT", "SUBMITS_PORT", "IMAP_PORT", "IMAPS_PORT")}
                      for k in self.runs}
        self.started: set[str] = set()
        self.json_out = root / "mailbench-postfix.jsonl"
        self.banner = ""

    def env(self, which: str) -> dict:
        return {**os.environ, "MAILBENCH_RUN": str(self.runs[which]), **{k: str(v) for k, v in self.ports[which].items()}}

    def etc(self, which: str) -> str:
        return str(self.runs[which] / "postfix" / "etc")

    def _sh(self, *cmd: str, which: str | None = None, check: bool = True, timeout: float = 300) -> str:
        done = subprocess.run(list(cmd), env=self.env(which) if which else None, capture_output=True, text=True,
                              timeout=timeout)
        if check and done.returncode != 0:
            raise Fatal(f"{' '.join(cmd)} exited {done.returncode}:\n{(done.stdout + done.stderr)[-2000:]}")
        return done.stdout

    def start(self) -> None:
        if os.geteuid() != 0:
            raise Fatal("peers/start.sh needs root (it runs Postfix/Dovecot as their users)")
        self.started.add("p1")
        out = self._sh(str(self.peers / "start.sh"), "--fresh", which="p1", timeout=900)
        self.banner = "\n".join(line for line in out.splitlines() if line.startswith(("postfix ", "dovecot ")))
        # one CA for both, as msante's operators share one dev CA: start.sh keeps a valid tls/ it finds
        self.runs["p2"].mkdir()
        os.chmod(self.runs["p2"], 0o755)
        shutil.copytree(self.runs["p1"] / "tls", self.runs["p2"] / "tls")
        self.started.add("p2")
        self._sh(str(self.peers / "start.sh"), which="p2", timeout=900)
        tls = self.runs["p1"] / "tls"
        p2_smtp = self.ports["p2"]["SMTP_PORT"]
        settings = ["virtual_mailbox_domains =", "relay_domains = bench.local",
                    f"transport_maps = inline:{{ bench.local=smtp:[localhost]:{p2_smtp} }}",
                    "smtp_tls_security_level = verify", f"smtp_tls_CAfile = {tls / 'ca.crt'}",
                    f"smtp_tls_chain_files = {tls / 'client.key'}, {tls / 'client.crt'}", "smtp_tls_loglevel = 1"]
        if self.args.postfix_concurrency:
            settings.append(f"smtp_destination_concurrency_limit = {self.args.postfix_concurrency}")
        self._sh("postconf", "-c", self.etc("p1"), "-e", *settings)
        # smtp_tls_connection_reuse (mode "reuse") hands TLS to tlsproxy, absent from the bench master.cf
        self._sh("postconf", "-c", self.etc("p1"), "-M", "tlsproxy/unix=tlsproxy unix - - n - 0 tlsproxy")
        self.reuse = False
        self._sh("postconf", "-c", self.etc("p2"), "-e", f"smtpd_tls_CAfile = {self.runs['p2'] / 'tls' / 'ca.crt'}")
        self._sh("postconf", "-c", self.etc("p2"), "-P", f"127.0.0.1:{p2_smtp}/inet/smtpd_tls_security_level=encrypt",
                 f"127.0.0.1:{p2_smtp}/inet/smtpd_tls_req_ccert=yes")
        for which in ("p1", "p2"):
            self._sh("postfix", "-c", self.etc(which), "check")
            self._sh("postfix", "-c", self.etc(which), "reload")
        time.sleep(1.5)  # reload is asynchronous
        wait_port(self.ports["p1"]["SUBMIT_PORT"])
        wait_port(p2_smtp)

    def set_reuse(self, reuse: bool) -> None:
        """Postfix does not cache TLS connections unless smtp_tls_connection_reuse = yes (3.4+)."""
        if reuse != self.reuse:
            self._sh("postconf", "-c", self.etc("p1"), "-e", f"smtp_tls_connection_reuse = {'yes' if reuse else 'no'}")
            self._sh("postfix", "-c", self.etc("p1"), "reload")
            time.sleep(1.5)
            wait_port(self.ports["p1"]["SUBMIT_PORT"])
            self.reuse = reuse

    def stop(self) -> list[str]:
        for which in sorted(self.started):
            self._sh(str(self.peers / "stop.sh"), which=which, check=False, timeout=120)
        self.started.clear()
        return []

    def describe(self) -> str:
        p1, p2 = self.ports["p1"], self.ports["p2"]
        return (f"P1 submission 127.0.0.1:{p1['SUBMIT_PORT']} -> P2 smtp 127.0.0.1:{p2['SMTP_PORT']} "
                f"(smtp_tls_security_level=verify, client certificate required by P2, one CA; "
                f"destination concurrency {self.args.postfix_concurrency or 'default (20)'}) -> P2's Dovecot "
                f"LMTP -> maildir; runtime dirs {self.runs['p1']} and {self.runs['p2']}")

    def mailbench(self, mailbench: Path, n: int) -> list[str]:
        return [sys.executable, str(mailbench), "smtp", "--port", str(self.ports["p1"]["SUBMIT_PORT"]), "--starttls",
                "--cafile", str(self.runs["p1"] / "tls" / "ca.crt"), "--auth", "plain", "--user", PEER_USER,
                "--password", PEER_PASSWORD, "--mail-from", PEER_USER, "-c", str(self.args.concurrency),
                "-n", str(n), "--per-conn", str(self.args.per_conn), "--size", "10k", "--rcpt", PEER_RCPTS,
                "--runs", "1", "--pause", "0", "--json-out", str(self.json_out)]

    def _maildirs(self) -> list[Path]:
        return [self.runs["p2"] / "mail" / "bench.local" / rc.split("@")[0] / "Maildir" / sub
                for rc in PEER_RCPTS.split(",") for sub in ("new", "cur")]

    def _names(self) -> set[str]:
        names = set()
        for d in self._maildirs():
            try:
                names.update(f"{d}/{e.name}" for e in os.scandir(d))
            except FileNotFoundError:
                pass
        return names

    def _queue(self, which: str) -> dict[str, int]:
        out = self._sh("postqueue", "-c", self.etc(which), "-j", check=False)
        queues: dict[str, int] = {}
        for line in out.splitlines():
            if line.strip():
                q = json.loads(line).get("queue_name", "?")
                queues[q] = queues.get(q, 0) + 1
        return queues

    def _wait_empty(self, which: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while self._queue(which):
            if time.monotonic() > deadline:
                raise Fatal(f"postfix {which}: queue not empty after {timeout:.0f} s: {self._queue(which)}")
            time.sleep(0.2)

    def _log_offset(self) -> int:
        return (self.runs["p1"] / "log" / "postfix.log").stat().st_size

    def _connections(self, offset: int) -> tuple[int, int]:
        with open(self.runs["p1"] / "log" / "postfix.log", errors="replace") as fh:
            fh.seek(offset)
            text = fh.read()
        sent = [line for line in text.splitlines() if "postfix/smtp[" in line and "status=sent" in line]
        return sum(1 for line in sent if "conn_use=" not in line), len(sent)  # conn_use=N: N-th on a connection

    def _pids(self, which: str) -> list[int]:
        pids = []
        for path in (self.runs[which] / "postfix" / "queue" / "pid" / "master.pid",
                     self.runs[which] / "dovecot" / "run" / "master.pid"):
            try:
                pids.append(int(path.read_text().strip()))
            except (OSError, ValueError):
                pass
        return pids

    def warm_up(self) -> None:
        self.set_reuse(True)  # both paths, reused or not, once before measuring
        self._warm_up()
        self.set_reuse(False)
        self._warm_up()

    def _warm_up(self) -> None:
        before = len(self._names())
        self._sh(sys.executable, str(self.args.mailbench), "smtp", *self.mailbench(self.args.mailbench, 1)[3:-2],
                 "--json-out", "/dev/null", timeout=60)
        deadline = time.monotonic() + 30
        while len(self._names()) <= before:
            if time.monotonic() > deadline:
                raise Fatal("Postfix warm-up: P1 -> P2 did not arrive within 30 s:\n"
                            + tail(self.runs["p1"] / "log" / "postfix.log", 10))
            time.sleep(0.1)

    def run(self, variant: str, mailbench: Path, n: int) -> dict:
        for which in ("p1", "p2"):
            self._wait_empty(which)
        for d in self._maildirs():  # the previous runs' files: keeps each look at the maildirs short
            for entry in os.scandir(d) if d.exists() else ():
                os.unlink(entry.path)
        before = self._names()
        poll = lambda: len(self._names() - before)  # noqa: E731
        offset = self._log_offset()
        cmd = self.mailbench(mailbench, n)
        if variant == "e2e":
            cpu = (tree_cpu(self._pids("p1")), tree_cpu(self._pids("p2")))
            r = mailbench_run(cmd, self.json_out, poll, n, self.args.stall)
            window = time.time() - r["t0"]
        else:
            self._sh("postfix", "-c", self.etc("p2"), "stop")
            r = mailbench_run(cmd, self.json_out)  # the fill
            deadline = time.monotonic() + self.args.stall  # all of it queued, deferred, none in flight
            while (q := self._queue("p1")).get("deferred", 0) < r["accepted"] or set(q) - {"deferred"}:
                if time.monotonic() > deadline:
                    raise Fatal(f"postfix drain: P1's queue after the fill: {q}")
                time.sleep(0.2)
            self._sh("postfix", "-c", self.etc("p2"), "start")
            wait_port(self.ports["p2"]["SMTP_PORT"])
            cpu = (tree_cpu(self._pids("p1")), tree_cpu(self._pids("p2")))
            r["t_restart"] = time.time()
            self._sh("postqueue", "-c", self.etc("p1"), "-f")
            if why := wait_count(poll, r["accepted"], self.args.stall):
                r["incomplete"] = why
            r["stored"] = poll()
            window = time.time() - r["t_restart"]
        r["cpu"] = {"P1": 100 * (tree_cpu(self._pids("p1")) - cpu[0]) / window,
                    "P2": 100 * (tree_cpu(self._pids("p2")) - cpu[1]) / window}
        times = []
        for name in self._names() - before:
            try:
                times.append(os.stat(name).st_ctime)  # the rename into new/: delivered
            except FileNotFoundError:  # moved new/ -> cur/ meanwhile: nobody reads them
                pass
        r["stored_times"] = sorted(times)
        r.update(gaps_summary(r["stored_times"]))
        r["connections"], r["sent_lines"] = self._connections(offset)
        return r


class PostfixMode:
    """One configuration of the Postfix pair, as a system of its own in the rotation."""

    def __init__(self, pair: PostfixPair, mode: str) -> None:
        self.pair, self.reuse = pair, mode == "reuse"
        self.name = "postfix" + ("+reuse" if self.reuse else "")

    def mailbench(self, mailbench: Path, n: int) -> list[str]:
        return self.pair.mailbench(mailbench, n)

    def run(self, variant: str, mailbench: Path, n: int) -> dict:
        self.pair.set_reuse(self.reuse)
        return self.pair.run(variant, mailbench, n)


# --- the sitting ------------------------------------------------------------------------------

def relay_rate(r: dict, variant: str) -> float:
    times = r["stored_times"]
    if not times or r.get("incomplete"):
        return float("nan")
    if variant == "e2e":
        return len(times) / (times[-1] - r["t0"])
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else float("nan")


def describe_run(system: str, variant: str, r: dict) -> str:
    rate = relay_rate(r, variant)
    times = r["stored_times"]
    lines = []
    if variant == "e2e":
        lag = times[-1] - (r["t0"] + r["wall_s"]) if times else float("nan")
        lines.append(f"relay {rate:7.1f} msgs/s  ({len(times)} stored, last {times[-1] - r['t0'] if times else 0:.1f} s "
                     f"after the first submission, {lag:.1f} s after the last 250)  submission {r['msgs_per_s']:.1f} "
                     f"msgs/s ({r['accepted']} accepted, {r['errors']} errors, {r['wall_s']:.1f} s)")
    else:
        first = times[0] - r["t_restart"] if times else float("nan")
        lines.append(f"relay {rate:7.1f} msgs/s  ({len(times)} stored in {r['span_s']:.1f} s; first stored "
                     f"{first:.1f} s after the {'sender' if system == 'msante' else 'receiver'} restart)  "
                     f"fill: submission {r['msgs_per_s']:.1f} msgs/s with the receiver down "
                     f"({r['accepted']} accepted, {r['errors']} errors)")
    cpu = "  ".join(f"{k} {v:.0f} %" for k, v in r["cpu"].items())
    detail = (f"gap between stored messages p50 {r['gap_p50_ms']:.1f} ms, {r['stalls']} stall(s) > "
              f"{1000 * STALL_GAP:.0f} ms = {r['stall_s']:.1f} s; CPU (share of one core) {cpu}")
    if system == "msante":
        detail += (f"\n      per message: B store -> A commit {r['b_store_to_a_commit_ms']:.1f} ms, "
                   f"A commit -> next B store {r['a_commit_to_next_b_ms']:.1f} ms; "
                   f"{r['retried_msgs']} message(s) needed a retry ({r['attempts_extra']} extra attempts)")
        for answer, count in sorted(r["failed_attempts"].items(), key=lambda kv: -kv[1])[:3]:
            detail += f"\n      {count} failed attempt(s): {answer}"
    else:
        detail += f"\n      {r['connections']} connection(s) P1 -> P2 for {r['sent_lines']} deliveries"
    lines.append(detail)
    if r.get("incomplete"):
        lines.append(f"INCOMPLETE: {r['incomplete']}")
    if r.get("first_errors"):
        lines.append("first errors: " + " | ".join(r["first_errors"]))
    return "\n      ".join(lines)


def med(values: list[float]) -> tuple[float, float, float]:
    values = [v for v in values if v == v]
    if not values:
        return float("nan"), float("nan"), float("nan")
    return statistics.median(values), min(values), max(values)


def bench(args: argparse.Namespace, workdir: Path) -> int:
    t_start = time.monotonic()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    modes = [m.strip() for m in args.postfix_modes.split(",") if m.strip()]
    for m in modes:
        if m not in ("default", "reuse"):
            raise Fatal(f"--postfix-modes: {m!r} is not default or reuse")
    for v in variants:
        if v not in ("e2e", "drain"):
            raise Fatal(f"--variants: {v!r} is not e2e or drain")
    if args.per_conn == 0 or args.per_conn > MSANTE_MAX_MAIL_PER_SESSION - 10:
        raise Fatal(f"--per-conn must be 1..{MSANTE_MAX_MAIL_PER_SESSION - 10}: msante's listeners take "
                    f"{MSANTE_MAX_MAIL_PER_SESSION} MAIL commands per session")
    print(f"fsync of 4 KB in {workdir}: {fsync_probe(workdir):.2f} ms median; {os.cpu_count()} CPUs; "
          f"load {' '.join(open('/proc/loadavg').read().split()[:3])}")
    systems, to_stop = [], []
    started = time.monotonic()
    try:
        ms = MsantePair(workdir / "msante", args)
        to_stop.append(ms)
        ms.start()
        ms.warm_up()
        systems.append(ms)
        print(f"msante: two operators up in {time.monotonic() - started:.1f} s: {ms.describe()}")
        if args.compare and modes:
            pf = PostfixPair(workdir, args.mailbench.parent / "peers", args)
            to_stop.append(pf)
            try:
                started = time.monotonic()
                pf.start()
                pf.warm_up()
                systems += [PostfixMode(pf, m) for m in modes]
                print(f"postfix: two instances up in {time.monotonic() - started:.1f} s: {pf.describe()}")
                print("         " + pf.banner.replace("\n", "\n         "))
            except (Fatal, subprocess.TimeoutExpired, OSError) as exc:
                print(f"NO POSTFIX COMPARISON: two Postfix instances could not be set up: {exc}")
        print("mailbench commands (per run):")
        for s in systems:
            print(f"  {s.name}: " + " ".join(shlex.quote(w) for w in s.mailbench(args.mailbench, args.messages)))
        print(f"order: {', '.join(s.name for s in systems)} alternating, variants {', '.join(variants)}, "
              f"{args.runs} run(s) each, N={args.messages} x 10 KB, -c {args.concurrency}, --per-conn {args.per_conn}")

        results: dict[tuple[str, str], list[dict]] = {}
        for i in range(1, args.runs + 1):
            for variant in variants:
                for s in systems:
                    r = s.run(variant, args.mailbench, args.messages)
                    results.setdefault((s.name, variant), []).append(r)
                    print(f"  run {i} {variant:<5} {s.name:<14}{describe_run(s.name, variant, r)}", flush=True)

        print(f"\n== Summary (one sitting, {time.strftime('%Y-%m-%d %H:%M:%S')}, N={args.messages} x 10 KB, "
              f"{args.runs} run(s) per system and variant, load {' '.join(open('/proc/loadavg').read().split()[:3])})")
        print(f"{'system':<14} {'variant':<7} {'relay msgs/s median [min..max]':<32} {'submission msgs/s':<26} "
              f"{'stalls':>6} {'CPU snd/rcv %':>13}")
        medians = {}
        for variant in variants:
            for s in systems:
                runs = results[(s.name, variant)]
                rate = med([relay_rate(r, variant) for r in runs])
                sub = med([r["msgs_per_s"] for r in runs])
                medians[(s.name, variant)] = rate[0]
                cpu = [statistics.median([list(r["cpu"].values())[k] for r in runs]) for k in (0, 1)]
                print(f"{s.name:<14} {variant:<7} {f'{rate[0]:.1f} [{rate[1]:.1f}..{rate[2]:.1f}]':<32} "
                      f"{f'{sub[0]:.1f} [{sub[1]:.1f}..{sub[2]:.1f}]' + ('*' if variant == 'drain' else ''):<26} "
                      f"{statistics.median([r['stalls'] for r in runs]):>6.0f} {cpu[0]:>6.0f}/{cpu[1]:<6.0f}")
        for s in systems[1:]:
            for variant in variants:
                a, b = medians[("msante", variant)], medians[(s.name, variant)]
                print(f"ratio msante/{s.name}, relay msgs/s ({variant}): x{a / b:.3f}" if b else "")
        print("e2e: N / (first submission -> last stored at the receiver); drain: (N-1) / (first -> last stored) "
              "after the receiver comes back;\n* submission with the receiver down (the sender's queue failing "
              "meanwhile), not a reference figure; CPU: sender/receiver process trees, share of one core")
    finally:
        for s in to_stop:
            for note in s.stop():
                print(note)
        print(f"total time {time.monotonic() - t_start:.0f} s")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--messages", type=int, default=2000, help="10 KB messages per run (default 2000)")
    parser.add_argument("--runs", type=int, default=3, help="runs per system and variant (default 3)")
    parser.add_argument("-c", "--concurrency", type=int, default=10, help="concurrent submission sessions (default 10)")
    parser.add_argument("--per-conn", type=int, default=100, help="messages per submission session (default 100)")
    parser.add_argument("--variants", default="e2e,drain", help="comma list of e2e, drain (default both)")
    parser.add_argument("--postfix-concurrency", type=int, default=0,
                        help="P1's smtp_destination_concurrency_limit (default: Postfix's own, 20); "
                             "1 = one connection like msante's queue")
    parser.add_argument("--postfix-modes", default="default,reuse",
                        help="comma list: default (the bench peers' settings: TLS connections are not reused, "
                             "Postfix's default) and/or reuse (smtp_tls_connection_reuse = yes, through tlsproxy); "
                             "each is a system of its own in the rotation (default both)")
    parser.add_argument("--no-compare", dest="compare", action="store_false", help="msante only")
    parser.add_argument("--stall", type=float, default=120.0,
                        help="give a run up after this many seconds without a newly stored message (default 120)")
    parser.add_argument("--mailbench", type=Path, default=REPO.parent / "shared" / "bench" / "mailbench.py")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (data, logs)")
    args = parser.parse_args()
    args.mailbench = args.mailbench.resolve()
    if not args.mailbench.exists():
        parser.error(f"mailbench not found at {args.mailbench}: give --mailbench PATH")

    return run_bench("bench/relay.py", bench, args, prefix="msante-relay-bench-")


if __name__ == "__main__":
    sys.exit(main())
