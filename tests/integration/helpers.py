"""Helpers for the integration tests: real `pki-edge` processes, the real `openssl` CLI, curl.

Everything here talks to 127.0.0.1 only, and every wait is bounded.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bench.process import free_port as free_port  # the tests' servers take ports as the benchmark's do

T = TypeVar("T")

OPENSSL = shutil.which("openssl")
CURL = shutil.which("curl")


def _find_pki_edge() -> str:
    beside = Path(sys.executable).with_name("pki-edge")
    if beside.exists():
        return str(beside)
    found = shutil.which("pki-edge")
    assert found, "the pki-edge console script is not installed (pip install -e .)"
    return found


PKI_EDGE = _find_pki_edge()

REVOKED_TIME = "2026-01-02T03:04:05Z"
REVOKED_TIME_OPENSSL = "Revocation Time: Jan  2 03:04:05 2026 GMT"

HASHES: dict[str, hashes.HashAlgorithm] = {"sha1": hashes.SHA1(), "sha256": hashes.SHA256()}

UNAUTHORIZED = bytes.fromhex("30030a0106")
MALFORMED = bytes.fromhex("30030a0101")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for child processes: no pki-edge overrides and no proxies from the caller."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PKI_EDGE_") and k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
    }
    env["NO_PROXY"] = env["no_proxy"] = "*"
    env.update(extra)
    return env


def pki_edge(
    data_dir: Path, *args: str | Path, check: bool = True, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `pki-edge --data DATA ARGS...` as a user would; text output captured."""
    cmd = [PKI_EDGE, "--data", str(data_dir), *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or clean_env())
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc


def require_openssl() -> str:
    assert OPENSSL, "the openssl CLI is required by the integration tests (apt-get install openssl)"
    return OPENSSL


def openssl(*args: str | Path, check: bool = True, cwd: Path | None = None, timeout: float = 60) -> str:
    """Run the openssl CLI; returns stdout and stderr together (openssl splits its report over both)."""
    cmd = [require_openssl(), *map(str, args)]
    proc = subprocess.run(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd, timeout=timeout, env=clean_env()
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}")
    return proc.stdout


def openssl_rc(*args: str | Path, cwd: Path | None = None, timeout: float = 60) -> tuple[int, str]:
    cmd = [require_openssl(), *map(str, args)]
    proc = subprocess.run(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd, timeout=timeout, env=clean_env()
    )
    return proc.returncode, proc.stdout


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 30, interval: float = 0.05) -> T:
    """Call ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")
        time.sleep(interval)


# ------------------------------------------------------------------------------ processes

SERVERS: list[Server] = []


class Server:
    """A long-running pki-edge process (`up`, `edge` or `signer`) with its output in a log file."""

    def __init__(
        self,
        name: str,
        data_dir: Path,
        args: list[str],
        log_path: Path,
        port: int | None = None,
        env: dict[str, str] | None = None,
        open_files: int | None = None,
    ) -> None:
        """``open_files``: the process's limit of open files, soft and hard (it cannot raise it)."""
        self.name = name
        self.data_dir = data_dir
        self.port = port
        self.log_path = log_path
        self.stopped_at: float | None = None
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [PKI_EDGE, "--data", str(data_dir), *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=clean_env(PYTHONUNBUFFERED="1", **(env or {})),
            start_new_session=True,  # its own process group: a kill on failure takes the children too
            preexec_fn=(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files)))
            if open_files is not None
            else None,
        )
        SERVERS.append(self)

    @property
    def base_url(self) -> str:
        assert self.port is not None
        return f"http://127.0.0.1:{self.port}"

    def log(self, tail: int = 200) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-tail:])

    def children(self) -> list[int]:
        """Direct children of the process (Linux /proc)."""
        pid = self.proc.pid
        try:
            return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            return []

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, timeout: float = 30) -> dict[str, Any]:
        """Wait until GET /readyz says 200 with ready: true."""

        def probe() -> dict[str, Any] | None:
            if not self.alive():
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}\n{self.log()}")
            try:
                r = httpx.get(f"{self.base_url}/readyz", timeout=2, trust_env=False)
            except httpx.HTTPError:
                return None
            if r.status_code == 200 and r.json().get("ready") is True:
                return dict(r.json())
            return None

        return wait_for(f"{self.name} /readyz", probe, timeout=timeout, interval=0.1)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, wait; SIGKILL the whole group if it does not stop in time. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.stopped_at = time.monotonic()
        self._log.close()
        return int(self.proc.returncode)

    def sigkill(self) -> int:
        """``kill -9`` of this one process (not its group); returns the wait status."""
        self.proc.send_signal(signal.SIGKILL)
        code = self.proc.wait(timeout=10)
        self.stopped_at = time.monotonic()
        return code

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.stopped_at = time.monotonic()

    def stop_clean(self) -> None:
        """Stop and assert a clean shutdown (exit code 0 within the grace period)."""
        code = self.stop()
        assert code == 0, f"{self.name} did not shut down cleanly (exit {code})\n--- log\n{self.log()}"
        assert "Traceback" not in self.log(tail=1_000_000), f"{self.name} logged a traceback\n{self.log()}"


