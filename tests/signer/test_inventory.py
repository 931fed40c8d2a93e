"""signer.inventory: parsing helpers, openssl index.txt rows, and imports into a real store."""

from __future__ import annotations

import datetime as dt
import logging
import random
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from asn1crypto import core as asn1_core
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from contract import store
from contract.store import CertRecord
from signer import inventory, key_order
from signer.inventory import (
    ImportReport,
    add_certificates,
    import_crl,
    import_openssl_index,
    parse_openssl_index,
    parse_serial,
    parse_time,
    read_certificates,
    reason_code,
    revoke,
    status,
)
from signer.precompute import Precomputer
from signer.registry import create_ca, load_response_signer
from signer.state import SignerError, SignerStore, key_path
from tests.signer.conftest import PrivateKey, build_ca, build_leaf, pool_key

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
NOW_TS = int(NOW.timestamp())


def ts(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    return int(dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.UTC).timestamp())


def inv_key(issuer_number: int, serial: int) -> bytes:
    """Inventory key computed independently: u32 issuer number + minimal INTEGER content."""
    return struct.pack(">I", issuer_number) + asn1_core.Integer(serial).contents


# ---------------------------------------------------------------------------- parse_serial


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("01", 1),
        ("1", 1),
        ("00", 0),
        ("1A:2B", 0x1A2B),
        ("1a:2b", 0x1A2B),
        ("0x1a2b", 0x1A2B),
        ("0X1A2B", 0x1A2B),
        ("serial=1A2B", 0x1A2B),
        ("SERIAL=1A2B", 0x1A2B),
        ("  ab ", 0xAB),
        ("AB", 0xAB),
        ("ab", 0xAB),
        ("DEADBEEF", 0xDEADBEEF),
        ("00:ff", 0xFF),
        ("7F", 127),
        ("80", 128),
        ("01" + "00" * 19, 2**152),
        ("-1", -1),
        ("f" * 128, 16**128 - 1),
    ],
)
def test_parse_serial(text: str, expected: int) -> None:
    assert parse_serial(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "serial=", "0x", "xyz", "12g4", "1 2", "1A-2B", "0x-1", "f" * 129, "+1"])
def test_parse_serial_invalid(text: str) -> None:
    with pytest.raises(SignerError, match="invalid serial"):
        parse_serial(text)


# ---------------------------------------------------------------------------- parse_time


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-31T12:00:00Z", ts(2026, 1, 31, 12, 0, 0)),
        ("2026-01-31T12:00:00+00:00", ts(2026, 1, 31, 12, 0, 0)),
        ("2026-01-31T14:00:00+02:00", ts(2026, 1, 31, 12, 0, 0)),
        ("2026-01-31T12:00:00", ts(2026, 1, 31, 12, 0, 0)),  # naive: UTC
        ("2026-01-31 12:00:00", ts(2026, 1, 31, 12, 0, 0)),
        ("2026-01-31", ts(2026, 1, 31, 0, 0, 0)),
        ("  2026-01-31T12:00:00Z ", ts(2026, 1, 31, 12, 0, 0)),
        ("1700000000", 1700000000),
        ("0", 0),
        (" 1700000000\n", 1700000000),
    ],
)
def test_parse_time(text: str, expected: int) -> None:
    assert parse_time(text) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "2026-13-01", "2026-01-31T25:00:00Z", "12:00", "-5", "1.5e9"])
def test_parse_time_invalid(text: str) -> None:
    with pytest.raises(SignerError, match="invalid time"):
        parse_time(text)


# ---------------------------------------------------------------------------- reason_code


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("unspecified", 0),
        ("keyCompromise", 1),
        ("key_compromise", 1),
        ("KEY-COMPROMISE", 1),
        ("CACompromise", 2),
        ("cACompromise", 2),
        ("ca_compromise", 2),
        ("affiliationChanged", 3),
        ("superseded", 4),
        ("cessationOfOperation", 5),
        ("cessation_of_operation", 5),
        ("certificateHold", 6),
        ("removeFromCRL", 8),
        ("remove_from_crl", 8),
        ("privilegeWithdrawn", 9),
        ("aACompromise", 10),
        ("aa_compromise", 10),
    ],
)
def test_reason_code(text: str, expected: int) -> None:
    assert reason_code(text) == expected


def test_reason_code_matches_every_cryptography_reason_flag() -> None:
    """import_crl maps cryptography's ReasonFlags names through reason_code: all must be known."""
    codes = {
        x509.ReasonFlags.unspecified: 0,
        x509.ReasonFlags.key_compromise: 1,
        x509.ReasonFlags.ca_compromise: 2,
        x509.ReasonFlags.affiliation_changed: 3,
        x509.ReasonFlags.superseded: 4,
        x509.ReasonFlags.cessation_of_operation: 5,
        x509.ReasonFlags.certificate_hold: 6,
        x509.ReasonFlags.remove_from_crl: 8,
        x509.ReasonFlags.privilege_withdrawn: 9,
        x509.ReasonFlags.aa_compromise: 10,
    }
    for flag, code in codes.items():
        assert reason_code(flag.name) == code


@pytest.mark.parametrize("text", ["", "compromised", "7", "keyCompromise2", "hold"])
def test_reason_code_unknown(text: str) -> None:
    with pytest.raises(SignerError, match="unknown revocation reason"):
        reason_code(text)


# ---------------------------------------------------------------------------- parse_openssl_index

