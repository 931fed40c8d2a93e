"""signer.worker: what a worker checks when it loads a CA for issuance."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pytest

from contract.config import Config
from signer.registry import create_ca, key_path
from signer.state import SignerError, SignerStore
from signer.worker import Worker
from tests.signer.conftest import key_pem, pool_key

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def worker_for(st: SignerStore, data_dir: Path) -> Worker:
    st.close()  # LMDB: one environment per file and process; the worker opens its own
    return Worker(data_dir, Config(), logging.getLogger("test"))


def test_load_ca_accepts_the_matching_key(st: SignerStore, data_dir: Path) -> None:
    record = create_ca(st, "ca", "ec-p256", 30, None, None, NOW)
    cert, key, _ = worker_for(st, data_dir).load_ca(record)
    assert key.public_key() == cert.public_key()


def test_load_ca_refuses_a_key_file_that_is_not_the_ca_key(st: SignerStore, data_dir: Path) -> None:
    # Issuance skips verifying each new certificate because of this check (signer.enroll.issue_and_store).
    record = create_ca(st, "ca", "ec-p256", 30, None, None, NOW)
    key_path(data_dir, "ca", "ca").write_bytes(key_pem(pool_key("ec-p256", 5)))
    with pytest.raises(SignerError, match="does not hold the CA certificate's key"):
        worker_for(st, data_dir).load_ca(record)
