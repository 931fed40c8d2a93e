"""contract.config: defaults, the TOML file, environment overrides and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from contract.config import CONFIG_FILE, Config, ConfigError, load_config


def write(data_dir: Path, text: str) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / CONFIG_FILE
    path.write_text(text)
    return path


def test_defaults_without_a_file(tmp_path: Path) -> None:
    config = load_config(tmp_path, {})
    assert config == Config()
    assert config.store.map_size_mb == 65536
    s = config.signer
    assert s.hash_algorithms == ["sha1", "sha256"]
    assert (s.validity_hours, s.backdate_seconds, s.refresh_fraction, s.jitter_fraction) == (168.0, 3600, 0.5, 0.1)
    assert (s.expired_grace_hours, s.batch_size, s.batch_seconds, s.poll_interval_ms) == (24.0, 512, 0.1, 50)
    e = config.edge
    assert (e.host, e.port, e.workers) == ("127.0.0.1", 8080, 1)
    assert e.ocsp_prefixes == ["/ocsp", "/api/ocsp"]
    assert (e.max_request_bytes, e.retry_after_seconds, e.overdue_max_age_seconds) == (10000, 60, 60)


def test_defaults_are_not_shared_between_instances() -> None:
    a, b = Config(), Config()
    a.signer.hash_algorithms.append("sha512")
    a.edge.ocsp_prefixes.clear()
    assert b.signer.hash_algorithms == ["sha1", "sha256"]
    assert b.edge.ocsp_prefixes == ["/ocsp", "/api/ocsp"]


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    write(tmp_path, "")
    assert load_config(tmp_path, {}) == Config()


def test_file_values_are_applied(tmp_path: Path) -> None:
    write(
        tmp_path,
        """
[store]
map_size_mb = 1024

[signer]
hash_algorithms = ["sha256", "sha512"]
validity_hours = 24
backdate_seconds = 0
refresh_fraction = 0.75
jitter_fraction = 0.25
expired_grace_hours = 1.5
batch_size = 64
batch_seconds = 0.5
poll_interval_ms = 10

