"""The EST stage: enrollments through the signer queue against raw certificate signing of the same key.

For an EC P-256 and an RSA-2048 CA (each created with ``pki-edge ca create``), in one data directory
served by one ``pki-edge up`` (signer + edge, HTTP and HTTPS ports) pinned to the server core:

1. a storm of C devices (200) enrolls through ``/.well-known/est/<CA>/simpleenroll`` with the RA
   client certificate (``pki-edge ra add``), from ``bench/est_load.py`` pinned to the load core, for a
   fixed window: enrollments/s, enrollments per server CPU-second (the whole ``up`` process tree,
   /proc), latency percentiles of the successful answers, 503s counted apart;
2. the reference, right before and right after each storm: ``x509.CertificateBuilder(...).sign()``
   with the same CA key, for a certificate of the shape the product issues (the CSR's subject and
   SAN, the default profile's extensions, AIA OCSP), in a subprocess pinned to the server core;
   certificates per CPU-second (the mean of before and after);
3. OCSP cache-hit GETs with wrk (the runner's mix mechanism) on the plain HTTP port, for serials that
   were issued over EST in a warm-up, quiet (just before the storm) and during the storm, same
   duration: the storm/quiet req/s ratio.

The goals (issue #4, goal 6): enrollments ≥ 50 % of the raw signing rate (per key type), OCSP
throughput during the storm within 20 % of the quiet figure, and the p99 under the storm reported
beside them. Every figure is a ratio against a reference measured in the same run.

``python -m bench.est raw --data D --ca NAME --csrs FILE --seconds S`` is the reference (prints JSON).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes, CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from bench import probe, procstat, reqset, wrk
from bench.dataset import clean_env, pki_edge_bin, run_cli
from bench.process import Proc, free_port


class EstCa(NamedTuple):
    label: str  # in the results and tables
    key_type: str  # the CA's key
    name: str  # the CA's name (= EST label)
    responder: bool = False  # a P-256 responder minted for it signs its OCSP (`pki-edge ca responder --mint`)


KEYS = (
    EstCa("ec-p256", "ec-p256", "est-ec"),
    EstCa("rsa-2048", "rsa-2048", "est-rsa"),
    # The same RSA key type with its OCSP (two responses per enrollment) signed by a P-256 delegate.
    EstCa("rsa-2048+ec-ocsp", "rsa-2048", "est-rsa-ecr", responder=True),
)
TLS_CA = "est-tls"
RA_NAME = "bench-ra"
ENROLL_GOAL = 0.5  # enrollments ≥ 50 % of raw certificate signing
OCSP_GOAL = 0.8  # OCSP during the storm within 20 % of quiet
WARMUP_ATTEMPTS = 4  # windows of 1, 2, 4, 8 × warmup_seconds
STORM_MARGIN_S = 2.0  # the storm outlasts wrk's run by this much (wrk starts inside it)
HASH_ALGORITHMS = ("sha1", "sha256")
# One RA certificate stands for every device here, so the per-client limit (60/min by default)
# would measure the limiter; it is lifted for the bench data directory only.
CONFIG_TOML = """# written by bench/est.py: one RA certificate enrolls for every device of the storm
[est]
rate_per_minute = 100000000
rate_burst = 1000000
"""

DIGITAL_SIGNATURE_ONLY = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)  # the default profile's key usage

Say = Callable[[str], None]


def options(**values: object) -> list[str]:
    """``--name value`` pairs from keyword arguments (``_`` becomes ``-``), for command lines."""
    return [arg for name, value in values.items() for arg in (f"--{name.replace('_', '-')}", str(value))]


def pinned(cmd: list[str], cpu: int | None) -> list[str]:
    return (["taskset", "-c", str(cpu)] if cpu is not None else []) + cmd


@dataclass(frozen=True)
class Settings:
    connections: int = 200  # devices in the storm
    ocsp_seconds: float = 5.0  # each wrk run (quiet, and during the storm)
    rounds: int = 1  # storms per key type (interleaved by key)
    csrs: int = 2_000  # pre-generated CSRs (reused round-robin)
    raw_seconds: float = 1.0  # each reference measurement
    warmup_seconds: float = 1.5
    warmup_connections: int = 32
    keep: int = 32  # answers validated per storm
    ocsp_serials: int = 500  # EST-issued serials per CA kept for the OCSP mix
    wrk_connections: int = 32
    mix_length: int = 20_000
    ocsp: bool = True  # measure OCSP (needs wrk)

    @property
    def storm_seconds(self) -> float:
        return self.ocsp_seconds + STORM_MARGIN_S


def settings(mode: str, seconds: float, wrk_connections: int = 32) -> Settings:
    """The stage's settings for a runner mode; ``seconds`` is the mode's run length (``--seconds``)."""
    if mode == "full":
        return Settings(
            ocsp_seconds=seconds,
            rounds=3,
            csrs=10_000,
            raw_seconds=2.0,
            warmup_seconds=3.0,
            keep=64,
            ocsp_serials=2_000,
            wrk_connections=wrk_connections,
            mix_length=50_000,
        )
    return Settings(ocsp_seconds=seconds, wrk_connections=wrk_connections)


# -------------------------------------------------------------------------------------------- setup


@dataclass
class Setup:
    work: Path
    data: Path
    http_port: int
    tls_port: int
    tls_ca: Path
    server_cert: Path
    server_key: Path
    ra_cert: Path
    ra_key: Path
    ca_pems: dict[str, Path] = field(default_factory=dict)  # CA name -> PEM


def make_csrs(count: int, prefix: str = "device") -> list[bytes]:
    """``count`` DER CSRs with EC P-256 keys (cheap for the client), CN and one DNS SAN each."""
    out = []
    for n in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        name = f"{prefix}-{n}"
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(f"{name}.devices.example")]), critical=False)
            .sign(key, hashes.SHA256())
        )
        out.append(csr.public_bytes(serialization.Encoding.DER))
    return out


def write_csrs(path: Path, ders: Sequence[bytes]) -> Path:
    path.write_text("".join(base64.b64encode(d).decode("ascii") + "\n" for d in ders), encoding="ascii")
    return path


def prepare(work: Path, http_port: int, tls_port: int) -> Setup:
    """The CAs, the edge's TLS certificate and the RA, with the product's CLI, as an operator would."""
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "pki-edge.toml").write_text(CONFIG_TOML)
    ocsp_url = f"http://127.0.0.1:{http_port}/ocsp"
    for ca in KEYS:
        run_cli(data, "ca", "create", ca.name, "--key", ca.key_type, "--ocsp-url", ocsp_url, timeout=120)
        if ca.responder:
            run_cli(data, "ca", "responder", ca.name, "--mint", "--key", "ec-p256", timeout=120)
    run_cli(data, "ca", "create", TLS_CA, "--key", "ec-p256", timeout=120)
    setup = Setup(
        work=work,
        data=data,
        http_port=http_port,
        tls_port=tls_port,
        tls_ca=work / f"{TLS_CA}.pem",
        server_cert=work / "localhost.pem",
        server_key=work / "localhost.key",
        ra_cert=work / f"{RA_NAME}.pem",
        ra_key=work / f"{RA_NAME}.key",
    )
    for name in (*(ca.name for ca in KEYS), TLS_CA):
        pem = work / f"{name}.pem"
        pem.write_text(run_cli(data, "ca", "show", name, timeout=60))
        setup.ca_pems[name] = pem
    sans = ("--san", "DNS:localhost", "--san", "IP:127.0.0.1")  # the load generator checks the name
    run_cli(data, "issue", TLS_CA, "--cn", "localhost", *sans, "--out", work, timeout=60)
    run_cli(data, "issue", KEYS[0].name, "--cn", RA_NAME, "--out", work, timeout=60)
    cas = ",".join(ca.name for ca in KEYS)
    run_cli(data, "ra", "add", RA_NAME, "--cert", setup.ra_cert, "--cas", cas, timeout=60)
    return setup


def start_up(setup: Setup, cpu: int | None, log_dir: Path) -> Proc:
    """``pki-edge up`` (signer + edge) with HTTP and HTTPS, pinned; ready once /readyz and the job socket are."""
    tls = options(tls_port=setup.tls_port, tls_cert=setup.server_cert, tls_key=setup.server_key)
    cmd = [pki_edge_bin(), "--data", str(setup.data), "up", *options(host="127.0.0.1", port=setup.http_port), *tls]
    proc = Proc("pki-edge-up", cmd, log_dir / "est-up.log", cpu=cpu, env=clean_env(PYTHONUNBUFFERED="1"))
    jobs_socket = setup.data / "signer" / "jobs.sock"

    def ready() -> bool:
        reply = probe.answers(setup.http_port, "GET", "/readyz", timeout=1.0)
        return reply is not None and reply.status == 200 and jobs_socket.exists()

    try:
        proc.wait_until(ready, timeout=60, interval=0.1)
    except BaseException:
        proc.stop(timeout=30)
        raise
    return proc


# ---------------------------------------------------------------------------------- the reference


def _authority_key_identifier(
    ca_cert: x509.Certificate, ca_key: CertificateIssuerPrivateKeyTypes
) -> x509.AuthorityKeyIdentifier:
    """The CA's own subjectKeyIdentifier when it has one, as the product does (signer/enroll.py)."""
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


