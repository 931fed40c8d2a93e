"""`pki-edge backup` (``signer.backup``): a data directory copied whole, consistent with its own registry."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest

from contract import store
from contract.config import Config
from signer import backup
from signer.backup import back_up
from signer.inventory import revoke
from signer.registry import create_ca, mint_responder, responder_key_file
from signer.state import SignerError, SignerStore, keys_dir
from tests.signed_store import add_devices, drain

NOW = dt.datetime.now(dt.UTC)
WEEK = 7 * 86400


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _tables(data_dir: Path) -> dict[bytes, list[tuple[bytes, bytes]]]:
    with SignerStore(data_dir, Config()) as st, st.env.begin() as txn:
        dbs = store.open_dbs(st.env, readonly=False)
        return {name: list(txn.cursor(db=dbs[name])) for name in store.ALL_DBS}


def test_a_backup_is_a_data_directory_with_the_same_store_keys_and_configuration(
    st: SignerStore, data_dir: Path, tmp_path: Path
) -> None:
    root = create_ca(st, "root", "ec-p256", 3650, None, None, NOW)
    create_ca(st, "rsa", "rsa-2048", 3650, None, None, NOW)
    mint_responder(st, "rsa", "ec-p256", 30, NOW, WEEK)
    add_devices(st, root, (1, 2, 3), NOW)
    revoke(st, root, 2, 1, int(NOW.timestamp()))
    drain(st)
    (data_dir / "pki-edge.toml").write_text("[signer]\nvalidity_hours = 24\n")
    out = tmp_path / "backups" / "monday"

    summary = back_up(st, out)

    assert (summary.issuers, summary.serials, summary.key_files, summary.config) == (2, 3, 3, True)
    assert summary.store_bytes == (out / "store" / "data.mdb").stat().st_size
    st.close()
    assert _tables(out) == _tables(data_dir)  # every table, key for key and byte for byte
    keys = sorted(p.name for p in keys_dir(data_dir).iterdir())
    assert sorted(p.name for p in (out / "signer" / "keys").iterdir()) == keys
    for name in keys:
        copied = out / "signer" / "keys" / name
        assert copied.read_bytes() == (keys_dir(data_dir) / name).read_bytes() and _mode(copied) == 0o600
    assert [_mode(d) for d in (out, out / "signer", out / "signer" / "keys")] == [0o700] * 3
    assert (out / "pki-edge.toml").read_text() == "[signer]\nvalidity_hours = 24\n"
    assert not (out / "signer" / "signer.lock").exists() and not (out / "signer" / "jobs.sock").exists()


def test_a_backup_goes_to_a_new_directory_only(st: SignerStore, tmp_path: Path) -> None:
    create_ca(st, "root", "ec-p256", 3650, None, None, NOW)
    (tmp_path / "there").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    for taken in ("there", "link"):
        with pytest.raises(SignerError, match=f"{tmp_path / taken} already exists: give a new directory"):
            back_up(st, tmp_path / taken)
    (tmp_path / "file").write_text("")
    with pytest.raises(SignerError, match=f"cannot create {tmp_path / 'file' / 'b'}: Not a directory"):
        back_up(st, tmp_path / "file" / "b")


def test_a_responder_renewed_between_the_snapshot_and_the_keys_is_copied_again(
    st: SignerStore, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The snapshot names a responder whose key the renewal then removes: that copy lacks a key its own
    registry needs, and is taken again (the second snapshot names the successor, whose key is there)."""
    create_ca(st, "rsa", "rsa-2048", 3650, None, None, NOW)
    first = mint_responder(st, "rsa", "ec-p256", 30, NOW, WEEK)
    assert first.responder_cert_der is not None
    snapshots: list[int] = []
    real_keys_dir = backup.keys_dir

    def keys_dir_after_a_renewal(data: Path) -> Path:  # called right after each snapshot
        snapshots.append(1)
        if len(snapshots) == 1:
            mint_responder(st, "rsa", "ec-p256", 30, NOW, WEEK)  # the signer's renewal, as it does it
        return real_keys_dir(data)

    monkeypatch.setattr(backup, "keys_dir", keys_dir_after_a_renewal)
    out = tmp_path / "b"
    back_up(st, out)
    assert len(snapshots) == 2
    successor = st.issuer("rsa").responder_cert_der
    assert successor is not None and successor != first.responder_cert_der
    names = sorted(p.name for p in (out / "signer" / "keys").iterdir())
    assert names == sorted(["rsa.ca.key", responder_key_file(data_dir, "rsa", successor).name])
    with SignerStore(out, Config()) as copy:
        assert copy.issuer("rsa").responder_cert_der == successor


def test_a_key_the_registry_names_and_nobody_has_is_said(st: SignerStore, data_dir: Path, tmp_path: Path) -> None:
    create_ca(st, "rsa", "rsa-2048", 3650, None, None, NOW)
    minted = mint_responder(st, "rsa", "ec-p256", 30, NOW, WEEK)
    assert minted.responder_cert_der is not None
    lost = responder_key_file(data_dir, "rsa", minted.responder_cert_der)
    lost.unlink()
    with pytest.raises(SignerError, match=f"the store names keys that are not in .*: {lost.name} "):
        back_up(st, tmp_path / "b")
    assert not (tmp_path / "b").exists()  # nothing half made is left


def test_a_backup_that_fails_midway_leaves_nothing(
    st: SignerStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_ca(st, "root", "ec-p256", 3650, None, None, NOW)

    def disk_full(source: Path, target: Path) -> None:
        raise OSError(28, "No space left on device", str(target))

    monkeypatch.setattr(backup, "_copy_private", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        back_up(st, tmp_path / "b")
    assert not (tmp_path / "b").exists()
