"""/metrics read as Prometheus stores it: one scrape over HTTPS, parsed by prometheus_client's
own parser, so a test sees samples (name, labels, value) rather than text that happens to match."""
from __future__ import annotations

import http.client
import ssl

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset], float]


def scrape(port: int, context: ssl.SSLContext) -> tuple[str, str]:
    """(content type, exposition text) of one GET /metrics."""
    conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=10)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert response.status == 200, response.status
        return response.getheader("content-type", ""), response.read().decode()
    finally:
        conn.close()


def samples(text: str) -> Samples:
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def names(text: str) -> set[str]:
    """Every series name a query may use, also those of counters no event has touched yet
    (exported as a family without samples)."""
    found: set[str] = set()
    for family in text_string_to_metric_families(text):
        found |= {family.name, *(sample.name for sample in family.samples)}
        if family.type == "counter":
            found.add(family.name + "_total")
        elif family.type == "histogram":
            found |= {family.name + suffix for suffix in ("_bucket", "_count", "_sum")}
    return found


def of(server) -> Samples:  # noqa: ANN001 - tests.conftest.RunningServer
    return samples(scrape(int(server.listeners["https"].rsplit(":", 1)[1]), server.client_tls())[1])


def value(scraped: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 for a series not exported yet (a counter no event has touched)."""
    return scraped.get((name, frozenset(labels.items())), 0.0)