@dataclass(frozen=True)
class Request:
    """What the reference needs of a CSR, parsed once before timing (the product's parsing is not signing)."""

    subject: x509.Name
    san: x509.SubjectAlternativeName
    public_key: CertificatePublicKeyTypes

    @classmethod
    def of(cls, csr_der: bytes) -> Request:
        csr = x509.load_der_x509_csr(csr_der)
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return cls(csr.subject, san, csr.public_key())


def reference_builder(
    request: Request, ca_cert: x509.Certificate, aki: x509.AuthorityKeyIdentifier, ocsp_url: str | None
) -> x509.CertificateBuilder:
    """A CertificateBuilder for the certificate the product issues for this request (default profile)."""
    public_key = request.public_key
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        .subject_name(request.subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(DIGITAL_SIGNATURE_ONLY, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(aki, critical=False)
        .add_extension(request.san, critical=False)
    )
    if ocsp_url:
        aia = x509.AccessDescription(AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url))
        builder = builder.add_extension(x509.AuthorityInformationAccess([aia]), critical=False)
    return builder


def raw_sign_rate(
    requests: Sequence[Request],
    ca_cert: x509.Certificate,
    ca_key: CertificateIssuerPrivateKeyTypes,
    ocsp_url: str | None,
    seconds: float,
    limit: int = 1_000_000,
) -> dict[str, float]:
    """Certificates built and signed per CPU-second (and per wall-second) with ``ca_key``, for ``seconds``."""
    algorithm = hashes.SHA256()  # what the product signs with for P-256 and RSA keys (signer.keys)
    aki = _authority_key_identifier(ca_cert, ca_key)
    done = 0
    cpu0, wall0 = time.process_time(), time.monotonic()
    deadline = wall0 + seconds
    while done < limit:
        for _ in range(5):
            # A fresh builder each time: its serial is random, as every issued certificate's is.
            reference_builder(requests[done % len(requests)], ca_cert, aki, ocsp_url).sign(ca_key, algorithm)
            done += 1
        if time.monotonic() >= deadline:
            break
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    return {
        "certs": done,
        "cpu_s": cpu,
        "wall_s": wall,
        "per_cpu_second": done / cpu if cpu else 0.0,
        "per_wall_second": done / wall if wall else 0.0,
    }


