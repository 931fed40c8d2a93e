"""EST over real mutual TLS against a running `pki-edge up`, with the commands of Lamassu's protocol docs.

Each answer goes through `openssl base64 -d | openssl pkcs7 -print_certs` exactly as the docs do, and
each issued certificate is checked with openssl: it chains to the CA, carries the CSR's key, the
profile's extensions and the OCSP URL, and `openssl ocsp` says good for it at once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from contract.config import Config
from signer.state import key_path
from tests.integration import helpers
from tests.integration.helpers import Server, free_port, pki_edge, wait_for

CURL = shutil.which("curl")
pytestmark = pytest.mark.skipif(CURL is None, reason="curl is needed for the EST commands")


@dataclass
class Est:
    data: Path
    work: Path
    server: Server
    tls_port: int

    @property
    def https(self) -> str:
        return f"https://127.0.0.1:{self.tls_port}"

    def curl(self, *args: str | Path, expect_status: int | None = 200) -> tuple[int, bytes]:
        out = self.work / "curl.out"
        command = [CURL, "-s", "--cacert", self.work / "tlsca.pem", "-o", out, "-w", "%{http_code}", *args]
        done = subprocess.run(command, capture_output=True, timeout=60, check=False)
        status = int(done.stdout.decode() or 0)
        body = out.read_bytes() if out.exists() else b""
        if expect_status is not None:
            assert status == expect_status, (status, body, self.server.log())
        return status, body

    def bash(self, script: str) -> str:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=self.work, capture_output=True, text=True)
        assert done.returncode == 0, (script, done.stdout, done.stderr, self.server.log())
        return done.stdout


@pytest.fixture(scope="module")
def est(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Est]:
    helpers.require_openssl()
    work = tmp_path_factory.mktemp("est")
    data = work / "data"
    http_port, tls_port = free_port(), free_port()
    ocsp_url = f"http://127.0.0.1:{http_port}/ocsp"
    pki_edge(data, "ca", "create", "root", "--ocsp-url", ocsp_url)
    pki_edge(data, "ca", "create", "other")
    pki_edge(data, "ca", "create", "tlsca")
    pki_edge(data, "ca", "create", "lapsing")  # its OCSP responder is let lapse
    (work / "root.pem").write_text(pki_edge(data, "ca", "show", "root").stdout)
    (work / "tlsca.pem").write_text(pki_edge(data, "ca", "show", "tlsca").stdout)
    pki_edge(
        data, "issue", "tlsca", "--cn", "localhost", "--san", "DNS:localhost", "--san", "IP:127.0.0.1", "--out", work
    )
    pki_edge(data, "issue", "root", "--cn", "dms1", "--out", work)
    pki_edge(data, "ra", "add", "dms1", "--cert", work / "dms1.pem", "--cas", "root,lapsing")
    server = Server(
        "up",
        data,
        [
            "up",
            "--port",
            str(http_port),
            "--tls-port",
            str(tls_port),
            "--tls-cert",
            str(work / "localhost.pem"),
            "--tls-key",
            str(work / "localhost.key"),
        ],
        work / "up.log",
        port=http_port,
    )
    try:
        server.wait_ready()
        helpers.wait_drained(data)
        yield Est(data, work, server, tls_port)
    finally:
        server.stop_clean()


def csr(est: Est, name: str, cn: str) -> Path:
    """A key and a CSR made with openssl, and the CSR with its BEGIN/END lines stripped (as in the docs)."""
    est.bash(
        f"openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {name}.key "
        f"-out {name}.csr -subj /CN={cn} 2>/dev/null && sed '/CERTIFICATE/d' {name}.csr > {name}.b64"
    )
    return est.work / f"{name}.b64"


def print_certs(est: Est, p7: str) -> str:
    return est.bash(f"openssl base64 -d -in {p7} | openssl pkcs7 -inform DER -outform PEM -print_certs")


def check_issued(est: Est, pem: str, key: str | None) -> None:
    """Chains to root, carries the CSR's key, clientAuth and the OCSP URL, and OCSP says good at once."""
    assert "OK" in est.bash(f"openssl verify -CAfile root.pem {pem}")
    text = est.bash(f"openssl x509 -in {pem} -noout -text")
    assert "TLS Web Client Authentication" in text
    assert f"OCSP - URI:http://127.0.0.1:{est.server.port}/ocsp" in text
    if key is not None:
        assert est.bash(f"openssl x509 -in {pem} -noout -pubkey") == est.bash(f"openssl pkey -in {key} -pubout")
    status = est.bash(
        f"openssl ocsp -issuer root.pem -cert {pem} -url http://127.0.0.1:{est.server.port}/ocsp -CAfile root.pem 2>&1"
    )
    assert "Response verify OK" in status and f"{pem}: good" in status, status


