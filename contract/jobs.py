"""Signing jobs: what the edge asks of the signer workers, and what it gets back.

Every job and every result is a frozen msgspec Struct of a tagged union, so
both sides decode exactly the same types whatever carries them (the embedded
Unix-socket backend today, NATS request/reply later). The edge never holds a
CA key: it submits a job and awaits its result with a timeout.
"""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import msgspec

# Where the embedded backend listens: on the signer's side of the data directory.
JOBS_SOCKET = "signer/jobs.sock"
# Subject a NATS backend would use, with the workers in one queue group.
NATS_SUBJECT = "pki-edge.jobs"
NATS_QUEUE_GROUP = "pki-edge-signers"
MAX_FRAME_BYTES = 1 << 20


class EnrollJob(msgspec.Struct, frozen=True, tag="enroll"):
    """simpleenroll: issue a certificate for the CSR from CA ``ca`` (authorisation done by the edge)."""

    ca: str
    csr_der: bytes
    requester: str


class ReenrollJob(msgspec.Struct, frozen=True, tag="reenroll"):
    """simplereenroll: renew or re-key ``current_cert_der`` from the CA that issued it."""

    ca: str
    csr_der: bytes
    current_cert_der: bytes


class ServerKeygenJob(msgspec.Struct, frozen=True, tag="serverkeygen"):
    """serverkeygen: the worker generates the key; the CSR gives subject and extensions only."""

    ca: str
    csr_der: bytes
    requester: str


class CertRef(msgspec.Struct, frozen=True, array_like=True):
    """One CertID the edge has already matched to a known issuer and a known serial."""

    issuer_number: int
    hash_code: int
    serial_key: bytes


class LiveOcspJob(msgspec.Struct, frozen=True, tag="live_ocsp"):
    """One signed response with a SingleResponse per CertID (RFC 6960 §4.2.2.3)."""

    certs: tuple[CertRef, ...]


Job = EnrollJob | ReenrollJob | ServerKeygenJob | LiveOcspJob


class Issued(msgspec.Struct, frozen=True, tag="issued"):
    """The certificate is in the inventory and its OCSP responses are stored."""

    cert_der: bytes


class IssuedWithKey(msgspec.Struct, frozen=True, tag="issued_with_key"):
    cert_der: bytes
    key_pkcs8_der: bytes


class OcspSigned(msgspec.Struct, frozen=True, tag="ocsp_signed"):
    der: bytes


class Refused(msgspec.Struct, frozen=True, tag="refused"):
    """The job cannot be granted: ``status`` is the HTTP status to answer, 4xx when the request itself
    is wrong, 503 (answered with Retry-After) when its CA cannot issue for a time."""

    status: int
    reason: str


class Busy(msgspec.Struct, frozen=True, tag="busy"):
    """The workers are saturated: answer 503 with Retry-After."""

    retry_after: int


Result = Issued | IssuedWithKey | OcspSigned | Refused | Busy


class JobRequest(msgspec.Struct, frozen=True, array_like=True):
    id: int
    job: Job
    # Unix time after which the edge no longer waits: a job not started by then is never run,
    # so a client told 503 is never issued a certificate it did not receive.
    deadline: float


class JobReply(msgspec.Struct, frozen=True, array_like=True):
    id: int
    result: Result


REQUEST_ENCODER = msgspec.msgpack.Encoder()
REQUEST_DECODER = msgspec.msgpack.Decoder(JobRequest)
REPLY_ENCODER = msgspec.msgpack.Encoder()
REPLY_DECODER = msgspec.msgpack.Decoder(JobReply)


def socket_path(data_dir: Path) -> Path:
    return data_dir / JOBS_SOCKET


# The embedded backend's framing: a 4-byte big-endian length, then one msgpack message.
_FRAME = struct.Struct(">I")


def frame(payload: bytes) -> bytes:
    return _FRAME.pack(len(payload)) + payload


FRAME_HEADER_BYTES = _FRAME.size


def frame_size(header: bytes, limit: int = MAX_FRAME_BYTES) -> int:
    """The length a frame's header announces; ValueError past ``limit`` (or for a short header)."""
    if len(header) != _FRAME.size:
        raise ValueError("truncated frame header")
    size: int = _FRAME.unpack(header)[0]
    if size > limit:
        raise ValueError(f"frame of {size} bytes is over the limit")
    return size


async def read_frame(reader: asyncio.StreamReader, limit: int = MAX_FRAME_BYTES) -> bytes:
    return await reader.readexactly(frame_size(await reader.readexactly(_FRAME.size), limit))
