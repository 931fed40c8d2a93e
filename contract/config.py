"""Configuration: one typed struct, decoded from ``DATA/pki-edge.toml`` (optional).

Unknown keys are refused. The environment overrides the file
(``PKI_EDGE_<SECTION>_<KEY>``, e.g. ``PKI_EDGE_EDGE_PORT=8081``), and
command-line flags override both.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

import msgspec

CONFIG_FILE = "pki-edge.toml"
ENV_DATA = "PKI_EDGE_DATA"
# Every process of the service logs its lines alike (signer, workers, edge, up): one log reads as one.
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
DEFAULT_DATA = "./data"


class ConfigError(Exception):
    """The configuration file or an override is invalid (message is for the operator)."""


class StoreConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # LMDB reserves address space, not disk: a large map costs nothing until used.
    map_size_mb: int = 65536


class SignerConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    hash_algorithms: list[str] = msgspec.field(default_factory=lambda: ["sha1", "sha256"])
    validity_hours: float = 168.0
    backdate_seconds: int = 3600
    # Refresh when this fraction of the validity has passed, minus a random share of
    # ``jitter_fraction`` of the validity so refreshes spread out instead of bursting.
    refresh_fraction: float = 0.5
    jitter_fraction: float = 0.1
    expired_grace_hours: float = 24.0
    batch_size: int = 512
    batch_seconds: float = 0.1
    poll_interval_ms: int = 50
    # `pki-edge up` kills a signer whose signing loop has not come round for this long (hung: a deadlock,
    # SIGSTOP), then stops as when a child dies, for its service manager to restart it; 0: never.
    watchdog_seconds: float = 120.0


DEFAULT_MAX_HEAD_BYTES = 65536
DEFAULT_MAX_BODY_BYTES = 65536  # est.max_body_bytes


class EdgeConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    # OCSP is answered at "/" and under each prefix.
    ocsp_prefixes: list[str] = msgspec.field(default_factory=lambda: ["/ocsp", "/api/ocsp"])
    max_request_bytes: int = 10000
    # A request's line and headers (edge.http_protocol): past it, 414 or 431 and the connection closes.
    max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES
    retry_after_seconds: int = 60
    # When the signer lags past a response's planned refresh, caches keep it this long at most.
    overdue_max_age_seconds: int = 60
    # The longest max-age of any answer (0: up to the planned refresh, days by default). Behind a CDN,
    # how long a revoked certificate may still be answered good from a cached copy nobody purged.
    max_age_seconds: int = 0
    # Answer OCSP from uvicorn's parser callbacks instead of a full ASGI cycle (edge.fastlane).
    fast_lane: bool = True


# The vocabulary of CA profiles (signer.enroll maps these names to X.509 values).
KEY_TYPE_NAMES = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096")
KEY_USAGE_NAMES = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement")
EXTENDED_KEY_USAGE_NAMES = (
    "client_auth",
    "server_auth",
    "code_signing",
    "email_protection",
    "time_stamping",
    "ocsp_signing",
)


# The subject attributes RFC 4514 names (as cryptography writes them); any other is named by its OID.
SUBJECT_ATTRIBUTE_NAMES = ("CN", "L", "ST", "O", "OU", "C", "STREET", "DC", "UID")


class CAProfile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What a CA issues over EST (``[profiles.NAME]`` in the config file, NAME a CA of the registry)."""

    validity_days: int = 365
    # Keys a CSR (or serverkeygen) may carry: ec-p256, ec-p384, rsa-2048, rsa-3072, rsa-4096.
    key_types: list[str] = msgspec.field(default_factory=lambda: list(KEY_TYPE_NAMES))
    serverkeygen_key_type: str = "ec-p256"
    key_usage: list[str] = msgspec.field(default_factory=lambda: ["digital_signature"])
    extended_key_usage: list[str] = msgspec.field(default_factory=lambda: ["client_auth"])
    # The subject CN must fully match this regular expression; SAN entries their type's pattern.
    subject_cn_pattern: str = ".+"
    # The subject's other attributes a CSR may carry, by RFC 4514 name (C, ST, L, O, OU, DC, UID) or dotted
    # OID (emailAddress 1.2.840.113549.1.9.1, serialNumber 2.5.4.5): [] = the CN alone; None = any
    # (copied as sent: relying parties that authorise on O or OU would trust what a device asked for).
    subject_attributes: list[str] | None = None
    san_dns_pattern: str = ".+"
    san_uri_pattern: str = ".+"
    allow_san_ip: bool = True
    require_san: bool = False
    # Written into issued certificates (AIA); the OCSP URL defaults to the CA's registry URL.
    ocsp_url: str | None = None
    ca_issuers_url: str | None = None
    # On simplereenroll, revoke the superseded certificate (reason superseded).
    revoke_superseded: bool = False
    # CSR attributes announced by /csrattrs: OIDs in dotted form or names (see README); empty gives 204.
    csrattrs: list[str] = msgspec.field(default_factory=list)


