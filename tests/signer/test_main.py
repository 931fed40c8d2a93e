"""``signer.main``: what the signer says at start about its configuration."""

from __future__ import annotations

import datetime as dt
import logging

import pytest

from contract.config import CAProfile, Config
from signer import main
from signer.registry import create_ca
from signer.state import SignerStore


def test_a_profile_naming_no_ca_is_warned_of_at_start(st: SignerStore, caplog: pytest.LogCaptureFixture) -> None:
    """An audit: `[profiles.roott]` (a typo) was silently ignored, leaving root on the permissive default."""
    create_ca(st, "root", "ec-p256", 3650, None, None, dt.datetime.now(dt.UTC))
    config = Config(profiles={"root": CAProfile(), "roott": CAProfile()})
    with caplog.at_level(logging.WARNING, logger="t"):
        main._warn_of_unknown_profiles(st, config, logging.getLogger("t"))
    assert [r.getMessage() for r in caplog.records] == [
        "profiles.roott names no CA here (root): it applies to none until a CA of that name is created"
    ]
