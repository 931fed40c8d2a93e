"""signer.worker_pool: worker processes fed batches over pipes.

The pool's mechanics (batches, shares, a worker dying or talking garbage, shutdown) are driven
with a small fake worker speaking the same frames; the last test runs the real
``python -m signer.worker`` against a store with a CA.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from cryptography import x509

from contract import jobs, store
from contract.config import Config
from signer import worker_pool
from signer.registry import create_ca
from signer.state import SignerStore
from signer.worker_pool import MAX_BATCH, RESTART_DELAY_S, ProcessPool, worker_command
from tests.signer.test_worker import device_csr

FAKE_WORKER = """
import os, sys, time
from contract import jobs
from signer.worker_pool import ITEMS_DECODER, MAX_BATCH_FRAME_BYTES, RESULTS_ENCODER
requests, replies = sys.stdin.buffer, sys.stdout.buffer
while header := requests.read(jobs.FRAME_HEADER_BYTES):
    items = ITEMS_DECODER.decode(requests.read(jobs.frame_size(header, MAX_BATCH_FRAME_BYTES)))
    csrs = [item.job.csr_der for item in items]
    if b"die" in csrs:
        os._exit(3)
    if any(csr.startswith(b"slow") for csr in csrs):
        time.sleep(0.3)
    if b"garbage" in csrs:
        replies.write(jobs.frame(b"\\xc1"))
    else:
        pid = str(os.getpid()).encode()
        replies.write(jobs.frame(RESULTS_ENCODER.encode([jobs.Issued(csr + b"@" + pid) for csr in csrs])))
    replies.flush()
