"""The Python floor: the least a uvloop + httptools server can do per OCSP request.

A reference, not an OCSP server: every answer is looked up whole in a dict keyed by the request as
sent (the GET path, or the POST body), built from the benchmark's own mixes, so a request costs one
``recv``, httptools' parsing, one dict lookup and one ``send``. It writes a loop turn's answers together
with the edge's own ``edge.fastlane.WriteBatch`` and sends headers of the edge's length.
What pki-edge spends beyond this row is the OCSP work and uvicorn; what this row spends beyond nginx
is the Python runtime and the event loop, which no OCSP code can win back.

    python -m bench.floor --port P --answers FILE

FILE is msgpack: a list of [key, DER] pairs (:func:`write_answers`).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Iterable
from email.utils import formatdate
from pathlib import Path
from typing import cast

import httptools
import msgspec
import uvloop

from edge.fastlane import WriteBatch

# Header lines of the same length and kind as the edge's answer (uvicorn's date and server, the
# RFC 5019bis cache headers, content type and length): only the bytes on the wire matter here.
_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"date: %(date)s\r\n"
    b"server: uvicorn\r\n"
    b"cache-control: max-age=86399, public, no-transform, must-revalidate, stale-while-revalidate=0\r\n"
    b"last-modified: %(date)s\r\n"
    b"expires: %(date)s\r\n"
    b'etag: "00000000000000000000000000000000"\r\n'
    b"content-type: application/ocsp-response\r\n"
    b"content-length: %(length)d\r\n\r\n"
)
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"


def write_answers(path: Path, pairs: Iterable[tuple[bytes, bytes]]) -> int:
    """Store (request key, response DER) pairs: the key is the GET path as sent, or the POST body."""
    entries = dict(pairs)
    path.write_bytes(msgspec.msgpack.encode(list(entries.items())))
    return len(entries)


def load_answers(path: Path) -> dict[bytes, bytes]:
    date = formatdate(usegmt=True).encode()
    answers: dict[bytes, bytes] = {}
    for key, der in msgspec.msgpack.decode(path.read_bytes(), type=list[tuple[bytes, bytes]]):
        answers[key] = _HEAD % {b"date": date, b"length": len(der)} + der
    return answers


class FloorProtocol(asyncio.Protocol):
    def __init__(self, answers: dict[bytes, bytes], batch: WriteBatch) -> None:
        self._answers = answers
        self._batch = batch
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._body = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's TCPTransport is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            assert self._transport is not None
            self._transport.close()

    def on_message_begin(self) -> None:
        self._body = b""

    def on_url(self, url: bytes) -> None:
        self._url = url

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        assert self._transport is not None
        key = self._body or self._url
        self._batch.write(self._transport, self._answers.get(key, _NOT_FOUND), False)


async def serve(port: int, answers: dict[bytes, bytes]) -> None:
    loop = asyncio.get_running_loop()
    batch = WriteBatch.of(loop)
    server = await loop.create_server(lambda: FloorProtocol(answers, batch), "127.0.0.1", port, backlog=2048)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--answers", type=Path, required=True)
    args = parser.parse_args(argv)
    uvloop.run(serve(args.port, load_answers(args.answers)))


if __name__ == "__main__":
    main()
