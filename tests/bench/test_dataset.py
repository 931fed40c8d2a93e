"""The dataset builder on a tiny N: the real CLI, index.txt, import, and the signer's own code."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from bench import dataset
from contract import store

N = 50


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dataset.BuildReport, list[dataset.Serial]]:
    data = tmp_path_factory.mktemp("dataset") / "data"
    report, sample = dataset.build(data, N, sample_size=N, cpu=None, time_limit=120)
    return data, report, sample


def test_index_has_n_rows_a_tenth_revoked(tmp_path: Path):
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    sample = dataset.write_openssl_index(tmp_path / "index.txt", 30, seed=4, sample_size=7, now=now)
    rows = (tmp_path / "index.txt").read_text().splitlines()
    assert len(rows) == 30 and len(sample) == 7
    assert sum(r.startswith("R\t") for r in rows) == 3
    fields = rows[9].split("\t")
    assert fields[0] == "R" and fields[2] == "251231000000Z,keyCompromise" and fields[1] == "270101000000Z"
    assert len(fields[3]) == 32 and fields[3][0] in "4567"  # 127 bits, top one set: 16 octets, positive
    serials = [int(r.split("\t")[3], 16) for r in rows]
    assert len(set(serials)) == 30
    assert {s.value for s in sample} <= set(serials)
    assert dataset.read_index_serials(tmp_path / "index.txt", 10) == list(dataset.serials(30, 4))[:10]


def test_every_serial_has_two_responses(built):
    data, report, sample = built
    assert report.serials == N and len(sample) == N
    assert dataset.store_counts(data) == {"inventory": N, "responses": 2 * N, "pending": 0}
    responses = dataset.stored_responses(data, [(s.value, h) for s in sample for h in ("sha1", "sha256")])
    assert len(responses) == 2 * N
    for serial in sample:
        for hash_name in ("sha1", "sha256"):
            stored = responses[(serial.value, hash_name)]
            assert stored.revoked == serial.revoked
            assert stored.der.startswith(b"\x30")
    assert sum(s.revoked for s in sample) == N // 10


def test_build_report_times_signing_against_raw_sign(built):
    _, report, _ = built
    sign = report.sign
    assert sign["serials"] == N and sign["responses"] == 2 * N and sign["pending_left"] == 0
    assert sign["cpu_seconds"] > 0 and sign["raw_signs_per_cpu_second"] > 0
    assert sign["ratio_vs_raw_sign"] == pytest.approx(
        sign["responses_per_cpu_second"] / sign["raw_signs_per_cpu_second"]
    )
    assert report.import_seconds > 0


def test_refresh_resigns_everything(built):
    data, _, sample = built
    before = dataset.stored_responses(data, [(sample[0].value, "sha1")])
    result = dataset.run_sign_process(data, "refresh", cpu=None, time_limit=120)
    assert result["serials"] == N and result["responses"] == 2 * N
    after = dataset.stored_responses(data, [(sample[0].value, "sha1")])
    key = (sample[0].value, "sha1")
    assert after[key].this_update > before[key].this_update
    assert dataset.store_counts(data)["responses"] == 2 * N


def test_ca_record_is_the_bench_ca(built):
    data, _, _ = built
    record = dataset.ca_record(data)
    assert record.name == dataset.CA_NAME and record.number >= 1
    assert isinstance(record, store.IssuerRecord)