# What an AIA location written into certificates may be: an http or https URL, no space, control
# character or quote (`ca create --ocsp-url` and the profiles' URLs alike).
HTTP_URL = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+(?::[0-9]+)?(?:/[\x21\x23-\x7e]*)?")

CLIENT_CERT_HEADERS = ("client-cert", "x-forwarded-client-cert", "x-ssl-client-cert")


class EstConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # EST is served under each prefix, with and without a CA label.
    prefixes: list[str] = msgspec.field(default_factory=lambda: ["/.well-known/est", "/api/devmanager/.well-known/est"])
    default_label: str | None = None  # the CA for requests without a label (default: the only CA, if one)
    tls_port: int | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    # A TLS handshake not complete by then is dropped with its connection (asyncio would hold it 60 s).
    tls_handshake_seconds: float = 10.0
    client_ca: str | None = None  # PEM bundle trusted for client certificates (default: the registry's CAs)
    ra_trust_anchors: str | None = None  # PEM bundle: RA certificates may also be issued by these
    trusted_proxies: list[str] = msgspec.field(default_factory=list)  # addresses or CIDRs
    # The one header a trusted proxy puts the client certificate in: client-cert (RFC 9440),
    # x-forwarded-client-cert (Envoy) or x-ssl-client-cert (nginx). Only it is read.
    client_cert_header: str = "client-cert"
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    job_timeout_seconds: float = 10.0
    max_inflight: int = 64  # signing jobs awaited at once by one edge worker
    rate_per_minute: int = 60  # per client (certificate, user or address)
    rate_burst: int = 20
    retry_after_seconds: int = 5


class WorkersConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    count: int = 2  # signer worker processes
    max_queue: int = 256  # jobs accepted and not yet finished, over all workers
    live_ocsp_max_inflight: int = 16
    # Scheduling priority of the worker processes (nice, 0-19): on a shared core, OCSP answers
    # (the edge) and revocations (the signer) go first and an enrollment storm takes what is left
    # (idle CPU is theirs whatever the value; 19 yields the most while OCSP saturates the core).
    nice: int = 19


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    store: StoreConfig = msgspec.field(default_factory=StoreConfig)
    signer: SignerConfig = msgspec.field(default_factory=SignerConfig)
    edge: EdgeConfig = msgspec.field(default_factory=EdgeConfig)
    est: EstConfig = msgspec.field(default_factory=EstConfig)
    workers: WorkersConfig = msgspec.field(default_factory=WorkersConfig)
    profiles: dict[str, CAProfile] = msgspec.field(default_factory=dict)

    def profile(self, ca_name: str) -> CAProfile:
        return self.profiles.get(ca_name) or CAProfile()


def data_dir_from(flag: str | None) -> Path:
    return Path(flag or os.environ.get(ENV_DATA) or DEFAULT_DATA).resolve()


