"""Run the edge: uvicorn with uvloop and httptools, plain HTTP and, when configured, HTTPS beside it.

OCSP is served on both ports; EST needs the HTTPS one (or a trusted proxy in front).
With HTTPS, one process serves both ports from one application instance.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import logging.config
import os
import resource
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
import uvloop
from cryptography import x509
from uvicorn.supervisors import multiprocess

from contract.config import ENV_DATA, LOG_FORMAT, Config, ConfigError
from edge.est_codec import csrattrs_der

_FAST_LANE = "edge.fastlane:OCSPHttpToolsProtocol"
_ASGI_ONLY = "edge.http_protocol:EdgeHttpProtocol"


def _options(config: Config, log_level: str) -> dict[str, Any]:
    return {
        "loop": "uvloop",
        # The fast lane answers OCSP straight from the parser; everything else is ASGI as usual. Both
        # bound a request's size and time (edge.http_protocol).
        "http": _FAST_LANE if config.edge.fast_lane else _ASGI_ONLY,
        "lifespan": "on",
        "ws": "none",  # the edge serves no WebSocket: an Upgrade to one is declined, the request served
        "access_log": False,
        "server_header": False,
        "proxy_headers": False,  # client addresses are judged by edge.est_auth's trusted proxies
        "timeout_keep_alive": 30,
        "timeout_graceful_shutdown": 10,
        "h11_max_incomplete_event_size": 16 * 1024,
        "log_level": log_level,
        "log_config": _log_config(),
    }


def _log_config() -> dict[str, Any]:
    """uvicorn's lines and the edge's own (pki_edge.*) in the signer's format. Without it the edge's
    loggers had no handler: warnings went out bare (no time, no level), and INFO was lost."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"lines": {"format": LOG_FORMAT}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "lines", "stream": "ext://sys.stderr"}},
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "pki_edge": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        },
    }


def check_listening(config: Config) -> None:
    """What uvicorn would only find once started (in a worker, with a traceback): an unknown host, a port
    in use or not allowed, unreadable or mismatched TLS files."""
    edge, est = config.edge, config.est
    _check_ra_trust_anchors(est.ra_trust_anchors)
    if est.tls_port is not None:
        _check_tls_files(config)  # the operator's files first: the ports' state is the machine's
    _check_bindable(edge.host, edge.port, "edge.port (--port)")
    if est.tls_port is not None:
        _check_bindable(edge.host, est.tls_port, "est.tls_port (--tls-port)")


