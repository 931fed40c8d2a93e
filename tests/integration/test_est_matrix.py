"""The EST refusal matrix against real `pki-edge` processes, driven with curl and openssl as a user would.

Every refused request gets its documented status and issues nothing: the inventory count read
from LMDB (read-only) is the same after the answer as before it. Servers, grouped per module:

- ``main``: `pki-edge up` with HTTPS, no trusted proxy: authentication, authorisation, labels,
  bodies, re-enrollment rules, revocation, HTTP Basic, forwarded headers from an untrusted peer,
  cacerts of an intermediate CA;
- ``proxied``: the same with ``PKI_EDGE_EST_TRUSTED_PROXIES=127.0.0.1``;
- ``limited``: ``PKI_EDGE_EST_RATE_PER_MINUTE=1``, ``PKI_EDGE_EST_RATE_BURST=2``;
- ``split``: `pki-edge edge` and `pki-edge signer` as separate processes, job timeout 2 s;
- ``attrs``: ``[profiles.root] csrattrs`` in ``DATA/pki-edge.toml``.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import datetime as dt
import ipaddress
import itertools
import math
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.integration import helpers
from tests.integration.helpers import Server, free_port, pki_edge

CURL = shutil.which("curl")
pytestmark = pytest.mark.skipif(CURL is None, reason="curl is needed for the EST commands")

EST = "/.well-known/est"
PKCS10 = "application/pkcs10"
_calls = itertools.count()


# ------------------------------------------------------------------------------ material


@dataclass(frozen=True)
class Material:
    """Made once per module with cryptography: the HTTPS server certificate and a CA we control."""

    dir: Path
    tls_ca: Path  # what curl trusts (--cacert)
    tls_cert: Path
    tls_key: Path
    devca_cert: Path  # brought into each data directory with `pki-edge ca add devca --key`
    devca_key: Path
    expired_cert: Path  # issued by devca, notAfter yesterday
    expired_key: Path


def _leaf(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    cn: str,
    eku: x509.ObjectIdentifier,
    not_before: dt.datetime,
    not_after: dt.datetime,
    san: list[x509.GeneralName] | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    helpers.require_openssl()
    out = tmp_path_factory.mktemp("material")
    now = dt.datetime.now(dt.UTC)
    tls_ca, tls_ca_key = helpers.make_ca("est-matrix-tls")
    server, server_key = _leaf(
        tls_ca,
        tls_ca_key,
        "localhost",
        ExtendedKeyUsageOID.SERVER_AUTH,
        now - dt.timedelta(hours=1),
        now + dt.timedelta(days=30),
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    devca, devca_key = helpers.make_ca("devca")
    expired, expired_key = _leaf(
        devca,
        devca_key,
        "expired-device",
        ExtendedKeyUsageOID.CLIENT_AUTH,
        now - dt.timedelta(days=10),
        now - dt.timedelta(days=1),
    )
    w = helpers.write_pem
    return Material(
        out,
        w(out / "tlsca.pem", tls_ca),
        w(out / "localhost.pem", server),
        w(out / "localhost.key", server_key),
        w(out / "devca.pem", devca),
        w(out / "devca.key", devca_key),
        w(out / "expired.pem", expired),
        w(out / "expired.key", expired_key),
    )


# ------------------------------------------------------------------------------ curl


@dataclass
class Reply:
    status: int  # 0: no HTTP answer at all (e.g. the TLS handshake was refused)
    headers: dict[str, str]
    body: bytes
    rc: int  # curl's exit code
    stderr: str
    seconds: float

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


def _last_headers(raw: str) -> dict[str, str]:
    """The header block of the final response (after any 100 Continue), names in lower case."""
    blocks = [b for b in raw.replace("\r\n", "\n").split("\n\n") if b.startswith("HTTP/")]
    headers: dict[str, str] = {}
    if blocks:
        for line in blocks[-1].splitlines()[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return headers


@dataclass
class Est:
    name: str
    data: Path
    work: Path
    material: Material
    http_port: int
    tls_port: int
    servers: list[Server] = field(default_factory=list)

    @property
    def https(self) -> str:
        return f"https://127.0.0.1:{self.tls_port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def ra(self) -> tuple[str, ...]:
        """curl's options to present the RA certificate dms1 (authorised for root)."""
        return ("--cert", str(self.work / "dms1.pem"), "--key", str(self.work / "dms1.key"))

    def curl(self, path: str, *args: str | Path, https: bool = True, max_time: float = 20) -> Reply:
        n = next(_calls)
        out, hdr = self.work / f"curl-{n}.out", self.work / f"curl-{n}.hdr"
        command = [
            CURL, "-sS", "--max-time", str(max_time), "--cacert", self.material.tls_ca,
            "-o", out, "-D", hdr, "-w", "%{http_code}", *args, (self.https if https else self.http) + path,
        ]  # fmt: skip
        started = time.monotonic()
        done = subprocess.run(command, capture_output=True, timeout=max_time + 10, check=False, env=helpers.clean_env())
        seconds = time.monotonic() - started
        return Reply(
            int(done.stdout.decode().strip() or 0),
            _last_headers(hdr.read_text(errors="replace")) if hdr.exists() else {},
            out.read_bytes() if out.exists() else b"",
            done.returncode,
            done.stderr.decode(errors="replace"),
            seconds,
        )

    def post(
        self,
        path: str,
        body: Path,
        *args: str | Path,
        content_type: str | None = PKCS10,
        https: bool = True,
    ) -> Reply:
        ct = ("-H", f"Content-Type: {content_type}") if content_type else ()
        return self.curl(path, *args, *ct, "--data-binary", f"@{body}", https=https)

    def enroll(self, name: str, cn: str, *creds: str | Path, san: str | None = None) -> Path:
        """A new key (WORK/NAME.key) and CSR, enrolled for root with ``creds``; the certificate's PEM path."""
        csr = make_csr(self.work, name, cn, san)
        reply = self.post(f"{EST}/root/simpleenroll", csr, *creds)
        return issued_to(self.work, reply, f"{name}-cert", self.work / f"{name}.key")

    def inventory(self) -> int:
        return helpers.store_counts(self.data)["inventory"]

    def logs(self) -> str:
        return "\n".join(f"--- {s.name} log\n{s.log()}" for s in self.servers)

    @contextlib.contextmanager
    def nothing_issued(self) -> Iterator[None]:
        before = self.inventory()
        yield
        after = self.inventory()
        assert after == before, f"the inventory grew from {before} to {after}\n{self.logs()}"


