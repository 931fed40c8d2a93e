"""Work put off to the end of the running event loop's current turn.

Under load one turn of the loop hands out the requests of many connections. What they share for
that turn (the answers written together, the store's read snapshot, the clock's reading) ends once
the loop has dispatched the turn's reads, by one ``call_soon`` handle for all of it: a handle costs
more than a request's share of the work it ends.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import ClassVar

End = Callable[[], None]
AtEnd = Callable[[End], object]  # when an end runs: at_end_of_loop_turn, LoopTurn.at_end, or at once


class LoopTurn:
    """The ends to run once the loop's current turn has dispatched its reads; one per event loop."""

    _by_loop: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopTurn]] = weakref.WeakKeyDictionary()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._ends: list[End] = []

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> LoopTurn:
        turn = cls._by_loop.get(loop)
        if turn is None:
            turn = cls._by_loop[loop] = cls(loop)
        return turn

    def at_end(self, end: End) -> None:
        """Run ``end`` at the end of this turn (once per call: a caller asks once per turn)."""
        if not self._ends:
            self._loop.call_soon(self.run_ends)  # runs once the loop has dispatched this turn's reads
        self._ends.append(end)

    def run_ends(self) -> None:
        """Run this turn's ends in the order they were asked for (an end asked for meanwhile: next turn)."""
        ends, self._ends = self._ends, []
        for end in ends:
            try:
                end()
            except Exception as exc:  # the others must still run: a snapshot left open would serve forever
                self._loop.call_exception_handler({"message": "a loop turn's end failed", "exception": exc})


def at_end_of_loop_turn(end: End) -> None:
    """Run ``end`` at the end of the running loop's turn; at once when no loop is running."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        end()
        return
    LoopTurn.of(loop).at_end(end)
