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

from contract.cert_id import issuer_part_encodings
from contract.store import canonical_serial_key
from edge.get_path import GetPaths, decode_get_request, strip_prefix
from edge.ocsp_request import MalformedRequest, common_request, parse_ocsp_request
from tests.edge.conftest import (
    DER_NULL,
    SHA1_OID,
    SHA256_OID,
    SHA384_OID,
    SHA512_OID,
    algorithm_identifier,
    crypto_request_by_hash,
    fake_hashes,
    oid_content,
    simple_request,
)

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


# ------------------------------------------------------------------ GetPaths.common_request (the quick way)

HASH_OIDS = (SHA1_OID, SHA256_OID, SHA384_OID, SHA512_OID)
ISSUER_HASHES = {
    dotted: fake_hashes(name) for dotted, name in zip(HASH_OIDS, ("sha1", "sha256", "sha384", "sha512"), strict=True)
}
AWKWARD_PART = issuer_part_encodings(oid_content(SHA1_OID), *fake_hashes("sha1", b"get-path"))[0]


def served_parts() -> list[bytes]:
    """Both encodings of each algorithm's issuer part, and the awkward request's."""
    parts = [AWKWARD_PART]
    for dotted, (name_hash, key_hash) in ISSUER_HASHES.items():
        parts.extend(issuer_part_encodings(oid_content(dotted), name_hash, key_hash))
    return parts


def serving(parts: list[bytes], max_der: int = MAX_DER) -> GetPaths:
    paths = GetPaths(PREFIXES[:-1], max_der)
    paths.serve_issuers(parts)
    return paths


def by_the_general_way(paths: GetPaths, raw_path: bytes) -> tuple[bytes, bytes] | None:
    """What the app reads when the quick way finds nothing: the path decoded, then its common shape."""
    try:
        return common_request(paths.der(raw_path))
    except MalformedRequest:
        return None


# The quirks whose request the quick way reads: padded standard base64, raw or with upper-case
# escapes of '/', '+' and '=' (alone or together), with or without the one extra slash.
READ_THE_QUICK_WAY = {
    "plain",
    "percent-upper",
    "percent-slash-only",
    "percent-plus-and-equals-only",
    "unencoded-slashes-make-segments",
    "double-slash-kept",
    "double-slash-half-escaped",
    "extra-leading-slash",
    "extra-leading-slash-percent",
}


@pytest.mark.parametrize("prefix", PREFIXES, ids=lambda p: p.decode() or "root")
@pytest.mark.parametrize("quirk", QUIRKS, ids=[q[0] for q in QUIRKS])
def test_quick_way_reads_the_usual_encodings_and_leaves_the_rest(
    quirk: tuple[str, Callable[[], bytes]], prefix: bytes
) -> None:
    name, make = quirk
    paths = serving(served_parts())
    raw_path = prefix + b"/" + make()
    expected = common_request(DER)
    assert expected is not None and expected[0] == AWKWARD_PART
    assert by_the_general_way(paths, raw_path) == expected
    assert paths.common_request(raw_path) == (expected if name in READ_THE_QUICK_WAY else None)


@pytest.mark.parametrize(
    ("serial_content", "read"),
    [
        (b"\x00", True),  # serial number 0
        (b"\x7f", True),
        (b"\x01" + b"\x42" * 19, True),  # 20 octets: the longest RFC 5280 allows
        (b"\x00\x80" + b"\x42" * 19, False),  # 21 octets, minimal: longer than the quick way reads
        (b"\xff\x7f", True),  # negative, minimal
        (b"\x00\x05", False),  # padded: the general way folds it onto 05
        (b"\xff\x80", False),  # padded negative
        (b"\x00\x80", True),  # minimal: the 00 keeps it positive
    ],
)
@pytest.mark.parametrize("dotted", [SHA1_OID, SHA256_OID])
@pytest.mark.parametrize("params", [DER_NULL, b""], ids=["null-params", "no-params"])
def test_quick_way_reads_minimal_serial_numbers_of_up_to_20_octets(
    serial_content: bytes, read: bool, dotted: str, params: bytes
) -> None:
    name_hash, key_hash = ISSUER_HASHES[dotted]
    der = simple_request(
        algorithm=algorithm_identifier(dotted, params),
        name_hash=name_hash,
        key_hash=key_hash,
        serial_content=serial_content,
    )
    paths = serving(served_parts())
    for raw_path in (b"/" + base64.b64encode(der), b"/ocsp/" + percent(base64.b64encode(der), UPPER)):
        general = by_the_general_way(paths, raw_path)
        assert general is not None and general[1] == canonical_serial_key(serial_content)
        assert paths.common_request(raw_path) == (general if read else None)


