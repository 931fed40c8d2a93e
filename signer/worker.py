"""A signer worker process: runs signing jobs with the CA keys it holds.

Started by the job server's process pool (spawned, so it opens the store
itself rather than inheriting a handle). Keys are loaded on first use and
reloaded when the registry changes.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

from cryptography import x509

from contract import jobs, store
from contract.config import Config, load_config
from contract.store import IssuerRecord
from signer import enroll
from signer.keys import SigningKey
from signer.ocsp_der import CertStatus, ResponseSigner
from signer.registry import load_ca_key, load_response_signer
from signer.state import SignerError, SignerStore

LoadedCA = tuple[x509.Certificate, SigningKey, ResponseSigner]


class Worker:
    def __init__(self, data_dir: Path, config: Config, logger: logging.Logger) -> None:
        self._config = config
        self._logger = logger
        self._st = SignerStore(data_dir, config)
        self._generation = -1
        self._loaded: dict[str, LoadedCA] = {}
        self._signers: dict[int, ResponseSigner] = {}

    def _refresh(self) -> None:
        generation = self._st.registry_generation()
        if generation != self._generation:
            self._loaded.clear()
            self._signers.clear()
            self._generation = generation

    def load_ca(self, record: IssuerRecord) -> LoadedCA:
        """The CA's certificate, key and OCSP signer (cached until the registry changes)."""
        loaded = self._loaded.get(record.name)
        if loaded is None:
            cert = x509.load_der_x509_certificate(record.cert_der)
            key = load_ca_key(self._st.data_dir, record)
            if key.public_key() != cert.public_key():  # what lets issuance skip verifying each certificate
                raise SignerError(f"CA {record.name!r}: its key file does not hold the CA certificate's key")
            loaded = (cert, key, load_response_signer(self._st.data_dir, record))
            self._loaded[record.name] = loaded
        return loaded

    def run(self, job: jobs.Job) -> jobs.Result:
        self._refresh()
        now = int(time.time())
        if isinstance(job, jobs.EnrollJob):
            return enroll.enroll(self._st, self._config, job, self.load_ca, now)
        if isinstance(job, jobs.ReenrollJob):
            return enroll.reenroll(self._st, self._config, job, self.load_ca, now)
        if isinstance(job, jobs.ServerKeygenJob):
            return enroll.serverkeygen(self._st, self._config, job, self.load_ca, now)
        return self.live_ocsp(job, now)

    def live_ocsp(self, job: jobs.LiveOcspJob, now: int) -> jobs.Result:
        """Sign one response for several CertIDs the edge matched to known serials of one issuer."""
        issuers = {ref.issuer_number for ref in job.certs}
        if len(issuers) != 1:
            return jobs.Refused(400, "the CertIDs of one request must share an issuer")
        number = issuers.pop()
        record = next((r for r in self._st.issuers() if r.number == number), None)
        if record is None:
            return jobs.Refused(404, "unknown issuer")
        signer = self._signers.get(number)
        if signer is None:
            signer = self._signers[number] = load_response_signer(self._st.data_dir, record)
        singles = []
        with self._st.env.begin(db=self._st.inventory) as txn:
            for ref in job.certs:
                raw = txn.get(store.inventory_key(number, ref.serial_key))
                if raw is None:
                    return jobs.Refused(404, "unknown serial")  # never sign for serials never issued
                cert = store.CERT_DECODER.decode(raw)
                singles.append((ref.hash_code, ref.serial_key, CertStatus(cert.revoked_at, cert.reason)))
        this_update = now - self._config.signer.backdate_seconds
        next_update = this_update + int(self._config.signer.validity_hours * 3600)
        return jobs.OcspSigned(signer.sign_multi_response(singles, now, this_update, next_update))


_worker: Worker | None = None


def init_worker(data_dir: str) -> None:
    """Process-pool initializer: the parent handles signals; the worker opens its own store."""
    global _worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    path = Path(data_dir)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = load_config(path)
    os.nice(config.workers.nice)  # relative to the signer's own priority
    _worker = Worker(path, config, logging.getLogger("pki_edge.worker"))


def run_job(job: jobs.Job, deadline: float) -> jobs.Result:
    """Run one job, unless the edge has stopped waiting for it (then nothing is issued)."""
    assert _worker is not None, "init_worker was not run in this process"
    if time.time() >= deadline:
        return jobs.Busy(1)
    return _worker.run(job)