# The sections of settings (profiles, a table of tables, is apart): the file's, the environment's.
_SECTIONS: tuple[tuple[str, type[msgspec.Struct]], ...] = (
    ("store", StoreConfig),
    ("signer", SignerConfig),
    ("edge", EdgeConfig),
    ("est", EstConfig),
    ("workers", WorkersConfig),
)


_WHOLE_NUMBER = re.compile(r"-?[0-9]+")
_WHOLE_NUMBER_TYPES = (int, int | None)


def _env_overrides(environ: dict[str, str]) -> dict[str, dict[str, Any]]:
    overrides: dict[str, dict[str, Any]] = {}
    profiles = sorted(name for name in environ if name.startswith("PKI_EDGE_PROFILES_"))
    if profiles:
        raise ConfigError(f"{', '.join(profiles)}: profiles are set in {CONFIG_FILE} only ([profiles.NAME])")
    for section, struct_type in _SECTIONS:
        # A name with a section's prefix and none of its keys is a typo that would be silently lost:
        # refused, as unknown keys of the file are (other PKI_EDGE_* names, DATA and LOCUST_*, are not config).
        prefix = f"PKI_EDGE_{section.upper()}_"
        known = {prefix + field.upper() for field in struct_type.__struct_fields__}
        unknown = sorted(name for name in environ if name.startswith(prefix) and name not in known)
        if unknown:
            raise ConfigError(
                f"{', '.join(unknown)}: not a configuration key of [{section}]"
                f" (PKI_EDGE_{section.upper()}_<KEY>: {', '.join(sorted(struct_type.__struct_fields__))})"
            )
        whole = {f.name for f in msgspec.structs.fields(struct_type) if f.type in _WHOLE_NUMBER_TYPES}
        for field in struct_type.__struct_fields__:
            name = f"PKI_EDGE_{section.upper()}_{field.upper()}"
            value = environ.get(name)
            if value is None:
                continue
            if field in whole and _WHOLE_NUMBER.fullmatch(value) is None:
                # msgspec reads "8080.0" and "8e3" as integers: a typo would become another value.
                raise ConfigError(f"{name}: {section}.{field} must be a whole number, got {value!r}")
            default = getattr(struct_type(), field)
            parsed: Any = [v.strip() for v in value.split(",") if v.strip()] if isinstance(default, list) else value
            overrides.setdefault(section, {})[field] = parsed
    return overrides


def check_not_writable_by_others(data_dir: Path) -> None:
    """The data directory, its configuration and its store may be written by their owner alone.

    Whoever else may write there could rewrite the configuration (trust a header as the client's
    certificate, loosen a profile) or put a store of their own in place: as good as holding the CA.
    The owner may be another user than this one (an edge reading what the signer's user wrote).
    """
    from contract.store import store_path

    for path in (data_dir, data_dir / CONFIG_FILE, store_path(data_dir), store_path(data_dir) / "data.mdb"):
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ConfigError(f"{path}: {exc.strerror or exc}") from None
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise ConfigError(
                f"{path} may be written by other users than its owner (mode {stat.S_IMODE(mode):o}): chmod go-w {path}"
            )


def load_config(data_dir: Path, environ: dict[str, str] | None = None) -> Config:
    check_not_writable_by_others(data_dir)
    path = data_dir / CONFIG_FILE
    raw: dict[str, Any] = {}
    if path.exists() or path.is_symlink():  # a dangling link is a broken configuration, not none
        try:
            raw = msgspec.toml.decode(path.read_bytes())
        except msgspec.DecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"{path}: {exc.strerror or exc}") from None
    overrides = _env_overrides(dict(os.environ if environ is None else environ))
    for section, values in overrides.items():
        if not isinstance(raw.setdefault(section, {}), dict):
            raise ConfigError(f"{path}: [{section}] must be a table")
        raw[section].update(values)
    try:
        config = msgspec.convert(raw, Config, strict=False)
    except msgspec.ValidationError as exc:
        where = f"{path} or PKI_EDGE_* environment" if overrides else str(path)
        raise ConfigError(f"{where}: {exc}") from None
    validate(config)
    return config