def expect(reply: Reply, status: int, text: str | None = None, est: Est | None = None) -> None:
    where = f"\n{est.logs()}" if est is not None else ""
    assert reply.status == status, (reply, where)
    if text is not None:
        assert text in reply.text, (reply, where)


# ------------------------------------------------------------------------------ openssl


def make_csr(work: Path, name: str, cn: str, san: str | None = None, key: Path | None = None) -> Path:
    """`openssl req` with a new P-256 key (or ``key``); the CSR as base64 without armour, as the docs post it."""
    keyopts = ["-key", str(key)] if key else ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    keyout = [] if key else ["-keyout", f"{name}.key"]
    sanopts = ["-addext", f"subjectAltName={san}"] if san else []
    helpers.openssl("req", "-new", *keyopts, *keyout, "-out", f"{name}.csr", "-subj", f"/CN={cn}", *sanopts, cwd=work)
    lines = (work / f"{name}.csr").read_text().splitlines()
    (work / f"{name}.b64").write_text("\n".join(line for line in lines if "-----" not in line) + "\n")
    return work / f"{name}.b64"


def p7_certs(work: Path, body: bytes, name: str) -> str:
    """`openssl base64 -d | openssl pkcs7 -print_certs` of an EST answer: the PEM certificates."""
    (work / f"{name}.p7b64").write_bytes(body)
    helpers.openssl("base64", "-d", "-in", f"{name}.p7b64", "-out", f"{name}.p7", cwd=work)
    text = helpers.openssl("pkcs7", "-inform", "DER", "-in", f"{name}.p7", "-print_certs", cwd=work)
    (work / f"{name}.pem").write_text(text)
    return text


def issued_to(work: Path, reply: Reply, name: str, key: Path) -> Path:
    """The one certificate of a 200 answer, checked to carry ``key``'s public key; its PEM path."""
    assert reply.status == 200, reply
    assert reply.headers.get("content-type", "").startswith("application/pkcs7-mime"), reply.headers
    assert p7_certs(work, reply.body, name).count("-----BEGIN CERTIFICATE-----") == 1
    pem = work / f"{name}.pem"
    cert_key = helpers.openssl("x509", "-in", pem, "-noout", "-pubkey")
    assert cert_key == helpers.openssl("pkey", "-in", key, "-pubout")
    return pem


def serial_of(pem: Path) -> str:
    return helpers.openssl("x509", "-in", pem, "-noout", "-serial").strip().removeprefix("serial=")


def subject_of(pem: Path) -> str:
    return helpers.openssl("x509", "-in", pem, "-noout", "-subject", "-nameopt", "RFC2253").strip()


def url_encoded_pem(pem: Path) -> str:
    """What nginx puts in X-SSL-Client-Cert ($ssl_client_escaped_cert)."""
    return urllib.parse.quote(pem.read_text(), safe="")


# ------------------------------------------------------------------------------ servers


def prepare(work: Path, material: Material, toml: str | None = None) -> Path:
    """A data directory with CA root (and RA dms1 authorised for it), CA other, and devca brought with its key."""
    data = work / "data"
    data.mkdir(parents=True)
    if toml is not None:
        (data / "pki-edge.toml").write_text(toml)
    pki_edge(data, "ca", "create", "root")
    (work / "root.pem").write_text(pki_edge(data, "ca", "show", "root").stdout)
    pki_edge(data, "ca", "create", "other")
    pki_edge(data, "ca", "add", "devca", "--cert", material.devca_cert, "--key", material.devca_key)
    pki_edge(data, "issue", "root", "--cn", "dms1", "--out", work)
    pki_edge(data, "ra", "add", "dms1", "--cert", work / "dms1.pem", "--cas", "root")
    return data


def two_ports() -> tuple[int, int]:
    while True:
        http_port, tls_port = free_port(), free_port()
        if http_port != tls_port:
            return http_port, tls_port


def tls_flags(material: Material, tls_port: int) -> list[str]:
    return ["--tls-port", str(tls_port), "--tls-cert", str(material.tls_cert), "--tls-key", str(material.tls_key)]


def wait_https(est: Est) -> None:
    helpers.wait_for(f"{est.name}: HTTPS cacerts", lambda: est.curl(f"{EST}/root/cacerts").status == 200, timeout=30)


