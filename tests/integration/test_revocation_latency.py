"""(f) A revocation reaches the edge within a second of `pki-edge revoke` returning."""

from __future__ import annotations

import time

import httpx

from tests.integration.conftest import Shared
from tests.integration.helpers import cert_status, load_cert, ocsp_request_der, openssl, wait_ocsp_status

COUNT = 5
BOUND_SECONDS = 1.0
POLL_SECONDS = 0.02


def test_revocation_propagates_fast(shared: Shared) -> None:
    out = shared.work / "latency"
    leaves = []
    for i in range(COUNT):
        shared.run("issue", "root", "--cn", f"latency-{i}.example", "--out", out)
        leaves.append(out / f"latency-{i}.example.pem")
    requests = [ocsp_request_der(load_cert(p), shared.ca) for p in leaves]
    for der in requests:
        wait_ocsp_status(shared.base_url, der, "good")

    delays = []
    with httpx.Client(base_url=shared.base_url, trust_env=False, timeout=5) as client:
        for leaf, der in zip(leaves, requests, strict=True):
            serial = openssl("x509", "-in", leaf, "-noout", "-serial").strip()
            shared.run("revoke", "root", serial, "--reason", "keyCompromise")
            returned = time.monotonic()
            while True:
                r = client.post("/ocsp", content=der)
                assert r.status_code == 200
                status = cert_status(r.content)
                if status == "revoked":
                    delays.append(time.monotonic() - returned)
                    break
                assert status == "good"
                assert time.monotonic() - returned < 10, "revocation never reached the edge"
                time.sleep(POLL_SECONDS)
    print("revocation delays:", [f"{d:.3f}" for d in delays])
    assert max(delays) < BOUND_SECONDS, [f"{d:.3f}" for d in delays]
