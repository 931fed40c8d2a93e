"""Work put off to the end of an event-loop turn (``edge.loop_turn``), and the clock read once per turn."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from edge.clock import LoopTurnClock
from edge.loop_turn import LoopTurn, at_end_of_loop_turn


def test_at_end_of_loop_turn_runs_after_the_turn_and_at_once_without_a_loop() -> None:
    ran: list[str] = []
    at_end_of_loop_turn(lambda: ran.append("no loop"))
    assert ran == ["no loop"]

    async def turn() -> list[str]:
        at_end_of_loop_turn(lambda: ran.append("end"))
        ran.append("rest of the turn")
        await asyncio.sleep(0)
        return ran

    assert asyncio.run(turn()) == ["no loop", "rest of the turn", "end"]


class _CountingLoop:
    """The one loop method LoopTurn calls, counted; the handles it got are run by the test."""

    def __init__(self) -> None:
        self.scheduled: list[Any] = []
        self.failures: list[dict[str, Any]] = []

    def call_soon(self, callback: Any) -> None:
        self.scheduled.append(callback)

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        self.failures.append(context)


def _turn() -> tuple[LoopTurn, _CountingLoop]:
    loop = _CountingLoop()
    return LoopTurn(loop), loop  # type: ignore[arg-type]


def test_one_handle_per_turn_runs_every_end_in_order() -> None:
    turn, loop = _turn()
    ran: list[int] = []
    for n in range(3):
        turn.at_end(lambda n=n: ran.append(n))
    assert len(loop.scheduled) == 1 and ran == []
    loop.scheduled.pop()()
    assert ran == [0, 1, 2]
    turn.at_end(lambda: ran.append(3))  # the next turn has a handle of its own
    assert len(loop.scheduled) == 1
    loop.scheduled.pop()()
    assert ran == [0, 1, 2, 3]


def test_an_end_asked_for_while_the_ends_run_waits_for_the_next_turn() -> None:
    turn, loop = _turn()
    ran: list[str] = []
    turn.at_end(lambda: turn.at_end(lambda: ran.append("next turn")))
    loop.scheduled.pop()()
    assert ran == [] and len(loop.scheduled) == 1
    loop.scheduled.pop()()
    assert ran == ["next turn"]


def test_a_failing_end_is_reported_and_the_others_still_run() -> None:
    turn, loop = _turn()
    ran: list[str] = []

    def fails() -> None:
        raise OSError("boom")

    turn.at_end(fails)
    turn.at_end(lambda: ran.append("snapshot ended"))
    loop.scheduled.pop()()
    assert ran == ["snapshot ended"]
    assert [type(f["exception"]) for f in loop.failures] == [OSError]
    turn.at_end(lambda: ran.append("next"))  # not stuck: the next turn schedules again
    loop.scheduled.pop()()
    assert ran == ["snapshot ended", "next"]


def test_one_loop_turn_per_event_loop() -> None:
    async def same() -> bool:
        loop = asyncio.get_running_loop()
        return LoopTurn.of(loop) is LoopTurn.of(loop)

    assert asyncio.run(same())
    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        assert LoopTurn.of(first) is not LoopTurn.of(second)
    finally:
        first.close()
        second.close()


def test_the_clock_reads_once_per_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    readings = iter([1_000.9, 1_007.2, 1_009.0])
    monkeypatch.setattr(time, "time", lambda: next(readings))
    turn, loop = _turn()
    clock = LoopTurnClock(turn.at_end)
    assert clock.now() == 1_000
    assert clock.now() == 1_000  # same turn: no second reading
    assert len(loop.scheduled) == 1
    loop.scheduled.pop()()
    assert clock.now() == 1_007


def test_the_clock_reads_every_time_without_a_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    readings = iter([2_000.0, 2_001.5])
    monkeypatch.setattr(time, "time", lambda: next(readings))
    clock = LoopTurnClock(at_end_of_loop_turn)
    assert (clock.now(), clock.now()) == (2_000, 2_001)


def test_the_clock_in_a_running_loop_forgets_its_reading_when_the_turn_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    readings = iter([3_000.0, 3_005.0])
    monkeypatch.setattr(time, "time", lambda: next(readings))
    clock = LoopTurnClock(at_end_of_loop_turn)

    async def two_turns() -> tuple[int, int, int]:
        first = clock.now(), clock.now()
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # the end handle runs within the first sleep's turn at the latest
        return first[0], first[1], clock.now()

    assert asyncio.run(two_turns()) == (3_000, 3_000, 3_005)
