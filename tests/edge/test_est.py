"""``edge.est.RateLimiter``: token buckets per client, with a fake clock."""

from __future__ import annotations

from edge.est import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=6, burst=2, clock=clock)
    assert [limiter.allow("a") for _ in range(3)] == [True, True, False]
    assert limiter.allow("b")  # buckets are per client
    assert limiter.seconds_to_next("a") == 10  # one token every ten seconds
    clock.now += 9
    assert not limiter.allow("a")
    assert limiter.seconds_to_next("a") == 1
    clock.now += 1
    assert limiter.allow("a")


def test_exhausted_looks_without_taking() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=1, burst=2, clock=clock)
    for _ in range(5):  # right passwords only look: nothing is taken
        assert not limiter.exhausted("basic:192.0.2.1")
    assert [limiter.allow("basic:192.0.2.1") for _ in range(2)] == [True, True]  # two wrong ones
    assert limiter.exhausted("basic:192.0.2.1")
    assert limiter.seconds_to_next("basic:192.0.2.1") == 60
    clock.now += 45
    assert limiter.exhausted("basic:192.0.2.1")
    assert limiter.seconds_to_next("basic:192.0.2.1") == 15  # the refill counts while nothing is taken
    clock.now += 15
    assert not limiter.exhausted("basic:192.0.2.1")
    assert limiter.seconds_to_next("never-seen") == 1