# Rows exactly as `openssl ca` (3.0) writes index.txt: tab-separated, 6 fields.
V_ROW = "V\t261229004234Z\t\t1004\tunknown\t/CN=e5"
R_REASON_ROW = "R\t261229004234Z\t261129004234Z,keyCompromise\t1000\tunknown\t/CN=e1"
R_PLAIN_ROW = "R\t261229004234Z\t261129004234Z\t1001\tunknown\t/CN=e2"
E_ROW = "E\t240101000000Z\t\t0A\tunknown\t/CN=old"
GENERALIZED_ROW = "V\t20510101000000Z\t\t1005\tunknown\t/O=Example/CN=far future"


def parse(lines: list[str]) -> tuple[list[inventory.Entry], ImportReport]:
    """Rows read now (revocations written a moment ago are not in the future: not NOW_TS, the import's)."""
    report = ImportReport()
    return list(parse_openssl_index(lines, report, int(dt.datetime.now(dt.UTC).timestamp()))), report


def test_parse_index_rows() -> None:
    entries, report = parse([V_ROW + "\n", R_REASON_ROW + "\n", R_PLAIN_ROW + "\r\n", E_ROW, GENERALIZED_ROW, "", "  "])
    assert report.rejected == {}
    assert [(e.serial, e.record) for e in entries] == [
        (0x1004, CertRecord(ts(2026, 12, 29, 0, 42, 34))),
        (0x1000, CertRecord(ts(2026, 12, 29, 0, 42, 34), ts(2026, 11, 29, 0, 42, 34), 1)),
        (0x1001, CertRecord(ts(2026, 12, 29, 0, 42, 34), ts(2026, 11, 29, 0, 42, 34), None)),
        (0x0A, CertRecord(ts(2024, 1, 1))),
        (0x1005, CertRecord(ts(2051, 1, 1))),
    ]


@pytest.mark.parametrize(
    ("expiry", "expected"),
    [
        ("491231235959Z", ts(2049, 12, 31, 23, 59, 59)),  # RFC 5280: YY < 50 is 20YY
        ("500101000000Z", ts(1950, 1, 1)),  # YY >= 50 is 19YY
        ("20500101000000Z", ts(2050, 1, 1)),
        ("19991231235959Z", ts(1999, 12, 31, 23, 59, 59)),
    ],
)
def test_parse_index_expiry_formats(expiry: str, expected: int) -> None:
    entries, report = parse([f"V\t{expiry}\t\t01\tunknown\t/CN=x"])
    assert report.rejected == {}
    assert entries[0].record.not_after == expected


def test_index_times_read_as_strptime_reads_them() -> None:
    """The slice reader against the strptime reading it replaced, over days, hours and both forms."""
    import datetime as dt

    rng = random.Random(5280)
    for _ in range(2000):
        when = dt.datetime(1950, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=rng.randrange(100 * 365 * 86400))
        generalized = when.strftime("%Y%m%d%H%M%S") + "Z"
        reference = int(dt.datetime.strptime(generalized[:-1], "%Y%m%d%H%M%S").replace(tzinfo=dt.UTC).timestamp())
        assert inventory._index_time(generalized) == reference
        if when.year < 2050:
            assert inventory._index_time(generalized[2:]) == reference  # UTCTime


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("V\t261229004234Z\t\t1004\tunknown", "malformed index line"),  # 5 fields
        ("V\t261229004234Z\t\t1004\tunknown\t/CN=a\textra", "malformed index line"),  # 7 fields
        ("V 261229004234Z  1004 unknown /CN=a", "malformed index line"),  # spaces, not tabs
        ("X\t261229004234Z\t\t1004\tunknown\t/CN=a", "malformed index line"),
        ("v\t261229004234Z\t\t1004\tunknown\t/CN=a", "malformed index line"),
        ("V\t2612290042Z\t\t1004\tunknown\t/CN=a", "malformed index line"),
        ("V\t261229004234\t\t1004\tunknown\t/CN=a", "malformed index line"),
        ("V\t261329004234Z\t\t1004\tunknown\t/CN=a", "malformed index line"),  # month 13
        ("V\t260230004234Z\t\t1004\tunknown\t/CN=a", "malformed index line"),  # February 30
        ("V\t261229244234Z\t\t1004\tunknown\t/CN=a", "malformed index line"),  # hour 24
        ("V\t261229004260Z\t\t1004\tunknown\t/CN=a", "malformed index line"),  # second 60
        ("V\t٢٦1229004234Z\t\t1004\tunknown\t/CN=a", "malformed index line"),  # non-ASCII digits
        ("V\t2612290042345\t\t1004\tunknown\t/CN=a", "malformed index line"),  # no Z
        ("V\t261229004234Z\t\tXYZ\tunknown\t/CN=a", "malformed index line"),
        ("V\t261229004234Z\t\t\tunknown\t/CN=a", "malformed index line"),  # empty serial
        ("R\t261229004234Z\t\t1004\tunknown\t/CN=a", "malformed revocation field"),  # R without a date
        ("R\t261229004234Z\tyesterday\t1004\tunknown\t/CN=a", "malformed revocation field"),
        ("R\t261229004234Z\t261129004234Z,bogusReason\t1004\tunknown\t/CN=a", "malformed revocation field"),
        ("V\t261229004234Z\t261129004234Z\t1004\tunknown\t/CN=a", "revocation field on a row not marked R"),
        (
            "E\t261229004234Z\t261129004234Z,keyCompromise\t1004\tunknown\t/CN=a",
            "revocation field on a row not marked R",
        ),
    ],
)
def test_parse_index_rejects(line: str, reason: str) -> None:
    entries, report = parse([V_ROW, line, R_REASON_ROW])
    assert [e.serial for e in entries] == [0x1004, 0x1000]
    assert report.rejected == {reason: 1}