[edge]
host = "0.0.0.0"
port = 9090
workers = 4
ocsp_prefixes = ["/status", "/a/b"]
max_request_bytes = 64
retry_after_seconds = 5
overdue_max_age_seconds = 30
""",
    )
    config = load_config(tmp_path, {})
    assert config.store.map_size_mb == 1024
    s = config.signer
    assert s.hash_algorithms == ["sha256", "sha512"]
    assert s.validity_hours == 24.0 and isinstance(s.validity_hours, float)
    assert (s.backdate_seconds, s.refresh_fraction, s.jitter_fraction, s.expired_grace_hours) == (0, 0.75, 0.25, 1.5)
    assert (s.batch_size, s.batch_seconds, s.poll_interval_ms) == (64, 0.5, 10)
    e = config.edge
    assert (e.host, e.port, e.workers, e.ocsp_prefixes) == ("0.0.0.0", 9090, 4, ["/status", "/a/b"])
    assert (e.max_request_bytes, e.retry_after_seconds, e.overdue_max_age_seconds) == (64, 5, 30)


def test_partial_file_keeps_other_defaults(tmp_path: Path) -> None:
    write(tmp_path, "[edge]\nport = 8443\n")
    config = load_config(tmp_path, {})
    assert config.edge.port == 8443
    assert config.edge.host == "127.0.0.1"
    assert config.signer == Config().signer
    assert config.store == Config().store


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[store]\nmap_size = 1\n", "map_size"),
        ("[signer]\nhash_algorithm = ['sha1']\n", "hash_algorithm"),
        ("[signer]\nvalidity_hours = 1.0\nvalidity_days = 1\n", "validity_days"),
        ("[edge]\nprot = 1\n", "prot"),
        ("[edges]\nport = 1\n", "edges"),
        ("port = 1\n", "port"),
    ],
)
def test_unknown_keys_are_refused(tmp_path: Path, text: str, named: str) -> None:
    write(tmp_path, text)
    with pytest.raises(ConfigError, match=rf"\b{named}\b"):
        load_config(tmp_path, {})


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('[edge]\nport = "http"\n', "edge.port"),
        ("[edge]\nport = 1.5\n", "edge.port"),
        ("[edge]\nport = [8080]\n", "edge.port"),
        ('[edge]\nocsp_prefixes = "/ocsp"\n', "edge.ocsp_prefixes"),
        ("[edge]\nhost = 127\n", "edge.host"),
        ('[signer]\nhash_algorithms = "sha1"\n', "signer.hash_algorithms"),
        ("[signer]\nhash_algorithms = [1]\n", "signer.hash_algorithms"),
        ('[signer]\nvalidity_hours = "long"\n', "signer.validity_hours"),
        ("[store]\nmap_size_mb = {a = 1}\n", "store.map_size_mb"),
        ("edge = 5\n", "edge"),
    ],
)
def test_wrong_types_are_refused(tmp_path: Path, text: str, where: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, {})
    assert where in str(info.value)
    assert str(path) in str(info.value) or CONFIG_FILE in str(info.value)


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    write(tmp_path, "[edge\nport = \n")
    with pytest.raises(ConfigError, match=CONFIG_FILE):
        load_config(tmp_path, {})


# ---------------------------------------------------------------------------- environment


def test_env_overrides_scalar(tmp_path: Path) -> None:
    config = load_config(tmp_path, {"PKI_EDGE_EDGE_PORT": "8081"})
    assert config.edge.port == 8081 and isinstance(config.edge.port, int)


def test_env_overrides_the_file_and_keeps_its_other_keys(tmp_path: Path) -> None:
    write(tmp_path, '[edge]\nport = 9000\nhost = "10.0.0.1"\n[signer]\nbatch_size = 7\n')
    config = load_config(
        tmp_path,
        {"PKI_EDGE_EDGE_PORT": "8081", "PKI_EDGE_SIGNER_VALIDITY_HOURS": "12.5", "PKI_EDGE_STORE_MAP_SIZE_MB": "8"},
    )
    assert (config.edge.port, config.edge.host) == (8081, "10.0.0.1")
    assert config.signer.batch_size == 7
    assert config.signer.validity_hours == 12.5
    assert config.store.map_size_mb == 8


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("sha256,sha384", ["sha256", "sha384"]),
        (" sha256 , sha384 ,", ["sha256", "sha384"]),
        ("sha512", ["sha512"]),
    ],
)
def test_env_list_override(tmp_path: Path, value: str, expected: list[str]) -> None:
    write(tmp_path, '[signer]\nhash_algorithms = ["sha1"]\n')
    config = load_config(tmp_path, {"PKI_EDGE_SIGNER_HASH_ALGORITHMS": value})
    assert config.signer.hash_algorithms == expected


def test_env_prefixes_override(tmp_path: Path) -> None:
    config = load_config(tmp_path, {"PKI_EDGE_EDGE_OCSP_PREFIXES": "/a,/b/c"})
    assert config.edge.ocsp_prefixes == ["/a", "/b/c"]


def test_env_is_read_from_os_environ_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PKI_EDGE_EDGE_WORKERS", "3")
    assert load_config(tmp_path).edge.workers == 3
    assert load_config(tmp_path, {}).edge.workers == 1  # an explicit environ replaces os.environ


def test_env_names_need_the_exact_section_and_key(tmp_path: Path) -> None:
    config = load_config(tmp_path, {"PKI_EDGE_PORT": "1", "pki_edge_edge_port": "2", "PKI_EDGE_LOCUST_ZIPF": "1"})
    assert config.edge.port == 8080


@pytest.mark.parametrize("name", ["PKI_EDGE_SIGNER_PORT", "PKI_EDGE_EDGE_WORKER", "PKI_EDGE_EST_"])
def test_env_names_of_a_section_without_its_key_are_refused(tmp_path: Path, name: str) -> None:
    """A mistyped override would be silently lost: refused as an unknown key of the file is."""
    with pytest.raises(ConfigError, match=f"{name}: not a configuration key of "):
        load_config(tmp_path, {name: "3"})


@pytest.mark.parametrize(
    ("env", "where"),
    [
        ({"PKI_EDGE_EDGE_PORT": "abc"}, "edge.port"),
        ({"PKI_EDGE_EDGE_PORT": ""}, "edge.port"),
        ({"PKI_EDGE_SIGNER_BATCH_SIZE": "1.5"}, "signer.batch_size"),
        ({"PKI_EDGE_EDGE_PORT": "8080.0"}, "edge.port must be a whole number, got '8080.0'"),
        ({"PKI_EDGE_EDGE_PORT": "8e3"}, "edge.port must be a whole number"),
        ({"PKI_EDGE_EST_TLS_PORT": "8443.0"}, "est.tls_port must be a whole number"),
        ({"PKI_EDGE_SIGNER_VALIDITY_HOURS": "soon"}, "signer.validity_hours"),
    ],
)
def test_env_wrong_type(tmp_path: Path, env: dict[str, str], where: str) -> None:
    with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
        load_config(tmp_path, env)


def test_env_values_are_validated_too(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="hash_algorithms"):
        load_config(tmp_path, {"PKI_EDGE_SIGNER_HASH_ALGORITHMS": "sha256,md5"})
    with pytest.raises(ConfigError, match="hash_algorithms"):
        load_config(tmp_path, {"PKI_EDGE_SIGNER_HASH_ALGORITHMS": " , "})
    with pytest.raises(ConfigError, match="ocsp_prefixes"):
        load_config(tmp_path, {"PKI_EDGE_EDGE_OCSP_PREFIXES": "ocsp"})


def test_env_override_on_a_malformed_section_is_a_config_error(tmp_path: Path) -> None:
    write(tmp_path, "edge = 5\n")
    with pytest.raises(ConfigError):
        load_config(tmp_path, {"PKI_EDGE_EDGE_PORT": "8081"})


# ---------------------------------------------------------------------------- validation


def test_a_batch_commits_well_within_the_minute_if_modified_since_allows(tmp_path: Path) -> None:
    assert load_config(tmp_path, {"PKI_EDGE_SIGNER_BATCH_SECONDS": "30"}).signer.batch_seconds == 30
    with pytest.raises(ConfigError, match=r"signer\.batch_seconds must be at most 30"):
        load_config(tmp_path, {"PKI_EDGE_SIGNER_BATCH_SECONDS": "31"})


def test_the_head_bound_must_hold_the_longest_get_the_edge_reads(tmp_path: Path) -> None:
    assert Config().edge.max_head_bytes == 65536
    write(tmp_path, "[edge]\nmax_request_bytes = 30000\n")  # GET paths up to 90,000 bytes
    with pytest.raises(ConfigError, match=r"edge\.max_head_bytes .* at least 91024"):
        load_config(tmp_path, {})
    assert load_config(tmp_path, {"PKI_EDGE_EDGE_MAX_HEAD_BYTES": "91024"}).edge.max_head_bytes == 91024


@pytest.mark.parametrize("algorithms", [["md5"], ["sha1", "sha224"], ["SHA256"], [""], []])
def test_invalid_hash_algorithms(tmp_path: Path, algorithms: list[str]) -> None:
    write(tmp_path, f"[signer]\nhash_algorithms = {algorithms!r}\n")
    with pytest.raises(ConfigError, match=r"signer\.hash_algorithms: choose from"):
        load_config(tmp_path, {})


@pytest.mark.parametrize(
    "algorithms", [["sha1"], ["sha256"], ["sha384", "sha512"], ["sha1", "sha256", "sha384", "sha512"]]
)
def test_valid_hash_algorithms(tmp_path: Path, algorithms: list[str]) -> None:
    write(tmp_path, f"[signer]\nhash_algorithms = {algorithms!r}\n")
    assert load_config(tmp_path, {}).signer.hash_algorithms == algorithms


@pytest.mark.parametrize("prefix", ["ocsp", "/ocsp/", "/", "", "//ocsp", "/a//b", "ocsp/"])
def test_bad_prefixes(tmp_path: Path, prefix: str) -> None:
    write(tmp_path, f'[edge]\nocsp_prefixes = ["/ok", "{prefix}"]\n')
    with pytest.raises(ConfigError, match=r"edge\.ocsp_prefixes"):
        load_config(tmp_path, {})


@pytest.mark.parametrize(
    ("prefix", "under"),
    [
        ("/.well-known/est", "/.well-known/est"),
        ("/.well-known/est/ocsp", "/.well-known/est"),
        ("/api/devmanager/.well-known/est/x", "/api/devmanager/.well-known/est"),
        ("/healthz", "/healthz"),
        ("/readyz/ocsp", "/readyz"),
    ],
)
def test_prefixes_where_ocsp_is_never_answered_are_refused(tmp_path: Path, prefix: str, under: str) -> None:
    """EST's and the health paths are served first: found by the audit, accepted and answered 404."""
    write(tmp_path, f'[edge]\nocsp_prefixes = ["{prefix}"]\n')
    with pytest.raises(ConfigError, match=f"edge.ocsp_prefixes: '{prefix}' is under '{under}'"):
        load_config(tmp_path, {})


