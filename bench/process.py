"""Server processes started by the benchmark: pinned, in their own process group, stopped by id."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from bench import procstat


class Proc:
    """One started server (and its children). Only processes started here are ever signalled."""

    def __init__(
        self,
        name: str,
        cmd: list[str],
        log_path: Path,
        *,
        cpu: int | None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.cmd = (["taskset", "-c", str(cpu)] if cpu is not None else []) + cmd
        self.log_path = log_path
        self.started_at = time.monotonic()
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            self.cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,  # its own process group, so its workers are stopped with it
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_seconds(self) -> float:
        return procstat.tree_cpu_seconds(self.pid)

    def cpu_split(self) -> tuple[float, float]:
        """(user, system) CPU seconds of the process tree so far."""
        return procstat.tree_cpu_split(self.pid)

    def pids(self) -> list[int]:
        return [self.pid, *procstat.descendants(self.pid)]

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_until(self, probe: Callable[[], bool], timeout: float, interval: float = 0.01) -> float:
        """Call ``probe`` until it is true; returns the seconds since start. Fails if the process dies."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if probe():
                return time.monotonic() - self.started_at
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(interval)

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM to its process group, then SIGKILL to the group if it is still there."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        # Workers that outlived their parent are still in the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()


def free_port() -> int:
    """A port of 127.0.0.1 free now, for a server about to be started (the benchmark's and the tests').

    Taken below the kernel's range of ephemeral ports: one that a bind to port 0 hands out could be
    given to any outgoing connection (wrk's, a test client's) before the server binds it.
    """
    low = _ephemeral_low()
    candidates = range(max(1024, low - 10000), low)
    for port in random.sample(candidates, min(64, len(candidates))):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # a crowded range: any free one
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux's default range begins at 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768
