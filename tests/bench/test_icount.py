"""bench/icount.py feeds the real fast lane: its answers are the store's, for every variant."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509 import ocsp

from bench import icount

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _unfrozen():
    """The feeder freezes what exists (so that no full collection of it is counted); undone for the other tests."""
    yield
    gc.unfreeze()


def test_the_set_up_is_kept_out_of_the_collections_counted(tmp_path: Path) -> None:
    gc.unfreeze()
    icount.feeder(tmp_path, "get", "floor")
    assert gc.get_freeze_count() > 10000


@pytest.mark.parametrize("method", ["get", "post"])
def test_whole_variant_answers_each_request_from_the_store(tmp_path: Path, method: str) -> None:
    feed, transport = icount.feeder(tmp_path, method, "whole")
    feed(3)
    assert len(transport.written) == 3
    for serial, answer in enumerate(transport.written, start=1):
        head, body = answer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert ocsp.load_der_ocsp_response(body).serial_number == serial


@pytest.mark.parametrize("variant", ["fixed", "floor"])
def test_other_variants_answer_every_request(tmp_path: Path, variant: str) -> None:
    feed, transport = icount.feeder(tmp_path, "get", variant)
    feed(5)
    assert len(transport.written) == 5
    assert len(set(transport.written)) == 1  # one fixed answer (the floor's: 404, its dict is empty)


def test_a_kept_store_is_reused_by_later_runs(tmp_path: Path) -> None:
    """What --store is for: runs in separate processes (as under valgrind) on the same store and CA."""
    store = tmp_path / "kept"
    run = [sys.executable, "-m", "bench.icount", "get", "--run", "3", "--store", str(store)]
    subprocess.run(run, check=True, cwd=REPO, capture_output=True)
    ca = (store / "icount-ca.der").read_bytes()
    subprocess.run(run, check=True, cwd=REPO, capture_output=True)  # create_ca would refuse a second key
    assert (store / "icount-ca.der").read_bytes() == ca


@pytest.mark.parametrize("method", ["get", "post"])
def test_requests_as_a_cdn_sends_them_are_answered_alike(tmp_path: Path, method: str) -> None:
    feed, transport = icount.feeder(tmp_path, method, "whole", cdn=True)
    feed(2)
    for serial, answer in enumerate(transport.written, start=1):
        head, body = answer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert ocsp.load_der_ocsp_response(body).serial_number == serial
    ca = x509.load_der_x509_certificate((tmp_path / "icount-ca.der").read_bytes())
    request = icount.wrk_requests(ca, method, icount.CDN_HEADERS)[0]
    assert request.count(b"\r\n") == (12 if method == "get" else 14)  # request line, Host, nine, (POST: two), end
