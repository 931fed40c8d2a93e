"""Counters the edge keeps; injected so tests can read them and deployments can swap them."""

from __future__ import annotations

from collections import Counter
from typing import Protocol


class Metrics(Protocol):
    def inc(self, name: str) -> None: ...

    def snapshot(self) -> dict[str, int]: ...


class CounterMetrics:
    """Per-process counters; cheap enough for the hot path (one dict update)."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def inc(self, name: str) -> None:
        self._counts[name] += 1

    def snapshot(self) -> dict[str, int]:
        return dict(self._counts)
