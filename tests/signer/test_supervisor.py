"""`pki-edge up`'s supervisor (``signer.supervisor``) with stand-in children: its grace period."""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from pathlib import Path

import msgspec
import pytest

from contract.config import Config, SignerConfig
from signer import supervisor


def test_a_child_that_does_not_drain_is_killed_after_the_grace_and_the_batch_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The edge exits on its own; the signer ignores SIGTERM: it gets GRACE_SECONDS plus the longest
    batch it may be finishing (signer.batch_seconds), then it is killed and `up` says so."""
    children = [
        subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 30"]),  # a signer that never drains
        subprocess.Popen(["sh", "-c", "sleep 0.3"]),  # an edge that dies
    ]
    monkeypatch.setattr(supervisor, "_child", lambda data_dir, *args: children.pop(0))
    monkeypatch.setattr(supervisor, "GRACE_SECONDS", 0.5)
    config = Config(signer=msgspec.structs.replace(SignerConfig(), batch_seconds=1.0))
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        with caplog.at_level(logging.INFO, logger="t"):
            started = time.monotonic()
            code = supervisor.run_up(tmp_path, config, [], demo=False, logger=logging.getLogger("t"))
            took = time.monotonic() - started
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    assert code == 1
    assert 1.5 <= took < 5
    said = [r.getMessage() for r in caplog.records]
    assert "a child process exited unexpectedly; stopping the other" in said
    assert any(m.startswith("child ") and m.endswith("did not stop within 2 s: killing it") for m in said), said
