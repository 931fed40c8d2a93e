"""Request sets: every path decodes back to its DER request, orders are uniform or skewed as asked."""

from __future__ import annotations

import base64
import collections
import datetime as dt
import random
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from bench import reqset
from edge.get_path import decode_get_request
from edge.ocsp_request import parse_ocsp_request
from edge.source import issuer_hashes
from signer.certs import make_ca_certificate
from signer.keys import generate_key

SERIALS = [(0x4690E052C32A840ADDC810A99154A3DF + 977 * i, i % 10 == 9) for i in range(60)]


@pytest.fixture(scope="module")
def ca_der() -> bytes:
    key = generate_key("ec-p256")
    return make_ca_certificate("reqset", key, 30, dt.datetime.now(dt.UTC)).public_bytes(Encoding.DER)


@pytest.fixture(scope="module")
def items(ca_der: bytes) -> list[reqset.Item]:
    return reqset.build_items(ca_der, SERIALS)


def test_one_request_per_serial_and_hash(items, ca_der):
    assert len(items) == 2 * len(SERIALS)
    assert collections.Counter(i.hash_name for i in items) == {"sha1": 60, "sha256": 60}
    for item in items:
        request = ocsp.load_der_ocsp_request(item.der)
        assert request.serial_number == item.serial
        name_hash, key_hash = issuer_hashes(ca_der, item.hash_name)
        assert (request.issuer_name_hash, request.issuer_key_hash) == (name_hash, key_hash)
        cert_id = parse_ocsp_request(item.der).cert_ids[0]  # the edge's own parser agrees
        assert int.from_bytes(cert_id.serial_number, "big") == item.serial


@pytest.mark.parametrize("encoding", ["pct", "raw", "url"])
def test_get_paths_decode_back_to_the_request(items, encoding):
    for item in items:
        path = reqset.get_path(item.der, encoding)
        assert path.startswith("/M")
        assert decode_get_request(path[1:].encode(), 10000) == item.der
        if encoding == "pct":
            assert not set("/+=") & set(path[1:])
        if encoding == "url":
            assert not set("/+=") & set(path[1:])


def test_static_file_name_is_the_decoded_get_path(items):
    for item in items:
        assert base64.b64decode(reqset.static_file_name(item.der)) == item.der
    assert all(reqset.servable_as_static_file(i) == (not reqset.b64(i.der).endswith("/")) for i in items)


def test_zipf_order_is_skewed_and_uniform_is_not():
    rng = random.Random(3)
    n, length = 1000, 50_000
    zipf = collections.Counter(reqset.zipf_order(n, length, rng))
    uniform = collections.Counter(reqset.uniform_order(n, length, rng))
    top10 = sum(c for _, c in zipf.most_common(10)) / length
    assert top10 > 0.35  # s = 1.1 over 1000 keys puts ~45 % of draws on the 10 hottest
    assert sum(c for _, c in uniform.most_common(10)) / length < 0.02
    assert max(zipf) < n and min(zipf) >= 0
    # The hottest key is a random one, not key 0.
    assert reqset.zipf_order(n, 1000, random.Random(1)) != reqset.zipf_order(n, 1000, random.Random(2))


def test_request_lines_get_and_post(items, tmp_path: Path):
    lines, chosen = reqset.request_lines(items, "GET", "uniform", 400, seed=5)
    assert len(lines) == len(chosen) == 400
    encodings = collections.Counter("%" in line for line in lines)
    assert encodings[True] > 100 and encodings[False] > 100  # both percent-encoded and raw base64
    assert {items[i].hash_name for i in chosen} == {"sha1", "sha256"}
    for line, index in zip(lines, chosen, strict=True):
        method, path, body = reqset.parse_line(line)
        assert method == "GET" and body == b""
        assert decode_get_request(path[1:].encode(), 10000) == items[index].der
    lines, chosen = reqset.request_lines(items, "POST", "zipf", 400, seed=5)
    path_file = reqset.write_lines(tmp_path / "post.txt", lines)
    for line, index in zip(path_file.read_text().splitlines(), chosen, strict=True):
        method, path, body = reqset.parse_line(line)
        assert (method, path, body) == ("POST", "/", items[index].der)
    assert reqset.request_lines(items, "POST", "zipf", 400, seed=5)[0] == lines  # reproducible


def test_unknown_choices_are_refused(items):
    with pytest.raises(ValueError):
        reqset.request_lines(items, "PUT", "uniform", 10, seed=1)
    with pytest.raises(ValueError):
        reqset.request_lines(items, "GET", "pareto", 10, seed=1)
    with pytest.raises(ValueError):
        reqset.get_path(b"\x30\x00", "hex")
