"""bench/locustfile.py against a real `pki-edge up`: requests exported with the CLI, Locust headless.

Locust runs in its own process (it monkey-patches the interpreter with gevent): it is never
imported here. Each run is bounded: a few users for a few seconds on 127.0.0.1, and a timeout.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from signer.export import get_path
from tests.integration.conftest import Shared
from tests.integration.helpers import cert_status, clean_env, wait_drained

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = ROOT / "bench" / "locustfile.py"
CA = "locust"
SERIALS = 150  # of which every 10th is expired past the grace period and every 7th revoked


def _locust() -> str:
    beside = Path(sys.executable).with_name("locust")
    found = str(beside) if beside.exists() else shutil.which("locust")
    assert found, "locust is not installed (pip install -e '.[test]')"
    return found


@dataclass
class Exported:
    requests: Path
    lines: list[dict[str, str]]


def _utctime(when: dt.datetime) -> str:
    return when.strftime("%y%m%d%H%M%SZ")


@pytest.fixture(scope="module")
def exported(shared: Shared, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    work = tmp_path_factory.mktemp("locust")
    shared.run("ca", "create", CA)
    now = dt.datetime.now(dt.UTC)
    rows = []
    for i in range(1, SERIALS + 1):
        expires = now + (dt.timedelta(days=-3) if i % 10 == 0 else dt.timedelta(days=30))
        revoked = f"{_utctime(now - dt.timedelta(days=1))},superseded" if i % 7 == 0 else ""
        rows.append(f"{'R' if revoked else 'V'}\t{_utctime(expires)}\t{revoked}\t{0x1000 + i:X}\tunknown\t/CN=d{i}\n")
    index = work / "index.txt"
    index.write_text("".join(rows))
    shared.run("import", CA, "--openssl-index", index)
    wait_drained(shared.data_dir)

    requests = work / "requests.jsonl"
    out = shared.run("export-requests", CA, "--count", "100", "--out", requests, "--seed", "1").stdout
    assert out.startswith(f"wrote 200 requests to {requests}: 100 of 135 serials of {CA} x sha1, sha256")
    assert "left out 15 expired past the grace period" in out
    lines = [json.loads(line) for line in requests.read_text().splitlines()]
    assert len(lines) == 200
    return Exported(requests, lines)


@dataclass
class LocustRun:
    proc: subprocess.CompletedProcess[str]
    stats: dict[tuple[str, str], dict[str, str]]  # rows of _stats.csv by (Type, Name)
    failures: set[tuple[str, str, str]]  # rows of _failures.csv: (Method, Name, Error)

    @property
    def report(self) -> str:
        return f"{' '.join(self.proc.args)} exited {self.proc.returncode}\n{self.proc.stdout}\n{self.proc.stderr}"


def run_locust(
    shared: Shared, requests: Path, out_dir: Path, users: int = 5, seconds: int = 5, **env: str
) -> LocustRun:
    """Locust headless against the shared server, bounded by -t and a subprocess timeout."""
    prefix = out_dir / "results"
    cmd = [_locust(), "-f", str(LOCUSTFILE), "--headless", "-u", str(users), "-r", str(users), "-t", f"{seconds}s"]
    cmd += ["--stop-timeout", "2", "--host", shared.base_url, "--csv", str(prefix), "--only-summary"]
    proc = subprocess.run(
        cmd,
        cwd=out_dir,
        env=clean_env(PKI_EDGE_LOCUST_REQUESTS=str(requests), **env),
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    assert Path(f"{prefix}_stats.csv").exists(), f"{proc.stdout}\n{proc.stderr}"
    with Path(f"{prefix}_stats.csv").open(newline="") as f:
        stats = {(row["Type"], row["Name"]): row for row in csv.DictReader(f)}
    with Path(f"{prefix}_failures.csv").open(newline="") as f:
        failures = {(row["Method"], row["Name"], row["Error"]) for row in csv.DictReader(f)}
    return LocustRun(proc, stats, failures)


def assert_clean_run(run: LocustRun) -> None:
    assert run.proc.returncode == 0, run.report
    assert run.failures == set(), run.report
    assert set(run.stats) == {("GET", "GET ocsp"), ("POST", "POST ocsp"), ("", "Aggregated")}, run.report
    for key in (("GET", "GET ocsp"), ("POST", "POST ocsp")):
        assert int(run.stats[key]["Request Count"]) > 0, run.report
        assert int(run.stats[key]["Failure Count"]) == 0, run.report


def test_exported_requests_reach_signed_responses(shared: Shared, exported: Exported) -> None:
    """Every exported request, over GET and POST, gets the signed answer for its serial."""
    with httpx.Client(base_url=shared.base_url, timeout=5, trust_env=False) as client:
        for line in exported.lines:
            i = int(line["serial"], 16) - 0x1000
            assert 0 < i <= SERIALS and i % 10 != 0, line  # never one expired past the grace period
            got = client.get(f"/ocsp/{line['get_path']}")
            posted = client.post(
                "/ocsp", content=base64.b64decode(line["der_b64"]), headers={"content-type": "application/ocsp-request"}
            )
            assert (got.status_code, posted.status_code) == (200, 200), line
            assert got.content == posted.content
            assert cert_status(got.content) == ("revoked" if i % 7 == 0 else "good"), line


def test_locust_get_and_post(shared: Shared, exported: Exported, tmp_path: Path) -> None:
    assert_clean_run(run_locust(shared, exported.requests, tmp_path))


def test_locust_zipf(shared: Shared, exported: Exported, tmp_path: Path) -> None:
    """Zipf-skewed draws, and a prefix given with a trailing slash (Lamassu's path)."""
    run = run_locust(
        shared, exported.requests, tmp_path, PKI_EDGE_LOCUST_ZIPF="1.1", PKI_EDGE_LOCUST_OCSP_PREFIX="/api/ocsp/"
    )
    assert_clean_run(run)


def test_locust_reports_failures(shared: Shared, exported: Exported, tmp_path: Path) -> None:
    """A request the edge cannot answer (unknown CA) is a failure named by its OCSP status; exit code 1."""
    line = next(line for line in exported.lines if line["hash"] == "sha1")
    der = bytearray(base64.b64decode(line["der_b64"]))
    der[der.index(b"\x04\x14") + 2] ^= 0xFF  # a byte of the issuerNameHash: an issuer the edge does not know
    unknown = tmp_path / "unknown.jsonl"
    item = {**line, "der_b64": base64.b64encode(der).decode(), "get_path": get_path(bytes(der))}
    unknown.write_text(json.dumps(item) + "\n")
    run = run_locust(shared, unknown, tmp_path, users=2, seconds=2)
    assert run.proc.returncode == 1, run.report
    error = "CatchResponseError('OCSP unauthorized (6)')"  # how Locust records response.failure(reason)
    assert run.failures == {("GET", "GET ocsp", error), ("POST", "POST ocsp", error)}, run.report


_PROBE = """
import collections, json, random, sys
sys.path.insert(0, sys.argv[1])
import bench.locustfile as lf

random.seed(0)
draws = collections.Counter(lf.REQUESTS.index(lf.pick()) for _ in range(20000))
bodies = {
    "short": (200, bytes.fromhex("30030a0100")),
    "long1": (200, bytes.fromhex("3081") + bytes([0x90]) + bytes.fromhex("0a0100a0")),
    "long2": (200, bytes.fromhex("30820104") + bytes.fromhex("0a0100a082")),
    "unauthorized": (200, bytes.fromhex("30030a0106")),
    "tryLater": (503, bytes.fromhex("30030a0103")),
    "odd": (200, bytes.fromhex("30030a0109")),
    "html": (200, b"<html>"),
    "empty": (200, b""),
    "truncated": (200, bytes.fromhex("3082")),
    "noconn": (0, b""),
}
print(json.dumps({
    "prefix": lf.PREFIX,
    "first": lf.REQUESTS[0].path,
    "top": draws[0] / 20000,
    "distinct": len(draws),
    "checks": {k: lf.ocsp_failure(*v) for k, v in bodies.items()},
}))
"""


@pytest.mark.parametrize(("zipf", "prefix"), [("0", "/"), ("1.1", "ocsp"), ("", "/api/ocsp/")])
def test_locustfile_helpers(tmp_path: Path, zipf: str, prefix: str) -> None:
    """The locustfile's draws and response check, run in a child interpreter (Locust is never imported here)."""
    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(json.dumps({"der_b64": "MA==", "get_path": f"MA{i}"}) + "\n" for i in range(200)))
    env = clean_env(
        PKI_EDGE_LOCUST_REQUESTS=str(requests), PKI_EDGE_LOCUST_ZIPF=zipf, PKI_EDGE_LOCUST_OCSP_PREFIX=prefix
    )
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(ROOT)], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.splitlines()[-1])
    assert got["first"] == {"/": "/MA0", "ocsp": "/ocsp/MA0", "/api/ocsp/": "/api/ocsp/MA0"}[prefix]
    if zipf == "1.1":
        share = 1 / sum(k**-1.1 for k in range(1, 201))  # weight of rank 1: about 0.22
        assert abs(got["top"] - share) < 0.02, got
    else:  # uniform
        assert got["top"] < 0.01 and got["distinct"] == 200, got
    assert got["checks"] == {
        "short": None,
        "long1": None,
        "long2": None,
        "unauthorized": "OCSP unauthorized (6)",
        "tryLater": "HTTP 503",
        "odd": "OCSP status (9)",
        "html": "body is not a DER SEQUENCE",
        "empty": "body is not a DER SEQUENCE",
        "truncated": "no OCSP responseStatus",
        "noconn": "no response (connection error)",
    }


def test_locustfile_refuses_a_bad_zipf(tmp_path: Path) -> None:
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps({"der_b64": "MA==", "get_path": "MA"}) + "\n")
    env = clean_env(PKI_EDGE_LOCUST_REQUESTS=str(requests), PKI_EDGE_LOCUST_ZIPF="-1")
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(ROOT)], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert proc.returncode == 1
    assert "PKI_EDGE_LOCUST_ZIPF must be a number >= 0" in proc.stderr
