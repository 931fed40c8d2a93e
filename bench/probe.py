"""Single HTTP requests to a server under test (readiness, answer checks, revocation polling)."""

from __future__ import annotations

import http.client
from dataclasses import dataclass

from cryptography.x509 import ocsp

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: str
    body: bytes


class Client:
    """A keep-alive HTTP/1.1 connection to 127.0.0.1:port that reconnects when the server closes."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.port = port
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes = b"") -> Reply:
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
            try:
                headers = {"Content-Type": "application/ocsp-request"} if method == "POST" else {}
                self._conn.request(method, path, body=body if method == "POST" else None, headers=headers)
                response = self._conn.getresponse()
                data = response.read()
                reply = Reply(response.status, response.getheader("content-type") or "", data)
                if response.will_close:
                    self.close()
                return reply
            except (http.client.HTTPException, OSError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def answers(port: int, method: str, path: str, body: bytes = b"", timeout: float = 2.0) -> Reply | None:
    """One request on a fresh connection; None when the server does not answer (yet)."""
    client = Client(port, timeout)
    try:
        return client.request(method, path, body)
    except (TimeoutError, http.client.HTTPException, OSError):
        return None
    finally:
        client.close()


def cert_status(body: bytes) -> tuple[str, int | None]:
    """('good' | 'revoked' | 'unknown', serial) of a successful OCSP response, or (status name, None)."""
    try:
        response = ocsp.load_der_ocsp_response(body)
    except ValueError:
        return "unparsable", None
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        return response.response_status.name.lower(), None
    return response.certificate_status.name.lower(), response.serial_number