@contextlib.contextmanager
def running_up(
    name: str, work: Path, data: Path, material: Material, env: dict[str, str] | None = None
) -> Iterator[Est]:
    http_port, tls_port = two_ports()
    args = ["up", "--port", str(http_port), *tls_flags(material, tls_port)]
    server = Server(name, data, args, work / f"{name}.log", port=http_port, env=env)
    est = Est(name, data, work, material, http_port, tls_port, [server])
    try:
        server.wait_ready()
        wait_https(est)
        yield est
    finally:
        server.stop_clean()


@pytest.fixture(scope="module")
def main(tmp_path_factory: pytest.TempPathFactory, material: Material) -> Iterator[Est]:
    work = tmp_path_factory.mktemp("main")
    data = prepare(work, material)
    pki_edge(data, "ca", "create", "sub", "--parent", "root")
    pki_edge(data, "import", "devca", "--cert", material.expired_cert)  # known to the CA, but expired
    with running_up("up-main", work, data, material) as est:
        yield est


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory, material: Material) -> Iterator[Est]:
    work = tmp_path_factory.mktemp("proxied")
    data = prepare(work, material)
    pki_edge(data, "import", "devca", "--cert", material.expired_cert)
    pki_edge(data, "issue", "root", "--cn", "device-tls", "--out", work)  # a device, not an RA
    env = {"PKI_EDGE_EST_TRUSTED_PROXIES": "127.0.0.1", "PKI_EDGE_EST_CLIENT_CERT_HEADER": "x-ssl-client-cert"}
    with running_up("up-proxied", work, data, material, env) as est:
        yield est


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, material: Material) -> Iterator[Est]:
    work = tmp_path_factory.mktemp("limited")
    data = prepare(work, material)
    env = {"PKI_EDGE_EST_RATE_PER_MINUTE": "1", "PKI_EDGE_EST_RATE_BURST": "2", "PKI_EDGE_WORKERS_COUNT": "1"}
    with running_up("up-limited", work, data, material, env) as est:
        yield est


@pytest.fixture(scope="module")
def attrs(tmp_path_factory: pytest.TempPathFactory, material: Material) -> Iterator[Est]:
    work = tmp_path_factory.mktemp("attrs")
    toml = '[profiles.root]\ncsrattrs = ["challengePassword", "ecPublicKey:secp256r1"]\nsubject_attributes = ["O"]\n'
    data = prepare(work, material, toml)
    with running_up("up-attrs", work, data, material, {"PKI_EDGE_WORKERS_COUNT": "1"}) as est:
        yield est


@dataclass
class Split:
    """`pki-edge edge` and `pki-edge signer` as separate processes on one data directory."""

    est: Est
    edge: Server
    signer: Server | None = None
    signers: itertools.count[int] = field(default_factory=itertools.count)

    def start_signer(self) -> Server:
        """A running signer (a new one if the last was stopped), once an enroll goes through."""
        if self.signer is None or not self.signer.alive():
            n = next(self.signers)
            self.signer = Server(f"signer-{n}", self.est.data, ["signer"], self.est.work / f"signer-{n}.log")
            self.est.servers.append(self.signer)
        csr = make_csr(self.est.work, f"warmup-{next(_calls)}", "warmup")

        def enrolled() -> bool:
            assert self.signer is not None and self.signer.alive(), self.est.logs()
            return self.est.post(f"{EST}/root/simpleenroll", csr, *self.est.ra).status == 200

        helpers.wait_for("an enroll through the signer", enrolled, timeout=30, interval=0.2)
        return self.signer


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory, material: Material) -> Iterator[Split]:
    work = tmp_path_factory.mktemp("split")
    data = prepare(work, material)
    http_port, tls_port = two_ports()
    env = {
        "PKI_EDGE_EST_JOB_TIMEOUT_SECONDS": "2",
        "PKI_EDGE_EST_RATE_BURST": "1000",  # the warm-up probes must not be rate limited
        "PKI_EDGE_WORKERS_COUNT": "1",
        "PKI_EDGE_EST_MAX_INFLIGHT": "1",  # one job awaited at a time: the queue fills at once
    }
    edge = Server(
        "edge", data, ["edge", "--port", str(http_port), *tls_flags(material, tls_port)], work / "edge.log",
        port=http_port, env=env,
    )  # fmt: skip
    est = Est("split", data, work, material, http_port, tls_port, [edge])
    state = Split(est, edge)
    try:
        edge.wait_ready()
        wait_https(est)
        state.start_signer()
        helpers.wait_drained(data)
        yield state
    finally:
        if state.signer is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(state.signer.proc.pid, signal.SIGCONT)
            state.signer.stop()
        edge.stop()


# ============================================================================== main server


def test_cacerts_of_an_intermediate_gives_it_and_its_parent(main: Est) -> None:
    reply = main.curl(f"{EST}/sub/cacerts")
    expect(reply, 200, est=main)
    assert reply.headers["content-type"].startswith("application/pkcs7-mime")
    text = p7_certs(main.work, reply.body, "sub-cacerts")
    assert text.count("-----BEGIN CERTIFICATE-----") == 2, text
    subjects = [line for line in text.splitlines() if line.startswith("subject=")]
    assert sorted(s.split("CN = ")[1].split(",")[0] for s in subjects) == ["root", "sub"], subjects
    for name in ("root", "sub"):
        shown = pki_edge(main.data, "ca", "show", name).stdout.strip()
        assert shown in text, name


