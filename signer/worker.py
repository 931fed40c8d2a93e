"""A signer worker process: runs signing jobs with the CA keys it holds.

Started by the job server's pool (``signer.worker_pool``) as ``python -m signer.worker
DATA_DIR``: a process of its own, which opens the store itself. It reads batches of jobs
from stdin and writes their results to stdout, one frame each, until stdin ends. Keys are
loaded on first use and reloaded when the registry changes.

A batch's certificates are all signed first, then stored in one write transaction: the
store's write lock is held only for their OCSP signatures, and one commit (one fsync)
makes the whole batch durable before any result leaves.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509

from contract import jobs, store
from contract.config import LOG_FORMAT, Config, load_config
from contract.store import IssuerRecord
from signer import enroll
from signer.keys import SigningKey
from signer.ocsp_der import CertStatus, ResponseSigner
from signer.registry import load_ca_key, load_response_signer
from signer.state import SignerError, SignerStore
from signer.worker_pool import ITEMS_DECODER, MAX_BATCH_FRAME_BYTES, RESULTS_ENCODER, WorkItem

LoadedCA = tuple[x509.Certificate, SigningKey, ResponseSigner]


class Worker:
    def __init__(self, data_dir: Path, config: Config, logger: logging.Logger) -> None:
        self._config = config
        self._logger = logger
        self._st = SignerStore(data_dir, config)
        self._generation = -1
        self._loaded: dict[str, LoadedCA] = {}
        self._signers: dict[int, ResponseSigner] = {}
        self._busy = jobs.Busy(config.est.retry_after_seconds)

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

    def run_batch(self, items: Sequence[WorkItem]) -> list[jobs.Result]:
        """Each item's result, in order. A job past its deadline is neither started nor stored."""
        self._refresh()
        now = int(time.time())
        results: list[jobs.Result] = [self._busy] * len(items)
        signed: list[tuple[int, enroll.Signed]] = []
        for index, item in enumerate(items):
            if time.time() >= item.deadline:
                continue  # the edge answered 503: nothing may be issued for it
            try:
                outcome = self._sign(item.job, now)
            except Exception:
                self._logger.exception("job %s failed", type(item.job).__name__)
                continue
            if isinstance(outcome, enroll.Signed):
                signed.append((index, outcome))
            else:
                results[index] = outcome
        # Signing a batch takes time: the jobs whose client stopped waiting meanwhile are not stored.
        late = time.time()
        signed = [(index, s) for index, s in signed if late < items[index].deadline]
        if signed:
            try:
                stored = enroll.store_batch(self._st, self._config, [s for _, s in signed], now)
            except Exception as exc:  # a batch of one, failing
                stored = [exc]
            for (index, _), result in zip(signed, stored, strict=True):
                if isinstance(result, Exception):
                    self._logger.error("storing a certificate failed", exc_info=result)
                else:
                    results[index] = result
        return results

    def _sign(self, job: jobs.Job, now: int) -> enroll.Signed | jobs.Result:
        if isinstance(job, jobs.EnrollJob):
            return enroll.sign_enroll(self._st, self._config, job, self.load_ca, now)
        if isinstance(job, jobs.ReenrollJob):
            return enroll.sign_reenroll(self._st, self._config, job, self.load_ca, now)
        if isinstance(job, jobs.ServerKeygenJob):
            return enroll.sign_serverkeygen(self._st, self._config, job, self.load_ca, now)
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
        if not signer.valid_at(now):
            return self._busy  # what signs this CA's responses is not valid now (the signer logs it)
        this_update = now - self._config.signer.backdate_seconds
        next_update = min(this_update + int(self._config.signer.validity_hours * 3600), signer.valid_until)
        return jobs.OcspSigned(signer.sign_multi_response(singles, now, this_update, next_update))


def main(argv: Sequence[str] | None = None) -> int:
    """Serve batches from stdin until it ends (the pool closed it, or the signer died)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if len(args) != 1:
        print("usage: python -m signer.worker DATA_DIR", file=sys.stderr)
        return 2
    # The signer handles signals; its pool ends us by closing our stdin, after the batch under way.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # The frames go out on a private copy of stdout; descriptor 1 itself now leads to stderr, so that
    # nothing else written there (a print, a C library's message) can corrupt them.
    requests, replies = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    sys.stdout.flush()
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    path = Path(args[0])
    config = load_config(path)
    os.nice(config.workers.nice)  # relative to the signer's own priority
    worker = Worker(path, config, logging.getLogger("pki_edge.worker"))
    while header := requests.read(jobs.FRAME_HEADER_BYTES):
        size = jobs.frame_size(header, MAX_BATCH_FRAME_BYTES)
        payload = requests.read(size)
        if len(payload) != size:
            return 1  # the pool went away mid-frame
        results = worker.run_batch(ITEMS_DECODER.decode(payload))
        replies.write(jobs.frame(RESULTS_ENCODER.encode(results)))
        replies.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