def test_lamassu_cacerts(est: Est) -> None:
    est.curl(f"{est.https}/api/devmanager/.well-known/est/root/cacerts", "-o", est.work / "cacerts.p7")
    shutil.copy(est.work / "curl.out", est.work / "cacerts.p7")
    certs = print_certs(est, "cacerts.p7")
    assert certs.count("-----BEGIN CERTIFICATE-----") == 1
    (est.work / "cacerts.pem").write_text(certs)
    assert est.bash("openssl x509 -in cacerts.pem -noout -fingerprint") == est.bash(
        "openssl x509 -in root.pem -noout -fingerprint"
    )


def test_lamassu_simpleenroll_reenroll_and_serverkeygen(est: Est) -> None:
    body = csr(est, "device", "device-1")
    base = f"{est.https}/api/devmanager/.well-known/est"
    _, p7 = est.curl(
        f"{base}/root/simpleenroll",
        "--cert", est.work / "dms1.pem", "--key", est.work / "dms1.key",
        "-H", "Content-Type: application/pkcs10", "--data-binary", f"@{body}",
    )  # fmt: skip
    (est.work / "cert.p7").write_bytes(p7)
    (est.work / "cert.pem").write_text(print_certs(est, "cert.p7"))
    check_issued(est, "cert.pem", "device.key")

    # Re-enroll with the device's own certificate, no label (as Lamassu's docs post it): renewal, same key.
    _, p7 = est.curl(
        f"{base}/simplereenroll",
        "--cert", est.work / "cert.pem", "--key", est.work / "device.key",
        "-H", "Content-Type: application/pkcs10", "--data-binary", f"@{body}",
    )  # fmt: skip
    (est.work / "renewed.p7").write_bytes(p7)
    (est.work / "renewed.pem").write_text(print_certs(est, "renewed.p7"))
    check_issued(est, "renewed.pem", "device.key")
    subjects = {est.bash(f"openssl x509 -in {p} -noout -subject") for p in ("cert.pem", "renewed.pem")}
    assert len(subjects) == 1

    # serverkeygen through the docs' sed pipeline.
    keygen_csr = csr(est, "factory", "device-2")
    est.bash(
        f"curl -s --cacert tlsca.pem {base}/root/serverkeygen --cert dms1.pem --key dms1.key "
        f"-H 'Content-Type: application/pkcs10' --data-binary @{keygen_csr.name} "
        "| sed -ne '/application\\/pkcs7-mime/,/-estServerKeyGenBoundary/p' | sed '/-/d' > crt.p7"
    )
    (est.work / "generated.pem").write_text(print_certs(est, "crt.p7"))
    check_issued(est, "generated.pem", None)
    headers = est.bash(
        f"curl -s -D - -o /dev/null --cacert tlsca.pem {base}/root/serverkeygen --cert dms1.pem --key dms1.key "
        f"-H 'Content-Type: application/pkcs10' --data-binary @{keygen_csr.name}"
    )
    assert "cache-control: no-store" in headers.lower()  # it holds a private key

    # One OCSP request for two certificates: both statuses, in one response signed by the workers.
    est.bash("openssl x509 -in cert.pem -noout -serial | cut -d= -f2 > old.serial")
    serial = (est.work / "old.serial").read_text().strip()
    pki_edge(est.data, "revoke", "root", serial, "--reason", "superseded")
    both = est.bash(
        "openssl ocsp -issuer root.pem -cert cert.pem -cert generated.pem "
        f"-url http://127.0.0.1:{est.server.port}/ocsp -CAfile root.pem 2>&1"
    )
    assert "Response verify OK" in both, both
    assert "cert.pem: revoked" in both and "generated.pem: good" in both, both


