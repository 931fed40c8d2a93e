"""Configuration from DATA/pki-edge.toml and PKI_EDGE_* variables, as the CLI sees it."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from tests.integration.conftest import Run
from tests.integration.helpers import Server, clean_env, openssl, pki_edge, wait_for


@pytest.mark.parametrize(
    ("toml", "env", "expected"),
    [
        ("[signer]\nvalidity_hour = 1\n", {}, "validity_hour"),
        ("[signer\n", {}, "pki-edge.toml"),
        ("", {"PKI_EDGE_SIGNER_VALIDITY_HOURS": "soon"}, "validity_hours"),
        ("", {"PKI_EDGE_SIGNER_HASH_ALGORITHMS": "md5"}, "hash_algorithms"),
        ('[edge]\nocsp_prefixes = ["/ocsp/"]\n', {}, "ocsp_prefixes"),
        ("", {"PKI_EDGE_SIGNER_REFRESH_FRACTION": "1.5"}, "refresh_fraction"),
        ("[workers]\nnice = 20\n", {}, "workers.nice"),
        ("", {"PKI_EDGE_WORKERS_NICE": "-5"}, "workers.nice"),
        ("[edge]\nport = 70000\n", {}, "edge.port (--port) must be between 1 and 65535"),
        ("", {"PKI_EDGE_EDGE_WORKERS": "0"}, "edge.workers (--workers) must be between 1"),
        ("[est]\ntls_port = 8080\n", {}, "must differ from edge.port"),
        ("[store]\nmap_size_mb = 0\n", {}, "store.map_size_mb must be at least 1"),
        ("[signer]\nvalidity_hours = nan\n", {}, "signer.validity_hours must be a finite number, not nan"),
        ("", {"PKI_EDGE_SIGNER_VALIDITY_HOURS": "1e9"}, "signer.validity_hours must be above 0 and at most 8784"),
        ("", {"PKI_EDGE_SIGNER_EXPIRED_GRACE_HOURS": "-9000"}, "signer.expired_grace_hours must be between 0"),
        ("", {"PKI_EDGE_SIGNER_POLL_INTERVAL_MS": "999999999999999"}, "signer.poll_interval_ms is at most 60000"),
        ("", {"PKI_EDGE_STORE_MAP_SIZE_MB": "99999999999999"}, "store.map_size_mb must be at most 16777216"),
        ("", {"PKI_EDGE_WORKERS_COUNT": "100000"}, "workers.count must be at most 256"),
        ("", {"PKI_EDGE_SIGNER_BATCH_SECONDS": "nan"}, "signer.batch_seconds must be a finite number"),
        # An EST/CLI audit: each of these started, then broke every enrollment (or the edge's start).
        ('[est]\nprefixes = ["est"]\n', {}, "est.prefixes: 'est' must start with '/'"),
        ('[est]\nprefixes = ["/est/"]\n', {}, "est.prefixes: '/est/' must start with '/' and not end with '/'"),
        ("", {"PKI_EDGE_EST_DEFAULT_LABEL": " "}, "est.default_label is empty"),
        ("[est]\nmax_body_bytes = 0\n", {}, "est.max_body_bytes must be between 1024 and 524288"),
        ("", {"PKI_EDGE_EST_MAX_BODY_BYTES": "99999999"}, "est.max_body_bytes must be between 1024 and 524288"),
        ("", {"PKI_EDGE_EST_JOB_TIMEOUT_SECONDS": "0"}, "est.job_timeout_seconds must be between 0.5 and 300"),
        ("[est]\nrate_burst = 0\n", {}, "est.rate_per_minute and est.rate_burst must be at least 1"),
        ("", {"PKI_EDGE_EST_RATE_PER_MINUTE": "-5"}, "est.rate_per_minute and est.rate_burst must be at least 1"),
        ("[est]\nretry_after_seconds = -5\n", {}, "est.retry_after_seconds must be between 1 and 86400"),
        ("", {"PKI_EDGE_EST_MAX_INFLIGHT": "100000000000"}, "est.max_inflight must be at most 100000"),
        ("[workers]\nlive_ocsp_max_inflight = -3\n", {}, "live_ocsp_max_inflight must be between 1 and 100000"),
        ("[profiles.root]\nvalidity_days = 3000000\n", {}, "profiles.root.validity_days must be between 1 and 36525"),
        ('[profiles.root]\nocsp_url = "not a url"\n', {}, "profiles.root.ocsp_url: 'not a url' is not an http://"),
        ("", {"PKI_EDGE_PROFILES_ROOT_VALIDITY_DAYS": "1"}, "profiles are set in pki-edge.toml only"),
    ],
    ids=[
        "unknown-key",
        "toml-syntax",
        "env-not-a-number",
        "env-unknown-hash",
        "prefix-slash",
        "refresh-fraction",
        "nice-too-high",
        "nice-negative",
        "port-past-65535",
        "no-edge-workers",
        "tls-port-is-http-port",
        "no-map",
        "validity-nan",
        "validity-past-a-year",
        "grace-negative",
        "poll-huge",
        "map-huge",
        "signer-workers-storm",
        "batch-seconds-nan",
        "est-prefix-relative",
        "est-prefix-trailing-slash",
        "est-default-label-empty",
        "est-body-0",
        "est-body-huge",
        "est-job-timeout-0",
        "est-burst-0",
        "est-rate-negative",
        "est-retry-after-negative",
        "est-inflight-huge",
        "live-ocsp-inflight-negative",
        "profile-validity-overflow",
        "profile-ocsp-url",
        "env-profiles",
    ],
)
def test_bad_configuration_is_a_clean_error(data_dir: Path, toml: str, env: dict[str, str], expected: str) -> None:
    data_dir.mkdir()
    if toml:
        (data_dir / "pki-edge.toml").write_text(toml)
    proc = pki_edge(data_dir, "ca", "list", check=False, env=clean_env(**env))
    assert proc.returncode == 2, proc
    assert proc.stderr.startswith("pki-edge: error:"), proc.stderr
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr


def _next_updates(status: str) -> list[dt.datetime]:
    found = re.findall(r"nextUpdate (\S+Z)", status)
    return [dt.datetime.fromisoformat(t.replace("Z", "+00:00")) for t in found]


def test_validity_shorter_than_backdate_is_refused_or_harmless(
    run: Run, data_dir: Path, tmp_path: Path, servers: list[Server]
) -> None:
    """Either the configuration is refused, or the responses signed with it are servable (nextUpdate ahead)."""
    env = {"PKI_EDGE_SIGNER_VALIDITY_HOURS": "0.5"}
    run("ca", "create", "short")
    run("issue", "short", "--cn", "short.example", "--out", tmp_path / "out")
    serial = openssl("x509", "-in", tmp_path / "out" / "short.example.pem", "-noout", "-serial").strip()
    checked = pki_edge(data_dir, "ca", "list", check=False, env=clean_env(**env))
    if checked.returncode != 0:
        assert checked.returncode == 2
        assert checked.stderr.startswith("pki-edge: error:")
        return
    signer = Server("signer", data_dir, ["signer"], tmp_path / "signer.log", env=env)
    servers.append(signer)

    def signed() -> str | None:
        out = run("status", "short", serial).stdout
        return out if "pending     no" in out and "none cached" not in out else None

    status = wait_for("a signed response", signed, timeout=30, interval=0.2)
    signer.stop_clean()
    now = dt.datetime.now(dt.UTC)
    next_updates = _next_updates(status)
    assert next_updates
    assert all(n > now for n in next_updates), f"signed already stale at {now:%H:%M:%S}Z:\n{status}"
