"""What the benchmark scripts share: ports, the servers' logs, CPU used by process trees.

The scripts run as `python bench/<name>.py` from the repository, so this module is found
beside them; the repository root is put on sys.path for `tests.operators` and friends.
"""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

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