def test_csrattrs_fullcmc_and_plain_http(est: Est) -> None:
    status, _ = est.curl(f"{est.https}/.well-known/est/root/csrattrs", expect_status=None)
    assert status == 204
    status, body = est.curl(
        f"{est.https}/.well-known/est/root/fullcmc",
        "--data-binary",
        "x",
        "-H",
        "Content-Type: application/pkcs7-mime",
        expect_status=None,
    )
    assert status == 501 and b"not supported" in body
    plain = httpx.get(f"{est.server.base_url}/.well-known/est/root/cacerts", timeout=5, trust_env=False)
    assert plain.status_code == 403 and "HTTPS" in plain.text


def test_enroll_without_credentials_gets_a_bare_challenge(est: Est) -> None:
    body = csr(est, "nocreds", "device-3")
    status, answer = est.curl(
        f"{est.https}/.well-known/est/root/simpleenroll",
        "-H", "Content-Type: application/pkcs10", "--data-binary", f"@{body}", "-D", est.work / "headers.txt",
        expect_status=None,
    )  # fmt: skip
    assert status == 401 and answer == b""
    assert "www-authenticate: basic" in (est.work / "headers.txt").read_text().lower()


def test_ra_not_authorised_for_a_label_is_refused(est: Est) -> None:
    body = csr(est, "wrongca", "device-4")
    status, answer = est.curl(
        f"{est.https}/.well-known/est/other/simpleenroll",
        "--cert", est.work / "dms1.pem", "--key", est.work / "dms1.key",
        "-H", "Content-Type: application/pkcs10", "--data-binary", f"@{body}",
        expect_status=None,
    )  # fmt: skip
    assert status == 403 and b"may not enroll" in answer


def test_no_enrollment_while_the_cas_ocsp_responder_is_not_valid(est: Est) -> None:
    # A certificate is answered with its first OCSP responses stored, and none can be signed with a
    # lapsed responder: the CA answers 503 with the reason (not a certificate whose status nobody can
    # tell, nor "busy" after signing it), and issues again once the operator gives it a successor.
    ca_pem = est.work / "lapsing.pem"
    ca_pem.write_text(pki_edge(est.data, "ca", "show", "lapsing").stdout)
    ca = helpers.load_cert(ca_pem)
    ca_key = serialization.load_pem_private_key(key_path(est.data, "lapsing").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    lapses_at = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=15)
    responder = helpers.make_leaf(ca, ca_key, "lapsing responder", 0x7001, ocsp_signing=True, not_after=lapses_at)
    successor = helpers.make_leaf(ca, ca_key, "next responder", 0x7002, ocsp_signing=True)

    def install(pair: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], stem: str) -> None:
        cert, key = (
            helpers.write_pem(est.work / f"{stem}.pem", pair[0]),
            helpers.write_pem(est.work / f"{stem}.key", pair[1]),
        )
        pki_edge(est.data, "ca", "responder", "lapsing", "--responder-cert", cert, "--responder-key", key)

    def enroll(n: int) -> tuple[int, bytes]:
        body = csr(est, f"lapsing{n}", f"lapsing-device-{n}")
        return est.curl(
            f"{est.https}/.well-known/est/lapsing/simpleenroll",
            "--cert", est.work / "dms1.pem", "--key", est.work / "dms1.key", "-D", est.work / "lapsing.headers",
            "-H", "Content-Type: application/pkcs10", "--data-binary", f"@{body}",
            expect_status=None,
        )  # fmt: skip

    install(responder, "lapsing-responder")
    assert enroll(1)[0] == 200
    time.sleep(max(0.0, (lapses_at - dt.datetime.now(dt.UTC)).total_seconds()) + 0.5)
    status, answer = enroll(2)
    assert status == 503, (status, answer)
    assert b"cannot issue for now: the certificate signing its OCSP responses is not valid" in answer
    assert "retry-after:" in (est.work / "lapsing.headers").read_text().lower()
    # The operator's CLI issues still, and says that the certificate's OCSP waits.
    issued = pki_edge(est.data, "issue", "lapsing", "--cn", "by-hand.example", "--out", est.work / "by-hand")
    assert "warning: CA lapsing: the certificate signing its OCSP responses is not valid now" in issued.stderr
    assert "no response is signed for this until it is mended" in issued.stderr
    install(successor, "next-responder")
    assert "warning" not in pki_edge(est.data, "issue", "lapsing", "--cn", "later.example", "--out", est.work).stderr
    assert enroll(3)[0] == 200


