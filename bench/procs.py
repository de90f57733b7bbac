"""What the benchmark scripts share: ports, the servers' logs, CPU used by process trees.

The scripts run as `python bench/<name>.py` from the repository, so this module is found
beside them; the repository root is put on sys.path for `tests.operators` and friends.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.conftest import free_port  # noqa: E402 - below the ephemeral range, as the tests pick them

__all__ = ["CLOCK_TICK", "Fatal", "free_port", "port_open", "tail", "tree_cpu"]

CLOCK_TICK = os.sysconf("SC_CLK_TCK")


class Fatal(Exception):
    """The run cannot go on; the message says why."""


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def tree_cpu(roots: list[int]) -> float:
    """CPU seconds (user + system) used so far by the processes under `roots`, their children
    included: live ones directly, exited ones through their parent's cutime/cstime."""
    parent, times = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid = int(stat.parent.name)
        parent[pid] = int(fields[1])
        times[pid] = sum(int(f) for f in fields[11:15])
    total = 0
    for pid in times:
        p = pid
        while p and p not in roots:
            p = parent.get(p, 0)
        if p:
            total += times[pid]
    return total / CLOCK_TICK


def run_bench(script: str, bench: Callable, args, *, prefix: str) -> int:  # noqa: ANN001 - argparse.Namespace
    """Run `bench(args, workdir)` in a temporary directory under /tmp (world-readable: Postfix and
    Dovecot run as their own users below it), removed unless `args.keep`. SIGTERM stops like
    Ctrl-C, so servers and peers get stopped by the bench's own cleanup."""
    def terminate(signum, frame):  # noqa: ANN001
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(workdir, 0o755)
    try:
        return bench(args, workdir)
    except Fatal as exc:
        print(f"{script}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