def _check_ra_trust_anchors(path: str | None) -> None:
    if path is None:
        return
    try:
        x509.load_pem_x509_certificates(Path(path).read_bytes())
    except OSError as exc:
        raise ConfigError(f"est.ra_trust_anchors {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise ConfigError(f"est.ra_trust_anchors {path}: not a PEM bundle of certificates") from None


def _check_tls_files(config: Config) -> None:
    est = config.est
    if not (est.tls_cert and est.tls_key):
        raise ConfigError("--tls-port needs --tls-cert and --tls-key")
    for flag, path in (("--tls-cert", est.tls_cert), ("--tls-key", est.tls_key), ("--client-ca", est.client_ca)):
        if path is not None and not os.access(path, os.R_OK):
            raise ConfigError(f"{flag} {path}: no such file, or not readable")
    try:
        x509.load_pem_x509_certificates(Path(est.tls_cert).read_bytes())
    except ValueError:
        raise ConfigError(f"--tls-cert {est.tls_cert}: not a PEM certificate (its chain may follow it)") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # The password callback refuses an encrypted key instead of prompting on the terminal.
        context.load_cert_chain(est.tls_cert, est.tls_key, password=lambda: b"")
    except OSError as exc:  # ssl.SSLError
        raise ConfigError(
            f"--tls-key {est.tls_key}: not the unencrypted PEM key of --tls-cert {est.tls_cert} ({_ssl_reason(exc)})"
        ) from None
    if est.client_ca:
        try:
            context.load_verify_locations(est.client_ca)
        except OSError as exc:
            raise ConfigError(f"--client-ca {est.client_ca}: {_ssl_reason(exc)} (give a PEM bundle of CAs)") from None


def _check_bindable(host: str, port: int, what: str) -> None:
    """The host resolves, and its port can be bound now (not in use, not privileged, an address of here)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"edge.host (--host) {host!r}: {getattr(exc, 'strerror', None) or exc}") from None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no obstacle
        try:
            sock.bind(address)
        except OSError as exc:
            raise ConfigError(f"{what}: cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _ssl_reason(exc: OSError) -> str:
    return str(getattr(exc, "reason", None) or exc.strerror or exc)


def run_edge(data_dir: Path, config: Config, log_level: str = "info") -> None:
    check_listening(config)
    host, port, workers = config.edge.host, config.edge.port, config.edge.workers
    logging.config.dictConfig(_log_config())  # what is said before uvicorn sets it (again) up
    raise_open_file_limit(logging.getLogger("pki_edge.edge"))
    # Workers are separate processes: each builds its app (and opens LMDB) from the environment.
    os.environ[ENV_DATA] = str(data_dir)
    for name, profile in config.profiles.items():  # a configuration error, before any worker starts
        try:
            csrattrs_der(profile.csrattrs)
        except ValueError as exc:
            raise ConfigError(f"profiles.{name}.csrattrs: {exc}") from None
    est = config.est
    if est.tls_port is None:
        uvicorn.run(
            "edge.app:create_app", factory=True, host=host, port=port, workers=workers, **_options(config, log_level)
        )
        return
    recipe = _DualRecipe(config, host, port, log_level)
    if workers == 1:
        _DualServer(recipe).run()
        return
    # Several workers: uvicorn's supervisor, each worker serving both pre-bound sockets.
    plain = uvicorn.Config("edge.app:create_app", factory=True, host=host, port=port, workers=workers)
    sockets = [plain.bind_socket(), uvicorn.Config(None, host=host, port=est.tls_port).bind_socket()]  # type: ignore[arg-type]
    multiprocess.Process = _DualProcess  # type: ignore[misc]  # the supervisor's worker class, for this process
    _DualProcess.recipe = recipe
    multiprocess.Multiprocess(plain, sockets=sockets).run()


# Linux's default ceiling of open files per process (fs.nr_open), for a hard limit of "unlimited".
_NR_OPEN = 1 << 20


def raise_open_file_limit(logger: logging.Logger) -> int:
    """Lift the soft limit of open files to the hard one; the limit now in force.

    Every connection takes a file descriptor, and the soft limit is often 1024 (systemd's default)
    while the hard one, to which any process may raise it, is far higher: past the soft limit the
    edge would turn clients away by the thousand. Workers inherit it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _NR_OPEN if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            logger.warning("open files stay limited to %d: %s", soft, exc)
            return soft
        logger.info("open files: limit raised from %d to %d", soft, target)
        return target
    return soft


@dataclass(frozen=True)
class _DualRecipe:
    """What a worker needs to build both servers around one application instance (picklable)."""

    config: Config
    host: str
    port: int
    log_level: str

    def configs(self) -> tuple[uvicorn.Config, uvicorn.Config]:
        from edge.app import create_app

        app = create_app(self.config)  # one instance behind both ports: one LMDB handle, one trust store
        est = self.config.est
        plain = uvicorn.Config(app, host=self.host, port=self.port, **_options(self.config, self.log_level))
        secure = uvicorn.Config(
            app,
            host=self.host,
            port=est.tls_port or 0,
            ssl_certfile=est.tls_cert,
            ssl_keyfile=est.tls_key,
            ssl_cert_reqs=ssl.CERT_OPTIONAL,  # EST endpoints decide who must present a certificate
            ssl_context_factory=app.client_trust.ssl_context_factory,
            **_options(self.config, self.log_level),
        )
        return plain, secure


class _TlsBoundedLoop(uvloop.Loop):
    """uvloop, with a bound on TLS handshakes: uvicorn passes create_server no ssl_handshake_timeout, and
    asyncio's default holds a connection that never completes one (a scan, a flood of opened and silent
    connections) for 60 s. The edge's own timers (edge.http_protocol) start once the handshake is done."""

    def __init__(self, handshake_seconds: float) -> None:
        super().__init__()
        self._handshake_seconds = handshake_seconds

    async def create_server(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("ssl") is not None:
            kwargs.setdefault("ssl_handshake_timeout", self._handshake_seconds)
        return await super().create_server(*args, **kwargs)


class _DualServer:
    """Plain HTTP and HTTPS in one event loop; quacks like the uvicorn.Server a supervisor runs."""

    def __init__(self, recipe: _DualRecipe) -> None:
        self._recipe = recipe
        self._first: _LinkedServer | None = None

    @property
    def started(self) -> bool:
        return self._first is not None and self._first.started

    def run(self, sockets: list[socket.socket] | None = None) -> None:
        plain, secure = self._recipe.configs()
        first, second = _LinkedServer(plain), _LinkedServer(secure)
        first.partner = second
        self._first = first
        plain_sockets, secure_sockets = ([sockets[0]], [sockets[1]]) if sockets else (None, None)
        seconds = self._recipe.config.est.tls_handshake_seconds
        uvicorn.server.asyncio_run(
            _serve_both(first, second, plain_sockets, secure_sockets),
            loop_factory=functools.partial(_TlsBoundedLoop, seconds),
        )


class _DualProcess(multiprocess.Process):
    recipe: _DualRecipe | None = None

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
        super().__init__(config, sockets)
        assert self.recipe is not None
        self._dual = _DualServer(self.recipe)  # pickled with the worker's target

    @property
    def server(self) -> Any:
        return self._dual


class _LinkedServer(uvicorn.Server):
    """A signal stops both servers; only the first installs the signal handlers."""

    partner: uvicorn.Server | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self.partner is not None:
            self.partner.should_exit = self.should_exit
            self.partner.force_exit = self.force_exit


async def _serve_both(
    first: _LinkedServer,
    second: _LinkedServer,
    first_sockets: list[socket.socket] | None,
    second_sockets: list[socket.socket] | None,
) -> None:
    await asyncio.gather(first.serve(first_sockets), second._serve(second_sockets))