def test_parse_index_counts_rejections_by_reason() -> None:
    lines = [
        "garbage",
        "also garbage",
        "R\t261229004234Z\tnot-a-time\t01\tunknown\t/CN=a",
        V_ROW,
    ]
    entries, report = parse(lines)
    assert len(entries) == 1
    assert report.rejected == {"malformed index line": 2, "malformed revocation field": 1}
    assert "rejected 3" in report.summary()


# `openssl ca -revoke -crl_compromise TIME` and `-crl_hold OID` write a third part in the revocation
# field (openssl apps/ca.c make_revocation_str; read back by unpack_revinfo).
def test_parse_index_key_compromise_time_row() -> None:
    entries, report = parse(["R\t261229004234Z\t261129004234Z,keyTime,20240101000000Z\t1002\tunknown\t/CN=e3"])
    assert report.rejected == {}
    assert entries == [inventory.Entry(0x1002, CertRecord(ts(2026, 12, 29, 0, 42, 34), ts(2026, 11, 29, 0, 42, 34), 1))]


def test_parse_index_hold_instruction_row() -> None:
    entries, report = parse(
        ["R\t261229004234Z\t261129004234Z,holdInstruction,holdInstructionReject\t1003\tunknown\t/CN=e4"]
    )
    assert report.rejected == {}
    assert entries == [inventory.Entry(0x1003, CertRecord(ts(2026, 12, 29, 0, 42, 34), ts(2026, 11, 29, 0, 42, 34), 6))]


def test_parse_index_ca_compromise_time_row() -> None:
    entries, report = parse(["R\t261229004234Z\t261129004234Z,CAkeyTime,20240101000000Z\t1006\tunknown\t/CN=e6"])
    assert report.rejected == {}
    assert entries == [inventory.Entry(0x1006, CertRecord(ts(2026, 12, 29, 0, 42, 34), ts(2026, 11, 29, 0, 42, 34), 2))]


OPENSSL = shutil.which("openssl")


@pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")
def test_parse_index_written_by_openssl_ca(tmp_path: Path) -> None:
    """A real index.txt from `openssl ca`: issue three, revoke two (with and without a reason)."""
    assert OPENSSL is not None
    (tmp_path / "newcerts").mkdir()
    (tmp_path / "index.txt").write_text("")
    (tmp_path / "serial").write_text("1000\n")
    (tmp_path / "ca.cnf").write_text(
        "[ca]\ndefault_ca = d\n[d]\ndir = .\ndatabase = ./index.txt\nnew_certs_dir = ./newcerts\n"
        "serial = ./serial\ncertificate = ./ca.pem\nprivate_key = ./ca.key\ndefault_md = sha256\n"
        "policy = p\ndefault_days = 30\nunique_subject = no\n[p]\ncommonName = supplied\n"
    )

    def run(*args: str) -> None:
        subprocess.run([OPENSSL, *args], cwd=tmp_path, check=True, capture_output=True, timeout=30)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=Index CA", "-days", "30")
    for i in range(3):
        run("req", *ec, "-keyout", f"e{i}.key", "-out", f"e{i}.csr", "-subj", f"/CN=e{i}")
        run("ca", "-batch", "-config", "ca.cnf", "-in", f"e{i}.csr", "-out", f"e{i}.pem")
    before = int(dt.datetime.now(dt.UTC).timestamp())
    run("ca", "-config", "ca.cnf", "-revoke", "e0.pem", "-crl_reason", "superseded")
    run("ca", "-config", "ca.cnf", "-revoke", "e1.pem")
    after = int(dt.datetime.now(dt.UTC).timestamp())

    entries, report = parse((tmp_path / "index.txt").read_text().splitlines(keepends=True))
    assert report.rejected == {}
    certs = [x509.load_pem_x509_certificate((tmp_path / f"e{i}.pem").read_bytes()) for i in range(3)]
    assert [e.serial for e in entries] == [c.serial_number for c in certs] == [0x1000, 0x1001, 0x1002]
    for entry, cert in zip(entries, certs, strict=True):
        assert entry.record.not_after == int(cert.not_valid_after_utc.timestamp())
        assert entry.record.cert_der is None
    revoked_0, revoked_1, valid = (e.record for e in entries)
    assert revoked_0.revoked_at is not None and before <= revoked_0.revoked_at <= after
    assert revoked_0.reason == 4
    assert revoked_1.revoked_at is not None and before <= revoked_1.revoked_at <= after
    assert revoked_1.reason is None
    assert valid.revoked_at is None and valid.reason is None


# ---------------------------------------------------------------------------- with a store


class Ca:
    def __init__(self, st: SignerStore, name_: str) -> None:
        self.record = create_ca(st, name_, "ec-p256", 3650, None, None, NOW)
        self.cert = x509.load_der_x509_certificate(self.record.cert_der)
        loaded = serialization.load_pem_private_key(key_path(st.data_dir, name_).read_bytes(), None)
        self.key: PrivateKey = loaded  # type: ignore[assignment]

    def leaf(self, serial: int, days: int = 90) -> x509.Certificate:
        return build_leaf(self.cert, self.key, serial, NOW - dt.timedelta(days=1), NOW + dt.timedelta(days=days))


