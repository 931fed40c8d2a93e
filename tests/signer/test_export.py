"""signer.export: sampling a CA's serials and writing their OCSP requests for load tests."""

from __future__ import annotations

import base64
import collections
import datetime as dt
import json
import os
import random
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from contract import store
from contract.config import Config, SignerConfig
from contract.store import CertRecord, IssuerRecord
from edge.get_path import decode_get_request
from edge.ocsp_request import parse_ocsp_request
from edge.source import issuer_hashes
from signer import cli
from signer.export import export_requests, get_path, reservoir_sample
from signer.inventory import Entry, ImportReport, add_certificates, write_entries
from signer.registry import create_ca, load_ca_key
from signer.state import SignerError, SignerStore
from tests.signer.conftest import build_leaf

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
NOW_TS = int(NOW.timestamp())
DAY = 86400


def make_ca(st: SignerStore, name: str = "root", serials: range | list[int] = range(1, 51)) -> IssuerRecord:
    record = create_ca(st, name, "ec-p256", 365, None, None, NOW)
    entries = (Entry(s, CertRecord(NOW_TS + 30 * DAY)) for s in serials)
    write_entries(st, record, entries, ImportReport(), None)
    return record


def read_lines(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def export(st: SignerStore, path: Path, count: int, **kw: object) -> list[dict[str, str]]:
    args = {"ca_name": "root", "hash_names": None, "seed": None, "now": NOW_TS, **kw}
    export_requests(st, count=count, out=path, **args)  # type: ignore[arg-type]
    return read_lines(path)


# ------------------------------------------------------------------------------- the sample


def test_sample_has_the_requested_size(st: SignerStore, tmp_path: Path) -> None:
    make_ca(st)
    lines = export(st, tmp_path / "r.jsonl", 10)
    serials = [line["serial"] for line in lines]
    assert len(lines) == 20
    assert len(set(serials)) == 10
    assert {int(s, 16) for s in serials} <= set(range(1, 51))
    # both hashes of a serial, on adjacent lines
    assert [(line["serial"], line["hash"]) for line in lines[:2]] == [(serials[0], "sha1"), (serials[0], "sha256")]


def test_count_at_or_above_the_inventory_takes_all(st: SignerStore, tmp_path: Path) -> None:
    make_ca(st)
    for count in (50, 51, 10_000):
        lines = export(st, tmp_path / "r.jsonl", count, hash_names=["sha256"])
        assert sorted(int(line["serial"], 16) for line in lines) == list(range(1, 51))
        assert {line["hash"] for line in lines} == {"sha256"}


def test_only_the_ca_asked_for(st: SignerStore, tmp_path: Path) -> None:
    make_ca(st, "other", range(1000, 1100))
    make_ca(st, "root", range(1, 4))
    create_ca(st, "zzz", "ec-p256", 365, None, None, NOW)  # a later issuer number with no entries
    lines = export(st, tmp_path / "r.jsonl", 100)
    assert sorted({int(line["serial"], 16) for line in lines}) == [1, 2, 3]


def test_seed_makes_it_deterministic(st: SignerStore, tmp_path: Path) -> None:
    make_ca(st, serials=range(1, 1001))
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    export(st, a, 20, seed=7)
    export(st, b, 20, seed=7)
    export(st, c, 20, seed=8)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_sample_is_in_random_order_when_taking_all(st: SignerStore, tmp_path: Path) -> None:
    """Line order is the Zipf rank in the locustfile: it must not be the store's order."""
    make_ca(st, serials=range(1, 201))
    lines = export(st, tmp_path / "r.jsonl", 1000, hash_names=["sha1"], seed=1)
    serials = [int(line["serial"], 16) for line in lines]
    assert sorted(serials) == list(range(1, 201))
    assert serials != sorted(serials)


def test_reservoir_sample_is_uniform() -> None:
    rng = random.Random(1234)
    counts: collections.Counter[int] = collections.Counter()
    trials = 20_000
    for _ in range(trials):
        sample = reservoir_sample(iter(range(10)), 3, rng)
        assert len(sample) == len(set(sample)) == 3
        counts.update(sample)
    for item in range(10):
        assert abs(counts[item] / trials - 0.3) < 0.02, counts


def test_reservoir_sample_small_inputs() -> None:
    rng = random.Random(0)
    assert reservoir_sample([], 5, rng) == []
    assert sorted(reservoir_sample(range(3), 5, rng)) == [0, 1, 2]
    with pytest.raises(ValueError):
        reservoir_sample(range(3), 0, rng)


def test_expired_past_grace_and_negative_serials_are_left_out(st: SignerStore, tmp_path: Path) -> None:
    record = create_ca(st, "root", "ec-p256", 365, None, None, NOW)
    grace = int(Config().signer.expired_grace_hours * 3600)
    entries = [
        Entry(1, CertRecord(NOW_TS + DAY)),  # valid
        Entry(2, CertRecord(NOW_TS - DAY // 2)),  # expired, inside the 24 h grace: still answered
        Entry(3, CertRecord(NOW_TS - grace)),  # grace ends now: no longer answered
        Entry(4, CertRecord(NOW_TS - 3 * DAY)),  # long expired
        Entry(5, CertRecord(NOW_TS + DAY, revoked_at=NOW_TS - DAY, reason=1)),  # revoked: answered
        Entry(-6, CertRecord(NOW_TS + DAY)),  # negative: cryptography cannot build the request
    ]
    write_entries(st, record, entries, ImportReport(), None)
    report = export_requests(st, "root", 100, tmp_path / "r.jsonl", ["sha1"], None, NOW_TS)
    assert sorted(int(line["serial"], 16) for line in read_lines(tmp_path / "r.jsonl")) == [1, 2, 5]
    assert (report.served, report.sampled, report.requests, report.expired, report.negative) == (3, 3, 3, 2, 1)
    assert "3 of 3 serials of root" in report.summary()
    assert "left out 2 expired" in report.summary()


# ------------------------------------------------------------------------------ the requests


def test_every_request_matches_the_ca_and_the_serial(st: SignerStore, tmp_path: Path) -> None:
    serials = [*range(1, 40), 0x7F, 0x80, 0xFF, 0x8000, 2**159 - 1, 2**159 + 5, 0]
    record = make_ca(st, serials=serials)
    lines = export(st, tmp_path / "r.jsonl", 1000)
    assert len(lines) == 2 * len(serials)
    assert {int(line["serial"], 16) for line in lines} == set(serials)
    for line in lines:
        der = base64.b64decode(line["der_b64"], validate=True)
        info = parse_ocsp_request(der)
        assert not info.has_nonce
        (cert_id,) = info.cert_ids
        name_hash, key_hash = issuer_hashes(record.cert_der, line["hash"])
        assert cert_id.hash_algorithm == store.HASH_ALGORITHMS[line["hash"]][1]
        assert (cert_id.issuer_name_hash, cert_id.issuer_key_hash) == (name_hash, key_hash)
        assert cert_id.serial_number == store.serial_key(int(line["serial"], 16))
        assert line["serial"] == f"{int(line['serial'], 16):X}"
        # get_path: percent-encoded standard base64 that the edge decodes back to the same DER
        assert not set(line["get_path"]) & set("/+= ")
        assert decode_get_request(line["get_path"].encode(), 10000) == der
        assert get_path(der) == line["get_path"]
        # cryptography reads it back too
        parsed = ocsp.load_der_ocsp_request(der)
        assert parsed.serial_number == int(line["serial"], 16)


def test_request_equals_cryptographys_request_for_the_real_certificate(st: SignerStore, tmp_path: Path) -> None:
    """Independent of edge.source.issuer_hashes: the request built from the certificates themselves."""
    record = create_ca(st, "root", "ec-p256", 365, None, None, NOW)
    ca_cert = x509.load_der_x509_certificate(record.cert_der)
    leaf = build_leaf(
        ca_cert, load_ca_key(st.data_dir, record), 0xABCDEF, NOW - dt.timedelta(days=1), NOW + dt.timedelta(days=30)
    )
    assert add_certificates(st, record, [leaf], now=NOW_TS).added == 1
    lines = export(st, tmp_path / "r.jsonl", 1)
    assert [line["serial"] for line in lines] == ["ABCDEF", "ABCDEF"]
    for line, algorithm in zip(lines, (hashes.SHA1(), hashes.SHA256()), strict=True):
        expected = ocsp.OCSPRequestBuilder().add_certificate(leaf, ca_cert, algorithm).build()
        assert base64.b64decode(line["der_b64"]) == expected.public_bytes(serialization.Encoding.DER)


def test_hash_choice_and_defaults_follow_the_signer_config(data_dir: Path, tmp_path: Path) -> None:
    st = SignerStore(data_dir, Config(signer=SignerConfig(hash_algorithms=["sha256", "sha384"])))
    try:
        make_ca(st, serials=range(1, 4))
        assert {line["hash"] for line in export(st, tmp_path / "r.jsonl", 5)} == {"sha256", "sha384"}
        lines = export(st, tmp_path / "r.jsonl", 5, hash_names=["sha384", "sha384"])
        assert [line["hash"] for line in lines] == ["sha384"] * 3
        with pytest.raises(SignerError, match="does not sign sha1"):
            export(st, tmp_path / "r.jsonl", 5, hash_names=["sha1"])
    finally:
        st.close()


# ----------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ca_name": "nope"}, "unknown CA 'nope'"),
        ({"count": 0}, "--count must be at least 1"),
        ({"count": -3}, "--count must be at least 1"),
        ({"hash_names": ["md5"]}, "unknown hash algorithm 'md5'"),
        ({"out": Path("/nonexistent-dir/r.jsonl")}, "cannot write /nonexistent-dir/r.jsonl"),
    ],
)
def test_errors_are_signer_errors(st: SignerStore, tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    make_ca(st)
    args: dict[str, object] = {
        "ca_name": "root",
        "count": 5,
        "out": tmp_path / "r.jsonl",
        "hash_names": None,
        "seed": None,
        "now": NOW_TS,
    }
    args.update(kwargs)
    with pytest.raises(SignerError, match=message):
        export_requests(st, **args)  # type: ignore[arg-type]
    assert not (tmp_path / "r.jsonl").exists()


def test_output_is_a_directory(st: SignerStore, tmp_path: Path) -> None:
    make_ca(st)
    with pytest.raises(SignerError, match=r"cannot write .*: Is a directory"):
        export_requests(st, "root", 5, tmp_path, None, None, NOW_TS)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_output_not_writable(st: SignerStore, tmp_path: Path) -> None:
    make_ca(st)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(SignerError, match="Permission denied"):
        export_requests(st, "root", 5, locked / "r.jsonl", None, None, NOW_TS)


def test_empty_inventory(st: SignerStore, tmp_path: Path) -> None:
    create_ca(st, "root", "ec-p256", 365, None, None, NOW)
    out = tmp_path / "r.jsonl"
    with pytest.raises(SignerError, match="no certificates in its inventory"):
        export_requests(st, "root", 5, out, None, None, NOW_TS)
    assert not out.exists()  # no empty file left behind


def test_only_expired_entries(st: SignerStore, tmp_path: Path) -> None:
    make_ca(st, serials=[])
    record = st.issuer("root")
    write_entries(st, record, [Entry(9, CertRecord(NOW_TS - 10 * DAY))], ImportReport(), None)
    with pytest.raises(SignerError, match=r"no serials the edge answers for \(1 expired"):
        export_requests(st, "root", 5, tmp_path / "r.jsonl", None, None, NOW_TS)


# -------------------------------------------------------------------------------------- CLI


def test_cli(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    for key in [k for k in os.environ if k.startswith("PKI_EDGE_")]:
        monkeypatch.delenv(key)
    st = SignerStore(data_dir, Config())
    make_ca(st, serials=range(1, 31))
    st.close()
    out = tmp_path / "r.jsonl"
    base = ["--data", str(data_dir), "export-requests"]
    assert cli.main([*base, "root", "--count", "7", "--out", str(out), "--seed", "3", "--hash", "sha256"]) == 0
    assert capsys.readouterr().out == f"wrote 7 requests to {out}: 7 of 30 serials of root x sha256\n"
    assert len(read_lines(out)) == 7

    assert cli.main([*base, "root", "--count", "0", "--out", str(out)]) == 2
    assert capsys.readouterr().err == "pki-edge: error: --count must be at least 1, got 0\n"
    assert cli.main([*base, "nope", "--count", "1", "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("pki-edge: error: unknown CA 'nope' (known: root)")
    assert cli.main([*base, "root", "--count", "1", "--out", str(tmp_path / "no" / "r.jsonl")]) == 2
    missing = tmp_path / "no" / "r.jsonl"
    assert capsys.readouterr().err == f"pki-edge: error: cannot write {missing}: No such file or directory\n"
