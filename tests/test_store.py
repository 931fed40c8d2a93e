"""The LMDB value layout both sides share (``contract.store``): what an older signer stored still reads."""

from __future__ import annotations

import lmdb
import msgspec

from contract.store import (
    PRIORITY_NEW,
    PRIORITY_REVOCATION,
    RESPONSE_DECODER,
    RESPONSE_ENCODER,
    Backlog,
    StoredResponse,
    inventory_key,
    pending_key,
    read_backlog,
    schedule_key,
    serial_key,
)


def test_a_response_stored_before_produced_at_was_recorded_reads_as_unknown() -> None:
    """The nine fields a signer wrote before producedAt was recorded: the edge reads 0 for it."""
    older = msgspec.msgpack.encode([b"\x30\x03der", 10, 20, 15, 30, b'"etag"', b"lm", b"exp", False])
    stored = RESPONSE_DECODER.decode(older)
    assert stored.produced_at == 0
    assert (stored.der, stored.this_update, stored.revoked) == (b"\x30\x03der", 10, False)


def test_a_response_round_trips_with_its_signing_time() -> None:
    stored = StoredResponse(b"\x30\x03der", 10, 20, 15, 30, b'"etag"', b"lm", b"exp", True, 3610)
    assert RESPONSE_DECODER.decode(RESPONSE_ENCODER.encode(stored)) == stored


def test_the_backlog_counts_pending_serials_and_the_oldest_due_refresh(tmp_path) -> None:
    env = lmdb.open(str(tmp_path), max_dbs=2)
    pending, schedule = env.open_db(b"pending"), env.open_db(b"schedule")
    with env.begin() as txn:
        assert read_backlog(txn, pending, schedule, 1000) == Backlog(0, 0)  # an empty store
    inv = inventory_key(1, serial_key(7))
    with env.begin(write=True) as txn:
        for priority in (PRIORITY_REVOCATION, PRIORITY_NEW):
            txn.put(pending_key(priority, inv), b"", db=pending)
        for refresh_at in (990, 995, 2000):
            txn.put(schedule_key(refresh_at, inv), b"", db=schedule)
    with env.begin() as txn:
        assert read_backlog(txn, pending, schedule, 1000) == Backlog(2, 10)
        assert read_backlog(txn, pending, schedule, 990) == Backlog(2, 0)  # due now: not late
        assert read_backlog(txn, pending, schedule, 100) == Backlog(2, 0)
    env.close()
