"""Process topology: `edge` and `signer` run separately, staleness, the signer lock, `up` supervision."""

from __future__ import annotations

import base64
import datetime as dt
import os
import random
import signal
import time
from pathlib import Path
from urllib.parse import quote

import httpx
from cryptography.x509 import ocsp

from tests.integration.conftest import Run
from tests.integration.helpers import (
    UNAUTHORIZED,
    Server,
    cert_status,
    load_cert,
    make_ca,
    ocsp_request_by_serial,
    ocsp_request_der,
    openssl,
    pki_edge,
    start_up,
    store_counts,
    wait_for,
)

TRY_LATER = bytes.fromhex("30030a0103")
VALIDITY_SECONDS = 3
SHORT_VALIDITY = {"PKI_EDGE_SIGNER_VALIDITY_HOURS": "0.001", "PKI_EDGE_SIGNER_BACKDATE_SECONDS": "0"}  # 3.6 s -> 3 s


def _get(base: str, prefix: str, der: bytes) -> httpx.Response:
    url = f"{base}{prefix}/{quote(base64.b64encode(der).decode(), safe='')}"
    return httpx.get(url, timeout=5, trust_env=False)


def test_edge_and_signer_run_separately(
    run: Run, data_dir: Path, tmp_path: Path, servers: list[Server], free_port: int
) -> None:
    data_dir.mkdir()
    (data_dir / "pki-edge.toml").write_text(
        '[signer]\nhash_algorithms = ["sha256"]\n\n[edge]\nocsp_prefixes = ["/custom/ocsp"]\n'
    )
    edge_args = ["edge", "--port", str(free_port), "--workers", "2"]
    edge = Server("edge", data_dir, edge_args, tmp_path / "edge.log", port=free_port)
    servers.append(edge)
    base = edge.base_url

    def healthy() -> bool:
        assert edge.alive(), edge.log()
        try:
            return httpx.get(base + "/healthz", timeout=2, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for("the edge /healthz", healthy, timeout=30, interval=0.1)

    # No store yet: not ready, and OCSP says tryLater.
    r = httpx.get(base + "/readyz", timeout=5, trust_env=False)
    assert r.status_code == 503
    assert r.json()["ready"] is False
    assert r.headers["cache-control"] == "no-store"  # no cache in front may keep a health answer
    some_request = ocsp_request_by_serial(make_ca("Nobody")[0], 1, "sha256")
    r = httpx.post(base + "/ocsp", content=some_request, timeout=5, trust_env=False)
    assert (r.status_code, r.content) == (503, TRY_LATER)
    assert r.headers["retry-after"] == "60"
    assert r.headers["cache-control"] == "max-age=0, no-cache"

    run("ca", "create", "sep")
    run("issue", "sep", "--cn", "sep.example", "--out", tmp_path / "out")
    (tmp_path / "ca.pem").write_text(run("ca", "show", "sep").stdout)
    ca, leaf = load_cert(tmp_path / "ca.pem"), load_cert(tmp_path / "out" / "sep.example.pem")
    req256, req1 = ocsp_request_der(leaf, ca, "sha256"), ocsp_request_der(leaf, ca, "sha1")

    wait_for(
        "/readyz 200", lambda: httpx.get(base + "/readyz", timeout=5, trust_env=False).status_code == 200, timeout=10
    )
    # The store exists but nothing is signed yet: not authoritative.
    r = _get(base, "/custom/ocsp", req256)
    assert (r.status_code, r.content) == (200, UNAUTHORIZED)

    signer = Server("signer", data_dir, ["signer"], tmp_path / "signer-1.log", env=SHORT_VALIDITY)
    servers.append(signer)

    def good() -> httpx.Response | None:
        assert signer.alive(), signer.log()
        r = _get(base, "/custom/ocsp", req256)
        return r if r.status_code == 200 and cert_status(r.content) == "good" else None

    r = wait_for("a good answer from the configured prefix", good, timeout=30)
    resp = ocsp.load_der_ocsp_response(r.content)
    assert resp.next_update_utc is not None
    assert (resp.next_update_utc - resp.this_update_utc).total_seconds() == VALIDITY_SECONDS
    max_age = int(r.headers["cache-control"].split(",")[0].removeprefix("max-age="))
    assert max_age <= VALIDITY_SECONDS
    # SHA-1 is not configured: not authoritative. /ocsp is not a prefix here.
    assert httpx.post(base + "/", content=req1, timeout=5, trust_env=False).content == UNAUTHORIZED
    assert _get(base, "/ocsp", req256).status_code == 400

    # One signer per data directory.
    second = pki_edge(data_dir, "signer", check=False, timeout=30)
    assert second.returncode == 2
    assert second.stderr.startswith("pki-edge: error:")
    assert "another signer is already running" in second.stderr

    # Signer stopped: the edge never serves a response past its nextUpdate; it says tryLater.
    signer.stop_clean()

    def stale() -> bool:
        r = _get(base, "/custom/ocsp", req256)
        if r.status_code == 200:
            next_update = ocsp.load_der_ocsp_response(r.content).next_update_utc
            assert next_update is not None
            assert next_update > dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1), "served past nextUpdate"
            return False
        assert (r.status_code, r.content) == (503, TRY_LATER)
        assert r.headers["retry-after"] == "60"
        return True

    wait_for("the stored response to go stale", stale, timeout=20, interval=0.2)
    backlog = httpx.get(base + "/readyz", timeout=5, trust_env=False).json()["signer_backlog"]
    assert backlog["pending"] == 0 and backlog["overdue_seconds"] >= 1  # what a monitor sees of a stopped signer

    signer = Server("signer", data_dir, ["signer"], tmp_path / "signer-2.log", env=SHORT_VALIDITY)
    servers.append(signer)
    wait_for("the restarted signer to refresh", good, timeout=15)

    def on_time() -> bool:
        backlog = httpx.get(base + "/readyz", timeout=5, trust_env=False).json()["signer_backlog"]
        return bool(backlog == {"pending": 0, "overdue_seconds": 0})

    wait_for("the backlog to clear", on_time, timeout=10)
    signer.stop_clean()
    edge.stop_clean()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_up_kills_a_hung_signer_and_stops(run: Run, data_dir: Path, tmp_path: Path, servers: list[Server]) -> None:
    """A signer that no longer signs (here SIGSTOP; a deadlock alike) would let every response go stale
    while `up` looked healthy. Its watchdog kills it once the heartbeat stands still, and `up` stops
    as when a child dies, for its service manager to start it again."""
    run("ca", "create", "hang")
    up = start_up(data_dir, tmp_path, env={"PKI_EDGE_SIGNER_WATCHDOG_SECONDS": "4"})
    servers.append(up)
    children = {pid: _cmdline(pid) for pid in up.children()}
    [signer_pid] = [pid for pid, cmd in children.items() if cmd.rstrip().endswith(" signer")]
    alive = data_dir / "signer" / "alive"
    wait_for("a heartbeat", lambda: alive.exists() and time.time() - alive.stat().st_mtime < 1, timeout=30)
    time.sleep(5)  # a healthy signer for longer than the watchdog's limit: nothing happens
    assert up.alive()
    os.kill(signer_pid, signal.SIGSTOP)
    assert up.proc.wait(timeout=30) == 1
    up.stopped_at = time.monotonic()
    log = up.log()
    assert "the signer's signing loop has not come round for 4 s (signer.watchdog_seconds): killing it" in log
    assert not Path(f"/proc/{signer_pid}").exists()


