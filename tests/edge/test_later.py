"""Work put off to a moment later (``edge.later``), and the clock read once for each second it tells."""

from __future__ import annotations

import asyncio
import time

import pytest

from edge.clock import WholeSecondClock
from edge.later import End, after, later_on_running_loop


def test_later_runs_at_once_without_a_loop() -> None:
    ran: list[str] = []
    later_on_running_loop(5.0, lambda: ran.append("no loop"))
    assert ran == ["no loop"]


def test_later_runs_on_the_running_loop_once_the_delay_has_passed() -> None:
    async def scenario() -> tuple[list[str], list[str], float]:
        loop = asyncio.get_running_loop()
        ran: list[str] = []
        start = loop.time()
        done = loop.create_future()
        later_on_running_loop(0.05, lambda: (ran.append("end"), done.set_result(loop.time())))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        before = list(ran)  # not at the end of the turn: at the timer
        return before, ran, await done - start

    before, ran, waited = asyncio.run(scenario())
    assert before == [] and ran == ["end"]
    assert waited >= 0.045  # libuv timers count whole milliseconds


def test_after_asks_later_for_its_delay_each_time() -> None:
    asked: list[tuple[float, End]] = []
    at_end = after(0.01, lambda delay, end: asked.append((delay, end)))
    first, second = (lambda: None), (lambda: None)
    at_end(first)
    at_end(second)
    assert asked == [(0.01, first), (0.01, second)]


def _fake_time(monkeypatch: pytest.MonkeyPatch, *readings: float) -> None:
    values = iter(readings)
    monkeypatch.setattr(time, "time", lambda: next(values))


def test_the_clock_holds_a_reading_until_the_next_whole_second(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_time(monkeypatch, 1_000.75, 1_001.0, 1_001.5)
    asked: list[tuple[float, End]] = []
    clock = WholeSecondClock(lambda delay, end: asked.append((delay, end)))
    assert (clock.now(), clock.now()) == (1_000, 1_000)  # one reading
    assert [delay for delay, _ in asked] == [pytest.approx(0.25)]
    asked.pop()[1]()  # the timer at 1001.0
    assert clock.now() == 1_001
    assert [delay for delay, _ in asked] == [pytest.approx(1.0)]
    asked.pop()[1]()
    assert clock.now() == 1_001  # a timer early (libuv rounds to milliseconds): read again, the same second
    assert [delay for delay, _ in asked] == [pytest.approx(0.5)]


def test_the_clock_reads_every_time_without_a_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_time(monkeypatch, 2_000.0, 2_000.5, 2_001.5)
    clock = WholeSecondClock(later_on_running_loop)
    assert (clock.now(), clock.now(), clock.now()) == (2_000, 2_000, 2_001)


def test_the_clock_in_a_running_loop_reads_again_after_the_second_ends() -> None:
    clock = WholeSecondClock(later_on_running_loop)

    async def across_a_second() -> tuple[int, int, int]:
        first = clock.now()
        await asyncio.sleep(0.01)
        second = clock.now()  # within the second most of the time; never a reading older than it
        await asyncio.sleep(1 - time.time() % 1 + 0.02)  # past the next whole second
        return first, second, clock.now()

    first, second, third = asyncio.run(across_a_second())
    assert first <= second <= first + 1
    assert third == int(time.time()) or third == int(time.time()) - 1
    assert third > first
