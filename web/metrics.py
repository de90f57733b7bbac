"""The series msante exports on /metrics, defined once with prometheus_client, and their rendering.

prometheus_client is the ecosystem's standard: operators' alert rules and dashboards expect its
conventions (`_total` counters, `process_*` series), and it runs several worker processes
behind one scrape (PROMETHEUS_MULTIPROC_DIR: each process writes its counters to files there,
the scraped process sums them). Counters live at module level, as the library intends, so
every front-end increments the same objects. Series that depend on the store (queue, directory)
are read from it at scrape time, so they agree across processes and nodes without being summed.

Labels are bounded: listener names, commands we know, reply codes we send, outcomes; never an
address, a user name or a client-chosen string.
"""
from __future__ import annotations

import asyncio
import os
from typing import Awaitable, Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import REGISTRY

# What generate_latest writes. (The library's CONTENT_TYPE_LATEST names version 1.0.0 in 0.26, a
# format for UTF-8 metric names that this text is not.)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
disable_created_metrics()  # `_created` series double every counter and no alert reads them

HTTP_REQUESTS = Counter("msante_http_requests", "HTTP requests by route pattern and status", ["route", "status"])

SMTP_SESSIONS = Counter("msante_smtp_sessions", "SMTP connections by listener", ["listener"])
SMTP_MESSAGES = Counter("msante_smtp_messages", "Messages accepted at the end of DATA, by listener", ["listener"])
SMTP_REFUSALS = Counter("msante_smtp_refusals",
                        "MAIL, RCPT and DATA refused, by listener, command and enhanced status code (RFC 3463)",
                        ["listener", "command", "code"])

LOGINS = Counter("msante_logins", "Login attempts by protocol, SASL mechanism and outcome",
                 ["protocol", "mechanism", "outcome"])

IMAP_SESSIONS = Counter("msante_imap_sessions", "IMAP connections by listener", ["listener"])
IMAP_COMMANDS = Counter("msante_imap_commands", "IMAP commands by name and tagged status (OK, NO, BAD)",
                        ["command", "status"])

WEBSOCKET_CONNECTIONS = Gauge("msante_websocket_connections", "Open websocket connections (/ws)",
                              multiprocess_mode="livesum")
WEBSOCKET_ACCEPTED = Counter("msante_websocket_accepted", "Websocket connections opened (/ws)")
WEBSOCKET_FRAMES_RECEIVED = Counter("msante_websocket_frames_received",
                                    "Client frames by type ('malformed': refused by the parser)", ["type"])
WEBSOCKET_FRAMES_SENT = Counter("msante_websocket_frames_sent", "Frames written to clients")
WEBSOCKET_CLOSES = Counter("msante_websocket_closes", "Websocket closes by code and initiating side", ["code", "by"])

DELIVERIES = Counter("msante_deliveries", "Outbound delivery attempts per recipient by outcome "
                     "(relayed, deferred, failed)", ["outcome"])

# The hospital feed (hospital/): structures are FINESS numbers of the directory's hospitals, each
# behind an applicative certificate the operator issued, so a bounded set; reasons are
# hospital/indicators.REASONS, the coordinators' own words.
HL7_EVENTS = Counter("msante_hl7_events", "Hospital events stored (ACK AA), by kind (ADM, URG, SOR, DOC, UPD, "
                     "CAN...) and structure (FINESS)", ["kind", "structure"])
HL7_REFUSALS = Counter("msante_hl7_refusals", "HL7 messages refused, by ACK code (AE, AR)", ["code"])
HL7_ACK_SECONDS = Histogram("msante_hl7_ack_seconds", "From a whole MLLP frame read to its ACK written, by ACK code",
                            ["code"], buckets=(.002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10))
HOSPITAL_NOTIFICATIONS = Counter("msante_hospital_notifications",
                                 "Events dispatched, by whether the GP was told (notified, not_notified) and why "
                                 "not (hospital/indicators.py's reasons; '' when notified)", ["outcome", "reason"])

LOGIN_MECHANISMS = frozenset({"PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER", "EXTERNAL"})  # mailserver/sasl.py


def mechanism_label(mechanism: str) -> str:
    """A client may name any mechanism: only the ones we implement become label values."""
    name = mechanism.upper()
    return name if name in LOGIN_MECHANISMS else "other"


StoreGauges = Callable[[], Awaitable[Iterable[Metric]]]


class Exposition:
    """Renders one scrape: this process's (or all workers') counters, the default process and
    platform collectors, and the gauges read from the store for this scrape."""

    def __init__(self) -> None:
        self._store_gauges: list[StoreGauges] = []

    def add(self, read: StoreGauges) -> None:
        self._store_gauges.append(read)

    async def render(self) -> bytes:
        families: list[Metric] = []
        for read in self._store_gauges:
            families += list(await read())
        # Off the loop: the process collector reads /proc, the multiprocess one every worker's file.
        return await asyncio.to_thread(_text, families)


def _text(store_gauges: list[Metric]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    multiproc_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if multiproc_dir:  # counters of every worker, summed; process_* is per process, so left out
        MultiProcessCollector(registry, path=multiproc_dir)
    else:
        registry.register(_Fixed(list(REGISTRY.collect())))
    registry.register(_Fixed(store_gauges))
    return generate_latest(registry)


def process_exited() -> None:
    """With PROMETHEUS_MULTIPROC_DIR, a worker that stops takes its live gauges (open
    websockets) out of the sum; its counters stay, so totals never go down."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        mark_process_dead(os.getpid())


def gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


class _Fixed:
    """Families already collected, handed to a registry for one scrape."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families
