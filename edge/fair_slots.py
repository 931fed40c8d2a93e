"""A few slots for costly work, handed out in turn by key (a client's address), not first come.

EST's password checks are memory-hard hashes, a few at a time per worker. With a plain semaphore, one
address sending many guesses at once queued them all ahead of everyone else: a device elsewhere waited
for every one of them (38 s in an audit, behind 30 guesses). Here each key waits in its own line and a
freed slot goes to the next key in turn, so a request waits for at most one holder per other key; and
one key may have only so many waiting, the rest refused at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator


class TooManyWaiting(Exception):
    """This key already has its bound of requests waiting for a slot."""


class FairSlots:
    def __init__(self, slots: int, max_waiting_per_key: int) -> None:
        self._free = slots
        self._max_waiting = max_waiting_per_key
        # key -> its waiters, first come first; keys in the order they are served (round-robin).
        self._lines: collections.OrderedDict[str, collections.deque[asyncio.Future[None]]] = collections.OrderedDict()

    @contextlib.asynccontextmanager
    async def slot(self, key: str) -> AsyncIterator[None]:
        await self._acquire(key)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, key: str) -> None:
        if self._free > 0 and not self._lines:
            self._free -= 1
            return
        line = self._lines.get(key)
        if line is None:
            line = self._lines[key] = collections.deque()
        elif len(line) >= self._max_waiting:
            raise TooManyWaiting(key)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        line.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot as it was cancelled: pass it on
            else:
                self._forget(key, waiter)
            raise

    def _forget(self, key: str, waiter: asyncio.Future[None]) -> None:
        line = self._lines.get(key)
        if line is not None and waiter in line:
            line.remove(waiter)
            if not line:
                del self._lines[key]

    def _release(self) -> None:
        while self._lines:
            key, line = next(iter(self._lines.items()))
            waiter = line.popleft()
            if line:
                self._lines.move_to_end(key)  # its next waiter comes after the other keys' first
            else:
                del self._lines[key]
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1

    def waiting(self, key: str) -> int:
        line = self._lines.get(key)
        return len(line) if line is not None else 0
