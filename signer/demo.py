"""`pki-edge up --demo`: a demo CA with a few thousand devices, some revoked."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from contract.store import IssuerRecord
from signer.certs import make_end_entity_certificate
from signer.inventory import add_certificates, revoke
from signer.keys import generate_key, write_private_key
from signer.registry import create_ca, load_ca_key
from signer.state import SignerStore

DEMO_CA = "demo"
DEVICES = 3000
HANDFUL = 4
REVOKE_EVERY = 20  # 5 % of the fleet
REVOKED_DEVICE = 2  # device-0002 is revoked with keyCompromise


def demo_dir(data_dir: Path) -> Path:
    return data_dir / "demo"


def create_demo(st: SignerStore, ocsp_url: str, now: dt.datetime) -> IssuerRecord:
    """Create the demo CA and devices; write the CA and a handful of devices with keys to DATA/demo/."""
    from cryptography import x509

    out = demo_dir(st.data_dir)
    out.mkdir(parents=True, exist_ok=True)
    issuer = create_ca(st, DEMO_CA, "ec-p256", 3650, None, ocsp_url, now)
    ca_cert = x509.load_der_x509_certificate(issuer.cert_der)
    ca_key = load_ca_key(st.data_dir, issuer)
    (out / "ca.pem").write_bytes(ca_cert.public_bytes(Encoding.PEM))
    fleet_key = generate_key("ec-p256")  # the bulk of the fleet shares one key: the demo is about status
    certs = []
    for i in range(1, DEVICES + 1):
        key = generate_key("ec-p256") if i <= HANDFUL else fleet_key
        name = f"device-{i:04d}"
        cert = make_end_entity_certificate(
            ca_cert, ca_key, key.public_key(), name, [], 365, now, ocsp_url, serial=0x1000 + i
        )
        certs.append(cert)
        if i <= HANDFUL:
            (out / f"{name}.pem").write_bytes(cert.public_bytes(Encoding.PEM))
            write_private_key(out / f"{name}.key", key)
    add_certificates(st, issuer, certs, now=int(now.timestamp()))
    when = int(now.timestamp())
    revoke(st, issuer, 0x1000 + REVOKED_DEVICE, 1, when)
    for i in range(REVOKE_EVERY, DEVICES + 1, REVOKE_EVERY):
        revoke(st, issuer, 0x1000 + i, 4, when)
    return issuer


def demo_instructions(data_dir: Path, url: str) -> str:
    d = demo_dir(data_dir)
    lines = [
        "pki-edge demo is up. Try:",
        f"  openssl ocsp -issuer {d}/ca.pem -cert {d}/device-0001.pem -url {url} -CAfile {d}/ca.pem -resp_text",
        f"  openssl ocsp -issuer {d}/ca.pem -cert {d}/device-{REVOKED_DEVICE:04d}.pem -url {url} -CAfile {d}/ca.pem"
        "   # revoked",
        f"  openssl ocsp -sha256 -issuer {d}/ca.pem -serial 0x1003 -url {url} -CAfile {d}/ca.pem",
        f"  openssl ocsp -issuer {d}/ca.pem -serial 0xDEAD -url {url} -CAfile {d}/ca.pem   # unknown: unauthorized",
        f"  pki-edge --data {data_dir} revoke {DEMO_CA} 1001 --reason keyCompromise   # then ask again",
    ]
    return "\n".join(lines)
