"""The EST load generator: C devices enrolling over HTTPS keep-alive, in a process of its own.

    python -m bench.est_load --port Q --label CA --csrs FILE --server-ca TLS.pem --cert RA.pem --key RA.key \\
        --connections 200 --seconds 8 --ready FILE --samples FILE [--keep 32] [--server-pid PID]

Each device is one asyncio task with one TLS connection (stdlib ssl, raw HTTP/1.1, keep-alive) that
POSTs ``/.well-known/est/<CA>/simpleenroll`` in a loop with the next pre-generated CSR (base64 of the
DER, Content-Type application/pkcs10), authenticated by the RA client certificate. All connections
are opened (TLS handshakes done) before the timed window starts; the window's start is announced by
writing the ``--ready`` file, so that the runner can start wrk inside it. Only answers that complete
inside the window count; requests still in flight at its end are awaited (bounded) but not counted.

A 503 (signer queue full or busy) is not an enrollment: it is counted apart and the device waits as a
well-behaved EST client does, Retry-After × U(0.5, 1) (at most ``--max-retry-after`` seconds), so a
storm does not turn into a busy loop of rejections that would only measure the cost of refusing.

Printed on stdout as the last line: one JSON object (counts, latency percentiles of successful
enrollments, server CPU-seconds over the window when ``--server-pid`` is given, this process's own
CPU-seconds). A random sample (reservoir) of ``--keep`` successful answers, with the index of their
CSR, goes to ``--samples`` (JSON Lines) for the runner to validate after timing.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import itertools
import json
import random
import ssl
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.procstat import tree_cpu_seconds
from bench.report import percentile

HOST = "127.0.0.1"
SERVER_NAME = "localhost"  # the edge's TLS certificate names localhost and 127.0.0.1
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
REQUEST_TIMEOUT_S = 30.0  # above the edge's job timeout (10 s): a slow answer is measured, not dropped
CONNECT_TIMEOUT_S = 20.0
MAX_HEAD_BYTES = 16 * 1024


class ProtocolError(Exception):
    """An answer this client cannot read (the connection is dropped and reopened)."""


# --------------------------------------------------------------------------------------- pure parts


def enroll_request(label: str, csr_der: bytes, host: str = f"{HOST}") -> bytes:
    """The bytes of one simpleenroll POST: base64 of the DER CSR in 64-column lines (RFC 7030 §4.2.1)."""
    text = base64.b64encode(csr_der).decode("ascii")
    body = "".join(text[i : i + 64] + "\n" for i in range(0, len(text), 64)).encode("ascii")
    head = (
        f"POST /.well-known/est/{label}/simpleenroll HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        "Content-Type: application/pkcs10\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode("ascii") + body


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """(status, lower-cased headers) of an HTTP/1.x response head (status line and headers, CRLF CRLF)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise ProtocolError(f"malformed header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


def retry_delay(headers: dict[str, str], cap: float, rng: random.Random) -> float:
    """How long a device told 503 waits: Retry-After × U(0.5, 1), capped; 1 s when absent or unreadable."""
    try:
        after = float(headers.get("retry-after", "1"))
    except ValueError:
        after = 1.0
    return min(max(after, 0.0), cap) * rng.uniform(0.5, 1.0)


def latency_summary(latencies_s: Sequence[float]) -> dict[str, float]:
    """Nearest-rank percentiles, mean and max of latencies, in milliseconds (empty for no values)."""
    if not latencies_s:
        return {}
    out = {f"p{p:g}": 1000 * percentile(latencies_s, p) for p in PERCENTILES}
    out["mean"] = 1000 * sum(latencies_s) / len(latencies_s)
    out["max"] = 1000 * max(latencies_s)
    return out


@dataclass
class Tally:
    """What the devices saw inside the window; samples are a reservoir of successful answers."""

    keep: int
    rng: random.Random
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    latencies_s: list[float] = field(default_factory=list)
    late: int = 0  # answers completed after the window (not counted)
    samples: list[tuple[int, str]] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return self.statuses[200]

    def answer(self, status: int, latency_s: float, csr_index: int, body: bytes) -> None:
        self.statuses[status] += 1
        if status != 200:
            return
        self.latencies_s.append(latency_s)
        seen = self.statuses[200]
        if len(self.samples) < self.keep:
            self.samples.append((csr_index, body.decode("ascii", "replace")))
        elif self.keep and (slot := self.rng.randrange(seen)) < self.keep:
            self.samples[slot] = (csr_index, body.decode("ascii", "replace"))

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "busy": self.statuses[503],
            "errors": dict(self.errors),
            "late": self.late,
            "latency_ms": latency_summary(self.latencies_s),
        }


# --------------------------------------------------------------------------------------- the client


@dataclass
class Target:
    port: int
    requests: list[bytes]  # one pre-encoded POST per CSR
    tls: ssl.SSLContext
    max_retry_after: float