def enroll_as(est: Est, ra: str, ca: str, name: str) -> tuple[int, bytes]:
    """simpleenroll for CA ``ca`` with a new key and CSR (``name``), as RA ``ra`` (WORK/RA.pem, RA.key)."""
    body = csr(est, name, f"{name}-device")
    return est.curl(
        f"{est.https}/.well-known/est/{ca}/simpleenroll",
        "--cert", est.work / f"{ra}.pem", "--key", est.work / f"{ra}.key",
        "-H", "Content-Type: application/pkcs10", "--data-binary", f"@{body}",
        expect_status=None,
    )  # fmt: skip


def test_a_revoked_sub_ca_enrolls_no_more(est: Est) -> None:
    """Its parent revoked it (cACompromise): what it would issue chains to a revoked CA. 403 with the
    reason, as for an expired CA; the CLI refuses as well."""
    pki_edge(est.data, "ca", "create", "revsub", "--parent", "root")
    pki_edge(est.data, "issue", "root", "--cn", "dms-revsub", "--out", est.work)
    pki_edge(est.data, "ra", "add", "dms-revsub", "--cert", est.work / "dms-revsub.pem", "--cas", "revsub")

    def enroll(n: int) -> tuple[int, bytes]:
        return enroll_as(est, "dms-revsub", "revsub", f"revsub{n}")

    assert enroll(1)[0] == 200
    (est.work / "revsub.pem").write_text(pki_edge(est.data, "ca", "show", "revsub").stdout)
    serial = helpers.openssl("x509", "-in", est.work / "revsub.pem", "-noout", "-serial").strip()
    pki_edge(est.data, "revoke", "root", serial, "--reason", "cACompromise")
    status, answer = enroll(2)
    assert (status, answer) == (403, b"CA 'revsub' is revoked (in CA 'root'): it cannot issue certificates\n")
    issued = pki_edge(est.data, "issue", "revsub", "--cn", "x.example", "--out", est.work / "x", check=False)
    assert issued.returncode == 2 and "CA 'revsub' is revoked (in CA 'root')" in issued.stderr
    made = pki_edge(est.data, "ca", "create", "revsubsub", "--parent", "revsub", check=False)
    assert made.returncode == 2 and "CA 'revsub' is revoked (in CA 'root')" in made.stderr


def test_an_ra_under_a_revoked_ca_is_refused(est: Est) -> None:
    """The security review: an RA certificate issued by a sub-CA that its parent has revoked still
    enrolled (the TLS layer trusts every registry CA; only the RA's own serial was looked up)."""
    pki_edge(est.data, "ca", "create", "rasub", "--parent", "root")
    pki_edge(est.data, "issue", "rasub", "--cn", "dms-rasub", "--out", est.work)
    pki_edge(est.data, "ra", "add", "dms-rasub", "--cert", est.work / "dms-rasub.pem", "--cas", "root")

    def enroll(n: int) -> tuple[int, bytes]:
        return enroll_as(est, "dms-rasub", "root", f"rasub{n}")

    wait_for("the new CA trusted on the TLS port", lambda: enroll(1)[0] == 200, timeout=10, interval=0.5)
    (est.work / "rasub.pem").write_text(pki_edge(est.data, "ca", "show", "rasub").stdout)
    serial = helpers.openssl("x509", "-in", est.work / "rasub.pem", "-noout", "-serial").strip()
    pki_edge(est.data, "revoke", "root", serial, "--reason", "keyCompromise")
    status, answer = enroll(2)
    assert status == 403 and b"revoked" in answer, (status, answer)


def test_https_refuses_headers_past_the_bound_with_431(est: Est) -> None:
    """Over TLS too (no half-close there: the refusal is read before the connection closes)."""
    headers = est.work / "big-headers.txt"
    headers.write_bytes(b"".join(b"X-Filler-%d: %s\n" % (n, b"f" * 1000) for n in range(500)))
    url = f"https://127.0.0.1:{est.tls_port}/.well-known/est/root/cacerts"
    assert est.curl(url, "-H", f"@{headers}", expect_status=None)[0] == 431
    assert est.curl(url)[0] == 200  # the edge serves on


