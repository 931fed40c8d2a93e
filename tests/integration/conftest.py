"""Fixtures for the integration tests: real pki-edge processes driven over HTTP and the CLI.

``shared`` is one `pki-edge up` for the whole session, on a data directory with a CA
"root", a good and a revoked leaf; tests that need more add their own CAs to it (a CA
added while the server runs must be picked up without a restart). Tests that kill or
demo a process start their own with ``servers``.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from tests.integration import helpers
from tests.integration.helpers import REVOKED_TIME, Server, load_cert, pki_edge

Run = Callable[..., subprocess.CompletedProcess[str]]

_item_started = [0.0]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _item_started[0] = time.monotonic()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On failure, attach the log of every server that was running during the test."""
    report = yield
    if report.failed:
        for server in helpers.SERVERS:
            if server.stopped_at is None or server.stopped_at >= _item_started[0]:
                report.sections.append((f"pki-edge {server.name} log {server.log_path}", server.log()))
    return report


@pytest.fixture
def free_port() -> int:
    return helpers.free_port()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def run(data_dir: Path) -> Run:
    """``run(*args, check=True)``: the pki-edge CLI on ``data_dir``, as a CompletedProcess."""

    def _run(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        return pki_edge(data_dir, *args, check=check)

    return _run


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    """Processes a test starts itself; anything still alive at the end is killed (group-wide)."""
    started: list[Server] = []
    yield started
    for server in started:
        if server.alive():
            server.kill()


@dataclass
class Shared:
    data_dir: Path
    work: Path
    server: Server
    ca_pem: Path
    good_pem: Path
    revoked_pem: Path

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    @property
    def ca(self) -> x509.Certificate:
        return load_cert(self.ca_pem)

    @property
    def good(self) -> x509.Certificate:
        return load_cert(self.good_pem)

    @property
    def revoked(self) -> x509.Certificate:
        return load_cert(self.revoked_pem)

    def run(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        return pki_edge(self.data_dir, *args, check=check)


@pytest.fixture(scope="session")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    helpers.require_openssl()
    work = tmp_path_factory.mktemp("shared")
    data = work / "data"
    pki_edge(data, "ca", "create", "root", "--key", "ec-p256")
    ca_pem = work / "ca.pem"
    ca_pem.write_text(pki_edge(data, "ca", "show", "root").stdout)
    certs = work / "certs"
    pki_edge(data, "issue", "root", "--cn", "good.example", "--san", "DNS:good.example", "--out", certs)
    pki_edge(data, "issue", "root", "--cn", "revoked.example", "--out", certs)
    serial = helpers.openssl("x509", "-in", certs / "revoked.example.pem", "-noout", "-serial").strip()
    pki_edge(data, "revoke", "root", serial, "--reason", "keyCompromise", "--time", REVOKED_TIME)

    server = helpers.start_up(data, work, ready=False)
    try:
        server.wait_ready()
        helpers.wait_drained(data)
        shared = Shared(data, work, server, ca_pem, certs / "good.example.pem", certs / "revoked.example.pem")
        helpers.wait_ocsp_status(shared.base_url, helpers.ocsp_request_der(shared.good, shared.ca), "good")
    except BaseException:
        server.kill()
        raise
    yield shared
    server.stop_clean()