@pytest.fixture
def ca(st: SignerStore) -> Ca:
    return Ca(st, "ca1")


def pending(st: SignerStore) -> list[bytes]:
    with st.env.begin(db=st.pending) as txn:
        return [k for k, _ in txn.cursor()]


def inventory_db(st: SignerStore) -> dict[bytes, CertRecord]:
    with st.env.begin(db=st.inventory) as txn:
        return {k: store.CERT_DECODER.decode(v) for k, v in txn.cursor()}


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def test_add_certificates(st: SignerStore, ca: Ca) -> None:
    serials = [1, 127, 128, 0xDEADBEEF, 2**159 - 1]
    certs = [ca.leaf(s, days=30 + i) for i, s in enumerate(serials)]
    report = add_certificates(st, ca.record, certs, now=NOW_TS)
    assert (report.added, report.updated, report.unchanged, report.rejected) == (5, 0, 0, {})
    inv = inventory_db(st)
    assert set(inv) == {inv_key(ca.record.number, s) for s in serials}
    for cert in certs:
        record = inv[inv_key(ca.record.number, cert.serial_number)]
        assert record == CertRecord(int(cert.not_valid_after_utc.timestamp()), None, None, der(cert))
    assert sorted(pending(st)) == sorted(bytes((store.PRIORITY_NEW,)) + inv_key(ca.record.number, s) for s in serials)


def test_add_certificates_rejects_other_cas(st: SignerStore, ca: Ca) -> None:
    other_key = pool_key("ec-p256", 5)
    start, end = NOW - dt.timedelta(days=1), NOW + dt.timedelta(days=365)
    other_ca = build_ca(other_key, "Other CA", start, end)
    # Same subject as ca1 but another key: only the signature check can tell.
    impostor = x509.CertificateBuilder(
        issuer_name=ca.cert.subject,
        subject_name=ca.cert.subject,
        public_key=other_key.public_key(),
        serial_number=7,
        not_valid_before=start,
        not_valid_after=end,
    ).sign(other_key, hashes.SHA256())
    certs = [
        ca.leaf(10),
        build_leaf(other_ca, other_key, 11, start, end),
        build_leaf(impostor, other_key, 12, start, end),
        ca.leaf(13),
    ]
    report = add_certificates(st, ca.record, certs, now=NOW_TS)
    assert report.added == 2
    assert report.rejected == {
        "issuer name differs from the CA's subject": 1,
        "signature does not verify with the CA's key": 1,
    }
    assert set(inventory_db(st)) == {inv_key(ca.record.number, 10), inv_key(ca.record.number, 13)}
    assert "rejected 2" in report.summary()


def test_reimport_is_idempotent(st: SignerStore, ca: Ca) -> None:
    certs = [ca.leaf(s) for s in range(1, 21)]
    first = add_certificates(st, ca.record, certs, now=NOW_TS)
    assert (first.added, first.updated, first.unchanged) == (20, 0, 0)
    pending_after_first = pending(st)
    inventory_after_first = inventory_db(st)
    second = add_certificates(st, ca.record, certs, now=NOW_TS)
    assert (second.added, second.updated, second.unchanged, second.rejected) == (0, 0, 20, {})
    assert pending(st) == pending_after_first
    assert inventory_db(st) == inventory_after_first


def test_index_reimport_is_idempotent(st: SignerStore, ca: Ca, tmp_path: Path) -> None:
    index = tmp_path / "index.txt"
    index.write_text("\n".join([V_ROW, R_REASON_ROW, R_PLAIN_ROW, E_ROW, "junk"]) + "\n")
    first = import_openssl_index(st, ca.record, index, None, NOW_TS)
    assert (first.added, first.updated, first.unchanged) == (4, 0, 0)
    assert first.rejected == {"malformed index line": 1}
    n = ca.record.number
    assert sorted(pending(st)) == sorted(
        [
            bytes((store.PRIORITY_NEW,)) + inv_key(n, 0x1004),
            bytes((store.PRIORITY_REVOCATION,)) + inv_key(n, 0x1000),
            bytes((store.PRIORITY_REVOCATION,)) + inv_key(n, 0x1001),
            bytes((store.PRIORITY_NEW,)) + inv_key(n, 0x0A),
        ]
    )
    snapshot = pending(st)
    second = import_openssl_index(st, ca.record, index, None, NOW_TS)
    assert (second.added, second.updated, second.unchanged) == (0, 0, 4)
    assert pending(st) == snapshot


def test_revocation_is_sticky_across_reimport(st: SignerStore, ca: Ca, tmp_path: Path) -> None:
    index = tmp_path / "index.txt"
    index.write_text(R_REASON_ROW + "\n")
    import_openssl_index(st, ca.record, index, None, NOW_TS)
    n = ca.record.number
    revoked = CertRecord(ts(2026, 12, 29, 0, 42, 34), ts(2026, 11, 29, 0, 42, 34), 1)
    assert inventory_db(st)[inv_key(n, 0x1000)] == revoked
    # The same serial as a V row (e.g. an older index.txt): stays revoked, nothing to re-sign.
    index.write_text(R_REASON_ROW.replace("R\t", "V\t", 1).replace("\t261129004234Z,keyCompromise\t", "\t\t") + "\n")
    before = pending(st)
    report = import_openssl_index(st, ca.record, index, None, NOW_TS)
    assert (report.added, report.updated, report.unchanged, report.rejected) == (0, 0, 1, {})
    assert inventory_db(st)[inv_key(n, 0x1000)] == revoked
    assert pending(st) == before
    # A revoked serial whose certificate is added later keeps its revocation (and gains cert_der).
    cert = ca.leaf(0x1000)
    report = add_certificates(st, ca.record, [cert], now=NOW_TS)
    assert report.updated == 1
    record = inventory_db(st)[inv_key(n, 0x1000)]
    assert (record.revoked_at, record.reason, record.cert_der) == (revoked.revoked_at, 1, der(cert))


