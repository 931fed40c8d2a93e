"""The fast lane and the ASGI path give byte-identical answers and headers (real servers, real sockets)."""

from __future__ import annotations

import base64
import datetime as dt
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from contract.config import Config
from signer.inventory import revoke
from signer.registry import create_ca
from signer.state import SignerStore
from tests.signed_store import add_devices, drain


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    data = tmp_path_factory.mktemp("fastlane")
    st = SignerStore(data, Config())
    now = dt.datetime.now(dt.UTC)
    issuer = create_ca(st, "ca", "ec-p256", 30, None, None, now)
    add_devices(st, issuer, (1, 2), now)
    revoke(st, issuer, 2, 1, int(now.timestamp()))
    drain(st)
    st.close()
    return data, x509.load_der_x509_certificate(issuer.cert_der)


@pytest.fixture(scope="module")
def servers(store):
    data, _ = store
    procs, urls = [], []
    for fast in ("true", "false"):
        port = free_port()
        env = {**os.environ, "PKI_EDGE_EDGE_FAST_LANE": fast}
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


def request(ca, serial, algorithm=None, nonce=False) -> bytes:
    algorithm = algorithm or hashes.SHA1()
    cert_like = ocsp.OCSPRequestBuilder()
    from edge.source import issuer_hashes

    name_hash, key_hash = issuer_hashes(ca.public_bytes(serialization.Encoding.DER), algorithm.name)
    builder = cert_like.add_certificate_by_hash(name_hash, key_hash, serial, algorithm)
    if nonce:
        builder = builder.add_extension(x509.OCSPNonce(b"n" * 16), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def comparable(headers: httpx.Headers) -> dict[str, str]:
    """Headers minus Date; max-age is checked apart (the servers answer up to a second apart)."""
    out = {k: v for k, v in headers.items() if k != "date"}
    if "cache-control" in out:
        age, _, rest = out["cache-control"].removeprefix("max-age=").partition(",")
        out["cache-control"] = rest
        out["max-age"] = age
    return out


def assert_same(a: dict[str, str], b: dict[str, str]) -> None:
    age_a, age_b = int(a.pop("max-age", 0)), int(b.pop("max-age", 0))
    assert abs(age_a - age_b) <= 2 and (age_a == 0) == (age_b == 0)
    assert a == b


def cases(ca):
    good = request(ca, 1)
    b64 = base64.b64encode(good).decode()
    return [
        ("POST", "/ocsp", {}, good),
        ("POST", "/", {}, request(ca, 2, hashes.SHA256())),
        ("POST", "/api/ocsp", {}, request(ca, 1, nonce=True)),
        ("POST", "/ocsp", {}, request(ca, 99)),
        ("POST", "/ocsp", {}, b"garbage"),
        ("POST", "/ocsp", {}, b"\x30" * 20000),
        ("GET", "/ocsp/" + b64.replace("/", "%2F").replace("+", "%2B").replace("=", "%3D"), {}, None),
        ("GET", "/api/ocsp/" + b64, {}, None),
        ("GET", "/ocsp//" + b64.rstrip("="), {}, None),
        ("HEAD", "/ocsp/" + b64, {}, None),
        ("GET", "/ocsp/!!!", {}, None),
        ("PUT", "/ocsp", {}, b""),
    ]


def test_fast_lane_and_asgi_answer_identically(store, servers):
    _, ca = store
    fast, plain = servers
    etag = None
    for method, path, headers, body in cases(ca):
        answers = []
        for base in (fast, plain):
            with httpx.Client(base_url=base) as c:
                r = c.request(method, path, headers=headers, content=body)
            answers.append((r.status_code, comparable(r.headers), r.content))
            etag = etag or r.headers.get("etag")
        assert answers[0][0] == answers[1][0] and answers[0][2] == answers[1][2], (method, path)
        assert_same(answers[0][1], answers[1][1])
    # Conditional requests too.
    b64 = base64.b64encode(request(ca, 1)).decode()
    for headers in ({"if-none-match": etag}, {"if-none-match": f'W/{etag}, "x"'}, {"if-none-match": "*"}):
        got = [httpx.get(base + "/ocsp/" + b64, headers=headers) for base in (fast, plain)]
        assert got[0].status_code == got[1].status_code == 304
        assert_same(comparable(got[0].headers), comparable(got[1].headers))


def test_fast_lane_keeps_connections_alive_and_pipelines(store, servers):
    _, ca = store
    fast = servers[0]
    der = request(ca, 1)
    port = int(fast.rsplit(":", 1)[1])
    one = b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(der), der)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(one * 3 + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        deadline = time.monotonic() + 5
        while not data.rstrip().endswith(b"ok") and time.monotonic() < deadline:
            data += s.recv(65536)
    assert data.count(b"HTTP/1.1 200 OK") == 4, data
    assert data.rstrip().endswith(b"ok"), data
