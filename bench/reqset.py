"""Request sets: the OCSP requests every server is driven with, and their order.

For each sampled serial and each CertID hash algorithm (SHA-1, SHA-256) one DER OCSPRequest is built
(cryptography's OCSPRequestBuilder with the CA's issuer hashes from ``edge.source.issuer_hashes``).
A mix is a sequence of requests:

- ``get``: GET ``/{base64}``, half percent-encoded (``%2F %2B %3D``), half raw base64 (``/`` making
  path segments), chosen per request;
- ``post``: POST ``/`` with the DER as body.

Serials are drawn uniformly, or Zipf-distributed (s = 1.1, rank 1 the most requested; ranks are
assigned to serials at random). Both hash algorithms are equally likely. The sequence is written as a
file that ``bench/lua/mix.lua`` reads at start-up and walks with a counter, one line per request:
``GET <path>`` or ``POST <path> <hex body>``. Headers all requests of a run carry besides wrk's Host
(``CDN_HEADERS``, with ``bench.run --cdn-headers``) are a file of their own (:func:`write_headers`).
"""

from __future__ import annotations

import base64
import bisect
import itertools
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from edge.source import issuer_hashes

HASHES: dict[str, hashes.HashAlgorithm] = {"sha1": hashes.SHA1(), "sha256": hashes.SHA256()}

# What a CDN's cache miss carries besides Host (wrk sends Host alone): nine header lines.
CDN_HEADERS: tuple[tuple[str, str], ...] = (
    ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) ocsp-check/1.0"),
    ("Accept", "*/*"),
    ("Accept-Encoding", "gzip"),
    ("Via", "1.1 cdn-edge-42"),
    ("X-Forwarded-For", "203.0.113.7"),
    ("CDN-Loop", "cdn; count=1"),
    ("X-Request-Id", "4f1c2a9e8d7b6c5a"),
    ("Cache-Control", "max-age=0"),
    ("True-Client-IP", "203.0.113.7"),
)
GET_ENCODINGS = ("pct", "raw")
ZIPF_S = 1.1


@dataclass(frozen=True)
class Item:
    """One OCSP request: which serial and hash algorithm, and its DER."""

    serial: int
    hash_name: str
    der: bytes
    revoked: bool = False


def build_items(
    ca_der: bytes, serials: Iterable[tuple[int, bool]], hash_names: Sequence[str] = ("sha1", "sha256")
) -> list[Item]:
    """One request per (serial, hash algorithm)."""
    hashes_of = {name: issuer_hashes(ca_der, name) for name in hash_names}
    items = []
    for serial, revoked in serials:
        for name in hash_names:
            name_hash, key_hash = hashes_of[name]
            builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(name_hash, key_hash, serial, HASHES[name])
            items.append(Item(serial, name, builder.build().public_bytes(serialization.Encoding.DER), revoked))
    return items


def b64(der: bytes) -> str:
    return base64.b64encode(der).decode("ascii")


def get_path(der: bytes, encoding: str) -> str:
    """The GET path of a request: ``pct`` percent-encoded base64, ``raw`` base64, ``url`` base64url."""
    text = b64(der)
    if encoding == "pct":
        return "/" + text.replace("%", "%25").replace("/", "%2F").replace("+", "%2B").replace("=", "%3D")
    if encoding == "raw":
        return "/" + text
    if encoding == "url":
        return "/" + base64.urlsafe_b64encode(der).decode("ascii").rstrip("=")
    raise ValueError(f"unknown GET encoding {encoding!r}")


def static_file_name(der: bytes) -> str:
    """Where a static server finds the response: the decoded GET path (standard base64, '/' = directories)."""
    return b64(der)


def servable_as_static_file(item: Item) -> bool:
    """A base64 ending in '/' names a directory, not a file: nginx cannot serve it (under 1 % of requests)."""
    return not b64(item.der).endswith("/")


def uniform_order(n_items: int, length: int, rng: random.Random) -> list[int]:
    return [rng.randrange(n_items) for _ in range(length)]


def zipf_weights(n: int, s: float = ZIPF_S) -> list[float]:
    return [1.0 / (rank**s) for rank in range(1, n + 1)]


def zipf_order(n_keys: int, length: int, rng: random.Random, s: float = ZIPF_S) -> list[int]:
    """``length`` draws over ``n_keys`` keys with P(rank k) ∝ 1/k^s; ranks given to keys at random."""
    cumulative = list(itertools.accumulate(zipf_weights(n_keys, s)))
    total = cumulative[-1]
    keys = list(range(n_keys))
    rng.shuffle(keys)
    return [keys[min(bisect.bisect_left(cumulative, rng.random() * total), n_keys - 1)] for _ in range(length)]


def request_lines(
    items: Sequence[Item], method: str, distribution: str, length: int, seed: int
) -> tuple[list[str], list[int]]:
    """The mix as wrk lines, and the index of the item behind each line.

    Serials are drawn by ``distribution`` (uniform or zipf) and each serial's hash algorithm at random,
    so both orders cover the same items. ``items`` are grouped by serial (build_items order).
    """
    rng = random.Random(seed)
    by_serial: dict[int, list[int]] = {}
    for index, item in enumerate(items):
        by_serial.setdefault(item.serial, []).append(index)
    groups = list(by_serial.values())
    if distribution == "uniform":
        draws = uniform_order(len(groups), length, rng)
    elif distribution == "zipf":
        draws = zipf_order(len(groups), length, rng)
    else:
        raise ValueError(f"unknown distribution {distribution!r}")
    lines, chosen = [], []
    for group_index in draws:
        index = rng.choice(groups[group_index])
        der = items[index].der
        if method == "GET":
            lines.append("GET " + get_path(der, rng.choice(GET_ENCODINGS)))
        elif method == "POST":
            lines.append("POST / " + der.hex())
        else:
            raise ValueError(f"unknown method {method!r}")
        chosen.append(index)
    return lines, chosen


def write_lines(path: Path, lines: Iterable[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="ascii")
    return path


def write_headers(path: Path, headers: Iterable[tuple[str, str]]) -> Path:
    """Header lines every request of a wrk run carries (``bench/lua/mix.lua`` reads them from the file
    named by ``BENCH_HEADERS``)."""
    path.write_text("".join(f"{name}: {value}\n" for name, value in headers), encoding="ascii")
    return path


def parse_line(line: str) -> tuple[str, str, bytes]:
    """(method, path, body) of one wrk line (the inverse of :func:`request_lines`, for checks)."""
    parts = line.rstrip("\n").split(" ")
    body = bytes.fromhex(parts[2]) if len(parts) > 2 else b""
    return parts[0], parts[1], body
