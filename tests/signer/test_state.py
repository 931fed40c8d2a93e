"""signer.state: the signer's side of the data directory is this user's alone."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from contract.config import Config
from signer.registry import create_ca
from signer.state import SignerError, SignerStore, signer_dir


def test_a_signer_directory_open_to_others_is_refused(tmp_path: Path) -> None:
    """The security review: an existing DATA/signer of mode 777 (or another user's) was used as found,
    and the CA key written into it could be moved away by anyone."""
    (tmp_path / "signer").mkdir(mode=0o700)
    os.chmod(tmp_path / "signer", 0o777)
    with pytest.raises(SignerError, match=r"signer is open to other users \(mode 777\): chmod 700"):
        signer_dir(tmp_path)
    os.chmod(tmp_path / "signer", 0o700)
    assert signer_dir(tmp_path) == tmp_path / "signer"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_a_key_directory_of_another_user_is_refused_before_the_ca_exists(tmp_path: Path) -> None:
    (tmp_path / "signer").mkdir(mode=0o700)
    keys = tmp_path / "signer" / "keys"
    keys.mkdir(mode=0o700)
    os.chown(keys, 65534, -1)
    with SignerStore(tmp_path, Config()) as st:
        with pytest.raises(SignerError, match="keys belongs to another user"):
            create_ca(st, "ca", "ec-p256", 30, None, None, dt.datetime.now(dt.UTC))
        assert st.issuers() == []