def test_https_with_several_edge_workers(est: Est) -> None:
    """--workers 2 with --tls-port: each worker serves both ports; SIGTERM stops them all."""
    http_port, tls_port = free_port(), free_port()
    args = ["edge", "--port", str(http_port), "--workers", "2", "--tls-port", str(tls_port)]
    args += ["--tls-cert", str(est.work / "localhost.pem"), "--tls-key", str(est.work / "localhost.key")]
    edge = Server("edge-2", est.data, args, est.work / "edge2.log", port=http_port)
    try:
        edge.wait_ready()
        for _ in range(4):  # spread over the workers
            status, _ = est.curl(f"https://127.0.0.1:{tls_port}/.well-known/est/root/cacerts")
            assert status == 200
        plain = est.bash(
            f"openssl ocsp -issuer root.pem -cert dms1.pem -url {edge.base_url}/ocsp -CAfile root.pem 2>&1"
        )
        assert "dms1.pem: good" in plain, plain
        est.bash("openssl ocsp -issuer root.pem -cert dms1.pem -reqout req.der -no_nonce >/dev/null")
        status, body = est.curl(
            f"https://127.0.0.1:{tls_port}/ocsp", "--data-binary", f"@{est.work / 'req.der'}",
            "-H", "Content-Type: application/ocsp-request",
        )  # fmt: skip
        assert status == 200 and body[:1] == b"\x30"
    finally:
        code = edge.stop()
    assert code in (0, -15), edge.log()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_tls_handshake_never_completed_is_dropped_at_its_bound(est: Est, workers: str) -> None:
    """Connections opened on the TLS port and left silent, or stopped inside a ClientHello, are closed
    after est.tls_handshake_seconds (asyncio would hold each 60 s); a real client is served meanwhile."""
    import socket

    http_port, tls_port = free_port(), free_port()
    args = ["edge", "--port", str(http_port), "--workers", workers, "--tls-port", str(tls_port)]
    args += ["--tls-cert", str(est.work / "localhost.pem"), "--tls-key", str(est.work / "localhost.key")]
    env = {"PKI_EDGE_EST_TLS_HANDSHAKE_SECONDS": "1.5"}
    edge = Server(f"edge-{workers}", est.data, args, est.work / f"edge-hs-{workers}.log", port=http_port, env=env)
    try:
        edge.wait_ready()
        opened = time.monotonic()
        silent = [socket.create_connection(("127.0.0.1", tls_port), timeout=10) for _ in range(4)]
        silent[0].sendall(bytes.fromhex("160301020001"))  # a record header and a ClientHello's first byte
        assert est.curl(f"https://127.0.0.1:{tls_port}/.well-known/est/root/cacerts")[0] == 200
        for sock in silent:
            assert sock.recv(1) == b""  # closed by the edge (a timeout of the test would raise)
            sock.close()
        waited = time.monotonic() - opened
        assert 1.4 < waited < 6, waited
    finally:
        code = edge.stop()
    assert code in (0, -15), edge.log()
    assert "Traceback" not in edge.log(tail=1_000_000)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children of any of its threads: the pool starts from a thread)."""
    found = []
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    for child in children:
        found.append(child)
        found += _descendants(child)
    return found


DMS1_ENROLL = ("--cert", "dms1.pem", "--key", "dms1.key", "-H", "Content-Type: application/pkcs10")


def _enroll_until_workers_run(est: Est, name: str, cn: str) -> tuple[str, tuple[str | Path, ...], Path, list[int]]:
    """One enrollment (the workers have run a job); the URL, curl arguments, CSR
    and worker process ids, for tests that then act on the workers."""
    body = csr(est, name, cn)
    base = f"{est.https}/.well-known/est/root/simpleenroll"
    enroll = tuple(est.work / a if a.endswith((".pem", ".key")) else a for a in DMS1_ENROLL)
    est.curl(base, *enroll, "--data-binary", f"@{body}")
    workers = _signer_workers(est)
    assert workers, "no signer worker process found"
    return base, enroll, body, workers


def _signer_workers(est: Est) -> list[int]:
    return [
        pid
        for pid in _descendants(est.server.proc.pid)
        if b"\0-m\0signer.worker\0" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


def _nice(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])  # field 19 of proc(5)


def test_signer_workers_yield_to_ocsp_and_revocations(est: Est) -> None:
    """Workers run workers.nice steps (19 by default) below the signer, which keeps the edge's priority."""
    _, _, _, workers = _enroll_until_workers_run(est, "nice", "device-nice")
    signer = _nice(est.server.proc.pid)
    assert {_nice(pid) for pid in workers} == {min(19, signer + Config().workers.nice)}