def test_quick_way_reads_served_issuers_only() -> None:
    raw_path = b"/" + B64
    assert serving([]).common_request(raw_path) is None
    paths = serving([AWKWARD_PART])
    assert paths.common_request(raw_path) is not None
    paths.serve_issuers([part for part in served_parts() if part != AWKWARD_PART])  # the CA was removed
    assert paths.common_request(raw_path) is None
    assert by_the_general_way(paths, raw_path) is not None  # the app still answers it: unauthorized


def test_quick_way_reads_nothing_the_decoder_refuses_as_too_large() -> None:
    name_hash, key_hash = ISSUER_HASHES[SHA1_OID]
    small = len(simple_request(name_hash=name_hash, key_hash=key_hash, serial_content=b"\x01" * 5))
    paths = serving(served_parts(), max_der=small)
    for serial_length, read in ((5, True), (6, False)):
        der = simple_request(name_hash=name_hash, key_hash=key_hash, serial_content=b"\x01" * serial_length)
        raw_path = b"/" + base64.b64encode(der)
        assert (paths.common_request(raw_path) is not None) == read
        assert (by_the_general_way(paths, raw_path) is not None) == read


ALGORITHMS = st.sampled_from([(dotted, params) for dotted in HASH_OIDS for params in (DER_NULL, b"")])
ENCODINGS: dict[str, Callable[[bytes], bytes]] = {
    "plain": base64.b64encode,
    "percent-upper": lambda der: percent(base64.b64encode(der), UPPER),
    "percent-lower": lambda der: percent(base64.b64encode(der), LOWER),
    "base64url": base64.urlsafe_b64encode,
    "unpadded": lambda der: base64.b64encode(der).rstrip(b"="),
}
EDIT_CHARACTERS = st.sampled_from(list(b"AMQw09+/=%-_ 2F3D"))


@settings(max_examples=3000, deadline=None)
@given(
    ALGORITHMS,
    st.booleans(),
    st.binary(min_size=1, max_size=23),
    st.sampled_from(sorted(ENCODINGS)),
    st.sampled_from(PREFIXES),
    st.booleans(),
    st.lists(
        st.tuples(st.sampled_from(["replace", "insert", "delete"]), st.integers(0, 200), EDIT_CHARACTERS), max_size=2
    ),
)
def test_quick_way_reads_what_the_general_way_reads(
    algorithm: tuple[str, bytes],
    served: bool,
    serial_content: bytes,
    encoding: str,
    prefix: bytes,
    extra_slash: bool,
    edits: list[tuple[str, int, int]],
) -> None:
    """Whatever the quick way reads, the general way reads alike; it reads every usual request."""
    dotted, params = algorithm
    name_hash, key_hash = ISSUER_HASHES[dotted] if served else fake_hashes("sha1", b"not served")
    der = simple_request(
        algorithm=algorithm_identifier(dotted, params),
        name_hash=name_hash,
        key_hash=key_hash,
        serial_content=serial_content,
    )
    text = ENCODINGS[encoding](der)
    for kind, at, character in edits:
        at %= len(text) + 1
        if kind == "replace":
            text = text[:at] + bytes((character,)) + text[at + 1 :]
        elif kind == "insert":
            text = text[:at] + bytes((character,)) + text[at:]
        else:
            text = text[:at] + text[at + 1 :]
    raw_path = prefix + b"/" + (b"/" if extra_slash else b"") + text
    paths = serving(served_parts())
    got = paths.common_request(raw_path)
    if got is not None:
        assert got == by_the_general_way(paths, raw_path)
    usual = (
        served
        and encoding in ("plain", "percent-upper")
        and text == ENCODINGS[encoding](der)
        and canonical_serial_key(serial_content) == serial_content
        and len(serial_content) <= 20
        and len(der) <= 129  # the common shape's short-form lengths: SHA-512's never, SHA-384's rarely
    )
    if usual:
        assert got is not None and got[1] == serial_content


@pytest.mark.parametrize("dotted", [SHA1_OID, SHA256_OID])
@pytest.mark.parametrize("serial_content", [b"\x05", b"\x01\x02\x03", b"\x7f" * 20], ids=["1", "3", "20"])
def test_quick_way_reads_no_request_with_one_character_changed_otherwise(dotted: str, serial_content: bytes) -> None:
    """Every character of a served request's base64 changed in turn: the general way's reading or nothing."""
    name_hash, key_hash = ISSUER_HASHES[dotted]
    der = simple_request(
        algorithm=algorithm_identifier(dotted), name_hash=name_hash, key_hash=key_hash, serial_content=serial_content
    )
    text = base64.b64encode(der)
    paths = serving(served_parts())
    assert paths.common_request(b"/" + text) is not None
    for at in range(len(text)):
        for character in b"ABCgw/+=":
            changed = b"/" + text[:at] + bytes((character,)) + text[at + 1 :]
            got = paths.common_request(changed)
            if got is not None:
                assert got == by_the_general_way(paths, changed)
