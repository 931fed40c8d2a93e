"""``edge.fair_slots``: slots handed out in turn by key, with a bound on each key's waiters."""

from __future__ import annotations

import asyncio

import pytest

from edge.fair_slots import FairSlots, TooManyWaiting


async def _hold(slots: FairSlots, key: str, order: list[str], release: asyncio.Event) -> None:
    async with slots.slot(key):
        order.append(key)
        await release.wait()


def test_a_key_with_many_waiters_holds_no_other_key_back_more_than_one_turn() -> None:
    """The audit's case: one address queues guesses; a device elsewhere waits one turn, not for all."""

    async def scenario() -> list[str]:
        slots = FairSlots(1, max_waiting_per_key=100)
        order: list[str] = []
        release = asyncio.Event()
        tasks = [asyncio.create_task(_hold(slots, "guesser", order, release)) for _ in range(10)]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(_hold(slots, "device", order, release)))
        await asyncio.sleep(0)
        release.set()  # each holder leaves at once: the order of service is what is left to see
        await asyncio.gather(*tasks)
        return order

    order = asyncio.run(scenario())
    assert order.index("device") <= 2, order  # behind the one holding and at most one turn of the guesser
    assert order.count("guesser") == 10


def test_keys_are_served_round_robin() -> None:
    async def scenario() -> list[str]:
        slots = FairSlots(1, max_waiting_per_key=100)
        order: list[str] = []
        release = asyncio.Event()
        first = asyncio.create_task(_hold(slots, "x", order, release))
        await asyncio.sleep(0)
        tasks = [asyncio.create_task(_hold(slots, key, order, release)) for key in "aaabbc"]
        await asyncio.sleep(0)
        release.set()
        await asyncio.gather(first, *tasks)
        return order

    assert asyncio.run(scenario()) == ["x", "a", "b", "c", "a", "b", "a"]


def test_slots_run_at_once_while_free_and_never_more_than_their_number() -> None:
    async def scenario() -> int:
        slots = FairSlots(2, max_waiting_per_key=100)
        running, most = 0, 0

        async def work(key: str) -> None:
            nonlocal running, most
            async with slots.slot(key):
                running += 1
                most = max(most, running)
                await asyncio.sleep(0.01)
                running -= 1

        await asyncio.gather(*(work(k) for k in "abcdefab"))
        return most

    assert asyncio.run(scenario()) == 2


def test_a_key_past_its_bound_of_waiters_is_refused_at_once() -> None:
    async def scenario() -> None:
        slots = FairSlots(1, max_waiting_per_key=2)
        release = asyncio.Event()
        order: list[str] = []
        tasks = [asyncio.create_task(_hold(slots, "a", order, release)) for _ in range(3)]  # one holds, two wait
        await asyncio.sleep(0)
        assert slots.waiting("a") == 2
        with pytest.raises(TooManyWaiting):
            await _hold(slots, "a", order, release)
        other = asyncio.create_task(_hold(slots, "b", order, release))  # other keys still queue
        await asyncio.sleep(0)
        assert slots.waiting("b") == 1
        release.set()
        await asyncio.gather(*tasks, other)
        assert slots.waiting("a") == slots.waiting("b") == 0

    asyncio.run(scenario())


def test_a_cancelled_waiter_gives_up_its_place() -> None:
    async def scenario() -> list[str]:
        slots = FairSlots(1, max_waiting_per_key=10)
        release = asyncio.Event()
        order: list[str] = []
        holder = asyncio.create_task(_hold(slots, "h", order, release))
        await asyncio.sleep(0)
        gone = asyncio.create_task(_hold(slots, "gone", order, release))
        after = asyncio.create_task(_hold(slots, "after", order, release))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.sleep(0)
        assert slots.waiting("gone") == 0
        release.set()
        await asyncio.gather(holder, after)
        with pytest.raises(asyncio.CancelledError):
            await gone
        return order

    assert asyncio.run(scenario()) == ["h", "after"]


def test_a_slot_handed_to_a_waiter_cancelled_in_that_turn_passes_on() -> None:
    async def scenario() -> list[str]:
        slots = FairSlots(1, max_waiting_per_key=10)
        release = asyncio.Event()
        order: list[str] = []
        first = asyncio.create_task(_hold(slots, "p", order, release))
        await asyncio.sleep(0)
        handed = asyncio.create_task(_hold(slots, "q", order, release))
        last = asyncio.create_task(_hold(slots, "r", order, release))
        await asyncio.sleep(0)
        release.set()
        await asyncio.sleep(0)  # p leaves: the slot goes to q ...
        handed.cancel()  # ... cancelled before it ran: lost, r would wait for ever (the test's timeout)
        await asyncio.gather(first, last)
        return order

    assert asyncio.run(scenario()) == ["p", "r"]
