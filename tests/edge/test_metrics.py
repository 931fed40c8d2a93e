"""The edge's per-process counters (``edge.metrics``)."""

from __future__ import annotations

from edge.metrics import CounterMetrics


def test_counts_each_name_from_its_first_increment() -> None:
    metrics = CounterMetrics()
    assert metrics.snapshot() == {}
    for name in ("ocsp_good", "ocsp_good", "ocsp_revoked", "ocsp_good"):
        metrics.inc(name)
    assert metrics.snapshot() == {"ocsp_good": 3, "ocsp_revoked": 1}


def test_a_snapshot_is_a_copy() -> None:
    metrics = CounterMetrics()
    metrics.inc("ocsp_good")
    taken = metrics.snapshot()
    metrics.inc("ocsp_good")
    taken["ocsp_good"] = 99
    assert metrics.snapshot() == {"ocsp_good": 2}


def test_tallies_are_read_at_each_snapshot_and_added_to_the_counts() -> None:
    metrics = CounterMetrics()
    hits = {"ocsp_good": 0, "ocsp_revoked": 0}
    metrics.collect(lambda: dict(hits))
    assert metrics.snapshot() == {}  # a name appears from its first count on, as with inc
    metrics.inc("ocsp_good")
    hits["ocsp_good"] = 2
    assert metrics.snapshot() == {"ocsp_good": 3}
    hits["ocsp_revoked"] = 1
    metrics.collect(lambda: {"ocsp_revoked": 4})
    assert metrics.snapshot() == {"ocsp_good": 3, "ocsp_revoked": 5}
