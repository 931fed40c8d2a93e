"""Running edges for the HTTP tests: a small signed store, edge servers in subprocesses (the fast lane
and the ASGI path side by side), and an edge protocol under a real event loop in this process."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from bench.process import free_port as free_port  # the tests' servers take ports as the benchmark's do
from contract.config import Config
from signer.inventory import revoke
from signer.registry import create_ca
from signer.state import SignerStore
from tests.signed_store import add_devices, drain


def signed_store(data: Path) -> x509.Certificate:
    """A CA with serial 1 good and serial 2 revoked, responses signed; its certificate."""
    st = SignerStore(data, Config())
    now = dt.datetime.now(dt.UTC)
    issuer = create_ca(st, "ca", "ec-p256", 30, None, None, now)
    add_devices(st, issuer, (1, 2), now)
    revoke(st, issuer, 2, 1, int(now.timestamp()))
    drain(st)
    st.close()
    return x509.load_der_x509_certificate(issuer.cert_der)


def edge_servers(data: Path, extra_env: dict[str, str] | None = None) -> Iterator[list[str]]:
    """Two edges on ``data``: the fast lane's URL, then the ASGI path's (``edge.fast_lane`` false)."""
    procs, urls = [], []
    for fast in ("true", "false"):
        port = free_port()
        env = {**os.environ, "PKI_EDGE_EDGE_FAST_LANE": fast, **(extra_env or {})}
        cmd = [sys.executable, "-m", "signer.cli", "--data", str(data), "edge", "--port", str(port)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        urls.append(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 20
    for url in urls:
        while True:
            try:
                if httpx.get(url + "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "edge did not start"
            time.sleep(0.1)
    yield urls
    for p in procs:
        p.terminate()
        assert p.wait(15) in (0, -15)  # uvicorn re-raises SIGTERM after its graceful shutdown


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def request(ca: x509.Certificate, serial: int, algorithm: Any = None, nonce: bool = False) -> bytes:
    """A DER OCSP request for ``serial`` of ``ca``."""
    from edge.source import issuer_hashes

    algorithm = algorithm or hashes.SHA1()
    name_hash, key_hash = issuer_hashes(ca.public_bytes(serialization.Encoding.DER), algorithm.name)
    builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(name_hash, key_hash, serial, algorithm)
    if nonce:
        builder = builder.add_extension(x509.OCSPNonce(b"n" * 16), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def exchange(port: int, data: bytes) -> tuple[bytes, bool]:
    """What the server sends back for ``data``, and whether it then closed the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        received = b""
        s.settimeout(1.5)
        try:
            while chunk := s.recv(65536):
                received += chunk
        except TimeoutError:
            return received, False
    return received, True


def read_answers(sock: socket.socket, count: int) -> list[tuple[bytes, bytes]]:
    """``count`` HTTP answers (head, body) read off ``sock`` in order, by their Content-Length."""
    data, answers = b"", []
    deadline = time.monotonic() + 15
    while len(answers) < count:
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0:
            head = data[:head_end]
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            if len(data) >= head_end + 4 + length:
                answers.append((head, data[head_end + 4 : head_end + 4 + length]))
                data = data[head_end + 4 + length :]
                continue
        assert time.monotonic() < deadline, (answers, data)
        chunk = sock.recv(65536)
        assert chunk, (answers, data)
        data += chunk
    return answers


class InProcessEdge:
    """An edge protocol class (the fast lane's by default) under a real event loop and sockets."""

    def __init__(self, app: Any, keep_alive: float, protocol_class: type | None = None) -> None:
        from uvicorn.config import Config as UvicornConfig
        from uvicorn.server import ServerState

        from edge.fastlane import OCSPHttpToolsProtocol

        self.config = UvicornConfig(
            app, timeout_keep_alive=keep_alive, proxy_headers=False, ws="none", log_level="warning"
        )
        self.config.load()
        self.state = ServerState()
        self.protocol_class = protocol_class or OCSPHttpToolsProtocol
        self.protocols: list[Any] = []

    def factory(self, loop: asyncio.AbstractEventLoop) -> Callable[[], Any]:
        def make() -> Any:
            protocol = self.protocol_class(config=self.config, server_state=self.state, app_state={}, _loop=loop)
            self.protocols.append(protocol)
            return protocol

        return make

    async def serve(self) -> tuple[asyncio.Server, int]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(self.factory(loop), "127.0.0.1", 0)
        return server, server.sockets[0].getsockname()[1]


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)
