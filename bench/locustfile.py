"""Load-test a pki-edge deployment with Locust: OCSP over GET and POST (see bench/LOCUST.md).

    pki-edge --data DATA export-requests CA --count 10000 --out requests.jsonl
    PKI_EDGE_LOCUST_REQUESTS=requests.jsonl .venv/bin/locust -f bench/locustfile.py --headless \\
        -u 50 -r 10 -t 60s --host http://HOST:PORT --csv results

Environment:
    PKI_EDGE_LOCUST_REQUESTS      the file written by `pki-edge export-requests` (default requests.jsonl)
    PKI_EDGE_LOCUST_OCSP_PREFIX   the OCSP path (default /ocsp; "/" for the root)
    PKI_EDGE_LOCUST_ZIPF          popularity skew: request k of the file is drawn with weight 1/k**s
                                  (default 0: uniform; 1.1 mimics the long tail a CDN passes to its origin)

Every response must be HTTP 200 with an OCSP responseStatus of successful; anything else is a
failure named by its reason, so the failures table groups them. Requests are named "GET ocsp" and
"POST ocsp" so the statistics aggregate over all URLs.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import random
from pathlib import Path
from typing import NamedTuple

from locust import HttpUser, constant, task
from locust.clients import ResponseContextManager

OCSP_STATUS = {
    0: "successful",
    1: "malformedRequest",
    2: "internalError",
    3: "tryLater",
    5: "sigRequired",
    6: "unauthorized",
}


class OcspRequest(NamedTuple):
    path: str  # the GET path, prefix included
    der: bytes  # the POST body


def _prefix(raw: str) -> str:
    """``/ocsp`` from ``/ocsp``, ``ocsp`` or ``/ocsp/``; the root is the empty prefix."""
    raw = raw.strip().strip("/")
    return f"/{raw}" if raw else ""


def load_requests(path: Path, prefix: str) -> list[OcspRequest]:
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemExit(
            f"locustfile: cannot read PKI_EDGE_LOCUST_REQUESTS={path}: {exc}\n"
            "write it with: pki-edge --data DATA export-requests CA --count 10000 --out requests.jsonl"
        ) from None
    requests = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            requests.append(OcspRequest(f"{prefix}/{item['get_path']}", base64.b64decode(item["der_b64"])))
        except (ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"locustfile: {path}:{number}: not a line of `pki-edge export-requests`: {exc}") from None
    if not requests:
        raise SystemExit(f"locustfile: {path} holds no requests")
    return requests


def zipf_cum_weights(n: int, exponent: float) -> list[float] | None:
    """Cumulative weights 1/k**s for ranks 1..n (for random.choices), or None for uniform."""
    if exponent == 0:
        return None
    return list(itertools.accumulate(1.0 / k**exponent for k in range(1, n + 1)))


def _zipf_exponent(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < 100:
        raise SystemExit(f"locustfile: PKI_EDGE_LOCUST_ZIPF must be a number >= 0 (0 is uniform), got {raw!r}")
    return value


def ocsp_failure(status_code: int, body: bytes) -> str | None:
    """Why a response is not a successful OCSP answer, or None when it is.

    OCSPResponse ::= SEQUENCE { responseStatus ENUMERATED, ... }: after the outer SEQUENCE
    header (30 LL, 30 81 LL or 30 82 LL LL) a successful response continues 0a 01 00.
    """
    if status_code == 0:
        return "no response (connection error)"
    if status_code != 200:
        return f"HTTP {status_code}"
    if len(body) < 2 or body[0] != 0x30:
        return "body is not a DER SEQUENCE"
    first = body[1]
    start = 2 if first < 0x80 else 2 + (first & 0x7F)
    head = body[start : start + 3]
    if len(head) < 3 or head[:2] != b"\x0a\x01":
        return "no OCSP responseStatus"
    if head[2] != 0:
        return f"OCSP {OCSP_STATUS.get(head[2], 'status')} ({head[2]})"
    return None


PREFIX = _prefix(os.environ.get("PKI_EDGE_LOCUST_OCSP_PREFIX", "/ocsp"))
# EST users only (PKI_EDGE_LOCUST_EST_ONLY=1): no OCSP request file is needed.
EST_ONLY = os.environ.get("PKI_EDGE_LOCUST_EST_ONLY", "") == "1"
REQUESTS = [] if EST_ONLY else load_requests(Path(os.environ.get("PKI_EDGE_LOCUST_REQUESTS", "requests.jsonl")), PREFIX)
ZIPF = _zipf_exponent(os.environ.get("PKI_EDGE_LOCUST_ZIPF", "0") or "0")
CUM_WEIGHTS = zipf_cum_weights(len(REQUESTS), ZIPF)  # computed once; each draw is a bisect


def pick() -> OcspRequest:
    if CUM_WEIGHTS is None:
        return random.choice(REQUESTS)
    return random.choices(REQUESTS, cum_weights=CUM_WEIGHTS)[0]


class _OcspUser(HttpUser):
    abstract = True
    wait_time = constant(0)  # closed loop: each user sends its next request when the last one is answered

    def _check(self, response: ResponseContextManager) -> None:
        reason = ocsp_failure(response.status_code, response.content or b"")
        if reason is None:
            response.success()
        else:
            response.failure(reason)


class OcspGetUser(_OcspUser):
    """OCSP over GET: the cacheable kind, what a CDN in front sees."""

    @task
    def get(self) -> None:
        request = pick()
        with self.client.get(request.path, name="GET ocsp", catch_response=True, allow_redirects=False) as response:
            self._check(response)


class OcspPostUser(_OcspUser):
    """OCSP over POST (Content-Type application/ocsp-request): never cached, always reaches the edge."""

    @task
    def post(self) -> None:
        request = pick()
        with self.client.post(
            PREFIX or "/",
            data=request.der,
            headers={"Content-Type": "application/ocsp-request"},
            name="POST ocsp",
            catch_response=True,
            allow_redirects=False,
        ) as response:
            self._check(response)


# ------------------------------------------------------------------------------------------ EST
# Enabled by PKI_EDGE_LOCUST_EST_RA_CERT and PKI_EDGE_LOCUST_EST_RA_KEY (an RA registered with `pki-edge ra add`):
#   PKI_EDGE_LOCUST_EST_LABEL      the CA label (default: none, the server's default CA)
#   PKI_EDGE_LOCUST_EST_PREFIX     default /.well-known/est (Lamassu: /api/devmanager/.well-known/est)
#   PKI_EDGE_LOCUST_EST_SERVER_CA  PEM bundle to verify the HTTPS server with (default: the system's)
#   PKI_EDGE_LOCUST_EST_WAIT       seconds each EST user waits between requests (default 0)
# The host must be the HTTPS URL (--host https://HOST:TLS_PORT); OCSP is served there too. To run the
# EST users alone, name them and set PKI_EDGE_LOCUST_EST_ONLY=1 (no request file then):
#   PKI_EDGE_LOCUST_EST_ONLY=1 PKI_EDGE_LOCUST_EST_RA_CERT=ra.pem PKI_EDGE_LOCUST_EST_RA_KEY=ra.key \
#     PKI_EDGE_LOCUST_EST_LABEL=CA \
#     locust -f bench/locustfile.py --headless -u 20 -r 20 -t 60s --host https://HOST:8443 \
#     EstEnrollUser EstReenrollUser

EST_RA = (os.environ.get("PKI_EDGE_LOCUST_EST_RA_CERT", ""), os.environ.get("PKI_EDGE_LOCUST_EST_RA_KEY", ""))
EST_LABEL = os.environ.get("PKI_EDGE_LOCUST_EST_LABEL", "").strip("/")
EST_PREFIX = _prefix(os.environ.get("PKI_EDGE_LOCUST_EST_PREFIX", "/.well-known/est"))
EST_VERIFY: str | bool = os.environ.get("PKI_EDGE_LOCUST_EST_SERVER_CA", "") or True
EST_WAIT = float(os.environ.get("PKI_EDGE_LOCUST_EST_WAIT", "0") or 0)


def est_path(operation: str, label: str = EST_LABEL) -> str:
    return f"{EST_PREFIX}/{label}/{operation}" if label else f"{EST_PREFIX}/{operation}"


def new_csr(common_name: str, key: object | None = None) -> tuple[bytes, object]:
    """(the base64 CSR body, its private key): a fresh P-256 key unless one is given (re-enroll)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = key or ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return base64.b64encode(csr.public_bytes(serialization.Encoding.DER)), key