def _raw_in_process(data: Path, ca_name: str, csrs: Path, seconds: float) -> dict[str, Any]:
    from bench.dataset import ca_record
    from bench.est_load import read_csrs
    from signer.registry import load_ca_key

    record = ca_record(data, ca_name)
    ca_cert = x509.load_der_x509_certificate(record.cert_der)
    key = load_ca_key(data, record)
    requests = [Request.of(der) for der in read_csrs(csrs)[:64]]
    raw_sign_rate(requests, ca_cert, key, record.ocsp_url, min(0.2, seconds))  # warm caches and code paths
    rate = raw_sign_rate(requests, ca_cert, key, record.ocsp_url, seconds)
    return {"ca": ca_name, "key": type(key).__name__, **rate}


def run_raw(data: Path, ca_name: str, csrs: Path, seconds: float, cpu: int | None) -> dict[str, Any]:
    """The reference in a subprocess pinned to ``cpu`` (the server core), bounded in time."""
    cmd = pinned(
        [sys.executable, "-m", "bench.est", "raw", *options(data=data, ca=ca_name, csrs=csrs, seconds=seconds)], cpu
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120, env=clean_env())
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


# --------------------------------------------------------------------------------------- the storm


def load_command(
    setup: Setup,
    label: str,
    csrs: Path,
    connections: int,
    seconds: float,
    keep: int,
    out: Path,
    cpu: int | None,
    server_pid: int | None,
) -> list[str]:
    tls = options(port=setup.tls_port, server_ca=setup.tls_ca, cert=setup.ra_cert, key=setup.ra_key)
    run = options(label=label, csrs=csrs, connections=connections, seconds=seconds, keep=keep)
    files = options(ready=out.with_suffix(".ready"), samples=out.with_suffix(".samples.jsonl"))
    cmd = [sys.executable, "-m", "bench.est_load", *tls, *run, *files]
    if server_pid is not None:
        cmd += options(server_pid=server_pid)
    return pinned(cmd, cpu)


