"""The clock the edge reads; injected so tests can use a fake one."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> int:
        """Unix time in whole seconds."""
        ...


class SystemClock:
    def now(self) -> int:
        return int(time.time())


class FakeClock:
    def __init__(self, now: int) -> None:
        self.current = now

    def now(self) -> int:
        return self.current

    def advance(self, seconds: int) -> None:
        self.current += seconds
