"""Tests of the GET path decoding (``edge.get_path``): every quirk real clients send.

Each quirk starts from a real DER request and its standard base64, mangles the base64 the
way a client does, puts it behind each prefix, and must decode to exactly the same DER.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.get_path import GetPaths, decode_get_request, strip_prefix
from edge.ocsp_request import MalformedRequest, parse_ocsp_request
from tests.edge.conftest import crypto_request_by_hash, fake_hashes

PREFIXES = (b"/api/ocsp", b"/ocsp", b"")
MAX_DER = 10000


def find_awkward_request() -> bytes:
    """A real request whose base64 has every awkward character: '//', '+' and '==' padding."""
    name_hash, key_hash = fake_hashes("sha1", b"get-path")
    for serial in range(1, 500_000):
        der = crypto_request_by_hash(name_hash, key_hash, serial)
        b64 = base64.b64encode(der)
        if b"//" in b64 and b"+" in b64 and b64.endswith(b"=="):
            return der
    raise AssertionError("no serial gives an awkward base64")


DER = find_awkward_request()
B64 = base64.b64encode(DER)
URLSAFE = base64.urlsafe_b64encode(DER)
DER_PATH_HEAD = B64[:24]  # a real request's first bytes, so that some examples decode


def test_the_request_is_awkward_enough() -> None:
    assert b"//" in B64 and b"+" in B64 and B64.endswith(b"==")
    assert b"-" in URLSAFE and b"_" in URLSAFE
    assert parse_ocsp_request(DER).cert_ids


def percent(b64: bytes, table: dict[bytes, bytes]) -> bytes:
    for char, escape in table.items():
        b64 = b64.replace(char, escape)
    return b64


UPPER = {b"/": b"%2F", b"+": b"%2B", b"=": b"%3D"}
LOWER = {b"/": b"%2f", b"+": b"%2b", b"=": b"%3d"}


def combined(b64: bytes) -> bytes:
    """Extra slash, one '/' escaped and the others raw, '+' as a space, padding dropped."""
    first_slash = b64.index(b"/")
    mixed = b64[:first_slash] + b"%2f" + b64[first_slash + 1 :]
    return b"/" + mixed.replace(b"+", b" ").rstrip(b"=")


# (id, what the client puts after "<prefix>/")
QUIRKS: list[tuple[str, Callable[[], bytes]]] = [
    ("plain", lambda: B64),
    ("percent-upper", lambda: percent(B64, UPPER)),
    ("percent-lower", lambda: percent(B64, LOWER)),
    ("percent-slash-only", lambda: B64.replace(b"/", b"%2F")),
    ("percent-plus-and-equals-only", lambda: percent(B64, {b"+": b"%2B", b"=": b"%3D"})),
    ("percent-every-character", lambda: b"".join(b"%%%02X" % c for c in B64)),
    ("unencoded-slashes-make-segments", lambda: B64),
    ("plus-as-literal-space", lambda: B64.replace(b"+", b" ")),
    ("plus-as-%20", lambda: B64.replace(b"+", b"%20")),
    ("double-slash-kept", lambda: B64),
    ("double-slash-half-escaped", lambda: B64.replace(b"//", b"/%2F", 1)),
    ("extra-leading-slash", lambda: b"/" + B64),
    ("extra-leading-slash-percent", lambda: b"/" + percent(B64, UPPER)),
    ("missing-padding", lambda: B64.rstrip(b"=")),
    ("one-padding-char-of-two", lambda: B64[:-1]),
    ("base64url", lambda: URLSAFE),
    ("base64url-no-padding", lambda: URLSAFE.rstrip(b"=")),
    ("base64url-extra-slash-padding-escaped", lambda: b"/" + URLSAFE.replace(b"=", b"%3d")),
    ("combined", lambda: combined(B64)),
]


@pytest.mark.parametrize("prefix", PREFIXES, ids=lambda p: p.decode() or "root")
@pytest.mark.parametrize("quirk", [q[1] for q in QUIRKS], ids=[q[0] for q in QUIRKS])
def test_quirk_decodes_to_the_exact_request(quirk: Callable[[], bytes], prefix: bytes) -> None:
    raw_path = prefix + b"/" + quirk()

    encoded = strip_prefix(raw_path, PREFIXES)

    assert encoded is not None
    assert decode_get_request(encoded, MAX_DER) == DER


def test_quirks_really_are_quirky() -> None:
    """Guard the table: each mangled form differs from the plain base64 the way it claims."""
    quirks = {name: make() for name, make in QUIRKS}
    assert quirks["unencoded-slashes-make-segments"].count(b"/") >= 2
    assert b"//" in quirks["double-slash-kept"]
    assert b" " in quirks["plus-as-literal-space"] and b"+" not in quirks["plus-as-literal-space"]
    assert b"%2f" in quirks["percent-lower"] and b"%2b" in quirks["percent-lower"]
    assert not quirks["missing-padding"].endswith(b"=")
    assert quirks["combined"].startswith(b"/") and b" " in quirks["combined"]
    assert b"%2f" in quirks["combined"] and b"/" in quirks["combined"][1:]
    for name, value in quirks.items():
        if name not in {"plain", "unencoded-slashes-make-segments", "double-slash-kept"}:
            assert value != B64, name


def test_the_second_request_also_decodes() -> None:
    """A request of another length (no padding needed) through the same quirks."""
    der = crypto_request_by_hash(*fake_hashes("sha256"), 2**64 + 3, "sha256", nonce=b"\x17" * 16)
    b64 = base64.b64encode(der)
    for part in (b64, b64.rstrip(b"="), b"/" + percent(b64, LOWER), base64.urlsafe_b64encode(der)):
        for prefix in PREFIXES:
            encoded = strip_prefix(prefix + b"/" + part, PREFIXES)
            assert encoded is not None
            assert decode_get_request(encoded, MAX_DER) == der


# ------------------------------------------------------------------ strip_prefix

STRIP_CASES = [
    ("api-prefix", b"/api/ocsp/MEQw", PREFIXES, b"MEQw"),
    ("ocsp-prefix", b"/ocsp/MEQw", PREFIXES, b"MEQw"),
    ("root", b"/MEQw", PREFIXES, b"MEQw"),
    ("prefix-alone", b"/ocsp", PREFIXES, b""),
    ("prefix-and-slash", b"/ocsp/", PREFIXES, b""),
    ("extra-slash-kept-for-decoder", b"/ocsp//MEQw", PREFIXES, b"/MEQw"),
    ("segments-kept", b"/ocsp/ME/Qw/AB", PREFIXES, b"ME/Qw/AB"),
    ("ocspx-falls-to-root", b"/ocspx/MEQw", PREFIXES, b"ocspx/MEQw"),
    ("ocspx-not-ocsp", b"/ocspx/MEQw", (b"/api/ocsp", b"/ocsp"), None),
    ("api-ocspx-not-api-ocsp", b"/api/ocspx/MEQw", (b"/api/ocsp", b"/ocsp"), None),
    ("apix-not-api", b"/apix/ocsp/MEQw", (b"/api/ocsp", b"/ocsp"), None),
    ("ocsp-inside-root-path", b"/ocsp/api/ocsp/MEQw", PREFIXES, b"api/ocsp/MEQw"),
    ("longest-prefix-wins", b"/ocsp/ocsp/MEQw", (b"/ocsp/ocsp", b"/ocsp", b""), b"MEQw"),
    ("no-prefix-matches", b"/other/MEQw", (b"/ocsp",), None),
    ("prefix-case-sensitive", b"/OCSP/MEQw", (b"/ocsp",), None),
]


@pytest.mark.parametrize(
    ("raw_path", "prefixes", "expected"), [c[1:] for c in STRIP_CASES], ids=[c[0] for c in STRIP_CASES]
)
def test_strip_prefix(raw_path: bytes, prefixes: tuple[bytes, ...], expected: bytes | None) -> None:
    assert strip_prefix(raw_path, prefixes) == expected


def test_ocspx_path_is_not_a_request_under_ocsp() -> None:
    """'/ocspx/<b64>' matches only the root prefix and what it carries is not the request."""
    encoded = strip_prefix(b"/ocspx/" + B64, PREFIXES)
    assert encoded == b"ocspx/" + B64
    with pytest.raises(MalformedRequest):
        parse_ocsp_request(decode_get_request(encoded, MAX_DER))


# ------------------------------------------------------------------ rejections


def len_mod_4_is_1() -> bytes:
    stripped = B64.rstrip(b"=")
    cut = stripped[: (len(stripped) // 4 - 1) * 4 + 1]
    assert len(cut) % 4 == 1
    return cut


REJECTED = [
    ("empty", b""),
    ("only-slash", b"/"),
    ("only-padding", b"=="),
    ("only-escaped-padding", b"%3D%3D"),
    ("exclamation-mark", B64[:10] + b"!" + B64[10:]),
    ("dot", B64[:10] + b"." + B64[10:]),
    ("asterisk", B64[:12] + b"*" + B64[12:]),
    ("question-mark", B64[:12] + b"?" + B64[12:]),
    ("newline", B64[:12] + b"\n" + B64[12:]),
    ("nul", B64[:12] + b"\x00" + B64[12:]),
    ("non-ascii", B64[:12] + "é".encode() + B64[12:]),
    ("escaped-non-ascii", B64[:12] + b"%C3%A9" + B64[12:]),
    ("bad-percent-escape", B64[:12] + b"%ZZ" + B64[12:]),
    ("lone-percent-at-end", B64.rstrip(b"=") + b"%"),
    ("double-encoded-slash", B64.replace(b"/", b"%252F")),
    ("padding-in-the-middle", B64[:8] + b"=" + B64[8:]),
    ("padding-in-the-middle-escaped", B64[:8] + b"%3D" + B64[8:]),
    ("length-mod-4-is-1", len_mod_4_is_1()),
    ("single-character", b"M"),
    ("five-characters", b"MEQwQ"),
    ("over-long-path", b"A" * (3 * MAX_DER + 1)),
    ("over-long-path-slashes", b"/" * (3 * MAX_DER + 2)),
    ("decodes-to-too-many-bytes", base64.b64encode(b"\x30" * (MAX_DER + 1))),
]


@pytest.mark.parametrize("encoded", [c[1] for c in REJECTED], ids=[c[0] for c in REJECTED])
def test_rejected(encoded: bytes) -> None:
    with pytest.raises(MalformedRequest):
        decode_get_request(encoded, MAX_DER)


def test_two_extra_slashes_do_not_give_the_request() -> None:
    """Only one extra slash is forgiven: a second one is base64 data ('/' is in the alphabet)."""
    for prefix in PREFIXES:
        encoded = strip_prefix(prefix + b"///" + B64, PREFIXES)
        assert encoded is not None
        try:
            der = decode_get_request(encoded, MAX_DER)
        except MalformedRequest:
            continue
        assert der != DER
        with pytest.raises(MalformedRequest):
            parse_ocsp_request(der)


def test_decoded_size_limit_boundary() -> None:
    at_limit = bytes(range(256)) * (MAX_DER // 256) + b"\x30" * (MAX_DER % 256)
    assert len(at_limit) == MAX_DER
    assert decode_get_request(base64.b64encode(at_limit), MAX_DER) == at_limit
    with pytest.raises(MalformedRequest):
        decode_get_request(base64.b64encode(at_limit + b"\x30"), MAX_DER)


def test_path_length_limit_boundary() -> None:
    """The raw path may be three times the DER limit (every character percent-encoded), not more."""
    at_limit = b"%41" * MAX_DER  # "AAAA..." once unescaped
    assert len(at_limit) == 3 * MAX_DER
    assert decode_get_request(at_limit, MAX_DER) == bytes(MAX_DER * 3 // 4)
    assert decode_get_request(b"/" + at_limit, MAX_DER) == bytes(MAX_DER * 3 // 4)
    with pytest.raises(MalformedRequest):
        decode_get_request(at_limit + b"AAAA", MAX_DER)  # would decode to 7503 bytes, but the path is too long


def _documented_rules(encoded: bytes) -> bytes | None:
    """The module's rules written plainly: one leading slash off, percent-decoding, the base64url
    alphabet and '+'-as-space folded onto standard base64, padding optional. None: malformed."""
    encoded = encoded.removeprefix(b"/")
    text = unquote_to_bytes(encoded).translate(bytes.maketrans(b"-_ ", b"+/+")).rstrip(b"=")
    try:
        der = base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        return None
    return der or None


PIECES = st.sampled_from(
    [
        *"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_ %",
        *("%2F", "%2f", "%2B", "%2b", "%3D", "%3d", "%25", "%41", "%20", "%2"),
    ]
)


@settings(max_examples=1500, deadline=None)
@given(st.lists(PIECES, max_size=40), st.sampled_from([b"", b"/", DER_PATH_HEAD]))
def test_decoding_follows_the_documented_rules(pieces: list[str], head: bytes) -> None:
    encoded = head + "".join(pieces).encode()
    try:
        got: bytes | None = decode_get_request(encoded, MAX_DER)
    except MalformedRequest:
        got = None
    assert got == _documented_rules(encoded)


# ------------------------------------------------------------------ GetPaths (the app's one call)


def _by_the_two_steps(raw_path: bytes, prefixes: tuple[bytes, ...]) -> bytes | None:
    encoded = strip_prefix(raw_path, (*prefixes, b""))
    if encoded is None:
        return None
    try:
        return decode_get_request(encoded, MAX_DER)
    except MalformedRequest:
        return None


PATH_PIECES = st.sampled_from(["/", "//", "/ocsp", "/api/ocsp", "/api", "/o", "/a", "ocsp", "%2F", "M", "E", "Qw", "="])
PREFIX_SETS = st.sampled_from([(b"/api/ocsp", b"/ocsp"), (b"/ocsp",), (b"/MEIw",), (b"/o/p", b"/x"), ()])


@settings(max_examples=1500, deadline=None)
@given(st.lists(PATH_PIECES, max_size=8), st.sampled_from([b"", B64, B64[:-1], b"/" + B64]), PREFIX_SETS)
def test_get_paths_reads_what_prefix_and_decoder_read(
    pieces: list[str], tail: bytes, prefixes: tuple[bytes, ...]
) -> None:
    """The quick way under the root (no prefix to compare) changes nothing: same request or malformed."""
    raw_path = "".join(pieces).encode() + tail
    expected = _by_the_two_steps(raw_path, prefixes)
    try:
        got: bytes | None = GetPaths(prefixes, MAX_DER).der(raw_path)
    except MalformedRequest:
        got = None
    assert got == expected


@pytest.mark.parametrize(
    ("raw_path", "expected"),
    [
        (b"/" + B64, DER),  # under the root, the quick way
        (b"//" + B64, DER),  # one extra slash: dropped by the decoder
        (b"/ocsp/" + B64, DER),
        (b"/ocsp//" + B64, DER),
        (b"/api/ocsp/" + B64, DER),
        (b"ocsp/" + B64, None),  # no leading slash: no prefix matches, not even the root
        (b"/", None),
        (b"", None),
    ],
)
def test_get_paths_table(raw_path: bytes, expected: bytes | None) -> None:
    paths = GetPaths((b"/ocsp", b"/api/ocsp"), MAX_DER)
    if expected is None:
        with pytest.raises(MalformedRequest):
            paths.der(raw_path)
    else:
        assert paths.der(raw_path) == expected