def start_up(
    data_dir: Path, log_dir: Path, *extra: str, ready: bool = True, env: dict[str, str] | None = None
) -> Server:
    """`pki-edge --data D up --port P`, waiting for /readyz."""
    port = free_port()
    args = ["up", "--port", str(port), *extra]
    server = Server("up", data_dir, args, log_dir / f"up-{port}.log", port=port, env=env)
    if ready:
        server.wait_ready()
    return server


# --------------------------------------------------------------------------------- the store


@contextlib.contextmanager
def read_store(data_dir: Path) -> Iterator[tuple[Any, dict[bytes, Any]]]:
    """The LMDB store opened read-only (as the edge does), closed on exit."""
    from contract import store
    from contract.config import Config

    env = store.open_env(data_dir, readonly=True, map_size=Config().store.map_size_mb << 20)
    try:
        yield env, store.open_dbs(env, readonly=True)
    finally:
        env.close()


def store_counts(data_dir: Path) -> dict[str, int]:
    from contract import store

    with read_store(data_dir) as (env, dbs), env.begin() as txn:
        return {name.decode(): int(txn.stat(dbs[name])["entries"]) for name in store.ALL_DBS}


def wait_drained(data_dir: Path, timeout: float = 60) -> dict[str, int]:
    """Wait until the signer has nothing pending and has signed something."""

    def probe() -> dict[str, int] | None:
        counts = store_counts(data_dir)
        return counts if counts["pending"] == 0 and counts["responses"] > 0 else None

    return wait_for("the signer to drain its pending work", probe, timeout=timeout, interval=0.1)


# ------------------------------------------------------------------------------------- OCSP


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def ocsp_request_der(
    cert: x509.Certificate, issuer: x509.Certificate, hash_name: str = "sha1", nonce: bytes | None = None
) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, HASHES[hash_name])
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def ocsp_request_by_serial(issuer: x509.Certificate, serial: int, hash_name: str = "sha1") -> bytes:
    """A request for any serial of ``issuer`` (the certificate itself need not exist)."""
    from asn1crypto import keys as asn1_keys

    spki = issuer.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    key_bits = bytes(asn1_keys.PublicKeyInfo.load(spki)["public_key"].contents[1:])
    name_hash, key_hash = hashes.Hash(HASHES[hash_name]), hashes.Hash(HASHES[hash_name])
    name_hash.update(issuer.subject.public_bytes())
    key_hash.update(key_bits)
    builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        name_hash.finalize(), key_hash.finalize(), serial, HASHES[hash_name]
    )
    return builder.build().public_bytes(serialization.Encoding.DER)


def post_ocsp(base_url: str, der: bytes, path: str = "/ocsp", timeout: float = 5) -> httpx.Response:
    return httpx.post(
        base_url + path,
        content=der,
        headers={"content-type": "application/ocsp-request"},
        timeout=timeout,
        trust_env=False,
    )


def cert_status(body: bytes) -> str | None:
    """'good', 'revoked', 'unknown', or None if the body is not a successful response."""
    resp = ocsp.load_der_ocsp_response(body)
    if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        return None
    return str(resp.certificate_status.name).lower()


def wait_ocsp_status(base_url: str, der: bytes, expected: str, timeout: float = 30) -> bytes:
    """POST ``der`` until the edge answers ``expected`` ('good' or 'revoked'); returns the body."""

    def probe() -> bytes | None:
        try:
            r = post_ocsp(base_url, der)
        except httpx.HTTPError:
            return None
        return r.content if r.status_code == 200 and cert_status(r.content) == expected else None

    return wait_for(f"an OCSP answer {expected!r}", probe, timeout=timeout, interval=0.05)


# ------------------------------------------------------------------------- a PKI in Python


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "it")])


def make_ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_leaf(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    cn: str,
    serial: int,
    ocsp_signing: bool = False,
    not_after: dt.datetime | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    # A TLS leaf: server or client (an RA); or a delegated OCSP responder.
    tls = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    eku = [ExtendedKeyUsageOID.OCSP_SIGNING] if ocsp_signing else tls
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(not_after or now + dt.timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def write_pem(path: Path, obj: x509.Certificate | ec.EllipticCurvePrivateKey) -> Path:
    if isinstance(obj, x509.Certificate):
        path.write_bytes(obj.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(
            obj.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return path
