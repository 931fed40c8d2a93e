"""Run the edge: uvicorn with uvloop and httptools, plain HTTP and, when configured, HTTPS beside it.

OCSP is served on both ports; EST needs the HTTPS one (or a trusted proxy in front).
With HTTPS, one process serves both ports from one application instance.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from contract.config import ENV_DATA, Config, ConfigError
from edge.est_codec import csrattrs_der


def _options(config: Config, log_level: str) -> dict[str, Any]:
    return {
        "loop": "uvloop",
        # The fast lane answers OCSP straight from the parser; everything else is ASGI as usual.
        "http": "edge.fastlane:OCSPHttpToolsProtocol" if config.edge.fast_lane else "edge.fastlane:TlsScopeProtocol",
        "lifespan": "on",
        "access_log": False,
        "server_header": False,
        "proxy_headers": False,  # client addresses are judged by edge.est_auth's trusted proxies
        "timeout_keep_alive": 30,
        "timeout_graceful_shutdown": 10,
        "h11_max_incomplete_event_size": 16 * 1024,
        "log_level": log_level,
    }


def run_edge(data_dir: Path, config: Config, host: str, port: int, workers: int, log_level: str = "info") -> None:
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
    if not (est.tls_cert and est.tls_key):
        raise ConfigError("--tls-port needs --tls-cert and --tls-key")
    if workers != 1:
        raise ConfigError("--tls-port serves from one worker process for now: use --workers 1")
    from edge.app import create_app

    app = create_app()  # one instance behind both ports: one LMDB handle, one trust store
    plain = uvicorn.Config(app, host=host, port=port, **_options(config, log_level))
    secure = uvicorn.Config(
        app,
        host=host,
        port=est.tls_port,
        ssl_certfile=est.tls_cert,
        ssl_keyfile=est.tls_key,
        ssl_cert_reqs=ssl.CERT_OPTIONAL,  # EST endpoints decide who must present a certificate
        ssl_context_factory=app.client_trust.ssl_context_factory,
        **_options(config, log_level),
    )
    servers = _LinkedServer(plain), _LinkedServer(secure)
    servers[0].partner = servers[1]
    asyncio_run = uvicorn.server.asyncio_run
    asyncio_run(_serve_both(*servers), loop_factory=plain.get_loop_factory())


class _LinkedServer(uvicorn.Server):
    """A signal stops both servers; only the first installs the signal handlers."""

    partner: uvicorn.Server | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self.partner is not None:
            self.partner.should_exit = self.should_exit
            self.partner.force_exit = self.force_exit


async def _serve_both(first: _LinkedServer, second: _LinkedServer) -> None:
    await asyncio.gather(first.serve(), second._serve())
