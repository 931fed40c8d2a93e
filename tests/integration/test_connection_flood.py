"""An edge out of file descriptors: more connections than it may open, then served again once they close."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

import httpx

from tests.integration import helpers
from tests.integration.conftest import Run
from tests.integration.helpers import Server, free_port

OPEN_FILES = 256  # for `up` and all it starts: the signer, its workers, the edge worker
FLOOD = 2 * OPEN_FILES


def test_an_edge_out_of_file_descriptors_serves_again_once_connections_close(
    run: Run, data_dir: Path, tmp_path: Path, servers: list[Server]
) -> None:
    run("ca", "create", "root")
    (tmp_path / "ca.pem").write_text(run("ca", "show", "root").stdout)
    leaf = Path(run("issue", "root", "--cn", "flood.example", "--out", tmp_path).stdout.splitlines()[0])
    port = free_port()
    server = Server("up", data_dir, ["up", "--port", str(port)], tmp_path / "up.log", port=port, open_files=OPEN_FILES)
    servers.append(server)
    server.wait_ready()
    der = helpers.ocsp_request_der(helpers.load_cert(leaf), helpers.load_cert(tmp_path / "ca.pem"))
    helpers.wait_ocsp_status(server.base_url, der, "good")

    # Twice as many connections as the process may have files: the kernel completes the handshakes,
    # the edge accepts until it has no descriptor left.
    flood: list[socket.socket] = []
    try:
        for _ in range(FLOOD):
            with contextlib.suppress(OSError):
                flood.append(socket.create_connection(("127.0.0.1", port), timeout=2))
        assert len(flood) > OPEN_FILES, len(flood)
        # Out of descriptors: a new client is not served (it waits unaccepted, or is reset).
        try:
            refused = httpx.get(f"{server.base_url}/healthz", timeout=2, trust_env=False).status_code != 200
        except httpx.HTTPError:
            refused = True
        assert refused
    finally:
        for sock in flood:
            sock.close()

    # Once they are gone it serves again, OCSP and health alike, with nothing but warnings logged.
    assert helpers.cert_status(helpers.wait_ocsp_status(server.base_url, der, "good", timeout=15)) == "good"
    assert httpx.get(f"{server.base_url}/healthz", timeout=5, trust_env=False).status_code == 200
    assert server.alive()
    server.stop_clean()


def test_a_flood_of_bad_requests_is_one_log_line_not_one_each(
    run: Run, data_dir: Path, tmp_path: Path, servers: list[Server]
) -> None:
    """Refusals (400, 505, 501 ...) and answers from stale responses are the client's doing, at its rate:
    each kind is logged once a minute (with how many were left out), or the log is the attacker's to fill."""
    run("ca", "create", "root")
    port = free_port()
    server = Server("edge", data_dir, ["edge", "--port", str(port)], tmp_path / "edge.log", port=port)
    servers.append(server)
    server.wait_ready()
    for request in [b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n"] * 200 + [b"GET / HTTP/2.0\r\nHost: x\r\n\r\n"] * 50:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(request)
            assert s.recv(100).split(b" ")[1] in (b"400", b"505")
    assert server.alive()
    log = server.log(tail=1_000_000)
    assert log.count("Invalid HTTP request received") == 1, log
    assert log.count("(505)") == 1, log
    assert server.stop() in (0, -15)  # one worker: uvicorn re-raises the SIGTERM it drained on
