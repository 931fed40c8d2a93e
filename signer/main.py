"""`pki-edge signer`: run the precompute loop until told to stop.

The first SIGTERM or SIGINT finishes the batch under way and exits; a second one exits at once
(the store stays consistent either way: an unfinished batch is simply redone).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fcntl
import functools
import logging
import os
import random
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from contract.config import Config
from contract.jobs import socket_path
from contract.store import file_identity, store_path
from signer.jobserver import JobServer
from signer.precompute import Clock, Precomputer
from signer.registry import load_response_signer, renew_responders
from signer.state import SignerError, SignerStore, beat, heartbeat_path, signer_dir
from signer.worker_pool import ProcessPool, worker_command


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
    _warn_of_unknown_profiles(st, config, logger)
    stop = threading.Event()
    watch = FilesWatch([store_path(data_dir) / "data.mdb", signer_dir(data_dir) / "signer.lock"], stop)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            os._exit(128 + signum)
        logger.info("signal %d: finishing the current batch, then stopping", signum)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # HUP too: a closed terminal; nothing reloads
        signal.signal(signum, on_signal)
    precomputer = Precomputer(
        st,
        config.signer,
        lambda record: load_response_signer(data_dir, record),
        Clock(),
        logger,
        random.Random(),
        every_minute=lambda now: renew_responders(st, dt.datetime.fromtimestamp(now, dt.UTC), logger),
        heartbeat=functools.partial(beat, heartbeat_path(data_dir)),
    )
    jobs_thread = JobServerThread(data_dir, config, logger, on_failure=stop.set)
    try:
        jobs_thread.start()  # EST and live OCSP need it: a signer without it is not started
        watch.start()
        precomputer.queue_added_hash_algorithms()
        logger.info("signer running on %s", data_dir)
        precomputer.run(stop)
    finally:
        watch.stop()
        jobs_thread.stop()
        st.close()
        os.close(lock)
    if jobs_thread.failure is not None:
        raise SignerError(f"the job server stopped: {jobs_thread.failure}")
    if watch.changed is not None:
        raise SignerError(
            f"{watch.changed} is not the file this signer opened (the data directory was replaced or removed):"
            " stopped; start the signer again on what is there now"
        )
    logger.info("signer stopped")


def _warn_of_unknown_profiles(st: SignerStore, config: Config, logger: logging.Logger) -> None:
    """A profile is a CA's by name: one naming no CA (a typo) leaves that CA on the permissive default."""
    names = {record.name for record in st.issuers()}
    for name in sorted(set(config.profiles) - names):
        logger.warning(
            "profiles.%s names no CA here (%s): it applies to none until a CA of that name is created",
            name,
            ", ".join(sorted(names)) or "no CA yet",
        )


class FilesWatch:
    """Stops the signer when its store or lock file is replaced or removed (checked every second).

    A signer writing on to a deleted store would sign for no one, and a second signer could start on
    the new directory beside it (the lock it holds is on the old file).
    """

    INTERVAL_SECONDS = 1.0

    def __init__(self, paths: list[Path], stop: threading.Event) -> None:
        self._identities = {path: file_identity(path) for path in paths}
        self._stop = stop
        self._done = threading.Event()
        self.changed: Path | None = None
        self._thread = threading.Thread(target=self._run, name="files-watch", daemon=True)

    def _run(self) -> None:
        while not self._done.wait(self.INTERVAL_SECONDS):
            for path, identity in self._identities.items():
                if file_identity(path) != identity:
                    self.changed = path
                    self._stop.set()
                    return

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


class JobServerThread:
    """The job server's event loop, beside the precompute loop, with its pool of worker processes.

    It must listen for the signer to start; if it stops on an error later, ``on_failure`` is called
    (the signer then stops, and says why).
    """

    START_SECONDS = 30

    def __init__(self, data_dir: Path, config: Config, logger: logging.Logger, on_failure: Callable[[], None]) -> None:
        retry_after = config.est.retry_after_seconds
        pool = ProcessPool(worker_command(data_dir), config.workers.count, retry_after, logger)
        self._socket = socket_path(data_dir)
        self._server = JobServer(self._socket, pool, config.workers.max_queue, retry_after, logger)
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._listening = threading.Event()
        self._on_failure = on_failure
        self.failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="job-server", daemon=True)

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._server.serve(self._stop, self._listening.set))
        except Exception as exc:  # reported by the signer's main thread, in one line
            self.failure = exc
            self._listening.set()
            self._on_failure()

    def start(self) -> None:
        self._thread.start()
        self._listening.wait(self.START_SECONDS)
        if self.failure is not None:
            raise SignerError(f"the job server cannot listen on {self._socket}: {self.failure}")

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout=60)