MAX_PORT = 65535
MAX_EDGE_WORKERS = 256
MAX_SIGNER_WORKERS = 256
MAX_TLS_HANDSHAKE_SECONDS = 300
MAX_MAX_AGE_SECONDS = 31_622_400  # a leap year
MAX_VALIDITY_HOURS = 8784.0  # a leap year: far past any OCSP profile's (RFC 5019bis, CA/B BRs: days)
MAX_MAP_SIZE_MB = 1 << 24
MAX_VALIDITY_DAYS = 36525  # a certificate's lifetime: a century (datetime ends at the year 9999)


def _check_finite(config: Config) -> None:
    """NaN passes every comparison and infinity most: no float setting may be either."""
    import math

    for section, _ in _SECTIONS:
        values = getattr(config, section)
        for field in values.__struct_fields__:
            value = getattr(values, field)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{section}.{field} must be a finite number, not {value}")


def validate(config: Config) -> None:
    """Refuse a configuration that cannot run (after the file, the environment and the flags)."""
    from contract.store import HASH_ALGORITHMS, MAX_BATCH_SECONDS

    _check_finite(config)
    unknown = [h for h in config.signer.hash_algorithms if h not in HASH_ALGORITHMS]
    if unknown or not config.signer.hash_algorithms:
        raise ConfigError(f"signer.hash_algorithms: choose from {sorted(HASH_ALGORITHMS)}, got {unknown or 'nothing'}")
    signer = config.signer
    if not (0 <= signer.jitter_fraction < signer.refresh_fraction < 1):
        raise ConfigError("signer.refresh_fraction and jitter_fraction must leave refresh before nextUpdate")
    if signer.batch_size < 1 or signer.batch_seconds <= 0 or signer.poll_interval_ms < 1:
        raise ConfigError("signer.batch_size, batch_seconds and poll_interval_ms must be positive")
    if signer.batch_seconds > MAX_BATCH_SECONDS:
        # A response must be served within a minute of its producedAt (contract.store.SERVED_WITHIN_SECONDS).
        raise ConfigError(f"signer.batch_seconds must be at most {MAX_BATCH_SECONDS:g}")
    if not 0 < config.signer.validity_hours <= MAX_VALIDITY_HOURS or config.signer.backdate_seconds < 0:
        raise ConfigError(
            f"signer.validity_hours must be above 0 and at most {MAX_VALIDITY_HOURS} (a year),"
            " and backdate_seconds not negative"
        )
    if not 0 <= signer.expired_grace_hours <= MAX_VALIDITY_HOURS:
        # Negative, it would drop the responses of certificates still valid (unauthorized for them).
        raise ConfigError(f"signer.expired_grace_hours must be between 0 and {MAX_VALIDITY_HOURS}")
    if signer.poll_interval_ms > 60000 or signer.backdate_seconds > 86400 or signer.batch_size > 100000:
        raise ConfigError(
            "signer.poll_interval_ms is at most 60000, backdate_seconds at most 86400 and batch_size at most 100000"
        )
    loop_seconds = signer.batch_seconds + signer.poll_interval_ms / 1000  # the longest turn of a healthy loop
    if signer.watchdog_seconds != 0 and not 2 * loop_seconds + 1 <= signer.watchdog_seconds <= 86400:
        raise ConfigError(
            "signer.watchdog_seconds must be 0 (off) or from twice batch_seconds plus poll_interval_ms, plus"
            f" a second ({2 * loop_seconds + 1:g} s here), to a day"
        )
    if config.est.client_cert_header not in CLIENT_CERT_HEADERS:
        raise ConfigError(f"est.client_cert_header must be one of {', '.join(CLIENT_CERT_HEADERS)} (lower case)")
    if config.store.map_size_mb > MAX_MAP_SIZE_MB:
        raise ConfigError(f"store.map_size_mb must be at most {MAX_MAP_SIZE_MB} (16 TiB of address space)")
    earliest_refresh = (signer.refresh_fraction - signer.jitter_fraction) * signer.validity_hours * 3600
    if earliest_refresh <= signer.backdate_seconds:
        raise ConfigError(
            "signer: (refresh_fraction - jitter_fraction) * validity_hours must exceed backdate_seconds, "
            "or responses would be due for refresh (or expired) as soon as they are signed"
        )
    if config.store.map_size_mb < 1:
        raise ConfigError("store.map_size_mb must be at least 1")
    edge = config.edge
    if not edge.host.strip():
        raise ConfigError("edge.host (--host) is empty: give an address, e.g. 127.0.0.1 or 0.0.0.0")
    for what, port in (("edge.port (--port)", edge.port), ("est.tls_port (--tls-port)", config.est.tls_port)):
        if port is not None and not 1 <= port <= MAX_PORT:
            raise ConfigError(f"{what} must be between 1 and {MAX_PORT}, got {port}")
    if config.est.tls_port == edge.port:
        raise ConfigError("est.tls_port (--tls-port) must differ from edge.port (--port)")
    if not 1 <= edge.workers <= MAX_EDGE_WORKERS:
        raise ConfigError(f"edge.workers (--workers) must be between 1 and {MAX_EDGE_WORKERS}, got {edge.workers}")
    for prefix in config.edge.ocsp_prefixes:
        if not prefix.startswith("/") or prefix.endswith("/") or "//" in prefix:
            raise ConfigError(f"edge.ocsp_prefixes: {prefix!r} must start with '/' and not end with '/'")
        # EST's paths and the health paths are served first: OCSP under them would never be answered.
        taken = [p for p in (*config.est.prefixes, "/healthz", "/readyz") if prefix == p or prefix.startswith(p + "/")]
        if taken:
            raise ConfigError(
                f"edge.ocsp_prefixes: {prefix!r} is under {taken[0]!r}, which OCSP is never answered under"
            )
    if not 0 <= config.edge.max_age_seconds <= MAX_MAX_AGE_SECONDS:
        raise ConfigError(f"edge.max_age_seconds must be 0 (no bound) or at most {MAX_MAX_AGE_SECONDS} (a year)")
    if config.edge.max_request_bytes < 64:
        raise ConfigError("edge.max_request_bytes is too small for any OCSP request")
    if config.edge.max_head_bytes < 3 * config.edge.max_request_bytes + 1024:
        raise ConfigError(
            "edge.max_head_bytes must hold a GET path as long as the decoder reads (three times"
            f" max_request_bytes) and its headers: at least {3 * config.edge.max_request_bytes + 1024}"
        )
    for name, profile in config.profiles.items():
        _validate_profile(f"profiles.{name}", profile)
    if config.workers.count < 1 or config.workers.max_queue < 1 or config.est.max_inflight < 1:
        raise ConfigError("workers.count, workers.max_queue and est.max_inflight must be at least 1")
    if config.workers.count > MAX_SIGNER_WORKERS:
        raise ConfigError(f"workers.count must be at most {MAX_SIGNER_WORKERS} (processes, each with the CA keys)")
    if not 0 <= config.workers.nice <= 19:
        raise ConfigError("workers.nice must be between 0 and 19")
    if not 0 < config.est.tls_handshake_seconds <= MAX_TLS_HANDSHAKE_SECONDS:
        raise ConfigError(f"est.tls_handshake_seconds must be above 0 and at most {MAX_TLS_HANDSHAKE_SECONDS}")
    _validate_est(config.est)
    if config.workers.max_queue > MAX_QUEUE or not 1 <= config.workers.live_ocsp_max_inflight <= MAX_QUEUE:
        raise ConfigError(f"workers.max_queue and live_ocsp_max_inflight must be between 1 and {MAX_QUEUE}")