@pytest.mark.parametrize("prefixes", [[], ["/ocsp"], ["/a/b/c", "/x"], ["/.well-known"], ["/healthzz"]])
def test_good_prefixes(tmp_path: Path, prefixes: list[str]) -> None:
    write(tmp_path, f"[edge]\nocsp_prefixes = {prefixes!r}\n")
    assert load_config(tmp_path, {}).edge.ocsp_prefixes == prefixes


@pytest.mark.parametrize(
    "signer",
    [
        "refresh_fraction = 1.0",
        "refresh_fraction = 0.0\njitter_fraction = 0.0",
        "refresh_fraction = 0.5\njitter_fraction = 0.5",
        "refresh_fraction = 0.3\njitter_fraction = 0.4",
        "jitter_fraction = -0.1",
        "validity_hours = 0",
        "validity_hours = -1",
        "backdate_seconds = -1",
        "watchdog_seconds = 1",  # under twice a loop turn (0.15 s) plus a second
        "watchdog_seconds = 100000",
        "watchdog_seconds = -5",
        "batch_seconds = 30.0\nwatchdog_seconds = 60",
    ],
)
def test_invalid_signer_timing(tmp_path: Path, signer: str) -> None:
    write(tmp_path, f"[signer]\n{signer}\n")
    with pytest.raises(ConfigError, match="signer"):
        load_config(tmp_path, {})


