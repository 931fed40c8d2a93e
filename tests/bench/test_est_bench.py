"""The EST stage (bench/est.py, bench/est_load.py): its pure parts, and one tiny real run.

No test here asserts a speed: the functional test checks that enrollments succeed and that the
answers are valid certificates, on a real `pki-edge up`.
"""

from __future__ import annotations

import base64
import datetime as dt
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7
from cryptography.x509.oid import NameOID

from bench import est, est_load, report, run
from bench.dataset import run_cli
from contract.config import CAProfile
from signer import enroll

# ------------------------------------------------------------------------------------- load generator


def test_enroll_request_is_a_complete_http_post() -> None:
    der = bytes(range(256)) * 2
    raw = est_load.enroll_request("est-ec", der, "127.0.0.1:8443")
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /.well-known/est/est-ec/simpleenroll HTTP/1.1"
    assert "Host: 127.0.0.1:8443" in lines
    assert "Content-Type: application/pkcs10" in lines
    assert f"Content-Length: {len(body)}" in lines
    assert all(len(line) <= 64 for line in body.decode().splitlines())
    assert base64.b64decode(body) == der


def test_parse_head() -> None:
    status, headers = est_load.parse_head(
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\ncontent-length: 12\r\nX-Odd:  spaced \r\n"
    )
    assert status == 503
    assert headers == {"retry-after": "5", "content-length": "12", "x-odd": "spaced"}
    assert est_load.parse_head(b"HTTP/1.0 200 OK")[0] == 200
    for bad in (b"SSH-2.0-OpenSSH", b"HTTP/1.1 abc Nope", b"HTTP/1.1 200 OK\r\nno colon here"):
        with pytest.raises(est_load.ProtocolError):
            est_load.parse_head(bad)


def test_retry_delay_honours_retry_after_with_jitter_and_a_cap() -> None:
    rng = random.Random(3)
    delays = [est_load.retry_delay({"retry-after": "4"}, 5.0, rng) for _ in range(200)]
    assert all(2.0 <= d <= 4.0 for d in delays) and max(delays) - min(delays) > 1.0
    assert all(est_load.retry_delay({"retry-after": "60"}, 5.0, rng) <= 5.0 for _ in range(50))
    assert 0.5 <= est_load.retry_delay({}, 5.0, rng) <= 1.0  # absent: 1 s
    assert 0.5 <= est_load.retry_delay({"retry-after": "Wed, 21 Oct 2015"}, 5.0, rng) <= 1.0


