"""Log lines that a client can cause, at most one per kind and interval.

A flood of bad requests, or of lookups of stale responses while the signer is down, would otherwise
be a flood of log lines: disk and CPU spent at the attacker's rate (nginx logs client errors at
``info``, off by default, for the same reason). The first of a kind is logged at once; the rest of the
interval is counted, and the count goes with the next line of that kind.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

INTERVAL_SECONDS = 60.0
MAX_KINDS = 64  # kinds are a closed set in practice; a bound all the same


class ThrottledLog:
    def __init__(self, logger: logging.Logger, clock: Callable[[], float], interval: float = INTERVAL_SECONDS) -> None:
        """``clock``: seconds from any origin (monotonic, or the answer's whole-second clock)."""
        self._logger = logger
        self._clock = clock
        self._interval = interval
        self._kinds: dict[object, list[float]] = {}  # kind -> [when the next line may be written, left out]

    def log(self, level: int, kind: object, message: str) -> None:
        now = self._clock()
        state = self._kinds.get(kind)
        if state is not None and now < state[0]:
            state[1] += 1
            return
        left_out = int(state[1]) if state is not None else 0
        if left_out:
            message = f"{message} ({left_out} more like it in the {self._interval:.0f} s before, not logged)"
        self._logger.log(level, "%s", message)
        if state is None and len(self._kinds) >= MAX_KINDS:
            self._kinds.clear()
        self._kinds[kind] = [now + self._interval, 0]