@pytest.mark.parametrize("op", ["simpleenroll", "serverkeygen"])  # simplereenroll: 403, below
def test_no_client_certificate_gets_a_bare_challenge(main: Est, op: str) -> None:
    csr = make_csr(main.work, f"nocert-{op}", "nocert")
    with main.nothing_issued():
        reply = main.post(f"{EST}/root/{op}", csr)
    expect(reply, 401, est=main)
    assert reply.body == b""
    assert reply.headers.get("www-authenticate", "").lower().startswith("basic realm="), reply.headers


def test_ra_not_authorised_for_the_label(main: Est) -> None:
    csr = make_csr(main.work, "ra-other", "device-other")
    with main.nothing_issued():
        reply = main.post(f"{EST}/other/simpleenroll", csr, *main.ra)
    expect(reply, 403, "may not enroll for 'other'", main)


def test_unknown_label(main: Est) -> None:
    csr = make_csr(main.work, "nolabel", "device-nolabel")
    with main.nothing_issued():
        reply = main.post(f"{EST}/nosuch/simpleenroll", csr, *main.ra)
    expect(reply, 404, "unknown CA label 'nosuch'", main)
    # A long label is echoed cut short (an audit: 20,000 characters came back whole).
    reply = main.curl(f"{EST}/{'a' * 20000}/cacerts")
    expect(reply, 404, "unknown CA label 'aaaa", main)
    assert len(reply.body) < 200, len(reply.body)


@pytest.mark.parametrize(
    "path",
    [
        f"{EST}/simpleenroll/simpleenroll",
        f"{EST}/SimpleEnroll/simpleenroll",
        f"{EST}/cacerts/simpleenroll",
        f"/api/devmanager{EST}/simplereenroll/simpleenroll",
    ],
)
def test_label_named_like_an_operation_is_refused(main: Est, path: str) -> None:
    csr = make_csr(main.work, f"oplabel-{next(_calls)}", "device-oplabel")
    with main.nothing_issued():
        reply = main.post(path, csr, *main.ra)
    expect(reply, 404, "unknown CA label", main)


def test_revoked_ra_is_refused(main: Est) -> None:
    pki_edge(main.data, "issue", "root", "--cn", "dms2", "--out", main.work)
    pki_edge(main.data, "ra", "add", "dms2", "--cert", main.work / "dms2.pem", "--cas", "root")
    dms2 = ("--cert", str(main.work / "dms2.pem"), "--key", str(main.work / "dms2.key"))
    main.enroll("by-dms2", "device-dms2", *dms2)  # dms2 works before its revocation
    csr = main.work / "by-dms2.b64"
    pki_edge(main.data, "revoke", "root", serial_of(main.work / "dms2.pem"))
    with main.nothing_issued():
        reply = main.post(f"{EST}/root/simpleenroll", csr, *dms2)
    expect(reply, 403, "RA dms2: certificate revoked", main)


def test_removed_ra_is_refused_and_added_again_works(main: Est) -> None:
    """The running edge reads the RAs once per registry generation: `ra remove` and `ra add` bump it."""
    pki_edge(main.data, "issue", "root", "--cn", "dms3", "--out", main.work)
    dms3 = ("--cert", str(main.work / "dms3.pem"), "--key", str(main.work / "dms3.key"))
    pki_edge(main.data, "ra", "add", "dms3", "--cert", main.work / "dms3.pem", "--cas", "root")
    main.enroll("by-dms3", "device-dms3", *dms3)
    csr = main.work / "by-dms3.b64"
    pki_edge(main.data, "ra", "remove", "dms3")
    with main.nothing_issued():
        reply = main.post(f"{EST}/root/simpleenroll", csr, *dms3)
    # Challenged (RFC 7030 §3.2.3): an EST user's password may stand for what the certificate is not.
    expect(reply, 401, None, main)
    assert reply.headers.get("www-authenticate") == 'Basic realm="root", charset="UTF-8"', reply.headers
    pki_edge(main.data, "ra", "add", "dms3", "--cert", main.work / "dms3.pem", "--cas", "root")
    main.enroll("by-dms3-again", "device-dms3", *dms3)


def test_expired_device_certificate_is_refused_at_the_tls_handshake(main: Est) -> None:
    """Python's TLS layer verifies client certificates it is offered (CERT_OPTIONAL): an expired one
    ends the connection before any HTTP answer. curl reports a TLS/receive error and no status."""
    m = main.material
    csr = make_csr(main.work, "expired-renew", "expired-device", key=m.expired_key)
    for path in (f"{EST}/simplereenroll", f"{EST}/devca/simplereenroll"):
        with main.nothing_issued():
            reply = main.post(path, csr, "--cert", m.expired_cert, "--key", m.expired_key)
        assert reply.status == 0 and reply.rc != 0, reply
        assert reply.rc in (35, 52, 56), reply  # handshake failure, empty reply, or connection reset
    assert main.servers[0].alive(), main.logs()


@pytest.mark.parametrize("labelled", [False, True], ids=["no-label", "label"])
def test_revoked_device_certificate_cannot_reenroll(main: Est, labelled: bool) -> None:
    name = f"revdev-{int(labelled)}"
    cert = main.enroll(name, name, *main.ra)
    csr = main.work / f"{name}.b64"
    pki_edge(main.data, "revoke", "root", serial_of(cert), "--reason", "keyCompromise")
    path = f"{EST}/root/simplereenroll" if labelled else f"{EST}/simplereenroll"
    with main.nothing_issued():
        reply = main.post(path, csr, "--cert", cert, "--key", main.work / f"{name}.key")
    expect(reply, 403, "revoked", main)