# Bounds of the EST settings: what each must be for EST to answer at all, and what stays sane.
MAX_QUEUE = 100_000
MIN_EST_BODY_BYTES = 1024  # a P-256 CSR in base64 is ~400 bytes; RSA-4096 ~1.1 kB of DER
MAX_EST_BODY_BYTES = 512 * 1024  # a body travels to the signer in one job frame (contract.jobs.MAX_FRAME_BYTES)
MIN_JOB_TIMEOUT_SECONDS, MAX_JOB_TIMEOUT_SECONDS = 0.5, 300.0
MAX_RETRY_AFTER_SECONDS = 86400


def _validate_est(est: EstConfig) -> None:
    for prefix in est.prefixes:
        if not prefix.startswith("/") or prefix.endswith("/") or "//" in prefix:
            raise ConfigError(f"est.prefixes: {prefix!r} must start with '/' and not end with '/'")
    if est.default_label is not None and not est.default_label.strip():
        raise ConfigError("est.default_label is empty: name a CA, or leave it unset (the only CA, if one)")
    if not MIN_EST_BODY_BYTES <= est.max_body_bytes <= MAX_EST_BODY_BYTES:
        raise ConfigError(f"est.max_body_bytes must be between {MIN_EST_BODY_BYTES} and {MAX_EST_BODY_BYTES}")
    if not MIN_JOB_TIMEOUT_SECONDS <= est.job_timeout_seconds <= MAX_JOB_TIMEOUT_SECONDS:
        raise ConfigError(
            f"est.job_timeout_seconds must be between {MIN_JOB_TIMEOUT_SECONDS:g} and {MAX_JOB_TIMEOUT_SECONDS:g}"
        )
    if est.max_inflight > MAX_QUEUE:
        raise ConfigError(f"est.max_inflight must be at most {MAX_QUEUE}")
    if est.rate_per_minute < 1 or est.rate_burst < 1:
        raise ConfigError("est.rate_per_minute and est.rate_burst must be at least 1 (a client could never enroll)")
    if not 1 <= est.retry_after_seconds <= MAX_RETRY_AFTER_SECONDS:
        raise ConfigError(f"est.retry_after_seconds must be between 1 and {MAX_RETRY_AFTER_SECONDS}")


