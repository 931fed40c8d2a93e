"""The LMDB value layout both sides share (``contract.store``): what an older signer stored still reads."""

from __future__ import annotations

import msgspec

from contract.store import RESPONSE_DECODER, RESPONSE_ENCODER, StoredResponse


def test_a_response_stored_before_produced_at_was_recorded_reads_as_unknown() -> None:
    """The nine fields a signer wrote before producedAt was recorded: the edge reads 0 for it."""
    older = msgspec.msgpack.encode([b"\x30\x03der", 10, 20, 15, 30, b'"etag"', b"lm", b"exp", False])
    stored = RESPONSE_DECODER.decode(older)
    assert stored.produced_at == 0
    assert (stored.der, stored.this_update, stored.revoked) == (b"\x30\x03der", 10, False)


def test_a_response_round_trips_with_its_signing_time() -> None:
    stored = StoredResponse(b"\x30\x03der", 10, 20, 15, 30, b'"etag"', b"lm", b"exp", True, 3610)
    assert RESPONSE_DECODER.decode(RESPONSE_ENCODER.encode(stored)) == stored