def test_reenroll_without_the_certificate_it_renews_is_403(main: Est) -> None:
    """Neither a password nor nothing stands for the certificate being renewed: 403, no Basic challenge."""
    csr = make_csr(main.work, "reenroll-nocert", "device-nocert")
    for credentials in ((), ("-u", "nobody:secret")):
        with main.nothing_issued():
            reply = main.post(f"{EST}/root/simplereenroll", csr, *credentials)
        expect(reply, 403, "the certificate it renews", main)
        assert "www-authenticate" not in reply.headers, reply.headers


def test_reenroll_must_keep_subject_and_san(main: Est) -> None:
    key = main.work / "keep.key"
    cert = main.enroll("keep", "device-keep", *main.ra, san="DNS:keep.example")
    csr = main.work / "keep.b64"
    device = ("--cert", str(cert), "--key", str(key))
    other_subject = make_csr(main.work, "keep-cn", "device-changed", san="DNS:keep.example", key=key)
    other_san = make_csr(main.work, "keep-san", "device-keep", san="DNS:changed.example", key=key)
    no_san = make_csr(main.work, "keep-nosan", "device-keep", key=key)
    for changed in (other_subject, other_san, no_san):
        with main.nothing_issued():
            reply = main.post(f"{EST}/simplereenroll", changed, *device)
        expect(reply, 403, "re-enroll must keep the subject and subjectAltName", main)
    # The same certificate renews with an unchanged request: the refusals above were about the names.
    renewed = issued_to(main.work, main.post(f"{EST}/simplereenroll", csr, *device), "keep-renewed", key)
    assert subject_of(renewed) == subject_of(cert)
    san = ("x509", "-noout", "-ext", "subjectAltName", "-in")
    assert helpers.openssl(*san, renewed) == helpers.openssl(*san, cert) and "DNS:keep.example" in helpers.openssl(
        *san, cert
    )


def test_csr_with_a_bad_signature(main: Est) -> None:
    """A CSR made by openssl whose signed subject is altered by one byte afterwards."""
    make_csr(main.work, "badsig", "badsig-device")
    der = x509.load_pem_x509_csr((main.work / "badsig.csr").read_bytes()).public_bytes(serialization.Encoding.DER)
    tampered = der.replace(b"badsig-device", b"badsig-devicf")
    assert tampered != der and not x509.load_der_x509_csr(tampered).is_signature_valid
    (main.work / "badsig.der").write_bytes(tampered)
    helpers.openssl("base64", "-in", "badsig.der", "-out", "badsig-tampered.b64", cwd=main.work)
    with main.nothing_issued():
        reply = main.post(f"{EST}/root/simpleenroll", main.work / "badsig-tampered.b64", *main.ra)
    expect(reply, 400, "signature", main)


@pytest.mark.parametrize(
    "body",
    [b"garbage, not a CSR\n", b"MIIBfake+base64/of/nothing==\n", bytes.fromhex("3003020101")],
    ids=["text", "base64-of-junk", "der-not-a-csr"],
)
def test_garbage_body(main: Est, body: bytes) -> None:
    path = main.work / f"garbage-{next(_calls)}.bin"
    path.write_bytes(body)
    with main.nothing_issued():
        reply = main.post(f"{EST}/root/simpleenroll", path, *main.ra)
    expect(reply, 400, None, main)
    assert reply.headers.get("content-type", "").startswith("text/plain"), reply.headers


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_oversized_body(main: Est, chunked: bool) -> None:
    path = main.work / "big.b64"
    path.write_bytes((b"A" * 76 + b"\n") * 900)  # 69,300 bytes of base64-looking text
    extra = ("-H", "Transfer-Encoding: chunked") if chunked else ()
    with main.nothing_issued():
        reply = main.post(f"{EST}/root/simpleenroll", path, *main.ra, *extra)
    expect(reply, 413, "65536", main)


@pytest.mark.parametrize("content_type", ["text/plain", None], ids=["text-plain", "curl-default-form"])
def test_wrong_content_type(main: Est, content_type: str | None) -> None:
    csr = make_csr(main.work, f"ct-{next(_calls)}", "device-ct")
    with main.nothing_issued():
        reply = main.post(f"{EST}/root/simpleenroll", csr, *main.ra, content_type=content_type)
    expect(reply, 415, "expected application/pkcs10", main)


def test_forwarded_certificate_from_an_untrusted_peer_is_ignored(main: Est) -> None:
    csr = make_csr(main.work, "fwd-untrusted", "device-fwd")
    header = ("-H", f"X-SSL-Client-Cert: {url_encoded_pem(main.work / 'dms1.pem')}")
    with main.nothing_issued():
        plain = main.post(f"{EST}/root/simpleenroll", csr, *header, https=False)
        over_tls = main.post(f"{EST}/root/simpleenroll", csr, *header)  # HTTPS, no TLS client certificate
    expect(plain, 403, "EST requires HTTPS", main)
    expect(over_tls, 401, None, main)
    assert over_tls.body == b"" and "www-authenticate" in over_tls.headers