class Connection:
    """One keep-alive TLS connection; reopened by the device when the server closes it or it breaks."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, target: Target) -> Connection:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(
                HOST, target.port, ssl=target.tls, server_hostname=SERVER_NAME
            )
        return cls(reader, writer)

    async def exchange(self, request: bytes) -> tuple[int, dict[str, str], bytes]:
        self.writer.write(request)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        if len(head) > MAX_HEAD_BYTES:
            raise ProtocolError("response head too large")
        status, headers = parse_head(head[:-4])
        length = headers.get("content-length")
        if length is None or not length.isdigit():
            raise ProtocolError("answer without Content-Length")
        body = await self.reader.readexactly(int(length))
        return status, headers, body

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


def client_context(server_ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(server_ca))
    context.load_cert_chain(str(cert), str(key))
    return context


async def device(
    target: Target, conn: Connection | None, counter: itertools.count[int], deadline: float, tally: Tally, seed: int
) -> None:
    """Enroll in a loop until the deadline: next CSR, POST, read the answer; back off on 503."""
    rng = random.Random(seed)  # each device its own back-off draws
    n = len(target.requests)
    while time.monotonic() < deadline:
        if conn is None:
            try:
                conn = await Connection.open(target)
            except (OSError, TimeoutError, ssl.SSLError):
                tally.errors["connect"] += 1
                await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
                continue
        index = next(counter) % n
        started = time.monotonic()
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                status, headers, body = await conn.exchange(target.requests[index])
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ProtocolError) as exc:
            tally.errors[_error_kind(exc)] += 1
            conn.close()
            conn = None
            continue
        finished = time.monotonic()
        if finished > deadline:
            tally.late += 1
            break
        tally.answer(status, finished - started, index, body)
        if headers.get("connection", "").lower() == "close":
            conn.close()
            conn = None
        if status in (429, 503):
            await asyncio.sleep(min(retry_delay(headers, target.max_retry_after, rng), deadline - finished))
        elif status != 200:
            await asyncio.sleep(0.01)  # a refusal (4xx) is a bench fault: counted, and no busy loop on it
    if conn is not None:
        conn.close()


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ProtocolError | asyncio.LimitOverrunError):
        return "protocol"
    return "closed"


async def open_all(target: Target, count: int) -> list[Connection | None]:
    """Open ``count`` connections, a few handshakes at a time (a storm of devices that are all online)."""
    slots = asyncio.Semaphore(32)

    async def one() -> Connection | None:
        async with slots:
            try:
                return await Connection.open(target)
            except (OSError, TimeoutError, ssl.SSLError):
                return None

    return list(await asyncio.gather(*(one() for _ in range(count))))


def _server_cpu(pid: int | None) -> float | None:
    if pid is None:
        return None
    return tree_cpu_seconds(pid)


async def storm(
    target: Target, connections: int, seconds: float, ready: Path | None, tally: Tally, pid: int | None
) -> dict[str, Any]:
    conns = await open_all(target, connections)
    connected = sum(c is not None for c in conns)
    counter = itertools.count()
    cpu0, own0 = _server_cpu(pid), time.process_time()
    started = time.monotonic()
    deadline = started + seconds
    if ready is not None:
        ready.write_text(f"{time.time()}\n")
    window: dict[str, Any] = {}

    async def at_deadline() -> None:
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        cpu1 = _server_cpu(pid)
        window["window_s"] = time.monotonic() - started
        window["client_cpu_s"] = time.process_time() - own0
        window["server_cpu_s"] = cpu1 - cpu0 if cpu1 is not None and cpu0 is not None else None

    devices = (device(target, c, counter, deadline, tally, seed) for seed, c in enumerate(conns))
    await asyncio.gather(at_deadline(), *devices)
    return {"connections": connections, "connected": connected, "seconds": seconds, **window}


# --------------------------------------------------------------------------------------- entry point


def read_csrs(path: Path) -> list[bytes]:
    """DER CSRs from a file of one base64 DER per line."""
    return [base64.b64decode(line) for line in path.read_text(encoding="ascii").split()]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.est_load", description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="the edge's HTTPS port on 127.0.0.1")
    parser.add_argument("--label", required=True, help="the CA label to enroll with")
    parser.add_argument("--csrs", type=Path, required=True, help="one base64 DER CSR per line")
    parser.add_argument("--server-ca", type=Path, required=True)
    parser.add_argument("--cert", type=Path, required=True, help="the RA client certificate")
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--ready", type=Path, help="written when the timed window starts")
    parser.add_argument("--samples", type=Path, help="JSON Lines: a random sample of successful answers")
    parser.add_argument("--keep", type=int, default=32)
    parser.add_argument("--server-pid", type=int, help="measure this process tree's CPU over the window")
    parser.add_argument("--max-retry-after", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if not (1 <= args.connections <= 10_000 and 0 < args.seconds <= 3600):
        parser.error("--connections must be 1..10000 and --seconds 0..3600")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    csrs = read_csrs(args.csrs)
    if not csrs:
        raise SystemExit("bench.est_load: no CSRs")
    host = f"{HOST}:{args.port}"
    target = Target(
        port=args.port,
        requests=[enroll_request(args.label, der, host) for der in csrs],
        tls=client_context(args.server_ca, args.cert, args.key),
        max_retry_after=args.max_retry_after,
    )
    tally = Tally(keep=args.keep, rng=random.Random(args.seed))
    window = asyncio.run(storm(target, args.connections, args.seconds, args.ready, tally, args.server_pid))
    if args.samples is not None:
        with args.samples.open("w", encoding="ascii") as out:
            for index, body in tally.samples:
                out.write(json.dumps({"csr": index, "body": body}) + "\n")
    print(json.dumps({**window, **tally.as_dict()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
