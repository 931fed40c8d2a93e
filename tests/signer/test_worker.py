"""signer.worker: what a worker checks when it loads a CA for issuance, and how it runs a batch of jobs."""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from contract import jobs, store
from contract.config import Config
from signer import enroll
from signer.inventory import add_certificates, revoke
from signer.registry import add_ca, create_ca, key_path, load_ca_key, set_responder
from signer.state import SignerError, SignerStore
from signer.worker import Worker
from signer.worker_pool import WorkItem
from tests.signer.conftest import build_ca, build_delegate, build_leaf, key_pem, pem, pool_key

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def worker_for(st: SignerStore, data_dir: Path) -> Worker:
    st.close()  # LMDB: one environment per file and process; the worker opens its own
    return Worker(data_dir, Config(), logging.getLogger("test"))


def test_load_ca_accepts_the_matching_key(st: SignerStore, data_dir: Path) -> None:
    record = create_ca(st, "ca", "ec-p256", 30, None, None, NOW)
    cert, key, _ = worker_for(st, data_dir).load_ca(record)
    assert key.public_key() == cert.public_key()


def test_load_ca_refuses_a_key_file_that_is_not_the_ca_key(st: SignerStore, data_dir: Path) -> None:
    # Issuance skips verifying each new certificate because of this check (signer.enroll.store_signed).
    record = create_ca(st, "ca", "ec-p256", 30, None, None, NOW)
    key_path(data_dir, "ca", "ca").write_bytes(key_pem(pool_key("ec-p256", 5)))
    with pytest.raises(SignerError, match="does not hold the CA certificate's key"):
        worker_for(st, data_dir).load_ca(record)


# ---------------------------------------------------------------------------- batches


def device_csr(index: int, key_index: int | None = None) -> bytes:
    key = pool_key("ec-p256", 100 + (index if key_index is None else key_index))
    name = f"device-{index}.example"
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )


def item(job: jobs.Job, deadline: float = float("inf")) -> WorkItem:
    return WorkItem(job, deadline)


def last_txnid(worker: Worker) -> int:
    return int(worker._st.env.info()["last_txnid"])


def in_inventory(worker: Worker, cert_der: bytes) -> bool:
    serial = x509.load_der_x509_certificate(cert_der).serial_number
    with worker._st.env.begin(db=worker._st.inventory) as txn:
        return txn.get(store.inventory_key(1, store.serial_key(serial))) is not None


@pytest.fixture
def ca_worker(st: SignerStore, data_dir: Path) -> Worker:
    create_ca(st, "ca", "ec-p256", 30, None, None, NOW)
    return worker_for(st, data_dir)


def test_a_batch_is_stored_in_one_transaction(ca_worker: Worker) -> None:
    before = last_txnid(ca_worker)
    results = ca_worker.run_batch([item(jobs.EnrollJob("ca", device_csr(i), "ra")) for i in range(6)])
    assert all(isinstance(r, jobs.Issued) for r in results), results
    assert last_txnid(ca_worker) == before + 1  # one commit (one fsync) for the six
    assert all(in_inventory(ca_worker, r.cert_der) for r in results if isinstance(r, jobs.Issued))
    certs = [x509.load_der_x509_certificate(r.cert_der) for r in results if isinstance(r, jobs.Issued)]
    assert [c.subject.rfc4514_string() for c in certs] == [f"CN=device-{i}.example" for i in range(6)]  # in order


def test_refusals_in_a_batch_cost_only_their_own_job(ca_worker: Worker, data_dir: Path) -> None:
    [first] = ca_worker.run_batch([item(jobs.EnrollJob("ca", device_csr(1), "ra"))])
    assert isinstance(first, jobs.Issued)
    st = ca_worker._st
    revoke(st, st.issuer("ca"), x509.load_der_x509_certificate(first.cert_der).serial_number, 1, int(NOW.timestamp()))
    results = ca_worker.run_batch(
        [
            item(jobs.EnrollJob("ca", device_csr(2), "ra")),
            item(jobs.EnrollJob("ca", b"not a CSR", "ra")),
            item(jobs.ReenrollJob("ca", device_csr(1), first.cert_der)),  # refused inside the write transaction
            item(jobs.EnrollJob("nope", device_csr(3), "ra")),
            item(jobs.EnrollJob("ca", device_csr(4), "ra")),
        ]
    )
    assert [type(r).__name__ for r in results] == ["Issued", "Refused", "Refused", "Refused", "Issued"]
    assert results[2] == jobs.Refused(403, "the current certificate is revoked")
    assert isinstance(results[3], jobs.Refused) and results[3].status == 404


