"""(b) OCSP over GET (RFC 6960 Appendix A.1) in every shape real clients produce, fetched with curl.

The leaf's serial is chosen so that both its SHA-1 and SHA-256 requests base64-encode with
"/" (extra path segments when not percent-encoded), "+" and "=" padding.
"""

from __future__ import annotations

import base64
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from cryptography import x509

from tests.integration.conftest import Shared
from tests.integration.helpers import (
    CURL,
    clean_env,
    make_ca,
    make_leaf,
    ocsp_request_by_serial,
    ocsp_request_der,
    openssl,
    post_ocsp,
    wait_ocsp_status,
    write_pem,
)

HASH_FLAGS = {"sha1": [], "sha256": ["-sha256"]}


@dataclass
class GetPki:
    dir: Path
    ca_pem: Path
    leaf_pem: Path
    ca: x509.Certificate
    leaf: x509.Certificate


def _awkward(der: bytes) -> bool:
    text = base64.b64encode(der)
    return b"/" in text and b"+" in text and text.endswith(b"=")


@pytest.fixture(scope="module")
def get_pki(shared: Shared, tmp_path_factory: pytest.TempPathFactory) -> GetPki:
    work = tmp_path_factory.mktemp("get")
    ca, ca_key = make_ca("GET Test CA")
    for _ in range(20000):
        bits = 64 + secrets.randbelow(95)
        serial = secrets.randbits(bits) | 1 << (bits - 1)
        if all(_awkward(ocsp_request_by_serial(ca, serial, h)) for h in HASH_FLAGS):
            break
    else:
        raise AssertionError("no serial gives an awkward base64 request")
    leaf, _ = make_leaf(ca, ca_key, "get.example", serial)
    ca_pem, leaf_pem = write_pem(work / "ca.pem", ca), write_pem(work / "leaf.pem", leaf)
    shared.run("ca", "add", "getca", "--cert", ca_pem, "--key", write_pem(work / "ca.key", ca_key))
    assert "added 1" in shared.run("import", "getca", "--cert", leaf_pem).stdout
    for h in HASH_FLAGS:
        wait_ocsp_status(shared.base_url, ocsp_request_der(leaf, ca, h), "good")
    return GetPki(work, ca_pem, leaf_pem, ca, leaf)


def _fetch(url: str, out: Path) -> int:
    """GET ``url`` exactly as written (no redirects followed); the body goes to ``out``."""
    if CURL:
        proc = subprocess.run(
            [CURL, "-sS", "--noproxy", "*", "--path-as-is", "--max-time", "10", "-o", str(out), "-w", "%{http_code}",
             url],
            capture_output=True, text=True, timeout=30, env=clean_env(),
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return int(proc.stdout.strip())
    with httpx.Client(trust_env=False, timeout=10, follow_redirects=False) as client:
        r = client.send(client.build_request("GET", url))  # httpx sends the path as given
        out.write_bytes(r.content)
        return r.status_code


@pytest.mark.parametrize("hash_name", list(HASH_FLAGS))
def test_get_variants_are_byte_identical(shared: Shared, get_pki: GetPki, hash_name: str) -> None:
    flags = HASH_FLAGS[hash_name]
    req = get_pki.dir / f"req-{hash_name}.der"
    openssl("ocsp", *flags, "-issuer", get_pki.ca_pem, "-cert", get_pki.leaf_pem, "-reqout", req, "-no_nonce")
    der = req.read_bytes()
    std = base64.b64encode(der).decode()  # what `base64 -w 0` prints
    assert "/" in std and "+" in std and std.endswith("="), std
    url_safe = base64.urlsafe_b64encode(der).decode()
    base = shared.base_url
    variants = {
        "percent-encoded": f"{base}/ocsp/{quote(std, safe='')}",
        "raw with slashes": f"{base}/api/ocsp/{std}",
        "extra leading slash": f"{base}/ocsp//{quote(std, safe='')}",
        "base64url": f"{base}/ocsp/{url_safe}",
        "base64url unpadded": f"{base}/ocsp/{url_safe.rstrip('=')}",
        "unpadded": f"{base}/ocsp/{quote(std.rstrip('='), safe='')}",
        "plus as space": f"{base}/ocsp/{quote(std, safe='').replace('%2B', '%20')}",
        "slash-encoded only": f"{base}/ocsp/{std.replace('/', '%2F')}",
        "root prefix": f"{base}/{quote(std, safe='')}",
        "root raw": f"{base}/{std}",
    }
    bodies = {}
    for i, (label, url) in enumerate(variants.items()):
        out = get_pki.dir / f"resp-{hash_name}-{i}.der"
        code = _fetch(url, out)
        assert code == 200, f"{label}: HTTP {code} for {url}"
        pki = ["-issuer", get_pki.ca_pem, "-cert", get_pki.leaf_pem, "-CAfile", get_pki.ca_pem]
        verified = openssl("ocsp", "-respin", out, *flags, *pki)
        assert "Response verify OK" in verified, label
        assert f"{get_pki.leaf_pem}: good" in verified, label
        bodies[label] = out.read_bytes()
    assert len(set(bodies.values())) == 1, {k: len(v) for k, v in bodies.items()}
    # POST answers with the very same bytes.
    assert post_ocsp(base, der).content == bodies["percent-encoded"]


def test_readme_shell_pipeline(shared: Shared, get_pki: GetPki) -> None:
    """The README's Lamassu one-liner, through a real shell, unchanged except for the host."""
    bash = shutil.which("bash")
    assert bash and shutil.which("base64"), "bash and coreutils base64 are needed"
    url = f"http://127.0.0.1:{shared.port}/api/ocsp/"
    request = "$(openssl ocsp -issuer ca.pem -cert leaf.pem -reqout - -no_nonce | base64 -w 0)"
    if CURL:
        subprocess.run(
            [bash, "-c", f'curl -sS -o resp.der "{url}{request}"'],
            cwd=get_pki.dir,
            check=True,
            timeout=30,
            env=clean_env(),
        )
    else:
        b64 = subprocess.run(
            [bash, "-c", f"echo -n {request}"], cwd=get_pki.dir, check=True, timeout=30, env=clean_env(),
            capture_output=True, text=True,
        ).stdout  # fmt: skip
        assert _fetch(url + b64, get_pki.dir / "resp.der") == 200
    out = openssl("ocsp", "-respin", "resp.der", "-issuer", "ca.pem", "-cert", "leaf.pem", "-CAfile", "ca.pem",
                  cwd=get_pki.dir)  # fmt: skip
    assert "Response verify OK" in out
    assert "leaf.pem: good" in out