def est_failure(status_code: int, body: bytes) -> str | None:
    """None for an EST answer carrying a certificate (base64 of a DER PKCS#7), else the reason."""
    if status_code != 200:
        return f"HTTP {status_code}"
    try:
        der = base64.b64decode(body, validate=False)
    except ValueError:
        return "body is not base64"
    return None if der[:1] == b"\x30" else "body is not a PKCS#7"


class _EstUser(HttpUser):
    abstract = True

    def wait_time(self) -> float:
        return EST_WAIT

    def _post(self, path: str, body: bytes, name: str) -> bytes | None:
        with self.client.post(
            path,
            data=body,
            headers={"Content-Type": "application/pkcs10"},
            name=name,
            catch_response=True,
            allow_redirects=False,
        ) as response:
            reason = est_failure(response.status_code, response.content or b"")
            if reason is None:
                response.success()
                return bytes(response.content)
            response.failure(reason)
            return None


if all(EST_RA):

    class EstEnrollUser(_EstUser):
        """A factory's RA enrolling new devices: a fresh key and CSR per request."""

        def on_start(self) -> None:
            self.client.cert = EST_RA
            self.client.verify = EST_VERIFY

        @task
        def enroll(self) -> None:
            body, _ = new_csr(f"locust-{random.getrandbits(64):016x}")
            self._post(est_path("simpleenroll"), body, "POST simpleenroll")

    class EstReenrollUser(_EstUser):
        """A device renewing its own certificate (enrolled once through the RA at start)."""

        def on_start(self) -> None:
            import tempfile

            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.serialization import pkcs7

            self._name = f"locust-device-{random.getrandbits(64):016x}"
            body, key = new_csr(self._name)
            self.client.verify = EST_VERIFY
            self.client.cert = EST_RA
            answer = self._post(est_path("simpleenroll"), body, "POST simpleenroll (setup)")
            if answer is None:
                raise SystemExit("locustfile: the RA could not enroll the re-enrolling device")
            cert = pkcs7.load_der_pkcs7_certificates(base64.b64decode(answer))[0]
            self._dir = tempfile.TemporaryDirectory(prefix="locust-est-")
            cert_path, key_path = Path(self._dir.name, "device.pem"), Path(self._dir.name, "device.key")
            cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            key_path.write_bytes(
                key.private_bytes(  # type: ignore[attr-defined]
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )
            self._key = key
            self.client.cert = (str(cert_path), str(key_path))

        @task
        def reenroll(self) -> None:
            body, _ = new_csr(self._name, self._key)  # same subject, same key: a renewal
            self._post(est_path("simplereenroll"), body, "POST simplereenroll")

        def on_stop(self) -> None:
            self._dir.cleanup()
