"""The clock the edge reads; injected so tests can use a fake one."""

from __future__ import annotations

import time
from typing import Protocol

from edge.loop_turn import AtEnd


class Clock(Protocol):
    def now(self) -> int:
        """Unix time in whole seconds."""
        ...


class SystemClock:
    def now(self) -> int:
        return int(time.time())


class LoopTurnClock:
    """The system clock, read once per turn of the event loop: every request of a turn sees one time.

    A reading costs more than the rest of a request's freshness and max-age work; a turn lasts a few
    milliseconds, which whole seconds cannot tell apart. ``at_end`` forgets the reading when the turn
    ends (``edge.loop_turn.at_end_of_loop_turn``: at once, so a fresh reading each time, without a loop).
    """

    def __init__(self, at_end: AtEnd) -> None:
        self._at_end = at_end
        self._now = 0  # no reading in this turn yet (no real reading is 0)
        self._forget_reading = self._forget  # bound once, not once per turn

    def now(self) -> int:
        now = self._now
        if not now:
            now = self._now = int(time.time())
            self._at_end(self._forget_reading)
        return now

    def _forget(self) -> None:
        self._now = 0


class FakeClock:
    def __init__(self, now: int) -> None:
        self.current = now

    def now(self) -> int:
        return self.current

    def advance(self, seconds: int) -> None:
        self.current += seconds