def test_http_basic_user(main: Est) -> None:
    added = subprocess.run(
        [helpers.PKI_EDGE, "--data", str(main.data), "est", "user", "add", "root", "alice", "--password-stdin"],
        input="secret\n", capture_output=True, text=True, timeout=60, env=helpers.clean_env(), check=False,
    )  # fmt: skip
    assert added.returncode == 0 and "added EST user alice for root" in added.stdout, added
    before = main.inventory()
    main.enroll("alice-dev", "device-alice", "-u", "alice:secret")
    assert main.inventory() == before + 1
    csr = main.work / "alice-dev.b64"
    for user in ("alice:wrong", "bob:secret", "alice:"):
        with main.nothing_issued():
            reply = main.post(f"{EST}/root/simpleenroll", csr, "-u", user)
        expect(reply, 401, None, main)
        assert reply.body == b"", reply
        assert reply.headers.get("www-authenticate") == 'Basic realm="root", charset="UTF-8"', reply.headers
    # alice is a user of root only.
    with main.nothing_issued():
        reply = main.post(f"{EST}/other/simpleenroll", csr, "-u", "alice:secret")
    expect(reply, 401, None, main)


@pytest.mark.parametrize(
    ("method", "op", "allowed"),
    [
        ("PUT", "cacerts", "GET, HEAD"),
        ("POST", "cacerts", "GET, HEAD"),
        ("OPTIONS", "csrattrs", "GET, HEAD"),
        ("GET", "simpleenroll", "POST"),
        ("PUT", "simpleenroll", "POST"),
        ("DELETE", "serverkeygen", "POST"),
    ],
)
def test_a_method_an_operation_does_not_take_gets_405_with_its_allow(
    main: Est, method: str, op: str, allowed: str
) -> None:
    reply = main.curl(f"{EST}/root/{op}", "-X", method)
    expect(reply, 405, None, main)
    assert reply.headers.get("allow") == allowed, reply.headers


@pytest.mark.parametrize(
    "oid", ["1.2.840.113549.1.9.16.2.37", "1.2.840.113549.1.9.16.2.54"], ids=["symmetric", "asymmetric"]
)
def test_serverkeygen_asked_for_an_encrypted_key_is_refused(main: Est, oid: str) -> None:
    """RFC 7030 §4.4.1.1/2: a client asking for its key encrypted must not get it in the clear."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keygen-encrypted")]))
        .add_attribute(x509.ObjectIdentifier(oid), b"key-id-1")
        .sign(key, hashes.SHA256())
    )
    body = main.work / f"keygen-encrypted-{oid}.b64"
    body.write_bytes(base64.b64encode(csr.public_bytes(serialization.Encoding.DER)))
    with main.nothing_issued():
        reply = main.post(f"{EST}/root/serverkeygen", body, *main.ra)
    expect(reply, 400, "encrypted server-generated key is not supported", main)


def test_a_body_cut_short_ends_quietly(main: Est) -> None:
    """A device that goes away in the middle of its CSR: no traceback in the log, the edge serves on."""
    context = ssl.create_default_context(cafile=str(main.material.tls_ca))
    context.load_cert_chain(main.work / "dms1.pem", main.work / "dms1.key")  # an RA: authorised before the body
    head = (
        b"POST /.well-known/est/root/simpleenroll HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/pkcs10\r\nContent-Length: 500\r\n\r\nMIIB"
    )
    with (
        socket.create_connection(("127.0.0.1", main.tls_port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(head)
        time.sleep(0.5)  # the request is under way when the client leaves
    time.sleep(0.5)
    log = main.servers[0].log(tail=400)
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log
    expect(main.curl(f"{EST}/root/cacerts"), 200, est=main)


# ============================================================================== trusted proxy


def test_trusted_proxy_forwarded_certificate_over_plain_http_enrolls(proxied: Est) -> None:
    csr = make_csr(proxied.work, "fwd-ok", "device-forwarded")
    header = ("-H", f"X-SSL-Client-Cert: {url_encoded_pem(proxied.work / 'dms1.pem')}")
    before = proxied.inventory()
    reply = proxied.post(f"{EST}/root/simpleenroll", csr, *header, https=False)
    cert = issued_to(proxied.work, reply, "fwd-ok-cert", proxied.work / "fwd-ok.key")
    assert subject_of(cert) == "subject=CN=device-forwarded"
    assert "OK" in helpers.openssl("verify", "-CAfile", proxied.work / "root.pem", cert)
    assert proxied.inventory() == before + 1
    assert "to ra:dms1 (enroll)" in proxied.servers[0].log()


def test_a_forwarded_header_other_than_the_configured_one_is_not_read(proxied: Est) -> None:
    """The security review: nginx sets X-SSL-Client-Cert and passes on whatever else the client sends,
    such as a Client-Cert holding an RA's (public) certificate. Only the configured header is read."""
    csr = make_csr(proxied.work, "fwd-other", "device-posing")
    der = helpers.load_cert(proxied.work / "dms1.pem").public_bytes(serialization.Encoding.DER)
    posing = ("-H", f"Client-Cert: :{base64.b64encode(der).decode()}:")
    with proxied.nothing_issued():
        reply = proxied.post(f"{EST}/root/simpleenroll", csr, *posing, https=False)
    assert reply.status in (401, 403), reply