@pytest.mark.parametrize(
    "signer",
    [
        "refresh_fraction = 0.99\njitter_fraction = 0.0",
        "refresh_fraction = 0.2\njitter_fraction = 0.19",
        "watchdog_seconds = 0",
        "watchdog_seconds = 2",
        "batch_seconds = 30.0\nwatchdog_seconds = 62",
    ],
)
def test_valid_signer_timing(tmp_path: Path, signer: str) -> None:
    write(tmp_path, f"[signer]\n{signer}\n")
    load_config(tmp_path, {})


def test_max_request_bytes_floor(tmp_path: Path) -> None:
    write(tmp_path, "[edge]\nmax_request_bytes = 63\n")
    with pytest.raises(ConfigError, match="max_request_bytes"):
        load_config(tmp_path, {})
    assert load_config(tmp_path, {"PKI_EDGE_EDGE_MAX_REQUEST_BYTES": "64"}).edge.max_request_bytes == 64


def test_a_dangling_configuration_link_is_an_error_not_the_defaults(tmp_path: Path) -> None:
    (tmp_path / "pki-edge.toml").symlink_to(tmp_path / "gone.toml")
    with pytest.raises(ConfigError, match=r"pki-edge.toml: No such file or directory"):
        load_config(tmp_path, {})


@pytest.mark.parametrize(("seconds", "ok"), [("0.5", True), ("300", True), ("0", False), ("-1", False), ("301", False)])
def test_the_tls_handshake_bound_is_above_zero_and_at_most_five_minutes(tmp_path: Path, seconds: str, ok: bool) -> None:
    assert Config().est.tls_handshake_seconds == 10
    environ = {"PKI_EDGE_EST_TLS_HANDSHAKE_SECONDS": seconds}
    if ok:
        assert load_config(tmp_path, environ).est.tls_handshake_seconds == float(seconds)
    else:
        with pytest.raises(ConfigError, match=r"est\.tls_handshake_seconds must be above 0 and at most 300"):
            load_config(tmp_path, environ)


@pytest.mark.parametrize("header", ["X-SSL-Client-Cert", "ssl-client-cert", ""])
def test_the_client_certificate_header_is_one_of_three(tmp_path: Path, header: str) -> None:
    write(tmp_path, f'[est]\nclient_cert_header = "{header}"\n')
    with pytest.raises(
        ConfigError, match=r"est\.client_cert_header must be one of client-cert, x-forwarded-client-cert"
    ):
        load_config(tmp_path, {})


@pytest.mark.parametrize(
    ("names", "ok"), [(["O", "OU", "2.5.4.5"], True), ([], True), (["email"], False), (["2.5"], True), ([""], False)]
)
def test_subject_attributes_are_names_or_oids(tmp_path: Path, names: list[str], ok: bool) -> None:
    write(tmp_path, f"[profiles.ca]\nsubject_attributes = {names!r}\n")
    if ok:
        assert load_config(tmp_path, {}).profiles["ca"].subject_attributes == names
    else:
        with pytest.raises(ConfigError, match="subject_attributes"):
            load_config(tmp_path, {})


def test_a_data_directory_is_created_closed_to_writes_by_others_whatever_the_umask(tmp_path: Path) -> None:
    import os

    from signer.state import SignerStore

    old = os.umask(0o002)
    try:
        SignerStore(tmp_path / "data", Config()).close()
    finally:
        os.umask(old)
    assert (tmp_path / "data").stat().st_mode & 0o777 == 0o755
    load_config(tmp_path / "data")  # not refused by check_not_writable_by_others


@pytest.mark.parametrize(
    ("seconds", "ok"), [("0", True), ("1", True), ("31622400", True), ("-1", False), ("31622401", False)]
)
def test_max_age_seconds_is_off_or_at_most_a_year(tmp_path: Path, seconds: str, ok: bool) -> None:
    assert Config().edge.max_age_seconds == 0  # off: max-age runs to the planned refresh
    environ = {"PKI_EDGE_EDGE_MAX_AGE_SECONDS": seconds}
    if ok:
        assert load_config(tmp_path, environ).edge.max_age_seconds == int(seconds)
    else:
        with pytest.raises(ConfigError, match=r"edge\.max_age_seconds must be 0 \(no bound\) or at most 31622400"):
            load_config(tmp_path, environ)
