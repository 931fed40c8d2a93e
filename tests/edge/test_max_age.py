"""edge.max_age_seconds over HTTP, with curl: every authoritative answer's max-age bounded, on both paths."""

from __future__ import annotations

import base64
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from tests.edge.edges import edge_servers, request
from tests.integration.helpers import CURL

BOUND = 120
CACHE_CONTROL = re.compile(r"max-age=(\d+), public, no-transform, must-revalidate, stale-while-revalidate=0")


@pytest.fixture(scope="module")
def bounded(store: tuple[Path, x509.Certificate]) -> Iterator[list[str]]:
    yield from edge_servers(store[0], {"PKI_EDGE_EDGE_MAX_AGE_SECONDS": str(BOUND)})


def _curl_head(url: str, *headers: str) -> tuple[int, dict[str, str]]:
    """Status and headers (lower-case names) of a GET, as curl reads them."""
    assert CURL, "curl is required (apt-get install curl)"
    args = [CURL, "-sS", "-o", "/dev/null", "-D", "-", "--max-time", "10", url]
    for header in headers:
        args += ["-H", header]
    lines = subprocess.run(args, capture_output=True, text=True, check=True, timeout=20).stdout.splitlines()
    status = int(lines[0].split()[1])
    fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return status, {name.lower(): value for name, value in fields.items()}


@pytest.mark.parametrize("serial", [1, 2], ids=["good", "revoked"])
def test_max_age_seconds_bounds_answers_and_revalidations_on_both_paths(
    store: tuple[Path, x509.Certificate], bounded: list[str], serial: int
) -> None:
    path = "/ocsp/" + base64.b64encode(request(store[1], serial)).decode()
    for url in bounded:  # the fast lane's edge, then the ASGI path's
        status, headers = _curl_head(url + path)
        assert status == 200
        found = CACHE_CONTROL.fullmatch(headers["cache-control"])
        assert found and BOUND - 1 <= int(found.group(1)) <= BOUND, headers["cache-control"]
        status, revalidated = _curl_head(url + path, f"If-None-Match: {headers['etag']}")
        assert status == 304
        found = CACHE_CONTROL.fullmatch(revalidated["cache-control"])
        assert found and BOUND - 1 <= int(found.group(1)) <= BOUND, revalidated["cache-control"]