@dataclass
class LoadRun:
    result: dict[str, Any]
    samples: list[tuple[int, str]]  # (CSR index, base64 body)
    during: Any = None  # what ran inside the window (the wrk run)


def run_load(cmd: list[str], out: Path, seconds: float, during: Callable[[], Any] | None = None) -> LoadRun:
    """Run the load generator; once its window has started, run ``during`` (wrk) beside it."""
    ready, samples_path = out.with_suffix(".ready"), out.with_suffix(".samples.jsonl")
    ready.unlink(missing_ok=True)
    log = out.with_suffix(".log").open("wb")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, env=clean_env())
    inside = None
    try:
        deadline = time.monotonic() + 60  # connecting C devices (TLS handshakes) is bounded too
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the EST load generator did not start its window: {out.with_suffix('.log')}")
            time.sleep(0.01)
        if during is not None:
            inside = during()
        stdout, _ = proc.communicate(timeout=seconds + 90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
        log.close()
    if proc.returncode != 0:
        raise RuntimeError(f"the EST load generator exited {proc.returncode}: {out.with_suffix('.log')}")
    result = json.loads(stdout.decode().strip().splitlines()[-1])
    samples = []
    if samples_path.exists():
        for line in samples_path.read_text().splitlines():
            entry = json.loads(line)
            samples.append((int(entry["csr"]), str(entry["body"])))
    return LoadRun(result, samples, inside)


def nothing_answered(result: dict[str, Any]) -> bool:
    """No answer of any kind came back inside the window (every request was still running at its end)."""
    return not (result.get("ok") or result.get("statuses") or result.get("busy") or result.get("errors"))


def validate(
    samples: Sequence[tuple[int, str]], csr_ders: Sequence[bytes], ca_pem: bytes
) -> tuple[list[x509.Certificate], list[str]]:
    """Each answer is a PKCS#7 certs-only holding one certificate issued by the CA for the CSR's key and subject.

    Returns the certificates and the problems found (at most one per answer).
    """
    ca = x509.load_pem_x509_certificate(ca_pem)
    certs: list[x509.Certificate] = []
    problems: list[str] = []
    for index, body in samples:
        csr = x509.load_der_x509_csr(csr_ders[index])
        try:
            found = pkcs7.load_der_pkcs7_certificates(base64.b64decode(body))
        except ValueError as exc:
            problems.append(f"answer for CSR {index}: not a PKCS#7 certs-only ({exc})")
            continue
        if len(found) != 1:
            problems.append(f"answer for CSR {index}: {len(found)} certificates, expected 1")
            continue
        cert = found[0]
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature) as exc:
            problems.append(f"answer for CSR {index}: not issued by {ca.subject.rfc4514_string()} ({exc})")
            continue
        if cert.public_key() != csr.public_key() or cert.subject != csr.subject:
            problems.append(f"answer for CSR {index}: not the CSR's key or subject")
            continue
        certs.append(cert)
    return certs, problems


# --------------------------------------------------------------------------------------------- OCSP


def ocsp_mix(
    issued: dict[str, list[x509.Certificate]], ca_pems: dict[str, Path], out: Path, length: int, seed: int = 17
) -> tuple[Path, list[reqset.Item]]:
    """A uniform GET mix over the EST-issued serials of every CA, both hash algorithms (bench/reqset.py)."""

    items: list[reqset.Item] = []
    for name, certs in issued.items():
        ca_der = x509.load_pem_x509_certificate(ca_pems[name].read_bytes()).public_bytes(serialization.Encoding.DER)
        items += reqset.build_items(ca_der, [(c.serial_number, False) for c in certs], HASH_ALGORITHMS)
    lines, chosen = reqset.request_lines(items, "GET", "uniform", length, seed)
    mix = reqset.write_lines(out, lines)
    # Keep the items in the mix's order for the checks before timing.
    return mix, [items[i] for i in chosen]


