"""How long one LMDB read snapshot serves lookups (``edge.source``): a lookup, or a few milliseconds."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from contract.config import Config, StoreConfig
from contract.store import IssuerRecord
from edge.later import after
from edge.ocsp_request import common_request
from edge.source import LmdbSource, NotFound, Unavailable, at_once, issuer_hashes, read_only_store
from signer.inventory import revoke
from signer.registry import create_ca
from signer.state import SignerStore
from tests.edge.conftest import crypto_request_by_hash
from tests.signed_store import add_devices, drain

NOW = dt.datetime.now(dt.UTC)
AT = int(NOW.timestamp())  # the time a lookup is asked at: the store itself ignores it


@pytest.fixture
def world(tmp_path) -> Iterator[tuple[SignerStore, IssuerRecord, tuple[bytes, bytes]]]:
    st = SignerStore(tmp_path, Config())
    issuer = create_ca(st, "ca", "ec-p256", 30, None, None, NOW)
    add_devices(st, issuer, (1, 2), NOW)
    drain(st)
    der = crypto_request_by_hash(*issuer_hashes(issuer.cert_der, "sha1"), 1)
    lookup = common_request(der)
    assert lookup is not None
    yield st, issuer, lookup
    st.close()


def _revoke_and_sign(st: SignerStore, issuer: IssuerRecord) -> None:
    revoke(st, issuer, 1, 1, int(NOW.timestamp()))
    drain(st)


def test_one_snapshot_serves_until_it_ends_and_the_next_sees_new_responses(world) -> None:
    st, issuer, lookup = world
    snapshot_ends: list[Callable[[], None]] = []
    source = LmdbSource(lambda: st.env, logging.getLogger("t"), snapshot_ends.append)
    assert source.response(*lookup, AT).revoked is False
    assert len(snapshot_ends) == 1  # one end per snapshot, however many lookups
    _revoke_and_sign(st, issuer)
    assert source.response(*lookup, AT).revoked is False  # the same snapshot
    assert len(snapshot_ends) == 1
    snapshot_ends.pop()()
    assert source.response(*lookup, AT).revoked is True
    assert len(snapshot_ends) == 1


def test_at_once_each_lookup_sees_the_newest_responses(world) -> None:
    st, issuer, lookup = world
    source = LmdbSource(lambda: st.env, logging.getLogger("t"), at_once)
    assert source.response(*lookup, AT).revoked is False
    _revoke_and_sign(st, issuer)
    assert source.response(*lookup, AT).revoked is True


def test_a_snapshot_ended_by_a_timer_serves_until_it_runs(world) -> None:
    """As the edge wires it (``after(READ_SNAPSHOT_SECONDS)``, here longer than a revocation takes)."""
    st, issuer, lookup = world
    seconds = 1.0
    source = LmdbSource(lambda: st.env, logging.getLogger("t"), after(seconds))

    async def scenario() -> tuple[bool, bool, bool]:
        before = source.response(*lookup, AT).revoked
        _revoke_and_sign(st, issuer)
        await asyncio.sleep(0)
        in_snapshot = source.response(*lookup, AT).revoked  # a turn later, the same snapshot
        await asyncio.sleep(seconds + 0.02)
        return before, in_snapshot, source.response(*lookup, AT).revoked

    assert asyncio.run(scenario()) == (False, False, True)


def test_an_unknown_serial_ends_its_snapshot_too(world) -> None:
    st, issuer, lookup = world
    snapshot_ends: list[Callable[[], None]] = []
    source = LmdbSource(lambda: st.env, logging.getLogger("t"), snapshot_ends.append)
    with pytest.raises(NotFound):
        source.response(lookup[0], b"\x7f\x7f", AT)
    assert len(snapshot_ends) == 1
    snapshot_ends.pop()()
    _revoke_and_sign(st, issuer)
    assert source.response(*lookup, AT).revoked is True


def test_a_ca_added_during_a_snapshot_answers_from_the_next_one(world) -> None:
    """The registry is read in a second read transaction beside the snapshot (py-lmdb: MDB_NOTLS)."""
    st, _, lookup = world
    snapshot_ends: list[Callable[[], None]] = []
    source = LmdbSource(lambda: st.env, logging.getLogger("t"), snapshot_ends.append)
    assert source.response(*lookup, AT).revoked is False
    second = create_ca(st, "ca2", "ec-p256", 30, None, None, NOW)
    add_devices(st, second, (7,), NOW)
    drain(st)
    second_lookup = common_request(crypto_request_by_hash(*issuer_hashes(second.cert_der, "sha1"), 7))
    assert second_lookup is not None
    with pytest.raises(NotFound):
        source.response(*second_lookup, AT)  # the issuer is known now, its responses not in this snapshot
    snapshot_ends.pop()()
    assert source.response(*second_lookup, AT).revoked is False


def test_a_failing_store_is_unavailable_and_logged_once(world, caplog) -> None:
    st, _, lookup = world
    source = LmdbSource(lambda: st.env, logging.getLogger("t"), at_once)
    assert source.response(*lookup, AT).revoked is False
    st.env.close()  # every read now fails inside LMDB
    with caplog.at_level(logging.ERROR, logger="t"):
        for _ in range(3):
            with pytest.raises(Unavailable):
                source.response(*lookup, AT)
    assert [r.getMessage().startswith("store read failed") for r in caplog.records] == [True]


def test_a_store_grown_past_the_workers_map_is_mapped_anew(tmp_path, caplog) -> None:
    """The operator raises store.map_size_mb for the signer, and the store grows past the map an edge
    worker opened with (LMDB's MDB_MAP_RESIZED): the worker maps it at its new size and serves on,
    where it answered tryLater until restarted."""
    small = Config(store=StoreConfig(map_size_mb=1))
    with SignerStore(tmp_path, small) as st:
        issuer = create_ca(st, "ca", "ec-p256", 30, None, None, NOW)
        add_devices(st, issuer, (1, 2), NOW)
        drain(st)
    lookup = common_request(crypto_request_by_hash(*issuer_hashes(issuer.cert_der, "sha1"), 1))
    assert lookup is not None
    source = LmdbSource(read_only_store(tmp_path, 1 << 20), logging.getLogger("t"), at_once)
    assert source.response(*lookup, AT).revoked is False
    index = tmp_path / "index.txt"
    index.write_text("".join(f"V\t301231235959Z\t\t{s:X}\tunknown\t/CN=d{s}\n" for s in range(100, 60100)))
    grow = [sys.executable, "-m", "signer.cli", "--data", str(tmp_path), "import", "ca", "--openssl-index", str(index)]
    env = {**os.environ, "PKI_EDGE_STORE_MAP_SIZE_MB": "16"}
    subprocess.run(grow, check=True, env=env, capture_output=True, timeout=120)
    assert (tmp_path / "store" / "data.mdb").stat().st_size > 1 << 20
    with caplog.at_level(logging.INFO, logger="t"):
        assert source.response(*lookup, AT).revoked is False
    assert any("the store grew past this worker's map: now mapped at 16 MB" in r.getMessage() for r in caplog.records)
    assert source.newest_signed_at() is not None


def test_served_issuer_parts_are_what_lookups_find_and_follow_the_registry(world) -> None:
    st, _, lookup = world
    source = LmdbSource(lambda: st.env, logging.getLogger("t"), at_once)
    assert source.served_issuer_parts() == []  # not open yet
    seen: list[list[bytes]] = []
    source.on_registry_change(lambda _: seen.append(source.served_issuer_parts()))
    assert source.open()
    parts = source.served_issuer_parts()
    assert seen == [parts] and len(parts) == 8  # four hash algorithms, each with and without NULL parameters
    assert lookup[0] in parts and source.response(*lookup, AT).revoked is False
    create_ca(st, "later", "ec-p256", 30, None, None, NOW)
    assert source.refresh_issuers()
    assert len(seen) == 2 and len(seen[1]) == 16 and set(parts) < set(seen[1])


def test_a_replaced_store_is_reopened_and_a_removed_one_leaves_the_source_closed(tmp_path, caplog) -> None:
    """A backup restored over the data directory under a running worker: it serves the store now there
    (here one where serial 1 is revoked), not the deleted file's responses until a restart."""
    import shutil

    live, backup = tmp_path / "live", tmp_path / "backup"
    with SignerStore(live, Config()) as st:
        issuer = create_ca(st, "ca", "ec-p256", 30, None, None, NOW)
        add_devices(st, issuer, (1, 2), NOW)
        drain(st)
    shutil.copytree(live, backup)
    with SignerStore(backup, Config()) as st:
        _revoke_and_sign(st, issuer)
    lookup = common_request(crypto_request_by_hash(*issuer_hashes(issuer.cert_der, "sha1"), 1))
    assert lookup is not None
    source = LmdbSource(read_only_store(live, 1 << 24), logging.getLogger("t"), at_once)
    seen: list[int] = []
    source.on_registry_change(lambda records: seen.append(len(records)))
    assert source.response(*lookup, AT).revoked is False
    assert not source.reopen_if_replaced()  # the same file: nothing to do

    shutil.rmtree(live)
    shutil.copytree(backup, live)
    with caplog.at_level(logging.INFO, logger="t"):
        assert source.reopen_if_replaced()
    assert "the store was replaced in the data directory: serving the new one" in caplog.text
    assert source.response(*lookup, AT).revoked is True
    assert not source.reopen_if_replaced()

    shutil.rmtree(live)
    with caplog.at_level(logging.INFO, logger="t"):
        assert source.reopen_if_replaced()
    assert "the store was removed from the data directory: answering tryLater until it is back" in caplog.text
    with pytest.raises(Unavailable):
        source.response(*lookup, AT)
    assert seen == [1, 1, 0] and source.served_issuer_parts() == []

    shutil.copytree(backup, live)  # back: opened by the next lookup, as at a worker's start
    assert source.response(*lookup, AT).revoked is True
    assert seen == [1, 1, 0, 1]


def test_following_a_failing_store_says_so_once_and_goes_on(world, caplog) -> None:
    st, _, lookup = world
    source = LmdbSource(lambda: st.env, logging.getLogger("t"), at_once)
    assert source.response(*lookup, AT).revoked is False
    source.follow_store()  # nothing changed: nothing said
    st.env.close()
    with caplog.at_level(logging.ERROR, logger="t"):
        for _ in range(3):
            source.follow_store()  # never raises: the worker's once-a-second task must live on
    assert [r.getMessage().startswith("store check failed") for r in caplog.records] == [True]


def test_a_store_of_a_later_format_is_refused_once_and_a_store_of_this_one_served_again(tmp_path, caplog) -> None:
    """A later release's signer rewrote the store's format under a running worker, then an operator
    restored a backup of this release: nothing is read from the first, the second is served."""
    import shutil

    from contract import store

    live, backup = tmp_path / "live", tmp_path / "backup"
    with SignerStore(live, Config()) as st:
        issuer = create_ca(st, "ca", "ec-p256", 30, None, None, NOW)
        add_devices(st, issuer, (1,), NOW)
        drain(st)
    shutil.copytree(live, backup)
    lookup = common_request(crypto_request_by_hash(*issuer_hashes(issuer.cert_der, "sha1"), 1))
    assert lookup is not None
    opened: list[int] = []
    opener = read_only_store(live, 1 << 24)
    source = LmdbSource(lambda: opened.append(1) or opener(), logging.getLogger("t"), at_once)
    seen: list[int] = []
    source.on_registry_change(lambda records: seen.append(len(records)))
    assert source.response(*lookup, AT).revoked is False

    # Another process (LMDB opens an environment once per process), as a later signer would.
    rewrite = (
        "import sys, lmdb; from contract import store; env = lmdb.open(sys.argv[1], max_dbs=len(store.ALL_DBS));"
        " txn = env.begin(db=env.open_db(store.DB_META), write=True);"
        " txn.put(store.META_FORMAT, store.pack_u64(store.FORMAT + 1)); txn.commit()"
    )
    subprocess.run([sys.executable, "-c", rewrite, str(live / "store")], check=True, timeout=60)
    with caplog.at_level(logging.ERROR, logger="t"):
        source.follow_store()
        for _ in range(3):
            for _ in range(5):
                with pytest.raises(Unavailable):
                    source.response(*lookup, AT)
            source.follow_store()  # tries the data directory again, once a second
    refused = [r.getMessage() for r in caplog.records]
    assert len(refused) == 1 and refused[0].startswith("store refused: the store in "), refused
    assert f"has format {store.FORMAT + 1}, written by a later pki-edge release" in refused[0]
    assert len(opened) == 1 + 3  # by follow_store, never by a request
    assert seen == [1, 0] and source.served_issuer_parts() == []

    # A worker started on that store refuses it the same way.
    fresh = LmdbSource(opener, logging.getLogger("t"), at_once)
    with pytest.raises(Unavailable):
        fresh.response(*lookup, AT)

    shutil.rmtree(live)
    shutil.copytree(backup, live)
    with pytest.raises(Unavailable):
        source.response(*lookup, AT)
    with caplog.at_level(logging.INFO, logger="t"):
        source.follow_store()
    assert "the store now in the data directory has this release's format: serving it" in caplog.text
    assert source.response(*lookup, AT).revoked is False
    assert seen == [1, 0, 1]