def test_an_imported_revocation_follows_revokes_rules(st: SignerStore, ca: Ca, tmp_path: Path) -> None:
    """The same revocation changes nothing; another time or reason is refused (kept as recorded, counted
    rejected, not "unchanged"); keyCompromise at the same time replaces the reason and is re-signed first."""
    index = tmp_path / "index.txt"
    index.write_text(R_PLAIN_ROW.replace("261129004234Z", "261129004234Z,superseded") + "\n")
    import_openssl_index(st, ca.record, index, None, NOW_TS)
    key = inv_key(ca.record.number, 0x1001)
    with st.env.begin(write=True) as txn:
        txn.delete(bytes((store.PRIORITY_REVOCATION,)) + key, db=st.pending)  # as if signed
    at = ts(2026, 11, 29, 0, 42, 34)

    def again(revocation: str) -> tuple[tuple[int, int, int, dict[str, int]], tuple[int | None, int | None]]:
        index.write_text(R_PLAIN_ROW.replace("261129004234Z", revocation) + "\n")
        report = import_openssl_index(st, ca.record, index, None, NOW_TS)
        record = inventory_db(st)[key]
        return (report.added, report.updated, report.unchanged, report.rejected), (record.revoked_at, record.reason)

    conflict = {inventory.CONFLICTING_REVOCATION: 1}
    assert again("261129004234Z,superseded") == ((0, 0, 1, {}), (at, 4))
    assert again("261129004234Z") == ((0, 0, 1, {}), (at, 4))  # no reason given: the same revocation
    assert again("261129004235Z,superseded") == ((0, 0, 0, conflict), (at, 4))  # moved: refused
    assert again("261129004234Z,affiliationChanged") == ((0, 0, 0, conflict), (at, 4))
    assert pending(st) == []
    assert again("261129004234Z,keyCompromise") == ((0, 1, 0, {}), (at, 1))
    assert pending(st) == [bytes((store.PRIORITY_REVOCATION,)) + key]  # signed ahead of new serials
    assert again("261129004234Z,superseded") == ((0, 0, 0, conflict), (at, 1))  # never back


def test_an_index_revocation_in_the_future_or_removed_from_crl_is_rejected(
    st: SignerStore, ca: Ca, tmp_path: Path
) -> None:
    """As `revoke` refuses them: a revocation is recorded once it has happened (a time ahead would be
    signed as it is), and removeFromCRL (RFC 5280 §5.3.1) is no revocation reason."""
    ahead = dt.datetime.fromtimestamp(NOW_TS + 3600, dt.UTC).strftime("%y%m%d%H%M%SZ")
    skewed = dt.datetime.fromtimestamp(NOW_TS + 30, dt.UTC).strftime("%y%m%d%H%M%SZ")
    entries, report = parse(
        [
            f"R\t301231235959Z\t{ahead},superseded\t2001\tunknown\t/CN=later",
            f"R\t301231235959Z\t{skewed}\t2002\tunknown\t/CN=skew",  # within a minute of clock skew
            "R\t301231235959Z\t261129004234Z,removeFromCRL\t2003\tunknown\t/CN=removed",
            "R\t301231235959Z\t19491231235959Z\t2004\tunknown\t/CN=early",
        ]
    )
    assert [entry.serial for entry in entries] == [0x2002]
    assert report.rejected == {
        "revocation time in the future": 1,
        "removeFromCRL revocation (not a revocation reason)": 1,
        "revocation time before 1950": 1,
    }


def test_a_crl_entry_revoked_in_the_future_is_rejected(st: SignerStore, ca: Ca, tmp_path: Path) -> None:
    add_certificates(st, ca.record, [ca.leaf(s) for s in (1, 2)], now=NOW_TS)
    crl = build_crl(
        ca.cert,
        ca.key,
        [(1, NOW_TS + 86400, x509.ReasonFlags.superseded), (2, NOW_TS - 60, x509.ReasonFlags.superseded)],
    )
    path = tmp_path / "ahead.crl"
    path.write_bytes(crl.public_bytes(serialization.Encoding.DER))
    report = import_crl(st, ca.record, path, None, NOW_TS)
    assert (report.updated, report.rejected) == (1, {"revocation time in the future": 1})
    assert inventory_db(st)[inv_key(ca.record.number, 1)].revoked_at is None


