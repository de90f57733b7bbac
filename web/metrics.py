"""Counters and gauges rendered in the Prometheus text exposition format (version 0.0.4).

A dependency-free registry is enough: the process exports a few dozen series, and gauges
that depend on the store (queue size, mailboxes) are computed by callbacks at scrape time.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Awaitable, Callable

Labels = tuple[tuple[str, str], ...]


class Metrics:
    def __init__(self) -> None:
        self._counters: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
        self._help: dict[str, tuple[str, str]] = {}
        self._gauges: dict[str, Callable[[], Awaitable[dict[Labels, float]]]] = {}

    def counter(self, name: str, help_text: str) -> None:
        self._help[name] = ("counter", help_text)

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        self._counters[name][tuple(sorted(labels.items()))] += amount

    def gauge(self, name: str, help_text: str, collect: Callable[[], Awaitable[dict[Labels, float]]]) -> None:
        self._help[name] = ("gauge", help_text)
        self._gauges[name] = collect

    async def render(self) -> str:
        lines: list[str] = []
        for name, (kind, help_text) in sorted(self._help.items()):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
            series = await self._gauges[name]() if kind == "gauge" else self._counters.get(name, {})
            for labels, value in sorted(series.items()):
                lines.append(f"{name}{_labels(labels)} {value:g}")
        return "\n".join(lines) + "\n"


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + body + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