def test_up_stops_when_a_child_dies(run: Run, data_dir: Path, tmp_path: Path, servers: list[Server]) -> None:
    run("ca", "create", "sup")
    up = start_up(data_dir, tmp_path)
    servers.append(up)
    children = {pid: _cmdline(pid) for pid in up.children()}
    assert len(children) == 2, children
    [edge_pid] = [pid for pid, cmd in children.items() if " edge " in cmd]
    [signer_pid] = [pid for pid, cmd in children.items() if cmd.rstrip().endswith(" signer")]
    os.kill(edge_pid, signal.SIGKILL)
    assert up.proc.wait(timeout=30) == 1
    up.stopped_at = time.monotonic()
    assert not Path(f"/proc/{signer_pid}").exists(), "the signer outlived `up`"
    assert "exited unexpectedly" in up.log()
    assert "signer stopped" in up.log()  # the survivor was stopped cleanly


def test_sighup_stops_up_as_sigterm_does(run: Run, data_dir: Path, tmp_path: Path, servers: list[Server]) -> None:
    """A closed terminal sends SIGHUP: up drains its children and exits 0, saying why (nothing reloads)."""
    run("ca", "create", "hup")
    up = start_up(data_dir, tmp_path)
    servers.append(up)
    wait_for("the signer to start", lambda: "loaded 1 OCSP signers" in up.log(), timeout=30)
    children = up.children()
    os.kill(up.proc.pid, signal.SIGHUP)
    assert up.proc.wait(timeout=30) == 0, up.log()
    up.stopped_at = time.monotonic()
    assert f"signal {int(signal.SIGHUP)}: stopping signer and edge" in up.log()
    assert "signer stopped" in up.log()
    assert not any(Path(f"/proc/{pid}").exists() for pid in children)


