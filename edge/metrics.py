"""Counters the edge keeps; injected so tests can read them and deployments can swap them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

Tally = Callable[[], dict[str, int]]


class Metrics(Protocol):
    def inc(self, name: str) -> None: ...

    def collect(self, tally: Tally) -> None:
        """Read ``tally`` at every snapshot: counts a hot path keeps itself, in plain attributes."""
        ...

    def snapshot(self) -> dict[str, int]: ...


class CounterMetrics:
    """Per-process counters; cheap enough for the hot path (one update of a plain dict).

    A plain dict, not a ``Counter``: indexing a dict subclass is not specialised by the interpreter
    (Python 3.11) and costs twice as much. The counts of every request (cache hits) are not even
    that: their code keeps them and hands a tally to read when a snapshot is taken, the way
    Prometheus clients collect (a method call and a dict update cost more than an attribute's +1).
    """

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._tallies: list[Tally] = []

    def inc(self, name: str) -> None:
        try:
            self._counts[name] += 1
        except KeyError:  # the first of its name
            self._counts[name] = 1

    def collect(self, tally: Tally) -> None:
        self._tallies.append(tally)

    def snapshot(self) -> dict[str, int]:
        counts = dict(self._counts)
        for tally in self._tallies:
            for name, count in tally().items():
                if count:  # as inc: a name appears from its first count on
                    counts[name] = counts.get(name, 0) + count
        return counts
