"""How many connections the listeners hold: from one client address, and all together.

Each connection holds a file descriptor and memory before its client has proved anything;
without a bound, one address could hold them all (a slowloris held 100 of 100 connections,
and once descriptors ran out TLS clients failed without a word). Connections are counted from
the moment TCP accepts them, before any TLS handshake, and refused ones are told so in their
protocol by the listener; the log says so at most once a minute per address and listener, so
a flood does not become a flood of log lines.
"""
from __future__ import annotations

import logging
import time
from collections import Counter

log = logging.getLogger("msante.admission")

LOG_EVERY = 60.0  # seconds between two log lines about refusals of one address on one listener


class Ticket:
    """One admitted connection; `release()` (any number of times) gives its place back."""

    def __init__(self, admission: "Admission", key: tuple[str, str]) -> None:
        self._admission = admission
        self._key: tuple[str, str] | None = key

    def release(self) -> None:
        if self._key is not None:
            self._admission._release(self._key)  # noqa: SLF001
            self._key = None


class Admission:
    """Shared by every listener of a server. `per_address` applies to each listener apart (a
    mail client holds IMAP and SMTP connections at once); `total` to all of them together,
    since descriptors are the process's."""

    def __init__(self, total: int, per_address: int, clock=time.monotonic) -> None:  # noqa: ANN001
        self.total = total
        self.per_address = per_address
        self._clock = clock
        self._open: Counter[tuple[str, str]] = Counter()
        self._count = 0
        self._refused: dict[tuple[str, str], tuple[float, int]] = {}  # last log line, refusals since

    @property
    def count(self) -> int:
        return self._count

    def admit(self, listener: str, address: str) -> Ticket | None:
        """A ticket, or None when the connection is to be refused (logged here)."""
        key = (listener, address)
        if self._count >= self.total:
            self._log_refusal(key, f"{self._count} connections open in all (limits.connections)")
            return None
        if self._open[key] >= self.per_address:
            self._log_refusal(key, f"{self._open[key]} open from this address (limits.connections_per_address)")
            return None
        self._open[key] += 1
        self._count += 1
        return Ticket(self, key)

    def _release(self, key: tuple[str, str]) -> None:
        self._count -= 1
        self._open[key] -= 1
        if self._open[key] <= 0:
            del self._open[key]

    def _log_refusal(self, key: tuple[str, str], why: str) -> None:
        now = self._clock()
        logged, since = self._refused.get(key, (float("-inf"), 0))
        if now - logged < LOG_EVERY:
            self._refused[key] = (logged, since + 1)
            return
        more = f" ({since} more refused since the last line)" if since else ""
        log.warning("%s: connection from %s refused: %s%s", key[0], key[1], why, more)
        self._refused = {k: v for k, v in self._refused.items() if now - v[0] < LOG_EVERY}  # bounded
        self._refused[key] = (now, 0)