def test_a_data_directory_replaced_under_signer_and_edge_is_noticed(
    run: Run, data_dir: Path, tmp_path: Path, servers: list[Server], free_port: int
) -> None:
    """A backup restored over a running data directory: the signer stops (it would sign into the deleted
    store, and a second signer could start beside it); the edge, never restarted, serves the restored
    store within a second or two: here the backup has the certificate revoked, and a new signer signs it."""
    import shutil

    run("ca", "create", "swap")
    (tmp_path / "ca.pem").write_text(run("ca", "show", "swap").stdout)
    run("issue", "swap", "--cn", "swap.example", "--out", tmp_path / "out")
    ca_pem, leaf_pem = tmp_path / "ca.pem", tmp_path / "out" / "swap.example.pem"
    signer = Server("signer", data_dir, ["signer"], tmp_path / "signer.log")
    servers.append(signer)
    edge = Server("edge", data_dir, ["edge", "--port", str(free_port)], tmp_path / "edge.log", port=free_port)
    servers.append(edge)
    edge.wait_ready()
    wait_for("the signer to start", lambda: "signer running" in signer.log(), timeout=30)

    def status() -> str:
        url = edge.base_url + "/ocsp"
        text = openssl("ocsp", "-issuer", ca_pem, "-cert", leaf_pem, "-url", url, "-CAfile", ca_pem, check=False)
        return text.split(f"{leaf_pem}: ", 1)[1].split()[0] if f"{leaf_pem}: " in text else text

    wait_for("the first signing", lambda: status() == "good", timeout=30)  # "signer running" comes before it
    backup = tmp_path / "backup"
    shutil.copytree(data_dir, backup, ignore=shutil.ignore_patterns("jobs.sock"))
    serial = openssl("x509", "-in", leaf_pem, "-noout", "-serial").strip().split("=")[1]
    pki_edge(backup, "revoke", "swap", serial, "--reason", "keyCompromise")
    shutil.rmtree(data_dir)
    shutil.copytree(backup, data_dir)
    assert signer.proc.wait(timeout=15) == 2
    signer.stopped_at = time.monotonic()
    said = f"pki-edge: error: {data_dir}/store/data.mdb is not the file this signer opened"
    assert said in signer.log() and "Traceback" not in signer.log()
    wait_for("the edge to open the restored store", lambda: "serving the new one" in edge.log(), timeout=10)
    assert status() == "good"  # the restored store's responses, signed before the revocation
    signer = Server("signer", data_dir, ["signer"], tmp_path / "signer2.log")
    servers.append(signer)
    wait_for("the revocation to be served", lambda: status() == "revoked", timeout=20)
    r = httpx.get(edge.base_url + "/readyz", timeout=5, trust_env=False)
    assert r.status_code == 200 and r.json()["ready"] is True
    assert edge.alive() and "Traceback" not in edge.log()


def _write_index(path: Path, rows: int) -> None:
    rng = random.Random(5019)
    serials = {rng.getrandbits(64) | 1 << 63 for _ in range(rows)}
    path.write_text("".join(f"V\t491231235959Z\t\t{s:X}\tunknown\t/CN=busy{i}\n" for i, s in enumerate(serials)))