def test_real_tls_certificate_wins_over_the_forwarded_header(proxied: Est) -> None:
    """A device certificate in the handshake, the RA's certificate in the header: the device is judged."""
    csr = make_csr(proxied.work, "fwd-tls", "device-sneaky")
    header = ("-H", f"X-SSL-Client-Cert: {url_encoded_pem(proxied.work / 'dms1.pem')}")
    device = ("--cert", str(proxied.work / "device-tls.pem"), "--key", str(proxied.work / "device-tls.key"))
    with proxied.nothing_issued():
        reply = proxied.post(f"{EST}/root/simpleenroll", csr, *device, *header)
    expect(reply, 401, None, proxied)
    assert reply.headers.get("www-authenticate") == 'Basic realm="root", charset="UTF-8"', reply.headers


def test_forwarded_expired_device_certificate_cannot_reenroll(proxied: Est) -> None:
    """Past the TLS layer (a proxy forwards it), an expired certificate is refused by the signer."""
    m = proxied.material
    csr = make_csr(proxied.work, "fwd-expired", "expired-device", key=m.expired_key)
    header = ("-H", f"X-SSL-Client-Cert: {url_encoded_pem(m.expired_cert)}")
    with proxied.nothing_issued():
        reply = proxied.post(f"{EST}/simplereenroll", csr, *header, https=False)
    expect(reply, 403, "expired", proxied)


# ============================================================================== rate limit


def test_rate_limit_third_enroll_in_a_row_gets_429(limited: Est) -> None:
    before = limited.inventory()
    limited.enroll("rl-0", "device-rl-0", *limited.ra)
    limited.enroll("rl-1", "device-rl-1", *limited.ra)
    csr = make_csr(limited.work, "rl-2", "device-rl-2")
    with limited.nothing_issued():
        reply = limited.post(f"{EST}/root/simpleenroll", csr, *limited.ra)
    expect(reply, 429, "too many requests", limited)
    assert reply.headers.get("retry-after", "").isdigit() and int(reply.headers["retry-after"]) > 0, reply.headers
    assert limited.inventory() == before + 2


def test_rate_limit_follows_a_device_through_its_re_enrollments(limited: Est) -> None:
    """The security review: each re-enrollment's new certificate had a bucket of its own, so one device
    key minted certificates without end. The bucket is the identity a re-enrollment keeps (issuer and
    subject): two in a row (the burst), then 429, whichever of its certificates asks."""
    helpers.pki_edge(limited.data, "issue", "root", "--cn", "chain.example", "--out", limited.work / "chain")
    key = limited.work / "chain" / "chain.example.key"
    cert = limited.work / "chain" / "chain.example.pem"
    csr = make_csr(limited.work, "chain", "chain.example", key=key)
    for step in range(2):
        reply = limited.post(f"{EST}/simplereenroll", csr, "--cert", str(cert), "--key", str(key))
        cert = issued_to(limited.work, reply, f"chain-{step}", key)
    with limited.nothing_issued():
        reply = limited.post(f"{EST}/simplereenroll", csr, "--cert", str(cert), "--key", str(key))
    expect(reply, 429, "too many requests", limited)


def test_rate_limit_counts_password_guesses_per_address_and_enrollments_per_user(limited: Est) -> None:
    """Several Basic users behind one address each enroll at their own rate; two wrong passwords
    from that address (the burst) hold back the next attempt, whoever makes it."""
    for name in ("u1", "u2", "u3", "u4"):
        added = subprocess.run(
            [helpers.PKI_EDGE, "--data", str(limited.data), "est", "user", "add", "root", name, "--password-stdin"],
            input="pw-" + name + "\n", capture_output=True, text=True, timeout=60, env=helpers.clean_env(), check=False,
        )  # fmt: skip
        assert added.returncode == 0, added
    before = limited.inventory()
    csrs = {name: make_csr(limited.work, f"basic-{name}", f"device-basic-{name}") for name in ("u1", "u2", "u3")}
    with concurrent.futures.ThreadPoolExecutor(3) as pool:  # at once, from one address, past its burst of two
        replies = list(pool.map(lambda n: limited.post(f"{EST}/root/simpleenroll", csrs[n], "-u", f"{n}:pw-{n}"), csrs))
    for reply in replies:
        expect(reply, 200, est=limited)
    assert limited.inventory() == before + 3
    csr = limited.work / "basic-u1.b64"
    guessed = time.monotonic()
    for _ in range(2):
        with limited.nothing_issued():
            expect(limited.post(f"{EST}/root/simpleenroll", csr, "-u", "u4:guess"), 401, None, limited)
    with limited.nothing_issued():
        reply = limited.post(f"{EST}/root/simpleenroll", csr, "-u", "u4:pw-u4")
    expect(reply, 429, "too many wrong passwords from this address", limited)
    # One a minute: what is left of it, however slow this machine is.
    since = math.ceil(time.monotonic() - guessed)
    assert 59 - since <= int(reply.headers.get("retry-after", "0")) <= 60, reply.headers


# ============================================================================== csrattrs


def test_a_profile_restricts_the_subjects_other_attributes(attrs: Est) -> None:
    """The security review: an emailAddress, title or serialNumber was copied into the certificate as the
    device asked. With subject_attributes = ["O"], only the CN and O are."""
    ok = make_csr(attrs.work, "subj-ok", "device-subj/O=Acme")
    cert = issued_to(
        attrs.work, attrs.post(f"{EST}/root/simpleenroll", ok, *attrs.ra), "subj-ok-cert", attrs.work / "subj-ok.key"
    )
    assert "O=Acme" in subject_of(cert) and "CN=device-subj" in subject_of(cert)
    posing = make_csr(attrs.work, "subj-mail", "device-mail/emailAddress=ceo@bank.example")
    with attrs.nothing_issued():
        reply = attrs.post(f"{EST}/root/simpleenroll", posing, *attrs.ra)
    expect(reply, 400, "subject attribute 1.2.840.113549.1.9.1 is not allowed by this CA's profile", attrs)