def _validate_profile(where: str, profile: CAProfile) -> None:
    """Mistakes in a profile are the operator's: refuse them when the configuration loads."""
    if not 1 <= profile.validity_days <= MAX_VALIDITY_DAYS:
        raise ConfigError(f"{where}.validity_days must be between 1 and {MAX_VALIDITY_DAYS} (a century)")
    for field, values, allowed in (
        ("key_types", profile.key_types, KEY_TYPE_NAMES),
        ("serverkeygen_key_type", [profile.serverkeygen_key_type], KEY_TYPE_NAMES),
        ("key_usage", profile.key_usage, KEY_USAGE_NAMES),
        ("extended_key_usage", profile.extended_key_usage, EXTENDED_KEY_USAGE_NAMES),
    ):
        unknown = [v for v in values if v not in allowed]
        if unknown:
            raise ConfigError(f"{where}.{field}: unknown {unknown}; choose from {list(allowed)}")
    for name in profile.subject_attributes or []:
        if name not in SUBJECT_ATTRIBUTE_NAMES and not re.fullmatch(r"[0-2](\.[0-9]+)+", name):
            raise ConfigError(
                f"{where}.subject_attributes: {name!r} is neither one of {', '.join(SUBJECT_ATTRIBUTE_NAMES)}"
                " nor a dotted OID"
            )
    for field in ("ocsp_url", "ca_issuers_url"):
        url = getattr(profile, field)
        if url is not None and not HTTP_URL.fullmatch(url):
            raise ConfigError(f"{where}.{field}: {url[:80]!r} is not an http:// or https:// URL without spaces")
    for field in ("subject_cn_pattern", "san_dns_pattern", "san_uri_pattern"):
        try:
            re.compile(getattr(profile, field))
        except re.error as exc:
            raise ConfigError(f"{where}.{field}: not a regular expression ({exc})") from None