def check_ocsp(port: int, mix: Path, items: Sequence[reqset.Item], count: int = 20) -> list[str]:
    """The first requests of the mix get a successful answer saying good for the right serial."""
    problems = []
    client = probe.Client(port, timeout=5)
    try:
        with mix.open() as lines:
            for item, line in zip(items[:count], lines, strict=False):
                method, path, body = reqset.parse_line(line)
                reply = client.request(method, path, body)
                status, serial = probe.cert_status(reply.body)
                if reply.status != 200 or status != "good" or serial != item.serial:
                    problems.append(f"GET: HTTP {reply.status}, {status} for {serial}, expected good {item.serial}")
    finally:
        client.close()
    return problems


def wrk_run(
    port: int, mix: Path, seconds: float, connections: int, cpu: int | None, server: Proc | None
) -> dict[str, Any]:
    """One wrk run of the GET mix against the edge's HTTP port; req/s, latency, server CPU when alone."""
    cmd = wrk.command(f"http://127.0.0.1:{port}/", mix, connections=connections, duration_s=seconds, cpu=cpu)
    cpu0 = server.cpu_seconds() if server else None
    result, _ = wrk.run(cmd, seconds)
    cpu1 = server.cpu_seconds() if server else None
    duration = result.duration_s or seconds
    server_cpu = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
    return {
        "requests": result.requests,
        "duration_s": duration,
        "rps": result.rps,
        "errors": result.errors,
        "error_count": result.error_count,
        "latency_us": result.latency_us,
        "client_cpu_s": result.client_cpu_s,
        "server_cpu_s": server_cpu,
    }


# ---------------------------------------------------------------------------------------- CPU split

ROLES = ("edge", "signer", "workers", "other")


def role(cmdline: str) -> str:
    """Which part of ``pki-edge up`` a process is, from its command line (NUL-separated as in /proc)."""
    args = cmdline.split("\0")
    if "signer.worker" in args:
        return "workers"  # the signer's worker processes (they hold the keys and sign)
    if "edge" in args:
        return "edge"
    if "signer" in args:
        return "signer"  # the background signer and the job server
    return "other"  # the supervisor


