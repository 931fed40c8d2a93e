"""`pki-edge issue` (``signer.issue``) on a disk that fills up: nothing half made is left behind."""

from __future__ import annotations

import datetime as dt
import errno
import os
from pathlib import Path

import pytest

from signer import keys
from signer.inventory import overview
from signer.issue import issue_to_directory
from signer.registry import create_ca
from signer.state import SignerStore

NOW = dt.datetime.now(dt.UTC)


@pytest.mark.parametrize("failing", [1, 2], ids=["key", "certificate"])
def test_a_full_disk_leaves_no_file_and_no_serial_and_the_retry_works(
    st: SignerStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: int
) -> None:
    """Found by an audit: an empty key file stayed (the retry was refused: 'already exists') and the
    certificate was already in the inventory, a serial answered good that nobody held."""
    issuer = create_ca(st, "ca", "ec-p256", 30, None, None, NOW)
    before = overview(st, int(NOW.timestamp())).serials
    out = tmp_path / "out"
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        if len(synced) == failing:  # the key's file is written first, then the certificate's
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(keys.os, "fsync", fsync)
    with pytest.raises(OSError, match="No space left on device"):
        issue_to_directory(st, issuer, "dev.example", [], "ec-p256", 30, out, NOW)
    assert sorted(p.name for p in out.iterdir()) == []
    assert overview(st, int(NOW.timestamp())).serials == before
    monkeypatch.undo()
    cert, key = issue_to_directory(st, issuer, "dev.example", [], "ec-p256", 30, out, NOW)
    assert cert.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----") and key.stat().st_size > 0
    assert overview(st, int(NOW.timestamp())).serials == before + 1