"""

LOG = logging.getLogger("test.pool")


def job(csr: bytes) -> jobs.EnrollJob:
    return jobs.EnrollJob("ca", csr, "ra")


def fake_pool(count: int = 1) -> ProcessPool:
    return ProcessPool([sys.executable, "-c", FAKE_WORKER], count, 7, LOG)


async def submit_all(pool: ProcessPool, csrs: list[bytes], timeout: float = 30) -> list[jobs.Result]:
    deadline = time.time() + timeout
    async with asyncio.timeout(timeout):
        return await asyncio.gather(*(pool.run(job(csr), deadline) for csr in csrs))


def issued_to(result: jobs.Result) -> tuple[bytes, bytes]:
    """(what the fake was asked, the pid of the fake that answered)."""
    assert isinstance(result, jobs.Issued), result
    csr, _, pid = result.cert_der.partition(b"@")
    return csr, pid


def test_jobs_waiting_together_go_in_batches_and_come_back_in_order() -> None:
    async def scenario() -> tuple[list[jobs.Result], int, int]:
        pool = fake_pool()
        await pool.start()
        try:
            results = await submit_all(pool, [b"%d" % i for i in range(24)])
        finally:
            await pool.close()
        return results, pool.batches, pool.jobs

    results, batches, count = asyncio.run(scenario())
    assert [issued_to(r)[0] for r in results] == [b"%d" % i for i in range(24)]
    assert count == 24 and batches <= 3  # 16 (MAX_BATCH) and the rest, not 24 frames


def test_free_workers_share_what_is_waiting() -> None:
    async def scenario() -> list[jobs.Result]:
        pool = fake_pool(count=2)
        await pool.start()
        try:
            await submit_all(pool, [b"warm"] * 2)  # both processes up
            return await submit_all(pool, [b"%d" % i for i in range(20)])
        finally:
            await pool.close()

    by_pid = Counter(issued_to(r)[1] for r in asyncio.run(scenario()))
    assert sorted(by_pid.values()) == [10, 10], by_pid


@pytest.mark.parametrize("fault", [b"die", b"garbage"])
def test_a_failing_worker_costs_its_batch_a_busy_and_is_replaced(
    fault: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> tuple[list[jobs.Result], jobs.Result, float]:
        pool = fake_pool()
        await pool.start()
        try:
            await submit_all(pool, [b"warm"])
            doomed = await submit_all(pool, [b"a", fault, b"b"])
            started = time.monotonic()
            after = await pool.run(job(b"next"), time.time() + 30)
            return doomed, after, time.monotonic() - started
        finally:
            await pool.close()

    with caplog.at_level(logging.ERROR, logger=LOG.name):
        doomed, after, waited = asyncio.run(scenario())
    assert doomed == [jobs.Busy(7)] * 3  # the whole batch, never a hang or a 500
    assert issued_to(after)[0] == b"next"
    assert "ended with exit code" in caplog.text and "replacing it" in caplog.text
    if fault == b"garbage":
        assert "signer worker pid" in caplog.text
    assert waited < RESTART_DELAY_S + 10


def test_a_worker_that_cannot_start_answers_busy(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> tuple[jobs.Result, float]:
        pool = ProcessPool([sys.executable, "-c", "raise SystemExit(2)"], 1, 7, LOG)
        await pool.start()
        started = time.monotonic()
        try:
            return await pool.run(job(b"x"), time.time() + 30), time.monotonic() - started
        finally:
            await pool.close()

    with caplog.at_level(logging.ERROR, logger=LOG.name):
        result, waited = asyncio.run(scenario())
    assert result == jobs.Busy(7) and waited < 10
    assert "exit code 2" in caplog.text


def test_close_finishes_the_batches_under_way_then_ends_the_workers() -> None:
    async def scenario() -> tuple[list[jobs.Result], list[int | None], jobs.Result]:
        pool = fake_pool(count=2)
        await pool.start()
        await submit_all(pool, [b"warm"] * 2)
        procs = list(pool._procs.values())
        running = asyncio.ensure_future(submit_all(pool, [b"slow%d" % i for i in range(8)]))
        await asyncio.sleep(0.1)  # handed to the workers, which take 0.3 s to answer
        assert pool.jobs == 2 and not pool._queue
        await pool.close()
        refused = await pool.run(job(b"late"), time.time() + 5)
        return await running, [p.returncode for p in procs], refused

    results, codes, refused = asyncio.run(scenario())
    assert [issued_to(r)[0] for r in results] == [b"slow%d" % i for i in range(8)]
    assert codes == [0, 0]  # each ended by EOF on its stdin, not killed
    assert refused == jobs.Busy(7)


def test_real_workers_issue_a_batch(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with SignerStore(data_dir, Config()) as st:
        create_ca(st, "ca", "ec-p256", 30, None, None, dt.datetime.now(dt.UTC))

    async def scenario() -> tuple[list[jobs.Result], int, list[int]]:
        pool = ProcessPool(worker_command(data_dir), 1, 7, LOG)
        await pool.start()
        try:
            results = await submit_all(pool, [device_csr(i) for i in range(8)], timeout=60)
            return results, pool.batches, pool.worker_pids()
        finally:
            await pool.close()

    results, batches, pids = asyncio.run(scenario())
    assert len(pids) == 1 and batches <= 2
    with SignerStore(data_dir, Config()) as st, st.env.begin(db=st.inventory) as txn:
        for index, result in enumerate(results):
            assert isinstance(result, jobs.Issued), result
            cert = x509.load_der_x509_certificate(result.cert_der)
            assert cert.subject.rfc4514_string() == f"CN=device-{index}.example"
            assert txn.get(store.inventory_key(1, store.serial_key(cert.serial_number))) is not None


def test_a_batch_of_the_largest_jobs_fits_its_frame() -> None:
    """Each job came from the edge in a frame of up to MAX_FRAME_BYTES: a full batch of them passes."""
    big = [b"%02d" % i + b"x" * (jobs.MAX_FRAME_BYTES - 1024) for i in range(MAX_BATCH)]

    async def scenario() -> tuple[list[jobs.Result], int]:
        pool = fake_pool()
        await pool.start()
        try:
            return await submit_all(pool, big), pool.batches
        finally:
            await pool.close()

    results, batches = asyncio.run(scenario())
    assert [issued_to(r)[0] for r in results] == big and batches == 1


def test_a_worker_dying_while_idle_is_replaced_before_the_next_job(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> tuple[int, list[int], jobs.Result]:
        pool = fake_pool()
        await pool.start()
        try:
            await submit_all(pool, [b"warm"])
            [victim] = pool.worker_pids()
            os.kill(victim, signal.SIGKILL)
            for _ in range(100):  # replaced without a job to notice it
                await asyncio.sleep(0.05)
                if pool.worker_pids() and pool.worker_pids() != [victim]:
                    break
            return victim, pool.worker_pids(), await pool.run(job(b"next"), time.time() + 30)
        finally:
            await pool.close()

    with caplog.at_level(logging.ERROR, logger=LOG.name):
        victim, pids, result = asyncio.run(scenario())
    assert len(pids) == 1 and pids != [victim]
    assert issued_to(result) == (b"next", str(pids[0]).encode())  # not Busy: no job was lost to the dead one
    assert f"pid {victim}) ended with exit code -9" in caplog.text


def test_close_kills_a_worker_that_hangs(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_pool, "STOP_GRACE_S", 0.5)

    async def scenario() -> tuple[jobs.Result, float]:
        pool = ProcessPool([sys.executable, "-c", "import time; time.sleep(60)"], 1, 7, LOG)
        await pool.start()
        stuck = asyncio.ensure_future(pool.run(job(b"x"), time.time() + 60))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await pool.close()
        return await stuck, time.monotonic() - started

    result, waited = asyncio.run(scenario())
    assert result == jobs.Busy(7) and waited < 5


NOISY_WORKER = """
import os, sys
from signer import worker
real = worker.Worker.run_batch
def noisy(self, items):
    os.write(1, b"noise on descriptor 1\\n")  # as a C library would
    print("noise from print")
    return real(self, items)
worker.Worker.run_batch = noisy
sys.exit(worker.main(sys.argv[1:]))
"""


def test_writes_to_stdout_inside_a_worker_do_not_corrupt_its_frames(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "data"
    with SignerStore(data_dir, Config()) as st:
        create_ca(st, "ca", "ec-p256", 30, None, None, dt.datetime.now(dt.UTC))

    async def scenario() -> list[jobs.Result]:
        pool = ProcessPool([sys.executable, "-c", NOISY_WORKER, str(data_dir)], 1, 7, LOG)
        await pool.start()
        try:
            return await submit_all(pool, [device_csr(1), device_csr(2)], timeout=60)
        finally:
            await pool.close()

    results = asyncio.run(scenario())
    assert all(isinstance(r, jobs.Issued) for r in results), results
    err = capfd.readouterr().err  # the worker's stderr (inherited): where descriptor 1 now leads
    assert "noise on descriptor 1" in err and "noise from print" in err