def test_ctrl_c_lets_a_busy_signer_finish_its_batch(
    run: Run, data_dir: Path, tmp_path: Path, servers: list[Server]
) -> None:
    """Ctrl-C in the terminal running `up` must drain the signer as SIGTERM to `up` does.

    The outcome depends on a race between the terminal's SIGINT and the supervisor's SIGTERM reaching
    the signer, so several rounds are tried; long batches make the signer lose it most of the time.
    """
    run("ca", "create", "busy")
    _write_index(tmp_path / "index.txt", 30000)
    run("import", "busy", "--openssl-index", tmp_path / "index.txt")
    env = {"PKI_EDGE_SIGNER_BATCH_SECONDS": "2", "PKI_EDGE_SIGNER_BATCH_SIZE": "100000"}
    for attempt in range(5):
        up = start_up(data_dir, tmp_path, env=env)
        servers.append(up)
        wait_for("the signer to start", lambda up=up: "loaded 1 OCSP signers" in up.log(), timeout=30)
        time.sleep(0.5)
        before = store_counts(data_dir)
        if before["pending"] < 8000:
            break  # no more work to be busy with: every attempt drained cleanly
        os.killpg(up.proc.pid, signal.SIGINT)  # exactly what Ctrl-C in a terminal does
        assert up.proc.wait(timeout=30) == 0
        up.stopped_at = time.monotonic()
        log = up.log()
        assert ": finishing the current batch" in log
        assert "signer stopped" in log, f"attempt {attempt}: the signer was killed mid-batch"
        assert store_counts(data_dir)["responses"] > before["responses"], "the batch under way was thrown away"


def test_a_hash_algorithm_added_back_answers_at_once_revoked_first(
    run: Run, data_dir: Path, tmp_path: Path, servers: list[Server], free_port: int
) -> None:
    """sha1 dropped from signer.hash_algorithms, a certificate revoked, sha1 added back: `openssl ocsp`
    (SHA-1 CertIDs by default) is told revoked once the signer restarts, not unauthorized for days."""
    run("ca", "create", "algs")
    (tmp_path / "ca.pem").write_text(run("ca", "show", "algs").stdout)
    run("issue", "algs", "--cn", "algs.example", "--out", tmp_path / "out")
    ca_pem, leaf_pem = tmp_path / "ca.pem", tmp_path / "out" / "algs.example.pem"
    edge = Server("edge", data_dir, ["edge", "--port", str(free_port)], tmp_path / "edge.log", port=free_port)
    servers.append(edge)
    edge.wait_ready()

    def status() -> str:
        url = edge.base_url + "/ocsp"
        text = openssl("ocsp", "-issuer", ca_pem, "-cert", leaf_pem, "-url", url, "-CAfile", ca_pem, check=False)
        return text.split(f"{leaf_pem}: ", 1)[1].split()[0] if f"{leaf_pem}: " in text else text

    sha256_only = {"PKI_EDGE_SIGNER_HASH_ALGORITHMS": "sha256"}
    signer = Server("signer", data_dir, ["signer"], tmp_path / "signer1.log", env=sha256_only)
    servers.append(signer)
    wait_for("the first signing", lambda: "responses   1 cached" in run("status").stdout, timeout=30)
    serial = openssl("x509", "-in", leaf_pem, "-noout", "-serial").strip().split("=")[1]
    run("revoke", "algs", serial, "--reason", "keyCompromise")
    wait_for("the revocation signed", lambda: "pending     no" in run("status", "algs", serial).stdout, timeout=30)
    signer.stop_clean()
    assert "Responder Error: unauthorized" in status()  # sha1 is not served
    signer = Server("signer", data_dir, ["signer"], tmp_path / "signer2.log")  # the default: sha1 and sha256
    servers.append(signer)
    wait_for("the revocation by SHA-1", lambda: status() == "revoked", timeout=15)
    assert "hash algorithms now sha1,sha256 (were sha256): 1 serials queued" in signer.log()
    signer.stop_clean()
