"""Running the edge: the limit of open files it lifts for itself."""

from __future__ import annotations

import base64
import re
import resource
import selectors
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from tests.edge.edges import free_port, request

SOFT = 256


def _low_soft_limit() -> None:
    """In the child before exec: the soft limit of open files many systems start a service with."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT, hard))


def _open_files_limit(pid: int) -> tuple[str, str]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return soft, hard
    raise AssertionError("no open-files line")


def _wait_ready(port: int) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "edge did not start"
        time.sleep(0.1)


def test_an_edge_started_with_a_low_soft_limit_serves_more_connections_than_it(store) -> None:
    data, ca = store
    port = free_port()
    cmd = [sys.executable, "-m", "signer.cli", "--data", str(data), "edge", "--port", str(port)]
    proc = subprocess.Popen(cmd, preexec_fn=_low_soft_limit, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_ready(port)
        soft, hard = _open_files_limit(proc.pid)
        assert soft == hard and (hard == "unlimited" or int(hard) > SOFT), (soft, hard)
        answers = _many_connections_at_once(port, ca, 3 * SOFT)
        assert answers == [True] * (3 * SOFT)
    finally:
        proc.terminate()
        proc.wait(15)


def _many_connections_at_once(port: int, ca: x509.Certificate, count: int) -> list[bool]:
    """``count`` connections open together, each asking one OCSP GET: which got a 200."""
    path = b"/" + base64.b64encode(request(ca, 1)).replace(b"/", b"%2F").replace(b"+", b"%2B").replace(b"=", b"%3D")
    message = b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]
    try:
        for s in sockets:
            s.sendall(message)
        received = {s: b"" for s in sockets}
        with selectors.DefaultSelector() as selector:
            for s in sockets:
                selector.register(s, selectors.EVENT_READ)
            deadline = time.monotonic() + 20
            waiting = set(sockets)
            while waiting and time.monotonic() < deadline:
                for key, _ in selector.select(1):
                    s = key.fileobj
                    assert isinstance(s, socket.socket)
                    chunk = s.recv(65536)
                    received[s] += chunk
                    if not chunk or b"\r\n\r\n" in received[s]:
                        selector.unregister(s)
                        waiting.discard(s)
        return [received[s].startswith(b"HTTP/1.1 200 OK") for s in sockets]
    finally:
        for s in sockets:
            s.close()


def test_the_limit_is_left_alone_when_already_at_the_hard_one() -> None:
    script = (
        "import logging, resource\n"
        "from edge.main import raise_open_file_limit\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (min(64, hard), hard))\n"
        "first = raise_open_file_limit(logging.getLogger('t'))\n"
        "second = raise_open_file_limit(logging.getLogger('t'))\n"
        "print(first == second == resource.getrlimit(resource.RLIMIT_NOFILE)[0], first > 64 or hard <= 64)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"], out


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_edges_own_lines_carry_time_logger_and_level(store, tmp_path: Path, workers: str) -> None:
    """pki_edge.* lines of the edge (a refused request's warning, the open-files note) and uvicorn's are
    written in the signer's format; they went out bare (no time, no level), or not at all for INFO."""
    data, _ = store
    port = free_port()
    log = tmp_path / "edge.log"
    cmd = [sys.executable, "-m", "signer.cli", "--data", str(data), "edge", "--port", str(port), "--workers", workers]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, preexec_fn=_low_soft_limit, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_ready(port)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"BREW / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 501 ")
    finally:
        proc.terminate()
        proc.wait(15)
    lines = log.read_text().splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert any(
        re.fullmatch(stamp + r" pki_edge\.edge WARNING Method not implemented\. \(501\)", line) for line in lines
    ), lines
    assert any(
        re.fullmatch(stamp + r" pki_edge\.edge INFO open files: limit raised from 256 to \d+", line) for line in lines
    ), lines
    assert any(re.fullmatch(stamp + r" uvicorn\.error INFO Application startup complete\.", line) for line in lines), (
        lines
    )
