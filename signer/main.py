"""`pki-edge signer`: run the precompute loop until told to stop.

The first SIGTERM or SIGINT finishes the batch under way and exits; a second one exits at once
(the store stays consistent either way: an unfinished batch is simply redone).
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import signal
import threading
from pathlib import Path
from types import FrameType

from contract.config import Config
from signer.precompute import Clock, Precomputer
from signer.registry import load_response_signer
from signer.state import SignerError, SignerStore, signer_dir


def _hold_lock(data_dir: Path) -> int:
    fd = os.open(signer_dir(data_dir) / "signer.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SignerError(f"another signer is already running on {data_dir}") from None
    return fd


def run_signer(data_dir: Path, config: Config, logger: logging.Logger) -> None:
    lock = _hold_lock(data_dir)
    st = SignerStore(data_dir, config)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            os._exit(128 + signum)
        logger.info("signal %d: finishing the current batch, then stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    precomputer = Precomputer(
        st, config.signer, lambda record: load_response_signer(data_dir, record), Clock(), logger, random.Random()
    )
    logger.info("signer running on %s", data_dir)
    try:
        precomputer.run(stop)
    finally:
        st.close()
        os.close(lock)
    logger.info("signer stopped")
