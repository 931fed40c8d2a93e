"""`pki-edge up`'s supervisor (``signer.supervisor``) with stand-in children: its grace period."""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgspec
import pytest

from contract.config import Config, SignerConfig
from contract.jobs import socket_path
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
    monkeypatch.setattr(supervisor, "JOB_SERVER_WAIT_SECONDS", 0.2)  # a stand-in signer takes no jobs
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
    assert "the signer takes no jobs after 0.2 s: starting the edge anyway" in said
    assert any(m.startswith("child ") and m.endswith("did not stop within 2 s: killing it") for m in said), said


def _run_up(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> int:
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        with caplog.at_level(logging.INFO, logger="t"):
            return supervisor.run_up(tmp_path, Config(), [], demo=False, logger=logging.getLogger("t"))
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


_LISTEN_LATE = """
import socket, sys, time
time.sleep(0.5)
server = socket.socket(socket.AF_UNIX)
server.bind(sys.argv[1])
server.listen()
time.sleep(30)
"""


def test_the_edge_starts_once_the_signer_takes_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An enroll sent as soon as the edge answers must reach a listening job server, so the edge
    process is started only once the signer's job socket accepts a connection."""
    socket = socket_path(tmp_path)
    socket.parent.mkdir(mode=0o700)
    started: list[str] = []

    def child(data_dir: Path, *args: str) -> subprocess.Popen[bytes]:
        if args[0] == "signer":
            started.append("signer")
            return subprocess.Popen([sys.executable, "-c", _LISTEN_LATE, str(socket)])
        started.append(f"edge, job socket {'there' if socket.exists() else 'absent'}")
        return subprocess.Popen(["true"])  # an edge that exits at once ends `up`

    monkeypatch.setattr(supervisor, "_child", child)
    monkeypatch.setattr(supervisor, "GRACE_SECONDS", 0.5)
    assert _run_up(tmp_path, caplog) == 1  # its edge "died"
    assert started == ["signer", "edge, job socket there"]
    assert not any("takes no jobs" in r.getMessage() for r in caplog.records)


def test_a_signer_that_dies_before_taking_jobs_gets_no_edge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    started: list[str] = []

    def child(data_dir: Path, *args: str) -> subprocess.Popen[bytes]:
        started.append(args[0])
        return subprocess.Popen(["sh", "-c", "sleep 0.2; exit 3"])

    monkeypatch.setattr(supervisor, "_child", child)
    started_at = time.monotonic()
    assert _run_up(tmp_path, caplog) == 1
    assert time.monotonic() - started_at < 5
    assert started == ["signer"]
    said = [r.getMessage() for r in caplog.records]
    assert "exit codes: signer 3" in said, said


def test_the_watchdog_arms_once_the_heartbeat_moves_and_fires_when_it_stands_still(tmp_path: Path) -> None:
    path, now = tmp_path / "alive", [100.0]
    path.touch()
    os.utime(path, (1, 1))  # a heartbeat left by an earlier signer
    dog = supervisor.Watchdog(path, 10, lambda: now[0])
    now[0] += 1000
    assert not dog.hung()  # not armed: the new signer may still be loading
    os.utime(path, (2, 2))
    assert not dog.hung()  # moved: armed from now (t = 1100)
    now[0] += 9.9
    assert not dog.hung()
    os.utime(path, (3, 3))
    assert not dog.hung()  # moved again at t = 1109.9
    now[0] += 10
    assert dog.hung()
    assert not supervisor.Watchdog(path, 0, lambda: now[0]).hung()  # 0: off


def test_the_loop_touches_the_heartbeat_as_it_comes_round(tmp_path: Path) -> None:
    """Precomputer.run calls its heartbeat at start and then at most every HEARTBEAT_SECONDS."""
    from signer.precompute import HEARTBEAT_SECONDS, Precomputer
    from signer.state import SignerStore

    beats: list[float] = []
    clock = FakeClock()
    stop = threading.Event()
    with SignerStore(tmp_path, Config()) as st:
        p = Precomputer(
            st,
            SignerConfig(),
            lambda r: None,  # type: ignore[arg-type,return-value]
            clock,  # type: ignore[arg-type]
            logging.getLogger("t"),
            random.Random(1),
            heartbeat=lambda: beats.append(clock.mono),
        )
        original = p.step

        def step() -> int:
            clock.mono += 1.0  # each turn a second
            if clock.mono > 20:
                stop.set()
            return original()

        p.step = step  # type: ignore[method-assign]
        p.run(stop)
    assert beats == [n * HEARTBEAT_SECONDS for n in range(5)]  # t = 0, 5, 10, 15, 20 of a turn a second


class FakeClock:
    def __init__(self) -> None:
        self.mono = 0.0

    def now(self) -> int:
        return 1_800_000_000

    def monotonic(self) -> float:
        return self.mono