def test_index_row_does_not_override_a_certificates_own_not_after(st: SignerStore, ca: Ca, tmp_path: Path) -> None:
    cert = ca.leaf(0x1001)
    add_certificates(st, ca.record, [cert], now=NOW_TS)
    own = int(cert.not_valid_after_utc.timestamp())
    index = tmp_path / "index.txt"
    index.write_text("V\t301231235959Z\t\t1001\tunknown\t/CN=x\n")
    report = import_openssl_index(st, ca.record, index, None, NOW_TS)
    assert (report.added, report.updated, report.unchanged) == (0, 0, 1)
    assert inventory_db(st)[inv_key(ca.record.number, 0x1001)].not_after == own
    # An entry known only from an index row takes the next row's notAfter (the CA's database is the fact).
    index.write_text("V\t301231235959Z\t\t1002\tunknown\t/CN=y\n")
    import_openssl_index(st, ca.record, index, None, NOW_TS)
    index.write_text("V\t311231235959Z\t\t1002\tunknown\t/CN=y\n")
    assert import_openssl_index(st, ca.record, index, None, NOW_TS).updated == 1
    assert inventory_db(st)[inv_key(ca.record.number, 0x1002)].not_after == ts(2031, 12, 31, 23, 59, 59)


def test_index_in_random_order_imported_through_spilled_runs(
    st: SignerStore, ca: Ca, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Runs of ~40 rows: 500 rows are sorted through a dozen spilled runs and merged.
    spill = tmp_path / "spill"
    spill.mkdir()
    monkeypatch.setattr(inventory, "BATCH", 64)
    spilled: list[int] = []
    sort = key_order.in_key_order

    def small_runs(pairs: Iterator[key_order.Pair]) -> Iterator[key_order.Pair]:
        result = sort(pairs, run_bytes=40 * 150, tmp_dir=spill)
        first = next(result)
        spilled.append(len(list(spill.glob("*/run-*"))))
        yield first
        yield from result

    monkeypatch.setattr(key_order, "in_key_order", small_runs)
    rng = random.Random(5019)
    serials = [rng.getrandbits(64) | 1 for _ in range(500)]
    rows = [f"V\t301231235959Z\t\t{s:X}\tunknown\t/CN=s\n" for s in serials]
    # The first serial again at the end, later expiry and revoked: the later row is applied last.
    rows.append(f"R\t401231235959Z\t251231235959Z,superseded\t{serials[0]:X}\tunknown\t/CN=s\n")
    index = tmp_path / "index.txt"
    index.write_text("".join(rows))
    report = import_openssl_index(st, ca.record, index, None, NOW_TS)
    assert (report.added, report.updated, report.unchanged) == (500, 1, 0)
    db = inventory_db(st)
    assert set(db) == {inv_key(ca.record.number, s) for s in serials}
    later = CertRecord(ts(2040, 12, 31, 23, 59, 59), ts(2025, 12, 31, 23, 59, 59), 4)
    assert db[inv_key(ca.record.number, serials[0])] == later
    assert db[inv_key(ca.record.number, serials[1])] == CertRecord(ts(2030, 12, 31, 23, 59, 59))
    assert spilled == [12]
    assert list(spill.iterdir()) == []


def test_index_import_progress_in_batches(
    st: SignerStore, ca: Ca, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inventory, "BATCH", 3)
    index = tmp_path / "index.txt"
    index.write_text("".join(f"V\t301231235959Z\t\t{s:04X}\tunknown\t/CN=s{s}\n" for s in range(1, 8)))
    seen: list[tuple[str, int]] = []
    report = import_openssl_index(st, ca.record, index, lambda what, done: seen.append((what, done)), NOW_TS)
    assert report.added == 7
    assert seen == [("read", 3), ("read", 6), ("written", 3), ("written", 6), ("written", 7)]
    assert len(inventory_db(st)) == 7


def test_revoke(st: SignerStore, ca: Ca) -> None:
    cert = ca.leaf(0x42)
    add_certificates(st, ca.record, [cert], now=NOW_TS)
    n = ca.record.number
    when = NOW_TS - 100
    record, change = revoke(st, ca.record, 0x42, 1, when)
    assert change == "revoked"
    assert record == CertRecord(int(cert.not_valid_after_utc.timestamp()), when, 1, der(cert))
    assert inventory_db(st)[inv_key(n, 0x42)] == record
    assert bytes((store.PRIORITY_REVOCATION,)) + inv_key(n, 0x42) in pending(st)
    # A revocation sorts ahead of every "new" entry in the pending database.
    assert pending(st)[0] == bytes((store.PRIORITY_REVOCATION,)) + inv_key(n, 0x42)


def test_revoking_again_changes_nothing_but_a_reason_to_key_compromise(st: SignerStore, ca: Ca) -> None:
    add_certificates(st, ca.record, [ca.leaf(0x43)], now=NOW_TS)
    key = inv_key(ca.record.number, 0x43)
    first = NOW_TS - 100
    assert revoke(st, ca.record, 0x43, 4, first).change == "revoked"  # superseded
    with st.env.begin(write=True) as txn:
        txn.drop(st.pending, delete=False)
    kept = inventory_db(st)[key]
    # As asked before, or without a time or reason: nothing changes, nothing is re-signed.
    for reason, when, given in ((4, first, True), (None, NOW_TS, False), (4, NOW_TS, False), (None, first, True)):
        assert revoke(st, ca.record, 0x43, reason, when, when_given=given) == (kept, "already")
    assert pending(st) == []
    # Another time or another reason: refused, the first revocation stands.
    for reason, when, given in ((4, first - 1, True), (0, NOW_TS, False), (1, first + 5, True)):
        with pytest.raises(SignerError, match="a revocation is not changed, except its reason to keyCompromise"):
            revoke(st, ca.record, 0x43, reason, when, when_given=given)
    assert inventory_db(st)[key] == kept and pending(st) == []
    # keyCompromise replaces the reason, the time kept, and the serial is re-signed first.
    record, change = revoke(st, ca.record, 0x43, 1, NOW_TS, when_given=False)
    assert change == "reason" and record == msgspec.structs.replace(kept, reason=1) == inventory_db(st)[key]
    assert pending(st) == [bytes((store.PRIORITY_REVOCATION,)) + key]
    assert revoke(st, ca.record, 0x43, 1, first).change == "already"
    with pytest.raises(SignerError, match=r"revoked at .* \(reason keyCompromise\)"):
        revoke(st, ca.record, 0x43, 4, first)


def test_revoke_unknown_serial(st: SignerStore, ca: Ca) -> None:
    add_certificates(st, ca.record, [ca.leaf(1)], now=NOW_TS)
    before = pending(st)
    with pytest.raises(SignerError, match="not in the inventory"):
        revoke(st, ca.record, 2, None, NOW_TS)
    assert pending(st) == before
    assert set(inventory_db(st)) == {inv_key(ca.record.number, 1)}


def test_revoke_is_per_issuer(st: SignerStore, ca: Ca) -> None:
    other = Ca(st, "ca2")
    add_certificates(st, ca.record, [ca.leaf(5)], now=NOW_TS)
    with pytest.raises(SignerError, match="not in the inventory"):
        revoke(st, other.record, 5, None, NOW_TS)


def build_crl(
    issuer: x509.Certificate, key: PrivateKey, revoked: list[tuple[int, int, x509.ReasonFlags | None]]
) -> x509.CertificateRevocationList:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(NOW - dt.timedelta(hours=1))
        .next_update(NOW + dt.timedelta(days=1))
    )
    for serial, when, reason in revoked:
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(dt.datetime.fromtimestamp(when, dt.UTC))
        )
        if reason is not None:
            entry = entry.add_extension(x509.CRLReason(reason), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(key, hashes.SHA256())


@pytest.mark.parametrize("encoding", [serialization.Encoding.DER, serialization.Encoding.PEM])
def test_import_crl(st: SignerStore, ca: Ca, tmp_path: Path, encoding: serialization.Encoding) -> None:
    add_certificates(st, ca.record, [ca.leaf(s) for s in (1, 2, 3, 4)], now=NOW_TS)
    n = ca.record.number
    t1, t2, t3 = ts(2026, 1, 2, 3, 4, 5), ts(2026, 2, 3, 4, 5, 6), ts(2026, 3, 1)
    crl = build_crl(
        ca.cert,
        ca.key,
        [
            (1, t1, x509.ReasonFlags.key_compromise),
            (2, t2, None),
            (3, t3, x509.ReasonFlags.certificate_hold),
            (99, t1, x509.ReasonFlags.superseded),  # not in the inventory
        ],
    )
    path = tmp_path / "ca.crl"
    path.write_bytes(crl.public_bytes(encoding))
    with st.env.begin(write=True) as txn:  # start from an empty queue to see exactly what the import adds
        for key in pending(st):
            txn.delete(key, db=st.pending)
    report = import_crl(st, ca.record, path, None, NOW_TS)
    assert (report.added, report.updated, report.unchanged) == (0, 3, 0)
    assert report.rejected == {"serial not in the inventory (import its certificate or index first)": 1}
    inv = inventory_db(st)
    assert (inv[inv_key(n, 1)].revoked_at, inv[inv_key(n, 1)].reason) == (t1, 1)
    assert (inv[inv_key(n, 2)].revoked_at, inv[inv_key(n, 2)].reason) == (t2, None)
    assert (inv[inv_key(n, 3)].revoked_at, inv[inv_key(n, 3)].reason) == (t3, 6)
    assert (inv[inv_key(n, 4)].revoked_at, inv[inv_key(n, 4)].reason) == (None, None)
    assert inv[inv_key(n, 1)].cert_der is not None  # the rest of the record is kept
    assert inv_key(n, 99) not in inv
    assert sorted(pending(st)) == sorted(bytes((store.PRIORITY_REVOCATION,)) + inv_key(n, s) for s in (1, 2, 3))
    # Importing the same CRL again changes nothing.
    again = import_crl(st, ca.record, path, None, NOW_TS)
    assert (again.added, again.updated, again.unchanged) == (0, 0, 3)


def test_a_delta_crls_remove_from_crl_entry_revokes_nothing(st: SignerStore, ca: Ca, tmp_path: Path) -> None:
    """removeFromCRL (RFC 5280 §5.3.1) takes a certificate off a delta CRL: revocation is sticky, so
    reading it as a revocation could never be undone."""
    add_certificates(st, ca.record, [ca.leaf(s) for s in (1, 2)], now=NOW_TS)
    crl = build_crl(
        ca.cert, ca.key, [(1, NOW_TS, x509.ReasonFlags.remove_from_crl), (2, NOW_TS, x509.ReasonFlags.superseded)]
    )
    path = tmp_path / "delta.crl"
    path.write_bytes(crl.public_bytes(serialization.Encoding.DER))
    report = import_crl(st, ca.record, path, None, NOW_TS)
    assert (report.updated, report.rejected) == (1, {"removeFromCRL entry (not a revocation)": 1})
    inv = inventory_db(st)
    assert inv[inv_key(ca.record.number, 1)].revoked_at is None
    assert inv[inv_key(ca.record.number, 2)].reason == 4


def test_a_bundle_with_an_unreadable_block_keeps_the_others_and_says_so(
    st: SignerStore, ca: Ca, tmp_path: Path
) -> None:
    good = [c.public_bytes(serialization.Encoding.PEM) for c in (ca.leaf(11), ca.leaf(12))]
    broken = b"-----BEGIN CERTIFICATE-----\nMIIBroken==\n-----END CERTIFICATE-----\n"
    (tmp_path / "bundle.pem").write_bytes(good[0] + broken + good[1] + b"-----BEGIN CERTIFICATE-----\nMIIB")
    two_der = ca.leaf(13).public_bytes(serialization.Encoding.DER) + ca.leaf(14).public_bytes(
        serialization.Encoding.DER
    )
    (tmp_path / "two.der").write_bytes(two_der)
    report = ImportReport()
    certs = read_certificates([tmp_path / "bundle.pem", tmp_path / "two.der"], report)
    report = add_certificates(st, ca.record, certs, NOW_TS, None, report)
    assert report.added == 2
    assert report.rejected == {"unreadable PEM certificate block": 2, "not a certificate file": 1}
    assert "rejected 3" in report.summary()


def test_import_crl_signed_by_another_key(st: SignerStore, ca: Ca, tmp_path: Path) -> None:
    add_certificates(st, ca.record, [ca.leaf(1)], now=NOW_TS)
    other_key = pool_key("ec-p256", 6)
    # Same issuer name, wrong key.
    forged = build_crl(ca.cert, other_key, [(1, NOW_TS, x509.ReasonFlags.key_compromise)])
    path = tmp_path / "forged.crl"
    path.write_bytes(forged.public_bytes(serialization.Encoding.DER))
    with pytest.raises(SignerError, match="not signed by CA 'ca1'"):
        import_crl(st, ca.record, path, None, NOW_TS)
    # Another CA's CRL (other name, its own key).
    other = build_ca(other_key, "Other", NOW - dt.timedelta(days=1), NOW + dt.timedelta(days=1))
    path.write_bytes(build_crl(other, other_key, [(1, NOW_TS, None)]).public_bytes(serialization.Encoding.PEM))
    with pytest.raises(SignerError, match="not signed by CA 'ca1'"):
        import_crl(st, ca.record, path, None, NOW_TS)
    assert inventory_db(st)[inv_key(ca.record.number, 1)].revoked_at is None


def test_import_crl_not_a_crl(st: SignerStore, ca: Ca, tmp_path: Path) -> None:
    path = tmp_path / "junk.crl"
    path.write_bytes(b"\x30\x03\x02\x01\x01")
    with pytest.raises(SignerError, match="not a CRL"):
        import_crl(st, ca.record, path, None, NOW_TS)
    path.write_bytes(b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n")
    with pytest.raises(SignerError, match="not a CRL"):
        import_crl(st, ca.record, path, None, NOW_TS)


def test_status(st: SignerStore, ca: Ca) -> None:
    cert = ca.leaf(0x77)
    add_certificates(st, ca.record, [cert], now=NOW_TS)
    record, responses, is_pending = status(st, ca.record, 0x77)
    assert record == CertRecord(int(cert.not_valid_after_utc.timestamp()), None, None, der(cert))
    assert responses == []
    assert is_pending is True
    with pytest.raises(SignerError, match="not in the inventory"):
        status(st, ca.record, 0x78)

    precomputer = Precomputer(
        st,
        st.config.signer,
        lambda r: load_response_signer(st.data_dir, r),
        _FixedClock(NOW_TS),  # type: ignore[arg-type]
        logging.getLogger("test"),
        random.Random(1),
    )
    precomputer.reload_issuers()
    while precomputer.run_batch():
        pass
    record, responses, is_pending = status(st, ca.record, 0x77)
    assert is_pending is False
    assert [r.hash_algorithm for r in responses] == ["sha1", "sha256"]
    assert all(r.this_update == NOW_TS - 3600 and not r.revoked for r in responses)

    revoke(st, ca.record, 0x77, 4, NOW_TS)
    record, responses, is_pending = status(st, ca.record, 0x77)
    assert (record.revoked_at, record.reason, is_pending) == (NOW_TS, 4, True)
    assert not any(r.revoked for r in responses)  # not re-signed yet


class _FixedClock:
    def __init__(self, now: int) -> None:
        self._now = now

    def now(self) -> int:
        return self._now

    def monotonic(self) -> float:
        return 0.0


def test_a_ca_revoked_in_its_parent_and_the_cas_under_it_are_known_revoked(st: SignerStore, ca: Ca) -> None:
    sub = create_ca(st, "sub", "ec-p256", 365, "ca1", None, NOW)
    subsub = create_ca(st, "subsub", "ec-p256", 30, "sub", None, NOW)
    other = create_ca(st, "other", "ec-p256", 365, None, None, NOW)
    assert [inventory.revoked_by(st, r) for r in (ca.record, sub, subsub, other)] == [None] * 4
    sub_serial = x509.load_der_x509_certificate(sub.cert_der).serial_number
    revoke(st, ca.record, sub_serial, 2, NOW_TS)  # cACompromise
    assert [getattr(inventory.revoked_by(st, r), "name", None) for r in (ca.record, sub, subsub, other)] == [
        None,
        "ca1",
        "ca1",  # an ancestor revoked: the chain is
        None,
    ]
