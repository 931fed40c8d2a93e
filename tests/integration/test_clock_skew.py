"""A signer whose clock ran ahead of the edge's by more than its backdating (signer.backdate_seconds):
its responses' thisUpdate lies in the edge's future. openssl, on the edge's time, refuses them; the
edge serves them (its own clock may be the wrong one) but with max-age=0, so that no CDN keeps them,
and says so in its log once a minute."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from urllib.parse import quote

import httpx

from contract.config import load_config
from signer.precompute import Clock
from signer.state import SignerStore
from tests.integration import helpers
from tests.integration.conftest import Run
from tests.integration.helpers import Server, free_port, openssl
from tests.signed_store import drain

AHEAD_SECONDS = 2 * 3600  # past the default backdating of an hour


class AheadClock(Clock):
    def now(self) -> int:
        return super().now() + AHEAD_SECONDS


def test_a_response_dated_in_the_edges_future_is_served_uncacheable(
    run: Run, data_dir: Path, tmp_path: Path, servers: list[Server]
) -> None:
    run("ca", "create", "root")
    ca = tmp_path / "ca.pem"
    ca.write_text(run("ca", "show", "root").stdout)
    leaf = Path(run("issue", "root", "--cn", "ahead.example", "--out", tmp_path).stdout.splitlines()[0])
    st = SignerStore(data_dir, load_config(data_dir))
    try:
        drain(st, AheadClock())  # the signer of a host two hours ahead
    finally:
        st.close()
    port = free_port()
    edge = Server("edge", data_dir, ["edge", "--port", str(port), "--workers", "1"], tmp_path / "edge.log", port=port)
    servers.append(edge)
    edge.wait_ready()

    der = helpers.ocsp_request_der(helpers.load_cert(leaf), helpers.load_cert(ca))
    replies = [helpers.post_ocsp(edge.base_url, der) for _ in range(3)]
    get_path = "/ocsp/" + quote(base64.b64encode(der).decode(), safe="")
    replies.append(httpx.get(edge.base_url + get_path, timeout=10, trust_env=False))
    for reply in replies:
        assert reply.status_code == 200
        assert (
            reply.headers["cache-control"]
            == "max-age=0, public, no-transform, must-revalidate, stale-while-revalidate=0"
        )
        assert reply.content == replies[0].content
    # What a client on the edge's time makes of it: not yet valid (RFC 6960 §4.2.2.1).
    said = openssl("ocsp", "-issuer", ca, "-cert", leaf, "-CAfile", ca, "-url", edge.base_url, check=False)
    assert "Status times invalid" in said and "status not yet valid" in said, said

    warning = "a stored response's thisUpdate is ahead of this edge's clock: served with max-age=0"
    deadline = time.monotonic() + 5
    while edge.log().count(warning) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert edge.log().count(warning) == 1, edge.log()  # a line a minute, not one a request