def test_a_failure_while_storing_costs_only_its_own_job(
    ca_worker: Worker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = enroll._store_issued
    doomed = device_csr(2)

    def failing(txn: Any, st: SignerStore, issuer: Any, cert: x509.Certificate, *args: Any, **kwargs: Any) -> bytes:
        inv_key = real(txn, st, issuer, cert, *args, **kwargs)  # writes first: the shared transaction is spoilt
        if cert.subject.rfc4514_string() == "CN=device-2.example":
            raise OSError("disk on fire")
        return inv_key

    monkeypatch.setattr(enroll, "_store_issued", failing)
    before = last_txnid(ca_worker)
    with caplog.at_level(logging.ERROR):
        results = ca_worker.run_batch(
            [item(jobs.EnrollJob("ca", csr, "ra")) for csr in (device_csr(1), doomed, device_csr(3))]
        )
    assert isinstance(results[0], jobs.Issued) and isinstance(results[2], jobs.Issued)
    assert results[1] == jobs.Busy(Config().est.retry_after_seconds)
    assert "disk on fire" in caplog.text
    assert last_txnid(ca_worker) == before + 2  # the shared one aborted, then one commit for each that stored
    assert in_inventory(ca_worker, results[0].cert_der) and in_inventory(ca_worker, results[2].cert_der)
    with ca_worker._st.env.begin(db=ca_worker._st.inventory) as txn:
        assert sum(1 for _ in txn.cursor()) == 2  # nothing of the failed one


def test_jobs_past_their_deadline_are_neither_started_nor_stored(
    ca_worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = last_txnid(ca_worker)
    late = ca_worker.run_batch([item(jobs.EnrollJob("ca", device_csr(1), "ra"), deadline=time.time() - 1)])
    assert late == [jobs.Busy(Config().est.retry_after_seconds)]
    assert last_txnid(ca_worker) == before
    # A deadline that passes while the batch is being signed: the certificate is dropped unstored.
    real = enroll.sign_enroll
    monkeypatch.setattr(enroll, "sign_enroll", lambda *a: (time.sleep(0.3), real(*a))[1])
    results = ca_worker.run_batch(
        [
            item(jobs.EnrollJob("ca", device_csr(2), "ra"), deadline=time.time() + 0.2),
            item(jobs.EnrollJob("ca", device_csr(3), "ra")),
        ]
    )
    assert results[0] == jobs.Busy(Config().est.retry_after_seconds) and isinstance(results[1], jobs.Issued)
    with ca_worker._st.env.begin(db=ca_worker._st.inventory) as txn:
        assert sum(1 for _ in txn.cursor()) == 1


def test_an_exception_while_signing_costs_only_its_own_job(ca_worker: Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    real = enroll.sign_enroll

    def flaky(st: SignerStore, config: Config, job: jobs.EnrollJob, *rest: Any) -> Any:
        if job.requester == "bug":
            raise RuntimeError("worker bug")
        return real(st, config, job, *rest)

    monkeypatch.setattr(enroll, "sign_enroll", flaky)
    results = ca_worker.run_batch(
        [item(jobs.EnrollJob("ca", device_csr(1), "bug")), item(jobs.EnrollJob("ca", device_csr(2), "ra"))]
    )
    assert results[0] == jobs.Busy(Config().est.retry_after_seconds) and isinstance(results[1], jobs.Issued)


@pytest.mark.parametrize("when", ["expired", "not yet valid"])
def test_no_certificate_is_issued_while_its_ocsp_cannot_be_signed(st: SignerStore, data_dir: Path, when: str) -> None:
    # Its first OCSP responses are signed with it, before it is answered: with the certificate that
    # signs them out of its validity, the job waits (503 with the reason) and nothing is signed.
    day = dt.timedelta(days=1)
    record = create_ca(st, "ca", "ec-p256", 30, None, None, NOW - 10 * day)
    ca_cert, ca_key = x509.load_der_x509_certificate(record.cert_der), load_ca_key(data_dir, record)
    delegate_key = pool_key("ec-p256", 22)
    if when == "expired":
        delegate = build_delegate(ca_cert, ca_key, delegate_key, NOW - 5 * day, NOW - dt.timedelta(seconds=1))
        set_responder(st, "ca", pem(delegate), key_pem(delegate_key), NOW - 2 * day)
    else:
        delegate = build_delegate(ca_cert, ca_key, delegate_key, NOW + day, NOW + 5 * day)
        set_responder(st, "ca", pem(delegate), key_pem(delegate_key), NOW + 2 * day)
    worker = worker_for(st, data_dir)
    before = last_txnid(worker)
    results = worker.run_batch(
        [item(jobs.EnrollJob("ca", device_csr(1), "ra")), item(jobs.ServerKeygenJob("ca", device_csr(2), "ra"))]
    )
    reason = "CA 'ca' cannot issue for now: the certificate signing its OCSP responses is not valid"
    assert results == [jobs.Refused(503, reason)] * 2
    assert last_txnid(worker) == before


# ---------------------------------------------------------------------------- live-signed OCSP


@pytest.mark.parametrize("expired", [False, True])
def test_live_responses_never_outlive_the_responder_certificate(st: SignerStore, data_dir: Path, expired: bool) -> None:
    day = dt.timedelta(days=1)
    ca_key, delegate_key = pool_key("ec-p256", 20), pool_key("ec-p256", 21)
    ca_cert = build_ca(ca_key, "Delegating CA", NOW - 10 * day, NOW + 400 * day)
    until = NOW - dt.timedelta(seconds=1) if expired else NOW + day  # the validity is 7 days
    delegate = build_delegate(ca_cert, ca_key, delegate_key, NOW - 10 * day, until)
    issuer = add_ca(st, "deleg", pem(ca_cert), None, pem(delegate), key_pem(delegate_key), None, NOW - 2 * day)
    leaves = [build_leaf(ca_cert, ca_key, serial, NOW - day, NOW + 30 * day) for serial in (9, 10)]
    add_certificates(st, issuer, leaves, now=int(NOW.timestamp()))
    refs = tuple(jobs.CertRef(issuer.number, 2, store.serial_key(serial)) for serial in (9, 10))
    [result] = worker_for(st, data_dir).run_batch([item(jobs.LiveOcspJob(refs))])
    if expired:
        assert isinstance(result, jobs.Busy)  # tryLater: nothing is signed with it
        return
    assert isinstance(result, jobs.OcspSigned)
    resp = ocsp.load_der_ocsp_response(result.der)
    assert [single.next_update_utc for single in resp.responses] == [until, until]
