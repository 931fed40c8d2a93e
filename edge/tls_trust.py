"""Which CAs a TLS client certificate may chain to on the HTTPS port.

The registry's CAs (devices re-enrolling, RAs issued by a registry CA), kept up
to date as CAs are added, plus an optional operator bundle (``est.client_ca``,
e.g. an RA trust anchor). The TLS layer only checks the chain; the EST
endpoints decide what an authenticated certificate may do.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from contract.store import IssuerRecord
from edge.source import LmdbSource


class ClientTrust:
    def __init__(self, source: LmdbSource, client_ca_files: list[str], logger: logging.Logger) -> None:
        self._source = source
        self._client_ca_files = client_ca_files
        self._logger = logger
        self._contexts: list[ssl.SSLContext] = []
        self._loaded: set[bytes] = set()
        source.on_registry_change(self._on_registry)

    def ssl_context_factory(self, config: Any, default_factory: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        """uvicorn's ``ssl_context_factory``: its default context, trusting our CAs for clients."""
        context = default_factory()
        for path in self._client_ca_files:
            context.load_verify_locations(path)
        self._contexts.append(context)
        if self._source.open():
            self._source.refresh_issuers()
        self._load(list(self._source.issuers.values()), [context], force=True)
        return context

    def _on_registry(self, records: list[IssuerRecord]) -> None:
        self._load(records, self._contexts, force=False)

    def _load(self, records: list[IssuerRecord], contexts: list[ssl.SSLContext], force: bool) -> None:
        for record in records:
            if record.cert_der in self._loaded and not force:
                continue
            pem = x509.load_der_x509_certificate(record.cert_der).public_bytes(Encoding.PEM).decode()
            for context in contexts:
                context.load_verify_locations(cadata=pem)
            self._loaded.add(record.cert_der)
            self._logger.info("TLS clients may present certificates issued by CA %s", record.name)
