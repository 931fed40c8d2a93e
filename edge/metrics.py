"""Counters the edge keeps; injected so tests can read them and deployments can swap them."""

from __future__ import annotations

from typing import Protocol


class Metrics(Protocol):
    def inc(self, name: str) -> None: ...

    def snapshot(self) -> dict[str, int]: ...


class CounterMetrics:
    """Per-process counters; cheap enough for the hot path (one update of a plain dict).

    A plain dict, not a ``Counter``: indexing a dict subclass is not specialised by the interpreter
    (Python 3.11) and costs twice as much, on every request.
    """

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def inc(self, name: str) -> None:
        try:
            self._counts[name] += 1
        except KeyError:  # the first of its name
            self._counts[name] = 1

    def snapshot(self) -> dict[str, int]:
        return dict(self._counts)
