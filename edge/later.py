"""Work put off to a moment later on the running event loop.

What the requests of many loop turns can share ends by a timer: the store's read snapshot
(``edge.source``) and the clock's reading of a second (``edge.clock``). At low load a turn serves one
or two requests, and a snapshot, a clock reading and the handle ending them each turn cost a sixth
of such a request (``bench.icount --per-turn 1``). The answers of one turn are written together at its end by
``edge.fastlane.WriteBatch``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

End = Callable[[], None]
AtEnd = Callable[[End], object]  # when an end runs: after(seconds), at once, or when a test says
Later = Callable[[float, End], object]  # run an end that many seconds from now


def later_on_running_loop(delay: float, end: End) -> None:
    """Run ``end`` ``delay`` seconds from now on the running loop; at once when no loop is running.

    A timer runs once the loop is free: late by at most the turn running when it is due.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        end()
        return
    loop.call_later(delay, end)


def after(seconds: float, later: Later = later_on_running_loop) -> AtEnd:
    """An AtEnd that runs each end ``seconds`` after it is asked for."""

    def at_end(end: End) -> None:
        later(seconds, end)

    return at_end
