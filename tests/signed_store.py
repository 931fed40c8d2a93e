"""Building a signed store with the signer's own code, for tests and benchmarks that serve from it."""

from __future__ import annotations

import datetime as dt
import logging
import random
from collections.abc import Iterable

from cryptography import x509

from contract.store import IssuerRecord
from signer.certs import make_end_entity_certificate
from signer.inventory import add_certificates
from signer.keys import generate_key
from signer.precompute import Clock, Precomputer
from signer.registry import load_ca_key, load_response_signer
from signer.state import SignerStore


def add_devices(st: SignerStore, issuer: IssuerRecord, serials: Iterable[int], when: dt.datetime) -> None:
    """Issue one short-lived device certificate per serial (one shared key) into the inventory."""
    ca = x509.load_der_x509_certificate(issuer.cert_der)
    ca_key = load_ca_key(st.data_dir, issuer)
    public = generate_key("ec-p256").public_key()
    certs = [make_end_entity_certificate(ca, ca_key, public, f"d{s}", [], 30, when, None, serial=s) for s in serials]
    add_certificates(st, issuer, certs, now=int(when.timestamp()))


def drain(st: SignerStore, clock: Clock | None = None) -> None:
    """Run the precomputer until nothing is pending or due."""
    pre = Precomputer(
        st,
        st.config.signer,
        lambda record: load_response_signer(st.data_dir, record),
        clock or Clock(),
        logging.getLogger("tests"),
        random.Random(0),
    )
    pre.reload_issuers()
    while pre.run_batch():
        pass
