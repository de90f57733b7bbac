"""`msante serve --workers N`: N processes serving the same listeners, to use every core.

Each worker is a whole `msante serve` (its own event loop, pools, TLS contexts) binding every
listener with SO_REUSEPORT; the kernel spreads new connections over the workers' listening
sockets. That was chosen over one acceptor handing sockets to workers: nothing sits in the
data path or between a connection and its worker, no descriptor passing, and a worker's
listeners are plain ones (the same code as with one process). What SO_REUSEPORT costs: the
connections a worker had accepted but not yet taken when it dies are reset (clients retry),
and the spread is by hash of addresses, not by load. Linux lets only processes of the same
user join the port.

The workers share what nodes share: the PostgreSQL store and the Redis bus (docs/deployment.md);
SQLite is one process's store, so several workers are refused on it rather than left to
contend for its one writer. This process, the supervisor, migrates the schema once, starts the
workers, restarts one that dies (a crash must not leave a core idle until someone notices),
and on SIGTERM or SIGINT passes the signal on and waits for them all.
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import time

from config import Settings
from store import db

log = logging.getLogger("msante")

MAX_WORKERS = 64
RESTART_DELAY = 1.0  # s before a worker that died is started again
RESTART_BURST = 5  # restarts of one worker within RESTART_WINDOW after which the supervisor gives up
RESTART_WINDOW = 60.0


class WorkersRefused(Exception):
    """Several workers cannot run on this configuration; the message says why."""


def count(requested: int) -> int:
    """The number of workers: `requested`, or one per core this process may use when 0."""
    return requested or len(os.sched_getaffinity(0))


def check(settings: Settings, workers: int) -> None:
    if not 1 <= workers <= MAX_WORKERS:
        raise WorkersRefused(f"--workers must be between 1 and {MAX_WORKERS} (0: one per core), got {workers}")
    if workers == 1:
        return
    if not settings.database_url.startswith("postgresql"):
        raise WorkersRefused(f"{workers} workers need the store on PostgreSQL ([database] url): SQLite has one "
                             "writer, which the workers would queue behind; run one process on SQLite")
    if not settings.bus_url:
        raise WorkersRefused(f"{workers} workers need [bus] url (Redis): without it a session on one worker "
                             "would not hear of mail or messages handled by another")


def supervise(settings: Settings, workers: int, worker_command: list[str]) -> int:
    """Run `worker_command` + ["--worker", i] N times until SIGTERM/SIGINT; 0 when every worker
    stopped cleanly."""
    asyncio.run(_migrate(settings))
    stopping = False
    children: dict[int, int] = {}  # pid -> worker index
    restarts: dict[int, list[float]] = {i: [] for i in range(workers)}

    def start(index: int) -> None:
        process = subprocess.Popen([*worker_command, "--worker", str(index)], preexec_fn=_die_with_parent)
        children[process.pid] = index
        log.info("worker %d started (pid %d)", index, process.pid)

    def stop(signum: int, _frame) -> None:  # noqa: ANN001
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    failed = False
    try:
        for index in range(workers):
            start(index)
        while children:
            pid, status = os.wait()
            if pid not in children:
                continue
            index = children.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            if stopping:
                failed |= code != 0
                continue
            log.error("worker %d (pid %d) ended with %s: starting it again", index, pid,
                      f"signal {-code}" if code < 0 else f"status {code}")
            now = time.monotonic()
            restarts[index] = [t for t in restarts[index] if now - t < RESTART_WINDOW] + [now]
            if len(restarts[index]) > RESTART_BURST:
                log.error("worker %d died %d times in %.0f s: stopping every worker", index, RESTART_BURST,
                          RESTART_WINDOW)
                failed = True
                stop(signal.SIGTERM, None)
                continue
            time.sleep(RESTART_DELAY)
            if not stopping:
                start(index)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 1 if failed else 0


async def _migrate(settings: Settings) -> None:
    """Once, before the workers start: each would otherwise race the others through the
    migrations (they find the schema current and do nothing)."""
    engine = db.create_engine(settings.database_url)
    try:
        await db.upgrade(engine)
    finally:
        await engine.dispose()


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the supervisor dies, even by SIGKILL, so no
    orphaned worker keeps serving the port alone (Linux prctl PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1