def test_csrattrs_of_a_profile(attrs: Est) -> None:
    reply = attrs.curl(f"{EST}/root/csrattrs")
    expect(reply, 200, est=attrs)
    assert reply.headers["content-type"] == "application/csrattrs", reply.headers
    (attrs.work / "csrattrs.b64").write_bytes(reply.body)
    helpers.openssl("base64", "-d", "-in", "csrattrs.b64", "-out", "csrattrs.der", cwd=attrs.work)
    parsed = helpers.openssl("asn1parse", "-inform", "DER", "-in", "csrattrs.der", cwd=attrs.work)
    objects = [line.rsplit(":", 1)[1] for line in parsed.splitlines() if "prim: OBJECT" in line]
    assert objects == ["challengePassword", "id-ecPublicKey", "prime256v1"], parsed
    assert "cons: SET" in parsed  # ecPublicKey is an attribute whose value set holds the curve
    # Another CA without csrattrs in its profile still answers 204.
    expect(attrs.curl(f"{EST}/other/csrattrs"), 204, est=attrs)


# ============================================================================== signer stopped


def test_stalled_signer_answers_503_within_the_job_timeout(split: Split) -> None:
    est = split.est
    signer = split.start_signer()
    csr = make_csr(est.work, "stalled", "device-stalled")
    os.kill(signer.proc.pid, signal.SIGSTOP)
    try:
        reply = est.post(f"{EST}/root/simpleenroll", csr, *est.ra)
    finally:
        os.kill(signer.proc.pid, signal.SIGCONT)
    expect(reply, 503, "no signer answered within 2 s", est)
    assert reply.headers.get("retry-after", "").isdigit(), reply.headers
    assert 1.5 <= reply.seconds < 10, reply.seconds


def test_a_job_answered_503_is_not_issued_later(split: Split) -> None:
    est = split.est
    signer = split.start_signer()
    csr = make_csr(est.work, "abandoned", "device-abandoned")
    before = est.inventory()
    os.kill(signer.proc.pid, signal.SIGSTOP)
    try:
        reply = est.post(f"{EST}/root/simpleenroll", csr, *est.ra)
    finally:
        os.kill(signer.proc.pid, signal.SIGCONT)
    assert reply.status == 503, reply
    # Give the resumed signer time to do what it kept queued (bounded; stops early once it issues).
    with contextlib.suppress(AssertionError):
        helpers.wait_for("a late issuance", lambda: est.inventory() > before, timeout=8, interval=0.1)
    assert est.inventory() == before, f"issued after the 503:\n{signer.log()}"


def test_a_full_queue_answers_503_before_reading_the_csr(split: Split) -> None:
    """With every job slot taken, the edge refuses without decoding or verifying the body: a storm's
    refusals must not cost the CPU that OCSP and the accepted enrollments need."""
    est = split.est
    signer = split.start_signer()
    csr = make_csr(est.work, "slot", "device-slot")
    garbage = est.work / "garbage.csr"
    garbage.write_bytes(b"not base64 at all")
    os.kill(signer.proc.pid, signal.SIGSTOP)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            first = pool.submit(est.post, f"{EST}/root/simpleenroll", csr, *est.ra)
            with est.nothing_issued():
                # 400 (its body read) until the first request holds the only slot, however long its
                # connection takes on a loaded machine; then refused unread, and at once.
                reply = helpers.wait_for(
                    "the only slot taken",
                    lambda: r if (r := est.post(f"{EST}/root/simpleenroll", garbage, *est.ra)).status != 400 else None,
                    timeout=10,
                )
            expect(reply, 503, "queue is full", est)  # not 400: the body was never read
            assert reply.headers.get("retry-after", "").isdigit(), reply.headers
            assert reply.seconds < 1.5, reply.seconds  # not after the job timeout (2 s)
            assert first.result(timeout=10).status == 503  # its own timeout (2 s), signer stopped
    finally:
        os.kill(signer.proc.pid, signal.SIGCONT)


def test_stopped_signer_answers_503_while_ocsp_keeps_answering(split: Split) -> None:
    est = split.est
    signer = split.start_signer()
    helpers.wait_drained(est.data)
    root = helpers.load_cert(est.work / "root.pem")
    ocsp_der = helpers.ocsp_request_der(helpers.load_cert(est.work / "dms1.pem"), root)
    assert helpers.cert_status(helpers.post_ocsp(est.http, ocsp_der).content) == "good"

    assert signer.stop() == 0, signer.log()
    csr = make_csr(est.work, "nosigner", "device-nosigner")
    for _ in range(2):  # the first finds the closed connection, the second no socket at all
        with est.nothing_issued():
            reply = est.post(f"{EST}/root/simpleenroll", csr, *est.ra)
        expect(reply, 503, "signer is not available", est)
        assert reply.headers.get("retry-after", "").isdigit(), reply.headers
        assert reply.seconds < 10, reply.seconds
    answer = helpers.post_ocsp(est.http, ocsp_der)
    assert answer.status_code == 200 and helpers.cert_status(answer.content) == "good", answer
    assert split.edge.alive(), est.logs()