def cpu_by_role(root: int) -> dict[str, float]:
    """CPU-seconds so far of each role in ``root``'s process tree (reaped children in their parent's share)."""
    out = dict.fromkeys(ROLES, 0.0)
    for st in procstat.tree(root, procstat.all_stats()):
        try:
            cmdline = Path(f"/proc/{st.pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        out[role(cmdline)] += (st.utime + st.stime + st.cutime + st.cstime) / procstat.CLOCK_TICKS
    return out


def split_shares(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Each role's share of the CPU used between two readings (empty when none was used)."""
    used = {name: max(0.0, after.get(name, 0.0) - before.get(name, 0.0)) for name in ROLES}
    total = sum(used.values())
    return {name: value / total for name, value in used.items()} if total > 0 else {}


# ------------------------------------------------------------------------------------------ figures


def median(values: Sequence[float | None]) -> float | None:
    data = [v for v in values if v is not None]
    return statistics.median(data) if data else None


def round_figures(record: dict[str, Any]) -> dict[str, Any]:
    """The figures of one storm: rates, ratios to the mean of the references around it, OCSP ratio."""
    storm = record["storm"]
    raws = [r["per_cpu_second"] for r in (record.get("raw_before"), record.get("raw_after")) if r]
    raw = sum(raws) / len(raws) if raws else None
    window, ok, server_cpu = storm.get("window_s") or 0.0, storm.get("ok", 0), storm.get("server_cpu_s")
    rps = ok / window if window else None
    per_cpu = ok / server_cpu if server_cpu else None
    quiet, loud = record.get("ocsp_quiet"), record.get("ocsp_storm")
    ocsp_ratio = loud["rps"] / quiet["rps"] if quiet and loud and quiet.get("rps") else None
    mixed = record.get("storm_with_ocsp") or {}
    mixed_window = mixed.get("window_s") or 0.0
    return {
        "raw_per_cpu_second": raw,
        "enrollments": ok,
        "rps": rps,
        "per_cpu_second": per_cpu,
        "x_raw_rps": rps / raw if rps is not None and raw else None,
        "x_raw_cpu": per_cpu / raw if per_cpu is not None and raw else None,
        "server_cpu_util": server_cpu / window if server_cpu is not None and window else None,
        "client_cpu_util": storm.get("client_cpu_s", 0.0) / window if window else None,
        "p50_ms": storm.get("latency_ms", {}).get("p50"),
        "p99_ms": storm.get("latency_ms", {}).get("p99"),
        "busy": storm.get("busy", 0),
        "answers": sum(storm.get("statuses", {}).values()),
        "ocsp_quiet_rps": quiet["rps"] if quiet else None,
        "ocsp_storm_rps": loud["rps"] if loud else None,
        "ocsp_ratio": ocsp_ratio,
        "rps_with_ocsp": mixed.get("ok", 0) / mixed_window if mixed_window else None,
        "p99_ms_with_ocsp": mixed.get("latency_ms", {}).get("p99"),
    }


def summarize_key(key: str, ca: str, records: Sequence[dict[str, Any]], connections: int) -> dict[str, Any]:
    """Medians over a key type's storms (ratios: medians of per-round ratios); counts are summed."""
    rounds = [round_figures(r) for r in records]
    summary: dict[str, Any] = {"key": key, "ca": ca, "connections": connections, "rounds": len(rounds)}
    for name in (
        "raw_per_cpu_second",
        "rps",
        "per_cpu_second",
        "x_raw_rps",
        "x_raw_cpu",
        "server_cpu_util",
        "client_cpu_util",
        "p50_ms",
        "p99_ms",
        "ocsp_quiet_rps",
        "ocsp_storm_rps",
        "ocsp_ratio",
        "rps_with_ocsp",
        "p99_ms_with_ocsp",
    ):
        summary[name] = median([r[name] for r in rounds])
    for name in ("enrollments", "busy", "answers"):
        summary[name] = sum(r[name] for r in rounds)
    summary["other_statuses"] = sum(
        n for r in records for status, n in r["storm"].get("statuses", {}).items() if status not in ("200", "503")
    )
    summary["errors"] = sum(sum(r["storm"].get("errors", {}).values()) for r in records)
    summary["validated"] = sum(r.get("validated", 0) for r in records)
    summary["problems"] = [p for r in records for p in r.get("problems", [])][:10]
    summary["server_cpu_split"] = {
        name: median([r.get("server_cpu_split", {}).get(name) for r in records]) for name in ROLES
    }
    summary["per_round"] = rounds
    return summary


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _num(value: float | None, spec: str = ".0f") -> str:
    return "n/a" if value is None else f"{value:{spec}}"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def goal_rows(est: dict[str, Any] | None) -> list[dict[str, str]]:
    """The EST rows of the goals table (bench/report.py)."""
    rows: list[dict[str, str]] = []
    if not est:
        return rows
    for s in est.get("summary", []):
        x_cpu, x_rps = s.get("x_raw_cpu"), s.get("x_raw_rps")
        invalid = s.get("problems") or not s.get("validated")
        measured = (
            f"{_pct(x_cpu)} per CPU-s ({_num(s.get('per_cpu_second'))} enrollments vs "
            f"{_num(s.get('raw_per_cpu_second'))} raw certs/CPU-s), {_pct(x_rps)} by wall clock "
            f"({_num(s.get('rps'))} enrollments/s); {s['connections']} devices: p50 {_num(s.get('p50_ms'))} ms, "
            f"p99 {_num(s.get('p99_ms'))} ms, 503 {s.get('busy', 0)} of {s.get('answers', 0)} answers"
        )
        if invalid:
            measured += f"; answers not valid ({(s.get('problems') or ['none checked'])[0]})"
        rows.append(
            {
                "goal": f"EST {s['key']}: enrollments through the queue ≥ {ENROLL_GOAL:.0%} of raw certificate signing",
                "measured": measured,
                "verdict": _verdict(None if x_cpu is None else (x_cpu >= ENROLL_GOAL and not invalid)),
            }
        )
    for s in est.get("summary", []):
        ratio = s.get("ocsp_ratio")
        if ratio is None and s.get("ocsp_quiet_rps") is None:
            continue
        rows.append(
            {
                "goal": f"EST {s['key']} storm ({s['connections']} devices): OCSP cache-hit GET req/s within "
                f"{1 - OCSP_GOAL:.0%} of quiet",
                "measured": f"{_num(ratio, '.2f')}× ({_num(s.get('ocsp_storm_rps'))} vs "
                f"{_num(s.get('ocsp_quiet_rps'))} req/s); enrollment p99 {_num(s.get('p99_ms'))} ms",
                "verdict": _verdict(None if ratio is None else ratio >= OCSP_GOAL),
            }
        )
    return rows


def extra_lines(est: dict[str, Any] | None) -> list[str]:
    """Lines for the README section: per key type, the storm in plain words."""
    lines: list[str] = []
    for s in (est or {}).get("summary", []):
        lines.append(
            f"- EST {s['key']} (CA {s['ca']}): {s['enrollments']:,} enrollments in {s['rounds']} storm(s) of "
            f"{s['connections']} devices, {_num(s.get('rps'))}/s, {_num(s.get('per_cpu_second'))} per server "
            f"CPU-s (server CPU {_pct(s.get('server_cpu_util'))}, client CPU {_pct(s.get('client_cpu_util'))}); "
            f"raw signing {_num(s.get('raw_per_cpu_second'))} certs/CPU-s; latency p50 {_num(s.get('p50_ms'))} ms, "
            f"p99 {_num(s.get('p99_ms'))} ms; 503 {s['busy']}, other statuses {s['other_statuses']}, "
            f"connection errors {s['errors']}; {s['validated']} answers validated; with OCSP saturating the "
            f"same core: {_num(s.get('rps_with_ocsp'))} enrollments/s, p99 {_num(s.get('p99_ms_with_ocsp'))} ms; "
            "server CPU by process: "
            + ", ".join(f"{name} {_pct(share)}" for name, share in (s.get("server_cpu_split") or {}).items())
            + "."
        )
    return lines


# ------------------------------------------------------------------------------------------ the stage


@dataclass
class Stage:
    settings: Settings
    setup: Setup
    server: Proc
    csrs_file: Path
    csr_ders: list[bytes]
    server_cpu: int | None
    load_cpu: int | None
    say: Say
    mix: Path | None = None

    def load(
        self,
        label: str,
        name: str,
        connections: int,
        seconds: float,
        keep: int,
        during: Callable[[], Any] | None = None,
    ) -> LoadRun:
        out = self.setup.work / name
        cmd = load_command(
            self.setup, label, self.csrs_file, connections, seconds, keep, out, self.load_cpu, self.server.pid
        )
        return run_load(cmd, out, seconds, during)

    def check(self, ca: str, run: LoadRun) -> tuple[list[x509.Certificate], list[str]]:
        return validate(run.samples, self.csr_ders, self.setup.ca_pems[ca].read_bytes())

    def warm_up(self) -> dict[str, list[x509.Certificate]]:
        """A short enrollment run per CA: loads each CA key into the workers, and issues the OCSP serials."""
        issued: dict[str, list[x509.Certificate]] = {}
        s = self.settings
        for c in KEYS:
            key, ca = c.label, c.name
            # The first enrollment of a CA loads its key into the workers: on a slow or busy machine
            # that can outlast the window, so an empty window (no answer at all) is tried again, longer.
            seconds = s.warmup_seconds
            for attempt in range(WARMUP_ATTEMPTS):
                run = self.load(ca, f"warmup-{key}-{attempt}", s.warmup_connections, seconds, s.ocsp_serials)
                certs, problems = self.check(ca, run)
                if problems or not nothing_answered(run.result):
                    break
                seconds *= 2
            if problems or not certs:
                raise RuntimeError(f"EST warm-up on {ca}: {run.result}; {problems[:3]}")
            issued[ca] = certs
            self.say(f"  warm-up {key}: {run.result['ok']} enrollments, {len(certs)} answers validated")
        return issued

    def ocsp(self, seconds: float, server: Proc | None) -> dict[str, Any] | None:
        if self.mix is None:
            return None
        s = self.settings
        return wrk_run(self.setup.http_port, self.mix, seconds, s.wrk_connections, self.load_cpu, server)

    def storm(self, key: str, ca: str, rnd: int) -> dict[str, Any]:
        s = self.settings
        record: dict[str, Any] = {"round": rnd, "key": key}
        record["raw_before"] = run_raw(self.setup.data, ca, self.csrs_file, s.raw_seconds, self.server_cpu)
        record["ocsp_quiet"] = self.ocsp(s.ocsp_seconds, self.server)
        # The enrollment figures come from a storm alone; OCSP is measured in a second storm, which
        # also tells how enrollment fares while OCSP saturates the same core.
        before = cpu_by_role(self.server.pid)
        run = self.load(ca, f"storm-{key}-{rnd}", s.connections, s.storm_seconds, s.keep)
        record["server_cpu_split"] = split_shares(before, cpu_by_role(self.server.pid))
        record["storm"] = run.result
        certs, problems = self.check(ca, run)
        if self.mix is not None:
            name = f"storm-ocsp-{key}-{rnd}"
            mixed = self.load(ca, name, s.connections, s.storm_seconds, 0, lambda: self.ocsp(s.ocsp_seconds, None))
            record["storm_with_ocsp"], record["ocsp_storm"] = mixed.result, mixed.during
        record["raw_after"] = run_raw(self.setup.data, ca, self.csrs_file, s.raw_seconds, self.server_cpu)
        record["validated"], record["problems"] = len(certs), problems
        self.say(describe(key, rnd, record))
        return record


def describe(key: str, rnd: int, record: dict[str, Any]) -> str:
    f = round_figures(record)
    return (
        f"  r{rnd} {key:<9} {_num(f['rps'])} enroll/s, {_num(f['per_cpu_second'])}/server CPU-s, raw "
        f"{_num(f['raw_per_cpu_second'])}/CPU-s ({_pct(f['x_raw_cpu'])} per CPU-s, {_pct(f['x_raw_rps'])} wall), "
        f"p50 {_num(f['p50_ms'])} ms p99 {_num(f['p99_ms'])} ms, 503 {f['busy']}/{f['answers']}, server CPU "
        f"{_pct(f['server_cpu_util'])}; OCSP {_num(f['ocsp_storm_rps'])} vs quiet {_num(f['ocsp_quiet_rps'])} "
        f"req/s ({_num(f['ocsp_ratio'], '.2f')}×, enroll/s then {_num(f['rps_with_ocsp'])}); "
        f"{record['validated']} answers valid" + (f", PROBLEMS {record['problems'][:2]}" if record["problems"] else "")
    )


def run_stage(
    settings_: Settings, work: Path, *, server_cpu: int | None, load_cpu: int | None, say: Say
) -> dict[str, Any]:
    """The whole stage in ``work``: set up, start ``pki-edge up``, warm up, storms by key type; the results."""
    work.mkdir(parents=True, exist_ok=True)
    if settings_.ocsp and shutil.which("wrk") is None:
        say("  wrk not found: OCSP during the storm is not measured")
        settings_ = replace(settings_, ocsp=False)
    s = settings_
    say(
        f"EST: {', '.join(ca.label for ca in KEYS)} CAs, {s.connections} devices × {s.storm_seconds:g} s, "
        f"{s.rounds} round(s); pki-edge up on CPU {server_cpu}, load on CPU {load_cpu}"
    )
    setup = prepare(work, free_port(), free_port())
    started = time.monotonic()
    csr_ders = make_csrs(s.csrs)
    csrs_file = write_csrs(work / "csrs.txt", csr_ders)
    say(f"  {len(csr_ders):,} EC P-256 CSRs in {time.monotonic() - started:.1f} s")
    server = start_up(setup, server_cpu, work)
    records: list[dict[str, Any]] = []
    try:
        stage = Stage(s, setup, server, csrs_file, csr_ders, server_cpu, load_cpu, say)
        issued = stage.warm_up()
        if s.ocsp:
            mix, items = ocsp_mix(issued, setup.ca_pems, work / "ocsp-get.txt", s.mix_length)
            problems = check_ocsp(setup.http_port, mix, items)
            if problems:
                raise RuntimeError(f"OCSP answers for EST-issued serials are wrong: {problems[:3]}")
            stage.mix = mix
            say(f"  OCSP mix: {len(items):,} GETs over {sum(len(c) for c in issued.values()):,} EST-issued serials")
        for rnd in range(s.rounds):
            for c in KEYS:
                records.append(stage.storm(c.label, c.name, rnd))
    finally:
        server.stop(timeout=30)
    summary = [summarize_key(c.label, c.name, [r for r in records if r["key"] == c.label], s.connections) for c in KEYS]
    return {"settings": {**asdict(s), "storm_seconds": s.storm_seconds}, "records": records, "summary": summary}


# ------------------------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.est", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("raw", help="raw certificate signing with a CA's key; prints JSON")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--csrs", type=Path, required=True)
    p.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    print(json.dumps(_raw_in_process(args.data, args.ca, args.csrs, args.seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
