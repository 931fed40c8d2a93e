"""(g) `kill -9` of the signer mid-work leaves a consistent store, and a restart finishes the job."""

from __future__ import annotations

import random
import signal
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from contract import store
from contract.config import Config
from tests.integration.conftest import Run
from tests.integration.helpers import Server, read_store, store_counts, wait_drained, wait_for

ROWS = 30000
CODES = {store.HASH_ALGORITHMS[name][0] for name in Config().signer.hash_algorithms}


def _write_index(path: Path, rows: int, seed: int = 6960) -> set[int]:
    rng = random.Random(seed)
    serials: set[int] = set()
    while len(serials) < rows:
        serials.add(rng.getrandbits(rng.choice((32, 64, 127, 128, 159))) or 1)
    lines = [f"V\t491231235959Z\t\t{s:X}\tunknown\t/CN=x{i}\n" for i, s in enumerate(sorted(serials))]
    path.write_text("".join(lines))
    return serials


@dataclass
class Snapshot:
    inventory: set[bytes]
    responses: dict[bytes, set[int]]  # inventory key -> hash codes with a response
    response_refresh: dict[bytes, set[int]]  # inventory key -> refresh_at of its stored responses
    schedule: list[tuple[int, bytes]]
    refresh: dict[bytes, int]
    pending: list[bytes]


def _snapshot(data_dir: Path) -> Snapshot:
    with read_store(data_dir) as (env, dbs), env.begin() as txn:
        inventory = set(txn.cursor(db=dbs[store.DB_INVENTORY]).iternext(values=False))
        responses: dict[bytes, set[int]] = defaultdict(set)
        response_refresh: dict[bytes, set[int]] = defaultdict(set)
        for key, value in txn.cursor(db=dbs[store.DB_RESPONSES]):
            inv_key = key[:4] + key[5:]
            responses[inv_key].add(key[4])
            response_refresh[inv_key].add(store.RESPONSE_DECODER.decode(value).refresh_at)
        schedule = [store.split_schedule_key(k) for k in txn.cursor(db=dbs[store.DB_SCHEDULE]).iternext(values=False)]
        refresh = {k: store.unpack_u64(v) for k, v in txn.cursor(db=dbs[store.DB_REFRESH])}
        pending = [k[1:] for k in txn.cursor(db=dbs[store.DB_PENDING]).iternext(values=False)]
    return Snapshot(inventory, dict(responses), dict(response_refresh), schedule, refresh, pending)


def _check_consistent(snap: Snapshot) -> None:
    # Every response belongs to an inventory entry, and each serial has all its hash algorithms or none.
    assert set(snap.responses) <= snap.inventory
    incomplete = {k: codes for k, codes in snap.responses.items() if codes != CODES}
    assert not incomplete, f"{len(incomplete)} serials with a partial set of responses"
    # schedule and refresh mirror each other exactly, one entry per signed serial.
    scheduled = [inv for _, inv in snap.schedule]
    assert len(scheduled) == len(set(scheduled)), "a serial is scheduled twice"
    assert {inv: at for at, inv in snap.schedule} == snap.refresh
    assert set(snap.refresh) == set(snap.responses)
    for inv, at in snap.refresh.items():
        assert snap.response_refresh[inv] == {at}
    # Nothing was re-queued in this scenario: pending and signed are disjoint and cover the inventory.
    pending = set(snap.pending)
    assert len(pending) == len(snap.pending)
    assert not pending & set(snap.responses), "signed serials are still pending"
    assert pending | set(snap.responses) == snap.inventory


def test_kill_9_mid_batch(run: Run, data_dir: Path, tmp_path: Path, servers: list[Server]) -> None:
    run("ca", "create", "crash")
    serials = _write_index(tmp_path / "index.txt", ROWS)
    imported = run("import", "crash", "--openssl-index", tmp_path / "index.txt").stdout
    assert f"crash: added {ROWS}, updated 0, unchanged 0" in imported
    assert store_counts(data_dir)["pending"] == ROWS

    signer = Server("signer", data_dir, ["signer"], tmp_path / "signer-1.log")
    servers.append(signer)

    def partly_signed() -> dict[str, int] | None:
        assert signer.alive(), signer.log()
        counts = store_counts(data_dir)
        return counts if counts["responses"] >= 2000 and counts["pending"] > 0 else None

    wait_for("the signer to sign part of the inventory", partly_signed, timeout=60, interval=0.02)
    assert signer.sigkill() == -signal.SIGKILL

    snap = _snapshot(data_dir)
    assert len(snap.inventory) == ROWS
    assert 0 < len(snap.responses) < ROWS, "the kill did not land mid-work"
    assert snap.pending, "the kill did not land mid-work"
    _check_consistent(snap)

    again = Server("signer", data_dir, ["signer"], tmp_path / "signer-2.log")
    servers.append(again)
    wait_drained(data_dir, timeout=90)
    snap = _snapshot(data_dir)
    _check_consistent(snap)
    assert not snap.pending
    assert len(snap.responses) == len(snap.refresh) == len(snap.schedule) == ROWS
    assert {store.serial_from_key(k[4:]) for k in snap.inventory} == serials
    again.stop_clean()
    assert "signer stopped" in again.log()
