"""The LMDB value layout both sides share (``contract.store``): what an older signer stored still reads."""

from __future__ import annotations

import lmdb
import msgspec
import pytest

from contract.store import (
    DB_META,
    FORMAT,
    META_FORMAT,
    PRIORITY_NEW,
    PRIORITY_REVOCATION,
    RESPONSE_DECODER,
    RESPONSE_ENCODER,
    Backlog,
    StoredResponse,
    StoreFormatError,
    check_format,
    inventory_key,
    open_dbs,
    open_env,
    pack_u64,
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


@pytest.mark.parametrize(
    ("raw", "refused"),
    [
        (None, None),  # a store made before the format was recorded: format 1
        (pack_u64(FORMAT), None),
        (pack_u64(FORMAT + 1), f"has format {FORMAT + 1}, written by a later pki-edge release; this one reads"),
        (pack_u64(FORMAT + 1000), "written by a later pki-edge release"),
        (pack_u64(0), "which this release cannot read"),
        (b"\x01", "which this release cannot read"),  # not a u64: nothing to go by
    ],
)
def test_a_store_of_another_format_is_refused(raw: bytes | None, refused: str | None) -> None:
    if refused is None:
        check_format(raw, "/d/store")
    else:
        with pytest.raises(StoreFormatError, match=refused):
            check_format(raw, "/d/store")


def _set_format(tmp_path, value: bytes) -> None:
    env = open_env(tmp_path, readonly=False, map_size=1 << 20)
    with env.begin(db=env.open_db(DB_META), write=True) as txn:
        txn.put(META_FORMAT, value)
    env.close()


def test_a_writer_records_the_format_and_both_sides_refuse_a_later_one(tmp_path) -> None:
    env = open_env(tmp_path, readonly=False, map_size=1 << 20)
    meta = open_dbs(env, readonly=False)[DB_META]
    with env.begin(db=meta) as txn:
        assert txn.get(META_FORMAT) == pack_u64(FORMAT)
    env.close()
    reader = open_env(tmp_path, readonly=True, map_size=1 << 20)
    assert open_dbs(reader, readonly=True)[DB_META] is not None
    reader.close()

    _set_format(tmp_path, pack_u64(FORMAT + 1))
    for readonly in (True, False):
        env = open_env(tmp_path, readonly=readonly, map_size=1 << 20)
        with pytest.raises(StoreFormatError, match="written by a later pki-edge release"):
            open_dbs(env, readonly=readonly)
        with env.begin(db=env.open_db(DB_META, create=False)) as txn:
            assert txn.get(META_FORMAT) == pack_u64(FORMAT + 1)  # a writer left it as it was
        env.close()
