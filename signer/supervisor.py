"""`pki-edge up`: signer and edge as two child processes under one supervisor.

SIGINT or SIGTERM is passed to both children, which drain and exit; a second
signal, or a child that does not stop within the grace period, is killed. If
either child dies on its own, the other is stopped and `up` exits non-zero.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from contract.config import Config
from contract.jobs import socket_path
from signer.state import SignerStore, heartbeat_path

# How long the children get to drain, beyond the signer's batch under way (signer.batch_seconds, up to
# 30 s), which it finishes first.
GRACE_SECONDS = 15
# How long the edge waits for the signer's job server (which starts its worker processes first).
JOB_SERVER_WAIT_SECONDS = 30
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the supervisor dies (Linux), since it no longer shares our group."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _child(data_dir: Path, *args: str) -> subprocess.Popen[bytes]:
    # Each child gets its own process group: a terminal's Ctrl-C reaches only the supervisor,
    # which then asks each child once to drain (a second signal would make it exit at once).
    return subprocess.Popen(
        [sys.executable, "-m", "signer.cli", "--data", str(data_dir), *args],
        process_group=0,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )


class Watchdog:
    """Whether the signer's heartbeat file (touched as its signing loop comes round) has stood still for
    ``seconds``. Armed once it has moved since `up` started: before that the signer may be loading, or
    queueing a whole store for a new hash algorithm. ``seconds`` 0: never hung."""

    def __init__(self, path: Path, seconds: float, monotonic: Callable[[], float]) -> None:
        self._path = path
        self._seconds = seconds
        self._monotonic = monotonic
        self._first = self._mtime()
        self._last: float | None = None  # its last mtime since armed
        self._moved_at = 0.0

    def _mtime(self) -> float | None:
        try:
            return os.stat(self._path).st_mtime
        except OSError:
            return None

    def hung(self) -> bool:
        if not self._seconds:
            return False
        mtime, now = self._mtime(), self._monotonic()
        if mtime != (self._first if self._last is None else self._last):
            self._last, self._moved_at = mtime, now
            return False
        return self._last is not None and now - self._moved_at >= self._seconds


def _clean_exit(code: int | None) -> bool:
    # uvicorn re-raises the signal it drained on, so the edge ends "killed by SIGTERM".
    return code in (0, -signal.SIGTERM, -signal.SIGINT)


def _wait_ready(url: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return True
        except OSError:
            time.sleep(0.1)
    return False


def _wait_listening(path: Path, child: subprocess.Popen[bytes], deadline: float) -> bool:
    """Whether the job server at ``path`` accepts a connection before ``deadline`` (not once ``child``,
    its signer, has exited)."""
    while time.monotonic() < deadline and child.poll() is None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
                return True
            except OSError:  # not there yet, or a stale socket left by a killed signer
                time.sleep(0.05)
    return False


def run_up(
    data_dir: Path,
    config: Config,
    edge_flags: list[str],
    *,
    demo: bool,
    logger: logging.Logger,
) -> int:
    st = SignerStore(data_dir, config)  # creates the store, so the edge opens it at once
    host, port, workers = config.edge.host, config.edge.port, config.edge.workers
    public_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in public_host:  # an IPv6 address, in brackets in a URL
        public_host = f"[{public_host}]"
    url = f"http://{public_host}:{port}/ocsp"
    try:
        if demo and not st.issuers():
            from signer.demo import create_demo

            logger.info("creating the demo CA and devices in %s", data_dir)
            create_demo(st, url, dt.datetime.now(dt.UTC))
    finally:
        st.close()

    children = [_child(data_dir, "signer")]
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if stopping:
            for child in children:
                child.kill()
            return
        stopping = True
        if frame is not None:  # a signal, not a child's exit
            logger.info("signal %d: stopping signer and edge", signum)
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # HUP too: a closed terminal; nothing reloads
        signal.signal(signum, on_signal)

    # The edge starts once the signer takes jobs, so an enroll sent as soon as the port answers is not
    # told "signer unreachable". A signer slower than that still gets an edge, which serves OCSP.
    signer = children[0]
    listening = _wait_listening(socket_path(data_dir), signer, time.monotonic() + JOB_SERVER_WAIT_SECONDS)
    if not stopping and signer.poll() is None:
        if not listening:
            logger.warning("the signer takes no jobs after %g s: starting the edge anyway", JOB_SERVER_WAIT_SECONDS)
        edge = _child(data_dir, "edge", "--host", host, "--port", str(port), "--workers", str(workers), *edge_flags)
        children.append(edge)

    if demo and _wait_ready(f"http://{public_host}:{port}/healthz", time.monotonic() + 30):
        from signer.demo import demo_instructions

        print(demo_instructions(data_dir, url), flush=True)

    watchdog = Watchdog(heartbeat_path(data_dir), config.signer.watchdog_seconds, time.monotonic)
    while not stopping and all(child.poll() is None for child in children):
        if watchdog.hung():
            logger.error(
                "the signer's signing loop has not come round for %.0f s (signer.watchdog_seconds): killing it",
                config.signer.watchdog_seconds,
            )
            children[0].kill()
        time.sleep(0.2)
    failed = not stopping
    if failed:
        logger.error("a child process exited unexpectedly; stopping the other")
        on_signal(signal.SIGTERM, None)
    grace = GRACE_SECONDS + config.signer.batch_seconds
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.error("child %d did not stop within %.0f s: killing it", child.pid, grace)
            child.kill()
            child.wait()
            failed = True
    if not all(_clean_exit(child.returncode) for child in children):
        codes = ", ".join(
            f"{name} {child.returncode}" for name, child in zip(("signer", "edge"), children, strict=False)
        )
        logger.error("exit codes: %s", codes)
        failed = True
    return 1 if failed else 0
