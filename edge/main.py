"""Run the edge: uvicorn with uvloop and httptools, one or more worker processes."""

from __future__ import annotations

import os
from pathlib import Path

import uvicorn

from contract.config import ENV_DATA, Config


def run_edge(data_dir: Path, config: Config, host: str, port: int, workers: int, log_level: str = "info") -> None:
    # Workers are separate processes: each builds its app (and opens LMDB) from the environment.
    os.environ[ENV_DATA] = str(data_dir)
    uvicorn.run(
        "edge.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        # The fast lane answers OCSP straight from the parser; everything else is ASGI as usual.
        http="edge.fastlane:OCSPHttpToolsProtocol" if config.edge.fast_lane else "httptools",
        lifespan="on",
        access_log=False,
        server_header=False,
        proxy_headers=False,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=10,
        h11_max_incomplete_event_size=16 * 1024,
        log_level=log_level,
    )