def test_latency_summary_is_nearest_rank_in_ms() -> None:
    summary = est_load.latency_summary([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert summary["p50"] == pytest.approx(50.0)
    assert summary["p99"] == pytest.approx(99.0)
    assert summary["p99.9"] == pytest.approx(100.0)
    assert summary["max"] == pytest.approx(100.0)
    assert summary["mean"] == pytest.approx(50.5)
    assert est_load.latency_summary([]) == {}


def test_tally_counts_503_apart_and_keeps_a_bounded_sample() -> None:
    tally = est_load.Tally(keep=3, rng=random.Random(1))
    for n in range(10):
        tally.answer(200, 0.010 + n / 1000, n, b"MIIB")
    tally.answer(503, 0.001, 99, b"busy\n")
    tally.answer(400, 0.001, 98, b"bad\n")
    tally.errors["closed"] += 1
    out = tally.as_dict()
    assert out["ok"] == 10 and out["busy"] == 1
    assert out["statuses"] == {"200": 10, "400": 1, "503": 1}
    assert out["errors"] == {"closed": 1}
    assert len(tally.latencies_s) == 10  # refusals have no enrollment latency
    assert len(tally.samples) == 3 and all(index < 10 for index, _ in tally.samples)
    assert out["latency_ms"]["p50"] == pytest.approx(14.0)


# --------------------------------------------------------------------------------------------- stage


def test_settings_by_mode() -> None:
    quick, full = est.settings("quick", 5), est.settings("full", 10, wrk_connections=16)
    assert quick.connections == full.connections == 200
    assert quick.storm_seconds == 5 + est.STORM_MARGIN_S and quick.rounds == 1
    assert full.rounds > 1 and full.csrs > quick.csrs and full.wrk_connections == 16


def test_options_and_pinning() -> None:
    assert est.options(tls_port=8443, server_ca=Path("/x y/ca.pem")) == [
        "--tls-port",
        "8443",
        "--server-ca",
        "/x y/ca.pem",
    ]
    assert est.pinned(["wrk"], 1) == ["taskset", "-c", "1", "wrk"]
    assert est.pinned(["wrk"], None) == ["wrk"]


def test_runner_accepts_skip_est() -> None:
    assert "est" in run.parse_args(["--skip", "est"]).skip


def test_process_roles() -> None:
    python = "/v/bin/python"
    assert est.role(f"{python}\0-m\0signer.cli\0--data\0/d\0edge\0--host\0127.0.0.1\0") == "edge"
    assert est.role(f"{python}\0-m\0signer.cli\0--data\0/d\0signer\0") == "signer"
    assert est.role(f"{python}\0-m\0signer.worker\0/d\0") == "workers"
    assert est.role(f"{python}\0/v/bin/pki-edge\0--data\0/tmp/edge\0up\0") == "other"
    shares = est.split_shares({"edge": 1.0, "workers": 2.0}, {"edge": 2.0, "workers": 5.0, "signer": 0.0})
    assert shares == {"edge": 0.25, "signer": 0.0, "workers": 0.75, "other": 0.0}
    assert est.split_shares({}, {}) == {}


def _record(
    ok: int, server_cpu: float, raw: tuple[float, float], quiet: float, loud: float, p99: float
) -> dict[str, Any]:
    return {
        "key": "ec-p256",
        "raw_before": {"per_cpu_second": raw[0]},
        "raw_after": {"per_cpu_second": raw[1]},
        "storm": {
            "window_s": 10.0,
            "ok": ok,
            "server_cpu_s": server_cpu,
            "client_cpu_s": 2.0,
            "busy": 5,
            "statuses": {"200": ok, "503": 5, "429": 1},
            "errors": {"closed": 2},
            "latency_ms": {"p50": 100.0, "p99": p99},
        },
        "ocsp_quiet": {"rps": quiet},
        "ocsp_storm": {"rps": loud},
        "server_cpu_split": {"edge": 0.4, "signer": 0.1, "workers": 0.5, "other": 0.0},
        "validated": 32,
        "problems": [],
    }


def test_round_figures_are_ratios_to_the_references_around_the_storm() -> None:
    f = est.round_figures(_record(6000, 10.0, (900.0, 1100.0), 10000.0, 9000.0, 250.0))
    assert f["raw_per_cpu_second"] == pytest.approx(1000.0)  # mean of before and after
    assert f["rps"] == pytest.approx(600.0) and f["per_cpu_second"] == pytest.approx(600.0)
    assert f["x_raw_rps"] == pytest.approx(0.6) and f["x_raw_cpu"] == pytest.approx(0.6)
    assert f["ocsp_ratio"] == pytest.approx(0.9)
    assert f["server_cpu_util"] == pytest.approx(1.0) and f["client_cpu_util"] == pytest.approx(0.2)
    assert f["busy"] == 5 and f["answers"] == 6000 + 5 + 1


def test_missing_figures_give_none_not_errors() -> None:
    record = _record(0, 0.0, (1000.0, 1000.0), 0.0, 0.0, 0.0)
    record["storm"] = {"window_s": 0.0}
    record["ocsp_quiet"] = record["ocsp_storm"] = None
    f = est.round_figures(record)
    assert f["rps"] is None and f["x_raw_cpu"] is None and f["ocsp_ratio"] is None and f["p99_ms"] is None


def test_summary_takes_medians_of_rounds_and_sums_counts() -> None:
    records = [
        _record(4000, 10.0, (1000.0, 1000.0), 10000.0, 5000.0, 300.0),
        _record(6000, 10.0, (1000.0, 1000.0), 10000.0, 9000.0, 100.0),
        _record(5000, 10.0, (1000.0, 1000.0), 10000.0, 8500.0, 200.0),
    ]
    s = est.summarize_key("ec-p256", "est-ec", records, 200)
    assert s["rounds"] == 3 and s["enrollments"] == 15000 and s["busy"] == 15
    assert s["x_raw_cpu"] == pytest.approx(0.5) and s["p99_ms"] == pytest.approx(200.0)
    assert s["ocsp_ratio"] == pytest.approx(0.85)
    assert s["other_statuses"] == 3 and s["errors"] == 6 and s["validated"] == 96
    assert s["server_cpu_split"]["workers"] == pytest.approx(0.5)


def _summary(x_cpu: float | None, ocsp_ratio: float | None, **extra: Any) -> dict[str, Any]:
    return {
        "key": "rsa-2048",
        "ca": "est-rsa",
        "connections": 200,
        "rounds": 1,
        "x_raw_cpu": x_cpu,
        "x_raw_rps": x_cpu,
        "per_cpu_second": 500.0,
        "raw_per_cpu_second": 1000.0,
        "rps": 500.0,
        "p50_ms": 120.0,
        "p99_ms": 480.5,
        "busy": 7,
        "answers": 5007,
        "enrollments": 5000,
        "other_statuses": 0,
        "errors": 0,
        "ocsp_quiet_rps": 10000.0 if ocsp_ratio is not None else None,
        "ocsp_storm_rps": 10000.0 * ocsp_ratio if ocsp_ratio is not None else None,
        "ocsp_ratio": ocsp_ratio,
        "validated": 32,
        "problems": [],
        "server_cpu_split": {"edge": 0.5, "signer": 0.1, "workers": 0.4, "other": 0.0},
        **extra,
    }


def _verdicts(*summaries: dict[str, Any]) -> dict[str, str]:
    return {row["goal"]: row["verdict"] for row in est.goal_rows({"summary": list(summaries)})}


ENROLL = "EST rsa-2048: enrollments through the queue ≥ 50% of raw certificate signing"
OCSP = "EST rsa-2048 storm (200 devices): OCSP cache-hit GET req/s within 20% of quiet"


def test_goal_verdicts() -> None:
    assert _verdicts(_summary(0.5, 0.8)) == {ENROLL: "PASS", OCSP: "PASS"}
    assert _verdicts(_summary(0.49, 0.79)) == {ENROLL: "FAIL", OCSP: "FAIL"}
    assert _verdicts(_summary(None, None)) == {ENROLL: "n/a"}  # OCSP not measured (no wrk): no row
    assert _verdicts(_summary(0.9, 1.0, problems=["answer for CSR 3: not a PKCS#7"]))[ENROLL] == "FAIL"
    assert _verdicts(_summary(0.9, 1.0, validated=0))[ENROLL] == "FAIL"
    assert est.goal_rows(None) == [] and est.goal_rows({}) == []


def test_goal_rows_report_the_p99_beside_the_verdicts() -> None:
    rows = est.goal_rows({"summary": [_summary(0.5, 0.8)]})
    assert "p99 480 ms" in rows[0]["measured"] and "503 7 of 5007 answers" in rows[0]["measured"]
    assert "50% per CPU-s (500 enrollments vs 1000 raw certs/CPU-s)" in rows[0]["measured"]
    assert rows[1]["measured"].startswith("0.80× (8000 vs 10000 req/s)") and "p99 480 ms" in rows[1]["measured"]


def test_report_carries_the_est_rows_and_lines() -> None:
    est_results = {"summary": [_summary(0.2, 0.5)]}
    goals = report.goals({"est": est_results})
    assert [g["verdict"] for g in goals] == ["FAIL", "FAIL"]
    assert ENROLL in report.goals_table(goals)
    lines = report.extras({"est": est_results})
    assert len(lines) == 1 and lines[0].startswith("- EST rsa-2048 (CA est-rsa): 5,000 enrollments")
    assert "workers 40%" in lines[0]
    assert report.extras({}) == []


# --------------------------------------------------------------------------- reference and validation


def _ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


@pytest.fixture(scope="module")
def pki() -> dict[str, Any]:
    ca, ca_key = _ca("Bench CA")
    other, other_key = _ca("Other CA")
    return {"ca": ca, "ca_key": ca_key, "other": other, "other_key": other_key, "csrs": est.make_csrs(3)}


def test_reference_certificate_has_the_products_shape(pki: dict[str, Any]) -> None:
    """The raw reference signs what the product issues: the same extensions, critical flags and names."""
    request = est.Request.of(pki["csrs"][0])
    aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
        pki["ca"].extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    )
    url = "http://127.0.0.1:1/ocsp"
    ours = est.reference_builder(request, pki["ca"], aki, url).sign(pki["ca_key"], hashes.SHA256())
    csr = x509.load_der_x509_csr(pki["csrs"][0])
    names = enroll.requested_names(csr)
    now = int(dt.datetime.now(dt.UTC).timestamp())
    product = enroll.build_certificate(names, csr.public_key(), pki["ca"], pki["ca_key"], CAProfile(), url, now)
    assert [(e.oid, e.critical, e.value) for e in ours.extensions] == [
        (e.oid, e.critical, e.value) for e in product.extensions
    ]
    assert ours.subject == product.subject and ours.issuer == product.issuer
    assert ours.signature_hash_algorithm.name == product.signature_hash_algorithm.name  # type: ignore[union-attr]


def test_raw_sign_rate_counts_signatures(pki: dict[str, Any]) -> None:
    requests = [est.Request.of(der) for der in pki["csrs"]]
    rate = est.raw_sign_rate(requests, pki["ca"], pki["ca_key"], None, 0.05)
    assert rate["certs"] >= 5 and rate["per_cpu_second"] > 0 and rate["wall_s"] >= 0.05


def _answer(cert: x509.Certificate) -> str:
    return base64.b64encode(pkcs7.serialize_certificates([cert], Encoding.DER)).decode()


def _issue_for(pki: dict[str, Any], subject_of: int, key_of: int, issuer: str = "ca") -> x509.Certificate:
    """An answer's certificate: the subject of one CSR with the key of another (the same for a right answer)."""
    key_csr = x509.load_der_x509_csr(pki["csrs"][key_of])
    subject = est.Request.of(pki["csrs"][subject_of])
    request = est.Request(subject.subject, subject.san, key_csr.public_key())
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(pki[f"{issuer}_key"].public_key())
    return est.reference_builder(request, pki[issuer], aki, None).sign(pki[f"{issuer}_key"], hashes.SHA256())


def test_validate_accepts_the_right_certificate_and_names_each_problem(pki: dict[str, Any]) -> None:
    ca_pem = pki["ca"].public_bytes(Encoding.PEM)
    good = [(0, _answer(_issue_for(pki, 0, 0))), (1, _answer(_issue_for(pki, 1, 1)))]
    certs, problems = est.validate(good, pki["csrs"], ca_pem)
    assert len(certs) == 2 and problems == []
    bad = [
        (0, base64.b64encode(b"not pkcs7").decode()),
        (0, _answer(_issue_for(pki, 0, 0, issuer="other"))),
        (0, _answer(_issue_for(pki, 0, 1))),  # another CSR's key
        (2, _answer(_issue_for(pki, 1, 2))),  # another CSR's subject
    ]
    certs, problems = est.validate(bad, pki["csrs"], ca_pem)
    assert certs == [] and len(problems) == 4
    assert "not a PKCS#7" in problems[0] and "not issued by" in problems[1]
    assert "key or subject" in problems[2] and "key or subject" in problems[3]


class _SlowFirstStage(est.Stage):
    """A stage whose first window per CA ends before any answer (the CA key still loading into the workers)."""

    windows: list[tuple[str, float]]
    empty_windows: int

    def load(self, label: str, name: str, connections: int, seconds: float, keep: int, during: Any = None) -> Any:
        self.windows.append((label, seconds))
        waiting = sum(1 for seen, _ in self.windows if seen == label) <= self.empty_windows
        result = {"ok": 0, "statuses": {}, "busy": 0, "errors": {}, "late": connections} if waiting else {"ok": 3}
        return est.LoadRun(result, [] if waiting else [(0, label)])

    def check(self, ca: str, run: est.LoadRun) -> tuple[list[x509.Certificate], list[str]]:
        return ([object()] if run.samples else [], [])  # type: ignore[list-item]


def _slow_stage(empty_windows: int) -> _SlowFirstStage:
    settings = est.Settings(warmup_seconds=0.5)
    stage = _SlowFirstStage(settings, None, None, Path(), [], None, None, lambda _: None)  # type: ignore[arg-type]
    stage.windows, stage.empty_windows = [], empty_windows
    return stage


def test_warm_up_tries_a_longer_window_while_nothing_has_answered() -> None:
    stage = _slow_stage(empty_windows=2)
    issued = stage.warm_up()
    assert set(issued) == {ca.name for ca in est.KEYS}
    assert [seconds for label, seconds in stage.windows if label == "est-ec"] == [0.5, 1.0, 2.0]


def test_warm_up_gives_up_after_its_last_window() -> None:
    stage = _slow_stage(empty_windows=est.WARMUP_ATTEMPTS)
    with pytest.raises(RuntimeError, match="EST warm-up on est-ec"):
        stage.warm_up()
    assert len(stage.windows) == est.WARMUP_ATTEMPTS


def test_nothing_answered_counts_every_kind_of_answer() -> None:
    assert est.nothing_answered({"ok": 0, "statuses": {}, "busy": 0, "errors": {}, "late": 4})
    for answered in ({"ok": 1}, {"statuses": {"500": 1}}, {"busy": 2}, {"errors": {"reset": 1}}):
        assert not est.nothing_answered(answered)


# ---------------------------------------------------------------------------------------- a real run


def test_stage_against_a_real_pki_edge_up(tmp_path: Path) -> None:
    """A tiny stage: both CAs enroll through the queue, answers are valid certificates (no speed asserted)."""
    settings = est.Settings(
        connections=10,
        ocsp_seconds=1.0,
        csrs=40,
        raw_seconds=0.2,
        warmup_seconds=0.5,
        warmup_connections=4,
        keep=8,
        ocsp_serials=40,
        wrk_connections=4,
        mix_length=200,
        ocsp=shutil.which("wrk") is not None,
    )
    said: list[str] = []
    results = est.run_stage(settings, tmp_path / "est", server_cpu=None, load_cpu=None, say=said.append)
    assert [s["key"] for s in results["summary"]] == ["ec-p256", "rsa-2048", "rsa-2048+ec-ocsp"]
    listed = run_cli(tmp_path / "est" / "data", "ca", "list").splitlines()
    assert [line.split("\t")[2] for line in listed if line.startswith("est-rsa")] == ["ca", "ca+delegate"]
    for summary in results["summary"]:
        assert summary["enrollments"] > 0, said
        assert summary["validated"] > 0 and summary["problems"] == [], summary["problems"]
        assert summary["other_statuses"] == 0, results["records"]  # only 200 and 503 answers
        assert summary["raw_per_cpu_second"] > 0 and summary["p99_ms"] is not None
        if settings.ocsp:
            assert summary["ocsp_quiet_rps"] and summary["ocsp_storm_rps"] is not None
    verdicts = {row["verdict"] for row in est.goal_rows(results)}
    assert verdicts <= {"PASS", "FAIL"}
