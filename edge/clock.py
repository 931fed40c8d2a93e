"""The clock the edge reads; injected so tests can use a fake one."""

from __future__ import annotations

import time
from typing import Protocol

from edge.later import Later


class Clock(Protocol):
    def now(self) -> int:
        """Unix time in whole seconds."""
        ...


class SystemClock:
    def now(self) -> int:
        return int(time.time())


class WholeSecondClock:
    """The system clock, read once for each second it tells: a reading holds until the next whole second.

    A reading costs more than the rest of a request's freshness and max-age work, and whole seconds
    do not change in between. ``later`` forgets the reading at the next second
    (``edge.later.later_on_running_loop``: a timer, late by at most the turn then running, which
    a reading per turn was too; without a loop at once, so a fresh reading each time).
    """

    def __init__(self, later: Later) -> None:
        self._later = later
        self._now = 0  # no reading held (no real reading is 0)
        self._forget_reading = self._forget  # bound once, not once per reading

    def now(self) -> int:
        now = self._now
        if not now:
            reading = time.time()
            now = self._now = int(reading)
            self._later(now + 1 - reading, self._forget_reading)
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