def test_password_checks_run_at_the_workers_priority_beside_ocsp(est: Est) -> None:
    """argon2 (64 MiB, several threads) runs on edge threads workers.nice steps below the edge's event
    loop, as the signer workers do: a Basic enrollment storm leaves OCSP the core first."""
    added = subprocess.run(
        [helpers.PKI_EDGE, "--data", str(est.data), "est", "user", "add", "root", "nicer", "--password-stdin"],
        input="pw-nice\n", capture_output=True, text=True, timeout=60, env=helpers.clean_env(), check=False,
    )  # fmt: skip
    assert added.returncode == 0, added
    body = csr(est, "nice-user", "device-nice-user")
    est.curl(f"{est.https}/.well-known/est/root/simpleenroll", "-u", "nicer:pw-nice",
             "-H", "Content-Type: application/pkcs10", "--data-binary", f"@{body}")  # fmt: skip
    [edge] = [
        pid for pid in _descendants(est.server.proc.pid) if b"\0edge\0" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    loop = _nice(edge)
    threads = {}
    for task in Path(f"/proc/{edge}/task").iterdir():
        with contextlib.suppress(OSError):
            threads[int(task.name)] = int((task / "stat").read_text().rsplit(")", 1)[1].split()[16])
    assert threads[edge] == loop  # the event loop: OCSP's
    if loop < 19:  # else nothing can run below it (the tests themselves run at nice 19)
        assert min(19, loop + Config().workers.nice) in set(threads.values()) - {loop}, threads  # the checks'


def test_a_killed_signer_worker_is_replaced_and_loses_nothing(est: Est) -> None:
    """kill -9 of a worker process: the pool is rebuilt, the next enrollments succeed, and every
    certificate that was answered is in the inventory with a good OCSP status."""
    base, enroll, body, workers = _enroll_until_workers_run(est, "victim", "device-9")
    os.kill(workers[0], signal.SIGKILL)
    statuses = []
    for _ in range(10):
        status, p7 = est.curl(base, *enroll, "--data-binary", f"@{body}", expect_status=None)
        statuses.append(status)
        if status == 200:
            (est.work / "after-kill.p7").write_bytes(p7)
            break
        assert status == 503, (status, p7)  # the jobs of the dead worker: Busy, never a 500
        time.sleep(0.5)
    assert statuses[-1] == 200, statuses
    (est.work / "after-kill.pem").write_text(print_certs(est, "after-kill.p7"))
    check_issued(est, "after-kill.pem", "victim.key")


def test_locust_est_users(est: Est) -> None:
    """bench/locustfile.py's EST users against the running server: enrollments and re-enrollments, no failure."""
    import csv
    import sys

    locust = Path(sys.executable).with_name("locust")
    out = est.work / "locust-est"
    env = {
        **helpers.clean_env(),
        "PKI_EDGE_LOCUST_EST_ONLY": "1",
        "PKI_EDGE_LOCUST_EST_RA_CERT": str(est.work / "dms1.pem"),
        "PKI_EDGE_LOCUST_EST_RA_KEY": str(est.work / "dms1.key"),
        "PKI_EDGE_LOCUST_EST_LABEL": "root",
        "PKI_EDGE_LOCUST_EST_SERVER_CA": str(est.work / "tlsca.pem"),
        "PKI_EDGE_LOCUST_EST_WAIT": "0.5",  # stay under the default per-client rate limit
    }
    command = [str(locust), "-f", str(Path(__file__).parents[2] / "bench" / "locustfile.py"), "--headless"]
    command += ["-u", "2", "-r", "2", "-t", "4s", "--stop-timeout", "2", "--host", est.https, "--csv", str(out)]
    command += ["--only-summary", "EstEnrollUser", "EstReenrollUser"]
    done = subprocess.run(
        command,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    with Path(f"{out}_stats.csv").open(newline="") as f:
        stats = {row["Name"]: row for row in csv.DictReader(f)}
    for name in ("POST simpleenroll", "POST simplereenroll"):
        assert int(stats[name]["Request Count"]) > 0, stats
        assert int(stats[name]["Failure Count"]) == 0, stats
